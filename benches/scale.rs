//! How missive scales: with template count (load, check, memory), with message size,
//! and with threads. Prints markdown tables; `cargo bench --bench scale`.
//!
//! Run it on an otherwise idle machine: it measures wall-clock time.

use std::path::Path;
use std::time::{Duration, Instant};

#[path = "support/process.rs"]
mod process;
use process::rss_kib;

use missive::{Config, Mailer};
use serde_json::{json, Value};

fn main() {
    let mut args = std::env::args().skip_while(|a| a != RSS_AFTER_LOAD);
    if let Some(templates) = args.nth(1) {
        let before = rss_kib();
        let (mailer, _) = Mailer::for_tests(templates);
        let loaded = rss_kib();
        for name in mailer.template_names() {
            if let Ok(data) = mailer.example(&name, 0) {
                mailer
                    .template(&name)
                    .data(&data)
                    .render()
                    .expect("renders");
            }
        }
        let rendered = rss_kib();
        // Each in turn, again: with more templates than validators kept, every render
        // compiles its schema again. The fastest of three passes.
        let corpus: Vec<(String, Value)> = mailer
            .template_names()
            .into_iter()
            .filter_map(|name| Some((name.clone(), mailer.example(&name, 0).ok()?)))
            .collect();
        let again = (0..3)
            .map(|_| {
                let start = Instant::now();
                for (name, data) in &corpus {
                    mailer.template(name).data(data).render().expect("renders");
                }
                start.elapsed() / corpus.len().max(1) as u32
            })
            .min()
            .unwrap_or_default();
        println!(
            "{} {} {}",
            loaded.saturating_sub(before),
            rendered.saturating_sub(before),
            again.as_nanos()
        );
        drop(mailer);
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    println!("machine: {} cores, {}\n", cores(), cpu_model());
    if std::env::args().any(|a| a == "memory") {
        memory(repo);
        return;
    }
    template_count(repo);
    memory(repo);
    message_size(repo);
    threads(repo);
}

/// A set of `n` sendable templates: copies of the example set under new names, with
/// the repository's schemas as they are (`Schemas::AsWritten`) or each grown to a
/// schema of its own of at least 14 KB (`Schemas::Grown`).
fn generate(repo: &Path, n: usize, schemas: Schemas) -> tempfile::TempDir {
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
        let from = repo.join("schemas").join(format!("{original}.schema.json"));
        let to = dir
            .path()
            .join("schemas")
            .join(format!("{name}.schema.json"));
        match schemas {
            Schemas::AsWritten => copy(&from, &to),
            Schemas::Grown => {
                let text = std::fs::read_to_string(&from).expect("read");
                let schema: Value = serde_json::from_str(&text).expect("schema");
                std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
                std::fs::write(to, grow(schema, i)).expect("write");
            }
        }
    }
    dir
}

#[derive(Clone, Copy, PartialEq)]
enum Schemas {
    AsWritten,
    Grown,
}

/// The size `grow` brings a schema to, in bytes of pretty-printed JSON: the example
/// schemas then average ~17 KB.
const GROWN_SIZE: usize = 14_000;

/// `schema` with optional properties added until it reaches `GROWN_SIZE`, as a real
/// set's schemas grow: nested objects through `$defs`, enums, patterns (some common to
/// every schema, some of this template alone), formats, bounds, descriptions and
/// per-property examples. Every schema differs (template `seed`), so nothing can be
/// shared because two files happen to be identical; the examples stay valid.
fn grow(mut schema: Value, seed: usize) -> String {
    let mut block = 0;
    while serde_json::to_string_pretty(&schema).expect("json").len() < GROWN_SIZE {
        let name = format!("extra_{block}");
        let def = json!({
            "type": "object",
            "description": format!("Optional details group {block} of template {seed}, filled in by the app when it has them."),
            "required": ["id", "status"],
            "properties": {
                "id": {
                    "type": "string",
                    "description": "Reference of the record in the billing system.",
                    "pattern": format!("^T{seed}-[A-Z]{{2}}[0-9]{{{}}}$", 4 + block),
                    "examples": [format!("T{seed}-AB{}", "1".repeat(4 + block))]
                },
                "status": {
                    "enum": ["pending", "active", "suspended", format!("archived_{block}")],
                    "description": "Where the record stands."
                },
                "contact": {
                    "type": "object",
                    "required": ["email"],
                    "properties": {
                        "email": {"type": "string", "format": "email", "maxLength": 254},
                        "phone": {
                            "type": "string",
                            "pattern": "^\\+[0-9][0-9 ]{6,18}$",
                            "description": "E.164 with optional spaces.",
                            "examples": ["+33 1 23 45 67 89"]
                        },
                        "website": {"type": "string", "format": "uri"}
                    },
                    "additionalProperties": false
                },
                "created_at": {"type": "string", "format": "date-time"},
                "amount": {"type": "number", "minimum": 0, "multipleOf": 0.01},
                "quantity": {"type": "integer", "minimum": 1, "maximum": 1000 + block},
                "tags": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1, "maxLength": 40},
                    "uniqueItems": true,
                    "maxItems": 20
                },
                "address": {"$ref": "#/$defs/extra_address"}
            },
            "additionalProperties": false
        });
        let object = schema.as_object_mut().expect("object schema");
        let defs = object
            .entry("$defs")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("$defs");
        defs.entry("extra_address").or_insert_with(|| {
            json!({
                "type": "object",
                "description": "A postal address.",
                "required": ["line1", "city", "country"],
                "properties": {
                    "line1": {"type": "string", "minLength": 1},
                    "line2": {"type": "string"},
                    "city": {"type": "string", "minLength": 1},
                    "postal_code": {"type": "string", "pattern": "^[A-Z0-9 -]{3,10}$"},
                    "country": {"type": "string", "pattern": "^[A-Z]{2}$", "description": "ISO 3166-1 alpha-2."}
                },
                "additionalProperties": false
            })
        });
        defs.insert(name.clone(), def);
        object
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("properties")
            .insert(name.clone(), json!({"$ref": format!("#/$defs/{name}")}));
        block += 1;
    }
    serde_json::to_string_pretty(&schema).expect("json")
}

