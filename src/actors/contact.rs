//! ContactActor: one per live call, under `actix::Supervisor`. A thin shell around the pure
//! [`Contact`] aggregate: load the log, decide, append, apply, then dispatch whatever work is
//! due and not already in flight. Every handler that appends runs atomically (nothing else
//! is handled between the append and the apply). A restart rebuilds the state from the log
//! and re-dispatches only what the log says is still owed, so no effect is duplicated.
//! Once the router has let a contact go ([`Halt`]), its actor handles nothing more, not even
//! what is already queued in its mailbox.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;

use super::Services;
use super::dispatcher::{AttributeOutcome, SetAttributes};
use super::gateway::{JudgeUtterance, ModelOutcome, WriteSummary};
use super::router::Passivate;
use crate::audio::reader::{AudioReader, AudioReport, AudioSink};
use crate::backoff::backoff;
use crate::events::contact::{Command, Contact, Due};
use crate::events::{
    ContactEnded, ContactStarted, EndReason, Event, Participant, SummaryGenerated,
    UtteranceReceived,
};
use crate::ingest::record::Record;
use crate::metrics::metrics;
use crate::store::{Appended, SeqRange, StoreError};

/// A record for this contact, with its idempotency key.
#[derive(Message)]
#[rtype(result = "Result<InputOutcome, InputError>")]
pub struct ContactInput {
    /// The record.
    pub record: Record,
    /// Its source id (see `ingest::source::Incoming`).
    pub source_id: String,
}

/// What became of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputOutcome {
    /// Appended as this many events.
    Appended(usize),
    /// Already in the log (re-delivery): nothing appended.
    Duplicate,
    /// Refused by the contact's rules, with the reason (e.g. a segment after the end).
    Refused(String),
    /// Not taken: the contact's shard has left this worker (its new owner reads the record
    /// from the stream); nothing appended, and the source must not count it as read.
    NotOwned,
}

/// A record could not be made durable; the sender should retry it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// Stop now (sent by the router once it has forgotten this contact).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Set by the router the moment it lets a contact go (finished, or its shard has left this
/// worker), before [`Stop`] is queued: a halted actor takes no input, records no outcome and
/// dispatches nothing, whatever still waits in its mailbox, so that only one actor anywhere
/// acts for the contact.
#[derive(Debug, Clone, Default)]
pub struct Halt(Arc<AtomicBool>);

