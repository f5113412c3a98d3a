//! The embedded backend: one SQLite file in WAL mode with `synchronous = FULL`, so a
//! commit is on disk (the WAL fsynced) before anyone is told `Ok`.
//!
//! Group commit: one writer thread owns the connection and runs every operation.
//! Whatever arrived while the previous transaction was being synced goes into the next
//! one, and every caller is answered only after that transaction committed. Sixteen
//! concurrent enqueues cost one fsync, not sixteen. An operation that fails is undone
//! alone: the batch is then run again with a savepoint per operation.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::store::{self, Claimed, Finish, NewMessage, Store};
use super::{
    headers, AttemptRecord, Detail, Filter, Op, Queued, RecipientStatus, State, StateStats, Stats,
    Summary, Timestamp,
};
use crate::error::{Error, ErrorKind, Result};

/// Versioned migrations, applied in order; `missive_schema` records which ran.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_queue.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_compressed_bodies.sql"),
    ),
];

/// `missive_bodies.compression` of a body stored as an LZ4 block after its length.
const LZ4: &str = "lz4";

/// Operations per transaction at most, so one huge burst cannot hold the write
/// lock for long while other processes wait.
const MAX_BATCH: usize = 512;

/// How long a write waits for another process's lock before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// WAL pages after which the checkpointer copies the WAL into the database (SQLite's
/// own default for its automatic checkpoint, about 4 MB at 4 KB pages).
const CHECKPOINT_PAGES: i32 = 1000;

/// WAL pages after which the writer checkpoints itself, between two transactions:
/// only when the checkpointer cannot keep up, so that the WAL stays bounded.
const CHECKPOINT_PAGES_MAX: i32 = 16 * CHECKPOINT_PAGES;

/// One caller's operation for the writer.
trait Operation: Send {
    /// Runs it inside the batch's transaction; whether it succeeded. It may run twice
    /// (see [`run_batch`]): only the last run counts, the first one's writes being
    /// rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Records why it could not run.
    fn fail(&mut self, e: &Error);
    /// Answers the caller once the fate of the transaction it ran in is known.
    fn answer(self: Box<Self>, commit: std::result::Result<(), &Error>);
}

type Job = Box<dyn Operation>;

/// An operation from [`Sqlite::call`].
struct Call<F, T> {
    f: F,
    path: Arc<Path>,
    result: Option<Result<T>>,
    reply: tokio::sync::oneshot::Sender<Result<T>>,
}

impl<F, T> Operation for Call<F, T>
where
    F: FnMut(&Connection) -> rusqlite::Result<T> + Send,
    T: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.f)(conn).map_err(|e| db_error(&self.path, &e));
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn fail(&mut self, e: &Error) {
        self.result = Some(Err(e.clone_shallow()));
    }

    fn answer(self: Box<Self>, commit: std::result::Result<(), &Error>) {
        let this = *self;
        let _ = this.reply.send(match (this.result, commit) {
            (Some(Ok(value)), Ok(())) => Ok(value),
            (Some(Ok(_)) | None, Err(e)) => Err(e.clone_shallow()),
            (Some(Err(e)), _) => Err(e),
            (None, Ok(())) => Err(Error::new(
                ErrorKind::Storage,
                format!(
                    "queue database {}: an operation was committed without running",
                    this.path.display()
                ),
            )),
        });
    }
}

pub(crate) struct Sqlite {
    path: PathBuf,
    jobs: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    wake: Arc<tokio::sync::Notify>,
    /// Transactions committed, which group commit keeps below the operations run.
    #[cfg_attr(not(test), allow(dead_code))] // read by the group-commit test
    commits: Arc<AtomicU64>,
    /// For `list`, `show` and `stats`: in WAL mode a reader neither waits for nor
    /// blocks the writer, so `missive queue list` never stalls a busy worker.
    reader: Arc<std::sync::Mutex<Connection>>,
}

