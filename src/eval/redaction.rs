//! `callpulse eval redaction`: recall and precision of the PII redactor on labelled
//! utterances (`tests/data/pii/`).
//!
//! A labelled value counts as caught when at least 90% of its letters and digits lie inside
//! what the redactor replaced (by any kind for the overall figure, by its own kind for the
//! per-kind one), so a card number with its last four digits left is missed. A replaced
//! stretch is correct when it overlaps a labelled value; precision is the share of replaced
//! stretches that are.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::redaction::{PiiKind, Redactor, overlaps};

/// Share of a value's letters and digits that must be replaced for it to count as caught.
pub const CAUGHT_SHARE: f64 = 0.9;

/// One labelled utterance.
#[derive(Debug, Clone, Deserialize)]
pub struct PiiRow {
    /// Row id.
    pub id: String,
    /// The utterance.
    pub text: String,
    /// Every value it holds.
    #[serde(default)]
    pub pii: Vec<PiiLabel>,
}

/// One labelled value.
#[derive(Debug, Clone, Deserialize)]
pub struct PiiLabel {
    /// What it is.
    #[serde(rename = "type")]
    pub kind: PiiKind,
    /// The value, as it appears in the row's text.
    pub text: String,
}

/// Counts for one kind, or for all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RedactionScores {
    /// Labelled values.
    pub values: usize,
    /// Of those, caught.
    pub caught: usize,
    /// Stretches replaced.
    pub redacted: usize,
    /// Of those, overlapping a labelled value.
    pub correct: usize,
    /// caught / values.
    pub recall: f64,
    /// correct / redacted.
    pub precision: f64,
}

impl RedactionScores {
    fn finish(mut self) -> Self {
        let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        self.recall = ratio(self.caught, self.values);
        self.precision = ratio(self.correct, self.redacted);
        self
    }
}

/// The scores overall and per kind, and the rows that went wrong.
#[derive(Debug, Clone, Serialize)]
pub struct RedactionReport {
    /// Rows scored.
    pub rows: usize,
    /// Over every kind.
    pub overall: RedactionScores,
    /// Per kind (of the labelled value for recall, of the replacement for precision).
    pub per_kind: BTreeMap<PiiKind, RedactionScores>,
    /// Ids of rows with a value missed (or found as another kind) or something replaced that
    /// is not a value.
    pub errors: Vec<String>,
}

fn alnum_share(text: &str, span: &Range<usize>, covered: &[Range<usize>]) -> f64 {
    let chars: Vec<usize> = text[span.clone()]
        .char_indices()
        .filter(|(_, c)| c.is_alphanumeric())
        .map(|(i, _)| span.start + i)
        .collect();
    if chars.is_empty() {
        return 1.0;
    }
    let inside = chars
        .iter()
        .filter(|&&i| covered.iter().any(|c| c.contains(&i)))
        .count();
    inside as f64 / chars.len() as f64
}

/// Scores `redactor` on `rows`; a label whose text is not in its row is an error.
pub fn score(redactor: &Redactor, rows: &[PiiRow]) -> anyhow::Result<RedactionReport> {
    let mut overall = RedactionScores::default();
    let mut per_kind: BTreeMap<PiiKind, RedactionScores> = BTreeMap::new();
    let mut errors = Vec::new();
    for row in rows {
        let found = redactor.find(&row.text);
        let mut labels = Vec::new();
        for label in &row.pii {
            let Some(start) = row.text.find(&label.text) else {
                anyhow::bail!("row {}: {:?} is not in its text", row.id, label.text);
            };
            labels.push((label.kind, start..start + label.text.len()));
        }
        let mut wrong = false;
        for (kind, span) in &labels {
            let all: Vec<_> = found.iter().map(|f| f.range.clone()).collect();
            let own: Vec<_> = found
                .iter()
                .filter(|f| f.kind == *kind)
                .map(|f| f.range.clone())
                .collect();
            let scores = per_kind.entry(*kind).or_default();
            scores.values += 1;
            overall.values += 1;
            if alnum_share(&row.text, span, &own) >= CAUGHT_SHARE {
                scores.caught += 1;
            } else {
                wrong = true;
            }
            if alnum_share(&row.text, span, &all) >= CAUGHT_SHARE {
                overall.caught += 1;
            }
        }
        for f in &found {
            let scores = per_kind.entry(f.kind).or_default();
            scores.redacted += 1;
            overall.redacted += 1;
            if labels.iter().any(|(_, span)| overlaps(span, &f.range)) {
                scores.correct += 1;
                overall.correct += 1;
            } else {
                wrong = true;
            }
        }
        if wrong {
            errors.push(row.id.clone());
        }
    }
    Ok(RedactionReport {
        rows: rows.len(),
        overall: overall.finish(),
        per_kind: per_kind.into_iter().map(|(k, s)| (k, s.finish())).collect(),
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, text: &str, pii: &[(PiiKind, &str)]) -> PiiRow {
        PiiRow {
            id: id.into(),
            text: text.into(),
            pii: pii
                .iter()
                .map(|(kind, text)| PiiLabel {
                    kind: *kind,
                    text: (*text).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn recall_counts_values_mostly_replaced_and_precision_counts_replacements_on_values() {
        let rows = [
            row(
                "caught",
                "card 4111 1111 1111 1111 ok",
                &[(PiiKind::Card, "4111 1111 1111 1111")],
            ),
            // Labelled as a phone, found as a card: caught overall, missed as a phone.
            row(
                "wrong-kind",
                "call 4111111111111111",
                &[(PiiKind::Phone, "4111111111111111")],
            ),
            row(
                "missed",
                "mail me, jdoe at home",
                &[(PiiKind::Email, "jdoe at home")],
            ),
            row("false-positive", "order 5555555555554444", &[]),
        ];
        let report = score(&Redactor::default(), &rows).unwrap();
        assert_eq!(report.rows, 4);
        assert_eq!((report.overall.values, report.overall.caught), (3, 2));
        assert_eq!((report.overall.redacted, report.overall.correct), (3, 2));
        assert_eq!(report.per_kind[&PiiKind::Phone].caught, 0);
        assert_eq!(report.per_kind[&PiiKind::Card].caught, 1);
        assert_eq!(report.per_kind[&PiiKind::Card].redacted, 3);
        assert_eq!(report.errors, ["wrong-kind", "missed", "false-positive"]);
    }

    #[test]
    fn a_label_not_in_its_text_is_refused() {
        let rows = [row("bad", "hello", &[(PiiKind::Email, "a@b.com")])];
        let error = score(&Redactor::default(), &rows).unwrap_err();
        assert!(error.to_string().contains("row bad"), "{error}");
    }
}
