//! The durable mail queue: messages are rendered at enqueue time, committed to SQLite or
//! PostgreSQL before the caller hears `Ok`, and delivered afterwards by workers, with
//! retries on a Postfix-like schedule. `docs/queue.md` states what is guaranteed.
//!
//! `store` is the storage seam (one trait, two backends); `worker` claims, delivers and
//! records; `schedule` says when a deferred message comes back.

#[cfg(all(test, any(feature = "queue-sqlite", feature = "queue-postgres")))]
mod conformance;
#[cfg(feature = "queue-postgres")]
mod postgres;
mod schedule;
#[cfg(feature = "queue-sqlite")]
mod sqlite;
mod store;
pub(crate) mod worker;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::transport::{Email, Transport};
pub use schedule::parse_duration;
pub(crate) use schedule::Backoff;
pub(crate) use store::{NewMessage, Store};

/// The `queue:` section of `missive.yaml`, or [`QueueConfig::new`] in code.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueConfig {
    /// `sqlite://path/to/queue.db` (relative to the config file) or
    /// `postgres://user@host/db` (the password comes from `PGPASSWORD`).
    pub url: String,
    /// Worker tasks `missive worker` and [`Mailer::run_queue`](crate::Mailer::run_queue)
    /// start.
    pub workers: usize,
    /// The first retry comes this long after a failure...
    pub backoff_min: Duration,
    /// ...and doubles up to this.
    pub backoff_max: Duration,
    /// A message still undelivered this long after it was queued fails as expired.
    pub lifetime: Duration,
    /// Sent and cancelled messages are purged this long after they were finished.
    pub retention: Duration,
    /// How long a claim holds a message; renewed while it is being sent. A worker
    /// that dies loses its messages to another one this long after its last renewal.
    pub lease: Duration,
    /// How often an idle worker looks for due messages that no wake-up announced
    /// (deferred ones coming due, or messages another process queued in SQLite).
    pub poll: Duration,
    /// Messages one worker holds at once (`None`: sixteen for each message the
    /// transport carries at once, 128 for a pool of four SMTP connections). A message
    /// keeps its slot until its outcome is committed, so a worker holding fewer waits
    /// on its own commits rather than on the transport. Each message on the wire is
    /// one that a crash right after its 250 sends twice.
    pub in_flight: Option<usize>,
}

impl QueueConfig {
    /// The defaults (Postfix's: retries from 5 minutes up to an hour, for 5 days) for
    /// the queue at `url`.
    pub fn new(url: impl Into<String>) -> QueueConfig {
        QueueConfig {
            url: url.into(),
            workers: 1,
            backoff_min: Duration::from_secs(300),
            backoff_max: Duration::from_secs(3600),
            lifetime: Duration::from_secs(5 * 86400),
            retention: Duration::from_secs(7 * 86400),
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            in_flight: None,
        }
    }

    /// How many messages one worker holds at once.
    pub fn in_flight(mut self, in_flight: usize) -> Self {
        self.in_flight = Some(in_flight.max(1));
        self
    }

    /// The retry schedule's bounds.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// The maximum lifetime of an undelivered message.
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// How long finished messages are kept.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The claim lease and the idle poll interval.
    pub fn lease(mut self, lease: Duration, poll: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(100));
        self.poll = poll.max(Duration::from_millis(10));
        self
    }

    /// How many worker tasks run.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    pub(crate) fn schedule(&self) -> Backoff {
        Backoff {
            min: self.backoff_min,
            max: self.backoff_max.max(self.backoff_min),
        }
    }
}

impl fmt::Debug for QueueConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueConfig")
            .field("url", &redact_url(&self.url))
            .field("workers", &self.workers)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("lifetime", &self.lifetime)
            .field("retention", &self.retention)
            .field("lease", &self.lease)
            .field("poll", &self.poll)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// The `queue:` section as written in `missive.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueueConfig {
    url: String,
    workers: Option<usize>,
    backoff: Option<RawBackoff>,
    lifetime: Option<String>,
    retention: Option<String>,
    lease: Option<String>,
    poll: Option<String>,
    in_flight: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    min: Option<String>,
    max: Option<String>,
}

