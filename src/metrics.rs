//! Process-wide Prometheus metrics. Every name is prefixed `callpulse_`; [`render`] gives the
//! text exposition format served at `GET /metrics`.
//!
//! Record them where things happen, e.g. `metrics().escalations.inc()` or
//! `metrics().model_calls.with_label_values(&["sentiment", model, "ok"]).inc()`.

use std::sync::LazyLock;

use prometheus::core::Collector;
use prometheus::{
    Counter, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The pipeline's metrics (names below without the `callpulse_` prefix).
pub struct Metrics {
    registry: Registry,
    /// `records_in_total{source}`: records passed on by each kind of source (`file`,
    /// `stdin`, `http`, …), partials and rejections excluded.
    pub records_in: IntCounterVec,
    /// `records_rejected_total`: input lines refused.
    pub records_rejected: IntCounter,
    /// `records_not_owned_total`: records handed back unread because their contact's shard
    /// had just left this worker (its new owner reads them).
    pub records_not_owned: IntCounter,
    /// `partials_skipped_total`: partial segments dropped.
    pub partials_skipped: IntCounter,
    /// `api_refused_total{status}`: API and ingest requests refused before any route ran
    /// (401 no or unknown token, 403 wrong role, 429 over the rate).
    pub api_refused: IntCounterVec,
    /// `live_connections`: pages following `GET /api/live`.
    pub live_connections: IntGauge,
    /// `live_poll_errors_total`: failed reads of the log by the live feed (retried).
    pub live_poll_errors: IntCounter,
    /// `pii_redacted_total{kind}`: values of personal data replaced in transcripts, by kind
    /// (`CARD`, `EMAIL`, ...).
    pub pii_redacted: IntCounterVec,
    /// `events_appended_total`: events written to the event log.
    pub events_appended: IntCounter,
    /// `appends_total`: append calls (batches) to the event log.
    pub appends: IntCounter,
    /// `outcome_append_retries_total`: model or sink outcomes whose append failed and is
    /// retried (the work itself is not redone).
    pub outcome_append_retries: IntCounter,
    /// `append_batch_duration_seconds`: time of one append call.
    pub append_batch_duration: Histogram,
    /// `model_calls_total{task,model,outcome}`: model calls, e.g. task `sentiment` or
    /// `summary`, outcome `ok`, `error`, `throttled`, `skipped`.
    pub model_calls: IntCounterVec,
    /// `model_latency_seconds{task}`: time of one model call.
    pub model_latency: HistogramVec,
    /// `model_tokens_total{model,direction}`: tokens, direction `in` or `out`.
    pub model_tokens: IntCounterVec,
    /// `escalations_total`: escalations raised.
    pub escalations: IntCounter,
    /// `attribute_updates_total{outcome}`: contact attribute writes (`ok`, `failed`).
    pub attribute_updates: IntCounterVec,
    /// `summaries_total{outcome}`: summaries written (`ok`, `failed`), and versions the
    /// summary sink would not take after every retry (`unsaved`).
    pub summaries: IntCounterVec,
    /// `webhook_deliveries_total{outcome}`: summary webhook POSTs (`ok`, `retried`,
    /// `failed`).
    pub webhook_deliveries: IntCounterVec,
    /// `queue_depth{queue}`: items waiting in each queue.
    pub queue_depth: IntGaugeVec,
    /// `open_contacts`: contacts with a live actor.
    pub open_contacts: IntGauge,
    /// `contacts_quarantined_total`: contacts whose log failed verification or decoding
    /// when loaded (their records are refused into the reject log).
    pub contacts_quarantined: IntCounter,
    /// `idempotency_keys_forgotten_total`: idempotency keys of long-ended contacts dropped
    /// from the event log (`[store] key_retention_days`).
    pub idempotency_keys_forgotten: IntCounter,
    /// `kinesis_millis_behind{shard}`: how far this worker's reader of each leased shard is
    /// behind the stream's tip, as GetRecords reports it (removed once the shard is no
    /// longer read here).
    pub kinesis_millis_behind: IntGaugeVec,
    /// `kinesis_leases_held`: shard leases this worker holds.
    pub kinesis_leases_held: IntGauge,
    /// `kinesis_lease_takeovers_total`: leases this worker took from another worker
    /// (expired, or handed over to balance the fleet).
    pub kinesis_lease_takeovers: IntCounter,
    /// `audio_seconds_total`: call audio mixed and sent to the recogniser, seconds (both
    /// channels together).
    pub audio_seconds: Counter,
    /// `audio_lag_seconds`: from the end of a final result's audio to its utterance being
    /// recorded, by the wall clock against the producer's timestamps.
    pub audio_lag: Histogram,
    /// `audio_streams_open`: recognition sessions open now.
    pub audio_streams_open: IntGauge,
    /// `audio_streams_waiting`: calls waiting for a recognition stream (over `max_streams`).
    pub audio_streams_waiting: IntGauge,
    /// `audio_stream_restarts_total{cause}`: media reads or sessions started again
    /// (`continuation`, `rollover`, `failure`).
    pub audio_stream_restarts: IntCounterVec,
    /// `audio_failures_total{kind}`: audio failures by kind (`no_stream`, `malformed`,
    /// `refused`, `throttled`, `unavailable`).
    pub audio_failures: IntCounterVec,
}

/// Registers `collector` and hands it back. Names are fixed and distinct, so failing here is
/// a bug in this file.
fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are valid and distinct");
    collector
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram_opts(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(buckets.to_vec())
}

/// Buckets for appends to the event log, 0.5 ms to 2.5 s.
const APPEND_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Buckets for model calls, 10 ms to 60 s.
const MODEL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new_custom(Some("callpulse".into()), None).expect("valid prefix");
        let r = &registry;
        Self {
            records_in: counter_vec(
                r,
                "records_in_total",
                "Records passed on, by kind of source",
                &["source"],
            ),
            records_rejected: counter(r, "records_rejected_total", "Input lines refused"),
            records_not_owned: counter(
                r,
                "records_not_owned_total",
                "Records handed back because their contact's shard left this worker",
            ),
            partials_skipped: counter(r, "partials_skipped_total", "Partial segments dropped"),
            api_refused: counter_vec(
                r,
                "api_refused_total",
                "Requests refused by token or rate checks, by status",
                &["status"],
            ),
            live_connections: register(
                r,
                IntGauge::new("live_connections", "Pages following GET /api/live")
                    .expect("valid metric"),
            ),
            live_poll_errors: counter(
                r,
                "live_poll_errors_total",
                "Failed reads of the log by the live feed",
            ),
            pii_redacted: counter_vec(
                r,
                "pii_redacted_total",
                "Values of personal data replaced in transcripts, by kind",
                &["kind"],
            ),
            events_appended: counter(r, "events_appended_total", "Events appended to the log"),
            appends: counter(r, "appends_total", "Append calls to the event log"),
            outcome_append_retries: counter(
                r,
                "outcome_append_retries_total",
                "Model or sink outcomes whose append failed and is retried",
            ),
            append_batch_duration: register(
                r,
                Histogram::with_opts(histogram_opts(
                    "append_batch_duration_seconds",
                    "Time of one append call",
                    APPEND_BUCKETS,
                ))
                .expect("valid metric"),
            ),
            model_calls: counter_vec(
                r,
                "model_calls_total",
                "Model calls by task, model and outcome",
                &["task", "model", "outcome"],
            ),
            model_latency: register(
                r,
                HistogramVec::new(
                    histogram_opts(
                        "model_latency_seconds",
                        "Time of one model call",
                        MODEL_BUCKETS,
                    ),
                    &["task"],
                )
                .expect("valid metric"),
            ),
            model_tokens: counter_vec(
                r,
                "model_tokens_total",
                "Model tokens by model and direction (in, out)",
                &["model", "direction"],
            ),
            escalations: counter(r, "escalations_total", "Escalations raised"),
            attribute_updates: counter_vec(
                r,
                "attribute_updates_total",
                "Contact attribute writes by outcome",
                &["outcome"],
            ),
            summaries: counter_vec(r, "summaries_total", "Summaries by outcome", &["outcome"]),
            webhook_deliveries: counter_vec(
                r,
                "webhook_deliveries_total",
                "Summary webhook POSTs by outcome",
                &["outcome"],
            ),
            queue_depth: register(
                r,
                IntGaugeVec::new(
                    Opts::new("queue_depth", "Items waiting, by queue"),
                    &["queue"],
                )
                .expect("valid metric"),
            ),
            open_contacts: register(
                r,
                IntGauge::new("open_contacts", "Contacts with a live actor").expect("valid metric"),
            ),
            contacts_quarantined: counter(
                r,
                "contacts_quarantined_total",
                "Contacts whose log failed verification or decoding when loaded",
            ),
            idempotency_keys_forgotten: counter(
                r,
                "idempotency_keys_forgotten_total",
                "Idempotency keys of long-ended contacts dropped from the event log",
            ),
            kinesis_millis_behind: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "kinesis_millis_behind",
                        "Milliseconds each leased Kinesis shard's reader is behind the tip",
                    ),
                    &["shard"],
                )
                .expect("valid metric"),
            ),
            kinesis_leases_held: register(
                r,
                IntGauge::new("kinesis_leases_held", "Shard leases this worker holds")
                    .expect("valid metric"),
            ),
            kinesis_lease_takeovers: counter(
                r,
                "kinesis_lease_takeovers_total",
                "Leases this worker took from another worker",
            ),
            audio_seconds: register(
                r,
                Counter::new(
                    "audio_seconds_total",
                    "Call audio sent to the recogniser, seconds",
                )
                .expect("valid metric"),
            ),
            audio_lag: register(
                r,
                Histogram::with_opts(histogram_opts(
                    "audio_lag_seconds",
                    "From the end of spoken audio to its utterance being recorded",
                    MODEL_BUCKETS,
                ))
                .expect("valid metric"),
            ),
            audio_streams_open: register(
                r,
                IntGauge::new("audio_streams_open", "Recognition sessions open")
                    .expect("valid metric"),
            ),
            audio_streams_waiting: register(
                r,
                IntGauge::new(
                    "audio_streams_waiting",
                    "Calls waiting for a recognition stream",
                )
                .expect("valid metric"),
            ),
            audio_stream_restarts: counter_vec(
                r,
                "audio_stream_restarts_total",
                "Media reads or recognition sessions started again, by cause",
                &["cause"],
            ),
            audio_failures: counter_vec(
                r,
                "audio_failures_total",
                "Audio failures by kind",
                &["kind"],
            ),
            registry,
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// All metrics in the Prometheus text exposition format (version 0.0.4).
pub fn render() -> String {
    TextEncoder::new()
        .encode_to_string(&metrics().registry.gather())
        .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_names_with_labels() {
        metrics().escalations.inc();
        metrics()
            .model_calls
            .with_label_values(&["sentiment", "nova-micro", "ok"])
            .inc();
        metrics()
            .model_latency
            .with_label_values(&["summary"])
            .observe(0.3);
        let text = render();
        assert!(text.contains("# TYPE callpulse_escalations_total counter"));
        assert!(text.contains(
            r#"callpulse_model_calls_total{model="nova-micro",outcome="ok",task="sentiment"}"#
        ));
        assert!(
            text.contains(r#"callpulse_model_latency_seconds_bucket{task="summary",le="0.5"}"#)
        );
        assert!(text.contains("# TYPE callpulse_open_contacts gauge"));
    }
}
