//! Items to and from events, rows and keys: attribute names and values, sizes, positions
//! and the days and times as the tables store them.

use std::collections::HashMap;
use std::str::FromStr;

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};

use super::{
    DAY, ESC, MAX_BATCH_EVENTS, OWES, PK, POS, POSITIONS_PER_MICRO, SENTIMENT_DAY, SK, START_KEY,
    UNSTARTED, malformed,
};
use crate::aws::dynamodb::{n, s};
use crate::events::StoredEvent;
use crate::events::envelope::digest_hex;
use crate::models::Label;
use crate::store::{ContactRow, StoreError};

pub(super) fn item<const K: usize>(
    pairs: [(&str, AttributeValue); K],
) -> HashMap<String, AttributeValue> {
    pairs
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
}

/// A `Put` of an item that must not exist yet.
pub(super) fn put_new(table: &str, new_item: HashMap<String, AttributeValue>) -> TransactWriteItem {
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
pub(super) fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
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

pub(super) fn event_key(contact_id: &str, seq: u64) -> HashMap<String, AttributeValue> {
    item([(PK, s(contact_id)), (SK, n(seq))])
}

/// Partition key of a batch's idempotency item.
pub(super) fn source_pk(contact_id: &str, source_id: &str) -> String {
    format!(
        "src#{}",
        digest_hex(&[contact_id.as_bytes(), source_id.as_bytes()])
    )
}

pub(super) fn source_key(contact_id: &str, source_id: &str) -> HashMap<String, AttributeValue> {
    item([(PK, s(source_pk(contact_id, source_id))), (SK, n(0))])
}

/// The positions of a batch's events (module docs): increasing, and at least 1.
pub(super) fn positions(events: &[StoredEvent]) -> Vec<u64> {
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
pub(super) fn day_of_position(position: u64) -> String {
    let micros = i64::try_from(position / POSITIONS_PER_MICRO).expect("u64 / 1024 fits i64");
    day_text(DateTime::from_timestamp_micros(micros).expect("within chrono's range"))
}

pub(super) fn day_text(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d").to_string()
}

/// A time as fixed-width RFC 3339 (nanoseconds, `Z`): exact, and sorts as the time does.
pub(super) fn time_text(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
}

pub(super) fn event_item(event: &StoredEvent, position: u64) -> HashMap<String, AttributeValue> {
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

pub(super) fn event_from_item(
    found: &HashMap<String, AttributeValue>,
) -> Result<StoredEvent, StoreError> {
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
pub(super) fn row_pk(contact_id: &str) -> String {
    format!("c#{contact_id}")
}

pub(super) fn row_item(row: &ContactRow) -> HashMap<String, AttributeValue> {
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

pub(super) fn row_from_item(
    found: &HashMap<String, AttributeValue>,
) -> Result<ContactRow, StoreError> {
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
pub(super) struct Fields<'a>(pub(super) &'a HashMap<String, AttributeValue>);

impl<'a> Fields<'a> {
    fn opt_s(&self, name: &str) -> Result<Option<&'a str>, StoreError> {
        match self.0.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(text)) => Ok(Some(text)),
            Some(_) => Err(malformed(name, "is not a string")),
        }
    }

    pub(super) fn s(&self, name: &str) -> Result<&'a str, StoreError> {
        self.opt_s(name)?
            .ok_or_else(|| malformed(name, "is missing"))
    }

    pub(super) fn n<T: FromStr>(&self, name: &str) -> Result<T, StoreError> {
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

    pub(super) fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.opt_s(name)?
            .map(|text| {
                DateTime::parse_from_rfc3339(text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| malformed(name, "is not an RFC 3339 time"))
            })
            .transpose()
    }
}
