//! The local backend: llama.cpp (through the `llama-cpp-2` binding) running any GGUF
//! in-process on the CPU.
//!
//! One worker thread owns the model and two contexts: a small one for sentiment and a larger
//! one for summaries. Callers
//! send closures to the worker and await the answer; inference is serialised, which is what
//! two cores can do anyway. Each context remembers the tokens in its KV cache and reuses the
//! longest common prefix, so the fixed instruction part of a prompt is evaluated once.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, mpsc};

use async_trait::async_trait;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use serde::{Deserialize, Serialize};

use super::fetch::{check_gguf, default_model_path};
use super::head::{SentimentHead, softmax};
use super::prompts::{
    ChatFrame, LABEL_WORDS, PROMPT_VERSION, Piece, Prompt, SENTIMENT_SYSTEM, SUMMARY_FIELDS,
    SUMMARY_SYSTEM, Subject, USER_PLACEHOLDER, sentiment_prompt, summary_prompt, summary_subjects,
};
use super::summary::{bullets, chunk_turns, merge_notes, spoken_turns, validate_field};
use super::{
    CancellationToken, LabelScores, ModelError, Sentiment, SentimentClassifier, Summariser,
    Summary, Turn, Usage,
};

/// The head trained for the packaged SmolLM2-135M-Instruct (Q8_0 copy; see its provenance).
const BUILTIN_HEAD: &str = include_str!("../heads/smollm2-135m-instruct-q8_0.json");

/// Settings of the local backend (`[models.local]` in config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// GGUF file; empty means the packaged default in the model cache.
    pub model: Option<PathBuf>,
    /// CPU threads; 0 means every core.
    pub threads: usize,
    /// Context window of the sentiment context, in tokens.
    pub sentiment_context_tokens: u32,
    /// Context window of the summary context, in tokens; longer calls are chunked.
    pub summary_context_tokens: u32,
    /// Earlier turns shown to the sentiment model with each utterance.
    pub context_turns: usize,
    /// Most tokens generated for one summary field.
    pub max_field_tokens: u32,
    /// Most characters a summary field may have.
    pub max_field_chars: usize,
    /// Sentiment head file; unset means the built-in head when it fits the model.
    pub sentiment_head: Option<PathBuf>,
    /// Read sentiment from label-word scores only, even if a head fits.
    pub zero_shot: bool,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            model: None,
            threads: 0,
            sentiment_context_tokens: 1024,
            summary_context_tokens: 4096,
            context_turns: 0,
            max_field_tokens: 40,
            max_field_chars: 400,
            sentiment_head: None,
            zero_shot: false,
        }
    }
}

impl LocalConfig {
    /// The GGUF this config names.
    pub fn model_path(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(default_model_path)
    }
}

/// What the loaded model is.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Model id used in events: the GGUF's `general.name`, else the file stem.
    pub id: String,
    /// The GGUF file.
    pub path: PathBuf,
    /// File size in bytes.
    pub bytes: u64,
    /// Parameters.
    pub params: u64,
    /// Width of the hidden state.
    pub n_embd: usize,
    /// How sentiment is read: `head` or `label-words`.
    pub sentiment_method: &'static str,
}

type Job = Box<dyn for<'m> FnOnce(&mut Session<'m>) + Send>;

/// A GGUF model running in-process; implements both [`SentimentClassifier`] and
/// [`Summariser`].
pub struct LocalModel {
    jobs: mpsc::Sender<Job>,
    info: ModelInfo,
}

/// The process-wide llama.cpp backend, initialised once, with its logs sent to tracing.
pub(crate) fn backend() -> Result<&'static LlamaBackend, ModelError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| ModelError::Inference(format!("llama.cpp backend: {e}")))
}

impl LocalModel {
    /// Loads the configured GGUF on a new worker thread.
    pub fn load(config: LocalConfig) -> Result<Self, ModelError> {
        let path = config.model_path();
        check_gguf(&path)?;
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("callpulse-slm".into())
            .spawn(move || {
                let loaded = backend().and_then(|backend| {
                    LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default())
                        .map_err(|e| ModelError::CorruptModel {
                            path: path.clone(),
                            reason: format!("llama.cpp could not load it: {e}"),
                        })
                        .map(|model| (backend, model))
                });
                let (backend, model) = match loaded {
                    Ok(pair) => pair,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let mut session = match Session::new(backend, &model, &path, config) {
                    Ok(session) => session,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(session.info.clone()));
                while let Ok(job) = inbox.recv() {
                    job(&mut session);
                }
            })
            .map_err(|e| ModelError::Inference(format!("spawning the model thread: {e}")))?;
        let info = ready_rx.recv().map_err(|_| ModelError::EngineStopped)??;
        Ok(Self { jobs, info })
    }

    /// What was loaded.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Runs `f` on the worker and awaits its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, ModelError>
    where
        R: Send + 'static,
        F: for<'m> FnOnce(&mut Session<'m>) -> R + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |session: &mut Session<'_>| {
            let _ = tx.send(f(session));
        });
        self.jobs.send(job).map_err(|_| ModelError::EngineStopped)?;
        rx.await.map_err(|_| ModelError::EngineStopped)
    }

    /// Runs a cancellable model operation: dropping the returned future cancels it too.
    async fn cancellable<R, F>(&self, cancel: &CancellationToken, f: F) -> Result<R, ModelError>
    where
        R: Send + 'static,
        F: for<'m> FnOnce(&mut Session<'m>, &CancellationToken) -> Result<R, ModelError>
            + Send
            + 'static,
    {
        let token = cancel.child_token();
        let guard = token.clone().drop_guard();
        let result = self.call(move |session| f(session, &token)).await?;
        guard.disarm();
        result
    }

    /// The sentiment features of one customer utterance (for training the head).
    pub async fn features(&self, text: String) -> Result<Vec<f32>, ModelError> {
        self.cancellable(&CancellationToken::new(), move |s, cancel| {
            s.sentiment_features(&Turn::new("CUSTOMER", text), &[], cancel)
                .map(|f| f.features)
        })
        .await
    }
}

