//! The Gmail API and Microsoft Graph transports against fakes on 127.0.0.1 with the
//! private test CA, tokens from the fake token endpoint, and failover between
//! transports: what goes on the wire, and how every documented answer is read.

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use missive::{async_trait, Config, Delivery, Email, ErrorKind, Mailer, Transport};
use support::api::{FakeApi, Fault, Flavor};
use support::token::FakeTokenEndpoint;

const USER: &str = "sender@acme.test";
const GMAIL_SEND: &str = "https://www.googleapis.com/auth/gmail.send";

fn ca_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/keys/test-ca.pem")
}

/// The messages a [`Recorder`] saw, as built.
type Sent = Arc<Mutex<Vec<Vec<u8>>>>;

/// Passes every message on to the configured transport and keeps the bytes it was
/// given: what the SMTP transport would put after DATA.
#[derive(Debug)]
struct Recorder {
    inner: Arc<dyn Transport>,
    raw: Sent,
}

#[async_trait]
impl Transport for Recorder {
    async fn send(&self, email: &Email) -> missive::Result<Delivery> {
        self.raw.lock().unwrap().push(email.raw().to_vec());
        self.inner.send(email).await
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn parallelism(&self) -> usize {
        self.inner.parallelism()
    }
}

struct Setup {
    dir: tempfile::TempDir,
    tokens: FakeTokenEndpoint,
    api: FakeApi,
}

impl Setup {
    async fn new(flavor: Flavor) -> Setup {
        Setup::rotating(flavor, false).await
    }

    async fn rotating(flavor: Flavor, rotate: bool) -> Setup {
        let tokens = FakeTokenEndpoint::start(Duration::from_secs(3600), rotate).await;
        let api = FakeApi::start(flavor, USER).await;
        api.validate_with(tokens.validator());
        let dir = tempfile::tempdir().unwrap();
        support::credentials_file(dir.path(), &tokens.mint_refresh_token());
        Setup { dir, tokens, api }
    }

    /// The transport section for this fake; `extra` lines are indented by two.
    fn yaml(&self, extra: &str) -> String {
        let kind = match self.api.flavor {
            Flavor::Gmail => "gmail",
            Flavor::Graph => "graph",
        };
        format!(
            "  type: {kind}\n  user: {USER}\n  base_url: {}\n  ca_file: {}\n  timeout_secs: 2\n  \
             retry: {{ attempts: 3, initial_backoff_ms: 10, max_backoff_ms: 20 }}\n  \
             oauth: {{ provider: generic, token_url: {}, credentials_file: {} }}\n{extra}",
            self.api.base_url,
            ca_file().display(),
            self.tokens.url,
            self.dir.path().join("credentials.json").display(),
        )
    }

    /// A mailer on `transport_yaml` whose messages are recorded on their way in.
    fn mailer(&self, transport_yaml: &str) -> missive::Result<(Mailer, Sent)> {
        let path = support::config_file(self.dir.path(), transport_yaml);
        let config = Config::from_file(path)?;
        let raw = Arc::new(Mutex::new(Vec::new()));
        let recorder = Recorder {
            inner: config.transport.open()?,
            raw: raw.clone(),
        };
        let mailer = Mailer::builder()
            .config(config)
            .transport(recorder)
            .build()?;
        Ok((mailer, raw))
    }