impl Sqlite {
    pub(super) fn open(path: &Path) -> Result<Sqlite> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::new(
                    ErrorKind::Storage,
                    format!(
                        "queue database {}: cannot create its folder: {e}",
                        path.display()
                    ),
                )
            })?;
        }
        let mut conn = open_connection(path)?;
        // The hook replaces SQLite's automatic checkpoint, which would run inside the
        // COMMIT and make every caller of that batch wait for it.
        let wal_pages = Arc::new(AtomicI32::new(0));
        let seen = wal_pages.clone();
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages| {
            seen.store(pages, Ordering::Relaxed);
            Ok(())
        }))
        .map_err(|e| db_error(path, &e))?;
        let checkpoints = Connection::open(path)
            .and_then(|c| c.busy_timeout(BUSY_TIMEOUT).map(|()| c))
            .and_then(|c| c.pragma_update(None, "synchronous", "FULL").map(|()| c))
            .map_err(|e| db_error(path, &e))?;
        let reader = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| c.busy_timeout(BUSY_TIMEOUT).map(|()| c))
        .map_err(|e| db_error(path, &e))?;
        let spawn_failed = |what: &str, e: std::io::Error| {
            Error::new(
                ErrorKind::Storage,
                format!(
                    "queue database {}: cannot start its {what}: {e}",
                    path.display()
                ),
            )
        };
        // Capacity one: requests that come while a checkpoint runs are one request.
        let (wanted, checkpoint_wanted) = mpsc::sync_channel::<()>(1);
        let copied = Arc::new(AtomicBool::new(false));
        let bulk_copied = copied.clone();
        let shown = path.to_path_buf();
        std::thread::Builder::new()
            .name("missive-queue-checkpoint".into())
            .spawn(move || checkpointer(&checkpoints, &checkpoint_wanted, &bulk_copied, &shown))
            .map_err(|e| spawn_failed("checkpointer", e))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let shown = path.to_path_buf();
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        let wal = Wal {
            pages: wal_pages,
            wanted,
            copied,
        };
        std::thread::Builder::new()
            .name("missive-queue-sqlite".into())
            .spawn(move || writer(conn, rx, &shown, &counter, &wal))
            .map_err(|e| spawn_failed("writer", e))?;
        Ok(Sqlite {
            path: path.to_path_buf(),
            jobs: std::sync::Mutex::new(Some(tx)),
            wake: Arc::new(tokio::sync::Notify::new()),
            commits,
            reader: Arc::new(std::sync::Mutex::new(reader)),
        })
    }

    /// Runs a read on the reader connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let reader = self.reader.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| {
                Error::new(
                    ErrorKind::Storage,
                    format!("queue database {}: a read failed earlier", path.display()),
                )
            })?;
            // One snapshot for the whole read.
            let tx = conn
                .unchecked_transaction()
                .map_err(|e| db_error(&path, &e))?;
            let value = f(&tx).map_err(|e| db_error(&path, &e))?;
            drop(tx);
            Ok(value)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Storage, format!("queue read task failed: {e}")))?
    }

    #[cfg(test)]
    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `f` in the writer's next transaction; answers after it committed. `f` may
    /// run twice, the first run rolled back (see [`run_batch`]), so it must not consume
    /// what it captured.
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnMut(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = tokio::sync::oneshot::channel::<Result<T>>();
        let job: Job = Box::new(Call {
            f,
            path: self.path.as_path().into(),
            result: None,
            reply,
        });
        let sent = self
            .jobs
            .lock()
            .ok()
            .and_then(|jobs| jobs.as_ref().map(|tx| tx.send(job).is_ok()));
        if sent != Some(true) {
            return Err(self.gone());
        }
        answer.await.map_err(|_| self.gone())?
    }

    fn gone(&self) -> Error {
        Error::new(
            ErrorKind::Storage,
            format!(
                "queue database {}: its writer thread stopped",
                self.path.display()
            ),
        )
    }
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        // Closing the channel ends the writer once it has answered what is queued.
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
    }
}

fn open_connection(path: &Path) -> Result<Connection> {
    let fail = |e: rusqlite::Error| db_error(path, &e);
    let mut conn = Connection::open(path).map_err(fail)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
    // The first statement that reads the file: a corrupt or foreign file fails here.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(fail)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::new(
            ErrorKind::Storage,
            format!(
                "queue database {}: cannot switch to WAL mode (got `{mode}`)",
                path.display()
            ),
        ));
    }
    // In WAL mode NORMAL syncs only at checkpoints, so the last commits could be lost
    // with the machine; FULL syncs the WAL on every commit, which group commit makes
    // affordable.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(fail)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(fail)?;
    migrate(&mut conn).map_err(|e| match e {
        Migration::Db(e) => fail(e),
        Migration::Newer(v) => Error::new(
            ErrorKind::Storage,
            format!(
                "queue database {}: schema version {v} is newer than this missive knows ({}); upgrade missive",
                path.display(),
                MIGRATIONS.len()
            ),
        ),
    })?;
    Ok(conn)
}

enum Migration {
    Db(rusqlite::Error),
    Newer(i64),
}

fn migrate(conn: &mut Connection) -> std::result::Result<(), Migration> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(Migration::Db)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS missive_schema (
             version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .map_err(Migration::Db)?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM missive_schema",
            [],
            |r| r.get(0),
        )
        .map_err(Migration::Db)?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > latest {
        return Err(Migration::Newer(current));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.execute_batch(sql).map_err(Migration::Db)?;
        tx.execute(
            "INSERT INTO missive_schema (version, applied_at) VALUES (?1, ?2)",
            params![version, Timestamp::now().0],
        )
        .map_err(Migration::Db)?;
    }
    tx.commit().map_err(Migration::Db)
}

fn db_error(path: &Path, e: &rusqlite::Error) -> Error {
    let hint = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            " (another process holds its lock)"
        }
        Some(rusqlite::ErrorCode::DiskFull) => " (the disk is full; nothing was stored)",
        Some(rusqlite::ErrorCode::SystemIoFailure) => {
            " (a read or write failed: the disk may be full or failing; nothing was stored)"
        }
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            " (the file is not a missive queue, or it is damaged)"
        }
        _ => "",
    };
    Error::new(
        ErrorKind::Storage,
        format!("queue database {}: {e}{hint}", path.display()),
    )
}

