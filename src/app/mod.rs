//! What the commands share: the data directory, and building a pipeline's parts (stores,
//! models, sinks) from config.

pub mod api_bench;
pub mod bench;
pub mod commands;
pub mod demo;
pub mod faults;
pub mod fleet;
pub mod fleet_bench;
pub mod pipeline_bench;
pub mod query;
pub mod replay;
pub mod resend;
pub mod run;

#[cfg(test)]
mod aws_tests;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::actors::Parts;
use crate::actors::gateway::Backends;
use crate::audio::AudioServices;
use crate::config::{Backend, Config, StoreKind, SummarySinkKind};
use crate::models::bedrock::BedrockModel;
use crate::models::local::LocalModel;
use crate::models::standin::StandInModel;
use crate::redaction::Redactor;
use crate::sinks::attributes::{AttributeLog, AttributeSink, AttributeSinkKind};
use crate::sinks::connect::ConnectSink;
use crate::sinks::s3::S3SummarySink;
use crate::sinks::summaries::{SummaryFolder, SummarySink};
use crate::sinks::webhook::{Webhook, WithWebhook};
use crate::store::dynamodb::{DynamoEventStore, DynamoProjectionStore};
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

    /// Takes the directory for `command` (e.g. `run`) until the returned guard drops, so
    /// that two processes never write it at once; refused, naming the holder, while another
    /// process has it. The operating system releases it when the holder dies, however.
    pub fn lock(&self, command: &str) -> anyhow::Result<DirLock> {
        self.try_lock(command)?.map_err(|holder| {
            anyhow::anyhow!(
                "data directory {} is in use by {holder}; stop it first or use another --data-dir",
                self.root.display()
            )
        })
    }

    /// Like [`DataDir::lock`], but a directory held by another process is `Ok(Err(holder))`
    /// (who holds it, as the holder wrote it).
    pub fn try_lock(&self, command: &str) -> anyhow::Result<Result<DirLock, String>> {
        use std::io::{Read, Seek, Write};
        let path = self.root.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                file.read_to_string(&mut holder)?;
                let holder = holder.trim();
                return Ok(Err(if holder.is_empty() {
                    "another process".into()
                } else {
                    holder.to_string()
                }));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(
            file,
            "callpulse {command} (pid {}, since {})",
            std::process::id(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )?;
        Ok(Ok(DirLock { _file: file }))
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

    /// The anchor: sealed chain heads of every contact ([`crate::store::anchor`]).
    pub fn anchor(&self) -> PathBuf {
        self.root.join("anchors.jsonl")
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

/// A data directory held by this process (see [`DataDir::lock`]); dropping it lets go.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

/// The configured event log and read models: SQLite in `data`, or DynamoDB.
pub async fn stores(
    config: &Config,
    data: &DataDir,
) -> anyhow::Result<(Arc<dyn EventStore>, Arc<dyn ProjectionStore>)> {
    match config.store.kind {
        StoreKind::Sqlite => data.stores(),
        StoreKind::Dynamodb => {
            let dynamo = &config.store.dynamodb;
            let client = dynamo.client().await;
            Ok((
                Arc::new(
                    DynamoEventStore::new(client.clone(), &dynamo.events_table)
                        .with_key_retention(config.store.key_retention()),
                ),
                Arc::new(DynamoProjectionStore::new(
                    client,
                    &dynamo.projections_table,
                )),
            ))
        }
    }
}

/// The configured attribute sink: the log in `data`, or Amazon Connect.
pub async fn attribute_sink(
    config: &Config,
    data: &DataDir,
) -> anyhow::Result<Arc<dyn AttributeSink>> {
    Ok(match config.attributes.sink {
        AttributeSinkKind::Log => {
            let path = data.attribute_log();
            Arc::new(
                AttributeLog::open(&path).with_context(|| format!("opening {}", path.display()))?,
            )
        }
        AttributeSinkKind::Connect => {
            let connect = config.attributes.connect.as_ref().context(
                "[attributes] sink = \"connect\" needs [attributes.connect] instance_id",
            )?;
            Arc::new(
                ConnectSink::new(connect)
                    .await
                    .map_err(anyhow::Error::msg)?,
            )
        }
    })
}

/// The configured summary sink: the folder in `data`, or S3; with the webhook in front when
/// one is configured.
pub async fn summary_sink(config: &Config, data: &DataDir) -> anyhow::Result<Arc<dyn SummarySink>> {
    let store: Arc<dyn SummarySink> = match config.summaries.sink {
        SummarySinkKind::Folder => Arc::new(SummaryFolder::new(data.summaries())),
        SummarySinkKind::S3 => {
            let s3 = config
                .summaries
                .s3
                .as_ref()
                .context("[summaries] sink = \"s3\" needs [summaries.s3] bucket")?;
            Arc::new(S3SummarySink::new(s3).await.map_err(anyhow::Error::msg)?)
        }
    };
    Ok(match &config.summaries.webhook {
        Some(webhook) => Arc::new(WithWebhook::new(
            store,
            Webhook::new(webhook).map_err(anyhow::Error::msg)?,
        )),
        None => store,
    })
}

/// The configured models.
pub async fn backends(config: &Config) -> anyhow::Result<Backends> {
    Ok(match config.models.backend {
        Backend::Local => {
            // Separate lanes: the engine runs sentiment between a summary's steps.
            let model = Arc::new(LocalModel::load(config.models.local.clone())?);
            let info = model.info();
            Backends {
                sentiment_id: format!("local:{}", info.sentiment.id),
                summary_id: format!("local-summary:{}", info.summary.id),
                sentiment: model.clone(),
                summariser: model,
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
        Backend::Bedrock => {
            let bedrock = &config.models.bedrock;
            let model = Arc::new(BedrockModel::new(bedrock).await);
            Backends {
                sentiment: model.clone(),
                sentiment_id: bedrock.sentiment_model.clone(),
                summariser: model,
                summary_id: bedrock.summary_model.clone(),
            }
        }
    })
}

/// Everything a pipeline over `data` needs, models included.
pub async fn parts(config: &Config, data: &DataDir, backends: Backends) -> anyhow::Result<Parts> {
    let (store, projections) = stores(config, data).await?;
    Ok(Parts {
        store,
        projections,
        backends,
        attribute_sink: attribute_sink(config, data).await?,
        summary_sink: summary_sink(config, data).await?,
        rules: config.escalation.clone(),
        pipeline: config.pipeline.clone(),
        gateway: config.gateway.clone(),
        attributes: config.attributes.clone(),
        audio: AudioServices::from_config(&config.audio, Redactor::new(&config.redaction)).await,
    })
}
