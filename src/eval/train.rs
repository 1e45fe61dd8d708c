//! `callpulse train sentiment-head`: fits the sentiment head on the training part of the dev
//! split (never on held-out rows) and scores it on the held-out rows.

use std::path::Path;

use crate::models::Label;
use crate::models::fetch::sha256_file;
use crate::models::head::{HOLDOUT_RULE, Provenance, SentimentHead, is_holdout};
use crate::models::local::LocalModel;
use crate::models::prompts::SENTIMENT_PROMPT_VERSION;

use super::data::{SentimentRow, read_jsonl, take_stratified};
use super::metrics::{ClassMetrics, classification};
use super::progress;

/// What a training run produced.
pub struct TrainOutcome {
    /// The fitted head.
    pub head: SentimentHead,
    /// Its scores on the held-out rows.
    pub holdout: ClassMetrics,
}

/// Trains a head on the features `model` computes for the non-held-out rows of `data`. The
/// L2 strength is chosen among `alphas` by macro-F1 on the last tenth of the training rows
/// (held-out rows play no part), then the head is refitted on every training row.
pub async fn sentiment_head(
    model: &LocalModel,
    data: &Path,
    limit: Option<usize>,
    holdout_limit: Option<usize>,
    alphas: &[f64],
    command: String,
) -> anyhow::Result<TrainOutcome> {
    let rows: Vec<SentimentRow> = read_jsonl(data)?;
    let (holdout, train): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| is_holdout(&r.id));
    let train = take_stratified(train, limit, |r| &r.source);
    let holdout = take_stratified(holdout, holdout_limit, |r| &r.source);

    let (train_x, train_y) = featurise(model, &train, "features (train)").await?;
    let info = &model.info().sentiment;
    let provenance = Provenance {
        model_name: info.id.clone(),
        model_bytes: info.bytes,
        model_sha256: sha256_file(&info.path)?,
        prompt_version: SENTIMENT_PROMPT_VERSION,
        data_sha256: sha256_file(data)?,
        train_rows: train.len(),
        holdout_rule: HOLDOUT_RULE.into(),
        command,
        holdout_metrics: serde_json::Value::Null,
    };
    let alpha = choose_alpha(&train_x, &train_y, alphas, &provenance)?;
    tracing::info!(alpha, "chosen L2 strength");
    let mut head = SentimentHead::train(&train_x, &train_y, alpha, provenance)?;

    let (test_x, test_y) = featurise(model, &holdout, "features (held out)").await?;
    let holdout_metrics = score(&head, &test_x, &test_y);
    head.provenance.holdout_metrics = serde_json::to_value(holdout_metrics)?;
    head.provenance
        .command
        .push_str(&format!(" (chosen alpha {alpha})"));
    Ok(TrainOutcome {
        head,
        holdout: holdout_metrics,
    })
}

/// The alpha with the best macro-F1 on the last tenth of the training rows.
fn choose_alpha(
    xs: &[Vec<f32>],
    ys: &[usize],
    alphas: &[f64],
    provenance: &Provenance,
) -> anyhow::Result<f64> {
    anyhow::ensure!(!alphas.is_empty(), "no alpha to try");
    if alphas.len() == 1 {
        return Ok(alphas[0]);
    }
    let cut = xs.len() - xs.len() / 10;
    let mut best = (f64::NEG_INFINITY, alphas[0]);
    for &alpha in alphas {
        let head = SentimentHead::train(&xs[..cut], &ys[..cut], alpha, provenance.clone())?;
        let f1 = score(&head, &xs[cut..], &ys[cut..]).macro_f1;
        tracing::info!(alpha, validation_macro_f1 = f1, "alpha tried");
        if f1 > best.0 {
            best = (f1, alpha);
        }
    }
    Ok(best.1)
}

fn score(head: &SentimentHead, xs: &[Vec<f32>], ys: &[usize]) -> ClassMetrics {
    let pairs: Vec<(Label, Label)> = xs
        .iter()
        .zip(ys)
        .map(|(x, &y)| {
            let p = head.predict(x);
            let best = (0..3).max_by(|a, b| p[*a].total_cmp(&p[*b])).unwrap_or(1);
            (Label::ALL[y], Label::ALL[best])
        })
        .collect();
    classification(&pairs)
}

async fn featurise(
    model: &LocalModel,
    rows: &[SentimentRow],
    what: &str,
) -> anyhow::Result<(Vec<Vec<f32>>, Vec<usize>)> {
    let bar = progress(rows.len(), what);
    let mut xs = Vec::with_capacity(rows.len());
    let mut ys = Vec::with_capacity(rows.len());
    for row in rows {
        let label = Label::parse(&row.label)
            .ok_or_else(|| anyhow::anyhow!("row {}: unknown label {:?}", row.id, row.label))?;
        xs.push(model.features(row.text.clone()).await?);
        ys.push(label.index());
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((xs, ys))
}
