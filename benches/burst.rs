//! Memory of a burst: N `send_template` calls started at once with the 50-item receipt,
//! through a transport that takes 1 ms per message over 4 connections. Each burst runs
//! in a process of its own and reports its peak RSS; `cargo bench --bench burst`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use missive::{async_trait, Delivery, Email, Mailer, Transport};

#[path = "support/process.rs"]
mod process;
use serde_json::Value;

const CHILD: &str = "--burst-child";

/// Stands for a network transport: 4 messages at a time, 1 ms each.
#[derive(Debug)]
struct Slow(tokio::sync::Semaphore);

#[async_trait]
impl Transport for Slow {
    async fn send(&self, email: &Email) -> missive::Result<Delivery> {
        let _permit = self.0.acquire().await.expect("open");
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(Delivery::new(email.recipients(), "250 ok"))
    }
    fn name(&self) -> &str {
        "slow"
    }
    fn parallelism(&self) -> usize {
        4
    }
}

fn main() {
    let mut args = std::env::args().skip_while(|a| a != CHILD);
    if let Some(n) = args.nth(1) {
        child(n.parse().expect("a count"));
        return;
    }
    println!("| burst (sends started at once) | peak RSS | messages/s |");
    println!("| ---: | ---: | ---: |");
    for n in [100, 1_000, 10_000] {
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([CHILD, &n.to_string()])
            .output()
            .expect("child");
        let line = String::from_utf8_lossy(&out.stdout);
        let mut fields = line.split_whitespace();
        let (peak, rate) = (fields.next().unwrap_or("?"), fields.next().unwrap_or("?"));
        println!("| {n} | {peak} MiB | {rate} |");
    }
}

fn child(n: usize) {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mailer = Mailer::builder()
            .templates(repo.join("templates"))
            .schemas(repo.join("schemas"))
            .transport(Slow(tokio::sync::Semaphore::new(4)))
            .build()
            .expect("mailer");
        let data = Arc::new(with_items(
            &mailer.example("orders/receipt", 0).expect("example"),
            50,
        ));
        let started = Instant::now();
        let sends: Vec<_> = (0..n)
            .map(|_| {
                let (mailer, data) = (mailer.clone(), data.clone());
                tokio::spawn(async move { mailer.send_template("orders/receipt", &*data).await })
            })
            .collect();
        for send in sends {
            send.await.expect("task").expect("sent");
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        println!("{:.0} {rate:.0}", peak_mib());
    });
}

fn with_items(base: &Value, n: usize) -> Value {
    let mut data = base.clone();
    let item = base["order"]["line_items"][0].clone();
    data["order"]["line_items"] = Value::Array(vec![item; n]);
    data
}

fn peak_mib() -> f64 {
    process::status_kib("VmHWM") as f64 / 1024.0
}
