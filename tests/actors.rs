//! The actors with the in-memory store and scripted models: idle timeouts, restarts after
//! a conflicting writer, passivation, retries, deadlines and coalescing in the model gateway.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use callpulse::actors::contact::InputOutcome;
use callpulse::actors::dispatcher::AttributesConfig;
use callpulse::actors::feed::feed;
use callpulse::actors::gateway::{Backends, GatewayConfig, ModelLimits};
use callpulse::actors::router::{GetActivity, Release, Resume, Route, Unfence};
use callpulse::actors::{Parts, Pipeline, PipelineConfig};
use callpulse::events::rules::EscalationRules;
use callpulse::events::{
    ChainHead, ContactEnded, ContactStarted, EndReason, Event, Participant, StoredEvent,
    SummaryGenerated, UtteranceReceived,
};
use callpulse::ingest::record::parse;
use callpulse::ingest::{Incoming, Ingested, Position, RejectLog};
use callpulse::models::standin::StandInModel;
use callpulse::models::{
    CancellationToken, ModelError, Sentiment, SentimentClassifier, Summariser, Summary, Turn,
};
use callpulse::sinks::attributes::AttributeLog;
use callpulse::sinks::summaries::{SummaryFolder, SummarySink};
use callpulse::store::memory::{MemoryEventStore, MemoryProjectionStore};
use callpulse::store::{Appended, EventStore, Positioned, SeqRange, StoreError};

/// Answers like the stand-in after `latency`, but the first `failures` calls of each kind
/// fail with a transient error.
struct Scripted {
    inner: StandInModel,
    latency: Duration,
    sentiment_failures: usize,
    summary_failures: usize,
    sentiment_calls: AtomicUsize,
    summary_calls: AtomicUsize,
}

