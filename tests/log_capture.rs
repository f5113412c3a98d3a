//! An application's view of missive's logs (issue 10, point 5): it installs
//! `tracing_subscriber::fmt()` as apps do (which also bridges the `log` crate) with
//! `RUST_LOG=trace`, sends a password-reset mail with a secret in its data through the
//! in-memory and outbox transports and through SMTP with a password and with OAuth2,
//! and finds neither the secret nor any credential in what was logged.
//!
//! One test in this file: the subscriber is global to the process.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use missive::Mailer;
use support::smtp::{FakeSmtp, Options};
use support::token::{FakeTokenEndpoint, CLIENT_SECRET};

/// Everything the subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.0.lock().unwrap())).into_owned()
    }
}

const RESET_TOKEN: &str = "rst-7f3a9c1e5b8d4a2f6c0e9b7d5a3f1c8e";
const PASSWORD: &str = "smtp-pa55word-e4c1";

fn reset_data(mailer: &Mailer) -> serde_json::Value {
    let mut data = mailer.example("account/password-reset", 0).unwrap();
    data["reset_url"] = format!("https://app.acme.test/reset?token={RESET_TOKEN}").into();
    data
}

async fn send_reset(mailer: &Mailer) {
    let data = reset_data(mailer);
    let receipt = mailer
        .template("account/password-reset")
        .to("ada@example.test")
        .data(&data)
        .send()
        .await
        .unwrap_or_else(|e| panic!("send failed: {e}"));
    assert_eq!(receipt.accepted, ["ada@example.test"]);
}

fn smtp_mailer(dir: &std::path::Path, port: u16, auth: &str) -> Mailer {
    let yaml = format!(
        "  type: smtp\n  host: 127.0.0.1\n  port: {port}\n  tls: none\n  timeout_secs: 5\n{auth}"
    );
    Mailer::builder()
        .config(missive::Config::from_file(support::config_file(dir, &yaml)).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_logging_at_trace_sees_no_message_content_and_no_credential() {
    std::env::set_var("RUST_LOG", "trace");
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    // The subscriber works and shows dependencies' TRACE lines: these are not missive's.
    tracing::trace!(target: "some_dependency", "subscriber is on");
    log::info!(target: "some_log_dependency", "log bridge is on");
    let probe = captured.take();
    assert!(
        probe.contains("subscriber is on") && probe.contains("log bridge is on"),
        "{probe}"
    );

    let mut sizes = Vec::new();
    let mut check = |what: &str, secrets: &[&str]| {
        let out = captured.take();
        assert!(
            out.contains("account/password-reset"),
            "{what}: missive's own spans are logged: {out:.2000}"
        );
        for secret in secrets {
            if let Some(at) = out.find(secret) {
                let start = out[..at].rfind('\n').map_or(0, |i| i + 1);
                let end = out[at..].find('\n').map_or(out.len(), |i| at + i);
                panic!(
                    "{what}: `{secret}` is in the log ({} bytes), e.g.:\n{}",
                    out.len(),
                    &out[start..end.min(start + 600)]
                );
            }
        }
        sizes.push(format!("{what}: {} bytes", out.len()));
    };

    let templates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let (mailer, inbox) = Mailer::for_tests(&templates);
    send_reset(&mailer).await;
    assert!(inbox.last().unwrap().html().contains(RESET_TOKEN));
    check("memory", &[RESET_TOKEN]);

    let dir = tempfile::tempdir().unwrap();
    let outbox = Mailer::builder()
        .templates(&templates)
        .schemas(templates.with_file_name("schemas"))
        .outbox(dir.path().join("outbox"))
        .build()
        .unwrap();
    send_reset(&outbox).await;
    check("outbox", &[RESET_TOKEN]);

    let smtp = FakeSmtp::start(Options {
        passwords: HashMap::from([("carol@acme.test".to_string(), PASSWORD.to_string())]),
        require_auth: true,
        ..Options::default()
    })
    .await;
    std::env::set_var("MISSIVE_LOG_TEST_PASSWORD", PASSWORD);
    let mailer = smtp_mailer(
        dir.path(),
        smtp.port,
        "  auth: { mechanism: plain, user: carol@acme.test, password_env: MISSIVE_LOG_TEST_PASSWORD }\n",
    );
    send_reset(&mailer).await;
    assert!(smtp.received()[0]
        .data
        .contains("rst-7f3a9c1e5b8d4a2f6c0e9b7d5a3f1c8e"));
    let plain = &smtp.auths()[0].secret;
    check("smtp plain", &[RESET_TOKEN, PASSWORD, plain]);

    let tokens = FakeTokenEndpoint::start(Duration::from_secs(3600), true).await;
    let oauth_smtp = FakeSmtp::start(Options {
        validator: Some(tokens.validator()),
        require_auth: true,
        ..Options::default()
    })
    .await;
    let refresh = tokens.mint_refresh_token();
    let credentials = support::credentials_file(dir.path(), &refresh);
    let mailer = smtp_mailer(
        dir.path(),
        oauth_smtp.port,
        &format!(
            "  auth:\n    mechanism: xoauth2\n    user: sender@acme.test\n    oauth:\n      \
             provider: generic\n      token_url: {}\n      credentials_file: {}\n",
            tokens.url,
            credentials.display()
        ),
    );
    send_reset(&mailer).await;
    let access = oauth_smtp.auths()[0].secret.clone();
    let rotated = support::stored_refresh_token(&credentials);
    check(
        "smtp xoauth2",
        &[RESET_TOKEN, &access, &refresh, &rotated, CLIENT_SECRET],
    );
    eprintln!(
        "log output per send at RUST_LOG=trace: {}",
        sizes.join(", ")
    );
}
