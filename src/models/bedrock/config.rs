//! The `[models.bedrock]` config table: the two models, their limits, and the prices that
//! turn a call's tokens into its cost.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::aws::AwsEndpoint;
use crate::models::Usage;

/// Price of one model in USD.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// USD per 1,000 input tokens.
    pub input_per_1k_tokens_usd: f64,
    /// USD per 1,000 output tokens.
    pub output_per_1k_tokens_usd: f64,
}

impl Price {
    /// What a call with `usage` costs.
    pub fn cost(&self, usage: Usage) -> f64 {
        (f64::from(usage.input_tokens) * self.input_per_1k_tokens_usd
            + f64::from(usage.output_tokens) * self.output_per_1k_tokens_usd)
            / 1000.0
    }
}

/// The `[models.bedrock]` config table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BedrockConfig {
    /// Model id (or inference profile id / ARN) that judges utterances.
    pub sentiment_model: String,
    /// Model id (or inference profile id / ARN) that writes summaries.
    pub summary_model: String,
    /// Region and endpoint override of the Bedrock runtime.
    pub endpoint: AwsEndpoint,
    /// Most tokens a sentiment answer may have (one label word needs 1–3); sentiment is
    /// always asked at temperature 0.
    pub sentiment_max_tokens: u32,
    /// Most tokens one summary answer may have.
    pub summary_max_tokens: u32,
    /// Sampling temperature of summaries (0 = greedy, the most repeatable).
    pub summary_temperature: f32,
    /// Most characters of one prompt (about four characters a token). Longer calls are
    /// summarised in chunks and the chunks' notes merged; a longer utterance is cut in the
    /// middle. At least eight summary fields' worth is always allowed, so merging converges.
    pub max_prompt_chars: usize,
    /// Most characters a summary field may have.
    pub max_field_chars: usize,
    /// Price per model id. The defaults are us-east-1 on-demand list prices of Nova Micro,
    /// Llama 3 8B Instruct and Titan Text Lite; entries given in config override or add to
    /// them one model at a time. An inference profile id (`us.meta.…`) without an entry of
    /// its own is priced as its base model. A model without a price has no cost.
    #[serde(deserialize_with = "prices_over_defaults")]
    pub prices: HashMap<String, Price>,
}

impl Default for BedrockConfig {
    fn default() -> Self {
        Self {
            sentiment_model: "amazon.nova-micro-v1:0".into(),
            summary_model: "meta.llama3-8b-instruct-v1:0".into(),
            endpoint: AwsEndpoint::default(),
            sentiment_max_tokens: 5,
            summary_max_tokens: 400,
            summary_temperature: 0.0,
            max_prompt_chars: 20_000,
            max_field_chars: 400,
            prices: default_prices(),
        }
    }
}

impl BedrockConfig {
    /// What `usage` of `model_id` costs in USD, where [`BedrockConfig::prices`] has a price
    /// for it (or, for an inference profile, for its base model).
    pub fn cost(&self, model_id: &str, usage: Usage) -> Option<f64> {
        self.prices
            .get(model_id)
            .or_else(|| self.prices.get(base_model_id(model_id)))
            .map(|p| p.cost(usage))
    }
}

/// us-east-1 on-demand list prices, USD per 1,000 tokens (input, output).
fn default_prices() -> HashMap<String, Price> {
    [
        ("amazon.nova-micro-v1:0", 0.000_035, 0.000_14),
        ("meta.llama3-8b-instruct-v1:0", 0.000_3, 0.000_6),
        ("amazon.titan-text-lite-v1", 0.000_15, 0.000_2),
    ]
    .into_iter()
    .map(|(id, input, output)| {
        let price = Price {
            input_per_1k_tokens_usd: input,
            output_per_1k_tokens_usd: output,
        };
        (id.to_string(), price)
    })
    .collect()
}

fn prices_over_defaults<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<HashMap<String, Price>, D::Error> {
    let mut prices = default_prices();
    prices.extend(HashMap::<String, Price>::deserialize(deserializer)?);
    Ok(prices)
}

/// Prefixes of cross-region inference profile ids (`us.meta.llama3-8b-instruct-v1:0`).
const PROFILE_PREFIXES: [&str; 8] = ["us", "us-gov", "eu", "apac", "ca", "jp", "au", "global"];

/// The foundation model id behind an inference profile id; other ids unchanged.
pub(super) fn base_model_id(id: &str) -> &str {
    match id.split_once('.') {
        Some((prefix, rest)) if PROFILE_PREFIXES.contains(&prefix) => rest,
        _ => id,
    }
}
