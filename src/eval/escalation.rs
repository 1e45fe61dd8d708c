//! The escalation evaluation: whole calls, each with the decision a person would take and
//! the utterance where they would escalate, run through the sentiment model and the real
//! escalation rules ([`Mood::react`], as a contact actor runs them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Predictions, progress};
use crate::events::rules::{EscalationRules, Mood};
use crate::events::{Event, Participant};
use crate::models::{CancellationToken, SentimentClassifier, Turn};

/// One labelled call (`tests/data/escalation/*.jsonl`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EscalationCall {
    /// Row id.
    pub id: String,
    /// What kind of call it is (`angry`, `calm-complaint`, ...).
    pub category: String,
    /// Whether a person would escalate it.
    pub escalate: bool,
    /// Index in `turns` of the customer utterance where a person would escalate.
    pub escalate_at: Option<usize>,
    /// The call.
    pub turns: Vec<Turn>,
}

/// What the model and rules decided on one call.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallOutcome {
    /// Row id.
    pub id: String,
    /// Its category.
    pub category: String,
    /// The expected decision.
    pub expected: bool,
    /// The expected utterance.
    pub expected_at: Option<usize>,
    /// The turn at which the rules escalated, if they did.
    pub escalated_at: Option<usize>,
    /// The rule that fired.
    pub rule: Option<String>,
    /// Each judged turn: index, label, P(NEGATIVE), P(angry) where checked.
    pub judgements: Vec<serde_json::Value>,
}

/// Escalation scores over a set of calls.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EscalationReport {
    /// Calls evaluated.
    pub calls: usize,
    /// Escalated calls that should be.
    pub true_positives: usize,
    /// Escalated calls that should not be.
    pub false_positives: usize,
    /// Calls that should have escalated and did not.
    pub false_negatives: usize,
    /// Of the escalated calls, the share that should be (1 when none escalated).
    pub precision: f64,
    /// Of the calls that should escalate, the share that did (1 when none should).
    pub recall: f64,
    /// Mean customer utterances from the expected one to the escalation (true positives;
    /// negative is early).
    pub mean_delay: f64,
    /// Most utterances late.
    pub max_delay: i64,
    /// True positives that escalated before the expected utterance.
    pub early: usize,
    /// Calls and escalations per category.
    pub per_category: BTreeMap<String, CategoryCount>,
    /// Ids of the calls decided wrongly.
    pub wrong: Vec<String>,
}

/// Calls of one category and how many escalated.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CategoryCount {
    /// Calls.
    pub calls: usize,
    /// Of them escalated.
    pub escalated: usize,
}

