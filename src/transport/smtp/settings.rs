//! The `transport: {type: smtp}` section of `missive.yaml`.

use std::path::PathBuf;

use serde::Deserialize;

use crate::auth::OAuthConfig;
use crate::transport::RetryConfig;

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
    /// How long to wait for the server at each stage.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// When set, no wait for the server at any stage lasts longer than this many
    /// seconds, whatever `timeouts` says.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Retries of transient failures, for direct sends (the queue has its own
    /// schedule).
    #[serde(default)]
    pub retry: RetryConfig,
    /// How to authenticate.
    #[serde(default)]
    pub auth: AuthConfig,
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
    /// let mut config = missive::Config::default();
    /// config.transport = missive::TransportConfig::Smtp(Box::new(smtp));
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
            timeouts: Timeouts::default(),
            timeout_secs: None,
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

/// How long to wait for the server at each stage, in seconds. The defaults are
/// RFC 5321 4.5.3.2's: a server may take its time, above all to answer the final "."
/// (it may be scanning the message), and giving up early there sends the message
/// twice.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Opening the TCP connection and the TLS handshake (not in the RFC).
    pub connect: u64,
    /// The greeting, EHLO, STARTTLS and AUTH.
    pub greeting: u64,
    /// The replies to `MAIL FROM`, `RCPT TO` and `RSET`.
    pub mail: u64,
    /// The reply to `DATA`.
    pub data: u64,
    /// Each write of the message while the server is taking it.
    pub block: u64,
    /// The reply to the final "."; a connection lost while waiting for it leaves the
    /// delivery unknown.
    pub final_dot: u64,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: 30,
            greeting: 300,
            mail: 300,
            data: 120,
            block: 180,
            final_dot: 600,
        }
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
        assert_eq!(smtp.retry.deadline_secs, 600);
        assert_eq!(smtp.timeouts, Timeouts::default());
        assert_eq!(smtp.timeouts.final_dot, 600);
        assert_eq!(smtp.auth.mechanism, Mechanism::Xoauth2);
        let oauth = smtp.auth.oauth.expect("oauth");
        assert_eq!(oauth.provider, Provider::Google);
        assert_eq!(oauth.grant, Some(Grant::RefreshToken));
        assert_eq!(oauth.client_auth, ClientAuth::Header);
        assert_eq!(oauth.renew_before_secs, 120);
    }
}
