//! OAuth2 for SMTP: the settings of `auth.oauth`, `missive auth` sign-in
//! ([`login`]), its report ([`status`]) and a renewal on demand ([`check`]).
//!
//! Inside, the SMTP transport asks a token cache (one per mailer) for a token before
//! it authenticates a connection, and drops a token the server refused; the cache
//! renews ahead of expiry, one renewal at a time. Everything provider-specific stays
//! behind one small trait, `TokenSource`: refresh-token grant, client credentials,
//! Google's service-account JWT bearer grant.

mod cache;
mod http;
mod login;
mod settings;
mod sources;
mod store;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use secrecy::SecretString;

pub(crate) use cache::TokenCache;
pub(crate) use http::{is_loopback, trust_ca_file};
pub use login::{check, login, status, CredentialStatus, LoginOptions, TokenCheck};
pub use settings::{ClientAuth, Grant, OAuthConfig, Provider};
pub(crate) use sources::build as build_source;
pub use store::default_credentials_file;
pub(crate) use store::expand_home;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An access token as the provider issued it.
pub(crate) struct Issued {
    pub access_token: SecretString,
    /// How long it stays valid from now, when the provider said.
    pub expires_in: Option<Duration>,
    /// Its whole lifetime, when it was issued earlier (a token kept in the
    /// credentials file): the renewal margin is a fraction of it.
    pub lifetime: Option<Duration>,
}

/// Something that can mint a new access token: one grant against one provider.
///
/// Implementations do their own retrying of transient endpoint failures and return
/// [`crate::ErrorKind::Auth`] for refusals; the [`TokenCache`] decides when to call.
pub(crate) trait TokenSource: Send + Sync {
    /// An access token: one kept from an earlier run while it is valid and
    /// `reuse_stored` (false after a server refused a token), else a new one from the
    /// provider.
    fn fetch(&self, reuse_stored: bool) -> BoxFuture<'_, crate::Result<Issued>>;
    /// Which credential this is, for logs and errors (never a secret).
    fn describe(&self) -> String;
}
