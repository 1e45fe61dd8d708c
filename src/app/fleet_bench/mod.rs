//! `callpulse bench fleet`: the fleet under faults, with real processes. A Kinesis stream on
//! a moto server (started here) carries interleaved calls; the event log, the read models
//! and the summary bucket live on the same server, the leases on a second one (so that their
//! renewals never wait behind the workers' event writes); Bedrock and Connect are stubs
//! in this process that count every request. `workers` workers (`callpulse run --kinesis`,
//! child processes) read the stream while the calls are put. A quarter of the way in, the
//! worker holding the most leases is SIGKILLed; halfway, a new worker joins; at 70% one
//! shard is split. Once every call is summarised the workers are stopped (SIGTERM) and the
//! invariants are checked from the log, the stubs and the bucket: nothing lost or stored
//! twice, each escalation sent to Connect once, each summary generated and saved once, and
//! model calls repeated only for contacts of the killed worker's shards.
//!
//! Then the throughput phase: one worker reads a stream filled beforehand (stand-in model,
//! SQLite log), timed from its start to its checkpoints reaching the stream's end.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use self::kinesis::{
    create_stream, put_lines, shard_ranges, split_a_shard, summaries_in, taken_over,
    wait_for_leases,
};
use self::stubs::{Requests, bedrock, connect};
use self::workers::{Names, Workers, fleet_config, terminate};
use super::faults::{call_log, segments_per_call, stream};
use super::{DataDir, stores, summary_sink};
use crate::aws::moto;
use crate::aws::stub::Stub;
use crate::ingest::kinesis::leases::{Lease, LeaseTable, hash_key};

/// What to run (the options of `callpulse bench fleet`).
#[derive(Debug, Clone, clap::Args)]
pub struct FleetOptions {
    /// Calls in the stream (every other one angry).
    #[arg(long, default_value_t = 200)]
    pub calls: usize,
    /// Utterances per call, customer and agent in turn.
    #[arg(long, default_value_t = 6)]
    pub utterances: usize,
    /// Shards at the start.
    #[arg(long, default_value_t = 4)]
    pub shards: i32,
    /// Workers at the start (one is killed, one joins later).
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// The workers' lease duration, ms.
    #[arg(long, default_value_t = 10_000)]
    pub lease_ms: u64,
    /// How long putting the stream takes, s.
    #[arg(long, default_value_t = 30)]
    pub put_secs: u64,
    /// Records put beforehand for the throughput phase (0: skip it).
    #[arg(long, default_value_t = 20_000)]
    pub throughput_records: usize,
    /// Keep the run's folder (worker configs and logs) here.
    #[arg(long)]
    pub keep: Option<std::path::PathBuf>,
}

