//! `callpulse bench pipeline`: the whole pipeline under synthetic calls, measured end to end.
//!
//! Calls are generated as JSON Lines in memory and go through the real path: a byte stream
//! read by `read_jsonl`, the bounded channel, `feed`, the router, one contact actor per call,
//! the model gateway, the attribute sink and the SQLite event log in a fresh temporary data
//! directory. The calls are interleaved round by round (every call's STARTED, then every
//! call's first utterance, ...), so all of them are open at once; paced, call `i` says its
//! `k`-th line at `k * pace + i * pace / calls`. Customer and agent speak in turn; the last
//! customer utterances (at least two) carry negative cue words, so with the stand-in and the
//! default rules every call escalates once, at a known utterance.
//!
//! Latencies come from the log itself: an event's `recorded_at` (taken when the contact actor
//! seals it, just before the append) minus the time its utterance was due (paced) or written
//! to the source (unpaced).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use anyhow::Context;
use chrono::Utc;
use serde::Serialize;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use crate::actors::Pipeline;
use crate::actors::feed::feed;
use crate::actors::gateway::ModelLimits;
use crate::actors::router::{ContactRouter, GetActivity, shard_of};
use crate::app::bench::{Latency, peak_rss_mib};
use crate::app::{self, DataDir};
use crate::config::{Backend, Config};
use crate::events::contact::Contact;
use crate::events::rules::EscalationRules;
use crate::events::{Event, Participant};
use crate::ingest::source::{RejectLog, read_jsonl};
use crate::store::{EventStore, Positioned};

/// Bytes the in-memory source stream buffers between the generator and the reader.
const PIPE_BYTES: usize = 64 * 1024;
/// Calls whose lines are written at once when running as fast as possible.
const FAST_BATCH: usize = 64;
/// Most lines written at once when paced.
const MAX_PACED_BATCH: usize = 1024;
/// Events per read of the log.
const PAGE: usize = 10_000;
/// Longest wait for model and sink work after the input ends.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(1800);
/// Idle timeout during the bench (calls are never idle that long).
const IDLE_TIMEOUT_SECS: u64 = 3600;
/// Concurrency given to the stand-in's gateway lane: effectively unlimited.
const STAND_IN_CONCURRENCY: usize = 100_000;
/// Longest wait for every call to be open before memory is sampled.
const OPEN_WAIT: Duration = Duration::from_secs(10);
/// Marks an utterance not sent (yet).
const UNSENT: i64 = i64::MIN;

/// What judges and summarises during the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchModel {
    /// The fixed-latency stand-in (not a model: labels by cue words).
    StandIn {
        /// Its latency per call, ms.
        latency_ms: u64,
    },
    /// The configured local model.
    Local,
}

/// How `bench pipeline` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineBenchOptions {
    /// The model.
    pub model: BenchModel,
    /// Calls, all open at once.
    pub calls: usize,
    /// Final utterances per call, customer and agent in turn (at least 3).
    pub utterances_per_call: usize,
    /// Gap between one call's lines, ms; `None` = as fast as the pipeline takes them.
    pub pace_ms: Option<u64>,
}

/// Latency percentiles in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatencyMs {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl LatencyMs {
    /// Percentiles of `samples_ms`; `None` when there are none.
    fn of(mut samples_ms: Vec<f64>) -> Option<Self> {
        if samples_ms.is_empty() {
            return None;
        }
        let latency = Latency::of(&mut samples_ms);
        Some(Self {
            n: latency.n,
            p50_ms: latency.p50_ms,
            p99_ms: latency.p99_ms,
            max_ms: samples_ms.last().copied().unwrap_or_default(),
        })
    }
}

/// What the bench ran.
#[derive(Debug, Clone, Serialize)]
pub struct BenchSetup {
    /// Calls, all open at once.
    pub calls: usize,
    /// Final utterances per call (customer first, then agent, in turn).
    pub utterances_per_call: usize,
    /// Customer utterances per call.
    pub customer_utterances_per_call: usize,
    /// The utterance (1-based) at which a call escalates with the stand-in and the default
    /// rules (2 of the last 3 customer utterances NEGATIVE).
    pub escalates_at_utterance: usize,
    /// Gap between one call's lines, ms (none = as fast as possible).
    pub pace_ms: Option<u64>,
    /// CPU cores available.
    pub cores: usize,
    /// `release`, or `dev` (debug assertions on; the dev profile optimises only the
    /// dependencies unless `CARGO_PROFILE_DEV_OPT_LEVEL` says otherwise).
    pub build: &'static str,
    /// Settings the bench changed, in words.
    pub overrides: Vec<String>,
}

