//! What the DynamoDB adapters share (the event store and read model in `store::dynamodb`,
//! the Kinesis shard leases): attribute values, and tables made to a design.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context as _, bail};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType,
};

use super::sdk_error;

/// A string attribute.
pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A number attribute.
pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// One table's key or index key: attribute name and type.
pub(crate) type KeyAttr = (&'static str, ScalarAttributeType);

/// A global secondary index: name, partition key, sort key (all attributes projected).
pub(crate) type IndexDesign = (&'static str, KeyAttr, KeyAttr);

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
        return Err(sdk_error(&error)).with_context(|| format!("creating DynamoDB table {name}"));
    }
    let described = client
        .wait_until_table_exists()
        .table_name(name)
        .wait(Duration::from_secs(300))
        .await
        .map_err(sdk_error)
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
