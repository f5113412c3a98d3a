//! Where messages go: the [`Transport`] trait and its built-in implementations
//! (outbox, in-memory, SMTP, the Gmail API, Microsoft Graph, failover), and the
//! per-transport rate and concurrency limits. A transport receives an [`Email`] — the envelope and the
//! exact MIME bytes — and makes one delivery attempt; retrying is left to the caller
//! ([`retry`] for direct sends, the queue for queued mail).

mod api;
mod failover;
pub(crate) mod gmail;
pub(crate) mod graph;
mod limit;
mod memory;
mod outbox;
pub(crate) mod retry;
pub(crate) mod smtp;

pub use failover::Failover;
pub use gmail::GmailConfig;
pub use graph::GraphConfig;
pub use limit::{Limited, Rate};
pub use memory::{Inbox, SentMessage};
pub(crate) use outbox::Outbox;
pub use retry::RetryConfig;
pub(crate) use smtp::Smtp;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use lettre::address::{Address, Envelope};

use crate::error::{Error, ErrorKind, Result};
use crate::render::Rendered;

/// The transport a config describes, with its limits. Connects to nothing yet.
pub(crate) fn open(config: &crate::config::TransportConfig) -> Result<Arc<dyn Transport>> {
    use crate::config::TransportConfig;
    Ok(match config {
        TransportConfig::Outbox { dir } => Arc::new(Outbox::new(dir)),
        TransportConfig::Smtp(smtp) => Arc::new(Smtp::new(smtp)?),
        TransportConfig::Gmail(gmail) => Arc::new(Limited::new(
            gmail::Gmail::new(gmail)?,
            gmail.rate,
            gmail.max_concurrent,
        )),
        TransportConfig::Graph(graph) => Arc::new(Limited::new(
            graph::Graph::new(graph)?,
            graph.rate,
            graph.max_concurrent,
        )),
        TransportConfig::Failover { transports, .. } => Arc::new(Failover::new(
            transports.iter().map(open).collect::<Result<Vec<_>>>()?,
        )?),
    })
}

/// Re-exported so that a transport of your own needs no direct dependency on it.
pub use async_trait::async_trait;

/// Something that delivers built messages: SMTP, an HTTPS API, a file, a test double.
///
/// A transport makes **one attempt** per call and reports what happened; it does not
/// retry transient failures itself. Whole-message failures are errors whose
/// [`ErrorKind`] says what a caller may do next: [`Transient`](ErrorKind::Transient)
/// (try again later), [`Permanent`](ErrorKind::Permanent) (never),
/// [`DeliveryUnknown`](ErrorKind::DeliveryUnknown) (it may have arrived; a resend must
/// keep the Message-ID), [`Auth`](ErrorKind::Auth) or [`Config`](ErrorKind::Config).
/// Once the recipients have been handed over, per-recipient outcomes go in the
/// [`Delivery`] instead.
///
/// ```
/// use missive::{async_trait, Delivery, Email, Mailer, Transport};
///
/// #[derive(Debug)]
/// struct Discard;
///
/// #[async_trait]
/// impl Transport for Discard {
///     async fn send(&self, email: &Email) -> missive::Result<Delivery> {
///         Ok(Delivery::new(email.recipients(), "discarded"))
///     }
///     fn name(&self) -> &str {
///         "discard"
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> missive::Result<()> {
/// let mailer = Mailer::builder().transport(Discard).build()?;
/// let data = mailer.example("welcome", 0)?;
/// let receipt = mailer.send_template("welcome", &data).await?;
/// assert_eq!(receipt.transport, "discard");
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Makes one attempt to deliver `email` to its envelope recipients.
    async fn send(&self, email: &Email) -> Result<Delivery>;

    /// A short name for logs and receipts: `smtp`, `outbox`, `gmail`, ...
    fn name(&self) -> &str;

    /// How many messages it carries at once (SMTP: two per pooled connection). The
    /// mailer renders at most twice this many messages ahead of delivery.
    fn parallelism(&self) -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }
}

#[async_trait]
impl<T: Transport + ?Sized> Transport for Arc<T> {
    async fn send(&self, email: &Email) -> Result<Delivery> {
        (**self).send(email).await
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn parallelism(&self) -> usize {
        (**self).parallelism()
    }
}

/// A built message on its way to a transport: the envelope and the exact bytes to
/// send. Cheap to clone; clones share the bytes. Its `Debug` output shows the
/// Message-ID, template and sizes, never the content.
#[derive(Clone)]
pub struct Email {
    message_id: String,
    envelope: Envelope,
    raw: Bytes,
    template: String,
    tags: Vec<String>,
    /// What the mailer rendered, for the in-memory transport's inspection helpers;
    /// absent for mail read back from the queue.
    pub(crate) rendered: Option<Arc<Rendered>>,
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Email")
            .field("message_id", &self.message_id)
            .field("template", &self.template)
            .field("recipients", &self.envelope.to().len())
            .field("bytes", &self.raw.len())
            .finish()
    }
}