impl Halt {
    /// Halts the actor.
    pub fn halt(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the actor is halted.
    pub fn is_halted(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A report of the contact's audio reader; answered once it is durable.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct HearAudio(pub AudioReport);

/// The audio reader's way to the actor.
struct ToActor(Addr<ContactActor>);

#[async_trait::async_trait]
impl AudioSink for ToActor {
    async fn report(&self, report: AudioReport) -> Result<(), String> {
        self.0
            .send(HearAudio(report))
            .await
            .map_err(|e| format!("the contact's actor is gone: {e}"))?
    }
}

/// Whether the contact still owes work (due or in flight).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct IsBusy;

/// Tries at saving a summary version to the summary sink before giving up until the next
/// start.
const SAVE_ATTEMPTS: u32 = 6;

/// What is dispatched and awaited.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum InFlight {
    Sentiment(String),
    Attributes(u64),
    Summary(u32),
    /// Writing a summary version to the summary sink.
    SavingSummary(u32),
    /// Reading the call's audio.
    Audio,
}

/// The actor of one contact.
pub struct ContactActor {
    id: String,
    services: Arc<Services>,
    contact: Option<Contact>,
    in_flight: HashSet<InFlight>,
    /// An append is out. actix's `ctx.wait` does not hold back a spawned future that
    /// finishes in the same turn as a handler (actix/actix#458), so appends are kept one at
    /// a time here: a second one would be sealed on the same head and conflict.
    appending: bool,
    /// Outcomes that came in while an append was out, recorded in order after it.
    deferred: VecDeque<(Command, Vec<InFlight>)>,
    last_input: Instant,
    /// Let go by the router. The supervisor still restarts an actor whose address is held
    /// somewhere (a reply recipient, an activity poll); such a restart stays idle, without
    /// loading the log or keeping timers, and ends when the last holder lets go.
    halt: Halt,
    /// Whether this actor counts in `open_contacts`.
    counted: bool,
    /// Why the contact's log cannot be loaded (a broken chain, an undecodable event), once
    /// it is known: the contact takes no input and does no work.
    quarantined: Option<String>,
    /// The audio reader, while one runs.
    audio_reader: Option<tokio::task::JoinHandle<()>>,
    /// Tells the audio reader once the call has ended.
    call_ended: tokio::sync::watch::Sender<bool>,
}

impl ContactActor {
    /// An actor for contact `id`, halted through `halt`; it loads its log when started.
    pub fn new(id: String, services: Arc<Services>, halt: Halt) -> Self {
        Self {
            id,
            services,
            contact: None,
            in_flight: HashSet::new(),
            appending: false,
            deferred: VecDeque::new(),
            last_input: Instant::now(),
            halt,
            counted: false,
            quarantined: None,
            audio_reader: None,
            call_ended: tokio::sync::watch::Sender::new(false),
        }
    }

    fn load(&mut self, ctx: &mut Context<Self>) {
        let (store, id, rules) = (
            self.services.store.clone(),
            self.id.clone(),
            self.services.rules.clone(),
        );
        let fut = async move {
            match store.read(&id, SeqRange::all()).await {
                Ok(events) => Ok(Contact::load(id, rules, &events)),
                Err(e) => Err(e.to_string()),
            }
        };
        ctx.wait(fut.into_actor(self).map(|loaded, act, ctx| match loaded {
            Ok(Ok(contact)) => {
                act.contact = Some(contact);
                act.resave_latest_summary(ctx);
                act.reconcile(ctx);
            }
            Ok(Err(broken)) => {
                // Reading again gives the same log: quarantine the contact once instead of
                // retrying forever; its records are refused into the reject log.
                metrics().contacts_quarantined.inc();
                tracing::error!(contact = %act.id, error = %broken, "the contact's log fails verification or decoding: quarantined (see `callpulse verify`)");
                act.quarantined = Some(broken);
            }
            Err(error) => {
                tracing::error!(contact = %act.id, %error, "cannot read the contact's log; retrying in 1 s");
                ctx.run_later(Duration::from_secs(1), |act, ctx| act.load(ctx));
            }
        }));
    }

    /// Seals `events`, appends them, applies them, takes the work they record (`done`) out
    /// of flight, and dispatches what is due next. Runs atomically.
    fn persist(
        &mut self,
        events: Vec<Event>,
        source_id: Option<String>,
        done: Vec<InFlight>,
    ) -> impl ActorFuture<Self, Output = Result<InputOutcome, InputError>> + use<> {
        let contact = self
            .contact
            .as_ref()
            .expect("loaded before any handler runs");
        let stored =
            contact
                .head
                .clone()
                .seal_all(&self.id, source_id.as_deref(), &events, Utc::now());
        let store = self.services.store.clone();
        let to_store = stored.clone();
        debug_assert!(!self.appending, "one append at a time");
        self.appending = true;
        async move {
            let started = Instant::now();
            let result = store.append(&to_store).await;
            metrics().appends.inc();
            metrics()
                .append_batch_duration
                .observe(started.elapsed().as_secs_f64());
            result
        }
        .into_actor(self)
        .map(move |result, act, ctx| {
            act.appending = false;
            let outcome = act.appended(result, &stored, &events, done, ctx);
            if let Some((command, done)) = act.deferred.pop_front() {
                act.handle_outcome(command, done, ctx);
            }
            outcome
        })
    }

    /// What an append's result means for the actor: applied, someone else's write, refused.
    fn appended(
        &mut self,
        result: Result<Appended, StoreError>,
        stored: &[crate::events::StoredEvent],
        events: &[Event],
        done: Vec<InFlight>,
        ctx: &mut Context<Self>,
    ) -> Result<InputOutcome, InputError> {
        match result {
            Ok(Appended::Written { .. }) => {
                metrics().events_appended.inc_by(stored.len() as u64);
                let contact = self.contact.as_mut().expect("loaded");
                for (s, e) in stored.iter().zip(events) {
                    contact.apply(s, e);
                }
                for key in &done {
                    self.in_flight.remove(key);
                }
                self.after_apply(events, ctx);
                Ok(InputOutcome::Appended(stored.len()))
            }
            Ok(Appended::Duplicate { last_seq, .. }) => {
                if self.contact.as_ref().is_some_and(|c| c.head.seq < last_seq) {
                    // Someone else wrote this contact: start over from the log.
                    ctx.stop();
                }
                Ok(InputOutcome::Duplicate)
            }
            Err(e @ StoreError::Conflict { .. }) => {
                tracing::warn!(contact = %self.id, error = %e, "append conflict; reloading");
                ctx.stop();
                Err(InputError(e.to_string()))
            }
            Err(e @ StoreError::TooLarge { .. }) | Err(e @ StoreError::InvalidBatch(_)) => {
                Ok(InputOutcome::Refused(e.to_string()))
            }
            Err(e) => Err(InputError(e.to_string())),
        }
    }

    fn after_apply(&mut self, events: &[Event], ctx: &mut Context<Self>) {
        for event in events {
            match event {
                Event::EscalationRaised(e) => {
                    metrics().escalations.inc();
                    tracing::info!(contact = %self.id, rule = %e.rule, "escalation raised");
                }
                Event::SummaryGenerated(_) => metrics().summaries.with_label_values(&["ok"]).inc(),
                Event::SummaryFailed(_) => metrics().summaries.with_label_values(&["failed"]).inc(),
                _ => {}
            }
        }
        self.reconcile(ctx);
    }

    /// Saves a summary to the sink (only if it is not there yet, when `only_missing`),
    /// retrying; answers once it is saved or every try has failed.
    fn save_summary(
        &self,
        summary: SummaryGenerated,
        only_missing: bool,
    ) -> impl Future<Output = ()> + use<> {
        let sink = self.services.summaries.clone();
        let id = self.id.clone();
        async move {
            if only_missing && sink.has(&id, summary.version).await {
                return;
            }
            for attempt in 1..=SAVE_ATTEMPTS {
                match sink.save(&id, &summary).await {
                    Ok(()) => return,
                    Err(error) if attempt < SAVE_ATTEMPTS => {
                        tracing::warn!(contact = %id, %error, attempt, "saving the summary failed; retrying");
                        tokio::time::sleep(backoff(500, 30_000, attempt)).await;
                    }
                    Err(error) => {
                        metrics().summaries.with_label_values(&["unsaved"]).inc();
                        tracing::error!(contact = %id, %error, "saving the summary failed for good; it is recorded anyway, the next start or `resend` saves it");
                    }
                }
            }
        }
    }

    /// A summary the model wrote: saved to the sink first, then recorded, so that a summary
    /// in the log is one the sink has. A crash (or a hand-over) in between leaves the
    /// summary owed, and it is written and saved again; it is never left unsaved. Only when
    /// every save fails is it recorded unsaved (counted; the next load or `summaries resend`
    /// saves it).
    fn save_then_record(&mut self, summary: SummaryGenerated, ctx: &mut Context<Self>) {
        let done = vec![InFlight::Summary(summary.version)];
        let recordable = self.contact.as_ref().is_some_and(|c| {
            c.decide(Command::Summarised(summary.clone()), Utc::now())
                .is_ok_and(|events| !events.is_empty())
        });
        if self.halt.is_halted() || !recordable {
            // Nothing to save: recording it is ignored or refused.
            return self.handle_outcome(Command::Summarised(summary), done, ctx);
        }
        let save = self.save_summary(summary.clone(), false);
        ctx.spawn(
            save.into_actor(self).map(move |(), act, ctx| {
                tracing::info!(contact = %act.id, version = summary.version, "summary saved; recording it");
                act.handle_outcome(Command::Summarised(summary), done, ctx)
            }),
        );
    }

    /// After a restart: the latest summary is in the log, but was it saved (every save of it
    /// may have failed)? The contact is not passivated while this runs.
    fn resave_latest_summary(&mut self, ctx: &mut Context<Self>) {
        let Some(summary) = self.contact.as_ref().and_then(|c| c.latest_summary.clone()) else {
            return;
        };
        let key = InFlight::SavingSummary(summary.version);
        if !self.in_flight.insert(key.clone()) {
            return;
        }
        ctx.spawn(
            self.save_summary(summary, true)
                .into_actor(self)
                .map(move |(), act, ctx| {
                    act.in_flight.remove(&key);
                    act.reconcile(ctx);
                }),
        );
    }

    /// Dispatches due work that is not in flight; passivates a finished contact.
    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        let Some(contact) = self.contact.as_ref().filter(|_| !self.halt.is_halted()) else {
            return;
        };
        self.call_ended.send_replace(contact.ended.is_some());
        if self.services.audio.is_some()
            && let Some(started) = contact.wants_audio()
        {
            return self.handle_outcome(Command::AudioStart(started), Vec::new(), ctx);
        }
        let due = contact.due();
        for work in &due {
            match work {
                Due::Sentiment {
                    segment_id,
                    participant,
                    text,
                } => {
                    if self
                        .in_flight
                        .insert(InFlight::Sentiment(segment_id.to_string()))
                    {
                        self.services.gateway.do_send(JudgeUtterance {
                            contact_id: self.id.clone(),
                            segment_id: segment_id.to_string(),
                            participant: *participant,
                            text: text.to_string(),
                            context: context_before(
                                contact,
                                segment_id,
                                self.services.context_turns,
                            ),
                            reply: ctx.address().recipient(),
                        });
                    }
                }
                Due::Attributes {
                    for_seq,
                    attributes,
                } => {
                    if self.in_flight.insert(InFlight::Attributes(*for_seq)) {
                        self.services.attributes.do_send(SetAttributes {
                            contact_id: self.id.clone(),
                            for_seq: *for_seq,
                            attributes: (*attributes).clone(),
                            reply: ctx.address().recipient(),
                        });
                    }
                }
                Due::Summary { version } => {
                    if self.in_flight.insert(InFlight::Summary(*version)) {
                        self.services.gateway.do_send(WriteSummary {
                            contact_id: self.id.clone(),
                            version: *version,
                            turns: contact.turns(),
                            reply: ctx.address().recipient(),
                        });
                    }
                }
                Due::Audio(progress) => {
                    if let Some(audio) = &self.services.audio
                        && self.in_flight.insert(InFlight::Audio)
                    {
                        let reader = AudioReader::new(
                            audio.clone(),
                            self.id.clone(),
                            progress,
                            self.call_ended.subscribe(),
                            Arc::new(ToActor(ctx.address())),
                        );
                        self.audio_reader = Some(actix::spawn(reader.run()));
                    }
                }
            }
        }
        if contact.ended.is_some() && due.is_empty() && self.in_flight.is_empty() {
            self.services.router.do_send(Passivate {
                contact_id: self.id.clone(),
            });
        }
    }

    /// Appends what an outcome means, atomically; a refused one is only logged. The work
    /// `done` stays in flight until the outcome is applied: actix may run a spawned future
    /// between this handler and the append, and its reconcile must not dispatch the same
    /// work again.
    fn handle_outcome(&mut self, command: Command, done: Vec<InFlight>, ctx: &mut Context<Self>) {
        if self.halt.is_halted() {
            tracing::info!(contact = %self.id, "let go before an outcome was recorded; whoever runs the contact now redoes the work");
            return;
        }
        if self.appending {
            self.deferred.push_back((command, done));
            return;
        }
        let Some(contact) = self.contact.as_ref() else {
            return;
        };
        let retry = command.clone();
        match contact.decide(command, Utc::now()) {
            Ok(events) if !events.is_empty() => {
                let fut = self
                    .persist(events, None, done.clone())
                    .map(move |result, act, ctx| match result {
                        Ok(InputOutcome::Appended(_)) => {}
                        Ok(_) => act.finish(&done, ctx),
                        Err(error) => {
                            // The work is done, only its record is missing: record it again
                            // after a pause (never redo the model call or the update). The
                            // work stays in flight meanwhile.
                            tracing::warn!(contact = %act.id, %error, "could not record a model or sink outcome; retrying the append");
                            metrics().outcome_append_retries.inc();
                            ctx.run_later(Duration::from_secs(1), move |act, ctx| {
                                act.handle_outcome(retry, done, ctx)
                            });
                        }
                    });
                ctx.wait(fut);
            }
            Ok(_) => self.finish(&done, ctx),
            Err(refusal) => {
                tracing::debug!(contact = %self.id, %refusal, "outcome ignored");
                self.finish(&done, ctx);
            }
        }
    }

    /// Takes finished work out of flight and dispatches what is due next.
    fn finish(&mut self, done: &[InFlight], ctx: &mut Context<Self>) {
        for key in done {
            self.in_flight.remove(key);
        }
        self.reconcile(ctx);
    }

    /// Stops the audio reader (a restart resumes it from its checkpoint).
    fn stop_audio(&mut self) {
        if let Some(reader) = self.audio_reader.take() {
            reader.abort();
        }
    }

    fn check_idle(&mut self, ctx: &mut Context<Self>) {
        let Some(contact) = self.contact.as_ref().filter(|_| !self.halt.is_halted()) else {
            return;
        };
        if self.appending
            || contact.ended.is_some()
            || self.last_input.elapsed() < self.services.idle_timeout
        {
            return;
        }
        let command = Command::End(ContactEnded {
            ended_at: Utc::now(),
            reason: EndReason::IdleTimeout,
        });
        if let Ok(events) = contact.decide(command, Utc::now()) {
            tracing::info!(contact = %self.id, "idle timeout: ending the contact");
            let fut = self
                .persist(events, Some("idle-timeout".into()), Vec::new())
                .map(|_, _, _| ());
            ctx.wait(fut);
        }
    }
}

/// Up to `n` turns spoken before `segment_id`.
fn context_before(contact: &Contact, segment_id: &str, n: usize) -> Vec<crate::models::Turn> {
    if n == 0 {
        return Vec::new();
    }
    let index = contact
        .spoken
        .iter()
        .position(|s| s.segment_id == segment_id)
        .unwrap_or(contact.spoken.len());
    contact.spoken[index.saturating_sub(n)..index]
        .iter()
        .map(|s| crate::models::Turn::new(s.participant.as_str(), s.text.clone()))
        .collect()
}

/// The command a record stands for.
fn command_for(record: Record) -> Command {
    match record {
        Record::Started {
            instance_id,
            timestamp,
            channel,
            media_stream_arn,
            start_fragment_number,
            ..
        } => Command::Start(ContactStarted {
            instance_id,
            channel,
            started_at: timestamp.unwrap_or_else(Utc::now),
            media_stream_arn,
            start_fragment_number,
            implicit: false,
            rules: None,
        }),
        Record::Segment(s) => Command::Utterance {
            utterance: UtteranceReceived {
                segment_id: s.segment_id.unwrap_or_default(),
                participant: Participant::parse(s.participant.as_deref()),
                text: s.transcript,
                begin_offset_millis: s.begin_offset_millis,
                end_offset_millis: s.end_offset_millis,
                redactions: s.redactions,
            },
            at: Utc::now(),
        },
        Record::Ended { timestamp, .. } => Command::End(ContactEnded {
            ended_at: timestamp.unwrap_or_else(Utc::now),
            reason: EndReason::Ended,
        }),
    }
}

impl Actor for ContactActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.halt.is_halted() {
            return;
        }
        self.counted = true;
        metrics().open_contacts.inc();
        self.load(ctx);
        let every = (self.services.idle_timeout / 4).max(Duration::from_millis(50));
        ctx.run_interval(every, |act, ctx| act.check_idle(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.stop_audio();
        if !self.in_flight.is_empty() {
            tracing::info!(contact = %self.id, in_flight = ?self.in_flight, "stopped with work in flight; it is redone from the log");
        }
        if std::mem::take(&mut self.counted) {
            metrics().open_contacts.dec();
        }
    }
}

impl Supervised for ContactActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        if !self.halt.is_halted() {
            tracing::info!(contact = %self.id, "restarting from the log");
        }
        self.stop_audio();
        self.contact = None;
        self.in_flight.clear();
        self.appending = false;
        self.deferred.clear();
        // A reload follows someone else's write (another worker took the call over): the
        // call is live, and gets a whole idle period again before this actor ends it.
        self.last_input = Instant::now();
    }
}

