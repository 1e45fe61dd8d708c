//! The contact aggregate: a call's state as a fold of its events, and the pure rules that
//! turn an input into new events (cqrs-es style `decide` / `apply`). No I/O, no actors: the
//! actor around it loads, decides, appends, applies, then does what [`Contact::due`] lists.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::envelope::{ChainHead, StoredEvent};
use super::kinds::*;
use super::rules::{EscalationRules, Mood};
use crate::audio::mkv::fragment_order;
use crate::models::Turn;

/// An input to a contact.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A STARTED record.
    Start(ContactStarted),
    /// A final transcript segment; `at` is when it arrived (opens the contact implicitly).
    Utterance {
        /// The segment.
        utterance: UtteranceReceived,
        /// Arrival time.
        at: DateTime<Utc>,
    },
    /// An ENDED record, or the idle timeout.
    End(ContactEnded),
    /// A sentiment judgement came back.
    Judged(SentimentAssessed),
    /// A sentiment call was given up.
    Skipped(ModelCallSkipped),
    /// The attribute sink set the attributes.
    AttributesSet(AttributesUpdated),
    /// The attribute sink gave up.
    AttributesFailed(AttributesUpdateFailed),
    /// A summary came back.
    Summarised(SummaryGenerated),
    /// A summary attempt failed.
    SummaryFailed(SummaryFailed),
    /// The contact's audio is to be read (its STARTED named a media stream).
    AudioStart(AudioStarted),
    /// The audio is fully heard this far.
    AudioProgress(AudioCheckpoint),
    /// Reading or transcribing the audio failed.
    AudioFailed(AudioStreamFailed),
    /// The audio is over.
    AudioEnd(AudioEnded),
}

/// Why an input was refused (the caller reports it; nothing is appended).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A segment came after the contact ended.
    #[error("contact {contact_id} already ended; segment {segment_id} arrived after its end")]
    AfterEnd {
        /// The contact.
        contact_id: String,
        /// The late segment.
        segment_id: String,
    },
    /// A result for something the contact never asked for (stale or foreign).
    #[error("unexpected {0} for contact {1}")]
    Unexpected(&'static str, String),
}

/// Work the contact is waiting for; the actor dispatches what is not already in flight.
#[derive(Debug, Clone, PartialEq)]
pub enum Due<'a> {
    /// Judge this utterance.
    Sentiment {
        /// The segment.
        segment_id: &'a str,
        /// Who spoke.
        participant: Participant,
        /// What was said.
        text: &'a str,
    },
    /// Set these attributes (asked for by event `for_seq`).
    Attributes {
        /// The event that asked.
        for_seq: u64,
        /// What to set.
        attributes: &'a BTreeMap<String, String>,
    },
    /// Write summary `version`.
    Summary {
        /// The version to write.
        version: u32,
    },
    /// Read the call's audio (until it ends), from where it is fully heard.
    Audio(&'a AudioProgress),
}

/// A contact's audio, once it is read: where from, how far it is heard, whether it is over.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioProgress {
    /// What reading began with.
    pub started: AudioStarted,
    /// The latest checkpoint.
    pub checkpoint: Option<AudioCheckpoint>,
    /// Once the audio is over.
    pub ended: Option<AudioEnded>,
    /// Where the latest utterance heard ends, ms into the call: customer, agent.
    pub heard_until: [u64; 2],
}

/// How many failed attempts a summary version gets before it is left to a replay.
pub const MAX_SUMMARY_ATTEMPTS: u32 = 3;

/// One utterance of the call, as the summariser and timeline see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Spoken {
    /// Segment id.
    pub segment_id: String,
    /// Who spoke.
    pub participant: Participant,
    /// What was said.
    pub text: String,
}

/// A contact's state: the fold of its events.
#[derive(Debug, Clone)]
pub struct Contact {
    id: String,
    rules: Arc<EscalationRules>,
    /// The chain head: last sequence number and hash.
    pub head: ChainHead,
    /// Whether a ContactStarted is in the log.
    pub started: bool,
    /// The latest ContactStarted: the implicit one of a first segment, or the STARTED
    /// record's (which is merged in when it comes after the first segment).
    pub start: Option<ContactStarted>,
    /// The ContactEnded, once there.
    pub ended: Option<ContactEnded>,
    /// Every final utterance, in arrival order.
    pub spoken: Vec<Spoken>,
    segment_index: HashMap<String, usize>,
    awaiting_sentiment: BTreeMap<String, usize>,
    /// Judgements that came back before those of earlier utterances, by utterance index:
    /// the rules see judgements in the order the utterances were said.
    held: BTreeMap<usize, SentimentAssessed>,
    awaiting_attributes: BTreeMap<u64, BTreeMap<String, String>>,
    /// Running customer mood and escalation episode.
    pub mood: Mood,
    /// Latest summary version written (0 = none).
    pub summary_version: u32,
    /// The latest summary, once there is one.
    pub latest_summary: Option<SummaryGenerated>,
    /// The call's audio, once it is read.
    pub audio: Option<AudioProgress>,
    summary_wanted: u32,
    summary_attempts: u32,
}

