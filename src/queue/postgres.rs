//! The shared backend: many app instances and workers on one PostgreSQL database.
//! Claims take rows with `FOR UPDATE SKIP LOCKED`, so workers never wait on each other
//! or take the same message; an enqueue sends `NOTIFY missive_queue`, which wakes idle
//! workers at its commit. Concurrent enqueues share one statement and its commit: a
//! batcher task takes every enqueue waiting and inserts them all at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection as _, Executor as _, PgConnection, Row as _};

use super::store::{self, Claimed, Finish, NewMessage, Store};
use super::{
    headers, redact_url, AttemptRecord, Detail, Filter, Op, Queued, RecipientStatus, State,
    StateStats, Stats, Summary, Timestamp,
};
use crate::error::{Error, ErrorKind, Result};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_queue.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_raw_uncompressed.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_raw_lz4.sql"),
    ),
];

/// Serializes migrations of processes starting together (any constant will do).
const MIGRATION_LOCK: i64 = 0x006d_6973_7369_7665;

const CHANNEL: &str = "missive_queue";

/// The most enqueues one statement inserts, and the bytes after which it takes no
/// more: the statement holds its rows in memory, and spills them to a temporary file
/// beyond `work_mem` (4 MiB by default).
const MAX_BATCH: usize = 256;
const MAX_BATCH_BYTES: usize = 1 << 20;

type Work<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = sqlx::Result<T>> + Send + 'a>>;

pub(crate) struct Postgres {
    /// Made on first use: the pool starts maintenance tasks, which need the runtime
    /// that `Mailer::build` (a plain function) may be called outside of.
    pool: std::sync::OnceLock<PgPool>,
    options: PgConnectOptions,
    shown: String,
    ready: tokio::sync::OnceCell<()>,
    wake: Arc<tokio::sync::Notify>,
    listening: std::sync::Once,
    /// Where `enqueue` hands its message to the batcher, started on first use.
    jobs: std::sync::OnceLock<mpsc::UnboundedSender<Job>>,
    /// Statements that inserted more than one message.
    #[cfg_attr(not(test), allow(dead_code))] // read by the batching tests
    shared: Arc<AtomicU64>,
}

/// An enqueue waiting for the batcher, and where its answer goes.
struct Job {
    message: NewMessage,
    answer: oneshot::Sender<Result<Queued>>,
}

