//! SMTP delivery against the scripted fake server: pool bounds, stale connections,
//! TLS policy, password auth, the retry policy (issue 3, points 1, 2 and 8) and
//! command pipelining. The fake offers PIPELINING unless a test says otherwise; the
//! reply-handling tests run against both kinds of server.

use crate::support;

use std::collections::HashMap;

use missive::{ErrorKind, Mailer};
use support::smtp::{Action, FakeSmtp, Options, Stage};

fn transport(port: u16, extra: &str) -> String {
    format!(
        "  type: smtp\n  host: 127.0.0.1\n  port: {port}\n  tls: none\n  timeout_secs: 1\n  \
         retry: {{ attempts: 3, initial_backoff_ms: 10, max_backoff_ms: 40, deadline_secs: 60 }}\n{extra}"
    )
}

async fn smtp_mailer(port: u16, extra: &str) -> (Mailer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = support::config_file(dir.path(), &transport(port, extra));
    let mailer = Mailer::from_config(&path).await.expect("mailer builds");
    (mailer, dir)
}

async fn send_welcome(mailer: &Mailer, to: &[&str]) -> missive::Result<missive::Receipt> {
    let data = mailer.example("welcome", 0)?;
    let mut message = mailer.template("welcome").data(&data);
    for address in to {
        message = message.to(*address);
    }
    message.send().await
}

#[tokio::test]
async fn delivers_the_rendered_message_intact() {
    let server = FakeSmtp::start(Options::default()).await;
    let (mailer, _dir) = smtp_mailer(server.port, "").await;
    let receipt = send_welcome(&mailer, &["ada@example.test"]).await.unwrap();
    assert_eq!(receipt.attempts, 1);
    assert_eq!(receipt.accepted, ["ada@example.test"]);
    assert!(receipt.rejected.is_empty());
    assert!(receipt.reply.starts_with("250"), "{}", receipt.reply);
    let received = server.received();
    assert_eq!(received.len(), 1);
    let data = &received[0].data;
    assert_eq!(received[0].from, "noreply@acme.test");
    assert_eq!(received[0].to, ["ada@example.test"]);
    let rendered = mailer
        .render("welcome", &mailer.example("welcome", 0).unwrap())
        .unwrap();
    assert!(
        data.contains(&format!("Subject: {}", rendered.subject())),
        "subject"
    );
    assert!(data.contains(&format!("Message-ID: {}", receipt.message_id)));
    assert!(data.contains("multipart/alternative"));
    assert!(data.contains("text/plain") && data.contains("text/html"));
}

#[tokio::test]
async fn concurrent_sends_never_exceed_the_pool_size() {
    let server = FakeSmtp::start(Options::default()).await;
    let (mailer, _dir) = smtp_mailer(server.port, "  pool: { max_connections: 2 }\n").await;
    let sends: Vec<_> = (0..12)
        .map(|i| {
            let mailer = mailer.clone();
            tokio::spawn(
                async move { send_welcome(&mailer, &[&format!("user{i}@example.test")]).await },
            )
        })
        .collect();
    for send in sends {
        assert_eq!(send.await.unwrap().unwrap().attempts, 1);
    }
    assert_eq!(server.received().len(), 12);
    assert!(
        server.max_concurrent() <= 2,
        "saw {} connections at once",
        server.max_concurrent()
    );
    assert!(
        server.connections() <= 2,
        "connections are reused: {}",
        server.connections()
    );
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_does_not_fail_a_send() {
    let server = FakeSmtp::start(Options {
        close_after_message: true,
        ..Options::default()
    })
    .await;
    let (mailer, _dir) = smtp_mailer(server.port, "").await;
    for _ in 0..3 {
        let receipt = send_welcome(&mailer, &["ada@example.test"]).await.unwrap();
        assert_eq!(receipt.attempts, 1, "a stale connection costs no attempt");
    }
    assert_eq!(server.received().len(), 3);
    assert_eq!(server.connections(), 3);
}

#[tokio::test]
async fn starttls_is_required_never_opportunistic() {
    let server = FakeSmtp::start(Options::default()).await;
    let (mailer, _dir) = smtp_mailer(server.port, "").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = transport(server.port, "").replace("tls: none", "tls: starttls");
    let mailer_tls = Mailer::from_config(support::config_file(dir.path(), &yaml))
        .await
        .unwrap();
    let err = send_welcome(&mailer_tls, &["ada@example.test"])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("STARTTLS"), "{err}");
    assert!(server.received().is_empty());
    assert_eq!(server.mail_commands(), 0, "nothing sent in clear text");
    drop(mailer);
}

