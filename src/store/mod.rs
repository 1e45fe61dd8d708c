//! Where events and read models live: the [`EventStore`] and [`ProjectionStore`] traits and
//! their implementations (SQLite for one machine, DynamoDB for the fleet, in-memory for tests
//! and benchmarks).
//!
//! Semantics every implementation keeps (DESIGN.md, "Store semantics"; the conformance
//! suite in `store::conformance` checks them):
//! - An append is one contact's batch of sealed events with consecutive sequence numbers.
//!   It succeeds only if the first sequence number is the contact's highest + 1 (optimistic
//!   concurrency), and is all-or-nothing.
//! - The batch's idempotency key is its first event's `source_id`: a batch whose key is
//!   already in the contact's log is a no-op that returns the original sequence numbers, so
//!   at-least-once transports give exactly-once effects.
//! - Every event also gets a global position, increasing in commit order, for projections.
//!   Where positions are assigned before the commit (DynamoDB), an event can appear a little
//!   behind positions already read: [`EventStore::replay_window`] says how far, and readers
//!   catching up re-read that far behind their checkpoint.

pub mod anchor;
pub mod dynamodb;
pub mod memory;
pub mod projection;
pub mod sqlite;

#[cfg(test)]
mod conformance;

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::events::StoredEvent;
use crate::models::Label;

/// Largest stored event accepted ([`StoredEvent::stored_len`]), chosen to fit one DynamoDB
/// item (400 KB) with room for attribute names.
pub const MAX_EVENT_BYTES: usize = 350 * 1024;

/// Days idempotency keys are kept unless `[store] key_retention_days` says otherwise.
pub const DEFAULT_KEY_RETENTION_DAYS: u32 = 7;

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The events were written with these sequence numbers.
    Written {
        /// First sequence number.
        first_seq: u64,
        /// Last sequence number.
        last_seq: u64,
    },
    /// The batch's source id was already in the log: nothing written; the original numbers.
    Duplicate {
        /// First sequence number of the original batch.
        first_seq: u64,
        /// Last sequence number of the original batch.
        last_seq: u64,
    },
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else appended first: reload and decide again.
    #[error(
        "conflict on contact {contact_id}: expected last sequence {expected}, log has {actual}"
    )]
    Conflict {
        /// The contact.
        contact_id: String,
        /// The caller's idea of the last sequence number.
        expected: u64,
        /// The log's.
        actual: u64,
    },
    /// An event is larger than [`MAX_EVENT_BYTES`].
    #[error(
        "event {contact_id}#{seq} is {bytes} bytes, over the {MAX_EVENT_BYTES}-byte limit of one stored event"
    )]
    TooLarge {
        /// The contact.
        contact_id: String,
        /// The event's sequence number.
        seq: u64,
        /// Its size.
        bytes: usize,
    },
    /// The batch is not one contact's consecutive events.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// The backend failed (I/O, busy, unreachable); the call may be retried.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
}

/// Which of a contact's events to read: sequence numbers `from..=to`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    /// First sequence number wanted.
    pub from: u64,
    /// Last sequence number wanted (inclusive).
    pub to: u64,
    /// Most events returned.
    pub max: usize,
}

impl SeqRange {
    /// Everything from `from` on.
    pub fn from(from: u64) -> Self {
        Self {
            from,
            to: u64::MAX,
            max: usize::MAX,
        }
    }

    /// The whole log.
    pub fn all() -> Self {
        Self::from(1)
    }
}

/// An event with its global position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positioned {
    /// Position in the store-wide order (increasing, not necessarily dense).
    pub position: u64,
    /// The event.
    pub event: StoredEvent,
}