impl Postgres {
    /// Parses the URL; the server is first contacted on first use.
    pub(crate) fn open(url: &str) -> Result<Postgres> {
        let shown = redact_url(url);
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| Error::new(ErrorKind::Config, format!("queue database {shown}: {e}")))?;
        Ok(Postgres {
            pool: std::sync::OnceLock::new(),
            options,
            shown,
            ready: tokio::sync::OnceCell::new(),
            wake: Arc::new(tokio::sync::Notify::new()),
            listening: std::sync::Once::new(),
            jobs: std::sync::OnceLock::new(),
            shared: Arc::default(),
        })
    }

    fn jobs(&self) -> &mpsc::UnboundedSender<Job> {
        self.jobs.get_or_init(|| {
            let (jobs, waiting) = mpsc::unbounded_channel();
            tokio::spawn(batch_forever(self.batcher(), waiting));
            jobs
        })
    }

    fn batcher(&self) -> Batcher {
        Batcher {
            pool: self.pool().clone(),
            options: self.options.clone(),
            shown: self.shown.clone(),
            shared: self.shared.clone(),
        }
    }

    fn pool(&self) -> &PgPool {
        self.pool.get_or_init(|| {
            PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(5))
                // The check is a round trip before every operation; a connection that
                // broke fails its operation, which says so, and the pool replaces it.
                .test_before_acquire(false)
                .connect_lazy_with(self.options.clone())
        })
    }

    /// Runs the migrations once per process, before the first operation.
    fn ready(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + '_>> {
        Box::pin(async move {
            self.ready
                .get_or_try_init(|| async {
                    let migrated: Work<'_, Option<i64>> = Box::pin(migrate(self.pool()));
                    match migrated.await {
                        Ok(None) => Ok(()),
                        Ok(Some(v)) => Err(Error::new(
                            ErrorKind::Storage,
                            format!(
                                "queue database {}: schema version {v} is newer than this missive knows ({}); upgrade missive",
                                self.shown,
                                MIGRATIONS.len()
                            ),
                        )),
                        Err(e) => Err(self.explain(e).await),
                    }
                })
                .await
                .map(|_| ())
        })
    }

    /// Boxed where it is made: the executor's higher-ranked lifetimes then resolve to
    /// this call's, which async-trait's `Send` check needs.
    async fn run<T>(&self, work: Work<'_, T>) -> Result<T> {
        self.ready().await?;
        match work.await {
            Ok(value) => Ok(value),
            Err(e) => Err(self.explain(e).await),
        }
    }

    async fn explain(&self, e: sqlx::Error) -> Error {
        explain(&self.options, &self.shown, e).await
    }

    /// Forwards `NOTIFY missive_queue` to the local waiters, reconnecting as needed,
    /// until the store is dropped.
    fn listen(&self) {
        let pool = self.pool().clone();
        let wake: Weak<tokio::sync::Notify> = Arc::downgrade(&self.wake);
        self.listening.call_once(|| {
            tokio::spawn(async move {
                while wake.strong_count() > 0 {
                    if let Ok(mut listener) = PgListener::connect_with(&pool).await {
                        if listener.listen(CHANNEL).await.is_ok() {
                            loop {
                                let Some(wake) = wake.upgrade() else { return };
                                match tokio::time::timeout(Duration::from_secs(5), listener.recv())
                                    .await
                                {
                                    Ok(Ok(_)) => wake.notify_waiters(),
                                    Ok(Err(_)) => break,
                                    Err(_) => {}
                                }
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        });
    }

    /// Enqueues on the caller's connection or transaction: the message exists if
    /// and only if that transaction commits, and workers hear of it at the commit.
    pub(crate) async fn enqueue_in(
        &self,
        conn: &mut PgConnection,
        m: NewMessage,
    ) -> Result<Queued> {
        self.ready().await?;
        match insert(conn, &m).await {
            Ok(queued) => Ok(queued),
            Err(e) => Err(self.explain(e).await),
        }
    }
}

/// A storage error naming the database (`shown`, redacted). A pool timeout hides why
/// no connection could be made (refused, wrong password), so one direct attempt finds
/// out.
async fn explain(options: &PgConnectOptions, shown: &str, e: sqlx::Error) -> Error {
    let cause = match e {
        sqlx::Error::PoolTimedOut => {
            match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(options))
                .await
            {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(_)) | Err(_) => "timed out waiting for a connection".to_string(),
            }
        }
        e => e.to_string(),
    };
    Error::new(
        ErrorKind::Storage,
        format!("queue database {shown}: {cause}"),
    )
}

/// Applies what is missing; `Some(v)` when the database is at a newer version `v`.
async fn migrate(pool: &PgPool) -> sqlx::Result<Option<i64>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    (&mut *tx)
        .execute(
            "CREATE TABLE IF NOT EXISTS missive_schema (
                 version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
    let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM missive_schema")
        .fetch_one(&mut *tx)
        .await?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > latest {
        return Ok(Some(current));
    }
    let missing: Vec<(i64, &'static str)> = MIGRATIONS
        .iter()
        .copied()
        .filter(|m| m.0 > current)
        .collect();
    for (version, sql) in missing {
        // A plain string runs as a simple query, which may hold many statements.
        (&mut *tx).execute(sql).await?;
        sqlx::query("INSERT INTO missive_schema (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(Timestamp::now().0)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(None)
}

/// Takes the enqueues waiting, one batch at a time, until the store is dropped.
async fn batch_forever(batcher: Batcher, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut bytes = first.message.raw.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match jobs.try_recv() {
                Ok(job) => {
                    bytes += job.message.raw.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        batcher.run(batch).await;
    }
}

struct Batcher {
    pool: PgPool,
    options: PgConnectOptions,
    shown: String,
    shared: Arc<AtomicU64>,
}

impl Batcher {
    /// Inserts the batch and answers each job once its row is committed.
    async fn run(&self, batch: Vec<Job>) {
        let mut conn = match self.pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => return self.refuse(batch, e).await,
        };
        if batch.len() > 1 {
            let messages: Vec<&NewMessage> = batch.iter().map(|j| &j.message).collect();
            match insert_many(&mut conn, &messages).await {
                Ok(ids) => {
                    self.shared.fetch_add(1, Ordering::Relaxed);
                    return self.answer(&mut conn, batch, ids).await;
                }
                // The server refused the statement, so none of it was committed: each
                // message is tried again alone, and only one that is refused again
                // fails (a NUL byte in a text column, say).
                Err(sqlx::Error::Database(_)) => {}
                // The connection failed: whether the statement committed is unknown,
                // and trying again could queue a message twice.
                Err(e) => return self.refuse(batch, e).await,
            }
        }
        for job in batch {
            let answer = match insert(&mut conn, &job.message).await {
                Ok(queued) => Ok(queued),
                Err(e) => Err(explain(&self.options, &self.shown, e).await),
            };
            let _ = job.answer.send(answer);
        }
    }

    /// Answers a committed batch; `ids[i]` is job i's new row, or `None` when its key
    /// was taken, before or by an earlier job of the batch.
    async fn answer(&self, conn: &mut PgConnection, batch: Vec<Job>, ids: Vec<Option<i64>>) {
        let taken: Vec<&str> = batch
            .iter()
            .zip(&ids)
            .filter(|(_, id)| id.is_none())
            .filter_map(|(job, _)| job.message.idempotency_key.as_deref())
            .collect();
        let found = if taken.is_empty() {
            Ok(HashMap::new())
        } else {
            match find_keys(conn, &taken).await {
                Ok(found) => Ok(found),
                Err(e) => Err(explain(&self.options, &self.shown, e).await),
            }
        };
        for (job, id) in batch.into_iter().zip(ids) {
            let answer = match (id, &job.message.idempotency_key, &found) {
                (Some(id), _, _) => Ok(Queued {
                    id,
                    message_id: job.message.message_id,
                    duplicate: false,
                }),
                (None, Some(key), Ok(found)) => match found.get(key) {
                    Some((id, message_id)) => Ok(Queued {
                        id: *id,
                        message_id: message_id.clone(),
                        duplicate: true,
                    }),
                    // Purged since its key stopped this one, as a lone enqueue can see.
                    None => {
                        Err(explain(&self.options, &self.shown, sqlx::Error::RowNotFound).await)
                    }
                },
                (None, _, Err(e)) => Err(e.clone_shallow()),
                (None, None, Ok(_)) => Err(Error::new(
                    ErrorKind::Storage,
                    format!(
                        "queue database {}: a message without a key was not inserted",
                        self.shown
                    ),
                )),
            };
            let _ = job.answer.send(answer);
        }
    }

    async fn refuse(&self, batch: Vec<Job>, e: sqlx::Error) {
        let e = explain(&self.options, &self.shown, e).await;
        for job in batch {
            let _ = job.answer.send(Err(e.clone_shallow()));
        }
    }
}

/// Inserts every message with one statement, committed on its own; returns message
/// i's new id, or `None` when its key is taken (before, or by an earlier message of
/// `messages`, whose row it then gets).
async fn insert_many(
    conn: &mut PgConnection,
    messages: &[&NewMessage],
) -> sqlx::Result<Vec<Option<i64>>> {
    // The ids are drawn first, in the batch's order, since RETURNING cannot say which
    // input row a new row came from. Rows go in in key order: two processes inserting
    // the same keys then wait for each other in one order and cannot deadlock. The
    // NOTIFY holds a database-wide lock through the commit, so the commits of other
    // processes' batches wait for this one instead of sharing its WAL flush; the
    // batches waiting meanwhile grow instead. A NOTIFY sent after the commit would
    // take that lock too, and commit and flush a transaction of its own: 16 callers
    // enqueued 3,051 msg/s that way against 4,049 this way (one run).
    const INSERT_MANY: &str = "WITH new AS MATERIALIZED ( \
         SELECT nextval(pg_get_serial_sequence('missive_messages', 'id')::regclass) AS id, n.* \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
         $7::bytea[], $8::int8[], $9::int8[]) WITH ORDINALITY \
         AS n (message_id, idempotency_key, template, tags, envelope_from, recipients, \
         raw, now, expires_at, ord)), \
         inserted AS ( \
         INSERT INTO missive_messages (id, message_id, idempotency_key, template, tags, \
         envelope_from, recipients, raw, state, attempts, next_attempt_at, expires_at, \
         created_at, updated_at) OVERRIDING SYSTEM VALUE \
         SELECT id, message_id, idempotency_key, template, tags, envelope_from, recipients, \
         raw, 'queued', 0, now, expires_at, now, now FROM new ORDER BY idempotency_key, ord \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id) \
         SELECT new.ord, new.id, pg_notify($10, '') FROM new JOIN inserted USING (id)";
    let column = |f: fn(&NewMessage) -> Option<&str>| -> Vec<Option<&str>> {
        messages.iter().map(|m| f(m)).collect()
    };
    let recipients: Vec<String> = messages
        .iter()
        .map(|m| store::recipients_json(&store::pending(&m.recipients)))
        .collect();
    let tags: Vec<String> = messages.iter().map(|m| tags_json(m)).collect();
    let raw: Vec<&[u8]> = messages.iter().map(|m| &m.raw[..]).collect();
    let now: Vec<i64> = messages.iter().map(|m| m.now.0).collect();
    let expires_at: Vec<i64> = messages.iter().map(|m| m.expires_at.0).collect();
    let rows: Vec<(i64, i64)> = sqlx::query_as(INSERT_MANY)
        .bind(column(|m| Some(&m.message_id)))
        .bind(column(|m| m.idempotency_key.as_deref()))
        .bind(column(|m| Some(&m.template)))
        .bind(tags)
        .bind(column(|m| m.envelope_from.as_deref()))
        .bind(recipients)
        .bind(raw)
        .bind(now)
        .bind(expires_at)
        .bind(CHANNEL)
        .fetch_all(&mut *conn)
        .await?;
    let mut ids = vec![None; messages.len()];
    for (ord, id) in rows {
        // ORDINALITY counts from 1.
        let slot = usize::try_from(ord - 1).ok().and_then(|i| ids.get_mut(i));
        if let Some(slot) = slot {
            *slot = Some(id);
        }
    }
    Ok(ids)
}

/// The id and Message-ID of the messages queued with `keys`.
async fn find_keys(
    conn: &mut PgConnection,
    keys: &[&str],
) -> sqlx::Result<HashMap<String, (i64, String)>> {
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT idempotency_key, id, message_id FROM missive_messages \
         WHERE idempotency_key = ANY($1)",
    )
    .bind(keys)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(key, id, message_id)| (key, (id, message_id)))
        .collect())
}

fn tags_json(m: &NewMessage) -> String {
    serde_json::to_string(&m.tags).unwrap_or_else(|_| "[]".into())
}

/// Inserts the message and, when it is new, sends the wake-up in the same statement.
async fn insert(conn: &mut PgConnection, m: &NewMessage) -> sqlx::Result<Queued> {
    let recipients = store::recipients_json(&store::pending(&m.recipients));
    let tags = tags_json(m);
    // ON CONFLICT waits for a concurrent insert of the same key to commit or roll
    // back, so of fifty racing enqueues exactly one inserts.
    let id: Option<i64> = sqlx::query_scalar(
        "WITH inserted AS (INSERT INTO missive_messages (message_id, idempotency_key, template, \
         tags, envelope_from, recipients, raw, state, attempts, next_attempt_at, expires_at, \
         created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', 0, $8, $9, $8, $8) \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id) \
         SELECT id, pg_notify($10, '') FROM inserted",
    )
    .bind(&m.message_id)
    .bind(&m.idempotency_key)
    .bind(&m.template)
    .bind(tags)
    .bind(&m.envelope_from)
    .bind(recipients)
    .bind(&m.raw[..])
    .bind(m.now.0)
    .bind(m.expires_at.0)
    .bind(CHANNEL)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = id {
        return Ok(Queued {
            id,
            message_id: m.message_id.clone(),
            duplicate: false,
        });
    }
    let (id, message_id): (i64, String) =
        sqlx::query_as("SELECT id, message_id FROM missive_messages WHERE idempotency_key = $1")
            .bind(&m.idempotency_key)
            .fetch_one(&mut *conn)
            .await?;
    Ok(Queued {
        id,
        message_id,
        duplicate: true,
    })
}

const SUMMARY_COLUMNS: &str =
    "id, message_id, template, state, attempts, created_at, next_attempt_at, last_error";

fn decode<T>(column: &str, e: impl std::error::Error + Send + Sync + 'static) -> sqlx::Result<T> {
    Err(sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: Box::new(e),
    })
}

