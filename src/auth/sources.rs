//! The token sources: refresh-token grant, client-credentials grant, and Google's
//! service-account JWT bearer grant, with the provider presets that fill them in.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponse, BasicErrorResponseType, BasicTokenResponse};
use oauth2::{
    AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, RefreshToken, RequestTokenError,
    Scope, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};

use crate::auth::http::{check_endpoint, Http, HttpError};
use crate::auth::store::{self, expand_home, Credentials};
use crate::auth::{BoxFuture, ClientAuth, Grant, Issued, OAuthConfig, Provider, TokenSource};
use crate::error::{Error, ErrorKind, Result};

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

enum Origin {
    Env(String),
    File(PathBuf),
}

/// Delegated access: a user's refresh token, rotated when the provider says so.
struct RefreshGrant {
    common: Common,
    origin: Origin,
    /// A rotated refresh token that could not be written back (it came from the
    /// environment, or the file was not writable): used until the process ends.
    rotated: Mutex<Option<SecretString>>,
    /// A refresh token the provider refused (`invalid_grant`), with its answer: given
    /// again without asking until the file (or variable) holds another one, so that
    /// every later send does not knock on the endpoint with a dead grant.
    refused: Mutex<Option<(SecretString, Error)>>,
}

impl RefreshGrant {
    async fn renew(&self, reuse_stored: bool) -> Result<Issued> {
        let _lock = match &self.origin {
            Origin::File(path) => Some(store::lock_for_renewal(path).await?),
            Origin::Env(_) => None,
        };
        let file = match &self.origin {
            Origin::File(path) => Some(store::load(path)?),
            Origin::Env(_) => None,
        };
        if reuse_stored {
            if let Some(kept) = file.as_ref().and_then(|f| self.still_valid(f)) {
                return Ok(kept);
            }
        }
        let kept = self
            .rotated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let refresh = match (kept, &self.origin) {
            (Some(kept), _) => kept,
            (None, Origin::Env(var)) => self.common.env_secret(var, "refresh token")?,
            (None, Origin::File(path)) => file
                .as_ref()
                .and_then(|f| f.refresh_token.clone())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Auth,
                        format!(
                            "{} holds no refresh token: {}",
                            path.display(),
                            self.common.reauth_hint()
                        ),
                    )
                })?,
        };
        if let Some((dead, answer)) = &*self.refused.lock().unwrap_or_else(|p| p.into_inner()) {
            if dead.expose_secret() == refresh.expose_secret() {
                return Err(answer.clone_shallow());
            }
        }
        let client = self.common.client(file.as_ref())?;
        let http = &self.common.http;
        let token = RefreshToken::new(refresh.expose_secret().to_string());
        let response = request_with_retries(http, &self.common.reauth_hint(), || {
            client
                .exchange_refresh_token(&token)
                .add_scopes(self.common.scopes())
                .request_async(http)
        })
        .await
        .map_err(|failed| {
            if failed.grant_refused {
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((refresh.clone(), failed.error.clone_shallow()));
            }
            failed.error
        })?;
        let rotated = response
            .refresh_token()
            .map(|t| SecretString::from(t.secret().to_string()))
            .filter(|t| t.expose_secret() != refresh.expose_secret());
        // The old refresh token may be dead from now on: save the new one before the
        // access token is used, so a crash right after cannot lose it.
        let issued = issued(&response);
        self.remember(file, rotated, &issued);
        Ok(issued)
    }

    /// The access token the file keeps, when it is valid for longer than the renewal
    /// margin the cache would apply to it.
    fn still_valid(&self, file: &Credentials) -> Option<Issued> {
        let token = file.access_token.clone()?;
        let expires_at = file.access_token_expires_at?;
        let now = store::now_unix();
        let lifetime = expires_at.saturating_sub(file.access_token_issued_at.unwrap_or(now));
        let margin = self
            .common
            .config
            .renew_before_secs
            .min(lifetime / 5)
            .max(1);
        (expires_at > now.saturating_add(margin)).then(|| Issued {
            access_token: token,
            expires_in: Some(Duration::from_secs(expires_at - now)),
            lifetime: Some(Duration::from_secs(lifetime)),
        })
    }

    fn remember(&self, file: Option<Credentials>, rotated: Option<SecretString>, issued: &Issued) {
        let mut kept = self.rotated.lock().unwrap_or_else(|p| p.into_inner());
        match (&self.origin, file) {
            (Origin::File(path), Some(mut credentials)) => {
                if let Some(new) = &rotated {
                    credentials.refresh_token = Some(new.clone());
                }
                let now = store::now_unix();
                // Without an expiry a later run could not tell whether it is valid.
                credentials.access_token = issued
                    .expires_in
                    .is_some()
                    .then(|| issued.access_token.clone());
                credentials.access_token_issued_at = issued.expires_in.map(|_| now);
                credentials.access_token_expires_at = issued.expires_in.map(|d| now + d.as_secs());
                match store::save(path, &credentials) {
                    Ok(()) => {
                        if rotated.is_some() {
                            tracing::info!(file = %path.display(), "rotated refresh token saved");
                        }
                        *kept = None;
                    }
                    Err(e) if rotated.is_some() => {
                        tracing::error!(
                            error = %e,
                            "cannot save the rotated refresh token; it is kept in memory, \
                             and `missive auth` will be needed after a restart"
                        );
                        *kept = rotated;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot update the credentials file"),
                }
            }
            _ => {
                if rotated.is_some() {
                    tracing::warn!(
                        "the provider rotated the refresh token from the environment; the new \
                         one is kept in memory only: use the credentials file to keep it"
                    );
                    *kept = rotated;
                }
            }
        }
    }
}

impl TokenSource for RefreshGrant {
    fn fetch(&self, reuse_stored: bool) -> BoxFuture<'_, Result<Issued>> {
        Box::pin(self.renew(reuse_stored))
    }
    fn describe(&self) -> String {
        let from = match &self.origin {
            Origin::Env(var) => format!("${var}"),
            Origin::File(path) => path.display().to_string(),
        };
        format!(
            "{} refresh token from {from}",
            self.common.config.provider.name()
        )
    }
}

/// App-only access with the client's own id and secret.
struct ClientCredentialsGrant {
    common: Common,
}

impl ClientCredentialsGrant {
    async fn renew(&self) -> Result<Issued> {
        let file = match &self.common.config.client_secret_env {
            Some(_) => None,
            None => Some(store::load(&credentials_path(&self.common.config))?),
        };
        let client = self.common.client(file.as_ref())?;
        let http = &self.common.http;
        let response = request_with_retries(http, "check the client secret", || {
            client
                .exchange_client_credentials()
                .add_scopes(self.common.scopes())
                .request_async(http)
        })
        .await?;
        Ok(issued(&response))
    }
}

impl TokenSource for ClientCredentialsGrant {
    fn fetch(&self, _reuse_stored: bool) -> BoxFuture<'_, Result<Issued>> {
        Box::pin(self.renew())
    }
    fn describe(&self) -> String {
        format!(
            "{} client credentials of {}",
            self.common.config.provider.name(),
            self.common
                .config
                .client_id
                .as_deref()
                .unwrap_or("the stored client")
        )
    }
}

/// Google Workspace service account impersonating `user` (domain-wide delegation).
struct ServiceAccountGrant {
    common: Common,
    key_file: PathBuf,
    user: String,
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
