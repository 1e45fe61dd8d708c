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
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, params, params_from_iter};
use tokio::sync::oneshot;

use super::{
    Appended, ContactFilter, ContactRow, EventStore, Positioned, ProjectionStore, SeqRange,
    StoreError, check_batch,
};
use crate::events::StoredEvent;
use crate::models::Label;

/// Schema version kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 2;

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

/// The tables and indexes, all `IF NOT EXISTS`: run on a file of an older schema, it adds
/// what that one lacks (v1 had no `contacts_unfinished`, `events_ended` or `sources_forgotten`).
const SCHEMA: &str = concat!(
    "
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_id     TEXT    NOT NULL,
    seq            INTEGER NOT NULL,
    event_id       TEXT    NOT NULL,
    recorded_at    TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    kind           TEXT    NOT NULL,
    source_id      TEXT,
    payload        TEXT    NOT NULL,
    prev_hash      TEXT    NOT NULL,
    hash           TEXT    NOT NULL,
    UNIQUE (contact_id, seq)
);
CREATE TABLE IF NOT EXISTS sources (
    contact_id TEXT    NOT NULL,
    source_id  TEXT    NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    PRIMARY KEY (contact_id, source_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contacts (
    contact_id      TEXT    PRIMARY KEY,
    instance_id     TEXT,
    started_at      TEXT,
    ended_at        TEXT,
    escalated       INTEGER NOT NULL,
    escalations     INTEGER NOT NULL,
    sentiment       TEXT,
    summary_version INTEGER NOT NULL,
    utterances      INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS contacts_by_start ON contacts (started_at);
CREATE INDEX IF NOT EXISTS contacts_by_escalated ON contacts (escalated, started_at);
CREATE INDEX IF NOT EXISTS contacts_by_sentiment ON contacts (sentiment, started_at);
CREATE TABLE IF NOT EXISTS projection_checkpoint (
    id       INTEGER PRIMARY KEY CHECK (id = 0),
    position INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS contacts_unfinished ON contacts (started_at) WHERE ",
    owes_work!(),
    ";
CREATE INDEX IF NOT EXISTS events_ended ON events (recorded_at) WHERE kind = 'ContactEnded';
CREATE TABLE IF NOT EXISTS sources_forgotten (
    id           INTEGER PRIMARY KEY CHECK (id = 0),
    ended_before TEXT    NOT NULL
);
"
);

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

/// The contacts that owe work, through `contacts_unfinished`.
const UNFINISHED: &str = concat!(
    "SELECT ",
    contact_columns!(),
    " FROM contacts WHERE ",
    owes_work!(),
    " ORDER BY started_at IS NULL, started_at, contact_id"
);

/// Deletes the keys of the contacts whose end was recorded in [?1, ?2), through
/// `events_ended`. The kind is [`CONTACT_ENDED`](crate::events::CONTACT_ENDED) written out:
/// SQLite uses a partial index only for a query that repeats its condition.
const FORGET_SOURCES: &str = "DELETE FROM sources WHERE contact_id IN (SELECT contact_id \
     FROM events WHERE kind = 'ContactEnded' AND recorded_at >= ?1 AND recorded_at < ?2)";

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

/// Creates the tables of an empty file, and refuses a file written by a newer schema.
fn create_schema(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(unavailable)?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "database schema v{version} is newer than this build's v{SCHEMA_VERSION}: upgrade callpulse"
        )));
    }
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))
    .map_err(unavailable)
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

/// An integer column read back as the unsigned type the model uses.
fn get_uint<T: TryFrom<i64>>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let value: i64 = row.get(idx)?;
    T::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

/// Times as stored: RFC 3339, UTC (`Z`), fixed width so that text order is time order.
fn time_text(t: DateTime<Utc>, format: SecondsFormat) -> String {
    t.to_rfc3339_opts(format, true)
}

fn parse_time(idx: usize, text: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
        })
}

fn parse_opt_time(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    row.get::<_, Option<String>>(idx)?
        .map(|text| parse_time(idx, &text))
        .transpose()
}

/// Reads [`EVENT_COLUMNS`] starting at column `at`.
fn event_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<StoredEvent> {
    let event_id: String = row.get(at + 2)?;
    Ok(StoredEvent {
        contact_id: row.get(at)?,
        seq: get_uint(row, at + 1)?,
        event_id: event_id.parse().map_err(|e: uuid::Error| {
            rusqlite::Error::FromSqlConversionFailure(at + 2, rusqlite::types::Type::Text, e.into())
        })?,
        recorded_at: parse_time(at + 3, &row.get::<_, String>(at + 3)?)?,
        schema_version: get_uint(row, at + 4)?,
        kind: row.get(at + 5)?,
        source_id: row.get(at + 6)?,
        payload: row.get(at + 7)?,
        prev_hash: row.get(at + 8)?,
        hash: row.get(at + 9)?,
    })
}

