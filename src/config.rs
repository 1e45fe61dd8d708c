//! Configuration: `config/default.toml` (built in), replaced piecewise by `--config FILE`.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::models::local::LocalConfig;

/// The built-in defaults.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Everything callpulse can be configured with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Model backends.
    pub models: ModelsConfig,
}

/// The `[models]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// `[models.local]`: the in-process GGUF backend.
    pub local: LocalConfig,
}

impl Config {
    /// The defaults, or `path` on top of them (settings it omits keep their defaults).
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let mut value: toml::Table = toml::from_str(DEFAULT_TOML).context("built-in config")?;
        if let Some(path) = path {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            let user: toml::Table = toml::from_str(&text)
                .with_context(|| format!("parsing config {}", path.display()))?;
            merge(&mut value, user);
        }
        Config::deserialize(toml::Value::Table(value)).with_context(|| {
            format!(
                "invalid config{}",
                path.map(|p| format!(" {}", p.display()))
                    .unwrap_or_default()
            )
        })
    }
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
        assert_eq!(config.models.local, LocalConfig::default());
    }

    #[test]
    fn a_file_overrides_single_settings_and_rejects_typos() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[models.local]\nthreads = 1\n").unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.models.local.threads, 1);
        assert_eq!(config.models.local.summary_context_tokens, 4096);

        std::fs::write(&path, "[models.local]\nthraeds = 1\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&path)).unwrap_err());
        assert!(err.contains("thraeds"), "{err}");
    }
}
