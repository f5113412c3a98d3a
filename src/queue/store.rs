//! The storage seam: what a backend (SQLite, PostgreSQL) must do. Every method is one
//! transaction; a method returns `Ok` only after its transaction committed durably.

// What the backends use; a build with neither (no queue feature) leaves it unused.
#![cfg_attr(
    not(any(feature = "queue-sqlite", feature = "queue-postgres")),
    allow(dead_code)
)]

use std::time::Duration;

use super::{Detail, Filter, Op, Queued, RecipientStatus, State, Stats, Summary, Timestamp};
use crate::error::Result;

/// A rendered message on its way into storage.
#[derive(Clone)]
pub(crate) struct NewMessage {
    pub message_id: String,
    pub idempotency_key: Option<String>,
    pub template: String,
    pub tags: Vec<String>,
    pub envelope_from: Option<String>,
    pub recipients: Vec<String>,
    pub raw: bytes::Bytes,
    pub now: Timestamp,
    pub expires_at: Timestamp,
}

/// A message a worker claimed: everything it needs to send it.
#[derive(Clone)]
pub(crate) struct Claimed {
    pub id: i64,
    pub message_id: String,
    pub template: String,
    pub tags: Vec<String>,
    pub envelope_from: Option<String>,
    pub recipients: Vec<RecipientStatus>,
    pub raw: bytes::Bytes,
    /// This attempt's number (from 1).
    pub attempt: u32,
    pub expires_at: Timestamp,
}

/// The outcome of one attempt, as the worker decided it.
#[derive(Debug, Clone)]
pub(crate) struct Finish {
    pub id: i64,
    pub attempt: u32,
    pub state: State,
    pub recipients: Vec<RecipientStatus>,
    pub next_attempt_at: Timestamp,
    /// `sent`, `partial`, `deferred`, `unknown`, `failed`, `expired`.
    pub outcome: &'static str,
    pub code: Option<u16>,
    pub reply: String,
    pub now: Timestamp,
}

#[async_trait::async_trait]
pub(crate) trait Store: Send + Sync + 'static {
    /// Stores the message, or with a known idempotency key returns the first one's
    /// id with `duplicate: true`.
    async fn enqueue(&self, message: NewMessage) -> Result<Queued>;

    /// Leases up to `limit` due messages to `worker` until `now + lease`: queued and
    /// due deferred ones, and `sending` ones whose lease ran out. New and retried
    /// mail share the batch, so a backlog of retries does not starve new mail.
    async fn claim(
        &self,
        worker: &str,
        limit: usize,
        now: Timestamp,
        lease: Duration,
    ) -> Result<Vec<Claimed>>;

    /// Extends the lease on `ids` that `worker` still holds.
    async fn renew(&self, worker: &str, ids: &[i64], until: Timestamp) -> Result<()>;

    /// Records the attempt and moves the message to its new state, if `worker` still
    /// holds it (a worker whose lease ran out only records its attempt).
    async fn finish(&self, worker: &str, finish: Finish) -> Result<()>;

    /// Waits until a message may have become due, at most `timeout`.
    async fn wait(&self, timeout: Duration);

    async fn list(&self, filter: &Filter) -> Result<Vec<Summary>>;

    async fn show(&self, id: i64) -> Result<Option<Detail>>;

    /// `Ok(Ok)` when applied; `Ok(Err(None))` for an unknown id; `Ok(Err(Some(s)))`
    /// when the message is in state `s`, which `op` does not apply to.
    async fn apply(
        &self,
        op: Op,
        id: i64,
        now: Timestamp,
        lifetime: Duration,
    ) -> Result<std::result::Result<(), Option<State>>>;

    async fn retry_failed(&self, now: Timestamp, lifetime: Duration) -> Result<u64>;

    async fn stats(&self) -> Result<Stats>;

    /// Deletes sent and cancelled messages last updated before `cutoff`.
    async fn purge(&self, cutoff: Timestamp) -> Result<u64>;
}

/// Failed recipients become pending again on `retry`; sent ones stay sent.
pub(crate) fn reopen_failed(recipients: &mut [RecipientStatus]) {
    for r in recipients {
        if r.state == "failed" {
            r.state = "pending".into();
        }
    }
}

pub(crate) fn recipients_json(recipients: &[RecipientStatus]) -> String {
    serde_json::to_string(recipients).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn pending(addresses: &[String]) -> Vec<RecipientStatus> {
    addresses
        .iter()
        .map(|a| RecipientStatus {
            address: a.clone(),
            state: "pending".into(),
            code: None,
            reply: String::new(),
        })
        .collect()
}
