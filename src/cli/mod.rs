//! Command-line parsing and the verbs. Everything here goes through the public library API.

mod auth;
mod init;
mod queue;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use missive::{Config, Error, ErrorKind, Mailer, Result};

/// Template-driven transactional mail: render, check, preview and send.
#[derive(Debug, Parser)]
#[command(name = "missive", version, about)]
pub struct Cli {
    /// Config file (default: $MISSIVE_CONFIG, else ./missive.yaml if present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Template folder, overriding the config.
    #[arg(long, global = true, value_name = "DIR")]
    templates: Option<PathBuf>,
    /// Schema folder, overriding the config.
    #[arg(long, global = true, value_name = "DIR")]
    schemas: Option<PathBuf>,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compile every template, validate every schema example, render each template with
    /// each example; print problems as path:line:col: message.
    Check,
    /// Render one template to stdout.
    Render {
        /// Template name, e.g. `welcome` or `account/password-reset`.
        name: String,
        #[command(flatten)]
        input: DataArgs,
        /// What to print.
        #[arg(long, value_enum, default_value_t = Format::Html)]
        format: Format,
        /// Write to FILE (replaced whole on each render) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Keep running and render again every time a template or schema is saved.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        poll: PollArgs,
    },
    /// Serve a live preview of every template on http://127.0.0.1 that reloads on save.
    Preview {
        /// Port to listen on (127.0.0.1 only); 0 picks a free one.
        #[arg(long, value_name = "P", default_value_t = 4180)]
        port: u16,
        /// Open the page in the default browser.
        #[arg(long)]
        open: bool,
        #[command(flatten)]
        poll: PollArgs,
    },
    /// Render one template and send it through the configured transport.
    Send {
        /// Template name.
        name: String,
        #[command(flatten)]
        input: DataArgs,
        /// Send to this address instead of the template's `to` (repeatable).
        #[arg(long, value_name = "ADDR")]
        to: Vec<String>,
        /// Store it in the durable queue instead of delivering now; prints the queue id
        /// and <Message-ID>.
        #[arg(long)]
        queue: bool,
        /// With --queue: queue it only once per KEY (a repeat prints the first id).
        #[arg(long, value_name = "KEY", requires = "queue")]
        idempotency_key: Option<String>,
    },
    /// Deliver queued mail until Ctrl-C or SIGTERM (`queue:` in missive.yaml).
    Worker,
    /// Look into the durable queue and operate it (`queue:` in missive.yaml).
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Sign in to an OAuth2 provider for SMTP sending, or show the stored credential.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Write a starter template set and config into DIR (default: the current folder).
    Init {
        /// Where to write.
        dir: Option<PathBuf>,
        /// Overwrite files that already exist.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, clap::Args)]
struct DataArgs {
    /// JSON (or .yaml) data file; `-` reads stdin. Default: the schema's example.
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Which of the schema's `examples` to use (from 0) when no --data is given.
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "data")]
    example: usize,
    /// Locale variant to use: fr-CA falls back to fr, then the base template.
    #[arg(long, value_name = "LOCALE")]
    locale: Option<String>,
}

#[derive(Debug, clap::Args)]
struct PollArgs {
    /// Scan for changes every MS milliseconds (default 250) instead of relying on
    /// file-system notifications, e.g. on network mounts or in containers. Implies
    /// --watch for render.
    #[arg(long, value_name = "MS", num_args = 0..=1, default_missing_value = "250")]
    poll: Option<u64>,
}

