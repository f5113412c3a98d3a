//! `missive auth`: getting a refresh token once (authorization code with PKCE and a
//! loopback redirect, or the device flow) and reporting what is stored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oauth2::{
    AuthUrl, AuthorizationCode, CsrfToken, DeviceAuthorizationUrl, PkceCodeChallenge, RedirectUrl,
    Scope, StandardDeviceAuthorizationResponse, TokenResponse,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::auth::http::Http;
use crate::auth::sources::{credentials_path, request_with_retries, resolve, token_client};
use crate::auth::store::{self, Credentials};
use crate::auth::{Grant, OAuthConfig, Provider};
use crate::error::{Error, ErrorKind, Result};

/// How long the browser sign-in may take before `missive auth` gives up.
const SIGN_IN_WAIT: Duration = Duration::from_secs(600);

/// What `missive auth` signs in with.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// Provider, client id, scopes, endpoints and the credentials file to write.
    pub oauth: OAuthConfig,
    /// The mailbox that will send (a login hint for the provider; stored for `status`).
    pub user: Option<String>,
    /// Use the device-code flow instead of a browser redirect to this machine.
    pub device: bool,
    /// An extra trust anchor for the provider's endpoints.
    pub ca_file: Option<PathBuf>,
}

/// What a credentials configuration amounts to, without any secret.
#[derive(Debug, Clone)]
pub struct CredentialStatus {
    /// Which credential is configured, e.g. `google refresh token from ~/.config/...`.
    pub credential: String,
    /// The credentials file, when one is used.
    pub file: Option<PathBuf>,
    /// Whether a usable refresh token (or key, or secret) is there.
    pub ready: bool,
    /// The account the credential was issued for, when known.
    pub user: Option<String>,
    /// The OAuth2 client id.
    pub client_id: Option<String>,
    /// Unix time when the last issued access token expires, when known.
    pub access_token_expires_at: Option<u64>,
    /// Unix time of the last write of the credentials file.
    pub updated_at: Option<u64>,
    /// What is wrong, when something is.
    pub problem: Option<String>,
}

