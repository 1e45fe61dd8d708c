//! Shard leases for a fleet of workers reading one Kinesis stream, KCL-style: a DynamoDB
//! table with one item per shard (`<stream>/<shard id>`) holding its owner, a counter the
//! owner bumps to show it is alive, a fencing token, the checkpoint (the last sequence number
//! whose records are durable in the event log) and the shard's parents.
//!
//! - A worker renews its leases by bumping the counter, on condition that its token is still
//!   the lease's: a lease taken over by another worker fails to renew, and the loser stops.
//! - A lease is expired when its counter has not moved for a lease duration, judged on the
//!   observer's own monotonic clock (no clock sync between workers needed).
//! - Taking a lease (free, expired, or stolen to balance the fleet) is a conditional update on
//!   the counter last seen, with a new token; checkpoints are conditional on that token, so a
//!   worker that lost a lease can never move its checkpoint (fencing).
//! - A lease is moved from a live owner (to even out the fleet) by a hand-over, not a steal:
//!   the new worker claims it, the owner sees the claim on its next renewal, stops reading,
//!   lets the shard's contacts finish the work they owe, and gives the lease back; only the
//!   claimant may take it then (anyone, once it has stood free for a lease duration). So
//!   no model call, Connect update or summary is made twice when leases move between live
//!   workers. An owner that dies mid-hand-over stops renewing and its lease expires.
//! - A child shard (after a split or merge) is read only once its parents reach `SHARD_END`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ScalarAttributeType};
use rand::seq::SliceRandom;

use crate::aws::dynamodb::{create_table, s};
use crate::aws::sdk_error;

/// The checkpoint of a shard read to its end.
pub const SHARD_END: &str = "SHARD_END";
/// The checkpoint of a new shard read from its oldest record.
pub const TRIM_HORIZON: &str = "TRIM_HORIZON";
/// The checkpoint of a new shard read from records arriving from now on.
pub const LATEST: &str = "LATEST";

const KEY: &str = "leaseKey";
const STREAM: &str = "stream";
const SHARD: &str = "shardId";
const OWNER: &str = "owner";
const TOKEN: &str = "token";
const COUNTER: &str = "counter";
const CHECKPOINT: &str = "checkpoint";
const PARENTS: &str = "parents";
const CLAIMANT: &str = "claimant";

/// One shard's lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// `<stream>/<shard id>`.
    pub key: String,
    /// The shard.
    pub shard_id: String,
    /// The worker holding it, if any.
    pub owner: Option<String>,
    /// The holder's fencing token.
    pub token: Option<String>,
    /// Bumped by every renewal and take.
    pub counter: u64,
    /// `TRIM_HORIZON`, `LATEST`, a sequence number, or `SHARD_END`.
    pub checkpoint: String,
    /// The shards this one was split or merged from.
    pub parents: Vec<String>,
    /// The worker the owner is asked to hand the lease over to, if any.
    pub claimant: Option<String>,
}

/// What a renewal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours.
    Kept,
    /// Still ours, and this worker asks for it: hand it over.
    Claimed(String),
    /// Another worker holds it now.
    Lost,
}

impl Lease {
    /// Whether the shard has been read to its end.
    pub fn finished(&self) -> bool {
        self.checkpoint == SHARD_END
    }
}

/// A shard as the stream lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// Its id.
    pub shard_id: String,
    /// Its parent and adjacent parent, if any.
    pub parents: Vec<String>,
    /// The hash keys it holds, first and last (`None` when the stream did not say).
    pub hash_range: Option<(u128, u128)>,
}

impl ShardInfo {
    /// Whether the records of `contact_id` (the partition key callpulse's records are put
    /// with) land on this shard.
    pub fn holds(&self, contact_id: &str) -> bool {
        self.hash_range
            .is_some_and(|(first, last)| (first..=last).contains(&hash_key(contact_id)))
    }
}

/// Kinesis's hash key of a partition key: its MD5 as a 128-bit big-endian number.
pub fn hash_key(partition_key: &str) -> u128 {
    use md5::{Digest, Md5};
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// Where a new lease of `shard` starts: a child of a shard still listed (a reshard) reads
/// from `TRIM_HORIZON`, as KCL does, since whatever was written to it before its parents
/// ended belongs after them; any other shard starts at the configured `initial`.
pub fn start_of<'a>(shard: &ShardInfo, shards: &[ShardInfo], initial: &'a str) -> &'a str {
    let has_listed_parent = shard
        .parents
        .iter()
        .any(|parent| shards.iter().any(|s| &s.shard_id == parent));
    if has_listed_parent {
        TRIM_HORIZON
    } else {
        initial
    }
}

