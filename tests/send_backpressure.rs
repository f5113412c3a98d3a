//! A burst of sends renders no further ahead than the transport can take: with one
//! SMTP connection, four messages at most are rendered and waiting (the connection
//! carries two at a time, one's content and the next one's commands, and the mailer
//! renders twice that far ahead; its own binary, as it counts render spans with a
//! process-wide subscriber).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use missive::Mailer;
use support::smtp::{Action, FakeSmtp, Options, Stage};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Counts `render` spans, on whatever thread they open (renders run on tokio's blocking
/// pool, which a thread-local subscriber would not see).
struct Renders(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Renders {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "render" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn a_burst_of_sends_waits_for_the_transport_before_rendering() {
    let renders = Arc::new(AtomicUsize::new(0));
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(Renders(renders.clone())),
    )
    .expect("the only subscriber in this binary");

    // Every MAIL FROM goes unanswered: the one connection stays busy.
    let server = FakeSmtp::start(Options::default()).await;
    server.always(Stage::Mail, Action::Stall);
    let dir = tempfile::tempdir().unwrap();
    let config = support::config_file(
        dir.path(),
        &format!(
            "  type: smtp\n  host: 127.0.0.1\n  port: {}\n  tls: none\n  timeout_secs: 30\n  \
             pool: {{ max_connections: 1 }}\n",
            server.port
        ),
    );
    let mailer = Mailer::from_config(&config).await.unwrap();
    let data = mailer.example("welcome", 0).unwrap();
    let sends: Vec<_> = (0..10)
        .map(|_| {
            let (mailer, data) = (mailer.clone(), data.clone());
            tokio::spawn(async move { mailer.send_template("welcome", &data).await })
        })
        .collect();

    // One message on the (stalled) connection, three rendered behind it, six waiting.
    for _ in 0..100 {
        if renders.load(Ordering::SeqCst) >= 4 && server.mail_commands() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(renders.load(Ordering::SeqCst), 4);
    assert_eq!(server.mail_commands(), 1);
    for send in sends {
        send.abort();
    }
}
