//! The `transport: {type: smtp}` section of `missive.yaml`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::OAuthConfig;

/// An SMTP submission server and how to talk to it. Secrets are never here: a password
/// is named by `auth.password_env`, OAuth2 credentials come from the environment or the
/// credentials file `missive auth` writes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Server name; also the name its TLS certificate must carry.
    pub host: String,
    /// Port; by default 587 for `starttls`, 465 for `implicit`, 25 for `none`.
    #[serde(default)]
    pub port: Option<u16>,
    /// How the connection is encrypted.
    #[serde(default)]
    pub tls: TlsMode,
    /// The name the server's certificate must carry, when `host` is an address or an
    /// alias; `host` by default.
    #[serde(default)]
    pub tls_name: Option<String>,
    /// An extra PEM trust anchor (e.g. the CA of a self-signed test server), used for
    /// the SMTP server and the token endpoint alike.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The name sent in EHLO; the machine's host name by default.
    #[serde(default)]
    pub hello_name: Option<String>,
    /// Connection pool.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Seconds to wait for the server at any step before the attempt counts as failed.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Retries of transient failures.
    #[serde(default)]
    pub retry: RetryConfig,
    /// How to authenticate.
    #[serde(default)]
    pub auth: AuthConfig,
}

fn default_timeout() -> u64 {
    30
}

impl SmtpConfig {
    /// `host` with STARTTLS on port 587, no authentication and default pool, timeout
    /// and retry settings; adjust the fields from there.
    ///
    /// ```
    /// let mut smtp = missive::SmtpConfig::new("smtp.gmail.com");
    /// smtp.auth.mechanism = missive::Mechanism::Xoauth2;
    /// smtp.auth.user = Some("sender@gmail.com".into());
    /// smtp.auth.oauth = Some(missive::auth::OAuthConfig::new(missive::auth::Provider::Google));
    /// let config = missive::Config {
    ///     transport: missive::TransportConfig::Smtp(Box::new(smtp)),
    ///     ..missive::Config::default()
    /// };
    /// # let _ = config;
    /// ```
    pub fn new(host: impl Into<String>) -> SmtpConfig {
        SmtpConfig {
            host: host.into(),
            port: None,
            tls: TlsMode::default(),
            tls_name: None,
            ca_file: None,
            hello_name: None,
            pool: PoolConfig::default(),
            timeout_secs: default_timeout(),
            retry: RetryConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}

/// Transport security of the SMTP connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain connection upgraded with STARTTLS, which is required: a server that does
    /// not offer it is an error, never a silent fallback to plain text.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Implicit,
    /// No encryption; allowed only toward a loopback address.
    None,
}

/// Bounds of the connection pool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// At most this many connections at once, busy or idle.
    pub max_connections: usize,
    /// An idle connection older than this is closed instead of reused (`0`: no reuse).
    pub idle_timeout_secs: u64,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            max_connections: 4,
            idle_timeout_secs: 60,
        }
    }
}

/// Retry policy for transient failures (4xx replies, network errors, timeouts).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each failure, with jitter.
    pub initial_backoff_ms: u64,
    /// Upper bound of one wait.
    pub max_backoff_ms: u64,
    /// No attempt starts after this many seconds from the first.
    pub deadline_secs: u64,
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            attempts: 4,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            deadline_secs: 120,
        }
    }
}

impl RetryConfig {
    /// The wait after failed attempt `attempt` (from 1): exponential, capped, with
    /// "equal jitter" so that many senders failing together do not retry in lockstep.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(32));
        let capped = exp.min(self.max_backoff_ms);
        let half = capped / 2;
        Duration::from_millis(half + fastrand::u64(0..=half))
    }
}

/// SMTP authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The SASL mechanism.
    #[serde(default)]
    pub mechanism: Mechanism,
    /// The account to authenticate as (and, for Google service accounts, to impersonate).
    #[serde(default)]
    pub user: Option<String>,
    /// Where OAuth2 tokens come from, for `xoauth2` and `oauthbearer`.
    #[serde(default)]
    pub oauth: Option<OAuthConfig>,
    /// The environment variable holding the password, for `plain` and `login`.
    #[serde(default)]
    pub password_env: Option<String>,
}

/// SASL mechanism used to authenticate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// Google's and Microsoft's OAuth2 mechanism.
    Xoauth2,
    /// The standard OAuth2 mechanism (RFC 7628).
    Oauthbearer,
    /// User name and password in one step.
    Plain,
    /// User name and password, asked for one after the other.
    Login,
    /// No authentication (a relay that trusts the network).
    #[default]
    None,
}

impl Mechanism {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mechanism::Xoauth2 => "XOAUTH2",
            Mechanism::Oauthbearer => "OAUTHBEARER",
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::None => "none",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{ClientAuth, Grant, Provider};
    use crate::TransportConfig;

    /// The reference block of docs/smtp-oauth2.md is a valid configuration.
    #[test]
    fn the_documented_reference_parses() {
        let docs = include_str!("../../../docs/smtp-oauth2.md");
        let start = docs.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
        let block = &docs[start..start + docs[start..].find("```").expect("its end")];
        #[derive(Deserialize)]
        struct File {
            transport: TransportConfig,
        }
        let file: File = serde_yaml::from_str(block).expect("the reference parses");
        let TransportConfig::Smtp(smtp) = file.transport else {
            panic!("not smtp");
        };
        assert_eq!(smtp.tls, TlsMode::Starttls);
        assert_eq!(smtp.pool.max_connections, 4);
        assert_eq!(smtp.retry.deadline_secs, 120);
        assert_eq!(smtp.auth.mechanism, Mechanism::Xoauth2);
        let oauth = smtp.auth.oauth.expect("oauth");
        assert_eq!(oauth.provider, Provider::Google);
        assert_eq!(oauth.grant, Some(Grant::RefreshToken));
        assert_eq!(oauth.client_auth, ClientAuth::Header);
        assert_eq!(oauth.renew_before_secs, 120);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let retry = RetryConfig {
            attempts: 10,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            deadline_secs: 60,
        };
        for _ in 0..50 {
            let first = retry.backoff(1);
            assert!((50..=100).contains(&first.as_millis()), "{first:?}");
            let third = retry.backoff(3);
            assert!((200..=400).contains(&third.as_millis()), "{third:?}");
            assert!(retry.backoff(30) <= Duration::from_millis(1_000));
        }
    }
}