/// The lease table of one stream.
#[derive(Clone)]
pub struct LeaseTable {
    client: Client,
    table: String,
    stream: String,
}

/// Whether `error` is DynamoDB refusing a conditional write.
fn condition_failed<E: aws_sdk_dynamodb::error::ProvideErrorMetadata, R>(
    error: &SdkError<E, R>,
) -> bool {
    error
        .as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "ConditionalCheckFailedException")
}

impl LeaseTable {
    /// The leases of `stream` in `table`.
    pub fn new(client: Client, table: &str, stream: &str) -> Self {
        Self {
            client,
            table: table.into(),
            stream: stream.into(),
        }
    }

    /// Creates the lease table (key `leaseKey`) unless it exists.
    pub async fn create(client: &Client, table: &str) -> anyhow::Result<()> {
        create_table(client, table, &[(KEY, ScalarAttributeType::S)], &[]).await
    }

    fn key(&self, shard_id: &str) -> String {
        format!("{}/{shard_id}", self.stream)
    }

    /// Adds a free lease for every shard that has none, starting at `initial`, or at
    /// `TRIM_HORIZON` for the child of a listed shard (see [`start_of`]).
    pub async fn add_missing(&self, shards: &[ShardInfo], initial: &str) -> anyhow::Result<()> {
        for shard in shards {
            let parents = shard.parents.iter().map(s).collect();
            let initial = start_of(shard, shards, initial);
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item(KEY, s(self.key(&shard.shard_id)))
                .item(STREAM, s(&self.stream))
                .item(SHARD, s(&shard.shard_id))
                .item(COUNTER, AttributeValue::N("0".into()))
                .item(CHECKPOINT, s(initial))
                .item(PARENTS, AttributeValue::L(parents))
                .condition_expression("attribute_not_exists(#k)")
                .expression_attribute_names("#k", KEY)
                .send()
                .await;
            match put {
                Ok(_) => {
                    tracing::info!(stream = %self.stream, shard = %shard.shard_id, "lease added")
                }
                Err(e) if condition_failed(&e) => {}
                Err(e) => {
                    return Err(sdk_error(e))
                        .with_context(|| format!("adding the lease of {}", shard.shard_id));
                }
            }
        }
        Ok(())
    }

    /// Every lease of the stream (a consistent scan: the table holds one item per shard).
    pub async fn list(&self) -> anyhow::Result<Vec<Lease>> {
        let mut leases = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .filter_expression("#s = :s")
                .expression_attribute_names("#s", STREAM)
                .expression_attribute_values(":s", s(&self.stream))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk_error)
                .with_context(|| format!("listing the leases in {}", self.table))?;
            for item in page.items() {
                leases.push(lease_from_item(item)?);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        leases.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(leases)
    }

    /// Takes `lease` for `owner` with a new `token`, if its counter is still `seen`; the
    /// lease as taken (with its current checkpoint), or `None` when someone moved first.
    pub async fn take(
        &self,
        key: &str,
        seen: u64,
        owner: &str,
        token: &str,
    ) -> anyhow::Result<Option<Lease>> {
        let one = AttributeValue::N("1".into());
        let seen = AttributeValue::N(seen.to_string());
        self.update_if(
            key,
            "SET #o = :o, #t = :t REMOVE #cl ADD #c :one",
            "#c = :seen",
            &[
                ("#o", OWNER),
                ("#cl", CLAIMANT),
                ("#t", TOKEN),
                ("#c", COUNTER),
            ],
            &[
                (":o", s(owner)),
                (":t", s(token)),
                (":one", one),
                (":seen", seen),
            ],
        )
        .await
        .with_context(|| format!("taking lease {key}"))
    }

    /// Asks `owner`, the live holder of `key`, to hand it over to `me`; `false` when the
    /// owner changed or another worker claimed it first.
    pub async fn claim(&self, key: &str, owner: &str, me: &str) -> anyhow::Result<bool> {
        let claimed = self
            .update_if(
                key,
                "SET #cl = :me",
                "#o = :owner AND attribute_not_exists(#cl)",
                &[("#o", OWNER), ("#cl", CLAIMANT)],
                &[(":owner", s(owner)), (":me", s(me))],
            )
            .await
            .with_context(|| format!("claiming lease {key}"))?;
        Ok(claimed.is_some())
    }

