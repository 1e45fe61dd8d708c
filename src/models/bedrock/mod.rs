//! Amazon Bedrock backends: one [`BedrockModel`] judges utterances and writes summaries with
//! the models named in [`BedrockConfig`].
//!
//! The request body follows the model's family, read from its id: Titan Text's native body
//! (`inputText`, `textGenerationConfig`) for `amazon.titan-text*`, Llama 3 Instruct's native
//! body (the Llama 3 chat template in `prompt`, `max_gen_len`, `temperature`) for
//! `meta.llama3*` (also behind a cross-region inference profile such as `us.meta.llama3-…`),
//! and the Converse API for every other model id. Prompts are those of
//! [`super::prompts`]: transcript text is marked as quoted data the model is told not to
//! obey, with chat markup removed and (here) double quotes turned into single ones, so a
//! caller cannot close the quotation or forge a turn.
//!
//! Answers are parsed strictly: a sentiment answer must be one label word, a summary answer
//! exactly the labelled lines asked for; anything else is [`ModelError::InvalidOutput`], never
//! a guess. Tokens come from the response; cost from [`BedrockConfig::prices`].
//!
//! The SDK's own retries are disabled: the [`crate::actors::gateway::ModelGateway`] owns
//! retries (jittered backoff on [`ModelError::is_transient`] errors), so its requests/s and
//! tokens/min limits count every request Bedrock sees.

mod config;
mod text;
mod wire;

use async_trait::async_trait;
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::http::HttpResponse;
use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConversationRole, InferenceConfiguration, Message, SystemContentBlock,
};

pub use config::{BedrockConfig, Price};
use text::{
    Fields, SENTIMENT_INSTRUCTION, parse_fields, parse_label, render, summary_frame, summary_header,
};
use wire::{Answer, Ask, Family, Native};

use super::prompts::{
    SENTIMENT_SYSTEM, SUMMARY_PROMPT_VERSION, SUMMARY_SYSTEM, sentiment_prompt, summary_prompt,
};
use super::summary::{chunk_turns, merge_notes, spoken_turns};
use super::{
    CancellationToken, LabelScores, ModelError, Sentiment, SentimentClassifier, Summariser,
    Summary, Turn, Usage,
};
use crate::aws::sdk_config;

/// Bedrock models behind [`SentimentClassifier`] and [`Summariser`].
#[derive(Debug, Clone)]
pub struct BedrockModel {
    client: Client,
    config: BedrockConfig,
}

impl BedrockModel {
    /// A client for the configured region and endpoint, with credentials from the standard
    /// chain. The SDK's retries are disabled: the model gateway retries (see the module docs).
    pub async fn new(config: &BedrockConfig) -> Self {
        Self::with_sdk_config(&sdk_config(&config.endpoint).await, config)
    }

    /// A client built from `sdk` (its region, endpoint and credentials; `config.endpoint` is
    /// not read), with the SDK's retries disabled.
    pub fn with_sdk_config(sdk: &aws_config::SdkConfig, config: &BedrockConfig) -> Self {
        let client_config = aws_sdk_bedrockruntime::config::Builder::from(sdk)
            .retry_config(RetryConfig::disabled())
            .build();
        Self {
            client: Client::from_conf(client_config),
            config: config.clone(),
        }
    }

    /// One model call, in the model's family's API; gives up when `cancel` fires.
    async fn ask(&self, ask: Ask<'_>, cancel: &CancellationToken) -> Result<Answer, ModelError> {
        let call = async {
            match Family::of(ask.model_id) {
                Family::Native(native) => self.invoke(native, &ask).await,
                Family::Converse => self.converse(&ask).await,
            }
        };
        tokio::select! {
            answer = call => answer,
            _ = cancel.cancelled() => Err(ModelError::Cancelled),
        }
    }

