//! Hearing the call: Connect's live media (Kinesis Video Streams) read with GetMedia
//! ([`kvs`]), demuxed live ([`mkv`]), the two tracks mixed to one stereo stream ([`mix`]),
//! transcribed by a [`Recogniser`] (Amazon Transcribe streaming, [`transcribe`]), and
//! turned into the contact's utterances on the call's own timeline ([`reader`]), with
//! checkpoints so a restarted or moved contact resumes where the audio was fully heard.
//!
//! The media source and the recogniser are traits, so the reader is the same whatever is
//! behind them; tests run the real SDK clients against the stubs of `stubs.rs`.

pub mod config;
pub mod kvs;
pub mod mix;
pub mod mkv;
pub mod pieces;
pub mod reader;
#[cfg(test)]
pub(crate) mod stubs;
#[cfg(test)]
mod tests;
pub mod transcribe;

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::bytes::Bytes;

pub use self::config::{AudioConfig, AudioSource, TranscribeConfig};
use crate::aws::{AwsEndpoint, CONNECT_TIMEOUT};
use crate::redaction::Redactor;

/// Why audio could not be read or transcribed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    /// The media stream does not exist (or is not this account's).
    #[error("no such media stream: {0}")]
    NoStream(String),
    /// The stream's bytes are not the MKV Connect writes.
    #[error("malformed media: {0}")]
    Malformed(String),
    /// Refused for good (bad request, not authorised, KMS): trying again cannot help.
    #[error("refused: {0}")]
    Refused(String),
    /// Throttled or over a limit: try again later.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The service or the connection failed: try again.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl AudioError {
    /// Whether trying again can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AudioError::Throttled(_) | AudioError::Unavailable(_))
    }

    /// The failure's kind, as the `audio_failures_total` metric labels it.
    pub fn kind(&self) -> &'static str {
        match self {
            AudioError::NoStream(_) => "no_stream",
            AudioError::Malformed(_) => "malformed",
            AudioError::Refused(_) => "refused",
            AudioError::Throttled(_) => "throttled",
            AudioError::Unavailable(_) => "unavailable",
        }
    }
}

/// Where GetMedia starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// At this fragment (which may itself be delivered again: the reader drops it).
    Fragment(String),
    /// Where an earlier GetMedia left off.
    Continuation(String),
    /// At the live edge.
    Now,
}

/// A call's media, as bytes.
#[async_trait]
pub trait MediaSource: Send + Sync {
    /// Opens stream `stream_arn` at `start`: the MKV bytes as they arrive.
    async fn open(
        &self,
        stream_arn: &str,
        start: &StartAt,
    ) -> Result<BoxStream<'static, Result<Bytes, AudioError>>, AudioError>;
}

/// One result of a recogniser: partial (superseded by a later result of the same id) or
/// final.
#[derive(Debug, Clone, PartialEq)]
pub struct Heard {
    /// 0 the customer, 1 the agent.
    pub channel: usize,
    /// The recogniser's id for the result.
    pub result_id: String,
    /// Start, seconds of the session's audio.
    pub start_secs: f64,
    /// End, seconds of the session's audio.
    pub end_secs: f64,
    /// Whether a later result replaces it.
    pub partial: bool,
    /// What was said.
    pub text: String,
    /// Its words, with their times; empty where the recogniser gives none.
    pub words: Vec<Word>,
}

/// One word (or punctuation mark) of a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// The word as said, or the mark.
    pub text: String,
    /// Start, seconds of the session's audio.
    pub start_secs: f64,
    /// End, seconds of the session's audio.
    pub end_secs: f64,
    /// A punctuation mark: written after the word before it, without a space.
    pub punctuation: bool,
    /// Later results will not change it (partial-results stabilization).
    pub stable: bool,
}

/// An open recognition session: stereo s16le chunks in (closing the sender ends the audio),
/// results out until the session ends.
pub struct Session {
    /// Audio chunks.
    pub audio: mpsc::Sender<Bytes>,
    /// Results, or the error that ended the session.
    pub heard: mpsc::Receiver<Result<Heard, AudioError>>,
}

/// Speech to text over a stream.
#[async_trait]
pub trait Recogniser: Send + Sync {
    /// Opens a session for stereo audio at `sample_rate` Hz.
    async fn open(&self, sample_rate: u32) -> Result<Session, AudioError>;
}

/// What every contact's audio reader uses.
pub struct AudioServices {
    /// Where audio comes from.
    pub media: Arc<dyn MediaSource>,
    /// What transcribes it.
    pub recogniser: Arc<dyn Recogniser>,
    /// Recognition sessions open at once, at most (Transcribe's concurrent streams).
    pub streams: Arc<Semaphore>,
    /// Applied to every transcript before it is an utterance.
    pub redactor: Redactor,
    /// Settings.
    pub config: AudioConfig,
}

impl AudioServices {
    /// The services `config` names (KVS and Transcribe), or none when audio is off.
    pub async fn from_config(config: &AudioConfig, redactor: Redactor) -> Option<Arc<Self>> {
        match config.source {
            AudioSource::None => None,
            AudioSource::Kvs => Some(Arc::new(Self {
                media: Arc::new(kvs::Kvs::new(&config.kvs).await),
                recogniser: Arc::new(transcribe::Transcribe::new(config.transcribe.clone()).await),
                streams: Arc::new(Semaphore::new(config.max_streams.max(1))),
                redactor,
                config: config.clone(),
            })),
        }
    }
}

/// The SDK configuration for a streaming service (GetMedia, Transcribe): the standard
/// chain with `endpoint`'s overrides, a connect timeout, and no call timeout (a stream
/// lasts as long as the call).
pub(crate) async fn streaming_sdk_config(endpoint: &AwsEndpoint) -> aws_config::SdkConfig {
    let sdk = crate::aws::sdk_config(endpoint).await;
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .disable_operation_timeout()
        .disable_operation_attempt_timeout()
        .build();
    sdk.into_builder().timeout_config(timeouts).build()
}
