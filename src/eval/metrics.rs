//! Classification metrics for sentiment: macro-F1, accuracy, NEGATIVE precision and recall.

use serde::Serialize;

use crate::models::Label;

/// Scores of a set of predictions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClassMetrics {
    /// Mean F1 over the labels that occur in the gold or predicted labels.
    pub macro_f1: f64,
    /// Share of exact matches.
    pub accuracy: f64,
    /// Of the utterances predicted NEGATIVE, the share that are.
    pub negative_precision: f64,
    /// Of the NEGATIVE utterances, the share predicted so.
    pub negative_recall: f64,
    /// Number of predictions.
    pub n: usize,
}

/// Scores `(gold, predicted)` pairs.
pub fn classification(pairs: &[(Label, Label)]) -> ClassMetrics {
    let count = |f: &dyn Fn(&(Label, Label)) -> bool| pairs.iter().filter(|p| f(p)).count() as f64;
    let ratio = |a: f64, b: f64| if b == 0.0 { 0.0 } else { a / b };
    let mut f1s = Vec::new();
    let mut negative = (0.0, 0.0);
    for label in Label::ALL {
        let tp = count(&|&(g, p)| g == label && p == label);
        let predicted = count(&|&(_, p)| p == label);
        let actual = count(&|&(g, _)| g == label);
        if predicted + actual == 0.0 {
            continue;
        }
        let (precision, recall) = (ratio(tp, predicted), ratio(tp, actual));
        f1s.push(ratio(2.0 * precision * recall, precision + recall));
        if label == Label::Negative {
            negative = (precision, recall);
        }
    }
    ClassMetrics {
        macro_f1: ratio(f1s.iter().sum(), f1s.len() as f64),
        accuracy: ratio(count(&|&(g, p)| g == p), pairs.len() as f64),
        negative_precision: negative.0,
        negative_recall: negative.1,
        n: pairs.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Label::*;

    #[test]
    fn perfect_and_known_mixed_scores() {
        let perfect = classification(&[(Positive, Positive), (Negative, Negative)]);
        assert_eq!(
            (perfect.macro_f1, perfect.accuracy, perfect.n),
            (1.0, 1.0, 2)
        );

        // gold: P P N N U ; pred: P N N N P
        let m = classification(&[
            (Positive, Positive),
            (Positive, Negative),
            (Negative, Negative),
            (Negative, Negative),
            (Neutral, Positive),
        ]);
        assert!((m.accuracy - 0.6).abs() < 1e-9);
        assert!((m.negative_precision - 2.0 / 3.0).abs() < 1e-9);
        assert!((m.negative_recall - 1.0).abs() < 1e-9);
        // F1: P = 0.5, N = 0.8, U = 0 -> mean 0.4333
        assert!(
            (m.macro_f1 - (0.5 + 0.8 + 0.0) / 3.0).abs() < 1e-9,
            "{}",
            m.macro_f1
        );
    }

    #[test]
    fn empty_input_scores_zero() {
        assert_eq!(classification(&[]).accuracy, 0.0);
    }
}
