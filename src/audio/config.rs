//! The `[audio]` config table: where call audio comes from, how it is transcribed, and the
//! reader's limits.

use serde::{Deserialize, Serialize};

use crate::aws::AwsEndpoint;

/// Where call audio comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioSource {
    /// No audio: calls arrive as transcripts.
    #[default]
    None,
    /// Kinesis Video Streams: a STARTED record's `mediaStreamArn` is read with GetMedia.
    Kvs,
}

/// `[audio.transcribe]`: Amazon Transcribe streaming's options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TranscribeConfig {
    /// Language of the calls, e.g. `en-US`.
    pub language_code: String,
    /// A custom vocabulary, by name.
    pub vocabulary_name: Option<String>,
    /// Partial-results stabilization: `high`, `medium` or `low` (unset = off).
    pub partial_stability: Option<String>,
    /// Region and endpoint.
    pub endpoint: AwsEndpoint,
}

impl Default for TranscribeConfig {
    fn default() -> Self {
        Self {
            language_code: "en-US".into(),
            vocabulary_name: None,
            partial_stability: Some("high".into()),
            endpoint: AwsEndpoint::default(),
        }
    }
}

/// The `[audio]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AudioConfig {
    /// `none` or `kvs`.
    pub source: AudioSource,
    /// Recognition sessions (Transcribe streams) open at once, at most; a call waiting for
    /// one is counted and recorded, never dropped. Transcribe's default quota is 25.
    pub max_streams: usize,
    /// Audio sent per AudioEvent, ms (Transcribe: at most 1,000, 50–200 recommended).
    pub chunk_millis: u32,
    /// With no audio for this long (a held call, a GetMedia reconnect), silence is sent to
    /// keep the session alive (Transcribe ends one after 15 s without audio), s.
    pub keepalive_secs: u64,
    /// A session is renewed at the first quiet moment after this long (Transcribe's limit
    /// is 4 hours), minutes.
    pub max_session_minutes: u64,
    /// How often the reader records how far the audio is fully heard, s.
    pub checkpoint_secs: u64,
    /// Once the call has ended, the audio ends when no fragment has come for this long, s.
    pub drain_secs: u64,
    /// A customer speaking this long without a pause is recorded (and judged) in pieces of
    /// at least this many seconds of stable words before they stop, from partial results;
    /// 0 = off: only final results become utterances, s.
    pub early_sentiment_secs: u64,
    /// Region and endpoint of Kinesis Video Streams.
    pub kvs: AwsEndpoint,
    /// `[audio.transcribe]`.
    pub transcribe: TranscribeConfig,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            source: AudioSource::None,
            max_streams: 25,
            chunk_millis: 100,
            keepalive_secs: 5,
            max_session_minutes: 230,
            checkpoint_secs: 30,
            drain_secs: 5,
            early_sentiment_secs: 0,
            kvs: AwsEndpoint::default(),
            transcribe: TranscribeConfig::default(),
        }
    }
}
