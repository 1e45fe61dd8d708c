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

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use anyhow::{Context, bail};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use serde::Serialize;
use serde_json::json;

use super::faults::{call_log, segments_per_call, stream};
use super::{DataDir, stores, summary_sink};
use crate::aws::stub::{Received, Stub, converse_answer, llama_answer};
use crate::aws::{AwsEndpoint, moto};
use crate::config::{Backend, Config, StoreKind, SummarySinkKind};
use crate::ingest::kinesis::KinesisConfig;
use crate::ingest::leases::{Lease, LeaseTable, SHARD_END, hash_key};
use crate::sinks::attributes::AttributeSinkKind;
use crate::sinks::connect::ConnectConfig;
use crate::sinks::s3::S3Config;

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

/// What the stubs received, by what it was for.
#[derive(Default)]
struct Requests {
    /// Sentiment requests per utterance (its `ref` tag).
    sentiment: HashMap<String, usize>,
    /// Summary requests per contact.
    summary: HashMap<String, usize>,
    /// Connect updates per contact.
    connect: HashMap<String, usize>,
}

impl Requests {
    /// Counts what the Bedrock and Connect stubs received.
    fn count(bedrock: &Stub, connect: &Stub) -> Self {
        let mut requests = Self::default();
        for request in bedrock.received() {
            let body = String::from_utf8_lossy(&request.body);
            if request.path.ends_with("/converse") {
                if let Some((tag, _)) = last_ref(asked(&body)) {
                    *requests.sentiment.entry(tag).or_default() += 1;
                }
            } else if let Some((_, contact)) = last_ref(&body) {
                *requests.summary.entry(contact).or_default() += 1;
            }
        }
        for request in connect.received() {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
            let contact = body["InitialContactId"].as_str().unwrap_or_default();
            *requests.connect.entry(contact.to_string()).or_default() += 1;
        }
        requests
    }
}

/// The `(ref <contact> u<n>)` tag every utterance of the stream carries: the last one in
/// `text` and its contact.
fn last_ref(text: &str) -> Option<(String, String)> {
    let start = text.rfind("(ref ")? + 5;
    let tag = &text[start..start + text[start..].find(')')?];
    let contact = tag.split(' ').next()?.to_string();
    Some((tag.to_string(), contact))
}

/// The part of a sentiment prompt that holds the utterance asked about.
fn asked(prompt: &str) -> &str {
    prompt
        .rfind("Message from the")
        .map_or("", |at| &prompt[at..])
}

/// Bedrock: Converse answers a label by cue words; the Llama 3 body answers summary lines.
fn bedrock(request: &Received, _: usize) -> HttpResponse {
    if !request.is_signed() || request.method != "POST" {
        return HttpResponse::Forbidden().json(json!({"message": "missing SigV4"}));
    }
    if request.path.ends_with("/converse") {
        let asked = asked(&String::from_utf8_lossy(&request.body)).to_lowercase();
        let angry = ["ridiculous", "unacceptable", "worst"]
            .iter()
            .any(|cue| asked.contains(cue));
        converse_answer(if angry { "NEGATIVE" } else { "NEUTRAL" })
    } else {
        llama_answer(
            " The customer called about a bill.\nResolution: The agent checked it.\nFollow-up: None.\nCustomer sentiment at end: NEUTRAL",
        )
    }
}

/// Connect: UpdateContactAttributes.
fn connect(request: &Received, _: usize) -> HttpResponse {
    if !request.is_signed() || request.path != "/contact/attributes" {
        return HttpResponse::BadRequest().json(json!({"message": "not UpdateContactAttributes"}));
    }
    HttpResponse::Ok().json(json!({}))
}

