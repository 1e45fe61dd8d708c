//! The local backend: llama.cpp (through the `llama-cpp-2` binding) running GGUFs
//! in-process on the CPU.
//!
//! One worker thread owns the models (a small one for sentiment, a larger one for summaries,
//! or one for both) and a context for each task. Callers send closures to the worker and
//! await the answer. Inference is serialised, so two models never spin against each other on
//! the same cores; sentiment is urgent: it runs between the steps of a summary being
//! generated (each prompt chunk and each token), so a summary never holds live sentiment back.
//! Each context remembers the tokens in its KV cache and reuses the longest common prefix,
//! so the fixed instruction part of a prompt is evaluated once.

mod config;
mod session;
mod window;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{OnceLock, mpsc};

use async_trait::async_trait;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use serde::Serialize;

pub use config::LocalConfig;
use session::Models;
pub use session::{Features, Session};

use super::fetch::check_gguf;
use super::{
    CancellationToken, ModelError, Sentiment, SentimentClassifier, Summariser, Summary, Turn,
};

/// What a loaded model is.
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
}

/// What the engine runs.
#[derive(Debug, Clone, Serialize)]
pub struct EngineInfo {
    /// The sentiment model.
    pub sentiment: ModelInfo,
    /// How sentiment is read: `head` or `label-words`.
    pub sentiment_method: &'static str,
    /// The summary model (the same file as `sentiment` when one model does both).
    pub summary: ModelInfo,
}

type Work = Box<dyn for<'m> FnOnce(&mut Session<'m>) + Send>;

/// Work for the model thread; urgent work (sentiment) runs before, and between the steps
/// of, everything else.
struct Job {
    urgent: bool,
    work: Work,
}

/// The model thread's inbox: urgent jobs first, the rest in arrival order.
pub(super) struct Queue {
    inbox: mpsc::Receiver<Job>,
    deferred: VecDeque<Work>,
}

impl Queue {
    /// Urgent work waiting now; other work that arrived is put aside in order.
    pub(super) fn urgent(&mut self) -> Option<Work> {
        while let Ok(job) = self.inbox.try_recv() {
            if job.urgent {
                return Some(job.work);
            }
            self.deferred.push_back(job.work);
        }
        None
    }

    /// The next work to run, waiting for some; `None` once every sender is gone.
    fn next(&mut self) -> Option<Work> {
        if let Some(work) = self.urgent().or_else(|| self.deferred.pop_front()) {
            return Some(work);
        }
        self.inbox.recv().ok().map(|job| job.work)
    }
}

/// GGUF models running in-process; implements both [`SentimentClassifier`] and
/// [`Summariser`].
pub struct LocalModel {
    jobs: mpsc::Sender<Job>,
    info: EngineInfo,
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
    /// Loads the configured GGUFs on a new worker thread (the summary model only when it is
    /// another file).
    pub fn load(config: LocalConfig) -> Result<Self, ModelError> {
        let path = config.model_path();
        let summary_path = config.summary_model_path();
        check_gguf(&path)?;
        check_gguf(&summary_path)?;
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("callpulse-slm".into())
            .spawn(move || {
                let queue = Queue {
                    inbox,
                    deferred: VecDeque::new(),
                };
                let loaded = backend().and_then(|backend| {
                    let sentiment = load_model(backend, &path)?;
                    let summary = match summary_path == path {
                        true => None,
                        false => Some(load_model(backend, &summary_path)?),
                    };
                    Ok((backend, sentiment, summary))
                });
                let (backend, sentiment, summary) = match loaded {
                    Ok(models) => models,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let models = Models {
                    sentiment: (&sentiment, &path),
                    summary: (summary.as_ref().unwrap_or(&sentiment), &summary_path),
                };
                let mut session = match Session::new(backend, models, config, queue) {
                    Ok(session) => session,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(session.info.clone()));
                while let Some(work) = session.queue.next() {
                    work(&mut session);
                }
            })
            .map_err(|e| ModelError::Inference(format!("spawning the model thread: {e}")))?;
        let info = ready_rx.recv().map_err(|_| ModelError::EngineStopped)??;
        Ok(Self { jobs, info })
    }

    /// What was loaded.
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// Runs `f` on the worker (before other work when `urgent`) and awaits its result.
    pub async fn call<R, F>(&self, urgent: bool, f: F) -> Result<R, ModelError>
    where
        R: Send + 'static,
        F: for<'m> FnOnce(&mut Session<'m>) -> R + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let work: Work = Box::new(move |session: &mut Session<'_>| {
            let _ = tx.send(f(session));
        });
        self.jobs
            .send(Job { urgent, work })
            .map_err(|_| ModelError::EngineStopped)?;
        rx.await.map_err(|_| ModelError::EngineStopped)
    }

    /// Runs a cancellable model operation: dropping the returned future cancels it too.
    async fn cancellable<R, F>(
        &self,
        urgent: bool,
        cancel: &CancellationToken,
        f: F,
    ) -> Result<R, ModelError>
    where
        R: Send + 'static,
        F: for<'m> FnOnce(&mut Session<'m>, &CancellationToken) -> Result<R, ModelError>
            + Send
            + 'static,
    {
        let token = cancel.child_token();
        let guard = token.clone().drop_guard();
        let result = self.call(urgent, move |session| f(session, &token)).await?;
        guard.disarm();
        result
    }

    /// The sentiment features of one customer utterance (for training the head).
    pub async fn features(&self, text: String) -> Result<Vec<f32>, ModelError> {
        self.cancellable(true, &CancellationToken::new(), move |s, cancel| {
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
        self.cancellable(true, cancel, move |s, cancel| {
            s.judge(&utterance, &context, cancel)
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
        self.cancellable(false, cancel, move |s, cancel| s.summarise(&turns, cancel))
            .await
    }
}

/// Loads one GGUF.
fn load_model(backend: &LlamaBackend, path: &std::path::Path) -> Result<LlamaModel, ModelError> {
    LlamaModel::load_from_file(backend, path, &LlamaModelParams::default()).map_err(|e| {
        ModelError::CorruptModel {
            path: path.to_path_buf(),
            reason: format!("llama.cpp could not load it: {e}"),
        }
    })
}

#[cfg(test)]
mod tests;
