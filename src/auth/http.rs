//! HTTP to token endpoints: https only (loopback excepted), no redirects, timeouts, and
//! retries with backoff when the endpoint is down or overloaded.

use std::path::Path;
use std::time::Duration;

use oauth2::{HttpRequest, HttpResponse};

use crate::error::{Error, ErrorKind, Result};

/// Refuses token endpoints that would send secrets in clear text off this machine.
pub(crate) fn check_endpoint(url: &str, what: &str) -> Result<oauth2::url::Url> {
    let parsed = oauth2::url::Url::parse(url).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("{what} `{url}` is not a URL: {e}"),
        )
    })?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(parsed.host_str().unwrap_or_default()) => Ok(parsed),
        _ => Err(Error::new(
            ErrorKind::Config,
            format!("{what} `{url}` must use https (plain http is allowed only toward loopback)"),
        )),
    }
}

/// Whether `host` (a name or an address, IPv6 with or without brackets) is this machine.
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why one HTTP exchange failed. `Status` is only used for 5xx: other answers go to
/// the oauth2 crate, which reads the error response.
#[derive(Debug)]
pub(crate) enum HttpError {
    Status(u16),
    Timeout,
    Network(String),
    /// The endpoint's certificate is not trusted or not for its name: configuration,
    /// which no retry fixes.
    Certificate(String),
}

impl HttpError {
    /// Whether asking again may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, HttpError::Certificate(_))
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Status(code) => write!(f, "the endpoint answered HTTP {code}"),
            HttpError::Timeout => f.write_str("the endpoint did not answer in time"),
            HttpError::Network(e) => write!(f, "cannot reach the endpoint: {e}"),
            HttpError::Certificate(e) => write!(f, "TLS with the endpoint failed: {e}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// An HTTP client for token endpoints.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    pub attempts: u32,
}

/// Adds the PEM certificates of `ca_file` to the client's trust anchors.
pub(crate) fn trust_ca_file(
    mut builder: reqwest::ClientBuilder,
    ca_file: Option<&Path>,
) -> Result<reqwest::ClientBuilder> {
    if let Some(path) = ca_file {
        let path = &crate::auth::store::expand_home(path);
        let pem = std::fs::read(path).map_err(|e| Error::io(path, "read CA file", e))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("CA file {}: {e}", path.display()),
            )
        })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

impl Http {
    pub fn new(ca_file: Option<&Path>, timeout: Duration, attempts: u32) -> Result<Http> {
        let builder = reqwest::Client::builder()
            // A redirect could carry the client secret to another host.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout);
        let builder = trust_ca_file(builder, ca_file)?;
        let client = builder.build().map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("cannot set up the HTTP client: {e}"),
            )
        })?;
        Ok(Http {
            client,
            attempts: attempts.max(1),
        })
    }

    /// One exchange, in the shape the oauth2 crate wants.
    pub async fn execute(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let request =
            reqwest::Request::try_from(request).map_err(|e| HttpError::Network(e.to_string()))?;
        let response = self.client.execute(request).await.map_err(classify)?;
        let status = response.status();
        if status.is_server_error() {
            return Err(HttpError::Status(status.as_u16()));
        }
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(classify)?;
        let mut out = HttpResponse::new(body.to_vec());
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }

    /// Waits before retry `attempt` (from 1) of a token request.
    pub async fn backoff(attempt: u32) {
        let base = 250u64.saturating_mul(1 << attempt.min(6));
        tokio::time::sleep(Duration::from_millis(
            base / 2 + fastrand::u64(0..=base / 2),
        ))
        .await;
    }
}

impl<'c> oauth2::AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = crate::auth::BoxFuture<'c, Result<HttpResponse, HttpError>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.execute(request))
    }
}

fn classify(e: reqwest::Error) -> HttpError {
    if e.is_timeout() {
        return HttpError::Timeout;
    }
    if let Some(tls) = crate::error::certificate_problem(&e) {
        let hint = match tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                "the certificate is not signed by a CA this machine trusts: for a private CA \
                 set the transport's `ca_file` to its PEM file"
            }
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            ) => {
                "the certificate is issued for another name: put the name it carries in the \
                 URL (for the SMTP server that is `tls_name`; a token endpoint is checked \
                 against its URL)"
            }
            _ => {
                "check the endpoint's certificate; a private CA goes in the transport's \
                 `ca_file`"
            }
        };
        return HttpError::Certificate(format!("invalid peer certificate: {tls} ({hint})"));
    }
    // Without the URL: it may carry query parameters.
    HttpError::Network(e.without_url().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_required_except_loopback() {
        assert!(check_endpoint("https://oauth2.googleapis.com/token", "token URL").is_ok());
        assert!(check_endpoint("http://127.0.0.1:8080/token", "token URL").is_ok());
        assert!(check_endpoint("http://[::1]:8080/token", "token URL").is_ok());
        assert!(check_endpoint("http://localhost/token", "token URL").is_ok());
        let err = check_endpoint("http://auth.example.com/token", "token URL").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("https"), "{err}");
        assert!(check_endpoint("ftp://127.0.0.1/token", "token URL").is_err());
    }
}