/// The mean size of the files under `dir/schemas`, in bytes.
fn mean_schema_size(dir: &Path) -> usize {
    let mut sizes = Vec::new();
    let mut pending = vec![dir.join("schemas")];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(folder).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                sizes.push(std::fs::metadata(path).expect("size").len() as usize);
            }
        }
    }
    sizes.iter().sum::<usize>() / sizes.len().max(1)
}

fn template_count(repo: &Path) {
    println!("| templates | load | check (every example rendered) | RSS after load | save → reloaded (median / max) |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for n in [10, 100, 1000] {
        let dir = generate(repo, n, Schemas::AsWritten);
        let (rss, _, _) = rss_after_load(&dir.path().join("templates"));
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

/// Memory per template, on the example set and on one whose schemas are grown to a
/// realistic ~17 KB each (`cargo bench --bench scale -- memory` prints this table
/// alone). "Per template" is the growth from the 10-template set, divided by the
/// templates added: what one more template costs, without the fixed part.
fn memory(repo: &Path) {
    println!("| schemas | templates | RSS after load | per template | after rendering each once | per template | render, each in turn |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for schemas in [Schemas::AsWritten, Schemas::Grown] {
        let mut first: Option<(usize, u64, u64)> = None;
        for n in [10, 100, 500, 1000] {
            let dir = generate(repo, n, schemas);
            let (loaded, rendered, render) = rss_after_load(&dir.path().join("templates"));
            let label = match schemas {
                Schemas::AsWritten => "as written".to_string(),
                Schemas::Grown => "grown".to_string(),
            };
            let label = format!(
                "{label}, mean {:.1} KB",
                mean_schema_size(dir.path()) as f64 / 1000.0
            );
            let per = |now: u64, then: u64, since: usize| {
                if n == since {
                    "—".to_string()
                } else {
                    format!("{:.1} KiB", (now as f64 - then as f64) / (n - since) as f64)
                }
            };
            let (since, l0, r0) = *first.get_or_insert((n, loaded, rendered));
            println!(
                "| {label} | {n} | {:.1} MiB | {} | {:.1} MiB | {} | {} |",
                loaded as f64 / 1024.0,
                per(loaded, l0, since),
                rendered as f64 / 1024.0,
                per(rendered, r0, since),
                us(render),
            );
        }
    }
    println!();
}

/// Passed to this binary: load the set in the folder that follows, render each
/// template once with its first example, and print the RSS that grew by the load and
/// by then, in KiB, then the time a render took rendering them all in turn again.
const RSS_AFTER_LOAD: &str = "--rss-after-load";

/// The RSS a load of `templates` adds, what it has added after rendering each template
/// once, and the time per render rendering them all in turn, measured in a process of
/// its own: in this one, the load would reuse pages that earlier sets and renders freed
/// and look smaller.
fn rss_after_load(templates: &Path) -> (u64, u64, Duration) {
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
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text.split_whitespace().map(|v| v.parse().expect("number"));
    let (loaded, rendered) = (
        numbers.next().expect("load"),
        numbers.next().expect("render"),
    );
    let render = Duration::from_nanos(numbers.next().expect("render time"));
    (loaded, rendered, render)
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