impl PollArgs {
    fn watching(&self, builder: missive::MailerBuilder) -> missive::MailerBuilder {
        match self.poll {
            Some(ms) => builder.poll(std::time::Duration::from_millis(ms.max(1))),
            None => builder.watch(true),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Html,
    Text,
    Eml,
    Json,
}

/// Logs go to stderr; `RUST_LOG` wins over `-v`.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        // A failed send or sign-in is printed once, as the `missive:` line: the
        // library's own report of it and of each attempt are details for `-v`.
        0 => "warn,missive::mailer=error,missive::transport=error",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let colour = use_colour(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        std::env::var_os("NO_COLOR"),
    );
    let _ = tracing::subscriber::set_global_default(subscriber(filter, std::io::stderr, colour));
}

/// Colour codes only for a terminal, and not when `NO_COLOR` is set to anything
/// but the empty string (no-color.org).
fn use_colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Libraries whose DEBUG and TRACE output carries secrets or message content:
/// lettre writes every SMTP line, the base64 `AUTH XOAUTH2` one (a bearer token)
/// included; the HTTP stack can show token requests; html5ever, markup5ever and
/// selectors log every token and character of the HTML (the data in it, a reset
/// link included) while CSS is inlined. Below INFO they never reach missive's
/// output, whatever `RUST_LOG` asks for (the `log` ones are also compiled out by
/// the `cap-dependency-logs` feature).
const PRIVATE_DETAIL_TARGETS: &[&str] = &[
    "lettre",
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "html5ever",
    "markup5ever",
    "selectors",
    "cssparser",
    "css_inline",
];

fn is_private_detail(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() > tracing::Level::INFO
        && PRIVATE_DETAIL_TARGETS.iter().any(|t| {
            meta.target()
                .strip_prefix(t)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

fn subscriber<W>(
    filter: tracing_subscriber::EnvFilter,
    writer: W,
    colour: bool,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;
    let safe = tracing_subscriber::filter::filter_fn(|meta| !is_private_detail(meta));
    tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(colour)
            .with_filter(filter.and(safe)),
    )
}

/// Prints an error and every related problem, one per line.
pub fn print_error(error: &Error) {
    for problem in error.problems() {
        for line in problem_lines(problem) {
            eprintln!("{line}");
        }
    }
}

/// `path:line:col: message` lines; one per schema violation so each can be jumped to.
fn problem_lines(problem: &Error) -> Vec<String> {
    let prefix = problem
        .location()
        .map(|l| format!("{l}: "))
        .unwrap_or_else(|| "missive: ".to_string());
    if problem.violations().is_empty() {
        return vec![format!("{prefix}{}", problem.message())];
    }
    problem
        .violations()
        .iter()
        .map(|v| format!("{prefix}{}: {v}", problem.message()))
        .collect()
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let config = load_config(&cli)?;
    match cli.command {
        Command::Check => Ok(check(&config)),
        Command::Render {
            name,
            input,
            format,
            out,
            watch,
            poll,
        } => {
            if watch || poll.poll.is_some() {
                render_watch(config, &name, &input, format, out.as_deref(), &poll).await
            } else {
                render(config, &name, &input, format, out.as_deref())
            }
        }
        Command::Preview { port, open, poll } => {
            let options = crate::preview::Options {
                port,
                open,
                poll: poll
                    .poll
                    .map(|ms| std::time::Duration::from_millis(ms.max(1))),
            };
            crate::preview::serve(config, options).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            name,
            input,
            to,
            queue: true,
            idempotency_key,
        } => queue::enqueue(config, &name, &input, &to, idempotency_key).await,
        Command::Send {
            name, input, to, ..
        } => send(config, &name, &input, &to).await,
        Command::Worker => queue::worker(config).await,
        Command::Auth(command) => auth::run(&config, command).await,
        Command::Queue(command) => queue::run(&config, command).await,
        Command::Init { dir, force } => {
            init::run(&dir.unwrap_or_else(|| PathBuf::from(".")), force)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::discover()?,
    };
    if let Some(dir) = &cli.templates {
        config.templates = dir.clone();
    }
    if let Some(dir) = &cli.schemas {
        config.schemas = dir.clone();
    }
    Ok(config)
}

fn check(config: &Config) -> ExitCode {
    let report = missive::check(config);
    for problem in &report.problems {
        for line in problem_lines(problem) {
            println!("{line}");
        }
    }
    for name in &report.without_examples {
        eprintln!("note: `{name}` has no schema examples, so it was compiled but not rendered");
    }
    eprintln!(
        "checked {} templates with {} renders: {} problem{}",
        report.templates,
        report.renders,
        report.problems.len(),
        if report.problems.len() == 1 { "" } else { "s" }
    );
    if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn message(mailer: &Mailer, name: &str, input: &DataArgs) -> Result<missive::TemplateMessage> {
    let data = match &input.data {
        Some(path) => read_data(path)?,
        None => mailer.example(name, input.example)?,
    };
    let mut message = mailer.template(name).data(&data);
    if let Some(locale) = &input.locale {
        message = message.locale(locale);
    }
    Ok(message)
}

fn render(
    config: Config,
    name: &str,
    input: &DataArgs,
    format: Format,
    out: Option<&Path>,
) -> Result<ExitCode> {
    let mailer = Mailer::builder().config(config).build()?;
    emit(out, &render_bytes(&mailer, name, input, format)?)?;
    Ok(ExitCode::SUCCESS)
}

/// Renders once, then again after every save, until interrupted. A broken save or a
/// failing render is reported on stderr and the last output is left as it was.
async fn render_watch(
    config: Config,
    name: &str,
    input: &DataArgs,
    format: Format,
    out: Option<&Path>,
    poll: &PollArgs,
) -> Result<ExitCode> {
    let mailer = poll
        .watching(Mailer::builder().config(config).tolerate_broken(true))
        .build()?;
    let mut events = mailer.subscribe();
    let render_once = |mailer: &Mailer| match render_bytes(mailer, name, input, format) {
        Ok(bytes) => match emit(out, &bytes) {
            Ok(()) => eprintln!("rendered {name}; watching for changes (Ctrl-C to stop)"),
            Err(e) => print_error(&e),
        },
        Err(e) => print_error(&e),
    };
    match mailer.last_reload_error() {
        Some(error) => {
            eprintln!("templates do not load yet; watching for a fix:");
            print_error(&error);
        }
        None => render_once(&mailer),
    }
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(missive::ReloadEvent::Failed { error, .. }) => {
                    eprintln!("templates do not load; keeping the last output:");
                    print_error(&error);
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => render_once(&mailer),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(ExitCode::SUCCESS),
            },
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

fn render_bytes(mailer: &Mailer, name: &str, input: &DataArgs, format: Format) -> Result<Vec<u8>> {
    let message = message(mailer, name, input)?;
    Ok(match format {
        Format::Eml => message.eml()?,
        Format::Html => message.render()?.html().as_bytes().to_vec(),
        Format::Text => match message.render()?.text() {
            Some(text) => text.as_bytes().to_vec(),
            None => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("`{name}` has no text part (`text: false`)"),
                ))
            }
        },
        Format::Json => {
            let mut json = serde_json::to_vec_pretty(&message.render()?)
                .map_err(|e| Error::new(ErrorKind::Render, e.to_string()))?;
            json.push(b'\n');
            json
        }
    })
}

/// Writes to stdout, or replaces `out` whole, so a mail client or editor watching it
/// never reads half a message.
fn emit(out: Option<&Path>, bytes: &[u8]) -> Result<()> {
    let Some(path) = out else {
        let mut stdout = std::io::stdout().lock();
        return stdout
            .write_all(bytes)
            .and_then(|()| stdout.flush())
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot write to stdout: {e}")));
    };
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = path.with_file_name(format!(".{file_name}.missive-tmp"));
    std::fs::write(&temp, bytes)
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot write {}: {e}", path.display()),
            )
        })
}