/// What the writer knows of the WAL, and how it asks for a checkpoint.
struct Wal {
    /// Pages in the WAL after the last commit (from the WAL hook).
    pages: Arc<AtomicI32>,
    wanted: mpsc::SyncSender<()>,
    /// The checkpointer copied the bulk; the writer copies the rest.
    copied: Arc<AtomicBool>,
}

impl Wal {
    fn committed(&self, conn: &Connection, path: &Path) {
        let pages = self.pages.load(Ordering::Relaxed);
        // Between two transactions, after the callers were answered: with no commit
        // coming in meanwhile this pass completes, and the next transaction starts
        // the WAL over.
        if self.copied.swap(false, Ordering::AcqRel) || pages >= CHECKPOINT_PAGES_MAX {
            if let Err(e) = checkpoint(conn) {
                tracing::warn!(database = %path.display(), error = %e, "queue checkpoint failed");
            }
        } else if pages >= CHECKPOINT_PAGES {
            let _ = self.wanted.try_send(());
        }
    }
}

/// Copies what the WAL holds into the database without blocking the writer.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

/// The checkpointer thread, on its own connection, so that no COMMIT runs a
/// checkpoint (SQLite's automatic one would, and every caller of that batch would
/// wait for it). It copies the bulk while the writer goes on; the writer then copies
/// the few pages committed meanwhile itself, between two transactions, so that its
/// next one writes the WAL from its beginning again, overwriting the same file
/// instead of growing it (an fsync after overwriting costs about half one after
/// appending). Passes from this thread alone would seldom find the WAL fully copied
/// while commits keep coming, and a blocking one would starve behind the writer.
fn checkpointer(conn: &Connection, wanted: &mpsc::Receiver<()>, copied: &AtomicBool, path: &Path) {
    while wanted.recv().is_ok() {
        match checkpoint(conn) {
            Ok(()) => copied.store(true, Ordering::Release),
            Err(e) => {
                tracing::warn!(database = %path.display(), error = %e, "queue checkpoint failed");
            }
        }
    }
}

/// The writer thread: batches whatever is waiting into one transaction.
fn writer(
    conn: Connection,
    jobs: mpsc::Receiver<Job>,
    path: &Path,
    commits: &AtomicU64,
    wal: &Wal,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if run_batch(&conn, batch, path) {
            commits.fetch_add(1, Ordering::Relaxed);
            wal.committed(&conn, path);
        }
    }
}

/// Runs a statement that takes no parameters, parsed once per connection: these run
/// for every operation.
fn statement(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Whether the batch committed.
///
/// Operations almost never fail one by one (a full disk or a lock fails the whole
/// transaction), so the batch first runs as it is. Only when one fails is it rolled
/// back and run again with a savepoint per operation, so that the failing ones are
/// undone alone. A savepoint for every operation would cost a fifth of the writer's
/// time: its sub-journal copies each page the operation touches again, and freeing that
/// copy makes the allocator hand memory back to the system, a TLB flush on every core.
fn run_batch(conn: &Connection, mut batch: Vec<Job>, path: &Path) -> bool {
    let refuse = |batch: Vec<Job>, e: &rusqlite::Error| {
        let e = db_error(path, e);
        for job in batch {
            job.answer(Err(&e));
        }
        false
    };
    if let Err(e) = statement(conn, "BEGIN IMMEDIATE") {
        return refuse(batch, &e);
    }
    if !batch.iter_mut().all(|job| job.run(conn)) {
        if let Err(e) =
            statement(conn, "ROLLBACK").and_then(|()| statement(conn, "BEGIN IMMEDIATE"))
        {
            return refuse(batch, &e);
        }
        for job in &mut batch {
            if let Err(e) = statement(conn, "SAVEPOINT op") {
                job.fail(&db_error(path, &e));
                continue;
            }
            let ended = if job.run(conn) {
                statement(conn, "RELEASE op")
            } else {
                conn.execute_batch("ROLLBACK TO op; RELEASE op")
            };
            if let Err(e) = ended {
                tracing::error!(database = %path.display(), error = %e, "queue savepoint failed");
            }
        }
    }
    match statement(conn, "COMMIT") {
        Ok(()) => {
            batch.into_iter().for_each(|job| job.answer(Ok(())));
            true
        }
        Err(e) => {
            let e = db_error(path, &e);
            let _ = conn.execute_batch("ROLLBACK");
            batch.into_iter().for_each(|job| job.answer(Err(&e)));
            false
        }
    }
}

/// A message's bytes as stored, and how (`missive_bodies.compression`): LZ4 when that
/// makes them smaller.
fn pack(raw: &bytes::Bytes) -> (bytes::Bytes, Option<&'static str>) {
    let packed = lz4_flex::compress_prepend_size(raw);
    if packed.len() < raw.len() {
        (packed.into(), Some(LZ4))
    } else {
        (raw.clone(), None)
    }
}

/// A message's bytes from `stored` (column `column`) and its `compression`.
fn unpack(
    stored: Vec<u8>,
    compression: Option<String>,
    column: usize,
) -> rusqlite::Result<Vec<u8>> {
    let damaged = |detail: String| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Blob,
            Box::new(std::io::Error::other(detail)),
        )
    };
    match compression.as_deref() {
        None => Ok(stored),
        Some(LZ4) => {
            let (size, block) = stored
                .split_first_chunk::<4>()
                .ok_or_else(|| damaged("an LZ4 body without its length".into()))?;
            let size = u32::from_le_bytes(*size) as usize;
            // LZ4 expands at most 255 times: a larger length is damage, not a reason to
            // allocate gigabytes.
            if size > block.len().saturating_mul(255) + 16 {
                return Err(damaged(format!(
                    "an LZ4 body of {} bytes says it holds {size}",
                    block.len()
                )));
            }
            let mut raw = vec![0; size];
            let written = lz4_flex::block::decompress_into(block, &mut raw)
                .map_err(|e| damaged(format!("an LZ4 body does not decompress: {e}")))?;
            if written != size {
                return Err(damaged(format!(
                    "an LZ4 body holds {written} bytes, not the {size} it says"
                )));
            }
            Ok(raw)
        }
        Some(other) => Err(damaged(format!(
            "a body stored with `{other}`, which this missive does not know"
        ))),
    }
}

