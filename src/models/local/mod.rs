//! The local backend: llama.cpp (through the `llama-cpp-2` binding) running any GGUF
//! in-process on the CPU.
//!
//! One worker thread owns the model and two contexts: a small one for sentiment and a larger
//! one for summaries. Callers
//! send closures to the worker and await the answer; inference is serialised, which is what
//! two cores can do anyway. Each context remembers the tokens in its KV cache and reuses the
//! longest common prefix, so the fixed instruction part of a prompt is evaluated once.

mod config;
mod session;
mod window;

use std::path::PathBuf;
use std::sync::{OnceLock, mpsc};

use async_trait::async_trait;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use serde::Serialize;

pub use config::LocalConfig;
pub use session::{Features, Session};

use super::fetch::check_gguf;
use super::{
    CancellationToken, ModelError, Sentiment, SentimentClassifier, Summariser, Summary, Turn,
};

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

#[cfg(test)]
mod tests;