/// Records and events per second.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Input records (STARTED, segments, ENDED) written to the source.
    pub records: u64,
    /// Of those, appended to the log.
    pub records_appended: u64,
    /// Of those, duplicates, refused, rejected or undeliverable (should be 0).
    pub records_not_appended: u64,
    /// From the first line written to the last record durable, seconds.
    pub feed_s: f64,
    /// `records_appended / feed_s`.
    pub records_per_s: f64,
    /// From the first line written to all model and sink work done, seconds.
    pub settle_s: f64,
    /// Events in the log at the end (records and everything they led to).
    pub events: u64,
    /// `events / settle_s`.
    pub events_per_s: f64,
    /// Contacts still owing work when the bench stopped waiting (should be 0).
    pub unsettled_contacts: usize,
    /// Paced runs: how late the generator wrote a line at worst, ms.
    pub producer_max_lag_ms: f64,
}

/// From a customer utterance to what it led to.
#[derive(Debug, Clone, Serialize)]
pub struct Latencies {
    /// Customer utterances sent.
    pub customer_utterances: u64,
    /// Of those, judged (possibly coalesced with a later one).
    pub customer_judged: u64,
    /// Of those, skipped by the gateway (deadline or overload).
    pub customer_skipped: u64,
    /// Utterance due (paced) or written (unpaced) → its SentimentAssessed recorded.
    pub utterance_to_sentiment: Option<LatencyMs>,
    /// EscalationRaised events.
    pub escalations: u64,
    /// Calls that escalated exactly once.
    pub calls_escalated_once: u64,
    /// Escalations fired by the utterance `escalates_at_utterance`.
    pub escalations_at_expected_utterance: u64,
    /// Utterance that fired an escalation due or written → its EscalationRaised recorded.
    pub utterance_to_escalation: Option<LatencyMs>,
    /// AttributesUpdated events.
    pub attribute_updates: u64,
    /// Utterance that fired an escalation due or written → its AttributesUpdated recorded.
    pub utterance_to_attributes: Option<LatencyMs>,
}

/// Resident memory.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// After the pipeline started, before the first line, MiB.
    pub rss_before_mib: f64,
    /// Just before the first ENDED line, every call open, MiB.
    pub rss_open_mib: f64,
    /// Live contact actors at that moment.
    pub open_contacts: usize,
    /// `(rss_open - rss_before) / open_contacts`, KiB.
    pub kib_per_open_contact: f64,
    /// Peak resident memory of the process (VmHWM) before the replay, MiB.
    pub peak_rss_mib: f64,
}

/// Rebuilding every contact from the log.
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    /// Events read.
    pub events: u64,
    /// Contacts rebuilt.
    pub contacts: usize,
    /// Threads folding (one per core; each contact is folded by one of them).
    pub fold_threads: usize,
    /// Seconds.
    pub seconds: f64,
    /// `events / seconds`.
    pub events_per_s: f64,
    /// Time spent reading pages (SQLite query and rows to events), seconds; overlaps
    /// `fold_s`.
    pub read_s: f64,
    /// Time spent checking chains, decoding and folding (wall, all threads), seconds.
    pub fold_s: f64,
}

/// What `bench pipeline` measured.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineBench {
    /// The model: a local model id, or `stand-in (fixed latency N ms)`.
    pub model: String,
    /// What ran.
    pub setup: BenchSetup,
    /// Records and events per second.
    pub throughput: Throughput,
    /// Utterance-to-effect latencies.
    pub latency: Latencies,
    /// Resident memory.
    pub memory: Memory,
    /// Global log read in pages, each contact's chain verified, every event decoded and
    /// folded into its contact (what `Contact::load` does); contacts split over a thread per
    /// core, reading overlapping folding.
    pub replay: Replay,
}