#[async_trait]
impl SentimentClassifier for LocalModel {
    async fn classify(
        &self,
        utterance: &Turn,
        context: &[Turn],
        cancel: &CancellationToken,
    ) -> Result<Sentiment, ModelError> {
        let (utterance, context) = (utterance.clone(), context.to_vec());
        self.cancellable(cancel, move |s, cancel| {
            s.classify(&utterance, &context, cancel)
        })
        .await
    }
}

#[async_trait]
impl Summariser for LocalModel {
    async fn summarise(
        &self,
        turns: &[Turn],
        cancel: &CancellationToken,
    ) -> Result<Summary, ModelError> {
        let turns = turns.to_vec();
        self.cancellable(cancel, move |s, cancel| s.summarise(&turns, cancel))
            .await
    }
}

/// A llama.cpp context plus the tokens its KV cache holds (sequence 0).
struct Window<'m> {
    ctx: LlamaContext<'m>,
    tokens: Vec<LlamaToken>,
    batch: LlamaBatch<'static>,
    n_ctx: usize,
    last: i32,
}

impl<'m> Window<'m> {
    fn new(
        backend: &LlamaBackend,
        model: &'m LlamaModel,
        n_ctx: u32,
        threads: i32,
    ) -> Result<Self, ModelError> {
        let n_ctx = n_ctx.clamp(64, model.n_ctx_train().max(64));
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = model
            .new_context(backend, params)
            .map_err(|e| ModelError::Inference(format!("creating a context: {e}")))?;
        Ok(Self {
            ctx,
            tokens: Vec::new(),
            batch: LlamaBatch::new(n_ctx as usize, 1),
            n_ctx: n_ctx as usize,
            last: 0,
        })
    }

    /// Makes the KV cache hold exactly `tokens`, evaluating only what differs from what it
    /// holds; afterwards the logits of the last token are readable.
    fn eval(
        &mut self,
        tokens: &[LlamaToken],
        cancel: &CancellationToken,
    ) -> Result<(), ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::Inference("empty prompt".into()));
        }
        if tokens.len() > self.n_ctx {
            return Err(ModelError::Inference(format!(
                "prompt of {} tokens exceeds the {}-token context",
                tokens.len(),
                self.n_ctx
            )));
        }
        let mut keep = self
            .tokens
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count();
        keep = keep.min(tokens.len() - 1);
        let removed = self
            .ctx
            .clear_kv_cache_seq(Some(0), Some(keep as u32), None)
            .unwrap_or(false);
        if !removed {
            self.ctx.clear_kv_cache();
            keep = 0;
        }
        self.tokens.truncate(keep);
        let n_batch = self.ctx.n_batch() as usize;
        for chunk in tokens[keep..].chunks(n_batch) {
            self.decode(chunk, cancel)?;
        }
        Ok(())
    }

    /// Appends tokens after what the cache holds.
    fn decode(
        &mut self,
        chunk: &[LlamaToken],
        cancel: &CancellationToken,
    ) -> Result<(), ModelError> {
        if cancel.is_cancelled() {
            return Err(ModelError::Cancelled);
        }
        if self.tokens.len() + chunk.len() > self.n_ctx {
            return Err(ModelError::Inference("context window full".into()));
        }
        self.batch.clear();
        let start = self.tokens.len();
        for (i, &token) in chunk.iter().enumerate() {
            self.batch
                .add(token, (start + i) as i32, &[0], i + 1 == chunk.len())
                .map_err(|e| ModelError::Inference(e.to_string()))?;
        }
        self.ctx
            .decode(&mut self.batch)
            .map_err(|e| ModelError::Inference(format!("decode: {e}")))?;
        self.tokens.extend_from_slice(chunk);
        self.last = self.batch.n_tokens() - 1;
        Ok(())
    }

    fn logits(&self) -> &[f32] {
        self.ctx.get_logits_ith(self.last)
    }
}

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
    info: ModelInfo,
}

impl<'m> Session<'m> {
    fn new(
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
fn ends_sentence(text: &[u8]) -> bool {
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

/// The configured head, or the built-in one when it was trained on this model; `None` for
/// zero-shot. A configured head that does not fit the model is an error, not a silent
/// fallback.
fn load_head(
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
            && h.provenance.prompt_version == PROMPT_VERSION
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
                    "trained for {} ({} bytes, prompt v{}), not for {model_id} ({model_bytes} bytes, prompt v{PROMPT_VERSION})",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_end_at_punctuation_after_words_only() {
        assert!(ends_sentence(b"The agent issued a refund."));
        assert!(ends_sentence(b"Is it fixed? "));
        assert!(!ends_sentence(b"The refund of 249."));
        assert!(!ends_sentence(b"The refund of"));
        assert!(!ends_sentence(b"."));
    }
}
