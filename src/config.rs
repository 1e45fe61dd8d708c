//! Configuration: `config/default.toml` (built in), replaced piecewise by `--config FILE`.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::actors::PipelineConfig;
use crate::actors::dispatcher::AttributesConfig;
use crate::actors::gateway::GatewayConfig;
use crate::api::auth::ApiConfig;
use crate::events::rules::EscalationRules;
use crate::ingest::kinesis::KinesisConfig;
use crate::models::bedrock::BedrockConfig;
use crate::models::local::LocalConfig;
use crate::redaction::RedactionConfig;
use crate::sinks::s3::S3Config;
use crate::sinks::webhook::WebhookConfig;
use crate::store::dynamodb::DynamoConfig;

/// The built-in defaults.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Everything callpulse can be configured with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Model backends.
    pub models: ModelsConfig,
    /// `[escalation]`: when a call escalates and what is set.
    pub escalation: EscalationRules,
    /// `[pipeline]`: idle timeout, backpressure, read models.
    pub pipeline: PipelineConfig,
    /// `[gateway]`: model call limits, deadlines, retries.
    pub gateway: GatewayConfig,
    /// `[attributes]`: where escalations go, at what rate, with what retries.
    pub attributes: AttributesConfig,
    /// `[store]`: where the event log and read models live.
    pub store: StoreConfig,
    /// `[summaries]`: where summaries are saved.
    pub summaries: SummariesConfig,
    /// `[kinesis]`: the stream `run --kinesis` reads, and its lease table.
    pub kinesis: Option<KinesisConfig>,
    /// `[redaction]`: which personal data is replaced before records become events.
    pub redaction: RedactionConfig,
    /// `[api]`: tokens, rate limits and the live feed of the HTTP API.
    pub api: ApiConfig,
    /// `[audio]`: call audio (Kinesis Video) and its transcription (Transcribe streaming).
    pub audio: crate::audio::AudioConfig,
}

/// The `[store]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite` (in the data directory) or `dynamodb`.
    pub kind: StoreKind,
    /// Days a contact's idempotency keys are kept after it ended (SQLite), or after they
    /// were written (DynamoDB's time to live). At least 1.
    pub key_retention_days: u32,
    /// `[store.dynamodb]`: tables and endpoint.
    pub dynamodb: DynamoConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::default(),
            key_retention_days: crate::store::DEFAULT_KEY_RETENTION_DAYS,
            dynamodb: DynamoConfig::default(),
        }
    }
}

impl StoreConfig {
    /// How long idempotency keys are kept ([`StoreConfig::key_retention_days`]).
    pub fn key_retention(&self) -> chrono::Duration {
        chrono::Duration::days(self.key_retention_days.into())
    }
}

/// Which event store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// SQLite file in the data directory.
    #[default]
    Sqlite,
    /// DynamoDB tables.
    Dynamodb,
}

/// The `[summaries]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SummariesConfig {
    /// `folder` (`summaries/` in the data directory) or `s3`.
    pub sink: SummarySinkKind,
    /// `[summaries.s3]`: bucket, prefix, endpoint (required with `sink = "s3"`).
    pub s3: Option<S3Config>,
    /// `[summaries.webhook]`: also POST every summary, signed, to this URL (a CRM).
    pub webhook: Option<WebhookConfig>,
}

/// Where summaries go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SummarySinkKind {
    /// JSON and Markdown files in the data directory.
    #[default]
    Folder,
    /// S3 objects.
    S3,
}

/// The `[models]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Which backend judges and summarises: `local` (the GGUF below), `bedrock`, or
    /// `stand-in` (a fixed-latency stand-in for benchmarks; not a model).
    pub backend: Backend,
    /// Latency of the stand-in, ms.
    pub stand_in_latency_ms: u64,
    /// `[models.local]`: the in-process GGUF backend.
    pub local: LocalConfig,
    /// `[models.bedrock]`: Amazon Bedrock models.
    pub bedrock: BedrockConfig,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Local,
            stand_in_latency_ms: 300,
            local: LocalConfig::default(),
            bedrock: BedrockConfig::default(),
        }
    }
}

