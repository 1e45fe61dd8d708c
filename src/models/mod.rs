//! Small language models: the traits the rest of callpulse calls, and their backends.
//!
//! A [`SentimentClassifier`] judges one utterance; a [`Summariser`] condenses a whole call.
//! Both are async, cancellable through a [`CancellationToken`], and report the tokens they
//! used so that callers can account for cost and rate limits.

pub mod bedrock;
pub mod fetch;
pub mod head;
pub mod local;
pub mod prompts;
pub mod standin;
pub mod summary;

use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
pub use tokio_util::sync::CancellationToken;

/// A sentiment label. MIXED (see the event schema) is never produced by the local model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Label {
    /// The speaker is pleased.
    Positive,
    /// Neither pleased nor displeased.
    Neutral,
    /// The speaker is displeased: what drives escalations.
    Negative,
}

impl Label {
    /// Every label, in the order used by score vectors and classifier heads.
    pub const ALL: [Label; 3] = [Label::Positive, Label::Neutral, Label::Negative];

    /// Position of the label in [`Label::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Parses `POSITIVE`, `neutral`, ... strictly: anything else is `None`.
    pub fn parse(text: &str) -> Option<Label> {
        match text.trim().to_ascii_uppercase().as_str() {
            "POSITIVE" => Some(Label::Positive),
            "NEUTRAL" => Some(Label::Neutral),
            "NEGATIVE" => Some(Label::Negative),
            _ => None,
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Label::Positive => "POSITIVE",
            Label::Neutral => "NEUTRAL",
            Label::Negative => "NEGATIVE",
        })
    }
}

/// Probability of each label; the three add up to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LabelScores {
    /// P(POSITIVE).
    pub positive: f32,
    /// P(NEUTRAL).
    pub neutral: f32,
    /// P(NEGATIVE).
    pub negative: f32,
}

impl LabelScores {
    /// Builds scores from probabilities in [`Label::ALL`] order.
    pub fn from_probs(p: [f32; 3]) -> Self {
        Self {
            positive: p[0],
            neutral: p[1],
            negative: p[2],
        }
    }

    /// The probability of one label.
    pub fn get(&self, label: Label) -> f32 {
        match label {
            Label::Positive => self.positive,
            Label::Neutral => self.neutral,
            Label::Negative => self.negative,
        }
    }

    /// The most probable label.
    pub fn top(&self) -> Label {
        Label::ALL
            .into_iter()
            .max_by(|a, b| self.get(*a).total_cmp(&self.get(*b)))
            .unwrap_or(Label::Neutral)
    }
}

/// Tokens a model call consumed and produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens evaluated (including cached prefix tokens reused).
    pub input_tokens: u32,
    /// Tokens generated.
    pub output_tokens: u32,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
    }
}

/// One turn of a conversation: who spoke and what they said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// `CUSTOMER`, `AGENT`, or any other speaker name (e.g. `PERSON1`).
    pub participant: String,
    /// The transcript of the turn.
    pub text: String,
}

impl Turn {
    /// Builds a turn.
    pub fn new(participant: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            participant: participant.into(),
            text: text.into(),
        }
    }

    /// Whether the customer spoke this turn.
    pub fn is_customer(&self) -> bool {
        self.participant.eq_ignore_ascii_case("CUSTOMER")
    }
}

/// The judgement of one utterance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sentiment {
    /// The chosen label (the most probable).
    pub label: Label,
    /// Probability of every label.
    pub scores: LabelScores,
    /// P(the speaker is angry), where the backend checks negative utterances for anger.
    pub anger: Option<f32>,
    /// Which model judged (configured id or GGUF name).
    pub model_id: String,
    /// Tokens used.
    pub usage: Usage,
    /// What the call cost in USD, where the model has a price (Bedrock); `None` otherwise.
    pub cost_usd: Option<f64>,
}