#[tokio::test]
async fn plain_text_only_toward_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = transport(25, "").replace("127.0.0.1", "smtp.example.com");
    let err = Mailer::from_config(support::config_file(dir.path(), &yaml))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("loopback"), "{err}");
}

#[tokio::test]
async fn transient_replies_at_any_stage_are_retried() {
    let cases = [
        (Stage::Greeting, "421 4.3.2 service not available"),
        (Stage::Mail, "450 4.2.0 mailbox busy"),
        (Stage::Mail, "451 4.3.0 local error"),
        (Stage::Data, "451 4.3.0 try again"),
        (Stage::EndOfData, "452 4.3.1 insufficient storage"),
    ];
    for pipelining in [true, false] {
        for (stage, reply) in cases {
            let server = FakeSmtp::start(with_pipelining(pipelining)).await;
            server.fault(stage, Action::Reply(reply.into()));
            let (mailer, _dir) = smtp_mailer(server.port, "").await;
            let case = format!("{stage:?} {reply}, pipelining {pipelining}");
            let receipt = send_welcome(&mailer, &["ada@example.test"])
                .await
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(receipt.attempts, 2, "{case}");
            assert_eq!(server.received().len(), 1, "{case}");
        }
    }
}

fn with_pipelining(pipelining: bool) -> Options {
    Options {
        pipelining,
        ..Options::default()
    }
}

#[tokio::test]
async fn mail_rcpt_and_data_go_in_one_write_only_where_pipelining_is_offered() {
    for pipelining in [true, false] {
        let server = FakeSmtp::start(with_pipelining(pipelining)).await;
        let (mailer, _dir) = smtp_mailer(server.port, "").await;
        for _ in 0..3 {
            send_welcome(&mailer, &["a@example.test", "b@example.test"])
                .await
                .unwrap();
        }
        assert_eq!(server.received().len(), 3);
        assert_eq!(server.mail_commands(), 3);
        let expected = if pipelining { 3 } else { 0 };
        assert_eq!(server.pipelined(), expected, "pipelining {pipelining}");
        assert_eq!(server.connections(), 1);
    }
}

#[tokio::test]
async fn when_every_recipient_is_refused_nothing_is_sent_and_the_connection_stays() {
    let late = Options {
        late_no_recipients: true,
        ..Options::default()
    };
    for options in [with_pipelining(true), with_pipelining(false), late] {
        let pipelining = options.pipelining;
        let server = FakeSmtp::start(options).await;
        for address in ["x@example.test", "y@example.test"] {
            server.refuse_recipient(address, &format!("550 5.1.1 <{address}>: user unknown"));
        }
        let (mailer, _dir) = smtp_mailer(server.port, "").await;
        let err = send_welcome(&mailer, &["x@example.test", "y@example.test"])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        assert!(
            err.message().contains("x@example.test") && err.message().contains("y@example.test"),
            "{err}"
        );
        assert!(server.received().is_empty());
        // The refused transaction was reset, not left half open: the next message
        // goes out on the same connection.
        let receipt = send_welcome(&mailer, &["ada@example.test"]).await.unwrap();
        assert_eq!(receipt.attempts, 1);
        assert_eq!(server.received().len(), 1);
        assert_eq!(server.received()[0].to, ["ada@example.test"]);
        assert_eq!(server.connections(), 1, "pipelining {pipelining}");
    }
}

#[tokio::test]
async fn a_deferred_recipient_is_retried_alone() {
    for pipelining in [true, false] {
        deferred_recipient(pipelining).await;
    }
}

async fn deferred_recipient(pipelining: bool) {
    let server = FakeSmtp::start(with_pipelining(pipelining)).await;
    server.fault(
        Stage::Rcpt,
        Action::Reply("452 4.5.3 too many recipients".into()),
    );
    let (mailer, _dir) = smtp_mailer(server.port, "").await;
    let receipt = send_welcome(&mailer, &["a@example.test", "b@example.test"])
        .await
        .unwrap();
    assert_eq!(receipt.attempts, 2);
    let received = server.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].to, ["b@example.test"]);
    assert_eq!(received[1].to, ["a@example.test"]);
    assert_eq!(support::smtp::addresses(&receipt.accepted).len(), 2);
}