/// The config every worker of the run shares (its `worker_id` set per worker).
fn fleet_config(names: &Names, bedrock: &str, connect: &str, lease_ms: u64) -> Config {
    let moto_endpoint = AwsEndpoint {
        region: Some(REGION.into()),
        endpoint_url: Some(moto::endpoint().to_string()),
    };
    let stub = |url: &str| AwsEndpoint {
        region: Some(REGION.into()),
        endpoint_url: Some(url.to_string()),
    };
    let mut config = Config::default();
    config.store.kind = StoreKind::Dynamodb;
    config.store.dynamodb.events_table = names.events.clone();
    config.store.dynamodb.projections_table = names.projections.clone();
    config.store.dynamodb.endpoint = moto_endpoint.clone();
    config.models.backend = Backend::Bedrock;
    config.models.bedrock.endpoint = stub(bedrock);
    // Bedrock's answers carry no probabilities: only the "2 of the last 3" rule.
    config.escalation.threshold = 2.0;
    config.gateway.sentiment_deadline_ms = 3_600_000;
    config.gateway.max_coalesced = 1;
    config.gateway.limits.concurrency = 4;
    config.attributes.sink = AttributeSinkKind::Connect;
    config.attributes.requests_per_second = 0;
    config.attributes.connect = Some(ConnectConfig {
        instance_id: INSTANCE.into(),
        endpoint: stub(connect),
    });
    config.summaries.sink = SummarySinkKind::S3;
    config.summaries.s3 = Some(S3Config {
        bucket: names.bucket.clone(),
        prefix: "summaries/".into(),
        force_path_style: true,
        endpoint: moto_endpoint.clone(),
    });
    config.pipeline.idle_timeout_secs = 3600;
    // moto answers every read-model catch-up with a scan of the whole table: catching up
    // every 2 s (default 0.5 s) keeps four workers from saturating it.
    config.pipeline.projector_interval_ms = 2_000;
    config.kinesis = Some(kinesis_config(names, lease_ms));
    config
}

/// The `[kinesis]` table of this run's workers.
fn kinesis_config(names: &Names, lease_ms: u64) -> KinesisConfig {
    let moto_endpoint = |url: &str| AwsEndpoint {
        region: Some(REGION.into()),
        endpoint_url: Some(url.to_string()),
    };
    KinesisConfig {
        stream: names.stream.clone(),
        lease_table: names.leases.clone(),
        lease_duration_ms: lease_ms,
        shard_sync_ms: 1_000,
        idle_poll_ms: 250,
        endpoint: moto_endpoint(moto::endpoint()),
        lease_endpoint: moto_endpoint(moto::lease_endpoint()),
        ..KinesisConfig::default()
    }
}

/// The names of this run's tables, stream and bucket on the shared moto server.
struct Names {
    events: String,
    projections: String,
    leases: String,
    stream: String,
    bucket: String,
}

impl Names {
    fn fresh() -> Self {
        Self {
            events: moto::unique_name("fleet-events"),
            projections: moto::unique_name("fleet-projections"),
            leases: moto::unique_name("fleet-leases"),
            stream: moto::unique_name("fleet-calls"),
            bucket: moto::unique_name("fleet-summaries"),
        }
    }
}

/// The worker processes of a run, by id, and how many were started; any still running
/// when this is dropped (the harness failed half-way) are killed.
#[derive(Default)]
struct Workers {
    running: BTreeMap<String, Child>,
    started: usize,
}

impl Workers {
    /// Starts worker `id`: `callpulse run --kinesis` on `config`, its log in `dir/<id>.log`.
    fn spawn(
        &mut self,
        exe: &Path,
        dir: &Path,
        config: &Config,
        id: &str,
    ) -> anyhow::Result<&mut Child> {
        let mut config = config.clone();
        if let Some(kinesis) = &mut config.kinesis {
            kinesis.worker_id = id.into();
        }
        let path = dir.join(format!("{id}.toml"));
        std::fs::write(&path, toml::to_string(&config)?)?;
        let log = std::fs::File::create(dir.join(format!("{id}.log")))?;
        let child = Command::new(exe)
            .arg("--data-dir")
            .arg(dir.join(id))
            .arg("--config")
            .arg(&path)
            .args(["run", "--kinesis"])
            .env(
                "CALLPULSE_LOG",
                std::env::var("CALLPULSE_WORKER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting worker {id}"))?;
        self.started += 1;
        Ok(self.running.entry(id.to_string()).or_insert(child))
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in self.running.values_mut() {
            if child.try_wait().is_ok_and(|status| status.is_none()) {
                child.kill().ok();
                child.wait().ok();
            }
        }
    }
}

