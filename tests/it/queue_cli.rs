//! `missive send --queue`, `missive queue ...` and `missive worker`, black-box: output
//! for people and scripts, exit codes, and storage failures named on stderr.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    /// A config with the repository's templates, the outbox and a SQLite queue.
    fn new() -> Dir {
        let dir = tempfile::tempdir().unwrap();
        let (templates, schemas) = crate::common::repo();
        std::fs::write(
            dir.path().join("missive.yaml"),
            format!(
                "templates: {}\nschemas: {}\ntransport: {{ type: outbox, dir: out }}\n\
                 queue:\n  url: sqlite://var/queue.db\n  backoff: {{ min: 50ms, max: 100ms }}\n  poll: 50ms\n",
                templates.display(),
                schemas.display()
            ),
        )
        .unwrap();
        Dir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn db(&self) -> PathBuf {
        self.path().join("var/queue.db")
    }

    fn missive(&self) -> Command {
        let mut cmd = Command::cargo_bin("missive").unwrap();
        cmd.current_dir(self.path())
            .env_remove("MISSIVE_CONFIG")
            .env_remove("MISSIVE_QUEUE_URL")
            .env_remove("RUST_LOG");
        cmd
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.missive().args(args).assert().success();
        String::from_utf8(out.get_output().stdout.clone()).unwrap()
    }

    /// `queued ID <Message-ID>` → (ID, Message-ID).
    fn enqueue(&self, args: &[&str]) -> (String, String) {
        let mut all = vec!["send", "welcome", "--queue"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        let mut words = out.split_whitespace();
        assert_eq!(words.next(), Some("queued"), "{out}");
        let id = words.next().unwrap().to_string();
        let mid = words.next().unwrap().to_string();
        assert!(mid.starts_with('<') && mid.ends_with('>'), "{out}");
        (id, mid)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.run(args)).unwrap()
    }
}

