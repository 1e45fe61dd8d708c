//! In-memory stores for tests and benchmarks: everything behind one lock, nothing durable.
//!
//! A batch is applied under the write lock after every check has passed, so it is trivially
//! all-or-nothing, and a process that dies takes the whole log with it.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    Appended, ContactFilter, ContactRow, EventStore, Positioned, ProjectionStore, SeqRange,
    StoreError, check_batch, sort_contacts,
};
use crate::events::{CONTACT_ENDED, StoredEvent};

/// One contact's log and the batch keys (source ids) it holds.
#[derive(Default)]
struct ContactLog {
    /// `events[i].seq == i + 1`.
    events: Vec<StoredEvent>,
    /// Source id of a batch -> its first and last sequence numbers.
    sources: HashMap<String, (u64, u64)>,
}

#[derive(Default)]
struct Logs {
    /// Contact id -> index into `logs`.
    index: HashMap<String, usize>,
    logs: Vec<ContactLog>,
    /// Global order: entry `p - 1` is the event at position `p`, as (log index, event index).
    global: Vec<(usize, usize)>,
}

impl Logs {
    fn log(&self, contact_id: &str) -> Option<&ContactLog> {
        self.index.get(contact_id).map(|&i| &self.logs[i])
    }
}

/// An [`EventStore`] in memory: per-contact vectors plus a global order.
#[derive(Default)]
pub struct MemoryEventStore {
    inner: RwLock<Logs>,
}

impl MemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn append(&self, events: &[StoredEvent]) -> Result<Appended, StoreError> {
        check_batch(events)?;
        let first = &events[0];
        let (first_seq, last_seq) = (first.seq, first.seq + events.len() as u64 - 1);
        let mut guard = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let logs = &mut *guard;
        let li = match logs.index.get(&first.contact_id) {
            Some(&i) => i,
            None => {
                logs.logs.push(ContactLog::default());
                logs.index
                    .insert(first.contact_id.clone(), logs.logs.len() - 1);
                logs.logs.len() - 1
            }
        };
        let log = &mut logs.logs[li];
        if let Some(&(first_seq, last_seq)) = first
            .source_id
            .as_deref()
            .and_then(|source| log.sources.get(source))
        {
            return Ok(Appended::Duplicate {
                first_seq,
                last_seq,
            });
        }
        let actual = log.events.len() as u64;
        if first_seq != actual + 1 {
            return Err(StoreError::Conflict {
                contact_id: first.contact_id.clone(),
                expected: first_seq - 1,
                actual,
            });
        }
        if let Some(source) = &first.source_id {
            log.sources.insert(source.clone(), (first_seq, last_seq));
        }
        let start = log.events.len();
        log.events.extend_from_slice(events);
        logs.global
            .extend((start..start + events.len()).map(|ei| (li, ei)));
        Ok(Appended::Written {
            first_seq,
            last_seq,
        })
    }

    async fn read(
        &self,
        contact_id: &str,
        range: SeqRange,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let logs = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let Some(log) = logs.log(contact_id) else {
            return Ok(Vec::new());
        };
        let len = log.events.len() as u64;
        let from = range.from.max(1);
        let to = range.to.min(len);
        if from > to {
            return Ok(Vec::new());
        }
        // Both bounds are at most `len`, a vector length: the casts cannot truncate.
        let slice = &log.events[(from - 1) as usize..to as usize];
        Ok(slice.iter().take(range.max).cloned().collect())
    }

    async fn highest_seq(&self, contact_id: &str) -> Result<u64, StoreError> {
        let logs = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        Ok(logs
            .log(contact_id)
            .map_or(0, |log| log.events.len() as u64))
    }

    async fn read_all(&self, after: u64, max: usize) -> Result<Vec<Positioned>, StoreError> {
        let logs = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(logs.global.len());
        Ok(logs.global[start..]
            .iter()
            .take(max)
            .zip(after + 1..)
            .map(|(&(li, ei), position)| Positioned {
                position,
                event: logs.logs[li].events[ei].clone(),
            })
            .collect())
    }

    async fn forget_sources(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut logs = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let mut forgotten = 0;
        for log in &mut logs.logs {
            let ended = log
                .events
                .iter()
                .any(|e| e.kind == CONTACT_ENDED && e.recorded_at < ended_before);
            if ended {
                forgotten += log.sources.len() as u64;
                log.sources.clear();
            }
        }
        Ok(forgotten)
    }
}

/// The contacts read model and its checkpoint.
#[derive(Default)]
struct Projection {
    rows: HashMap<String, ContactRow>,
    checkpoint: u64,
}

/// A [`ProjectionStore`] in memory.
#[derive(Default)]
pub struct MemoryProjectionStore {
    inner: RwLock<Projection>,
}

impl MemoryProjectionStore {
    /// An empty read model.
    pub fn new() -> Self {
        Self::default()
    }

    /// The rows `keep` picks, oldest start first.
    fn rows_where(&self, keep: impl Fn(&ContactRow) -> bool) -> Vec<ContactRow> {
        let projection = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let mut rows: Vec<ContactRow> = projection
            .rows
            .values()
            .filter(|row| keep(row))
            .cloned()
            .collect();
        sort_contacts(&mut rows);
        rows
    }
}

#[async_trait]
impl ProjectionStore for MemoryProjectionStore {
    async fn checkpoint(&self) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .checkpoint)
    }

    async fn save(&self, rows: &[ContactRow], checkpoint: u64) -> Result<(), StoreError> {
        let mut projection = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        for row in rows {
            projection.rows.insert(row.contact_id.clone(), row.clone());
        }
        projection.checkpoint = checkpoint;
        Ok(())
    }

    async fn contact(&self, contact_id: &str) -> Result<Option<ContactRow>, StoreError> {
        let projection = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        Ok(projection.rows.get(contact_id).cloned())
    }

    async fn contacts(&self, filter: &ContactFilter) -> Result<Vec<ContactRow>, StoreError> {
        let mut rows = self.rows_where(|row| filter.matches(row));
        rows.truncate(filter.limit.unwrap_or(usize::MAX));
        Ok(rows)
    }

    async fn unfinished(&self) -> Result<Vec<ContactRow>, StoreError> {
        Ok(self.rows_where(ContactRow::owes_work))
    }

    async fn reset(&self) -> Result<(), StoreError> {
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = Projection::default();
        Ok(())
    }
}