#[tokio::test]
async fn permanent_replies_are_not_retried() {
    for (stage, reply, code, pipelining) in [
        (Stage::Mail, "550 5.7.1 sender rejected", 550, true),
        (Stage::Mail, "550 5.7.1 sender rejected", 550, false),
        (Stage::Data, "554 5.3.4 message too big", 554, true),
        (Stage::EndOfData, "554 5.6.0 message refused", 554, true),
    ] {
        let server = FakeSmtp::start(with_pipelining(pipelining)).await;
        server.fault(stage, Action::Reply(reply.into()));
        let (mailer, _dir) = smtp_mailer(server.port, "").await;
        let err = send_welcome(&mailer, &["ada@example.test"])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        assert_eq!(err.smtp_code(), Some(code));
        assert!(err.to_string().contains("after 1 attempt"), "{err}");
        assert_eq!(server.mail_commands(), 1);
        assert!(server.received().is_empty());
    }
}

#[tokio::test]
async fn one_bad_recipient_fails_only_itself() {
    for pipelining in [true, false] {
        one_bad_recipient(pipelining).await;
    }
}

async fn one_bad_recipient(pipelining: bool) {
    let server = FakeSmtp::start(with_pipelining(pipelining)).await;
    server.refuse_recipient(
        "nobody@example.test",
        "550 5.1.1 <nobody@example.test>: user unknown",
    );
    let (mailer, _dir) = smtp_mailer(server.port, "").await;
    let receipt = send_welcome(
        &mailer,
        &["a@example.test", "nobody@example.test", "c@example.test"],
    )
    .await
    .unwrap();
    assert_eq!(receipt.accepted, ["a@example.test", "c@example.test"]);
    assert_eq!(receipt.rejected.len(), 1);
    assert_eq!(receipt.rejected[0].recipient, "nobody@example.test");
    assert_eq!(receipt.rejected[0].code, Some(550));
    assert!(receipt.rejected[0].reply.contains("user unknown"));
    assert_eq!(receipt.attempts, 1);
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].to, ["a@example.test", "c@example.test"]);

    let err = send_welcome(&mailer, &["nobody@example.test"])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert_eq!(err.smtp_code(), Some(550));
    assert!(err.message().contains("nobody@example.test"), "{err}");
}

#[tokio::test]
async fn a_connection_dropped_mid_data_is_retried() {
    let server = FakeSmtp::start(Options::default()).await;
    server.fault(Stage::MidData, Action::Drop);
    let (mailer, _dir) = smtp_mailer(server.port, "").await;
    let receipt = send_welcome(&mailer, &["ada@example.test"]).await.unwrap();
    assert_eq!(receipt.attempts, 2);
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn a_stalled_server_times_out_and_is_retried() {
    let server = FakeSmtp::start(Options::default()).await;
    server.fault(Stage::Mail, Action::Stall);
    let (mailer, _dir) = smtp_mailer(server.port, "").await;
    let receipt = send_welcome(&mailer, &["ada@example.test"]).await.unwrap();
    assert_eq!(receipt.attempts, 2);
    assert_eq!(server.received().len(), 1);
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn retries_stop_at_the_configured_attempts() {
    let server = FakeSmtp::start(Options::default()).await;
    server.always(Stage::Mail, Action::Reply("451 4.3.0 try later".into()));
    let (mailer, _dir) = smtp_mailer(server.port, "").await;
    let err = send_welcome(&mailer, &["ada@example.test"])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(err.is_retryable());
    assert_eq!(err.smtp_code(), Some(451));
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
    assert_eq!(server.mail_commands(), 3);
}

#[tokio::test]
async fn a_refused_connection_is_transient() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (mailer, _dir) = smtp_mailer(port, "").await;
    let err = send_welcome(&mailer, &["ada@example.test"])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
}

#[tokio::test]
async fn plain_and_login_take_the_password_from_the_environment() {
    std::env::set_var("MISSIVE_TEST_SMTP_PASSWORD", "correct horse");
    let server = FakeSmtp::start(Options {
        passwords: HashMap::from([("sender@acme.test".into(), "correct horse".into())]),
        require_auth: true,
        ..Options::default()
    })
    .await;
    for mechanism in ["plain", "login"] {
        let auth = format!(
            "  auth: {{ mechanism: {mechanism}, user: sender@acme.test, password_env: MISSIVE_TEST_SMTP_PASSWORD }}\n"
        );
        let (mailer, _dir) = smtp_mailer(server.port, &auth).await;
        send_welcome(&mailer, &["ada@example.test"]).await.unwrap();
    }
    let auths = server.auths();
    assert_eq!(auths.len(), 2);
    assert!(auths.iter().all(|a| a.accepted));
    assert_eq!(auths[0].mechanism, "PLAIN");
    assert_eq!(auths[1].mechanism, "LOGIN");

    let auth = "  auth: { mechanism: plain, user: sender@acme.test, password_env: MISSIVE_TEST_UNSET_VARIABLE }\n";
    let (mailer, _dir) = smtp_mailer(server.port, auth).await;
    let err = send_welcome(&mailer, &["ada@example.test"])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.message().contains("MISSIVE_TEST_UNSET_VARIABLE"),
        "{err}"
    );

    let auth = "  auth: { mechanism: plain, user: someone@acme.test, password_env: MISSIVE_TEST_SMTP_PASSWORD }\n";
    let (mailer, _dir) = smtp_mailer(server.port, auth).await;
    let err = send_welcome(&mailer, &["ada@example.test"])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert_eq!(err.smtp_code(), Some(535));
    assert!(!err.to_string().contains("correct horse"));
}

