//! `callpulse bench model`: engine throughput and task latencies of the local SLM.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::app::demo::read_calls;
use crate::models::local::LocalModel;
use crate::models::{CancellationToken, ModelError, SentimentClassifier, Summariser, Turn};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Samples.
    pub n: usize,
}

impl Latency {
    /// Percentiles of a set of samples, in milliseconds (nearest rank).
    pub fn of(samples_ms: &mut [f64]) -> Self {
        samples_ms.sort_by(f64::total_cmp);
        let n = samples_ms.len();
        if n == 0 {
            return Self {
                p50_ms: 0.0,
                p99_ms: 0.0,
                mean_ms: 0.0,
                n,
            };
        }
        let rank = |q: f64| samples_ms[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Self {
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            mean_ms: samples_ms.iter().sum::<f64>() / n as f64,
            n,
        }
    }
}

/// What `bench model` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ModelBench {
    /// Sentiment model id.
    pub sentiment_model: String,
    /// Summary model id (it also checks negative utterances for anger).
    pub summary_model: String,
    /// CPU threads used.
    pub threads: usize,
    /// Seconds to load the model and prepare both contexts.
    pub load_s: f64,
    /// Summary model's prompt processing, tokens per second (best of 3 runs of
    /// `prefill_tokens`).
    pub prefill_tok_s: f64,
    /// Tokens per prefill run.
    pub prefill_tokens: usize,
    /// Summary model's generation, tokens per second (best of 3 runs of `decode_tokens`).
    pub decode_tok_s: f64,
    /// Tokens per decode run.
    pub decode_tokens: usize,
    /// Per-utterance sentiment latency over the sample calls' customer turns, as the
    /// pipeline asks for it (with the anger check where P(NEGATIVE) reaches the gate).
    pub sentiment: Latency,
    /// Of them, the utterances judged by the sentiment model alone.
    pub sentiment_alone: Latency,
    /// Of them, the utterances also checked for anger.
    pub sentiment_with_anger_check: Latency,
    /// Sentiment latency (one utterance at a time) while the 5-minute call is summarised.
    pub sentiment_during_summary: Latency,
    /// Summary latency of the five-minute sample call, seconds, per run.
    pub summary_5min_s: Vec<f64>,
    /// Words in that call.
    pub summary_5min_words: usize,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
}

/// Loads the model described by `config` and measures it.
pub async fn model(
    load: impl FnOnce() -> Result<LocalModel, ModelError>,
    samples: &Path,
    utterances: usize,
    threads: usize,
) -> anyhow::Result<ModelBench> {
    let started = Instant::now();
    let model = load()?;
    let load_s = started.elapsed().as_secs_f64();
    let (prefill_tokens, decode_tokens) = (512, 128);
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..3 {
        prefill.push(
            model
                .call(false, move |s| s.bench_prefill(prefill_tokens))
                .await??,
        );
        decode.push(
            model
                .call(false, move |s| s.bench_decode(decode_tokens))
                .await??,
        );
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);

    let (calls, _) = read_calls(samples)?;
    let customer: Vec<&Turn> = calls
        .iter()
        .flat_map(|c| &c.turns)
        .filter(|t| t.is_customer())
        .collect();
    anyhow::ensure!(
        !customer.is_empty(),
        "no customer turns under {}",
        samples.display()
    );
    let cancel = CancellationToken::new();
    let mut latencies = Vec::with_capacity(utterances);
    let (mut alone, mut checked) = (Vec::new(), Vec::new());
    for turn in customer.iter().cycle().take(utterances) {
        let t = Instant::now();
        let judged = model.classify(turn, &[], &cancel).await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        latencies.push(ms);
        match judged.anger {
            Some(_) => checked.push(ms),
            None => alone.push(ms),
        }
    }

    let five = calls
        .iter()
        .find(|c| c.contact_id == "five-minute-delivery")
        .ok_or_else(|| anyhow::anyhow!("sample call five-minute-delivery not found"))?;
    let mut summary_5min_s = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        model.summarise(&five.turns, &cancel).await?;
        summary_5min_s.push(t.elapsed().as_secs_f64());
    }
    let mut during = Vec::new();
    let summary = model.summarise(&five.turns, &cancel);
    let judging = async {
        for turn in customer.iter().cycle().take(20) {
            let t = Instant::now();
            model.classify(turn, &[], &cancel).await?;
            during.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok::<_, ModelError>(())
    };
    let (summarised, judged) = tokio::join!(summary, judging);
    summarised?;
    judged?;
    let info = model.info();
    Ok(ModelBench {
        sentiment_model: info.sentiment.id.clone(),
        summary_model: info.summary.id.clone(),
        threads,
        load_s,
        prefill_tok_s: prefill_tokens as f64 / best(&prefill),
        prefill_tokens,
        decode_tok_s: decode_tokens as f64 / best(&decode),
        decode_tokens,
        sentiment: Latency::of(&mut latencies),
        sentiment_alone: Latency::of(&mut alone),
        sentiment_with_anger_check: Latency::of(&mut checked),
        sentiment_during_summary: Latency::of(&mut during),
        summary_5min_s,
        summary_5min_words: five
            .turns
            .iter()
            .map(|t| t.text.split_whitespace().count())
            .sum(),
        peak_rss_mib: peak_rss_mib(),
    })
}

/// How this binary was built: `release`, or `dev` (debug assertions on), with callpulse's
/// own opt-level (the dev profile optimises only the dependencies unless
/// `CARGO_PROFILE_DEV_OPT_LEVEL` says otherwise).
pub fn build_kind() -> String {
    let kind = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    format!("{kind}, opt-level {}", env!("CALLPULSE_OPT_LEVEL"))
}

/// Peak resident set size of this process (VmHWM), MiB; 0 where /proc is unavailable.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let l = Latency::of(&mut samples);
        assert_eq!((l.p50_ms, l.p99_ms, l.n), (50.0, 99.0, 100));
        assert!((l.mean_ms - 50.5).abs() < 1e-9);
        let one = Latency::of(&mut [7.0]);
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
    }

    #[test]
    fn peak_rss_is_reported_on_linux() {
        assert!(peak_rss_mib() > 0.0);
    }
}
