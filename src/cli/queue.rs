//! `missive queue`: look into the durable queue and operate it. Tables for people,
//! `--json` for scripts; the same operations as [`missive::Queue`].

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use missive::{Config, Error, ErrorKind, Filter, Mailer, Queue, Result, State};

use super::DataArgs;

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Messages in the queue, newest first.
    List {
        /// Only messages in this state (queued, sending, deferred, sent, failed, held,
        /// cancelled).
        #[arg(long, value_name = "STATE")]
        state: Option<State>,
        /// Only messages of this template.
        #[arg(long, value_name = "NAME")]
        template: Option<String>,
        /// At most N messages.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Envelope, headers, recipients and every attempt of one message.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Makes a failed, deferred or held message due now (failed recipients again).
    Retry {
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        id: Option<i64>,
        /// Every failed message.
        #[arg(long)]
        failed: bool,
    },
    /// Puts a queued or deferred message aside.
    Hold { id: i64 },
    /// Queues a held message again.
    Release { id: i64 },
    /// Withdraws a message that is not sent.
    Cancel { id: i64 },
    /// Count and oldest message per state.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Deletes sent and cancelled messages finished more than DURATION ago (7d, 12h).
    Purge {
        #[arg(long, value_name = "DURATION", value_parser = parse_age)]
        sent_before: Duration,
    },
}

fn parse_age(text: &str) -> std::result::Result<Duration, String> {
    missive::parse_duration(text).map_err(|e| e.message().to_string())
}

/// `missive send NAME --queue`: renders now, stores durably, prints `queued ID <Message-ID>`.
pub async fn enqueue(
    config: Config,
    name: &str,
    input: &DataArgs,
    to: &[String],
    key: Option<String>,
) -> Result<ExitCode> {
    open(&config)?;
    let mailer = Mailer::builder().config(config).build()?;
    let mut message = super::message(&mailer, name, input)?;
    for address in to {
        message = message.to(address);
    }
    if let Some(key) = key {
        message = message.idempotency_key(key);
    }
    let queued = message.enqueue().await?;
    let note = if queued.duplicate {
        " (already queued with this idempotency key; nothing new queued)"
    } else {
        ""
    };
    println!("queued {} {}{note}", queued.id, queued.message_id);
    Ok(ExitCode::SUCCESS)
}

/// `missive worker`: delivers until Ctrl-C or SIGTERM, then finishes what is in
/// flight and exits 0. It loads no template (a worker never renders), so a broken
/// template set on the worker's machine does not stop delivery.
pub async fn worker(config: Config) -> Result<ExitCode> {
    let queue = open(&config)?;
    let q = queue.config();
    eprintln!(
        "missive worker: {} worker{} delivering from {} (Ctrl-C or SIGTERM stops)",
        q.workers,
        if q.workers == 1 { "" } else { "s" },
        Queue::describe_url(&q.url)
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot watch for SIGTERM: {e}")))?;
    queue
        .run(&config.transport, async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    eprintln!("missive worker: stopped; every attempt in flight was recorded");
    Ok(ExitCode::SUCCESS)
}

/// The queue the config names, or an error saying how to name one.
pub fn open(config: &Config) -> Result<Queue> {
    let queue = config.queue.as_ref().ok_or_else(|| {
        Error::new(
            ErrorKind::Config,
            "no queue is configured: add `queue: { url: \"sqlite://var/missive-queue.db\" }` \
             to missive.yaml, or set MISSIVE_QUEUE_URL",
        )
    })?;
    Queue::open(queue)
}

pub async fn run(config: &Config, command: QueueCommand) -> Result<ExitCode> {
    let queue = open(config)?;
    match command {
        QueueCommand::List {
            state,
            template,
            limit,
            json,
        } => {
            let mut filter = Filter::new().limit(limit);
            if let Some(state) = state {
                filter = filter.state(state);
            }
            if let Some(template) = template {
                filter = filter.template(template);
            }
            let messages = queue.list(&filter).await?;
            if json {
                return print_json(&messages);
            }
            let rows: Vec<Vec<String>> = messages
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        m.state.to_string(),
                        m.attempts.to_string(),
                        m.template.clone(),
                        m.created_at.to_string(),
                        m.message_id.clone(),
                        m.last_error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "STATE",
                    "ATTEMPTS",
                    "TEMPLATE",
                    "QUEUED",
                    "MESSAGE-ID",
                    "LAST ERROR",
                ],
                &rows,
            );
        }
        QueueCommand::Show { id, json } => {
            let d = queue.show(id).await?;
            if json {
                return print_json(&d);
            }
            let s = &d.summary;
            println!("id:           {}", s.id);
            println!("message-id:   {}", s.message_id);
            println!("template:     {}", s.template);
            if !d.tags.is_empty() {
                println!("tags:         {}", d.tags.join(", "));
            }
            println!("state:        {}", s.state);
            println!("attempts:     {}", s.attempts);
            println!("queued:       {}", s.created_at);
            if matches!(s.state, State::Queued | State::Deferred) {
                println!("next attempt: {}", s.next_attempt_at);
            }
            println!("expires:      {}", d.expires_at);
            println!("size:         {} bytes", d.size);
            println!(
                "envelope from: <{}>",
                d.envelope_from.as_deref().unwrap_or_default()
            );
            println!("recipients:");
            for r in &d.recipients {
                let code = r.code.map(|c| format!(" {c}")).unwrap_or_default();
                let reply = if r.reply.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.reply)
                };
                println!("  {} {}{code}{reply}", r.address, r.state);
            }
            println!("headers:");
            for (name, value) in &d.headers {
                println!("  {name}: {value}");
            }
            println!("attempts:");
            if d.history.is_empty() {
                println!("  (none yet)");
            }
            for a in &d.history {
                let code = a.code.map(|c| format!(" {c}")).unwrap_or_default();
                println!(
                    "  #{} {} {}{code} {} [{}]",
                    a.attempt, a.at, a.outcome, a.reply, a.worker
                );
            }
        }
        QueueCommand::Retry { id, failed } => {
            if failed {
                let n = queue.retry_failed().await?;
                println!("retrying {n} failed message{}", plural(n));
            } else if let Some(id) = id {
                queue.retry(id).await?;
                println!("retrying {id}");
            }
        }
        QueueCommand::Hold { id } => {
            queue.hold(id).await?;
            println!("held {id}");
        }
        QueueCommand::Release { id } => {
            queue.release(id).await?;
            println!("released {id}");
        }
        QueueCommand::Cancel { id } => {
            queue.cancel(id).await?;
            println!("cancelled {id}");
        }
        QueueCommand::Stats { json } => {
            let stats = queue.stats().await?;
            if json {
                return print_json(&stats);
            }
            let rows: Vec<Vec<String>> = stats
                .states
                .iter()
                .map(|s| {
                    vec![
                        s.state.to_string(),
                        s.count.to_string(),
                        s.oldest
                            .map(|t| format!("{} ago ({t})", age(t.age())))
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print_table(&["STATE", "COUNT", "OLDEST"], &rows);
        }
        QueueCommand::Purge { sent_before } => {
            let n = queue.purge_sent_before(sent_before).await?;
            println!("purged {n} message{}", plural(n));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `45s`, `12m`, `3h20m`, `2d4h`.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<ExitCode> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot write JSON: {e}")))?;
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c.to_string()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