/// Signs in and stores the refresh token in the credentials file; returns its path.
/// `show` receives what the user must do: a URL to open, or a device code to enter.
pub async fn login(options: &LoginOptions, show: impl Fn(&str)) -> Result<PathBuf> {
    let oauth = &options.oauth;
    let resolved = resolve(oauth)?;
    if resolved.grant != Grant::RefreshToken {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "the {} grant needs no sign-in: {}",
                match resolved.grant {
                    Grant::ClientCredentials => "client_credentials",
                    _ => "service account",
                },
                match resolved.grant {
                    Grant::ClientCredentials => "set `client_id` and `client_secret_env`",
                    _ => "point `key_file` at the service account's JSON key",
                }
            ),
        ));
    }
    let client_id = oauth.client_id.clone().ok_or_else(|| {
        Error::new(
            ErrorKind::Config,
            "no client id: pass --client-id or set `client_id` in the config",
        )
    })?;
    let secret = match &oauth.client_secret_env {
        Some(var) => Some(
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .map(SecretString::from)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Config,
                        format!("environment variable {var} (the client secret) is not set"),
                    )
                })?,
        ),
        None => None,
    };
    let token_url = resolved.token_url.clone().unwrap_or_default();
    let client = token_client(&client_id, secret.as_ref(), &token_url, oauth.client_auth)?;
    let http = Http::new(
        options.ca_file.as_deref(),
        Duration::from_secs(oauth.timeout_secs.max(1)),
        oauth.attempts,
    )?;
    let scopes: Vec<Scope> = resolved.scopes.iter().cloned().map(Scope::new).collect();
    let hint = format!("run `missive auth {}` again", oauth.provider.name());
    let response = if options.device {
        if oauth.provider == Provider::Google {
            return Err(Error::new(
                ErrorKind::Config,
                "Google's device flow does not allow the Gmail scope: run `missive auth google` \
                 where a browser can reach this machine (over ssh: `ssh -L PORT:127.0.0.1:PORT`)",
            ));
        }
        let device_url = resolved
            .device_url
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::Config, "the device flow needs `device_url`"))?;
        let device_url = DeviceAuthorizationUrl::new(device_url)
            .map_err(|e| Error::new(ErrorKind::Config, format!("device_url: {e}")))?;
        let client = client.set_device_authorization_url(device_url);
        let details: StandardDeviceAuthorizationResponse = client
            .exchange_device_code()
            .add_scopes(scopes.clone())
            .request_async(&http)
            .await
            .map_err(|e| device_error("device authorization failed", e))?;
        show(&format!(
            "Open {} and enter the code {}",
            details.verification_uri().as_str(),
            details.user_code().secret()
        ));
        client
            .exchange_device_access_token(&details)
            .request_async(&http, tokio::time::sleep, None)
            .await
            .map_err(|e| device_error("device sign-in failed", e))?
    } else {
        let auth_url = resolved
            .auth_url
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::Config, "the browser sign-in needs `auth_url`"))?;
        let auth_url = AuthUrl::new(auth_url)
            .map_err(|e| Error::new(ErrorKind::Config, format!("auth_url: {e}")))?;
        let (listener, redirect, path) = listen_for_redirect(oauth.redirect_uri.as_deref()).await?;
        let client = client.set_auth_uri(auth_url).set_redirect_uri(redirect);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(scopes)
            .set_pkce_challenge(challenge);
        if oauth.provider == Provider::Google {
            // Without these Google returns no refresh token on a second sign-in.
            request = request
                .add_extra_param("access_type", "offline")
                .add_extra_param("prompt", "consent");
        } else if oauth.provider == Provider::Generic
            && resolved.scopes.iter().any(|s| s == "offline_access")
        {
            // OpenID Connect Core section 11: `offline_access` is ignored (no
            // refresh token) unless the consent prompt is asked for. Microsoft
            // honours it without, and there the prompt would force admin consent.
            request = request.add_extra_param("prompt", "consent");
        }
        if let Some(user) = &options.user {
            request = request.add_extra_param("login_hint", user.clone());
        }
        let (url, state) = request.url();
        show(&format!(
            "Open this URL in a browser to sign in:\n\n  {url}\n"
        ));
        let code =
            tokio::time::timeout(SIGN_IN_WAIT, receive_code(&listener, &path, state.secret()))
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorKind::Auth,
                        format!(
                            "no sign-in came back within {} minutes; run the command again",
                            SIGN_IN_WAIT.as_secs() / 60
                        ),
                    )
                })??;
        request_with_retries(&http, &hint, || {
            client
                .exchange_code(AuthorizationCode::new(code.expose_secret().to_string()))
                .set_pkce_verifier(oauth2::PkceCodeVerifier::new(verifier.secret().to_string()))
                .request_async(&http)
        })
        .await?
    };
    let refresh = response.refresh_token().ok_or_else(|| {
        Error::new(
            ErrorKind::Auth,
            "the provider issued no refresh token: check that the scopes include offline \
             access (Microsoft: `offline_access`), then sign in again",
        )
    })?;
    let path = credentials_path(oauth);
    let now = store::now_unix();
    let credentials = Credentials {
        provider: Some(oauth.provider.name().to_string()),
        user: options.user.clone(),
        client_id: Some(client_id),
        client_secret: secret,
        token_url: Some(token_url),
        scopes: resolved.scopes,
        refresh_token: Some(SecretString::from(refresh.secret().to_string())),
        // The first send (or the next command) uses this one rather than renewing.
        access_token: response
            .expires_in()
            .map(|_| SecretString::from(response.access_token().secret().to_string())),
        access_token_expires_at: response.expires_in().map(|d| now + d.as_secs()),
        access_token_issued_at: response.expires_in().map(|_| now),
        updated_at: 0,
    };
    store::save(&path, &credentials)?;
    Ok(path)
}

/// A failed device-flow request. oauth2's own message for a transport failure is
/// only "Request failed": the reason (an untrusted certificate, say) is ours to tell.
fn device_error<T: oauth2::ErrorResponse + 'static>(
    what: &str,
    error: oauth2::RequestTokenError<crate::auth::http::HttpError, T>,
) -> Error {
    match error {
        oauth2::RequestTokenError::Request(e) => Error::new(
            if e.is_retryable() {
                ErrorKind::Transient
            } else {
                ErrorKind::Config
            },
            format!("{what}: {e}"),
        ),
        oauth2::RequestTokenError::ServerResponse(response) => {
            Error::new(ErrorKind::Auth, format!("{what}: {response}"))
        }
        other => Error::new(ErrorKind::Auth, format!("{what}: {other}")),
    }
}

