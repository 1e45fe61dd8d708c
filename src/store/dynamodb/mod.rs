//! The fleet's stores on DynamoDB: the event log ([`DynamoEventStore`]) and the contacts read
//! model ([`DynamoProjectionStore`]), one table each ([`create_tables`] makes them). Both keep
//! the semantics of `store` (the conformance suite runs against them on moto's server).
//!
//! # Events table
//!
//! - One item per event: partition key `pk` (S) = contact id, sort key `sk` (N) = sequence
//!   number, the envelope as attributes (`payload` is the body's exact JSON text), plus `pos`
//!   and `day` for the global feed (below).
//! - An append is one `TransactWriteItems`: a `ConditionCheck` that event `first_seq - 1`
//!   exists (when `first_seq > 1`), so a stale or skipping writer fails; a `Put` per event
//!   with `attribute_not_exists`, so two writers cannot both take a number; and, when the
//!   batch has a source id, a `Put` of its idempotency item (`pk` = `src#` + SHA-256 of contact
//!   and source id, `sk` = 0, with the batch's first and last sequence numbers, and
//!   `expiresAt`, the time to live that [`create_tables`] turns on: the batch's `recorded_at`
//!   plus the key retention), also `attribute_not_exists`. Events start at sequence number 1
//!   and every event query asks for `sk >= 1`, so items at `sk` 0 never read as events. When the transaction is cancelled on a
//!   condition, an existing idempotency item makes the append a [`Appended::Duplicate`] with
//!   the original numbers; otherwise it is a [`StoreError::Conflict`] with the log's highest
//!   sequence number.
//! - A transaction holds at most 100 actions and 4 MiB: a batch holds at most
//!   [`MAX_BATCH_EVENTS`] events (two actions are the append's own), and a batch over 4 MiB is
//!   refused with [`StoreError::InvalidBatch`]; an event over
//!   [`MAX_EVENT_BYTES`](super::MAX_EVENT_BYTES) (which keeps it under the 400 KB item limit) with [`StoreError::TooLarge`]. Contact ids
//!   are at most [`MAX_CONTACT_ID_BYTES`] (a partition key holds 2048 bytes).
//! - Each transaction attempt carries its own `ClientRequestToken`: the SDK's retries of that
//!   attempt (throttling, 5xx, a lost response) resend the same token, which DynamoDB answers
//!   without applying the batch a second time. A later, separate append of the same events
//!   gets a new token, so it is judged by the conditions (a duplicate or a conflict), never
//!   answered from DynamoDB's 10-minute idempotency cache as a second success.
//! - Reads of a contact `Query` its partition with `ConsistentRead`, following
//!   `LastEvaluatedKey` (pages stop at 1 MB).
//!
//! # The global feed and the replay window
//!
//! DynamoDB has no global commit order. Each event gets a position: its `recorded_at` in
//! microseconds × 1024, plus a tie-breaker from its contact and batch (and at least one more
//! than the previous event of its batch, so a batch keeps its order). The `feed` index
//! (partition `day` = the position's UTC date, sort `pos`) holds every event;
//! [`read_all`](EventStore::read_all) queries the days from the day of `after` on, in order, following `LastEvaluatedKey`. The
//! days that have events are listed in one registry item (`pk` = `feed#days`, `sk` = 0, a
//! string set), added to before the first event of a day is written (once per process and
//! day), so a read from position 0 queries only days that exist.
//!
//! A position is known before the commit, so an event can become visible below a position a
//! reader has already passed: a writer that was slow between sealing and committing (the
//! SDK's retries included), a writer whose clock is behind, and the index itself (`feed` is a
//! global secondary index, updated asynchronously, and read eventually consistently).
//! [`EventStore::replay_window`] is therefore [`REPLAY_WINDOW`] (30 s) worth of positions, and
//! `projection::catch_up` re-reads that far behind its checkpoint every time; the fold skips
//! what a row already holds, and fills a gap in a contact's sequence numbers from the contact's
//! own log. The price is re-reading the last 30 s of the feed on each catch-up. An event whose
//! `recorded_at` is older than that when it commits (an import of old events) is folded only
//! by a rebuild (`projections rebuild`).
//!
//! All events of a day share one index partition, which DynamoDB serves at about 1,000 write
//! units per second: roughly 1,000 small events per second for the whole fleet before the
//! index throttles (and with it the table's writes).
//!
//! # Projections table
//!
//! One item per contact (`pk` = `c#` + contact id) with the [`ContactRow`] fields, the
//! checkpoint in the item `pk` = `checkpoint`, and a registry of start days (`pk` = `days`).
//! Rows carry the keys of four indexes, all sorted by `startKey` (the start time, fixed
//! width): `byDay` (`day` = UTC start date, `none` before the call has started), `escalated`
//! (`esc` = the same day, set only on escalated contacts: a sparse index), `bySentiment`
//! (`sentimentDay` = `<LABEL>#<day>`) and `unfinished` (`owes` = the first hex digit of the
//! SHA-256 digest of the contact id, set only on rows that owe work: a sparse index over 16
//! partitions, which [`ProjectionStore::unfinished`] queries one after another).
//! [`ProjectionStore::contacts`] queries the registered days between `since` and `until`
//! (every registered day, then the not yet started ones, when neither is given) through the most selective index (escalated, then sentiment, then day)
//! and applies the rest of the filter itself: no scans. `save` writes rows and checkpoint in
//! transactions of at most 100 items, the checkpoint in the last one: a crash between them
//! leaves rows ahead of the checkpoint, which the next catch-up folds again without effect.
//! `reset` (before a rebuild) is the one operation that scans.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, KeysAndAttributes, Projection, ProjectionType, Put,
    ReturnConsumedCapacity, ScalarAttributeType, TimeToLiveSpecification, TimeToLiveStatus,
    TransactWriteItem,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    Appended, ContactFilter, ContactRow, DEFAULT_KEY_RETENTION_DAYS, EventStore, Positioned,
    ProjectionStore, SeqRange, StoreError, check_batch, sort_contacts,
};
use crate::aws::{AwsEndpoint, sdk_config};
use crate::backoff::backoff;
use crate::events::StoredEvent;
use crate::events::envelope::digest_hex;
use crate::models::Label;

/// Most events in one append: a transaction holds 100 actions, two of which an append may
/// need for itself (the check of the previous event and the idempotency item).
pub const MAX_BATCH_EVENTS: usize = 98;

/// Longest contact id: DynamoDB's 2048-byte partition key, less the read model's `c#`.
pub const MAX_CONTACT_ID_BYTES: usize = 2046;

/// How long after its position an event may still become visible in the feed (module docs).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(30);

/// Actions in one transaction.
const MAX_TRANSACTION_ACTIONS: usize = 100;

/// Aggregate size of the items of one transaction.
const MAX_TRANSACTION_BYTES: usize = 4 * 1024 * 1024;

/// Positions per microsecond of `recorded_at`.
const POSITIONS_PER_MICRO: u64 = 1024;

/// Attempts of an append whose transaction collides with another one on the same items.
const TRANSACTION_ATTEMPTS: u32 = 5;

/// Keys per BatchGetItem request (DynamoDB's limit).
const BATCH_GET_KEYS: usize = 100;