impl Contact {
    /// An empty contact (no events yet).
    pub fn new(id: impl Into<String>, rules: Arc<EscalationRules>) -> Self {
        Self {
            id: id.into(),
            rules,
            head: ChainHead::default(),
            started: false,
            start: None,
            ended: None,
            spoken: Vec::new(),
            segment_index: HashMap::new(),
            awaiting_sentiment: BTreeMap::new(),
            held: BTreeMap::new(),
            awaiting_attributes: BTreeMap::new(),
            mood: Mood::default(),
            summary_version: 0,
            latest_summary: None,
            audio: None,
            summary_wanted: 0,
            summary_attempts: 0,
        }
    }

    /// The contact id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Rebuilds a contact from its stored events, checking the hash chain as it goes.
    pub fn load(
        id: impl Into<String>,
        rules: Arc<EscalationRules>,
        events: &[StoredEvent],
    ) -> Result<Self, String> {
        let mut contact = Contact::new(id, rules);
        for stored in events {
            contact.load_next(stored)?;
        }
        Ok(contact)
    }

    /// Checks `stored` against the hash chain, decodes it and folds it in: one step of
    /// [`Contact::load`].
    pub fn load_next(&mut self, stored: &StoredEvent) -> Result<(), String> {
        self.head.verify_next(stored)?;
        let event = stored.decode().map_err(|e| e.to_string())?;
        self.fold(stored.seq, &event);
        Ok(())
    }

    /// The turns so far, for the summariser.
    pub fn turns(&self) -> Vec<Turn> {
        self.spoken
            .iter()
            .map(|s| Turn::new(s.participant.as_str(), s.text.clone()))
            .collect()
    }

    /// What an input means: the events to append (empty = nothing to do, e.g. a duplicate).
    pub fn decide(&self, command: Command, now: DateTime<Utc>) -> Result<Vec<Event>, Refusal> {
        let unexpected = |what| Err(Refusal::Unexpected(what, self.id.clone()));
        Ok(match command {
            Command::Start(started) => match &self.start {
                None => vec![Event::ContactStarted(ContactStarted {
                    rules: Some(self.rules.as_ref().clone()),
                    ..started
                })],
                // A STARTED after the first segment: merged in (instance, channel, media
                // stream), keeping the earlier start time.
                Some(opened) if opened.implicit => vec![Event::ContactStarted(ContactStarted {
                    started_at: opened.started_at.min(started.started_at),
                    implicit: false,
                    rules: opened.rules.clone(),
                    ..started
                })],
                Some(_) => vec![],
            },
            Command::Utterance { utterance, .. }
                if self.segment_index.contains_key(&utterance.segment_id) =>
            {
                vec![]
            }
            Command::Utterance { utterance, .. } if self.ended.is_some() && !self.audio_live() => {
                return Err(Refusal::AfterEnd {
                    contact_id: self.id.clone(),
                    segment_id: utterance.segment_id,
                });
            }
            Command::Utterance { utterance, at } => {
                self.opened_first(at, Event::UtteranceReceived(utterance))
            }
            Command::End(_) if self.ended.is_some() => vec![],
            Command::End(ended) => self.opened_first(now, Event::ContactEnded(ended)),
            Command::Judged(judged) if self.awaiting_sentiment.contains_key(&judged.segment_id) => {
                let event = Event::SentimentAssessed(judged);
                self.with_consequences(event)
            }
            Command::Judged(_) => return unexpected("sentiment"),
            Command::Skipped(skipped)
                if skipped
                    .segment_ids
                    .iter()
                    .any(|s| self.awaiting_sentiment.contains_key(s)) =>
            {
                self.with_consequences(Event::ModelCallSkipped(skipped))
            }
            Command::Skipped(_) => return unexpected("skip"),
            Command::AttributesSet(done)
                if self.awaiting_attributes.contains_key(&done.for_seq) =>
            {
                vec![Event::AttributesUpdated(done)]
            }
            Command::AttributesFailed(failed)
                if self.awaiting_attributes.contains_key(&failed.for_seq) =>
            {
                vec![Event::AttributesUpdateFailed(failed)]
            }
            Command::AttributesSet(_) | Command::AttributesFailed(_) => {
                return unexpected("attribute outcome");
            }
            Command::Summarised(summary) if summary.version == self.summary_version + 1 => {
                vec![Event::SummaryGenerated(summary)]
            }
            Command::Summarised(_) => return unexpected("summary"),
            Command::SummaryFailed(failed) if failed.version == self.summary_version + 1 => {
                vec![Event::SummaryFailed(failed)]
            }
            Command::SummaryFailed(_) => return unexpected("summary failure"),
            Command::AudioStart(started) if self.audio.is_none() && self.ended.is_none() => {
                vec![Event::AudioStarted(started)]
            }
            Command::AudioStart(_) => vec![],
            Command::AudioProgress(checkpoint) if self.audio_live() => {
                let behind = self
                    .audio
                    .as_ref()
                    .and_then(|a| a.checkpoint.as_ref())
                    .is_some_and(|last| {
                        fragment_order(&checkpoint.fragment_number, &last.fragment_number).is_le()
                    });
                if behind {
                    vec![]
                } else {
                    vec![Event::AudioCheckpoint(checkpoint)]
                }
            }
            Command::AudioFailed(failed) if self.audio_live() => {
                vec![Event::AudioStreamFailed(failed)]
            }
            Command::AudioEnd(ended) if self.audio_live() => vec![Event::AudioEnded(ended)],
            Command::AudioProgress(_) | Command::AudioFailed(_) | Command::AudioEnd(_) => {
                return unexpected("audio report");
            }
        })
    }