/// The append-only, per-contact event log.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` (one contact, consecutive sequence numbers, `events[0].seq - 1`
    /// being the expected last sequence number) atomically; see the module docs.
    async fn append(&self, events: &[StoredEvent]) -> Result<Appended, StoreError>;

    /// A contact's events in `range`, in sequence order (empty for an unknown contact).
    async fn read(&self, contact_id: &str, range: SeqRange)
    -> Result<Vec<StoredEvent>, StoreError>;

    /// The contact's last sequence number (0 when it has no events).
    async fn highest_seq(&self, contact_id: &str) -> Result<u64, StoreError>;

    /// Up to `max` events of any contact with a global position greater than `after`, in
    /// position order.
    async fn read_all(&self, after: u64, max: usize) -> Result<Vec<Positioned>, StoreError>;

    /// How many positions behind a checkpoint a reader of [`read_all`](Self::read_all) must
    /// look again, because an event can become visible there after later positions were
    /// read. 0 (the default) for stores whose positions follow the commit order.
    fn replay_window(&self) -> u64 {
        0
    }

    /// Forgets the idempotency keys of the contacts whose end was recorded before
    /// `ended_before`, and answers how many keys went. A record of such a contact delivered
    /// again is still not stored twice: the contact's log knows its segments, and refuses new
    /// ones after its end. Stores whose keys expire by themselves (DynamoDB's time to live)
    /// keep this default, which forgets nothing here.
    async fn forget_sources(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let _ = ended_before;
        Ok(0)
    }
}

/// One row of the contacts read model: what `query contacts` lists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactRow {
    /// The contact.
    pub contact_id: String,
    /// Connect instance, when known.
    pub instance_id: Option<String>,
    /// When the call began.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended (none while open).
    pub ended_at: Option<DateTime<Utc>>,
    /// Whether any escalation was raised.
    pub escalated: bool,
    /// How many escalation episodes.
    pub escalations: u32,
    /// The smoothed customer sentiment, last known.
    pub sentiment: Option<Label>,
    /// Latest summary version (0 = none yet).
    pub summary_version: u32,
    /// Final utterances received.
    pub utterances: u32,
    /// Sequence number of the last event folded in.
    pub last_seq: u64,
}

impl ContactRow {
    /// Whether the contact still owes work: open, or ended without a summary.
    pub fn owes_work(&self) -> bool {
        self.ended_at.is_none() || (self.summary_version == 0 && self.utterances > 0)
    }
}

/// Which contacts `query contacts` wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactFilter {
    /// Only contacts with (true) or without (false) an escalation.
    pub escalated: Option<bool>,
    /// Started at or after.
    pub since: Option<DateTime<Utc>>,
    /// Started before.
    pub until: Option<DateTime<Utc>>,
    /// Last smoothed sentiment.
    pub sentiment: Option<Label>,
    /// Only open (true) or ended (false) contacts.
    pub open: Option<bool>,
    /// Only contact ids containing this text.
    pub contact_contains: Option<String>,
    /// Only rows after this one in the order rows are returned (the next page).
    pub after: Option<ContactCursor>,
    /// Most rows returned (none = all).
    pub limit: Option<usize>,
}

/// A place in the order of [`ProjectionStore::contacts`]: a row's start and contact id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactCursor {
    /// The row's start (none: not started, which sorts last).
    pub started_at: Option<DateTime<Utc>>,
    /// The row's contact.
    pub contact_id: String,
}

impl ContactCursor {
    /// The place of `row`.
    pub fn of(row: &ContactRow) -> Self {
        Self {
            started_at: row.started_at,
            contact_id: row.contact_id.clone(),
        }
    }

    /// Whether `row` comes after this place.
    pub fn precedes(&self, row: &ContactRow) -> bool {
        (
            row.started_at.is_none(),
            row.started_at,
            row.contact_id.as_str(),
        ) > (
            self.started_at.is_none(),
            self.started_at,
            self.contact_id.as_str(),
        )
    }
}

