//! The fleet's input: a Kinesis Data Stream read by every worker, each shard by one worker at
//! a time under a lease ([`super::leases`]). A shard's records are parsed like lines of a
//! file (one JSON record, or several lines of them, per Kinesis record), fed through the
//! pipeline batch by batch, and the shard's checkpoint moves past a batch only once every
//! record of it is durable in the event log or in the reject log. A restart, a crash or a
//! lease moving to another worker re-reads at most the batch in progress, and re-reading is
//! harmless: records already in the log are not appended twice.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actix::Addr;
use anyhow::Context;
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
use aws_sdk_kinesis::operation::get_records::{GetRecordsError, GetRecordsOutput};
use aws_sdk_kinesis::types::ShardIteratorType;
use futures_util::StreamExt;
use futures_util::future::{LocalBoxFuture, OptionFuture};
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::leases::{
    LATEST, Lease, LeasePlanner, LeaseTable, Renewal, SHARD_END, ShardInfo, TRIM_HORIZON,
};
use super::source::{LineReader, ReadStats, RejectLog};
use crate::actors::Pipeline;
use crate::actors::feed::{FeedStats, feed};
use crate::actors::router::{ContactRouter, Release, Unfence};
use crate::aws::{AwsEndpoint, sdk_config};
use crate::backoff::backoff;
use crate::metrics::metrics;
use crate::models::CancellationToken;

/// The `[kinesis]` config table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KinesisConfig {
    /// The stream's name.
    pub stream: String,
    /// The DynamoDB lease table (`callpulse store init` creates it).
    pub lease_table: String,
    /// This worker's name in the lease table; empty: `$HOSTNAME` plus a fresh UUID.
    pub worker_id: String,
    /// Where a shard without a checkpoint starts: `trim-horizon` (its oldest record) or
    /// `latest` (records from now on).
    pub initial_position: InitialPosition,
    /// A lease whose counter stands still this long is taken over, ms.
    pub lease_duration_ms: u64,
    /// How often the stream's shard list is read (new shards after a reshard), ms.
    pub shard_sync_ms: u64,
    /// Records per GetRecords call (at most 10,000).
    pub max_records: i32,
    /// Pause after a GetRecords call that returned nothing, ms.
    pub idle_poll_ms: u64,
    /// Region and endpoint of Kinesis.
    pub endpoint: AwsEndpoint,
    /// Region and endpoint of the lease table's DynamoDB.
    pub lease_endpoint: AwsEndpoint,
}

impl Default for KinesisConfig {
    fn default() -> Self {
        Self {
            stream: String::new(),
            lease_table: "callpulse-leases".into(),
            worker_id: String::new(),
            initial_position: InitialPosition::TrimHorizon,
            lease_duration_ms: 10_000,
            shard_sync_ms: 60_000,
            max_records: 1_000,
            idle_poll_ms: 1_000,
            endpoint: AwsEndpoint::default(),
            lease_endpoint: AwsEndpoint::default(),
        }
    }
}

/// Where a shard without a checkpoint starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitialPosition {
    /// The oldest record still in the shard.
    #[default]
    TrimHorizon,
    /// Records arriving from now on.
    Latest,
}

impl InitialPosition {
    fn checkpoint(self) -> &'static str {
        match self {
            Self::TrimHorizon => TRIM_HORIZON,
            Self::Latest => LATEST,
        }
    }
}

/// How a shard reader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderEnd {
    /// The shard is closed and read to its end.
    ShardEnd,
    /// Another worker holds the lease now.
    Lost,
    /// Another worker claimed the lease; the shard's contacts have finished their owed work.
    HandedOver,
    /// Asked to stop.
    Stopped,
}

/// A lease this worker holds.
struct Held {
    shard_id: String,
    /// The shard as listed (its hash range says which contacts are its own).
    shard: Option<ShardInfo>,
    token: String,
    cancel: CancellationToken,
    /// Cancelled when another worker claims the lease: the reader stops, the shard's
    /// contacts finish what they owe, then the lease is given back.
    hand_over: CancellationToken,
    /// When the last renewal that succeeded (or the take) was sent.
    renewed: Instant,
    /// Another worker has it now (taken over, or not renewed for a lease duration).
    lost: bool,
}

/// Stops the live contacts of `shard` (none when its hash range is unknown); answers how
/// many. With `fence` (the lease key, while the shard's reader may still be feeding), the
/// router also refuses their records until [`Unfence`].
async fn release(
    router: &Addr<ContactRouter>,
    shard: Option<ShardInfo>,
    fence: Option<&str>,
) -> usize {
    match shard {
        Some(shard) => router
            .send(Release {
                selects: Box::new(move |id| shard.holds(id)),
                fence: fence.map(str::to_string),
            })
            .await
            .unwrap_or(0),
        None => 0,
    }
}

type Reader<'a> = LocalBoxFuture<'a, (String, ReaderEnd, FeedStats)>;

/// Where shard readers put their records, and how long a shard leaving this worker waits
/// for its contacts' owed work.
struct Feeding<'a> {
    pipeline: &'a Pipeline,
    rejects: &'a RejectLog,
    max_in_flight: usize,
    settle_timeout: Duration,
}

/// Reads a stream's shards under leases and feeds their records to the pipeline.
pub struct KinesisSource {
    kinesis: aws_sdk_kinesis::Client,
    leases: LeaseTable,
    config: KinesisConfig,
    me: String,
}

impl KinesisSource {
    /// A source for `config`, with credentials and region from the standard chain.
    pub async fn new(config: &KinesisConfig) -> anyhow::Result<Self> {
        let kinesis = aws_sdk_kinesis::Client::new(&sdk_config(&config.endpoint).await);
        let dynamo = aws_sdk_dynamodb::Client::new(&sdk_config(&config.lease_endpoint).await);
        Self::with_clients(config, kinesis, dynamo)
    }