#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_attempt_is_a_span_with_template_message_id_attempt_and_outcome() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // With a single dispatcher, tracing asks only the registering thread's default
    // about a new callsite: another test's thread, which has none, would cache
    // "never" for the spans. A second one makes it ask every dispatcher.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = FakeSmtp::start(Options::default()).await;
    server.fault(Stage::Mail, Action::Reply("451 4.3.0 try again".into()));
    let (mailer, _dir) = smtp_mailer(server.port, "").await;
    let receipt = send_welcome(&mailer, &["ada@example.test"]).await.unwrap();
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let attempt_lines: Vec<&str> = logs.lines().filter(|l| l.contains("attempt{")).collect();
    assert_eq!(attempt_lines.len(), 2, "{logs}");
    for (line, (n, outcome)) in attempt_lines
        .iter()
        .zip([(1, "transient"), (2, "delivered")])
    {
        assert!(line.contains("template=welcome"), "{line}");
        assert!(
            line.contains(&format!("message_id={}", receipt.message_id)),
            "{line}"
        );
        assert!(line.contains(&format!("attempt={n}")), "{line}");
        assert!(
            line.contains(&format!("outcome=\"{outcome}\""))
                || line.contains(&format!("outcome={outcome}")),
            "{line}"
        );
    }
}

#[tokio::test]
async fn retries_stop_at_the_deadline() {
    let server = FakeSmtp::start(Options::default()).await;
    server.always(Stage::Mail, Action::Reply("451 4.3.0 try later".into()));
    // The first wait (1 to 2 s) would end after the deadline, so no second attempt.
    let retry = "  retry: { attempts: 10, initial_backoff_ms: 2000, deadline_secs: 1 }\n";
    let dir = tempfile::tempdir().unwrap();
    let yaml = transport(server.port, "").replace(
        "  retry: { attempts: 3, initial_backoff_ms: 10, max_backoff_ms: 40, deadline_secs: 60 }\n",
        retry,
    );
    let mailer = Mailer::from_config(support::config_file(dir.path(), &yaml))
        .await
        .unwrap();
    let err = send_welcome(&mailer, &["ada@example.test"])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient);
    assert!(err.to_string().contains("after 1 attempt"), "{err}");
    assert_eq!(server.mail_commands(), 1);
}

#[tokio::test]
async fn a_reply_lost_after_the_final_dot_is_delivery_unknown_and_not_resent() {
    for pipelining in [true, false] {
        let server = FakeSmtp::start(with_pipelining(pipelining)).await;
        server.always(Stage::EndOfData, Action::Drop);
        let (mailer, _dir) = smtp_mailer(server.port, "").await;
        let err = send_welcome(&mailer, &["ada@example.test"])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeliveryUnknown, "{err}");
        assert!(err.may_have_been_delivered());
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("delivery unknown"), "{err}");
        assert!(err.to_string().contains("after 1 attempt"), "{err}");
        let id = err.message_id().expect("the error names the message");
        assert!(id.starts_with('<') && id.ends_with("@acme.test>"), "{id}");
        assert_eq!(server.mail_commands(), 1, "sent once, not four times");
    }
}

