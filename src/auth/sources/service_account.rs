//! Google's service-account JWT bearer grant with domain-wide delegation.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::*;
use crate::auth::http::{check_endpoint, Http};
use crate::auth::store::{self};
use crate::auth::{BoxFuture, Issued, TokenSource};
use crate::error::{Error, ErrorKind, Result};

/// Google Workspace service account impersonating `user` (domain-wide delegation).
pub(super) struct ServiceAccountGrant {
    pub(super) common: Common,
    pub(super) key_file: PathBuf,
    pub(super) user: String,
}

#[derive(serde::Deserialize)]
struct ServiceAccountKey {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    scope: String,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(serde::Deserialize)]
struct JwtTokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(serde::Deserialize)]
struct JwtErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

impl ServiceAccountGrant {
    async fn renew(&self) -> Result<Issued> {
        let text = store::read_private(&self.key_file, "service account key")?;
        let key: ServiceAccountKey = serde_json::from_str(&text).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("not a service account JSON key: {e}"),
            )
            .at(&self.key_file, e.line(), e.column())
        })?;
        let token_url = self
            .common
            .config
            .token_url
            .clone()
            .or(key.token_uri.clone())
            .unwrap_or_else(|| GOOGLE_TOKEN_URL.to_string());
        check_endpoint(&token_url, "service account token_uri")?;
        let now = store::now_unix();
        let claims = Claims {
            iss: &key.client_email,
            sub: &self.user,
            scope: self.common.resolved.scopes.join(" "),
            aud: &token_url,
            iat: now,
            exp: now + 3600,
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = key.private_key_id.clone();
        let signing_key = jsonwebtoken::EncodingKey::from_rsa_pem(key.private_key.as_bytes())
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("service account private key: {e}"),
                )
                .at(&self.key_file, 1, 1)
            })?;
        let assertion = SecretString::from(
            jsonwebtoken::encode(&header, &claims, &signing_key).map_err(|e| {
                Error::new(ErrorKind::Config, format!("cannot sign the assertion: {e}"))
            })?,
        );
        let body = oauth2::url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", assertion.expose_secret())
            .finish();
        let mut attempt = 1;
        loop {
            let request = oauth2::http::Request::builder()
                .method(oauth2::http::Method::POST)
                .uri(&token_url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("accept", "application/json")
                .body(body.clone().into_bytes())
                .map_err(|e| Error::new(ErrorKind::Config, format!("token_uri: {e}")))?;
            match self.common.http.execute(request).await {
                Ok(response) if response.status().is_success() => {
                    let token: JwtTokenResponse =
                        serde_json::from_slice(response.body()).map_err(|_| {
                            Error::new(
                                ErrorKind::Auth,
                                "the token endpoint's answer is not a token response",
                            )
                        })?;
                    return Ok(Issued {
                        access_token: SecretString::from(token.access_token),
                        expires_in: token.expires_in.map(Duration::from_secs),
                        lifetime: None,
                    });
                }
                Ok(response) => {
                    let detail = serde_json::from_slice::<JwtErrorResponse>(response.body())
                        .map(|e| match e.error_description {
                            Some(d) => format!("{}: {d}", e.error),
                            None => e.error,
                        })
                        .unwrap_or_else(|_| format!("HTTP {}", response.status()));
                    return Err(Error::new(
                        ErrorKind::Auth,
                        format!(
                            "Google refused the service account {} acting as {} ({detail}): check \
                             that domain-wide delegation grants {} to this service account's \
                             client id, and that the user exists in the domain",
                            key.client_email,
                            self.user,
                            self.common.resolved.scopes.join(" ")
                        ),
                    ));
                }
                Err(e) if e.is_retryable() && attempt < self.common.http.attempts => {
                    tracing::info!(attempt, error = %e, "token endpoint failed; retrying");
                    Http::backoff(attempt).await;
                    attempt += 1;
                }
                Err(e) => {
                    return Err(Error::new(
                        if e.is_retryable() {
                            ErrorKind::Transient
                        } else {
                            ErrorKind::Config
                        },
                        format!("cannot get an access token: {e}"),
                    ))
                }
            }
        }
    }
}

impl TokenSource for ServiceAccountGrant {
    fn fetch(&self, _reuse_stored: bool) -> BoxFuture<'_, Result<Issued>> {
        Box::pin(self.renew())
    }
    fn describe(&self) -> String {
        format!(
            "google service account key {} acting as {}",
            self.key_file.display(),
            self.user
        )
    }
}