/// Partition key of both tables.
const PK: &str = "pk";
/// Sort key of the events table.
const SK: &str = "sk";
/// UTC date (`YYYY-MM-DD`): of an event's position, of a contact's start.
const DAY: &str = "day";
/// An event's global position.
const POS: &str = "pos";
/// The sort key of the projection indexes.
const START_KEY: &str = "startKey";
/// Set on escalated contacts only.
const ESC: &str = "esc";
/// `<LABEL>#<day>`, on contacts with a sentiment.
const SENTIMENT_DAY: &str = "sentimentDay";
/// The string set of a day registry.
const DAYS: &str = "days";

/// The events table's index of the global feed.
const FEED_INDEX: &str = "feed";
/// The projection index of every contact, by start day.
const BY_DAY_INDEX: &str = "byDay";
/// The projection index of escalated contacts, by start day.
const ESCALATED_INDEX: &str = "escalated";
/// The projection index of contacts with a sentiment, by sentiment and start day.
const SENTIMENT_INDEX: &str = "bySentiment";

/// `day` and `startKey` of a contact that has not started.
const UNSTARTED: &str = "none";
/// Key of the sparse `unfinished` index: set only on rows that owe work, to one of
/// [`OWES_BUCKETS`] (the first hex digit of the contact id's digest), so that the index's
/// writes spread over 16 partitions.
const OWES: &str = "owes";
/// The index of the rows that owe work.
const UNFINISHED_INDEX: &str = "unfinished";
/// The values of [`OWES`].
const OWES_BUCKETS: [&str; 16] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f",
];
/// The time-to-live attribute of idempotency items (epoch seconds).
const EXPIRES_AT: &str = "expiresAt";

/// Where the fleet keeps its event log and read models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamoConfig {
    /// The events table.
    pub events_table: String,
    /// The read models' table.
    pub projections_table: String,
    /// Region and endpoint override (e.g. a local emulator).
    pub endpoint: AwsEndpoint,
}

impl Default for DynamoConfig {
    fn default() -> Self {
        Self {
            events_table: "callpulse-events".into(),
            projections_table: "callpulse-projections".into(),
            endpoint: AwsEndpoint::default(),
        }
    }
}

impl DynamoConfig {
    /// A DynamoDB client for [`DynamoConfig::endpoint`].
    pub async fn client(&self) -> Client {
        Client::new(&sdk_config(&self.endpoint).await)
    }

    /// Checks the table names as DynamoDB would: 3 to 255 ASCII letters, digits, `_`, `-`
    /// and `.`, and two different tables.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (field, name) in [
            ("events_table", &self.events_table),
            ("projections_table", &self.projections_table),
        ] {
            let valid = (3..=255).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !valid {
                bail!(
                    "dynamodb.{field} = {name:?}: a DynamoDB table name is 3 to 255 ASCII \
                     letters, digits, '_', '-' and '.'"
                );
            }
        }
        if self.events_table == self.projections_table {
            bail!(
                "dynamodb.events_table and dynamodb.projections_table are both {:?}: they must differ",
                self.events_table
            );
        }
        Ok(())
    }
}

/// One table's key or index key: attribute name and type.
pub(crate) type KeyAttr = (&'static str, ScalarAttributeType);

/// A global secondary index: name, partition key, sort key (all attributes projected).
pub(crate) type IndexDesign = (&'static str, KeyAttr, KeyAttr);

/// Creates the events and projections tables of `config` (on-demand billing, with their
/// indexes; names checked by [`DynamoConfig::validate`]) and waits until they are active. A table that exists already is fine if it has
/// the expected keys and indexes; otherwise this says what differs.
pub async fn create_tables(client: &Client, config: &DynamoConfig) -> anyhow::Result<()> {
    use ScalarAttributeType::{N, S};
    config.validate()?;
    create_table(
        client,
        &config.events_table,
        &[(PK, S), (SK, N)],
        &[(FEED_INDEX, (DAY, S), (POS, N))],
    )
    .await?;
    create_table(
        client,
        &config.projections_table,
        &[(PK, S)],
        &[
            (BY_DAY_INDEX, (DAY, S), (START_KEY, S)),
            (ESCALATED_INDEX, (ESC, S), (START_KEY, S)),
            (SENTIMENT_INDEX, (SENTIMENT_DAY, S), (START_KEY, S)),
            (UNFINISHED_INDEX, (OWES, S), (START_KEY, S)),
        ],
    )
    .await?;
    expire_by(client, &config.events_table, EXPIRES_AT).await
}

/// Turns on DynamoDB's time to live on `attribute` of `table`, unless it is on already.
async fn expire_by(client: &Client, table: &str, attribute: &str) -> anyhow::Result<()> {
    let described = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(&e)))
        .with_context(|| format!("describing the time to live of {table}"))?;
    let current = described.time_to_live_description();
    let on = current.and_then(|d| d.attribute_name()) == Some(attribute)
        && matches!(
            current.and_then(|d| d.time_to_live_status()),
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        );
    if on {
        return Ok(());
    }
    let spec = TimeToLiveSpecification::builder()
        .attribute_name(attribute)
        .enabled(true)
        .build()
        .expect("name and switch are set");
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(&e)))
        .with_context(|| format!("turning on the time to live of {table} on {attribute}"))?;
    Ok(())
}

/// Creates table `name` (on-demand billing) with `keys` and `indexes` and waits until it is
/// active; a table that exists already is fine if it has that design.
pub(crate) async fn create_table(
    client: &Client,
    name: &str,
    keys: &[KeyAttr],
    indexes: &[IndexDesign],
) -> anyhow::Result<()> {
    let key_schema = |keys: &[&KeyAttr]| -> Vec<KeySchemaElement> {
        keys.iter()
            .zip([KeyType::Hash, KeyType::Range])
            .map(|((attr, _), key_type)| {
                KeySchemaElement::builder()
                    .attribute_name(*attr)
                    .key_type(key_type)
                    .build()
                    .expect("name and key type are set")
            })
            .collect()
    };
    let mut attributes: Vec<&KeyAttr> = keys.iter().collect();
    for (_, hash, range) in indexes {
        attributes.extend([hash, range]);
    }
    let mut defined = HashSet::new();
    let definitions = attributes
        .into_iter()
        .filter(|(attr, _)| defined.insert(*attr))
        .map(|(attr, kind)| {
            AttributeDefinition::builder()
                .attribute_name(*attr)
                .attribute_type(kind.clone())
                .build()
                .expect("name and type are set")
        });
    let gsis = indexes.iter().map(|(index, hash, range)| {
        GlobalSecondaryIndex::builder()
            .index_name(*index)
            .set_key_schema(Some(key_schema(&[hash, range])))
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .expect("name, keys and projection are set")
    });
    let created = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(definitions.collect()))
        .set_key_schema(Some(key_schema(&keys.iter().collect::<Vec<_>>())))
        // DynamoDB refuses an empty index list: none at all when there are none.
        .set_global_secondary_indexes(Some(gsis.collect()).filter(|g: &Vec<_>| !g.is_empty()))
        .send()
        .await;
    if let Err(error) = created
        && !error
            .as_service_error()
            .is_some_and(|e| e.is_resource_in_use_exception())
    {
        return Err(anyhow::anyhow!("{}", DisplayErrorContext(&error)))
            .with_context(|| format!("creating DynamoDB table {name}"));
    }
    let described = client
        .wait_until_table_exists()
        .table_name(name)
        .wait(Duration::from_secs(300))
        .await
        .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(&e)))
        .with_context(|| format!("waiting for DynamoDB table {name}"))?;
    let table = described
        .as_result()
        .ok()
        .and_then(|output| output.table.clone())
        .with_context(|| format!("DynamoDB table {name} was not described"))?;
    let key_names: Vec<&str> = table
        .key_schema()
        .iter()
        .map(|k| k.attribute_name())
        .collect();
    let expected: Vec<&str> = keys.iter().map(|(attr, _)| *attr).collect();
    if key_names != expected {
        bail!("DynamoDB table {name} exists with keys {key_names:?}, not {expected:?}");
    }
    for (index, hash, range) in indexes {
        let found = table
            .global_secondary_indexes()
            .iter()
            .find(|i| i.index_name() == Some(index));
        let keys: Option<Vec<&str>> =
            found.map(|i| i.key_schema().iter().map(|k| k.attribute_name()).collect());
        if keys.as_deref() != Some(&[hash.0, range.0][..]) {
            bail!(
                "DynamoDB table {name} exists without the index {index} on ({}, {})",
                hash.0,
                range.0
            );
        }
    }
    Ok(())
}

