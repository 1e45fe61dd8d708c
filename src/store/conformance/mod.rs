//! The conformance suite every store runs (`journal-conformance.md`, cases 1 to 23, and the
//! read-model contract), written once against the traits. `conformance!` instantiates it
//! for each backend as one `#[tokio::test]` per case, e.g. `sqlite::racing_writers`.
//!
//! Case 22 (a process killed during a batch) is checked for SQLite by really killing a child
//! process mid-write ([`sqlite_kill_during_batches_leaves_whole_batches`]). The in-memory
//! store applies a batch under one lock after every check, and a killed process takes its
//! whole log with it, so there is nothing to check there. DynamoDB writes a batch as one
//! `TransactWriteItems`, which the service applies whole or not at all whatever happens to
//! the process that sent it, so there is nothing of ours to check either.
//!
//! The DynamoDB stores run on the moto server, each test on tables of its own.

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

/// A [`one_at_a_time`] endpoint of its own that, while `losing` is up, has moto apply each
/// `TransactWriteItems` and then closes the connection without its answer.
fn losing_answers(losing: Arc<std::sync::atomic::AtomicBool>) -> String {
    use crate::aws::moto::{Forward, proxy};
    use std::sync::atomic::Ordering;
    proxy(move |request| {
        let transaction = String::from_utf8_lossy(request)
            .to_ascii_lowercase()
            .contains("x-amz-target: dynamodb_20120810.transactwriteitems");
        if transaction && losing.load(Ordering::SeqCst) {
            Forward::LoseAnswer
        } else {
            Forward::Answer
        }
    })
    .0
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

/// Cases 1 to 12: reads by range, bound and count; highest sequence numbers.
async fn read_ranges(backend: &dyn Backend) {
    let store = backend.events();
    let log = setup(&*store, "c-1").await;
    let range = |from, to, max| SeqRange { from, to, max };
    let all = usize::MAX;
    let cases: [(SeqRange, Range<usize>); 10] = [
        (SeqRange::all(), 0..5),       // 1
        (SeqRange::from(3), 2..5),     // 2
        (range(1, 3, all), 0..3),      // 3
        (range(1, u64::MAX, 3), 0..3), // 4
        (range(2, 3, all), 1..3),      // 5
        (range(2, 5, 2), 1..3),        // 6
        (range(2, 2, all), 1..2),      // 7
        (range(2, 4, 1), 1..2),        // 8
        (range(1, u64::MAX, 0), 0..0), // 9
        (range(3, 2, all), 0..0),      // 10
    ];
    for (range, expected) in cases {
        let got = store.read("c-1", range).await.unwrap();
        assert_eq!(got, log[expected], "{range:?}");
        assert_eq!(store.highest_seq("c-1").await.unwrap(), 5, "{range:?}");
    }
    // 11
    assert!(
        store
            .read("nobody", SeqRange::all())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.highest_seq("nobody").await.unwrap(), 0);
    // 12: on a fresh handle that has read nothing (a reload, for stores with a file).
    assert_eq!(backend.events().highest_seq("c-1").await.unwrap(), 5);
}

/// Cases 13 and 14: a failing batch leaves none of its events, even next to batches that
/// succeed at the same moment, and the highest sequence number never decreases.
async fn failed_batches_leave_nothing(backend: &dyn Backend) {
    let store = backend.events();
    let log = setup(&*store, "c-1").await;
    let mut highest = 5;
    let mut never_decreases = async |store: &dyn EventStore| {
        let now = store.highest_seq("c-1").await.unwrap();
        assert!(now >= highest, "highest went from {highest} to {now}");
        highest = now;
    };

    let mut head = head_at(&log, 5);
    let mut oversize = sealed(&mut head.clone(), "c-1", 2);
    oversize[1].payload = "x".repeat(MAX_EVENT_BYTES);
    let mut gap = sealed(&mut head.clone(), "c-1", 3);
    gap.remove(1);
    let mut two_contacts = sealed(&mut head.clone(), "c-1", 2);
    two_contacts[1].contact_id = "c-2".into();
    let stale = sealed_from(&mut head_at(&log, 3), "c-1", 2, "late");

    assert!(matches!(
        store.append(&oversize).await,
        Err(StoreError::TooLarge { seq: 7, .. })
    ));
    never_decreases(&*store).await;
    for invalid in [&gap[..], &two_contacts[..], &[]] {
        let result = store.append(invalid).await;
        assert!(
            matches!(result, Err(StoreError::InvalidBatch(_))),
            "{result:?}"
        );
        never_decreases(&*store).await;
    }

    // A conflicting batch among good ones, all sent at once (SQLite commits them together).
    let good_before = sealed(&mut ChainHead::default(), "c-3", 3);
    let good_after = sealed(&mut ChainHead::default(), "c-4", 2);
    let (before, conflict, after) = tokio::join!(
        store.append(&good_before),
        store.append(&stale),
        store.append(&good_after)
    );
    assert_eq!(before.unwrap(), written(1, 3));
    assert!(
        matches!(conflict, Err(StoreError::Conflict { .. })),
        "{conflict:?}"
    );
    assert_eq!(after.unwrap(), written(1, 2));
    never_decreases(&*store).await;

    assert_eq!(store.read("c-1", SeqRange::all()).await.unwrap(), log);
    assert!(store.read("c-2", SeqRange::all()).await.unwrap().is_empty());
    let next = sealed(&mut head, "c-1", 2);
    assert_eq!(store.append(&next).await.unwrap(), written(6, 7));
    never_decreases(&*store).await;
    assert_eq!(highest, 7);
}

/// Case 15: an append whose expected version is stale (or ahead) conflicts and writes
/// nothing; after a reload it succeeds.
async fn stale_expected_version_conflicts(backend: &dyn Backend) {
    let store = backend.events();
    let log = setup(&*store, "c-1").await;
    let stale = sealed_from(&mut head_at(&log, 3), "c-1", 1, "late");
    match store.append(&stale).await {
        Err(StoreError::Conflict {
            contact_id,
            expected,
            actual,
        }) => {
            assert_eq!((contact_id.as_str(), expected, actual), ("c-1", 3, 5));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let ahead = sealed(
        &mut ChainHead {
            seq: 6,
            hash: "f".repeat(64),
        },
        "c-1",
        1,
    );
    assert!(matches!(
        store.append(&ahead).await,
        Err(StoreError::Conflict {
            expected: 6,
            actual: 5,
            ..
        })
    ));
    assert_eq!(store.read("c-1", SeqRange::all()).await.unwrap(), log);

    let mut head = head_of(&*store, "c-1").await;
    let retry = sealed(&mut head, "c-1", 1);
    assert_eq!(store.append(&retry).await.unwrap(), written(6, 6));
}

/// Case 16: a batch whose source id is already in the contact's log is a no-op that returns
/// the original numbers, whatever its expected version; other contacts are not affected.
async fn redelivered_inputs_are_no_ops(backend: &dyn Backend) {
    let store = backend.events();
    let log = setup(&*store, "c-1").await;
    let duplicate = Appended::Duplicate {
        first_seq: 4,
        last_seq: 5,
    };
    assert_eq!(store.append(&log[3..5]).await.unwrap(), duplicate);
    // Sealed again on today's head: same input, different numbers and hashes.
    let mut head = head_at(&log, 5);
    let mut again = sealed(&mut head, "c-1", 1);
    again[0].source_id = Some("in-4".into());
    again[0].hash = again[0].compute_hash();
    assert_eq!(store.append(&again).await.unwrap(), duplicate);
    // Also when only the key matches and the version is stale.
    let mut stale = sealed(&mut ChainHead::default(), "c-1", 1);
    stale[0].source_id = Some("in-2".into());
    assert_eq!(
        store.append(&stale).await.unwrap(),
        Appended::Duplicate {
            first_seq: 2,
            last_seq: 2
        }
    );
    assert_eq!(store.highest_seq("c-1").await.unwrap(), 5);
    assert_eq!(store.read("c-1", SeqRange::all()).await.unwrap(), log);
    // The key is per contact.
    let elsewhere = sealed(&mut ChainHead::default(), "c-2", 1);
    assert_eq!(elsewhere[0].source_id.as_deref(), Some("in-1"));
    assert_eq!(store.append(&elsewhere).await.unwrap(), written(1, 1));
    // Events without a source id are never duplicates of each other.
    let mut head = head_at(&log, 5);
    for seq in 6..8 {
        let event = head.seal("c-1", None, &utterance("again"), Utc::now());
        assert_eq!(store.append(&[event]).await.unwrap(), written(seq, seq));
    }
}

/// Case 17: two writers racing on one contact: exactly one wins each sequence number, the
/// other gets a conflict; writers that reload and retry end with one unbroken chain.
async fn racing_writers(backend: &dyn Backend) {
    let store = backend.events();
    for round in 1..=20u64 {
        let head = head_of(&*store, "race").await;
        let barrier = Arc::new(Barrier::new(2));
        let racers = (0..2).map(|writer| {
            let (store, barrier, mut head) = (store.clone(), barrier.clone(), head.clone());
            tokio::spawn(async move {
                let source = format!("w{writer}-r{round}");
                let event = head.seal("race", Some(&source), &utterance("mine"), Utc::now());
                barrier.wait().await;
                store.append(&[event]).await
            })
        });
        let mut results = Vec::new();
        for racer in racers.collect::<Vec<_>>() {
            results.push(racer.await.unwrap());
        }
        let wins = results
            .iter()
            .filter(|r| matches!(r, Ok(a) if *a == written(round, round)));
        assert_eq!(wins.count(), 1, "round {round}: {results:?}");
        assert!(
            results.iter().any(|r| matches!(
                r,
                Err(StoreError::Conflict { expected, actual, .. }) if *expected == round - 1 && *actual == round
            )),
            "round {round}: {results:?}"
        );
    }

    // Free for all: four writers, 25 events each, reloading on every conflict.
    let writers = (0..4).map(|writer| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut done = 0;
            while done < 25 {
                let mut head = head_of(&*store, "race").await;
                let source = format!("free-{writer}-{done}");
                let event = head.seal("race", Some(&source), &utterance("mine"), Utc::now());
                match store.append(&[event]).await {
                    Ok(Appended::Written { .. }) => done += 1,
                    Err(StoreError::Conflict { .. }) => tokio::task::yield_now().await,
                    other => panic!("writer {writer}: {other:?}"),
                }
            }
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.unwrap();
    }
    let log = store.read("race", SeqRange::all()).await.unwrap();
    assert_eq!(log.len(), 120);
    verify_chain(&log);
}

/// Case 18: many writers on different contacts at once all succeed, each contact's order kept.
async fn many_contacts_at_once(backend: &dyn Backend) {
    let store = backend.events();
    let writers = (0..16).map(|writer| {
        let store = store.clone();
        tokio::spawn(async move {
            let contact = format!("many-{writer}");
            let mut head = ChainHead::default();
            let mut log = Vec::new();
            while log.len() < 40 {
                let batch = sealed(&mut head, &contact, 1 + log.len() % 3);
                let first = batch[0].seq;
                assert_eq!(
                    store.append(&batch).await.unwrap(),
                    written(first, head.seq)
                );
                log.extend(batch);
            }
            (contact, log)
        })
    });
    let mut total = 0;
    for writer in writers.collect::<Vec<_>>() {
        let (contact, log) = writer.await.unwrap();
        let stored = store.read(&contact, SeqRange::all()).await.unwrap();
        assert_eq!(stored, log);
        verify_chain(&stored);
        total += log.len();
    }
    let global = store.read_all(0, usize::MAX).await.unwrap();
    assert_eq!(global.len(), total);
    for writer in 0..16 {
        let contact = format!("many-{writer}");
        let seqs: Vec<u64> = global
            .iter()
            .filter(|p| p.event.contact_id == contact)
            .map(|p| p.event.seq)
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    }
}

/// The next event of `contact` on `head`, padded to exactly `bytes` ([`StoredEvent::stored_len`]).
fn of_size(head: &mut ChainHead, contact: &str, bytes: usize) -> StoredEvent {
    let now = Utc::now();
    let bare = head
        .clone()
        .seal(contact, None, &utterance(""), now)
        .stored_len();
    let event = head.seal(contact, None, &utterance(&"x".repeat(bytes - bare)), now);
    assert_eq!(event.stored_len(), bytes);
    event
}

/// Case 19: an event at the size limit round-trips; one over it is refused with
/// `TooLarge`, with the rest of its batch.
async fn size_limit(backend: &dyn Backend) {
    let store = backend.events();
    let mut head = ChainHead::default();
    let at_limit = of_size(&mut head, "big", MAX_EVENT_BYTES);
    assert_eq!(
        store.append(std::slice::from_ref(&at_limit)).await.unwrap(),
        written(1, 1)
    );
    assert_eq!(
        store.read("big", SeqRange::all()).await.unwrap(),
        [at_limit]
    );

    let small = sealed(&mut head.clone(), "big", 1).remove(0);
    let mut after_small = ChainHead {
        seq: small.seq,
        hash: small.hash.clone(),
    };
    let over = of_size(&mut after_small, "big", MAX_EVENT_BYTES + 1);
    match store.append(&[small, over]).await {
        Err(StoreError::TooLarge {
            contact_id,
            seq,
            bytes,
        }) => {
            assert_eq!(
                (contact_id.as_str(), seq, bytes),
                ("big", 3, MAX_EVENT_BYTES + 1)
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let alone = of_size(&mut head.clone(), "big", MAX_EVENT_BYTES + 1);
    assert!(matches!(
        store.append(&[alone]).await,
        Err(StoreError::TooLarge { seq: 2, .. })
    ));
    assert_eq!(store.highest_seq("big").await.unwrap(), 1);
    assert_eq!(store.read_all(0, usize::MAX).await.unwrap().len(), 1);
}

/// Case 20: unicode, emoji, quotes, backslashes, control characters and newlines in text,
/// ids and source ids come back byte for byte, and still hash alike.
async fn text_round_trips_byte_for_byte(backend: &dyn Backend) {
    let store = backend.events();
    let texts = [
        "naïve café, Straße, 日本語, עברית, \u{202e}reversed\u{202c}",
        "😡🔥👍🏽 family: 👨‍👩‍👧 flags: 🇩🇪",
        r#"she said "no", then 'maybe' \ and \" and \\n"#,
        "line one\nline two\r\nline three\ttabbed\u{0}nul\u{7f}\u{200b}",
        "",
        "'; DROP TABLE events; --",
    ];
    let contact = "contact-ü-😀 \"quoted\"";
    let mut head = ChainHead::default();
    let mut log = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let source = format!("src \"{i}\"\n✓");
        log.push(head.seal(contact, Some(&source), &utterance(text), Utc::now()));
    }
    store.append(&log[..2]).await.unwrap();
    store.append(&log[2..]).await.unwrap();

    let stored = backend
        .events()
        .read(contact, SeqRange::all())
        .await
        .unwrap();
    assert_eq!(stored, log);
    verify_chain(&stored);
    for (event, text) in stored.iter().zip(texts) {
        let Ok(Event::UtteranceReceived(body)) = event.decode() else {
            panic!("{event:?} does not decode");
        };
        assert_eq!(body.text.as_bytes(), text.as_bytes());
    }
}

/// Case 21: a global read from a position returns every event once, in a stable order,
/// across contacts, however it is paged.
async fn global_read_in_stable_order(backend: &dyn Backend) {
    let store = backend.events();
    let mut heads = [
        ChainHead::default(),
        ChainHead::default(),
        ChainHead::default(),
    ];
    let mut appended = Vec::new();
    for (i, n) in [1, 2, 1, 3, 1, 1, 2, 1, 2, 1].into_iter().enumerate() {
        let contact = ["a", "b", "c"][i % 3];
        let batch = sealed(&mut heads[i % 3], contact, n);
        store.append(&batch).await.unwrap();
        appended.extend(batch);
    }
    let all = store.read_all(0, usize::MAX).await.unwrap();
    let events: Vec<_> = all.iter().map(|p| p.event.clone()).collect();
    assert_eq!(events, appended, "commit order, each event once");
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(store.read_all(0, usize::MAX).await.unwrap(), all, "stable");

    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, 4).await.unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 4);
        after = last.position;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    for k in 0..all.len() {
        assert_eq!(
            store.read_all(all[k].position, usize::MAX).await.unwrap(),
            all[k + 1..]
        );
    }
    assert!(store.read_all(after, 0).await.unwrap().is_empty());
}

/// Case 23: an old event version (the seed's `SentimentAssessed` v1) still loads, upcast,
/// and the hash chain verifies after a reload.
async fn old_versions_load_and_verify_after_reload(backend: &dyn Backend) {
    let mut v1 = StoredEvent {
        contact_id: "old".into(),
        seq: 1,
        event_id: uuid::Uuid::now_v7(),
        recorded_at: Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap(),
        schema_version: 1,
        kind: "SentimentAssessed".into(),
        source_id: Some("seed-1".into()),
        payload: r#"{"kind":"SentimentAssessed","segmentId":"s-1","sentiment":"NEGATIVE"}"#.into(),
        prev_hash: GENESIS_HASH.into(),
        hash: String::new(),
    };
    v1.hash = v1.compute_hash();
    let mut head = ChainHead {
        seq: 1,
        hash: v1.hash.clone(),
    };
    let changed = Event::SentimentChanged(SentimentChanged {
        from: None,
        to: Label::Negative,
        why: "first judgement".into(),
    });
    let later = [
        head.seal("old", None, &changed, Utc::now()),
        head.seal("old", Some("in-3"), &utterance("still waiting"), Utc::now()),
    ];
    let store = backend.events();
    store.append(std::slice::from_ref(&v1)).await.unwrap();
    store.append(&later).await.unwrap();
    drop(store);

    let log = backend.events().read("old", SeqRange::all()).await.unwrap();
    assert_eq!(log[0], v1);
    verify_chain(&log);
    let bodies: Vec<Event> = log.iter().map(|e| e.decode().unwrap()).collect();
    let Event::SentimentAssessed(assessed) = &bodies[0] else {
        panic!("{:?}", bodies[0]);
    };
    assert_eq!(
        (assessed.label, assessed.segment_id.as_str()),
        (Label::Negative, "s-1")
    );
    assert_eq!(bodies[1], changed);
}

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 9, minute, 0).unwrap()
        + chrono::Duration::nanoseconds(123_456_789)
}

fn row(id: &str, started: Option<u32>, escalated: bool, sentiment: Option<Label>) -> ContactRow {
    ContactRow {
        contact_id: id.into(),
        instance_id: Some(format!("instance of {id}")),
        started_at: started.map(at),
        ended_at: started.map(|m| at(m + 7)),
        escalated,
        escalations: escalated.into(),
        sentiment,
        summary_version: 2,
        utterances: 11,
        last_seq: 40,
    }
}

/// Read models: rows and checkpoint saved together, loaded, filtered, updated and reset.
async fn projection_rows_round_trip_and_filter(backend: &dyn Backend) {
    let store = backend.projections();
    assert_eq!(store.checkpoint().await.unwrap(), 0);
    let rows = [
        row("d", Some(30), false, Some(Label::Positive)),
        row("a", Some(10), true, Some(Label::Negative)),
        row("e", None, false, None),
        row("b", Some(20), false, Some(Label::Negative)),
        row("c", Some(20), true, Some(Label::Neutral)),
    ];
    store.save(&rows, 17).await.unwrap();
    assert_eq!(store.checkpoint().await.unwrap(), 17);
    for row in &rows {
        assert_eq!(
            store.contact(&row.contact_id).await.unwrap().as_ref(),
            Some(row)
        );
    }
    assert_eq!(store.contact("nobody").await.unwrap(), None);
    let some = store
        .rows(&["c".into(), "nobody".into(), "a".into()])
        .await
        .unwrap();
    assert_eq!(some.len(), 2);
    assert_eq!(some.get("a"), Some(&rows[1]));
    assert_eq!(some.get("c"), Some(&rows[4]));
    // More ids than one DynamoDB BatchGetItem takes.
    let many: Vec<ContactRow> = (0..120)
        .map(|i| row(&format!("many-{i}"), Some(i % 50), false, None))
        .collect();
    store.save(&many, 17).await.unwrap();
    let ids: Vec<String> = many.iter().map(|r| r.contact_id.clone()).collect();
    let found = store.rows(&ids).await.unwrap();
    assert_eq!(found.len(), 120);
    assert!(many.iter().all(|r| found.get(&r.contact_id) == Some(r)));
    store.reset().await.unwrap();
    store.save(&rows, 17).await.unwrap();

    let ids = async |filter: ContactFilter| -> Vec<String> {
        let rows = store.contacts(&filter).await.unwrap();
        rows.into_iter().map(|row| row.contact_id).collect()
    };
    let filter = ContactFilter::default;
    assert_eq!(
        ids(filter()).await,
        ["a", "b", "c", "d", "e"],
        "oldest first, unstarted last"
    );
    assert_eq!(
        ids(ContactFilter {
            escalated: Some(true),
            ..filter()
        })
        .await,
        ["a", "c"]
    );
    assert_eq!(
        ids(ContactFilter {
            escalated: Some(false),
            ..filter()
        })
        .await,
        ["b", "d", "e"]
    );
    assert_eq!(
        ids(ContactFilter {
            sentiment: Some(Label::Negative),
            ..filter()
        })
        .await,
        ["a", "b"]
    );
    assert_eq!(
        ids(ContactFilter {
            since: Some(at(20)),
            ..filter()
        })
        .await,
        ["b", "c", "d"]
    );
    assert_eq!(
        ids(ContactFilter {
            until: Some(at(20)),
            ..filter()
        })
        .await,
        ["a"]
    );
    let window = ContactFilter {
        since: Some(at(10) + chrono::Duration::nanoseconds(1)),
        until: Some(at(30) + chrono::Duration::nanoseconds(1)),
        escalated: Some(false),
        limit: Some(1),
        ..filter()
    };
    assert_eq!(ids(window).await, ["b"]);
    assert_eq!(
        ids(ContactFilter {
            limit: Some(0),
            ..filter()
        })
        .await,
        Vec::<String>::new()
    );

    let mut changed = rows[2].clone();
    changed.started_at = Some(at(5));
    changed.sentiment = Some(Label::Negative);
    store
        .save(std::slice::from_ref(&changed), 18)
        .await
        .unwrap();
    assert_eq!(store.checkpoint().await.unwrap(), 18);
    assert_eq!(store.contact("e").await.unwrap(), Some(changed));
    assert_eq!(ids(filter()).await, ["e", "a", "b", "c", "d"]);
    store.save(&[], 19).await.unwrap();
    assert_eq!(store.checkpoint().await.unwrap(), 19);

    store.reset().await.unwrap();
    assert_eq!(store.checkpoint().await.unwrap(), 0);
    assert!(store.contacts(&filter()).await.unwrap().is_empty());
}

/// Read models: `unfinished` lists exactly the rows that owe work (open, or ended with
/// utterances and no summary), oldest start first, and follows their changes.
async fn unfinished_rows_come_from_their_index(backend: &dyn Backend) {
    let store = backend.projections();
    let open = ContactRow {
        ended_at: None,
        summary_version: 0,
        ..row("open", Some(20), false, None)
    };
    let unsummarised = ContactRow {
        summary_version: 0,
        ..row("unsummarised", Some(10), true, Some(Label::Negative))
    };
    let not_started = ContactRow {
        ended_at: None,
        ..row("not-started", None, false, None)
    };
    let silent = ContactRow {
        summary_version: 0,
        utterances: 0,
        ..row("silent", Some(5), false, None)
    };
    let done = row("done", Some(1), false, Some(Label::Positive));
    let rows = [&open, &unsummarised, &not_started, &silent, &done].map(Clone::clone);
    store.save(&rows, 3).await.unwrap();
    let unfinished = || async {
        let rows = store.unfinished().await.unwrap();
        rows.into_iter().map(|r| r.contact_id).collect::<Vec<_>>()
    };
    assert_eq!(unfinished().await, ["unsummarised", "open", "not-started"]);
    assert_eq!(store.unfinished().await.unwrap()[0], unsummarised);

    let summarised = ContactRow {
        summary_version: 1,
        last_seq: 41,
        ..unsummarised
    };
    let ended = ContactRow {
        ended_at: Some(at(30)),
        last_seq: 41,
        ..open
    };
    store.save(&[summarised, ended], 4).await.unwrap();
    assert_eq!(unfinished().await, ["open", "not-started"]);
    let summarised = ContactRow {
        summary_version: 1,
        last_seq: 42,
        ..store.contact("open").await.unwrap().unwrap()
    };
    store.save(&[summarised], 5).await.unwrap();
    assert_eq!(unfinished().await, ["not-started"]);
    store.reset().await.unwrap();
    assert!(store.unfinished().await.unwrap().is_empty());
}

/// Idempotency keys of a contact whose end was recorded before the bound may be forgotten
/// (then a batch with one is judged by its sequence number alone); every other key is kept,
/// and a second pass over the same bound forgets nothing.
async fn keys_of_long_ended_contacts_may_be_forgotten(backend: &dyn Backend) {
    let store = backend.events();
    let now = Utc::now();
    let long_ago = now - chrono::Duration::days(10);
    let ended = |at| {
        Event::ContactEnded(ContactEnded {
            ended_at: at,
            reason: EndReason::Ended,
        })
    };
    let mut firsts = Vec::new();
    for (contact, end) in [
        ("long-ended", Some(long_ago)),
        ("open", None),
        ("just-ended", Some(now)),
    ] {
        let mut head = ChainHead::default();
        let first = head.seal(contact, Some("in-1"), &utterance("hello"), long_ago);
        store.append(std::slice::from_ref(&first)).await.unwrap();
        if let Some(at) = end {
            let last = head.seal(contact, Some("end"), &ended(at), at);
            store.append(&[last]).await.unwrap();
        }
        firsts.push(first);
    }
    let forgotten = store
        .forget_sources(now - chrono::Duration::days(7))
        .await
        .unwrap();
    assert_eq!(forgotten, if backend.forgets_sources() { 2 } else { 0 });
    let duplicate = Appended::Duplicate {
        first_seq: 1,
        last_seq: 1,
    };
    for kept in &firsts[1..] {
        assert_eq!(
            store.append(std::slice::from_ref(kept)).await.unwrap(),
            duplicate
        );
    }
    let again = store.append(std::slice::from_ref(&firsts[0])).await;
    if forgotten == 0 {
        assert_eq!(again.unwrap(), duplicate);
    } else {
        assert!(
            matches!(again, Err(StoreError::Conflict { actual: 2, .. })),
            "{again:?}"
        );
    }
    let store = backend.events();
    assert_eq!(
        store
            .forget_sources(now - chrono::Duration::days(7))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .read("long-ended", SeqRange::all())
            .await
            .unwrap()
            .len(),
        2
    );
}

/// `catch_up` folds the log into rows page by page, only what is new on a second call, and
/// rebuilds the same rows after a reset; an event that does not decode is skipped.
async fn catch_up_builds_and_rebuilds_rows(backend: &dyn Backend) {
    let (events, projections) = (backend.events(), backend.projections());
    let mut heads = [ChainHead::default(), ChainHead::default()];
    for (h, contact) in [(0, "x"), (1, "y"), (0, "x"), (0, "x"), (1, "y")] {
        let batch = sealed(&mut heads[h], contact, 2);
        events.append(&batch).await.unwrap();
    }
    assert_eq!(catch_up(&*events, &*projections, 3).await.unwrap(), 10);
    let x = projections.contact("x").await.unwrap().unwrap();
    assert_eq!((x.utterances, x.last_seq), (6, 6));
    assert_eq!(catch_up(&*events, &*projections, 3).await.unwrap(), 0);

    let mut bogus = sealed(&mut heads[0], "x", 1);
    bogus[0].kind = "NoSuchKind".into();
    bogus[0].hash = bogus[0].compute_hash();
    events.append(&bogus).await.unwrap();
    let changed = Event::SentimentChanged(SentimentChanged {
        from: None,
        to: Label::Negative,
        why: "w".into(),
    });
    let last = heads[0].seal("x", None, &changed, Utc::now());
    events.append(&[last]).await.unwrap();
    assert_eq!(catch_up(&*events, &*projections, 100).await.unwrap(), 1);
    let x = projections.contact("x").await.unwrap().unwrap();
    assert_eq!(
        (x.utterances, x.last_seq, x.sentiment),
        (6, 8, Some(Label::Negative))
    );
    let last = events.read_all(0, usize::MAX).await.unwrap().pop().unwrap();
    assert_eq!(projections.checkpoint().await.unwrap(), last.position);

    let before = projections
        .contacts(&ContactFilter::default())
        .await
        .unwrap();
    projections.reset().await.unwrap();
    assert_eq!(catch_up(&*events, &*projections, 5).await.unwrap(), 11);
    assert_eq!(
        projections
            .contacts(&ContactFilter::default())
            .await
            .unwrap(),
        before
    );
}

/// Case 5b of the fleet issue: DynamoDB commits a transaction but its answer never comes
/// back (every retry of the SDK's too). The append is reported as failed, never as a second
/// write: appended again, a batch with a source id is a duplicate at its original numbers,
/// one without is a conflict (the writer reloads and finds its events), and the log holds
/// each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_commits_whose_answer_was_lost_are_not_written_twice() {
    let tables = Dynamo::new().await;
    let losing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sdk = crate::aws::moto::config().await;
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .endpoint_url(losing_answers(losing.clone()))
            .build(),
    );
    let lossy = DynamoEventStore::new(client, &tables.config.events_table);
    let store = tables.events();
    let mut head = ChainHead::default();
    let sourced = sealed(&mut head, "c-lost", 2);
    let error = lossy.append(&sourced).await.unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert_eq!(
        store.read("c-lost", SeqRange::all()).await.unwrap(),
        sourced
    );
    losing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        lossy.append(&sourced).await.unwrap(),
        Appended::Duplicate {
            first_seq: 1,
            last_seq: 2
        }
    );

    let unsourced = head.seal("c-lost", None, &utterance("no key"), Utc::now());
    losing.store(true, std::sync::atomic::Ordering::SeqCst);
    lossy
        .append(std::slice::from_ref(&unsourced))
        .await
        .unwrap_err();
    losing.store(false, std::sync::atomic::Ordering::SeqCst);
    let again = lossy.append(std::slice::from_ref(&unsourced)).await;
    assert!(
        matches!(again, Err(StoreError::Conflict { actual: 3, .. })),
        "{again:?}"
    );
    let log = store.read("c-lost", SeqRange::all()).await.unwrap();
    assert_eq!(log.len(), 3);
    verify_chain(&log);
}

