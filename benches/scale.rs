//! How missive scales: with template count (load, check, memory), with message size,
//! and with threads. Prints markdown tables; `cargo bench --bench scale`.
//!
//! Run it on an otherwise idle machine: it measures wall-clock time.

use std::path::Path;
use std::time::{Duration, Instant};

use missive::{Config, Mailer};
use serde_json::{json, Value};

fn main() {
    let mut args = std::env::args().skip_while(|a| a != RSS_AFTER_LOAD);
    if let Some(templates) = args.nth(1) {
        let before = rss_kib();
        let (mailer, _) = Mailer::for_tests(templates);
        println!("{}", rss_kib().saturating_sub(before));
        drop(mailer);
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    println!("machine: {} cores, {}\n", cores(), cpu_model());
    template_count(repo);
    message_size(repo);
    threads(repo);
}

/// A set of `n` sendable templates: copies of the example set under new names.
fn generate(repo: &Path, n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(from, to).expect("copy");
    };
    for shared in [
        "_layouts/base.html",
        "_partials/ui.html",
        "styles/email.css",
    ] {
        copy(
            &repo.join("templates").join(shared),
            &dir.path().join("templates").join(shared),
        );
    }
    let originals = [
        "welcome",
        "account/verify-email",
        "account/password-reset",
        "orders/receipt",
        "orders/shipped",
        "digest",
    ];
    for i in 0..n {
        let original = originals[i % originals.len()];
        let name = format!("t{i:04}/{}", original.replace('/', "-"));
        let source =
            std::fs::read_to_string(repo.join("templates").join(format!("{original}.html")))
                .expect("read");
        let source = source.replacen(
            &format!("schema: {original}.schema.json"),
            &format!("schema: {name}.schema.json"),
            1,
        );
        let path = dir.path().join("templates").join(format!("{name}.html"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, source).expect("write");
        copy(
            &repo.join("schemas").join(format!("{original}.schema.json")),
            &dir.path()
                .join("schemas")
                .join(format!("{name}.schema.json")),
        );
    }
    dir
}

fn template_count(repo: &Path) {
    println!("| templates | load | check (every example rendered) | RSS after load | save → reloaded (median / max) |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for n in [10, 100, 1000] {
        let dir = generate(repo, n);
        let rss = rss_after_load(&dir.path().join("templates"));
        let start = Instant::now();
        let (mailer, _) = Mailer::for_tests(dir.path().join("templates"));
        let load = start.elapsed();
        let mut config = Config::default();
        config.templates = dir.path().join("templates");
        config.schemas = dir.path().join("schemas");
        let start = Instant::now();
        let report = missive::check(&config);
        let check = start.elapsed();
        assert!(report.is_ok(), "{:?}", report.problems);
        drop(mailer);
        let (median, max) = save_to_reload(&dir);
        println!(
            "| {n} | {} | {} ({} renders) | +{:.1} MiB | {} / {} |",
            ms(load),
            ms(check),
            report.renders,
            rss as f64 / 1024.0,
            ms(median),
            ms(max),
        );
    }
    println!();
}

/// Passed to this binary: load the set in the folder that follows and print the RSS that
/// grew, in KiB.
const RSS_AFTER_LOAD: &str = "--rss-after-load";

/// The RSS a load of `templates` adds, measured in a process of its own: in this one,
/// the load would reuse pages that earlier sets and renders freed and look smaller.
fn rss_after_load(templates: &Path) -> u64 {
    let exe = std::env::current_exe().expect("bench binary");
    let out = std::process::Command::new(exe)
        .arg(RSS_AFTER_LOAD)
        .arg(templates)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("KiB")
}

/// From writing one template to the watcher having swapped in the new set: median and
/// maximum over 15 saves. Includes the watcher's 50 ms debounce.
fn save_to_reload(dir: &tempfile::TempDir) -> (Duration, Duration) {
    let mailer = Mailer::builder()
        .templates(dir.path().join("templates"))
        .schemas(dir.path().join("schemas"))
        .watch(true)
        .build()
        .expect("builds");
    let mut events = mailer.subscribe();
    let file = dir.path().join("templates/t0000/welcome.html");
    let original = std::fs::read_to_string(&file).expect("read");
    let mut times = Vec::new();
    for i in 0..15 {
        std::thread::sleep(Duration::from_millis(120));
        let start = Instant::now();
        std::fs::write(
            &file,
            original.replace("Welcome aboard", &format!("Welcome {i}")),
        )
        .expect("write");
        match events.blocking_recv() {
            Ok(missive::ReloadEvent::Reloaded { .. }) => times.push(start.elapsed()),
            other => panic!("reload failed: {other:?}"),
        }
    }
    times.sort();
    (times[times.len() / 2], times[times.len() - 1])
}

fn message_size(repo: &Path) {
    let (mailer, _) = Mailer::for_tests(repo.join("templates"));
    let base = mailer.example("orders/receipt", 0).expect("example");
    println!("| receipt line items | HTML size | render | render + MIME |");
    println!("| ---: | ---: | ---: | ---: |");
    for items in [1, 10, 50, 200, 1000] {
        let data = with_items(&base, items);
        let message = mailer.template("orders/receipt").data(&data);
        let html = message.render().expect("renders").html().len();
        let render = per_call(|| {
            message.render().expect("renders");
        });
        let full = per_call(|| {
            message.eml().expect("builds");
        });
        println!(
            "| {items} | {:.0} KiB | {} | {} |",
            html as f64 / 1024.0,
            us(render),
            us(full)
        );
    }
    println!();
}

fn with_items(base: &Value, n: usize) -> Value {
    let mut data = base.clone();
    let item = base["order"]["line_items"][0].clone();
    data["order"]["line_items"] = Value::Array(
        (0..n)
            .map(|i| {
                let mut item = item.clone();
                item["name"] = json!(format!("Item {i}"));
                item
            })
            .collect(),
    );
    data
}

fn threads(repo: &Path) {
    let (mailer, _) = Mailer::for_tests(repo.join("templates"));
    let mut corpus = Vec::new();
    for name in mailer.template_names() {
        let mut i = 0;
        while let Ok(data) = mailer.example(&name, i) {
            corpus.push((name.clone(), data));
            i += 1;
        }
    }
    let run = |threads: usize| {
        let budget = Duration::from_secs(3);
        let start = Instant::now();
        let total: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut n = 0;
                        while start.elapsed() < budget {
                            for (name, data) in &corpus {
                                mailer.template(name).data(data).render().expect("renders");
                                n += 1;
                            }
                        }
                        n
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).sum()
        });
        total as f64 / start.elapsed().as_secs_f64()
    };
    run(1);
    let one = run(1);
    let two = run(2);
    println!("| threads | renders/s | vs one thread |");
    println!("| ---: | ---: | ---: |");
    println!("| 1 | {one:.0} | 1.00× |");
    println!("| 2 | {two:.0} | {:.2}× |", two / one);
}

fn per_call(mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_millis(500) {
        f();
        n += 1;
    }
    start.elapsed() / n
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}