/// The event log in one DynamoDB table (module docs).
pub struct DynamoEventStore {
    client: Client,
    table: String,
    feed_days: DayRegistry,
    /// How long after its batch was recorded an idempotency item expires.
    key_retention: chrono::Duration,
}

impl DynamoEventStore {
    /// The event log in `table` (made by [`create_tables`]), reached with `client`; its
    /// idempotency items expire after [`DEFAULT_KEY_RETENTION_DAYS`].
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        let table = table.into();
        let registry_key = item([(PK, s("feed#days")), (SK, n(0))]);
        Self {
            feed_days: DayRegistry::new(&table, registry_key),
            client,
            table,
            key_retention: chrono::Duration::days(DEFAULT_KEY_RETENTION_DAYS.into()),
        }
    }

    /// The same store, its idempotency items expiring `retention` after their batch was
    /// recorded (DynamoDB's time to live deletes them some time after that).
    pub fn with_key_retention(mut self, retention: chrono::Duration) -> Self {
        self.key_retention = retention;
        self
    }

    /// The batch an append's idempotency key belongs to, if it is in the log.
    async fn source(
        &self,
        contact_id: &str,
        source_id: &str,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let found = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(source_key(contact_id, source_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        found
            .item
            .map(|found| {
                let fields = Fields(&found);
                Ok((fields.n("firstSeq")?, fields.n("lastSeq")?))
            })
            .transpose()
    }

    /// What a transaction cancelled on a condition means: a duplicate of a batch in the
    /// log, or a conflict with the log's actual highest sequence number.
    async fn refused(&self, first: &StoredEvent) -> Result<Appended, StoreError> {
        if let Some(source) = &first.source_id
            && let Some((first_seq, last_seq)) = self.source(&first.contact_id, source).await?
        {
            return Ok(Appended::Duplicate {
                first_seq,
                last_seq,
            });
        }
        Err(StoreError::Conflict {
            contact_id: first.contact_id.clone(),
            expected: first.seq - 1,
            actual: self.highest_seq(&first.contact_id).await?,
        })
    }

    /// The actions of an append and the aggregate size of their items.
    fn actions(
        &self,
        events: &[StoredEvent],
        positions: &[u64],
    ) -> (Vec<TransactWriteItem>, usize) {
        let first = &events[0];
        let last_seq = first.seq + events.len() as u64 - 1;
        let mut actions = Vec::with_capacity(events.len() + 2);
        let mut bytes = 0;
        if first.seq > 1 {
            let check = ConditionCheck::builder()
                .table_name(&self.table)
                .set_key(Some(event_key(&first.contact_id, first.seq - 1)))
                .condition_expression("attribute_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .build()
                .expect("table, key and condition are set");
            actions.push(TransactWriteItem::builder().condition_check(check).build());
        }
        let source = first.source_id.as_ref().map(|source| {
            item([
                (PK, s(source_pk(&first.contact_id, source))),
                (SK, n(0)),
                ("contactId", s(&first.contact_id)),
                ("sourceId", s(source)),
                ("firstSeq", n(first.seq)),
                ("lastSeq", n(last_seq)),
                (
                    EXPIRES_AT,
                    n((first.recorded_at + self.key_retention).timestamp().max(0)),
                ),
            ])
        });
        let items = events
            .iter()
            .zip(positions)
            .map(|(event, &position)| event_item(event, position))
            .chain(source);
        for new_item in items {
            bytes += item_size(&new_item);
            actions.push(put_new(&self.table, new_item));
        }
        (actions, bytes)
    }
}

#[async_trait]
impl EventStore for DynamoEventStore {
    async fn append(&self, events: &[StoredEvent]) -> Result<Appended, StoreError> {
        check_batch(events)?;
        let first = &events[0];
        let (first_seq, last_seq) = (first.seq, first.seq + events.len() as u64 - 1);
        check_contact_id(&first.contact_id)?;
        if events.len() > MAX_BATCH_EVENTS {
            return Err(StoreError::InvalidBatch(format!(
                "contact {}: a batch of {} events; one DynamoDB transaction appends at most {MAX_BATCH_EVENTS}",
                first.contact_id,
                events.len()
            )));
        }
        let positions = positions(events);
        let (actions, bytes) = self.actions(events, &positions);
        if bytes > MAX_TRANSACTION_BYTES {
            return Err(StoreError::InvalidBatch(format!(
                "contact {}: a batch of {} events takes {bytes} bytes in DynamoDB, over the \
                 {MAX_TRANSACTION_BYTES} bytes one transaction can write; append it in smaller batches",
                first.contact_id,
                events.len()
            )));
        }
        let days = positions.iter().map(|&p| day_of_position(p)).collect();
        self.feed_days.register(&self.client, days).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .client
                .transact_write_items()
                .set_transact_items(Some(actions.clone()))
                .client_request_token(uuid::Uuid::now_v7().to_string())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            let error = match sent {
                Ok(output) => {
                    let units: f64 = output
                        .consumed_capacity()
                        .iter()
                        .filter_map(|c| c.capacity_units())
                        .sum();
                    tracing::debug!(contact = %first.contact_id, first_seq, last_seq, units, "appended");
                    return Ok(Appended::Written {
                        first_seq,
                        last_seq,
                    });
                }
                Err(error) => error,
            };
            let codes: Vec<String> = match error.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => cancelled
                    .cancellation_reasons()
                    .iter()
                    .filter_map(|r| r.code().map(str::to_string))
                    .collect(),
                _ if error.code() == Some("ValidationException") => {
                    return Err(StoreError::InvalidBatch(format!(
                        "DynamoDB refused the batch: {}",
                        DisplayErrorContext(&error)
                    )));
                }
                _ => return Err(unavailable("TransactWriteItems", error)),
            };
            let has = |code: &str| codes.iter().any(|c| c == code);
            if has("ConditionalCheckFailed") {
                return self.refused(first).await;
            }
            if has("TransactionConflict") && attempt < TRANSACTION_ATTEMPTS {
                // Another transaction holds one of the items: it ends within milliseconds.
                let ms = 10u64 << attempt;
                let pause = ms / 2 + rand::random_range(0..=ms / 2);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
            if has("ValidationError") {
                return Err(StoreError::InvalidBatch(format!(
                    "DynamoDB refused the batch: {codes:?}"
                )));
            }
            return Err(unavailable("TransactWriteItems", error));
        }
    }

    async fn read(
        &self,
        contact_id: &str,
        range: SeqRange,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let from = range.from.max(1);
        if range.max == 0 || from > range.to {
            return Ok(Vec::new());
        }
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :c AND #sk BETWEEN :from AND :to")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":c", s(contact_id))
            .expression_attribute_values(":from", n(from))
            .expression_attribute_values(":to", n(range.to))
            .consistent_read(true);
        let items = query_items(query, range.max).await?;
        items.iter().map(event_from_item).collect()
    }

    async fn highest_seq(&self, contact_id: &str) -> Result<u64, StoreError> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :c AND #sk >= :one")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":c", s(contact_id))
            .expression_attribute_values(":one", n(1))
            .projection_expression("#sk")
            .scan_index_forward(false)
            .consistent_read(true);
        let items = query_items(query, 1).await?;
        items.first().map_or(Ok(0), |last| Fields(last).n(SK))
    }

    async fn read_all(&self, after: u64, max: usize) -> Result<Vec<Positioned>, StoreError> {
        let mut events = Vec::new();
        if max == 0 {
            return Ok(events);
        }
        let days = self.feed_days.days(&self.client).await?;
        for day in days.range(day_of_position(after)..) {
            let query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(FEED_INDEX)
                .key_condition_expression("#day = :day AND #pos > :after")
                .expression_attribute_names("#day", DAY)
                .expression_attribute_names("#pos", POS)
                .expression_attribute_values(":day", s(day))
                .expression_attribute_values(":after", n(after));
            for found in query_items(query, max - events.len()).await? {
                events.push(Positioned {
                    position: Fields(&found).n(POS)?,
                    event: event_from_item(&found)?,
                });
            }
            if events.len() == max {
                break;
            }
        }
        Ok(events)
    }

    fn replay_window(&self) -> u64 {
        let micros = u64::try_from(REPLAY_WINDOW.as_micros()).expect("30 s in µs fits");
        micros * POSITIONS_PER_MICRO
    }
}