#[tokio::test]
async fn sqlite_stores_share_one_file_and_persist() {
    let sqlite = Sqlite::new();
    let db = SqliteDb::open(sqlite.path()).unwrap();
    let (events, projections) = (db.events(), db.projections());
    let log = setup(&events, "c-1").await;
    assert_eq!(catch_up(&events, &projections, 10).await.unwrap(), 5);
    drop((events, projections, db));

    let db = SqliteDb::open(sqlite.path()).unwrap();
    assert_eq!(db.events().read("c-1", SeqRange::all()).await.unwrap(), log);
    let row = db.projections().contact("c-1").await.unwrap().unwrap();
    assert_eq!((row.utterances, row.last_seq), (5, 5));
    let version: i64 = rusqlite::Connection::open(sqlite.path())
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, super::sqlite::SCHEMA_VERSION);
}

#[tokio::test]
async fn sqlite_refuses_a_newer_schema() {
    let sqlite = Sqlite::new();
    let conn = rusqlite::Connection::open(sqlite.path()).unwrap();
    conn.pragma_update(None, "user_version", super::sqlite::SCHEMA_VERSION + 1)
        .unwrap();
    let error = SqliteDb::open(sqlite.path()).err().expect("refused");
    assert!(error.to_string().contains("upgrade"), "{error}");
}

