//! Amazon Connect Contact Lens real-time segment records, as Connect streams them to Kinesis
//! for voice contacts ("Data model for conversational analytics segment streams"):
//!
//! ```json
//! {"Version":"1.1.0","Channel":"VOICE","AccountId":"…","InstanceId":"…","ContactId":"…",
//!  "LanguageCode":"en-US","EventType":"SEGMENTS","Segments":[
//!   {"Utterance":{"Id":"…","TranscriptId":"…","ParticipantId":"CUSTOMER",
//!     "ParticipantRole":"CUSTOMER","PartialContent":"…","BeginOffsetMillis":0,"EndOffsetMillis":9}},
//!   {"Transcript":{"Id":"…","ParticipantId":"CUSTOMER","ParticipantRole":"CUSTOMER",
//!     "Content":"…","BeginOffsetMillis":0,"EndOffsetMillis":9,"Sentiment":"NEGATIVE"}},
//!   {"Categories":{…}}]}
//! ```
//!
//! `STARTED` becomes [`Record::Started`], `COMPLETED` and `FAILED` become [`Record::Ended`];
//! in `SEGMENTS`, a `Transcript` is a final [`Segment`] and an `Utterance` a partial one.
//! Other segment types (`Categories`, `Issues`, `PostContactSummary`, …) carry nothing
//! callpulse uses and are ignored.

use serde::Deserialize;
use serde_json::Value;

use super::record::{Record, RecordError, Segment, malformed, required};

/// Whether a JSON record is a Contact Lens one: it has Contact Lens's `EventType` or
/// `ContactId` key (callpulse's own records spell the contact `contactId`).
pub fn is_contact_lens(value: &Value) -> bool {
    value.get("EventType").is_some() || value.get("ContactId").is_some()
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Event {
    contact_id: Option<String>,
    event_type: Option<String>,
    channel: Option<String>,
    /// The data model says `InstanceId`; some samples write `Instance`.
    #[serde(alias = "Instance")]
    instance_id: Option<String>,
    #[serde(default)]
    segments: Vec<SegmentEntry>,
}

/// One entry of `Segments`: an object with a single key naming the segment type.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SegmentEntry {
    transcript: Option<Text>,
    utterance: Option<Text>,
}

/// The fields a `Transcript` and an `Utterance` share (`Content` is `PartialContent` in an
/// `Utterance`).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Text {
    id: String,
    participant_role: String,
    #[serde(alias = "PartialContent")]
    content: String,
    begin_offset_millis: Option<u64>,
    end_offset_millis: Option<u64>,
}