impl Handler<ContactInput> for ContactActor {
    type Result = AtomicResponse<Self, Result<InputOutcome, InputError>>;

    fn handle(&mut self, input: ContactInput, _ctx: &mut Context<Self>) -> Self::Result {
        if self.halt.is_halted() {
            // Queued before the router let go: sent again, it reaches whoever runs the
            // contact now (or is answered NotOwned).
            return AtomicResponse::new(Box::pin(fut::ready(Err(InputError(format!(
                "contact {} was let go here before this record was handled",
                self.id
            ))))));
        }
        self.last_input = Instant::now();
        if let Some(broken) = &self.quarantined {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(InputOutcome::Refused(format!(
                "contact {} is quarantined: its log fails verification ({broken}); see `callpulse verify {}`",
                self.id, self.id
            ))))));
        }
        let Some(contact) = self.contact.as_ref() else {
            return AtomicResponse::new(Box::pin(fut::ready(Err(InputError(
                "contact log not loaded yet (store unavailable?)".into(),
            )))));
        };
        if self.appending {
            // Not reached while the mailbox waits for appends; answered like a busy store
            // rather than sealing a second batch on the same head.
            return AtomicResponse::new(Box::pin(fut::ready(Err(InputError(
                "an append of this contact is still out".into(),
            )))));
        }
        match contact.decide(command_for(input.record), Utc::now()) {
            Ok(events) if events.is_empty() => {
                AtomicResponse::new(Box::pin(fut::ready(Ok(InputOutcome::Duplicate))))
            }
            Ok(events) => AtomicResponse::new(Box::pin(self.persist(
                events,
                Some(input.source_id),
                Vec::new(),
            ))),
            Err(refusal) => AtomicResponse::new(Box::pin(fut::ready(Ok(InputOutcome::Refused(
                refusal.to_string(),
            ))))),
        }
    }
}