fn state_of(row: &PgRow, column: &str) -> sqlx::Result<State> {
    let text: String = row.try_get(column)?;
    text.parse::<State>()
        .or_else(|e| decode(column, std::io::Error::other(e.message().to_string())))
}

fn json_of<T: serde::de::DeserializeOwned>(row: &PgRow, column: &str) -> sqlx::Result<T> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).or_else(|e| decode(column, e))
}

fn count(row: &PgRow, column: &str) -> sqlx::Result<u32> {
    let n: i32 = row.try_get(column)?;
    Ok(u32::try_from(n).unwrap_or(0))
}

fn summary(row: &PgRow) -> sqlx::Result<Summary> {
    Ok(Summary {
        id: row.try_get("id")?,
        message_id: row.try_get("message_id")?,
        template: row.try_get("template")?,
        state: state_of(row, "state")?,
        attempts: count(row, "attempts")?,
        created_at: Timestamp(row.try_get("created_at")?),
        next_attempt_at: Timestamp(row.try_get("next_attempt_at")?),
        last_error: row.try_get("last_error")?,
    })
}

async fn claim_rows(
    pool: &PgPool,
    worker: &str,
    limit: usize,
    now: Timestamp,
    lease: Duration,
) -> sqlx::Result<Vec<Claimed>> {
    const NEW: &str = "SELECT id FROM missive_messages WHERE state = 'queued' \
        AND next_attempt_at <= $1 AND id <> ALL($3) ORDER BY next_attempt_at, id LIMIT $2 \
        FOR UPDATE SKIP LOCKED";
    const RETRY: &str = "SELECT id FROM missive_messages WHERE state IN ('deferred', 'sending') \
        AND next_attempt_at <= $1 AND id <> ALL($3) ORDER BY next_attempt_at, id LIMIT $2 \
        FOR UPDATE SKIP LOCKED";
    let mut tx = pool.begin().await?;
    let mut ids: Vec<i64> = Vec::new();
    // Half the batch for new mail, the rest for retries, then top up with either.
    for (sql, n) in [
        (NEW, limit.div_ceil(2)),
        (RETRY, usize::MAX),
        (NEW, usize::MAX),
    ] {
        let want = n.min(limit - ids.len());
        if want == 0 {
            continue;
        }
        let more: Vec<i64> = sqlx::query_scalar(sql)
            .bind(now.0)
            .bind(i64::try_from(want).unwrap_or(i64::MAX))
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
        ids.extend(more);
    }
    if ids.is_empty() {
        tx.commit().await?;
        return Ok(Vec::new());
    }
    sqlx::query(
        "INSERT INTO missive_attempts (message, attempt, at, outcome, code, reply, worker) \
         SELECT id, attempts, $2, 'unknown', NULL, $3, COALESCE(lease_owner, '') \
         FROM missive_messages WHERE id = ANY($1) AND state = 'sending'",
    )
    .bind(&ids)
    .bind(now.0)
    .bind("the worker stopped renewing its lease mid-attempt; it may have been delivered")
    .execute(&mut *tx)
    .await?;
    let until = now.plus(lease);
    let rows = sqlx::query(
        "UPDATE missive_messages SET state = 'sending', attempts = attempts + 1, \
         lease_owner = $2, lease_until = $3, next_attempt_at = $3, updated_at = $4 \
         WHERE id = ANY($1) \
         RETURNING id, message_id, template, tags, envelope_from, recipients, raw, attempts, expires_at",
    )
    .bind(&ids)
    .bind(worker)
    .bind(until.0)
    .bind(now.0)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.iter()
        .map(|r| {
            let raw: Vec<u8> = r.try_get("raw")?;
            Ok(Claimed {
                id: r.try_get("id")?,
                message_id: r.try_get("message_id")?,
                template: r.try_get("template")?,
                tags: json_of(r, "tags")?,
                envelope_from: r.try_get("envelope_from")?,
                recipients: json_of(r, "recipients")?,
                raw: raw.into(),
                attempt: count(r, "attempts")?,
                expires_at: Timestamp(r.try_get("expires_at")?),
            })
        })
        .collect()
}