/// What the harness found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetReport {
    /// Calls in the stream.
    pub calls: usize,
    /// Records in the stream.
    pub records: usize,
    /// Workers started in all (the one that joined included).
    pub workers_started: usize,
    /// The workers' lease duration, ms.
    pub lease_duration_ms: u64,
    /// Leases the killed worker held.
    pub killed_worker_leases: usize,
    /// From the SIGKILL to every lease of the killed worker held by a live one, ms.
    pub failover_ms: u64,
    /// From the takeover to the last summary of a call on the killed worker's shards that
    /// ended before it, ms (0 when there was none).
    pub summaries_after_takeover_ms: u64,
    /// Seconds from the first worker's start to the last one's exit.
    pub seconds: u64,
    /// Utterances of the stream missing from the log.
    pub utterances_lost: usize,
    /// Utterances stored more than once.
    pub utterances_duplicated: usize,
    /// Utterances judged more than once (in the log).
    pub judged_twice: usize,
    /// Customer utterances neither judged nor recorded as skipped.
    pub never_judged: usize,
    /// Angry calls that never escalated, and calm ones that did.
    pub escalations_wrong: usize,
    /// Connect updates received beyond one per escalation and clearance in the log.
    pub connect_updates_duplicated: usize,
    /// Connect updates owed by the log that Connect never received.
    pub connect_updates_missing: usize,
    /// Calls without exactly one summary version in the log.
    pub summaries_not_once: usize,
    /// Summary versions in the log missing from the bucket.
    pub summaries_unsaved: usize,
    /// Sentiment requests Bedrock received beyond one per utterance.
    pub sentiment_calls_repeated: usize,
    /// Summary requests Bedrock received beyond one per call.
    pub summary_calls_repeated: usize,
    /// Of the repeated model calls, those for contacts not on the killed worker's shards
    /// (work no live worker had in flight when it died: leases moved between live workers).
    pub model_calls_repeated_elsewhere: usize,
    /// Throughput phase: records read from Kinesis into the durable log per second, by one
    /// worker, from its first lease to its last checkpoint (0 when not run).
    pub worker_records_per_second: u64,
    /// Throughput phase: records per second a plain GetRecords loop reads from the same
    /// stream, doing nothing with them (what the emulator itself gives).
    pub stream_read_records_per_second: u64,
    /// Each call that broke an invariant, with what its log and the stubs show.
    pub broken_calls: Vec<String>,
}

impl FleetReport {
    /// How many times the invariants were broken, in all.
    fn breaks(&self) -> usize {
        self.utterances_lost
            + self.utterances_duplicated
            + self.judged_twice
            + self.never_judged
            + self.escalations_wrong
            + self.connect_updates_duplicated
            + self.connect_updates_missing
            + self.summaries_not_once
            + self.summaries_unsaved
            + self.model_calls_repeated_elsewhere
    }

    /// Whether every invariant held.
    pub fn is_clean(&self) -> bool {
        self.breaks() == 0
    }
}

const INSTANCE: &str = "11111111-2222-3333-4444-555555555555";
const REGION: &str = "us-east-1";

mod kinesis;
mod stubs;
mod throughput;
mod workers;

/// Runs the harness with the `callpulse` binary `exe`, in a fresh temporary directory
/// (or in `options.keep`, kept with every worker's log).
pub async fn run(exe: &Path, options: &FleetOptions) -> anyhow::Result<FleetReport> {
    let keep = options.keep.as_deref();
    let dir = match keep {
        Some(path) => {
            std::fs::create_dir_all(path)?;
            path.to_path_buf()
        }
        None => tempfile::Builder::new()
            .prefix("callpulse-fleet-")
            .tempdir()?
            .keep(),
    };
    let result = faults(exe, options, &dir).await;
    let throughput = match (&result, options.throughput_records) {
        (Ok(_), 0) | (Err(_), _) => Ok((0, 0)),
        (Ok(_), records) => throughput::throughput(exe, &dir, records).await,
    };
    if keep.is_none() {
        std::fs::remove_dir_all(&dir).ok();
    }
    let mut report = result?;
    (
        report.worker_records_per_second,
        report.stream_read_records_per_second,
    ) = throughput?;
    Ok(report)
}

