//! ModelGateway: owns every model call. Per-model limits (requests/s, tokens/min,
//! concurrency), live sentiment before summaries (up to `summary_max_defer_ms`), customer
//! utterances before agent turns, coalescing of a contact's queued sentiment requests (a new
//! utterance joins the contact's request still waiting, for the same speaker and up to
//! `max_coalesced` utterances, so an overloaded model catches up instead of falling further
//! behind), deadlines, and retries with jittered backoff. Late sentiment is skipped and
//! reported, except a contact's latest customer utterance, which is always judged; summaries
//! are never dropped.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::backoff::backoff;
use crate::events::{
    ModelCallSkipped, ModelTask, Participant, SentimentAssessed, SummaryFailed, SummaryGenerated,
};
use crate::metrics::metrics;
use crate::models::{CancellationToken, ModelError, SentimentClassifier, Summariser, Turn, Usage};

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

/// What a model request is for, within its contact: the gateway holds each at most once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Work {
    Sentiment(String),
    Summary(u32),
}

impl SentimentJob {
    /// The utterances it judges.
    fn work(&self) -> Vec<Work> {
        std::iter::once(&self.request.segment_id)
            .chain(&self.coalesced)
            .map(|s| Work::Sentiment(s.clone()))
            .collect()
    }
}

struct SentimentJob {
    request: JudgeUtterance,
    coalesced: Vec<String>,
    enqueued: Instant,
    newest: Instant,
    attempts: u32,
}

struct SummaryJob {
    request: WriteSummary,
    attempts: u32,
    enqueued: Instant,
}

/// Waiting sentiment jobs of one class of speaker: first come, first served across
/// contacts; a contact's new utterance joins its last waiting job when the speaker is the
/// same and there is room.
#[derive(Default)]
struct ContactFifo {
    order: VecDeque<String>,
    jobs: HashMap<String, VecDeque<SentimentJob>>,
    len: usize,
}

impl ContactFifo {
    /// Merges `request` into the contact's last waiting job when it can; gives it back
    /// otherwise.
    fn coalesce(
        &mut self,
        request: JudgeUtterance,
        max_coalesced: usize,
    ) -> Option<JudgeUtterance> {
        let Some(last) = self
            .jobs
            .get_mut(&request.contact_id)
            .and_then(|q| q.back_mut())
            .filter(|last| {
                last.request.participant == request.participant
                    && last.coalesced.len() + 1 < max_coalesced
            })
        else {
            return Some(request);
        };
        let older = std::mem::replace(&mut last.request, request);
        last.coalesced.push(older.segment_id);
        last.request.text = format!("{}\n{}", older.text, last.request.text);
        last.newest = Instant::now();
        None
    }

    fn push_job(&mut self, job: SentimentJob, front: bool) {
        let contact = job.request.contact_id.clone();
        let queue = self.jobs.entry(contact.clone()).or_default();
        if front {
            queue.push_front(job);
            self.order.push_front(contact);
        } else {
            queue.push_back(job);
            self.order.push_back(contact);
        }
        self.len += 1;
    }

    /// The oldest job, and whether a newer job of the same contact waits behind it.
    fn front(&self) -> Option<(&SentimentJob, bool)> {
        let contact = self.order.front()?;
        let queue = self.jobs.get(contact)?;
        Some((queue.front()?, queue.len() > 1))
    }

    fn pop_front(&mut self) -> Option<SentimentJob> {
        let contact = self.order.pop_front()?;
        let queue = self.jobs.get_mut(&contact)?;
        let job = queue.pop_front();
        if queue.is_empty() {
            self.jobs.remove(&contact);
        }
        self.len -= 1;
        job
    }
}

/// Waiting sentiment jobs: customer utterances (and those of unnamed speakers, which
/// escalate like them) before agent turns, each class first come, first served.
#[derive(Default)]
struct SentimentQueue {
    customers: ContactFifo,
    agents: ContactFifo,
}

/// The next job to start or drop, and what may be done with it.
struct Front {
    /// From the agents' queue.
    agent: bool,
    /// When the newest utterance in it arrived.
    newest: Instant,
    /// Rough prompt size.
    tokens: u32,
    /// A newer job of the same contact and class waits behind it.
    superseded: bool,
}

