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
//! [`read_all`] queries the days from the day of `after` on, in order, following `LastEvaluatedKey`. The
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
//!
//! [`Appended::Duplicate`]: super::Appended::Duplicate
//! [`read_all`]: super::EventStore::read_all
//! [`EventStore::replay_window`]: super::EventStore::replay_window
//! [`ContactRow`]: super::ContactRow
//! [`ProjectionStore::unfinished`]: super::ProjectionStore::unfinished
//! [`ProjectionStore::contacts`]: super::ProjectionStore::contacts

mod codec;
mod config;
mod days;
mod events;
mod projections;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ScalarAttributeType, TimeToLiveSpecification, TimeToLiveStatus,
    TransactWriteItem,
};

pub use config::DynamoConfig;
pub use events::DynamoEventStore;
pub use projections::DynamoProjectionStore;

use super::StoreError;
use crate::aws::dynamodb::create_table;
use crate::aws::sdk_error;

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
        .map_err(sdk_error)
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
        .map_err(sdk_error)
        .with_context(|| format!("turning on the time to live of {table} on {attribute}"))?;
    Ok(())
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

#[cfg(test)]
mod tests;
