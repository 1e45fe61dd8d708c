//! The schema: the tables and indexes, the queries that lean on those indexes, and rows read
//! back as events and contacts (times as fixed-width text).

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, Row};

use super::{SCHEMA_VERSION, unavailable};
use crate::events::StoredEvent;
use crate::models::Label;
use crate::store::{ContactRow, StoreError};

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
-- The order contacts are listed and paged in (not started last), so a page reads no more
-- rows than it returns.
CREATE INDEX IF NOT EXISTS contacts_in_order ON contacts (started_at IS NULL, started_at, contact_id);
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

/// The contacts that owe work, through `contacts_unfinished`.
pub(super) const UNFINISHED: &str = concat!(
    "SELECT ",
    contact_columns!(),
    // The few rows that owe work, sorted, rather than every row walked in the listing's order.
    " FROM contacts INDEXED BY contacts_unfinished WHERE ",
    owes_work!(),
    " ORDER BY started_at IS NULL, started_at, contact_id"
);

/// Deletes the keys of the contacts whose end was recorded in [?1, ?2), through
/// `events_ended`. The kind is [`CONTACT_ENDED`](crate::events::CONTACT_ENDED) written out:
/// SQLite uses a partial index only for a query that repeats its condition.
pub(super) const FORGET_SOURCES: &str = "DELETE FROM sources WHERE contact_id IN (SELECT contact_id \
     FROM events WHERE kind = 'ContactEnded' AND recorded_at >= ?1 AND recorded_at < ?2)";

/// Creates the tables of an empty file, and refuses a file written by a newer schema.
pub(super) fn create_schema(conn: &Connection) -> Result<(), StoreError> {
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
/// An integer column read back as the unsigned type the model uses.
pub(super) fn get_uint<T: TryFrom<i64>>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let value: i64 = row.get(idx)?;
    T::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

/// Times as stored: RFC 3339, UTC (`Z`), fixed width so that text order is time order.
pub(super) fn time_text(t: DateTime<Utc>, format: SecondsFormat) -> String {
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
pub(super) fn event_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<StoredEvent> {
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

pub(super) fn contact_from_row(row: &Row<'_>) -> rusqlite::Result<ContactRow> {
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
