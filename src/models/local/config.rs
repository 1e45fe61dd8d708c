//! The `[models.local]` config table, and the sentiment head it names (or the built-in one
//! trained for the packaged model).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::models::ModelError;
use crate::models::fetch::{default_model_path, default_summary_model_path};
use crate::models::head::SentimentHead;
use crate::models::prompts::SENTIMENT_PROMPT_VERSION;

/// The head trained for the packaged SmolLM2-135M-Instruct (Q8_0 copy; see its provenance).
const BUILTIN_HEAD: &str = include_str!("../heads/smollm2-135m-instruct-q8_0.json");

/// Settings of the local backend (`[models.local]` in config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// GGUF file of the sentiment model; unset means the packaged default (SmolLM2-135M,
    /// Q8_0) in the model cache.
    pub model: Option<PathBuf>,
    /// GGUF file of the summary model; unset means the packaged default (Qwen2.5-Coder-0.5B,
    /// Q4_K_M) in the model cache. The sentiment model's file again means one model does both.
    pub summary_model: Option<PathBuf>,
    /// CPU threads; 0 means every core.
    pub threads: usize,
    /// Context window of the sentiment context, in tokens.
    pub sentiment_context_tokens: u32,
    /// Context window of the summary context, in tokens; longer calls are chunked.
    pub summary_context_tokens: u32,
    /// Earlier turns shown to the sentiment model with each utterance.
    pub context_turns: usize,
    /// Most tokens generated for the summary's sentences.
    pub max_summary_tokens: u32,
    /// Most tokens generated for one summary field.
    pub max_field_tokens: u32,
    /// Most characters a summary line may have.
    pub max_field_chars: usize,
    /// Sentiment head file; unset means the built-in head when it fits the model.
    pub sentiment_head: Option<PathBuf>,
    /// Read sentiment from label-word scores only, even if a head fits.
    pub zero_shot: bool,
    /// P(NEGATIVE) from which a customer utterance is also checked for anger by the summary
    /// model (above 1: never; the rules then go by sentiment alone).
    pub anger_gate: f32,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            model: None,
            summary_model: None,
            threads: 0,
            sentiment_context_tokens: 1024,
            summary_context_tokens: 4096,
            context_turns: 0,
            max_summary_tokens: 100,
            max_field_tokens: 40,
            max_field_chars: 600,
            sentiment_head: None,
            zero_shot: false,
            anger_gate: 0.3,
        }
    }
}

impl LocalConfig {
    /// The sentiment GGUF this config names.
    pub fn model_path(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(default_model_path)
    }

    /// The summary GGUF this config names.
    pub fn summary_model_path(&self) -> PathBuf {
        self.summary_model
            .clone()
            .unwrap_or_else(default_summary_model_path)
    }
}

/// The configured head, or the built-in one when it was trained on this model; `None` for
/// zero-shot. A configured head that does not fit the model is an error, not a silent
/// fallback.
pub(super) fn load_head(
    config: &LocalConfig,
    model_id: &str,
    model_bytes: u64,
    n_embd: usize,
) -> Result<Option<SentimentHead>, ModelError> {
    if config.zero_shot {
        return Ok(None);
    }
    let fits = |h: &SentimentHead| {
        h.n_features() == n_embd + 3
            && h.provenance.model_bytes == model_bytes
            && h.provenance.prompt_version == SENTIMENT_PROMPT_VERSION
    };
    match &config.sentiment_head {
        Some(path) => {
            let bad = |reason: String| ModelError::CorruptModel {
                path: path.clone(),
                reason,
            };
            let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            let head: SentimentHead = serde_json::from_str(&text)
                .map_err(|e| bad(format!("not a sentiment head: {e}")))?;
            if !fits(&head) {
                return Err(bad(format!(
                    "trained for {} ({} bytes, prompt v{}), not for {model_id} ({model_bytes} bytes, prompt v{SENTIMENT_PROMPT_VERSION})",
                    head.provenance.model_name,
                    head.provenance.model_bytes,
                    head.provenance.prompt_version
                )));
            }
            Ok(Some(head))
        }
        None => Ok(serde_json::from_str::<SentimentHead>(BUILTIN_HEAD)
            .ok()
            .filter(fits)),
    }
}
