//! kill -9 anywhere: a child process enqueues and delivers 2,000 messages to a fake SMTP
//! server and is killed with SIGKILL at random moments (during enqueue, claim, mid-DATA,
//! after the server's 250 and before the outcome is committed), then restarted. At the
//! end every acknowledged enqueue was delivered, and a message arrived twice only when
//! a kill fell between its 250 and the commit of that outcome: at most one copy per
//! kill, with the same Message-ID and the same bytes.
//!
//! The child is this test binary run again (`child_process`, ignored in normal runs);
//! a binary of its own, so that the child is small and starts fast.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use missive::{Mailer, Queue, QueueConfig, State};
use support::smtp::{FakeSmtp, Options, Received};

const TOTAL: usize = 2000;
const KILLS: usize = 22;
/// How long after a server's 250 a kill may still cost a duplicate: the outcome's
/// commit follows the 250 within milliseconds, so this is generous.
const WINDOW: Duration = Duration::from_secs(2);
/// A child killed right after sending the final "." is recorded by the server an
/// instant after the kill: the server took the message, the child never heard.
const SKEW: Duration = Duration::from_millis(100);

/// The child: enqueue every message not acknowledged yet (8 callers at once, one
/// idempotency key per message), writing a line per acknowledged enqueue, while one
/// worker delivers; exit 0 on SIGTERM.
#[test]
#[ignore = "the child process of the kill -9 tests"]
fn child_process() {
    let Ok(acks) = std::env::var("MISSIVE_KILL_ACKS") else {
        return;
    };
    let config = std::env::var("MISSIVE_CONFIG").unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(child(PathBuf::from(config), PathBuf::from(acks)));
}

async fn child(config: PathBuf, acks: PathBuf) {
    let mailer = Mailer::from_config(&config).await.unwrap();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    // From here on SIGTERM stops the workers instead of killing the process.
    std::fs::write(acks.with_extension("ready"), b"").unwrap();
    let runner = mailer.clone();
    let workers = tokio::spawn(async move {
        runner
            .run_queue(async move {
                term.recv().await;
            })
            .await
    });
    let done: HashSet<usize> = read_acks(&acks).keys().copied().collect();
    let total = std::env::var("MISSIVE_KILL_TOTAL")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(TOTAL);
    let todo: Vec<usize> = (0..total).filter(|i| !done.contains(i)).collect();
    let todo = std::sync::Arc::new(std::sync::Mutex::new(todo.into_iter()));
    let file = std::sync::Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&acks)
            .unwrap(),
    ));
    let data = mailer.example("welcome", 0).unwrap();
    let mut callers = Vec::new();
    for _ in 0..8 {
        let (mailer, todo, file, data) = (mailer.clone(), todo.clone(), file.clone(), data.clone());
        callers.push(tokio::spawn(async move {
            loop {
                let Some(i) = todo.lock().unwrap().next() else {
                    return;
                };
                let queued = mailer
                    .template("welcome")
                    .data(&data)
                    .to(format!("r{i}@example.test"))
                    .idempotency_key(format!("kill-{i}"))
                    .enqueue()
                    .await
                    .unwrap();
                // One write per line, so a kill leaves at most one torn last line.
                let line = format!("{i} {} {}\n", queued.id, queued.message_id);
                file.lock().unwrap().write_all(line.as_bytes()).unwrap();
            }
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }
    workers.await.unwrap().unwrap();
}

/// index → Message-ID of every complete line.
fn read_acks(path: &Path) -> BTreeMap<usize, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            let i = parts.next()?.parse().ok()?;
            let _id = parts.next()?;
            let mid = parts.next()?;
            (mid.starts_with('<') && mid.ends_with('>')).then(|| (i, mid.to_string()))
        })
        .collect()
}

fn message_id(r: &Received) -> String {
    r.data
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .unwrap_or_default()
        .trim()
        .to_string()
}

struct Run {
    dir: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl Run {
    fn new(smtp_port: u16, queue_url: &str, env: Vec<(String, String)>) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let transport = format!(
            "  type: smtp\n  host: 127.0.0.1\n  port: {smtp_port}\n  tls: none\n  timeout_secs: 5\n  \
             pool: {{ max_connections: 1 }}\n\
             queue:\n  url: \"{queue_url}\"\n  workers: 1\n  backoff: {{ min: 50ms, max: 200ms }}\n  \
             lease: 1s\n  poll: 50ms\n  in_flight: 1\n"
        );
        let config = support::config_file(dir.path(), &transport);
        Run { dir, config, env }
    }

