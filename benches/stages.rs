//! Each stage of a message on its own: validate, render, inline (alone, and with the
//! text part made from the HTML), MIME and send, so a regression shows in the stage
//! that made it.
//!
//! `cargo bench --features bench-internals --bench stages`
//!
//! Validate, render, inline and MIME run over the largest example of each template that
//! has one. Send runs `send_template` through the memory transport (no network) and
//! through the SMTP transport with 4 connections to an in-process sink on 127.0.0.1
//! that answers like Postfix's smtp-sink (PIPELINING, replies flushed once per batch).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use missive::stages::Stages;
use missive::Mailer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const TEMPLATES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/templates");

/// The template's example with the longest JSON: the 50-item receipt, the long digest.
fn largest_example(mailer: &Mailer, name: &str) -> serde_json::Value {
    (0..)
        .map_while(|i| mailer.example(name, i).ok())
        .max_by_key(|data| data.to_string().len())
        .expect("the template has examples")
}

fn stages(c: &mut Criterion) {
    let (mailer, _) = Mailer::for_tests(TEMPLATES);
    for name in ["welcome", "orders/receipt", "digest"] {
        let stages = Stages::new(&mailer, name).expect("template");
        let data = largest_example(&mailer, name);
        let raw = stages.render(&data).expect("renders");
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        group.bench_function("validate", |b| {
            b.iter(|| stages.validate(black_box(&data)).expect("valid"))
        });
        group.bench_function("render", |b| {
            b.iter(|| stages.render(black_box(&data)).expect("renders"))
        });
        group.bench_function("inline", |b| {
            b.iter(|| stages.inline(black_box(&raw)).expect("inlines"))
        });
        group.bench_function("inline+text", |b| {
            b.iter(|| stages.inline_and_text(black_box(&raw)).expect("inlines"))
        });
        group.bench_function("mime", |b| {
            b.iter_batched(
                || stages.rendered(&data).expect("renders"),
                |rendered| stages.mime(rendered).expect("builds"),
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

/// Sends per iteration, concurrently, as an application under load would.
const BURST: usize = 64;

fn send(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("send");
    group.throughput(Throughput::Elements(BURST as u64));

    let (memory, _inbox) = Mailer::for_tests(TEMPLATES);
    let data = memory.example("welcome", 0).expect("example");
    group.bench_function("memory", |b| {
        b.iter(|| runtime.block_on(burst(&memory, &data)))
    });

    let port = runtime.block_on(sink());
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("missive.yaml");
    std::fs::write(
        &config,
        format!(
            "templates: {TEMPLATES}\nschemas: {}/schemas\nfrom: Bench <bench@example.test>\n\
             transport:\n  type: smtp\n  host: 127.0.0.1\n  port: {port}\n  tls: none\n  \
             pool:\n    max_connections: 4\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .expect("config");
    let smtp = runtime
        .block_on(Mailer::from_config(&config))
        .expect("mailer");
    group.bench_function("smtp, 4 connections", |b| {
        b.iter(|| runtime.block_on(burst(&smtp, &data)))
    });
    group.finish();
}

async fn burst(mailer: &Mailer, data: &serde_json::Value) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        let (mailer, data) = (mailer.clone(), data.clone());
        tasks.spawn(async move { mailer.send_template("welcome", &data).await });
    }
    while let Some(sent) = tasks.join_next().await {
        sent.expect("task").expect("sent");
    }
}

/// A minimal SMTP sink: accepts every message, offers PIPELINING, and writes the
/// replies to a batch of commands at once. Returns its port. Not the tests' `FakeSmtp`:
/// that one keeps every message it receives for assertions, and a bench sends hundreds
/// of thousands.
async fn sink() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = session(socket).await;
            });
        }
    });
    port
}

async fn session(socket: tokio::net::TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(socket);
    let mut replies = b"220 sink ESMTP\r\n".to_vec();
    let mut line = String::new();
    let mut in_data = false;
    loop {
        if reader.buffer().is_empty() && !replies.is_empty() {
            reader.get_mut().write_all(&replies).await?;
            replies.clear();
        }
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_ascii_uppercase();
        if in_data {
            if command == "." {
                in_data = false;
                replies.extend_from_slice(b"250 2.0.0 queued\r\n");
            }
            continue;
        }
        match command.split(' ').next().unwrap_or("") {
            "EHLO" => replies.extend_from_slice(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
            "DATA" => {
                in_data = true;
                replies.extend_from_slice(b"354 go ahead\r\n");
            }
            "QUIT" => {
                reader.get_mut().write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => replies.extend_from_slice(b"250 2.0.0 ok\r\n"),
        }
    }
}

criterion_group!(benches, stages, send);
criterion_main!(benches);
