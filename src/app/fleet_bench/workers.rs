//! The fleet's worker processes: their shared config, the names of the run's tables,
//! stream and bucket, and starting and stopping them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use super::{INSTANCE, REGION};
use crate::aws::{AwsEndpoint, moto};
use crate::config::{Backend, Config, StoreKind, SummarySinkKind};
use crate::ingest::kinesis::KinesisConfig;
use crate::sinks::attributes::AttributeSinkKind;
use crate::sinks::connect::ConnectConfig;
use crate::sinks::s3::S3Config;

/// The config every worker of the run shares (its `worker_id` set per worker).
pub(super) fn fleet_config(names: &Names, bedrock: &str, connect: &str, lease_ms: u64) -> Config {
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
pub(super) fn kinesis_config(names: &Names, lease_ms: u64) -> KinesisConfig {
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
pub(super) struct Names {
    pub(super) events: String,
    pub(super) projections: String,
    pub(super) leases: String,
    pub(super) stream: String,
    pub(super) bucket: String,
}

impl Names {
    pub(super) fn fresh() -> Self {
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
pub(super) struct Workers {
    pub(super) running: BTreeMap<String, Child>,
    pub(super) started: usize,
}

impl Workers {
    /// Starts worker `id`: `callpulse run --kinesis` on `config`, its log in `dir/<id>.log`.
    pub(super) fn spawn(
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
pub(super) fn terminate(child: &Child) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM {} failed", child.id());
    Ok(())
}
