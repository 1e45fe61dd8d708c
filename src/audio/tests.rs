//! The audio path: the demuxer on Connect-layout MKV, the reader with in-process fakes under
//! tokio's paused clock (holds, 4-hour calls), and the real SDK clients against the Kinesis
//! Video and Transcribe stubs with espeak-ng speech (whole calls, restarts, KVS session
//! ends, failures, a reused stream), through the whole pipeline and at the reader.

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
    Answer, CallAudio, KvsScript, KvsStub, RATE, TranscribeStub, connect_fragment, fragment_number,
    tags_only,
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

async fn demux_all(bytes: &[u8], piece: usize) -> Vec<Result<Fragment, AudioError>> {
    let (out, mut fragments) = mpsc::channel(4);
    let input = spawn_demux(out);
    let owned = bytes.to_vec();
    let feeding = tokio::spawn(async move {
        for chunk in owned.chunks(piece) {
            if input.send(Bytes::copy_from_slice(chunk)).await.is_err() {
                break;
            }
        }
    });
    let mut all = Vec::new();
    while let Some(next) = fragments.recv().await {
        all.push(next);
    }
    feeding.await.unwrap();
    all
}

#[tokio::test]
async fn connect_fragments_fed_a_few_bytes_at_a_time_come_out_whole() {
    let (customer, agent) = (tone(3 * RATE, 3000), tone(3 * RATE, -1500));
    let mut stream = Vec::new();
    for i in 0..3 {
        let at = ORIGIN_MILLIS + i as u64 * 1000;
        let range = i * RATE..(i + 1) * RATE;
        stream.extend(connect_fragment(
            &fragment_number(i),
            at,
            "contact-1",
            &customer[range.clone()],
            &agent[range],
        ));
    }
    stream.extend(tags_only(&[(
        "AWS_KINESISVIDEO_CONTINUATION_TOKEN",
        "ct-3",
    )]));
    let fragments: Vec<Fragment> = demux_all(&stream, 7)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(fragments.len(), 4, "{fragments:?}");
    for (i, fragment) in fragments[..3].iter().enumerate() {
        assert_eq!(
            fragment.number.as_deref(),
            Some(fragment_number(i).as_str())
        );
        assert_eq!(
            fragment.producer_millis,
            Some(ORIGIN_MILLIS + i as u64 * 1000)
        );
        assert_eq!(fragment.contact_id.as_deref(), Some("contact-1"));
        assert_eq!(fragment.sample_rate, Some(8000));
        assert_eq!(fragment.track_of(super::mkv::CUSTOMER_TRACK), 1);
        let heard: Vec<u8> = fragment
            .blocks
            .iter()
            .filter(|b| b.track == 1)
            .flat_map(|b| b.pcm.clone())
            .collect();
        let said: Vec<u8> = customer[i * RATE..(i + 1) * RATE]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        assert_eq!(heard, said, "fragment {i}'s customer audio");
        assert_eq!(
            fragment.blocks[0].at_millis,
            (ORIGIN_MILLIS + i as u64 * 1000) as i64
        );
    }
    assert_eq!(fragments[3].continuation_token.as_deref(), Some("ct-3"));
}

#[tokio::test]
async fn corrupt_media_is_a_clear_error_not_a_hang() {
    let mut stream = connect_fragment(
        &fragment_number(0),
        ORIGIN_MILLIS,
        "c",
        &tone(RATE, 9),
        &tone(RATE, 9),
    );
    let middle = stream.len() / 2;
    stream.splice(
        middle..middle,
        [0x1a, 0x45, 0xdf, 0xa3, 0x01, 0xff, 0xff].repeat(3),
    );
    stream.extend(std::iter::repeat_n(0xffu8, 64));
    let results = demux_all(&stream, 64).await;
    let last = results.last().expect("an answer");
    assert!(
        matches!(last, Err(AudioError::Malformed(_))),
        "{:?}",
        results
            .iter()
            .map(|r| r.as_ref().map(|f| f.number.clone()))
            .collect::<Vec<_>>()
    );
}

// ---- The reader with in-process fakes, on tokio's paused clock ----------------------

/// MKV documents, each with the time before it comes.
type Documents = Vec<(Duration, Vec<u8>)>;
/// One recognition session's audio: when each chunk came, and its length, ms.
type ChunkLog = Vec<(Instant, u64)>;

/// Media as scripted: the first GetMedia gives each document after its delay; the next one
/// finds the call over (so the call ends only once all the audio is demuxed, whatever the
/// paused clock does meanwhile).
struct FakeMedia {
    documents: Mutex<Option<Documents>>,
    ended: watch::Sender<bool>,
}