fn contact_from_row(row: &Row<'_>) -> rusqlite::Result<ContactRow> {
    let sentiment: Option<String> = row.get(6)?;
    Ok(ContactRow {
        contact_id: row.get(0)?,
        instance_id: row.get(1)?,
        started_at: parse_opt_time(row, 2)?,
        ended_at: parse_opt_time(row, 3)?,
        escalated: row.get(4)?,
        escalations: get_uint(row, 5)?,
        sentiment: sentiment.as_deref().and_then(Label::parse),
        summary_version: get_uint(row, 7)?,
        utterances: get_uint(row, 8)?,
        last_seq: get_uint(row, 9)?,
    })
}

/// What the writer thread is asked to do; each answers on its own channel.
enum Request {
    Append {
        events: Vec<StoredEvent>,
        reply: oneshot::Sender<Result<Appended, StoreError>>,
    },
    SaveContacts {
        rows: Vec<ContactRow>,
        checkpoint: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    ResetContacts {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    ForgetSources {
        ended_before: DateTime<Utc>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// A request's outcome, held back until its group's transaction has ended.
trait Answer: Send {
    /// Sends the outcome, or `failure` instead when the group did not commit.
    fn send(self: Box<Self>, failure: Option<&str>);
}

struct Outcome<T> {
    result: Result<T, StoreError>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send> Answer for Outcome<T> {
    fn send(self: Box<Self>, failure: Option<&str>) {
        let result = match failure {
            None => self.result,
            Some(why) => Err(StoreError::Unavailable(why.to_string())),
        };
        // A caller that stopped waiting no longer needs the answer.
        let _ = self.reply.send(result);
    }
}

fn outcome<T: Send + 'static>(
    result: Result<T, StoreError>,
    reply: oneshot::Sender<Result<T, StoreError>>,
) -> Box<dyn Answer> {
    Box::new(Outcome { result, reply })
}

impl Request {
    /// The answer of a request that was not applied because its group failed first.
    fn unapplied(self) -> Box<dyn Answer> {
        let not_applied = || StoreError::Unavailable("not applied".into());
        match self {
            Request::Append { reply, .. } => outcome(Err(not_applied()), reply),
            Request::SaveContacts { reply, .. } | Request::ResetContacts { reply } => {
                outcome(Err(not_applied()), reply)
            }
            Request::ForgetSources { reply, .. } => outcome(Err(not_applied()), reply),
        }
    }
}

/// Highest sequence numbers written by the transaction in progress: they reach
/// `Writer::highest` only if it commits.
type Uncommitted = HashMap<String, u64>;

/// The writer thread's state: the write connection and the highest sequence number of
/// recently written contacts (only ever values that were committed or read from the table).
struct Writer {
    conn: Connection,
    highest: HashMap<String, u64>,
}

impl Writer {
    fn new(conn: Connection) -> Self {
        Self {
            conn,
            highest: HashMap::new(),
        }
    }

    /// Commits group after group until every sender is gone.
    ///
    /// A group takes what is waiting; and while it is smaller than the last one (whose
    /// callers, just answered, are likely to come back at once) it waits for more, up to
    /// [`LINGER`], so that a steady load keeps its groups large.
    fn run(mut self, requests: mpsc::Receiver<Request>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut expected = 1;
        while let Ok(request) = requests.recv() {
            let deadline = Instant::now() + LINGER;
            group.push(request);
            while group.len() < MAX_GROUP {
                let next = if group.len() < expected {
                    requests
                        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                        .ok()
                } else {
                    requests.try_recv().ok()
                };
                let Some(request) = next else {
                    break;
                };
                group.push(request);
            }
            expected = group.len();
            self.commit_group(group.drain(..));
        }
    }

    /// Applies `group` in one transaction, a savepoint per request, then answers them all:
    /// with their own outcomes if it committed, with the failure if not.
    fn commit_group(&mut self, group: impl Iterator<Item = Request>) {
        let mut uncommitted = Uncommitted::new();
        let mut answers = Vec::with_capacity(MAX_GROUP);
        let mut fatal = self.execute("BEGIN IMMEDIATE").err().map(|e| e.to_string());
        for request in group {
            let answer = match fatal {
                Some(_) => request.unapplied(),
                None => {
                    let (answer, failed) = self.apply(request, &mut uncommitted);
                    fatal = failed;
                    answer
                }
            };
            answers.push(answer);
        }
        let fatal = fatal.or_else(|| self.execute("COMMIT").err().map(|e| e.to_string()));
        let failure = fatal.map(|why| {
            // Ends the transaction if it is still open; an error here means it is not.
            let _ = self.conn.execute_batch("ROLLBACK");
            format!("SQLite write failed: {why}")
        });
        if failure.is_none() {
            if self.highest.len() + uncommitted.len() > SEQ_CACHE_MAX {
                self.highest.clear();
            }
            self.highest.extend(uncommitted);
        }
        for answer in answers {
            answer.send(failure.as_deref());
        }
    }

    /// Applies one request in its own savepoint. Returns its answer, and what went wrong
    /// if the whole transaction has to be given up.
    fn apply(
        &mut self,
        request: Request,
        uncommitted: &mut Uncommitted,
    ) -> (Box<dyn Answer>, Option<String>) {
        match request {
            Request::Append { events, reply } => {
                let (result, fatal) = self.in_savepoint(|w| w.append(&events, uncommitted));
                (outcome(result, reply), fatal)
            }
            Request::SaveContacts {
                rows,
                checkpoint,
                reply,
            } => {
                let (result, fatal) = self.in_savepoint(|w| w.save_contacts(&rows, checkpoint));
                (outcome(result, reply), fatal)
            }
            Request::ResetContacts { reply } => {
                let (result, fatal) = self.in_savepoint(|w| {
                    w.conn
                        .execute_batch("DELETE FROM contacts; DELETE FROM projection_checkpoint;")
                        .map_err(unavailable)
                });
                (outcome(result, reply), fatal)
            }
            Request::ForgetSources {
                ended_before,
                reply,
            } => {
                let (result, fatal) = self.in_savepoint(|w| w.forget_sources(ended_before));
                (outcome(result, reply), fatal)
            }
        }
    }

    /// Runs `work` inside a savepoint, rolled back if it fails.
    fn in_savepoint<T>(
        &mut self,
        work: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> (Result<T, StoreError>, Option<String>) {
        if let Err(e) = self.execute("SAVEPOINT request") {
            return (Err(unavailable(e)), Some("cannot open a savepoint".into()));
        }
        let result = work(self);
        let end = match result {
            Ok(_) => self.execute("RELEASE request"),
            Err(_) => self
                .execute("ROLLBACK TO request")
                .and_then(|()| self.execute("RELEASE request")),
        };
        match end {
            Ok(()) => (result, None),
            Err(e) => {
                let why = e.to_string();
                (Err(StoreError::Unavailable(why.clone())), Some(why))
            }
        }
    }

    /// Appends one checked batch (see [`EventStore::append`]).
    fn append(
        &mut self,
        events: &[StoredEvent],
        uncommitted: &mut Uncommitted,
    ) -> Result<Appended, StoreError> {
        let first = &events[0];
        let contact = &first.contact_id;
        let first_seq = first.seq;
        let last_seq = first_seq + events.len() as u64 - 1;
        if let Some(source) = &first.source_id {
            let inserted = self
                .conn
                .prepare_cached(
                    "INSERT INTO sources (contact_id, source_id, first_seq, last_seq) \
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut insert| {
                    insert.execute(params![
                        contact,
                        source,
                        sql_int(first_seq),
                        sql_int(last_seq)
                    ])
                });
            match inserted {
                Ok(_) => {}
                Err(e) if is_constraint(&e) => {
                    let (first_seq, last_seq) = self
                        .conn
                        .prepare_cached(
                            "SELECT first_seq, last_seq FROM sources \
                             WHERE contact_id = ?1 AND source_id = ?2",
                        )
                        .and_then(|mut select| {
                            select.query_row(params![contact, source], |row| {
                                Ok((get_uint(row, 0)?, get_uint(row, 1)?))
                            })
                        })
                        .map_err(unavailable)?;
                    return Ok(Appended::Duplicate {
                        first_seq,
                        last_seq,
                    });
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        let expected = first_seq - 1;
        let known = uncommitted
            .get(contact)
            .or_else(|| self.highest.get(contact));
        if known != Some(&expected) {
            // Unknown, or the cache says conflict: the table (with this transaction's own
            // writes) decides.
            let actual = self.highest_in_table(contact)?;
            uncommitted.insert(contact.clone(), actual);
            if actual != expected {
                return Err(StoreError::Conflict {
                    contact_id: contact.clone(),
                    expected,
                    actual,
                });
            }
        }
        let mut insert = self
            .conn
            .prepare_cached(concat!(
                "INSERT INTO events (",
                event_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))
            .map_err(unavailable)?;
        for event in events {
            let inserted = insert.execute(params![
                event.contact_id,
                sql_int(event.seq),
                event.event_id.to_string(),
                time_text(event.recorded_at, SecondsFormat::Micros),
                event.schema_version,
                event.kind,
                event.source_id,
                event.payload,
                event.prev_hash,
                event.hash,
            ]);
            match inserted {
                Ok(_) => {}
                // Taken by another writer of the file: the cache was behind.
                Err(e) if is_constraint(&e) => {
                    drop(insert);
                    uncommitted.remove(contact);
                    self.highest.remove(contact);
                    return Err(StoreError::Conflict {
                        contact_id: contact.clone(),
                        expected,
                        actual: self.highest_in_table(contact)?,
                    });
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        uncommitted.insert(contact.clone(), last_seq);
        Ok(Appended::Written {
            first_seq,
            last_seq,
        })
    }

    /// Deletes the idempotency keys of the contacts whose end was recorded from the last
    /// call's bound up to `ended_before`, and keeps that bound in `sources_forgotten`, so each
    /// ended contact is looked at once (through the partial index `events_ended`).
    fn forget_sources(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let from: String = self
            .conn
            .query_row(
                "SELECT ended_before FROM sources_forgotten WHERE id = 0",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(unavailable)?
            .unwrap_or_default();
        let until = time_text(ended_before, SecondsFormat::Micros);
        if from >= until {
            return Ok(0);
        }
        let forgotten = self
            .conn
            .execute(FORGET_SOURCES, params![from, until])
            .map_err(unavailable)?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO sources_forgotten (id, ended_before) VALUES (0, ?1)",
                [until],
            )
            .map_err(unavailable)?;
        Ok(forgotten as u64)
    }

    fn highest_in_table(&self, contact_id: &str) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached(HIGHEST_SEQ)
            .and_then(|mut select| select.query_row([contact_id], |row| get_uint(row, 0)))
            .map_err(unavailable)
    }

    fn save_contacts(&self, rows: &[ContactRow], checkpoint: u64) -> Result<(), StoreError> {
        let mut upsert = self
            .conn
            .prepare_cached(concat!(
                "INSERT OR REPLACE INTO contacts (",
                contact_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))
            .map_err(unavailable)?;
        for row in rows {
            upsert
                .execute(params![
                    row.contact_id,
                    row.instance_id,
                    row.started_at.map(|t| time_text(t, SecondsFormat::Nanos)),
                    row.ended_at.map(|t| time_text(t, SecondsFormat::Nanos)),
                    row.escalated,
                    row.escalations,
                    row.sentiment.map(|label| label.to_string()),
                    row.summary_version,
                    row.utterances,
                    sql_int(row.last_seq),
                ])
                .map_err(unavailable)?;
        }
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO projection_checkpoint (id, position) VALUES (0, ?1)",
            )
            .and_then(|mut save| save.execute([sql_int(checkpoint)]))
            .map_err(unavailable)?;
        Ok(())
    }

    fn execute(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(drop)
    }
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
mod tests {
    use super::*;

    /// SQLite's plan for `sql`, its steps one per line.
    fn plan(conn: &Connection, sql: &str) -> String {
        let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let unbound = vec![Value::Null; explain.parameter_count()];
        let steps: Vec<String> = explain
            .query_map(params_from_iter(unbound), |row| row.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        steps.join("\n")
    }

    #[test]
    fn unfinished_and_ended_contacts_are_found_through_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = connect(&dir.path().join("callpulse.db")).unwrap();
        create_schema(&conn).unwrap();
        let unfinished = plan(&conn, UNFINISHED);
        assert!(unfinished.contains("contacts_unfinished"), "{unfinished}");
        let forget = plan(&conn, FORGET_SOURCES);
        assert!(forget.contains("events_ended"), "{forget}");
    }

    #[test]
    fn a_file_of_schema_1_gains_what_it_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("callpulse.db");
        let conn = connect(&path).unwrap();
        create_schema(&conn).unwrap();
        conn.execute_batch(
            "DROP INDEX contacts_unfinished; DROP INDEX events_ended; \
             DROP TABLE sources_forgotten; PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        drop(SqliteDb::open(&path).unwrap());
        let conn = connect(&path).unwrap();
        let found: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name IN \
                 ('contacts_unfinished', 'events_ended', 'sources_forgotten')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(found, 3);
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