#[tokio::test]
async fn a_reply_that_never_comes_after_the_final_dot_is_delivery_unknown() {
    let server = FakeSmtp::start(Options::default()).await;
    server.fault(Stage::EndOfData, Action::Stall);
    let (mailer, _dir) = smtp_mailer(server.port, "").await;
    let err = send_welcome(&mailer, &["ada@example.test"])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeliveryUnknown, "{err}");
    assert_eq!(server.mail_commands(), 1);
}

#[tokio::test]
async fn a_drop_mid_data_is_told_apart_from_a_lost_final_reply() {
    let server = FakeSmtp::start(Options::default()).await;
    server.always(Stage::MidData, Action::Drop);
    let (mailer, _dir) = smtp_mailer(server.port, "").await;
    let err = send_welcome(&mailer, &["ada@example.test"])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(!err.to_string().contains("unknown"), "{err}");
    assert_eq!(server.mail_commands(), 3, "retried up to the attempts");
}

#[tokio::test]
async fn retry_unknown_resends_with_the_same_message_id() {
    let server = FakeSmtp::start(Options::default()).await;
    server.fault(Stage::EndOfData, Action::Drop);
    let dir = tempfile::tempdir().unwrap();
    let yaml = transport(server.port, "").replace(
        "deadline_secs: 60 }",
        "deadline_secs: 60, retry_unknown: true }",
    );
    let mailer = Mailer::from_config(support::config_file(dir.path(), &yaml))
        .await
        .unwrap();
    let receipt = send_welcome(&mailer, &["ada@example.test"]).await.unwrap();
    assert_eq!(receipt.attempts, 2);
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert!(
        received[0]
            .data
            .contains(&format!("Message-ID: {}", receipt.message_id)),
        "the resend carries the first attempt's Message-ID"
    );
}

#[tokio::test]
async fn the_final_dot_gets_its_own_long_wait() {
    // A server that takes 2 s to scan the message: `mail` (1 s) would give up on it,
    // `final_dot` (5 s) does not.
    let server = FakeSmtp::start(Options::default()).await;
    server.fault(
        Stage::EndOfData,
        Action::Delay(std::time::Duration::from_secs(2)),
    );
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "  type: smtp\n  host: 127.0.0.1\n  port: {}\n  tls: none\n  \
         timeouts: {{ mail: 1, data: 1, final_dot: 5 }}\n  \
         retry: {{ attempts: 3, initial_backoff_ms: 10, max_backoff_ms: 40 }}\n",
        server.port
    );
    let mailer = Mailer::from_config(support::config_file(dir.path(), &yaml))
        .await
        .unwrap();
    let receipt = send_welcome(&mailer, &["ada@example.test"]).await.unwrap();
    assert_eq!(receipt.attempts, 1);
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn the_deadline_bounds_the_wait_for_the_final_reply() {
    let server = FakeSmtp::start(Options::default()).await;
    server.fault(Stage::EndOfData, Action::Stall);
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "  type: smtp\n  host: 127.0.0.1\n  port: {}\n  tls: none\n  \
         retry: {{ attempts: 3, deadline_secs: 1 }}\n",
        server.port
    );
    let mailer = Mailer::from_config(support::config_file(dir.path(), &yaml))
        .await
        .unwrap();
    let err = send_welcome(&mailer, &["ada@example.test"])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeliveryUnknown, "{err}");
}

#[tokio::test]
async fn a_chosen_message_id_is_sent_and_a_bad_one_refused() {
    let server = FakeSmtp::start(Options::default()).await;
    let (mailer, _dir) = smtp_mailer(server.port, "").await;
    let data = mailer.example("welcome", 0).unwrap();
    let receipt = mailer
        .template("welcome")
        .data(&data)
        .message_id("order-17.confirmation@acme.test")
        .send()
        .await
        .unwrap();
    assert_eq!(receipt.message_id, "<order-17.confirmation@acme.test>");
    assert!(server.received()[0]
        .data
        .contains("Message-ID: <order-17.confirmation@acme.test>"));
    for bad in [
        "no-at-sign",
        "<a@b",
        "two@@ats.test",
        "sp ace@acme.test",
        "<x@y>\r\nBcc: z@z",
    ] {
        let err = mailer
            .template("welcome")
            .data(&data)
            .message_id(bad)
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Address, "{bad:?}: {err}");
    }
    assert_eq!(server.received().len(), 1, "nothing sent for a bad ID");
}

