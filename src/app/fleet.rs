//! `callpulse fleet status`: what the fleet reading the `[kinesis]` stream is doing, from
//! the lease table, the stream and the read models: each shard's owner, checkpoint and lag,
//! and how many unfinished contacts each shard (and so each worker) carries.

use std::collections::BTreeMap;
use std::io::Write;

use comfy_table::{Table, presets};
use serde::Serialize;

use super::query::Format;
use crate::ingest::kinesis::KinesisSource;
use crate::store::ProjectionStore;

/// One shard as `fleet status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    /// The shard.
    pub shard_id: String,
    /// The shards it was split or merged from.
    pub parents: Vec<String>,
    /// The worker holding its lease (none: free, or no lease yet).
    pub owner: Option<String>,
    /// The worker the lease is being handed over to, if any.
    pub claimant: Option<String>,
    /// Where its reading stands: a sequence number, `TRIM_HORIZON`, `LATEST` or `SHARD_END`.
    pub checkpoint: Option<String>,
    /// How far the checkpoint is behind the stream's tip, ms (none once read to its end).
    pub millis_behind: Option<i64>,
    /// Unfinished contacts (open, or ended without a summary) whose records land on it.
    pub unfinished_contacts: usize,
}

/// The fleet's shards, oldest first as the stream lists them.
pub async fn status(
    source: &KinesisSource,
    projections: &dyn ProjectionStore,
) -> anyhow::Result<Vec<ShardStatus>> {
    let unfinished: Vec<String> = projections
        .unfinished()
        .await?
        .into_iter()
        .map(|c| c.contact_id)
        .collect();
    Ok(source
        .status()
        .await?
        .into_iter()
        .map(|(shard, lease, millis_behind)| ShardStatus {
            unfinished_contacts: unfinished.iter().filter(|id| shard.holds(id)).count(),
            shard_id: shard.shard_id,
            parents: shard.parents,
            owner: lease.as_ref().and_then(|l| l.owner.clone()),
            claimant: lease.as_ref().and_then(|l| l.claimant.clone()),
            checkpoint: lease.map(|l| l.checkpoint),
            millis_behind,
        })
        .collect())
}

/// Writes `shards` as a table (shards, then leases and unfinished contacts per worker) or
/// as JSON (`{"shards": [...], "workers": {...}}`).
pub fn write(shards: &[ShardStatus], format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut workers: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for shard in shards {
        let owner = shard.owner.clone().unwrap_or_else(|| "(none)".into());
        let worker = workers.entry(owner).or_default();
        worker.0 += 1;
        worker.1 += shard.unfinished_contacts;
    }
    match format {
        Format::Json => {
            let workers: BTreeMap<_, _> = workers
                .into_iter()
                .map(|(w, (leases, contacts))| {
                    (
                        w,
                        serde_json::json!({"leases": leases, "unfinishedContacts": contacts}),
                    )
                })
                .collect();
            serde_json::to_writer_pretty(
                &mut *out,
                &serde_json::json!({"shards": shards, "workers": workers}),
            )?;
            writeln!(out)?;
        }
        Format::Csv => anyhow::bail!("fleet status is written as a table or as JSON"),
        Format::Table => {
            let mut table = Table::new();
            table.load_style(presets::UTF8_FULL_CONDENSED).set_header([
                "Shard",
                "Owner",
                "Handing over to",
                "Checkpoint",
                "Behind (ms)",
                "Unfinished contacts",
            ]);
            for s in shards {
                table.add_row([
                    s.shard_id.clone(),
                    s.owner.clone().unwrap_or_default(),
                    s.claimant.clone().unwrap_or_default(),
                    s.checkpoint.clone().unwrap_or_else(|| "(no lease)".into()),
                    s.millis_behind.map_or_else(String::new, |m| m.to_string()),
                    s.unfinished_contacts.to_string(),
                ]);
            }
            writeln!(out, "{table}")?;
            for (worker, (leases, contacts)) in workers {
                writeln!(
                    out,
                    "{worker}: {leases} leases, {contacts} unfinished contacts"
                )?;
            }
        }
    }
    Ok(())
}
