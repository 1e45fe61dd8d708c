//! The loop between the sources and the router: keeps at most `max_in_flight` records
//! between reading and durable, so a saturated pipeline slows its sources down; hands each
//! contact's records over strictly in source order, one at a time, so a record that must be
//! retried (store conflict, store down, contact not loaded) holds back only its own contact;
//! sends every refused or undeliverable record to the reject log with its position and
//! reason, so nothing is lost silently; and tells a waiting sender (HTTP) each record's fate.

use std::collections::{HashMap, VecDeque};

use actix::Addr;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::contact::InputOutcome;
use super::router::{ContactRouter, Route};
use crate::backoff::backoff;
use crate::ingest::source::{Fate, Incoming, Ingested, RAW_BYTES, RejectLog, Rejected};
use crate::metrics::metrics;

/// Tries per record before it goes to the reject log as undeliverable.
const ATTEMPTS: u32 = 8;

/// First retry delay of a record, ms (doubled per try, with jitter).
const RETRY_BASE_MS: u64 = 100;

/// Longest retry delay of a record, ms.
const RETRY_CAP_MS: u64 = 6_400;

/// What a feed did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// Records appended to the log.
    pub appended: u64,
    /// Records already in the log (re-delivery).
    pub duplicates: u64,
    /// Records refused by a contact's rules (in the reject log).
    pub refused: u64,
    /// Lines refused by the parser (in the reject log).
    pub rejected: u64,
    /// Records the store could not take after every retry (in the reject log).
    pub undeliverable: u64,
    /// Records handed back because their contact's shard had left this worker (not stored
    /// here, not in the reject log: the shard's new owner reads them).
    pub not_owned: u64,
}

impl std::ops::AddAssign for FeedStats {
    fn add_assign(&mut self, other: Self) {
        self.appended += other.appended;
        self.duplicates += other.duplicates;
        self.refused += other.refused;
        self.rejected += other.rejected;
        self.undeliverable += other.undeliverable;
        self.not_owned += other.not_owned;
    }
}

/// Hands one record over, retrying while the store cannot take it.
async fn deliver(
    router: Addr<ContactRouter>,
    incoming: Incoming,
) -> (Incoming, Result<InputOutcome, String>) {
    let mut error = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff(RETRY_BASE_MS, RETRY_CAP_MS, attempt)).await;
        }
        match router.send(Route(incoming.clone())).await {
            Ok(Ok(outcome)) => return (incoming, Ok(outcome)),
            Ok(Err(e)) => error = e.0,
            Err(e) => error = format!("router unavailable: {e}"),
        }
        tracing::warn!(position = %incoming.position, %error, attempt, "record not yet durable; retrying");
    }
    (incoming, Err(error))
}

fn reject(log: &RejectLog, rejected: Rejected) {
    metrics().records_rejected.inc();
    tracing::warn!(position = %rejected.position, reason = %rejected.reason, "record refused");
    if let Err(e) = log.record(&rejected) {
        tracing::error!(error = %e, position = %rejected.position, "could not write the reject log");
    }
}

fn raw_of(incoming: &Incoming) -> String {
    let mut raw = format!("{:?}", incoming.record);
    raw.truncate(raw.floor_char_boundary(RAW_BYTES));
    raw
}

/// The records read and not yet settled, per contact, oldest first: the first of each
/// contact is being delivered, the others wait for it.
#[derive(Default)]
struct Queues {
    waiting: HashMap<String, VecDeque<Incoming>>,
    len: usize,
}

impl Queues {
    /// Queues `incoming`; gives it back when it is its contact's first (deliver it now).
    fn push(&mut self, incoming: Incoming) -> Option<Incoming> {
        self.len += 1;
        let contact = incoming.record.contact_id();
        match self.waiting.get_mut(contact) {
            Some(queue) => {
                queue.push_back(incoming);
                None
            }
            None => {
                self.waiting.insert(contact.to_string(), VecDeque::new());
                Some(incoming)
            }
        }
    }

    /// The contact's first record is settled: its next one, if any.
    fn settled(&mut self, contact: &str) -> Option<Incoming> {
        self.len -= 1;
        let queue = self.waiting.get_mut(contact)?;
        let next = queue.pop_front();
        if next.is_none() {
            self.waiting.remove(contact);
        }
        next
    }
}

/// Feeds everything from `input` to the router until the channel closes and every record
/// is settled.
pub async fn feed(
    router: Addr<ContactRouter>,
    mut input: mpsc::Receiver<Ingested>,
    rejects: &RejectLog,
    max_in_flight: usize,
) -> FeedStats {
    let mut stats = FeedStats::default();
    let mut queues = Queues::default();
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            item = input.recv(), if open && queues.len < max_in_flight => match item {
                Some(Ingested::Record(incoming)) => {
                    if let Some(first) = queues.push(incoming) {
                        in_flight.push(deliver(router.clone(), first));
                    }
                }
                Some(Ingested::Rejected(rejected)) => {
                    stats.rejected += 1;
                    reject(rejects, rejected);
                }
                None => open = false,
            },
            Some((incoming, outcome)) = in_flight.next() => {
                let fate = settle(&mut stats, rejects, &incoming, outcome);
                if let Some(ack) = &incoming.ack {
                    ack.settle(fate);
                }
                if let Some(next) = queues.settled(incoming.record.contact_id()) {
                    in_flight.push(deliver(router.clone(), next));
                }
            }
        }
    }
    stats
}

/// Counts a delivered record, sends a refused or undeliverable one to the reject log, and
/// says what became of it.
fn settle(
    stats: &mut FeedStats,
    rejects: &RejectLog,
    incoming: &Incoming,
    outcome: Result<InputOutcome, String>,
) -> Fate {
    match outcome {
        Ok(InputOutcome::Appended(_)) => {
            stats.appended += 1;
            Fate::Appended
        }
        Ok(InputOutcome::Duplicate) => {
            stats.duplicates += 1;
            Fate::Duplicate
        }
        Ok(InputOutcome::Refused(reason)) => {
            stats.refused += 1;
            reject(rejects, rejected(incoming, reason.clone()));
            Fate::Refused(reason)
        }
        Ok(InputOutcome::NotOwned) => {
            stats.not_owned += 1;
            metrics().records_not_owned.inc();
            tracing::warn!(position = %incoming.position, "record handed back: its contact's shard has left this worker");
            Fate::Undeliverable("its contact is no longer run by this worker".into())
        }
        Err(error) => {
            stats.undeliverable += 1;
            let reason = format!("not durable after {ATTEMPTS} tries: {error}");
            reject(rejects, rejected(incoming, reason.clone()));
            Fate::Undeliverable(reason)
        }
    }
}

fn rejected(incoming: &Incoming, reason: String) -> Rejected {
    Rejected {
        raw: raw_of(incoming),
        position: incoming.position.clone(),
        reason,
    }
}
