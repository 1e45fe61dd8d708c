//! The log's outside anchor: an append-only file of seals, each the chain heads (last
//! sequence number and hash) of the contacts whose log moved since the seal before, with
//! the global position it covers. Seals are hash-chained to each other. The event log's
//! own hash chain shows an event modified, inserted or reordered; only something kept
//! outside the log shows events deleted from a contact's end, or a whole chain rewritten:
//! `verify` checks every anchored head against the log.
//!
//! What it proves, and what not: every event up to a seal's heads is in the log as it was
//! when sealed. Events written after the newest seal are covered only by the log's own
//! chain; and someone who can rewrite both the log and the anchor file can hide anything,
//! so keep a copy of the file where the worker cannot write (another machine, an S3 bucket
//! with object lock) and verify against it with `verify --anchor FILE`.

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::EventStore;
use crate::events::envelope::digest_hex;

/// Events read per page while sealing.
const PAGE: usize = 5_000;

/// A contact's head as sealed: `(seq, hash)`.
pub type SealedHead = (u64, String);

/// One line of the anchor file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Seal {
    sealed_at: DateTime<Utc>,
    /// Every event at or before this global position was read for it.
    position: u64,
    /// The heads that moved since the seal before.
    heads: BTreeMap<String, SealedHead>,
    /// The digest of the seal before ("" for the first).
    prev: String,
    /// The digest of this seal: over `prev`, `position`, `sealedAt` and `heads`.
    digest: String,
}

impl Seal {
    fn compute_digest(&self) -> String {
        let heads = serde_json::to_string(&self.heads).expect("heads serialise");
        digest_hex(&[
            self.prev.as_bytes(),
            self.position.to_string().as_bytes(),
            self.sealed_at.to_rfc3339().as_bytes(),
            heads.as_bytes(),
        ])
    }
}

/// The anchor file and the heads it has sealed so far.
#[derive(Debug)]
pub struct Anchor {
    path: PathBuf,
    heads: HashMap<String, SealedHead>,
    position: u64,
    last_digest: String,
    seals: usize,
}

impl Anchor {
    /// Reads the anchor at `path` (none yet is an empty anchor), checking the seals' own
    /// chain: an edited, reordered or removed line in the middle is an error naming it.
    pub fn open(path: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let path = path.into();
        let mut anchor = Self {
            path,
            heads: HashMap::new(),
            position: 0,
            last_digest: String::new(),
            seals: 0,
        };
        let file = match std::fs::File::open(&anchor.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(anchor),
            Err(e) => return Err(e).with_context(|| format!("opening {}", anchor.path.display())),
        };
        for (number, line) in BufReader::new(file).lines().enumerate() {
            let line = line?;
            let at = || format!("{} line {}", anchor.path.display(), number + 1);
            let seal: Seal =
                serde_json::from_str(&line).with_context(|| format!("{}: not a seal", at()))?;
            if seal.prev != anchor.last_digest || seal.digest != seal.compute_digest() {
                bail!(
                    "{}: the anchor itself was altered (its seal chain breaks)",
                    at()
                );
            }
            anchor.position = anchor.position.max(seal.position);
            anchor.heads.extend(seal.heads);
            anchor.last_digest = seal.digest;
            anchor.seals += 1;
        }
        Ok(anchor)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every contact's newest sealed head.
    pub fn heads(&self) -> &HashMap<String, SealedHead> {
        &self.heads
    }

    /// Seals written so far.
    pub fn seals(&self) -> usize {
        self.seals
    }

    /// Reads the log from the last seal's position and appends one seal with the heads that
    /// moved (none when nothing moved); returns how many heads it sealed. The line is
    /// synced to disk before this returns.
    pub async fn seal(&mut self, events: &dyn EventStore) -> anyhow::Result<usize> {
        let mut moved = BTreeMap::new();
        let mut after = self.position.saturating_sub(events.replay_window());
        let mut position = self.position;
        loop {
            let page = events.read_all(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            position = position.max(last.position);
            for item in &page {
                let e = &item.event;
                let newer = |head: Option<&SealedHead>| head.is_none_or(|(seq, _)| e.seq > *seq);
                if newer(moved.get(&e.contact_id)) && newer(self.heads.get(&e.contact_id)) {
                    moved.insert(e.contact_id.clone(), (e.seq, e.hash.clone()));
                }
            }
            if page.len() < PAGE {
                break;
            }
        }
        if moved.is_empty() {
            return Ok(0);
        }
        let mut seal = Seal {
            sealed_at: Utc::now(),
            position,
            heads: moved,
            prev: self.last_digest.clone(),
            digest: String::new(),
        };
        seal.digest = seal.compute_digest();
        let mut line = serde_json::to_vec(&seal)?;
        line.push(b'\n');
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        file.write_all(&line)?;
        file.sync_data()?;
        let sealed = seal.heads.len();
        self.position = position;
        self.heads.extend(seal.heads);
        self.last_digest = seal.digest;
        self.seals += 1;
        Ok(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::query::tests::three_calls;
    use crate::store::SeqRange;

    #[tokio::test]
    async fn seals_hold_every_contacts_head_and_only_what_moved() {
        let events = three_calls().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anchors.jsonl");
        let mut anchor = Anchor::open(&path).unwrap();
        assert_eq!(anchor.seal(&events).await.unwrap(), 3);
        assert_eq!(anchor.seal(&events).await.unwrap(), 0, "nothing moved");
        let log = events.read("c-calm", SeqRange::all()).await.unwrap();
        let last = log.last().unwrap();
        let reopened = Anchor::open(&path).unwrap();
        assert_eq!(reopened.seals(), 1);
        assert_eq!(
            reopened.heads()["c-calm"],
            (last.seq, last.hash.clone()),
            "the head is the log's last event"
        );
    }

    #[tokio::test]
    async fn an_altered_seal_is_refused() {
        let events = three_calls().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anchors.jsonl");
        Anchor::open(&path).unwrap().seal(&events).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let log = events.read("c-calm", SeqRange::all()).await.unwrap();
        let seq = log.last().unwrap().seq;
        let forged = text.replace(
            &format!("\"c-calm\":[{seq},"),
            &format!("\"c-calm\":[{},", seq - 1),
        );
        assert_ne!(forged, text);
        std::fs::write(&path, forged).unwrap();
        let error = Anchor::open(&path).unwrap_err().to_string();
        assert!(
            error.contains("line 1") && error.contains("altered"),
            "{error}"
        );
    }
}