/// A call summary: what was wanted and what was done, plus fields extracted from the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The summary itself: what was wanted, then what was done (one or two sentences).
    pub text: String,
    /// Why the customer got in touch.
    pub reason: String,
    /// What was done about it.
    pub resolution: String,
    /// What still has to happen.
    pub follow_up: String,
    /// The customer's sentiment at the end of the call, when the call had customer turns.
    pub customer_sentiment: Option<Label>,
    /// Which model wrote it.
    pub model_id: String,
    /// Version of the prompts that produced it.
    pub prompt_version: u32,
    /// How many transcript chunks were summarised separately (1 when the call fit).
    pub chunks: usize,
    /// Tokens used, including every chunk and retry.
    pub usage: Usage,
    /// What all its calls cost in USD, where the model has a price (Bedrock); `None` otherwise.
    pub cost_usd: Option<f64>,
}

impl Sentiment {
    /// The event recording it as the judgement of `utterance` (segment `segment_id`), with
    /// the utterance's anger cues; `latency_ms` from the request to the answer.
    pub fn into_event(
        self,
        segment_id: String,
        participant: crate::events::Participant,
        utterance: &str,
        latency_ms: u64,
    ) -> crate::events::SentimentAssessed {
        crate::events::SentimentAssessed {
            segment_id,
            coalesced: Vec::new(),
            participant,
            label: self.label,
            scores: self.scores,
            anger: self.anger,
            cues: crate::events::cues::anger_cues(utterance),
            model: self.model_id,
            latency_ms,
            tokens_in: self.usage.input_tokens,
            tokens_out: self.usage.output_tokens,
            cost_usd: self.cost_usd,
        }
    }
}

impl Summary {
    /// The event recording it as summary `version` of a call.
    pub fn into_event(self, version: u32) -> crate::events::SummaryGenerated {
        crate::events::SummaryGenerated {
            version,
            model: self.model_id,
            prompt_version: self.prompt_version,
            text: self.text,
            reason: self.reason,
            resolution: self.resolution,
            follow_up: self.follow_up,
            customer_sentiment: self.customer_sentiment,
            chunks: self.chunks,
            tokens_in: self.usage.input_tokens,
            tokens_out: self.usage.output_tokens,
            cost_usd: self.cost_usd,
        }
    }
}

/// What can go wrong in a model call.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model file is not where config says.
    #[error(
        "model file {path} not found; run `callpulse model fetch` to download the default model, or name an existing GGUF with --model / CALLPULSE_MODEL"
    )]
    MissingModel {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The model file exists but cannot be used.
    #[error(
        "model file {path} is unusable ({reason}); run `callpulse model fetch --force` to download it again"
    )]
    CorruptModel {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The inference engine failed, or the model service failed or could not be reached
    /// (a 5xx, a timeout, a dropped connection): worth trying again.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The model service asked us to slow down (throttling, a quota, a model still loading
    /// or timing out): worth trying again after a backoff.
    #[error("model throttled: {0}")]
    Throttled(String),
    /// The model service refused the request (validation, access, unknown model, an error
    /// inside the model): trying the same request again will not help.
    #[error("model call rejected: {0}")]
    Rejected(String),
    /// The model answered, but the answer did not pass validation.
    #[error("model output rejected: {0}")]
    InvalidOutput(String),
    /// The caller cancelled the call.
    #[error("model call cancelled")]
    Cancelled,
    /// The engine's worker is gone (it panicked or was shut down).
    #[error("model engine stopped")]
    EngineStopped,
}

impl ModelError {
    /// Whether trying again later may succeed (the engine hiccuped or is overloaded), as
    /// opposed to a wrong setup or an answer that will not change.
    pub fn is_transient(&self) -> bool {
        matches!(self, ModelError::Inference(_) | ModelError::Throttled(_))
    }
}

/// Judges the sentiment of single utterances.
#[async_trait]
pub trait SentimentClassifier: Send + Sync {
    /// Classifies one utterance, optionally reading earlier turns of the call as context.
    async fn classify(
        &self,
        utterance: &Turn,
        context: &[Turn],
        cancel: &CancellationToken,
    ) -> Result<Sentiment, ModelError>;
}

/// Writes call summaries.
#[async_trait]
pub trait Summariser: Send + Sync {
    /// Summarises a whole call.
    async fn summarise(
        &self,
        turns: &[Turn],
        cancel: &CancellationToken,
    ) -> Result<Summary, ModelError>;
}