/// The contacts read model in one DynamoDB table (module docs).
pub struct DynamoProjectionStore {
    client: Client,
    table: String,
    start_days: DayRegistry,
}

impl DynamoProjectionStore {
    /// The read model in `table` (made by [`create_tables`]), reached with `client`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        let table = table.into();
        Self {
            start_days: DayRegistry::new(&table, item([(PK, s("days"))])),
            client,
            table,
        }
    }

    fn checkpoint_key() -> HashMap<String, AttributeValue> {
        item([(PK, s("checkpoint"))])
    }
}

#[async_trait]
impl ProjectionStore for DynamoProjectionStore {
    async fn checkpoint(&self) -> Result<u64, StoreError> {
        let found = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::checkpoint_key()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        found.item.map_or(Ok(0), |i| Fields(&i).n("position"))
    }

    async fn save(&self, rows: &[ContactRow], checkpoint: u64) -> Result<(), StoreError> {
        // One action per item in a transaction: the last row of a contact wins.
        let mut latest: HashMap<&str, &ContactRow> = HashMap::new();
        for row in rows {
            check_contact_id(&row.contact_id)?;
            latest.insert(&row.contact_id, row);
        }
        let days = latest
            .values()
            .filter_map(|row| row.started_at.map(day_text))
            .collect();
        self.start_days.register(&self.client, days).await?;
        let mut checkpoint_item = Self::checkpoint_key();
        checkpoint_item.insert("position".into(), n(checkpoint));
        let writes: Vec<IfNotBehind> = latest
            .values()
            .map(|row| IfNotBehind {
                item: row_item(row),
                field: "lastSeq",
                value: row.last_seq,
            })
            .chain([IfNotBehind {
                item: checkpoint_item,
                field: "position",
                value: checkpoint,
            }])
            .collect();
        for chunk in writes.chunks(MAX_TRANSACTION_ACTIONS) {
            let actions = chunk
                .iter()
                .map(|w| TransactWriteItem::builder().put(w.put(&self.table)).build())
                .collect();
            let written = self
                .client
                .transact_write_items()
                .set_transact_items(Some(actions))
                .send()
                .await;
            match written {
                Ok(_) => {}
                Err(e) if cancelled_by_condition(&e) => {
                    // Another worker folded some of these rows further: write the others
                    // one by one, each only over a fold that is not ahead of it.
                    for write in chunk {
                        write.put_alone(&self.client, &self.table).await?;
                    }
                }
                Err(e) => return Err(unavailable("TransactWriteItems", e)),
            }
        }
        Ok(())
    }

    async fn contact(&self, contact_id: &str) -> Result<Option<ContactRow>, StoreError> {
        let found = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(row_pk(contact_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        found.item.as_ref().map(row_from_item).transpose()
    }

    /// BatchGetItem, [`BATCH_GET_KEYS`] keys a request; keys DynamoDB leaves unprocessed
    /// (throttling) are asked for again after a pause.
    async fn rows(
        &self,
        contact_ids: &[String],
    ) -> Result<HashMap<String, ContactRow>, StoreError> {
        let mut rows = HashMap::new();
        for chunk in contact_ids.chunks(BATCH_GET_KEYS) {
            let keys = chunk
                .iter()
                .map(|id| HashMap::from([(PK.to_string(), s(row_pk(id)))]))
                .collect();
            let mut request = KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(true)
                .build()
                .expect("keys are set");
            let mut attempts = 0;
            loop {
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| unavailable("BatchGetItem", e))?;
                let found = out.responses.and_then(|mut r| r.remove(&self.table));
                for item in found.unwrap_or_default() {
                    let row = row_from_item(&item)?;
                    rows.insert(row.contact_id.clone(), row);
                }
                match out.unprocessed_keys.and_then(|mut u| u.remove(&self.table)) {
                    Some(rest) if !rest.keys().is_empty() => {
                        attempts += 1;
                        if attempts >= TRANSACTION_ATTEMPTS {
                            return Err(StoreError::Unavailable(format!(
                                "BatchGetItem left {} keys unprocessed after {attempts} tries",
                                rest.keys().len()
                            )));
                        }
                        tokio::time::sleep(backoff(50, 2_000, attempts)).await;
                        request = rest;
                    }
                    _ => break,
                }
            }
        }
        Ok(rows)
    }

    async fn contacts(&self, filter: &ContactFilter) -> Result<Vec<ContactRow>, StoreError> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut rows = Vec::new();
        if limit == 0 {
            return Ok(rows);
        }
        let (index, hash, prefix) = match (filter.escalated, filter.sentiment) {
            (Some(true), _) => (ESCALATED_INDEX, ESC, String::new()),
            (_, Some(label)) => (SENTIMENT_INDEX, SENTIMENT_DAY, format!("{label}#")),
            _ => (BY_DAY_INDEX, DAY, String::new()),
        };
        if let (Some(since), Some(until)) = (filter.since, filter.until)
            && since >= until
        {
            return Ok(rows);
        }
        let (since_day, until_day) = (filter.since.map(day_text), filter.until.map(day_text));
        let mut days: Vec<String> = self
            .start_days
            .days(&self.client)
            .await?
            .into_iter()
            .filter(|day| {
                since_day.as_ref().is_none_or(|since| day >= since)
                    && until_day.as_ref().is_none_or(|until| day <= until)
            })
            .collect();
        let mut condition = "#h = :h".to_string();
        match (filter.since, filter.until) {
            (Some(_), Some(_)) => condition.push_str(" AND #start BETWEEN :since AND :until"),
            (Some(_), None) => condition.push_str(" AND #start >= :since"),
            (None, Some(_)) => condition.push_str(" AND #start <= :until"),
            // Contacts not started yet pass only a filter without times.
            (None, None) => days.push(UNSTARTED.into()),
        }
        for day in days {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression(&condition)
                .expression_attribute_names("#h", hash)
                .expression_attribute_values(":h", s(format!("{prefix}{day}")));
            if filter.since.is_some() || filter.until.is_some() {
                query = query.expression_attribute_names("#start", START_KEY);
            }
            if let Some(since) = filter.since {
                query = query.expression_attribute_values(":since", s(time_text(since)));
            }
            if let Some(until) = filter.until {
                query = query.expression_attribute_values(":until", s(time_text(until)));
            }
            for found in query_items(query, usize::MAX).await? {
                let row = row_from_item(&found)?;
                if filter.matches(&row) {
                    rows.push(row);
                }
            }
            // Days come in order, and rows of later days start later.
            if rows.len() >= limit {
                break;
            }
        }
        sort_contacts(&mut rows);
        rows.truncate(limit);
        Ok(rows)
    }