impl ContactFilter {
    /// Whether `row` passes the filter (the in-memory store's query; others push it down).
    pub fn matches(&self, row: &ContactRow) -> bool {
        self.escalated.is_none_or(|e| row.escalated == e)
            && self.sentiment.is_none_or(|s| row.sentiment == Some(s))
            && self
                .since
                .is_none_or(|t| row.started_at.is_some_and(|s| s >= t))
            && self
                .until
                .is_none_or(|t| row.started_at.is_some_and(|s| s < t))
            && self.open.is_none_or(|open| row.ended_at.is_none() == open)
            && self
                .contact_contains
                .as_deref()
                .is_none_or(|text| row.contact_id.contains(text))
            && self.after.as_ref().is_none_or(|after| after.precedes(row))
    }
}

/// Sorts rows as [`ProjectionStore::contacts`] returns them: oldest start first, contacts
/// not yet started last, ties by contact id.
pub(crate) fn sort_contacts(rows: &mut [ContactRow]) {
    rows.sort_by(|a, b| {
        (a.started_at.is_none(), a.started_at, &a.contact_id).cmp(&(
            b.started_at.is_none(),
            b.started_at,
            &b.contact_id,
        ))
    });
}

/// Refuses what no store accepts, before any store looks at its log: an empty batch, events
/// of several contacts, sequence numbers that do not start at 1 or more and run on by one,
/// and any event over [`MAX_EVENT_BYTES`] (which refuses the whole batch).
pub(crate) fn check_batch(events: &[StoredEvent]) -> Result<(), StoreError> {
    let Some(first) = events.first() else {
        return Err(StoreError::InvalidBatch("no events".into()));
    };
    if first.seq == 0 {
        return Err(StoreError::InvalidBatch(format!(
            "contact {}: sequence numbers start at 1",
            first.contact_id
        )));
    }
    for (expected_seq, event) in (first.seq..).zip(events) {
        if event.contact_id != first.contact_id {
            return Err(StoreError::InvalidBatch(format!(
                "events of contacts {} and {} in one batch",
                first.contact_id, event.contact_id
            )));
        }
        if event.seq != expected_seq {
            return Err(StoreError::InvalidBatch(format!(
                "contact {}: sequence {} where {expected_seq} was due",
                first.contact_id, event.seq
            )));
        }
        let bytes = event.stored_len();
        if bytes > MAX_EVENT_BYTES {
            return Err(StoreError::TooLarge {
                contact_id: event.contact_id.clone(),
                seq: event.seq,
                bytes,
            });
        }
    }
    Ok(())
}

/// Read models derived from the log; they can be dropped and rebuilt at any time.
#[async_trait]
pub trait ProjectionStore: Send + Sync + 'static {
    /// Global position of the last event folded in (0 = none).
    async fn checkpoint(&self) -> Result<u64, StoreError>;

    /// Saves rows and the new checkpoint atomically.
    async fn save(&self, rows: &[ContactRow], checkpoint: u64) -> Result<(), StoreError>;

    /// One contact's row.
    async fn contact(&self, contact_id: &str) -> Result<Option<ContactRow>, StoreError>;

    /// The rows of those of `contact_ids` that have one, by contact id. Stores that can
    /// fetch many rows in one round trip override this; the default asks for each.
    async fn rows(
        &self,
        contact_ids: &[String],
    ) -> Result<HashMap<String, ContactRow>, StoreError> {
        let mut rows = HashMap::new();
        for id in contact_ids {
            if let Some(row) = self.contact(id).await? {
                rows.insert(id.clone(), row);
            }
        }
        Ok(rows)
    }

    /// Rows passing `filter`, oldest start first.
    async fn contacts(&self, filter: &ContactFilter) -> Result<Vec<ContactRow>, StoreError>;

    /// The rows that still owe work ([`ContactRow::owes_work`]), oldest start first, read
    /// from an index of them: a start or a lease take resumes these without reading every
    /// contact ever recorded.
    async fn unfinished(&self) -> Result<Vec<ContactRow>, StoreError>;

    /// Drops every row and the checkpoint (before a rebuild).
    async fn reset(&self) -> Result<(), StoreError>;
}