impl Email {
    /// An email from its parts: the Message-ID (with angle brackets) that `raw`
    /// carries, the envelope sender (`None`: the null sender `<>`), the envelope
    /// recipients and the complete RFC 5322 message.
    ///
    /// ```
    /// let email = missive::Email::new(
    ///     "<1@example.test>",
    ///     Some("app@example.test"),
    ///     &["ada@example.test"],
    ///     b"Subject: hi\r\n\r\nhello\r\n".to_vec(),
    /// )?;
    /// assert_eq!(email.recipients(), ["ada@example.test"]);
    /// # Ok::<(), missive::Error>(())
    /// ```
    pub fn new(
        message_id: impl Into<String>,
        from: Option<&str>,
        recipients: &[impl AsRef<str>],
        raw: impl Into<Bytes>,
    ) -> Result<Email> {
        let address = |a: &str| {
            a.parse::<Address>().map_err(|e| {
                Error::new(
                    ErrorKind::Address,
                    format!("`{a}` is not an envelope address: {e}"),
                )
            })
        };
        let from = from.map(address).transpose()?;
        let to = recipients
            .iter()
            .map(|r| address(r.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let envelope = Envelope::new(from, to)
            .map_err(|e| Error::new(ErrorKind::Address, format!("invalid envelope: {e}")))?;
        Ok(Email::from_parts(message_id.into(), envelope, raw.into()))
    }

    pub(crate) fn from_parts(message_id: String, envelope: Envelope, raw: Bytes) -> Email {
        Email {
            message_id,
            envelope,
            raw,
            template: String::new(),
            tags: Vec::new(),
            rendered: None,
        }
    }

    /// Names the template it came from and its tags, for logs and receipts.
    pub fn with_template(mut self, template: impl Into<String>, tags: Vec<String>) -> Email {
        self.template = template.into();
        self.tags = tags;
        self
    }

    /// The Message-ID header, with angle brackets.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    /// The envelope sender (SMTP `MAIL FROM`); `None` is the null sender.
    pub fn envelope_from(&self) -> Option<&str> {
        self.envelope.from().map(AsRef::as_ref)
    }

    /// The envelope recipients (`RCPT TO`): To, Cc and Bcc.
    pub fn recipients(&self) -> Vec<String> {
        self.envelope.to().iter().map(ToString::to_string).collect()
    }

    /// The message as it goes on the wire.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The same bytes, shared rather than copied.
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.raw
    }

    /// The bytes, without a copy when nothing else shares them.
    pub(crate) fn into_raw(self) -> Vec<u8> {
        Vec::from(self.raw)
    }

    /// The template it came from (empty when not known).
    pub fn template(&self) -> &str {
        &self.template
    }

    /// The template's tags.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    pub(crate) fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The same message for only `recipients` (those still to be delivered).
    pub(crate) fn only(&self, recipients: Vec<Address>) -> Result<Email> {
        let envelope = Envelope::new(self.envelope.from().cloned(), recipients)
            .map_err(|e| Error::new(ErrorKind::Address, format!("invalid envelope: {e}")))?;
        Ok(Email {
            envelope,
            ..self.clone()
        })
    }
}

/// What one delivery attempt achieved for each recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// Envelope recipients the transport accepted.
    pub accepted: Vec<String>,
    /// Recipients refused for good (a 5xx reply to `RCPT TO`).
    pub rejected: Vec<Rejected>,
    /// Recipients refused for now (a 4xx reply): worth another attempt, for them only.
    pub deferred: Vec<Rejected>,
    /// The server's final reply, or where the message was put.
    pub reply: String,
    /// The transport that delivered it (the inner one, behind a failover).
    pub transport: String,
}

impl Delivery {
    /// Every one of `accepted` got the message, with `reply` as the server's word.
    pub fn new(accepted: Vec<String>, reply: impl Into<String>) -> Delivery {
        Delivery {
            accepted,
            rejected: Vec::new(),
            deferred: Vec::new(),
            reply: reply.into(),
            transport: String::new(),
        }
    }

    /// Adds recipients refused for good.
    pub fn with_rejected(mut self, rejected: Vec<Rejected>) -> Delivery {
        self.rejected = rejected;
        self
    }

    /// Adds recipients refused for now.
    pub fn with_deferred(mut self, deferred: Vec<Rejected>) -> Delivery {
        self.deferred = deferred;
        self
    }

    /// Names the transport that delivered.
    pub fn via(mut self, transport: impl Into<String>) -> Delivery {
        self.transport = transport.into();
        self
    }
}

/// A recipient the server would not take, while others got the message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Rejected {
    /// The envelope address.
    pub recipient: String,
    /// The SMTP reply code, when the server gave one (`550`, `452`, ...).
    pub code: Option<u16>,
    /// The server's reply, or why delivery to it stopped.
    pub reply: String,
}

impl Rejected {
    /// `recipient` refused with `reply` (and its SMTP code, when there is one).
    pub fn new(
        recipient: impl Into<String>,
        code: Option<u16>,
        reply: impl Into<String>,
    ) -> Rejected {
        Rejected {
            recipient: recipient.into(),
            code,
            reply: reply.into(),
        }
    }
}