const SUMMARY_COLUMNS: &str =
    "id, message_id, template, state, attempts, created_at, next_attempt_at, last_error";

fn summary(row: &rusqlite::Row<'_>) -> rusqlite::Result<Summary> {
    let state: String = row.get(3)?;
    Ok(Summary {
        id: row.get(0)?,
        message_id: row.get(1)?,
        template: row.get(2)?,
        state: parse_state(&state, 3)?,
        attempts: row.get(4)?,
        created_at: Timestamp(row.get(5)?),
        next_attempt_at: Timestamp(row.get(6)?),
        last_error: row.get(7)?,
    })
}

fn parse_state(text: &str, column: usize) -> rusqlite::Result<State> {
    text.parse::<State>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            Box::new(std::io::Error::other(e.message().to_string())),
        )
    })
}

fn json_column<T: serde::de::DeserializeOwned>(text: &str, column: usize) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn claim_rows(
    conn: &Connection,
    worker: &str,
    limit: usize,
    now: Timestamp,
    lease: Duration,
) -> rusqlite::Result<Vec<Claimed>> {
    let pick = |sql: &str, n: usize, taken: &[i64]| -> rusqlite::Result<Vec<i64>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(
            params![now.0, i64::try_from(n + taken.len()).unwrap_or(i64::MAX)],
            |r| r.get::<_, i64>(0),
        )?;
        let mut ids = Vec::new();
        for id in rows {
            let id = id?;
            if !taken.contains(&id) && ids.len() < n {
                ids.push(id);
            }
        }
        Ok(ids)
    };
    const NEW: &str = "SELECT id FROM missive_messages WHERE state = 'queued' \
                       AND next_attempt_at <= ?1 ORDER BY next_attempt_at, id LIMIT ?2";
    const RETRY: &str = "SELECT id FROM missive_messages WHERE state IN ('deferred', 'sending') \
                         AND next_attempt_at <= ?1 ORDER BY next_attempt_at, id LIMIT ?2";
    // Half the batch for new mail, the rest for retries, then top up with either.
    let mut ids = pick(NEW, limit.div_ceil(2), &[])?;
    ids.extend(pick(RETRY, limit - ids.len(), &ids)?);
    let more = limit - ids.len();
    ids.extend(pick(NEW, more, &ids)?);
    let until = now.plus(lease);
    let mut claimed = Vec::with_capacity(ids.len());
    for id in ids {
        let (state, owner, row) = conn
            .prepare_cached(
                "SELECT state, lease_owner, message_id, template, tags, envelope_from, \
                 recipients, attempts, expires_at FROM missive_messages WHERE id = ?1",
            )?
            .query_row([id], |r| {
                let state: String = r.get(0)?;
                let owner: Option<String> = r.get(1)?;
                let tags: String = r.get(4)?;
                let recipients: String = r.get(6)?;
                let row = Claimed {
                    id,
                    message_id: r.get(2)?,
                    template: r.get(3)?,
                    tags: json_column(&tags, 4)?,
                    envelope_from: r.get(5)?,
                    recipients: json_column(&recipients, 6)?,
                    raw: bytes::Bytes::new(),
                    attempt: r.get::<_, u32>(7)? + 1,
                    expires_at: Timestamp(r.get(8)?),
                };
                Ok((state, owner, row))
            })?;
        if state == "sending" {
            conn.execute(
                "INSERT INTO missive_attempts (message, attempt, at, outcome, code, reply, worker) \
                 VALUES (?1, ?2, ?3, 'unknown', NULL, ?4, ?5)",
                params![
                    id,
                    row.attempt - 1,
                    now.0,
                    "the worker stopped renewing its lease mid-attempt; it may have been delivered",
                    owner.unwrap_or_default()
                ],
            )?;
        }
        // Read above rather than with `RETURNING`, which SQLite runs as a trigger, with a
        // statement journal that copies every page the update touches.
        conn.prepare_cached(
            "UPDATE missive_messages SET state = 'sending', attempts = ?5, \
             lease_owner = ?2, lease_until = ?3, next_attempt_at = ?3, updated_at = ?4 \
             WHERE id = ?1",
        )?
        .execute(params![id, worker, until.0, now.0, row.attempt])?;
        let raw = conn
            .prepare_cached("SELECT raw, compression FROM missive_bodies WHERE message = ?1")?
            .query_row([id], |r| unpack(r.get(0)?, r.get(1)?, 0))?;
        claimed.push(Claimed {
            raw: raw.into(),
            ..row
        });
    }
    Ok(claimed)
}

