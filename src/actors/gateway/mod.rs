//! ModelGateway: owns every model call. Per-model limits (requests/s, tokens/min,
//! concurrency), live sentiment before summaries (up to `summary_max_defer_ms`), customer
//! utterances before agent turns, coalescing of a contact's queued sentiment requests (a new
//! utterance joins the contact's request still waiting, for the same speaker and up to
//! `max_coalesced` utterances, so an overloaded model catches up instead of falling further
//! behind), deadlines, and retries with jittered backoff. Late sentiment is skipped and
//! reported, except a contact's latest customer utterance, which is always judged; summaries
//! are never dropped.
//!
//! Here: the config, the messages and the actor, which starts every call the limits allow
//! and keeps the book of who awaits what; `queue` holds the waiting requests (ordering,
//! coalescing), `lane` each model's limits and running calls, `calls` the model calls
//! themselves (outcomes, retries, metrics).

mod calls;
mod lane;
mod queue;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use self::lane::{Lane, estimate_tokens};
use self::queue::{SentimentJob, SentimentQueue, SummaryJob, Work};
use crate::events::{
    ModelCallSkipped, ModelTask, Participant, SentimentAssessed, SummaryFailed, SummaryGenerated,
};
use crate::metrics::metrics;
use crate::models::{CancellationToken, SentimentClassifier, Summariser, Turn};

/// Limits for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelLimits {
    /// Calls per second (0 = no limit).
    pub requests_per_second: u32,
    /// Input + output tokens per minute, estimated before each call (0 = no limit).
    pub tokens_per_minute: u32,
    /// Calls running at once.
    pub concurrency: usize,
}

impl Default for ModelLimits {
    fn default() -> Self {
        Self {
            requests_per_second: 0,
            tokens_per_minute: 0,
            concurrency: 1,
        }
    }
}

/// The `[gateway]` config table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// A sentiment request not started within this many ms of its newest utterance is
    /// skipped (and recorded as skipped) when it is an agent turn or a newer customer
    /// utterance of the same contact waits; a contact's latest customer utterance is
    /// always judged.
    pub sentiment_deadline_ms: u64,
    /// Most queued sentiment requests; beyond it the oldest is skipped.
    pub max_queued_sentiment: usize,
    /// Most utterances of one speaker judged together when a contact's requests queue up
    /// (1 = never merge: every utterance gets its own call, however late).
    pub max_coalesced: usize,
    /// Tries per sentiment call on transient errors.
    pub sentiment_attempts: u32,
    /// Longest a summary waits behind queued sentiment for the same model, ms; after it,
    /// the summary takes the next free slot.
    pub summary_max_defer_ms: u64,
    /// First retry delay, ms (doubled per try, with jitter).
    pub retry_base_ms: u64,
    /// Longest retry delay, ms.
    pub retry_max_ms: u64,
    /// Limits for any model not listed in `models`.
    pub limits: ModelLimits,
    /// Limits per model id.
    pub models: HashMap<String, ModelLimits>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            sentiment_deadline_ms: 5_000,
            max_queued_sentiment: 100_000,
            max_coalesced: 4,
            sentiment_attempts: 3,
            summary_max_defer_ms: 30_000,
            retry_base_ms: 200,
            retry_max_ms: 30_000,
            limits: ModelLimits::default(),
            models: HashMap::new(),
        }
    }
}

/// The models the gateway calls, with the ids their limits are keyed by. The same id for
/// both means one engine: they share its concurrency and rate limits.
#[derive(Clone)]
pub struct Backends {
    /// Judges utterances.
    pub sentiment: Arc<dyn SentimentClassifier>,
    /// Its id.
    pub sentiment_id: String,
    /// Writes summaries.
    pub summariser: Arc<dyn Summariser>,
    /// Its id.
    pub summary_id: String,
}

/// What the gateway sends back to a contact.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum ModelOutcome {
    /// An utterance (or several, coalesced) was judged.
    Judged(SentimentAssessed),
    /// A sentiment call was given up.
    Skipped(ModelCallSkipped),
    /// A summary was written.
    Summarised(SummaryGenerated),
    /// A summary attempt produced nothing usable.
    SummaryFailed(SummaryFailed),
}

/// Judge one utterance of a contact.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JudgeUtterance {
    /// The contact.
    pub contact_id: String,
    /// The utterance.
    pub segment_id: String,
    /// Who spoke.
    pub participant: Participant,
    /// What was said.
    pub text: String,
    /// Earlier turns shown as context.
    pub context: Vec<Turn>,
    /// Where the outcome goes.
    pub reply: Recipient<ModelOutcome>,
}

