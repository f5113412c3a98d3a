//! The durable queue through the public API, on SQLite, delivering to a fake SMTP
//! server with short backoffs: enqueue semantics, retries, per-recipient outcomes,
//! expiry, delivery-unknown, idempotency, and storage failures.

use std::time::{Duration, Instant};

use crate::support::smtp::{Action, FakeSmtp, Options, Stage};
use missive::{ErrorKind, Mailer, QueueConfig, State};

struct Setup {
    dir: tempfile::TempDir,
    smtp: FakeSmtp,
    mailer: Mailer,
}

fn queue_config(dir: &std::path::Path) -> QueueConfig {
    QueueConfig::new(format!("sqlite://{}/queue.db", dir.display()))
        .backoff(Duration::from_millis(30), Duration::from_millis(60))
        .lease(Duration::from_secs(5), Duration::from_millis(20))
}

async fn setup(queue: impl FnOnce(QueueConfig) -> QueueConfig) -> Setup {
    let smtp = FakeSmtp::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = crate::support::config_file(
        dir.path(),
        &format!(
            "  type: smtp\n  host: 127.0.0.1\n  port: {}\n  tls: none\n  timeout_secs: 2\n",
            smtp.port
        ),
    );
    let config = missive::Config::from_file(path).unwrap();
    let mailer = Mailer::builder()
        .config(config)
        .queue(queue(queue_config(dir.path())))
        .build()
        .unwrap();
    Setup { dir, smtp, mailer }
}

fn data(mailer: &Mailer) -> serde_json::Value {
    mailer.example("welcome", 0).unwrap()
}