/// Set (to a database path) in the child process of the crash test.
const CRASH_DB: &str = "CALLPULSE_TEST_CRASH_DB";
/// Events per batch in the crash test.
const CRASH_BATCH: usize = 50;
/// Contacts written concurrently in the crash test.
const CRASH_CONTACTS: usize = 4;

/// The child process of [`sqlite_kill_during_batches_leaves_whole_batches`]: with
/// `CALLPULSE_TEST_CRASH_DB` set, appends batches to that database until it is killed.
/// Without it, does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of sqlite_kill_during_batches_leaves_whole_batches"]
async fn crash_child() {
    let Ok(path) = std::env::var(CRASH_DB) else {
        return;
    };
    let store = Arc::new(SqliteEventStore::open(path).unwrap());
    let mut writers = tokio::task::JoinSet::new();
    for c in 0..CRASH_CONTACTS {
        let store = store.clone();
        writers.spawn(async move {
            let contact = format!("crash-{c}");
            let mut head = head_of(&*store, &contact).await;
            loop {
                let batch = sealed(&mut head, &contact, CRASH_BATCH);
                if let Err(error) = store.append(&batch).await {
                    return error;
                }
            }
        });
    }
    let stopped = writers.join_next().await;
    panic!("a writer stopped before the kill: {stopped:?}");
}