impl RawQueueConfig {
    /// The config, with a relative SQLite path taken from `base` (the config file's
    /// folder). A password in the URL is refused: it belongs in `PGPASSWORD`.
    pub(crate) fn resolve(self, base: &std::path::Path) -> Result<QueueConfig> {
        let url = match sqlite_path(&self.url) {
            Some(path)
                if std::path::Path::new(path).is_relative() && !base.as_os_str().is_empty() =>
            {
                format!("sqlite://{}", base.join(path).display())
            }
            _ => self.url.clone(),
        };
        if redact_url(&url) != url {
            return Err(Error::new(
                ErrorKind::Config,
                "`queue.url` holds a password; secrets never go in the config file — \
                 set PGPASSWORD (or MISSIVE_QUEUE_URL) in the environment instead",
            ));
        }
        let mut config = QueueConfig::new(url);
        let field = |name: &str, value: &Option<String>, into: &mut Duration| -> Result<()> {
            if let Some(text) = value {
                *into = parse_duration(text).map_err(|e| {
                    Error::new(
                        ErrorKind::Config,
                        format!("`queue.{name}`: {}", e.message()),
                    )
                })?;
            }
            Ok(())
        };
        if let Some(backoff) = &self.backoff {
            field("backoff.min", &backoff.min, &mut config.backoff_min)?;
            field("backoff.max", &backoff.max, &mut config.backoff_max)?;
        }
        field("lifetime", &self.lifetime, &mut config.lifetime)?;
        field("retention", &self.retention, &mut config.retention)?;
        field("lease", &self.lease, &mut config.lease)?;
        field("poll", &self.poll, &mut config.poll)?;
        if config.backoff_max < config.backoff_min {
            return Err(Error::new(
                ErrorKind::Config,
                "`queue.backoff.max` is shorter than `queue.backoff.min`",
            ));
        }
        if config.lease < Duration::from_millis(100) {
            return Err(Error::new(
                ErrorKind::Config,
                "`queue.lease` must be at least 100ms",
            ));
        }
        if let Some(n) = self.in_flight {
            if n == 0 {
                return Err(Error::new(
                    ErrorKind::Config,
                    "`queue.in_flight` must be at least 1",
                ));
            }
            config.in_flight = Some(n);
        }
        if let Some(workers) = self.workers {
            if workers == 0 {
                return Err(Error::new(
                    ErrorKind::Config,
                    "`queue.workers` must be at least 1",
                ));
            }
            config.workers = workers;
        }
        Ok(config)
    }
}

/// The URL with any password replaced, for errors and logs.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_string(),
    }
}

/// Where a queued message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for its first attempt.
    Queued,
    /// Claimed by a worker, which is delivering it.
    Sending,
    /// An attempt failed for now; it is tried again at `next_attempt_at`.
    Deferred,
    /// Every recipient is done and at least one took it.
    Sent,
    /// Refused for good, or expired; see the attempts.
    Failed,
    /// Put aside by an operator; `release` queues it again.
    Held,
    /// Withdrawn by an operator; never sent.
    Cancelled,
}

impl State {
    /// Every state, in the order `stats` lists them.
    pub const ALL: [State; 7] = [
        State::Queued,
        State::Sending,
        State::Deferred,
        State::Sent,
        State::Failed,
        State::Held,
        State::Cancelled,
    ];

    /// The name stored and printed: `queued`, `sending`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Sending => "sending",
            State::Deferred => "deferred",
            State::Sent => "sent",
            State::Failed => "failed",
            State::Held => "held",
            State::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for State {
    type Err = Error;
    fn from_str(s: &str) -> Result<State> {
        State::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
                Error::new(
                    ErrorKind::Config,
                    format!("`{s}` is not a queue state; one of {}", names.join(", ")),
                )
            })
    }
}

/// A point in time, stored as milliseconds since the Unix epoch; printed and
/// serialized as RFC 3339 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub(crate) i64);

