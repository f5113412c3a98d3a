//! OAuth2 for SMTP against the fake token endpoint and the scripted SMTP server:
//! token sources, the shared cache, the rejected-token dance, rotation, and the
//! credentials file (issue 3, points 3 to 6).

use crate::support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use missive::{ErrorKind, Mailer};
use support::smtp::{FakeSmtp, Options, RejectStyle, Validator};
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
        Setup::with_validator(ttl, rotate, style, |tokens| tokens.validator()).await
    }

    async fn with_validator(
        ttl: Duration,
        rotate: bool,
        style: RejectStyle,
        validator: impl FnOnce(&FakeTokenEndpoint) -> Validator,
    ) -> Setup {
        let tokens = FakeTokenEndpoint::start(ttl, rotate).await;
        let smtp = FakeSmtp::start(Options {
            validator: Some(validator(&tokens)),
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
        self.mailer_with(mechanism, oauth_extra).await
    }

    /// Like `mailer`, without creating a credentials file. Pooled connections are
    /// not reused, so that every send authenticates with a token from the cache.
    async fn mailer_with(&self, mechanism: &str, oauth_extra: &str) -> missive::Result<Mailer> {
        let yaml = format!(
            "  type: smtp\n  host: 127.0.0.1\n  port: {}\n  tls: none\n  timeout_secs: 2\n  \
             retry: {{ attempts: 2, initial_backoff_ms: 10, max_backoff_ms: 20 }}\n  \
             pool: {{ idle_timeout_secs: 0 }}\n  auth:\n    \
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
    send(&mailer).await.unwrap();
    assert_eq!(setup.token_requests(), 1, "a fresh token is reused");
    // Past four fifths of the 2 s lifetime the cached token is due but still valid.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    send(&mailer).await.unwrap();
    assert_eq!(setup.token_requests(), 2);
    assert_eq!(setup.smtp.received().len(), 3);
    assert!(
        setup.smtp.auths().iter().all(|a| a.accepted),
        "the server never saw an expired token"
    );
}

#[tokio::test]
async fn token_endpoint_errors_and_timeouts_are_retried_with_backoff() {
    let setup = Setup::new(Duration::from_secs(3600), false, RejectStyle::Gmail).await;
    setup.tokens.fault(Fault::Status500);
    setup.tokens.fault(Fault::Slow(Duration::from_secs(3)));
    let mailer = setup.mailer("xoauth2", "").await.unwrap();
    let receipt = send(&mailer).await.unwrap();
    assert_eq!(receipt.attempts, 1);
    assert_eq!(setup.smtp.received().len(), 1);
    // The 500, the slow answer abandoned after `timeout_secs: 1`, then the good one.
    assert_eq!(setup.token_requests(), 3);
}

#[tokio::test]
async fn token_endpoint_retries_are_bounded() {
    let setup = Setup::new(Duration::from_secs(3600), false, RejectStyle::Gmail).await;
    for _ in 0..5 {
        setup.tokens.fault(Fault::Status500);
    }
    let mailer = setup
        .mailer("xoauth2", "      attempts: 3\n")
        .await
        .unwrap();
    let err = send(&mailer).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.message().contains("HTTP 500"), "{err}");
    assert_eq!(setup.token_requests(), 3);
    assert_eq!(setup.smtp.connections(), 0);
}

#[tokio::test]
async fn invalid_grant_stops_at_once_and_says_to_run_missive_auth() {
    let setup = Setup::new(Duration::from_secs(3600), false, RejectStyle::Gmail).await;
    setup.tokens.fault(Fault::InvalidGrant);
    let mailer = setup.mailer("xoauth2", "").await.unwrap();
    let err = send(&mailer).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert!(!err.is_retryable());
    assert!(err.message().contains("invalid_grant"), "{err}");
    assert!(err.message().contains("missive auth generic"), "{err}");
    assert_eq!(setup.token_requests(), 1, "no retry of a refused grant");
    assert_eq!(
        setup.smtp.connections(),
        0,
        "no connection for dead credentials"
    );
}

/// Refuses the first token it is shown, as a server does with a revoked token, and
/// then checks tokens against the endpoint.
fn refuse_first(tokens: &FakeTokenEndpoint) -> Validator {
    let tokens = tokens.clone();
    let shown = Arc::new(AtomicUsize::new(0));
    Arc::new(move |token: &str| shown.fetch_add(1, Ordering::SeqCst) > 0 && tokens.is_valid(token))
}

#[tokio::test]
async fn a_rejected_token_is_renewed_once_and_the_send_retried_once() {
    let cases = [
        ("xoauth2", RejectStyle::Gmail, Some("")),
        ("oauthbearer", RejectStyle::Gmail, Some("AQ==")),
        ("xoauth2", RejectStyle::Microsoft, None),
    ];
    for (mechanism, style, answer) in cases {
        let setup =
            Setup::with_validator(Duration::from_secs(3600), false, style, refuse_first).await;
        let mailer = setup.mailer(mechanism, "").await.unwrap();
        let receipt = send(&mailer).await.unwrap();
        assert_eq!(receipt.attempts, 1, "{mechanism} {style:?}");
        assert_eq!(setup.smtp.received().len(), 1);
        assert_eq!(
            setup.token_requests(),
            2,
            "{mechanism} {style:?}: dropped and renewed"
        );
        let auths = setup.smtp.auths();
        assert_eq!(auths.len(), 2);
        assert!(!auths[0].accepted && auths[1].accepted);
        assert_ne!(auths[0].secret, auths[1].secret, "a new token");
        assert_eq!(
            auths[0].challenge_answer.as_deref(),
            answer,
            "{mechanism} {style:?}: the error challenge is answered"
        );
    }
}

#[tokio::test]
async fn a_second_rejection_is_an_auth_error_quoting_the_server_and_never_loops() {
    let setup = Setup::with_validator(Duration::from_secs(3600), false, RejectStyle::Gmail, |_| {
        Arc::new(|_: &str| false)
    })
    .await;
    let mailer = setup.mailer("xoauth2", "").await.unwrap();
    let err = send(&mailer).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert_eq!(err.smtp_code(), Some(535));
    assert!(err.message().contains("5.7.8"), "{err}");
    assert!(err.message().contains(r#""status":"401""#), "{err}");
    assert_eq!(setup.token_requests(), 2);
    assert_eq!(setup.smtp.auths().len(), 2);
    assert!(setup.smtp.received().is_empty());
    assert!(
        !err.to_string().contains("at-"),
        "no token in the error: {err}"
    );

    let err = send(&mailer).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert_eq!(setup.token_requests(), 4, "each send renews once at most");
}

#[tokio::test]
async fn a_rotated_refresh_token_is_saved_before_use_and_survives() {
    let setup = Setup::new(Duration::from_secs(3600), true, RejectStyle::Gmail).await;
    let first = setup.tokens.mint_refresh_token();
    let path = support::credentials_file(setup.dir.path(), &first);
    // Two mailers on one credentials file, as two processes would be.
    let a = setup.mailer("xoauth2", "").await.unwrap();
    let b = setup.mailer("xoauth2", "").await.unwrap();
    send(&a).await.unwrap();
    let second = support::stored_refresh_token(&path);
    assert_ne!(second, first, "the rotated token replaced the old one");
    // Once the stored access token has expired, the other one renews with the
    // rotated refresh token, never with the spent one.
    support::expire_stored_access_token(&path);
    send(&b).await.unwrap();
    let third = support::stored_refresh_token(&path);
    assert_ne!(third, second);
    assert!(
        !setup.tokens.revoked_any(),
        "no rotated-away refresh token was ever presented again"
    );
    assert_eq!(setup.token_requests(), 2);
    assert_eq!(setup.smtp.received().len(), 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let leftovers: Vec<_> = std::fs::read_dir(setup.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file left behind");

    // A reused old refresh token makes this provider revoke the whole grant: the
    // clear error follows, not a retry loop.
    support::credentials_file(setup.dir.path(), &first);
    let c = setup.mailer("xoauth2", "").await.unwrap();
    let err = send(&c).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert!(err.message().contains("missive auth"), "{err}");
    assert!(setup.tokens.revoked_any());
}

#[cfg(unix)]
#[tokio::test]
async fn a_credentials_file_others_can_read_is_refused() {
    let setup = Setup::new(Duration::from_secs(3600), false, RejectStyle::Gmail).await;
    let path = support::credentials_file(setup.dir.path(), &setup.tokens.mint_refresh_token());
    support::set_mode(&path, 0o644);
    let mailer = setup.mailer("xoauth2", "").await.unwrap();
    let err = send(&mailer).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert!(err.message().contains("chmod 600"), "{err}");
    assert_eq!(setup.token_requests(), 0);
    assert_eq!(setup.smtp.connections(), 0);
}

#[tokio::test]
async fn token_urls_must_be_https_except_loopback() {
    let setup = Setup::new(Duration::from_secs(3600), false, RejectStyle::Gmail).await;
    let mut setup = setup;
    setup.tokens.url = "http://auth.example.com/token".into();
    let err = setup.mailer("xoauth2", "").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("https"), "{err}");
}

#[tokio::test]
async fn client_credentials_grant_for_app_only_sending() {
    std::env::set_var("MISSIVE_TEST_CLIENT_SECRET", support::token::CLIENT_SECRET);
    let setup = Setup::new(Duration::from_secs(3600), false, RejectStyle::Microsoft).await;
    let extra = format!(
        "      grant: client_credentials\n      client_id: {}\n      client_secret_env: \
         MISSIVE_TEST_CLIENT_SECRET\n      client_auth: body\n      scopes: [\"https://outlook.office365.com/.default\"]\n",
        support::token::CLIENT_ID
    );
    let mailer = setup.mailer_with("xoauth2", &extra).await.unwrap();
    send(&mailer).await.unwrap();
    send(&mailer).await.unwrap();
    let requests = setup.tokens.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].grant_type, "client_credentials");
    assert!(!requests[0].basic_auth);
    assert_eq!(requests[0].form["client_id"], support::token::CLIENT_ID);
    assert_eq!(
        requests[0].form["scope"],
        "https://outlook.office365.com/.default"
    );
    assert_eq!(setup.smtp.received().len(), 2);
}

#[tokio::test]
async fn google_service_account_signs_a_jwt_for_the_sending_user() {
    let setup = Setup::new(Duration::from_secs(3600), false, RejectStyle::Gmail).await;
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/keys");
    setup
        .tokens
        .expect_jwt_signed_by(&std::fs::read(keys.join("test-service-account.pub")).unwrap());
    let key_file = setup.dir.path().join("service-account.json");
    let key = serde_json::json!({
        "type": "service_account",
        "client_email": "mailer@acme-project.iam.gserviceaccount.com",
        "private_key_id": "test-key-1",
        "private_key": std::fs::read_to_string(keys.join("test-service-account.key")).unwrap(),
        "token_uri": setup.tokens.url,
    });
    std::fs::write(&key_file, key.to_string()).unwrap();
    support::set_mode(&key_file, 0o600);
    let yaml = format!(
        "  type: smtp\n  host: 127.0.0.1\n  port: {}\n  tls: none\n  auth:\n    mechanism: xoauth2\n    \
         user: sender@acme.test\n    oauth: {{ provider: google-service-account, key_file: {} }}\n",
        setup.smtp.port,
        key_file.display()
    );
    let mailer = Mailer::from_config(support::config_file(setup.dir.path(), &yaml))
        .await
        .unwrap();
    send(&mailer).await.unwrap();
    let claims = setup.tokens.jwt_claims();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["sub"], "sender@acme.test");
    assert_eq!(
        claims[0]["iss"],
        "mailer@acme-project.iam.gserviceaccount.com"
    );
    assert_eq!(claims[0]["scope"], "https://mail.google.com/");
    assert_eq!(claims[0]["aud"], setup.tokens.url.as_str());
    assert_eq!(setup.smtp.received().len(), 1);
}

#[tokio::test]
async fn no_secret_in_debug_output_or_errors() {
    std::env::set_var(
        "MISSIVE_TEST_CLIENT_SECRET_2",
        support::token::CLIENT_SECRET,
    );
    let setup = Setup::new(Duration::from_secs(3600), false, RejectStyle::Gmail).await;
    setup.tokens.fault(Fault::InvalidGrant);
    let mailer = setup
        .mailer(
            "xoauth2",
            "      client_secret_env: MISSIVE_TEST_CLIENT_SECRET_2\n",
        )
        .await
        .unwrap();
    let refresh = support::stored_refresh_token(&setup.credentials());
    let err = send(&mailer).await.unwrap_err();
    for shown in [format!("{mailer:?}"), format!("{err:?}"), err.to_string()] {
        assert!(!shown.contains(&refresh), "{shown}");
        assert!(!shown.contains(support::token::CLIENT_SECRET), "{shown}");
    }
}

#[tokio::test]
async fn a_temporary_auth_failure_is_retried_with_the_cached_token() {
    let setup = Setup::new(Duration::from_secs(3600), false, RejectStyle::Gmail).await;
    setup.smtp.fault(
        support::smtp::Stage::Auth,
        support::smtp::Action::Reply("454 4.7.0 Temporary authentication failure".into()),
    );
    let mailer = setup.mailer("xoauth2", "").await.unwrap();
    let receipt = send(&mailer).await.unwrap();
    assert_eq!(receipt.attempts, 2);
    assert_eq!(setup.token_requests(), 1, "a 4xx is not a token rejection");
    assert_eq!(setup.smtp.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailers_sharing_a_credentials_file_never_reuse_a_rotated_token() {
    let setup = Setup::new(Duration::from_secs(3600), true, RejectStyle::Gmail).await;
    // Four mailers, as four processes on one credentials file, all renewing at once.
    let mut mailers = Vec::new();
    for _ in 0..4 {
        mailers.push(setup.mailer("xoauth2", "").await.unwrap());
    }
    let sends: Vec<_> = mailers
        .into_iter()
        .map(|mailer| tokio::spawn(async move { send(&mailer).await }))
        .collect();
    for send in sends {
        send.await.unwrap().unwrap();
    }
    assert_eq!(
        setup.token_requests(),
        1,
        "the first renewal's access token, kept in the file, served the other three"
    );
    assert!(!setup.tokens.revoked_any());

    // The kept token expired: four new mailers find it so at once. The renewal lock
    // lets one spend the refresh token; the others wait and take what it stored,
    // rather than presenting the same refresh token again.
    support::expire_stored_access_token(&setup.credentials());
    let mut mailers = Vec::new();
    for _ in 0..4 {
        mailers.push(setup.mailer("xoauth2", "").await.unwrap());
    }
    let sends: Vec<_> = mailers
        .into_iter()
        .map(|mailer| tokio::spawn(async move { send(&mailer).await }))
        .collect();
    for send in sends {
        send.await.unwrap().unwrap();
    }
    assert_eq!(setup.token_requests(), 2);
    assert!(
        !setup.tokens.revoked_any(),
        "no refresh token was presented twice"
    );
}

/// A token endpoint on 127.0.0.1 whose certificate (for localhost / 127.0.0.1) comes
/// from the test CA, which nothing trusts unless `ca_file` names it. Counts the
/// connections it accepts.
async fn tls_token_endpoint() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/token",
        listener.local_addr().unwrap().port()
    );
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let acceptor = support::smtp::test_tls_acceptor();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(socket).await;
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn an_untrusted_token_endpoint_certificate_is_named_and_not_retried() {
    let mut setup = Setup::new(Duration::from_secs(3600), false, RejectStyle::Gmail).await;
    let (url, accepted) = tls_token_endpoint().await;
    setup.tokens.url = url;
    let mailer = setup
        .mailer("xoauth2", "      attempts: 4\n")
        .await
        .unwrap();
    let err = send(&mailer).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.message().contains("UnknownIssuer"), "{err}");
    assert!(err.message().contains("ca_file"), "{err}");
    assert!(
        !err.message().contains("error sending request"),
        "says what is wrong: {err}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a certificate problem is configuration: asked once"
    );
    assert_eq!(setup.smtp.connections(), 0);
}

#[tokio::test]
async fn a_refused_grant_is_remembered_until_the_credentials_file_changes() {
    let setup = Setup::new(Duration::from_secs(3600), false, RejectStyle::Gmail).await;
    let mailer = setup.mailer("xoauth2", "").await.unwrap();
    // The user removed the app's access: every request with this grant is refused.
    setup.tokens.revoke_all();
    for _ in 0..3 {
        let err = send(&mailer).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
        assert!(err.message().contains("invalid_grant"), "{err}");
        assert!(err.message().contains("missive auth"), "{err}");
    }
    assert_eq!(
        setup.token_requests(),
        1,
        "the refusal is remembered, not asked again by every send"
    );
    // `missive auth` wrote a new refresh token: the same mailer uses it.
    support::credentials_file(setup.dir.path(), &setup.tokens.mint_refresh_token());
    send(&mailer).await.unwrap();
    assert_eq!(setup.token_requests(), 2);
    assert_eq!(setup.smtp.received().len(), 1);
}

#[tokio::test]
async fn the_access_token_is_kept_in_the_file_and_reused_while_valid() {
    let setup = Setup::new(Duration::from_secs(3600), true, RejectStyle::Gmail).await;
    let first = setup.tokens.mint_refresh_token();
    // A file as version 1 wrote it: no access token.
    let path = support::credentials_file(setup.dir.path(), &first);
    send(&setup.mailer("xoauth2", "").await.unwrap())
        .await
        .unwrap();
    assert_eq!(setup.token_requests(), 1);
    let rotated = support::stored_refresh_token(&path);
    let access = support::stored_access_token(&path).expect("the access token is kept");
    assert_eq!(setup.smtp.auths()[0].secret, access);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Later runs (new mailers, as new processes) use it without asking the provider,
    // so a rotating provider's refresh token is not spent on every run.
    for _ in 0..3 {
        send(&setup.mailer("xoauth2", "").await.unwrap())
            .await
            .unwrap();
    }
    assert_eq!(setup.token_requests(), 1);
    assert_eq!(support::stored_refresh_token(&path), rotated);
    assert!(setup.smtp.auths().iter().all(|a| a.secret == access));
    // Expired: the next run renews, with the rotated refresh token.
    support::expire_stored_access_token(&path);
    send(&setup.mailer("xoauth2", "").await.unwrap())
        .await
        .unwrap();
    assert_eq!(setup.token_requests(), 2);
    assert_eq!(setup.tokens.requests()[1].form["refresh_token"], rotated);
    assert_ne!(support::stored_access_token(&path).unwrap(), access);
    assert!(!setup.tokens.revoked_any());
}

#[tokio::test]
async fn a_kept_access_token_the_server_refuses_is_not_offered_again() {
    let setup = Setup::new(Duration::from_secs(3600), false, RejectStyle::Gmail).await;
    let path = support::credentials_file(setup.dir.path(), &setup.tokens.mint_refresh_token());
    // A token the file says is valid for an hour, which the server does not accept
    // (revoked at the provider, say).
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json["access_token"] = "at-dead".into();
    json["access_token_issued_at"] = now.into();
    json["access_token_expires_at"] = (now + 3600).into();
    std::fs::write(&path, json.to_string()).unwrap();
    support::set_mode(&path, 0o600);
    send(&setup.mailer("xoauth2", "").await.unwrap())
        .await
        .unwrap();
    let auths = setup.smtp.auths();
    assert_eq!(auths.len(), 2, "{auths:?}");
    assert_eq!(auths[0].secret, "at-dead");
    assert!(!auths[0].accepted);
    assert_ne!(
        auths[1].secret, "at-dead",
        "renewed, not taken from the file again"
    );
    assert!(auths[1].accepted);
    assert_eq!(setup.token_requests(), 1);
    assert_ne!(support::stored_access_token(&path).unwrap(), "at-dead");
}
