//! What the commands share: the data directory, and building a pipeline's parts (stores,
//! models, sinks) from config.

pub mod query;
pub mod replay;
pub mod run;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::actors::Parts;
use crate::actors::attributes::AttributeLog;
use crate::actors::gateway::Backends;
use crate::actors::summaries::SummaryFolder;
use crate::config::{Backend, Config};
use crate::models::local::LocalModel;
use crate::models::standin::StandInModel;
use crate::store::sqlite::SqliteDb;
use crate::store::{EventStore, ProjectionStore};

/// Where a worker keeps its state: `callpulse.db` (SQLite: event log and read models),
/// `summaries/`, `attributes.jsonl` (attribute updates) and `rejected.jsonl` (refused
/// records).
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Opens (creating) the directory.
    pub fn open(root: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .with_context(|| format!("creating data directory {}", root.display()))?;
        Ok(Self { root })
    }

    /// The default: `callpulse` under the user's data directory.
    pub fn default_root() -> PathBuf {
        dirs::data_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("callpulse")
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite database.
    pub fn database(&self) -> PathBuf {
        self.root.join("callpulse.db")
    }

    /// The summaries folder.
    pub fn summaries(&self) -> PathBuf {
        self.root.join("summaries")
    }

    /// The attribute update log.
    pub fn attribute_log(&self) -> PathBuf {
        self.root.join("attributes.jsonl")
    }

    /// The reject log.
    pub fn reject_log(&self) -> PathBuf {
        self.root.join("rejected.jsonl")
    }

    /// The event log and read models.
    pub fn stores(&self) -> anyhow::Result<(Arc<dyn EventStore>, Arc<dyn ProjectionStore>)> {
        let path = self.database();
        let db = SqliteDb::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok((Arc::new(db.events()), Arc::new(db.projections())))
    }
}

/// The configured models.
pub fn backends(config: &Config) -> anyhow::Result<Backends> {
    Ok(match config.models.backend {
        Backend::Local => {
            let model = Arc::new(LocalModel::load(config.models.local.clone())?);
            let id = format!("local:{}", model.info().id);
            Backends {
                sentiment: model.clone(),
                sentiment_id: id.clone(),
                summariser: model,
                summary_id: id,
            }
        }
        Backend::StandIn => {
            let model = Arc::new(StandInModel::new(Duration::from_millis(
                config.models.stand_in_latency_ms,
            )));
            let id = model.id().to_string();
            Backends {
                sentiment: model.clone(),
                sentiment_id: id.clone(),
                summariser: model,
                summary_id: id,
            }
        }
    })
}

/// Everything a pipeline over `data` needs, models included.
pub fn parts(config: &Config, data: &DataDir, backends: Backends) -> anyhow::Result<Parts> {
    let (store, projections) = data.stores()?;
    let attribute_log = data.attribute_log();
    let attribute_sink = AttributeLog::open(&attribute_log)
        .with_context(|| format!("opening {}", attribute_log.display()))?;
    Ok(Parts {
        store,
        projections,
        backends,
        attribute_sink: Arc::new(attribute_sink),
        summary_sink: Arc::new(SummaryFolder::new(data.summaries())),
        rules: config.escalation.clone(),
        pipeline: config.pipeline.clone(),
        gateway: config.gateway.clone(),
        attributes: config.attributes.clone(),
    })
}