    /// Runs `update` (with its attribute `names` and `values`) on `key` if `token` still
    /// holds it: the lease as updated, or `None` when the token no longer holds it.
    async fn fenced(
        &self,
        key: &str,
        token: &str,
        update: &str,
        names: &[(&str, &str)],
        values: &[(&str, AttributeValue)],
    ) -> anyhow::Result<Option<Lease>> {
        let names: Vec<(&str, &str)> = names.iter().copied().chain([("#t", TOKEN)]).collect();
        let values: Vec<(&str, AttributeValue)> = values
            .iter()
            .cloned()
            .chain([(":token", s(token))])
            .collect();
        self.update_if(key, update, "#t = :token", &names, &values)
            .await
            .with_context(|| format!("updating lease {key}"))
    }

    /// Runs `update` on `key` if `condition` holds: the lease as updated, or `None` when
    /// the condition failed.
    async fn update_if(
        &self,
        key: &str,
        update: &str,
        condition: &str,
        names: &[(&str, &str)],
        values: &[(&str, AttributeValue)],
    ) -> anyhow::Result<Option<Lease>> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(key))
            .update_expression(update)
            .condition_expression(condition)
            .return_values(ReturnValue::AllNew);
        for (placeholder, attribute) in names {
            request = request.expression_attribute_names(*placeholder, *attribute);
        }
        for (placeholder, value) in values {
            request = request.expression_attribute_values(*placeholder, value.clone());
        }
        match request.send().await {
            Ok(out) => {
                let item = out
                    .attributes
                    .context("UpdateItem returned no attributes")?;
                Ok(Some(lease_from_item(&item)?))
            }
            Err(e) if condition_failed(&e) => Ok(None),
            Err(e) => Err(sdk_error(e)),
        }
    }

    /// Bumps the counter of a lease held with `token`: whether it is still ours, and
    /// whether another worker has claimed it.
    pub async fn renew(&self, key: &str, token: &str) -> anyhow::Result<Renewal> {
        let one = AttributeValue::N("1".into());
        let renewed = self
            .fenced(
                key,
                token,
                "ADD #c :one",
                &[("#c", COUNTER)],
                &[(":one", one)],
            )
            .await?;
        Ok(match renewed {
            None => Renewal::Lost,
            Some(Lease {
                claimant: Some(by), ..
            }) => Renewal::Claimed(by),
            Some(_) => Renewal::Kept,
        })
    }

    /// Records `checkpoint` on a lease held with `token`; `false` if it was taken over.
    pub async fn checkpoint(
        &self,
        key: &str,
        token: &str,
        checkpoint: &str,
    ) -> anyhow::Result<bool> {
        let names = [("#k", CHECKPOINT)];
        let done = self
            .fenced(key, token, "SET #k = :k", &names, &[(":k", s(checkpoint))])
            .await?;
        Ok(done.is_some())
    }

    /// Gives a lease held with `token` up, so that another worker (its claimant, if it has
    /// one) can take it at once.
    pub async fn release(&self, key: &str, token: &str) -> anyhow::Result<bool> {
        let one = AttributeValue::N("1".into());
        let names = [("#o", OWNER), ("#c", COUNTER)];
        let released = self
            .fenced(
                key,
                token,
                "REMOVE #o, #t ADD #c :one",
                &names,
                &[(":one", one)],
            )
            .await?;
        Ok(released.is_some())
    }
}

fn lease_from_item(item: &HashMap<String, AttributeValue>) -> anyhow::Result<Lease> {
    let text = |name: &str| -> anyhow::Result<String> {
        match item.get(name) {
            Some(AttributeValue::S(v)) => Ok(v.clone()),
            _ => anyhow::bail!("a lease item lacks the string {name}: {item:?}"),
        }
    };
    let optional = |name: &str| match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    };
    let counter = match item.get(COUNTER) {
        Some(AttributeValue::N(n)) => n.parse().context("a lease counter")?,
        _ => anyhow::bail!("a lease item lacks its counter: {item:?}"),
    };
    let parents = match item.get(PARENTS) {
        Some(AttributeValue::L(list)) => {
            list.iter().filter_map(|v| v.as_s().ok().cloned()).collect()
        }
        _ => Vec::new(),
    };
    Ok(Lease {
        key: text(KEY)?,
        shard_id: text(SHARD)?,
        owner: optional(OWNER),
        token: optional(TOKEN),
        counter,
        checkpoint: text(CHECKPOINT)?,
        parents,
        claimant: optional(CLAIMANT),
    })
}

/// A lease to take, and the counter it must still have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    /// The lease.
    pub key: String,
    /// Its counter when last seen.
    pub seen: u64,
    /// Held by this live worker, asked to hand it over ([`LeaseTable::claim`]) instead of
    /// taken.
    pub claim_from: Option<String>,
}

