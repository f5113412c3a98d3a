//! The black-box tests, in one binary (one link instead of one per file): the public
//! API, the `missive` binary, SMTP and OAuth2 against fakes and real servers, the
//! preview, hot reload. Three tests keep binaries of their own because they need a
//! process to themselves: `log_capture` and `send_backpressure` install a global
//! subscriber, `watch_stop` counts the process's threads.

#[path = "../common/mod.rs"]
mod common;
#[path = "../support/mod.rs"]
mod support;

mod api;
mod api_transports;
mod bad_input;
#[cfg(feature = "cli")]
mod cli;
mod interop_smtp;
mod oauth;
#[cfg(feature = "cli")]
mod oauth_cli;
#[cfg(feature = "cli")]
mod preview;
#[cfg(feature = "cli")]
mod preview_browser;
#[cfg(feature = "queue-sqlite")]
mod queue;
#[cfg(feature = "cli")]
mod queue_cli;
#[cfg(feature = "queue-postgres")]
mod queue_postgres;
mod smtp;
mod smtp_tls;
mod snapshots;
mod watch;
#[cfg(feature = "cli")]
mod watch_cli;