/// The records a Contact Lens event stands for.
pub fn records(value: Value) -> Result<Vec<Record>, RecordError> {
    let event: Event = serde_json::from_value(value).map_err(malformed)?;
    let contact_id = required(event.contact_id, "ContactId")?;
    let event_type = required(event.event_type, "EventType")?.to_ascii_uppercase();
    match event_type.as_str() {
        "STARTED" => Ok(vec![Record::Started {
            contact_id,
            instance_id: event.instance_id,
            timestamp: None,
            channel: event.channel,
            media_stream_arn: None,
            start_fragment_number: None,
        }]),
        "COMPLETED" | "FAILED" => Ok(vec![Record::Ended {
            contact_id,
            timestamp: None,
        }]),
        "SEGMENTS" => Ok(event
            .segments
            .into_iter()
            .flat_map(|entry| {
                let finals = entry.transcript.map(|t| (t, false));
                let partials = entry.utterance.map(|u| (u, true));
                finals.into_iter().chain(partials)
            })
            .map(|(text, is_partial)| {
                Record::Segment(Segment {
                    contact_id: contact_id.clone(),
                    segment_id: Some(text.id),
                    participant: Some(text.participant_role.to_ascii_uppercase()),
                    transcript: text.content,
                    is_partial,
                    begin_offset_millis: text.begin_offset_millis,
                    end_offset_millis: text.end_offset_millis,
                    redactions: Default::default(),
                })
            })
            .collect()),
        _ => Err(RecordError::UnknownType(event_type)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::parse_line;
    use super::*;

    const HEAD: &str = r#""Version":"1.1.0","Channel":"VOICE","AccountId":"123456789012","InstanceId":"i-1","ContactId":"c-9","LanguageCode":"en-US""#;

    fn line(event_type: &str, segments: &str) -> String {
        format!(r#"{{{HEAD},"EventType":"{event_type}","Segments":[{segments}]}}"#)
    }

    #[test]
    fn started_and_completed_and_failed() {
        assert_eq!(
            parse_line(&line("STARTED", "")).unwrap(),
            vec![Record::Started {
                contact_id: "c-9".into(),
                instance_id: Some("i-1".into()),
                timestamp: None,
                channel: Some("VOICE".into()),
                media_stream_arn: None,
                start_fragment_number: None,
            }]
        );
        for end in ["COMPLETED", "FAILED"] {
            assert_eq!(
                parse_line(&line(end, "")).unwrap(),
                vec![Record::Ended {
                    contact_id: "c-9".into(),
                    timestamp: None
                }]
            );
        }
        let short = r#"{"ContactId":"c-2","Instance":"i-2","EventType":"STARTED"}"#;
        assert!(matches!(
            &parse_line(short).unwrap()[..],
            [Record::Started { instance_id: Some(i), channel: None, .. }] if i == "i-2"
        ));
    }

    #[test]
    fn segments_keep_transcripts_and_utterances_in_order_and_ignore_the_rest() {
        let segments = r#"
            {"Utterance":{"ParticipantId":"CUSTOMER","ParticipantRole":"CUSTOMER","PartialContent":"I have been","BeginOffsetMillis":100,"EndOffsetMillis":900,"Id":"u-1","TranscriptId":"t-1"}},
            {"Transcript":{"Id":"t-1","ParticipantId":"CUSTOMER","ParticipantRole":"CUSTOMER","Content":"I have been waiting for an hour.","BeginOffsetMillis":100,"EndOffsetMillis":2400,"Sentiment":"NEGATIVE","IssuesDetected":[]}},
            {"Categories":{"MatchedCategories":["late"],"MatchedDetails":{}}},
            {"PostContactSummary":{"Content":"...","Status":"COMPLETED"}},
            {"Transcript":{"Id":"t-2","ParticipantId":"AGENT","ParticipantRole":"agent","Content":"Sorry about that.","BeginOffsetMillis":2500,"EndOffsetMillis":3100,"Sentiment":"NEUTRAL"}}"#;
        let records = parse_line(&line("SEGMENTS", segments)).unwrap();
        let seen: Vec<_> = records
            .iter()
            .map(|r| match r {
                Record::Segment(s) => (
                    s.contact_id.as_str(),
                    s.segment_id.as_deref().unwrap(),
                    s.participant.as_deref().unwrap(),
                    s.transcript.as_str(),
                    s.is_partial,
                    s.begin_offset_millis,
                    s.end_offset_millis,
                ),
                other => panic!("not a segment: {other:?}"),
            })
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "c-9",
                    "u-1",
                    "CUSTOMER",
                    "I have been",
                    true,
                    Some(100),
                    Some(900)
                ),
                (
                    "c-9",
                    "t-1",
                    "CUSTOMER",
                    "I have been waiting for an hour.",
                    false,
                    Some(100),
                    Some(2400)
                ),
                (
                    "c-9",
                    "t-2",
                    "AGENT",
                    "Sorry about that.",
                    false,
                    Some(2500),
                    Some(3100)
                ),
            ]
        );
        assert_eq!(
            parse_line(&line("SEGMENTS", r#"{"Categories":{}}"#)).unwrap(),
            vec![]
        );
        assert_eq!(
            parse_line(r#"{"ContactId":"c","EventType":"SEGMENTS"}"#).unwrap(),
            vec![]
        );
    }

    #[test]
    fn bad_contact_lens_records_say_why() {
        assert_eq!(
            parse_line(r#"{"EventType":"STARTED","Channel":"VOICE"}"#),
            Err(RecordError::MissingField("ContactId"))
        );
        assert_eq!(
            parse_line(r#"{"ContactId":"c-1"}"#),
            Err(RecordError::MissingField("EventType"))
        );
        assert_eq!(
            parse_line(r#"{"ContactId":"c-1","EventType":"PAUSED"}"#),
            Err(RecordError::UnknownType("PAUSED".into()))
        );
        let no_content = line(
            "SEGMENTS",
            r#"{"Transcript":{"Id":"t","ParticipantRole":"AGENT"}}"#,
        );
        assert!(matches!(
            parse_line(&no_content),
            Err(RecordError::Malformed(m)) if m.contains("Content")
        ));
        assert!(matches!(
            parse_line(r#"{"ContactId":"c","EventType":"SEGMENTS","Segments":{}}"#),
            Err(RecordError::Malformed(_))
        ));
    }
}