/// Write summary `version` of a contact.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriteSummary {
    /// The contact.
    pub contact_id: String,
    /// The version to write.
    pub version: u32,
    /// The whole call.
    pub turns: Vec<Turn>,
    /// Where the outcome goes.
    pub reply: Recipient<ModelOutcome>,
}

/// How many requests wait, per task (for metrics and tests).
#[derive(Message)]
#[rtype(result = "QueueDepth")]
pub struct GetQueueDepth;

/// Queued and running requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub struct QueueDepth {
    /// Sentiment requests waiting.
    pub sentiment_queued: usize,
    /// Summary requests waiting.
    pub summaries_queued: usize,
    /// Calls running.
    pub running: usize,
}

/// The gateway actor.
pub struct ModelGateway {
    config: GatewayConfig,
    backends: Backends,
    lanes: HashMap<String, Lane>,
    sentiment: SentimentQueue,
    summaries: VecDeque<SummaryJob>,
    /// When the earliest pending wake-up fires.
    wake_at: Option<Instant>,
    /// Where the outcome of each request queued or running goes. A contact actor that
    /// restarts asks again for what it still awaits: the request is not queued twice (the
    /// model is not called twice), only its answer is sent to the latest asker.
    replies: HashMap<(String, Work), Recipient<ModelOutcome>>,
    cancel: CancellationToken,
}

impl ModelGateway {
    /// A gateway over `backends`.
    pub fn new(config: GatewayConfig, backends: Backends) -> Self {
        let mut lanes = HashMap::new();
        for id in [&backends.sentiment_id, &backends.summary_id] {
            let limits = config.models.get(id).unwrap_or(&config.limits).clone();
            lanes.entry(id.clone()).or_insert_with(|| Lane::new(limits));
        }
        Self {
            config,
            backends,
            lanes,
            sentiment: SentimentQueue::default(),
            summaries: VecDeque::new(),
            wake_at: None,
            replies: HashMap::new(),
            cancel: CancellationToken::new(),
        }
    }

    fn lane(&mut self, id: &str) -> &mut Lane {
        self.lanes.get_mut(id).expect("a lane per backend")
    }

