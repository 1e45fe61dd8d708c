//! The `[kinesis]` config table: the stream, the lease table, and how shards are read.

use serde::{Deserialize, Serialize};

use super::leases::{LATEST, TRIM_HORIZON};
use crate::aws::AwsEndpoint;

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
    pub(super) fn checkpoint(self) -> &'static str {
        match self {
            Self::TrimHorizon => TRIM_HORIZON,
            Self::Latest => LATEST,
        }
    }
}