    /// A source for `config` using these clients.
    pub fn with_clients(
        config: &KinesisConfig,
        kinesis: aws_sdk_kinesis::Client,
        dynamo: aws_sdk_dynamodb::Client,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !config.stream.trim().is_empty(),
            "[kinesis] stream is empty; set the stream to read"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&config.max_records),
            "[kinesis] max_records must be 1 to 10000"
        );
        anyhow::ensure!(
            config.lease_duration_ms >= 300,
            "[kinesis] lease_duration_ms must be at least 300"
        );
        let me = if config.worker_id.is_empty() {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
            format!("{host}-{}", uuid::Uuid::now_v7())
        } else {
            config.worker_id.clone()
        };
        Ok(Self {
            kinesis,
            leases: LeaseTable::new(dynamo, &config.lease_table, &config.stream),
            config: config.clone(),
            me,
        })
    }

    /// This worker's name in the lease table.
    pub fn worker_id(&self) -> &str {
        &self.me
    }

    /// Checks that the stream and the lease table exist and can be reached, so that a
    /// misconfigured worker stops at start with a clear error instead of retrying forever.
    pub async fn check(&self) -> anyhow::Result<()> {
        self.kinesis
            .describe_stream_summary()
            .stream_name(&self.config.stream)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
            .with_context(|| format!("Kinesis stream {:?} cannot be read", self.config.stream))?;
        self.leases
            .list()
            .await
            .context("create the lease table with `callpulse store init`")?;
        Ok(())
    }

    /// Runs until `stop`: keeps this worker's share of the leases, reads their shards into
    /// the pipeline (refusals to `rejects`). Only the contacts of the shards it holds run
    /// here: taking a shard's lease resumes that shard's unfinished contacts (those a dead
    /// or departed worker left); losing it, or reading it to its end, stops them (their new
    /// owner resumes them); a lease claimed by another worker is given back once the
    /// shard's contacts have finished the work they owe (at most `settle_timeout`). On
    /// `stop` each shard's batch in progress is finished and checkpointed, the pipeline
    /// settles (at most `settle_timeout`), and only then are the leases given back, renewed
    /// all the while, so that no other worker redoes work this one still has in flight.
    ///
    /// Lease upkeep and the readers run side by side: a slow round of one never holds the
    /// other back (a reader waiting on the log must not let its leases expire).
    pub async fn run(
        &self,
        pipeline: &Pipeline,
        rejects: &RejectLog,
        max_in_flight: usize,
        settle_timeout: Duration,
        stop: CancellationToken,
    ) -> FeedStats {
        let feeding = Feeding {
            pipeline,
            rejects,
            max_in_flight,
            settle_timeout,
        };
        let held: RefCell<HashMap<String, Held>> = RefCell::new(HashMap::new());
        let settled = CancellationToken::new();
        let (taken_tx, mut taken_rx) = mpsc::unbounded_channel();
        tracing::info!(worker = %self.me, stream = %self.config.stream, "reading Kinesis");
        let ((), stats) = tokio::join!(
            self.upkeep(&held, taken_tx, &stop, &settled),
            self.drive(&held, &mut taken_rx, &feeding, &stop, &settled),
        );
        let mut back: Vec<(String, String)> = held
            .into_inner()
            .into_iter()
            .filter(|(_, lease)| !lease.lost)
            .map(|(key, lease)| (key, lease.token))
            .collect();
        // Taken by a round of upkeep that began before the stop and ended after the readers
        // had: never read here, and given back too.
        while let Ok((lease, _)) = taken_rx.try_recv() {
            back.extend(lease.token.map(|token| (lease.key, token)));
        }
        tracing::info!(leases = back.len(), "settled; giving the leases back");
        for (key, token) in back {
            self.give_back(&key, &token).await;
        }
        metrics().kinesis_leases_held.set(0);
        stats
    }

    /// Lease upkeep, every third of a lease duration: until `stop` renews, adds and takes
    /// leases (sending those taken, with their shards, on `taken`); then only renews what
    /// is held, until the pipeline has `settled`.
    async fn upkeep(
        &self,
        held: &RefCell<HashMap<String, Held>>,
        taken: mpsc::UnboundedSender<(Lease, Option<ShardInfo>)>,
        stop: &CancellationToken,
        settled: &CancellationToken,
    ) {
        let lease_duration = Duration::from_millis(self.config.lease_duration_ms);
        let mut planner = LeasePlanner::new(&self.me, lease_duration);
        let mut tick = tokio::time::interval(lease_duration / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut synced: Option<Instant> = None;
        let mut shards: HashMap<String, ShardInfo> = HashMap::new();
        loop {
            tokio::select! {
                () = settled.cancelled() => return,
                _ = tick.tick() => {}
            }
            metrics()
                .kinesis_leases_held
                .set(held.borrow().len() as i64);
            if stop.is_cancelled() {
                self.renew_held(held).await;
                continue;
            }
            let round = self
                .keep_leases(&mut planner, held, &mut synced, &mut shards)
                .await;
            for lease in round.unwrap_or_else(|e| {
                tracing::warn!(error = format!("{e:#}"), "lease upkeep failed; retrying");
                Vec::new()
            }) {
                let shard = shards.get(&lease.shard_id).cloned();
                taken.send((lease, shard)).ok();
            }
        }
    }

    /// Starts a reader (and the resumption of the unfinished contacts) for every lease
    /// taken, handles the end of each reader, and on `stop` waits for the readers, then for
    /// the pipeline to settle (`settled` then).
    async fn drive(
        &self,
        held: &RefCell<HashMap<String, Held>>,
        taken: &mut mpsc::UnboundedReceiver<(Lease, Option<ShardInfo>)>,
        feeding: &Feeding<'_>,
        stop: &CancellationToken,
        settled: &CancellationToken,
    ) -> FeedStats {
        let pipeline = feeding.pipeline;
        let mut readers: FuturesUnordered<Reader<'_>> = FuturesUnordered::new();
        let mut resuming: FuturesUnordered<LocalBoxFuture<'_, ()>> = FuturesUnordered::new();
        let mut stats = FeedStats::default();
        let mut stopping = false;
        let mut watch =
            tokio::time::interval(Duration::from_millis(self.config.lease_duration_ms) / 10);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = watch.tick() => self.fence_expired(&pipeline.router, held).await,
                () = stop.cancelled(), if !stopping => {
                    stopping = true;
                    for lease in held.borrow().values() {
                        lease.cancel.cancel();
                    }
                }
                Some((key, end, read)) = readers.next() => {
                    stats += read;
                    self.reader_ended(&pipeline.router, held, &key, end).await;
                }
                Some(()) = resuming.next() => {}
                Some((lease, shard)) = taken.recv() => {
                    let token = lease.token.clone().expect("a taken lease has a token");
                    let (cancel, hand_over) = (stop.child_token(), CancellationToken::new());
                    held.borrow_mut().insert(lease.key.clone(), Held {
                        shard_id: lease.shard_id.clone(),
                        shard: shard.clone(),
                        token,
                        cancel: cancel.clone(),
                        hand_over: hand_over.clone(),
                        renewed: Instant::now(),
                        lost: false,
                    });
                    if stopping {
                        continue;
                    }
                    if let Some(ours) = shard.clone() {
                        // Beside the reader: catching the read models up can take a while.
                        // Resumed only if the shard is still read here by then (its release
                        // comes after, in the router's order).
                        let reading = cancel.clone();
                        resuming.push(Box::pin(async move {
                            match pipeline.unfinished_where(|id| ours.holds(id)).await {
                                Ok(ids) if !reading.is_cancelled() => pipeline.resume(ids),
                                Ok(_) => {}
                                Err(e) => tracing::error!(shard = %ours.shard_id, error = %e, "resuming the contacts of a shard taken failed; they resume with their next record"),
                            }
                        }));
                    }
                    readers.push(Box::pin(self.read_shard(lease, shard, cancel, hand_over, feeding)));
                }
            }
            if stopping && readers.is_empty() {
                break;
            }
        }
        // Every reader has stopped; what the pipeline owes is finished before anyone else
        // may take the leases.
        tracing::info!("every shard reader stopped; settling before giving the leases back");
        match pipeline.drain_where(|_| true, feeding.settle_timeout).await {
            Ok(0) => {}
            Ok(owing) => {
                tracing::warn!(
                    contacts = owing,
                    "giving the leases back with work still owed; the next owners redo it"
                )
            }
            Err(e) => tracing::warn!(error = %e, "settling before giving the leases back failed"),
        }
        settled.cancel();
        stats
    }

    /// A shard reader ended: the contacts of a shard no longer read here are stopped, then
    /// a lease still held is given back (one stopped by `stop` stays held until the
    /// pipeline has settled).
    async fn reader_ended(
        &self,
        router: &Addr<ContactRouter>,
        held: &RefCell<HashMap<String, Held>>,
        key: &str,
        end: ReaderEnd,
    ) {
        let Some(lease) = held.borrow_mut().remove(key) else {
            return;
        };
        let moved = end == ReaderEnd::Lost || lease.lost;
        if end == ReaderEnd::Stopped && !moved {
            held.borrow_mut().insert(key.to_string(), lease);
            return;
        }
        metrics()
            .kinesis_millis_behind
            .remove_label_values(&[lease.shard_id.as_str()])
            .ok();
        if lease.shard.is_some() {
            let stopped = release(router, lease.shard.clone(), None).await;
            tracing::info!(lease = %key, contacts = stopped, ?end, "stopped the contacts of a shard no longer read here");
        }
        // Its reader has ended: nothing of the shard reaches the router from here any more.
        router.do_send(Unfence(key.to_string()));
        if !moved {
            self.give_back(key, &lease.token).await;
        }
    }

    /// Stops the reader and the contacts of every lease held that has gone a lease duration
    /// without a renewal, its renewal still unanswered (a hung store, a partition): from now
    /// on another worker may take it, so nothing of its shard may run here any more.
    async fn fence_expired(
        &self,
        router: &Addr<ContactRouter>,
        held: &RefCell<HashMap<String, Held>>,
    ) {
        let lease_duration = Duration::from_millis(self.config.lease_duration_ms);
        let expired: Vec<(String, Option<ShardInfo>)> = held
            .borrow_mut()
            .iter_mut()
            .filter(|(_, lease)| !lease.lost && lease.renewed.elapsed() >= lease_duration)
            .map(|(key, lease)| {
                lease.lost = true;
                lease.cancel.cancel();
                (key.clone(), lease.shard.clone())
            })
            .collect();
        for (key, shard) in expired {
            let stopped = release(router, shard, Some(&key)).await;
            tracing::warn!(lease = %key, contacts = stopped, "lease not renewed for a lease duration; stopped its reader and contacts");
        }
    }

    async fn give_back(&self, key: &str, token: &str) {
        if let Err(e) = self.leases.release(key, token).await {
            tracing::warn!(lease = %key, error = format!("{e:#}"), "could not give the lease back; it expires instead");
        }
    }

    /// Renews every lease held: a lease taken over stops its reader; one claimed by another
    /// worker starts its hand-over.
    async fn renew_held(&self, held: &RefCell<HashMap<String, Held>>) {
        let due: Vec<(String, String)> = held
            .borrow()
            .iter()
            .filter(|(_, lease)| !lease.lost)
            .map(|(key, lease)| (key.clone(), lease.token.clone()))
            .collect();
        for (key, token) in due {
            // Others count a lease duration from when the renewal lands at the latest, so
            // this worker counts from when it was sent.
            let sent = Instant::now();
            let renewal = self.leases.renew(&key, &token).await;
            let mut held = held.borrow_mut();
            let Some(lease) = held.get_mut(&key) else {
                continue;
            };
            if lease.lost {
                continue;
            }
            match renewal {
                Ok(Renewal::Kept) => lease.renewed = sent,
                Ok(Renewal::Claimed(by)) => {
                    lease.renewed = sent;
                    if !lease.hand_over.is_cancelled() {
                        tracing::info!(lease = %key, to = %by, "lease claimed; handing it over once its contacts have settled");
                        lease.hand_over.cancel();
                        lease.cancel.cancel();
                    }
                }
                Ok(Renewal::Lost) => {
                    tracing::info!(lease = %key, "lease taken over by another worker; stopping its reader");
                    lease.lost = true;
                    lease.cancel.cancel();
                }
                // A lease duration without a renewal is `fence_expired`'s to act on.
                Err(e) => {
                    tracing::warn!(lease = %key, error = format!("{e:#}"), "renewing a lease failed; retrying")
                }
            }
        }
    }

    /// One round of lease upkeep: renews what is held, adds leases for new shards, and
    /// takes (or claims) this worker's share. Returns the leases just taken.
    async fn keep_leases(
        &self,
        planner: &mut LeasePlanner,
        held: &RefCell<HashMap<String, Held>>,
        synced: &mut Option<Instant>,
        known: &mut HashMap<String, ShardInfo>,
    ) -> anyhow::Result<Vec<Lease>> {
        self.renew_held(held).await;
        let sync_every = Duration::from_millis(self.config.shard_sync_ms);
        if synced.is_none_or(|at| at.elapsed() >= sync_every) {
            let shards = self.shards().await?;
            self.leases
                .add_missing(&shards, self.config.initial_position.checkpoint())
                .await?;
            known.extend(shards.into_iter().map(|s| (s.shard_id.clone(), s)));
            *synced = Some(Instant::now());
        }
        let mut taken: Vec<Lease> = Vec::new();
        // A second pass at once when another worker took a lease first (workers that saw the
        // same lease expire), instead of waiting a round for the next one.
        for _ in 0..2 {
            let table = self.leases.list().await?;
            let mut keys: HashSet<String> = held.borrow().keys().cloned().collect();
            keys.extend(taken.iter().map(|l| l.key.clone()));
            let mut beaten = false;
            for take in planner.plan(&table, &keys, Instant::now()) {
                if let Some(owner) = &take.claim_from {
                    if self.leases.claim(&take.key, owner, &self.me).await? {
                        tracing::info!(lease = %take.key, from = %owner, "lease claimed; its owner hands it over");
                    }
                    continue;
                }
                let token = uuid::Uuid::now_v7().to_string();
                // From another worker: an expired owner, or one that handed it over to me.
                let from = table.iter().find(|l| l.key == take.key).and_then(|l| {
                    l.owner
                        .clone()
                        .or_else(|| l.claimant.as_ref().map(|_| "(handed over)".to_string()))
                });
                match self
                    .leases
                    .take(&take.key, take.seen, &self.me, &token)
                    .await?
                {
                    Some(lease) => {
                        if from.is_some() {
                            metrics().kinesis_lease_takeovers.inc();
                        }
                        tracing::info!(lease = %lease.key, checkpoint = %lease.checkpoint, ?from, "lease taken");
                        taken.push(lease);
                    }
                    None => {
                        tracing::debug!(lease = %take.key, "another worker moved first");
                        beaten = true;
                    }
                }
            }
            if !beaten {
                break;
            }
        }
        Ok(taken)
    }

    /// Every shard of the stream, closed ones included (their leases gate their children).
    async fn shards(&self) -> anyhow::Result<Vec<ShardInfo>> {
        let mut shards = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let request = match &next {
                Some(token) => self.kinesis.list_shards().next_token(token),
                None => self.kinesis.list_shards().stream_name(&self.config.stream),
            };
            let page = request
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
                .with_context(|| format!("listing the shards of {}", self.config.stream))?;
            for shard in page.shards() {
                let key = |k: &str| k.parse::<u128>().ok();
                shards.push(ShardInfo {
                    hash_range: shard.hash_key_range().and_then(|r| {
                        Some((key(r.starting_hash_key())?, key(r.ending_hash_key())?))
                    }),
                    shard_id: shard.shard_id().to_string(),
                    parents: shard
                        .parent_shard_id()
                        .into_iter()
                        .chain(shard.adjacent_parent_shard_id())
                        .map(str::to_string)
                        .collect(),
                });
            }
            next = page.next_token().map(str::to_string);
            if next.is_none() {
                return Ok(shards);
            }
        }
    }

    /// An iterator positioned just after `checkpoint`.
    async fn iterator(&self, shard_id: &str, checkpoint: &str) -> anyhow::Result<String> {
        let request = self
            .kinesis
            .get_shard_iterator()
            .stream_name(&self.config.stream)
            .shard_id(shard_id);
        let request = match checkpoint {
            TRIM_HORIZON => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
            LATEST => request.shard_iterator_type(ShardIteratorType::Latest),
            sequence => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(sequence),
        };
        let out = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
            .with_context(|| format!("positioning on {shard_id} after {checkpoint}"))?;
        out.shard_iterator
            .context("GetShardIterator returned no iterator")
    }

    /// Every shard of the stream with its lease and how far its checkpoint is behind the
    /// stream's tip (`None` for a shard read to its end or one the stream did not say).
    pub async fn status(&self) -> anyhow::Result<Vec<(ShardInfo, Option<Lease>, Option<i64>)>> {
        let shards = self.shards().await?;
        let mut leases: HashMap<String, Lease> = self
            .leases
            .list()
            .await?
            .into_iter()
            .map(|l| (l.shard_id.clone(), l))
            .collect();
        let mut rows = Vec::new();
        for shard in shards {
            let lease = leases.remove(&shard.shard_id);
            let checkpoint = lease
                .as_ref()
                .map_or(TRIM_HORIZON, |l| l.checkpoint.as_str());
            let behind = match checkpoint {
                SHARD_END => None,
                checkpoint => {
                    let iterator = self.iterator(&shard.shard_id, checkpoint).await?;
                    let page = self
                        .kinesis
                        .get_records()
                        .shard_iterator(iterator)
                        .limit(1)
                        .send()
                        .await
                        .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))?;
                    page.millis_behind_latest
                }
            };
            rows.push((shard, lease, behind));
        }
        Ok(rows)
    }

    /// Reads one leased shard until it ends, the lease is lost, `cancel`, or a hand-over.
    /// Before the shard's end is recorded (which lets its children be read) and before a
    /// claimed lease is handed over, the shard's contacts finish the work they owe, so that
    /// their next owner has nothing to redo.
    async fn read_shard(
        &self,
        lease: Lease,
        shard: Option<ShardInfo>,
        cancel: CancellationToken,
        hand_over: CancellationToken,
        feeding: &Feeding<'_>,
    ) -> (String, ReaderEnd, FeedStats) {
        let (router, rejects, max_in_flight) = (
            &feeding.pipeline.router,
            feeding.rejects,
            feeding.max_in_flight,
        );
        let token = lease.token.clone().expect("a held lease has a token");
        let mut reader = LineReader::new(&format!(
            "kinesis:{}/{}",
            self.config.stream, lease.shard_id
        ));
        let mut checkpoint = lease.checkpoint.clone();
        let mut stats = FeedStats::default();
        let mut failures = 0;
        let end = 'reading: loop {
            if failures > 0 {
                let pause = backoff(200, 10_000, failures);
                tokio::select! {
                    () = cancel.cancelled() => break ReaderEnd::Stopped,
                    () = tokio::time::sleep(pause) => {}
                }
            }
            if cancel.is_cancelled() {
                break ReaderEnd::Stopped;
            }
            let mut iterator = match self.iterator(&lease.shard_id, &checkpoint).await {
                Ok(iterator) => iterator,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(shard = %lease.shard_id, error = format!("{e:#}"), "no shard iterator; retrying");
                    continue;
                }
            };
            // The next page, read while the one before was fed and checkpointed.
            let mut read_ahead = None;
            loop {
                if cancel.is_cancelled() {
                    break 'reading ReaderEnd::Stopped;
                }
                let got = match read_ahead.take() {
                    Some(got) => got,
                    None => self.page(&iterator).await,
                };
                let page = match got {
                    Ok(page) => page,
                    Err(e) => {
                        // Throttling, an expired iterator, an outage: start again from the
                        // checkpoint after a pause.
                        failures += 1;
                        tracing::warn!(shard = %lease.shard_id, error = %DisplayErrorContext(e), "GetRecords failed; retrying from the checkpoint");
                        continue 'reading;
                    }
                };
                if let Some(behind) = page.millis_behind_latest {
                    metrics()
                        .kinesis_millis_behind
                        .with_label_values(&[lease.shard_id.as_str()])
                        .set(behind);
                }
                if let Some(last) = page.records().last() {
                    let next = page.next_shard_iterator.as_deref().map(|it| self.page(it));
                    let (batch, ahead) = tokio::join!(
                        self.feed_batch(
                            &mut reader,
                            page.records(),
                            router,
                            rejects,
                            max_in_flight
                        ),
                        OptionFuture::from(next)
                    );
                    read_ahead = ahead;
                    stats += batch;
                    if batch.not_owned > 0 {
                        // Fenced: the lease was lost while this batch was fed; the new
                        // owner reads it again from the checkpoint.
                        break 'reading ReaderEnd::Lost;
                    }
                    if batch.undeliverable > 0 {
                        failures += 1;
                        tracing::warn!(shard = %lease.shard_id, undeliverable = batch.undeliverable, "records not durable; reading the batch again");
                        continue 'reading;
                    }
                    let sequence = last.sequence_number().to_string();
                    match self.leases.checkpoint(&lease.key, &token, &sequence).await {
                        Ok(true) => checkpoint = sequence,
                        Ok(false) => break 'reading ReaderEnd::Lost,
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(shard = %lease.shard_id, error = format!("{e:#}"), "checkpoint failed; reading the batch again");
                            continue 'reading;
                        }
                    }
                }
                failures = 0;
                let Some(next) = page.next_shard_iterator else {
                    // The shard is closed and read to its end.
                    self.drain(&lease.key, shard.as_ref(), feeding).await;
                    match self.leases.checkpoint(&lease.key, &token, SHARD_END).await {
                        Ok(true) => break 'reading ReaderEnd::ShardEnd,
                        Ok(false) => break 'reading ReaderEnd::Lost,
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(shard = %lease.shard_id, error = format!("{e:#}"), "recording the shard's end failed; retrying");
                            continue 'reading;
                        }
                    }
                };
                iterator = next;
                if page.records.is_empty() {
                    let idle = Duration::from_millis(self.config.idle_poll_ms);
                    tokio::select! {
                        () = cancel.cancelled() => break 'reading ReaderEnd::Stopped,
                        () = tokio::time::sleep(idle) => {}
                    }
                }
            }
        };
        let end = if end == ReaderEnd::Stopped && hand_over.is_cancelled() {
            self.drain(&lease.key, shard.as_ref(), feeding).await;
            ReaderEnd::HandedOver
        } else {
            end
        };
        tracing::info!(shard = %lease.shard_id, ?end, %checkpoint, "shard reader ended");
        (lease.key, end, stats)
    }

    /// One GetRecords call.
    async fn page(
        &self,
        iterator: &str,
    ) -> Result<GetRecordsOutput, SdkError<GetRecordsError, HttpResponse>> {
        self.kinesis
            .get_records()
            .shard_iterator(iterator)
            .limit(self.config.max_records)
            .send()
            .await
    }

    /// Waits (at most the settle timeout) until the contacts of `shard` owe no work.
    async fn drain(&self, key: &str, shard: Option<&ShardInfo>, feeding: &Feeding<'_>) {
        let shard = shard.cloned();
        let holds = move |id: &str| shard.as_ref().is_some_and(|s| s.holds(id));
        match feeding
            .pipeline
            .drain_where(holds, feeding.settle_timeout)
            .await
        {
            Ok(0) => {}
            Ok(owing) => {
                tracing::warn!(lease = %key, contacts = owing, "leaving a shard with work still owed; its next owner redoes it")
            }
            Err(e) => {
                tracing::warn!(lease = %key, error = %e, "could not wait for a shard's contacts")
            }
        }
    }

    /// Parses one GetRecords batch and feeds it through the pipeline until every record is
    /// durable or refused.
    async fn feed_batch(
        &self,
        reader: &mut LineReader,
        records: &[aws_sdk_kinesis::types::Record],
        router: &Addr<ContactRouter>,
        rejects: &RejectLog,
        max_in_flight: usize,
    ) -> FeedStats {
        let mut read = ReadStats::default();
        let items: Vec<_> = records
            .iter()
            .flat_map(|r| reader.ingest_record(r.sequence_number(), r.data().as_ref(), &mut read))
            .collect();
        let (tx, rx) = mpsc::channel(items.len().max(1));
        for item in items {
            tx.try_send(item)
                .expect("the channel holds the whole batch");
        }
        drop(tx);
        feed(router.clone(), rx, rejects, max_in_flight).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::StreamStatus;

    use super::*;
    use crate::actors::router::GetActivity;
    use crate::app::run::{Inputs, run};
    use crate::app::{DataDir, backends};
    use crate::aws::moto;
    use crate::config::{Backend, Config};
    use crate::ingest::source::RejectLog;
    use crate::store::{EventStore, SeqRange};

    /// How long a worker waits for owed work before giving leases back.
    const SETTLE: Duration = Duration::from_secs(30);

    /// A stream with `shards` shards on moto, and a client for it.
    async fn stream(shards: i32) -> (aws_sdk_kinesis::Client, String) {
        let client = aws_sdk_kinesis::Client::new(&moto::config().await);
        let name = moto::unique_name("calls");
        client
            .create_stream()
            .stream_name(&name)
            .shard_count(shards)
            .send()
            .await
            .unwrap();
        loop {
            let summary = client
                .describe_stream_summary()
                .stream_name(&name)
                .send()
                .await
                .unwrap();
            let status = summary.stream_description_summary.unwrap().stream_status;
            if status == StreamStatus::Active {
                return (client, name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Puts `lines` as one record each, partitioned by contact (on the shard owning
    /// `hash`, when given); the last sequence number put on each shard.
    async fn put(
        client: &aws_sdk_kinesis::Client,
        stream: &str,
        lines: &[(&str, String)],
        hash: Option<&str>,
    ) -> BTreeMap<String, String> {
        let mut last = BTreeMap::new();
        for (contact, line) in lines {
            let out = client
                .put_record()
                .stream_name(stream)
                .partition_key(*contact)
                .set_explicit_hash_key(hash.map(str::to_string))
                .data(Blob::new(line.as_bytes()))
                .send()
                .await
                .unwrap();
            last.insert(out.shard_id, out.sequence_number);
        }
        last
    }

    /// A lease table of this test's own on moto, for `stream`: a client, the table's name,
    /// and the table.
    async fn lease_table(stream: &str) -> (aws_sdk_dynamodb::Client, String, LeaseTable) {
        let dynamo = aws_sdk_dynamodb::Client::new(&moto::config().await);
        let name = moto::unique_name("leases");
        LeaseTable::create(&dynamo, &name).await.unwrap();
        let leases = LeaseTable::new(dynamo.clone(), &name, stream);
        (dynamo, name, leases)
    }

    /// The config of `run --kinesis` as `worker`, everything on moto, with the instant
    /// stand-in model.
    fn worker_config(stream: &str, lease_table: &str, worker: &str, lease_ms: u64) -> Config {
        let moto_endpoint = AwsEndpoint {
            region: Some("us-east-1".into()),
            endpoint_url: Some(moto::endpoint().to_string()),
        };
        let mut config = Config::load(None).unwrap();
        config.models.backend = Backend::StandIn;
        config.models.stand_in_latency_ms = 0;
        config.kinesis = Some(KinesisConfig {
            stream: stream.into(),
            lease_table: lease_table.into(),
            worker_id: worker.into(),
            lease_duration_ms: lease_ms,
            idle_poll_ms: 20,
            endpoint: moto_endpoint.clone(),
            lease_endpoint: moto_endpoint,
            ..KinesisConfig::default()
        });
        config
    }

    /// A source on `stream` that no worker runs (to look at the stream), and its shards,
    /// each with its lease added.
    async fn leased_shards(
        kinesis: &aws_sdk_kinesis::Client,
        dynamo: &aws_sdk_dynamodb::Client,
        stream: &str,
        lease_table: &str,
        leases: &LeaseTable,
    ) -> (KinesisSource, Vec<ShardInfo>) {
        let config = KinesisConfig {
            stream: stream.into(),
            lease_table: lease_table.into(),
            ..KinesisConfig::default()
        };
        let source = KinesisSource::with_clients(&config, kinesis.clone(), dynamo.clone()).unwrap();
        let shards = source.shards().await.unwrap();
        leases.add_missing(&shards, TRIM_HORIZON).await.unwrap();
        (source, shards)
    }

    /// The first contact id `c-<n>` whose records land on `shard`.
    fn contact_on(shard: &ShardInfo) -> String {
        (0..)
            .map(|n| format!("c-{n}"))
            .find(|id| shard.holds(id))
            .unwrap()
    }

    /// Whether every shard's checkpoint has reached the sequence number in `last`.
    fn reached(last: &BTreeMap<String, String>) -> impl Fn(&[Lease]) -> bool + '_ {
        move |table| {
            last.iter().all(|(shard, sequence)| {
                table
                    .iter()
                    .any(|l| &l.shard_id == shard && &l.checkpoint == sequence)
            })
        }
    }

    fn call(contact: &str) -> Vec<(&str, String)> {
        vec![
            (
                contact,
                format!(r#"{{"type":"STARTED","contactId":"{contact}","instanceId":"i-1"}}"#),
            ),
            (
                contact,
                format!(
                    r#"{{"type":"SEGMENT","contactId":"{contact}","segmentId":"s-1","participant":"CUSTOMER","transcript":"My order never came.","isPartial":false}}"#
                ),
            ),
            (
                contact,
                format!(
                    r#"{{"type":"SEGMENT","contactId":"{contact}","participant":"AGENT","transcript":"Let me look into it.","isPartial":false}}"#
                ),
            ),
            (
                contact,
                format!(r#"{{"type":"ENDED","contactId":"{contact}"}}"#),
            ),
        ]
    }

    /// Runs the pipeline on the stream until every shard's checkpoint reaches `last`.
    async fn run_until(
        config: &Config,
        data: &DataDir,
        leases: &LeaseTable,
        last: &BTreeMap<String, String>,
    ) -> FeedStats {
        let stop = CancellationToken::new();
        let inputs = Inputs {
            kinesis: true,
            stop: stop.clone(),
            settle_timeout: Duration::from_secs(60),
            ..Inputs::default()
        };
        let watch = async {
            wait_for_leases(leases, "the checkpoints reached", reached(last)).await;
            stop.cancel();
        };
        let backends = backends(config).await.unwrap();
        let (stats, ()) = tokio::join!(run(config, data, backends, inputs), watch);
        stats.unwrap()
    }

    #[actix_rt::test]
    async fn a_stream_is_read_into_the_log_once_and_resumed_from_its_checkpoints() {
        let (kinesis, name) = stream(2).await;
        let (_, lease_table, leases) = lease_table(&name).await;
        let config = worker_config(&name, &lease_table, "worker-1", 3_000);
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();

        let mut lines: Vec<(&str, String)> =
            ["k-1", "k-2", "k-3"].iter().flat_map(|c| call(c)).collect();
        lines.insert(5, ("junk", "not json at all".into()));
        let last = put(&kinesis, &name, &lines, None).await;
        assert_eq!(last.len(), 2, "records on both shards");

        let stats = run_until(&config, &data, &leases, &last).await;
        assert_eq!(
            (stats.appended, stats.rejected, stats.duplicates),
            (12, 1, 0),
            "{stats:?}"
        );
        let (events, _) = data.stores().unwrap();
        for contact in ["k-1", "k-2", "k-3"] {
            let log = events.read(contact, SeqRange::all()).await.unwrap();
            let kinds: Vec<&str> = log.iter().map(|e| e.kind.as_str()).collect();
            assert_eq!(
                kinds.iter().filter(|k| **k == "UtteranceReceived").count(),
                2,
                "{kinds:?}"
            );
            assert!(kinds.contains(&"ContactEnded"), "{kinds:?}");
        }
        let rejected = std::fs::read_to_string(data.reject_log()).unwrap();
        assert!(
            rejected.contains(&format!("kinesis:{name}/shardId-")),
            "{rejected}"
        );
        assert!(rejected.contains("not json at all"), "{rejected}");
        // Operators see each shard's lag.
        let exposed = crate::metrics::render();
        assert!(
            exposed.contains("callpulse_kinesis_millis_behind{shard=\"shardId-"),
            "{exposed}"
        );
        // On the way out the worker gave its leases back.
        let table = leases.list().await.unwrap();
        assert!(table.iter().all(|l| l.owner.is_none()), "{table:#?}");

        // The next run starts after the checkpoints: only the new call is read.
        let more = put(&kinesis, &name, &call("k-4"), None).await;
        let mut last = last;
        last.extend(more);
        let stats = run_until(&config, &data, &leases, &last).await;
        assert_eq!(
            (stats.appended, stats.rejected, stats.duplicates),
            (4, 0, 0),
            "{stats:?}"
        );
        let k4 = events.read("k-4", SeqRange::all()).await.unwrap();
        assert!(k4.iter().any(|e| e.kind == "ContactEnded"), "{k4:?}");
    }

    #[actix_rt::test]
    async fn a_worker_resumes_the_unfinished_contacts_of_the_shards_it_takes_and_no_others() {
        let (kinesis, name) = stream(2).await;
        let (dynamo, lease_table, leases) = lease_table(&name).await;
        let (_, shards) = leased_shards(&kinesis, &dynamo, &name, &lease_table, &leases).await;
        // A live worker holds the second shard; this one will take the first.
        let theirs = &shards[1];
        let key = format!("{name}/{}", theirs.shard_id);
        leases
            .take(&key, 0, "other", "other-token")
            .await
            .unwrap()
            .unwrap();
        // One call per shard that ended before its summary was written (a worker died).
        let (mine, other) = (contact_on(&shards[0]), contact_on(theirs));
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let (events, _) = data.stores().unwrap();
        for id in [&mine, &other] {
            let mut log = crate::app::query::tests::call_log(
                id,
                crate::app::query::tests::at(0),
                &[(
                    crate::events::Participant::Customer,
                    "Where is my refund?",
                    0.7,
                )],
                true,
            );
            assert_eq!(log.pop().unwrap().kind, "SummaryGenerated");
            events.append(&log).await.unwrap();
        }

        let config = worker_config(&name, &lease_table, "me", 60_000);
        let stop = CancellationToken::new();
        let inputs = Inputs {
            kinesis: true,
            stop: stop.clone(),
            settle_timeout: Duration::from_secs(30),
            ..Inputs::default()
        };
        let summarised = |id: &str| {
            let events = events.clone();
            let id = id.to_string();
            async move {
                let log = events.read(&id, SeqRange::all()).await.unwrap();
                log.iter().any(|e| e.kind == "SummaryGenerated")
            }
        };
        let watch = async {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !summarised(&mine).await {
                assert!(Instant::now() < deadline, "{mine} never summarised");
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            stop.cancel();
        };
        let backends = backends(&config).await.unwrap();
        let (stats, ()) = tokio::join!(run(&config, &data, backends, inputs), watch);
        stats.unwrap();
        assert!(summarised(&mine).await);
        assert!(
            !summarised(&other).await,
            "{other} is on a shard another live worker holds: not this worker's to finish"
        );
    }

    #[actix_rt::test]
    async fn fleet_status_shows_owners_checkpoints_lag_and_unfinished_contacts_per_worker() {
        let (kinesis, name) = stream(2).await;
        let (dynamo, lease_table, leases) = lease_table(&name).await;
        let (source, shards) = leased_shards(&kinesis, &dynamo, &name, &lease_table, &leases).await;
        let key = format!("{name}/{}", shards[0].shard_id);
        leases.take(&key, 0, "w-1", "t").await.unwrap().unwrap();
        assert!(leases.claim(&key, "w-1", "w-2").await.unwrap());
        assert!(
            !leases.claim(&key, "w-1", "w-3").await.unwrap(),
            "one claim at a time"
        );
        let open = contact_on(&shards[0]);
        put(&kinesis, &name, &call(&open), None).await;
        let events = crate::store::memory::MemoryEventStore::new();
        let log = crate::app::query::tests::call_log(
            &open,
            crate::app::query::tests::at(0),
            &[(crate::events::Participant::Customer, "Hello?", 0.1)],
            false,
        );
        events.append(&log).await.unwrap();
        let projections = crate::store::memory::MemoryProjectionStore::new();
        crate::store::projection::catch_up(&events, &projections, 100)
            .await
            .unwrap();

        let status = crate::app::fleet::status(&source, &projections)
            .await
            .unwrap();
        assert_eq!(status.len(), 2);
        let held = status.iter().find(|s| s.owner.is_some()).unwrap();
        assert_eq!(held.owner.as_deref(), Some("w-1"));
        assert_eq!(held.claimant.as_deref(), Some("w-2"), "being handed over");
        assert_eq!(held.checkpoint.as_deref(), Some(TRIM_HORIZON));
        assert_eq!(held.unfinished_contacts, 1);
        assert!(
            status.iter().all(|s| s.millis_behind.is_some()),
            "{status:?}"
        );
        let mut out = Vec::new();
        crate::app::fleet::write(&status, crate::app::query::Format::Json, &mut out).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["workers"]["w-1"]["leases"], 1);
        assert_eq!(json["workers"]["w-1"]["unfinishedContacts"], 1);
        assert_eq!(json["workers"]["(none)"]["leases"], 1);
        let mut table = Vec::new();
        crate::app::fleet::write(&status, crate::app::query::Format::Table, &mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(
            table.contains("w-1: 1 leases, 1 unfinished contacts"),
            "{table}"
        );
    }

    /// Each shard's lease owner, by shard id.
    async fn owners(leases: &LeaseTable) -> BTreeMap<String, Option<String>> {
        let table = leases.list().await.unwrap();
        table.into_iter().map(|l| (l.shard_id, l.owner)).collect()
    }

    /// Waits (at most 30 s) until `done` holds for the lease table.
    async fn wait_for_leases(leases: &LeaseTable, what: &str, done: impl Fn(&[Lease]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let table = leases.list().await.unwrap();
            if done(&table) {
                return;
            }
            assert!(Instant::now() < deadline, "never {what}: {table:#?}");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// A pipeline with the instant stand-in model in a fresh data directory (removed with
    /// the `TempDir`), and its reject log.
    async fn stand_in_pipeline() -> (
        tempfile::TempDir,
        DataDir,
        crate::actors::Pipeline,
        RejectLog,
    ) {
        let mut config = Config::load(None).unwrap();
        config.models.backend = Backend::StandIn;
        config.models.stand_in_latency_ms = 0;
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let pipeline = crate::actors::Pipeline::start(
            crate::app::parts(&config, &data, backends(&config).await.unwrap())
                .await
                .unwrap(),
        );
        let rejects = RejectLog::open(&data.reject_log()).unwrap();
        (dir, data, pipeline, rejects)
    }

    #[actix_rt::test]
    async fn two_workers_share_a_stream_and_hand_shards_over_while_reading() {
        let (kinesis, name) = stream(4).await;
        let (dynamo, lease_table, leases) = lease_table(&name).await;
        let (_dir, data, pipeline, rejects) = stand_in_pipeline().await;
        let worker = |id: &str| {
            let config = KinesisConfig {
                stream: name.clone(),
                lease_table: lease_table.clone(),
                worker_id: id.into(),
                lease_duration_ms: 900,
                idle_poll_ms: 20,
                ..KinesisConfig::default()
            };
            KinesisSource::with_clients(&config, kinesis.clone(), dynamo.clone()).unwrap()
        };
        let (a, b) = (worker("a"), worker("b"));
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());

        // Two records of each call on every shard: the first half now, the rest once the
        // shards have been split between the workers.
        let shards = kinesis
            .list_shards()
            .stream_name(&name)
            .send()
            .await
            .unwrap()
            .shards
            .unwrap();
        let calls: Vec<(String, String)> = (0..8)
            .map(|n| {
                let range = shards[n % 4].hash_key_range().unwrap();
                (format!("k-{n}"), range.starting_hash_key().to_string())
            })
            .collect();
        let put_lines = async |part: std::ops::Range<usize>| {
            let mut last = BTreeMap::new();
            for (contact, hash) in &calls {
                let lines = &call(contact)[part.clone()];
                last.extend(put(&kinesis, &name, lines, Some(hash)).await);
            }
            last
        };
        let b_started = CancellationToken::new();
        let driving = async {
            let first = put_lines(0..2).await;
            assert_eq!(first.len(), 4, "the first half on every shard");
            wait_for_leases(&leases, "a reading every shard", reached(&first)).await;
            assert!(
                owners(&leases)
                    .await
                    .values()
                    .all(|o| o.as_deref() == Some("a"))
            );
            b_started.cancel();
            wait_for_leases(&leases, "an even split", |table| {
                table
                    .iter()
                    .filter(|l| l.owner.as_deref() == Some("b"))
                    .count()
                    == 2
                    && table
                        .iter()
                        .filter(|l| l.owner.as_deref() == Some("a"))
                        .count()
                        == 2
            })
            .await;
            let rest = put_lines(2..4).await;
            wait_for_leases(&leases, "the rest read", reached(&rest)).await;
            stop_a.cancel();
            stop_b.cancel();
        };
        let running_b = async {
            b_started.cancelled().await;
            b.run(&pipeline, &rejects, 64, SETTLE, stop_b.clone()).await
        };
        let (read_a, read_b, ()) = tokio::join!(
            a.run(&pipeline, &rejects, 64, SETTLE, stop_a.clone()),
            running_b,
            driving
        );
        pipeline.settle(Duration::from_secs(30)).await.unwrap();

        assert!(read_b.appended > 0, "b read the shards it took: {read_b:?}");
        assert!(
            metrics().kinesis_lease_takeovers.get() >= 2,
            "b's two leases were taken from a"
        );
        assert!(crate::metrics::render().contains("callpulse_kinesis_leases_held"));
        assert_eq!(
            read_a.appended + read_b.appended,
            32,
            "{read_a:?} {read_b:?}"
        );
        assert_eq!(read_a.rejected + read_b.rejected, 0);
        let (events, _) = data.stores().unwrap();
        for (contact, _) in &calls {
            let log = events.read(contact, SeqRange::all()).await.unwrap();
            let kinds: Vec<&str> = log.iter().map(|e| e.kind.as_str()).collect();
            let received = kinds.iter().filter(|k| **k == "UtteranceReceived").count();
            assert_eq!(received, 2, "{contact}: {kinds:?}");
            assert_eq!(kinds.iter().filter(|k| **k == "ContactEnded").count(), 1);
        }
        assert!(owners(&leases).await.values().all(Option::is_none));
        pipeline.stop();
    }

    #[actix_rt::test]
    async fn a_missing_stream_or_lease_table_is_a_clear_error_at_start() {
        let (kinesis, name) = stream(1).await;
        let dynamo = aws_sdk_dynamodb::Client::new(&moto::config().await);
        let source = |stream: &str, lease_table: &str| {
            let config = KinesisConfig {
                stream: stream.into(),
                lease_table: lease_table.into(),
                ..KinesisConfig::default()
            };
            KinesisSource::with_clients(&config, kinesis.clone(), dynamo.clone()).unwrap()
        };
        let error = source("no-such-stream", "no-such-table")
            .check()
            .await
            .unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("\"no-such-stream\" cannot be read"), "{text}");
        assert!(text.contains("ResourceNotFound"), "{text}");

        let error = source(&name, "no-such-table").check().await.unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("callpulse store init"), "{text}");
        assert!(text.contains("no-such-table"), "{text}");

        let table = moto::unique_name("leases");
        LeaseTable::create(&dynamo, &table).await.unwrap();
        source(&name, &table).check().await.unwrap();
    }

    #[test]
    fn config_is_checked() {
        let config: KinesisConfig = toml::from_str("stream = \"calls\"").unwrap();
        assert_eq!(config.lease_table, "callpulse-leases");
        assert_eq!(config.initial_position, InitialPosition::TrimHorizon);
        assert!(toml::from_str::<KinesisConfig>("stream = \"s\"\nshards = 2").is_err());
        let latest: KinesisConfig =
            toml::from_str("stream = \"s\"\ninitial_position = \"latest\"").unwrap();
        assert_eq!(latest.initial_position.checkpoint(), LATEST);

        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let source = |config: &KinesisConfig| {
            KinesisSource::with_clients(
                config,
                aws_sdk_kinesis::Client::new(&sdk),
                aws_sdk_dynamodb::Client::new(&sdk),
            )
        };
        let error = source(&KinesisConfig::default()).err().unwrap();
        assert!(error.to_string().contains("stream"), "{error}");
        let error = source(&KinesisConfig {
            max_records: 0,
            ..config.clone()
        })
        .err()
        .unwrap();
        assert!(error.to_string().contains("max_records"), "{error}");
        let named = source(&config).unwrap();
        assert_ne!(
            named.worker_id(),
            source(&config).unwrap().worker_id(),
            "fresh ids differ"
        );
    }

    /// A worker whose lease store stops answering (a partition, a hung connection) stops
    /// the shard's contacts once a lease duration has passed since its last renewal was
    /// sent, on its own clock: from then on another worker may take the lease, and nothing
    /// of the shard may still run here. Not after the hung request finally fails.
    #[actix_rt::test]
    async fn a_worker_cut_off_from_its_leases_stops_their_contacts_on_its_own_clock() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let (kinesis, name) = stream(1).await;
        let (_, lease_table, leases) = lease_table(&name).await;
        let cut_off = Arc::new(AtomicBool::new(false));
        let (endpoint, abandoned) = {
            let cut_off = cut_off.clone();
            moto::proxy(move |_| {
                if cut_off.load(Ordering::SeqCst) {
                    moto::Forward::Hold
                } else {
                    moto::Forward::Answer
                }
            })
        };
        let sdk = moto::config().await;
        let dynamo = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&sdk)
                .endpoint_url(endpoint)
                .build(),
        );
        let (_dir, _data, pipeline, rejects) = stand_in_pipeline().await;
        let kinesis_config = KinesisConfig {
            stream: name.clone(),
            lease_table: lease_table.clone(),
            worker_id: "a".into(),
            lease_duration_ms: 900,
            idle_poll_ms: 20,
            ..KinesisConfig::default()
        };
        let worker = KinesisSource::with_clients(&kinesis_config, kinesis.clone(), dynamo).unwrap();
        let stop = CancellationToken::new();
        let live = || async {
            pipeline
                .router
                .send(GetActivity { among: None })
                .await
                .unwrap()
                .live
        };
        let driving = async {
            let open = put(&kinesis, &name, &call("k-cut")[..2], None).await;
            wait_for_leases(&leases, "the call read", reached(&open)).await;
            let deadline = Instant::now() + Duration::from_secs(30);
            while live().await == 0 {
                assert!(Instant::now() < deadline, "the call never opened");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            cut_off.store(true, Ordering::SeqCst);
            while live().await > 0 {
                assert!(
                    Instant::now() < deadline + Duration::from_secs(90),
                    "never stopped"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(
                abandoned.load(Ordering::SeqCst),
                0,
                "the contact was stopped only once a request to the store had timed out"
            );
            cut_off.store(false, Ordering::SeqCst);
            stop.cancel();
        };
        let (_, ()) = tokio::join!(
            worker.run(&pipeline, &rejects, 64, SETTLE, stop.clone()),
            driving
        );
        pipeline.stop();
    }
}
