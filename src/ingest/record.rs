//! One input record (see DESIGN.md, "Input records"): `STARTED`, `SEGMENT`, `ENDED`, or the
//! seed's minimal form `{"contactId","transcript","isPartial"}` with no `type`; and, through
//! [`parse_line`], Contact Lens real-time segment records (see [`super::contact_lens`]).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::contact_lens;
use crate::redaction::Counts;

/// Longest record accepted, in bytes; a longer one is refused, not truncated.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

/// A parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A call began.
    Started {
        /// Contact id.
        contact_id: String,
        /// Connect instance, when given.
        instance_id: Option<String>,
        /// When the call began, when given (RFC 3339 in the record).
        timestamp: Option<DateTime<Utc>>,
        /// `VOICE`, `CHAT` or `TASK`, when given.
        channel: Option<String>,
        /// Kinesis Video Streams ARN of the call's live media stream, when given.
        media_stream_arn: Option<String>,
        /// First KVS fragment of the call's audio (a decimal string too long for `u64`).
        start_fragment_number: Option<String>,
    },
    /// A transcript segment.
    Segment(Segment),
    /// A call ended.
    Ended {
        /// Contact id.
        contact_id: String,
        /// When the call ended, when given (RFC 3339 in the record).
        timestamp: Option<DateTime<Utc>>,
    },
}

impl Record {
    /// The contact the record belongs to.
    pub fn contact_id(&self) -> &str {
        match self {
            Record::Started { contact_id, .. } | Record::Ended { contact_id, .. } => contact_id,
            Record::Segment(s) => &s.contact_id,
        }
    }
}

/// A transcript segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Contact id.
    pub contact_id: String,
    /// Segment id; `None` in the minimal form (the reader derives one).
    pub segment_id: Option<String>,
    /// `CUSTOMER`, `AGENT`, or `None` when unknown.
    pub participant: Option<String>,
    /// What was said.
    pub transcript: String,
    /// A partial result, superseded by a later final one.
    pub is_partial: bool,
    /// Offset of the start in the call, ms.
    pub begin_offset_millis: Option<u64>,
    /// Offset of the end in the call, ms.
    pub end_offset_millis: Option<u64>,
    /// How many values of each kind the redactor replaced in `transcript` (none until the
    /// reader redacts it).
    pub redactions: Counts,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not a JSON object of the expected shape.
    #[error("not a valid record: {0}")]
    Malformed(String),
    /// A field the record's type requires is missing or empty.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A `type` callpulse does not know.
    #[error("unknown record type {0:?}")]
    UnknownType(String),
    /// Longer than [`MAX_RECORD_BYTES`].
    #[error("record of more than {MAX_RECORD_BYTES} bytes")]
    TooLarge,
    /// Not valid UTF-8.
    #[error("record is not valid UTF-8")]
    InvalidUtf8,
    /// A field that is there but cannot be read.
    #[error("field {field} {value:?} is not {expected}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What it held (at most 64 characters of it).
        value: String,
        /// What it should be.
        expected: &'static str,
    },
}

/// An RFC 3339 time, when given; anything else is refused rather than replaced by now.
fn timestamp(value: Option<String>) -> Result<Option<DateTime<Utc>>, RecordError> {
    value
        .map(|text| {
            DateTime::parse_from_rfc3339(text.trim())
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| RecordError::InvalidField {
                    field: "timestamp",
                    value: text.chars().take(64).collect(),
                    expected: "an RFC 3339 time such as 2026-11-24T09:00:00Z",
                })
        })
        .transpose()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(rename = "type")]
    kind: Option<String>,
    contact_id: Option<String>,
    instance_id: Option<String>,
    timestamp: Option<String>,
    channel: Option<String>,
    media_stream_arn: Option<String>,
    start_fragment_number: Option<String>,
    segment_id: Option<String>,
    participant: Option<String>,
    transcript: Option<String>,
    #[serde(default)]
    is_partial: bool,
    begin_offset_millis: Option<u64>,
    end_offset_millis: Option<u64>,
}

/// Parses one line of input: a callpulse record gives one [`Record`], a Contact Lens record
/// (recognised by its `EventType` or `ContactId` key) zero or more.
pub fn parse_line(line: &str) -> Result<Vec<Record>, RecordError> {
    let value = to_json(line)?;
    if contact_lens::is_contact_lens(&value) {
        contact_lens::records(value)
    } else {
        from_json(value).map(|record| vec![record])
    }
}

/// Parses one record in callpulse's own format (Contact Lens records are refused: use
/// [`parse_line`] where they may occur).
pub fn parse(line: &str) -> Result<Record, RecordError> {
    from_json(to_json(line)?)
}

/// Refuses lines over [`MAX_RECORD_BYTES`] and reads the JSON.
fn to_json(line: &str) -> Result<Value, RecordError> {
    if line.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge);
    }
    serde_json::from_str(line).map_err(malformed)
}

/// A serde error as [`RecordError::Malformed`].
pub(super) fn malformed(e: serde_json::Error) -> RecordError {
    RecordError::Malformed(e.to_string())
}

/// A required text field, refused when absent or blank.
pub(super) fn required(field: Option<String>, name: &'static str) -> Result<String, RecordError> {
    field
        .filter(|f| !f.trim().is_empty())
        .ok_or(RecordError::MissingField(name))
}

