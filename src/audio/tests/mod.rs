//! The audio path: the demuxer on Connect-layout MKV, the reader with in-process fakes under
//! tokio's paused clock (holds, 4-hour calls), and the real SDK clients against the Kinesis
//! Video and Transcribe stubs with espeak-ng speech (whole calls, restarts, KVS session
//! ends, failures, a reused stream), through the whole pipeline and at the reader.

mod bench;
mod calls;
mod demux;
mod fakes;
mod pipeline;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::bytes::Bytes;

use super::mkv::{Fragment, spawn_demux};
use super::reader::{AudioReader, AudioReport, AudioSink};
use super::stubs::{
    Answer, CallAudio, KvsScript, KvsStub, RATE, StubFragment, TranscribeStub, connect_fragment,
    fragment_number, tags_only,
};
use super::{
    AudioConfig, AudioError, AudioServices, AudioSource, Heard, MediaSource, Recogniser, Session,
    StartAt,
};
use crate::aws::AwsEndpoint;
use crate::events::contact::AudioProgress;
use crate::events::{AudioCheckpoint, AudioEndReason, AudioStarted, Participant};
use crate::redaction::Redactor;

const ORIGIN_MILLIS: u64 = 1_764_000_000_000;

/// A tone: `samples` of a square wave at `level`.
fn tone(samples: usize, level: i16) -> Vec<i16> {
    (0..samples)
        .map(|i| if (i / 20) % 2 == 0 { level } else { -level })
        .collect()
}

/// Records reports; a sink that is always durable.
#[derive(Default)]
struct Reports {
    all: Mutex<Vec<AudioReport>>,
    arrived: Notify,
}

#[async_trait]
impl AudioSink for Reports {
    async fn report(&self, report: AudioReport) -> Result<(), String> {
        self.all.lock().unwrap().push(report);
        self.arrived.notify_waiters();
        Ok(())
    }
}

impl Reports {
    fn all(&self) -> Vec<AudioReport> {
        self.all.lock().unwrap().clone()
    }

    /// The utterances heard: (participant, text, begin ms).
    fn said(&self) -> Vec<(Participant, String, u64)> {
        self.all()
            .into_iter()
            .filter_map(|r| match r {
                AudioReport::Heard { utterance, .. } => Some((
                    utterance.participant,
                    utterance.text,
                    utterance.begin_offset_millis.unwrap(),
                )),
                _ => None,
            })
            .collect()
    }

    fn ended(&self) -> Option<AudioEndReason> {
        self.all().into_iter().find_map(|r| match r {
            AudioReport::Ended(e) => Some(e.reason),
            _ => None,
        })
    }

    /// What a contact's log folds these reports into (so far).
    fn progress(&self, stream_arn: &str, first: Option<String>) -> AudioProgress {
        let mut progress = AudioProgress {
            started: AudioStarted {
                stream_arn: stream_arn.into(),
                start_fragment_number: first,
            },
            checkpoint: None,
            ended: None,
            heard_until: [0; 2],
        };
        for report in self.all() {
            match report {
                AudioReport::Heard { utterance, .. } => {
                    let side = usize::from(utterance.participant == Participant::Agent);
                    let end = utterance.end_offset_millis.unwrap();
                    progress.heard_until[side] = progress.heard_until[side].max(end);
                }
                AudioReport::Checkpoint(c) => progress.checkpoint = Some(c),
                AudioReport::Ended(e) => progress.ended = Some(e),
                AudioReport::Failed(_) => {}
            }
        }
        progress
    }
}

fn services(
    media: Arc<dyn MediaSource>,
    recogniser: Arc<dyn Recogniser>,
    config: AudioConfig,
) -> Arc<AudioServices> {
    Arc::new(AudioServices {
        media,
        recogniser,
        streams: Arc::new(Semaphore::new(config.max_streams)),
        redactor: Redactor::default(),
        config,
    })
}

fn endpoint(url: &str) -> AwsEndpoint {
    AwsEndpoint {
        region: Some("us-east-1".into()),
        endpoint_url: Some(url.into()),
    }
}

