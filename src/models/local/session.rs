//! The worker thread's session: the models, a window for each task, the prompts' frames and
//! the sentiment head; sentiment features, labels and summaries, and the benchmark's timings.

use std::path::Path;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::config::{LocalConfig, load_head};
use super::window::Window;
use super::{EngineInfo, ModelInfo, Queue};
use crate::models::head::{SentimentHead, softmax};
use crate::models::prompts::{
    ANGER_EXAMPLES, ANGER_SYSTEM, ANGER_WORDS, ChatFrame, LABEL_WORDS, Piece, Prompt,
    SENTIMENT_SYSTEM, SUMMARY_LINES, SUMMARY_PROMPT_VERSION, SUMMARY_SYSTEM, USER_PLACEHOLDER,
    anger_example, anger_prompt, sentiment_prompt, summary_prompt,
};
use crate::models::summary::{chunk_turns, drop_repeats, merge_notes, spoken_turns, validate_line};
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

/// The models a session runs, each with its file: one for sentiment, one for summaries
/// (possibly the same).
pub(super) struct Models<'m> {
    pub(super) sentiment: (&'m LlamaModel, &'m Path),
    pub(super) summary: (&'m LlamaModel, &'m Path),
}

/// Tokens a summary prompt is evaluated in at a time, urgent work running in between.
const PREFILL_STEP: usize = 256;

/// The worker's state: the models, a window for each task, prompts and the sentiment head.
pub struct Session<'m> {
    sentiment_model: &'m LlamaModel,
    summary_model: &'m LlamaModel,
    sentiment: Window<'m>,
    summary: Window<'m>,
    anger: Window<'m>,
    sentiment_frame: ChatFrame,
    summary_frame: ChatFrame,
    anger_frame: ChatFrame,
    label_tokens: [Vec<LlamaToken>; 3],
    anger_tokens: [Vec<LlamaToken>; 2],
    feature_tokens: Vec<usize>,
    calibration: [f32; 3],
    head: Option<SentimentHead>,
    config: LocalConfig,
    pub(super) queue: Queue,
    pub(super) info: EngineInfo,
}