async fn send(config: Config, name: &str, input: &DataArgs, to: &[String]) -> Result<ExitCode> {
    let mailer = Mailer::builder().config(config).build()?;
    let mut message = message(&mailer, name, input)?;
    for address in to {
        message = message.to(address);
    }
    let receipt = message.send().await?;
    println!(
        "sent {} {} to {} ({}; {} attempt{})",
        receipt.template,
        receipt.message_id,
        receipt.accepted.join(", "),
        receipt.reply,
        receipt.attempts,
        if receipt.attempts == 1 { "" } else { "s" }
    );
    for rejected in &receipt.rejected {
        eprintln!(
            "missive: not delivered to {}: {}",
            rejected.recipient, rejected.reply
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads data as JSON, or YAML for `.yaml`/`.yml`; `-` is stdin.
fn read_data(path: &Path) -> Result<serde_json::Value> {
    let (text, shown) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot read stdin: {e}")))?;
        (text, PathBuf::from("<stdin>"))
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        (text, path.to_path_buf())
    };
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    if yaml {
        serde_yaml::from_str(&text).map_err(|e| {
            let line = e.location().map_or(1, |l| l.line());
            Error::new(ErrorKind::InvalidData, format!("invalid YAML data: {e}"))
                .at(&shown, line, 1)
        })
    } else {
        serde_json::from_str(&text).map_err(|e| {
            Error::new(ErrorKind::InvalidData, format!("invalid JSON data: {e}")).at(
                &shown,
                e.line(),
                e.column(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn wire_logs_never_pass_even_at_trace() {
        for directives in [
            "trace",
            "lettre=trace,trace",
            "[smtp_attempt]=trace,lettre=debug",
        ] {
            let buffer = Buffer::default();
            let make = {
                let buffer = buffer.clone();
                move || buffer.clone()
            };
            let filter = tracing_subscriber::EnvFilter::new(directives);
            tracing::subscriber::with_default(subscriber(filter, make, false), || {
                let span = tracing::info_span!("smtp_attempt", attempt = 1);
                let _entered = span.enter();
                tracing::debug!(
                    target: "lettre::transport::smtp::client::async_connection",
                    "Wrote: AUTH XOAUTH2 dXNlcj1hQGIBYXV0aD1CZWFyZXIgc2VjcmV0AQE="
                );
                tracing::trace!(target: "hyper_util::client", "POST /token refresh_token=rt-secret");
                tracing::trace!(target: "html5ever::tokenizer", "got characters reset-secret");
                tracing::debug!(target: "selectors::matching", "Matching <a href=reset-secret>");
                tracing::info!(target: "lettre", "connection encrypted");
                tracing::debug!(target: "missive::transport", "retrying");
            });
            let out = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
            assert!(!out.contains("XOAUTH2"), "{directives}: {out}");
            assert!(!out.contains("rt-secret"), "{directives}: {out}");
            assert!(!out.contains("reset-secret"), "{directives}: {out}");
            assert!(
                out.contains("connection encrypted"),
                "{directives}: INFO still passes"
            );
            assert!(
                out.contains("retrying"),
                "{directives}: missive's own debug passes"
            );
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(!use_colour(false, None));
        assert!(!use_colour(true, Some("1".into())));
        assert!(
            use_colour(true, Some("".into())),
            "an empty NO_COLOR does not count"
        );
    }
}