/// The calls: ids, lines and when each is due.
struct Shape {
    calls: usize,
    utterances: usize,
    /// Customer utterances from this index on (counted among customer utterances) are
    /// negative.
    first_negative: usize,
}

impl Shape {
    fn new(calls: usize, utterances: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(calls > 0, "at least one call");
        anyhow::ensure!(
            utterances >= 3,
            "at least 3 utterances per call (two of them customer utterances)"
        );
        let customer = utterances.div_ceil(2);
        Ok(Self {
            calls,
            utterances,
            first_negative: customer - (customer / 2).max(2),
        })
    }

    fn customer_utterances(&self) -> usize {
        self.utterances.div_ceil(2)
    }

    /// 0-based index of the utterance that escalates (the second negative customer one).
    fn escalating(&self) -> usize {
        2 * (self.first_negative + 1)
    }

    /// STARTED, the utterances, ENDED.
    fn rounds(&self) -> usize {
        self.utterances + 2
    }

    /// When line `round` of call `call` is due, from the start.
    fn due(&self, round: usize, call: usize, pace: Duration) -> Duration {
        let steps = (round * self.calls + call) as u128;
        let nanos = pace.as_nanos() * steps / self.calls as u128;
        Duration::from_nanos(nanos.try_into().unwrap_or(u64::MAX))
    }

