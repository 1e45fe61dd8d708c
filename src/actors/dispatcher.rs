//! AttributeDispatcher: the actor in front of an [`AttributeSink`]: rate-limited, debounced
//! per contact, retried with backoff, every outcome reported back to the contact to be
//! logged.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;

use actix::prelude::*;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::backoff::backoff;
use crate::events::{AttributesUpdateFailed, AttributesUpdated};
use crate::metrics::metrics;
use crate::sinks::attributes::{AttributeSink, AttributeSinkKind, SinkError};

/// The `[attributes]` config table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttributesConfig {
    /// Where attributes go: `log` (`attributes.jsonl` in the data directory) or `connect`.
    pub sink: AttributeSinkKind,
    /// `[attributes.connect]`: the Connect instance (required with `sink = "connect"`).
    pub connect: Option<crate::sinks::connect::ConnectConfig>,
    /// Updates per second, across contacts (Connect's account quota is a few per second).
    pub requests_per_second: u32,
    /// Tries per update before it is recorded as failed.
    pub max_attempts: u32,
    /// First retry delay, ms (doubled per try, with jitter).
    pub retry_base_ms: u64,
}

impl Default for AttributesConfig {
    fn default() -> Self {
        Self {
            sink: AttributeSinkKind::Log,
            connect: None,
            requests_per_second: 5,
            max_attempts: 5,
            retry_base_ms: 500,
        }
    }
}

/// The longest wait between two tries of one update, ms.
const RETRY_CAP_MS: u64 = 60_000;

/// Outcome of a [`SetAttributes`], sent back to the contact.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum AttributeOutcome {
    /// Set.
    Updated(AttributesUpdated),
    /// Given up.
    Failed(AttributesUpdateFailed),
}

/// Set attributes on a contact, as asked by event `for_seq`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetAttributes {
    /// The contact.
    pub contact_id: String,
    /// The event asking for it.
    pub for_seq: u64,
    /// What to set.
    pub attributes: BTreeMap<String, String>,
    /// Where the outcome goes.
    pub reply: Recipient<AttributeOutcome>,
}

/// A contact's waiting updates, sent as one call (later values win).
struct Pending {
    requests: Vec<SetAttributes>,
    attempts: u32,
}

/// The actor in front of an [`AttributeSink`].
pub struct AttributeDispatcher {
    config: AttributesConfig,
    sink: Arc<dyn AttributeSink>,
    limiter: Option<DefaultDirectRateLimiter>,
    order: VecDeque<String>,
    pending: HashMap<String, Pending>,
    /// Contacts with an update being sent or waiting to be retried: their next update waits
    /// for it, so a contact's updates reach the sink one at a time, in order.
    sending: HashSet<String>,
    wake_scheduled: bool,
}

impl AttributeDispatcher {
    /// A dispatcher feeding `sink`.
    pub fn new(config: AttributesConfig, sink: Arc<dyn AttributeSink>) -> Self {
        let limiter = NonZeroU32::new(config.requests_per_second)
            .map(|n| RateLimiter::direct(Quota::per_second(n)));
        Self {
            config,
            sink,
            limiter,
            order: VecDeque::new(),
            pending: HashMap::new(),
            sending: HashSet::new(),
            wake_scheduled: false,
        }
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        while let Some(contact) = self.order.front().cloned() {
            // A contact whose update is still out is queued again once it is settled.
            if self.sending.contains(&contact) || !self.pending.contains_key(&contact) {
                self.order.pop_front();
                continue;
            }
            if let Some(limiter) = &self.limiter
                && let Err(not_until) = limiter.check()
            {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                if !self.wake_scheduled {
                    self.wake_scheduled = true;
                    ctx.run_later(wait, |act, ctx| {
                        act.wake_scheduled = false;
                        act.pump(ctx);
                    });
                }
                return;
            }
            self.order.pop_front();
            if let Some(pending) = self.pending.remove(&contact) {
                self.sending.insert(contact.clone());
                self.send(contact, pending, ctx);
            }
        }
    }

    fn send(&mut self, contact: String, mut pending: Pending, ctx: &mut Context<Self>) {
        let merged: BTreeMap<String, String> = pending
            .requests
            .iter()
            .flat_map(|r| r.attributes.clone())
            .collect();
        let sink = self.sink.clone();
        let call = {
            let contact = contact.clone();
            async move { sink.set(&contact, &merged).await }
        };
        ctx.spawn(call.into_actor(self).map(move |result, act, ctx| {
            pending.attempts += 1;
            let count = |outcome: &str| metrics().attribute_updates.with_label_values(&[outcome]).inc();
            match result {
                Ok(()) => {
                    count("ok");
                    act.answer(pending, None);
                }
                Err(SinkError::Transient(error)) if pending.attempts < act.config.max_attempts => {
                    count("retried");
                    tracing::warn!(%contact, %error, attempts = pending.attempts, "setting attributes failed; retrying");
                    let delay = backoff(act.config.retry_base_ms, RETRY_CAP_MS, pending.attempts);
                    // Still the contact's update in flight: newer ones merge into it.
                    ctx.run_later(delay, move |act, ctx| {
                        act.enqueue_pending(contact.clone(), pending);
                        act.settled(contact, ctx);
                    });
                    return;
                }
                Err(error) => {
                    let error = error.to_string();
                    count("failed");
                    tracing::error!(%contact, %error, "setting attributes failed for good");
                    act.answer(pending, Some(error));
                }
            }
            act.settled(contact, ctx);
        }));
    }