    fn default_mailer(&self) -> (Mailer, Sent) {
        self.mailer(&self.yaml("")).expect("mailer builds")
    }
}

async fn send(mailer: &Mailer) -> missive::Result<missive::Receipt> {
    let data = mailer.example("welcome", 0)?;
    mailer
        .template("welcome")
        .to("ada@example.test")
        .data(&data)
        .send()
        .await
}

#[tokio::test]
async fn gmail_sends_the_built_mime_as_base64url_raw_with_the_gmail_send_scope() {
    let setup = Setup::new(Flavor::Gmail).await;
    let (mailer, raw) = setup.default_mailer();
    let receipt = send(&mailer).await.unwrap();
    assert_eq!(receipt.transport, "gmail");
    assert_eq!(receipt.accepted, ["ada@example.test"]);
    assert!(
        receipt.reply.contains("18c2f0a1b2c3d4e5"),
        "{}",
        receipt.reply
    );
    send(&mailer).await.unwrap();

    let requests = setup.api.requests();
    assert_eq!(requests.len(), 2);
    let first = &requests[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, format!("/gmail/v1/users/{USER}/messages/send"));
    assert_eq!(first.content_type, "application/json");
    assert!(setup.tokens.is_valid(&first.bearer));
    let raw = raw.lock().unwrap();
    assert_eq!(first.mime, raw[0], "the decoded raw is the built message");
    assert_eq!(requests[1].mime, raw[1]);
    // One connection, kept alive across sends; one token for both.
    assert_eq!(setup.api.connections(), 1);
    assert_eq!(requests[1].connection, 1);
    let token_requests = setup.tokens.requests();
    assert_eq!(token_requests.len(), 1);
    assert_eq!(token_requests[0].form["scope"], GMAIL_SEND);
}

#[tokio::test]
async fn gmail_uploads_large_messages_as_message_rfc822() {
    let setup = Setup::new(Flavor::Gmail).await;
    let (mailer, raw) = setup.default_mailer();
    let data = mailer.example("welcome", 0).unwrap();
    let big: Vec<u8> = (0..4_500_000u32).map(|i| (i % 251) as u8).collect();
    let receipt = mailer
        .template("welcome")
        .to("ada@example.test")
        .data(&data)
        .attach(missive::Attachment::new("data.bin", "application/octet-stream", big).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(receipt.transport, "gmail");
    let requests = setup.api.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].path,
        format!("/upload/gmail/v1/users/{USER}/messages/send?uploadType=media")
    );
    assert_eq!(requests[0].content_type, "message/rfc822");
    assert_eq!(requests[0].mime, raw.lock().unwrap()[0]);
}

#[tokio::test]
async fn graph_sends_the_built_mime_in_base64_as_text_plain_with_mail_send() {
    let setup = Setup::new(Flavor::Graph).await;
    let (mailer, raw) = setup.default_mailer();
    let receipt = send(&mailer).await.unwrap();
    assert_eq!(receipt.transport, "graph");
    assert!(receipt.reply.contains("202"), "{}", receipt.reply);
    assert!(
        receipt
            .reply
            .contains("5a7d3f00-1111-2222-3333-444455556666"),
        "the request-id is kept for support cases: {}",
        receipt.reply
    );
    let requests = setup.api.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, format!("/v1.0/users/{USER}/sendMail"));
    assert_eq!(requests[0].content_type, "text/plain");
    assert_eq!(requests[0].mime, raw.lock().unwrap()[0]);
    assert_eq!(
        setup.tokens.requests()[0].form["scope"],
        "https://graph.microsoft.com/Mail.Send offline_access"
    );
}

