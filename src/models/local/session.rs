//! The worker thread's session: the model, its two windows, the prompts' frames and the
//! sentiment head; sentiment features, labels and summaries, and the benchmark's timings.

use std::path::Path;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::ModelInfo;
use super::config::{LocalConfig, load_head};
use super::window::Window;
use crate::models::head::{SentimentHead, softmax};
use crate::models::prompts::{
    ChatFrame, LABEL_WORDS, PROMPT_VERSION, Piece, Prompt, SENTIMENT_SYSTEM, SUMMARY_FIELDS,
    SUMMARY_SYSTEM, Subject, USER_PLACEHOLDER, sentiment_prompt, summary_prompt, summary_subjects,
};
use crate::models::summary::{bullets, chunk_turns, merge_notes, spoken_turns, validate_field};
use crate::models::{CancellationToken, LabelScores, ModelError, Sentiment, Summary, Turn, Usage};

/// Features of one utterance and the label-word log-probabilities among them.
pub struct Features {
    /// Logits at the answer position of `n_embd` fixed vocabulary tokens (a linear image of
    /// the final hidden state, which llama.cpp only exposes at the cost of computing logits
    /// for every prompt token), then the three label log-probabilities.
    pub features: Vec<f32>,
    /// Log-probability of each label word, `Label::ALL` order.
    pub label_logprobs: [f32; 3],
    /// Tokens evaluated.
    pub usage: Usage,
}

/// The worker's state: the model, its two windows, prompts and the sentiment head.
pub struct Session<'m> {
    model: &'m LlamaModel,
    sentiment: Window<'m>,
    summary: Window<'m>,
    sentiment_frame: ChatFrame,
    summary_frame: ChatFrame,
    label_tokens: [Vec<LlamaToken>; 3],
    feature_tokens: Vec<usize>,
    calibration: [f32; 3],
    head: Option<SentimentHead>,
    config: LocalConfig,
    pub(super) info: ModelInfo,
}

