//! The durable queue's speed, every figure from one run so that the ratios compare
//! like with like: enqueue (render + durable write) against render + MIME alone, with
//! 1 and 16 concurrent callers, on SQLite and PostgreSQL; delivery through the queue
//! against direct `send_template` to the same SMTP sink, with one and two workers;
//! and a worker's memory while it works through 100,000 queued messages.
//!
//! `cargo bench --bench queue [enqueue] [deliver] [memory]` (all three when none is
//! named). PostgreSQL figures need Debian's `postgresql` package
//! (the bench starts a private server as the tests do); without it they are skipped.
//! `MISSIVE_BENCH_SINK=127.0.0.1:10025` delivers to that SMTP sink (Postfix's
//! `smtp-sink`, which `tests/interop/up.sh` starts there) instead of the in-process one.

#[path = "../tests/support/postgres.rs"]
#[allow(dead_code)]
mod postgres;
#[path = "support/process.rs"]
mod process;
#[path = "support/sink.rs"]
mod sink;
use process::{cpu_seconds, rss_kib};

use std::time::{Duration, Instant};

use missive::{Email, Mailer, Queue, QueueConfig, State};

const TEMPLATES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/templates");
const SCHEMAS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
/// Messages per measurement.
const N: usize = 4000;
const BIG: usize = 100_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn config(dir: &std::path::Path, port: u16) -> missive::Config {
    let path = dir.join("missive.yaml");
    std::fs::write(
        &path,
        format!(
            "templates: {TEMPLATES}\nschemas: {SCHEMAS}\nfrom: Bench <bench@example.test>\n\
             transport:\n  type: smtp\n  host: 127.0.0.1\n  port: {port}\n  tls: none\n  \
             pool:\n    max_connections: 4\n"
        ),
    )
    .expect("config");
    missive::Config::from_file(path).expect("config")
}

fn mailer(config: &missive::Config, queue: Option<QueueConfig>) -> Mailer {
    let mut builder = Mailer::builder().config(config.clone());
    if let Some(queue) = queue {
        builder = builder.queue(queue);
    }
    builder.build().expect("mailer")
}

/// `n` messages from `callers` concurrent tasks, each running `one`.
async fn concurrently<F, Fut>(callers: usize, n: usize, one: F) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let one = one.clone();
        tasks.spawn(async move {
            for _ in 0..n / callers {
                one().await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    start.elapsed()
}

async fn render_rate(mailer: &Mailer, data: &serde_json::Value, callers: usize) -> f64 {
    let (mailer, data) = (mailer.clone(), data.clone());
    let d = concurrently(callers, N, move || {
        let (mailer, data) = (mailer.clone(), data.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                mailer.template("welcome").data(&data).eml().expect("eml")
            })
            .await
            .expect("render");
        }
    })
    .await;
    rate(N, d)
}

async fn enqueue_rate(mailer: &Mailer, data: &serde_json::Value, callers: usize) -> f64 {
    let (mailer, data) = (mailer.clone(), data.clone());
    let d = concurrently(callers, N, move || {
        let (mailer, data) = (mailer.clone(), data.clone());
        async move {
            mailer.enqueue("welcome", &data).await.expect("enqueue");
        }
    })
    .await;
    rate(N, d)
}

/// Runs the mailer's workers until `n` messages are sent; returns the time taken and
/// the highest RSS seen meanwhile.
async fn drain(mailer: &Mailer, n: u64) -> (Duration, u64) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = mailer.clone();
    let start = Instant::now();
    let running = tokio::spawn(async move {
        runner
            .run_queue(async {
                let _ = stopped.await;
            })
            .await
    });
    let queue = mailer.queue().expect("queue").clone();
    let mut peak = 0;
    loop {
        peak = peak.max(rss_kib());
        if queue.stats().await.expect("stats").count(State::Sent) >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    stop.send(()).expect("stop");
    running.await.expect("task").expect("workers");
    (took, peak)
}