impl Timestamp {
    pub(crate) fn now() -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Timestamp(ms)
    }

    pub(crate) fn plus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    pub(crate) fn minus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// The moment `ms` milliseconds after 1970-01-01 UTC.
    pub fn from_unix_millis(ms: i64) -> Timestamp {
        Timestamp(ms)
    }

    /// Milliseconds since 1970-01-01 UTC.
    pub fn unix_millis(self) -> i64 {
        self.0
    }

    /// How long ago this was (zero if it is in the future).
    pub fn age(self) -> Duration {
        Duration::from_millis(u64::try_from(Timestamp::now().0 - self.0).unwrap_or(0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1000);
        let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
        // Civil date from days since the epoch (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What an enqueue returns, once the message is committed to storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Queued {
    /// The queue's id of the message (`missive queue show ID`).
    pub id: i64,
    /// Its Message-ID header, with angle brackets; the same on every attempt.
    pub message_id: String,
    /// True when the idempotency key was already used: nothing new was queued and
    /// `id` is the first message's.
    pub duplicate: bool,
}

/// One line of `missive queue list`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Summary {
    /// The queue id.
    pub id: i64,
    /// The Message-ID header.
    pub message_id: String,
    /// The template it was rendered from.
    pub template: String,
    /// Where it stands.
    pub state: State,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When it was queued.
    pub created_at: Timestamp,
    /// When it is due next (for `queued` and `deferred`).
    pub next_attempt_at: Timestamp,
    /// The last failure, if any (an SMTP reply or a connection error; never content).
    pub last_error: Option<String>,
}

/// Where one envelope recipient stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RecipientStatus {
    /// The envelope address.
    pub address: String,
    /// `pending` (still to be delivered), `sent` or `failed`.
    pub state: String,
    /// The SMTP code of its last outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// The server's reply about it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reply: String,
}

/// One recorded delivery attempt.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct AttemptRecord {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When it ended.
    pub at: Timestamp,
    /// `sent`, `partial`, `deferred`, `unknown` (the reply to the final "." was lost),
    /// `failed` or `expired`.
    pub outcome: String,
    /// The SMTP reply code, when there was one.
    pub code: Option<u16>,
    /// The server's reply or the error (never a secret or the message's content).
    pub reply: String,
    /// The worker that made it.
    pub worker: String,
}

/// Everything `missive queue show` prints about a message.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Detail {
    /// The list line.
    #[serde(flatten)]
    pub summary: Summary,
    /// The template's tags.
    pub tags: Vec<String>,
    /// The envelope sender (`None`: the message's own `From`).
    pub envelope_from: Option<String>,
    /// Every envelope recipient and where it stands.
    pub recipients: Vec<RecipientStatus>,
    /// The message's header fields, unfolded, in order.
    pub headers: Vec<(String, String)>,
    /// Size of the stored MIME message in bytes.
    pub size: usize,
    /// A message still undelivered at this time fails as expired.
    pub expires_at: Timestamp,
    /// Every attempt, oldest first.
    pub history: Vec<AttemptRecord>,
}

/// How many messages are in one state, and the oldest of them.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StateStats {
    /// The state.
    pub state: State,
    /// Messages in it.
    pub count: u64,
    /// When the oldest of them was queued.
    pub oldest: Option<Timestamp>,
}

/// Counts per state, for `missive queue stats` and an app's metrics.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// One entry per state, in [`State::ALL`] order.
    pub states: Vec<StateStats>,
}

impl Stats {
    /// The count of messages in `state`.
    pub fn count(&self, state: State) -> u64 {
        self.states
            .iter()
            .find(|s| s.state == state)
            .map_or(0, |s| s.count)
    }
}

/// Which messages `list` returns; newest first.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Filter {
    /// Only this state.
    pub state: Option<State>,
    /// Only this template.
    pub template: Option<String>,
    /// At most this many (all when `None`).
    pub limit: Option<usize>,
}

impl Filter {
    /// Every message.
    pub fn new() -> Filter {
        Filter::default()
    }

    /// Only messages in `state`.
    pub fn state(mut self, state: State) -> Self {
        self.state = Some(state);
        self
    }

    /// Only messages of `template`.
    pub fn template(mut self, template: impl Into<String>) -> Self {
        self.template = Some(template.into());
        self
    }

    /// At most `limit` messages.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// An operator's change to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// A failed, deferred or held message is due now (failed recipients are tried
    /// again, and the lifetime starts over).
    Retry,
    Hold,
    Release,
    Cancel,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Retry => "retry",
            Op::Hold => "hold",
            Op::Release => "release",
            Op::Cancel => "cancel",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Op::Retry => "retried",
            Op::Hold => "held",
            Op::Release => "released",
            Op::Cancel => "cancelled",
        }
    }

    /// The states the operation applies to.
    pub(crate) fn applies_to(self) -> &'static [State] {
        match self {
            Op::Retry => &[State::Failed, State::Deferred, State::Held, State::Queued],
            Op::Hold => &[State::Queued, State::Deferred],
            Op::Release => &[State::Held],
            Op::Cancel => &[State::Queued, State::Deferred, State::Held, State::Failed],
        }
    }

    // Used by the backends, which a build without queue features leaves out.
    #[cfg_attr(
        not(any(feature = "queue-sqlite", feature = "queue-postgres")),
        allow(dead_code)
    )]
    pub(crate) fn to_state(self) -> State {
        match self {
            Op::Retry | Op::Release => State::Queued,
            Op::Hold => State::Held,
            Op::Cancel => State::Cancelled,
        }
    }
}