/// Listens where the browser is to be sent back: the configured redirect URI (a
/// loopback `http://` address; its port fixed, as providers that match redirect URIs
/// exactly need), else 127.0.0.1 on a port of the system's choosing (RFC 8252
/// section 7.3). Returns the listener, the redirect URI and the path to wait on.
async fn listen_for_redirect(
    configured: Option<&str>,
) -> Result<(TcpListener, RedirectUrl, String)> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::Config,
            format!(
                "redirect_uri `{}` {why}: it must be a loopback http:// address with a port, \
                 e.g. http://127.0.0.1:8765/callback, registered with the provider",
                configured.unwrap_or_default()
            ),
        )
    };
    let (address, uri, path) = match configured {
        Some(uri) => {
            let url = oauth2::url::Url::parse(uri).map_err(|e| bad(&e.to_string()))?;
            let host = url.host_str().unwrap_or_default().to_string();
            if url.scheme() != "http" || !crate::auth::is_loopback(&host) {
                return Err(bad("is not on this machine"));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(bad("has a query or fragment"));
            }
            let port = url.port_or_known_default().unwrap_or(80);
            let ip = match host.trim_start_matches('[').trim_end_matches(']') {
                "localhost" => "127.0.0.1".to_string(),
                other if other.contains(':') => format!("[{other}]"),
                other => other.to_string(),
            };
            (
                format!("{ip}:{port}"),
                Some(uri.to_string()),
                url.path().to_string(),
            )
        }
        None => ("127.0.0.1:0".to_string(), None, "/".to_string()),
    };
    let listener = TcpListener::bind(&address).await.map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot listen on {address} for the sign-in redirect: {e}"),
        )
    })?;
    let uri = match uri {
        Some(uri) => uri,
        None => {
            let port = listener
                .local_addr()
                .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?
                .port();
            format!("http://127.0.0.1:{port}/")
        }
    };
    let redirect =
        RedirectUrl::new(uri).map_err(|e| Error::new(ErrorKind::Config, e.to_string()))?;
    Ok((listener, redirect, path))
}

/// Waits for the browser's redirect to `path` and returns the code, after checking
/// `state`.
async fn receive_code(listener: &TcpListener, path: &str, state: &str) -> Result<SecretString> {
    let io = |e: std::io::Error| Error::new(ErrorKind::Io, format!("sign-in redirect: {e}"));
    loop {
        let (mut socket, _) = listener.accept().await.map_err(io)?;
        let mut buf = vec![0u8; 8192];
        let n = socket.read(&mut buf).await.map_err(io)?;
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let url = oauth2::url::Url::parse(&format!("http://127.0.0.1{target}"))
            .map_err(|e| Error::new(ErrorKind::Auth, format!("bad redirect: {e}")))?;
        let param = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let (code, error) = (param("code"), param("error"));
        if url.path() != path || (code.is_none() && error.is_none()) {
            // A favicon request or the like: not the redirect.
            let _ = socket
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            continue;
        }
        let state_ok = param("state").as_deref() == Some(state);
        let outcome = match (code, error) {
            (_, Some(error)) => Err(Error::new(
                ErrorKind::Auth,
                format!(
                    "the provider refused the sign-in: {error}{}",
                    param("error_description")
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ),
            )),
            (Some(_), _) if !state_ok => Err(Error::new(
                ErrorKind::Auth,
                "the redirect's state does not match this sign-in; ignoring it (possible CSRF)",
            )),
            (Some(code), _) => Ok(SecretString::from(code)),
            (None, None) => continue,
        };
        let page = match &outcome {
            Ok(_) => "missive: signed in. You can close this tab.",
            Err(_) => "missive: sign-in failed; see the terminal.",
        };
        let _ = socket
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                )
                .as_bytes(),
            )
            .await;
        return outcome;
    }
}

/// What the provider answered to [`check`].
#[derive(Debug, Clone)]
pub struct TokenCheck {
    /// How long the access token it issued is valid, when it said.
    pub expires_in: Option<Duration>,
}

/// Asks the provider for a new access token with the configured credential, as a
/// send would, but never taking the one the credentials file keeps: whether the
/// grant still works (not revoked, not expired) is only known by asking. A rotated
/// refresh token and the new access token are saved as a send saves them. The error
/// is the provider's refusal, or why it could not be asked.
pub async fn check(
    oauth: &OAuthConfig,
    user: Option<&str>,
    ca_file: Option<&Path>,
) -> Result<TokenCheck> {
    let source = crate::auth::build_source(oauth, user, ca_file)?;
    let issued = source.fetch(false).await?;
    Ok(TokenCheck {
        expires_in: issued.expires_in,
    })
}

