//! Measuring the models and the redactor on labelled data: `callpulse eval
//! sentiment|summary|escalation|redaction` and the training of the sentiment head.

pub mod data;
pub mod escalation;
pub mod metrics;
pub mod redaction;
pub mod rouge;
pub mod train;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use async_trait::async_trait;

use crate::models::{
    CancellationToken, Label, ModelError, SentimentClassifier, Summariser, Summary, Turn, Usage,
};
use data::{SentimentRow, SummaryRow};
use metrics::{ClassMetrics, classification};
use rouge::RougeScores;

/// Sentiment scores overall and per source.
#[derive(Debug, Clone, Serialize)]
pub struct SentimentReport {
    /// Over every row.
    #[serde(flatten)]
    pub overall: ClassMetrics,
    /// Per `source`.
    pub per_source: BTreeMap<String, ClassMetrics>,
}

/// Summary scores for one set of rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SummaryMetrics {
    /// Mean ROUGE F1 against the best reference (a failed summary scores 0).
    #[serde(flatten)]
    pub rouge: RougeScores,
    /// Rows.
    pub n: usize,
    /// Rows whose summary failed validation.
    pub failed: usize,
    /// Mean length of the summaries, in words.
    pub mean_words: f64,
    /// Share of summaries (their text or any field) naming a number or capitalised word
    /// absent from the dialogue.
    pub novel_entity_share: f64,
}

/// Summary scores overall and per source.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryReport {
    /// Over every row.
    #[serde(flatten)]
    pub overall: SummaryMetrics,
    /// Per `source`.
    pub per_source: BTreeMap<String, SummaryMetrics>,
}

/// Where each row's output goes, as JSON Lines (`--predictions FILE`), so that others can
/// score it; nowhere when no file was named.
pub struct Predictions(Option<(BufWriter<File>, std::path::PathBuf)>);

impl Predictions {
    /// Writes to `path` (created or truncated), or nowhere.
    pub fn create(path: Option<&Path>) -> anyhow::Result<Self> {
        Ok(Self(match path {
            Some(path) => Some((
                BufWriter::new(
                    File::create(path).with_context(|| format!("creating {}", path.display()))?,
                ),
                path.to_path_buf(),
            )),
            None => None,
        }))
    }