/// Sends SIGTERM to `child` (a graceful stop: settle, then give the leases back).
fn terminate(child: &Child) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM {} failed", child.id());
    Ok(())
}

async fn create_stream(
    client: &aws_sdk_kinesis::Client,
    name: &str,
    shards: i32,
) -> anyhow::Result<()> {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .context("creating the stream")?;
    loop {
        let summary = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await?;
        let status = summary.stream_description_summary.map(|s| s.stream_status);
        if status == Some(StreamStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Puts `lines` (one record each, partitioned by contact) in PutRecords batches of at most
/// 500; a failed entry is put again.
async fn put_lines(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    lines: &[String],
) -> anyhow::Result<()> {
    for batch in lines.chunks(500) {
        put_batch(client, stream, batch).await?;
    }
    Ok(())
}

async fn put_batch(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    lines: &[String],
) -> anyhow::Result<()> {
    let mut pending: Vec<PutRecordsRequestEntry> = lines
        .iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let contact = value["contactId"].as_str().unwrap_or("none");
            PutRecordsRequestEntry::builder()
                .partition_key(contact)
                .data(Blob::new(line.as_bytes()))
                .build()
                .expect("partition key and data set")
        })
        .collect();
    while !pending.is_empty() {
        let out = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(pending.clone()))
            .send()
            .await
            .context("PutRecords")?;
        pending = out
            .records()
            .iter()
            .zip(pending)
            .filter(|(result, _)| result.error_code().is_some())
            .map(|(_, entry)| entry)
            .collect();
    }
    Ok(())
}

