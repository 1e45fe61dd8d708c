//! SummarySink: where finished summaries go. Here: a folder with one JSON and one Markdown
//! file per contact and summary version (S3 in the fleet). Versions never overwrite each
//! other, and saving the same version twice writes the same bytes.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::events::SummaryGenerated;

/// Saves summaries.
#[async_trait]
pub trait SummarySink: Send + Sync + 'static {
    /// Saves one summary version of a contact.
    async fn save(&self, contact_id: &str, summary: &SummaryGenerated) -> Result<(), String>;

    /// Whether that version is already saved.
    async fn has(&self, contact_id: &str, version: u32) -> bool;
}

/// `<dir>/<contact>/v<version>.json` and `.md`.
pub struct SummaryFolder {
    dir: PathBuf,
    /// Saves running at once: a burst of calls ending together would otherwise start one
    /// blocking thread per summary, all contending for the same directory's inodes.
    writers: tokio::sync::Semaphore,
}

/// Summaries written to the folder at once.
const CONCURRENT_WRITES: usize = 2;

impl SummaryFolder {
    /// A sink writing under `dir` (created when needed).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            writers: tokio::sync::Semaphore::new(CONCURRENT_WRITES),
        }
    }

    fn path(&self, contact_id: &str, version: u32, ext: &str) -> PathBuf {
        self.dir
            .join(id_segment(contact_id))
            .join(format!("v{version}.{ext}"))
    }
}

/// A contact id as one folder name or key segment (the summary folder's and S3's): ASCII
/// letters, digits, `-`, `_` and `.` (but not a leading dot, so no segment is `.` or `..`)
/// stay, every other byte becomes `%XX`. Distinct ids give distinct segments, and a segment
/// never holds a `/` from an id.
pub fn id_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for (i, byte) in id.bytes().enumerate() {
        let keep =
            byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' || (byte == b'.' && i > 0);
        if keep {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("summary paths have a folder");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The JSON document of a summary: its fields plus `contactId`, pretty-printed.
pub fn summary_json(contact_id: &str, s: &SummaryGenerated) -> Result<Vec<u8>, String> {
    let mut json = serde_json::to_value(s).map_err(|e| e.to_string())?;
    json["contactId"] = contact_id.into();
    serde_json::to_vec_pretty(&json).map_err(|e| e.to_string())
}

/// The Markdown rendering of a summary.
pub fn markdown(contact_id: &str, s: &SummaryGenerated) -> String {
    let sentiment = s
        .customer_sentiment
        .map_or_else(|| "unknown".to_string(), |l| l.to_string());
    format!(
        "# Call {contact_id}: summary v{}\n\n{}\n\n- **Reason:** {}\n- **Resolution:** {}\n- **Follow-up:** {}\n- **Customer sentiment at the end:** {sentiment}\n\n_Model {} (prompt v{}), {} tokens in, {} out._\n",
        s.version,
        s.text,
        s.reason,
        s.resolution,
        s.follow_up,
        s.model,
        s.prompt_version,
        s.tokens_in,
        s.tokens_out
    )
}

#[async_trait]
impl SummarySink for SummaryFolder {
    async fn save(&self, contact_id: &str, summary: &SummaryGenerated) -> Result<(), String> {
        let json = summary_json(contact_id, summary)?;
        let md = markdown(contact_id, summary);
        let (json_path, md_path) = (
            self.path(contact_id, summary.version, "json"),
            self.path(contact_id, summary.version, "md"),
        );
        let _permit = self.writers.acquire().await.map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || {
            write_atomically(&md_path, md.as_bytes())?;
            write_atomically(&json_path, &json)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("writing summary: {e}"))
    }

    async fn has(&self, contact_id: &str, version: u32) -> bool {
        self.path(contact_id, version, "json").exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_ids_become_single_distinct_segments() {
        assert_eq!(
            id_segment("2b7d1e0c-aa41-4f3e-9c1a-0d5e"),
            "2b7d1e0c-aa41-4f3e-9c1a-0d5e"
        );
        assert_eq!(id_segment("../etc"), "%2E.%2Fetc");
        assert_eq!(id_segment("a.b_c"), "a.b_c");
        assert_eq!(id_segment(".hidden"), "%2Ehidden");
        assert_eq!(id_segment("é"), "%C3%A9");
    }

    #[test]
    fn distinct_contact_ids_get_distinct_folders() {
        let folder = SummaryFolder::new("/s");
        for (a, b) in [("a/b", "a_b"), ("c 1", "c_1"), ("é", "_"), ("x%2Fy", "x/y")] {
            assert_ne!(
                folder.path(a, 1, "json"),
                folder.path(b, 1, "json"),
                "{a} and {b}"
            );
        }
    }
}
