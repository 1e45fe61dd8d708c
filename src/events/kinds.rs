//! The event bodies: everything a contact receives and decides (DESIGN.md, "Events").

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::models::{Label, LabelScores};

/// Who spoke an utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Participant {
    /// The caller.
    Customer,
    /// The contact-centre agent.
    Agent,
    /// Not given by the source (the seed's minimal record form).
    Unknown,
}

impl Participant {
    /// Reads `CUSTOMER` / `AGENT` (any case); anything else or nothing is `Unknown`.
    pub fn parse(text: Option<&str>) -> Self {
        match text.map(str::to_ascii_uppercase).as_deref() {
            Some("CUSTOMER") => Participant::Customer,
            Some("AGENT") => Participant::Agent,
            _ => Participant::Unknown,
        }
    }

    /// The name used in transcripts and prompts.
    pub fn as_str(self) -> &'static str {
        match self {
            Participant::Customer => "CUSTOMER",
            Participant::Agent => "AGENT",
            Participant::Unknown => "UNKNOWN",
        }
    }
}

/// A call began (explicitly, or implicitly with its first segment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactStarted {
    /// Connect instance id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// VOICE, CHAT, ... when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// When the call began (the record's timestamp, else when callpulse first saw it).
    pub started_at: DateTime<Utc>,
    /// Kinesis Video stream carrying the call audio, when streamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_stream_arn: Option<String>,
    /// First audio fragment of the call in that stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_fragment_number: Option<String>,
    /// True when no STARTED record came and the first segment opened the contact.
    #[serde(default)]
    pub implicit: bool,
    /// The escalation rules in force when the call began: the contact is folded by these,
    /// whatever the config says later (absent in logs written before they were recorded:
    /// then the current config applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<crate::events::rules::EscalationRules>,
}

/// A final transcript segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UtteranceReceived {
    /// Segment id (from the source, or derived from the record's position).
    pub segment_id: String,
    /// Who spoke.
    pub participant: Participant,
    /// What was said.
    pub text: String,
    /// Start of the segment in the call, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub begin_offset_millis: Option<u64>,
    /// End of the segment in the call, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_offset_millis: Option<u64>,
    /// How many values of each kind were redacted from `text` (never the values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub redactions: crate::redaction::Counts,
}

/// The contact's audio is being read (from its media stream): until [`AudioEnded`], its
/// utterances may come after its end, and its summary waits for the audio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AudioStarted {
    /// The Kinesis Video stream.
    pub stream_arn: String,
    /// Where reading began: the call's first fragment, when known (else the live edge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_fragment_number: Option<String>,
}

/// The last audio fragment fully transcribed, so a restart resumes after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AudioCheckpoint {
    /// Kinesis Video fragment number.
    pub fragment_number: String,
    /// The call's time zero: the absolute time of its first audio, ms since the Unix epoch
    /// (absent in logs written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_millis: Option<i64>,
    /// How far into the call the audio is fully heard, ms.
    #[serde(default)]
    pub covered_millis: u64,
}

/// Reading or transcribing the audio failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AudioStreamFailed {
    /// What failed, in words (no such stream, malformed media, Transcribe refused, ...).
    pub reason: String,
    /// Whether the reader tries again (else the audio ends with this failure).
    pub retrying: bool,
    /// The last fragment read before it, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragment_number: Option<String>,
}

/// Why a contact's audio ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AudioEndReason {
    /// The call ended and its stream went quiet (or ended).
    CallEnded,
    /// The stream now carries another contact (Connect reuses streams).
    ContactChanged,
    /// A failure that trying again cannot mend.
    Failed,
}

/// The contact's audio is over: everything heard is in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AudioEnded {
    /// Why.
    pub reason: AudioEndReason,
    /// The last fragment read, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragment_number: Option<String>,
}

/// The judgement of one utterance (or of several, coalesced under load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentimentAssessed {
    /// The (last) utterance judged.
    pub segment_id: String,
    /// Earlier utterances judged together with it when queued requests were coalesced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coalesced: Vec<String>,
    /// Who spoke it.
    pub participant: Participant,
    /// The label.
    pub label: Label,
    /// Probability of each label.
    pub scores: LabelScores,
    /// P(the speaker is angry), where a second model checked a negative-sounding
    /// utterance for anger (the local engine); the rules count such an utterance as angry
    /// only above `[escalation] anger_threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anger: Option<f32>,
    /// Anger cues in the utterance (`threat`, `insult`, `anger`, `profanity`, `sarcasm`;
    /// see `events::cues`): with one, the rules count it as angry whatever its label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cues: Vec<String>,
    /// Which model judged.
    pub model: String,
    /// From the request entering the model gateway to the answer, ms.
    pub latency_ms: u64,
    /// Prompt tokens.
    pub tokens_in: u32,
    /// Generated tokens.
    pub tokens_out: u32,
    /// Model cost in USD, where the model has a price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// The contact's smoothed customer sentiment moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentimentChanged {
    /// The previous smoothed label (none before the first customer judgement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Label>,
    /// The new smoothed label.
    pub to: Label,
    /// How it was computed.
    pub why: String,
}