    /// Appends one row's output.
    pub fn write(&mut self, row: &impl Serialize) -> anyhow::Result<()> {
        if let Some((out, path)) = &mut self.0 {
            serde_json::to_writer(&mut *out, row)?;
            out.write_all(b"\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// Flushes what was written.
    pub fn finish(self) -> anyhow::Result<()> {
        if let Some((mut out, path)) = self.0 {
            out.flush()
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {wide_bar} {pos}/{len} [{elapsed_precise}<{eta_precise}]",
        )
        .expect("valid template"),
    );
    bar.set_message(what.to_string());
    bar
}

/// Classifies every row (as a customer utterance without context) and scores the labels.
pub async fn sentiment(
    model: &dyn SentimentClassifier,
    rows: &[SentimentRow],
    predictions: &mut Predictions,
) -> anyhow::Result<SentimentReport> {
    let bar = progress(rows.len(), "sentiment");
    let cancel = CancellationToken::new();
    let mut pairs: BTreeMap<String, Vec<(Label, Label)>> = BTreeMap::new();
    for row in rows {
        let gold = Label::parse(&row.label)
            .ok_or_else(|| anyhow::anyhow!("row {}: unknown label {:?}", row.id, row.label))?;
        let judged = model
            .classify(&Turn::new("CUSTOMER", row.text.clone()), &[], &cancel)
            .await?;
        predictions.write(&serde_json::json!({
            "id": row.id,
            "source": row.source,
            "gold": gold,
            "label": judged.label,
            "scores": judged.scores,
        }))?;
        pairs
            .entry(row.source.clone())
            .or_default()
            .push((gold, judged.label));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let all: Vec<_> = pairs.values().flatten().copied().collect();
    Ok(SentimentReport {
        overall: classification(&all),
        per_source: pairs
            .iter()
            .map(|(s, p)| (s.clone(), classification(p)))
            .collect(),
    })
}

/// The lead-N baseline: a call's first N turns, verbatim, as its summary.
pub struct LeadTurns(pub usize);

#[async_trait]
impl Summariser for LeadTurns {
    async fn summarise(
        &self,
        turns: &[Turn],
        _: &CancellationToken,
    ) -> Result<Summary, ModelError> {
        let lead: Vec<&str> = turns.iter().take(self.0).map(|t| t.text.as_str()).collect();
        Ok(Summary {
            text: lead.join(" "),
            reason: String::new(),
            resolution: String::new(),
            follow_up: String::new(),
            customer_sentiment: None,
            model_id: format!("lead-{}", self.0),
            prompt_version: 0,
            chunks: 1,
            usage: Usage::default(),
            cost_usd: None,
        })
    }
}

/// One scored summary.
struct Scored {
    rouge: RougeScores,
    failed: bool,
    words: usize,
    novel: bool,
}

/// Summarises every row and scores it against its references.
pub async fn summary(
    model: &dyn Summariser,
    rows: &[SummaryRow],
    predictions: &mut Predictions,
) -> anyhow::Result<SummaryReport> {
    let bar = progress(rows.len(), "summary");
    let cancel = CancellationToken::new();
    let mut scored: BTreeMap<String, Vec<Scored>> = BTreeMap::new();
    for row in rows {
        let result = match model.summarise(&row.turns, &cancel).await {
            Ok(summary) => {
                let lines = [
                    &summary.text,
                    &summary.reason,
                    &summary.resolution,
                    &summary.follow_up,
                ];
                let scored = Scored {
                    rouge: rouge::best(&summary.text, &row.references),
                    failed: false,
                    words: summary.text.split_whitespace().count(),
                    novel: lines
                        .iter()
                        .any(|line| names_novel_entity(line, &row.turns)),
                };
                predictions.write(&serde_json::json!({
                    "id": row.id,
                    "source": row.source,
                    "text": summary.text,
                    "reason": summary.reason,
                    "resolution": summary.resolution,
                    "followUp": summary.follow_up,
                    "rougeL": scored.rouge.rouge_l,
                    "novelEntity": scored.novel,
                }))?;
                scored
            }
            Err(ModelError::InvalidOutput(reason)) => {
                tracing::warn!(row = %row.id, %reason, "summary rejected");
                predictions.write(&serde_json::json!({
                    "id": row.id,
                    "source": row.source,
                    "failed": reason,
                }))?;
                Scored {
                    rouge: RougeScores::default(),
                    failed: true,
                    words: 0,
                    novel: false,
                }
            }
            Err(e) => return Err(e.into()),
        };
        scored.entry(row.source.clone()).or_default().push(result);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let all: Vec<&Scored> = scored.values().flatten().collect();
    Ok(SummaryReport {
        overall: summarise_scores(&all),
        per_source: scored
            .iter()
            .map(|(s, rows)| {
                (
                    s.clone(),
                    summarise_scores(&rows.iter().collect::<Vec<_>>()),
                )
            })
            .collect(),
    })
}

fn summarise_scores(rows: &[&Scored]) -> SummaryMetrics {
    let n = rows.len();
    let mean = |f: &dyn Fn(&Scored) -> f64| {
        if n == 0 {
            0.0
        } else {
            rows.iter().map(|r| f(r)).sum::<f64>() / n as f64
        }
    };
    SummaryMetrics {
        rouge: RougeScores {
            rouge1: mean(&|r| r.rouge.rouge1),
            rouge2: mean(&|r| r.rouge.rouge2),
            rouge_l: mean(&|r| r.rouge.rouge_l),
        },
        n,
        failed: rows.iter().filter(|r| r.failed).count(),
        mean_words: mean(&|r| r.words as f64),
        novel_entity_share: mean(&|r| f64::from(u8::from(r.novel))),
    }
}

/// Whether a summary names a number or a capitalised word (not at a sentence start) that the
/// dialogue never mentions: a cheap hallucination check.
pub fn names_novel_entity(summary: &str, turns: &[Turn]) -> bool {
    let dialogue = turns
        .iter()
        .map(|t| t.text.to_lowercase())
        .collect::<Vec<_>>()
        .join(" ");
    let mut sentence_start = true;
    for raw in summary.split_whitespace() {
        let word = raw.trim_matches(|c: char| !c.is_alphanumeric());
        let word = word
            .strip_suffix("'s")
            .or_else(|| word.strip_suffix("\u{2019}s"))
            .unwrap_or(word);
        let is_entity = word.chars().any(|c| c.is_ascii_digit())
            || (!sentence_start && word.chars().next().is_some_and(char::is_uppercase));
        let known = [
            "Customer",
            "Agent",
            "Person1",
            "Person2",
            "Follow-up",
            "None",
        ];
        if is_entity && !known.contains(&word) && !dialogue.contains(&word.to_lowercase()) {
            return true;
        }
        sentence_start = raw.ends_with(['.', '!', '?', ':']);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lead_turns_take_the_first_turns_verbatim() {
        let turns = [
            Turn::new("A", "one two"),
            Turn::new("B", "three"),
            Turn::new("A", "four"),
        ];
        let summary = LeadTurns(2)
            .summarise(&turns, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(summary.text, "one two three");
    }

    #[test]
    fn novel_entities_are_numbers_and_names_not_in_the_dialogue() {
        let turns = [Turn::new("CUSTOMER", "My order 5512 from Berlin is late")];
        assert!(!names_novel_entity(
            "The customer says order 5512 from Berlin is late.",
            &turns
        ));
        assert!(names_novel_entity(
            "The customer says order 9999 is late.",
            &turns
        ));
        assert!(names_novel_entity(
            "The customer in Paris is upset.",
            &turns
        ));
        assert!(!names_novel_entity("Late order. Refund requested.", &turns));
        assert!(!names_novel_entity("It waits at Berlin's depot.", &turns));
    }
}