    /// Whether the call's audio is being read and is not over.
    pub fn audio_live(&self) -> bool {
        self.audio.as_ref().is_some_and(|a| a.ended.is_none())
    }

    /// The audio to start reading: the call's STARTED named a media stream, and nothing has
    /// read it yet.
    pub fn wants_audio(&self) -> Option<AudioStarted> {
        let start = self.start.as_ref()?;
        if self.audio.is_some() || self.ended.is_some() {
            return None;
        }
        Some(AudioStarted {
            stream_arn: start.media_stream_arn.clone()?,
            start_fragment_number: start.start_fragment_number.clone(),
        })
    }

    /// Asks for the first summary once the call and its audio are both over.
    fn want_summary_when_over(&mut self) {
        if self.ended.is_some() && !self.audio_live() && !self.spoken.is_empty() {
            self.summary_wanted = self.summary_wanted.max(1);
        }
    }

    /// `event`, preceded by an implicit ContactStarted at `at` when no STARTED came.
    fn opened_first(&self, at: DateTime<Utc>, event: Event) -> Vec<Event> {
        let mut events = Vec::with_capacity(2);
        if !self.started {
            events.push(Event::ContactStarted(ContactStarted {
                instance_id: None,
                channel: None,
                started_at: at,
                media_stream_arn: None,
                start_fragment_number: None,
                implicit: true,
                rules: Some(self.rules.as_ref().clone()),
            }));
        }
        events.push(event);
        events
    }

    /// Folds one appended event in.
    pub fn apply(&mut self, stored: &StoredEvent, event: &Event) {
        self.head = ChainHead {
            seq: stored.seq,
            hash: stored.hash.clone(),
        };
        self.fold(stored.seq, event);
    }