impl<'m> Session<'m> {
    pub(super) fn new(
        backend: &LlamaBackend,
        models: Models<'m>,
        config: LocalConfig,
        queue: Queue,
    ) -> Result<Self, ModelError> {
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        } as i32;
        let (model, path) = models.sentiment;
        let (summary_model, summary_path) = models.summary;
        let sentiment_info = model_info(model, path);
        let head = load_head(
            &config,
            &sentiment_info.id,
            sentiment_info.bytes,
            sentiment_info.n_embd,
        )?;
        let mut session = Self {
            sentiment_model: model,
            summary_model,
            sentiment: Window::new(backend, model, config.sentiment_context_tokens, threads)?,
            summary: Window::new(
                backend,
                summary_model,
                config.summary_context_tokens,
                threads,
            )?,
            anger: Window::new(
                backend,
                summary_model,
                config.sentiment_context_tokens,
                threads,
            )?,
            sentiment_frame: chat_frame(model, SENTIMENT_SYSTEM, &[]),
            summary_frame: chat_frame(summary_model, SUMMARY_SYSTEM, &[]),
            anger_frame: chat_frame(
                summary_model,
                ANGER_SYSTEM,
                &ANGER_EXAMPLES.map(|(text, answer)| (anger_example(text), answer.to_string())),
            ),
            label_tokens: LABEL_WORDS.map(|words| first_tokens(model, &words)),
            anger_tokens: ANGER_WORDS.map(|words| first_tokens(summary_model, &words)),
            feature_tokens: spread_tokens(model.n_vocab() as usize, model.n_embd() as usize),
            calibration: [0.0; 3],
            info: EngineInfo {
                sentiment: sentiment_info,
                sentiment_method: if head.is_some() {
                    "head"
                } else {
                    "label-words"
                },
                summary: model_info(summary_model, summary_path),
            },
            head,
            config,
            queue,
        };
        session.calibration = session.content_free_logprobs()?;
        Ok(session)
    }

    /// Runs the urgent work waiting now (sentiment), between two steps of other work.
    fn serve_urgent(&mut self) {
        while let Some(work) = self.queue.urgent() {
            work(self);
        }
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
    fn tokenize(model: &LlamaModel, prompt: &Prompt, cap: Option<usize>) -> Vec<LlamaToken> {
        let vocab = model.vocab();
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
        self.summary_model
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
        let tokens = Self::tokenize(self.sentiment_model, &prompt, Some(cap.max(16)));
        self.sentiment.eval(&tokens, cancel)?;
        let logits = self.sentiment.logits();
        let label_logprobs = word_logprobs(logits, &self.label_tokens);
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
            anger: None,
            model_id: self.info.sentiment.id.clone(),
            usage: f.usage,
            cost_usd: None,
        })
    }

    /// Judges a live utterance: its sentiment, and for a customer (or unknown speaker)
    /// whose P(NEGATIVE) reaches `anger_gate`, whether it is anger, asked of the summary
    /// model with the turns before it.
    pub fn judge(
        &mut self,
        utterance: &Turn,
        context: &[Turn],
        cancel: &CancellationToken,
    ) -> Result<Sentiment, ModelError> {
        let mut sentiment = self.classify(utterance, context, cancel)?;
        let agent = utterance.participant.eq_ignore_ascii_case("AGENT");
        if !agent && sentiment.scores.negative >= self.config.anger_gate {
            let prompt = anger_prompt(&self.anger_frame, &utterance.text, context);
            let cap = self.anger.n_ctx.saturating_sub(200) / 3;
            let tokens = Self::tokenize(self.summary_model, &prompt, Some(cap.max(16)));
            self.anger.eval(&tokens, cancel)?;
            let [yes, no] = word_logprobs(self.anger.logits(), &self.anger_tokens);
            sentiment.anger = Some(softmax([yes, no])[0]);
            sentiment.usage.input_tokens += tokens.len() as u32;
        }
        Ok(sentiment)
    }

    /// Summarises a call, in chunks when it does not fit the summary context.
    pub fn summarise(
        &mut self,
        turns: &[Turn],
        cancel: &CancellationToken,
    ) -> Result<Summary, ModelError> {
        let turns = spoken_turns(turns)?;
        let mut usage = Usage::default();
        let budget = self.transcript_budget(&turns);
        let mut chunks = chunk_turns(&turns, budget, |t| self.count_tokens(t));
        let n_chunks = chunks.len();
        let mut notes = false;
        while chunks.len() > 1 {
            let mut parts = Vec::with_capacity(chunks.len());
            for chunk in &chunks {
                parts.push(self.summary_lines(chunk, notes, cancel, &mut usage)?);
            }
            notes = true;
            chunks = chunk_turns(&merge_notes(&parts), budget, |t| self.count_tokens(t));
        }
        let [text, reason, resolution, follow_up] =
            self.summary_lines(&chunks[0], notes, cancel, &mut usage)?;
        let customer_sentiment = match turns.iter().rposition(Turn::is_customer) {
            Some(i) => {
                let s = self.classify(&turns[i], &turns[..i], cancel)?;
                usage += s.usage;
                Some(s.label)
            }
            None => None,
        };
        Ok(Summary {
            text,
            reason,
            resolution,
            follow_up,
            customer_sentiment,
            model_id: self.info.summary.id.clone(),
            prompt_version: SUMMARY_PROMPT_VERSION,
            chunks: n_chunks,
            usage,
            cost_usd: None,
        })
    }

    /// Tokens a transcript chunk may take: the window less the prompt frame and the answer.
    fn transcript_budget(&self, turns: &[Turn]) -> usize {
        let speakers = &turns[..turns.len().min(2)];
        let frame = Self::tokenize(
            self.summary_model,
            &summary_prompt(&self.summary_frame, speakers, true),
            None,
        )
        .len();
        let answer = self.config.max_summary_tokens as usize
            + (SUMMARY_LINES.len() - 1) * self.config.max_field_tokens as usize
            + 16 * SUMMARY_LINES.len();
        self.summary.n_ctx.saturating_sub(frame + answer).max(32)
    }

    /// Writes the summary's lines for one transcript (or notes): each header is written into
    /// the answer and the model completes it; greedy first, then sampling when the output
    /// fails validation.
    fn summary_lines(
        &mut self,
        turns: &[Turn],
        notes: bool,
        cancel: &CancellationToken,
        usage: &mut Usage,
    ) -> Result<[String; 4], ModelError> {
        const ATTEMPTS: u32 = 3;
        let prompt = summary_prompt(&self.summary_frame, turns, notes);
        let base = Self::tokenize(self.summary_model, &prompt, None);
        self.prefill(&base, cancel)?;
        let mut last_rejection = String::new();
        'attempt: for attempt in 0..ATTEMPTS {
            let mut seq = base.clone();
            usage.input_tokens += base.len() as u32;
            let mut lines: [String; 4] = Default::default();
            for (i, line) in SUMMARY_LINES.iter().enumerate() {
                let newline = if i == 0 { "" } else { "\n" };
                let header = format!("{newline}{}", line.header);
                seq.extend(
                    self.summary_model
                        .vocab()
                        .tokenize(header.as_bytes(), false, true),
                );
                let max_tokens = match i {
                    0 => self.config.max_summary_tokens,
                    _ => self.config.max_field_tokens,
                };
                let mut sampler = field_sampler(attempt, self.summary_model.n_vocab());
                let generated = self.generate_line(
                    &mut seq,
                    &mut sampler,
                    (max_tokens, line.max_sentences),
                    cancel,
                    usage,
                )?;
                match validate_line(i, &generated, self.config.max_field_chars) {
                    Ok(text) => lines[i] = text,
                    Err(rejection) => {
                        tracing::debug!(attempt, line = line.header, %rejection, "summary line rejected");
                        last_rejection = format!("{} {rejection}", line.header);
                        continue 'attempt;
                    }
                }
            }
            drop_repeats(&mut lines);
            return Ok(lines);
        }
        Err(ModelError::InvalidOutput(format!(
            "summary failed validation {ATTEMPTS} times (last: {last_rejection})"
        )))
    }

    /// Evaluates a summary prompt a step at a time, running urgent work between steps.
    fn prefill(
        &mut self,
        tokens: &[LlamaToken],
        cancel: &CancellationToken,
    ) -> Result<(), ModelError> {
        let mut end = 0;
        while end < tokens.len() {
            end = (end + PREFILL_STEP).min(tokens.len());
            self.serve_urgent();
            self.summary.eval(&tokens[..end], cancel)?;
        }
        Ok(())
    }

    /// Generates one line: until a line break, end of generation, the token bound, or (when
    /// at most `sentences` sentences are wanted) the end of the last of them; a line cut by
    /// the bound keeps its whole sentences.
    fn generate_line(
        &mut self,
        seq: &mut Vec<LlamaToken>,
        sampler: &mut LlamaSampler,
        (max_tokens, sentences): (u32, usize),
        cancel: &CancellationToken,
        usage: &mut Usage,
    ) -> Result<String, ModelError> {
        self.summary.eval(seq, cancel)?;
        let mut text = Vec::new();
        let mut ended = 0;
        let mut complete = false;
        for _ in 0..max_tokens {
            let token = sampler.sample(&self.summary.ctx, self.summary.last);
            usage.output_tokens += 1;
            let vocab = self.summary_model.vocab();
            if vocab.is_eog(token) {
                complete = true;
                break;
            }
            let piece = vocab.token_to_piece(token, true, None);
            if let Some(end) = piece.iter().position(|&b| b == b'\n') {
                text.extend_from_slice(&piece[..end]);
                complete = true;
                break;
            }
            text.extend_from_slice(&piece);
            seq.push(token);
            if let Some(start) = next_header(&text) {
                text.truncate(start);
                complete = true;
                break;
            }
            if ends_sentence(&text) {
                ended = text.len();
                if sentences_in(&text) >= sentences {
                    complete = true;
                    break;
                }
            }
            self.serve_urgent();
            self.summary.decode(&[token], cancel)?;
        }
        if !complete && ended > 0 {
            text.truncate(ended);
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
            tokens.extend(
                self.summary_model
                    .vocab()
                    .tokenize(text.as_bytes(), false, false),
            );
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

/// Where the model began writing another summary line's header inside this one.
fn next_header(text: &[u8]) -> Option<usize> {
    SUMMARY_LINES.iter().find_map(|line| {
        text.windows(line.header.len())
            .position(|w| w == line.header.as_bytes())
    })
}

/// How many sentences `text` holds (ends of sentences after words).
fn sentences_in(text: &[u8]) -> usize {
    (1..=text.len())
        .filter(|&n| {
            matches!(text[n - 1], b'.' | b'!' | b'?')
                && ends_sentence(&text[..n])
                && text.get(n).is_none_or(|b| b.is_ascii_whitespace())
        })
        .count()
}

/// What is known of a loaded GGUF.
fn model_info(model: &LlamaModel, path: &Path) -> ModelInfo {
    ModelInfo {
        id: model.meta_val_str("general.name").unwrap_or_else(|_| {
            path.file_stem()
                .map_or("local".into(), |s| s.to_string_lossy().into_owned())
        }),
        path: path.to_path_buf(),
        bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        params: model.n_params(),
        n_embd: model.n_embd() as usize,
    }
}

/// The summary sampler: greedy with a repetition penalty first, then seeded sampling.
fn field_sampler(attempt: u32, n_vocab: i32) -> LlamaSampler {
    if attempt == 0 {
        LlamaSampler::chain_simple([
            LlamaSampler::penalties(n_vocab, 64, 1.1, 0.0, 0.0),
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

/// The first token of each spelling of an answer word, without repeats.
fn first_tokens(model: &LlamaModel, spellings: &[&str]) -> Vec<LlamaToken> {
    let mut tokens: Vec<LlamaToken> = spellings
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
}

/// Log-probability of each answer word: log-sum-exp over its tokens, less the log-partition.
fn word_logprobs<const N: usize>(logits: &[f32], label_tokens: &[Vec<LlamaToken>; N]) -> [f32; N] {
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

/// The model's own chat template around the placeholder, after the system message and the
/// example exchanges; else ChatML.
fn chat_frame(model: &LlamaModel, system: &str, examples: &[(String, String)]) -> ChatFrame {
    let rendered = model.chat_template(None).ok().and_then(|template| {
        let mut messages = vec![LlamaChatMessage::new("system".into(), system.into()).ok()?];
        for (user, assistant) in examples {
            messages.push(LlamaChatMessage::new("user".into(), user.clone()).ok()?);
            messages.push(LlamaChatMessage::new("assistant".into(), assistant.clone()).ok()?);
        }
        messages.push(LlamaChatMessage::new("user".into(), USER_PLACEHOLDER.into()).ok()?);
        model.apply_chat_template(&template, &messages, true).ok()
    });
    rendered
        .as_deref()
        .and_then(ChatFrame::from_rendered)
        .unwrap_or_else(|| ChatFrame::chatml(system, examples))
}