impl SentimentQueue {
    fn len(&self) -> usize {
        self.customers.len + self.agents.len
    }

    fn class(&mut self, agent: bool) -> &mut ContactFifo {
        if agent {
            &mut self.agents
        } else {
            &mut self.customers
        }
    }

    /// Queues a request (or merges it); returns the oldest job if the queue overflowed
    /// (an agent turn while there is one).
    fn push(
        &mut self,
        request: JudgeUtterance,
        max_coalesced: usize,
        max_len: usize,
    ) -> Option<SentimentJob> {
        let agent = request.participant == Participant::Agent;
        let request = self.class(agent).coalesce(request, max_coalesced)?;
        let overflow = if self.len() >= max_len {
            self.pop_front_of(self.agents.len > 0)
        } else {
            None
        };
        let now = Instant::now();
        self.class(agent).push_job(
            SentimentJob {
                request,
                coalesced: Vec::new(),
                enqueued: now,
                newest: now,
                attempts: 0,
            },
            false,
        );
        overflow
    }

    /// Puts a job back at the front of its class (a retry).
    fn push_front(&mut self, job: SentimentJob) {
        let agent = job.request.participant == Participant::Agent;
        self.class(agent).push_job(job, true);
    }

    /// What would be started next: a customer's job while one waits, else an agent's.
    fn front(&self) -> Option<Front> {
        let (agent, (job, superseded)) = match self.customers.front() {
            Some(front) => (false, front),
            None => (true, self.agents.front()?),
        };
        Some(Front {
            agent,
            newest: job.newest,
            tokens: estimate_tokens(job.request.text.len()),
            superseded,
        })
    }

    fn pop_front_of(&mut self, agent: bool) -> Option<SentimentJob> {
        self.class(agent).pop_front()
    }
}

/// One model's limits and current use.
struct Lane {
    limits: ModelLimits,
    running: usize,
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<DefaultDirectRateLimiter>,
}

impl Lane {
    fn new(limits: ModelLimits) -> Self {
        let requests = NonZeroU32::new(limits.requests_per_second)
            .map(|n| RateLimiter::direct(Quota::per_second(n)));
        let tokens = NonZeroU32::new(limits.tokens_per_minute)
            .map(|n| RateLimiter::direct(Quota::per_minute(n)));
        Self {
            limits,
            running: 0,
            requests,
            tokens,
        }
    }

    /// Takes a slot for a call of about `tokens` tokens, or says how long to wait.
    fn admit(&mut self, tokens: u32) -> Result<(), Option<Duration>> {
        if self.running >= self.limits.concurrency.max(1) {
            return Err(None);
        }
        let now = DefaultClock::default().now();
        if let Some(limiter) = &self.requests
            && let Err(not_until) = limiter.check()
        {
            return Err(Some(not_until.wait_time_from(now)));
        }
        if let Some(limiter) = &self.tokens {
            let n = NonZeroU32::new(tokens.max(1)).expect("at least 1");
            match limiter.check_n(n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => return Err(Some(not_until.wait_time_from(now))),
                // A call bigger than a whole minute's budget can never fit: let it through
                // alone rather than starve it.
                Err(_) if self.running == 0 => {}
                Err(_) => return Err(None),
            }
        }
        self.running += 1;
        Ok(())
    }
}

