//! The direct-send retry policy: transient failures are tried again with exponential
//! backoff and jitter, for the recipients still pending, within a number of attempts
//! and a deadline. A transport makes one attempt per call; this is the loop around it.

use std::time::{Duration, Instant};

use lettre::address::Address;
use serde::Deserialize;
use tracing::Instrument;

use crate::error::{Error, ErrorKind, Result};
use crate::transport::{Delivery, Email, Rejected, Transport};

/// Retry policy of direct sends (`send_template`, `TemplateMessage::send`) for
/// transient failures: 4xx replies, network errors, timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each failure, with jitter.
    pub initial_backoff_ms: u64,
    /// Upper bound of one wait.
    pub max_backoff_ms: u64,
    /// The whole send ends by this many seconds after it started: no attempt starts
    /// later, and no wait for the server lasts beyond it.
    pub deadline_secs: u64,
    /// Whether a send whose outcome is unknown (the reply to the final "." was lost,
    /// so the server may have the message) is sent again, with the same Message-ID.
    /// Off by default: a resend risks a duplicate, which the app should decide on.
    pub retry_unknown: bool,
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            attempts: 4,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            // RFC 5321 4.5.3.2 lets a server take 10 minutes to answer the final ".".
            deadline_secs: 600,
            retry_unknown: false,
        }
    }
}

impl RetryConfig {
    /// The wait after failed attempt `attempt` (from 1): exponential, capped, with
    /// "equal jitter" so that many senders failing together do not retry in lockstep.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(32));
        let capped = exp.min(self.max_backoff_ms);
        let half = capped / 2;
        Duration::from_millis(half + fastrand::u64(0..=half))
    }

    fn should_retry(&self, error: &Error) -> bool {
        if error.was_retried() {
            return false;
        }
        match error.kind() {
            ErrorKind::Transient => true,
            ErrorKind::DeliveryUnknown => self.retry_unknown,
            _ => false,
        }
    }
}

tokio::task_local! {
    static DEADLINE: Instant;
}

/// When the send in progress on this task must be over, if a deadline applies:
/// transports cap their own waits with it.
pub(crate) fn deadline() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// A finished direct send: what every attempt achieved together.
pub(crate) struct Sent {
    pub delivery: Delivery,
    pub attempts: u32,
}

/// Delivers `email` through `transport`, retrying as `policy` allows. Recipients that
/// were accepted are never sent to again; those deferred are retried alone.
pub(crate) async fn deliver(
    transport: &dyn Transport,
    email: &Email,
    policy: &RetryConfig,
) -> Result<Sent> {
    let deadline = Instant::now() + Duration::from_secs(policy.deadline_secs);
    let name = transport.name().to_string();
    let mut pending = email.clone();
    let mut total = Delivery::new(Vec::new(), String::new()).via(name.clone());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let span = tracing::info_span!(
            "attempt",
            template = %email.template(),
            message_id = %email.message_id(),
            attempt,
            transport = %name,
            outcome = tracing::field::Empty,
        );
        // Boxed: a transport's attempt future can be kilobytes, and this one is moved.
        let result = DEADLINE
            .scope(deadline, Box::pin(transport.send(&pending)))
            .instrument(span.clone())
            .await;
        let (error, deferred) = match result {
            Ok(delivery) => {
                total.accepted.extend(delivery.accepted);
                total.rejected.extend(delivery.rejected);
                if !delivery.reply.is_empty() {
                    total.reply = delivery.reply;
                }
                if !delivery.transport.is_empty() {
                    total.transport = delivery.transport;
                }
                let Some(first) = delivery.deferred.first() else {
                    finish(&span, "delivered", None);
                    break;
                };
                let mut error = Error::new(
                    ErrorKind::Transient,
                    format!(
                        "{name} deferred {} recipient(s), first {}: {}",
                        delivery.deferred.len(),
                        first.recipient,
                        first.reply
                    ),
                );
                if let Some(code) = first.code {
                    error = error.with_smtp_code(code);
                }
                let still: Vec<Address> = delivery
                    .deferred
                    .iter()
                    .filter_map(|r| r.recipient.parse().ok())
                    .collect();
                pending = pending.only(still)?;
                finish(&span, "deferred", Some(&error));
                (error, delivery.deferred)
            }
            Err(error) => {
                finish(&span, outcome_of(&error), Some(&error));
                (error, Vec::new())
            }
        };
        // A server that said when to come back is not asked again sooner.
        let backoff = policy
            .backoff(attempt)
            .max(error.retry_after().unwrap_or_default());
        if !policy.should_retry(&error)
            || attempt >= policy.attempts
            || Instant::now() + backoff > deadline
        {
            // Recipients deferred to the end are refused; with a whole-message failure
            // the rest are, when some got it (the receipt says so), or the error is.
            if !deferred.is_empty() {
                total.rejected.extend(deferred);
            } else if !total.accepted.is_empty() {
                total
                    .rejected
                    .extend(pending.recipients().into_iter().map(|recipient| Rejected {
                        recipient,
                        code: error.smtp_code(),
                        reply: error.message().to_string(),
                    }));
            }
            if total.accepted.is_empty() {
                return Err(final_error(error, &total.rejected, attempt)
                    .with_message_id(email.message_id()));
            }
            break;
        }
        tracing::info!(
            attempt,
            backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
            "retrying"
        );
        tokio::time::sleep(backoff).await;
    }
    if total.accepted.is_empty() {
        return Err(final_error(
            Error::new(ErrorKind::Permanent, "no recipient was accepted"),
            &total.rejected,
            attempt,
        )
        .with_message_id(email.message_id()));
    }
    Ok(Sent {
        delivery: total,
        attempts: attempt,
    })
}

fn outcome_of(error: &Error) -> &'static str {
    match error.kind() {
        ErrorKind::Transient => "transient",
        ErrorKind::Permanent => "permanent",
        ErrorKind::DeliveryUnknown => "unknown",
        ErrorKind::Auth => "auth",
        _ => "failed",
    }
}

/// Records how an attempt ended on its span, and says so inside it (at DEBUG: the
/// send's own outcome is what the app hears about).
fn finish(span: &tracing::Span, outcome: &'static str, error: Option<&Error>) {
    span.record("outcome", outcome);
    let _entered = span.enter();
    match error {
        None => tracing::debug!("attempt {outcome}"),
        Some(error) => tracing::debug!(error = %error, "attempt {outcome}"),
    }
}

/// The error of a send that reached nobody.
fn final_error(error: Error, rejected: &[Rejected], attempts: u32) -> Error {
    let error = match rejected.first() {
        Some(first) if rejected.iter().all(|r| r.code.is_some_and(|c| c >= 500)) => {
            let list: Vec<String> = rejected
                .iter()
                .map(|r| format!("{}: {}", r.recipient, r.reply))
                .collect();
            let error = Error::new(
                ErrorKind::Permanent,
                format!("every recipient was refused: {}", list.join("; ")),
            );
            match first.code {
                Some(code) => error.with_smtp_code(code),
                None => error,
            }
        }
        _ => error,
    };
    error.note(format!(
        "after {attempts} attempt{}",
        if attempts == 1 { "" } else { "s" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let retry = RetryConfig {
            attempts: 10,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            deadline_secs: 60,
            retry_unknown: false,
        };
        for _ in 0..50 {
            let first = retry.backoff(1);
            assert!((50..=100).contains(&first.as_millis()), "{first:?}");
            let third = retry.backoff(3);
            assert!((200..=400).contains(&third.as_millis()), "{third:?}");
            assert!(retry.backoff(30) <= Duration::from_millis(1_000));
        }
    }
}
