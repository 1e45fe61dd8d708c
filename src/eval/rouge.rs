//! ROUGE-1, ROUGE-2 and ROUGE-L F1, after Lin (2004) and Google's `rouge-score`: lower-case,
//! every run of non-alphanumeric characters is a separator, tokens longer than three
//! characters are stemmed (Snowball English stemmer here, Porter in `rouge-score`).

use std::collections::HashMap;

use rust_stemmers::{Algorithm, Stemmer};
use serde::Serialize;

/// ROUGE F1 scores, each in 0..=1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RougeScores {
    /// Unigram overlap.
    pub rouge1: f64,
    /// Bigram overlap.
    pub rouge2: f64,
    /// Longest common subsequence.
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
}

/// Tokens as ROUGE compares them.
pub fn tokens(text: &str) -> Vec<String> {
    let stemmer = Stemmer::create(Algorithm::English);
    text.to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| {
            if t.len() > 3 {
                stemmer.stem(t).into_owned()
            } else {
                t.to_string()
            }
        })
        .collect()
}

/// Scores a candidate against one reference.
pub fn score(candidate: &str, reference: &str) -> RougeScores {
    let (c, r) = (tokens(candidate), tokens(reference));
    RougeScores {
        rouge1: ngram_f1(&c, &r, 1),
        rouge2: ngram_f1(&c, &r, 2),
        rouge_l: f1(lcs(&c, &r) as f64, c.len() as f64, r.len() as f64),
    }
}

/// Scores against several references, keeping the best of each metric.
pub fn best(candidate: &str, references: &[String]) -> RougeScores {
    references
        .iter()
        .map(|r| score(candidate, r))
        .fold(RougeScores::default(), |a, b| RougeScores {
            rouge1: a.rouge1.max(b.rouge1),
            rouge2: a.rouge2.max(b.rouge2),
            rouge_l: a.rouge_l.max(b.rouge_l),
        })
}

fn f1(overlap: f64, candidate: f64, reference: f64) -> f64 {
    if overlap == 0.0 {
        return 0.0;
    }
    let (p, r) = (overlap / candidate, overlap / reference);
    2.0 * p * r / (p + r)
}

fn ngram_f1(c: &[String], r: &[String], n: usize) -> f64 {
    let (cc, rc) = (ngram_counts(c, n), ngram_counts(r, n));
    let overlap: usize = cc
        .iter()
        .map(|(g, k)| (*k).min(*rc.get(g).unwrap_or(&0)))
        .sum();
    let total = |t: &[String]| t.len().saturating_sub(n - 1) as f64;
    f1(overlap as f64, total(c), total(r))
}

fn ngram_counts(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    for gram in tokens.windows(n) {
        *counts.entry(gram).or_default() += 1;
    }
    counts
}

fn lcs(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    for x in a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rouge_score_on_the_textbook_example() {
        // rouge-score: "the cat was found under the bed" vs "the cat was under the bed"
        let s = score(
            "the cat was found under the bed",
            "the cat was under the bed",
        );
        assert!((s.rouge1 - 2.0 * 6.0 / 13.0).abs() < 1e-9, "{s:?}");
        assert!((s.rouge2 - 2.0 * 4.0 / 11.0).abs() < 1e-9, "{s:?}");
        assert!((s.rouge_l - 2.0 * 6.0 / 13.0).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn tokenizes_and_stems_like_rouge() {
        assert_eq!(
            tokens("#Person1# is RUNNING, runs!"),
            ["person1", "is", "run", "run"]
        );
    }

    #[test]
    fn best_takes_each_metric_from_its_best_reference() {
        let refs = [
            "completely different words".to_string(),
            "a refund was issued".to_string(),
        ];
        let s = best("a refund was issued today", &refs);
        assert!(s.rouge_l > 0.8 && s.rouge1 > 0.8);
        assert_eq!(best("x", &[]), RougeScores::default());
    }
}