    fn fold(&mut self, seq: u64, event: &Event) {
        match event {
            Event::SentimentAssessed(_) | Event::ModelCallSkipped(_) => {
                let released = settle_judgement(
                    &self.segment_index,
                    &mut self.awaiting_sentiment,
                    &mut self.held,
                    event,
                );
                for judged in released {
                    self.mood
                        .apply(&self.rules, &Event::SentimentAssessed(judged));
                }
                return;
            }
            _ => self.mood.apply(&self.rules, event),
        }
        match event {
            Event::ContactStarted(started) => {
                // The rules the call began under, for the rest of its fold.
                if let (None, Some(rules)) = (&self.start, &started.rules) {
                    self.rules = Arc::new(rules.clone());
                }
                self.started = true;
                self.start = Some(started.clone());
            }
            Event::UtteranceReceived(u) => {
                self.segment_index
                    .insert(u.segment_id.clone(), self.spoken.len());
                if self.rules.judges(u.participant) {
                    self.awaiting_sentiment
                        .insert(u.segment_id.clone(), self.spoken.len());
                }
                self.spoken.push(Spoken {
                    segment_id: u.segment_id.clone(),
                    participant: u.participant,
                    text: u.text.clone(),
                });
                if let (Some(audio), Some(end)) = (self.audio.as_mut(), u.end_offset_millis) {
                    let side = usize::from(u.participant == Participant::Agent);
                    audio.heard_until[side] = audio.heard_until[side].max(end);
                }
            }
            Event::EscalationRaised(EscalationRaised { attributes, .. })
            | Event::EscalationCleared(EscalationCleared { attributes, .. })
                if !attributes.is_empty() =>
            {
                self.awaiting_attributes.insert(seq, attributes.clone());
            }
            Event::AttributesUpdated(AttributesUpdated { for_seq, .. })
            | Event::AttributesUpdateFailed(AttributesUpdateFailed { for_seq, .. }) => {
                self.awaiting_attributes.remove(for_seq);
            }
            Event::ContactEnded(e) => {
                self.ended = Some(e.clone());
                self.want_summary_when_over();
            }
            Event::AudioStarted(started) => {
                self.audio = Some(AudioProgress {
                    started: started.clone(),
                    checkpoint: None,
                    ended: None,
                    heard_until: [0; 2],
                });
            }
            Event::AudioCheckpoint(checkpoint) => {
                if let Some(audio) = self.audio.as_mut() {
                    audio.checkpoint = Some(checkpoint.clone());
                }
            }
            Event::AudioEnded(ended) => {
                if let Some(audio) = self.audio.as_mut() {
                    audio.ended = Some(ended.clone());
                }
                self.want_summary_when_over();
            }
            Event::SummaryGenerated(e) => {
                if e.version > self.summary_version {
                    self.summary_version = e.version;
                    self.latest_summary = Some(e.clone());
                }
                self.summary_attempts = 0;
            }
            Event::SummaryFailed(_) => self.summary_attempts += 1,
            _ => {}
        }
    }

    /// `event` (a judgement or a skip) followed by what the judgements it releases lead to.
    fn with_consequences(&self, event: Event) -> Vec<Event> {
        let mut awaiting = self.awaiting_sentiment.clone();
        let mut held = self.held.clone();
        let mut mood = self.mood.clone();
        let released = settle_judgement(&self.segment_index, &mut awaiting, &mut held, &event);
        let mut events = vec![event];
        for judged in &released {
            events.extend(mood.react(&self.rules, judged));
        }
        events
    }

    /// Asks for a new summary version (replay). Returns the version to write.
    pub fn want_new_summary(&mut self) -> u32 {
        self.summary_wanted = self.summary_version + 1;
        self.summary_attempts = 0;
        self.summary_wanted
    }

    /// Everything the contact is waiting for, oldest first.
    pub fn due(&self) -> Vec<Due<'_>> {
        let mut waiting: Vec<usize> = self.awaiting_sentiment.values().copied().collect();
        waiting.sort_unstable();
        let mut due: Vec<Due> = waiting
            .into_iter()
            .map(|index| {
                let spoken = &self.spoken[index];
                Due::Sentiment {
                    segment_id: &spoken.segment_id,
                    participant: spoken.participant,
                    text: &spoken.text,
                }
            })
            .collect();
        due.extend(
            self.awaiting_attributes
                .iter()
                .map(|(&for_seq, attributes)| Due::Attributes {
                    for_seq,
                    attributes,
                }),
        );
        if self.summary_wanted > self.summary_version
            && self.summary_attempts < MAX_SUMMARY_ATTEMPTS
        {
            due.push(Due::Summary {
                version: self.summary_version + 1,
            });
        }
        if let Some(audio) = self.audio.as_ref().filter(|a| a.ended.is_none()) {
            due.push(Due::Audio(audio));
        }
        due
    }
}

/// Takes a judgement or a skip off the awaited utterances, and returns the judgements now
/// ready for the rules: every held one said before the earliest still-awaited utterance, in
/// the order they were said.
fn settle_judgement(
    segment_index: &HashMap<String, usize>,
    awaiting: &mut BTreeMap<String, usize>,
    held: &mut BTreeMap<usize, SentimentAssessed>,
    event: &Event,
) -> Vec<SentimentAssessed> {
    match event {
        Event::SentimentAssessed(e) => {
            for segment in e.coalesced.iter().chain([&e.segment_id]) {
                awaiting.remove(segment);
            }
            let index = segment_index.get(&e.segment_id).copied();
            held.insert(index.unwrap_or(usize::MAX), e.clone());
        }
        Event::ModelCallSkipped(e) => {
            for segment in &e.segment_ids {
                awaiting.remove(segment);
            }
        }
        _ => return Vec::new(),
    }
    let frontier = awaiting.values().min().copied().unwrap_or(usize::MAX);
    let later = held.split_off(&frontier);
    std::mem::replace(held, later).into_values().collect()
}

#[cfg(test)]
#[path = "contact_tests.rs"]
mod tests;
