//! # missive
//!
//! A template-driven transactional mail engine. Apps call
//! `mailer.send_template("welcome", &data)`; missive finds the named template, checks the
//! data against its JSON Schema, renders front-matter and body with minijinja, inlines
//! the CSS, derives the text part, builds the MIME message and hands it to a transport.
//!
//! The pipeline, one module per stage: `templates` (loading, front-matter, the set) →
//! `render` (minijinja, schema check) → `inline` (CSS) → `text` → `message` (MIME) →
//! `transport` (outbox, memory, smtp, gmail, graph, failover), with `auth` beside it for OAuth2 tokens, and
//! `watch` (hot reload) on top of the set.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), missive::Error> {
//! use serde_json::json;
//!
//! let (mailer, inbox) = missive::Mailer::for_tests("templates");
//! let data = json!({
//!     "user": {"first_name": "Ada", "name": "Ada Lovelace", "email": "ada@example.test"},
//!     "product": {"name": "Acme Cloud"},
//!     "dashboard_url": "https://app.example.test/",
//! });
//! let receipt = mailer.send_template("welcome", &data).await?;
//! assert_eq!(inbox.len(), 1);
//! assert_eq!(inbox.last().unwrap().message_id(), receipt.message_id);
//! # Ok(()) }
//! ```

#![warn(missing_docs, unreachable_pub)]

mod address;
pub mod auth;
mod check;
mod config;
mod error;
mod html;
mod inline;
mod mailer;
mod message;
mod queue;
mod render;
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod stages;
mod templates;
mod text;
mod transport;
mod watch;

pub use check::{check, Report};
pub use config::{Config, TransportConfig, DEFAULT_FROM};
pub use error::{Error, ErrorKind, Location, Result, Violation};
pub use mailer::{Mailer, MailerBuilder, Receipt, TemplateInfo, TemplateMessage};
pub use message::Attachment;
pub use queue::{
    parse_duration, AttemptRecord, Detail, Filter, Queue, QueueConfig, Queued, RecipientStatus,
    State, StateStats, Stats, Summary, Timestamp,
};
pub use render::Rendered;
pub use templates::ReloadEvent;
pub use transport::smtp::{AuthConfig, Mechanism, PoolConfig, SmtpConfig, Timeouts, TlsMode};
pub use transport::{
    async_trait, Delivery, Email, Failover, GmailConfig, GraphConfig, Inbox, Limited, Rate,
    Rejected, RetryConfig, SentMessage, Transport,
};

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