    /// Starts every call the limits allow, sentiment first.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let mut wait: Option<Duration> = None;
        // A summary put off for `summary_max_defer_ms` takes the next slot of a model it
        // shares with sentiment: steady sentiment load never starves summaries.
        let max_defer = Duration::from_millis(self.config.summary_max_defer_ms);
        let overdue = self
            .summaries
            .front()
            .is_some_and(|job| job.enqueued.elapsed() >= max_defer);
        if overdue {
            self.pump_summaries(&mut wait, ctx);
        }
        self.pump_sentiment(&mut wait, ctx);
        self.pump_summaries(&mut wait, ctx);
        let depth = &metrics().queue_depth;
        depth
            .with_label_values(&["sentiment"])
            .set(self.sentiment.len() as i64);
        depth
            .with_label_values(&["summary"])
            .set(self.summaries.len() as i64);
        // One timer per sooner deadline: a long wait (a summary's token budget) never
        // delays a short one (a sentiment call's rate limit).
        if let Some(wait) = wait {
            let at = Instant::now() + wait;
            if self.wake_at.is_none_or(|pending| at < pending) {
                self.wake_at = Some(at);
                ctx.run_later(wait, move |act, ctx| {
                    if act.wake_at == Some(at) {
                        act.wake_at = None;
                    }
                    act.pump(ctx);
                });
            }
        }
    }

    /// Starts the sentiment calls the limits allow, dropping stale ones.
    fn pump_sentiment(&mut self, wait: &mut Option<Duration>, ctx: &mut Context<Self>) {
        let deadline = Duration::from_millis(self.config.sentiment_deadline_ms);
        while let Some(front) = self.sentiment.front() {
            // Past its deadline, a job is dropped only if it is an agent turn or a newer
            // customer utterance of the same contact waits: each contact's latest customer
            // utterance is always judged, late if need be.
            if front.newest.elapsed() > deadline && (front.agent || front.superseded) {
                let job = self.sentiment.pop_front_of(front.agent).expect("present");
                self.skip(job, "deadline passed before a model slot was free");
                continue;
            }
            let id = self.backends.sentiment_id.clone();
            match self.lane(&id).admit(front.tokens) {
                Ok(()) => {
                    let job = self.sentiment.pop_front_of(front.agent).expect("present");
                    self.start_sentiment(job, ctx);
                }
                Err(w) => {
                    *wait = earliest(*wait, w);
                    break;
                }
            }
        }
    }

    /// Starts the summary calls the limits allow; while sentiment waits for the same model,
    /// only those put off for `summary_max_defer_ms`.
    fn pump_summaries(&mut self, wait: &mut Option<Duration>, ctx: &mut Context<Self>) {
        let max_defer = Duration::from_millis(self.config.summary_max_defer_ms);
        while let Some(job) = self.summaries.front() {
            let id = self.backends.summary_id.clone();
            let deferred = job.enqueued.elapsed();
            if self.sentiment.len() > 0 && id == self.backends.sentiment_id && deferred < max_defer
            {
                *wait = earliest(*wait, Some(max_defer - deferred));
                break;
            }
            let tokens = estimate_tokens(job.request.turns.iter().map(|t| t.text.len()).sum());
            match self.lane(&id).admit(tokens) {
                Ok(()) => {
                    let job = self.summaries.pop_front().expect("present");
                    self.start_summary(job, ctx);
                }
                Err(w) => {
                    *wait = earliest(*wait, w);
                    break;
                }
            }
        }
    }

    /// Whether `work` of `contact` is already queued or running; either way its outcome
    /// goes to `reply` from now on.
    fn already_held(&mut self, contact: &str, work: Work, reply: &Recipient<ModelOutcome>) -> bool {
        self.replies
            .insert((contact.to_string(), work), reply.clone())
            .is_some()
    }

    /// Takes finished `work` of `contact` off the books: where its outcome goes.
    fn settle(
        &mut self,
        contact: &str,
        work: Vec<Work>,
        fallback: &Recipient<ModelOutcome>,
    ) -> Recipient<ModelOutcome> {
        let mut reply = None;
        for work in work {
            if let Some(to) = self.replies.remove(&(contact.to_string(), work)) {
                reply.get_or_insert(to);
            }
        }
        reply.unwrap_or_else(|| fallback.clone())
    }

    /// Gives a sentiment job up and reports it as skipped.
    fn skip(&mut self, job: SentimentJob, why: &str) {
        metrics()
            .model_calls
            .with_label_values(&["sentiment", "-", "skipped"])
            .inc();
        let reply = self.settle(&job.request.contact_id, job.work(), &job.request.reply);
        let mut segment_ids = job.coalesced;
        segment_ids.push(job.request.segment_id.clone());
        reply.do_send(ModelOutcome::Skipped(ModelCallSkipped {
            task: ModelTask::Sentiment,
            segment_ids,
            why: why.to_string(),
            stale_ms: job.enqueued.elapsed().as_millis() as u64,
        }));
    }
}

/// The sooner of two optional waits.
fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Actor for ModelGateway {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.cancel.cancel();
    }
}

impl Handler<JudgeUtterance> for ModelGateway {
    type Result = ();

    fn handle(&mut self, request: JudgeUtterance, ctx: &mut Context<Self>) {
        let work = Work::Sentiment(request.segment_id.clone());
        if self.already_held(&request.contact_id, work, &request.reply) {
            return;
        }
        if let Some(oldest) = self.sentiment.push(
            request,
            self.config.max_coalesced.max(1),
            self.config.max_queued_sentiment,
        ) {
            self.skip(oldest, "sentiment queue full (overload)");
        }
        self.pump(ctx);
    }
}

impl Handler<WriteSummary> for ModelGateway {
    type Result = ();

    fn handle(&mut self, request: WriteSummary, ctx: &mut Context<Self>) {
        let work = Work::Summary(request.version);
        if self.already_held(&request.contact_id, work, &request.reply) {
            return;
        }
        self.summaries.push_back(SummaryJob {
            request,
            attempts: 0,
            enqueued: Instant::now(),
        });
        self.pump(ctx);
    }
}

impl Handler<GetQueueDepth> for ModelGateway {
    type Result = QueueDepth;

    fn handle(&mut self, _: GetQueueDepth, _: &mut Context<Self>) -> QueueDepth {
        QueueDepth {
            sentiment_queued: self.sentiment.len(),
            summaries_queued: self.summaries.len(),
            running: self.lanes.values().map(|l| l.running).sum(),
        }
    }
}
