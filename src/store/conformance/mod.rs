//! The conformance suite every store runs (`journal-conformance.md`, cases 1 to 23, and the
//! read-model contract), written once against the traits. `conformance!` instantiates it
//! for each backend as one `#[tokio::test]` per case, e.g. `sqlite::racing_writers`.
//!
//! Case 22 (a process killed during a batch) is checked for SQLite by really killing a child
//! process mid-write ([`per_backend::sqlite_kill_during_batches_leaves_whole_batches`]).
//! The in-memory store applies a batch under one lock after every check, and a killed
//! process takes its whole log with it, so there is nothing to check there. DynamoDB writes a batch as one
//! `TransactWriteItems`, which the service applies whole or not at all whatever happens to
//! the process that sent it, so there is nothing of ours to check either.
//!
//! The DynamoDB stores run on the moto server, each test on tables of its own.

mod appends;
mod per_backend;
mod projections;
mod reads;
mod throughput;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::Barrier;

use super::dynamodb::{DynamoConfig, DynamoEventStore, DynamoProjectionStore, create_tables};
use super::memory::{MemoryEventStore, MemoryProjectionStore};
use super::projection::catch_up;
use super::sqlite::{SqliteDb, SqliteEventStore, SqliteProjectionStore};
use super::*;
use crate::events::{
    ChainHead, ContactEnded, EndReason, Event, GENESIS_HASH, Participant, SentimentChanged,
    StoredEvent, UtteranceReceived,
};
use crate::models::Label;
use appends::{
    failed_batches_leave_nothing, keys_of_long_ended_contacts_may_be_forgotten,
    many_contacts_at_once, racing_writers, redelivered_inputs_are_no_ops, size_limit,
    stale_expected_version_conflicts,
};
use projections::{
    catch_up_builds_and_rebuilds_rows, projection_rows_round_trip_and_filter,
    unfinished_rows_come_from_their_index,
};
use reads::{
    global_read_in_stable_order, old_versions_load_and_verify_after_reload, read_ranges,
    text_round_trips_byte_for_byte,
};

/// A store implementation under test.
trait Backend: Send + Sync {
    /// Its event log. Backends with a file open it anew on every call, which makes a second
    /// call a reload.
    fn events(&self) -> Arc<dyn EventStore>;
    /// Its read models (on the same file, for backends with one).
    fn projections(&self) -> Arc<dyn ProjectionStore>;
    /// Whether [`EventStore::forget_sources`] forgets keys itself (DynamoDB leaves that to
    /// its time to live).
    fn forgets_sources(&self) -> bool {
        true
    }
}

struct Memory {
    events: Arc<MemoryEventStore>,
    projections: Arc<MemoryProjectionStore>,
}

impl Memory {
    fn new() -> Self {
        Self {
            events: Arc::new(MemoryEventStore::new()),
            projections: Arc::new(MemoryProjectionStore::new()),
        }
    }
}

impl Backend for Memory {
    fn events(&self) -> Arc<dyn EventStore> {
        self.events.clone()
    }
    fn projections(&self) -> Arc<dyn ProjectionStore> {
        self.projections.clone()
    }
}

/// A database file in a temporary folder, removed with it.
struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary folder"),
        }
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("callpulse.db")
    }
}

impl Backend for Sqlite {
    fn events(&self) -> Arc<dyn EventStore> {
        Arc::new(SqliteEventStore::open(self.path()).expect("open the event store"))
    }
    fn projections(&self) -> Arc<dyn ProjectionStore> {
        Arc::new(SqliteProjectionStore::open(self.path()).expect("open the projection store"))
    }
}

/// Fresh tables on the moto server; every call opens new stores on them (a reload).
///
/// moto applies a transaction by snapshotting the tables it touches and restoring the
/// snapshot when a condition fails, so two transactions at once on one table can lose or
/// leak each other's writes (or fail on a table changing under the snapshot). DynamoDB
/// applies each request atomically; the backend gets that from moto through
/// [`one_at_a_time`], which still lets writers race between requests.
struct Dynamo {
    client: aws_sdk_dynamodb::Client,
    config: DynamoConfig,
}

impl Dynamo {
    async fn new() -> Self {
        use crate::aws::moto;
        let sdk = moto::config().await;
        let client = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&sdk)
                .endpoint_url(one_at_a_time())
                .build(),
        );
        let config = DynamoConfig {
            events_table: moto::unique_name("events"),
            projections_table: moto::unique_name("projections"),
            ..DynamoConfig::default()
        };
        create_tables(&client, &config)
            .await
            .expect("create the tables");
        Self { client, config }
    }
}