    /// Tells each request of `pending` what became of it: set, or given up with `error`.
    fn answer(&self, pending: Pending, error: Option<String>) {
        let attempts = pending.attempts;
        for r in pending.requests {
            let (for_seq, sink, attributes) =
                (r.for_seq, self.sink.name().to_string(), r.attributes);
            r.reply.do_send(match &error {
                None => AttributeOutcome::Updated(AttributesUpdated {
                    for_seq,
                    sink,
                    attributes,
                    attempts,
                }),
                Some(error) => AttributeOutcome::Failed(AttributesUpdateFailed {
                    for_seq,
                    sink,
                    attributes,
                    attempts,
                    error: error.clone(),
                }),
            });
        }
    }

    /// The contact's update is out of the way: its next one, if any, may go.
    fn settled(&mut self, contact: String, ctx: &mut Context<Self>) {
        self.sending.remove(&contact);
        if self.pending.contains_key(&contact) {
            self.order.push_back(contact);
        }
        self.pump(ctx);
    }

    /// Queues a contact's updates, merging them into any still waiting (the debounce).
    fn enqueue_pending(&mut self, contact: String, mut pending: Pending) {
        match self.pending.get_mut(&contact) {
            Some(waiting) => {
                waiting.requests.append(&mut pending.requests);
                // Event order (sequence numbers grow within a contact): later values win.
                waiting.requests.sort_by_key(|r| r.for_seq);
                waiting.attempts = waiting.attempts.max(pending.attempts);
            }
            None => {
                self.order.push_back(contact.clone());
                self.pending.insert(contact, pending);
            }
        }
    }
}

impl Actor for AttributeDispatcher {
    type Context = Context<Self>;
}

impl Handler<SetAttributes> for AttributeDispatcher {
    type Result = ();

    fn handle(&mut self, request: SetAttributes, ctx: &mut Context<Self>) {
        let contact = request.contact_id.clone();
        self.enqueue_pending(
            contact,
            Pending {
                requests: vec![request],
                attempts: 0,
            },
        );
        self.pump(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Fails its first call transiently (after a pause), or every call with a refusal;
    /// records what it set and how many calls overlapped.
    struct Flaky {
        refuse: bool,
        calls: AtomicUsize,
        running: AtomicUsize,
        most_at_once: AtomicUsize,
        set: Mutex<Vec<BTreeMap<String, String>>>,
    }

    #[async_trait]
    impl AttributeSink for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }

        async fn set(
            &self,
            _: &str,
            attributes: &BTreeMap<String, String>,
        ) -> Result<(), SinkError> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(running, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            if self.refuse {
                return Err(SinkError::Refused(
                    "HTTP 400 InvalidParameterException".into(),
                ));
            }
            if call == 0 {
                return Err(SinkError::Transient("HTTP 503".into()));
            }
            self.set.lock().unwrap().push(attributes.clone());
            Ok(())
        }
    }

    /// Collects outcomes.
    struct Outcomes(Arc<Mutex<Vec<AttributeOutcome>>>);

    impl Actor for Outcomes {
        type Context = Context<Self>;
    }

    impl Handler<AttributeOutcome> for Outcomes {
        type Result = ();

        fn handle(&mut self, outcome: AttributeOutcome, _: &mut Context<Self>) {
            self.0.lock().unwrap().push(outcome);
        }
    }

    fn flaky(refuse: bool) -> Arc<Flaky> {
        Arc::new(Flaky {
            refuse,
            calls: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
            set: Mutex::new(Vec::new()),
        })
    }

    fn request(for_seq: u64, value: &str, reply: &Addr<Outcomes>) -> SetAttributes {
        SetAttributes {
            contact_id: "c".into(),
            for_seq,
            attributes: [("RealTimeSentiment".to_string(), value.to_string())].into(),
            reply: reply.clone().recipient(),
        }
    }

    async fn settled(outcomes: &Arc<Mutex<Vec<AttributeOutcome>>>, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while outcomes.lock().unwrap().len() < n {
            assert!(std::time::Instant::now() < deadline, "outcomes missing");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn dispatcher(sink: Arc<Flaky>) -> Addr<AttributeDispatcher> {
        let config = AttributesConfig {
            requests_per_second: 0,
            retry_base_ms: 50,
            ..Default::default()
        };
        AttributeDispatcher::new(config, sink).start()
    }

    #[actix_rt::test]
    async fn a_contacts_updates_go_one_at_a_time_and_an_older_retry_never_lands_last() {
        let sink = flaky(false);
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let reply = Outcomes(outcomes.clone()).start();
        let dispatcher = dispatcher(sink.clone());
        dispatcher.do_send(request(1, "NEGATIVE", &reply));
        // While the first is out (and then waits to be retried), the episode clears.
        tokio::time::sleep(Duration::from_millis(10)).await;
        dispatcher.do_send(request(5, "NEUTRAL", &reply));
        settled(&outcomes, 2).await;
        assert_eq!(sink.most_at_once.load(Ordering::SeqCst), 1);
        let set = sink.set.lock().unwrap();
        assert_eq!(
            set.last().unwrap()["RealTimeSentiment"],
            "NEUTRAL",
            "{set:?}"
        );
        assert!(
            outcomes
                .lock()
                .unwrap()
                .iter()
                .all(|o| matches!(o, AttributeOutcome::Updated(_)))
        );
    }

    #[actix_rt::test]
    async fn a_refusal_is_final() {
        let sink = flaky(true);
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let reply = Outcomes(outcomes.clone()).start();
        dispatcher(sink.clone()).do_send(request(1, "NEGATIVE", &reply));
        settled(&outcomes, 1).await;
        assert_eq!(sink.calls.load(Ordering::SeqCst), 1, "not retried");
        let outcomes = outcomes.lock().unwrap();
        let [AttributeOutcome::Failed(failed)] = outcomes.as_slice() else {
            panic!("{outcomes:?}");
        };
        assert_eq!(failed.attempts, 1);
        assert!(failed.error.contains("400"), "{}", failed.error);
    }
}
