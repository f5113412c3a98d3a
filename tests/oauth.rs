//! OAuth2 for SMTP against the fake token endpoint and the scripted SMTP server:
//! token sources, the shared cache, the rejected-token dance, rotation, and the
//! credentials file (issue 3, points 3 to 6).

mod support;

use std::path::Path;
use std::time::Duration;

use missive::{ErrorKind, Mailer};
use support::smtp::{FakeSmtp, Options, RejectStyle};
use support::token::{FakeTokenEndpoint, Fault};

struct Setup {
    smtp: FakeSmtp,
    tokens: FakeTokenEndpoint,
    dir: tempfile::TempDir,
}

impl Setup {
    /// A token endpoint issuing tokens for `ttl`, and an SMTP server that accepts the
    /// tokens it issued (as Dovecot's introspection does).
    async fn new(ttl: Duration, rotate: bool, style: RejectStyle) -> Setup {
        let tokens = FakeTokenEndpoint::start(ttl, rotate).await;
        let smtp = FakeSmtp::start(Options {
            validator: Some(tokens.validator()),
            reject_style: style,
            require_auth: true,
            ..Options::default()
        })
        .await;
        Setup {
            smtp,
            tokens,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn credentials(&self) -> std::path::PathBuf {
        self.dir.path().join("credentials.json")
    }

    /// A mailer using `mechanism` with a refresh token in the credentials file.
    async fn mailer(&self, mechanism: &str, oauth_extra: &str) -> missive::Result<Mailer> {
        if !self.credentials().exists() {
            support::credentials_file(self.dir.path(), &self.tokens.mint_refresh_token());
        }
        let yaml = format!(
            "  type: smtp\n  host: 127.0.0.1\n  port: {}\n  tls: none\n  timeout_secs: 2\n  \
             retry: {{ attempts: 2, initial_backoff_ms: 10, max_backoff_ms: 20 }}\n  auth:\n    \
             mechanism: {mechanism}\n    user: sender@acme.test\n    oauth:\n      provider: generic\n      \
             token_url: {}\n      credentials_file: {}\n      timeout_secs: 1\n{oauth_extra}",
            self.smtp.port,
            self.tokens.url,
            self.credentials().display()
        );
        let path = support::config_file(self.dir.path(), &yaml);
        Mailer::from_config(&path).await
    }

    fn token_requests(&self) -> usize {
        self.tokens.requests().len()
    }
}

async fn send(mailer: &Mailer) -> missive::Result<missive::Receipt> {
    let data = mailer.example("account/password-reset", 0)?;
    mailer
        .template("account/password-reset")
        .to("ada@example.test")
        .data(&data)
        .send()
        .await
}

#[tokio::test]
async fn xoauth2_and_oauthbearer_authenticate_with_a_renewed_token() {
    for mechanism in ["xoauth2", "oauthbearer"] {
        let setup = Setup::new(Duration::from_secs(3600), false, RejectStyle::Gmail).await;
        let mailer = setup.mailer(mechanism, "").await.unwrap();
        let receipt = send(&mailer).await.unwrap();
        assert_eq!(receipt.attempts, 1);
        assert_eq!(setup.smtp.received().len(), 1, "{mechanism}");
        let auths = setup.smtp.auths();
        assert_eq!(auths.len(), 1);
        assert_eq!(auths[0].mechanism, mechanism.to_ascii_uppercase());
        assert_eq!(auths[0].user, "sender@acme.test");
        assert!(auths[0].accepted);
        let requests = setup.tokens.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].grant_type, "refresh_token");
        assert!(requests[0].basic_auth, "client_auth: header is the default");
    }
}

#[tokio::test]
async fn concurrent_sends_share_one_token_renewal() {
    let setup = Setup::new(Duration::from_secs(3600), true, RejectStyle::Gmail).await;
    let mailer = setup.mailer("xoauth2", "").await.unwrap();
    let sends: Vec<_> = (0..16)
        .map(|_| {
            let mailer = mailer.clone();
            tokio::spawn(async move { send(&mailer).await })
        })
        .collect();
    for send in sends {
        send.await.unwrap().unwrap();
    }
    assert_eq!(setup.smtp.received().len(), 16);
    assert_eq!(setup.token_requests(), 1, "16 sends, one renewal");
    assert!(!setup.tokens.revoked_any());
}

#[tokio::test]
async fn tokens_are_renewed_ahead_of_expiry() {
    let setup = Setup::new(Duration::from_secs(2), false, RejectStyle::Gmail).await;
    let mailer = setup.mailer("xoauth2", "").await.unwrap();
    send(&mailer).await.unwrap();
    // Past 4/5 of the lifetime, so the cached token is due for renewal but still
    // valid: the server must never see an expired token.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    // A new connection is needed to authenticate again.
    let other = setup.mailer("xoauth2", "").await.unwrap();
    drop(other);
    let fresh_connection = {
        let receipt_before = setup.smtp.connections();
        let _ = receipt_before;
    };
    let _ = fresh_connection;
    send(&mailer).await.unwrap();
    assert_eq!(setup.smtp.received().len(), 2);
    assert!(setup.smtp.auths().iter().all(|a| a.accepted));
}
