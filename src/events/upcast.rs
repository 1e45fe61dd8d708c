//! Schema versions and upcasters: old event bodies are read into today's types, never edited
//! in the log.
//!
//! History:
//! - `SentimentAssessed` v1 is the seed's shape, `{"segmentId", "sentiment": "NEGATIVE"}`
//!   (one label parsed from a Titan answer, nothing else). v2 adds scores, model, latency and
//!   tokens; a v1 body reads as v2 with certain scores for its label and an unknown model.
//! - Every other kind is at v1.

use serde_json::{Value, json};

use super::kinds::Event;

/// The schema version new events of `kind` are written at.
pub fn current_version(kind: &str) -> u32 {
    match kind {
        "SentimentAssessed" => 2,
        _ => 1,
    }
}

/// Reads a stored body of `kind` at `version` as a current [`Event`].
pub fn decode(kind: &str, version: u32, payload: &str) -> Result<Event, String> {
    let current = current_version(kind);
    if version > current {
        return Err(format!(
            "written at schema v{version}, this build reads up to v{current}: upgrade callpulse"
        ));
    }
    let event: Event = if version == current {
        // The common case, on every replayed event: straight into the typed body.
        serde_json::from_str(payload).map_err(|e| format!("not a valid JSON body: {e}"))?
    } else {
        let body: Value = serde_json::from_str(payload).map_err(|e| format!("not JSON: {e}"))?;
        let body = match (kind, version) {
            ("SentimentAssessed", 1) => sentiment_v1_to_v2(body)?,
            _ => body,
        };
        serde_json::from_value(body).map_err(|e| e.to_string())?
    };
    if event.kind() != kind {
        return Err("body kind differs from the envelope's".into());
    }
    Ok(event)
}

fn sentiment_v1_to_v2(v1: Value) -> Result<Value, String> {
    let label = v1
        .get("sentiment")
        .and_then(Value::as_str)
        .ok_or("v1 SentimentAssessed without sentiment")?
        .to_ascii_uppercase();
    let score = |name: &str| if label == name { 1.0 } else { 0.0 };
    Ok(json!({
        "kind": "SentimentAssessed",
        "segmentId": v1.get("segmentId").cloned().unwrap_or(Value::Null),
        "participant": v1.get("participant").cloned().unwrap_or(json!("UNKNOWN")),
        "label": label,
        "scores": {
            "positive": score("POSITIVE"),
            "neutral": score("NEUTRAL"),
            "negative": score("NEGATIVE"),
        },
        "model": "unknown (schema v1)",
        "latencyMs": 0,
        "tokensIn": 0,
        "tokensOut": 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Label;

    #[test]
    fn a_seed_shaped_v1_sentiment_reads_as_v2() {
        let v1 = r#"{"kind":"SentimentAssessed","segmentId":"s-3","sentiment":"NEGATIVE"}"#;
        let Event::SentimentAssessed(e) = decode("SentimentAssessed", 1, v1).unwrap() else {
            panic!("wrong kind")
        };
        assert_eq!(e.label, Label::Negative);
        assert_eq!(e.scores.negative, 1.0);
        assert_eq!(e.segment_id, "s-3");
    }

    #[test]
    fn newer_versions_and_mismatched_kinds_are_refused_clearly() {
        let body = r#"{"kind":"ContactEnded","endedAt":"2026-11-24T09:00:00Z","reason":"ENDED"}"#;
        assert!(decode("ContactEnded", 1, body).is_ok());
        assert!(
            decode("ContactEnded", 2, body)
                .unwrap_err()
                .contains("upgrade")
        );
        assert!(
            decode("ContactStarted", 1, body)
                .unwrap_err()
                .contains("kind")
        );
        assert!(decode("ContactEnded", 1, "{").unwrap_err().contains("JSON"));
    }
}
