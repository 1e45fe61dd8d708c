//! A llama.cpp context and the tokens its KV cache holds, so that a prompt sharing a prefix
//! with the last one evaluates only what differs.

use std::num::NonZeroU32;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::models::{CancellationToken, ModelError};

/// A llama.cpp context plus the tokens its KV cache holds (sequence 0).
pub(super) struct Window<'m> {
    pub(super) ctx: LlamaContext<'m>,
    pub(super) tokens: Vec<LlamaToken>,
    batch: LlamaBatch<'static>,
    pub(super) n_ctx: usize,
    pub(super) last: i32,
}

impl<'m> Window<'m> {
    pub(super) fn new(
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
    pub(super) fn eval(
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
    pub(super) fn decode(
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

    pub(super) fn logits(&self) -> &[f32] {
        self.ctx.get_logits_ith(self.last)
    }
}