async fn apply_op(
    conn: &mut PgConnection,
    op: Op,
    id: i64,
    now: Timestamp,
    lifetime: Duration,
) -> sqlx::Result<std::result::Result<(), Option<State>>> {
    let row =
        sqlx::query("SELECT state, recipients FROM missive_messages WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(row) = row else {
        return Ok(Err(None));
    };
    let state = state_of(&row, "state")?;
    if !op.applies_to().contains(&state) {
        return Ok(Err(Some(state)));
    }
    let mut recipients: Vec<RecipientStatus> = json_of(&row, "recipients")?;
    let reopen = op == Op::Retry && state == State::Failed;
    if reopen {
        store::reopen_failed(&mut recipients);
    }
    sqlx::query(
        "UPDATE missive_messages SET state = $2, recipients = $3, updated_at = $4, \
         next_attempt_at = CASE WHEN $2 = 'queued' THEN $4 ELSE next_attempt_at END, \
         expires_at = CASE WHEN $5 THEN $6 ELSE expires_at END WHERE id = $1",
    )
    .bind(id)
    .bind(op.to_state().as_str())
    .bind(store::recipients_json(&recipients))
    .bind(now.0)
    .bind(reopen)
    .bind(now.plus(lifetime).0)
    .execute(&mut *conn)
    .await?;
    if op.to_state() == State::Queued {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Ok(()))
}

