//! A model stand-in with a fixed latency, for pipeline benchmarks and fast pipeline tests.
//!
//! It is not a model: it labels an utterance by a short list of cue words and "summarises"
//! by quoting turns, after sleeping for the configured latency. Everything it produces says
//! `stand-in` in its model id, so its output can never pass for a real judgement.

use std::time::Duration;

use async_trait::async_trait;

use super::{
    CancellationToken, Label, LabelScores, ModelError, Sentiment, SentimentClassifier, Summariser,
    Summary, Turn, Usage,
};

const NEGATIVE_CUES: &[&str] = &[
    "angry",
    "awful",
    "terrible",
    "worst",
    "ridiculous",
    "unacceptable",
    "furious",
    "useless",
    "cancel",
    "complaint",
];
const POSITIVE_CUES: &[&str] = &["thank", "great", "perfect", "wonderful", "appreciate"];

/// Sleeps `latency`, then answers by cue words.
#[derive(Debug, Clone)]
pub struct StandInModel {
    latency: Duration,
    id: String,
}

impl StandInModel {
    /// A stand-in answering after `latency`.
    pub fn new(latency: Duration) -> Self {
        Self {
            latency,
            id: format!("stand-in (fixed latency {} ms)", latency.as_millis()),
        }
    }

    /// Its model id.
    pub fn id(&self) -> &str {
        &self.id
    }

    async fn wait(&self, cancel: &CancellationToken) -> Result<(), ModelError> {
        if self.latency.is_zero() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(self.latency) => Ok(()),
            _ = cancel.cancelled() => Err(ModelError::Cancelled),
        }
    }
}

fn cue_label(text: &str) -> Label {
    let lower = text.to_lowercase();
    let has = |cues: &[&str]| cues.iter().any(|cue| lower.contains(cue));
    if has(NEGATIVE_CUES) {
        Label::Negative
    } else if has(POSITIVE_CUES) {
        Label::Positive
    } else {
        Label::Neutral
    }
}

fn usage(text: &str) -> Usage {
    Usage {
        input_tokens: (text.len() / 4) as u32 + 1,
        output_tokens: 0,
    }
}

#[async_trait]
impl SentimentClassifier for StandInModel {
    async fn classify(
        &self,
        utterance: &Turn,
        _context: &[Turn],
        cancel: &CancellationToken,
    ) -> Result<Sentiment, ModelError> {
        self.wait(cancel).await?;
        let label = cue_label(&utterance.text);
        let mut probs = [0.1; 3];
        probs[label.index()] = 0.8;
        Ok(Sentiment {
            label,
            scores: LabelScores::from_probs(probs),
            anger: None,
            model_id: self.id.clone(),
            usage: usage(&utterance.text),
            cost_usd: None,
        })
    }
}

#[async_trait]
impl Summariser for StandInModel {
    async fn summarise(
        &self,
        turns: &[Turn],
        cancel: &CancellationToken,
    ) -> Result<Summary, ModelError> {
        self.wait(cancel).await?;
        let first = |who: &str| {
            turns
                .iter()
                .find(|t| t.participant == who)
                .map_or_else(|| "(nothing said)".to_string(), |t| t.text.clone())
        };
        let last = turns.last().map_or("", |t| t.text.as_str());
        let text = format!(
            "- Customer: {}\n- Agent: {}\n- Last words: {last}",
            first("CUSTOMER"),
            first("AGENT")
        );
        Ok(Summary {
            reason: first("CUSTOMER"),
            resolution: first("AGENT"),
            follow_up: "none recorded (stand-in)".into(),
            customer_sentiment: turns
                .iter()
                .rev()
                .find(|t| t.is_customer())
                .map(|t| cue_label(&t.text)),
            usage: usage(&text),
            text,
            model_id: self.id.clone(),
            prompt_version: 0,
            chunks: 1,
            cost_usd: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_by_cue_words_and_names_itself() {
        let model = StandInModel::new(Duration::ZERO);
        let cancel = CancellationToken::new();
        let judge = |text: &'static str| {
            let model = model.clone();
            let cancel = cancel.clone();
            async move {
                model
                    .classify(&Turn::new("CUSTOMER", text), &[], &cancel)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(judge("This is ridiculous").await.label, Label::Negative);
        assert_eq!(judge("Thanks a lot").await.label, Label::Positive);
        let s = judge("My order number is 5").await;
        assert_eq!(s.label, Label::Neutral);
        assert!(s.model_id.contains("stand-in"));
    }
}
