//! The queue on a private PostgreSQL server: three `missive worker` processes share
//! one queue, enqueues inside the app's own transaction, NOTIFY wakes idle workers,
//! and an unreachable server or a wrong password is a clear error.

use std::time::{Duration, Instant};

use crate::support::postgres::{Postgres, USER};
use crate::support::smtp::{FakeSmtp, Options};
use missive::{ErrorKind, Mailer, Queue, QueueConfig, State};
use sqlx::Connection as _;

fn message_id_of(data: &str) -> String {
    data.lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .unwrap_or_default()
        .to_string()
}

async fn wait_for(queue: &Queue, state: State, n: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let stats = queue.stats().await.unwrap();
        if stats.count(state) == n {
            return;
        }
        assert!(Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `missive worker` processes: needs the binary (feature `cli`).
#[cfg(feature = "cli")]
mod processes {
    use super::*;
    use crate::support::postgres::PASSWORD;
    use missive::Email;
    use std::collections::HashMap;
    use std::process::{Command, Stdio};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_worker_processes_deliver_3000_messages_exactly_once() {
        let pg = Postgres::start();
        let url = pg.database("three");
        let smtp = FakeSmtp::start(Options::default()).await;
        let queue = Queue::open(&QueueConfig::new(url.clone())).unwrap();
        let mut tasks = Vec::new();
        for caller in 0..16 {
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                for n in (caller..3000).step_by(16) {
                    let mid = format!("<m{n}@three.test>");
                    let raw = format!(
                        "From: a@three.test\r\nTo: r{n}@three.test\r\nMessage-ID: {mid}\r\nSubject: {n}\r\n\r\nhello\r\n"
                    );
                    let email = Email::new(mid, Some("a@three.test"), &[format!("r{n}@three.test")], raw.into_bytes()).unwrap();
                    queue.enqueue(&email, None).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let config = crate::support::config_file(
            dir.path(),
            &format!(
                "  type: smtp\n  host: 127.0.0.1\n  port: {}\n  tls: none\n  timeout_secs: 5\n\
                 queue:\n  url: postgres://{USER}@127.0.0.1:{}/three\n  workers: 2\n  lease: 10s\n  poll: 100ms\n",
                smtp.port, pg.port
            ),
        );
        let workers: Vec<_> = (0..3)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_missive"))
                    .arg("--config")
                    .arg(&config)
                    .arg("worker")
                    .env("PGPASSWORD", PASSWORD)
                    .env_remove("MISSIVE_QUEUE_URL")
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        wait_for(&queue, State::Sent, 3000, Duration::from_secs(90)).await;
        for w in &workers {
            let killed = Command::new("kill")
                .args(["-TERM", &w.id().to_string()])
                .status()
                .unwrap();
            assert!(killed.success());
        }
        for w in workers {
            let out = w.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "worker exits 0 on SIGTERM: {stderr}");
            assert!(stderr.contains("stopped"), "{stderr}");
            assert!(!stderr.contains(PASSWORD), "{stderr}");
        }
        let mut copies: HashMap<String, usize> = HashMap::new();
        for r in smtp.received() {
            *copies.entry(message_id_of(&r.data)).or_default() += 1;
        }
        assert_eq!(copies.len(), 3000);
        assert!(
            copies.values().all(|&n| n == 1),
            "each delivered exactly once"
        );
        let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
        let processes: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT split_part(worker, '/', 1)) FROM missive_attempts WHERE outcome = 'sent'",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert_eq!(processes, 3, "all three processes delivered");
    }
}

fn mailer(url: &str, poll: Duration, smtp: &FakeSmtp, dir: &std::path::Path) -> Mailer {
    let config = crate::support::config_file(
        dir,
        &format!(
            "  type: smtp\n  host: 127.0.0.1\n  port: {}\n  tls: none\n  timeout_secs: 5\n",
            smtp.port
        ),
    );
    Mailer::builder()
        .config(missive::Config::from_file(config).unwrap())
        .queue(QueueConfig::new(url).lease(Duration::from_secs(10), poll))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_in_the_apps_transaction_exists_only_if_it_commits_and_notify_wakes_the_worker() {
    let pg = Postgres::start();
    let url = pg.database("outbox");
    let smtp = FakeSmtp::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // An idle worker polls only every 30 s: prompt delivery needs the NOTIFY.
    let mailer = mailer(&url, Duration::from_secs(30), &smtp, dir.path());
    let queue = mailer.queue().unwrap().clone();
    let data = mailer.example("welcome", 0).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = mailer.clone();
    let running = tokio::spawn(async move {
        runner
            .run_queue(async {
                let _ = stopped.await;
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("CREATE TABLE signups (email TEXT)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let rolled_back = mailer
        .template("welcome")
        .data(&data)
        .enqueue_in(&mut tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let err = queue.show(rolled_back.id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);

    let mut tx = conn.begin().await.unwrap();
    let committed = mailer
        .template("welcome")
        .data(&data)
        .enqueue_in(&mut tx)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        queue.stats().await.unwrap().count(State::Queued),
        0,
        "invisible until the commit"
    );
    assert!(smtp.received().is_empty());
    tx.commit().await.unwrap();
    let start = Instant::now();
    wait_for(&queue, State::Sent, 1, Duration::from_secs(10)).await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "woken by NOTIFY, not the 30 s poll"
    );
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let received = smtp.received();
    assert_eq!(received.len(), 1);
    assert_eq!(message_id_of(&received[0].data), committed.message_id);
    // Schema version 3: the server keeps the body LZ4-compressed, and it reads back whole.
    let (compression, raw): (Option<String>, Vec<u8>) = sqlx::query_as(
        "SELECT pg_column_compression(raw), raw FROM missive_messages WHERE id = $1",
    )
    .bind(committed.id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(compression.as_deref(), Some("lz4"));
    let got = received[0].data.as_bytes();
    assert!(got == &raw[..] || got.strip_suffix(b"\r\n") == Some(&raw[..]));
}

#[tokio::test]
async fn an_unreachable_server_or_a_wrong_password_is_a_clear_error_naming_the_database() {
    let pg = Postgres::start();
    pg.database("auth");
    let wrong = format!(
        "postgres://{USER}:not-the-password@127.0.0.1:{}/auth",
        pg.port
    );
    let queue = Queue::open(&QueueConfig::new(&wrong)).unwrap();
    let err = queue.stats().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Storage);
    let text = err.to_string();
    assert!(
        text.contains(&format!("postgres://{USER}:***@127.0.0.1:{}/auth", pg.port)),
        "{text}"
    );
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let queue = Queue::open(&QueueConfig::new(format!(
        "postgres://{USER}@127.0.0.1:{port}/none"
    )))
    .unwrap();
    let err = queue.stats().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Storage);
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}/none")), "{text}");
    assert!(text.to_lowercase().contains("connection refused"), "{text}");
}