/// Case 22 for SQLite: a process killed (SIGKILL) while it writes batches leaves, after
/// a reopen, every contact's log a whole number of batches with an unbroken chain; and it
/// can carry on writing. Three rounds, killed at different moments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kill_during_batches_leaves_whole_batches() {
    let sqlite = Sqlite::new();
    let watcher = SqliteEventStore::open(sqlite.path()).unwrap();
    let mut total = 0;
    for round in 0..3 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::conformance::crash_child",
                "--ignored",
                "--nocapture",
            ])
            .env(CRASH_DB, sqlite.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for_growth(&watcher, total + 4 * CRASH_BATCH, &mut child).await;
        tokio::time::sleep(Duration::from_millis(13 * round)).await;
        child.kill().unwrap();
        child.wait().unwrap();

        let store = SqliteEventStore::open(sqlite.path()).unwrap();
        let mut now = 0;
        for c in 0..CRASH_CONTACTS {
            let log = store
                .read(&format!("crash-{c}"), SeqRange::all())
                .await
                .unwrap();
            assert_eq!(log.len() % CRASH_BATCH, 0, "round {round}: a partial batch");
            verify_chain(&log);
            now += log.len();
        }
        assert_eq!(store.read_all(0, usize::MAX).await.unwrap().len(), now);
        assert!(now > total, "round {round}: the child wrote nothing");
        total = now;
    }
}

