//! The fleet's input: a Kinesis Data Stream read by every worker, each shard by one worker at
//! a time under a lease ([`leases`]). A shard's records are parsed like lines of a
//! file (one JSON record, or several lines of them, per Kinesis record), fed through the
//! pipeline batch by batch, and the shard's checkpoint moves past a batch only once every
//! record of it is durable in the event log or in the reject log. A restart, a crash or a
//! lease moving to another worker re-reads at most the batch in progress, and re-reading is
//! harmless: records already in the log are not appended twice.

pub mod leases;

mod config;
mod reader;
mod upkeep;

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::Addr;
use anyhow::Context;
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

pub use config::{InitialPosition, KinesisConfig};

use super::source::RejectLog;
use crate::actors::Pipeline;
use crate::actors::feed::FeedStats;
use crate::actors::router::{ContactRouter, Release};
use crate::aws::{sdk_config, sdk_error};
use crate::metrics::metrics;
use crate::models::CancellationToken;
use crate::redaction::Redactor;
use leases::{Lease, LeasePlanner, LeaseTable, ShardInfo};

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
/// router also refuses their records until [`Unfence`](crate::actors::router::Unfence).
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
    redactor: Redactor,
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
            redactor: Redactor::default(),
        })
    }

    /// The source redacting transcripts with `redactor` (default: every kind of
    /// [`crate::redaction::PiiKind`]).
    pub fn redacting(self, redactor: Redactor) -> Self {
        Self { redactor, ..self }
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
            .map_err(sdk_error)
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

    /// Lease upkeep, every third of a lease duration: renews what is held until the
    /// pipeline has `settled`; beside it, until `stop`, adds and takes leases (sending those
    /// taken, with their shards, on `taken`). The two never wait for each other: a slow
    /// shard listing or lease-table scan cannot hold a renewal back.
    async fn upkeep(
        &self,
        held: &RefCell<HashMap<String, Held>>,
        taken: mpsc::UnboundedSender<(Lease, Option<ShardInfo>)>,
        stop: &CancellationToken,
        settled: &CancellationToken,
    ) {
        let lease_duration = Duration::from_millis(self.config.lease_duration_ms);
        let every = |period| {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        };
        let renewing = async {
            let mut tick = every(lease_duration / 3);
            loop {
                tokio::select! {
                    () = settled.cancelled() => return,
                    _ = tick.tick() => {}
                }
                metrics()
                    .kinesis_leases_held
                    .set(held.borrow().len() as i64);
                self.renew_held(held).await;
            }
        };
        let balancing = async {
            let mut planner = LeasePlanner::new(&self.me, lease_duration);
            let mut tick = every(lease_duration / 3);
            let mut synced: Option<Instant> = None;
            let mut shards: HashMap<String, ShardInfo> = HashMap::new();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
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
        };
        // On the heap: the balancing round's future is large, and a worker's whole future
        // would not fit a thread's stack in a debug build otherwise.
        tokio::join!(Box::pin(renewing), Box::pin(balancing));
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
}

#[cfg(test)]
mod tests;
