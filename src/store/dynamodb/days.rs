//! The registry of the days a table has something for (the feed's days, the contacts'
//! start days), so that reads query only days that exist.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{DAYS, StoreError, malformed, unavailable};

/// The days a table has something for, in one registry item (a string set), and the ones
/// this process knows are there already.
pub(super) struct DayRegistry {
    table: String,
    key: HashMap<String, AttributeValue>,
    known: Mutex<HashSet<String>>,
}

impl DayRegistry {
    pub(super) fn new(table: &str, key: HashMap<String, AttributeValue>) -> Self {
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
    pub(super) async fn register(
        &self,
        client: &Client,
        days: BTreeSet<String>,
    ) -> Result<(), StoreError> {
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
    pub(super) async fn days(&self, client: &Client) -> Result<BTreeSet<String>, StoreError> {
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
    pub(super) fn forget(&self) {
        self.known().clear();
    }
}
