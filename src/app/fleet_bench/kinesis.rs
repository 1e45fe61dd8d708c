//! The run's stream, its leases and its bucket as the harness handles them: creating,
//! putting, splitting, watching.

use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};

use crate::ingest::kinesis::leases::{Lease, LeaseTable, SHARD_END};

pub(super) async fn create_stream(
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
pub(super) async fn put_lines(
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
pub(super) async fn wait_for_leases(
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

/// Whether every lease in `theirs` (the killed worker's) is now held by a live worker.
pub(super) fn taken_over(table: &[Lease], victim: &str, theirs: &[Lease]) -> bool {
    theirs.iter().all(|old| {
        table.iter().any(|l| {
            l.key == old.key
                && (l.owner.as_deref().is_some_and(|o| o != victim) || l.checkpoint == SHARD_END)
        })
    })
}

/// The hash key ranges of the shards of `leases`.
pub(super) async fn shard_ranges(
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
pub(super) async fn split_a_shard(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> anyhow::Result<()> {
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
pub(super) async fn summaries_in(s3: &aws_sdk_s3::Client, bucket: &str) -> anyhow::Result<usize> {
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

/// The last sequence number of every shard of `stream` that has records.
pub(super) async fn stream_tips(
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