/// An endpoint in front of the moto server that forwards one request at a time: one thread
/// reads a request, has moto answer it, passes the answer back and closes the connection.
fn one_at_a_time() -> &'static str {
    static ENDPOINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ENDPOINT.get_or_init(|| crate::aws::moto::proxy(|_| crate::aws::moto::Forward::Answer).0)
}

impl Backend for Dynamo {
    fn events(&self) -> Arc<dyn EventStore> {
        Arc::new(DynamoEventStore::new(
            self.client.clone(),
            &self.config.events_table,
        ))
    }
    fn projections(&self) -> Arc<dyn ProjectionStore> {
        Arc::new(DynamoProjectionStore::new(
            self.client.clone(),
            &self.config.projections_table,
        ))
    }
    fn forgets_sources(&self) -> bool {
        false
    }
}

/// One `#[tokio::test]` per case for a backend, in a module named after it.
macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            conformance!(@cases $make;
                read_ranges,
                failed_batches_leave_nothing,
                stale_expected_version_conflicts,
                redelivered_inputs_are_no_ops,
                racing_writers,
                many_contacts_at_once,
                size_limit,
                text_round_trips_byte_for_byte,
                global_read_in_stable_order,
                old_versions_load_and_verify_after_reload,
                projection_rows_round_trip_and_filter,
                unfinished_rows_come_from_their_index,
                catch_up_builds_and_rebuilds_rows,
                keys_of_long_ended_contacts_may_be_forgotten
            );
        }
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$case(&$make).await;
            }
        )*
    };
}

conformance!(memory, super::Memory::new());
conformance!(sqlite, super::Sqlite::new());
conformance!(dynamodb, super::Dynamo::new().await);

fn utterance(text: &str) -> Event {
    Event::UtteranceReceived(UtteranceReceived {
        segment_id: "s".into(),
        participant: Participant::Customer,
        text: text.into(),
        begin_offset_millis: None,
        end_offset_millis: None,
        redactions: Default::default(),
    })
}

/// The next `n` events of `contact` on `head`, each from its own input `in-<seq>`.
fn sealed(head: &mut ChainHead, contact: &str, n: usize) -> Vec<StoredEvent> {
    sealed_from(head, contact, n, "in")
}

/// The next `n` events of `contact` on `head`, each from its own input `<input>-<seq>`.
fn sealed_from(head: &mut ChainHead, contact: &str, n: usize, input: &str) -> Vec<StoredEvent> {
    (0..n)
        .map(|_| {
            let seq = head.seq + 1;
            let source = format!("{input}-{seq}");
            let text = format!("utterance {seq}");
            head.seal(contact, Some(&source), &utterance(&text), Utc::now())
        })
        .collect()
}

/// The head of a contact's log as the store holds it.
async fn head_of(store: &dyn EventStore, contact: &str) -> ChainHead {
    let seq = store.highest_seq(contact).await.unwrap();
    let last = store
        .read(
            contact,
            SeqRange {
                from: seq,
                to: seq,
                max: 1,
            },
        )
        .await
        .unwrap();
    last.last()
        .map_or_else(ChainHead::default, |event| ChainHead {
            seq: event.seq,
            hash: event.hash.clone(),
        })
}

/// The head of `log` after its event `seq`.
fn head_at(log: &[StoredEvent], seq: u64) -> ChainHead {
    ChainHead {
        seq,
        hash: log[seq as usize - 1].hash.clone(),
    }
}

/// Checks that `events` are a whole chain from the first event on.
fn verify_chain(events: &[StoredEvent]) {
    let mut head = ChainHead::default();
    for event in events {
        head.verify_next(event)
            .unwrap_or_else(|e| panic!("{}#{}: {e}", event.contact_id, event.seq));
    }
}

fn written(first_seq: u64, last_seq: u64) -> Appended {
    Appended::Written {
        first_seq,
        last_seq,
    }
}

/// The suite's setup: events 1 to 5 of `contact`, 4 and 5 in one batch.
async fn setup(store: &dyn EventStore, contact: &str) -> Vec<StoredEvent> {
    let mut head = ChainHead::default();
    let mut log = Vec::new();
    for n in [1, 1, 1, 2] {
        let batch = sealed(&mut head, contact, n);
        let first = head.seq + 1 - n as u64;
        assert_eq!(
            store.append(&batch).await.unwrap(),
            written(first, head.seq)
        );
        log.extend(batch);
    }
    log
}
