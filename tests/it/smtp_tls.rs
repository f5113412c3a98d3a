//! TLS toward the scripted SMTP server: STARTTLS and implicit TLS with a private CA
//! (`ca_file`) and a certificate name (`tls_name`), and certificates that must fail.

use crate::support;

use std::path::{Path, PathBuf};

use missive::{ErrorKind, Mailer};
use support::smtp::{test_tls_acceptor, FakeSmtp, Options, ServerTls};

fn ca_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/keys/test-ca.pem")
}

async fn tls_mailer(port: u16, tls: &str, extra: &str) -> (Mailer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "  type: smtp\n  host: 127.0.0.1\n  port: {port}\n  tls: {tls}\n  timeout_secs: 5\n  \
         retry: {{ attempts: 3, initial_backoff_ms: 10, max_backoff_ms: 20 }}\n{extra}"
    );
    let mailer = Mailer::from_config(support::config_file(dir.path(), &yaml))
        .await
        .expect("mailer builds");
    (mailer, dir)
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

/// Each way of speaking TLS, by its `tls:` value in missive.yaml, with a fake server's
/// side of it.
fn both_tls_modes() -> [(&'static str, ServerTls); 2] {
    [
        ("starttls", ServerTls::Starttls(test_tls_acceptor())),
        ("implicit", ServerTls::Implicit(test_tls_acceptor())),
    ]
}

#[tokio::test]
async fn starttls_and_implicit_tls_with_a_private_ca() {
    for (tls, server_tls) in both_tls_modes() {
        let server = FakeSmtp::start(Options {
            tls: Some(server_tls),
            ..Options::default()
        })
        .await;
        // The certificate names localhost and 127.0.0.1; the CA is private.
        let extra = format!("  ca_file: {}\n", ca_file().display());
        let (mailer, _dir) = tls_mailer(server.port, tls, &extra).await;
        let receipt = send(&mailer).await.unwrap_or_else(|e| panic!("{tls}: {e}"));
        assert_eq!(receipt.attempts, 1);
        let received = server.received();
        assert_eq!(received.len(), 1, "{tls}");
        assert!(received[0].encrypted, "{tls}: the message went over TLS");

        let extra = format!(
            "  ca_file: {}\n  tls_name: localhost\n",
            ca_file().display()
        );
        let (mailer, _dir) = tls_mailer(server.port, tls, &extra).await;
        send(&mailer)
            .await
            .unwrap_or_else(|e| panic!("{tls} with tls_name: {e}"));
    }
}

#[tokio::test]
async fn an_untrusted_or_misnamed_certificate_is_a_configuration_error() {
    let server = FakeSmtp::start(Options {
        tls: Some(ServerTls::Starttls(test_tls_acceptor())),
        ..Options::default()
    })
    .await;
    let cases = [
        ("no trust anchor", String::new()),
        (
            "wrong name",
            format!(
                "  ca_file: {}\n  tls_name: mail.example.com\n",
                ca_file().display()
            ),
        ),
    ];
    for (what, extra) in cases {
        let (mailer, _dir) = tls_mailer(server.port, "starttls", &extra).await;
        let err = send(&mailer).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{what}: {err}");
        assert!(err.message().contains("TLS"), "{what}: {err}");
        assert!(err.to_string().contains("after 1 attempt"), "{what}: {err}");
    }
    assert_eq!(server.mail_commands(), 0, "nothing was sent in the clear");
    assert!(server.received().is_empty());
}

#[tokio::test]
async fn chained_messages_over_tls_keep_their_own_outcomes() {
    use support::smtp::{Action, Stage};
    for (tls, server_tls) in both_tls_modes() {
        let server = FakeSmtp::start(Options {
            tls: Some(server_tls),
            ..Options::default()
        })
        .await;
        // Slow enough for the burst to be waiting when the connection takes the next.
        let pause = std::time::Duration::from_millis(40);
        server.fault_at(Stage::Mail, 1, Action::Delay(pause * 3));
        server.always(Stage::EndOfData, Action::Delay(pause));
        // The second message's reply to its "." is lost.
        server.fault_at(Stage::EndOfData, 2, Action::Drop);
        let extra = format!(
            "  ca_file: {}\n  pool: {{ max_connections: 1 }}\n",
            ca_file().display()
        );
        let (mailer, _dir) = tls_mailer(server.port, tls, &extra).await;
        let sends: Vec<_> = (0..5)
            .map(|_| {
                let mailer = mailer.clone();
                tokio::spawn(async move { send(&mailer).await })
            })
            .collect();
        let mut unknown = 0;
        for send in sends {
            match send.await.unwrap() {
                Ok(receipt) => assert_eq!(receipt.attempts, 1, "{tls}: {receipt:?}"),
                Err(err) => {
                    assert_eq!(err.kind(), ErrorKind::DeliveryUnknown, "{tls}: {err}");
                    unknown += 1;
                }
            }
        }
        assert_eq!(unknown, 1, "{tls}");
        assert_eq!(server.received().len(), 4, "{tls}");
        assert!(server.received().iter().all(|m| m.encrypted), "{tls}");
        assert_eq!(server.mail_commands(), 5, "{tls}: nothing sent twice");
        assert!(server.chained() >= 3, "{tls}: {}", server.chained());
    }
}