/// A handle on a queue's storage: enqueue, inspect and operate. Cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), missive::Error> {
/// use missive::{Queue, QueueConfig, State};
/// let dir = std::env::temp_dir().join(format!("missive-doc-{}", std::process::id()));
/// let queue = Queue::open(&QueueConfig::new(format!("sqlite://{}/q.db", dir.display())))?;
/// assert_eq!(queue.stats().await?.count(State::Queued), 0);
/// # std::fs::remove_dir_all(dir).ok();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Queue {
    pub(crate) inner: Arc<QueueInner>,
}

pub(crate) struct QueueInner {
    pub store: Arc<dyn Store>,
    /// The same store when it is PostgreSQL, for enqueues in an app's transaction.
    #[cfg(feature = "queue-postgres")]
    pub postgres: Option<Arc<postgres::Postgres>>,
    pub config: QueueConfig,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("url", &redact_url(&self.inner.config.url))
            .finish()
    }
}

impl Queue {
    /// Opens (creating and migrating where needed) the queue `config.url` names.
    /// SQLite is opened at once; a PostgreSQL server is first contacted on first use.
    pub fn open(config: &QueueConfig) -> Result<Queue> {
        if let Some(path) = sqlite_path(&config.url) {
            return Ok(Queue::with(open_sqlite(path, config)?, config));
        }
        if config.url.starts_with("postgres://") || config.url.starts_with("postgresql://") {
            return open_postgres(config);
        }
        Err(Error::new(
            ErrorKind::Config,
            format!(
                "queue url `{}`: expected sqlite://PATH or postgres://USER@HOST/DB",
                redact_url(&config.url)
            ),
        ))
    }

    fn with(store: Arc<dyn Store>, config: &QueueConfig) -> Queue {
        Queue {
            inner: Arc::new(QueueInner {
                store,
                #[cfg(feature = "queue-postgres")]
                postgres: None,
                config: config.clone(),
            }),
        }
    }

    /// Delivers queued mail through the transport `transport` describes (the
    /// `transport:` section of `missive.yaml`) with the configured number of workers
    /// until `shutdown` resolves, as [`Mailer::run_queue`](crate::Mailer::run_queue)
    /// does; no template is loaded, since workers send what was rendered at enqueue.
    pub async fn run(
        &self,
        transport: &crate::TransportConfig,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        run_workers(self.clone(), crate::transport::open(transport)?, shutdown).await
    }

    /// `url` as it may be shown: any password replaced by `***`.
    pub fn describe_url(url: &str) -> String {
        redact_url(url)
    }

