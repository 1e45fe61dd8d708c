//! `callpulse demo`: the shipped sample calls through the local SLM, shown in the terminal:
//! every customer utterance with its sentiment, then the call's summary.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use crate::ingest::record::{self, Record};
use crate::models::{CancellationToken, Label, SentimentClassifier, Summariser, Turn};

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
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
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

/// Runs the demo over the calls under `path`, writing a readable report to `out`.
pub async fn run<M: SentimentClassifier + Summariser>(
    model: &M,
    path: &Path,
    context_turns: usize,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (calls, bad) = read_calls(path)?;
    let cancel = CancellationToken::new();
    for call in &calls {
        writeln!(
            out,
            "\n=== {} ({} turns) ===",
            call.contact_id,
            call.turns.len()
        )?;
        let mut previous: Option<Label> = None;
        for (i, turn) in call.turns.iter().enumerate() {
            let text = ellipsis(&turn.text, 90);
            if turn.participant == "AGENT" {
                writeln!(out, "  {:<9} {text}", "AGENT")?;
                continue;
            }
            let context = &call.turns[i.saturating_sub(context_turns)..i];
            let started = Instant::now();
            let judged = model.classify(turn, context, &cancel).await?;
            let ms = started.elapsed().as_millis();
            let change = match previous {
                Some(p) if p != judged.label => format!("  <- turned {}", judged.label),
                None if judged.label == Label::Negative => "  <- NEGATIVE".into(),
                _ => String::new(),
            };
            previous = Some(judged.label);
            writeln!(
                out,
                "  {:<9} {text}\n  {:<9} {} p={:.2} ({ms} ms){change}",
                turn.participant,
                "",
                judged.label,
                judged.scores.get(judged.label)
            )?;
        }
        let started = Instant::now();
        match model.summarise(&call.turns, &cancel).await {
            Ok(summary) => {
                writeln!(
                    out,
                    "  --- summary ({} chunk{}, {:.1} s, {} tokens in, {} out)\n{}",
                    summary.chunks,
                    if summary.chunks == 1 { "" } else { "s" },
                    started.elapsed().as_secs_f64(),
                    summary.usage.input_tokens,
                    summary.usage.output_tokens,
                    indent(&summary.text)
                )?;
                if let Some(label) = summary.customer_sentiment {
                    writeln!(out, "    customer sentiment at the end: {label}")?;
                }
            }
            Err(e) => writeln!(out, "  --- no summary: {e}")?,
        }
    }
    if !bad.is_empty() {
        writeln!(
            out,
            "\n{} bad record(s), skipped without losing their neighbours:",
            bad.len()
        )?;
        for b in &bad {
            writeln!(out, "  {}: {}", b.position, b.reason)?;
        }
    }
    Ok(())
}

fn ellipsis(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    format!("{}...", text.chars().take(max).collect::<String>())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
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
