//! AttributeSink: where escalations go (the attribute log here; Amazon Connect and the
//! rest beside it), and the attribute log itself.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

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

/// Why a sink did not set the attributes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Worth another try: throttled, unavailable, not reached.
    #[error("{0}")]
    Transient(String),
    /// Refused (a 4xx answer, attributes over the limits): trying again would not help.
    #[error("{0}")]
    Refused(String),
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
    ) -> Result<(), SinkError>;
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
    ) -> Result<(), SinkError> {
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
        .map_err(|e| e.to_string())
        .and_then(|written| written)
        .map_err(SinkError::Transient)
    }
}
