//! The in-memory transport behind [`crate::Mailer::for_tests`].

use std::sync::{Arc, Mutex, MutexGuard};

use crate::message::Outgoing;
use crate::render::Rendered;
use crate::transport::Delivery;

/// Messages a test mailer "sent", for assertions. Clones share the same list.
///
/// ```
/// let inbox = missive::Inbox::default();
/// assert!(inbox.is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    messages: Arc<Mutex<Vec<SentMessage>>>,
}

/// One message as the in-memory transport received it.
#[derive(Debug, Clone)]
pub struct SentMessage {
    message_id: String,
    recipients: Vec<String>,
    rendered: Rendered,
    raw: Vec<u8>,
}

impl SentMessage {
    /// The Message-ID header, with angle brackets.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }
    /// Envelope recipients: To, Cc and Bcc.
    pub fn recipients(&self) -> &[String] {
        &self.recipients
    }
    /// Subject, addresses, bodies and tags as rendered.
    pub fn rendered(&self) -> &Rendered {
        &self.rendered
    }
    /// The template name.
    pub fn template(&self) -> &str {
        self.rendered.template()
    }
    /// The subject line.
    pub fn subject(&self) -> &str {
        self.rendered.subject()
    }
    /// The final HTML.
    pub fn html(&self) -> &str {
        self.rendered.html()
    }
    /// The text part.
    pub fn text(&self) -> Option<&str> {
        self.rendered.text()
    }
    /// The whole message as it would go on the wire.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, Vec<SentMessage>> {
        // A panic in another test thread must not hide what was sent.
        self.messages.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn push(&self, message: &Outgoing) -> Delivery {
        let recipients = message.recipients();
        self.lock().push(SentMessage {
            message_id: message.message_id.clone(),
            recipients: recipients.clone(),
            rendered: message.rendered.clone(),
            raw: message.raw.clone(),
        });
        Delivery {
            accepted: recipients,
            rejected: Vec::new(),
            reply: "stored in memory".to_string(),
            attempts: 1,
        }
    }

    /// Every message so far, oldest first.
    pub fn messages(&self) -> Vec<SentMessage> {
        self.lock().clone()
    }
    /// How many messages were sent.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
    /// Whether nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
    /// The most recent message.
    pub fn last(&self) -> Option<SentMessage> {
        self.lock().last().cloned()
    }
    /// Messages whose envelope includes `address`.
    pub fn sent_to(&self, address: &str) -> Vec<SentMessage> {
        self.lock()
            .iter()
            .filter(|m| m.recipients.iter().any(|r| r.eq_ignore_ascii_case(address)))
            .cloned()
            .collect()
    }
    /// Forgets every message.
    pub fn clear(&self) {
        self.lock().clear();
    }
}
