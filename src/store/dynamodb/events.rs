//! The event log ([`DynamoEventStore`]): appends as transactions, reads of a contact's
//! partition, and the global feed by day and position.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{ConditionCheck, ReturnConsumedCapacity, TransactWriteItem};

use super::codec::{
    Fields, day_of_position, event_from_item, event_item, event_key, item, item_size, positions,
    put_new, source_key, source_pk,
};
use super::days::DayRegistry;
use super::{
    DAY, EXPIRES_AT, FEED_INDEX, MAX_BATCH_EVENTS, MAX_TRANSACTION_BYTES, PK, POS,
    POSITIONS_PER_MICRO, REPLAY_WINDOW, SK, TRANSACTION_ATTEMPTS, check_contact_id, query_items,
    unavailable,
};
use crate::aws::dynamodb::{n, s};
use crate::events::StoredEvent;
use crate::store::{
    Appended, DEFAULT_KEY_RETENTION_DAYS, EventStore, Positioned, SeqRange, StoreError, check_batch,
};

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
    ///
    /// [`create_tables`]: super::create_tables
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
