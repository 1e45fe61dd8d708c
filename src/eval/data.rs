//! Readers for the evaluation files (see `../shared/eval/README.md`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::models::Turn;

/// One labelled utterance of `sentiment-dev.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct SentimentRow {
    /// Row id, unique in the file.
    pub id: String,
    /// Where the text comes from (`airline`, `amazon`, `movie`).
    pub source: String,
    /// The utterance.
    pub text: String,
    /// `POSITIVE`, `NEUTRAL` or `NEGATIVE`.
    pub label: String,
}

/// One dialogue of `summaries-dev.jsonl` with its human summaries.
#[derive(Debug, Clone, Deserialize)]
pub struct SummaryRow {
    /// Row id.
    pub id: String,
    /// Where the dialogue comes from (`dialogsum`, `tweetsumm`).
    pub source: String,
    /// The conversation.
    pub turns: Vec<Turn>,
    /// One or more reference summaries.
    pub references: Vec<String>,
}

/// Reads a JSON Lines file; a malformed line is an error naming its line number.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a valid row", path.display(), i + 1))
        })
        .collect()
}

/// Drops the first `skip` rows of each source (those a tuning run looked at).
pub fn skip_per_source<T>(rows: Vec<T>, skip: usize, source: impl Fn(&T) -> &str) -> Vec<T> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    rows.into_iter()
        .filter(|row| {
            let n = seen.entry(source(row).to_string()).or_default();
            *n += 1;
            *n > skip
        })
        .collect()
}

/// Keeps at most `limit` rows, taken in turn from each source (in order of first
/// appearance, file order within a source), so a short run still covers every source.
pub fn take_stratified<T>(
    rows: Vec<T>,
    limit: Option<usize>,
    source: impl Fn(&T) -> &str,
) -> Vec<T> {
    let Some(limit) = limit else { return rows };
    let mut order: Vec<String> = Vec::new();
    let mut queues: HashMap<String, std::collections::VecDeque<T>> = HashMap::new();
    for row in rows {
        let key = source(&row).to_string();
        if !queues.contains_key(&key) {
            order.push(key.clone());
        }
        queues.entry(key).or_default().push_back(row);
    }
    let mut out = Vec::with_capacity(limit);
    while out.len() < limit {
        let before = out.len();
        for key in &order {
            if out.len() == limit {
                break;
            }
            if let Some(row) = queues.get_mut(key).and_then(|q| q.pop_front()) {
                out.push(row);
            }
        }
        if out.len() == before {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_limit_covers_every_source_in_turn() {
        let rows = vec![("a", 1), ("a", 2), ("a", 3), ("b", 4), ("c", 5), ("c", 6)];
        let taken = take_stratified(rows.clone(), Some(4), |r| r.0);
        assert_eq!(taken, vec![("a", 1), ("b", 4), ("c", 5), ("a", 2)]);
        assert_eq!(take_stratified(rows.clone(), Some(100), |r| r.0).len(), 6);
        assert_eq!(take_stratified(rows.clone(), None, |r| r.0).len(), 6);
        assert_eq!(
            skip_per_source(rows, 1, |r| r.0),
            vec![("a", 2), ("a", 3), ("c", 6)]
        );
    }

    #[test]
    fn malformed_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        std::fs::write(
            &path,
            "{\"id\":\"1\",\"source\":\"s\",\"text\":\"t\",\"label\":\"NEUTRAL\"}\n\nnot json\n",
        )
        .unwrap();
        let err = read_jsonl::<SentimentRow>(&path).unwrap_err();
        assert!(format!("{err:#}").contains("rows.jsonl:3"), "{err:#}");
    }
}
