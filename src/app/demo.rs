//! `callpulse demo`: the shipped sample calls through the pipeline with the local SLM, shown
//! in the terminal: each call's transcript with sentiment, its escalations and its summary.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::app::query::{self, Format};
use crate::app::run::Inputs;
use crate::app::{self, DataDir};
use crate::config::Config;
use crate::ingest::record::{self, Record};
use crate::models::Turn;
use crate::store::ContactFilter;

/// The final transcript of one call, as read from records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Contact id.
    pub contact_id: String,
    /// Final segments in arrival order, duplicates removed.
    pub turns: Vec<Turn>,
}

/// A record that was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// File and 1-based line.
    pub position: String,
    /// Why.
    pub reason: String,
}

/// Reads every `*.jsonl` file under `path` (or the one file) into calls. Partial segments
/// are skipped (a final one supersedes them), re-delivered segments are kept once, and bad
/// lines are reported without losing the lines around them.
pub fn read_calls(path: &Path) -> anyhow::Result<(Vec<Call>, Vec<BadRecord>)> {
    let files = call_files(path)?;
    let mut calls: Vec<Call> = Vec::new();
    let mut seen = HashSet::new();
    let mut bad = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let position = format!("{}:{}", file.display(), i + 1);
            let segment = match record::parse(line) {
                Ok(Record::Segment(segment)) => segment,
                Ok(other) => {
                    call_for(&mut calls, other.contact_id());
                    continue;
                }
                Err(e) => {
                    bad.push(BadRecord {
                        position,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            if segment.is_partial {
                continue;
            }
            let id = segment
                .segment_id
                .clone()
                .unwrap_or_else(|| position.clone());
            if !seen.insert((segment.contact_id.clone(), id)) {
                continue;
            }
            let participant = segment.participant.unwrap_or_else(|| "UNKNOWN".into());
            call_for(&mut calls, &segment.contact_id)
                .turns
                .push(Turn::new(participant, segment.transcript));
        }
    }
    Ok((calls, bad))
}

fn call_for<'a>(calls: &'a mut Vec<Call>, contact_id: &str) -> &'a mut Call {
    let index = match calls.iter().position(|c| c.contact_id == contact_id) {
        Some(i) => i,
        None => {
            calls.push(Call {
                contact_id: contact_id.into(),
                turns: Vec::new(),
            });
            calls.len() - 1
        }
    };
    &mut calls[index]
}

/// The `*.jsonl` files under `path` (sorted), or `path` itself when it is a file.
pub fn call_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    Ok(files)
}

/// Runs the calls under `path` through the whole pipeline (event log in a fresh data
/// directory, the configured model, escalation rules, summaries), then shows each call's
/// timeline and the records that were refused.
pub async fn run(config: &Config, path: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    // The files arrive all at once, far faster than calls happen; the demo wants every
    // utterance judged on its own, however long the backlog, rather than live shedding.
    let mut config = config.clone();
    config.gateway.sentiment_deadline_ms = 3_600_000;
    config.gateway.max_coalesced = 1;
    let config = &config;
    let root = tempfile::Builder::new()
        .prefix("callpulse-demo-")
        .tempdir()?
        .keep();
    let data = DataDir::open(&root)?;
    let backends = app::backends(config).await?;
    eprintln!(
        "model: {}; event log, summaries and attribute log in {}",
        backends.sentiment_id,
        root.display()
    );
    let started = Instant::now();
    let stats = app::run::run(
        config,
        &data,
        backends,
        Inputs {
            files: call_files(path)?,
            listen: None,
            settle_timeout: Duration::from_secs(1800),
            ..Inputs::default()
        },
    )
    .await?;
    let (events, projections) = app::stores(config, &data).await?;
    let contacts = projections.contacts(&ContactFilter::default()).await?;
    for contact in &contacts {
        writeln!(
            out,
            "\n=== {} ({} utterances{}) ===",
            contact.contact_id,
            contact.utterances,
            if contact.escalated { ", ESCALATED" } else { "" }
        )?;
        query::contact(events.as_ref(), &contact.contact_id, Format::Table, out).await?;
    }
    writeln!(
        out,
        "\n{} calls in {:.1} s: {} records appended, {} duplicates ignored, {} refused, {} bad lines",
        contacts.len(),
        started.elapsed().as_secs_f64(),
        stats.appended,
        stats.duplicates,
        stats.refused,
        stats.rejected
    )?;
    let rejected = std::fs::read_to_string(data.reject_log()).unwrap_or_default();
    for line in rejected.lines() {
        if let Ok(r) = serde_json::from_str::<serde_json::Value>(line) {
            writeln!(
                out,
                "  refused {}:{}: {}",
                r["position"]["source"].as_str().unwrap_or("?"),
                r["position"]["line"],
                r["reason"].as_str().unwrap_or("?")
            )?;
        }
    }
    writeln!(
        out,
        "\nExplore it: callpulse query contacts --data-dir {}",
        root.display()
    )?;
    Ok(())
}

/// The shipped sample calls: `samples/calls` under the working directory, else under the
/// source tree the binary was built from.
pub fn samples_dir() -> PathBuf {
    let local = PathBuf::from("samples/calls");
    if local.is_dir() {
        local
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/calls")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_calls_dedupes_skips_partials_and_reports_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.jsonl");
        let seg = |id: &str, text: &str, partial: bool| {
            format!(
                r#"{{"type":"SEGMENT","contactId":"c","segmentId":"{id}","participant":"CUSTOMER","transcript":"{text}","isPartial":{partial}}}"#
            )
        };
        let lines = [
            r#"{"type":"STARTED","contactId":"c"}"#.to_string(),
            seg("s-1", "hel", true),
            seg("s-1", "hello", false),
            seg("s-1", "hello", false),
            "garbage".into(),
            seg("s-2", "bye", false),
            r#"{"contactId":"d","transcript":"minimal","isPartial":false}"#.into(),
        ];
        std::fs::write(&file, lines.join("\n")).unwrap();
        let (calls, bad) = read_calls(dir.path()).unwrap();
        assert_eq!(calls.len(), 2);
        let texts: Vec<_> = calls[0].turns.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["hello", "bye"]);
        assert_eq!(calls[1].turns, [Turn::new("UNKNOWN", "minimal")]);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].position.ends_with("c.jsonl:5"));
    }
}
