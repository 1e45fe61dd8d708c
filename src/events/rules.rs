//! Escalation rules: when a contact's customer counts as negative enough to escalate, and
//! when an escalation episode is over. Pure functions of the judgements seen so far.
//!
//! An episode opens when `negatives` of the last `window` eligible judgements are angry,
//! or when one angry judgement's P(NEGATIVE) reaches `threshold`. A judgement is angry when
//! its utterance has an anger cue (a threat, an insult, sarcasm: `events::cues`), or when
//! it is NEGATIVE and, where a model checked it for anger, its P(angry) reaches
//! `anger_threshold`: a calm complaint or sad news is negative without being angry. It closes after `clear_after`
//! eligible judgements in a row that are not NEGATIVE (hysteresis: one calm sentence does
//! not end it); the window then starts afresh, so a closed episode cannot reopen on old
//! evidence. Each episode escalates once.
//!
//! The state changes only by applying events, and applying the log in order gives the same
//! state that [`Mood::react`] computed when the events were decided, even when several
//! judgements are released at once (see `Contact`): every transition is stated by an event
//! and none depends on how many judgements were observed before it was applied.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::kinds::{
    EscalationCleared, EscalationRaised, Event, Participant, SentimentAssessed, SentimentChanged,
};
use crate::models::{Label, LabelScores};

/// The `[escalation]` config table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EscalationRules {
    /// How many recent eligible judgements the rule looks at (M).
    pub window: usize,
    /// How many of them must be NEGATIVE (N).
    pub negatives: usize,
    /// One angry judgement with P(NEGATIVE) at least this escalates at once (above 1 =
    /// never).
    pub threshold: f32,
    /// P(angry) from which a NEGATIVE judgement checked for anger counts as angry
    /// (judgements without an anger score count by their label alone; 0 = ignore anger).
    pub anger_threshold: f32,
    /// Non-NEGATIVE judgements in a row that end an episode.
    pub clear_after: usize,
    /// Contact attributes set when an episode opens.
    pub attributes: BTreeMap<String, String>,
    /// Contact attributes set when it closes (none by default).
    pub clear_attributes: BTreeMap<String, String>,
    /// Whether agent utterances are judged at all.
    pub judge_agent: bool,
    /// Whether agent utterances count towards escalation.
    pub agent_escalates: bool,
    /// Whether utterances of unknown speakers (the seed's minimal form) count.
    pub unknown_escalates: bool,
}

impl Default for EscalationRules {
    fn default() -> Self {
        Self {
            window: 3,
            negatives: 2,
            threshold: 0.9,
            anger_threshold: 0.55,
            clear_after: 3,
            attributes: BTreeMap::from([("RealTimeSentiment".into(), "NEGATIVE".into())]),
            clear_attributes: BTreeMap::new(),
            judge_agent: true,
            agent_escalates: false,
            unknown_escalates: true,
        }
    }
}

impl EscalationRules {
    /// Whether an utterance of `participant` gets a sentiment call.
    pub fn judges(&self, participant: Participant) -> bool {
        participant != Participant::Agent || self.judge_agent
    }

    /// Whether a judgement of `participant` counts towards escalation and the smoothed
    /// customer sentiment.
    pub fn counts(&self, participant: Participant) -> bool {
        match participant {
            Participant::Customer => true,
            Participant::Agent => self.agent_escalates,
            Participant::Unknown => self.unknown_escalates,
        }
    }

    /// Checks the numbers make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.window == 0 || self.negatives == 0 || self.negatives > self.window {
            return Err(format!(
                "escalation: need 1 <= negatives ({}) <= window ({})",
                self.negatives, self.window
            ));
        }
        if self.clear_after == 0 {
            return Err("escalation: clear_after must be at least 1".into());
        }
        Ok(())
    }
}

/// One eligible judgement in the window.
#[derive(Debug, Clone, PartialEq)]
struct Judged {
    segment_id: String,
    label: Label,
    scores: LabelScores,
    angry: bool,
}

