//! The token sources: refresh-token grant, client-credentials grant, and Google's
//! service-account JWT bearer grant, with the provider presets that fill them in.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponse, BasicErrorResponseType, BasicTokenResponse};
use oauth2::{
    AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, RequestTokenError, Scope,
    TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};

use crate::auth::http::{check_endpoint, Http, HttpError};
use crate::auth::store::{self, expand_home, Credentials};
use crate::auth::{ClientAuth, Grant, Issued, OAuthConfig, Provider, TokenSource};
use crate::error::{Error, ErrorKind, Result};
use client_credentials::ClientCredentialsGrant;
use refresh::{Origin, RefreshGrant};
use service_account::ServiceAccountGrant;

mod client_credentials;
mod refresh;
mod service_account;

const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const GOOGLE_AUTH_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
const GOOGLE_DEVICE_URL: &str = "https://oauth2.googleapis.com/device/code";
/// The only Google scope that allows SMTP; Gmail has no narrower one for sending.
const GOOGLE_MAIL_SCOPE: &str = "https://mail.google.com/";
/// Delegated: send as the signed-in user, and get a refresh token.
const MICROSOFT_DELEGATED_SCOPES: &[&str] =
    &["https://outlook.office.com/SMTP.Send", "offline_access"];
/// App-only: whatever SMTP permission the app was granted by an admin.
const MICROSOFT_APP_SCOPE: &str = "https://outlook.office365.com/.default";

pub(crate) type TokenClient =
    BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// Endpoints, scopes and grant of a provider preset, with the config's overrides.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub grant: Grant,
    pub token_url: Option<String>,
    pub auth_url: Option<String>,
    pub device_url: Option<String>,
    pub scopes: Vec<String>,
}

pub(crate) fn resolve(config: &OAuthConfig) -> Result<Resolved> {
    let tenant = config.tenant.as_deref().unwrap_or("common");
    let ms = |path: &str| format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/{path}");
    let grant = config.grant.unwrap_or(match config.provider {
        Provider::GoogleServiceAccount => Grant::JwtBearer,
        _ => Grant::RefreshToken,
    });
    let (token, auth, device, scopes): (Option<String>, _, _, Vec<&str>) = match config.provider {
        Provider::Google => (
            Some(GOOGLE_TOKEN_URL.into()),
            Some(GOOGLE_AUTH_URL.into()),
            Some(GOOGLE_DEVICE_URL.into()),
            vec![GOOGLE_MAIL_SCOPE],
        ),
        Provider::GoogleServiceAccount => (None, None, None, vec![GOOGLE_MAIL_SCOPE]),
        Provider::Microsoft => (
            Some(ms("token")),
            Some(ms("authorize")),
            Some(ms("devicecode")),
            if grant == Grant::ClientCredentials {
                vec![MICROSOFT_APP_SCOPE]
            } else {
                MICROSOFT_DELEGATED_SCOPES.to_vec()
            },
        ),
        Provider::Generic => (None, None, None, Vec::new()),
    };
    if config.provider == Provider::Microsoft
        && grant == Grant::ClientCredentials
        && matches!(tenant, "common" | "organizations" | "consumers")
    {
        return Err(Error::new(
            ErrorKind::Config,
            "microsoft app-only (client_credentials) sending needs `tenant`: your tenant id or domain",
        ));
    }
    if (grant == Grant::JwtBearer) != (config.provider == Provider::GoogleServiceAccount) {
        return Err(Error::new(
            ErrorKind::Config,
            "the jwt_bearer grant is for provider `google-service-account` only",
        ));
    }
    let resolved = Resolved {
        grant,
        token_url: config.token_url.clone().or(token),
        auth_url: config.auth_url.clone().or(auth),
        device_url: config.device_url.clone().or(device),
        scopes: config
            .scopes
            .clone()
            .unwrap_or_else(|| scopes.into_iter().map(String::from).collect()),
    };
    for (url, what) in [
        (&resolved.token_url, "token_url"),
        (&resolved.auth_url, "auth_url"),
        (&resolved.device_url, "device_url"),
    ] {
        if let Some(url) = url {
            check_endpoint(url, what)?;
        }
    }
    if resolved.token_url.is_none() && grant != Grant::JwtBearer {
        return Err(Error::new(
            ErrorKind::Config,
            format!("provider `{}` needs `token_url`", config.provider.name()),
        ));
    }
    Ok(resolved)
}