    /// Every child's warnings and errors, for failure messages.
    fn logs(&self) -> String {
        (0..=KILLS)
            .filter_map(|n| {
                std::fs::read_to_string(self.dir.path().join(format!("child-{n}.log"))).ok()
            })
            .flat_map(|text| text.lines().map(str::to_string).collect::<Vec<_>>())
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn acks(&self) -> PathBuf {
        self.dir.path().join("acks")
    }

    fn spawn(&self, n: usize) -> Child {
        let log = std::fs::File::create(self.dir.path().join(format!("child-{n}.log"))).unwrap();
        Command::new(std::env::current_exe().unwrap())
            .args(["child_process", "--exact", "--ignored", "--nocapture"])
            .env("MISSIVE_KILL_ACKS", self.acks())
            .env("MISSIVE_CONFIG", &self.config)
            .env("RUST_LOG", "missive=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }
}

/// `queue_url` is what the test opens; the children read the config's URL, which
/// holds no password, and `env`.
async fn kill_nine_anywhere(queue_url: String, config_url: &str, env: Vec<(String, String)>) {
    let smtp = FakeSmtp::start(Options::default()).await;
    let run = Run::new(smtp.port, config_url, env);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut kills: Vec<Instant> = Vec::new();
    let mut mid_delivery = 0;
    for n in 0..KILLS {
        let mut child = run.spawn(n);
        if n % 2 == 0 {
            // Any moment: start-up, enqueueing, claiming, sending, recording.
            tokio::time::sleep(Duration::from_millis(rng.u64(150..900))).await;
        } else {
            // While mail is flowing: once this child has delivered a few messages,
            // a few milliseconds later, so that kills also land mid-DATA and between
            // a 250 and its commit however fast the children are.
            let start = smtp.received().len();
            let until = Instant::now() + Duration::from_secs(5);
            while smtp.received().len() < (start + 20).min(TOTAL) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tokio::time::sleep(Duration::from_micros(rng.u64(0..5000))).await;
        }
        let delivered = smtp.received().len();
        child.kill().unwrap(); // SIGKILL
        kills.push(Instant::now());
        child.wait().unwrap();
        if smtp.received().len() > delivered || delivered < TOTAL {
            mid_delivery += 1;
        }
    }
    let delivered_before_last_run = smtp.received().len();
    let _ = std::fs::remove_file(run.acks().with_extension("ready"));
    let mut last = run.spawn(KILLS);
    let queue = Queue::open(&QueueConfig::new(queue_url.clone())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stats = queue.stats().await.unwrap();
        if stats.count(State::Sent) == TOTAL as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: not all delivered: {stats:?}\n{}",
            std::fs::read_to_string(run.dir.path().join(format!("child-{KILLS}.log")))
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SIGTERM: the worker stops claiming, finishes what it holds, exits 0.
    while !run.acks().with_extension("ready").exists() {
        assert!(Instant::now() < deadline, "the last child never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let term = Command::new("kill")
        .args(["-TERM", &last.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = last.wait().unwrap();
    assert!(
        status.success(),
        "the worker exits 0 on SIGTERM: {status:?}"
    );

    let acked = read_acks(&run.acks());
    assert_eq!(
        acked.len(),
        TOTAL,
        "seed {seed}: every index acknowledged in the end"
    );
    let received = smtp.received();
    let mut copies: HashMap<String, Vec<&Received>> = HashMap::new();
    for r in &received {
        copies.entry(message_id(r)).or_default().push(r);
    }
    let acked_ids: HashSet<&String> = acked.values().collect();
    for (i, mid) in &acked {
        assert!(
            copies.contains_key(mid),
            "seed {seed}: acknowledged message {i} {mid} never delivered"
        );
    }
    for mid in copies.keys() {
        assert!(
            acked_ids.contains(mid),
            "seed {seed}: delivered {mid}, which was never acknowledged"
        );
    }
    // Every duplicate: a kill fell after the first copy's 250 and within the window,
    // before the next copy; no kill accounts for two duplicates.
    let mut per_kill: HashMap<usize, usize> = HashMap::new();
    let mut duplicates = 0;
    for (mid, list) in &copies {
        for pair in list.windows(2) {
            duplicates += 1;
            assert_eq!(
                pair[0].data, pair[1].data,
                "seed {seed}: {mid}: copies differ"
            );
            let kill = kills.iter().position(|&k| {
                k + SKEW > pair[0].at
                    && k < pair[1].at
                    && k.saturating_duration_since(pair[0].at) < WINDOW
            });
            let Some(kill) = kill else {
                panic!(
                    "seed {seed}: {mid} was delivered twice with no kill right after the first 250\n{}",
                    run.logs()
                );
            };
            *per_kill.entry(kill).or_default() += 1;
            let when = match kills[kill].checked_duration_since(pair[0].at) {
                Some(d) => format!("{d:?} before"),
                None => format!("{:?} after", pair[0].at - kills[kill]),
            };
            eprintln!(
                "duplicate {mid}: first taken {when} kill {kill}, again {:?} after it",
                pair[1].at - kills[kill]
            );
        }
    }
    assert!(
        per_kill.values().all(|&n| n == 1),
        "seed {seed}: a kill cost more than one duplicate: {per_kill:?}\n{}",
        run.logs()
    );
    eprintln!(
        "kill -9 ({}): {KILLS} kills ({mid_delivery} with mail still to deliver), {} deliveries ({delivered_before_last_run} before the last run), {duplicates} duplicate(s), seed {seed}",
        Queue::describe_url(&queue_url),
        received.len()
    );
}

/// The kill the random ones only sometimes hit: the fake server kills the child the
/// moment it has written the 250 for one message, before the worker can commit that
/// outcome. After the restart that message goes out once more, with the same
/// Message-ID and bytes; every other message exactly once.
async fn kill_between_250_and_commit(
    queue_url: String,
    config_url: &str,
    env: Vec<(String, String)>,
) {
    const MESSAGES: usize = 12;
    const KILLED_AT: usize = 5;
    let child: std::sync::Arc<std::sync::Mutex<Option<Child>>> = std::sync::Arc::default();
    let killer = child.clone();
    let stopper = child.clone();
    let smtp = FakeSmtp::start(Options {
        // Stopped before the 250 goes out, so the child cannot read it and commit the
        // outcome before the kill lands, however the two processes are scheduled.
        before_accept: Some(std::sync::Arc::new(move |n| {
            if n == KILLED_AT {
                if let Some(child) = stopper.lock().unwrap().as_ref() {
                    let stopped = std::process::Command::new("kill")
                        .args(["-STOP", &child.id().to_string()])
                        .status()
                        .unwrap();
                    assert!(stopped.success(), "kill -STOP");
                }
            }
        })),
        after_accept: Some(std::sync::Arc::new(move |n| {
            if n == KILLED_AT {
                if let Some(child) = killer.lock().unwrap().as_mut() {
                    child.kill().unwrap(); // SIGKILL, no process in between
                }
            }
        })),
        ..Options::default()
    })
    .await;
    let mut env = env;
    env.push(("MISSIVE_KILL_TOTAL".into(), MESSAGES.to_string()));
    let run = Run::new(smtp.port, config_url, env);
    *child.lock().unwrap() = Some(run.spawn(0));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let exited = child.lock().unwrap().as_mut().unwrap().try_wait().unwrap();
        if let Some(status) = exited {
            assert!(
                !status.success(),
                "the child was killed: {status:?}\n{}",
                run.logs()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never accepted message {KILLED_AT}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(smtp.received().len(), KILLED_AT);
    let _ = std::fs::remove_file(run.acks().with_extension("ready"));
    let mut last = run.spawn(1);
    let queue = Queue::open(&QueueConfig::new(queue_url)).unwrap();
    let acked = loop {
        let acked = read_acks(&run.acks());
        let sent = queue.stats().await.unwrap().count(State::Sent);
        if acked.len() == MESSAGES && sent == MESSAGES as u64 {
            break acked;
        }
        assert!(
            Instant::now() < deadline,
            "not all delivered: {sent} sent\n{}",
            run.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    while !run.acks().with_extension("ready").exists() {
        assert!(Instant::now() < deadline, "the last child never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    last.kill().unwrap();
    last.wait().unwrap();

    let received = smtp.received();
    let killed = &received[KILLED_AT - 1];
    let mut copies: HashMap<String, Vec<&Received>> = HashMap::new();
    for r in &received {
        copies.entry(message_id(r)).or_default().push(r);
    }
    assert_eq!(copies.len(), MESSAGES, "{received:?}");
    for mid in acked.values() {
        let list = &copies[mid];
        if *mid == message_id(killed) {
            assert_eq!(list.len(), 2, "{mid}: sent again after the kill, once");
            assert_eq!(list[0].data, list[1].data, "{mid}: the same bytes");
            assert_eq!(list[0].to, list[1].to);
        } else {
            assert_eq!(list.len(), 1, "{mid}: no kill fell after its 250");
        }
    }
}

/// Database `db` on `pg`: the URL the test reads it by, the one the child's
/// missive.yaml names (without the password), and the child's environment that
/// carries the password.
fn postgres_child(
    pg: &support::postgres::Postgres,
    db: &str,
) -> (String, String, Vec<(String, String)>) {
    let config_url = format!(
        "postgres://{}@127.0.0.1:{}/{db}",
        support::postgres::USER,
        pg.port
    );
    let env = vec![(
        "PGPASSWORD".to_string(),
        support::postgres::PASSWORD.to_string(),
    )];
    (pg.database(db), config_url, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_the_250_and_the_commit_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/queue.db", dir.path().display());
    kill_between_250_and_commit(url.clone(), &url, Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_the_250_and_the_commit_postgres() {
    let pg = support::postgres::Postgres::start();
    let (url, config_url, env) = postgres_child(&pg, "between");
    kill_between_250_and_commit(url, &config_url, env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_anywhere_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/queue.db", dir.path().display());
    kill_nine_anywhere(url.clone(), &url, Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_anywhere_postgres() {
    let pg = support::postgres::Postgres::start();
    let (url, config_url, env) = postgres_child(&pg, "kill");
    kill_nine_anywhere(url, &config_url, env).await;
}