impl Handler<ModelOutcome> for ContactActor {
    type Result = ();

    fn handle(&mut self, outcome: ModelOutcome, ctx: &mut Context<Self>) {
        let (command, done) = match outcome {
            ModelOutcome::Judged(j) => {
                let done = std::iter::once(&j.segment_id)
                    .chain(&j.coalesced)
                    .map(|s| InFlight::Sentiment(s.clone()))
                    .collect();
                (Command::Judged(j), done)
            }
            ModelOutcome::Skipped(s) => {
                let done = s
                    .segment_ids
                    .iter()
                    .map(|s| InFlight::Sentiment(s.clone()))
                    .collect();
                (Command::Skipped(s), done)
            }
            ModelOutcome::Summarised(s) => return self.save_then_record(s, ctx),
            ModelOutcome::SummaryFailed(f) => {
                let done = vec![InFlight::Summary(f.version)];
                (Command::SummaryFailed(f), done)
            }
        };
        self.handle_outcome(command, done, ctx);
    }
}

impl Handler<AttributeOutcome> for ContactActor {
    type Result = ();

    fn handle(&mut self, outcome: AttributeOutcome, ctx: &mut Context<Self>) {
        let (command, for_seq) = match outcome {
            AttributeOutcome::Updated(u) => {
                let for_seq = u.for_seq;
                (Command::AttributesSet(u), for_seq)
            }
            AttributeOutcome::Failed(f) => {
                let for_seq = f.for_seq;
                (Command::AttributesFailed(f), for_seq)
            }
        };
        self.handle_outcome(command, vec![InFlight::Attributes(for_seq)], ctx);
    }
}