impl Scripted {
    fn new(latency_ms: u64, sentiment_failures: usize, summary_failures: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: StandInModel::new(Duration::ZERO),
            latency: Duration::from_millis(latency_ms),
            sentiment_failures,
            summary_failures,
            sentiment_calls: AtomicUsize::new(0),
            summary_calls: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl SentimentClassifier for Scripted {
    async fn classify(
        &self,
        utterance: &Turn,
        context: &[Turn],
        cancel: &CancellationToken,
    ) -> Result<Sentiment, ModelError> {
        tokio::time::sleep(self.latency).await;
        if self.sentiment_calls.fetch_add(1, Ordering::SeqCst) < self.sentiment_failures {
            return Err(ModelError::Inference("busy".into()));
        }
        self.inner.classify(utterance, context, cancel).await
    }
}

#[async_trait]
impl Summariser for Scripted {
    async fn summarise(
        &self,
        turns: &[Turn],
        cancel: &CancellationToken,
    ) -> Result<Summary, ModelError> {
        tokio::time::sleep(self.latency).await;
        if self.summary_calls.fetch_add(1, Ordering::SeqCst) < self.summary_failures {
            return Err(ModelError::Inference("throttled".into()));
        }
        self.inner.summarise(turns, cancel).await
    }
}

/// The in-memory store, counting how often the pipeline loads a contact's log; the first
/// append of the source id or event kind in `fail_once` fails as an unavailable store would;
/// the first append of the source id of `hold` waits until the gate opens, as on a slow disk.
struct Counting {
    inner: Arc<MemoryEventStore>,
    reads: AtomicUsize,
    fail_once: std::sync::Mutex<Option<String>>,
    hold: std::sync::Mutex<Option<Arc<Gate>>>,
}

/// An append held at the store: `entered` once it is there, let through by `open`.
struct Gate {
    source_id: String,
    entered: tokio::sync::Notify,
    open: tokio::sync::Notify,
}

#[async_trait]
impl EventStore for Counting {
    async fn append(&self, events: &[StoredEvent]) -> Result<Appended, StoreError> {
        let injected = {
            let mut fail = self.fail_once.lock().unwrap();
            let hit = fail.is_some()
                && events
                    .iter()
                    .any(|e| e.source_id == *fail || Some(&e.kind) == fail.as_ref());
            if hit {
                *fail = None;
            }
            hit
        };
        if injected {
            return Err(StoreError::Unavailable("injected: disk busy".into()));
        }
        let held = {
            let mut hold = self.hold.lock().unwrap();
            match hold.as_ref() {
                Some(gate)
                    if events
                        .iter()
                        .any(|e| e.source_id == Some(gate.source_id.clone())) =>
                {
                    hold.take()
                }
                _ => None,
            }
        };
        if let Some(gate) = held {
            gate.entered.notify_one();
            gate.open.notified().await;
        }
        self.inner.append(events).await
    }

    async fn read(
        &self,
        contact_id: &str,
        range: SeqRange,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(contact_id, range).await
    }

    async fn highest_seq(&self, contact_id: &str) -> Result<u64, StoreError> {
        self.inner.highest_seq(contact_id).await
    }

    async fn read_all(&self, after: u64, max: usize) -> Result<Vec<Positioned>, StoreError> {
        self.inner.read_all(after, max).await
    }
}

/// The summary folder, counting the saves of a version the log already held.
struct Watching {
    folder: SummaryFolder,
    store: Arc<MemoryEventStore>,
    saved_after_recorded: AtomicUsize,
}

#[async_trait]
impl SummarySink for Watching {
    async fn save(&self, contact_id: &str, summary: &SummaryGenerated) -> Result<(), String> {
        let log = self.store.read(contact_id, SeqRange::all()).await.unwrap();
        if log.iter().any(|e| {
            matches!(e.decode(), Ok(Event::SummaryGenerated(s)) if s.version == summary.version)
        }) {
            self.saved_after_recorded.fetch_add(1, Ordering::SeqCst);
        }
        self.folder.save(contact_id, summary).await
    }

    async fn has(&self, contact_id: &str, version: u32) -> bool {
        self.folder.has(contact_id, version).await
    }
}

struct Harness {
    store: Arc<MemoryEventStore>,
    counting: Arc<Counting>,
    summaries: Arc<Watching>,
    pipeline: Pipeline,
    _dir: tempfile::TempDir,
}

fn start(model: Arc<Scripted>, gateway: GatewayConfig, pipeline: PipelineConfig) -> Harness {
    let backends = Backends {
        sentiment: model.clone(),
        sentiment_id: "scripted".into(),
        summariser: model,
        summary_id: "scripted".into(),
    };
    start_with(backends, gateway, pipeline)
}

fn start_with(backends: Backends, gateway: GatewayConfig, pipeline: PipelineConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryEventStore::new());
    let counting = Arc::new(Counting {
        inner: store.clone(),
        reads: AtomicUsize::new(0),
        fail_once: Default::default(),
        hold: Default::default(),
    });
    let summaries = Arc::new(Watching {
        folder: SummaryFolder::new(dir.path().join("summaries")),
        store: store.clone(),
        saved_after_recorded: AtomicUsize::new(0),
    });
    let parts = Parts {
        store: counting.clone(),
        projections: Arc::new(MemoryProjectionStore::new()),
        backends,
        attribute_sink: Arc::new(AttributeLog::open(dir.path().join("attributes.jsonl")).unwrap()),
        summary_sink: summaries.clone(),
        rules: EscalationRules::default(),
        pipeline,
        gateway: GatewayConfig {
            retry_base_ms: 5,
            retry_max_ms: 20,
            ..gateway
        },
        attributes: AttributesConfig::default(),
        audio: None,
    };
    Harness {
        store,
        counting,
        summaries,
        pipeline: Pipeline::start(parts),
        _dir: dir,
    }
}

fn incoming(line: &str, source_id: &str) -> Incoming {
    Incoming {
        record: parse(line).unwrap(),
        source_id: source_id.into(),
        position: Position {
            source: "test".into(),
            line: 1,
        },
        ack: None,
    }
}

fn segment(contact: &str, id: &str, text: &str) -> Incoming {
    incoming(
        &format!(
            r#"{{"type":"SEGMENT","contactId":"{contact}","segmentId":"{id}","participant":"CUSTOMER","transcript":"{text}","isPartial":false}}"#
        ),
        &format!("seg:{id}"),
    )
}

fn end(contact: &str) -> Incoming {
    incoming(
        &format!(r#"{{"type":"ENDED","contactId":"{contact}"}}"#),
        "ended",
    )
}

impl Harness {
    async fn send(&self, incoming: Incoming) {
        self.pipeline
            .router
            .send(Route(incoming))
            .await
            .unwrap()
            .unwrap();
    }

    async fn events(&self, contact: &str) -> Vec<Event> {
        self.store
            .read(contact, SeqRange::all())
            .await
            .unwrap()
            .iter()
            .map(|e| e.decode().unwrap())
            .collect()
    }

    /// Appends `event` to `contact`'s log behind the pipeline's back, as another worker
    /// would.
    async fn append_elsewhere(&self, contact: &str, event: Event) {
        let foreign = self.sealed_elsewhere(contact, &event).await;
        self.store.append(&[foreign]).await.unwrap();
    }

    /// `event` sealed as the next event of `contact`'s log, not yet appended.
    async fn sealed_elsewhere(&self, contact: &str, event: &Event) -> StoredEvent {
        let log: Vec<StoredEvent> = self.store.read(contact, SeqRange::all()).await.unwrap();
        let last = log.last().unwrap();
        let mut head = ChainHead {
            seq: last.seq,
            hash: last.hash.clone(),
        };
        head.seal(contact, Some("elsewhere"), event, chrono::Utc::now())
    }

    /// Holds the next append of the record with `source_id` at the store.
    fn hold_append(&self, source_id: &str) -> Arc<Gate> {
        let gate = Arc::new(Gate {
            source_id: source_id.into(),
            entered: Default::default(),
            open: Default::default(),
        });
        *self.counting.hold.lock().unwrap() = Some(gate.clone());
        gate
    }

    /// Waits until `contact`'s log has an event of `kind` (or fails after 10 s).
    async fn wait_for(&self, contact: &str, kind: &str) -> Vec<Event> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events(contact).await;
            if events.iter().any(|e| e.kind() == kind) {
                return events;
            }
            assert!(Instant::now() < deadline, "no {kind} in {events:#?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn count(events: &[Event], kind: &str) -> usize {
    events.iter().filter(|e| e.kind() == kind).count()
}

/// A pipeline with instant scripted models that ends a contact after 1 s without input.
fn with_idle_timeout_of_one_second() -> Harness {
    start(
        Scripted::new(0, 0, 0),
        GatewayConfig::default(),
        PipelineConfig {
            idle_timeout_secs: 1,
            ..Default::default()
        },
    )
}

#[actix_rt::test]
async fn a_silent_contact_ends_after_the_idle_timeout_and_is_summarised() {
    let h = with_idle_timeout_of_one_second();
    h.send(segment("quiet", "s1", "Hello?")).await;
    let events = h.wait_for("quiet", "SummaryGenerated").await;
    let ended = events
        .iter()
        .find_map(|e| match e {
            Event::ContactEnded(ended) => Some(ended.reason),
            _ => None,
        })
        .unwrap();
    assert_eq!(ended, EndReason::IdleTimeout);
}

#[actix_rt::test]
async fn finished_contacts_are_passivated_for_good_and_never_reloaded() {
    let h = start(
        Scripted::new(0, 0, 0),
        GatewayConfig::default(),
        PipelineConfig::default(),
    );
    let calls: Vec<String> = (0..20).map(|n| format!("done-{n}")).collect();
    for call in &calls {
        h.send(segment(call, "s1", "This is awful.")).await;
        h.send(end(call)).await;
    }
    for call in &calls {
        h.wait_for(call, "SummaryGenerated").await;
    }
    // Settling polls every live contact, holding their addresses meanwhile: a contact
    // passivated during a poll is restarted by its supervisor, and must stay idle.
    h.pipeline.settle(Duration::from_secs(10)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h
        .pipeline
        .router
        .send(GetActivity::default())
        .await
        .unwrap()
        .live
        > 0
    {
        assert!(Instant::now() < deadline, "contacts were not passivated");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        h.counting.reads.load(Ordering::SeqCst),
        calls.len(),
        "each contact's log was loaded once, when its first record came"
    );
}

#[actix_rt::test]
async fn a_conflicting_writer_makes_the_contact_reload_and_nothing_is_lost_or_doubled() {
    let h = start(
        Scripted::new(0, 0, 0),
        GatewayConfig::default(),
        PipelineConfig::default(),
    );
    h.send(segment("c", "s1", "This is terrible.")).await;
    h.wait_for("c", "SentimentAssessed").await;
    h.append_elsewhere(
        "c",
        Event::ContactEnded(ContactEnded {
            ended_at: chrono::Utc::now(),
            reason: EndReason::Ended,
        }),
    )
    .await;

    // The actor's next append conflicts: it reports an error and restarts from the log.
    let first = h
        .pipeline
        .router
        .send(Route(segment("c", "s2", "Awful.")))
        .await
        .unwrap();
    assert!(first.is_err(), "{first:?}");
    // Retried, the record meets the reloaded state: the contact has ended meanwhile.
    let retried = h
        .pipeline
        .router
        .send(Route(segment("c", "s2", "Awful.")))
        .await
        .unwrap();
    assert!(
        matches!(retried, Ok(InputOutcome::Refused(ref why)) if why.contains("ended")),
        "{retried:?}"
    );
    let events = h.wait_for("c", "SummaryGenerated").await;
    assert_eq!(count(&events, "ContactEnded"), 1);
    assert_eq!(count(&events, "SentimentAssessed"), 1);
    assert_eq!(count(&events, "SummaryGenerated"), 1);
    let mut check = ChainHead::default();
    for stored in h.store.read("c", SeqRange::all()).await.unwrap() {
        check.verify_next(&stored).unwrap();
    }
}

#[actix_rt::test]
async fn a_call_another_worker_took_over_is_not_ended_by_this_ones_idle_timer() {
    let h = with_idle_timeout_of_one_second();
    h.send(segment("moved", "s1", "Hello there.")).await;
    h.wait_for("moved", "SentimentAssessed").await;
    // The call's shard moved: another worker records its next utterance.
    tokio::time::sleep(Duration::from_millis(700)).await;
    h.append_elsewhere(
        "moved",
        Event::UtteranceReceived(UtteranceReceived {
            segment_id: "s2".into(),
            participant: Participant::Customer,
            text: "Are you still there?".into(),
            begin_offset_millis: None,
            end_offset_millis: None,
            redactions: Default::default(),
        }),
    )
    .await;
    // This worker's idle timer fires about now; its ContactEnded conflicts with the other
    // worker's append, and it reloads. The call then gets a whole idle period again, so a
    // record arriving soon after is still taken.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let outcome = h
        .pipeline
        .router
        .send(Route(segment("moved", "s3", "Still here.")))
        .await
        .unwrap();
    assert!(
        matches!(outcome, Ok(InputOutcome::Appended(_))),
        "{outcome:?}"
    );
    let events = h.wait_for("moved", "ContactEnded").await;
    assert_eq!(count(&events, "UtteranceReceived"), 3);
    assert_eq!(count(&events, "ContactEnded"), 1);
}

#[actix_rt::test]
async fn summaries_are_retried_through_a_throttling_storm_and_never_dropped() {
    let model = Scripted::new(0, 0, 6);
    let h = start(
        model.clone(),
        GatewayConfig::default(),
        PipelineConfig::default(),
    );
    h.send(segment("s", "s1", "Hi")).await;
    h.send(end("s")).await;
    let events = h.wait_for("s", "SummaryGenerated").await;
    assert_eq!(count(&events, "SummaryGenerated"), 1);
    assert_eq!(model.summary_calls.load(Ordering::SeqCst), 7);
    // Saved before it was recorded: a crash in between cannot leave it unsaved.
    assert!(h.summaries.has("s", 1).await);
    assert_eq!(h.summaries.saved_after_recorded.load(Ordering::SeqCst), 0);
}

#[actix_rt::test]
async fn sentiment_that_keeps_failing_is_recorded_as_skipped() {
    let h = start(
        Scripted::new(0, 100, 0),
        GatewayConfig {
            sentiment_attempts: 3,
            ..Default::default()
        },
        PipelineConfig::default(),
    );
    h.send(segment("f", "s1", "Hello")).await;
    let events = h.wait_for("f", "ModelCallSkipped").await;
    let Some(Event::ModelCallSkipped(skipped)) =
        events.iter().find(|e| e.kind() == "ModelCallSkipped")
    else {
        unreachable!()
    };
    assert_eq!(skipped.segment_ids, ["s1"]);
    assert!(skipped.why.contains("busy"), "{}", skipped.why);
}

fn spoken(contact: &str, id: &str, participant: &str, text: &str) -> Incoming {
    incoming(
        &format!(
            r#"{{"type":"SEGMENT","contactId":"{contact}","segmentId":"{id}","participant":"{participant}","transcript":"{text}"}}"#
        ),
        &format!("seg:{id}"),
    )
}

/// The segment ids of `kind` events (judged or skipped, coalesced ones included).
fn judged_ids(events: &[Event], kind: &str) -> Vec<String> {
    events
        .iter()
        .flat_map(|e| match e {
            Event::SentimentAssessed(j) if kind == "SentimentAssessed" => {
                let mut ids = j.coalesced.clone();
                ids.push(j.segment_id.clone());
                ids
            }
            Event::ModelCallSkipped(s) if kind == "ModelCallSkipped" => s.segment_ids.clone(),
            _ => Vec::new(),
        })
        .collect()
}

#[actix_rt::test]
async fn a_backlog_past_its_deadline_still_judges_each_contacts_latest_customer_utterance() {
    let h = start(
        Scripted::new(300, 0, 0),
        GatewayConfig {
            sentiment_deadline_ms: 100,
            max_coalesced: 1,
            limits: ModelLimits {
                concurrency: 1,
                ..Default::default()
            },
            ..Default::default()
        },
        PipelineConfig::default(),
    );
    for contact in ["a", "b", "c"] {
        h.send(segment(contact, "s1", "Hello")).await;
    }
    h.send(spoken("d", "d1", "CUSTOMER", "This is ridiculous"))
        .await;
    h.send(spoken("d", "d2", "AGENT", "Let me check")).await;
    h.send(spoken("d", "d3", "CUSTOMER", "Still waiting")).await;
    h.send(spoken("d", "d4", "CUSTOMER", "I want a refund"))
        .await;
    for contact in ["a", "b", "c"] {
        let events = h.wait_for(contact, "SentimentAssessed").await;
        assert_eq!(
            judged_ids(&events, "SentimentAssessed"),
            ["s1"],
            "{contact}"
        );
        assert_eq!(count(&events, "ModelCallSkipped"), 0, "{contact}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = h.events("d").await;
        let settled = judged_ids(&events, "SentimentAssessed").len()
            + judged_ids(&events, "ModelCallSkipped").len();
        if settled == 4 {
            break events;
        }
        assert!(Instant::now() < deadline, "d not settled: {events:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(judged_ids(&events, "SentimentAssessed"), ["d4"]);
    let mut skipped = judged_ids(&events, "ModelCallSkipped");
    skipped.sort();
    assert_eq!(
        skipped,
        ["d1", "d2", "d3"],
        "superseded and agent turns are dropped"
    );
}

#[actix_rt::test]
async fn a_long_wait_for_a_summary_never_delays_a_short_wait_for_sentiment() {
    let judge = Scripted::new(0, 0, 0);
    let write = Scripted::new(0, 0, 0);
    let backends = Backends {
        sentiment: judge,
        sentiment_id: "judge".into(),
        summariser: write,
        summary_id: "writer".into(),
    };
    let limits = |requests_per_second, tokens_per_minute| ModelLimits {
        requests_per_second,
        tokens_per_minute,
        concurrency: 1,
    };
    let h = start_with(
        backends,
        GatewayConfig {
            models: [
                ("judge".to_string(), limits(1, 0)),
                ("writer".to_string(), limits(0, 600)),
            ]
            .into(),
            ..Default::default()
        },
        PipelineConfig::default(),
    );
    // Two long calls: the second one's summary waits about 40 s for the writer's budget.
    let words = "words ".repeat(300);
    for contact in ["long-1", "long-2"] {
        h.send(segment(contact, "l1", &words)).await;
        h.wait_for(contact, "SentimentAssessed").await;
    }
    h.send(end("long-1")).await;
    h.wait_for("long-1", "SummaryGenerated").await;
    h.send(end("long-2")).await;
    // Two utterances at once: the second waits about a second for the judge's budget.
    h.send(segment("short-a", "s1", "Hello")).await;
    h.send(segment("short-b", "s1", "Hello")).await;
    for contact in ["short-a", "short-b"] {
        let events = h.wait_for(contact, "SentimentAssessed").await;
        assert_eq!(judged_ids(&events, "SentimentAssessed"), ["s1"]);
    }
    assert_eq!(
        count(&h.events("long-2").await, "SummaryGenerated"),
        0,
        "still waiting"
    );
}

#[actix_rt::test]
async fn summaries_are_not_starved_by_steady_sentiment_load() {
    let h = start(
        Scripted::new(50, 0, 0),
        GatewayConfig {
            summary_max_defer_ms: 100,
            max_coalesced: 1,
            sentiment_deadline_ms: 60_000,
            ..Default::default()
        },
        PipelineConfig::default(),
    );
    h.send(segment("ended", "e1", "Thanks")).await;
    h.wait_for("ended", "SentimentAssessed").await;
    let contacts: Vec<String> = (0..40).map(|i| format!("busy-{i}")).collect();
    for contact in &contacts {
        h.send(segment(contact, "b1", "Hello")).await;
    }
    h.send(end("ended")).await;
    h.wait_for("ended", "SummaryGenerated").await;
    let mut judged = 0;
    for contact in &contacts {
        judged += count(&h.events(contact).await, "SentimentAssessed");
    }
    assert!(
        judged < contacts.len(),
        "the summary waited for all {judged} queued judgements"
    );
}

#[actix_rt::test]
async fn a_contacts_queued_utterances_are_judged_together() {
    let h = start(
        Scripted::new(200, 0, 0),
        GatewayConfig {
            limits: ModelLimits {
                concurrency: 1,
                ..Default::default()
            },
            ..Default::default()
        },
        PipelineConfig::default(),
    );
    h.send(segment("busy", "s0", "Hello")).await; // occupies the model
    for id in ["s1", "s2", "s3"] {
        h.send(segment("q", id, "This is ridiculous")).await;
    }
    let events = h.wait_for("q", "SentimentAssessed").await;
    let Some(Event::SentimentAssessed(judged)) =
        events.iter().find(|e| e.kind() == "SentimentAssessed")
    else {
        unreachable!()
    };
    assert_eq!(judged.segment_id, "s3");
    assert_eq!(judged.coalesced, ["s1", "s2"]);
    assert_eq!(
        count(&events, "EscalationRaised"),
        0,
        "one judgement, one window entry"
    );
}

#[actix_rt::test]
async fn a_record_the_store_refused_once_keeps_its_place_in_the_contacts_order() {
    let h = start(
        Scripted::new(0, 0, 0),
        GatewayConfig::default(),
        PipelineConfig::default(),
    );
    *h.counting.fail_once.lock().unwrap() = Some("seg:s2".into());
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    for id in ["s1", "s2", "s3", "s4"] {
        tx.send(Ingested::Record(segment("o", id, "Hello")))
            .await
            .unwrap();
    }
    tx.send(Ingested::Record(end("o"))).await.unwrap();
    for id in ["x1", "x2"] {
        tx.send(Ingested::Record(segment("other", id, "Hi")))
            .await
            .unwrap();
    }
    drop(tx);
    let rejects = RejectLog::open(&h._dir.path().join("rejected.jsonl")).unwrap();
    let stats = feed(h.pipeline.router.clone(), rx, &rejects, 64).await;
    assert_eq!(
        (stats.appended, stats.refused, stats.undeliverable),
        (7, 0, 0)
    );
    let said: Vec<String> = h
        .events("o")
        .await
        .iter()
        .filter_map(|e| match e {
            Event::UtteranceReceived(u) => Some(u.segment_id.clone()),
            Event::ContactEnded(_) => Some("ENDED".into()),
            _ => None,
        })
        .collect();
    assert_eq!(said, ["s1", "s2", "s3", "s4", "ENDED"]);
}

#[actix_rt::test]
async fn an_outcome_the_store_refused_once_is_recorded_again_not_redone() {
    let model = Scripted::new(0, 0, 0);
    let h = start(
        model.clone(),
        GatewayConfig::default(),
        PipelineConfig::default(),
    );
    *h.counting.fail_once.lock().unwrap() = Some("SentimentAssessed".into());
    h.send(segment("r", "s1", "Hello")).await;
    let events = h.wait_for("r", "SentimentAssessed").await;
    assert_eq!(count(&events, "SentimentAssessed"), 1);
    // Long enough for a redone call to show.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(count(&h.events("r").await, "SentimentAssessed"), 1);
    assert_eq!(
        model.sentiment_calls.load(Ordering::SeqCst),
        1,
        "judged once; only the record of it was retried"
    );
}

#[actix_rt::test]
async fn a_contact_whose_log_fails_verification_is_quarantined_once_and_its_records_refused() {
    let h = start(
        Scripted::new(0, 0, 0),
        GatewayConfig::default(),
        PipelineConfig::default(),
    );
    h.send(segment("p", "s1", "Hello")).await;
    h.wait_for("p", "SentimentAssessed").await;
    // Another writer appends an event whose hash does not match its content.
    let ended = Event::ContactEnded(ContactEnded {
        ended_at: chrono::Utc::now(),
        reason: EndReason::Ended,
    });
    let mut forged = h.sealed_elsewhere("p", &ended).await;
    forged.payload.push(' ');
    h.store.append(&[forged]).await.unwrap();
    let loads = h.counting.reads.load(Ordering::SeqCst);
    // The next record makes the actor reload (its append conflicts) and find the break.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for id in ["s2", "s3"] {
        tx.send(Ingested::Record(segment("p", id, "Still there?")))
            .await
            .unwrap();
    }
    drop(tx);
    let rejects_path = h._dir.path().join("rejected.jsonl");
    let rejects = RejectLog::open(&rejects_path).unwrap();
    let stats = feed(h.pipeline.router.clone(), rx, &rejects, 8).await;
    assert_eq!(
        (stats.appended, stats.refused, stats.undeliverable),
        (0, 2, 0)
    );
    let rejected = std::fs::read_to_string(&rejects_path).unwrap();
    assert_eq!(
        rejected.lines().count(),
        2,
        "each record dead-lettered once"
    );
    assert!(rejected.contains("quarantined"), "{rejected}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        h.counting.reads.load(Ordering::SeqCst),
        loads + 1,
        "loaded once, not retried every second"
    );
}

#[actix_rt::test]
async fn a_contact_restarted_while_its_utterance_is_being_judged_does_not_have_it_judged_twice() {
    let model = Scripted::new(300, 0, 0);
    let h = start(
        model.clone(),
        GatewayConfig {
            max_coalesced: 1,
            limits: ModelLimits {
                concurrency: 4,
                ..Default::default()
            },
            ..Default::default()
        },
        PipelineConfig::default(),
    );
    h.send(segment("g", "s1", "Where is my parcel?")).await;
    tokio::time::sleep(Duration::from_millis(50)).await; // s1 is with the model now
    h.append_elsewhere(
        "g",
        Event::ContactStarted(ContactStarted {
            instance_id: Some("i-2".into()),
            channel: None,
            started_at: chrono::Utc::now(),
            media_stream_arn: None,
            start_fragment_number: None,
            implicit: false,
            rules: None,
        }),
    )
    .await;
    // The next append conflicts: the actor restarts from the log and asks for s1 again.
    let conflicted = h
        .pipeline
        .router
        .send(Route(segment("g", "s2", "Hello?")))
        .await
        .unwrap();
    assert!(conflicted.is_err(), "{conflicted:?}");
    h.send(segment("g", "s2", "Hello?")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = h.events("g").await;
        if judged_ids(&events, "SentimentAssessed").len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not judged: {events:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // a second call of s1 would end by now
    assert_eq!(
        model.sentiment_calls.load(Ordering::SeqCst),
        2,
        "s1 and s2 once each"
    );
    assert_eq!(count(&h.events("g").await, "SentimentAssessed"), 2);
}

#[actix_rt::test]
async fn records_queued_for_a_contact_let_go_are_handed_back_and_its_fence_keeps_it_off_this_worker()
 {
    let h = start(
        Scripted::new(0, 0, 0),
        GatewayConfig::default(),
        PipelineConfig::default(),
    );
    let router = h.pipeline.router.clone();
    h.send(segment("r", "s1", "Hello.")).await;
    // s2's append is on its way to the store, s3 waits behind it in the actor's mailbox when
    // the contact's shard leaves this worker.
    let gate = h.hold_append("seg:s2");
    let appending = router.send(Route(segment("r", "s2", "Still there?")));
    gate.entered.notified().await;
    let queued = router.send(Route(segment("r", "s3", "Hello?")));
    let released = router
        .send(Release {
            selects: Box::new(|id| id == "r"),
            fence: Some("shard-0".into()),
        })
        .await
        .unwrap();
    assert_eq!(released, 1);
    gate.open.notify_one();
    assert!(matches!(
        appending.await.unwrap(),
        Ok(InputOutcome::Appended(_))
    ));
    let handed_back = queued.await.unwrap();
    assert!(
        handed_back.is_err(),
        "the halted actor took s3: {handed_back:?}"
    );
    // Fenced: the record is answered NotOwned, and the contact is neither started nor
    // resumed here.
    let again = router
        .send(Route(segment("r", "s3", "Hello?")))
        .await
        .unwrap();
    assert!(matches!(again, Ok(InputOutcome::NotOwned)), "{again:?}");
    router.send(Resume(vec!["r".into()])).await.unwrap();
    let activity = router.send(GetActivity::default()).await.unwrap();
    assert_eq!(activity.live, 0, "{activity:?}");
    let stored = |events: Vec<Event>| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::UtteranceReceived(u) => Some(u.segment_id.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(stored(h.events("r").await), ["s1", "s2"]);
    // The shard comes back: the contact reloads from the log and takes s3, once.
    router.send(Unfence("shard-0".into())).await.unwrap();
    h.send(segment("r", "s3", "Hello?")).await;
    assert_eq!(stored(h.events("r").await), ["s1", "s2", "s3"]);
}