/// Runs every call through `model` and `rules` (each utterance judged with the
/// `context_turns` turns before it) and scores the decisions.
pub async fn score(
    model: &dyn SentimentClassifier,
    rules: &EscalationRules,
    context_turns: usize,
    calls: &[EscalationCall],
    predictions: &mut Predictions,
) -> anyhow::Result<EscalationReport> {
    let bar = progress(calls.len(), "escalation");
    let mut outcomes = Vec::with_capacity(calls.len());
    for call in calls {
        let outcome = run_call(model, rules, context_turns, call).await?;
        predictions.write(&outcome)?;
        outcomes.push(outcome);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(report(calls, &outcomes))
}

/// One call, turn by turn, as its contact actor would judge it.
pub async fn run_call(
    model: &dyn SentimentClassifier,
    rules: &EscalationRules,
    context_turns: usize,
    call: &EscalationCall,
) -> anyhow::Result<CallOutcome> {
    let cancel = CancellationToken::new();
    let mut mood = Mood::default();
    let mut outcome = CallOutcome {
        id: call.id.clone(),
        category: call.category.clone(),
        expected: call.escalate,
        expected_at: call.escalate_at,
        escalated_at: None,
        rule: None,
        judgements: Vec::new(),
    };
    for (i, turn) in call.turns.iter().enumerate() {
        let participant = Participant::parse(Some(&turn.participant));
        if !rules.judges(participant) {
            continue;
        }
        let context = &call.turns[i.saturating_sub(context_turns)..i];
        let assessed = model.classify(turn, context, &cancel).await?.into_event(
            i.to_string(),
            participant,
            &turn.text,
            0,
        );
        outcome.judgements.push(serde_json::json!({
            "turn": i,
            "label": assessed.label,
            "negative": assessed.scores.negative,
            "anger": assessed.anger,
            "cues": assessed.cues,
        }));
        for event in mood.react(rules, &assessed) {
            if let Event::EscalationRaised(raised) = event
                && outcome.escalated_at.is_none()
            {
                outcome.escalated_at = Some(i);
                outcome.rule = Some(raised.rule);
            }
        }
    }
    Ok(outcome)
}

/// Precision, recall and delay of the decisions.
fn report(calls: &[EscalationCall], outcomes: &[CallOutcome]) -> EscalationReport {
    let mut r = EscalationReport {
        calls: outcomes.len(),
        ..Default::default()
    };
    let mut delays = Vec::new();
    for (call, outcome) in calls.iter().zip(outcomes) {
        let count = r.per_category.entry(call.category.clone()).or_default();
        count.calls += 1;
        count.escalated += usize::from(outcome.escalated_at.is_some());
        match (call.escalate, outcome.escalated_at) {
            (true, Some(at)) => {
                r.true_positives += 1;
                if let Some(expected) = call.escalate_at {
                    let delay = customer_turns_between(&call.turns, expected, at);
                    r.early += usize::from(delay < 0);
                    delays.push(delay);
                }
            }
            (false, Some(_)) => {
                r.false_positives += 1;
                r.wrong.push(call.id.clone());
            }
            (true, None) => {
                r.false_negatives += 1;
                r.wrong.push(call.id.clone());
            }
            (false, None) => {}
        }
    }
    let share = |hit: usize, miss: usize| match hit + miss {
        0 => 1.0,
        n => hit as f64 / n as f64,
    };
    r.precision = share(r.true_positives, r.false_positives);
    r.recall = share(r.true_positives, r.false_negatives);
    if !delays.is_empty() {
        r.mean_delay = delays.iter().sum::<i64>() as f64 / delays.len() as f64;
        r.max_delay = delays.iter().copied().max().unwrap_or(0);
    }
    r
}

/// Customer utterances from turn `from` to turn `to` (negative when `to` comes first).
fn customer_turns_between(turns: &[Turn], from: usize, to: usize) -> i64 {
    let (low, high, sign) = if to >= from {
        (from, to, 1)
    } else {
        (to, from, -1)
    };
    let n = turns[low..high].iter().filter(|t| t.is_customer()).count() as i64;
    sign * n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(escalate: bool, at: Option<usize>) -> EscalationCall {
        EscalationCall {
            id: format!("c-{escalate}-{at:?}"),
            category: if escalate { "angry" } else { "calm" }.into(),
            escalate,
            escalate_at: at,
            turns: [
                "AGENT", "CUSTOMER", "AGENT", "CUSTOMER", "AGENT", "CUSTOMER",
            ]
            .map(|p| Turn::new(p, "..."))
            .to_vec(),
        }
    }

    fn outcome(call: &EscalationCall, at: Option<usize>) -> CallOutcome {
        CallOutcome {
            id: call.id.clone(),
            category: call.category.clone(),
            expected: call.escalate,
            expected_at: call.escalate_at,
            escalated_at: at,
            rule: None,
            judgements: Vec::new(),
        }
    }

    #[test]
    fn decisions_and_delays_are_scored() {
        let calls = [
            call(true, Some(1)),
            call(true, Some(3)),
            call(true, Some(3)),
            call(false, None),
            call(false, None),
        ];
        let outcomes = [
            outcome(&calls[0], Some(5)),
            outcome(&calls[1], Some(1)),
            outcome(&calls[2], None),
            outcome(&calls[3], Some(3)),
            outcome(&calls[4], None),
        ];
        let r = report(&calls, &outcomes);
        assert_eq!(
            (r.true_positives, r.false_positives, r.false_negatives),
            (2, 1, 1)
        );
        assert!((r.precision - 2.0 / 3.0).abs() < 1e-9);
        assert!((r.recall - 2.0 / 3.0).abs() < 1e-9);
        // Turn 1 -> 5: customer turns 1 and 3 lie before it; 3 -> 1: one turn early.
        assert_eq!(r.max_delay, 2);
        assert_eq!(r.early, 1);
        assert!((r.mean_delay - 0.5).abs() < 1e-9);
        assert_eq!(r.per_category["angry"].escalated, 2);
        assert_eq!(r.wrong.len(), 2);
    }
}
