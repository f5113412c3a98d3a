//! missive's side of the comparison harness (`benches/compare/run`), through the public
//! API only. Not a Criterion bench: `run` builds it with `cargo bench --no-run` and
//! calls the binary, pinned to one core, in one of two modes.
//!
//! `render --corpus FILE --templates DIR --out DIR [--budget S] [--min-messages N] [--warmup S]`
//!   Per corpus entry: `mailer.template(name)[.locale(l)].json(data).render()`, i.e.
//!   schema validation, front-matter fields, HTML body, CSS inlining and the text part.
//!   One round whose outputs go to OUT/outputs.json, more untimed rounds for the
//!   warm-up time, then whole rounds until both the time budget and the message count
//!   are reached; prints one JSON line.
//!
//! `send --templates DIR --work DIR --port P [--messages N] [--connections C]`
//!   Renders the fixed message (first example of `welcome`) once, untimed, and writes
//!   it to WORK/message.json for the Nodemailer side. Then makes a template set under
//!   WORK whose only template is that message as static text (`{% raw %}`), and a
//!   missive.yaml with the SMTP transport toward 127.0.0.1:P, loads it with
//!   `Mailer::from_config`, and sends N messages at once with `send_template`; the
//!   transport's pool (C connections) queues them. Prints one JSON line, with
//!   `"available": false` when this build has no SMTP transport yet.
//!
//! Without a mode (as `cargo bench` runs every bench) it prints a hint and exits 0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use missive::{Mailer, Rendered};
use serde_json::{json, Value};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let result = match argv.first().map(String::as_str) {
        Some("render") => Args::parse(&argv[1..]).and_then(|a| render(&a)),
        Some("send") => Args::parse(&argv[1..]).and_then(|a| send(&a)),
        _ => {
            println!("compare: run benches/compare/run instead (modes: render, send)");
            return ExitCode::SUCCESS;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare runner: {e}");
            ExitCode::FAILURE
        }
    }
}

type Fallible<T> = Result<T, String>;

/// `--key value` pairs.
struct Args(BTreeMap<String, String>);

impl Args {
    fn parse(argv: &[String]) -> Fallible<Args> {
        let mut map = BTreeMap::new();
        let mut it = argv.iter();
        while let Some(key) = it.next() {
            let name = key
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {key}"))?;
            let value = it.next().ok_or_else(|| format!("{key} needs a value"))?;
            map.insert(name.to_string(), value.clone());
        }
        Ok(Args(map))
    }

    fn path(&self, key: &str) -> Fallible<PathBuf> {
        self.0
            .get(key)
            .map(PathBuf::from)
            .ok_or_else(|| format!("--{key} is required"))
    }

    fn number(&self, key: &str, default: f64) -> Fallible<f64> {
        self.0.get(key).map_or(Ok(default), |v| {
            v.parse().map_err(|e| format!("--{key} {v}: {e}"))
        })
    }
}

struct Entry {
    id: String,
    template: String,
    locale: Option<String>,
    /// Shared with every render, as the Python and Node peers pass their own dict or
    /// object: the corpus is JSON already, so `json` takes it without a copy.
    data: Arc<Value>,
}

fn load_corpus(path: &Path) -> Fallible<Vec<Entry>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let items: Vec<Value> =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    items
        .into_iter()
        .map(|item| {
            let field = |k: &str| {
                item[k]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("corpus entry without `{k}`"))
            };
            Ok(Entry {
                id: field("id")?,
                template: field("template")?,
                locale: item["locale"].as_str().map(str::to_string),
                data: Arc::new(item["data"].clone()),
            })
        })
        .collect()
}

fn render_one(mailer: &Mailer, entry: &Entry) -> Fallible<Rendered> {
    let mut message = mailer.template(&entry.template);
    if let Some(locale) = &entry.locale {
        message = message.locale(locale.as_str());
    }
    message
        .json(entry.data.clone())
        .render()
        .map_err(|e| format!("{}: {e}", entry.id))
}

/// CPU time (user + system) this process has used so far, from /proc/self/stat.
/// `None` where that file does not exist. Clock ticks are taken as 100 per second,
/// the value of USER_HZ on every Linux architecture the harness runs on.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn cpu_since(start: Option<f64>) -> Value {
    match (start, cpu_seconds()) {
        (Some(a), Some(b)) => json!(b - a),
        _ => Value::Null,
    }
}

