//! The actors of the pipeline (actix), and [`Pipeline`], which wires them together:
//! ContactRouter → ContactActor (one per call, supervised) → EventStore; ModelGateway,
//! AttributeDispatcher and SummarySink for effects; Projector for read models.

pub mod contact;
pub mod dispatcher;
pub mod feed;
pub mod gateway;
pub mod projector;
pub mod router;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use self::dispatcher::{AttributeDispatcher, AttributesConfig};
use self::gateway::{Backends, GatewayConfig, ModelGateway};
use self::projector::{CatchUp, Projector};
use self::router::{ContactRouter, GetActivity, Resume, Selector, SetServices};
use crate::audio::AudioServices;
use crate::events::rules::EscalationRules;
use crate::sinks::attributes::AttributeSink;
use crate::sinks::summaries::SummarySink;
use crate::store::{EventStore, ProjectionStore, StoreError};

/// The `[pipeline]` config table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// A contact with no record for this long is ended (reason IDLE_TIMEOUT).
    pub idle_timeout_secs: u64,
    /// Records read but not yet durable, at most; a full pipeline stops reading its sources.
    pub max_in_flight: usize,
    /// Earlier turns sent with each utterance to be judged (the local engine's anger check
    /// reads up to 2; `[models.local] context_turns` says how many its sentiment reads).
    pub context_turns: usize,
    /// How often the read models catch up with the log, ms.
    pub projector_interval_ms: u64,
    /// How often `run` seals the chain heads of the contacts that moved into the anchor
    /// file, s (and once more at the end of a run).
    pub anchor_interval_secs: u64,
    /// Arbiters (threads) running contact actors; 0 = one per core.
    pub arbiters: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            idle_timeout_secs: 300,
            max_in_flight: 4096,
            context_turns: 2,
            projector_interval_ms: 500,
            anchor_interval_secs: 60,
            arbiters: 0,
        }
    }
}

/// What every contact actor uses.
pub struct Services {
    /// The event log.
    pub store: Arc<dyn EventStore>,
    /// Escalation rules.
    pub rules: Arc<EscalationRules>,
    /// Model calls.
    pub gateway: Addr<ModelGateway>,
    /// Attribute updates.
    pub attributes: Addr<AttributeDispatcher>,
    /// Where summaries are saved.
    pub summaries: Arc<dyn SummarySink>,
    /// The router (for passivation).
    pub router: Addr<ContactRouter>,
    /// Earlier turns shown with each utterance.
    pub context_turns: usize,
    /// When a silent contact ends.
    pub idle_timeout: Duration,
    /// Call audio: each contact whose STARTED names a media stream reads it.
    pub audio: Option<Arc<AudioServices>>,
}

/// What a pipeline is built from.
pub struct Parts {
    /// The event log.
    pub store: Arc<dyn EventStore>,
    /// The read models.
    pub projections: Arc<dyn ProjectionStore>,
    /// The models.
    pub backends: Backends,
    /// Where escalations go.
    pub attribute_sink: Arc<dyn AttributeSink>,
    /// Where summaries go.
    pub summary_sink: Arc<dyn SummarySink>,
    /// Escalation rules.
    pub rules: EscalationRules,
    /// Pipeline settings.
    pub pipeline: PipelineConfig,
    /// Model gateway settings.
    pub gateway: GatewayConfig,
    /// Attribute sink settings.
    pub attributes: AttributesConfig,
    /// Call audio and its transcription, when configured.
    pub audio: Option<Arc<AudioServices>>,
}

/// A running pipeline. Start it inside an actix `System`.
pub struct Pipeline {
    /// The router: send it records.
    pub router: Addr<ContactRouter>,
    /// The model gateway.
    pub gateway: Addr<ModelGateway>,
    /// The projector.
    pub projector: Addr<Projector>,
    /// Settings.
    pub config: PipelineConfig,
    projections: Arc<dyn ProjectionStore>,
    arbiters: Vec<Arbiter>,
}