/// Whether the command line asks for `section` (no section named: all of them).
fn wanted(section: &str) -> bool {
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    named.is_empty() || named.iter().any(|a| a == section)
}

async fn run() {
    let port = match std::env::var("MISSIVE_BENCH_SINK") {
        Ok(addr) => {
            let port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
            let port = port.expect("MISSIVE_BENCH_SINK is 127.0.0.1:PORT");
            println!("sink: {addr}");
            port
        }
        Err(_) => {
            println!("sink: in-process");
            sink::sink(None).await
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path(), port);
    let plain = mailer(&config, None);
    let data = plain.example("welcome", 0).expect("example");
    let sqlite = |name: &str| {
        QueueConfig::new(format!("sqlite://{}/{name}.db", dir.path().display()))
            .lease(Duration::from_secs(60), Duration::from_millis(50))
    };

    if wanted("enqueue") {
        enqueue_section(dir.path(), &config, &plain, &data, &sqlite).await;
    }
    if wanted("deliver") {
        deliver_section(&config, &plain, &data, &sqlite).await;
    }
    if wanted("memory") {
        memory_section(&config, &sqlite).await;
    }
}

/// Rounds of the enqueue measurements, interleaved; the table gives each one's median.
const ROUNDS: usize = 3;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Median time of one 4 KiB overwrite followed by `fsync` in `dir`: what a durable
/// commit waits for at least, whoever makes it. One caller's enqueue rate is at most
/// 1 / (render time + this).
fn fsync_micros(dir: &std::path::Path) -> f64 {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).expect("probe file");
    file.write_all(&[0; 16 * 1024]).expect("probe file");
    file.sync_all().expect("probe file");
    let times = (0..200)
        .map(|i: u64| {
            let start = Instant::now();
            file.seek(SeekFrom::Start((i % 4) * 4096)).expect("seek");
            file.write_all(&[i as u8; 4096]).expect("write");
            file.sync_data().expect("fsync");
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    median(times)
}

async fn enqueue_section(
    dir: &std::path::Path,
    config: &missive::Config,
    plain: &Mailer,
    data: &serde_json::Value,
    sqlite: &dyn Fn(&str) -> QueueConfig,
) {
    let (config, plain, data) = (config.clone(), plain.clone(), data.clone());
    let lite = mailer(&config, Some(sqlite("enqueue")));
    let pg = postgres_available().then(postgres::Postgres::start);
    let pg_mailer = match &pg {
        Some(pg) => {
            let q = mailer(&config, Some(QueueConfig::new(pg.database("bench"))));
            // The first enqueue runs the migrations; not part of the rate.
            q.enqueue("welcome", &data).await.expect("enqueue");
            Some(q)
        }
        None => None,
    };
    // [render, SQLite, PostgreSQL] × [1 caller, 16 callers], every round.
    let mut rates: [[Vec<f64>; 2]; 3] = Default::default();
    for _ in 0..ROUNDS {
        for (c, callers) in [1, 16].into_iter().enumerate() {
            rates[0][c].push(render_rate(&plain, &data, callers).await);
            rates[1][c].push(enqueue_rate(&lite, &data, callers).await);
            if let Some(q) = &pg_mailer {
                rates[2][c].push(enqueue_rate(q, &data, callers).await);
            }
        }
    }
    let fsync = fsync_micros(dir);
    let [render, lite, pg_rates] = rates.map(|r| r.map(median));
    println!("| Measurement (median of {ROUNDS} interleaved rounds) | 1 caller | 16 callers |");
    println!("|---|---|---|");
    println!(
        "| render + MIME (`welcome`), msg/s | {:.0} | {:.0} |",
        render[0], render[1]
    );
    println!(
        "| enqueue, SQLite (render + durable write), msg/s | {:.0} ({:.2}×) | {:.0} ({:.2}×) |",
        lite[0],
        lite[0] / render[0],
        lite[1],
        lite[1] / render[1]
    );
    if pg_mailer.is_some() {
        println!(
            "| enqueue, PostgreSQL (render + durable write), msg/s | {:.0} ({:.2}×) | {:.0} ({:.2}×) |",
            pg_rates[0],
            pg_rates[0] / render[0],
            pg_rates[1],
            pg_rates[1] / render[1]
        );
    } else {
        println!("| enqueue, PostgreSQL | skipped: `apt-get install postgresql` | |");
    }
    let bound = 1.0 / (1.0 / render[0] + fsync / 1e6);
    println!(
        "| one 4 KiB write + fsync in the queue's folder, µs; the most one caller can enqueue, msg/s | {fsync:.0}; {bound:.0} ({:.2}×) | |",
        bound / render[0]
    );
}

async fn deliver_section(
    config: &missive::Config,
    plain: &Mailer,
    data: &serde_json::Value,
    sqlite: &dyn Fn(&str) -> QueueConfig,
) {
    let (config, plain, data) = (config.clone(), plain.clone(), data.clone());
    println!();
    println!("| Delivery to an SMTP sink (4 connections) | msg/s | vs direct | cores busy |");
    println!("|---|---|---|---|");
    let cpu = cpu_seconds();
    let direct = {
        let mailer = plain.clone();
        let data = data.clone();
        let d = concurrently(16, N, move || {
            let (mailer, data) = (mailer.clone(), data.clone());
            async move {
                mailer.send_template("welcome", &data).await.expect("sent");
            }
        })
        .await;
        rate(N, d)
    };
    let busy = (cpu_seconds() - cpu) * direct / N as f64;
    println!("| direct `send_template`, 16 callers | {direct:.0} | 1.00× | {busy:.2} |");
    let mut one = 0.0;
    for workers in [1, 2] {
        let q = mailer(
            &config,
            Some(sqlite(&format!("deliver{workers}")).workers(workers)),
        );
        enqueue_rate(&q, &data, 16).await;
        let cpu = cpu_seconds();
        let (took, _) = drain(&q, N as u64).await;
        let busy = (cpu_seconds() - cpu) / took.as_secs_f64();
        let r = rate(N, took);
        if workers == 1 {
            one = r;
        }
        println!(
            "| through the SQLite queue, {workers} worker{} | {r:.0} | {:.2}× (workers: {:.2}× one) | {busy:.2} |",
            if workers == 1 { "" } else { "s" },
            r / direct,
            r / one
        );
    }
}

async fn memory_section(config: &missive::Config, sqlite: &dyn Fn(&str) -> QueueConfig) {
    println!();
    let q = mailer(config, Some(sqlite("big")));
    let queue: Queue = q.queue().expect("queue").clone();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..16 {
        let queue = queue.clone();
        tasks.spawn(async move {
            for n in (caller..BIG).step_by(16) {
                let mid = format!("<big{n}@bench.test>");
                let raw = format!(
                    "From: bench@bench.test\r\nTo: r@bench.test\r\nMessage-ID: {mid}\r\nSubject: {n}\r\n\r\n{}\r\n",
                    "x".repeat(2000)
                );
                let email = Email::new(mid, Some("bench@bench.test"), &["r@bench.test"], raw.into_bytes())
                    .expect("email");
                queue.enqueue(&email, None).await.expect("enqueue");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    let filled = start.elapsed();
    let before = rss_kib();
    let (took, peak) = drain(&q, BIG as u64).await;
    let after = rss_kib();
    println!(
        "100,000 queued (2 KB each, enqueued at {:.0} msg/s): worker RSS {} MiB before, peak {} MiB while delivering them all ({:.0} msg/s), {} MiB after",
        rate(BIG, filled),
        before / 1024,
        peak / 1024,
        rate(BIG, took),
        after / 1024
    );
}

fn postgres_available() -> bool {
    std::fs::read_dir("/usr/lib/postgresql")
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}