/// The model backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The in-process GGUF model.
    #[default]
    Local,
    /// The fixed-latency stand-in.
    StandIn,
    /// Amazon Bedrock (`[models.bedrock]`).
    Bedrock,
}

impl Config {
    /// The defaults, then `path` on top of them (settings it omits keep their defaults),
    /// then `CALLPULSE_<TABLE>__<KEY>` environment variables.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with the environment given.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut value: toml::Table = toml::from_str(DEFAULT_TOML).context("built-in config")?;
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            let user: toml::Table = toml::from_str(&text)
                .with_context(|| format!("parsing config {}", path.display()))?;
            merge(&mut value, user);
        }
        for (name, text) in env {
            if let Some(overlay) = env_override(&name, &text) {
                merge(&mut value, overlay);
            }
        }
        let config = Config::deserialize(toml::Value::Table(value)).with_context(|| {
            format!(
                "invalid config{}",
                path.map(|p| format!(" {}", p.display()))
                    .unwrap_or_default()
            )
        })?;
        config.escalation.validate().map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            config.store.key_retention_days >= 1,
            "[store] key_retention_days must be at least 1"
        );
        if config.store.kind == StoreKind::Dynamodb {
            config.store.dynamodb.validate()?;
        }
        Ok(config)
    }
}

/// `CALLPULSE_PIPELINE__IDLE_TIMEOUT_SECS=60` as `{pipeline = {idle_timeout_secs = 60}}`:
/// path parts separated by `__`, lower-cased; the value read as TOML, else as a string.
fn env_override(name: &str, text: &str) -> Option<toml::Table> {
    let path = name.strip_prefix("CALLPULSE_")?;
    if !path.contains("__") {
        return None;
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()));
    let mut parts: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
    let last = parts.pop()?;
    let mut table = toml::Table::from_iter([(last, value)]);
    while let Some(part) = parts.pop() {
        table = toml::Table::from_iter([(part, toml::Value::Table(table))]);
    }
    Some(table)
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_match_the_code_defaults() {
        let config = Config::load(None).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn the_aws_example_selects_every_aws_adapter() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/aws.toml");
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.store.kind, StoreKind::Dynamodb);
        assert_eq!(config.models.backend, Backend::Bedrock);
        assert_eq!(
            config.attributes.sink,
            crate::sinks::attributes::AttributeSinkKind::Connect
        );
        assert!(config.attributes.connect.is_some());
        assert_eq!(config.summaries.sink, SummarySinkKind::S3);
        let kinesis = config.kinesis.as_ref().expect("aws.toml reads a stream");
        assert_eq!(kinesis.stream, "callpulse-calls");
        assert_eq!(kinesis.lease_table, "callpulse-leases");
        assert_eq!(
            config.models.bedrock.sentiment_model,
            "amazon.nova-micro-v1:0"
        );
    }

    #[test]
    fn a_file_overrides_single_settings_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[models.local]\nthreads = 1\n").unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.models.local.threads, 1);
        assert_eq!(config.models.local.summary_context_tokens, 4096);

        let env = [
            (
                "CALLPULSE_PIPELINE__IDLE_TIMEOUT_SECS".to_string(),
                "60".to_string(),
            ),
            (
                "CALLPULSE_MODELS__BACKEND".to_string(),
                "stand-in".to_string(),
            ),
            ("CALLPULSE_LOG".to_string(), "debug".to_string()),
        ];
        let config = Config::load_with_env(Some(&path), env).unwrap();
        assert_eq!(config.pipeline.idle_timeout_secs, 60);
        assert_eq!(config.models.backend, Backend::StandIn);
        assert_eq!(config.models.local.threads, 1);

        std::fs::write(&path, "[models.local]\nthraeds = 1\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&path)).unwrap_err());
        assert!(err.contains("thraeds"), "{err}");
    }
}