/// The credentials file a config points to.
pub(crate) fn credentials_path(config: &OAuthConfig) -> PathBuf {
    config
        .credentials_file
        .as_deref()
        .map(expand_home)
        .unwrap_or_else(store::default_credentials_file)
}

/// The token source a config describes. Reads no secret yet: that happens on the
/// first renewal, so that a mailer that only renders never needs credentials.
pub(crate) fn build(
    config: &OAuthConfig,
    user: Option<&str>,
    ca_file: Option<&Path>,
) -> Result<Box<dyn TokenSource>> {
    let resolved = resolve(config)?;
    let http = Http::new(
        ca_file,
        Duration::from_secs(config.timeout_secs.max(1)),
        config.attempts,
    )?;
    let common = Common {
        http,
        resolved,
        config: config.clone(),
    };
    Ok(match common.resolved.grant {
        Grant::RefreshToken => Box::new(RefreshGrant {
            origin: match &config.refresh_token_env {
                Some(var) => Origin::Env(var.clone()),
                None => Origin::File(credentials_path(config)),
            },
            common,
            rotated: Mutex::new(None),
            refused: Mutex::new(None),
        }),
        Grant::ClientCredentials => Box::new(ClientCredentialsGrant { common }),
        Grant::JwtBearer => {
            let user = user.ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    "google-service-account needs `auth.user`: the mailbox to send as",
                )
            })?;
            let key_file = config.key_file.as_deref().map(expand_home).ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    "google-service-account needs `key_file`: the service account's JSON key",
                )
            })?;
            Box::new(ServiceAccountGrant {
                common,
                key_file,
                user: user.to_string(),
            })
        }
    })
}

struct Common {
    http: Http,
    resolved: Resolved,
    config: OAuthConfig,
}

impl Common {
    fn env_secret(&self, var: &str, what: &str) -> Result<SecretString> {
        match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(SecretString::from(value)),
            _ => Err(Error::new(
                ErrorKind::Config,
                format!("environment variable {var} (the {what}) is not set"),
            )),
        }
    }

    fn client(&self, file: Option<&Credentials>) -> Result<TokenClient> {
        let client_id = self
            .config
            .client_id
            .clone()
            .or_else(|| file.and_then(|c| c.client_id.clone()))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    "no OAuth2 client id: set `client_id` or run `missive auth`",
                )
            })?;
        let secret = match &self.config.client_secret_env {
            Some(var) => Some(self.env_secret(var, "client secret")?),
            None => file.and_then(|c| c.client_secret.clone()),
        };
        token_client(
            &client_id,
            secret.as_ref(),
            self.resolved.token_url.as_deref().unwrap_or_default(),
            self.config.client_auth,
        )
    }

    fn scopes(&self) -> Vec<Scope> {
        self.resolved
            .scopes
            .iter()
            .cloned()
            .map(Scope::new)
            .collect()
    }

    fn reauth_hint(&self) -> String {
        format!("run `missive auth {}` again", self.config.provider.name())
    }
}

pub(crate) fn token_client(
    client_id: &str,
    secret: Option<&SecretString>,
    token_url: &str,
    auth: ClientAuth,
) -> Result<TokenClient> {
    let token_url = TokenUrl::new(token_url.to_string())
        .map_err(|e| Error::new(ErrorKind::Config, format!("token_url: {e}")))?;
    let mut client = BasicClient::new(ClientId::new(client_id.to_string()))
        .set_token_uri(token_url)
        .set_auth_type(match auth {
            ClientAuth::Header => AuthType::BasicAuth,
            ClientAuth::Body => AuthType::RequestBody,
        });
    if let Some(secret) = secret {
        client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_string()));
    }
    Ok(client)
}

/// A failed token request, and whether the provider refused the grant itself
/// (`invalid_grant`): then no later request with the same refresh token can succeed.
pub(crate) struct Failed {
    pub error: Error,
    pub grant_refused: bool,
}

impl From<Failed> for Error {
    fn from(failed: Failed) -> Error {
        failed.error
    }
}