impl Pipeline {
    /// Starts every actor.
    pub fn start(parts: Parts) -> Self {
        let threads = match parts.pipeline.arbiters {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut arbiters: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
        let handles = arbiters.iter().map(Arbiter::handle).collect();
        let mailbox = parts.pipeline.max_in_flight.max(16);
        let router = ContactRouter::new(handles, mailbox).start();
        // The gateway, and the sinks with the projector, get threads of their own so that
        // none of them slows the router (or each other) down.
        let gateway_thread = Arbiter::new();
        let sinks_thread = Arbiter::new();
        let (gateway_config, backends) = (parts.gateway, parts.backends);
        let gateway = ModelGateway::start_in_arbiter(&gateway_thread.handle(), move |_| {
            ModelGateway::new(gateway_config, backends)
        });
        let (attributes_config, attribute_sink) = (parts.attributes, parts.attribute_sink);
        let attributes = AttributeDispatcher::start_in_arbiter(&sinks_thread.handle(), move |_| {
            AttributeDispatcher::new(attributes_config, attribute_sink)
        });
        let (events, projections) = (parts.store.clone(), parts.projections.clone());
        let every = Duration::from_millis(parts.pipeline.projector_interval_ms.max(10));
        let projector = Projector::start_in_arbiter(&sinks_thread.handle(), move |_| {
            Projector::new(events, projections, every)
        });
        arbiters.push(gateway_thread);
        arbiters.push(sinks_thread);
        router.do_send(SetServices(Arc::new(Services {
            store: parts.store,
            rules: Arc::new(parts.rules),
            gateway: gateway.clone(),
            attributes,
            summaries: parts.summary_sink,
            router: router.clone(),
            context_turns: parts.pipeline.context_turns,
            idle_timeout: Duration::from_secs(parts.pipeline.idle_timeout_secs),
            audio: parts.audio,
        })));
        Self {
            router,
            gateway,
            projector,
            config: parts.pipeline,
            projections: parts.projections,
            arbiters,
        }
    }

    /// Brings the read models up to date, then restarts every contact that still owes work
    /// (open, or ended without a summary). Returns how many.
    pub async fn resume_unfinished(&self) -> Result<usize, StoreError> {
        let unfinished = self.unfinished_where(|_| true).await?;
        let n = unfinished.len();
        self.resume(unfinished);
        Ok(n)
    }

    /// Brings the read models up to date, then lists the contacts `selects` picks (those of
    /// the shards a fleet worker holds) that still owe work.
    pub async fn unfinished_where(
        &self,
        selects: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        self.catch_up().await?;
        Ok(self
            .projections
            .unfinished()
            .await?
            .into_iter()
            .filter(|c| selects(&c.contact_id))
            .map(|c| c.contact_id)
            .collect())
    }

    /// Restarts these contacts now.
    pub fn resume(&self, contacts: Vec<String>) {
        if !contacts.is_empty() {
            tracing::info!(
                contacts = contacts.len(),
                "resuming contacts with unfinished work"
            );
            self.router.do_send(Resume(contacts));
        }
    }

    /// Folds every event written so far into the read models.
    pub async fn catch_up(&self) -> Result<u64, StoreError> {
        self.projector
            .send(CatchUp)
            .await
            .map_err(|e| StoreError::Unavailable(format!("projector: {e}")))?
    }

    /// Waits until no contact has model or sink work due or in flight (or `timeout`
    /// passes), then brings the read models up to date. Open contacts stay open.
    pub async fn settle(&self, timeout: Duration) -> Result<(), StoreError> {
        let owing = self.drain_where(|_| true, timeout).await?;
        if owing > 0 {
            tracing::warn!(
                busy = owing,
                "stopping with work still owed; the next run resumes it"
            );
        }
        self.catch_up().await.map(|_| ())
    }

    /// Waits until none of the live contacts `selects` picks has model or sink work due or
    /// in flight, or `timeout` passes; answers how many still owe work.
    pub async fn drain_where(
        &self,
        selects: impl Fn(&str) -> bool + Clone + Send + 'static,
        timeout: Duration,
    ) -> Result<usize, StoreError> {
        let start = std::time::Instant::now();
        loop {
            let among: Selector = Box::new(selects.clone());
            let activity = self
                .router
                .send(GetActivity { among: Some(among) })
                .await
                .map_err(|e| StoreError::Unavailable(format!("router: {e}")))?;
            if activity.busy == 0 || start.elapsed() > timeout {
                return Ok(activity.busy);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the contact arbiters.
    pub fn stop(self) {
        for arbiter in self.arbiters {
            arbiter.stop();
        }
    }
}