#[async_trait]
impl MediaSource for FakeMedia {
    async fn open(
        &self,
        _stream_arn: &str,
        _start: &StartAt,
    ) -> Result<BoxStream<'static, Result<Bytes, AudioError>>, AudioError> {
        let Some(documents) = self.documents.lock().unwrap().take() else {
            self.ended.send_replace(true);
            return Ok(futures_util::stream::empty().boxed());
        };
        Ok(futures_util::stream::iter(documents)
            .then(|(delay, bytes)| async move {
                tokio::time::sleep(delay).await;
                Ok(Bytes::from(bytes))
            })
            .boxed())
    }
}

/// A recogniser that hears a steady non-zero level on the customer's channel as the word
/// `w<level>`, and notes when each session's chunks came.
#[derive(Default)]
struct FakeRecogniser {
    /// Per session, its chunks.
    sessions: Arc<Mutex<Vec<ChunkLog>>>,
}

#[async_trait]
impl Recogniser for FakeRecogniser {
    async fn open(&self, sample_rate: u32) -> Result<Session, AudioError> {
        let (audio, mut chunks) = mpsc::channel::<Bytes>(32);
        let (tx, heard) = mpsc::channel(32);
        let sessions = self.sessions.clone();
        let index = {
            let mut all = sessions.lock().unwrap();
            all.push(Vec::new());
            all.len() - 1
        };
        tokio::spawn(async move {
            let mut frames = 0u64;
            let mut run: Option<(i16, u64)> = None;
            let mut results = 0;
            let say = |level: i16, start: u64, end: u64, results: &mut usize| {
                *results += 1;
                Heard {
                    channel: 0,
                    result_id: format!("r{results}"),
                    start_secs: start as f64 / f64::from(sample_rate),
                    end_secs: end as f64 / f64::from(sample_rate),
                    partial: false,
                    words: Vec::new(),
                    text: format!("w{level}"),
                }
            };
            while let Some(chunk) = chunks.recv().await {
                let millis = chunk.len() as u64 / 4 * 1000 / u64::from(sample_rate);
                sessions.lock().unwrap()[index].push((Instant::now(), millis));
                for frame in chunk.chunks_exact(4) {
                    let level = i16::from_le_bytes([frame[0], frame[1]]);
                    match run {
                        Some((l, _)) if l == level => {}
                        Some((l, start)) => {
                            let _ = tx.send(Ok(say(l, start, frames, &mut results))).await;
                            run = (level != 0).then_some((level, frames));
                        }
                        None if level != 0 => run = Some((level, frames)),
                        None => {}
                    }
                    frames += 1;
                }
            }
            if let Some((l, start)) = run {
                let _ = tx.send(Ok(say(l, start, frames, &mut results))).await;
            }
        });
        Ok(Session { audio, heard })
    }
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

/// A second of audio in fragment `index`: the customer at `level` (0: silence).
fn fake_fragment(index: usize, level: i16) -> Vec<u8> {
    connect_fragment(
        &fragment_number(index),
        ORIGIN_MILLIS + index as u64 * 1000,
        "held",
        &vec![level; RATE],
        &vec![0; RATE],
    )
}

fn progress_from_start(first: usize) -> AudioProgress {
    Reports::default().progress("arn:fake", Some(fragment_number(first)))
}

/// Runs a reader over `documents` with the fakes; answers the reports and the sessions.
async fn read_fake(documents: Documents, config: AudioConfig) -> (Arc<Reports>, Vec<ChunkLog>) {
    let (ended, call_ended) = watch::channel(false);
    let media = Arc::new(FakeMedia {
        documents: Mutex::new(Some(documents)),
        ended,
    });
    let recogniser = Arc::new(FakeRecogniser::default());
    let sessions = recogniser.sessions.clone();
    let reports = Arc::new(Reports::default());
    AudioReader::new(
        services(media, recogniser, config),
        "held".into(),
        &progress_from_start(0),
        call_ended,
        reports.clone(),
    )
    .run()
    .await;
    let sessions = sessions.lock().unwrap().clone();
    (reports, sessions)
}

/// The longest time a session went without audio.
fn longest_quiet(session: &ChunkLog) -> Duration {
    session
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_twenty_minute_hold_keeps_the_recognition_session_fed() {
    // Speech, then the stream stalls for 20 minutes (a hold), then speech again.
    let mut documents = vec![(Duration::from_secs(1), fake_fragment(0, 1000))];
    documents.push((Duration::from_secs(1), fake_fragment(1, 0)));
    documents.push((Duration::from_secs(20 * 60), fake_fragment(1201, 2000)));
    documents.push((Duration::from_secs(1), fake_fragment(1202, 0)));
    let (reports, sessions) = read_fake(documents, AudioConfig::default()).await;

    assert_eq!(sessions.len(), 1, "one session through the hold");
    let quiet = longest_quiet(&sessions[0]);
    assert!(
        quiet < Duration::from_secs(15),
        "the session went {quiet:?} without audio"
    );
    assert_eq!(
        reports.said(),
        vec![
            (Participant::Customer, "w1000".into(), 0),
            (Participant::Customer, "w2000".into(), 1_201_000),
        ],
        "both utterances, on the call's own timeline"
    );
    assert_eq!(reports.ended(), Some(AudioEndReason::CallEnded));
}

#[tokio::test(start_paused = true)]
async fn a_four_hour_call_rolls_over_to_a_new_session_losing_and_doubling_nothing() {
    // 4 h 10 min: a second of speech each minute, the stream quiet between.
    let minutes = 250;
    let documents: Documents = (0..minutes)
        .map(|m| {
            (
                Duration::from_secs(60),
                fake_fragment(m * 60, 100 + m as i16),
            )
        })
        .collect();
    let (reports, sessions) = read_fake(documents, AudioConfig::default()).await;

    assert!(sessions.len() >= 2, "{} sessions", sessions.len());
    for session in &sessions {
        let lasted = session.last().unwrap().0 - session[0].0;
        assert!(
            lasted < Duration::from_secs(4 * 3600),
            "a session lasted {lasted:?}"
        );
        assert!(longest_quiet(session) < Duration::from_secs(15));
    }
    let said = reports.said();
    let expected: Vec<(Participant, String, u64)> = (0..minutes)
        .map(|m| {
            (
                Participant::Customer,
                format!("w{}", 100 + m),
                m as u64 * 60_000,
            )
        })
        .collect();
    assert_eq!(said, expected);
    assert_eq!(reports.ended(), Some(AudioEndReason::CallEnded));
}

// ---- The real SDK clients against the stubs, with espeak-ng speech --------------------

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

#[actix_rt::test]
async fn a_whole_call_becomes_each_sides_utterances_on_the_calls_timeline() {
    let stubs = stub_call(None, vec![], 30);
    let reports = stubs.read_call().await;

    assert_eq!(texts(&reports.said()), lines_of(&stubs.call));
    for ((_, _, begin), line) in reports.said().iter().zip(&stubs.call.lines) {
        let spoken = (line.start * 1000 / RATE) as u64;
        assert!(
            begin.abs_diff(spoken) < 300,
            "said at {begin} ms, spoken at {spoken} ms"
        );
    }
    assert_eq!(reports.ended(), Some(AudioEndReason::CallEnded));
    let checkpoints: Vec<AudioCheckpoint> = reports
        .all()
        .into_iter()
        .filter_map(|r| match r {
            AudioReport::Checkpoint(c) => Some(c),
            _ => None,
        })
        .collect();
    let last = checkpoints.last().expect("a checkpoint");
    assert_eq!(
        last.fragment_number,
        stubs
            .call
            .fragments("contact-1", 0, 0)
            .last()
            .unwrap()
            .number
    );
    assert_eq!(last.origin_millis, Some(ORIGIN_MILLIS as i64));
    stubs.assert_sent_as_transcribe_expects();
    assert_eq!(stubs.transcribe.heard.lock().unwrap().sessions, 1);
    let selectors = stubs.kvs.selectors();
    assert_eq!(selectors[0]["StartSelectorType"], "FRAGMENT_NUMBER");
    assert_eq!(selectors[0]["AfterFragmentNumber"], fragment_number(0));
}

#[actix_rt::test]
async fn a_restart_mid_call_resumes_from_its_checkpoint_and_repeats_no_utterance() {
    // A fragment every 300 ms: the crash comes well before the call's end.
    let stubs = stub_call(None, vec![], 300);
    let first = Arc::new(Reports::default());
    let (_ended, call_ended) = watch::channel(true);
    let reader = AudioReader::new(
        stubs.services().await,
        "contact-1".into(),
        &first.progress(ARN, first_fragment()),
        call_ended,
        first.clone(),
    );
    let running = tokio::spawn(reader.run());
    // Crash once an utterance and a checkpoint after it are recorded.
    loop {
        let arrived = first.arrived.notified();
        let progress = first.progress(ARN, first_fragment());
        let checkpointed = progress
            .checkpoint
            .as_ref()
            .is_some_and(|c| c.covered_millis > 0);
        if !first.said().is_empty() && checkpointed {
            break;
        }
        let waited = tokio::time::timeout(Duration::from_secs(60), arrived).await;
        assert!(
            waited.is_ok(),
            "no checkpoint after an utterance: {:?}",
            first.all()
        );
    }
    running.abort();
    let _ = running.await;
    let before = first.said();
    let resumed_from = first.progress(ARN, first_fragment());
    assert!(
        before.len() < stubs.call.lines.len(),
        "the crash came after the call: {before:?}"
    );

    let opened_before = stubs.kvs.selectors().len();
    let second = stubs.read("contact-1", &resumed_from).await;
    let mut all = before.clone();
    all.extend(second.said());
    assert_eq!(
        texts(&all),
        lines_of(&stubs.call),
        "each line once: {all:?}"
    );
    let selectors = stubs.kvs.selectors();
    let resumed = &selectors[opened_before];
    assert_eq!(resumed["StartSelectorType"], "FRAGMENT_NUMBER");
    assert_eq!(
        resumed["AfterFragmentNumber"],
        resumed_from.checkpoint.unwrap().fragment_number.as_str()
    );
    stubs.assert_sent_as_transcribe_expects();
}

/// What the customer says on and on, and the call it is in.
fn long_complaint() -> (&'static str, CallAudio) {
    let complaint = "I have called four times about this broken boiler and every single time \
        you promise me an engineer and nobody ever comes so I want it fixed today";
    let call = CallAudio::speak(
        &[
            (1, "How can I help?"),
            (0, complaint),
            (1, "I am so sorry."),
        ],
        900,
    );
    (complaint, call)
}

#[actix_rt::test]
async fn a_customer_speaking_on_is_heard_in_stable_pieces_before_the_end_and_once_after_a_restart()
{
    let (complaint, call) = long_complaint();
    let mut stubs = stub_call_of(call, None, vec![], 30);
    stubs.config.early_sentiment_secs = 3;
    let reports = stubs.read_call().await;

    let customer: Vec<(String, u64)> = reports
        .said()
        .into_iter()
        .filter(|(who, ..)| *who == Participant::Customer)
        .map(|(_, text, begin)| (text, begin))
        .collect();
    assert!(customer.len() >= 2, "heard in pieces: {customer:?}");
    let words: Vec<&str> = customer.iter().map(|(text, _)| text.as_str()).collect();
    assert_eq!(words.join(" "), complaint, "every word once, in order");
    assert!(customer.windows(2).all(|w| w[0].1 < w[1].1));
    // The first piece ends seconds before the customer stops: it came from a partial.
    let line = &stubs.call.lines[1];
    let first_end = reports
        .all()
        .into_iter()
        .find_map(|r| match r {
            AudioReport::Heard { utterance, .. }
                if utterance.participant == Participant::Customer =>
            {
                utterance.end_offset_millis
            }
            _ => None,
        })
        .unwrap();
    let stops = (line.end * 1000 / RATE) as u64;
    assert!(
        first_end + 2_000 < stops,
        "first piece ends at {first_end} ms, speech at {stops}"
    );
    // The agent is heard as before.
    let agent: Vec<String> = reports
        .said()
        .into_iter()
        .filter(|(who, ..)| *who == Participant::Agent)
        .map(|(_, text, _)| text)
        .collect();
    assert_eq!(agent, ["How can I help?", "I am so sorry."]);

    // Restarted after its first piece, from a checkpoint before the complaint began: the
    // complaint is heard again, and only the words after that piece are added.
    let crashed = Reports::default();
    for report in reports.all() {
        let first_piece = matches!(&report, AudioReport::Heard { utterance, .. }
            if utterance.participant == Participant::Customer);
        crashed.report(report).await.unwrap();
        if first_piece {
            break;
        }
    }
    let mut resumed_from = crashed.progress(ARN, first_fragment());
    resumed_from.checkpoint = Some(AudioCheckpoint {
        fragment_number: fragment_number(1),
        origin_millis: Some(ORIGIN_MILLIS as i64),
        covered_millis: 2_000,
    });
    assert!(
        line.start * 1000 / RATE > 2_000,
        "the checkpoint is before the complaint"
    );
    let again = stubs.read("contact-1", &resumed_from).await;
    let mut all: Vec<String> = crashed
        .said()
        .into_iter()
        .chain(again.said())
        .filter(|(who, ..)| *who == Participant::Customer)
        .map(|(_, text, _)| text)
        .collect();
    assert!(all.len() >= 2, "{all:?}");
    assert_eq!(std::mem::take(&mut all).join(" "), complaint);
}

#[actix_rt::test]
async fn a_kvs_session_ending_mid_call_goes_on_from_its_continuation_token() {
    let stubs = stub_call(Some(4), vec![], 30);
    let reports = stubs.read_call().await;

    assert_eq!(texts(&reports.said()), lines_of(&stubs.call));
    let selectors = stubs.kvs.selectors();
    assert!(selectors.len() >= 3, "{selectors:?}");
    assert!(
        selectors[1..]
            .iter()
            .all(|s| s["StartSelectorType"] == "CONTINUATION_TOKEN")
    );
    assert_eq!(selectors[1]["ContinuationToken"], "ct-4");
    assert_eq!(
        stubs.transcribe.heard.lock().unwrap().sessions,
        1,
        "one recognition session throughout"
    );
    stubs.assert_sent_as_transcribe_expects();
}

/// The reasons of the failures reported, and whether each was to be retried.
fn failures(reports: &Reports) -> Vec<(String, bool)> {
    reports
        .all()
        .into_iter()
        .filter_map(|r| match r {
            AudioReport::Failed(f) => Some((f.reason, f.retrying)),
            _ => None,
        })
        .collect()
}

#[actix_rt::test]
async fn a_missing_stream_corrupt_media_a_kms_error_and_a_refusal_are_clear_events_and_stall_no_other_call()
 {
    let good = stub_call(None, vec![Answer::Refuse(400, "BadRequestException")], 30);
    // Transcribe refuses the first session: this call fails for good.
    let (from_start, nowhere) = (
        Reports::default().progress(ARN, first_fragment()),
        Reports::default().progress(
            "arn:aws:kinesisvideo:us-east-1:111122223333:stream/gone/1",
            None,
        ),
    );
    let refused = good.read("contact-1", &from_start);
    let missing = good.read("contact-2", &nowhere);
    let (refused, missing) = tokio::join!(refused, missing);
    let refusal = failures(&refused);
    assert_eq!(refusal.len(), 1, "{refusal:?}");
    assert!(
        refusal[0].0.contains("refused") && refusal[0].0.contains("BadRequestException"),
        "{refusal:?}"
    );
    assert!(!refusal[0].1);
    assert_eq!(refused.ended(), Some(AudioEndReason::Failed));
    let gone = failures(&missing);
    assert!(gone[0].0.contains("no such media stream"), "{gone:?}");
    assert_eq!(missing.ended(), Some(AudioEndReason::Failed));

    // Corrupt media for one call while another is read in full beside it.
    let mut fragments = good.call.fragments("contact-3", 0, ORIGIN_MILLIS);
    let bytes = &mut fragments[3].bytes;
    let at = bytes.len() / 2;
    bytes.splice(at..at, std::iter::repeat_n(0xffu8, 48));
    let corrupt_arn = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/corrupt/1";
    // And a stream KVS cannot decrypt after its second fragment.
    let mut undecryptable = good.call.fragments("contact-4", 0, ORIGIN_MILLIS);
    undecryptable.truncate(2);
    undecryptable.push(super::stubs::StubFragment {
        number: fragment_number(2),
        at_millis: ORIGIN_MILLIS + 2000,
        bytes: tags_only(&[
            ("AWS_KINESISVIDEO_ERROR_CODE", "KMS_KEY_ACCESS_DENIED"),
            ("AWS_KINESISVIDEO_ERROR_ID", "4500"),
        ]),
    });
    let kms_arn = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/kms/1";
    let kvs = KvsStub::start(KvsScript {
        streams: HashMap::from([
            (corrupt_arn.to_string(), fragments),
            (kms_arn.to_string(), undecryptable),
            (
                ARN.to_string(),
                good.call.fragments("contact-1", 0, ORIGIN_MILLIS),
            ),
        ]),
        session_fragments: None,
        pace: Duration::from_millis(30),
        live: false,
    });
    let transcribe = TranscribeStub::start(vec![good.call.clone()], vec![]);
    let both = StubCall {
        config: stub_config(&kvs, &transcribe),
        kvs,
        transcribe,
        call: good.call.clone(),
    };
    let (corrupt_start, kms_start) = (
        Reports::default().progress(corrupt_arn, first_fragment()),
        Reports::default().progress(kms_arn, first_fragment()),
    );
    let corrupt = both.read("contact-3", &corrupt_start);
    let denied = both.read("contact-4", &kms_start);
    let fine = both.read("contact-1", &from_start);
    let (corrupt, denied, fine) = tokio::join!(corrupt, denied, fine);
    let kms = failures(&denied);
    assert!(
        kms[0].0.contains("refused") && kms[0].0.contains("KMS_KEY_ACCESS_DENIED"),
        "{kms:?}"
    );
    assert_eq!(denied.ended(), Some(AudioEndReason::Failed));
    let broken = failures(&corrupt);
    assert!(broken[0].0.contains("malformed media"), "{broken:?}");
    assert!(!broken[0].1);
    assert_eq!(corrupt.ended(), Some(AudioEndReason::Failed));
    assert_eq!(texts(&fine.said()), lines_of(&both.call));
}

#[actix_rt::test]
async fn a_throttled_transcribe_is_retried_and_the_call_is_heard_in_full() {
    let stubs = stub_call(
        None,
        vec![Answer::Refuse(429, "LimitExceededException")],
        30,
    );
    let reports = stubs.read_call().await;
    let throttled = failures(&reports);
    assert_eq!(throttled.len(), 1, "{throttled:?}");
    assert!(
        throttled[0].0.contains("throttled") && throttled[0].1,
        "{throttled:?}"
    );
    assert_eq!(texts(&reports.said()), lines_of(&stubs.call));
    assert_eq!(reports.ended(), Some(AudioEndReason::CallEnded));
}

#[actix_rt::test]
async fn a_stream_reused_by_the_next_contact_stops_at_the_contact_id_change() {
    let first = call();
    let next = CallAudio::speak(&[(0, "This is somebody else entirely.")], 600);
    let mut fragments = first.fragments("contact-1", 0, ORIGIN_MILLIS);
    let after = fragments.len();
    let next_origin = ORIGIN_MILLIS + after as u64 * 1000;
    fragments.extend(next.fragments("contact-9", after, next_origin));
    let kvs = KvsStub::start(KvsScript {
        streams: HashMap::from([(ARN.to_string(), fragments)]),
        session_fragments: None,
        pace: Duration::from_millis(30),
        live: false,
    });
    let transcribe = TranscribeStub::start(vec![first.clone(), next], vec![]);
    let stubs = StubCall {
        config: stub_config(&kvs, &transcribe),
        kvs,
        transcribe,
        call: first,
    };
    // The call has not ended: the change of contact alone ends its audio.
    let reports = Arc::new(Reports::default());
    let (_ended, call_ended) = watch::channel(false);
    AudioReader::new(
        stubs.services().await,
        "contact-1".into(),
        &reports.progress(ARN, first_fragment()),
        call_ended,
        reports.clone(),
    )
    .run()
    .await;
    assert_eq!(reports.ended(), Some(AudioEndReason::ContactChanged));
    assert_eq!(texts(&reports.said()), lines_of(&stubs.call));
}

// ---- Through the whole pipeline ------------------------------------------------------

#[actix_rt::test]
async fn a_started_record_with_a_media_stream_is_heard_judged_and_summarised() {
    use crate::app::run::{Inputs, run};
    use crate::app::{DataDir, backends, stores};
    use crate::events::Event;
    use crate::store::SeqRange;

    let stubs = stub_call(None, vec![], 30);
    let mut config = crate::config::Config::load(None).unwrap();
    config.models.backend = crate::config::Backend::StandIn;
    config.audio = stubs.config.clone();
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(dir.path()).unwrap();
    let input = dir.path().join("calls.jsonl");
    let gone = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/gone/1";
    let records = [
        serde_json::json!({"type": "STARTED", "contactId": "contact-1", "timestamp": "2026-12-04T10:00:00Z",
            "mediaStreamArn": ARN, "startFragmentNumber": fragment_number(0)}),
        serde_json::json!({"type": "STARTED", "contactId": "contact-2", "timestamp": "2026-12-04T10:00:00Z",
            "mediaStreamArn": gone}),
        serde_json::json!({"type": "ENDED", "contactId": "contact-1", "timestamp": "2026-12-04T10:01:00Z"}),
    ];
    let lines: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let inputs = Inputs {
        files: vec![input],
        settle_timeout: Duration::from_secs(120),
        ..Inputs::default()
    };
    for _ in 0..2 {
        // The second run changes nothing: the audio is over and heard.
        run(
            &config,
            &data,
            backends(&config).await.unwrap(),
            inputs.clone(),
        )
        .await
        .unwrap();
    }

    let (store, _) = stores(&config, &data).await.unwrap();
    let log_of = async |contact: &str| -> Vec<Event> {
        let log = store.read(contact, SeqRange::all()).await.unwrap();
        log.iter().map(|e| e.decode().unwrap()).collect()
    };
    let heard = log_of("contact-1").await;
    let said: Vec<(Participant, String)> = heard
        .iter()
        .filter_map(|e| match e {
            Event::UtteranceReceived(u) => Some((u.participant, u.text.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(said, lines_of(&stubs.call));
    let kinds: Vec<&str> = heard.iter().map(Event::kind).collect();
    for kind in [
        "AudioStarted",
        "AudioCheckpoint",
        "SentimentAssessed",
        "AudioEnded",
        "SummaryGenerated",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let ended = kinds.iter().position(|k| *k == "AudioEnded").unwrap();
    let summarised = kinds.iter().position(|k| *k == "SummaryGenerated").unwrap();
    assert!(
        ended < summarised,
        "the summary waits for the audio: {kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "SummaryGenerated").count(),
        1
    );

    let failed = log_of("contact-2").await;
    assert!(
        failed.iter().any(|e| matches!(e, Event::AudioStreamFailed(f) if f.reason.contains("no such media stream"))),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|e| matches!(e, Event::AudioEnded(a) if a.reason == AudioEndReason::Failed))
    );
}

// ---- Benchmark -----------------------------------------------------------------------

/// This process's CPU time (user and system, all threads), from /proc.
fn cpu_time() -> Duration {
    cpu_of(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// The user and system time of a `/proc/.../stat` line.
fn cpu_of(stat: &str) -> Duration {
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Audio seconds demuxed and mixed per CPU second: an hour of two-track Connect media fed
/// in 16 KiB pieces. `cargo test --lib audio::tests::demux_throughput -- --ignored --nocapture`
#[tokio::test]
#[ignore = "a benchmark: run by hand, figures in docs/BENCHMARKS.md"]
async fn demux_throughput() {
    let seconds = 3600;
    let (customer, agent) = (tone(RATE, 3000), tone(RATE, -1500));
    let mut media = Vec::new();
    for i in 0..seconds {
        let at = ORIGIN_MILLIS + i as u64 * 1000;
        media.extend(connect_fragment(
            &fragment_number(i),
            at,
            "bench",
            &customer,
            &agent,
        ));
    }
    let started = (Instant::now(), cpu_time());
    let (out, mut fragments) = mpsc::channel(8);
    let input = spawn_demux(out);
    let feeding = tokio::spawn(async move {
        for piece in media.chunks(16 * 1024) {
            input.send(Bytes::copy_from_slice(piece)).await.unwrap();
        }
    });
    let mut mixer = super::mix::Mixer::new(8_000, 100, None);
    let mut chunks = 0;
    while let Some(fragment) = fragments.recv().await {
        chunks += mixer.push(&fragment.unwrap()).len();
    }
    feeding.await.unwrap();
    let (wall, cpu) = (started.0.elapsed(), cpu_time() - started.1);
    assert_eq!(chunks, seconds * 10);
    println!(
        "{seconds} s of audio demuxed and mixed in {wall:?} wall, {cpu:?} CPU: {:.0} audio s per CPU s ({} build)",
        seconds as f64 / cpu.as_secs_f64().max(0.01),
        crate::app::bench::build_kind()
    );
}

/// Live calls one worker carries: `CALLS` calls at once (20 unless set), their starts spread
/// over a second, their media served live (a fragment once its second is over), Transcribe's
/// stub answering a final once it has heard 0.7 s of silence after the speech. Reports the lag
/// from the end of each spoken line to its utterance, the CPU the readers used apart from the
/// stubs' (which run in this process too), and peak memory.
/// `CALLS=1000 cargo test --lib audio::tests::live_calls -- --ignored --nocapture`
#[actix_rt::test]
#[ignore = "a benchmark: run by hand, figures in docs/BENCHMARKS.md"]
async fn live_calls() {
    let calls: usize = std::env::var("CALLS").map_or(20, |n| n.parse().expect("CALLS: a number"));
    let call = call();
    let seconds = call.fragments("", 0, 0).len() as u64;
    // The calls begin as the benchmark does: call i a little after call i - 1.
    let begins = chrono::Utc::now().timestamp_millis() as u64 + 1000;
    let origin = move |i: usize| begins + (i * 1000 / calls) as u64;
    let streams: HashMap<String, _> = (0..calls)
        .map(|i| {
            let fragments = call.fragments(&format!("contact-{i}"), 0, origin(i));
            (format!("{ARN}-{i}"), fragments)
        })
        .collect();
    let media_bytes: usize = streams.values().flatten().map(|f| f.bytes.len()).sum();
    let kvs = KvsStub::start(KvsScript {
        streams,
        session_fragments: None,
        pace: Duration::ZERO,
        live: true,
    });
    let transcribe = TranscribeStub::start(vec![call.clone()], vec![]);
    let mut config = stub_config(&kvs, &transcribe);
    config.max_streams = calls;
    let stubs = StubCall {
        config,
        kvs,
        transcribe,
        call,
    };
    let services = stubs.services().await;
    // The readers run on arbiters, one per core, as contact actors do.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let arbiters: Vec<actix::Arbiter> = (0..cores).map(|_| actix::Arbiter::new()).collect();
    let reader_threads = futures_util::future::join_all(arbiters.iter().map(|arbiter| {
        let (tx, id) = tokio::sync::oneshot::channel();
        arbiter.spawn_fn(move || drop(tx.send(thread_id())));
        id
    }))
    .await
    .into_iter()
    .map(|id| id.expect("an arbiter's thread id"))
    .collect::<Vec<_>>();
    let started = cpu_time();
    let readers = (0..calls).map(|i| {
        let services = services.clone();
        let (done, result) = tokio::sync::oneshot::channel();
        arbiters[i % cores].spawn_fn(move || {
            actix::spawn(async move {
                let reports = Arc::new(Reports::default());
                // ENDED comes a second after the call's last audio.
                let (ended, call_ended) = watch::channel(false);
                let end_at = origin(i) + (seconds + 1) * 1000;
                tokio::spawn(async move {
                    let now = chrono::Utc::now().timestamp_millis() as u64;
                    tokio::time::sleep(Duration::from_millis(end_at.saturating_sub(now))).await;
                    ended.send_replace(true);
                });
                let progress = reports.progress(&format!("{ARN}-{i}"), first_fragment());
                let sink = Arc::new(Timed(reports.clone(), Mutex::new(Vec::new())));
                AudioReader::new(
                    services,
                    format!("contact-{i}"),
                    &progress,
                    call_ended,
                    sink.clone(),
                )
                .run()
                .await;
                let lags: Vec<i64> = sink
                    .lags()
                    .into_iter()
                    .map(|(at, end)| at - (origin(i) + end) as i64)
                    .collect();
                let _ = done.send((reports.said().len(), lags));
            });
        });
        result
    });
    let heard = futures_util::future::join_all(readers).await;
    // The stubs' servers run on actix threads of their own.
    let stub_threads: Vec<String> = threads()
        .into_iter()
        .filter(|(id, name)| name.starts_with("actix-") && !reader_threads.contains(id))
        .map(|(id, _)| id)
        .collect();
    let (cpu, stub_cpu) = (cpu_time() - started, threads_cpu_time(&stub_threads));
    let wall = Duration::from_millis(
        (chrono::Utc::now().timestamp_millis() as u64).saturating_sub(begins),
    );
    let whole = heard.iter().filter(|h| h.as_ref().unwrap().0 == 4).count();
    let mut lags: Vec<i64> = heard.into_iter().flat_map(|h| h.unwrap().1).collect();
    lags.sort_unstable();
    let at = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize];
    let core_share = |cpu: Duration| 100.0 * cpu.as_secs_f64() / wall.as_secs_f64();
    println!(
        "{calls} live calls of {seconds} s ({} build, {cores} cores): {whole} heard whole, {} utterances; \
         lag p50 {} ms, p99 {} ms, max {} ms; readers {:.0}% of a core ({:.2} ms CPU per call-second), \
         stubs {:.0}%; peak RSS {:.0} MiB (stub media held: {} MiB)",
        crate::app::bench::build_kind(),
        lags.len(),
        at(0.5),
        at(0.99),
        lags.last().unwrap(),
        core_share(cpu - stub_cpu),
        (cpu - stub_cpu).as_secs_f64() * 1000.0 / (calls as u64 * seconds) as f64,
        core_share(stub_cpu),
        crate::app::bench::peak_rss_mib(),
        media_bytes >> 20,
    );
    assert_eq!(whole, calls, "every call heard in full");
}

/// This process's threads now: (id, name).
fn threads() -> Vec<(String, String)> {
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    tasks
        .flatten()
        .map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let id = task.file_name().to_string_lossy().into_owned();
            (id, name.trim().to_string())
        })
        .collect()
}

/// The calling thread's id.
fn thread_id() -> String {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// The CPU time of those of `threads` still running, from /proc.
fn threads_cpu_time(threads: &[String]) -> Duration {
    threads
        .iter()
        .filter_map(|id| std::fs::read_to_string(format!("/proc/self/task/{id}/stat")).ok())
        .map(|stat| cpu_of(&stat))
        .sum()
}

/// Notes when each utterance is reported (epoch ms) and where it ends in the call.
struct Timed(Arc<Reports>, Mutex<Vec<(i64, u64)>>);

impl Timed {
    fn lags(&self) -> Vec<(i64, u64)> {
        self.1.lock().unwrap().clone()
    }
}

#[async_trait]
impl AudioSink for Timed {
    async fn report(&self, report: AudioReport) -> Result<(), String> {
        if let AudioReport::Heard { utterance, .. } = &report {
            let now = chrono::Utc::now().timestamp_millis();
            self.1
                .lock()
                .unwrap()
                .push((now, utterance.end_offset_millis.unwrap()));
        }
        self.0.report(report).await
    }
}