/// Waits until `store` holds more than `events` events of the crash test's contacts.
async fn wait_for_growth(store: &dyn EventStore, events: usize, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut now = 0;
        for c in 0..CRASH_CONTACTS {
            now += store.highest_seq(&format!("crash-{c}")).await.unwrap() as usize;
        }
        if now > events {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child process ended by itself: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the child process wrote nothing in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Appends `contacts * per_contact` single events, one task per contact, and prints the rate.
async fn append_rate(name: &str, store: Arc<dyn EventStore>, contacts: usize, per_contact: usize) {
    let batches: Vec<Vec<StoredEvent>> = (0..contacts)
        .map(|c| {
            let mut head = ChainHead::default();
            let contact = format!("contact-{c:05}");
            (0..per_contact)
                .map(|i| {
                    let text =
                        format!("I have been waiting for an hour and nobody called me back ({i})");
                    let source = format!("rec-{c}-{i}");
                    head.seal(&contact, Some(&source), &utterance(&text), Utc::now())
                })
                .collect()
        })
        .collect();
    let start = Instant::now();
    let tasks = batches.into_iter().map(|events| {
        let store = store.clone();
        tokio::spawn(async move {
            for event in events {
                store.append(std::slice::from_ref(&event)).await.unwrap();
            }
        })
    });
    for task in tasks.collect::<Vec<_>>() {
        task.await.unwrap();
    }
    let seconds = start.elapsed().as_secs_f64();
    let n = contacts * per_contact;
    println!(
        "{name}: {n} single-event appends from {contacts} tasks in {seconds:.2} s = {:.0} events/s",
        n as f64 / seconds
    );
}

/// Append throughput (not a check), 100,000 single-event appends with 100, 1,000 and 4,000
/// contacts appending at once: `cargo test --lib append_throughput -- --ignored --nocapture`
/// (the crate's own code is unoptimised in test builds; SQLite itself is built optimised).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing, run by hand"]
async fn append_throughput() {
    append_rate("memory", Arc::new(MemoryEventStore::new()), 1000, 100).await;
    for (contacts, per_contact) in [(100, 1000), (1000, 100), (4000, 25)] {
        let sqlite = Sqlite::new();
        append_rate("sqlite", sqlite.events(), contacts, per_contact).await;
    }
}