#[async_trait::async_trait]
impl Store for Sqlite {
    async fn enqueue(&self, m: NewMessage) -> Result<Queued> {
        // Here rather than on the writer, which runs one operation at a time.
        let (body, compression) = pack(&m.raw);
        let queued = self
            .call(move |conn| {
                if let Some(key) = &m.idempotency_key {
                    let existing = conn
                        .prepare_cached(
                            "SELECT id, message_id FROM missive_messages WHERE idempotency_key = ?1",
                        )?
                        .query_row(
                            [key],
                            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                        )
                        .optional()?;
                    if let Some((id, message_id)) = existing {
                        return Ok(Queued {
                            id,
                            message_id,
                            duplicate: true,
                        });
                    }
                }
                let recipients = store::recipients_json(&store::pending(&m.recipients));
                let tags = serde_json::to_string(&m.tags).unwrap_or_else(|_| "[]".into());
                // Not `RETURNING id`: SQLite runs RETURNING as a trigger, and a statement
                // with a trigger keeps a statement journal, a copy of every page it
                // touches, which costs the writer a sixth of its time.
                conn.prepare_cached(
                    "INSERT INTO missive_messages (message_id, idempotency_key, template, tags, \
                     envelope_from, recipients, state, attempts, next_attempt_at, expires_at, \
                     created_at, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', 0, ?7, ?8, ?7, ?7)",
                )?.execute(
                    params![
                        m.message_id,
                        m.idempotency_key,
                        m.template,
                        tags,
                        m.envelope_from,
                        recipients,
                        m.now.0,
                        m.expires_at.0
                    ],
                )?;
                let id = conn.last_insert_rowid();
                conn.prepare_cached(
                    "INSERT INTO missive_bodies (message, raw, compression) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![id, &body[..], compression])?;
                Ok(Queued {
                    id,
                    message_id: m.message_id.clone(),
                    duplicate: false,
                })
            })
            .await?;
        if !queued.duplicate {
            self.wake.notify_waiters();
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
        let worker = worker.to_string();
        self.call(move |conn| claim_rows(conn, &worker, limit, now, lease))
            .await
    }

    async fn renew(&self, worker: &str, ids: &[i64], until: Timestamp) -> Result<()> {
        let worker = worker.to_string();
        let ids = ids.to_vec();
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "UPDATE missive_messages SET lease_until = ?3, next_attempt_at = ?3 \
                 WHERE id = ?1 AND state = 'sending' AND lease_owner = ?2",
            )?;
            for id in &ids {
                stmt.execute(params![id, worker, until.0])?;
            }
            Ok(())
        })
        .await
    }

    async fn finish(&self, worker: &str, f: Finish) -> Result<()> {
        let worker = worker.to_string();
        let wake = f.state == State::Queued;
        self.call(move |conn| {
            conn.prepare_cached(
                "INSERT INTO missive_attempts (message, attempt, at, outcome, code, reply, worker) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?.execute(
                params![f.id, f.attempt, f.now.0, f.outcome, f.code, f.reply, worker],
            )?;
            let last_error = (f.state != State::Sent).then_some(&f.reply);
            conn.prepare_cached(
                "UPDATE missive_messages SET state = ?3, recipients = ?4, next_attempt_at = ?5, \
                 lease_owner = NULL, lease_until = NULL, updated_at = ?6, last_error = ?7 \
                 WHERE id = ?1 AND state = 'sending' AND lease_owner = ?2",
            )?
            .execute(params![
                f.id,
                worker,
                f.state.as_str(),
                store::recipients_json(&f.recipients),
                f.next_attempt_at.0,
                f.now.0,
                last_error
            ])?;
            Ok(())
        })
        .await?;
        if wake {
            self.wake.notify_waiters();
        }
        Ok(())
    }

    async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
    }

    async fn list(&self, filter: &Filter) -> Result<Vec<Summary>> {
        let filter = filter.clone();
        self.read(move |conn| {
            let limit = filter
                .limit
                .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM missive_messages \
                 WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR template = ?2) \
                 ORDER BY id DESC LIMIT ?3"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![filter.state.map(State::as_str), filter.template, limit],
                summary,
            )?;
            rows.collect()
        })
        .await
    }

    async fn show(&self, id: i64) -> Result<Option<Detail>> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS}, tags, envelope_from, recipients, \
                 raw, compression, expires_at \
                 FROM missive_messages LEFT JOIN missive_bodies ON message = id WHERE id = ?1"
            );
            let detail = conn
                .query_row(&sql, [id], |r| {
                    let tags: String = r.get(8)?;
                    let recipients: String = r.get(10)?;
                    let raw = unpack(r.get(11)?, r.get(12)?, 11)?;
                    Ok(Detail {
                        summary: summary(r)?,
                        tags: json_column(&tags, 8)?,
                        envelope_from: r.get(9)?,
                        recipients: json_column(&recipients, 10)?,
                        headers: headers(&raw),
                        size: raw.len(),
                        expires_at: Timestamp(r.get(13)?),
                        history: Vec::new(),
                    })
                })
                .optional()?;
            let Some(mut detail) = detail else {
                return Ok(None);
            };
            let mut stmt = conn.prepare_cached(
                "SELECT attempt, at, outcome, code, reply, worker FROM missive_attempts \
                 WHERE message = ?1 ORDER BY id",
            )?;
            let history = stmt.query_map([id], |r| {
                Ok(AttemptRecord {
                    attempt: r.get(0)?,
                    at: Timestamp(r.get(1)?),
                    outcome: r.get(2)?,
                    code: r.get(3)?,
                    reply: r.get(4)?,
                    worker: r.get(5)?,
                })
            })?;
            detail.history = history.collect::<rusqlite::Result<_>>()?;
            Ok(Some(detail))
        })
        .await
    }

    async fn apply(
        &self,
        op: Op,
        id: i64,
        now: Timestamp,
        lifetime: Duration,
    ) -> Result<std::result::Result<(), Option<State>>> {
        let applied = self
            .call(move |conn| apply_op(conn, op, id, now, lifetime))
            .await?;
        if applied.is_ok() && op.to_state() == State::Queued {
            self.wake.notify_waiters();
        }
        Ok(applied)
    }

    async fn retry_failed(&self, now: Timestamp, lifetime: Duration) -> Result<u64> {
        let count = self
            .call(move |conn| {
                let ids: Vec<i64> = conn
                    .prepare("SELECT id FROM missive_messages WHERE state = 'failed'")?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                for &id in &ids {
                    // Every id was just read as failed inside this transaction.
                    let _ = apply_op(conn, Op::Retry, id, now, lifetime)?;
                }
                Ok(ids.len() as u64)
            })
            .await?;
        if count > 0 {
            self.wake.notify_waiters();
        }
        Ok(count)
    }

    async fn stats(&self) -> Result<Stats> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT state, COUNT(*), MIN(created_at) FROM missive_messages GROUP BY state",
            )?;
            let rows = stmt.query_map([], |r| {
                let state: String = r.get(0)?;
                Ok(StateStats {
                    state: parse_state(&state, 0)?,
                    count: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                    oldest: r.get::<_, Option<i64>>(2)?.map(Timestamp),
                })
            })?;
            let found: Vec<StateStats> = rows.collect::<rusqlite::Result<_>>()?;
            Ok(super::complete_stats(found))
        })
        .await
    }

    async fn purge(&self, cutoff: Timestamp) -> Result<u64> {
        self.call(move |conn| {
            let n = conn.execute(
                "DELETE FROM missive_messages WHERE state IN ('sent', 'cancelled') AND updated_at < ?1",
                [cutoff.0],
            )?;
            Ok(n as u64)
        })
        .await
    }
}