/// Rough token count of a prompt: about four characters a token, plus the instructions.
fn estimate_tokens(text_len: usize) -> u32 {
    (text_len / 4 + 64).min(u32::MAX as usize) as u32
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

    fn backoff(&self, attempts: u32) -> Duration {
        backoff(
            self.config.retry_base_ms,
            self.config.retry_max_ms,
            attempts,
        )
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

    fn start_sentiment(&mut self, mut job: SentimentJob, ctx: &mut Context<Self>) {
        let model = self.backends.sentiment.clone();
        let cancel = self.cancel.child_token();
        let utterance = Turn::new(job.request.participant.as_str(), job.request.text.clone());
        let context = std::mem::take(&mut job.request.context);
        let call = timed(async move { model.classify(&utterance, &context, &cancel).await });
        ctx.spawn(call.into_actor(self).map(move |(result, took), act, ctx| {
            let id = act.backends.sentiment_id.clone();
            act.lane(&id).running -= 1;
            job.attempts += 1;
            record_call("sentiment", &id, &result.as_ref().map(|s| s.usage), took);
            match result {
                Ok(s) => {
                    let latency_ms = job.enqueued.elapsed().as_millis() as u64;
                    let r = &job.request;
                    let reply = act.settle(&r.contact_id, job.work(), &r.reply);
                    reply.do_send(ModelOutcome::Judged(SentimentAssessed {
                        segment_id: r.segment_id.clone(),
                        coalesced: job.coalesced.clone(),
                        participant: r.participant,
                        label: s.label,
                        scores: s.scores,
                        model: s.model_id,
                        latency_ms,
                        tokens_in: s.usage.input_tokens,
                        tokens_out: s.usage.output_tokens,
                        cost_usd: s.cost_usd,
                    }));
                }
                Err(ModelError::Cancelled) => {
                    act.settle(&job.request.contact_id, job.work(), &job.request.reply);
                }
                Err(e) if e.is_transient() && job.attempts < act.config.sentiment_attempts => {
                    tracing::warn!(contact = %job.request.contact_id, error = %e, "sentiment call failed; retrying");
                    let delay = act.backoff(job.attempts);
                    ctx.run_later(delay, move |act, ctx| act.requeue_sentiment(job, ctx));
                }
                Err(e) => act.skip(job, &format!("model failed: {e}")),
            }
            act.pump(ctx);
        }));
    }

    fn requeue_sentiment(&mut self, job: SentimentJob, ctx: &mut Context<Self>) {
        self.sentiment.push_front(job);
        self.pump(ctx);
    }

    fn start_summary(&mut self, mut job: SummaryJob, ctx: &mut Context<Self>) {
        let model = self.backends.summariser.clone();
        let cancel = self.cancel.child_token();
        let turns = job.request.turns.clone();
        let call = timed(async move { model.summarise(&turns, &cancel).await });
        ctx.spawn(call.into_actor(self).map(move |(result, took), act, ctx| {
            let id = act.backends.summary_id.clone();
            act.lane(&id).running -= 1;
            job.attempts += 1;
            record_call("summary", &id, &result.as_ref().map(|s| s.usage), took);
            let r = &job.request;
            let work = vec![Work::Summary(r.version)];
            match result {
                Ok(s) => act
                    .settle(&r.contact_id, work, &r.reply)
                    .do_send(ModelOutcome::Summarised(s.into_event(r.version))),
                Err(ModelError::Cancelled) => {
                    act.settle(&r.contact_id, work, &r.reply);
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(contact = %r.contact_id, error = %e, attempts = job.attempts, "summary call failed; retrying");
                    let delay = act.backoff(job.attempts);
                    ctx.run_later(delay, move |act, ctx| {
                        act.summaries.push_front(job);
                        act.pump(ctx);
                    });
                }
                Err(e) => act.settle(&r.contact_id, work, &r.reply).do_send(ModelOutcome::SummaryFailed(SummaryFailed {
                    version: r.version,
                    model: id,
                    error: e.to_string(),
                    attempts: job.attempts,
                })),
            }
            act.pump(ctx);
        }));
    }
}

/// Runs `call`, returning its output and how long it took.
async fn timed<T>(call: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let output = call.await;
    (output, started.elapsed())
}

/// Counts a finished model call: outcome, latency and tokens.
fn record_call(task: &str, model: &str, result: &Result<Usage, &ModelError>, took: Duration) {
    let m = metrics();
    let outcome = match result {
        Ok(_) => "ok",
        Err(ModelError::Cancelled) => "cancelled",
        Err(e) if e.is_transient() => "retried",
        Err(_) => "error",
    };
    m.model_calls
        .with_label_values(&[task, model, outcome])
        .inc();
    m.model_latency
        .with_label_values(&[task])
        .observe(took.as_secs_f64());
    if let Ok(usage) = result {
        m.model_tokens
            .with_label_values(&[model, "in"])
            .inc_by(u64::from(usage.input_tokens));
        m.model_tokens
            .with_label_values(&[model, "out"])
            .inc_by(u64::from(usage.output_tokens));
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