#[async_trait::async_trait]
impl Store for Postgres {
    async fn enqueue(&self, m: NewMessage) -> Result<Queued> {
        self.ready().await?;
        let (answer, answered) = oneshot::channel();
        let answered = match self.jobs().send(Job { message: m, answer }) {
            Ok(()) => answered.await.ok(),
            Err(_) => None,
        };
        answered.unwrap_or_else(|| {
            Err(Error::new(
                ErrorKind::Storage,
                format!(
                    "queue database {}: the enqueue task stopped (its runtime shut down)",
                    self.shown
                ),
            ))
        })
    }

    async fn claim(
        &self,
        worker: &str,
        limit: usize,
        now: Timestamp,
        lease: Duration,
    ) -> Result<Vec<Claimed>> {
        self.run(Box::pin(claim_rows(self.pool(), worker, limit, now, lease)))
            .await
    }

    async fn renew(&self, worker: &str, ids: &[i64], until: Timestamp) -> Result<()> {
        self.run(Box::pin(async {
            sqlx::query(
                "UPDATE missive_messages SET lease_until = $3, next_attempt_at = $3 \
                 WHERE id = ANY($1) AND state = 'sending' AND lease_owner = $2",
            )
            .bind(ids)
            .bind(worker)
            .bind(until.0)
            .execute(self.pool())
            .await
            .map(|_| ())
        }))
        .await
    }