/// Decides which leases a worker takes, from what it has seen of the table over time.
pub struct LeasePlanner {
    me: String,
    lease_duration: Duration,
    /// Each lease's counter, and when this worker saw it change.
    seen: HashMap<String, (u64, Instant)>,
}

impl LeasePlanner {
    /// A planner for worker `me`.
    pub fn new(me: &str, lease_duration: Duration) -> Self {
        Self {
            me: me.into(),
            lease_duration,
            seen: HashMap::new(),
        }
    }

    /// The leases to take now, given the table (`leases`, read at `now`) and the keys this
    /// worker holds. Aims at an even share of the readable shards among live workers: takes
    /// free and expired leases up to that share, and when none is left claims one lease
    /// from the busiest worker, if it holds at least two more than this one (one claim at
    /// a time).
    pub fn plan(&mut self, leases: &[Lease], held: &HashSet<String>, now: Instant) -> Vec<Take> {
        self.seen
            .retain(|key, _| leases.iter().any(|l| &l.key == key));
        for lease in leases {
            let entry = self
                .seen
                .entry(lease.key.clone())
                .or_insert((lease.counter, now));
            if entry.0 != lease.counter {
                *entry = (lease.counter, now);
            }
        }
        let finished: HashSet<&str> = leases
            .iter()
            .filter(|l| l.finished())
            .map(|l| l.shard_id.as_str())
            .collect();
        let known: HashSet<&str> = leases.iter().map(|l| l.shard_id.as_str()).collect();
        // Readable: not finished, and every parent still in the table finished.
        let readable: Vec<&Lease> = leases
            .iter()
            .filter(|l| !l.finished())
            .filter(|l| {
                l.parents
                    .iter()
                    .all(|p| finished.contains(p.as_str()) || !known.contains(p.as_str()))
            })
            .collect();
        let me = self.me.as_str();
        let available = |l: &Lease| match (&l.owner, &l.claimant) {
            // Handed over to its claimant: theirs alone, until it has stood free too long.
            (None, Some(claimant)) => claimant == me || self.expired(l, now),
            (None, None) => true,
            (Some(owner), _) if owner == me => !held.contains(&l.key),
            (Some(_), _) => self.expired(l, now),
        };
        // Who each lease counts for: its owner, or the worker it is being handed to.
        let mut load: BTreeMap<&str, Vec<&Lease>> = BTreeMap::new();
        for lease in readable.iter().filter(|l| !available(l)) {
            let holder = match (&lease.owner, &lease.claimant) {
                (_, Some(claimant)) => claimant,
                (Some(owner), None) => owner,
                (None, None) => continue,
            };
            load.entry(holder.as_str()).or_default().push(lease);
        }
        let workers = load.keys().filter(|w| **w != me).count() + 1;
        let share = readable.len().div_ceil(workers);
        let mine = load.get(me).map_or(0, Vec::len);
        let need = share.saturating_sub(mine);
        // In random order, so that workers looking at the same table at once (after a
        // worker died) go for different leases instead of racing for the first.
        let mut free: Vec<&&Lease> = readable.iter().filter(|l| available(l)).collect();
        free.shuffle(&mut rand::rng());
        let mut takes: Vec<Take> = free
            .into_iter()
            .take(need)
            .map(|l| Take {
                key: l.key.clone(),
                seen: l.counter,
                claim_from: None,
            })
            .collect();
        let claiming = readable
            .iter()
            .any(|l| l.claimant.as_deref() == Some(me) && l.owner.is_some());
        if takes.len() < need && !claiming {
            let busiest = load
                .iter()
                .filter(|(worker, _)| **worker != me)
                .max_by_key(|(_, leases)| leases.len());
            // Moving one lease must narrow the gap, so an odd one out never moves back and
            // forth: the busiest holds at least two more than this worker.
            let after = mine + takes.len();
            if let Some((_, leases)) = busiest
                && leases.len() > after + 1
                && let Some(victim) = leases.iter().find(|l| l.claimant.is_none())
            {
                takes.push(Take {
                    key: victim.key.clone(),
                    seen: victim.counter,
                    claim_from: victim.owner.clone(),
                });
            }
        }
        takes
    }

    /// Whether `lease`'s counter has stood still for a lease duration.
    fn expired(&self, lease: &Lease, now: Instant) -> bool {
        self.seen
            .get(&lease.key)
            .is_some_and(|(_, since)| now.duration_since(*since) >= self.lease_duration)
    }
}

#[cfg(test)]
mod table_tests;
#[cfg(test)]
mod tests;
