//! The contacts read model ([`DynamoProjectionStore`]), its writes that never go back to an
//! older fold ([`IfNotBehind`]), and the registries of the days a table has something for.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, KeysAndAttributes, Put, TransactWriteItem};

use super::codec::{Fields, day_text, item, row_from_item, row_item, row_pk, time_text};
use super::days::DayRegistry;
use super::{
    BATCH_GET_KEYS, BY_DAY_INDEX, DAY, ESC, ESCALATED_INDEX, MAX_TRANSACTION_ACTIONS, OWES,
    OWES_BUCKETS, PK, SENTIMENT_DAY, SENTIMENT_INDEX, START_KEY, TRANSACTION_ATTEMPTS,
    UNFINISHED_INDEX, UNSTARTED, cancelled_by_condition, check_contact_id, query_items,
    transact_in_chunks, unavailable,
};
use crate::aws::dynamodb::{n, s};
use crate::backoff::backoff;
use crate::store::{ContactFilter, ContactRow, ProjectionStore, StoreError, sort_contacts};

/// The contacts read model in one DynamoDB table (module docs).
pub struct DynamoProjectionStore {
    client: Client,
    table: String,
    start_days: DayRegistry,
}

impl DynamoProjectionStore {
    /// The read model in `table` (made by [`create_tables`]), reached with `client`.
    ///
    /// [`create_tables`]: super::create_tables
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