    /// Queries the sparse `unfinished` index, bucket by bucket.
    async fn unfinished(&self) -> Result<Vec<ContactRow>, StoreError> {
        let mut rows = Vec::new();
        for bucket in OWES_BUCKETS {
            let query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(UNFINISHED_INDEX)
                .key_condition_expression("#h = :h")
                .expression_attribute_names("#h", OWES)
                .expression_attribute_values(":h", s(bucket));
            for found in query_items(query, usize::MAX).await? {
                rows.push(row_from_item(&found)?);
            }
        }
        sort_contacts(&mut rows);
        Ok(rows)
    }

    async fn reset(&self) -> Result<(), StoreError> {
        let mut keys = self
            .client
            .scan()
            .table_name(&self.table)
            .projection_expression("#pk")
            .expression_attribute_names("#pk", PK)
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        let mut deletes = Vec::new();
        while let Some(key) = keys.next().await {
            let delete = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key.map_err(|e| unavailable("Scan", e))?))
                .build()
                .expect("table and key are set");
            deletes.push(TransactWriteItem::builder().delete(delete).build());
        }
        transact_in_chunks(&self.client, deletes).await?;
        self.start_days.forget();
        Ok(())
    }
}

/// The days a table has something for, in one registry item (a string set), and the ones
/// this process knows are there already.
struct DayRegistry {
    table: String,
    key: HashMap<String, AttributeValue>,
    known: Mutex<HashSet<String>>,
}

impl DayRegistry {
    fn new(table: &str, key: HashMap<String, AttributeValue>) -> Self {
        Self {
            table: table.to_string(),
            key,
            known: Mutex::new(HashSet::new()),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `days` to the registry (only those this process has not added or seen).
    async fn register(&self, client: &Client, days: BTreeSet<String>) -> Result<(), StoreError> {
        let new: Vec<String> = {
            let known = self.known();
            days.into_iter().filter(|d| !known.contains(d)).collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key.clone()))
            .update_expression("ADD #days :days")
            .expression_attribute_names("#days", DAYS)
            .expression_attribute_values(":days", AttributeValue::Ss(new.clone()))
            .send()
            .await
            .map_err(|e| unavailable("UpdateItem", e))?;
        self.known().extend(new);
        Ok(())
    }

    /// Every registered day, in order.
    async fn days(&self, client: &Client) -> Result<BTreeSet<String>, StoreError> {
        let found = client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(self.key.clone()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        let days: BTreeSet<String> = match found.item.as_ref().and_then(|i| i.get(DAYS)) {
            None => BTreeSet::new(),
            Some(AttributeValue::Ss(days)) => days.iter().cloned().collect(),
            Some(_) => return Err(malformed(DAYS, "not a string set")),
        };
        self.known().extend(days.iter().cloned());
        Ok(days)
    }

    /// Forgets what this process knew (the registry item was deleted).
    fn forget(&self) {
        self.known().clear();
    }
}

/// Items of `query`, page after page (following `LastEvaluatedKey`), until `max` or the end.
async fn query_items(
    query: QueryFluentBuilder,
    max: usize,
) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
    let mut items = Vec::new();
    let mut start = None;
    while items.len() < max {
        let page = query
            .clone()
            .limit(i32::try_from(max - items.len()).unwrap_or(i32::MAX))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| unavailable("Query", e))?;
        items.extend(page.items.unwrap_or_default());
        start = page.last_evaluated_key;
        if start.is_none() {
            break;
        }
    }
    Ok(items)
}

/// A read-model item written only over one that is not ahead of it: fleet workers fold the
/// same log at their own pace, and a slower fold must never overwrite a newer row (or move
/// the checkpoint back).
struct IfNotBehind {
    item: HashMap<String, AttributeValue>,
    /// The number that orders folds of this item (`lastSeq` of a row, `position` of the
    /// checkpoint) ...
    field: &'static str,
    /// ... and this write's.
    value: u64,
}

impl IfNotBehind {
    const CONDITION: &str = "attribute_not_exists(#pk) OR #order <= :order";

    fn put(&self, table: &str) -> Put {
        Put::builder()
            .table_name(table)
            .set_item(Some(self.item.clone()))
            .condition_expression(Self::CONDITION)
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#order", self.field)
            .expression_attribute_values(":order", n(self.value))
            .build()
            .expect("table, item and condition are set")
    }

    /// Writes it on its own; a newer item already there is kept, and that is no error.
    async fn put_alone(&self, client: &Client, table: &str) -> Result<(), StoreError> {
        let put = TransactWriteItem::builder().put(self.put(table)).build();
        match client
            .transact_write_items()
            .transact_items(put)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if cancelled_by_condition(&e) => {
                tracing::debug!(
                    field = self.field,
                    value = self.value,
                    "a newer fold of this read-model item is there; kept"
                );
                Ok(())
            }
            Err(e) => Err(unavailable("TransactWriteItems", e)),
        }
    }
}

/// Whether a transaction was cancelled because a condition of one of its items failed.
fn cancelled_by_condition<R>(error: &SdkError<TransactWriteItemsError, R>) -> bool {
    match error.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => cancelled
            .cancellation_reasons()
            .iter()
            .any(|r| r.code() == Some("ConditionalCheckFailed")),
        _ => false,
    }
}

/// Runs `actions` as transactions of at most 100 actions, one after the other.
async fn transact_in_chunks(
    client: &Client,
    actions: Vec<TransactWriteItem>,
) -> Result<(), StoreError> {
    for chunk in actions.chunks(MAX_TRANSACTION_ACTIONS) {
        client
            .transact_write_items()
            .set_transact_items(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| unavailable("TransactWriteItems", e))?;
    }
    Ok(())
}

/// Refuses a contact id too long for the tables' keys.
fn check_contact_id(contact_id: &str) -> Result<(), StoreError> {
    if contact_id.len() > MAX_CONTACT_ID_BYTES {
        return Err(StoreError::InvalidBatch(format!(
            "contact id of {} bytes: DynamoDB keys hold contact ids of at most {MAX_CONTACT_ID_BYTES} bytes",
            contact_id.len()
        )));
    }
    Ok(())
}

/// A failed call: the backend is unavailable (the SDK has retried what it retries).
fn unavailable<E, R>(operation: &str, error: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Unavailable(format!(
        "DynamoDB {operation}: {}",
        DisplayErrorContext(&error)
    ))
}

fn malformed(attribute: &str, what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "malformed DynamoDB item: attribute {attribute} {what}"
    ))
}

