//! The throughput phase.

use std::path::Path;
use std::time::{Duration, Instant};

use super::kinesis::{create_stream, put_lines, stream_tips, wait_for_leases};
use super::workers::{Names, Workers, kinesis_config, terminate};
use crate::app::faults::stream;
use crate::aws::moto;
use crate::config::{Backend, Config};
use crate::ingest::kinesis::KinesisConfig;
use crate::ingest::kinesis::leases::{Lease, LeaseTable};

/// The throughput phase: `records` records (calls of 8 utterances) put beforehand on a
/// 4-shard stream, read by one worker with the instant stand-in model and a SQLite log:
/// records/s from its first lease to its checkpoints reaching the stream's end, and
/// records/s of a plain read of the stream.
pub(super) async fn throughput(
    exe: &Path,
    dir: &Path,
    records: usize,
) -> anyhow::Result<(u64, u64)> {
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
