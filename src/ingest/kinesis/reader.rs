//! Shard reading: the stream's shards, iterators from a checkpoint, one reader per shard
//! held, and its batches fed through the pipeline and checkpointed.

use std::collections::HashMap;
use std::time::Duration;

use actix::Addr;
use anyhow::Context;
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
use aws_sdk_kinesis::operation::get_records::{GetRecordsError, GetRecordsOutput};
use aws_sdk_kinesis::types::ShardIteratorType;
use futures_util::future::OptionFuture;
use tokio::sync::mpsc;

use super::leases::{LATEST, Lease, SHARD_END, ShardInfo, TRIM_HORIZON};
use super::{Feeding, KinesisSource, ReaderEnd};
use crate::actors::feed::{FeedStats, feed};
use crate::actors::router::ContactRouter;
use crate::aws::sdk_error;
use crate::backoff::backoff;
use crate::ingest::source::{LineReader, ReadStats, RejectLog};
use crate::metrics::metrics;
use crate::models::CancellationToken;

impl KinesisSource {
    /// Every shard of the stream, closed ones included (their leases gate their children).
    pub(super) async fn shards(&self) -> anyhow::Result<Vec<ShardInfo>> {
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
                .map_err(sdk_error)
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
            .map_err(sdk_error)
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
                        .map_err(sdk_error)?;
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
    pub(super) async fn read_shard(
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
        let mut reader = LineReader::new(
            &format!("kinesis:{}/{}", self.config.stream, lease.shard_id),
            self.redactor.clone(),
        );
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
    pub(super) async fn drain(&self, key: &str, shard: Option<&ShardInfo>, feeding: &Feeding<'_>) {
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
