//! The `auth.oauth` section of an SMTP transport.

use std::path::PathBuf;

use serde::Deserialize;

/// Where OAuth2 access tokens come from. Only names live here: the client secret and
/// refresh token come from environment variables or the credentials file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// Which identity provider; fills in endpoints and scopes.
    pub provider: Provider,
    /// How tokens are obtained; the provider's usual grant by default.
    #[serde(default)]
    pub grant: Option<Grant>,
    /// Microsoft Entra tenant (id or domain); `common` by default.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Token endpoint, overriding the preset (required for `generic`).
    #[serde(default)]
    pub token_url: Option<String>,
    /// Authorization endpoint, for `missive auth` (required there for `generic`).
    #[serde(default)]
    pub auth_url: Option<String>,
    /// Device authorization endpoint, for `missive auth --device`.
    #[serde(default)]
    pub device_url: Option<String>,
    /// The redirect URI registered with the provider, for `missive auth`: a loopback
    /// `http://` address with a fixed port, e.g. `http://127.0.0.1:8765/callback`.
    /// By default missive listens on a random port at `http://127.0.0.1:<port>/`,
    /// which providers following RFC 8252 (Google, Microsoft) accept but most
    /// OpenID providers do not.
    #[serde(default)]
    pub redirect_uri: Option<String>,
    /// Scopes to ask for, overriding the preset's narrowest sending scope.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// The OAuth2 client id; else the one `missive auth` stored.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Environment variable holding the client secret; else the credentials file's.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// How the client authenticates to the token endpoint.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Environment variable holding the refresh token. A token from the environment
    /// cannot be saved when the provider rotates it: prefer the credentials file.
    #[serde(default)]
    pub refresh_token_env: Option<String>,
    /// The credentials file `missive auth` writes; by default
    /// `$XDG_CONFIG_HOME/missive/credentials.json` (`~/.config/...`).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Google service account JSON key file (`google-service-account`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Renew a token this many seconds before it expires (at most a fifth of its
    /// lifetime, so that short-lived tokens stay useful).
    #[serde(default = "default_renew_before")]
    pub renew_before_secs: u64,
    /// Seconds to wait for the token endpoint per request.
    #[serde(default = "default_http_timeout")]
    pub timeout_secs: u64,
    /// Requests to the token endpoint in all when it times out or answers 5xx.
    #[serde(default = "default_http_attempts")]
    pub attempts: u32,
}

fn default_renew_before() -> u64 {
    120
}
fn default_http_timeout() -> u64 {
    15
}
fn default_http_attempts() -> u32 {
    4
}

impl OAuthConfig {
    /// A config for `provider` with every other setting at its default.
    pub fn new(provider: Provider) -> OAuthConfig {
        OAuthConfig {
            provider,
            grant: None,
            tenant: None,
            token_url: None,
            auth_url: None,
            device_url: None,
            redirect_uri: None,
            scopes: None,
            client_id: None,
            client_secret_env: None,
            client_auth: ClientAuth::default(),
            refresh_token_env: None,
            credentials_file: None,
            key_file: None,
            renew_before_secs: default_renew_before(),
            timeout_secs: default_http_timeout(),
            attempts: default_http_attempts(),
        }
    }
}

/// Identity provider presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    /// Gmail / Google Workspace user, refresh token from `missive auth google`.
    Google,
    /// Google Workspace service account with domain-wide delegation, sending as `user`.
    GoogleServiceAccount,
    /// Microsoft 365 / Outlook: delegated (refresh token) or app-only (client credentials).
    Microsoft,
    /// Any OAuth2 server: give `token_url` and `scopes`.
    Generic,
}

impl Provider {
    /// The name used on the command line and in the config.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Google => "google",
            Provider::GoogleServiceAccount => "google-service-account",
            Provider::Microsoft => "microsoft",
            Provider::Generic => "generic",
        }
    }
}

/// The OAuth2 grant used to get access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// A user's refresh token (delegated access).
    RefreshToken,
    /// The client's own credentials (app-only access, e.g. Microsoft 365).
    ClientCredentials,
    /// A signed JWT assertion (Google service accounts).
    JwtBearer,
}

/// How the client id and secret reach the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// HTTP Basic authentication header (RFC 6749's preference).
    #[default]
    Header,
    /// `client_id` and `client_secret` form fields (Google, Microsoft accept both).
    Body,
}