fn apply_op(
    conn: &Connection,
    op: Op,
    id: i64,
    now: Timestamp,
    lifetime: Duration,
) -> rusqlite::Result<std::result::Result<(), Option<State>>> {
    let row: Option<(String, String)> = conn
        .query_row(
            "SELECT state, recipients FROM missive_messages WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((state, recipients)) = row else {
        return Ok(Err(None));
    };
    let state = parse_state(&state, 0)?;
    if !op.applies_to().contains(&state) {
        return Ok(Err(Some(state)));
    }
    let mut recipients: Vec<RecipientStatus> = json_column(&recipients, 1)?;
    let reopen = op == Op::Retry && state == State::Failed;
    if reopen {
        store::reopen_failed(&mut recipients);
    }
    conn.execute(
        "UPDATE missive_messages SET state = ?2, recipients = ?3, updated_at = ?4, \
         next_attempt_at = CASE WHEN ?2 = 'queued' THEN ?4 ELSE next_attempt_at END, \
         expires_at = CASE WHEN ?5 THEN ?6 ELSE expires_at END \
         WHERE id = ?1",
        params![
            id,
            op.to_state().as_str(),
            store::recipients_json(&recipients),
            now.0,
            reopen,
            now.plus(lifetime).0
        ],
    )?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::conformance::message;

    fn open(dir: &tempfile::TempDir) -> Arc<Sqlite> {
        Arc::new(Sqlite::open(&dir.path().join("sub/q.db")).unwrap())
    }

    crate::queue::conformance::conformance!({
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = open(&dir);
        (dir, store)
    });

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_enqueues_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let before = store.commits();
        let mut tasks = Vec::new();
        for n in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.enqueue(message(n, None)).await
            }));
        }
        for t in tasks {
            assert!(!t.await.unwrap().unwrap().duplicate);
        }
        let commits = store.commits() - before;
        assert!(commits < 64, "64 enqueues took {commits} commits");
        assert_eq!(store.stats().await.unwrap().count(State::Queued), 64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_operation_that_fails_midway_is_undone_alone_and_its_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        // Holds the writer, so that everything below lands in one batch.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let hold = {
            let store = store.clone();
            let held = std::sync::Mutex::new(held);
            tokio::spawn(async move {
                store
                    .call(move |_| {
                        let _ = held.lock().unwrap().recv();
                        Ok(())
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut enqueues = Vec::new();
        for n in 0..8 {
            let store = store.clone();
            enqueues.push(tokio::spawn(async move {
                store.enqueue(message(n, None)).await
            }));
        }
        // Writes a row, then fails: its row must not stay.
        let failing = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .call(|conn| {
                        conn.execute(
                            "INSERT INTO missive_messages (message_id, template, tags, recipients, \
                             state, next_attempt_at, expires_at, created_at, updated_at) \
                             VALUES ('<half@done>', 't', '[]', '[]', 'queued', 0, 0, 0, 0)",
                            [],
                        )?;
                        conn.execute("INSERT INTO no_such_table VALUES (1)", [])
                    })
                    .await
            })
        };
        for n in 8..16 {
            let store = store.clone();
            enqueues.push(tokio::spawn(async move {
                store.enqueue(message(n, None)).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = store.commits();
        release.send(()).unwrap();
        hold.await.unwrap().unwrap();
        let err = failing.await.unwrap().unwrap_err();
        assert!(err.message().contains("no_such_table"), "{err}");
        let mut ids = Vec::new();
        for e in enqueues {
            ids.push(e.await.unwrap().unwrap().id);
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 16);
        // The held operation's batch, then the one with every other operation.
        assert_eq!(store.commits() - before, 2);
        let rows: Vec<String> = column(
            &store,
            "SELECT message_id FROM missive_messages ORDER BY id",
        )
        .await;
        assert_eq!(rows.len(), 16, "{rows:?}");
        assert!(!rows.iter().any(|id| id == "<half@done>"), "{rows:?}");
        let bodies: i64 = store
            .read(|conn| conn.query_row("SELECT COUNT(*) FROM missive_bodies", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(bodies, 16);
    }

    /// The first column of every row `sql` selects, read through the store's reader.
    async fn column<T: rusqlite::types::FromSql + Send + 'static>(
        store: &Sqlite,
        sql: &'static str,
    ) -> Vec<T> {
        store
            .read(move |conn| conn.prepare(sql)?.query_map([], |r| r.get(0))?.collect())
            .await
            .unwrap()
    }

    /// Bytes that LZ4 cannot shrink.
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u32 = 1;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (x >> 24) as u8
            })
            .collect()
    }

    /// `compression` and length as stored, for each message in order.
    async fn stored(store: &Sqlite) -> Vec<(Option<String>, usize)> {
        store
            .read(|conn| {
                conn.prepare(
                    "SELECT compression, length(raw) FROM missive_bodies ORDER BY message",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as usize)))?
                .collect()
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn bodies_are_stored_compressed_when_that_is_smaller_and_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut mail = message(1, None);
        let html = "<td style=\"padding: 8px; color: #333\">Line</td>\r\n".repeat(300);
        mail.raw = format!("Message-ID: <m1@test>\r\nSubject: hi\r\n\r\n{html}")
            .into_bytes()
            .into();
        let sent = mail.raw.clone();
        store.enqueue(mail).await.unwrap();
        // Noise does not shrink: stored as it is.
        let mut random = message(2, None);
        let mut bytes = b"Message-ID: <m2@test>\r\n\r\n".to_vec();
        bytes.extend(noise(4000));
        random.raw = bytes.clone().into();
        store.enqueue(random).await.unwrap();
        let rows = stored(&store).await;
        assert_eq!(rows[0].0.as_deref(), Some("lz4"));
        assert!(
            rows[0].1 * 5 < sent.len(),
            "{} of {}",
            rows[0].1,
            sent.len()
        );
        assert_eq!(rows[1], (None, bytes.len()));
        let now = Timestamp::now();
        let claimed = store
            .claim("w", 10, now, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(claimed[0].raw, sent);
        assert_eq!(claimed[1].raw, bytes);
        let detail = store.show(claimed[0].id).await.unwrap().unwrap();
        assert_eq!(detail.size, sent.len());
        assert_eq!(detail.headers[0].1, "<m1@test>");
    }

    #[tokio::test]
    async fn a_version_1_database_is_migrated_and_its_queued_mail_delivered_as_stored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/q.db");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let raw = b"Message-ID: <old@test>\r\nSubject: from version 1\r\n\r\nbody\r\n";
        {
            let v1 = Connection::open(&path).unwrap();
            v1.execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE missive_schema (
                     version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);",
            )
            .unwrap();
            v1.execute_batch(MIGRATIONS[0].1).unwrap();
            v1.execute(
                "INSERT INTO missive_schema (version, applied_at) VALUES (1, 0)",
                [],
            )
            .unwrap();
            v1.execute(
                "INSERT INTO missive_messages (message_id, template, tags, recipients, state, \
                 next_attempt_at, expires_at, created_at, updated_at) \
                 VALUES ('<old@test>', 'welcome', '[]', \
                 '[{\"address\":\"a@example.test\",\"state\":\"pending\"}]', 'queued', 0, \
                 ?1, 0, 0)",
                [Timestamp::now().plus(Duration::from_secs(3600)).0],
            )
            .unwrap();
            v1.execute(
                "INSERT INTO missive_bodies (message, raw) VALUES (last_insert_rowid(), ?1)",
                [&raw[..]],
            )
            .unwrap();
        }
        let store = open(&dir);
        store.enqueue(message(2, None)).await.unwrap();
        let versions: Vec<i64> = column(
            &store,
            "SELECT version FROM missive_schema ORDER BY version",
        )
        .await;
        assert_eq!(versions, [1, 2]);
        let claimed = store
            .claim("w", 10, Timestamp::now(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2);
        assert_eq!(claimed[0].message_id, "<old@test>");
        assert_eq!(&claimed[0].raw[..], &raw[..]);
        assert_eq!(claimed[1].raw, message(2, None).raw);
    }

    #[tokio::test]
    async fn a_version_1_body_reads_back_and_a_damaged_one_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.enqueue(message(1, None)).await.unwrap();
        store.enqueue(message(2, None)).await.unwrap();
        store.enqueue(message(3, None)).await.unwrap();
        let path = dir.path().join("sub/q.db");
        let other = Connection::open(&path).unwrap();
        other
            .execute_batch(
                "UPDATE missive_bodies SET compression = NULL, raw = CAST('Subject: v1' AS BLOB) \
                     WHERE message = 1; \
                 UPDATE missive_bodies SET compression = 'lz4', \
                     raw = X'FFFFFF7F0102' WHERE message = 2; \
                 UPDATE missive_bodies SET compression = 'zstd' WHERE message = 3;",
            )
            .unwrap();
        let one = store.show(1).await.unwrap().unwrap();
        assert_eq!(one.size, "Subject: v1".len());
        for (id, says) in [(2, "says it holds"), (3, "`zstd`")] {
            let err = store.show(id).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Storage);
            assert!(err.message().contains("q.db"), "{err}");
            assert!(err.message().contains(says), "{err}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checkpointer_copies_the_wal_into_the_database_and_the_wal_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let body = noise(24 * 1024);
        // 800 bodies of 24 KB: about 5,000 WAL pages, five checkpoints' worth.
        for round in 0..50 {
            let mut tasks = Vec::new();
            for n in 0..16 {
                let store = store.clone();
                let mut m = message(round * 16 + n, None);
                m.raw = body.clone().into();
                tasks.push(tokio::spawn(async move { store.enqueue(m).await }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        }
        let size = |name: &str| {
            std::fs::metadata(dir.path().join("sub").join(name)).map_or(0, |m| m.len())
        };
        // Less than one checkpoint's worth may still be in the WAL only.
        let bound = 3 * CHECKPOINT_PAGES as u64 * 4096;
        let copied = 800 * 24 * 1024 - bound;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while size("q.db") < copied && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (db, wal) = (size("q.db"), size("q.db-wal"));
        assert!(db >= copied, "database file: {db} bytes");
        // Without checkpoints from the other thread it would hold everything written.
        assert!(wal < bound, "WAL: {wal} bytes");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_queue_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let err = Sqlite::open(&path).err().expect("garbage refused");
        assert_eq!(err.kind(), ErrorKind::Storage);
        assert!(err.message().contains(&path.display().to_string()), "{err}");
        assert!(err.message().contains("not a missive queue"), "{err}");
    }

    #[tokio::test]
    async fn a_locked_database_fails_the_enqueue_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let other = Connection::open(dir.path().join("sub/q.db")).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let err = store.enqueue(message(1, None)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Storage);
        assert!(err.message().contains("q.db"), "{err}");
        assert!(
            err.message().contains("another process holds its lock"),
            "{err}"
        );
        other.execute_batch("ROLLBACK").unwrap();
        assert_eq!(store.stats().await.unwrap().count(State::Queued), 0);
    }
}