/// A string attribute.
pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn item<const K: usize>(pairs: [(&str, AttributeValue); K]) -> HashMap<String, AttributeValue> {
    pairs
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
}

/// A `Put` of an item that must not exist yet.
fn put_new(table: &str, new_item: HashMap<String, AttributeValue>) -> TransactWriteItem {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(new_item))
        .condition_expression("attribute_not_exists(#pk)")
        .expression_attribute_names("#pk", PK)
        .build()
        .expect("table and item are set");
    TransactWriteItem::builder().put(put).build()
}

/// An item's size as DynamoDB counts it (attribute names and values; numbers about one
/// byte per two digits, plus one).
fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::S(text) => text.len(),
                    AttributeValue::N(number) => number.len().div_ceil(2) + 1,
                    AttributeValue::Ss(texts) => texts.iter().map(String::len).sum(),
                    // Booleans and nulls; other types are not stored by these tables.
                    _ => 1,
                }
        })
        .sum()
}

/// SHA-256 over length-prefixed parts.
fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn event_key(contact_id: &str, seq: u64) -> HashMap<String, AttributeValue> {
    item([(PK, s(contact_id)), (SK, n(seq))])
}

/// Partition key of a batch's idempotency item.
fn source_pk(contact_id: &str, source_id: &str) -> String {
    format!(
        "src#{}",
        digest_hex(&[contact_id.as_bytes(), source_id.as_bytes()])
    )
}

fn source_key(contact_id: &str, source_id: &str) -> HashMap<String, AttributeValue> {
    item([(PK, s(source_pk(contact_id, source_id))), (SK, n(0))])
}

/// The positions of a batch's events (module docs): increasing, and at least 1.
fn positions(events: &[StoredEvent]) -> Vec<u64> {
    let first = &events[0];
    let hash = digest(&[first.contact_id.as_bytes(), &first.seq.to_be_bytes()]);
    let spread = POSITIONS_PER_MICRO - MAX_BATCH_EVENTS as u64;
    let tie = u64::from_be_bytes(hash[..8].try_into().expect("8 bytes")) % spread;
    let mut previous = 0;
    (0u64..)
        .zip(events)
        .map(|(i, event)| {
            let micros = u64::try_from(event.recorded_at.timestamp_micros()).unwrap_or(0);
            let own = micros
                .saturating_mul(POSITIONS_PER_MICRO)
                .saturating_add(tie + i);
            previous = own.max(previous + 1);
            previous
        })
        .collect()
}

/// The UTC date of a position's microsecond.
fn day_of_position(position: u64) -> String {
    let micros = i64::try_from(position / POSITIONS_PER_MICRO).expect("u64 / 1024 fits i64");
    day_text(DateTime::from_timestamp_micros(micros).expect("within chrono's range"))
}

fn day_text(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d").to_string()
}

/// A time as fixed-width RFC 3339 (nanoseconds, `Z`): exact, and sorts as the time does.
fn time_text(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
}

fn event_item(event: &StoredEvent, position: u64) -> HashMap<String, AttributeValue> {
    let recorded_at = event
        .recorded_at
        .to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let mut event_item = item([
        (PK, s(&event.contact_id)),
        (SK, n(event.seq)),
        ("eventId", s(event.event_id.to_string())),
        ("recordedAt", s(recorded_at)),
        ("schemaVersion", n(event.schema_version)),
        ("kind", s(&event.kind)),
        ("payload", s(&event.payload)),
        ("prevHash", s(&event.prev_hash)),
        ("hash", s(&event.hash)),
        (POS, n(position)),
        (DAY, s(day_of_position(position))),
    ]);
    if let Some(source) = &event.source_id {
        event_item.insert("sourceId".into(), s(source));
    }
    event_item
}

fn event_from_item(found: &HashMap<String, AttributeValue>) -> Result<StoredEvent, StoreError> {
    let fields = Fields(found);
    Ok(StoredEvent {
        contact_id: fields.s(PK)?.to_string(),
        seq: fields.n(SK)?,
        event_id: fields.parsed("eventId")?,
        recorded_at: fields
            .time("recordedAt")?
            .ok_or_else(|| malformed("recordedAt", "missing"))?,
        schema_version: fields.n("schemaVersion")?,
        kind: fields.s("kind")?.to_string(),
        source_id: fields.opt_s("sourceId")?.map(str::to_string),
        payload: fields.s("payload")?.to_string(),
        prev_hash: fields.s("prevHash")?.to_string(),
        hash: fields.s("hash")?.to_string(),
    })
}

/// Partition key of a contact's row.
fn row_pk(contact_id: &str) -> String {
    format!("c#{contact_id}")
}

fn row_item(row: &ContactRow) -> HashMap<String, AttributeValue> {
    let day = row
        .started_at
        .map_or_else(|| UNSTARTED.to_string(), day_text);
    let start_key = row
        .started_at
        .map_or_else(|| UNSTARTED.to_string(), time_text);
    let mut row_item = item([
        (PK, s(row_pk(&row.contact_id))),
        ("contactId", s(&row.contact_id)),
        ("escalated", AttributeValue::Bool(row.escalated)),
        ("escalations", n(row.escalations)),
        ("summaryVersion", n(row.summary_version)),
        ("utterances", n(row.utterances)),
        ("lastSeq", n(row.last_seq)),
        (START_KEY, s(start_key)),
    ]);
    let optional = [
        ("instanceId", row.instance_id.clone()),
        ("startedAt", row.started_at.map(time_text)),
        ("endedAt", row.ended_at.map(time_text)),
        ("sentiment", row.sentiment.map(|l| l.to_string())),
        (ESC, row.escalated.then(|| day.clone())),
        (SENTIMENT_DAY, row.sentiment.map(|l| format!("{l}#{day}"))),
        (OWES, row.owes_work().then(|| owes_bucket(&row.contact_id))),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            row_item.insert(name.to_string(), s(value));
        }
    }
    row_item.insert(DAY.into(), s(day));
    row_item
}

/// The [`OWES`] bucket of a contact.
fn owes_bucket(contact_id: &str) -> String {
    digest_hex(&[contact_id.as_bytes()])[..1].to_string()
}

fn row_from_item(found: &HashMap<String, AttributeValue>) -> Result<ContactRow, StoreError> {
    let fields = Fields(found);
    let sentiment = match fields.opt_s("sentiment")? {
        None => None,
        Some(text) => {
            Some(Label::parse(text).ok_or_else(|| malformed("sentiment", "not a label"))?)
        }
    };
    Ok(ContactRow {
        contact_id: fields.s("contactId")?.to_string(),
        instance_id: fields.opt_s("instanceId")?.map(str::to_string),
        started_at: fields.time("startedAt")?,
        ended_at: fields.time("endedAt")?,
        escalated: match found.get("escalated") {
            Some(AttributeValue::Bool(escalated)) => *escalated,
            _ => return Err(malformed("escalated", "missing or not a boolean")),
        },
        escalations: fields.n("escalations")?,
        sentiment,
        summary_version: fields.n("summaryVersion")?,
        utterances: fields.n("utterances")?,
        last_seq: fields.n("lastSeq")?,
    })
}

/// Typed reads of one item's attributes.
struct Fields<'a>(&'a HashMap<String, AttributeValue>);