/// `[audio]` for the stubs: KVS and Transcribe at their addresses.
fn stub_config(kvs: &KvsStub, transcribe: &TranscribeStub) -> AudioConfig {
    crate::aws::moto::use_test_credentials();
    let mut config = AudioConfig {
        source: AudioSource::Kvs,
        checkpoint_secs: 1,
        drain_secs: 2,
        kvs: endpoint(&kvs.control.endpoint),
        ..AudioConfig::default()
    };
    config.transcribe.endpoint = endpoint(&transcribe.endpoint);
    config
}

/// A short call: two lines each side.
fn call() -> CallAudio {
    CallAudio::speak(
        &[
            (1, "Thank you for calling, how can I help?"),
            (0, "My parcel never arrived and I want a refund."),
            (1, "I am sorry, I have refunded it now."),
            (0, "Thanks, that is all."),
        ],
        900,
    )
}

fn lines_of(call: &CallAudio) -> Vec<(Participant, String)> {
    call.lines
        .iter()
        .map(|l| {
            let who = if l.channel == 0 {
                Participant::Customer
            } else {
                Participant::Agent
            };
            (who, l.text.clone())
        })
        .collect()
}

fn texts(said: &[(Participant, String, u64)]) -> Vec<(Participant, String)> {
    let mut said = said.to_vec();
    said.sort_by_key(|(_, _, begin)| *begin);
    said.into_iter().map(|(who, text, _)| (who, text)).collect()
}

struct StubCall {
    kvs: KvsStub,
    transcribe: TranscribeStub,
    config: AudioConfig,
    call: CallAudio,
}

const ARN: &str = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/connect-contact-1/1";

fn stub_call(session_fragments: Option<usize>, answers: Vec<Answer>, pace_ms: u64) -> StubCall {
    stub_call_of(call(), session_fragments, answers, pace_ms)
}

/// [`stub_call`] for `call`.
fn stub_call_of(
    call: CallAudio,
    session_fragments: Option<usize>,
    answers: Vec<Answer>,
    pace_ms: u64,
) -> StubCall {
    let script = KvsScript {
        streams: HashMap::from([(
            ARN.to_string(),
            call.fragments("contact-1", 0, ORIGIN_MILLIS),
        )]),
        session_fragments,
        pace: Duration::from_millis(pace_ms),
        live: false,
    };
    let kvs = KvsStub::start(script);
    let transcribe = TranscribeStub::start(vec![call.clone()], answers);
    let config = stub_config(&kvs, &transcribe);
    StubCall {
        kvs,
        transcribe,
        config,
        call,
    }
}

impl StubCall {
    async fn services(&self) -> Arc<AudioServices> {
        let config = self.config.clone();
        let media = Arc::new(super::kvs::Kvs::new(&config.kvs).await);
        let recogniser =
            Arc::new(super::transcribe::Transcribe::new(config.transcribe.clone()).await);
        services(media, recogniser, config)
    }

    /// Reads contact `contact`'s audio from `progress` to its end (the call has ended).
    async fn read(&self, contact: &str, progress: &AudioProgress) -> Arc<Reports> {
        let reports = Arc::new(Reports::default());
        let (_ended, call_ended) = watch::channel(true);
        AudioReader::new(
            self.services().await,
            contact.into(),
            progress,
            call_ended,
            reports.clone(),
        )
        .run()
        .await;
        reports
    }

    /// Reads contact-1's audio, from its first fragment to its end.
    async fn read_call(&self) -> Arc<Reports> {
        self.read(
            "contact-1",
            &Reports::default().progress(ARN, first_fragment()),
        )
        .await
    }

    fn assert_sent_as_transcribe_expects(&self) {
        let heard = self.transcribe.heard.lock().unwrap();
        assert!(heard.violations.is_empty(), "{:?}", heard.violations);
        assert!(heard.chunks.iter().all(|c| *c <= RATE * 4 && c % 4 == 0));
        let at_100_ms = heard.chunks.iter().filter(|c| **c == 3_200).count();
        assert!(
            at_100_ms * 10 >= heard.chunks.len() * 9,
            "chunks of 100 ms: {:?}",
            heard.chunks
        );
    }
}

fn first_fragment() -> Option<String> {
    Some(fragment_number(0))
}