    async fn finish(&self, worker: &str, f: Finish) -> Result<()> {
        self.run(Box::pin(async {
            let mut tx = self.pool().begin().await?;
            sqlx::query(
                "INSERT INTO missive_attempts (message, attempt, at, outcome, code, reply, worker) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(f.id)
            .bind(i32::try_from(f.attempt).unwrap_or(i32::MAX))
            .bind(f.now.0)
            .bind(f.outcome)
            .bind(f.code.map(i32::from))
            .bind(&f.reply)
            .bind(worker)
            .execute(&mut *tx)
            .await?;
            let last_error = (f.state != State::Sent).then_some(&f.reply);
            sqlx::query(
                "UPDATE missive_messages SET state = $3, recipients = $4, next_attempt_at = $5, \
                 lease_owner = NULL, lease_until = NULL, updated_at = $6, last_error = $7 \
                 WHERE id = $1 AND state = 'sending' AND lease_owner = $2",
            )
            .bind(f.id)
            .bind(worker)
            .bind(f.state.as_str())
            .bind(store::recipients_json(&f.recipients))
            .bind(f.next_attempt_at.0)
            .bind(f.now.0)
            .bind(last_error)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }))
        .await
    }

    async fn wait(&self, timeout: Duration) {
        self.listen();
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
    }

    async fn list(&self, filter: &Filter) -> Result<Vec<Summary>> {
        let limit = filter
            .limit
            .map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM missive_messages \
             WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR template = $2) \
             ORDER BY id DESC LIMIT $3"
        );
        self.run(Box::pin(async {
            let rows = sqlx::query(&sql)
                .bind(filter.state.map(State::as_str))
                .bind(&filter.template)
                .bind(limit)
                .fetch_all(self.pool())
                .await?;
            rows.iter().map(summary).collect()
        }))
        .await
    }

    async fn show(&self, id: i64) -> Result<Option<Detail>> {
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, tags, envelope_from, recipients, raw, expires_at \
             FROM missive_messages WHERE id = $1"
        );
        self.run(Box::pin(async {
            let Some(row) = sqlx::query(&sql)
                .bind(id)
                .fetch_optional(self.pool())
                .await?
            else {
                return Ok(None);
            };
            let raw: Vec<u8> = row.try_get("raw")?;
            let attempts = sqlx::query(
                "SELECT attempt, at, outcome, code, reply, worker FROM missive_attempts \
                 WHERE message = $1 ORDER BY id",
            )
            .bind(id)
            .fetch_all(self.pool())
            .await?;
            let history = attempts
                .iter()
                .map(|r| {
                    Ok(AttemptRecord {
                        attempt: count(r, "attempt")?,
                        at: Timestamp(r.try_get("at")?),
                        outcome: r.try_get("outcome")?,
                        code: r
                            .try_get::<Option<i32>, _>("code")?
                            .and_then(|c| u16::try_from(c).ok()),
                        reply: r.try_get("reply")?,
                        worker: r.try_get("worker")?,
                    })
                })
                .collect::<sqlx::Result<_>>()?;
            Ok(Some(Detail {
                summary: summary(&row)?,
                tags: json_of(&row, "tags")?,
                envelope_from: row.try_get("envelope_from")?,
                recipients: json_of(&row, "recipients")?,
                headers: headers(&raw),
                size: raw.len(),
                expires_at: Timestamp(row.try_get("expires_at")?),
                history,
            }))
        }))
        .await
    }

    async fn apply(
        &self,
        op: Op,
        id: i64,
        now: Timestamp,
        lifetime: Duration,
    ) -> Result<std::result::Result<(), Option<State>>> {
        self.run(Box::pin(async {
            let mut tx = self.pool().begin().await?;
            let applied = apply_op(&mut tx, op, id, now, lifetime).await?;
            tx.commit().await?;
            Ok(applied)
        }))
        .await
    }

    async fn retry_failed(&self, now: Timestamp, lifetime: Duration) -> Result<u64> {
        self.run(Box::pin(async {
            let mut tx = self.pool().begin().await?;
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM missive_messages WHERE state = 'failed' FOR UPDATE",
            )
            .fetch_all(&mut *tx)
            .await?;
            for &id in &ids {
                // Every id was just locked as failed inside this transaction.
                let _ = apply_op(&mut tx, Op::Retry, id, now, lifetime).await?;
            }
            tx.commit().await?;
            Ok(ids.len() as u64)
        }))
        .await
    }

    async fn stats(&self) -> Result<Stats> {
        self.run(Box::pin(async {
            let rows = sqlx::query(
                "SELECT state, COUNT(*) AS n, MIN(created_at) AS oldest FROM missive_messages GROUP BY state",
            )
            .fetch_all(self.pool())
            .await?;
            let found = rows
                .iter()
                .map(|r| {
                    Ok(StateStats {
                        state: state_of(r, "state")?,
                        count: u64::try_from(r.try_get::<i64, _>("n")?).unwrap_or(0),
                        oldest: r.try_get::<Option<i64>, _>("oldest")?.map(Timestamp),
                    })
                })
                .collect::<sqlx::Result<Vec<_>>>()?;
            Ok(super::complete_stats(found))
        }))
        .await
    }

    async fn purge(&self, cutoff: Timestamp) -> Result<u64> {
        self.run(Box::pin(async {
            sqlx::query(
                "DELETE FROM missive_messages WHERE state IN ('sent', 'cancelled') AND updated_at < $1",
            )
            .bind(cutoff.0)
            .execute(self.pool())
            .await
            .map(|r| r.rows_affected())
        }))
        .await
    }
}