    fn write_line(&self, out: &mut Vec<u8>, round: usize, call: usize) {
        let contact = format!("bench-{call}");
        let written = if round == 0 {
            writeln!(
                out,
                r#"{{"type":"STARTED","contactId":"{contact}","instanceId":"bench","channel":"VOICE"}}"#
            )
        } else if round <= self.utterances {
            let k = round - 1;
            let participant = if is_customer(k) { "CUSTOMER" } else { "AGENT" };
            let text = self.text(k, call);
            let begin = k * 4000;
            writeln!(
                out,
                r#"{{"type":"SEGMENT","contactId":"{contact}","segmentId":"s{k}","participant":"{participant}","transcript":"{text}","isPartial":false,"beginOffsetMillis":{begin},"endOffsetMillis":{}}}"#,
                begin + 3500
            )
        } else {
            writeln!(out, r#"{{"type":"ENDED","contactId":"{contact}"}}"#)
        };
        written.expect("writing to a Vec cannot fail");
    }

    /// What utterance `k` of `call` says: neutral, or negative cue words for the last
    /// customer utterances.
    fn text(&self, k: usize, call: usize) -> String {
        const NEUTRAL: [&str; 4] = [
            "Hello, I am calling about order {n}, it has not arrived yet.",
            "The tracking page says it left the depot on Monday.",
            "Can you tell me when it will be delivered to my address?",
            "I was told last week that it would come on Friday.",
        ];
        const NEGATIVE: [&str; 4] = [
            "This is ridiculous, I have called three times about order {n}.",
            "Honestly this is the worst service I have ever had.",
            "Your tracking system is useless and nobody calls back.",
            "This is terrible, I want to speak to a manager now.",
        ];
        const AGENT: [&str; 4] = [
            "Let me look up order {n} for you.",
            "I can see the parcel is at the local depot.",
            "I will ask the courier for a delivery slot.",
            "One moment while I check the details.",
        ];
        let turn = k / 2;
        let template = if !is_customer(k) {
            AGENT[turn % AGENT.len()]
        } else if turn >= self.first_negative {
            NEGATIVE[(turn - self.first_negative) % NEGATIVE.len()]
        } else {
            NEUTRAL[turn % NEUTRAL.len()]
        };
        template.replace("{n}", &(100_000 + call).to_string())
    }

    fn call_index(&self, contact_id: &str) -> Option<usize> {
        let call: usize = contact_id.strip_prefix("bench-")?.parse().ok()?;
        (call < self.calls).then_some(call)
    }

    fn segment_index(&self, segment_id: &str) -> Option<usize> {
        let k: usize = segment_id.strip_prefix('s')?.parse().ok()?;
        (k < self.utterances).then_some(k)
    }

    /// When utterance `segment_id` of `call` was written (µs since the epoch).
    fn sent_at(&self, sent: &[i64], call: usize, segment_id: &str) -> Option<i64> {
        let k = self.segment_index(segment_id)?;
        Some(sent[call * self.utterances + k]).filter(|&t| t != UNSENT)
    }
}

/// Customer and agent speak in turn, the customer first.
fn is_customer(k: usize) -> bool {
    k.is_multiple_of(2)
}

/// Current resident memory (VmRSS), MiB; 0 where /proc is unavailable.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The config the bench runs with, and what it changed.
fn bench_config(config: &Config, model: BenchModel) -> (Config, Vec<String>) {
    let mut config = config.clone();
    let mut overrides = vec![
        "store: SQLite (WAL) in a fresh temporary data directory".to_string(),
        format!("pipeline.idle_timeout_secs = {IDLE_TIMEOUT_SECS}"),
    ];
    config.pipeline.idle_timeout_secs = IDLE_TIMEOUT_SECS;
    match model {
        BenchModel::Local => config.models.backend = Backend::Local,
        BenchModel::StandIn { latency_ms } => {
            config.models.backend = Backend::StandIn;
            config.models.stand_in_latency_ms = latency_ms;
            let limits = ModelLimits {
                requests_per_second: 0,
                tokens_per_minute: 0,
                concurrency: STAND_IN_CONCURRENCY,
            };
            config.gateway.limits = limits.clone();
            config.gateway.models.clear();
            overrides.push(format!(
                "gateway: stand-in concurrency {STAND_IN_CONCURRENCY}, no request or token rate limit"
            ));
            if config.attributes.requests_per_second != 0 {
                overrides.push(format!(
                    "attributes.requests_per_second = 0 (unlimited; the configured {}/s is a \
                     Connect quota and would make the attribute sink, not the pipeline, the \
                     bottleneck)",
                    config.attributes.requests_per_second
                ));
                config.attributes.requests_per_second = 0;
            }
        }
    }
    (config, overrides)
}

/// What the generator did.
struct Produced {
    records: u64,
    max_lag: Duration,
    rss_open_mib: f64,
    open_contacts: usize,
}

/// Writes every call's lines to `pipe`, round by round, on schedule when `pace` is set;
/// stamps each utterance's time into `sent` (when it was due, or, unpaced, written);
/// samples memory just before the first ENDED line, once the router has every call open.
async fn produce(
    mut pipe: DuplexStream,
    shape: &Shape,
    pace: Option<Duration>,
    sent: &mut [i64],
    router: &Addr<ContactRouter>,
) -> anyhow::Result<Produced> {
    let start = tokio::time::Instant::now();
    let start_micros = Utc::now().timestamp_micros();
    let mut buf = Vec::with_capacity(PIPE_BYTES);
    let mut produced = Produced {
        records: 0,
        max_lag: Duration::ZERO,
        rss_open_mib: 0.0,
        open_contacts: 0,
    };
    for round in 0..shape.rounds() {
        if round == shape.rounds() - 1 {
            // Every call open: wait (briefly) until the router has seen each one.
            let waiting = Instant::now();
            loop {
                produced.open_contacts = router.send(GetActivity::default()).await?.live;
                if produced.open_contacts >= shape.calls || waiting.elapsed() > OPEN_WAIT {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            produced.rss_open_mib = rss_mib();
        }
        let mut i = 0;
        while i < shape.calls {
            let j = match pace {
                None => (i + FAST_BATCH).min(shape.calls),
                Some(pace) => {
                    let due = start + shape.due(round, i, pace);
                    tokio::time::sleep_until(due).await;
                    let now = tokio::time::Instant::now();
                    produced.max_lag = produced.max_lag.max(now - due);
                    let mut j = i + 1;
                    while j < shape.calls
                        && j - i < MAX_PACED_BATCH
                        && start + shape.due(round, j, pace) <= now
                    {
                        j += 1;
                    }
                    j
                }
            };
            buf.clear();
            for call in i..j {
                shape.write_line(&mut buf, round, call);
            }
            if (1..=shape.utterances).contains(&round) {
                let now = Utc::now().timestamp_micros();
                for call in i..j {
                    // Paced, an utterance counts from when it was due, so a late write (a busy
                    // pipeline thread) is part of its latency.
                    let at = pace.map_or(now, |pace| {
                        start_micros + shape.due(round, call, pace).as_micros() as i64
                    });
                    sent[call * shape.utterances + round - 1] = at;
                }
            }
            pipe.write_all(&buf)
                .await
                .context("the source reader stopped")?;
            produced.records += (j - i) as u64;
            i = j;
        }
    }
    Ok(produced)
}

/// What the log says happened.
#[derive(Default)]
struct Observed {
    events: u64,
    customer_judged: u64,
    customer_skipped: u64,
    sentiment_ms: Vec<f64>,
    escalations: u64,
    at_expected: u64,
    escalations_per_call: Vec<u32>,
    escalation_ms: Vec<f64>,
    attribute_updates: u64,
    attribute_ms: Vec<f64>,
}

fn ms_between(from_micros: i64, to_micros: i64) -> f64 {
    (to_micros - from_micros) as f64 / 1e3
}

/// Reads the whole log and matches events to the utterances that led to them.
async fn observe(store: &dyn EventStore, shape: &Shape, sent: &[i64]) -> anyhow::Result<Observed> {
    let mut seen = Observed {
        escalations_per_call: vec![0; shape.calls],
        ..Observed::default()
    };
    // (call, seq of its EscalationRaised) → when the utterance that fired it was written.
    let mut raised: HashMap<(usize, u64), i64> = HashMap::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.position;
        for item in &page {
            let stored = &item.event;
            seen.events += 1;
            let Some(call) = shape.call_index(&stored.contact_id) else {
                continue;
            };
            let at = stored.recorded_at.timestamp_micros();
            match stored.decode()? {
                Event::SentimentAssessed(s) if s.participant == Participant::Customer => {
                    for segment in std::iter::once(&s.segment_id).chain(&s.coalesced) {
                        if let Some(t) = shape.sent_at(sent, call, segment) {
                            seen.customer_judged += 1;
                            seen.sentiment_ms.push(ms_between(t, at));
                        }
                    }
                }
                Event::ModelCallSkipped(s) => {
                    seen.customer_skipped += s
                        .segment_ids
                        .iter()
                        .filter(|seg| shape.segment_index(seg).is_some_and(is_customer))
                        .count() as u64;
                }
                Event::EscalationRaised(r) => {
                    seen.escalations += 1;
                    seen.escalations_per_call[call] += 1;
                    let trigger = r
                        .evidence
                        .iter()
                        .filter_map(|seg| shape.segment_index(seg))
                        .max();
                    if trigger == Some(shape.escalating()) {
                        seen.at_expected += 1;
                    }
                    if let Some(t) = trigger.map(|k| sent[call * shape.utterances + k])
                        && t != UNSENT
                    {
                        seen.escalation_ms.push(ms_between(t, at));
                        raised.insert((call, stored.seq), t);
                    }
                }
                Event::AttributesUpdated(u) => {
                    seen.attribute_updates += 1;
                    if let Some(&t) = raised.get(&(call, u.for_seq)) {
                        seen.attribute_ms.push(ms_between(t, at));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(seen)
}

/// Loads each event into its contact ([`Contact::load_next`]).
fn fold_events(
    contacts: &mut HashMap<String, Contact>,
    events: &[&Positioned],
    rules: &Arc<EscalationRules>,
) -> anyhow::Result<()> {
    for item in events {
        let stored = &item.event;
        contacts
            .entry(stored.contact_id.clone())
            .or_insert_with(|| Contact::new(stored.contact_id.clone(), rules.clone()))
            .load_next(stored)
            .map_err(|e| anyhow::anyhow!("{}#{}: {e}", stored.contact_id, stored.seq))?;
    }
    Ok(())
}

/// Folds `page` into the contacts, a thread per shard; a contact always falls in the same
/// shard, so its events are still folded in order.
fn fold_page(
    shards: &mut [HashMap<String, Contact>],
    page: &[Positioned],
    rules: &Arc<EscalationRules>,
) -> anyhow::Result<()> {
    let mut parts: Vec<Vec<&Positioned>> = vec![Vec::new(); shards.len()];
    for item in page {
        parts[shard_of(&item.event.contact_id, shards.len())].push(item);
    }
    std::thread::scope(|scope| {
        let workers: Vec<_> = shards
            .iter_mut()
            .zip(&parts)
            .map(|(shard, part)| scope.spawn(move || fold_events(shard, part, rules)))
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a fold thread panicked"))
    })
}

/// Rebuilds every contact from the global log, page by page: the contacts are split over
/// one folding thread per core, and the next page is read while the current one is folded.
async fn replay(store: &dyn EventStore, rules: Arc<EscalationRules>) -> anyhow::Result<Replay> {
    let timed_read = |after| async move {
        let started = Instant::now();
        let page = store.read_all(after, PAGE).await;
        (page, started.elapsed())
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let mut shards: Vec<HashMap<String, Contact>> = vec![HashMap::new(); cores];
    let mut events = 0;
    let (mut page, mut read_busy) = timed_read(0).await;
    let mut fold_busy = Duration::ZERO;
    loop {
        let current = page?;
        let Some(last) = current.last() else {
            break;
        };
        let after = last.position;
        events += current.len() as u64;
        let rules = rules.clone();
        let folding = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            fold_page(&mut shards, &current, &rules).map(|()| (shards, started.elapsed()))
        });
        let ((next, read_took), folded) = tokio::join!(timed_read(after), folding);
        let (folded, fold_took) = folded.context("folding task failed")??;
        shards = folded;
        read_busy += read_took;
        fold_busy += fold_took;
        page = next;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Replay {
        events,
        contacts: shards.iter().map(HashMap::len).sum(),
        fold_threads: cores,
        seconds,
        events_per_s: events as f64 / seconds,
        read_s: read_busy.as_secs_f64(),
        fold_s: fold_busy.as_secs_f64(),
    })
}

/// Runs the bench inside the current actix `System` and reports what it measured.
pub async fn pipeline(
    config: &Config,
    options: PipelineBenchOptions,
) -> anyhow::Result<PipelineBench> {
    let shape = Shape::new(options.calls, options.utterances_per_call)?;
    let (config, overrides) = bench_config(config, options.model);
    let backends = app::backends(&config).await?;
    let model = backends.sentiment_id.clone();
    let dir = tempfile::tempdir().context("creating a temporary data directory")?;
    let data = DataDir::open(dir.path())?;
    let parts = app::parts(&config, &data, backends).await?;
    let store = parts.store.clone();
    let pipeline = Pipeline::start(parts);
    let rejects = RejectLog::open(&data.reject_log())
        .with_context(|| format!("opening {}", data.reject_log().display()))?;
    let max_in_flight = config.pipeline.max_in_flight.max(1);
    let (tx, rx) = mpsc::channel(max_in_flight);
    let (writer, reader) = tokio::io::duplex(PIPE_BYTES);
    // Every slot written now, so the stamps do not count as memory of open contacts.
    let mut sent = vec![UNSENT; shape.calls * shape.utterances];

    let rss_before_mib = rss_mib();
    let start = Instant::now();
    let producing = produce(
        writer,
        &shape,
        options.pace_ms.map(Duration::from_millis),
        &mut sent,
        &pipeline.router,
    );
    let reading = async move { read_jsonl(reader, "bench", &tx).await };
    let feeding = async {
        let stats = feed(pipeline.router.clone(), rx, &rejects, max_in_flight).await;
        (stats, start.elapsed())
    };
    let (produced, read, (stats, feed_time)) = tokio::join!(producing, reading, feeding);
    let produced = produced?;
    read.context("reading the generated calls")?;
    pipeline.settle(SETTLE_TIMEOUT).await?;
    let settle_time = start.elapsed();
    let unsettled_contacts = pipeline.router.send(GetActivity::default()).await?.busy;
    let peak_rss_mib = peak_rss_mib();
    pipeline.stop();

    let seen = observe(store.as_ref(), &shape, &sent).await?;
    let replay = replay(store.as_ref(), Arc::new(config.escalation.clone())).await?;

    let feed_s = feed_time.as_secs_f64();
    let settle_s = settle_time.as_secs_f64();
    let growth_mib = produced.rss_open_mib - rss_before_mib;
    Ok(PipelineBench {
        model,
        setup: BenchSetup {
            calls: shape.calls,
            utterances_per_call: shape.utterances,
            customer_utterances_per_call: shape.customer_utterances(),
            escalates_at_utterance: shape.escalating() + 1,
            pace_ms: options.pace_ms,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            build: if cfg!(debug_assertions) {
                "dev"
            } else {
                "release"
            },
            overrides,
        },
        throughput: Throughput {
            records: produced.records,
            records_appended: stats.appended,
            records_not_appended: stats.duplicates
                + stats.refused
                + stats.rejected
                + stats.undeliverable,
            feed_s,
            records_per_s: stats.appended as f64 / feed_s,
            settle_s,
            events: seen.events,
            events_per_s: seen.events as f64 / settle_s,
            unsettled_contacts,
            producer_max_lag_ms: produced.max_lag.as_secs_f64() * 1e3,
        },
        latency: Latencies {
            customer_utterances: (shape.calls * shape.customer_utterances()) as u64,
            customer_judged: seen.customer_judged,
            customer_skipped: seen.customer_skipped,
            utterance_to_sentiment: LatencyMs::of(seen.sentiment_ms),
            escalations: seen.escalations,
            calls_escalated_once: seen
                .escalations_per_call
                .iter()
                .filter(|&&n| n == 1)
                .count() as u64,
            escalations_at_expected_utterance: seen.at_expected,
            utterance_to_escalation: LatencyMs::of(seen.escalation_ms),
            attribute_updates: seen.attribute_updates,
            utterance_to_attributes: LatencyMs::of(seen.attribute_ms),
        },
        memory: Memory {
            rss_before_mib,
            rss_open_mib: produced.rss_open_mib,
            open_contacts: produced.open_contacts,
            kib_per_open_contact: growth_mib * 1024.0 / produced.open_contacts.max(1) as f64,
            peak_rss_mib,
        },
        replay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_turn_negative_late_enough_to_escalate_once() {
        let shape = Shape::new(3, 8).unwrap();
        assert_eq!((shape.customer_utterances(), shape.first_negative), (4, 2));
        assert_eq!(shape.escalating(), 6);
        let mut out = Vec::new();
        for round in 0..shape.rounds() {
            shape.write_line(&mut out, round, 1);
        }
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10);
        for line in &lines {
            crate::ingest::record::parse_line(line).unwrap();
        }
        assert!(lines[5].contains("ridiculous") && lines[5].contains("CUSTOMER"));
        assert!(!lines[3].contains("ridiculous") && lines[4].contains("AGENT"));
        assert_eq!(Shape::new(1, 3).unwrap().escalating(), 2);
        assert!(Shape::new(1, 2).is_err());
        let pace = Duration::from_millis(1000);
        assert_eq!(shape.due(2, 1, pace), Duration::from_nanos(2_333_333_333));
    }

    #[actix_rt::test]
    async fn a_small_run_is_coherent() {
        let options = PipelineBenchOptions {
            model: BenchModel::StandIn { latency_ms: 0 },
            calls: 20,
            utterances_per_call: 4,
            pace_ms: None,
        };
        let bench = pipeline(&Config::default(), options).await.unwrap();
        assert_eq!(bench.model, "stand-in (fixed latency 0 ms)");
        let t = &bench.throughput;
        assert_eq!((t.records, t.records_appended), (120, 120));
        assert_eq!((t.records_not_appended, t.unsettled_contacts), (0, 0));
        let l = &bench.latency;
        assert_eq!((l.customer_utterances, l.customer_judged), (40, 40));
        assert_eq!(l.utterance_to_sentiment.unwrap().n, 40);
        assert_eq!((l.escalations, l.calls_escalated_once), (20, 20));
        assert_eq!(l.escalations_at_expected_utterance, 20);
        assert_eq!(l.utterance_to_escalation.unwrap().n, 20);
        assert_eq!(l.attribute_updates, 20);
        assert_eq!(l.utterance_to_attributes.unwrap().n, 20);
        assert_eq!(bench.memory.open_contacts, 20);
        assert_eq!(bench.replay.contacts, 20);
        assert_eq!(bench.replay.events, t.events);
    }
}