/// A contact's running customer mood: the window of recent judgements, the smoothed label
/// and the escalation episode. Changed only by applying events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mood {
    window: VecDeque<Judged>,
    /// The smoothed customer sentiment.
    pub smoothed: Option<Label>,
    /// Whether an escalation episode is open.
    pub escalated: bool,
    calm_streak: usize,
}

impl Mood {
    /// Folds one event in.
    pub fn apply(&mut self, rules: &EscalationRules, event: &Event) {
        match event {
            Event::SentimentAssessed(e) if rules.counts(e.participant) => {
                self.window.push_back(Judged {
                    segment_id: e.segment_id.clone(),
                    label: e.label,
                    scores: e.scores,
                    angry: !e.cues.is_empty()
                        || (e.label == Label::Negative
                            && e.anger.is_none_or(|p| p >= rules.anger_threshold)),
                });
                while self.window.len() > rules.window {
                    self.window.pop_front();
                }
                self.calm_streak = if e.label == Label::Negative {
                    0
                } else {
                    self.calm_streak + 1
                };
            }
            Event::SentimentChanged(e) => self.smoothed = Some(e.to),
            Event::EscalationRaised(_) => self.escalated = true,
            Event::EscalationCleared(e) => {
                self.escalated = false;
                // Judgements after the closing one may already be in (a batch released at
                // once); they stay.
                if let Some(at) = self
                    .window
                    .iter()
                    .position(|j| j.segment_id == e.segment_id)
                {
                    self.window.drain(..=at);
                }
            }
            _ => {}
        }
    }

    /// Takes a judgement in and returns what it leads to: a change of smoothed sentiment,
    /// then an escalation opening or closing. Those events are applied too, so `self` ends
    /// as a fold of the judgement and its consequences would leave it.
    pub fn react(&mut self, rules: &EscalationRules, judged: &SentimentAssessed) -> Vec<Event> {
        self.apply(rules, &Event::SentimentAssessed(judged.clone()));
        if !rules.counts(judged.participant) {
            return Vec::new();
        }
        let mut events = Vec::new();
        let smoothed = self.mean_scores().top();
        if self.smoothed != Some(smoothed) {
            events.push(Event::SentimentChanged(SentimentChanged {
                from: self.smoothed,
                to: smoothed,
                why: format!(
                    "mean scores of the last {} customer judgements",
                    self.window.len()
                ),
            }));
        }
        if let Some(raised) = self.raise(rules) {
            events.push(Event::EscalationRaised(raised));
        } else if self.escalated && self.calm_streak >= rules.clear_after {
            events.push(Event::EscalationCleared(EscalationCleared {
                why: format!(
                    "{} customer judgements in a row were not NEGATIVE",
                    self.calm_streak
                ),
                segment_id: judged.segment_id.clone(),
                attributes: rules.clear_attributes.clone(),
            }));
        }
        for event in &events {
            self.apply(rules, event);
        }
        events
    }

    fn raise(&self, rules: &EscalationRules) -> Option<EscalationRaised> {
        if self.escalated {
            return None;
        }
        let last = self.window.back().filter(|j| j.angry)?;
        let (rule, evidence) = if last.scores.negative >= rules.threshold {
            (
                format!(
                    "one angry customer utterance with P(NEGATIVE) {:.2} >= {:.2}",
                    last.scores.negative, rules.threshold
                ),
                vec![last.segment_id.clone()],
            )
        } else {
            let angry: Vec<String> = self
                .window
                .iter()
                .filter(|j| j.angry)
                .map(|j| j.segment_id.clone())
                .collect();
            if angry.len() < rules.negatives {
                return None;
            }
            (
                format!(
                    "{} of the last {} customer utterances angry",
                    angry.len(),
                    self.window.len()
                ),
                angry,
            )
        };
        Some(EscalationRaised {
            rule,
            evidence,
            attributes: rules.attributes.clone(),
        })
    }

    fn mean_scores(&self) -> LabelScores {
        let n = self.window.len().max(1) as f32;
        let sum =
            |f: fn(&LabelScores) -> f32| self.window.iter().map(|j| f(&j.scores)).sum::<f32>() / n;
        LabelScores {
            positive: sum(|s| s.positive),
            neutral: sum(|s| s.neutral),
            negative: sum(|s| s.negative),
        }
    }
}
