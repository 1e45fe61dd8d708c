//! Builders shared by the tests of the event rules and of the commands over the log.

use super::kinds::{Participant, SentimentAssessed};
use crate::models::LabelScores;

/// A judgement of `segment_id` with P(NEGATIVE) = `negative`, the rest split evenly.
pub fn judgement(segment_id: &str, participant: Participant, negative: f32) -> SentimentAssessed {
    let rest = (1.0 - negative) / 2.0;
    let scores = LabelScores {
        positive: rest,
        neutral: rest,
        negative,
    };
    SentimentAssessed {
        segment_id: segment_id.into(),
        coalesced: vec![],
        participant,
        label: scores.top(),
        scores,
        anger: None,
        cues: Vec::new(),
        model: "test".into(),
        latency_ms: 1,
        tokens_in: 1,
        tokens_out: 0,
        cost_usd: None,
    }
}