fn render(args: &Args) -> Fallible<()> {
    let corpus = load_corpus(&args.path("corpus")?)?;
    let out = args.path("out")?;
    let budget = Duration::from_secs_f64(args.number("budget", 3.0)?);
    let min_messages = args.number("min-messages", 200.0)? as usize;
    let (mailer, _inbox) = Mailer::for_tests(args.path("templates")?);

    let mut outputs = serde_json::Map::new();
    for entry in &corpus {
        let rendered = render_one(&mailer, entry)?;
        outputs.insert(
            entry.id.clone(),
            json!({"subject": rendered.subject(), "html": rendered.html(), "text": rendered.text()}),
        );
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let file = out.join("outputs.json");
    std::fs::write(&file, Value::Object(outputs).to_string())
        .map_err(|e| format!("{}: {e}", file.display()))?;

    let (warmup, warmup_start) = (args.number("warmup", 1.0)?, Instant::now());
    while warmup_start.elapsed() < Duration::from_secs_f64(warmup) {
        for entry in &corpus {
            std::hint::black_box(render_one(&mailer, entry)?);
        }
    }

    let (mut messages, mut rounds) = (0usize, 0usize);
    let mut per_entry = vec![Duration::ZERO; corpus.len()];
    let cpu_start = cpu_seconds();
    let start = Instant::now();
    let seconds = loop {
        for (entry, total) in corpus.iter().zip(per_entry.iter_mut()) {
            let one = Instant::now();
            std::hint::black_box(render_one(&mailer, entry)?);
            *total += one.elapsed();
        }
        messages += corpus.len();
        rounds += 1;
        let elapsed = start.elapsed();
        if elapsed >= budget && messages >= min_messages {
            break elapsed.as_secs_f64();
        }
    };
    let per_entry: serde_json::Map<String, Value> = corpus
        .iter()
        .zip(&per_entry)
        .map(|(e, t)| (e.id.clone(), json!(t.as_secs_f64())))
        .collect();
    println!(
        "{}",
        json!({
            "peer": "missive",
            "versions": {"missive": env!("CARGO_PKG_VERSION")},
            "messages": messages,
            "rounds": rounds,
            "seconds": seconds,
            "cpu_seconds": cpu_since(cpu_start),
            "per_entry": per_entry,
        })
    );
    Ok(())
}

/// Sender and recipient of the send benchmark, the same on both sides.
const FROM: &str = "Acme Cloud <noreply@acme.example.com>";
const TO: &str = "Ada Lovelace <ada@example.test>";

fn write(path: &Path, contents: &str) -> Fallible<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))
}

fn send(args: &Args) -> Fallible<()> {
    let work = args.path("work")?;
    let port = args.number("port", 0.0)? as u16;
    let messages = args.number("messages", 2000.0)? as usize;
    let connections = args.number("connections", 4.0)? as usize;

    // The fixed message: welcome, first example, as missive renders it.
    let (renderer, _inbox) = Mailer::for_tests(args.path("templates")?);
    let data = renderer
        .example("welcome", 0)
        .map_err(|e| format!("welcome example: {e}"))?;
    let rendered = renderer
        .render("welcome", &data)
        .map_err(|e| format!("welcome: {e}"))?;
    let text = rendered.text().unwrap_or_default();
    write(
        &work.join("message.json"),
        &json!({"from": FROM, "to": TO, "subject": rendered.subject(),
                "html": rendered.html(), "text": text})
        .to_string(),
    )?;

    // A set whose only template is that message, verbatim: no data, no schema.
    let raw = |s: &str| format!("{{% raw %}}{s}{{% endraw %}}");
    for (what, body) in [("HTML", rendered.html()), ("text", text)] {
        if body.contains("{% endraw %}") {
            return Err(format!(
                "the fixed message's {what} contains {{% endraw %}}"
            ));
        }
    }
    let front = format!(
        "---\nsubject: {}\nto: {}\n---\n",
        Value::from(raw(rendered.subject())),
        Value::from(TO)
    );
    write(
        &work.join("templates/bench.html"),
        &(front + &raw(rendered.html())),
    )?;
    write(&work.join("templates/bench.txt"), &raw(text))?;
    std::fs::create_dir_all(work.join("schemas")).map_err(|e| e.to_string())?;
    let config = work.join("missive.yaml");
    write(
        &config,
        &format!(
            "templates: templates\nschemas: schemas\nfrom: {}\ntransport:\n  type: smtp\n  \
             host: 127.0.0.1\n  port: {port}\n  tls: none\n  pool:\n    max_connections: {connections}\n",
            Value::from(FROM)
        ),
    )?;

    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let mailer = match Mailer::from_config(&config).await {
            Ok(mailer) => mailer,
            Err(e) if e.to_string().contains("unknown variant `smtp`") => {
                println!(
                    "{}",
                    json!({"peer": "missive", "available": false,
                           "reason": "missive SMTP transport not available yet", "error": e.to_string()})
                );
                return Ok(());
            }
            Err(e) => return Err(format!("{}: {e}", config.display())),
        };
        // Warm-up: open the pool's connections.
        send_all(&mailer, connections * 4).await?;
        let cpu_start = cpu_seconds();
        let start = Instant::now();
        send_all(&mailer, messages).await?;
        let seconds = start.elapsed().as_secs_f64();
        let cpu = cpu_since(cpu_start);
        println!(
            "{}",
            json!({"peer": "missive", "available": true,
                   "versions": {"missive": env!("CARGO_PKG_VERSION")},
                   "messages": messages, "connections": connections, "seconds": seconds,
                   "cpu_seconds": cpu})
        );
        Ok(())
    })
}

/// Sends `count` copies at once and waits for all; any failure fails the run.
async fn send_all(mailer: &Mailer, count: usize) -> Fallible<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let mailer = mailer.clone();
        tasks.spawn(async move { mailer.send_template("bench", &json!({})).await });
    }
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(_receipt)) => {}
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    match failures.first() {
        None => Ok(()),
        Some(first) => Err(format!(
            "{} of {count} sends failed, first: {first}",
            failures.len()
        )),
    }
}
