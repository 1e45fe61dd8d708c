//! The `[dynamodb]` config table: the two tables and where DynamoDB is reached.

use anyhow::bail;
use aws_sdk_dynamodb::Client;
use serde::{Deserialize, Serialize};

use crate::aws::{AwsEndpoint, sdk_config};

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