#[tokio::test]
async fn graph_refuses_a_message_past_its_request_limit_before_sending() {
    let setup = Setup::new(Flavor::Graph).await;
    let (mailer, _raw) = setup.default_mailer();
    let data = mailer.example("welcome", 0).unwrap();
    let err = mailer
        .template("welcome")
        .to("ada@example.test")
        .data(&data)
        .attach(
            missive::Attachment::new("big.bin", "application/octet-stream", vec![7u8; 3_300_000])
                .unwrap(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(err.message().contains("4194304"), "{err}");
    assert!(setup.api.requests().is_empty());
    assert!(
        setup.tokens.requests().is_empty(),
        "not even a token was fetched"
    );
}

#[tokio::test]
async fn bcc_recipients_reach_the_api_in_a_bcc_header() {
    let setup = Setup::new(Flavor::Gmail).await;
    let (mailer, raw) = setup.default_mailer();
    let data = mailer.example("welcome", 0).unwrap();
    let receipt = mailer
        .template("welcome")
        .to("ada@example.test")
        .bcc("audit@acme.test")
        .data(&data)
        .send()
        .await
        .unwrap();
    assert_eq!(receipt.accepted, ["ada@example.test", "audit@acme.test"]);
    let built = raw.lock().unwrap()[0].clone();
    let mut expected = b"Bcc: audit@acme.test\r\n".to_vec();
    expected.extend_from_slice(&built);
    assert_eq!(setup.api.requests()[0].mime, expected);
}

#[tokio::test]
async fn a_refused_token_is_renewed_once_and_the_request_retried_once() {
    for flavor in [Flavor::Gmail, Flavor::Graph] {
        let setup = Setup::new(flavor).await;
        let (mailer, raw) = setup.default_mailer();
        setup.api.fault(Fault::Unauthorized);
        let receipt = send(&mailer).await.unwrap();
        assert_eq!(
            receipt.attempts, 1,
            "{flavor:?}: renewed within the attempt"
        );
        let requests = setup.api.requests();
        assert_eq!(requests.len(), 2, "{flavor:?}");
        assert_ne!(requests[0].bearer, requests[1].bearer, "{flavor:?}");
        assert_eq!(requests[1].mime, raw.lock().unwrap()[0]);
        assert_eq!(setup.tokens.requests().len(), 2, "{flavor:?}");

        setup.api.fault(Fault::Unauthorized);
        setup.api.fault(Fault::Unauthorized);
        let err = send(&mailer).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{flavor:?}: {err}");
        assert!(err.message().contains("freshly renewed"), "{err}");
        assert!(err.message().contains("invalid_token"), "{err}");
        assert_eq!(
            setup.api.requests().len(),
            4,
            "{flavor:?}: two more requests, no retry loop"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_one_token_and_rotated_refresh_tokens_are_saved() {
    let setup = Setup::rotating(Flavor::Graph, true).await;
    let credentials = setup.dir.path().join("credentials.json");
    let first = support::stored_refresh_token(&credentials);
    let (mailer, _raw) = setup.default_mailer();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let mailer = mailer.clone();
        tasks.spawn(async move { send(&mailer).await });
    }
    while let Some(sent) = tasks.join_next().await {
        sent.unwrap().unwrap();
    }
    assert_eq!(setup.api.requests().len(), 16);
    assert_eq!(
        setup.tokens.requests().len(),
        1,
        "one renewal for the burst"
    );
    let second = support::stored_refresh_token(&credentials);
    assert_ne!(first, second, "the rotated refresh token was saved");
    // A rejected token makes the next renewal present the saved one, which the
    // endpoint would refuse (and revoke the grant for) were it the spent one.
    setup.api.fault(Fault::Unauthorized);
    send(&mailer).await.unwrap();
    assert!(!setup.tokens.revoked_any());
    assert_ne!(support::stored_refresh_token(&credentials), second);
}

#[tokio::test]
async fn the_configured_rate_spaces_sends() {
    let setup = Setup::new(Flavor::Gmail).await;
    let (mailer, _raw) = setup
        .mailer(&setup.yaml("  rate: 10/s\n  max_concurrent: 1\n"))
        .unwrap();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mailer = mailer.clone();
        tasks.spawn(async move { send(&mailer).await });
    }
    while let Some(sent) = tasks.join_next().await {
        sent.unwrap().unwrap();
    }
    // Four sends at 10/s: the last one starts 300 ms after the first.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(setup.api.requests().len(), 4);
}

#[tokio::test]
async fn a_token_without_the_sending_scope_is_an_auth_error_naming_it() {
    for (flavor, scope) in [(Flavor::Gmail, GMAIL_SEND), (Flavor::Graph, "Mail.Send")] {
        let setup = Setup::new(flavor).await;
        let (mailer, _raw) = setup.default_mailer();
        setup.api.fault(Fault::InsufficientScope);
        let err = send(&mailer).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{flavor:?}: {err}");
        assert!(err.message().contains(scope), "{flavor:?}: {err}");
        assert_eq!(setup.api.requests().len(), 1, "{flavor:?}: not retried");
    }
    let setup = Setup::new(Flavor::Graph).await;
    let (mailer, _raw) = setup.default_mailer();
    setup.api.fault(Fault::Forbidden { rate: false });
    let err = send(&mailer).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert!(err.message().contains("application access policy"), "{err}");
}

#[tokio::test]
async fn throttling_is_transient_and_retry_after_is_honoured() {
    for (flavor, fault) in [
        (Flavor::Gmail, Fault::TooManyRequests(1)),
        (Flavor::Graph, Fault::TooManyRequests(1)),
        (Flavor::Graph, Fault::Unavailable(1)),
    ] {
        let setup = Setup::new(flavor).await;
        let (mailer, _raw) = setup.default_mailer();
        setup.api.fault(fault.clone());
        let started = Instant::now();
        let receipt = send(&mailer).await.unwrap();
        // The policy's own backoff is 10-20 ms: the wait is the server's.
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{flavor:?} {fault:?}: retried after {:?}",
            started.elapsed()
        );
        assert_eq!(receipt.attempts, 2);
    }
    // Gmail's per-user rate limit comes as a 403 too.
    let setup = Setup::new(Flavor::Gmail).await;
    let (mailer, _raw) = setup.default_mailer();
    setup.api.fault(Fault::Forbidden { rate: true });
    assert_eq!(send(&mailer).await.unwrap().attempts, 2);
}

#[tokio::test]
async fn server_errors_are_transient_and_bad_requests_permanent_with_the_api_code() {
    for flavor in [Flavor::Gmail, Flavor::Graph] {
        let setup = Setup::new(flavor).await;
        let (mailer, _raw) = setup.default_mailer();
        setup.api.fault(Fault::ServerError);
        assert_eq!(send(&mailer).await.unwrap().attempts, 2, "{flavor:?}");
        for _ in 0..3 {
            setup.api.fault(Fault::ServerError);
        }
        let err = send(&mailer).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient, "{flavor:?}");
        assert!(err.message().contains("HTTP 500"), "{err}");

        setup.api.fault(Fault::BadRequest);
        let before = setup.api.requests().len();
        let err = send(&mailer).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent, "{flavor:?}");
        let code = match flavor {
            Flavor::Gmail => "invalidArgument: Invalid To header",
            Flavor::Graph => "ErrorInvalidRecipients: At least one recipient isn't valid.",
        };
        assert!(err.message().contains(code), "{err}");
        assert_eq!(setup.api.requests().len(), before + 1, "not retried");
    }
}