    async fn invoke(&self, native: Native, ask: &Ask<'_>) -> Result<Answer, ModelError> {
        let body = native.body(&ask.prompt, ask.max_tokens, ask.temperature);
        let response = self
            .client
            .invoke_model()
            .model_id(ask.model_id)
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(body.to_string()))
            .send()
            .await
            .map_err(|e| call_error(ask.model_id, e))?;
        native.answer(response.body().as_ref())
    }

    async fn converse(&self, ask: &Ask<'_>) -> Result<Answer, ModelError> {
        let message = Message::builder()
            .role(ConversationRole::User)
            .content(ContentBlock::Text(ask.prompt.clone()))
            .build()
            .map_err(|e| ModelError::Rejected(format!("building the Converse message: {e}")))?;
        let response = self
            .client
            .converse()
            .model_id(ask.model_id)
            .system(SystemContentBlock::Text(ask.system.to_string()))
            .messages(message)
            .inference_config(
                InferenceConfiguration::builder()
                    .max_tokens(i32::try_from(ask.max_tokens).unwrap_or(i32::MAX))
                    .temperature(ask.temperature)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| call_error(ask.model_id, e))?;
        let text = response
            .output()
            .and_then(|o| o.as_message().ok())
            .map(|m| {
                m.content()
                    .iter()
                    .filter_map(|c| c.as_text().ok())
                    .map(String::as_str)
                    .collect::<String>()
            })
            .ok_or_else(|| {
                ModelError::InvalidOutput("Converse answered without a message".into())
            })?;
        let tokens = |n: i32| u32::try_from(n).unwrap_or(0);
        let usage = response.usage().map_or_else(Usage::default, |u| Usage {
            input_tokens: tokens(u.input_tokens()),
            output_tokens: tokens(u.output_tokens()),
        });
        Ok(Answer { text, usage })
    }

    /// The fields of one summary answer over `turns` (or over notes of earlier chunks).
    async fn summary_fields(
        &self,
        turns: &[Turn],
        notes: bool,
        cancel: &CancellationToken,
    ) -> Result<(Fields, Usage), ModelError> {
        let model_id = &self.config.summary_model;
        let family = Family::of(model_id);
        let with_sentiment = !notes && turns.iter().any(Turn::is_customer);
        let frame = summary_frame(family, with_sentiment);
        let answer = self
            .ask(
                Ask {
                    model_id,
                    system: SUMMARY_SYSTEM,
                    prompt: render(&summary_prompt(&frame, turns, notes), usize::MAX),
                    max_tokens: self.config.summary_max_tokens,
                    temperature: self.config.summary_temperature,
                },
                cancel,
            )
            .await?;
        let text = if family.writes_answer_start() {
            format!("{}{}", summary_header(0), answer.text)
        } else {
            answer.text
        };
        let fields = parse_fields(&text, with_sentiment, self.config.max_field_chars)
            .map_err(|why| ModelError::InvalidOutput(format!("{model_id} summary: {why}")))?;
        Ok((fields, answer.usage))
    }

    /// Characters of transcript one summary prompt may carry.
    fn transcript_budget(&self, turns: &[Turn]) -> usize {
        let frame = summary_frame(Family::of(&self.config.summary_model), true);
        let speakers = &turns[..turns.len().min(2)];
        let overhead = render(&summary_prompt(&frame, speakers, true), usize::MAX)
            .chars()
            .count()
            + SUMMARY_SYSTEM.len();
        self.config
            .max_prompt_chars
            .saturating_sub(overhead)
            .max(8 * self.config.max_field_chars)
    }
}

/// A failed call as a model error: throttling and capacity as [`ModelError::Throttled`],
/// service faults and transport failures as [`ModelError::Inference`] (both retried by the
/// gateway), everything else as [`ModelError::Rejected`].
fn call_error<E>(model_id: &str, error: SdkError<E, HttpResponse>) -> ModelError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let what = match (error.code(), error.message()) {
        (Some(code), Some(message)) => format!("{model_id}: {code}: {message}"),
        _ => format!("{model_id}: {}", DisplayErrorContext(&error)),
    };
    let status = error.raw_response().map(|r| r.status().as_u16());
    match (&error, error.code()) {
        (
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_),
            _,
        ) => ModelError::Inference(what),
        (
            SdkError::ServiceError(_),
            Some(
                "ThrottlingException"
                | "ServiceQuotaExceededException"
                | "ModelTimeoutException"
                | "ModelNotReadyException",
            ),
        ) => ModelError::Throttled(what),
        (SdkError::ServiceError(_), _) if status == Some(429) => ModelError::Throttled(what),
        (SdkError::ServiceError(_), _) if status.is_some_and(|s| s >= 500) => {
            ModelError::Inference(what)
        }
        _ => ModelError::Rejected(what),
    }
}