    /// Its configuration.
    pub fn config(&self) -> &QueueConfig {
        &self.inner.config
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    #[cfg(all(test, feature = "queue-sqlite"))]
    pub(crate) async fn enqueue_new(&self, message: NewMessage) -> Result<Queued> {
        self.store().enqueue(message).await
    }

    /// Stores a built message; returns once storage has committed it. With an
    /// `idempotency_key` that is already queued, stores nothing and returns the first
    /// message's id with `duplicate: true`. [`TemplateMessage::enqueue`]
    /// (crate::TemplateMessage::enqueue) renders and calls this.
    pub async fn enqueue(&self, email: &Email, idempotency_key: Option<&str>) -> Result<Queued> {
        self.store()
            .enqueue(self.new_message(email, idempotency_key))
            .await
    }

    /// [`enqueue`](Self::enqueue) on the app's own PostgreSQL connection or transaction:
    /// the message exists if and only if that transaction commits (feature
    /// `queue-postgres`).
    #[cfg(feature = "queue-postgres")]
    pub async fn enqueue_in(
        &self,
        conn: &mut sqlx::PgConnection,
        email: &Email,
        idempotency_key: Option<&str>,
    ) -> Result<Queued> {
        let message = self.new_message(email, idempotency_key);
        match &self.inner.postgres {
            Some(pg) => pg.enqueue_in(conn, message).await,
            None => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "enqueue_in needs a PostgreSQL queue; this one is {}",
                    redact_url(&self.inner.config.url)
                ),
            )),
        }
    }

    fn new_message(&self, email: &Email, idempotency_key: Option<&str>) -> NewMessage {
        let now = Timestamp::now();
        NewMessage {
            message_id: email.message_id().to_string(),
            idempotency_key: idempotency_key.map(str::to_string),
            template: email.template().to_string(),
            tags: email.tags().to_vec(),
            envelope_from: email.envelope_from().map(str::to_string),
            recipients: email.recipients(),
            raw: email.bytes().clone(),
            now,
            expires_at: now.plus(self.inner.config.lifetime),
        }
    }

    /// Messages matching `filter`, newest first.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<Summary>> {
        self.store().list(filter).await
    }

    /// Envelope, headers, recipients and every attempt of message `id`.
    pub async fn show(&self, id: i64) -> Result<Detail> {
        self.store()
            .show(id)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no queued message {id}")))
    }

    /// Makes a failed, deferred or held message due now; failed recipients are tried
    /// again and its lifetime starts over.
    pub async fn retry(&self, id: i64) -> Result<()> {
        self.apply(Op::Retry, id).await
    }

    /// [`retry`](Self::retry) for every failed message; returns how many.
    pub async fn retry_failed(&self) -> Result<u64> {
        self.store()
            .retry_failed(Timestamp::now(), self.inner.config.lifetime)
            .await
    }

    /// Puts a queued or deferred message aside until [`release`](Self::release).
    pub async fn hold(&self, id: i64) -> Result<()> {
        self.apply(Op::Hold, id).await
    }

    /// Queues a held message again.
    pub async fn release(&self, id: i64) -> Result<()> {
        self.apply(Op::Release, id).await
    }

    /// Withdraws a message that is not sent or being sent.
    pub async fn cancel(&self, id: i64) -> Result<()> {
        self.apply(Op::Cancel, id).await
    }

    async fn apply(&self, op: Op, id: i64) -> Result<()> {
        let lifetime = self.inner.config.lifetime;
        match self
            .store()
            .apply(op, id, Timestamp::now(), lifetime)
            .await?
        {
            Ok(()) => Ok(()),
            Err(None) => Err(Error::new(
                ErrorKind::NotFound,
                format!("no queued message {id}"),
            )),
            Err(Some(state)) => {
                let allowed: Vec<&str> = op.applies_to().iter().map(|s| s.as_str()).collect();
                let (last, rest) = allowed.split_last().unwrap_or((&"", &[]));
                let allowed = if rest.is_empty() {
                    last.to_string()
                } else {
                    format!("{} or {last}", rest.join(", "))
                };
                Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "cannot {} message {id}: it is {state} (only {allowed} messages can be {})",
                        op.verb(),
                        op.done()
                    ),
                ))
            }
        }
    }

    /// How many messages are in each state and the oldest of each.
    pub async fn stats(&self) -> Result<Stats> {
        self.store().stats().await
    }

    /// Deletes sent and cancelled messages (and their history) finished more than
    /// `age` ago; returns how many. Workers do this on their own after `retention`.
    pub async fn purge_sent_before(&self, age: Duration) -> Result<u64> {
        self.store().purge(Timestamp::now().minus(age)).await
    }
}

/// Runs the configured number of workers delivering through `transport`.
pub(crate) async fn run_workers(
    queue: Queue,
    transport: Arc<dyn Transport>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let count = queue.config().workers;
    worker::run(queue, Arc::new(worker::Through(transport)), count, shutdown).await
}

/// One entry per state, zero where storage found none.
// Used by the backends, which a build without queue features leaves out.
#[cfg_attr(
    not(any(feature = "queue-sqlite", feature = "queue-postgres")),
    allow(dead_code)
)]
pub(crate) fn complete_stats(found: Vec<StateStats>) -> Stats {
    let states = State::ALL
        .into_iter()
        .map(|state| {
            found
                .iter()
                .find(|s| s.state == state)
                .cloned()
                .unwrap_or(StateStats {
                    state,
                    count: 0,
                    oldest: None,
                })
        })
        .collect();
    Stats { states }
}

