//! Where messages go. Each transport takes a finished MIME message and its envelope;
//! the enum is the seam new transports plug into.

mod memory;
mod outbox;

pub use memory::{Inbox, SentMessage};
pub(crate) use outbox::Outbox;

use crate::error::Result;
use crate::message::Outgoing;

/// What a transport reports about one delivered message.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// Envelope recipients the transport accepted.
    pub accepted: Vec<String>,
    /// The server's final reply, or where the message was put.
    pub reply: String,
    /// How many attempts delivery took.
    pub attempts: u32,
}

/// The configured transport of a mailer.
#[derive(Debug)]
pub(crate) enum Transport {
    Outbox(Outbox),
    Memory(Inbox),
}

impl Transport {
    pub async fn send(&self, message: &Outgoing) -> Result<Delivery> {
        match self {
            Transport::Outbox(outbox) => outbox.send(message).await,
            Transport::Memory(inbox) => Ok(inbox.push(message)),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Transport::Outbox(_) => "outbox",
            Transport::Memory(_) => "memory",
        }
    }
}