#[tokio::test]
async fn a_lost_answer_after_the_whole_request_is_delivery_unknown() {
    for fault in [Fault::Stall, Fault::DropAfterRequest, Fault::GatewayTimeout] {
        for flavor in [Flavor::Gmail, Flavor::Graph] {
            let setup = Setup::new(flavor).await;
            let (mailer, _raw) = setup.default_mailer();
            setup.api.fault(fault.clone());
            let err = send(&mailer).await.unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::DeliveryUnknown,
                "{flavor:?} {fault:?}: {err}"
            );
            assert!(err.may_have_been_delivered());
            assert!(
                err.message_id().is_some(),
                "a resend can keep the Message-ID"
            );
            assert_eq!(
                setup.api.requests().len(),
                1,
                "{flavor:?} {fault:?}: not resent"
            );
        }
    }
}

#[tokio::test]
async fn a_connection_dropped_before_the_request_is_transient_and_retried() {
    for flavor in [Flavor::Gmail, Flavor::Graph] {
        let setup = Setup::new(flavor).await;
        let (mailer, _raw) = setup.default_mailer();
        setup.api.fault(Fault::DropBeforeTls);
        let receipt = send(&mailer).await.unwrap();
        assert_eq!(receipt.attempts, 2, "{flavor:?}");
        assert_eq!(setup.api.requests().len(), 1, "{flavor:?}");
    }
}

#[tokio::test]
async fn failover_sends_through_the_next_transport_when_the_first_is_down() {
    let setup = Setup::new(Flavor::Gmail).await;
    // A port nothing listens on: the SMTP server is down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let gmail = setup
        .yaml("")
        .replace("\n  ", "\n      ")
        .replacen("  type", "    - type", 1);
    let yaml = format!(
        "  type: failover\n  retry: {{ attempts: 1 }}\n  transports:\n    \
         - type: smtp\n      host: 127.0.0.1\n      port: {port}\n      tls: none\n      \
         timeout_secs: 2\n{gmail}"
    );
    let (mailer, raw) = setup.mailer(&yaml).unwrap();
    let receipt = send(&mailer).await.unwrap();
    assert_eq!(
        receipt.transport, "gmail",
        "the receipt names who delivered"
    );
    assert_eq!(receipt.attempts, 1);
    assert_eq!(setup.api.requests()[0].mime, raw.lock().unwrap()[0]);

    // A permanent refusal is not failed over: the next transport would refuse it too,
    // and an unknown outcome may already be delivered.
    let graph = Setup::new(Flavor::Graph).await;
    let second = graph
        .yaml("")
        .replace("\n  ", "\n      ")
        .replacen("  type", "    - type", 1);
    let first = setup
        .yaml("")
        .replace("\n  ", "\n      ")
        .replacen("  type", "    - type", 1);
    let yaml =
        format!("  type: failover\n  retry: {{ attempts: 1 }}\n  transports:\n{first}{second}");
    let (mailer, _raw) = setup.mailer(&yaml).unwrap();
    for (fault, kind) in [
        (Fault::BadRequest, ErrorKind::Permanent),
        (Fault::Stall, ErrorKind::DeliveryUnknown),
    ] {
        setup.api.fault(fault);
        assert_eq!(send(&mailer).await.unwrap_err().kind(), kind);
        assert!(graph.api.requests().is_empty(), "{kind:?} was failed over");
    }
    setup.api.fault(Fault::Unavailable(0));
    assert_eq!(send(&mailer).await.unwrap().transport, "graph");
    assert_eq!(graph.api.requests().len(), 1);
}

