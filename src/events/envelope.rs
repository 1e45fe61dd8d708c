//! The envelope every event is stored in, and the hash chain that makes tampering visible.
//!
//! A stored event keeps its body exactly as it was first written (`payload`, JSON text at the
//! body's schema version). The hash covers that text and the envelope fields, so it still
//! verifies after the code has moved on to newer schemas: old bodies are upcast when read,
//! never rewritten.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::kinds::Event;
use super::upcast;

/// `prev_hash` of a contact's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One event as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    /// The contact (persistence id).
    pub contact_id: String,
    /// 1, 2, 3 ... within the contact.
    pub seq: u64,
    /// UUID v7: unique, and ordered by creation time.
    pub event_id: Uuid,
    /// When it was appended (UTC, microseconds).
    pub recorded_at: DateTime<Utc>,
    /// Schema version of `payload`.
    pub schema_version: u32,
    /// The event's type name, e.g. `UtteranceReceived`.
    pub kind: String,
    /// The input this event came from, for idempotent re-delivery (same id = same input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// The body, JSON text exactly as written.
    pub payload: String,
    /// Hash of the contact's previous event ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// SHA-256 (hex) over this event's canonical encoding, `prev_hash` included.
    pub hash: String,
}

/// An event that cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("event {contact_id}#{seq} ({kind} v{version}): {reason}")]
pub struct DecodeError {
    /// Its contact.
    pub contact_id: String,
    /// Its sequence number.
    pub seq: u64,
    /// Its kind.
    pub kind: String,
    /// Its schema version.
    pub version: u32,
    /// What is wrong.
    pub reason: String,
}

/// SHA-256 (hex) over `parts`, each prefixed with its length, so that no two different
/// lists of parts hash alike.
pub fn digest_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    format!("{:x}", hasher.finalize())
}

impl StoredEvent {
    /// SHA-256 over the canonical encoding: every field but `hash`, each length-prefixed so
    /// no two different events encode alike.
    pub fn compute_hash(&self) -> String {
        let seq = self.seq.to_string();
        let event_id = self.event_id.to_string();
        let recorded_at = self
            .recorded_at
            .to_rfc3339_opts(SecondsFormat::Micros, true);
        let version = self.schema_version.to_string();
        let fields: [&str; 9] = [
            &self.contact_id,
            &seq,
            &event_id,
            &recorded_at,
            &version,
            &self.kind,
            self.source_id.as_deref().unwrap_or(""),
            &self.prev_hash,
            &self.payload,
        ];
        digest_hex(&fields.map(str::as_bytes))
    }

    /// The body at the current schema, upcast from older versions where needed.
    pub fn decode(&self) -> Result<Event, DecodeError> {
        upcast::decode(&self.kind, self.schema_version, &self.payload).map_err(|reason| {
            DecodeError {
                contact_id: self.contact_id.clone(),
                seq: self.seq,
                kind: self.kind.clone(),
                version: self.schema_version,
                reason,
            }
        })
    }

    /// Bytes this event takes in a store, roughly: what size limits are checked against.
    pub fn stored_len(&self) -> usize {
        self.payload.len()
            + self.contact_id.len()
            + self.kind.len()
            + self.source_id.as_ref().map_or(0, String::len)
            + 2 * 64
            + 64
    }
}

/// The last event of a contact's log: what the next event is sealed onto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Sequence number of the last event (0 for an empty log).
    pub seq: u64,
    /// Its hash ([`GENESIS_HASH`] for an empty log).
    pub hash: String,
}

impl Default for ChainHead {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_string(),
        }
    }
}

impl ChainHead {
    /// Wraps `event` in the next envelope of the chain and moves the head onto it.
    pub fn seal(
        &mut self,
        contact_id: &str,
        source_id: Option<&str>,
        event: &Event,
        now: DateTime<Utc>,
    ) -> StoredEvent {
        let payload = serde_json::to_string(event).expect("events always serialize");
        let mut stored = StoredEvent {
            contact_id: contact_id.to_string(),
            seq: self.seq + 1,
            event_id: Uuid::now_v7(),
            recorded_at: truncate_to_micros(now),
            schema_version: upcast::current_version(event.kind()),
            kind: event.kind().to_string(),
            source_id: source_id.map(str::to_string),
            payload,
            prev_hash: self.hash.clone(),
            hash: String::new(),
        };
        stored.hash = stored.compute_hash();
        self.seq = stored.seq;
        self.hash = stored.hash.clone();
        stored
    }

    /// Seals `events` in order, all from input `source_id` at `now`: one batch to append.
    pub fn seal_all(
        &mut self,
        contact_id: &str,
        source_id: Option<&str>,
        events: &[Event],
        now: DateTime<Utc>,
    ) -> Vec<StoredEvent> {
        events
            .iter()
            .map(|event| self.seal(contact_id, source_id, event, now))
            .collect()
    }

    /// Checks that `event` follows this head (sequence, link and own hash) and moves onto it.
    pub fn verify_next(&mut self, event: &StoredEvent) -> Result<(), String> {
        if event.seq != self.seq + 1 {
            return Err(format!(
                "sequence gap: expected {}, found {}",
                self.seq + 1,
                event.seq
            ));
        }
        if event.prev_hash != self.hash {
            return Err("prev_hash does not match the previous event's hash".into());
        }
        if event.compute_hash() != event.hash {
            return Err("content does not match its hash (modified after it was written)".into());
        }
        self.seq = event.seq;
        self.hash = event.hash.clone();
        Ok(())
    }
}

/// Times are kept to the microsecond so that every store round-trips them exactly.
fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let micros = t.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::kinds::{ContactEnded, EndReason};

    fn ended() -> Event {
        Event::ContactEnded(ContactEnded {
            ended_at: Utc::now(),
            reason: EndReason::Ended,
        })
    }

    #[test]
    fn sealed_events_chain_and_verify() {
        let mut head = ChainHead::default();
        let a = head.seal("c-1", Some("src-1"), &ended(), Utc::now());
        let b = head.seal("c-1", None, &ended(), Utc::now());
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(a.prev_hash, GENESIS_HASH);
        assert_eq!(b.prev_hash, a.hash);

        let mut check = ChainHead::default();
        check.verify_next(&a).unwrap();
        check.verify_next(&b).unwrap();
        assert_eq!(check, head);
    }

    #[test]
    fn any_modified_field_breaks_the_chain() {
        let mut head = ChainHead::default();
        let a = head.seal("c-1", None, &ended(), Utc::now());
        let mut tampered = a.clone();
        tampered.payload = tampered.payload.replace("ENDED", "IDLE_TIMEOUT");
        let err = ChainHead::default().verify_next(&tampered).unwrap_err();
        assert!(err.contains("modified"), "{err}");

        let mut reordered = a.clone();
        reordered.seq = 2;
        assert!(ChainHead::default().verify_next(&reordered).is_err());
    }

    #[test]
    fn times_round_trip_through_text_exactly() {
        let mut head = ChainHead::default();
        let a = head.seal("c-1", None, &ended(), Utc::now());
        let text = serde_json::to_string(&a).unwrap();
        let back: StoredEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.compute_hash(), a.hash);
    }
}
