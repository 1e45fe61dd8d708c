//! Lease upkeep: renewing the leases held, fencing those gone a lease duration without a
//! renewal, taking this worker's share, handing over and giving back.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actix::Addr;

use super::leases::{Lease, LeasePlanner, Renewal, ShardInfo};
use super::{Held, KinesisSource, ReaderEnd, release};
use crate::actors::router::{ContactRouter, Unfence};
use crate::metrics::metrics;

impl KinesisSource {
    /// A shard reader ended: the contacts of a shard no longer read here are stopped, then
    /// a lease still held is given back (one stopped by `stop` stays held until the
    /// pipeline has settled).
    pub(super) async fn reader_ended(
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
    pub(super) async fn fence_expired(
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

    pub(super) async fn give_back(&self, key: &str, token: &str) {
        if let Err(e) = self.leases.release(key, token).await {
            tracing::warn!(lease = %key, error = format!("{e:#}"), "could not give the lease back; it expires instead");
        }
    }

    /// Renews every lease held: a lease taken over stops its reader; one claimed by another
    /// worker starts its hand-over.
    pub(super) async fn renew_held(&self, held: &RefCell<HashMap<String, Held>>) {
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

    /// One round of balancing: adds leases for new shards, and takes (or claims) this
    /// worker's share. Returns the leases just taken.
    pub(super) async fn keep_leases(
        &self,
        planner: &mut LeasePlanner,
        held: &RefCell<HashMap<String, Held>>,
        synced: &mut Option<Instant>,
        known: &mut HashMap<String, ShardInfo>,
    ) -> anyhow::Result<Vec<Lease>> {
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
}