#[async_trait]
impl SentimentClassifier for BedrockModel {
    /// Asks for one label word at temperature 0. Bedrock's text answers carry no
    /// probabilities, so the scores are one-hot: 1 for the label, 0 for the others.
    async fn classify(
        &self,
        utterance: &Turn,
        context: &[Turn],
        cancel: &CancellationToken,
    ) -> Result<Sentiment, ModelError> {
        let model_id = &self.config.sentiment_model;
        let family = Family::of(model_id);
        let frame = family.frame(SENTIMENT_SYSTEM, SENTIMENT_INSTRUCTION, "");
        let prompt = sentiment_prompt(&frame, &utterance.participant, &utterance.text, context);
        let cap = self.config.max_prompt_chars / (context.len() + 1);
        let answer = self
            .ask(
                Ask {
                    model_id,
                    system: SENTIMENT_SYSTEM,
                    prompt: render(&prompt, cap),
                    max_tokens: self.config.sentiment_max_tokens,
                    temperature: 0.0,
                },
                cancel,
            )
            .await?;
        let label = parse_label(&answer.text).ok_or_else(|| {
            ModelError::InvalidOutput(format!(
                "{model_id} answered {:?}, not a label",
                answer.text
            ))
        })?;
        let mut probs = [0.0; 3];
        probs[label.index()] = 1.0;
        Ok(Sentiment {
            label,
            scores: LabelScores::from_probs(probs),
            anger: None,
            model_id: model_id.clone(),
            usage: answer.usage,
            cost_usd: self.config.cost(model_id, answer.usage),
        })
    }
}

#[async_trait]
impl Summariser for BedrockModel {
    /// Asks for the summary fields as labelled lines. A call longer than `max_prompt_chars`
    /// is summarised chunk by chunk, then the chunks' notes are merged (repeatedly, if the
    /// notes are long too); the customer's closing sentiment comes from the last chunk with
    /// customer turns.
    async fn summarise(
        &self,
        turns: &[Turn],
        cancel: &CancellationToken,
    ) -> Result<Summary, ModelError> {
        let turns = spoken_turns(turns)?;
        let budget = self.transcript_budget(&turns);
        // A transcript line is `Speaker: text\n`: count the speaker's share with the text.
        let count = |text: &str| text.chars().count() + 8;
        let mut chunks = chunk_turns(&turns, budget, count);
        let n_chunks = chunks.len();
        let mut usage = Usage::default();
        let mut sentiment = None;
        let mut notes = false;
        loop {
            let mut parts = Vec::with_capacity(chunks.len());
            for chunk in &chunks {
                let (fields, used) = self.summary_fields(chunk, notes, cancel).await?;
                usage += used;
                sentiment = fields.sentiment.or(sentiment);
                parts.push(fields.texts);
            }
            if parts.len() == 1 {
                let [text, reason, resolution, follow_up] = parts.remove(0);
                let model_id = self.config.summary_model.clone();
                return Ok(Summary {
                    text,
                    reason,
                    resolution,
                    follow_up,
                    customer_sentiment: sentiment,
                    cost_usd: self.config.cost(&model_id, usage),
                    model_id,
                    prompt_version: SUMMARY_PROMPT_VERSION,
                    chunks: n_chunks,
                    usage,
                });
            }
            notes = true;
            chunks = chunk_turns(&merge_notes(&parts), budget, count);
        }
    }
}

#[cfg(test)]
mod tests;