/// Waits until `done` holds for the lease table, at most `limit`; whether it did.
async fn wait_for_leases(
    leases: &LeaseTable,
    limit: Duration,
    done: impl Fn(&[Lease]) -> bool,
) -> anyhow::Result<bool> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done(&leases.list().await?) {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

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
        (Ok(_), records) => throughput(exe, &dir, records).await,
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

/// Whether every lease in `theirs` (the killed worker's) is now held by a live worker.
fn taken_over(table: &[Lease], victim: &str, theirs: &[Lease]) -> bool {
    theirs.iter().all(|old| {
        table.iter().any(|l| {
            l.key == old.key
                && (l.owner.as_deref().is_some_and(|o| o != victim) || l.checkpoint == SHARD_END)
        })
    })
}

/// The hash key ranges of the shards of `leases`.
async fn shard_ranges(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    leases: &[Lease],
) -> anyhow::Result<Vec<(u128, u128)>> {
    let listed = client.list_shards().stream_name(stream).send().await?;
    Ok(listed
        .shards()
        .iter()
        .filter(|s| leases.iter().any(|l| l.shard_id == s.shard_id()))
        .filter_map(|s| {
            let range = s.hash_key_range()?;
            Some((
                range.starting_hash_key().parse().ok()?,
                range.ending_hash_key().parse().ok()?,
            ))
        })
        .collect())
}

/// Splits the first open shard of `stream` in the middle of its hash key range.
async fn split_a_shard(client: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<()> {
    let listed = client.list_shards().stream_name(stream).send().await?;
    let shard = listed
        .shards()
        .iter()
        .find(|s| {
            s.sequence_number_range()
                .is_some_and(|r| r.ending_sequence_number().is_none())
        })
        .context("no open shard to split")?;
    let range = shard
        .hash_key_range()
        .context("a shard without a hash range")?;
    let (first, last): (u128, u128) = (
        range.starting_hash_key().parse()?,
        range.ending_hash_key().parse()?,
    );
    let middle = first + (last - first) / 2;
    client
        .split_shard()
        .stream_name(stream)
        .shard_to_split(shard.shard_id())
        .new_starting_hash_key(middle.to_string())
        .send()
        .await
        .context("splitting a shard")?;
    Ok(())
}

/// Summary objects (`.json`) in the bucket.
async fn summaries_in(s3: &aws_sdk_s3::Client, bucket: &str) -> anyhow::Result<usize> {
    let mut count = 0;
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token)
            .send()
            .await
            .context("listing the summaries")?;
        count += page
            .contents()
            .iter()
            .filter(|o| o.key().is_some_and(|k| k.ends_with(".json")))
            .count();
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() {
            return Ok(count);
        }
    }
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

/// The throughput phase: `records` records (calls of 8 utterances) put beforehand on a
/// 4-shard stream, read by one worker with the instant stand-in model and a SQLite log:
/// records/s from its first lease to its checkpoints reaching the stream's end, and
/// records/s of a plain read of the stream.
async fn throughput(exe: &Path, dir: &Path, records: usize) -> anyhow::Result<(u64, u64)> {
    let sdk = moto::config().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let names = Names::fresh();
    create_stream(&kinesis, &names.stream, 4).await?;
    let calls = records.div_ceil(10);
    let lines = stream(calls, 8);
    put_lines(&kinesis, &names.stream, &lines).await?;
    let mut config = Config::default();
    config.models.backend = Backend::StandIn;
    config.models.stand_in_latency_ms = 0;
    // As in `bench pipeline`: the pipeline is measured, not the 5/s Connect quota.
    config.attributes.requests_per_second = 0;
    config.kinesis = Some(KinesisConfig {
        idle_poll_ms: 50,
        ..kinesis_config(&names, 10_000)
    });
    let lease_client = aws_sdk_dynamodb::Client::new(&moto::lease_config().await);
    LeaseTable::create(&lease_client, &names.leases).await?;
    let leases = LeaseTable::new(lease_client, &names.leases, &names.stream);
    let read = Instant::now();
    let tips = stream_tips(&kinesis, &names.stream).await?;
    let plain = lines.len() as f64 / read.elapsed().as_secs_f64();
    let mut worker = Workers::default();
    let child = worker.spawn(exe, dir, &config, "throughput")?;
    // Timed from its first lease: the process start is not the pipeline's rate.
    let taken = |table: &[Lease]| table.iter().any(|l| l.owner.is_some());
    let started = wait_for_leases(&leases, Duration::from_secs(120), taken).await?;
    anyhow::ensure!(started, "the throughput worker never took a lease");
    let start = Instant::now();
    let reached = |table: &[Lease]| {
        tips.iter().all(|(shard, tip)| {
            table
                .iter()
                .any(|l| &l.shard_id == shard && &l.checkpoint == tip)
        })
    };
    let done = wait_for_leases(&leases, Duration::from_secs(600), reached).await?;
    let seconds = start.elapsed().as_secs_f64();
    terminate(child)?;
    child.wait()?;
    anyhow::ensure!(done, "the throughput worker never reached the stream's end");
    Ok(((lines.len() as f64 / seconds) as u64, plain as u64))
}

/// The last sequence number of every shard of `stream` that has records.
async fn stream_tips(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let listed = client.list_shards().stream_name(stream).send().await?;
    let mut tips = Vec::new();
    for shard in listed.shards() {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await?
            .shard_iterator;
        let mut last = None;
        while let Some(it) = iterator {
            let page = client
                .get_records()
                .shard_iterator(it)
                .limit(10_000)
                .send()
                .await?;
            if page.records().is_empty() {
                break;
            }
            last = page
                .records()
                .last()
                .map(|r| r.sequence_number().to_string());
            iterator = page.next_shard_iterator;
        }
        if let Some(last) = last {
            tips.push((shard.shard_id().to_string(), last));
        }
    }
    Ok(tips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_finds_the_utterance_asked_about_and_its_contact() {
        let body = r#"Earlier in the call: Customer: Hi (ref f-3 u0) Message from the customer: \"Thanks (ref f-3 u2)\""#;
        let asked = &body[body.rfind("Message from the").unwrap()..];
        assert_eq!(last_ref(asked), Some(("f-3 u2".into(), "f-3".into())));
        assert_eq!(last_ref("no tag here"), None);
    }
}