#[cfg(feature = "queue-sqlite")]
fn open_sqlite(path: &str, _: &QueueConfig) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(sqlite::Sqlite::open(std::path::Path::new(path))?))
}

#[cfg(not(feature = "queue-sqlite"))]
fn open_sqlite(_: &str, config: &QueueConfig) -> Result<Arc<dyn Store>> {
    Err(not_built(config, "SQLite", "queue-sqlite"))
}

#[cfg(feature = "queue-postgres")]
fn open_postgres(config: &QueueConfig) -> Result<Queue> {
    let store = Arc::new(postgres::Postgres::open(&config.url)?);
    Ok(Queue {
        inner: Arc::new(QueueInner {
            store: store.clone(),
            postgres: Some(store),
            config: config.clone(),
        }),
    })
}

#[cfg(not(feature = "queue-postgres"))]
fn open_postgres(config: &QueueConfig) -> Result<Queue> {
    Err(not_built(config, "PostgreSQL", "queue-postgres"))
}

/// A queue URL whose backend this build left out.
#[cfg(not(all(feature = "queue-sqlite", feature = "queue-postgres")))]
fn not_built(config: &QueueConfig, backend: &str, feature: &str) -> Error {
    Error::new(
        ErrorKind::Config,
        format!(
            "queue url `{}`: this missive was built without {backend} support; \
             enable the cargo feature `{feature}`",
            redact_url(&config.url)
        ),
    )
}

fn sqlite_path(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
}

/// The header section of a stored message, unfolded.
// Used by the backends, which a build without queue features leaves out.
#[cfg_attr(
    not(any(feature = "queue-sqlite", feature = "queue-postgres")),
    allow(dead_code)
)]
pub(crate) fn headers(raw: &[u8]) -> Vec<(String, String)> {
    let end = memchr::memmem::find(raw, b"\r\n\r\n").unwrap_or(raw.len());
    let text = String::from_utf8_lossy(&raw[..end]);
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.to_string(), value.trim().to_string()));
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_in_errors() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db.internal:5432/mail"),
            "postgres://app:***@db.internal:5432/mail"
        );
        assert_eq!(
            redact_url("postgres://app@db/mail"),
            "postgres://app@db/mail"
        );
        assert_eq!(redact_url("sqlite://var/q.db"), "sqlite://var/q.db");
        let config = QueueConfig::new("postgres://app:hunter2@db/mail");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[cfg(feature = "queue-postgres")]
    #[test]
    fn a_postgres_queue_opens_outside_a_runtime() {
        // Mailer::build is a plain function: opening must not need tokio.
        Queue::open(&QueueConfig::new("postgres://app@127.0.0.1:1/mail")).unwrap();
    }

    #[test]
    fn a_backend_left_out_of_the_build_is_named_with_its_feature() {
        for (url, built, feature) in [
            (
                "sqlite:///tmp/q.db",
                cfg!(feature = "queue-sqlite"),
                "queue-sqlite",
            ),
            (
                "postgres://app:hunter2@127.0.0.1:1/mail",
                cfg!(feature = "queue-postgres"),
                "queue-postgres",
            ),
        ] {
            if built {
                continue;
            }
            let err = Queue::open(&QueueConfig::new(url)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(
                err.message()
                    .contains(&format!("cargo feature `{feature}`")),
                "{err}"
            );
            assert!(!err.message().contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn bad_urls_are_config_errors() {
        let err = Queue::open(&QueueConfig::new("mysql://db/mail")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.message().contains("sqlite://PATH or postgres://"),
            "{err}"
        );
    }

    #[test]
    fn timestamps_print_as_rfc3339_utc() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Timestamp(1_796_143_389_000).to_string(),
            "2026-12-01T16:43:09Z"
        );
        assert_eq!(
            Timestamp(951_782_400_000).to_string(),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn headers_unfold() {
        let raw = b"Subject: a\r\n long one\r\nTo: x@y.test\r\n\r\nbody: no\r\n";
        assert_eq!(
            headers(raw),
            [
                ("Subject".to_string(), "a long one".to_string()),
                ("To".to_string(), "x@y.test".to_string())
            ]
        );
    }

    #[test]
    fn states_round_trip() {
        for state in State::ALL {
            assert_eq!(state.as_str().parse::<State>().unwrap(), state);
        }
        assert!("lost".parse::<State>().is_err());
    }
}
