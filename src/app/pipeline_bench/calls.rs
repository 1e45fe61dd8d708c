//! The synthetic calls: their ids, their lines (customer and agent in turn, the customer
//! turning negative late) and when each line is due.

use std::io::Write;
use std::time::Duration;

use super::UNSENT;

/// The calls: ids, lines and when each is due.
pub(super) struct Shape {
    pub(super) calls: usize,
    pub(super) utterances: usize,
    /// Customer utterances from this index on (counted among customer utterances) are
    /// negative.
    pub(super) first_negative: usize,
}

impl Shape {
    pub(super) fn new(calls: usize, utterances: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(calls > 0, "at least one call");
        anyhow::ensure!(
            utterances >= 3,
            "at least 3 utterances per call (two of them customer utterances)"
        );
        let customer = utterances.div_ceil(2);
        Ok(Self {
            calls,
            utterances,
            first_negative: customer - (customer / 2).max(2),
        })
    }

    pub(super) fn customer_utterances(&self) -> usize {
        self.utterances.div_ceil(2)
    }

    /// 0-based index of the utterance that escalates (the second negative customer one).
    pub(super) fn escalating(&self) -> usize {
        2 * (self.first_negative + 1)
    }

    /// STARTED, the utterances, ENDED.
    pub(super) fn rounds(&self) -> usize {
        self.utterances + 2
    }

    /// When line `round` of call `call` is due, from the start.
    pub(super) fn due(&self, round: usize, call: usize, pace: Duration) -> Duration {
        let steps = (round * self.calls + call) as u128;
        let nanos = pace.as_nanos() * steps / self.calls as u128;
        Duration::from_nanos(nanos.try_into().unwrap_or(u64::MAX))
    }

    pub(super) fn write_line(&self, out: &mut Vec<u8>, round: usize, call: usize) {
        let contact = format!("bench-{call}");
        let written = if round == 0 {
            writeln!(
                out,
                r#"{{"type":"STARTED","contactId":"{contact}","instanceId":"bench","channel":"VOICE"}}"#
            )
        } else if round <= self.utterances {
            let k = round - 1;
            let participant = if is_customer(k) { "CUSTOMER" } else { "AGENT" };
            let text = self.text(k, call);
            let begin = k * 4000;
            writeln!(
                out,
                r#"{{"type":"SEGMENT","contactId":"{contact}","segmentId":"s{k}","participant":"{participant}","transcript":"{text}","isPartial":false,"beginOffsetMillis":{begin},"endOffsetMillis":{}}}"#,
                begin + 3500
            )
        } else {
            writeln!(out, r#"{{"type":"ENDED","contactId":"{contact}"}}"#)
        };
        written.expect("writing to a Vec cannot fail");
    }

    /// What utterance `k` of `call` says: neutral, or negative cue words for the last
    /// customer utterances.
    pub(super) fn text(&self, k: usize, call: usize) -> String {
        const NEUTRAL: [&str; 4] = [
            "Hello, I am calling about order {n}, it has not arrived yet.",
            "The tracking page says it left the depot on Monday.",
            "Can you tell me when it will be delivered to my address?",
            "I was told last week that it would come on Friday.",
        ];
        const NEGATIVE: [&str; 4] = [
            "This is ridiculous, I have called three times about order {n}.",
            "Honestly this is the worst service I have ever had.",
            "Your tracking system is useless and nobody calls back.",
            "This is terrible, I want to speak to a manager now.",
        ];
        const AGENT: [&str; 4] = [
            "Let me look up order {n} for you.",
            "I can see the parcel is at the local depot.",
            "I will ask the courier for a delivery slot.",
            "One moment while I check the details.",
        ];
        let turn = k / 2;
        let template = if !is_customer(k) {
            AGENT[turn % AGENT.len()]
        } else if turn >= self.first_negative {
            NEGATIVE[(turn - self.first_negative) % NEGATIVE.len()]
        } else {
            NEUTRAL[turn % NEUTRAL.len()]
        };
        template.replace("{n}", &(100_000 + call).to_string())
    }

    pub(super) fn call_index(&self, contact_id: &str) -> Option<usize> {
        let call: usize = contact_id.strip_prefix("bench-")?.parse().ok()?;
        (call < self.calls).then_some(call)
    }

    pub(super) fn segment_index(&self, segment_id: &str) -> Option<usize> {
        let k: usize = segment_id.strip_prefix('s')?.parse().ok()?;
        (k < self.utterances).then_some(k)
    }

    /// When utterance `segment_id` of `call` was written (µs since the epoch).
    pub(super) fn sent_at(&self, sent: &[i64], call: usize, segment_id: &str) -> Option<i64> {
        let k = self.segment_index(segment_id)?;
        Some(sent[call * self.utterances + k]).filter(|&t| t != UNSENT)
    }
}

/// Customer and agent speak in turn, the customer first.
pub(super) fn is_customer(k: usize) -> bool {
    k.is_multiple_of(2)
}
