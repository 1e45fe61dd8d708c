//! What `bench pipeline` reports: its setup, throughput, latencies, memory and replay.

use serde::Serialize;

use crate::app::bench::Latency;

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
    pub(super) fn of(mut samples_ms: Vec<f64>) -> Option<Self> {
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
    /// rules (2 of the last 3 customer utterances angry).
    pub escalates_at_utterance: usize,
    /// Gap between one call's lines, ms (none = as fast as possible).
    pub pace_ms: Option<u64>,
    /// CPU cores available.
    pub cores: usize,
    /// `release`, or `dev` (debug assertions on; the dev profile optimises only the
    /// dependencies unless `CARGO_PROFILE_DEV_OPT_LEVEL` says otherwise), with the opt-level.
    pub build: String,
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