#[tokio::test]
async fn an_idempotency_key_gives_the_same_message_id_every_time() {
    let server = FakeSmtp::start(Options::default()).await;
    let (mailer, _dir) = smtp_mailer(server.port, "").await;
    let (other, _other_dir) = smtp_mailer(server.port, "").await;
    let data = mailer.example("welcome", 0).unwrap();
    let send = |m: &Mailer, key: &str| {
        m.template("welcome")
            .data(&data)
            .idempotency_key(key)
            .send()
    };
    let first = send(&mailer, "signup-42").await.unwrap();
    let again = send(&other, "signup-42").await.unwrap();
    let different = send(&mailer, "signup-43").await.unwrap();
    assert_eq!(first.message_id, again.message_id);
    assert_ne!(first.message_id, different.message_id);
    assert!(first.message_id.ends_with("@acme.test>"));
    assert!(!first.message_id.contains("signup"), "the key is not shown");
}

/// A fake server that answers the first MAIL and each final dot after a pause, long
/// enough for the sends of a burst to be rendered and waiting when the connection
/// takes the next.
async fn slow_dot_server(options: Options) -> FakeSmtp {
    let server = FakeSmtp::start(options).await;
    let pause = std::time::Duration::from_millis(40);
    server.fault_at(Stage::Mail, 1, Action::Delay(pause * 3));
    server.always(Stage::EndOfData, Action::Delay(pause));
    server
}

