//! What goes over the wire: the model's family, read from its id, the native InvokeModel
//! bodies of Titan Text and Llama 3 (and their chat templates), and the answers they carry.

use super::config::base_model_id;
use serde::Deserialize;

use crate::models::prompts::ChatFrame;
use crate::models::{ModelError, Usage};

/// How a model is called, from its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    /// InvokeModel with the family's native body.
    Native(Native),
    /// The Converse API.
    Converse,
}

/// Model families called with their native InvokeModel body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Native {
    /// Titan Text: `inputText`, `textGenerationConfig`.
    Titan,
    /// Llama 3 Instruct: the chat template in `prompt`, `max_gen_len`, `temperature`.
    Llama3,
}

/// Llama 3's chat template up to the user's message.
const LLAMA3_BEFORE_SYSTEM: &str =
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n";
const LLAMA3_SYSTEM_TO_USER: &str = "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n";
const LLAMA3_USER_TO_ASSISTANT: &str =
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";

impl Family {
    pub(super) fn of(model_id: &str) -> Self {
        let base = base_model_id(model_id);
        if base.starts_with("amazon.titan-text") {
            Family::Native(Native::Titan)
        } else if base.starts_with("meta.llama3") {
            Family::Native(Native::Llama3)
        } else {
            Family::Converse
        }
    }

    /// The frame around the user's message: the system message (native families: Converse
    /// sends it apart), then `instruction` after the message, then the opening of the
    /// assistant's turn and `answer_start` (native families write the answer's start
    /// themselves; Converse cannot).
    pub(super) fn frame(self, system: &str, instruction: &str, answer_start: &str) -> ChatFrame {
        match self {
            Family::Native(Native::Titan) => ChatFrame {
                before: format!("{system}\n\nUser: "),
                after: match answer_start {
                    "" => format!("{instruction}\nBot:"),
                    start => format!("{instruction}\nBot: {start}"),
                },
            },
            Family::Native(Native::Llama3) => ChatFrame {
                before: format!("{LLAMA3_BEFORE_SYSTEM}{system}{LLAMA3_SYSTEM_TO_USER}"),
                after: format!("{instruction}{LLAMA3_USER_TO_ASSISTANT}{answer_start}"),
            },
            Family::Converse => ChatFrame {
                before: String::new(),
                after: instruction.to_string(),
            },
        }
    }

    /// Whether the answer's start can be written into the prompt.
    pub(super) fn writes_answer_start(self) -> bool {
        matches!(self, Family::Native(_))
    }
}

impl Native {
    /// The InvokeModel body.
    pub(super) fn body(self, prompt: &str, max_tokens: u32, temperature: f32) -> serde_json::Value {
        match self {
            Native::Titan => serde_json::json!({
                "inputText": prompt,
                "textGenerationConfig": {"maxTokenCount": max_tokens, "temperature": temperature},
            }),
            Native::Llama3 => serde_json::json!({
                "prompt": prompt,
                "max_gen_len": max_tokens,
                "temperature": temperature,
            }),
        }
    }

    /// The answer's text and usage from an InvokeModel response body.
    pub(super) fn answer(self, body: &[u8]) -> Result<Answer, ModelError> {
        let malformed = |e: serde_json::Error| {
            ModelError::InvalidOutput(format!("unexpected {self:?} response body: {e}"))
        };
        match self {
            Native::Titan => {
                let r: TitanResponse = serde_json::from_slice(body).map_err(malformed)?;
                let first = r.results.into_iter().next().ok_or_else(|| {
                    ModelError::InvalidOutput("Titan answered with no results".into())
                })?;
                Ok(Answer {
                    text: first.output_text,
                    usage: Usage {
                        input_tokens: r.input_text_token_count,
                        output_tokens: first.token_count,
                    },
                })
            }
            Native::Llama3 => {
                let r: LlamaResponse = serde_json::from_slice(body).map_err(malformed)?;
                Ok(Answer {
                    text: r.generation,
                    usage: Usage {
                        input_tokens: r.prompt_token_count,
                        output_tokens: r.generation_token_count,
                    },
                })
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TitanResponse {
    input_text_token_count: u32,
    results: Vec<TitanResult>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TitanResult {
    token_count: u32,
    output_text: String,
}

#[derive(Deserialize)]
struct LlamaResponse {
    generation: String,
    prompt_token_count: u32,
    generation_token_count: u32,
}

/// A model's answer.
pub(super) struct Answer {
    pub(super) text: String,
    pub(super) usage: Usage,
}

/// What a model is asked.
pub(super) struct Ask<'a> {
    pub(super) model_id: &'a str,
    pub(super) system: &'a str,
    pub(super) prompt: String,
    pub(super) max_tokens: u32,
    pub(super) temperature: f32,
}
