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
mod calls;
mod log;
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use anyhow::Context;
use chrono::Utc;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

pub use report::{BenchSetup, Latencies, LatencyMs, Memory, PipelineBench, Replay, Throughput};

use calls::Shape;
use log::{observe, replay};

use crate::actors::Pipeline;
use crate::actors::feed::feed;
use crate::actors::gateway::ModelLimits;
use crate::actors::router::{ContactRouter, GetActivity};
use crate::app::bench::{build_kind, peak_rss_mib};
use crate::app::{self, DataDir};
use crate::config::{Backend, Config};
use crate::ingest::source::{RejectLog, read_jsonl};
use crate::redaction::Redactor;

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
    let redactor = Redactor::new(&config.redaction);
    let reading = async move { read_jsonl(reader, "bench", redactor, &tx).await };
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
            build: build_kind(),
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
mod tests;