/// Sends started at once over a pool of one connection, the i-th to `recipients[i]`,
/// each with its outcome.
async fn burst(
    mailer: &Mailer,
    recipients: &[Vec<String>],
) -> Vec<missive::Result<missive::Receipt>> {
    let sends: Vec<_> = recipients
        .iter()
        .map(|to| {
            let (mailer, to) = (mailer.clone(), to.clone());
            tokio::spawn(async move {
                let to: Vec<&str> = to.iter().map(String::as_str).collect();
                send_welcome(&mailer, &to).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for send in sends {
        outcomes.push(send.await.unwrap());
    }
    outcomes
}

fn one_each(n: usize) -> Vec<Vec<String>> {
    (0..n)
        .map(|i| vec![format!("user{i}@example.test")])
        .collect()
}

const ONE_CONNECTION: &str = "  pool: { max_connections: 1 }\n";

/// How many messages the server took for `recipient`.
fn copies(server: &FakeSmtp, recipient: &str) -> usize {
    server
        .received()
        .iter()
        .filter(|m| m.to.iter().any(|t| t == recipient))
        .count()
}

/// The outcomes of a burst in which exactly one send failed: that failure, after
/// checking that every other send went through once, in one attempt.
fn the_one_failure(
    server: &FakeSmtp,
    outcomes: Vec<missive::Result<missive::Receipt>>,
) -> missive::Error {
    let mut failures = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(receipt) => {
                assert_eq!(receipt.attempts, 1, "{receipt:?}");
                assert_eq!(receipt.accepted.len(), 1, "{receipt:?}");
                assert_eq!(copies(server, &receipt.accepted[0]), 1, "{receipt:?}");
            }
            Err(err) => failures.push(err),
        }
    }
    assert_eq!(failures.len(), 1, "{failures:?}");
    failures.remove(0)
}

#[tokio::test]
async fn a_burst_on_one_connection_writes_each_envelope_behind_the_previous_dot() {
    for pipelining in [true, false] {
        let server = slow_dot_server(with_pipelining(pipelining)).await;
        let (mailer, _dir) = smtp_mailer(server.port, ONE_CONNECTION).await;
        let recipients = one_each(8);
        for outcome in burst(&mailer, &recipients).await {
            assert_eq!(outcome.unwrap().attempts, 1);
        }
        for to in &recipients {
            assert_eq!(copies(&server, &to[0]), 1, "{to:?}");
        }
        assert_eq!(server.connections(), 1);
        assert_eq!(server.mail_commands(), 8);
        let chained = server.chained();
        if pipelining {
            // Every message but the last has the next one's commands behind its dot.
            assert_eq!(chained, 7);
            assert_eq!(server.pipelined(), 8);
        } else {
            assert_eq!(chained, 0);
            assert_eq!(server.pipelined(), 0);
        }
    }
}

#[tokio::test]
async fn refused_recipients_in_a_chained_message_are_its_own() {
    let server = slow_dot_server(Options::default()).await;
    server.refuse_recipient(
        "nobody@example.test",
        "550 5.1.1 <nobody@example.test>: user unknown",
    );
    let (mailer, _dir) = smtp_mailer(server.port, ONE_CONNECTION).await;
    let mut recipients = one_each(6);
    recipients[3].push("nobody@example.test".into());
    let outcomes = burst(&mailer, &recipients).await;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let receipt = outcome.unwrap();
        assert_eq!(receipt.accepted, [format!("user{i}@example.test")]);
        if i == 3 {
            assert_eq!(receipt.rejected.len(), 1);
            assert_eq!(receipt.rejected[0].recipient, "nobody@example.test");
            assert_eq!(receipt.rejected[0].code, Some(550));
        } else {
            assert!(receipt.rejected.is_empty(), "{i}: {:?}", receipt.rejected);
        }
    }
    assert!(server.chained() >= 4, "{}", server.chained());
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_lost_reply_to_a_chained_dot_leaves_that_message_unknown_and_resends_the_next() {
    // Drop: the connection closes after the "." (with a reset too, since the next
    // commands went unread behind it); Stall: the reply never comes.
    for (action, reset) in [
        (Action::Drop, false),
        (Action::Drop, true),
        (Action::Stall, false),
    ] {
        let server = slow_dot_server(Options {
            reset_on_close: reset,
            ..Options::default()
        })
        .await;
        server.fault_at(Stage::EndOfData, 1, action.clone());
        let (mailer, _dir) = smtp_mailer(server.port, ONE_CONNECTION).await;
        let recipients = one_each(5);
        let outcomes = burst(&mailer, &recipients).await;
        let err = the_one_failure(&server, outcomes);
        assert_eq!(err.kind(), ErrorKind::DeliveryUnknown, "{action:?}: {err}");
        assert!(err.to_string().contains("after 1 attempt"), "{err}");
        assert!(err.message_id().is_some(), "{err}");
        assert_eq!(server.received().len(), 4, "{action:?}");
        // Five messages, each MAIL seen once: the unknown one was not resent, and the
        // next one's commands behind its dot were never read.
        assert_eq!(server.mail_commands(), 5, "{action:?}");
        assert_eq!(server.connections(), 2, "{action:?}");
    }
}

#[tokio::test]
async fn a_refused_chained_dot_fails_its_message_alone() {
    let server = slow_dot_server(Options::default()).await;
    server.fault_at(
        Stage::EndOfData,
        1,
        Action::Reply("554 5.6.0 message refused".into()),
    );
    let (mailer, _dir) = smtp_mailer(server.port, ONE_CONNECTION).await;
    let outcomes = burst(&mailer, &one_each(5)).await;
    let err = the_one_failure(&server, outcomes);
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.smtp_code(), Some(554));
    assert!(server.chained() >= 3, "{}", server.chained());
    assert_eq!(server.connections(), 1, "the connection stays in step");
}

#[tokio::test]
async fn a_chained_message_refused_at_mail_or_data_fails_alone_and_sends_no_content() {
    for (stage, reply, code) in [
        (Stage::Mail, "550 5.7.1 sender rejected", 550),
        (Stage::Data, "554 5.3.4 message too big", 554),
        (Stage::Data, "451 4.3.0 try again later", 451),
    ] {
        let server = slow_dot_server(Options::default()).await;
        server.fault_at(stage, 2, Action::Reply(reply.into()));
        let (mailer, _dir) = smtp_mailer(server.port, ONE_CONNECTION).await;
        let outcomes = burst(&mailer, &one_each(5)).await;
        if code < 500 {
            // Retried on its own and delivered.
            for outcome in outcomes {
                assert!(outcome.unwrap().attempts <= 2);
            }
            assert_eq!(server.received().len(), 5, "{stage:?}");
        } else {
            let err = the_one_failure(&server, outcomes);
            assert_eq!(err.kind(), ErrorKind::Permanent, "{stage:?}: {err}");
            assert_eq!(err.smtp_code(), Some(code));
            assert_eq!(server.received().len(), 4, "{stage:?}");
        }
        assert!(server.chained() >= 1, "{stage:?}");
        assert_eq!(server.unknown_commands(), 0, "{stage:?}: content went out");
    }
}