async fn faults(exe: &Path, options: &FleetOptions, dir: &Path) -> anyhow::Result<FleetReport> {
    let sdk = moto::config().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let names = Names::fresh();
    create_stream(&kinesis, &names.stream, options.shards).await?;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket()
        .bucket(&names.bucket)
        .send()
        .await
        .context("creating the bucket")?;
    let bedrock_stub = Stub::start(bedrock);
    let connect_stub = Stub::start(connect);
    let config = fleet_config(
        &names,
        &bedrock_stub.endpoint,
        &connect_stub.endpoint,
        options.lease_ms,
    );
    let init = dir.join("init.toml");
    std::fs::write(&init, toml::to_string(&config)?)?;
    let status = Command::new(exe)
        .arg("--data-dir")
        .arg(dir.join("init"))
        .arg("--config")
        .arg(&init)
        .args(["store", "init"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "callpulse store init failed: {status}");
    let leases = LeaseTable::new(
        aws_sdk_dynamodb::Client::new(&moto::lease_config().await),
        &names.leases,
        &names.stream,
    );

    let lines: Vec<String> = stream(options.calls, options.utterances);
    let started = Instant::now();
    let mut workers = Workers::default();
    for n in 1..=options.workers {
        workers.spawn(exe, dir, &config, &format!("w-{n}"))?;
    }
    let mut report = FleetReport {
        calls: options.calls,
        records: lines.len(),
        lease_duration_ms: options.lease_ms,
        ..FleetReport::default()
    };
    // The shards shared out before the stream starts, so that the kill lands on one worker
    // among several.
    let shards = options.shards as usize;
    let owners = shards.min(options.workers);
    let shared_out = |table: &[Lease]| {
        let held: std::collections::HashSet<&str> =
            table.iter().filter_map(|l| l.owner.as_deref()).collect();
        table.len() >= shards
            && table
                .iter()
                .all(|l| l.owner.is_some() && l.claimant.is_none())
            && held.len() == owners
    };
    if !wait_for_leases(&leases, Duration::from_secs(120), shared_out).await? {
        bail!(
            "the workers never took every lease; see the logs in {}",
            dir.display()
        );
    }

    let batches = lines
        .chunks(lines.len().div_ceil(40).max(1))
        .collect::<Vec<_>>();
    let pause = Duration::from_millis(options.put_secs * 1000 / batches.len().max(1) as u64);
    let (kill_at, join_at, split_at) =
        (batches.len() / 4, batches.len() / 2, batches.len() * 7 / 10);
    let mut killed: Option<(String, Vec<Lease>, Instant)> = None;
    let mut victim_ranges: Vec<(u128, u128)> = Vec::new();
    let mut takeover: Option<chrono::DateTime<chrono::Utc>> = None;
    for (i, batch) in batches.iter().enumerate() {
        if i == kill_at {
            let table = leases.list().await?;
            let mut held: BTreeMap<&str, Vec<Lease>> = BTreeMap::new();
            for lease in &table {
                if let Some(owner) = &lease.owner {
                    held.entry(owner.as_str()).or_default().push(lease.clone());
                }
            }
            let (victim, theirs) = held
                .into_iter()
                .max_by_key(|(_, l)| l.len())
                .context("nobody holds a lease")?;
            let victim = victim.to_string();
            let mut child = workers
                .running
                .remove(&victim)
                .context("the victim's process")?;
            child.kill()?;
            child.wait()?;
            victim_ranges = shard_ranges(&kinesis, &names.stream, &theirs).await?;
            report.killed_worker_leases = theirs.len();
            killed = Some((victim, theirs, Instant::now()));
        }
        if i == join_at {
            workers.spawn(exe, dir, &config, &format!("w-{}", options.workers + 1))?;
        }
        if i == split_at {
            split_a_shard(&kinesis, &names.stream).await?;
        }
        put_lines(&kinesis, &names.stream, batch).await?;
        if let Some((victim, theirs, at)) = &killed
            && takeover.is_none()
            && taken_over(&leases.list().await?, victim, theirs)
        {
            takeover = Some(chrono::Utc::now());
            report.failover_ms = at.elapsed().as_millis() as u64;
        }
        tokio::time::sleep(pause).await;
    }
    if let Some((victim, theirs, at)) = &killed
        && takeover.is_none()
    {
        let limit = Duration::from_millis(options.lease_ms * 4 + 30_000);
        if wait_for_leases(&leases, limit, |t| taken_over(t, victim, theirs)).await? {
            takeover = Some(chrono::Utc::now());
            report.failover_ms = at.elapsed().as_millis() as u64;
        }
    }

    // Done once every call has a summary in the bucket (or give up after a while).
    let deadline = Instant::now() + Duration::from_secs(120 + options.calls as u64);
    while summaries_in(&s3, &names.bucket).await? < options.calls && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for child in workers.running.values() {
        terminate(child)?;
    }
    for (id, child) in &mut workers.running {
        let status = child.wait()?;
        if !status.success() {
            tracing::warn!(worker = %id, %status, "a worker stopped with an error");
        }
    }
    report.workers_started = workers.started;
    report.seconds = started.elapsed().as_secs();

    let data = DataDir::open(dir.join("check"))?;
    let (store, _) = stores(&config, &data).await?;
    let sink = summary_sink(&config, &data).await?;
    let requests = Requests::count(&bedrock_stub, &connect_stub);
    let on_victim = |contact: &str| {
        let key = hash_key(contact);
        victim_ranges
            .iter()
            .any(|(first, last)| (*first..=*last).contains(&key))
    };
    for (contact, segments) in &segments_per_call(&lines)? {
        let breaks_before = report.breaks();
        let log = call_log(store.as_ref(), contact).await?;
        let checks = log.check(segments);
        report.utterances_lost += checks.lost;
        report.utterances_duplicated += checks.duplicated;
        report.judged_twice += checks.judged_twice;
        report.never_judged += checks.never_judged;
        let angry = contact
            .trim_start_matches("f-")
            .parse::<usize>()
            .is_ok_and(|c| c % 2 == 0);
        report.escalations_wrong += usize::from(angry != (log.escalations > 0));
        let received = requests.connect.get(contact).copied().unwrap_or(0);
        report.connect_updates_duplicated += received.saturating_sub(log.attribute_sets);
        report.connect_updates_missing += log.attribute_sets.saturating_sub(received);
        report.summaries_not_once += usize::from(log.summaries != [1]);
        for version in &log.summaries {
            report.summaries_unsaved += usize::from(!sink.has(contact, *version).await);
        }
        let summary_requests = requests.summary.get(contact).copied().unwrap_or(0);
        let summary_repeats = summary_requests.saturating_sub(1);
        let sentiment_repeats: usize = requests
            .sentiment
            .iter()
            .filter(|(tag, _)| tag.split(' ').next() == Some(contact.as_str()))
            .map(|(_, n)| n.saturating_sub(1))
            .sum();
        report.summary_calls_repeated += summary_repeats;
        report.sentiment_calls_repeated += sentiment_repeats;
        if !on_victim(contact) {
            report.model_calls_repeated_elsewhere += summary_repeats + sentiment_repeats;
        }
        if let (Some(at), true) = (takeover, on_victim(contact)) {
            report.summaries_after_takeover_ms = report
                .summaries_after_takeover_ms
                .max(summary_lag(store.as_ref(), contact, at).await?);
        }
        if report.breaks() > breaks_before {
            report.broken_calls.push(format!(
                "{contact}{}: {checks:?}, escalations {}, attribute sets {}, Connect updates {received}, summaries {:?}, summary requests {summary_requests}, repeated sentiment requests {sentiment_repeats}",
                if on_victim(contact) { " (killed worker's shard)" } else { "" },
                log.escalations,
                log.attribute_sets,
                log.summaries,
            ));
        }
    }
    Ok(report)
}

/// How long after `takeover` the contact's summary was written, if it ended before the
/// takeover (0 otherwise).
async fn summary_lag(
    store: &dyn crate::store::EventStore,
    contact: &str,
    takeover: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<u64> {
    let log = store.read(contact, crate::store::SeqRange::all()).await?;
    let at = |kind: &str| log.iter().find(|e| e.kind == kind).map(|e| e.recorded_at);
    Ok(match (at("ContactEnded"), at("SummaryGenerated")) {
        (Some(ended), Some(summarised)) if ended < takeover && summarised > takeover => {
            (summarised - takeover).num_milliseconds() as u64
        }
        _ => 0,
    })
}