/// Runs one token request, again after a backoff while the endpoint times out or
/// answers 5xx; refusals (`invalid_grant`, ...) and certificate problems end at once.
pub(crate) async fn request_with_retries<F, Fut>(
    http: &Http,
    hint: &str,
    mut call: F,
) -> std::result::Result<BasicTokenResponse, Failed>
where
    F: FnMut() -> Fut,
    Fut: Future<
        Output = Result<BasicTokenResponse, RequestTokenError<HttpError, BasicErrorResponse>>,
    >,
{
    let mut attempt = 1;
    loop {
        let error = match call().await {
            Ok(response) => return Ok(response),
            Err(e) => e,
        };
        let retryable = matches!(&error, RequestTokenError::Request(e) if e.is_retryable());
        let grant_refused = matches!(
            &error,
            RequestTokenError::ServerResponse(r) if *r.error() == BasicErrorResponseType::InvalidGrant
        );
        let error = token_error(error, hint);
        if !retryable || attempt >= http.attempts {
            return Err(Failed {
                error,
                grant_refused,
            });
        }
        tracing::info!(attempt, error = %error, "token endpoint failed; retrying");
        Http::backoff(attempt).await;
        attempt += 1;
    }
}

/// A token endpoint failure as a missive error. Only the provider's error code and
/// description are quoted: response bodies may hold tokens.
pub(crate) fn token_error(
    error: RequestTokenError<HttpError, BasicErrorResponse>,
    hint: &str,
) -> Error {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let detail = response
                .error_description()
                .map(|d| format!("{}: {d}", response.error()))
                .unwrap_or_else(|| response.error().to_string());
            let message = match response.error() {
                BasicErrorResponseType::InvalidGrant => format!(
                    "the token endpoint refused the grant ({detail}): the refresh token expired \
                     or was revoked; {hint}"
                ),
                BasicErrorResponseType::InvalidClient
                | BasicErrorResponseType::UnauthorizedClient => format!(
                    "the token endpoint refused the client ({detail}): check client_id and the \
                     client secret"
                ),
                BasicErrorResponseType::InvalidScope => {
                    format!("the token endpoint refused the scopes ({detail})")
                }
                _ => format!("the token endpoint refused the request ({detail})"),
            };
            Error::new(ErrorKind::Auth, message)
        }
        RequestTokenError::Request(e) => Error::new(
            if e.is_retryable() {
                ErrorKind::Transient
            } else {
                ErrorKind::Config
            },
            format!("cannot get an access token: {e}"),
        ),
        RequestTokenError::Parse(_, _) => Error::new(
            ErrorKind::Auth,
            "the token endpoint's answer is not a token response",
        ),
        RequestTokenError::Other(e) => Error::new(
            ErrorKind::Auth,
            format!("the token endpoint's answer is not usable: {e}"),
        ),
    }
}

fn issued(response: &BasicTokenResponse) -> Issued {
    Issued {
        access_token: SecretString::from(response.access_token().secret().to_string()),
        expires_in: response.expires_in(),
        lifetime: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_ask_for_the_narrowest_sending_scope() {
        let google = resolve(&OAuthConfig::new(Provider::Google)).unwrap();
        assert_eq!(google.scopes, ["https://mail.google.com/"]);
        let mut ms = OAuthConfig::new(Provider::Microsoft);
        ms.tenant = Some("contoso.onmicrosoft.com".into());
        let delegated = resolve(&ms).unwrap();
        assert_eq!(
            delegated.token_url.as_deref(),
            Some("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token")
        );
        assert_eq!(
            delegated.scopes,
            ["https://outlook.office.com/SMTP.Send", "offline_access"]
        );
        ms.grant = Some(Grant::ClientCredentials);
        assert_eq!(
            resolve(&ms).unwrap().scopes,
            ["https://outlook.office365.com/.default"]
        );
        ms.tenant = None;
        assert_eq!(resolve(&ms).unwrap_err().kind(), ErrorKind::Config);
    }

    #[test]
    fn generic_needs_a_safe_token_url() {
        let mut generic = OAuthConfig::new(Provider::Generic);
        assert!(resolve(&generic).is_err());
        generic.token_url = Some("http://auth.example.com/token".into());
        assert!(resolve(&generic).unwrap_err().message().contains("https"));
        generic.token_url = Some("http://127.0.0.1:9/token".into());
        assert!(resolve(&generic).is_ok());
    }
}