/// Runs the workers until `done` holds for the queue's stats (or 20 s pass).
async fn deliver_until(mailer: &Mailer, done: impl Fn(&missive::Stats) -> bool) -> missive::Stats {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = mailer.clone();
    let running = tokio::spawn(async move {
        runner
            .run_queue(async {
                let _ = stopped.await;
            })
            .await
    });
    let queue = mailer.queue().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let stats = queue.stats().await.unwrap();
        if done(&stats) {
            break stats;
        }
        assert!(Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    stats
}

fn message_id_of(data: &str) -> &str {
    data.lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_stores_what_is_sent_byte_for_byte_and_bad_input_queues_nothing() {
    let s = setup(|q| q).await;
    let queued = s.mailer.enqueue("welcome", &data(&s.mailer)).await.unwrap();
    assert!(!queued.duplicate);
    assert!(s.smtp.received().is_empty(), "enqueue does not deliver");
    let err = s
        .mailer
        .enqueue("welcome", &serde_json::json!({"user": 3}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    let err = s
        .mailer
        .enqueue("no-such", &data(&s.mailer))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let queue = s.mailer.queue().unwrap();
    assert_eq!(queue.stats().await.unwrap().count(State::Queued), 1);
    let detail = queue.show(queued.id).await.unwrap();
    assert_eq!(detail.summary.message_id, queued.message_id);
    assert_eq!(detail.recipients[0].address, "ada@example.com");
    deliver_until(&s.mailer, |st| st.count(State::Sent) == 1).await;
    let received = s.smtp.received();
    assert_eq!(received.len(), 1);
    // What the server got is the stored row's bytes (read through the documented table).
    let db = rusqlite::Connection::open(s.dir.path().join("queue.db")).unwrap();
    let (stored, compression): (Vec<u8>, Option<String>) = db
        .query_row(
            "SELECT raw, compression FROM missive_bodies WHERE message = ?1",
            [queued.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // A rendered message shrinks, so it is stored as docs/queue.md says: an LZ4 block
    // after the message's length.
    assert_eq!(compression.as_deref(), Some("lz4"));
    let raw = lz4_flex::decompress_size_prepended(&stored).unwrap();
    assert!(
        stored.len() * 2 < raw.len(),
        "{} of {}",
        stored.len(),
        raw.len()
    );
    // The SMTP client ends the data with CRLF "." CRLF, which the fake server reads
    // as one more empty line.
    let got = received[0].data.as_bytes();
    assert!(
        got == &raw[..] || got.strip_suffix(b"\r\n") == Some(&raw[..]),
        "the server got {} bytes, the queue holds {}",
        got.len(),
        raw.len()
    );
    assert_eq!(message_id_of(&received[0].data), queued.message_id);
    let detail = queue.show(queued.id).await.unwrap();
    assert_eq!(detail.history.len(), 1);
    assert_eq!(detail.history[0].outcome, "sent");
    assert!(
        detail.history[0].reply.contains("250"),
        "{:?}",
        detail.history[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_defers_and_everything_arrives_when_the_server_returns() {
    let s = setup(|q| q).await;
    s.smtp.always(
        Stage::Greeting,
        Action::Reply("421 4.3.2 down for maintenance".into()),
    );
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(s.mailer.enqueue("welcome", &data(&s.mailer)).await.unwrap());
    }
    let queue = s.mailer.queue().unwrap().clone();
    let server = s.smtp.clone();
    let watcher = tokio::spawn(async move {
        // Once every message has failed at least once, the server comes back.
        loop {
            let stats = queue.stats().await.unwrap();
            let deferred = queue
                .list(&missive::Filter::new().state(State::Deferred))
                .await
                .unwrap();
            if stats.count(State::Queued) == 0 && deferred.len() == 20 {
                assert!(deferred
                    .iter()
                    .all(|m| m.last_error.as_deref().is_some_and(|e| e.contains("421"))));
                server.clear_always();
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    deliver_until(&s.mailer, |st| st.count(State::Sent) == 20).await;
    watcher.await.unwrap();
    let mut got: Vec<String> = s
        .smtp
        .received()
        .iter()
        .map(|r| message_id_of(&r.data).to_string())
        .collect();
    got.sort();
    let mut want: Vec<String> = ids.iter().map(|q| q.message_id.clone()).collect();
    want.sort();
    assert_eq!(got, want, "each exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_fails_at_once_with_its_code_and_past_the_lifetime_mail_expires() {
    let s = setup(|q| q.lifetime(Duration::from_millis(300))).await;
    s.smtp.fault(
        Stage::EndOfData,
        Action::Reply("554 5.7.1 message refused".into()),
    );
    let refused = s.mailer.enqueue("welcome", &data(&s.mailer)).await.unwrap();
    deliver_until(&s.mailer, |st| st.count(State::Failed) == 1).await;
    let detail = s.mailer.queue().unwrap().show(refused.id).await.unwrap();
    assert_eq!(detail.summary.attempts, 1);
    assert_eq!(detail.history[0].outcome, "failed");
    assert_eq!(detail.history[0].code, Some(554));
    assert_eq!(detail.recipients[0].code, Some(554));

    s.smtp.always(
        Stage::Mail,
        Action::Reply("451 4.3.0 try again later".into()),
    );
    let late = s.mailer.enqueue("welcome", &data(&s.mailer)).await.unwrap();
    deliver_until(&s.mailer, |st| st.count(State::Failed) == 2).await;
    let detail = s.mailer.queue().unwrap().show(late.id).await.unwrap();
    let last = detail.history.last().unwrap();
    assert_eq!(last.outcome, "expired");
    assert!(
        detail.history.len() >= 3,
        "retried until the lifetime: {:?}",
        detail.history
    );
    assert!(last.reply.contains("451"), "{last:?}");
    assert!(s.smtp.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_are_tracked_one_by_one() {
    let s = setup(|q| q).await;
    s.smtp
        .refuse_recipient("gone@example.test", "550 5.1.1 no such user");
    s.smtp
        .refuse_recipient("full@example.test", "452 4.2.2 mailbox full");
    let queued = s
        .mailer
        .template("welcome")
        .data(&data(&s.mailer))
        .to("ok@example.test")
        .to("gone@example.test")
        .to("full@example.test")
        .enqueue()
        .await
        .unwrap();
    let queue = s.mailer.queue().unwrap().clone();
    let server = s.smtp.clone();
    let id = queued.id;
    let heal = tokio::spawn(async move {
        loop {
            let d = queue.show(id).await.unwrap();
            if d.summary.state == State::Deferred {
                server.accept_recipient("full@example.test");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    deliver_until(&s.mailer, |st| st.count(State::Sent) == 1).await;
    heal.await.unwrap();
    let received = s.smtp.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0].to, ["ok@example.test"]);
    assert_eq!(
        received[1].to,
        ["full@example.test"],
        "the retry goes to the deferred recipient alone"
    );
    assert_eq!(message_id_of(&received[1].data), queued.message_id);
    let d = s.mailer.queue().unwrap().show(queued.id).await.unwrap();
    let states: Vec<(&str, &str, Option<u16>)> = d
        .recipients
        .iter()
        .map(|r| (r.address.as_str(), r.state.as_str(), r.code))
        .collect();
    assert_eq!(
        states,
        [
            ("ok@example.test", "sent", None),
            ("gone@example.test", "failed", Some(550)),
            ("full@example.test", "sent", None)
        ]
    );
    let outcomes: Vec<&str> = d.history.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["partial", "sent"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_to_the_final_dot_is_recorded_as_unknown_and_resent_with_the_same_message_id()
{
    let s = setup(|q| q).await;
    s.smtp.fault(Stage::EndOfData, Action::Drop);
    let queued = s.mailer.enqueue("welcome", &data(&s.mailer)).await.unwrap();
    deliver_until(&s.mailer, |st| st.count(State::Sent) == 1).await;
    let d = s.mailer.queue().unwrap().show(queued.id).await.unwrap();
    let outcomes: Vec<&str> = d.history.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["unknown", "sent"]);
    let received = s.smtp.received();
    assert_eq!(
        received.len(),
        1,
        "the dropped attempt never reached the fake's mailbox"
    );
    assert_eq!(message_id_of(&received[0].data), queued.message_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_enqueues_with_one_key_make_one_message() {
    let s = setup(|q| q).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mailer = s.mailer.clone();
        tasks.push(tokio::spawn(async move {
            let data = mailer.example("welcome", 0).unwrap();
            mailer
                .template("welcome")
                .data(&data)
                .idempotency_key("signup-42")
                .enqueue()
                .await
                .unwrap()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|q| !q.duplicate).count(), 1);
    assert!(results
        .iter()
        .all(|q| q.id == results[0].id && q.message_id == results[0].message_id));
    let stats = s.mailer.queue().unwrap().stats().await.unwrap();
    assert_eq!(stats.count(State::Queued), 1);
    deliver_until(&s.mailer, |st| st.count(State::Sent) == 1).await;
    assert_eq!(s.smtp.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_hold_release_cancel_retry_and_purge() {
    let s = setup(|q| q).await;
    let queue = s.mailer.queue().unwrap().clone();
    let held = s.mailer.enqueue("welcome", &data(&s.mailer)).await.unwrap();
    let cancelled = s.mailer.enqueue("welcome", &data(&s.mailer)).await.unwrap();
    queue.hold(held.id).await.unwrap();
    queue.cancel(cancelled.id).await.unwrap();
    let err = queue.release(cancelled.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.message().contains("it is cancelled"), "{err}");
    s.smtp
        .fault(Stage::EndOfData, Action::Reply("550 5.7.1 no".into()));
    let failed = s.mailer.enqueue("welcome", &data(&s.mailer)).await.unwrap();
    deliver_until(&s.mailer, |st| st.count(State::Failed) == 1).await;
    assert_eq!(
        s.smtp.received().len(),
        0,
        "held and cancelled mail is not sent"
    );
    queue.release(held.id).await.unwrap();
    assert_eq!(queue.retry_failed().await.unwrap(), 1);
    deliver_until(&s.mailer, |st| st.count(State::Sent) == 2).await;
    let sent: Vec<String> = s
        .smtp
        .received()
        .iter()
        .map(|r| message_id_of(&r.data).to_string())
        .collect();
    assert!(sent.contains(&held.message_id) && sent.contains(&failed.message_id));
    assert_eq!(
        queue
            .purge_sent_before(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(queue.purge_sent_before(Duration::ZERO).await.unwrap(), 3);
    let left = queue.list(&missive::Filter::new()).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn without_a_queue_enqueue_says_how_to_configure_one() {
    let (mailer, _inbox) = Mailer::for_tests("templates");
    let err = mailer
        .enqueue("welcome", &mailer.example("welcome", 0).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("queue:"), "{err}");
}

#[tokio::test]
async fn a_corrupt_queue_file_fails_the_build_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    std::fs::write(
        &path,
        b"this is not a database, it is a grocery list\n".repeat(100),
    )
    .unwrap();
    let err = Mailer::builder()
        .queue(QueueConfig::new(format!("sqlite://{}", path.display())))
        .build_in_memory()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Storage);
    assert!(err.message().contains(&path.display().to_string()), "{err}");
}
