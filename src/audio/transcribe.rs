//! Amazon Transcribe streaming as a [`Recogniser`]: one StartStreamTranscription per
//! session, stereo PCM with channel identification (channel 0 the customer, 1 the agent),
//! each chunk sent as one AudioEvent, results read from the response's event stream as
//! [`Heard`]. Refusals and throttling come back as [`AudioError`]s that say whether trying
//! again can help.

use async_trait::async_trait;
use aws_sdk_transcribestreaming::Client;
use aws_sdk_transcribestreaming::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_transcribestreaming::primitives::Blob;
use aws_sdk_transcribestreaming::types::{
    AudioEvent, AudioStream, ItemType, LanguageCode, MediaEncoding, PartialResultsStability,
    TranscriptResultStream,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::bytes::Bytes;

use super::{AudioError, Heard, Recogniser, Session, TranscribeConfig, Word};
use crate::aws::sdk_error;

/// Audio chunks queued for a session before its sender waits.
const QUEUED_CHUNKS: usize = 32;

/// Transcribe streaming.
pub struct Transcribe {
    client: Client,
    config: TranscribeConfig,
}

impl Transcribe {
    /// A recogniser with `config`'s options and endpoint.
    pub async fn new(config: TranscribeConfig) -> Self {
        let sdk = super::streaming_sdk_config(&config.endpoint).await;
        Self {
            client: Client::new(&sdk),
            config,
        }
    }
}

#[async_trait]
impl Recogniser for Transcribe {
    async fn open(&self, sample_rate: u32) -> Result<Session, AudioError> {
        let (audio, chunks) = mpsc::channel::<Bytes>(QUEUED_CHUNKS);
        let events = futures_util::stream::unfold(chunks, |mut chunks| async move {
            let chunk = chunks.recv().await?;
            let event = AudioEvent::builder().audio_chunk(Blob::new(chunk)).build();
            Some((Ok(AudioStream::AudioEvent(event)), chunks))
        })
        // The SDK polls the audio again after it ended.
        .fuse();
        let mut request = self
            .client
            .start_stream_transcription()
            .language_code(LanguageCode::from(self.config.language_code.as_str()))
            .media_sample_rate_hertz(sample_rate as i32)
            .media_encoding(MediaEncoding::Pcm)
            .enable_channel_identification(true)
            .number_of_channels(2)
            .set_vocabulary_name(self.config.vocabulary_name.clone())
            .audio_stream(events.into());
        if let Some(stability) = &self.config.partial_stability {
            request = request
                .enable_partial_results_stabilization(true)
                .partial_results_stability(PartialResultsStability::from(stability.as_str()));
        }
        let mut output = request.send().await.map_err(refusal)?;
        let (tx, heard) = mpsc::channel(QUEUED_CHUNKS);
        tokio::spawn(async move {
            loop {
                let next = match output.transcript_result_stream.recv().await {
                    Ok(Some(TranscriptResultStream::TranscriptEvent(event))) => event,
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(error) => {
                        let _ = tx.send(Err(refusal(error))).await;
                        return;
                    }
                };
                let results = next.transcript.and_then(|t| t.results).unwrap_or_default();
                for result in results {
                    if let Some(heard) = heard_of(&result)
                        && tx.send(Ok(heard)).await.is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Session { audio, heard })
    }
}

/// One Transcribe result as a [`Heard`]; none without a transcript.
fn heard_of(result: &aws_sdk_transcribestreaming::types::Result) -> Option<Heard> {
    let best = result.alternatives().first()?;
    let text = best.transcript()?.trim().to_string();
    let partial = result.is_partial();
    let words = best
        .items()
        .iter()
        .filter_map(|item| {
            Some(Word {
                text: item.content()?.to_string(),
                start_secs: item.start_time(),
                end_secs: item.end_time(),
                punctuation: item.r#type() == Some(&ItemType::Punctuation),
                // A final result's words are all settled.
                stable: !partial || item.stable() == Some(true),
            })
        })
        .collect();
    Some(Heard {
        channel: match result.channel_id() {
            Some("ch_1") => 1,
            _ => 0,
        },
        result_id: result.result_id().unwrap_or_default().to_string(),
        start_secs: result.start_time(),
        end_secs: result.end_time(),
        partial,
        text,
        words,
    })
}

/// What a failed call or stream means: throttling and server faults can be retried, other
/// refusals cannot.
fn refusal<E, R>(error: SdkError<E, R>) -> AudioError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let code = error.code().unwrap_or_default().to_string();
    let message = format!("Transcribe: {}", sdk_error(&error));
    match code.as_str() {
        "LimitExceededException" | "ThrottlingException" => AudioError::Throttled(message),
        "InternalFailureException" | "ServiceUnavailableException" => {
            AudioError::Unavailable(message)
        }
        "" if !matches!(error, SdkError::ServiceError(_)) => AudioError::Unavailable(message),
        _ => AudioError::Refused(message),
    }
}
