//! The one-machine stores: the event log and the read models in one SQLite file (WAL).
//!
//! Writes go through one dedicated writer thread per [`SqliteDb`], which owns the write
//! connection and commits group-wise (group commit): it takes the requests waiting (up to
//! [`MAX_GROUP`], lingering up to 1 ms for more under steady load) and commits them in one
//! transaction, each inside its own savepoint, so a batch that fails (conflict, duplicate)
//! is rolled back alone while the others commit. Callers get their answer only once the
//! group has committed. A second thread checkpoints the WAL into the database file, off the
//! writer's path. Reads run on a small pool of read connections on tokio's blocking threads.
//!
//! Durability is `synchronous = NORMAL`: a process that dies loses nothing that was
//! answered; a power cut may lose the last commits before a checkpoint (never half of one).
//!
//! One process owns a data directory. The writer caches each contact's highest sequence
//! number; a second writer on the same file (another process, or a second [`SqliteDb`])
//! cannot make it accept a wrong append, since every conflict is checked again against the
//! table and `UNIQUE(contact_id, seq)` refuses a taken number, but it can make appends that
//! would have succeeded fail once with a conflict.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params, params_from_iter};
use tokio::sync::oneshot;

use schema::{UNFINISHED, contact_from_row, create_schema, event_from_row, get_uint, time_text};
use writer::{Request, Writer};

use super::{
    Appended, ContactCursor, ContactFilter, ContactRow, EventStore, Positioned, ProjectionStore,
    SeqRange, StoreError, check_batch,
};
use crate::events::StoredEvent;

/// Schema version kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 3;

/// Most requests (append batches, projection saves) committed in one transaction.
pub const MAX_GROUP: usize = 512;

/// Reads running at once, each on its own pooled connection. More would each open (and
/// drop) a connection, parsing the schema and preparing statements again: a burst of
/// contacts loading their logs waits for a pooled connection instead.
const READ_POOL: usize = 4;

/// Page cache of the write connection, KiB: room for every page one group dirties, so that
/// none is written (and read back) before the commit.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// WAL size (frames of one page) past which the checkpointer makes the writer start the WAL
/// over; also the size (in 4 KiB pages) the WAL file is cut back to.
const WAL_RESTART_FRAMES: i64 = 16 * 1024;

/// Longest a group waits for more requests (see `Writer::run`).
const LINGER: Duration = Duration::from_millis(1);

/// Contacts whose highest sequence number the writer remembers before it starts afresh.
const SEQ_CACHE_MAX: usize = 100_000;

/// Which contacts owe work ([`ContactRow::owes_work`]): the rows of the partial index
/// `contacts_unfinished`, which a query finds with this same condition.
macro_rules! owes_work {
    () => {
        "ended_at IS NULL OR (summary_version = 0 AND utterances > 0)"
    };
}

/// The columns of `events` that make a [`StoredEvent`], in [`event_from_row`]'s order.
macro_rules! event_columns {
    () => {
        "contact_id, seq, event_id, recorded_at, schema_version, kind, source_id, payload, \
         prev_hash, hash"
    };
}

/// The columns of `contacts`, in [`contact_from_row`]'s order.
macro_rules! contact_columns {
    () => {
        "contact_id, instance_id, started_at, ended_at, escalated, escalations, sentiment, \
         summary_version, utterances, last_seq"
    };
}

mod schema;
mod writer;

/// One SQLite database file holding the event log and the read models: open it once and
/// take both stores from it, so they share its writer thread and read connections.
#[derive(Clone)]
pub struct SqliteDb {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    writer: mpsc::Sender<Request>,
    readers: Mutex<Vec<Connection>>,
    /// [`READ_POOL`] permits, one per running read.
    read_slots: tokio::sync::Semaphore,
}

impl SqliteDb {
    /// Opens (creating where missing) the database at `path`, and starts its writer thread.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = connect(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        create_schema(&conn)?;
        // The writer keeps every page a group touches in memory, and leaves checkpoints to
        // the checkpointer thread.
        for (pragma, value) in [
            ("cache_size", -WRITER_CACHE_KIB),
            ("wal_autocheckpoint", 0),
            ("journal_size_limit", WAL_RESTART_FRAMES * 4096),
        ] {
            conn.pragma_update(None, pragma, value)
                .map_err(unavailable)?;
        }
        let checkpointer = connect(&path)?;
        // Dropped when the writer thread ends, which stops the checkpointer.
        let (writer_alive, writer_gone) = mpsc::channel::<()>();
        spawn("sqlite-checkpoint", move || {
            checkpoint_until(&checkpointer, &writer_gone)
        })?;
        let (writer, requests) = mpsc::channel();
        spawn("sqlite-writer", move || {
            let _alive = writer_alive;
            Writer::new(conn).run(requests)
        })?;
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                writer,
                readers: Mutex::new(Vec::new()),
                read_slots: tokio::sync::Semaphore::new(READ_POOL),
            }),
        })
    }

    /// The event log in this file.
    pub fn events(&self) -> SqliteEventStore {
        SqliteEventStore { db: self.clone() }
    }

    /// The read models in this file.
    pub fn projections(&self) -> SqliteProjectionStore {
        SqliteProjectionStore { db: self.clone() }
    }

    /// Hands `request` (built around the reply channel) to the writer and waits for its
    /// answer, which comes once its group has committed.
    async fn write<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        // Unbounded, yet bounded in practice: every caller waits for its answer.
        self.shared
            .writer
            .send(request(reply))
            .map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    /// Runs `query` on a read connection on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _slot = self
            .shared
            .read_slots
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("the read pool is closed".into()))?;
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let idle = shared
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let conn = match idle {
                Some(conn) => conn,
                None => connect(&shared.path)?,
            };
            let result = query(&conn).map_err(unavailable);
            let mut readers = shared
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if readers.len() < READ_POOL {
                readers.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }
}

fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(work)
        .map(drop)
        .map_err(|e| StoreError::Unavailable(format!("cannot start thread {name}: {e}")))
}

/// Copies the WAL back into the database file, off the writer's path: a passive checkpoint
/// (which never blocks the writer) every [`CHECKPOINT_EVERY`], and a restarting one (which
/// holds the writer back while it finishes) when the WAL has grown past
/// [`WAL_RESTART_FRAMES`] under sustained load. Returns once `writer_gone` disconnects;
/// the last connection to close then checkpoints what is left.
fn checkpoint_until(conn: &Connection, writer_gone: &mpsc::Receiver<()>) {
    let checkpoint = |mode: &str| {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            row.get::<_, i64>(1)
        })
    };
    while let Err(RecvTimeoutError::Timeout) = writer_gone.recv_timeout(CHECKPOINT_EVERY) {
        let result = checkpoint("PASSIVE").and_then(|frames| {
            if frames > WAL_RESTART_FRAMES {
                checkpoint("RESTART").map(drop)
            } else {
                Ok(())
            }
        });
        if let Err(error) = result {
            tracing::warn!(%error, "SQLite checkpoint failed; will try again");
        }
    }
}

/// Opens a connection with the settings every connection gets.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(unavailable)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(unavailable)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(unavailable)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable("the SQLite writer thread has stopped".into())
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
}

/// A count or bound as SQLite's integer; bounds past `i64::MAX` mean "no bound".
fn sql_int<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

const HIGHEST_SEQ: &str = "SELECT COALESCE(MAX(seq), 0) FROM events WHERE contact_id = ?1";

/// The event log in a SQLite file.
pub struct SqliteEventStore {
    db: SqliteDb,
}

impl SqliteEventStore {
    /// Opens the log in the database at `path` (see [`SqliteDb::open`]); to use the read
    /// models of the same file too, open a [`SqliteDb`] and take both from it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Ok(SqliteDb::open(path)?.events())
    }
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(&self, events: &[StoredEvent]) -> Result<Appended, StoreError> {
        check_batch(events)?;
        let last = &events[events.len() - 1];
        if i64::try_from(last.seq).is_err() {
            return Err(StoreError::InvalidBatch(format!(
                "contact {}: sequence {} is past SQLite's integers",
                last.contact_id, last.seq
            )));
        }
        let events = events.to_vec();
        self.db
            .write(|reply| Request::Append { events, reply })
            .await
    }

    async fn read(
        &self,
        contact_id: &str,
        range: SeqRange,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let contact_id = contact_id.to_string();
        self.db
            .read(move |conn| {
                let mut select = conn.prepare_cached(concat!(
                    "SELECT ",
                    event_columns!(),
                    " FROM events WHERE contact_id = ?1 AND seq BETWEEN ?2 AND ?3 \
                     ORDER BY seq LIMIT ?4"
                ))?;
                let params = params![
                    contact_id,
                    sql_int(range.from),
                    sql_int(range.to),
                    sql_int(range.max)
                ];
                select
                    .query_map(params, |row| event_from_row(row, 0))?
                    .collect()
            })
            .await
    }

    async fn highest_seq(&self, contact_id: &str) -> Result<u64, StoreError> {
        let contact_id = contact_id.to_string();
        self.db
            .read(move |conn| {
                conn.prepare_cached(HIGHEST_SEQ)?
                    .query_row([contact_id], |row| get_uint(row, 0))
            })
            .await
    }

    async fn read_all(&self, after: u64, max: usize) -> Result<Vec<Positioned>, StoreError> {
        self.db
            .read(move |conn| {
                let mut select = conn.prepare_cached(concat!(
                    "SELECT position, ",
                    event_columns!(),
                    " FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
                ))?;
                select
                    .query_map([sql_int(after), sql_int(max)], |row| {
                        Ok(Positioned {
                            position: get_uint(row, 0)?,
                            event: event_from_row(row, 1)?,
                        })
                    })?
                    .collect()
            })
            .await
    }

    async fn forget_sources(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.db
            .write(|reply| Request::ForgetSources {
                ended_before,
                reply,
            })
            .await
    }
}