/// Which credential `oauth` uses and what is known about it; never a secret.
/// Missing environment variables are problems; whether the provider still honours
/// the credential is not known without asking it ([`check`]).
pub fn status(oauth: &OAuthConfig, user: Option<&str>) -> Result<CredentialStatus> {
    let resolved = resolve(oauth)?;
    let mut status = CredentialStatus {
        credential: String::new(),
        file: None,
        ready: false,
        user: user.map(String::from),
        client_id: oauth.client_id.clone(),
        access_token_expires_at: None,
        updated_at: None,
        problem: None,
    };
    let env_set = |var: &str| std::env::var(var).is_ok_and(|v| !v.is_empty());
    match resolved.grant {
        Grant::JwtBearer => {
            let key = oauth.key_file.clone().unwrap_or_default();
            status.credential = format!(
                "google service account key {} acting as {}",
                key.display(),
                user.unwrap_or("(no `auth.user`)")
            );
            status.file = Some(key.clone());
            match store::read_private(&key, "service account key") {
                Ok(_) => status.ready = user.is_some(),
                Err(e) => status.problem = Some(e.to_string()),
            }
        }
        Grant::ClientCredentials => {
            status.credential = format!("{} client credentials (app-only)", oauth.provider.name());
            match &oauth.client_secret_env {
                Some(var) if env_set(var) => {
                    status.ready = status.client_id.is_some();
                    if !status.ready {
                        status.problem = Some("no client id: set `client_id`".into());
                    }
                }
                Some(var) => {
                    status.problem = Some(format!(
                        "environment variable {var} (the client secret) is not set"
                    ))
                }
                None => status.problem = Some("set `client_secret_env`".into()),
            }
        }
        Grant::RefreshToken => match &oauth.refresh_token_env {
            Some(var) => {
                status.credential = format!("{} refresh token from ${var}", oauth.provider.name());
                status.ready = env_set(var);
                if !status.ready {
                    status.problem = Some(format!(
                        "environment variable {var} (the refresh token) is not set"
                    ));
                }
            }
            None => {
                let path = credentials_path(oauth);
                status.credential = format!(
                    "{} refresh token from {}",
                    oauth.provider.name(),
                    path.display()
                );
                status.file = Some(path.clone());
                match store::load(&path) {
                    Ok(stored) => {
                        status.ready = stored.refresh_token.is_some();
                        status.user = status.user.or(stored.user);
                        status.client_id = status.client_id.or(stored.client_id);
                        status.access_token_expires_at = stored.access_token_expires_at;
                        status.updated_at = Some(stored.updated_at);
                        if !status.ready {
                            status.problem = Some("the file holds no refresh token".into());
                        } else if status.client_id.is_none() {
                            status.ready = false;
                            status.problem =
                                Some("no client id: set `client_id` or run `missive auth`".into());
                        }
                    }
                    Err(e) => status.problem = Some(e.message().to_string()),
                }
            }
        },
    }
    // A renewal reads the client secret from the variable the config names, for
    // every grant that has a client: that it is set is part of being ready.
    if resolved.grant == Grant::RefreshToken && status.problem.is_none() {
        if let Some(var) = oauth.client_secret_env.as_deref().filter(|v| !env_set(v)) {
            status.ready = false;
            status.problem = Some(format!(
                "environment variable {var} (the client secret) is not set"
            ));
        }
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_configured_redirect_uri_is_listened_on_as_registered() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let uri = format!("http://127.0.0.1:{port}/oauth/callback");
        let (listener, redirect, path) = listen_for_redirect(Some(&uri)).await.unwrap();
        assert_eq!(listener.local_addr().unwrap().port(), port);
        assert_eq!(redirect.as_str(), uri);
        assert_eq!(path, "/oauth/callback");

        let (listener, redirect, path) = listen_for_redirect(None).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(redirect.as_str(), format!("http://127.0.0.1:{port}/"));
        assert_eq!(path, "/");
    }

    #[tokio::test]
    async fn a_redirect_uri_off_this_machine_is_refused() {
        for uri in [
            "https://127.0.0.1:8765/callback",
            "http://app.example.com:8765/callback",
            "http://127.0.0.1:8765/callback?x=1",
            "not a url",
        ] {
            let err = listen_for_redirect(Some(uri)).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{uri}");
            assert!(err.message().contains("loopback http://"), "{uri}: {err}");
        }
    }
}
