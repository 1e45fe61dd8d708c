//! Running the gateway's model calls: a started call's outcome goes to whoever awaits it,
//! a transient failure is retried after a jittered backoff, and every finished call is
//! counted (outcome, latency, tokens).

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::queue::{SentimentJob, SummaryJob, Work};
use super::{ModelGateway, ModelOutcome};
use crate::backoff::backoff;
use crate::events::{SentimentAssessed, SummaryFailed};
use crate::metrics::metrics;
use crate::models::{ModelError, Turn, Usage};

impl ModelGateway {
    fn backoff(&self, attempts: u32) -> Duration {
        backoff(
            self.config.retry_base_ms,
            self.config.retry_max_ms,
            attempts,
        )
    }

    /// Calls the sentiment model for `job`, whose lane slot is already taken.
    pub(super) fn start_sentiment(&mut self, mut job: SentimentJob, ctx: &mut Context<Self>) {
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
                        coalesced: job.coalesced.clone(),
                        ..s.into_event(r.segment_id.clone(), r.participant, &r.text, latency_ms)
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

    /// Calls the summariser for `job`, whose lane slot is already taken.
    pub(super) fn start_summary(&mut self, mut job: SummaryJob, ctx: &mut Context<Self>) {
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