impl Handler<HearAudio> for ContactActor {
    type Result = AtomicResponse<Self, Result<(), String>>;

    fn handle(&mut self, HearAudio(report): HearAudio, ctx: &mut Context<Self>) -> Self::Result {
        let refused = |why: String| AtomicResponse::new(Box::pin(fut::ready(Err(why))));
        if self.halt.is_halted() {
            return refused(format!("contact {} was let go here", self.id));
        }
        if self.appending {
            return refused("an append of this contact is still out".into());
        }
        let Some(contact) = self.contact.as_ref() else {
            return refused("contact log not loaded yet".into());
        };
        self.last_input = Instant::now();
        let (command, source_id, done) = match report {
            AudioReport::Heard {
                utterance,
                source_id,
            } => (
                Command::Utterance {
                    utterance,
                    at: Utc::now(),
                },
                Some(source_id),
                Vec::new(),
            ),
            AudioReport::Checkpoint(checkpoint) => {
                (Command::AudioProgress(checkpoint), None, Vec::new())
            }
            AudioReport::Failed(failed) => (Command::AudioFailed(failed), None, Vec::new()),
            AudioReport::Ended(ended) => {
                self.audio_reader = None;
                (Command::AudioEnd(ended), None, vec![InFlight::Audio])
            }
        };
        match contact.decide(command, Utc::now()) {
            Ok(events) if !events.is_empty() => AtomicResponse::new(Box::pin(
                self.persist(events, source_id, done)
                    .map(|result, _, _| result.map(|_| ()).map_err(|e| e.0)),
            )),
            Ok(_) => {
                self.finish(&done, ctx);
                AtomicResponse::new(Box::pin(fut::ready(Ok(()))))
            }
            Err(refusal) => {
                tracing::debug!(contact = %self.id, %refusal, "audio report ignored");
                self.finish(&done, ctx);
                AtomicResponse::new(Box::pin(fut::ready(Ok(()))))
            }
        }
    }
}

impl Handler<Stop> for ContactActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<IsBusy> for ContactActor {
    type Result = bool;

    fn handle(&mut self, _: IsBusy, _: &mut Context<Self>) -> bool {
        !self.halt.is_halted()
            && (!self.in_flight.is_empty()
                || self.contact.as_ref().is_none_or(|c| !c.due().is_empty()))
    }
}
