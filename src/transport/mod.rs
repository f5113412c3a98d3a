//! Where messages go. Each transport takes a finished MIME message and its envelope;
//! the enum is the seam new transports plug into.

mod memory;
mod outbox;
pub(crate) mod smtp;

pub use memory::{Inbox, SentMessage};
pub(crate) use outbox::Outbox;
pub(crate) use smtp::Smtp;

use crate::error::Result;
use crate::message::Outgoing;

/// What a transport reports about one delivered message.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// Envelope recipients the transport accepted.
    pub accepted: Vec<String>,
    /// Recipients refused for good, or still deferred when retries ran out.
    pub rejected: Vec<Rejected>,
    /// The server's final reply, or where the message was put.
    pub reply: String,
    /// How many attempts delivery took.
    pub attempts: u32,
}

/// A recipient the server would not take, while others got the message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    /// The envelope address.
    pub recipient: String,
    /// The SMTP reply code, when the server gave one (`550`, `452`, ...).
    pub code: Option<u16>,
    /// The server's reply, or why delivery to it stopped.
    pub reply: String,
}

/// The configured transport of a mailer.
#[derive(Debug)]
pub(crate) enum Transport {
    Outbox(Outbox),
    Memory(Inbox),
    Smtp(Smtp),
}

impl Transport {
    pub async fn send(&self, message: &Outgoing) -> Result<Delivery> {
        match self {
            Transport::Outbox(outbox) => outbox.send(message).await,
            Transport::Memory(inbox) => Ok(inbox.push(message)),
            Transport::Smtp(smtp) => smtp.send(message).await,
        }
    }

    /// How many messages may be rendered and on their way at once. Past this, `send`
    /// waits before rendering, so a burst of sends neither renders everything up
    /// front (memory) nor fills the blocking pool with hundreds of threads. Twice the
    /// transport's own parallelism: one message on the wire and the next being
    /// rendered, per connection.
    pub fn in_flight(&self) -> usize {
        let parallel = match self {
            Transport::Smtp(smtp) => smtp.max_connections(),
            Transport::Outbox(_) | Transport::Memory(_) => {
                std::thread::available_parallelism().map_or(1, usize::from)
            }
        };
        parallel * 2
    }

    pub fn name(&self) -> &'static str {
        match self {
            Transport::Outbox(_) => "outbox",
            Transport::Memory(_) => "memory",
            Transport::Smtp(_) => "smtp",
        }
    }
}