fn from_json(value: Value) -> Result<Record, RecordError> {
    let raw: Raw = serde_json::from_value(value).map_err(malformed)?;
    let contact_id = required(raw.contact_id, "contactId")?;
    let kind = match (raw.kind.as_deref(), &raw.transcript) {
        (Some(kind), _) => kind.to_ascii_uppercase(),
        (None, Some(_)) => "SEGMENT".into(),
        (None, None) => return Err(RecordError::MissingField("type")),
    };
    match kind.as_str() {
        "STARTED" => Ok(Record::Started {
            contact_id,
            instance_id: raw.instance_id,
            timestamp: timestamp(raw.timestamp)?,
            channel: raw.channel,
            media_stream_arn: raw.media_stream_arn,
            start_fragment_number: raw.start_fragment_number,
        }),
        "ENDED" => Ok(Record::Ended {
            contact_id,
            timestamp: timestamp(raw.timestamp)?,
        }),
        "SEGMENT" => Ok(Record::Segment(Segment {
            contact_id,
            segment_id: raw.segment_id,
            participant: raw.participant.map(|p| p.to_ascii_uppercase()),
            transcript: raw
                .transcript
                .ok_or(RecordError::MissingField("transcript"))?,
            is_partial: raw.is_partial,
            begin_offset_millis: raw.begin_offset_millis,
            end_offset_millis: raw.end_offset_millis,
            redactions: Counts::new(),
        })),
        _ => Err(RecordError::UnknownType(kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_read_or_refused_never_replaced() {
        let Record::Started { timestamp, .. } =
            parse(r#"{"type":"STARTED","contactId":"c","timestamp":"2026-11-24T10:00:00+01:00"}"#)
                .unwrap()
        else {
            panic!("not STARTED")
        };
        assert_eq!(timestamp.unwrap().to_rfc3339(), "2026-11-24T09:00:00+00:00");
        let error =
            parse(r#"{"type":"ENDED","contactId":"c","timestamp":"yesterday at 5"}"#).unwrap_err();
        assert!(
            matches!(
                error,
                RecordError::InvalidField {
                    field: "timestamp",
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "field timestamp \"yesterday at 5\" is not an RFC 3339 time such as 2026-11-24T09:00:00Z"
        );
        assert_eq!(
            parse(r#"{"type":"ENDED","contactId":"c"}"#).unwrap(),
            Record::Ended {
                contact_id: "c".into(),
                timestamp: None
            }
        );
    }

    #[test]
    fn parses_the_three_kinds_and_the_minimal_form() {
        let started = parse(r#"{"type":"STARTED","contactId":"c-1","instanceId":"i-1","timestamp":"2026-11-24T09:00:00Z"}"#).unwrap();
        assert_eq!(started.contact_id(), "c-1");
        let Record::Segment(s) = parse(r#"{"type":"SEGMENT","contactId":"c-1","segmentId":"s-1","participant":"customer","transcript":"hi","isPartial":false,"beginOffsetMillis":1,"endOffsetMillis":2}"#).unwrap() else { panic!() };
        assert_eq!(
            (
                s.participant.as_deref(),
                s.segment_id.as_deref(),
                s.end_offset_millis
            ),
            (Some("CUSTOMER"), Some("s-1"), Some(2))
        );
        let Record::Segment(m) =
            parse(r#"{"contactId":"c-1","transcript":"seed form","isPartial":true}"#).unwrap()
        else {
            panic!()
        };
        assert!(m.is_partial && m.participant.is_none() && m.segment_id.is_none());
        assert!(matches!(
            parse(r#"{"type":"ENDED","contactId":"c-1"}"#),
            Ok(Record::Ended { .. })
        ));
    }

    #[test]
    fn started_carries_channel_and_media_stream() {
        let line = r#"{"type":"STARTED","contactId":"c-1","channel":"VOICE","mediaStreamArn":"arn:aws:kinesisvideo:eu-west-2:1:stream/s/1","startFragmentNumber":"91343852333181432392682062607743920146264440655"}"#;
        assert_eq!(
            parse_line(line).unwrap(),
            vec![Record::Started {
                contact_id: "c-1".into(),
                instance_id: None,
                timestamp: None,
                channel: Some("VOICE".into()),
                media_stream_arn: Some("arn:aws:kinesisvideo:eu-west-2:1:stream/s/1".into()),
                start_fragment_number: Some(
                    "91343852333181432392682062607743920146264440655".into()
                ),
            }]
        );
        assert_eq!(parse_line(line).unwrap(), vec![parse(line).unwrap()]);
    }

    #[test]
    fn bad_records_say_why() {
        assert!(matches!(parse("not json"), Err(RecordError::Malformed(_))));
        assert_eq!(
            parse(r#"{"type":"SEGMENT","transcript":"x"}"#),
            Err(RecordError::MissingField("contactId"))
        );
        assert_eq!(
            parse(r#"{"type":"SEGMENT","contactId":"c"}"#),
            Err(RecordError::MissingField("transcript"))
        );
        assert_eq!(
            parse(r#"{"type":"HEARTBEAT","contactId":"c"}"#),
            Err(RecordError::UnknownType("HEARTBEAT".into()))
        );
        assert_eq!(
            parse(r#"{"contactId":"c"}"#),
            Err(RecordError::MissingField("type"))
        );
        let huge = format!(
            r#"{{"contactId":"c","transcript":"{}"}}"#,
            "a".repeat(MAX_RECORD_BYTES)
        );
        assert_eq!(parse(&huge), Err(RecordError::TooLarge));
        assert_eq!(parse_line(&huge), Err(RecordError::TooLarge));
        assert!(matches!(parse_line("[1]"), Err(RecordError::Malformed(_))));
        assert_eq!(
            parse_line(r#"{"type":"ENDED","contactId":"  "}"#),
            Err(RecordError::MissingField("contactId"))
        );
    }
}
