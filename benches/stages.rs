//! Each stage of a message on its own: validate, render, inline (alone, and with the
//! text part made from the HTML), MIME and send, so a regression shows in the stage
//! that made it.
//!
//! `cargo bench --features bench-internals --bench stages`
//!
//! Validate, render, inline and MIME run over the largest example of each template that
//! has one. Send runs `send_template` through the memory transport (no network); through
//! the SMTP transport with 4 connections, plain and with implicit TLS, to an in-process
//! sink on 127.0.0.1 that answers like Postfix's smtp-sink (PIPELINING, replies flushed
//! once per batch); and through the Gmail API and Graph transports, 4 requests at once
//! over kept-alive TLS connections, to in-process fakes that answer as the APIs do.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use missive::stages::Stages;
use missive::Mailer;

#[path = "support/sink.rs"]
mod sink;
use sink::sink;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
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

    let dir = tempfile::tempdir().expect("temp dir");
    let mailer = |transport: String| {
        let config = dir.path().join("missive.yaml");
        std::fs::write(
            &config,
            format!(
                "templates: {TEMPLATES}\nschemas: {ROOT}/schemas\nfrom: Bench <bench@example.test>\n\
                 transport:\n{transport}"
            ),
        )
        .expect("config");
        runtime
            .block_on(Mailer::from_config(&config))
            .expect("mailer")
    };
    let port = runtime.block_on(sink(None));
    let smtp = mailer(format!(
        "  type: smtp\n  host: 127.0.0.1\n  port: {port}\n  tls: none\n  \
         pool:\n    max_connections: 4\n"
    ));
    group.bench_function("smtp, 4 connections", |b| {
        b.iter(|| runtime.block_on(burst(&smtp, &data)))
    });
    let port = runtime.block_on(sink(Some(acceptor())));
    let smtps = mailer(format!(
        "  type: smtp\n  host: 127.0.0.1\n  port: {port}\n  tls: implicit\n  \
         ca_file: {ROOT}/tests/support/keys/test-ca.pem\n  pool:\n    max_connections: 4\n"
    ));
    group.bench_function("smtp, implicit TLS, 4 connections", |b| {
        b.iter(|| runtime.block_on(burst(&smtps, &data)))
    });

    // The fake token endpoint's client secret, read when the first token is fetched.
    std::env::set_var("MISSIVE_BENCH_SECRET", "bench-secret");
    let token_port = runtime.block_on(token_endpoint());
    for (kind, path) in [
        ("gmail", "/gmail/v1/users/bench@example.test/messages/send"),
        ("graph", "/v1.0/users/bench@example.test/sendMail"),
    ] {
        let port = runtime.block_on(api(path));
        let api = mailer(format!(
            "  type: {kind}\n  user: bench@example.test\n  base_url: https://127.0.0.1:{port}\n  \
             ca_file: {ROOT}/tests/support/keys/test-ca.pem\n  max_concurrent: 4\n  \
             oauth: {{ provider: generic, grant: client_credentials, \
             token_url: http://127.0.0.1:{token_port}/token, client_id: bench, \
             client_secret_env: MISSIVE_BENCH_SECRET }}\n"
        ));
        group.bench_function(format!("{kind} API, 4 at once, TLS keep-alive"), |b| {
            b.iter(|| runtime.block_on(burst(&api, &data)))
        });
    }
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

/// The test server certificate, which the test CA signed.
fn acceptor() -> TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let keys = std::path::Path::new(ROOT).join("tests/support/keys");
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(keys.join("test-server.pem"))
            .expect("certificate")
            .map(|c| c.expect("certificate"))
            .collect();
    let key = PrivateKeyDer::from_pem_file(keys.join("test-server.key")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    TlsAcceptor::from(std::sync::Arc::new(config))
}

/// A token endpoint that issues an hour-long token to every request (plain http on
/// loopback, as the config allows).
async fn token_endpoint() -> u16 {
    serve_http(None, |_path| {
        (
            200,
            r#"{"access_token":"bench-token","token_type":"Bearer","expires_in":3600}"#,
        )
    })
    .await
}

/// An API fake: TLS, keep-alive, the API's success answer to a POST on `path`.
async fn api(path: &'static str) -> u16 {
    serve_http(Some(acceptor()), move |got| {
        if got != path {
            (404, "{}")
        } else if path.ends_with("sendMail") {
            (202, "")
        } else {
            (
                200,
                r#"{"id":"18c2f0a1b2c3d4e5","threadId":"18c2f0a1b2c3d4e5","labelIds":["SENT"]}"#,
            )
        }
    })
    .await
}

async fn serve_http(
    tls: Option<TlsAcceptor>,
    answer: impl Fn(&str) -> (u16, &'static str) + Send + Sync + Copy + 'static,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            let tls = tls.clone();
            tokio::spawn(async move {
                let _ = match tls {
                    None => http_session(socket, answer).await,
                    Some(tls) => match tls.accept(socket).await {
                        Ok(stream) => http_session(stream, answer).await,
                        Err(_) => Ok(()),
                    },
                };
            });
        }
    });
    port
}

async fn http_session(
    stream: impl AsyncRead + AsyncWrite + Unpin,
    answer: impl Fn(&str) -> (u16, &'static str),
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        let mut path = String::new();
        let mut length = 0;
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            if path.is_empty() {
                path = line.split(' ').nth(1).unwrap_or_default().to_string();
            } else if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        body.resize(length, 0);
        reader.read_exact(&mut body).await?;
        let (status, json) = answer(&path);
        let response = format!(
            "HTTP/1.1 {status} OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
            json.len()
        );
        reader.get_mut().write_all(response.as_bytes()).await?;
    }
}

criterion_group!(benches, stages, send);
criterion_main!(benches);