impl<'m> Session<'m> {
    pub(super) fn new(
        backend: &LlamaBackend,
        model: &'m LlamaModel,
        path: &Path,
        config: LocalConfig,
    ) -> Result<Self, ModelError> {
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        } as i32;
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let id = model.meta_val_str("general.name").unwrap_or_else(|_| {
            path.file_stem()
                .map_or("local".into(), |s| s.to_string_lossy().into_owned())
        });
        let head = load_head(&config, &id, bytes, model.n_embd() as usize)?;
        let label_tokens = LABEL_WORDS.map(|variants| {
            let mut tokens: Vec<LlamaToken> = variants
                .iter()
                .filter_map(|w| {
                    model
                        .vocab()
                        .tokenize(w.as_bytes(), false, false)
                        .first()
                        .copied()
                })
                .collect();
            tokens.dedup();
            tokens
        });
        let mut session = Self {
            model,
            sentiment: Window::new(backend, model, config.sentiment_context_tokens, threads)?,
            summary: Window::new(backend, model, config.summary_context_tokens, threads)?,
            sentiment_frame: chat_frame(model, SENTIMENT_SYSTEM),
            summary_frame: chat_frame(model, SUMMARY_SYSTEM),
            label_tokens,
            feature_tokens: spread_tokens(model.n_vocab() as usize, model.n_embd() as usize),
            calibration: [0.0; 3],
            info: ModelInfo {
                id,
                path: path.to_path_buf(),
                bytes,
                params: model.n_params(),
                n_embd: model.n_embd() as usize,
                sentiment_method: if head.is_some() {
                    "head"
                } else {
                    "label-words"
                },
            },
            head,
            config,
        };
        session.calibration = session.content_free_logprobs()?;
        Ok(session)
    }

    /// Mean label-word log-probabilities on inputs that carry no sentiment ("calibrate before
    /// use"): subtracting them removes the model's bias towards one label word.
    fn content_free_logprobs(&mut self) -> Result<[f32; 3], ModelError> {
        let never = CancellationToken::new();
        let inputs = ["N/A", "", "[text]"];
        let mut mean = [0.0f32; 3];
        for text in inputs {
            let f = self.sentiment_features(&Turn::new("CUSTOMER", text), &[], &never)?;
            for (m, lp) in mean.iter_mut().zip(f.label_logprobs) {
                *m += lp / inputs.len() as f32;
            }
        }
        Ok(mean)
    }

    /// Tokenizes a prompt; untrusted pieces never parse special tokens and are cut to
    /// `cap` tokens (keeping their start and end) when a cap is given.
    fn tokenize(&self, prompt: &Prompt, cap: Option<usize>) -> Vec<LlamaToken> {
        let vocab = self.model.vocab();
        let mut out = Vec::new();
        for piece in &prompt.pieces {
            let (text, trusted) = match piece {
                Piece::Template(t) => (t, true),
                Piece::Untrusted(t) => (t, false),
            };
            if text.is_empty() {
                continue;
            }
            let mut tokens = vocab.tokenize(text.as_bytes(), out.is_empty(), trusted);
            if let (false, Some(cap)) = (trusted, cap)
                && tokens.len() > cap
            {
                let tail = tokens.split_off(tokens.len() - cap / 2);
                tokens.truncate(cap - cap / 2);
                tokens.extend(tail);
            }
            out.extend(tokens);
        }
        let bos = vocab.bos();
        if out.len() >= 2 && out[0] == bos && out[1] == bos {
            out.remove(0);
        }
        out
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), false, false)
            .len()
    }

    /// Evaluates the sentiment prompt and reads the features at the answer position.
    pub fn sentiment_features(
        &mut self,
        utterance: &Turn,
        context: &[Turn],
        cancel: &CancellationToken,
    ) -> Result<Features, ModelError> {
        let context = &context[context.len().saturating_sub(self.config.context_turns)..];
        let prompt = sentiment_prompt(
            &self.sentiment_frame,
            &utterance.participant,
            &utterance.text,
            context,
        );
        let cap = (self.sentiment.n_ctx.saturating_sub(160)) / (context.len() + 1);
        let tokens = self.tokenize(&prompt, Some(cap.max(16)));
        self.sentiment.eval(&tokens, cancel)?;
        let logits = self.sentiment.logits();
        let label_logprobs = label_logprobs(logits, &self.label_tokens);
        let mut features: Vec<f32> = self.feature_tokens.iter().map(|&t| logits[t]).collect();
        features.extend_from_slice(&label_logprobs);
        Ok(Features {
            features,
            label_logprobs,
            usage: Usage {
                input_tokens: tokens.len() as u32,
                output_tokens: 0,
            },
        })
    }

    /// Judges one utterance with the head, or with calibrated label-word scores.
    pub fn classify(
        &mut self,
        utterance: &Turn,
        context: &[Turn],
        cancel: &CancellationToken,
    ) -> Result<Sentiment, ModelError> {
        let f = self.sentiment_features(utterance, context, cancel)?;
        let probs = match &self.head {
            Some(head) => head.predict(&f.features),
            None => {
                let mut calibrated = f.label_logprobs;
                for (c, bias) in calibrated.iter_mut().zip(self.calibration) {
                    *c -= bias;
                }
                softmax(calibrated)
            }
        };
        let scores = LabelScores::from_probs(probs);
        Ok(Sentiment {
            label: scores.top(),
            scores,
            model_id: self.info.id.clone(),
            usage: f.usage,
            cost_usd: None,
        })
    }

    /// Summarises a call, in chunks when it does not fit the summary context.
    pub fn summarise(
        &mut self,
        turns: &[Turn],
        cancel: &CancellationToken,
    ) -> Result<Summary, ModelError> {
        let turns = spoken_turns(turns)?;
        let subjects = summary_subjects(&turns);
        let mut usage = Usage::default();
        let budget = self.transcript_budget();
        let mut chunks = chunk_turns(&turns, budget, |t| self.count_tokens(t));
        let n_chunks = chunks.len();
        let mut notes = false;
        while chunks.len() > 1 {
            let mut parts = Vec::with_capacity(chunks.len());
            for chunk in &chunks {
                parts.push(self.summary_fields(chunk, notes, &subjects, cancel, &mut usage)?);
            }
            notes = true;
            chunks = chunk_turns(&merge_notes(&parts), budget, |t| self.count_tokens(t));
        }
        let [reason, resolution, follow_up] =
            self.summary_fields(&chunks[0], notes, &subjects, cancel, &mut usage)?;
        let customer_sentiment = match turns.iter().rposition(Turn::is_customer) {
            Some(i) => {
                let s = self.classify(&turns[i], &turns[..i], cancel)?;
                usage += s.usage;
                Some(s.label)
            }
            None => None,
        };
        Ok(Summary {
            text: bullets(&reason, &resolution, &follow_up),
            reason,
            resolution,
            follow_up,
            customer_sentiment,
            model_id: self.info.id.clone(),
            prompt_version: PROMPT_VERSION,
            chunks: n_chunks,
            usage,
            cost_usd: None,
        })
    }

    /// Tokens a transcript chunk may take: the window less the prompt frame and the answer.
    fn transcript_budget(&self) -> usize {
        let frame = self
            .tokenize(&summary_prompt(&self.summary_frame, &[], true), None)
            .len();
        let answer = SUMMARY_FIELDS.len() * (self.config.max_field_tokens as usize + 16);
        self.summary.n_ctx.saturating_sub(frame + answer).max(32)
    }

    /// Writes the three fields for one transcript (or notes), retrying with sampling when
    /// greedy output fails validation.
    fn summary_fields(
        &mut self,
        turns: &[Turn],
        notes: bool,
        (first, second): &(String, String),
        cancel: &CancellationToken,
        usage: &mut Usage,
    ) -> Result<[String; 3], ModelError> {
        const ATTEMPTS: u32 = 3;
        let base = self.tokenize(&summary_prompt(&self.summary_frame, turns, notes), None);
        let mut last_rejection = String::new();
        'attempt: for attempt in 0..ATTEMPTS {
            let mut seq = base.clone();
            usage.input_tokens += base.len() as u32;
            let mut fields: [String; 3] = Default::default();
            for (i, (header, subject)) in SUMMARY_FIELDS.iter().enumerate() {
                let lead = match subject {
                    Subject::First => first.as_str(),
                    Subject::Second => second.as_str(),
                    Subject::None => "",
                };
                let newline = if i == 0 { "" } else { "\n" };
                let header_text = format!("{newline}{header}{lead}");
                seq.extend(
                    self.model
                        .vocab()
                        .tokenize(header_text.as_bytes(), false, true),
                );
                let mut sampler = field_sampler(attempt, self.model.n_vocab());
                let generated = self.generate_line(&mut seq, &mut sampler, cancel, usage)?;
                match validate_field(&format!("{lead}{generated}"), self.config.max_field_chars) {
                    Ok(field) => fields[i] = field,
                    Err(rejection) => {
                        tracing::debug!(attempt, field = header, %rejection, "summary field rejected");
                        last_rejection = format!("{}{rejection}", header);
                        continue 'attempt;
                    }
                }
            }
            return Ok(fields);
        }
        Err(ModelError::InvalidOutput(format!(
            "summary failed validation {ATTEMPTS} times (last: {last_rejection})"
        )))
    }

    /// Generates one sentence: until a sentence end, a line break, end of generation or the
    /// field's token bound.
    fn generate_line(
        &mut self,
        seq: &mut Vec<LlamaToken>,
        sampler: &mut LlamaSampler,
        cancel: &CancellationToken,
        usage: &mut Usage,
    ) -> Result<String, ModelError> {
        self.summary.eval(seq, cancel)?;
        let vocab = self.model.vocab();
        let mut text = Vec::new();
        for _ in 0..self.config.max_field_tokens {
            let token = sampler.sample(&self.summary.ctx, self.summary.last);
            usage.output_tokens += 1;
            if vocab.is_eog(token) {
                break;
            }
            let piece = vocab.token_to_piece(token, true, None);
            if let Some(end) = piece.iter().position(|&b| b == b'\n') {
                text.extend_from_slice(&piece[..end]);
                break;
            }
            text.extend_from_slice(&piece);
            seq.push(token);
            if ends_sentence(&text) {
                break;
            }
            self.summary.decode(&[token], cancel)?;
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// Prefill throughput: evaluates `n` tokens from scratch; returns seconds taken.
    pub fn bench_prefill(&mut self, n: usize) -> Result<f64, ModelError> {
        let tokens = self.bench_tokens(n);
        self.summary.ctx.clear_kv_cache();
        self.summary.tokens.clear();
        let start = std::time::Instant::now();
        self.summary.eval(&tokens, &CancellationToken::new())?;
        Ok(start.elapsed().as_secs_f64())
    }

    /// Decode throughput: generates `n` tokens one at a time after a short prompt; returns
    /// seconds taken by the generation alone.
    pub fn bench_decode(&mut self, n: usize) -> Result<f64, ModelError> {
        let never = CancellationToken::new();
        let prompt = self.bench_tokens(16);
        self.summary.ctx.clear_kv_cache();
        self.summary.tokens.clear();
        self.summary.eval(&prompt, &never)?;
        let mut sampler = LlamaSampler::greedy();
        let start = std::time::Instant::now();
        for _ in 0..n {
            let token = sampler.sample(&self.summary.ctx, self.summary.last);
            self.summary.decode(&[token], &never)?;
        }
        Ok(start.elapsed().as_secs_f64())
    }

    fn bench_tokens(&self, n: usize) -> Vec<LlamaToken> {
        let text = "The customer called about a delayed refund and the agent explained the steps. ";
        let mut tokens = Vec::with_capacity(n);
        while tokens.len() < n {
            tokens.extend(self.model.vocab().tokenize(text.as_bytes(), false, false));
        }
        tokens.truncate(n.min(self.summary.n_ctx));
        tokens
    }
}

/// Whether generated text ends a sentence: `.`, `!` or `?` after a word (not a decimal point).
pub(super) fn ends_sentence(text: &[u8]) -> bool {
    match text.trim_ascii_end() {
        [.., before, b'.' | b'!' | b'?'] => before.is_ascii_alphabetic() || *before == b')',
        _ => false,
    }
}

/// The summary sampler: greedy with a repetition penalty first, then seeded sampling.
fn field_sampler(attempt: u32, n_vocab: i32) -> LlamaSampler {
    if attempt == 0 {
        LlamaSampler::chain_simple([
            LlamaSampler::penalties(n_vocab, 64, 1.3, 0.0, 0.0),
            LlamaSampler::greedy(),
        ])
    } else {
        LlamaSampler::chain_simple([
            LlamaSampler::penalties(n_vocab, 64, 1.5, 0.1, 0.1),
            LlamaSampler::top_k(40),
            LlamaSampler::temp(0.7),
            LlamaSampler::dist(attempt),
        ])
    }
}

/// `n` token ids spread evenly over the vocabulary: their logits span the hidden state.
fn spread_tokens(n_vocab: usize, n: usize) -> Vec<usize> {
    (0..n).map(|k| k * n_vocab / n.max(1)).collect()
}

/// Log-probability of each label: log-sum-exp over its word tokens, less the log-partition.
fn label_logprobs(logits: &[f32], label_tokens: &[Vec<LlamaToken>; 3]) -> [f32; 3] {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_z = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    label_tokens.each_ref().map(|tokens| {
        let sum: f32 = tokens
            .iter()
            .map(|t| (logits[t.0 as usize] - max).exp())
            .sum();
        max + sum.ln() - log_z
    })
}

/// The model's own chat template around the placeholder, else ChatML.
fn chat_frame(model: &LlamaModel, system: &str) -> ChatFrame {
    let rendered = model.chat_template(None).ok().and_then(|template| {
        let messages = [
            LlamaChatMessage::new("system".into(), system.into()).ok()?,
            LlamaChatMessage::new("user".into(), USER_PLACEHOLDER.into()).ok()?,
        ];
        model.apply_chat_template(&template, &messages, true).ok()
    });
    rendered
        .as_deref()
        .and_then(ChatFrame::from_rendered)
        .unwrap_or_else(|| ChatFrame::chatml(system))
}