#[test]
fn send_queue_prints_the_id_and_message_id_and_a_key_queues_once() {
    let d = Dir::new();
    let (id, mid) = d.enqueue(&["--idempotency-key", "signup-42"]);
    let again = d.run(&[
        "send",
        "welcome",
        "--queue",
        "--idempotency-key",
        "signup-42",
    ]);
    assert_eq!(
        again.trim(),
        format!("queued {id} {mid} (already queued with this idempotency key; nothing new queued)")
    );
    assert!(!d.path().join("out").exists(), "nothing delivered yet");
    let list = d.json(&["queue", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["message_id"], mid);
    assert_eq!(list[0]["state"], "queued");
    d.missive()
        .args(["send", "welcome", "--idempotency-key", "k"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--queue"));
}

#[test]
fn list_show_stats_and_operations_for_people_and_scripts() {
    let d = Dir::new();
    let (first, mid) = d.enqueue(&["--to", "grace@example.test"]);
    let (second, _) = d.enqueue(&[]);
    let table = d.run(&["queue", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID  STATE   ATTEMPTS  TEMPLATE"),
        "{table}"
    );
    assert!(
        lines[1].starts_with(&format!("{second}   queued")),
        "{table}"
    );
    assert!(lines[2].contains(&mid), "{table}");
    let show = d.run(&["queue", "show", &first]);
    assert!(show.contains(&format!("message-id:   {mid}")), "{show}");
    assert!(show.contains("  grace@example.test pending"), "{show}");
    assert!(
        show.contains("  Subject: Welcome to Acme Cloud, Ada!"),
        "{show}"
    );
    assert!(show.contains("attempts:\n  (none yet)"), "{show}");

    assert_eq!(
        d.run(&["queue", "hold", &first]).trim(),
        format!("held {first}")
    );
    d.missive()
        .args(["queue", "hold", &first])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "cannot hold message {first}: it is held (only queued or deferred messages can be held)"
        )));
    d.run(&["queue", "cancel", &second]);
    let held = d.json(&["queue", "list", "--state", "held", "--json"]);
    assert_eq!(held.as_array().unwrap().len(), 1);
    assert_eq!(held[0]["id"].to_string(), first);
    let stats = d.json(&["queue", "stats", "--json"]);
    let count = |state: &str| {
        stats["states"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["state"] == state)
            .unwrap()["count"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        (count("held"), count("cancelled"), count("queued")),
        (1, 1, 0)
    );
    let table = d.run(&["queue", "stats"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("held       1      0s ago (")),
        "{table}"
    );
    d.run(&["queue", "release", &first]);
    d.missive()
        .args(["queue", "show", "999"])
        .assert()
        .code(1)
        .stderr("missive: no queued message 999\n");
    d.missive()
        .args(["queue", "list", "--state", "lost"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`lost` is not a queue state"));
    assert_eq!(
        d.run(&["queue", "purge", "--sent-before", "1h"]).trim(),
        "purged 0 messages"
    );
}

#[test]
fn worker_delivers_and_stops_cleanly_on_sigterm() {
    let d = Dir::new();
    let (id, mid) = d.enqueue(&[]);
    // The worker never renders, so it starts without the template set.
    let config = std::fs::read_to_string(d.path().join("missive.yaml")).unwrap();
    let (templates, _) = crate::common::repo();
    let config = config.replace(
        &format!("templates: {}", templates.display()),
        "templates: no-such-folder",
    );
    assert!(config.contains("no-such-folder"));
    std::fs::write(d.path().join("worker.yaml"), config).unwrap();
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_missive"))
        .current_dir(d.path())
        .env_remove("MISSIVE_CONFIG")
        .env_remove("MISSIVE_QUEUE_URL")
        .args(["--config", "worker.yaml", "worker"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let shown = d.json(&["queue", "show", &id, "--json"]);
        if shown["state"] == "sent" {
            assert_eq!(shown["history"][0]["outcome"], "sent");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{shown}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let eml: Vec<_> = std::fs::read_dir(d.path().join("out"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .collect();
    assert_eq!(eml.len(), 1);
    let text = std::fs::read_to_string(eml[0].path()).unwrap();
    assert!(text.contains(&format!("Message-ID: {mid}")));
    std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    let status = worker.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(worker.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("delivering from sqlite://var/queue.db"),
        "{stderr}"
    );
    assert_eq!(
        d.run(&["queue", "retry", "--failed"]).trim(),
        "retrying 0 failed messages"
    );
}

#[test]
fn without_a_queue_the_commands_say_how_to_configure_one() {
    let d = Dir::new();
    std::fs::write(
        d.path().join("missive.yaml"),
        "transport: { type: outbox }\n",
    )
    .unwrap();
    d.missive()
        .args(["queue", "stats"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no queue is configured"));
}

#[test]
fn a_corrupt_or_locked_database_is_named_and_nothing_is_acknowledged() {
    let d = Dir::new();
    d.enqueue(&[]);
    // Locked: another process holds the write lock past the busy timeout.
    let other = rusqlite::Connection::open(d.db()).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    d.missive()
        .args(["send", "welcome", "--queue"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(
            predicate::str::contains("var/queue.db")
                .and(predicate::str::contains("another process holds its lock")),
        );
    other.execute_batch("ROLLBACK").unwrap();
    drop(other);
    assert_eq!(
        d.json(&["queue", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Corrupt: the file is overwritten with something else.
    for f in ["queue.db-wal", "queue.db-shm"] {
        let _ = std::fs::remove_file(d.path().join("var").join(f));
    }
    std::fs::write(d.db(), vec![0x5a; 8192]).unwrap();
    d.missive().args(["queue", "list"]).assert().code(1).stderr(
        predicate::str::contains("queue database var/queue.db")
            .and(predicate::str::contains("not a missive queue")),
    );
}

#[test]
fn a_full_disk_fails_the_enqueue_and_nothing_is_acknowledged() {
    let d = Dir::new();
    d.enqueue(&[]);
    // The file-size limit makes every write past 8 KiB fail as on a full disk; the
    // shell ignores SIGXFSZ so that the write fails instead of killing missive.
    let bin = env!("CARGO_BIN_EXE_missive");
    let out = std::process::Command::new("bash")
        .current_dir(d.path())
        .env_remove("MISSIVE_CONFIG")
        .env_remove("MISSIVE_QUEUE_URL")
        .args([
            "-c",
            &format!("trap '' XFSZ; ulimit -f 8; exec {bin} send welcome --queue"),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing acknowledged");
    assert!(stderr.contains("queue database var/queue.db"), "{stderr}");
    assert!(stderr.contains("nothing was stored"), "{stderr}");
    assert_eq!(
        d.json(&["queue", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
