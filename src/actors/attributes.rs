//! AttributeSink: where escalations go (an attributes log, a webhook; Amazon Connect in the
//! fleet), and the actor that feeds it: rate-limited, debounced per contact, retried with
//! backoff, every outcome reported back to the contact to be logged.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::backoff::backoff;
use crate::events::{AttributesUpdateFailed, AttributesUpdated};
use crate::metrics::metrics;

/// The `[attributes]` config table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttributesConfig {
    /// Where attributes go: `log` (`attributes.jsonl` in the data directory) or `connect`.
    pub sink: AttributeSinkKind,
    /// `[attributes.connect]`: the Connect instance (required with `sink = "connect"`).
    pub connect: Option<super::connect::ConnectConfig>,
    /// Updates per second, across contacts (Connect's account quota is a few per second).
    pub requests_per_second: u32,
    /// Tries per update before it is recorded as failed.
    pub max_attempts: u32,
    /// First retry delay, ms (doubled per try, with jitter).
    pub retry_base_ms: u64,
}

/// The longest wait between two tries of one update, ms.
const RETRY_CAP_MS: u64 = 60_000;

/// Where attributes go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttributeSinkKind {
    /// The attribute log file.
    #[default]
    Log,
    /// Amazon Connect UpdateContactAttributes.
    Connect,
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

/// Sets contact attributes somewhere.
#[async_trait]
pub trait AttributeSink: Send + Sync + 'static {
    /// A short name, recorded in AttributesUpdated events.
    fn name(&self) -> &str;

    /// Sets `attributes` on the contact.
    async fn set(
        &self,
        contact_id: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), String>;
}

/// Appends every update as a JSON line to a file (`<data-dir>/attributes.jsonl`).
pub struct AttributeLog {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
}

impl AttributeLog {
    /// Opens (creating) the log for appending.
    pub fn open(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        let path = path.into();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        Ok(Self {
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }
}

#[async_trait]
impl AttributeSink for AttributeLog {
    fn name(&self) -> &str {
        "attribute-log"
    }

    async fn set(
        &self,
        contact_id: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let line = serde_json::json!({
            "contactId": contact_id,
            "attributes": attributes,
            "at": chrono::Utc::now(),
        })
        .to_string();
        let (file, path) = (self.file.clone(), self.path.clone());
        // A blocking write: off the actor's thread.
        tokio::task::spawn_blocking(move || {
            let mut file = file.lock().map_err(|_| "attribute log poisoned")?;
            writeln!(file, "{line}").map_err(|e| format!("{}: {e}", path.display()))
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

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
            wake_scheduled: false,
        }
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        while let Some(contact) = self.order.front().cloned() {
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
                    for r in pending.requests.drain(..) {
                        r.reply.do_send(AttributeOutcome::Updated(AttributesUpdated {
                            for_seq: r.for_seq,
                            sink: act.sink.name().to_string(),
                            attributes: r.attributes,
                            attempts: pending.attempts,
                        }));
                    }
                }
                Err(error) if pending.attempts < act.config.max_attempts => {
                    count("retried");
                    tracing::warn!(%contact, %error, attempts = pending.attempts, "setting attributes failed; retrying");
                    let delay = backoff(act.config.retry_base_ms, RETRY_CAP_MS, pending.attempts);
                    ctx.run_later(delay, move |act, ctx| {
                        act.enqueue_pending(contact, pending);
                        act.pump(ctx);
                    });
                }
                Err(error) => {
                    count("failed");
                    tracing::error!(%contact, %error, "setting attributes failed for good");
                    for r in pending.requests.drain(..) {
                        r.reply.do_send(AttributeOutcome::Failed(AttributesUpdateFailed {
                            for_seq: r.for_seq,
                            sink: act.sink.name().to_string(),
                            attributes: r.attributes,
                            attempts: pending.attempts,
                            error: error.clone(),
                        }));
                    }
                }
            }
        }));
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