impl<'a> Fields<'a> {
    fn opt_s(&self, name: &str) -> Result<Option<&'a str>, StoreError> {
        match self.0.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(text)) => Ok(Some(text)),
            Some(_) => Err(malformed(name, "is not a string")),
        }
    }

    fn s(&self, name: &str) -> Result<&'a str, StoreError> {
        self.opt_s(name)?
            .ok_or_else(|| malformed(name, "is missing"))
    }

    fn n<T: FromStr>(&self, name: &str) -> Result<T, StoreError> {
        match self.0.get(name) {
            Some(AttributeValue::N(number)) => number
                .parse()
                .map_err(|_| malformed(name, "is out of range")),
            _ => Err(malformed(name, "is missing or not a number")),
        }
    }

    fn parsed<T: FromStr>(&self, name: &str) -> Result<T, StoreError> {
        self.s(name)?
            .parse()
            .map_err(|_| malformed(name, "does not parse"))
    }

    fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.opt_s(name)?
            .map(|text| {
                DateTime::parse_from_rfc3339(text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| malformed(name, "is not an RFC 3339 time"))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use actix_web::HttpResponse;
    use chrono::TimeZone;

    use super::*;
    use crate::aws::moto;
    use crate::aws::stub::Stub;
    use crate::events::{ChainHead, Event, Participant, UtteranceReceived};
    use crate::store::memory::MemoryProjectionStore;
    use crate::store::projection::catch_up;

    /// A client of the moto server and a config with tables of this test's own.
    async fn moto_tables() -> (Client, DynamoConfig) {
        let client = Client::new(&moto::config().await);
        let config = DynamoConfig {
            events_table: moto::unique_name("events"),
            projections_table: moto::unique_name("projections"),
            ..DynamoConfig::default()
        };
        create_tables(&client, &config).await.unwrap();
        (client, config)
    }

    /// The next `n` utterances of `contact` on `head`, recorded at `at`, of `len` characters,
    /// the batch from input `source`.
    fn utterances(
        head: &mut ChainHead,
        contact: &str,
        n: usize,
        len: usize,
        at: DateTime<Utc>,
        source: Option<&str>,
    ) -> Vec<StoredEvent> {
        let body = Event::UtteranceReceived(UtteranceReceived {
            segment_id: "s".into(),
            participant: Participant::Customer,
            text: "x".repeat(len),
            begin_offset_millis: None,
            end_offset_millis: None,
        });
        (0..n)
            .map(|_| head.seal(contact, source, &body, at))
            .collect()
    }

    #[tokio::test]
    async fn idempotency_items_expire_by_the_time_to_live_create_tables_turns_on() {
        let (client, config) = moto_tables().await;
        // A second call finds it on and leaves it so.
        create_tables(&client, &config).await.unwrap();
        let ttl = client
            .describe_time_to_live()
            .table_name(&config.events_table)
            .send()
            .await
            .unwrap();
        let ttl = ttl.time_to_live_description().unwrap();
        assert_eq!(ttl.attribute_name(), Some(EXPIRES_AT));
        assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));

        let store = DynamoEventStore::new(client.clone(), &config.events_table)
            .with_key_retention(chrono::Duration::days(3));
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap();
        let batch = utterances(&mut ChainHead::default(), "c", 2, 5, at, Some("in-1"));
        store.append(&batch).await.unwrap();
        let key = client
            .get_item()
            .table_name(&config.events_table)
            .set_key(Some(source_key("c", "in-1")))
            .send()
            .await
            .unwrap();
        let expires = key.item().and_then(|i| i.get(EXPIRES_AT)).cloned();
        let expected = (at + chrono::Duration::days(3)).timestamp();
        assert_eq!(expires, Some(n(expected)));
        // Events themselves never expire.
        let event = client
            .get_item()
            .table_name(&config.events_table)
            .set_key(Some(event_key("c", 1)))
            .send()
            .await
            .unwrap();
        assert!(event.item().unwrap().get(EXPIRES_AT).is_none());
    }

    #[tokio::test]
    async fn create_tables_is_idempotent_and_checks_an_existing_design() {
        let (client, config) = moto_tables().await;
        create_tables(&client, &config).await.unwrap();
        let store = DynamoEventStore::new(client.clone(), &config.events_table);
        let batch = utterances(&mut ChainHead::default(), "c", 1, 5, Utc::now(), None);
        store.append(&batch).await.unwrap();
        create_tables(&client, &config).await.unwrap();
        assert_eq!(
            store.highest_seq("c").await.unwrap(),
            1,
            "the table was kept"
        );

        let plain = DynamoConfig {
            events_table: config.projections_table.clone(),
            projections_table: config.events_table.clone(),
            ..DynamoConfig::default()
        };
        let error = create_tables(&client, &plain).await.unwrap_err();
        assert!(
            format!("{error:#}").contains("exists with keys"),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn batches_over_a_transaction_are_refused_clearly() {
        let (client, config) = moto_tables().await;
        let store = DynamoEventStore::new(client, &config.events_table);
        let now = Utc::now();

        let too_many = utterances(&mut ChainHead::default(), "many", 99, 5, now, None);
        let error = store.append(&too_many).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::InvalidBatch(m) if m.contains("at most 98")),
            "{error}"
        );
        let too_big = utterances(&mut ChainHead::default(), "big", 13, 340_000, now, None);
        let error = store.append(&too_big).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::InvalidBatch(m) if m.contains("smaller batches")),
            "{error}"
        );
        let long_id = "c".repeat(MAX_CONTACT_ID_BYTES + 1);
        let long = utterances(&mut ChainHead::default(), &long_id, 1, 5, now, None);
        let error = store.append(&long).await.unwrap_err();
        assert!(
            matches!(&error, StoreError::InvalidBatch(m) if m.contains("2046 bytes")),
            "{error}"
        );
        for contact in ["many", "big", &long_id] {
            assert_eq!(store.highest_seq(contact).await.unwrap(), 0);
        }

        // The largest batch fits: the check of event 1, 98 events and the source id item
        // are the 100 actions of one transaction.
        let mut head = ChainHead::default();
        store
            .append(&utterances(&mut head, "many", 1, 5, now, None))
            .await
            .unwrap();
        let largest = utterances(&mut head, "many", MAX_BATCH_EVENTS, 5, now, Some("in"));
        assert_eq!(
            store.append(&largest).await.unwrap(),
            Appended::Written {
                first_seq: 2,
                last_seq: 99
            }
        );
        let log = store.read("many", SeqRange::all()).await.unwrap();
        assert_eq!(&log[1..], &largest[..]);
    }

    /// DynamoDB answers a retried `TransactWriteItems` with a token it has already applied
    /// without applying it again; moto does not keep tokens, so this checks our half on a
    /// stub: the SDK's retry of an attempt carries the same token and body, and a separate
    /// append carries a new token.
    #[actix_rt::test]
    async fn sdk_retries_resend_a_transaction_with_its_token() {
        let transactions = Arc::new(AtomicUsize::new(0));
        let counted = transactions.clone();
        let stub = Stub::start(move |request, _| {
            let target = request.header("x-amz-target").unwrap_or_default();
            let first = target.ends_with(".TransactWriteItems")
                && counted.fetch_add(1, Ordering::SeqCst) == 0;
            let (mut response, body) = if first {
                (
                    HttpResponse::InternalServerError(),
                    r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"lost"}"#,
                )
            } else {
                (HttpResponse::Ok(), "{}")
            };
            response
                .content_type("application/x-amz-json-1.0")
                .body(body)
        });
        let sdk = moto::config().await;
        let client = Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&sdk)
                .endpoint_url(&stub.endpoint)
                .build(),
        );
        let store = DynamoEventStore::new(client, "events");
        let batch = utterances(&mut ChainHead::default(), "c", 2, 5, Utc::now(), Some("in"));
        let written = Appended::Written {
            first_seq: 1,
            last_seq: 2,
        };
        assert_eq!(store.append(&batch).await.unwrap(), written);
        assert_eq!(store.append(&batch).await.unwrap(), written);

        let sent: Vec<_> = stub
            .received()
            .into_iter()
            .filter(|r| r.header("x-amz-target") == Some("DynamoDB_20120810.TransactWriteItems"))
            .collect();
        assert_eq!(sent.len(), 3, "one attempt, its retry, a second append");
        assert!(sent.iter().all(|r| r.is_signed()));
        let token = |i: usize| {
            sent[i].json()["ClientRequestToken"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(token(0), token(1));
        assert_eq!(sent[0].body, sent[1].body);
        assert_ne!(token(2), token(0));
        assert!(token(0).len() <= 36);
        let actions = sent[0].json()["TransactItems"].as_array().unwrap().len();
        assert_eq!(actions, 3, "two events and the source id item");
    }

    #[tokio::test]
    async fn the_feed_spans_days_in_position_order() {
        let (client, config) = moto_tables().await;
        let store = DynamoEventStore::new(client, &config.events_table);
        let days = [
            Utc.with_ymd_and_hms(2024, 3, 1, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(2025, 7, 14, 0, 0, 0).unwrap(),
            Utc::now(),
        ];
        let mut appended = Vec::new();
        for (i, at) in days.into_iter().enumerate().rev() {
            let batch = utterances(&mut ChainHead::default(), &format!("c{i}"), 2, 5, at, None);
            store.append(&batch).await.unwrap();
            appended.splice(0..0, batch);
        }
        let all = store.read_all(0, usize::MAX).await.unwrap();
        let events: Vec<_> = all.iter().map(|p| p.event.clone()).collect();
        assert_eq!(events, appended);
        assert!(all.windows(2).all(|w| w[0].position < w[1].position));
        for k in 0..all.len() {
            assert_eq!(
                store.read_all(all[k].position, 3).await.unwrap(),
                all[k + 1..(k + 4).min(all.len())]
            );
        }
    }

    #[tokio::test]
    async fn late_and_out_of_order_commits_are_projected() {
        let (client, config) = moto_tables().await;
        let events = DynamoEventStore::new(client.clone(), &config.events_table);
        let projections = DynamoProjectionStore::new(client, &config.projections_table);
        let now = Utc::now();
        let on_time = utterances(&mut ChainHead::default(), "on-time", 1, 5, now, None);
        events.append(&on_time).await.unwrap();
        assert_eq!(catch_up(&events, &projections, 10).await.unwrap(), 1);
        let checkpoint = projections.checkpoint().await.unwrap();

        // Sealed 5 s ago, committed only now: behind the checkpoint.
        let late = utterances(
            &mut ChainHead::default(),
            "late",
            1,
            5,
            now - chrono::Duration::seconds(5),
            None,
        );
        events.append(&late).await.unwrap();
        // A writer whose clock is behind: event 2 is positioned before event 1.
        let mut head = ChainHead::default();
        let first = utterances(&mut head, "skewed", 1, 5, now, None);
        let second = utterances(
            &mut head,
            "skewed",
            1,
            5,
            now - chrono::Duration::seconds(9),
            None,
        );
        events.append(&first).await.unwrap();
        events.append(&second).await.unwrap();

        assert_eq!(catch_up(&events, &projections, 2).await.unwrap(), 3);
        for (contact, utterances) in [("on-time", 1), ("late", 1), ("skewed", 2)] {
            let row = projections.contact(contact).await.unwrap().unwrap();
            assert_eq!(
                (row.utterances, row.last_seq),
                (utterances, utterances as u64),
                "{contact}"
            );
        }
        assert!(projections.checkpoint().await.unwrap() >= checkpoint);
        assert_eq!(catch_up(&events, &projections, 2).await.unwrap(), 0);
    }

    fn row(
        id: &str,
        started: Option<DateTime<Utc>>,
        escalated: bool,
        sentiment: Option<Label>,
    ) -> ContactRow {
        ContactRow {
            contact_id: id.into(),
            instance_id: None,
            started_at: started,
            ended_at: None,
            escalated,
            escalations: escalated.into(),
            sentiment,
            summary_version: 0,
            utterances: 3,
            last_seq: 9,
        }
    }

    /// Two workers fold the same log at their own pace into one read-model table.
    #[tokio::test]
    async fn a_slower_fold_never_overwrites_a_newer_row_or_moves_the_checkpoint_back() {
        let (client, config) = moto_tables().await;
        let fast = DynamoProjectionStore::new(client.clone(), &config.projections_table);
        let slow = DynamoProjectionStore::new(client, &config.projections_table);
        let started = Some(Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap());
        let newer = ContactRow {
            utterances: 5,
            last_seq: 12,
            ..row("c-1", started, true, Some(Label::Negative))
        };
        fast.save(std::slice::from_ref(&newer), 100).await.unwrap();
        let older = ContactRow {
            utterances: 2,
            last_seq: 4,
            ..row("c-1", started, false, None)
        };
        let other = row("c-2", started, false, None);
        slow.save(&[older, other.clone()], 50).await.unwrap();
        assert_eq!(fast.contact("c-1").await.unwrap(), Some(newer.clone()));
        assert_eq!(
            fast.contact("c-2").await.unwrap(),
            Some(other),
            "the rest is written"
        );
        assert_eq!(fast.checkpoint().await.unwrap(), 100);
        // The same fold again (a catch-up re-reading its window) is written as before.
        fast.save(std::slice::from_ref(&newer), 100).await.unwrap();
        assert_eq!(slow.contact("c-1").await.unwrap(), Some(newer));
    }

    /// The audit queries over several days give what the in-memory store gives.
    #[tokio::test]
    async fn audit_queries_across_days_match_the_memory_store() {
        let (client, config) = moto_tables().await;
        let dynamo = DynamoProjectionStore::new(client, &config.projections_table);
        let memory = MemoryProjectionStore::new();
        let day = |d: u32, h: u32| Some(Utc.with_ymd_and_hms(2026, 11, d, h, 30, 0).unwrap());
        let labels = [None, Some(Label::Negative), Some(Label::Positive)];
        let mut rows = Vec::new();
        for (i, started) in [
            day(20, 23),
            day(21, 0),
            day(21, 12),
            day(23, 8),
            None,
            day(23, 8),
        ]
        .into_iter()
        .enumerate()
        {
            rows.push(row(&format!("c{i}"), started, i % 2 == 0, labels[i % 3]));
        }
        dynamo.save(&rows, 7).await.unwrap();
        memory.save(&rows, 7).await.unwrap();

        let times = [
            None,
            day(19, 0),
            day(21, 0),
            day(21, 13),
            day(23, 8),
            day(30, 0),
        ];
        for escalated in [None, Some(true), Some(false)] {
            for sentiment in [None, Some(Label::Negative), Some(Label::Neutral)] {
                for since in times {
                    for until in times {
                        for limit in [None, Some(1), Some(2)] {
                            let filter = ContactFilter {
                                escalated,
                                since,
                                until,
                                sentiment,
                                limit,
                            };
                            assert_eq!(
                                dynamo.contacts(&filter).await.unwrap(),
                                memory.contacts(&filter).await.unwrap(),
                                "{filter:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}