// Shared with the integration tests, which need its items public.
#[cfg(test)]
#[path = "../../tests/support/postgres.rs"]
#[allow(dead_code, unreachable_pub)]
mod test_server;

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_server as server;

    crate::queue::conformance::conformance!({
        let server = server::Postgres::start();
        let store: Arc<dyn Store> = Arc::new(Postgres::open(&server.database("q")).unwrap());
        (server, store)
    });

    use crate::queue::conformance::message;

    fn open(server: &server::Postgres) -> Postgres {
        Postgres::open(&server.database("batch")).unwrap()
    }

    /// Runs `messages` as the batcher runs one batch; their answers, in order.
    async fn batch(store: &Postgres, messages: Vec<NewMessage>) -> Vec<Result<Queued>> {
        store.ready().await.unwrap();
        let (jobs, answers): (Vec<Job>, Vec<_>) = messages
            .into_iter()
            .map(|message| {
                let (answer, answered) = oneshot::channel();
                (Job { message, answer }, answered)
            })
            .unzip();
        store.batcher().run(jobs).await;
        let mut out = Vec::new();
        for answered in answers {
            out.push(answered.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_batch_with_a_key_twice_queues_it_once_and_answers_both_with_the_first() {
        let server = server::Postgres::start();
        let store = open(&server);
        let earlier = store.enqueue(message(0, Some("old"))).await.unwrap();
        let answers = batch(
            &store,
            vec![
                message(1, Some("k")),
                message(2, None),
                message(3, Some("k")),
                message(4, Some("old")),
            ],
        )
        .await;
        let [a, b, c, d] = <[Result<Queued>; 4]>::try_from(answers)
            .ok()
            .unwrap()
            .map(Result::unwrap);
        assert_eq!(store.shared.load(Ordering::Relaxed), 1, "one statement");
        assert!(!a.duplicate && !b.duplicate);
        assert_eq!(a.message_id, "<m1@test>");
        assert_eq!(
            (c.id, &c.message_id, c.duplicate),
            (a.id, &a.message_id, true)
        );
        assert_eq!(
            (d.id, &d.message_id, d.duplicate),
            (earlier.id, &earlier.message_id, true)
        );
        assert!(
            earlier.id < a.id && a.id < b.id,
            "ids in the order of the batch"
        );
        assert_eq!(store.stats().await.unwrap().count(State::Queued), 3);
    }

    #[tokio::test]
    async fn a_message_the_server_refuses_fails_alone_and_its_error_shows_no_content() {
        let server = server::Postgres::start();
        let store = open(&server);
        // Text cannot hold a NUL byte: the server refuses the row, and so the batch.
        let answers = batch(
            &store,
            vec![
                message(0, None),
                message(1, Some("secret\0key")),
                message(2, Some("fine")),
            ],
        )
        .await;
        let e = answers[1].as_ref().err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Storage);
        assert!(e.message().starts_with("queue database postgres://"), "{e}");
        assert!(!e.message().contains("secret"), "{e}");
        assert!(!e.message().contains(server::PASSWORD), "{e}");
        let stored: Vec<i64> = [&answers[0], &answers[2]]
            .map(|a| a.as_ref().unwrap().id)
            .to_vec();
        let claimed = store
            .claim("w", 10, Timestamp::now(), Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), stored);
        assert_eq!(&*claimed[1].raw, &*message(2, None).raw);
    }

    /// Waits for the next wake-up while `enqueue` runs; whether it came within ten seconds.
    async fn wakes(store: &Arc<Postgres>, enqueue: impl std::future::Future<Output = ()>) -> bool {
        let waiting = store.clone();
        let waiter = tokio::spawn(async move {
            let start = std::time::Instant::now();
            waiting.wait(Duration::from_secs(30)).await;
            start.elapsed()
        });
        // The listener connects on the first wait; a NOTIFY before that is not heard.
        tokio::time::sleep(Duration::from_secs(1)).await;
        enqueue.await;
        waiter.await.unwrap() < Duration::from_secs(10)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_enqueue_alone_or_in_a_batch_wakes_waiting_workers() {
        let server = server::Postgres::start();
        let store = Arc::new(open(&server));
        store.ready().await.unwrap();
        assert!(
            wakes(&store, async {
                store.enqueue(message(0, None)).await.unwrap();
            })
            .await
        );
        assert!(
            wakes(&store, async {
                batch(&store, vec![message(1, None), message(2, None)]).await;
            })
            .await
        );
        assert_eq!(store.shared.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_enqueues_share_statements_and_each_gets_its_own_message() {
        let server = server::Postgres::start();
        let store = Arc::new(open(&server));
        let mut tasks = Vec::new();
        for n in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                (n, store.enqueue(message(n, None)).await.unwrap())
            }));
        }
        let mut ids = HashMap::new();
        for t in tasks {
            let (n, queued) = t.await.unwrap();
            assert_eq!(queued.message_id, format!("<m{n}@test>"));
            ids.insert(queued.id, n);
        }
        assert!(store.shared.load(Ordering::Relaxed) >= 1);
        let claimed = store
            .claim("w", 100, Timestamp::now(), Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 64);
        for c in claimed {
            let n = ids[&c.id];
            assert_eq!(c.message_id, format!("<m{n}@test>"));
            assert_eq!(&*c.raw, &*message(n, None).raw);
        }
    }
}
