//! Failover: transports tried in order, each once per attempt, while the one before
//! failed transiently (down, unreachable, overloaded). A permanent refusal is the
//! message's own fault and would be refused again; an unknown outcome may already be
//! delivered, and sending it elsewhere would make a second copy. Neither goes on.

use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::transport::{async_trait, Delivery, Email, Transport};

/// Transports tried in order on transient failures; the [`Delivery`] (and so the
/// receipt) names the one that delivered.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> missive::Result<()> {
/// let (primary, backup) = (missive::Inbox::default(), missive::Inbox::default());
/// let failover = missive::Failover::new(vec![
///     std::sync::Arc::new(primary) as std::sync::Arc<dyn missive::Transport>,
///     std::sync::Arc::new(backup.clone()),
/// ])?;
/// let mailer = missive::Mailer::builder().transport(failover).build()?;
/// let data = mailer.example("welcome", 0)?;
/// let receipt = mailer.send_template("welcome", &data).await?;
/// assert_eq!(receipt.transport, "memory");
/// assert!(backup.is_empty());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Failover {
    transports: Vec<Arc<dyn Transport>>,
}

impl Failover {
    /// Tries `transports` in this order; at least two.
    pub fn new(transports: Vec<Arc<dyn Transport>>) -> Result<Failover> {
        if transports.len() < 2 {
            return Err(Error::new(
                ErrorKind::Config,
                "a failover needs at least two transports",
            ));
        }
        Ok(Failover { transports })
    }
}

#[async_trait]
impl Transport for Failover {
    async fn send(&self, email: &Email) -> Result<Delivery> {
        let mut failures = Vec::new();
        for (i, transport) in self.transports.iter().enumerate() {
            match transport.send(email).await {
                Ok(delivery) => {
                    if i > 0 {
                        tracing::info!(transport = transport.name(), "delivered through failover");
                    }
                    let name = delivery.transport.clone();
                    return Ok(if name.is_empty() {
                        delivery.via(transport.name())
                    } else {
                        delivery
                    });
                }
                Err(error)
                    if error.kind() == ErrorKind::Transient && i + 1 < self.transports.len() =>
                {
                    tracing::warn!(
                        transport = transport.name(),
                        error = %error,
                        "transport failed; trying the next one"
                    );
                    failures.push(format!("{}: {}", transport.name(), error.message()));
                }
                Err(error) if failures.is_empty() => return Err(error),
                Err(error) => {
                    return Err(error.note(format!("after {}", failures.join("; "))));
                }
            }
        }
        // The loop returns on the last transport's outcome.
        Err(Error::new(
            ErrorKind::Config,
            "a failover without transports",
        ))
    }

    fn name(&self) -> &str {
        "failover"
    }

    fn parallelism(&self) -> usize {
        self.transports
            .iter()
            .map(|t| t.parallelism())
            .max()
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    struct Scripted {
        name: &'static str,
        kind: Option<ErrorKind>,
        calls: AtomicU32,
    }

    #[async_trait]
    impl Transport for Scripted {
        async fn send(&self, email: &Email) -> Result<Delivery> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.kind {
                None => Ok(Delivery::new(email.recipients(), "ok")),
                Some(kind) => Err(Error::new(kind, format!("{} failed", self.name))),
            }
        }
        fn name(&self) -> &str {
            self.name
        }
    }

    fn scripted(name: &'static str, kind: Option<ErrorKind>) -> Arc<Scripted> {
        Arc::new(Scripted {
            name,
            kind,
            calls: AtomicU32::new(0),
        })
    }

    fn email() -> Email {
        Email::new("<1@x.test>", None, &["a@x.test"], b"\r\n".to_vec()).unwrap()
    }

    #[tokio::test]
    async fn only_transient_failures_go_to_the_next_transport() {
        let first = scripted("first", Some(ErrorKind::Transient));
        let second = scripted("second", None);
        let failover = Failover::new(vec![first.clone(), second.clone()]).unwrap();
        let delivery = failover.send(&email()).await.unwrap();
        assert_eq!(delivery.transport, "second");
        assert_eq!(first.calls.load(Ordering::SeqCst), 1);

        for kind in [
            ErrorKind::Permanent,
            ErrorKind::DeliveryUnknown,
            ErrorKind::Auth,
        ] {
            let first = scripted("first", Some(kind));
            let second = scripted("second", None);
            let failover = Failover::new(vec![first, second.clone()]).unwrap();
            assert_eq!(failover.send(&email()).await.unwrap_err().kind(), kind);
            assert_eq!(second.calls.load(Ordering::SeqCst), 0, "{kind:?}");
        }

        let failover = Failover::new(vec![
            scripted("first", Some(ErrorKind::Transient)),
            scripted("second", Some(ErrorKind::Transient)),
        ])
        .unwrap();
        let err = failover.send(&email()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert!(err.message().contains("first: first failed"), "{err}");
        assert!(Failover::new(vec![scripted("only", None)]).is_err());
    }
}
