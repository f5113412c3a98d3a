//! The shared backend: many app instances and workers on one PostgreSQL database.
//! Claims take rows with `FOR UPDATE SKIP LOCKED`, so workers never wait on each other
//! or take the same message; an enqueue sends `NOTIFY missive_queue`, which wakes idle
//! workers at its commit. Concurrent commits share WAL flushes in the server itself.

use std::sync::{Arc, Weak};
use std::time::Duration;

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
    /// A coalesced NOTIFY is on its way.
    notifying: Arc<std::sync::atomic::AtomicBool>,
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
            notifying: Arc::default(),
        })
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

    /// A storage error naming the database. A pool timeout hides why no connection
    /// could be made (refused, wrong password), so one direct attempt finds out.
    async fn explain(&self, e: sqlx::Error) -> Error {
        let cause = match e {
            sqlx::Error::PoolTimedOut => {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    PgConnection::connect_with(&self.options),
                )
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
            format!("queue database {}: {cause}", self.shown),
        )
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

    /// Sends one `NOTIFY` for however many enqueues commit while it is on its way.
    fn notify_soon(&self) {
        if self
            .notifying
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let pool = self.pool().clone();
        let notifying = self.notifying.clone();
        tokio::spawn(async move {
            notifying.store(false, std::sync::atomic::Ordering::Release);
            if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&pool)
                .await
            {
                tracing::debug!(error = %e, "queue wake-up not sent; workers poll instead");
            }
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
        match insert(conn, m, true).await {
            Ok(queued) => Ok(queued),
            Err(e) => Err(self.explain(e).await),
        }
    }
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

/// Inserts the message; `notify` also sends the wake-up inside the same transaction.
async fn insert(
    conn: &mut PgConnection,
    m: NewMessage,
    notify: bool,
) -> std::result::Result<Queued, sqlx::Error> {
    let recipients = store::recipients_json(&store::pending(&m.recipients));
    let tags = serde_json::to_string(&m.tags).unwrap_or_else(|_| "[]".into());
    // ON CONFLICT waits for a concurrent insert of the same key to commit or roll
    // back, so of fifty racing enqueues exactly one inserts.
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO missive_messages (message_id, idempotency_key, template, tags, envelope_from, \
         recipients, raw, state, attempts, next_attempt_at, expires_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', 0, $8, $9, $8, $8) \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
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
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(id) = id {
        if notify {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&mut *conn)
                .await?;
        }
        return Ok(Queued {
            id,
            message_id: m.message_id,
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
        // One statement, committed on its own. NOTIFY is sent afterwards, coalesced:
        // a transaction that notifies holds a database-wide lock through its commit,
        // which would make concurrent enqueues sync one after another instead of
        // sharing WAL flushes.
        let queued = self
            .run(Box::pin(async {
                let mut conn = self.pool().acquire().await?;
                insert(&mut conn, m, false).await
            }))
            .await?;
        if !queued.duplicate {
            self.notify_soon();
        }
        Ok(queued)
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
}