/// An escalation rule fired: an escalation episode begins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EscalationRaised {
    /// The rule, in words (e.g. `2 of the last 3 customer utterances angry`).
    pub rule: String,
    /// The segments that made it fire.
    pub evidence: Vec<String>,
    /// The contact attributes to set.
    pub attributes: BTreeMap<String, String>,
}

/// The customer recovered: the escalation episode ends, a new one may begin later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EscalationCleared {
    /// Why the episode ended.
    pub why: String,
    /// The judged utterance that ended it; the rules' window restarts after it.
    pub segment_id: String,
    /// Contact attributes to set on clearing (none by default).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// Attributes were set on the contact (Connect, the attribute log, a webhook).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttributesUpdated {
    /// Sequence number of the event that asked for them.
    pub for_seq: u64,
    /// Which sink took them.
    pub sink: String,
    /// What was set.
    pub attributes: BTreeMap<String, String>,
    /// Tries it took.
    pub attempts: u32,
}

/// Setting attributes failed after every retry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttributesUpdateFailed {
    /// Sequence number of the event that asked for them.
    pub for_seq: u64,
    /// Which sink refused them.
    pub sink: String,
    /// What was to be set.
    pub attributes: BTreeMap<String, String>,
    /// Tries made.
    pub attempts: u32,
    /// The last error.
    pub error: String,
}

/// Why a contact ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EndReason {
    /// An ENDED record came.
    Ended,
    /// No record came for the configured idle timeout.
    IdleTimeout,
}

/// The call is over; its summary is due.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactEnded {
    /// When it ended.
    pub ended_at: DateTime<Utc>,
    /// Why.
    pub reason: EndReason,
}

/// A summary of the call; replays append new versions, never rewrite old ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryGenerated {
    /// 1 for the first summary, +1 per replay.
    pub version: u32,
    /// Which model wrote it.
    pub model: String,
    /// Version of the prompts.
    pub prompt_version: u32,
    /// The summary itself (older versions: three `- ` bullets, one per line).
    pub text: String,
    /// Why the customer got in touch.
    pub reason: String,
    /// What was done.
    pub resolution: String,
    /// What still has to happen.
    pub follow_up: String,
    /// Customer sentiment at the end of the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_sentiment: Option<Label>,
    /// Transcript chunks summarised separately.
    pub chunks: usize,
    /// Prompt tokens.
    pub tokens_in: u32,
    /// Generated tokens.
    pub tokens_out: u32,
    /// Model cost in USD, where the model has a price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// A summary attempt failed; it will be retried (summaries are never dropped).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryFailed {
    /// The version being written.
    pub version: u32,
    /// Which model failed.
    pub model: String,
    /// What went wrong.
    pub error: String,
    /// Tries so far.
    pub attempts: u32,
}

/// Which kind of model work was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ModelTask {
    /// Per-utterance sentiment.
    Sentiment,
    /// Call summary.
    Summary,
}

/// A sentiment call was shed (past its deadline, or the model failed for good).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelCallSkipped {
    /// The task.
    pub task: ModelTask,
    /// The utterances it was for.
    pub segment_ids: Vec<String>,
    /// Why it was skipped.
    pub why: String,
    /// How old the request was when it was given up, ms.
    pub stale_ms: u64,
}

/// Every event a contact's log can hold, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
#[allow(missing_docs)] // each variant is documented on its body type
pub enum Event {
    ContactStarted(ContactStarted),
    UtteranceReceived(UtteranceReceived),
    AudioStarted(AudioStarted),
    AudioCheckpoint(AudioCheckpoint),
    AudioStreamFailed(AudioStreamFailed),
    AudioEnded(AudioEnded),
    SentimentAssessed(SentimentAssessed),
    SentimentChanged(SentimentChanged),
    EscalationRaised(EscalationRaised),
    EscalationCleared(EscalationCleared),
    AttributesUpdated(AttributesUpdated),
    AttributesUpdateFailed(AttributesUpdateFailed),
    ContactEnded(ContactEnded),
    SummaryGenerated(SummaryGenerated),
    SummaryFailed(SummaryFailed),
    ModelCallSkipped(ModelCallSkipped),
}

/// The stored kind of [`Event::ContactEnded`] (stores look for it to know a contact ended).
pub const CONTACT_ENDED: &str = "ContactEnded";

impl Event {
    /// The kind's name, as stored and as shown by `query contact`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ContactStarted(_) => "ContactStarted",
            Event::UtteranceReceived(_) => "UtteranceReceived",
            Event::AudioStarted(_) => "AudioStarted",
            Event::AudioCheckpoint(_) => "AudioCheckpoint",
            Event::AudioStreamFailed(_) => "AudioStreamFailed",
            Event::AudioEnded(_) => "AudioEnded",
            Event::SentimentAssessed(_) => "SentimentAssessed",
            Event::SentimentChanged(_) => "SentimentChanged",
            Event::EscalationRaised(_) => "EscalationRaised",
            Event::EscalationCleared(_) => "EscalationCleared",
            Event::AttributesUpdated(_) => "AttributesUpdated",
            Event::AttributesUpdateFailed(_) => "AttributesUpdateFailed",
            Event::ContactEnded(_) => CONTACT_ENDED,
            Event::SummaryGenerated(_) => "SummaryGenerated",
            Event::SummaryFailed(_) => "SummaryFailed",
            Event::ModelCallSkipped(_) => "ModelCallSkipped",
        }
    }
}