#[tokio::test]
async fn gmail_with_a_service_account_asks_for_gmail_send_as_the_user() {
    let setup = Setup::new(Flavor::Gmail).await;
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/keys");
    setup
        .tokens
        .expect_jwt_signed_by(&std::fs::read(keys.join("test-service-account.pub")).unwrap());
    let key_file = setup.dir.path().join("service-account.json");
    let key = serde_json::json!({
        "type": "service_account",
        "client_email": "mailer@acme-project.iam.gserviceaccount.com",
        "private_key_id": "key-1",
        "private_key": std::fs::read_to_string(keys.join("test-service-account.key")).unwrap(),
        "token_uri": setup.tokens.url,
    });
    std::fs::write(&key_file, key.to_string()).unwrap();
    support::set_mode(&key_file, 0o600);
    let yaml = setup.yaml("").replace(
        &format!(
            "oauth: {{ provider: generic, token_url: {}, credentials_file: {} }}",
            setup.tokens.url,
            setup.dir.path().join("credentials.json").display()
        ),
        &format!(
            "oauth: {{ provider: google-service-account, key_file: {} }}",
            key_file.display()
        ),
    );
    let (mailer, _raw) = setup.mailer(&yaml).unwrap();
    send(&mailer).await.unwrap();
    let claims = setup.tokens.jwt_claims();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["scope"], GMAIL_SEND);
    assert_eq!(claims[0]["sub"], USER);
}

#[tokio::test]
async fn limits_and_settings_are_checked_when_the_mailer_is_built() {
    let setup = Setup::new(Flavor::Graph).await;
    let (mailer, _raw) = setup
        .mailer(&setup.yaml("  rate: 600/min\n  max_concurrent: 2\n"))
        .unwrap();
    send(&mailer).await.unwrap();

    let cases = [
        (setup.yaml("  save_to_sent_items: false\n"), "Sent Items"),
        (setup.yaml("  rate: lots\n"), "`lots` is not a rate"),
        (
            setup
                .yaml("")
                .replace(&format!("user: {USER}"), "user: me")
                .replace(
                    "provider: generic,",
                    "provider: generic, grant: client_credentials,",
                ),
            "no signed-in user",
        ),
        (
            setup
                .yaml("")
                .replace(&setup.api.base_url, "http://graph.example.com"),
            "must use https",
        ),
    ];
    for (yaml, expected) in cases {
        let err = setup.mailer(&yaml).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#[tokio::test]
async fn no_token_or_message_content_in_errors_or_debug_output() {
    let setup = Setup::new(Flavor::Gmail).await;
    let (mailer, raw) = setup.default_mailer();
    let mut errors = Vec::new();
    for faults in [
        vec![Fault::Unauthorized, Fault::Unauthorized],
        vec![Fault::InsufficientScope],
        vec![Fault::BadRequest],
        vec![Fault::Stall],
    ] {
        for fault in faults {
            setup.api.fault(fault);
        }
        if let Err(e) = send(&mailer).await {
            errors.push(format!("{e} {e:?}"));
        }
    }
    assert_eq!(errors.len(), 4);
    let tokens: Vec<String> = setup
        .api
        .requests()
        .iter()
        .map(|r| r.bearer.clone())
        .collect();
    let subject = String::from_utf8_lossy(&raw.lock().unwrap()[0])
        .lines()
        .find_map(|l| l.strip_prefix("Subject: ").map(String::from))
        .unwrap();
    for text in errors.iter().chain([&format!("{mailer:?}")]) {
        for token in &tokens {
            assert!(!text.contains(token.as_str()), "a token in {text}");
        }
        assert!(!text.contains(&subject), "message content in {text}");
    }
}

#[tokio::test]
async fn missive_auth_google_asks_for_gmail_send_when_the_transport_is_gmail() {
    use tokio::io::AsyncBufReadExt;
    let setup = Setup::new(Flavor::Gmail).await;
    let yaml = setup.yaml("").replace(
        &format!(
            "oauth: {{ provider: generic, token_url: {}, credentials_file: {} }}",
            setup.tokens.url,
            setup.dir.path().join("credentials.json").display()
        ),
        "oauth: { provider: google, client_id: missive-test-client }",
    );
    let config = support::config_file(setup.dir.path(), &yaml);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_missive"))
        .arg("--config")
        .arg(&config)
        .args(["auth", "google"])
        .env("XDG_CONFIG_HOME", setup.dir.path())
        .env("BROWSER", "true")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let url = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(start) = line.find("https://accounts.google.com/") {
                return reqwest::Url::parse(line[start..].trim()).unwrap();
            }
        }
        panic!("no sign-in URL printed");
    })
    .await
    .expect("the sign-in URL is printed");
    child.kill().await.unwrap();
    let scope = url
        .query_pairs()
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned());
    assert_eq!(scope.as_deref(), Some(GMAIL_SEND));
}