/// The read models in a SQLite file.
pub struct SqliteProjectionStore {
    db: SqliteDb,
}

impl SqliteProjectionStore {
    /// Opens the read models in the database at `path` (see [`SqliteDb::open`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Ok(SqliteDb::open(path)?.projections())
    }
}

#[async_trait]
impl ProjectionStore for SqliteProjectionStore {
    async fn checkpoint(&self) -> Result<u64, StoreError> {
        self.db
            .read(|conn| {
                let position = conn
                    .prepare_cached("SELECT position FROM projection_checkpoint WHERE id = 0")?
                    .query_row([], |row| get_uint(row, 0))
                    .optional()?;
                Ok(position.unwrap_or(0))
            })
            .await
    }

    async fn save(&self, rows: &[ContactRow], checkpoint: u64) -> Result<(), StoreError> {
        let rows = rows.to_vec();
        self.db
            .write(|reply| Request::SaveContacts {
                rows,
                checkpoint,
                reply,
            })
            .await
    }

    async fn contact(&self, contact_id: &str) -> Result<Option<ContactRow>, StoreError> {
        let contact_id = contact_id.to_string();
        self.db
            .read(move |conn| {
                conn.prepare_cached(concat!(
                    "SELECT ",
                    contact_columns!(),
                    " FROM contacts WHERE contact_id = ?1"
                ))?
                .query_row([contact_id], contact_from_row)
                .optional()
            })
            .await
    }

    /// One read connection and one cached statement for them all.
    async fn rows(
        &self,
        contact_ids: &[String],
    ) -> Result<HashMap<String, ContactRow>, StoreError> {
        let contact_ids = contact_ids.to_vec();
        self.db
            .read(move |conn| {
                let mut statement = conn.prepare_cached(concat!(
                    "SELECT ",
                    contact_columns!(),
                    " FROM contacts WHERE contact_id = ?1"
                ))?;
                let mut rows = HashMap::new();
                for id in contact_ids {
                    if let Some(row) = statement.query_row([&id], contact_from_row).optional()? {
                        rows.insert(id, row);
                    }
                }
                Ok(rows)
            })
            .await
    }

    async fn contacts(&self, filter: &ContactFilter) -> Result<Vec<ContactRow>, StoreError> {
        // Only the conditions asked for, so that SQLite can use the matching index.
        let mut conditions = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        if let Some(escalated) = filter.escalated {
            conditions.push("escalated = ?");
            values.push(Value::Integer(escalated.into()));
        }
        if let Some(sentiment) = filter.sentiment {
            conditions.push("sentiment = ?");
            values.push(Value::Text(sentiment.to_string()));
        }
        if let Some(since) = filter.since {
            conditions.push("started_at >= ?");
            values.push(Value::Text(time_text(since, SecondsFormat::Nanos)));
        }
        if let Some(until) = filter.until {
            conditions.push("started_at < ?");
            values.push(Value::Text(time_text(until, SecondsFormat::Nanos)));
        }
        if let Some(open) = filter.open {
            conditions.push(if open {
                "ended_at IS NULL"
            } else {
                "ended_at IS NOT NULL"
            });
        }
        if let Some(text) = &filter.contact_contains {
            conditions.push("instr(contact_id, ?) > 0");
            values.push(Value::Text(text.clone()));
        }
        match &filter.after {
            Some(ContactCursor {
                started_at: Some(started),
                contact_id,
            }) => {
                // A row value in the order's own terms, so the index is searched, not scanned.
                conditions.push("(started_at IS NULL, started_at, contact_id) > (0, ?, ?)");
                values.push(Value::Text(time_text(*started, SecondsFormat::Nanos)));
                values.push(Value::Text(contact_id.clone()));
            }
            Some(ContactCursor {
                started_at: None,
                contact_id,
            }) => {
                conditions.push("(started_at IS NULL AND contact_id > ?)");
                values.push(Value::Text(contact_id.clone()));
            }
            None => {}
        }
        let mut sql = concat!("SELECT ", contact_columns!(), " FROM contacts").to_string();
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY started_at IS NULL, started_at, contact_id LIMIT ?");
        values.push(Value::Integer(sql_int(filter.limit.unwrap_or(usize::MAX))));
        self.db
            .read(move |conn| {
                conn.prepare_cached(&sql)?
                    .query_map(params_from_iter(values), contact_from_row)?
                    .collect()
            })
            .await
    }

    async fn unfinished(&self) -> Result<Vec<ContactRow>, StoreError> {
        self.db
            .read(|conn| {
                conn.prepare_cached(UNFINISHED)?
                    .query_map([], contact_from_row)?
                    .collect()
            })
            .await
    }

    async fn reset(&self) -> Result<(), StoreError> {
        self.db
            .write(|reply| Request::ResetContacts { reply })
            .await
    }
}

#[cfg(test)]
mod tests;
