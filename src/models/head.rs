//! The sentiment head: multinomial logistic regression over features the local SLM computes
//! for an utterance (its final hidden state where it is about to answer, plus the log
//! probabilities of the three label words). Trained by `callpulse train sentiment-head` on
//! the training part of the dev split only.
//!
//! The label still comes from scores, never from generated text, so the head is as
//! un-steerable as reading the label-word logits directly.

use linfa::prelude::*;
use linfa_logistic::MultiLogisticRegression;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where a head came from, so its figures can be reproduced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// GGUF `general.name` of the model whose features it reads.
    pub model_name: String,
    /// Size in bytes of that GGUF (a cheap identity check at load).
    pub model_bytes: u64,
    /// SHA-256 of the model file.
    pub model_sha256: String,
    /// Version of the sentiment prompt the features were read with.
    pub prompt_version: u32,
    /// SHA-256 of the training data file.
    pub data_sha256: String,
    /// Rows trained on.
    pub train_rows: usize,
    /// Which rows were held out (never trained on).
    pub holdout_rule: String,
    /// The command that produced the head.
    pub command: String,
    /// Scores on the held-out rows when it was trained.
    pub holdout_metrics: serde_json::Value,
}

/// A trained head: feature standardisation, then one linear score per label, then softmax.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentimentHead {
    /// Where it came from.
    pub provenance: Provenance,
    /// Per-feature mean subtracted before scoring.
    pub mean: Vec<f32>,
    /// Per-feature scale divided by before scoring.
    pub scale: Vec<f32>,
    /// One weight row per label, in `Label::ALL` order.
    pub weights: [Vec<f32>; 3],
    /// One bias per label.
    pub bias: [f32; 3],
}

/// Whether a dev-split row (by id) is held out of training: a fixed fifth of the rows,
/// chosen by hashing the id, so the split never depends on file order.
pub fn is_holdout(id: &str) -> bool {
    Sha256::digest(id.as_bytes())[0] % 5 == 0
}

/// The rule [`is_holdout`] applies, in words.
pub const HOLDOUT_RULE: &str = "rows whose SHA-256(id) first byte % 5 == 0 (about 20%)";

impl SentimentHead {
    /// Number of features the head reads.
    pub fn n_features(&self) -> usize {
        self.mean.len()
    }

    /// Label probabilities, in `Label::ALL` order.
    pub fn predict(&self, features: &[f32]) -> [f32; 3] {
        let mut logits = self.bias;
        for (i, &x) in features.iter().enumerate() {
            let z = (x - self.mean[i]) / self.scale[i];
            for (logit, row) in logits.iter_mut().zip(&self.weights) {
                *logit += row[i] * z;
            }
        }
        softmax(logits)
    }

    /// Fits a head on feature rows and label indices with L2 strength `alpha`.
    pub fn train(
        features: &[Vec<f32>],
        labels: &[usize],
        alpha: f64,
        provenance: Provenance,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !features.is_empty() && features.len() == labels.len(),
            "no training rows"
        );
        let d = features[0].len();
        let n = features.len();
        let (mean, scale) = standardisation(features);
        let x = Array2::from_shape_fn((n, d), |(r, c)| {
            f64::from((features[r][c] - mean[c]) / scale[c])
        });
        let y = Array1::from_iter(labels.iter().copied());
        let fitted = MultiLogisticRegression::default()
            .alpha(alpha)
            .max_iterations(300)
            .fit(&Dataset::new(x, y))?;
        let params = fitted.params();
        let intercept = fitted.intercept();
        let classes = fitted.classes();
        let mut weights: [Vec<f32>; 3] = Default::default();
        let mut bias = [0.0f32; 3];
        for (col, &class) in classes.iter().enumerate() {
            weights[class] = params.column(col).iter().map(|&w| w as f32).collect();
            bias[class] = intercept[col] as f32;
        }
        for (class, row) in weights.iter_mut().enumerate() {
            anyhow::ensure!(!row.is_empty(), "no training row has label {class}");
        }
        Ok(Self {
            provenance,
            mean,
            scale,
            weights,
            bias,
        })
    }
}

fn standardisation(features: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
    let d = features[0].len();
    let n = features.len() as f64;
    let mut mean = vec![0f64; d];
    let mut var = vec![0f64; d];
    for row in features {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += f64::from(x) / n;
        }
    }
    for row in features {
        for ((v, &x), m) in var.iter_mut().zip(row).zip(&mean) {
            *v += (f64::from(x) - m).powi(2) / n;
        }
    }
    (
        mean.iter().map(|&m| m as f32).collect(),
        var.iter().map(|&v| (v.sqrt() as f32).max(1e-6)).collect(),
    )
}

/// Softmax of a few scores.
pub fn softmax<const N: usize>(logits: [f32; N]) -> [f32; N] {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps = logits.map(|l| (l - max).exp());
    let sum: f32 = exps.iter().sum();
    exps.map(|e| e / sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provenance() -> Provenance {
        Provenance {
            model_name: "test".into(),
            model_bytes: 0,
            model_sha256: String::new(),
            prompt_version: 0,
            data_sha256: String::new(),
            train_rows: 0,
            holdout_rule: HOLDOUT_RULE.into(),
            command: "test".into(),
            holdout_metrics: serde_json::Value::Null,
        }
    }

    #[test]
    fn learns_a_separable_problem_and_round_trips_through_json() {
        // Label k is the feature with the largest value (plus noise-free offsets).
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..90 {
            let k = i % 3;
            let mut row = vec![0.1 * (i % 7) as f32; 3];
            row[k] += 5.0;
            features.push(row);
            labels.push(k);
        }
        let head = SentimentHead::train(&features, &labels, 0.01, provenance()).unwrap();
        for (row, &k) in features.iter().zip(&labels) {
            let p = head.predict(row);
            let best = (0..3).max_by(|a, b| p[*a].total_cmp(&p[*b])).unwrap();
            assert_eq!(best, k);
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        let json = serde_json::to_string(&head).unwrap();
        let back: SentimentHead = serde_json::from_str(&json).unwrap();
        assert_eq!(back.predict(&features[0]), head.predict(&features[0]));
    }

    #[test]
    fn holdout_is_a_stable_fifth() {
        let held = (0..10_000)
            .filter(|i| is_holdout(&format!("row-{i}")))
            .count();
        assert!((1_800..2_200).contains(&held), "{held}");
        assert_eq!(is_holdout("airline-1"), is_holdout("airline-1"));
    }

    #[test]
    fn softmax_is_stable_for_large_scores() {
        let p = softmax([1000.0, 0.0, -1000.0]);
        assert!((p[0] - 1.0).abs() < 1e-6 && p[2] == 0.0);
    }
}
