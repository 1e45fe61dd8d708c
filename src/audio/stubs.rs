//! Stand-ins for the services behind the audio reader, for tests with the real SDK clients:
//! speech made by espeak-ng, MKV in Connect's layout, a Kinesis Video stub (GetDataEndpoint,
//! GetMedia) and an event-stream Transcribe stub that checks what it is sent as Transcribe
//! would and recognises the test's script in the audio it hears.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use aws_smithy_eventstream::frame::{
    DecodedFrame, MessageFrameDecoder, read_message_from, write_message_to,
};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use futures_util::StreamExt;
use tokio_util::bytes::{Bytes, BytesMut};
use webm_iterable::WebmWriter;
use webm_iterable::WriteOptions;
use webm_iterable::matroska_spec::{Master, MatroskaSpec, SimpleBlock};

use super::mkv::{AGENT_TRACK, CUSTOMER_TRACK};
use crate::aws::stub::{Received, Stub, serve};

/// Connect's sample rate.
pub const RATE: usize = 8_000;
/// Samples per fragment: Connect writes a fragment a second.
const FRAGMENT_SAMPLES: usize = RATE;
/// Samples per block within a fragment.
const BLOCK_SAMPLES: usize = RATE / 8;
/// Above this, a sample is speech (espeak-ng speaks far louder).
const VOICED: i16 = 400;
/// This much silence ends what the Transcribe stub hears as one utterance, samples.
const UTTERANCE_GAP: usize = RATE * 7 / 10;

/// A call's audio: one track per side, of the same length.
#[derive(Debug, Clone, Default)]
pub struct CallAudio {
    /// What the customer says (channel 0).
    pub customer: Vec<i16>,
    /// What the agent says (channel 1).
    pub agent: Vec<i16>,
    /// What is said where.
    pub lines: Vec<Line>,
}

/// One line of a call's script.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// 0 the customer, 1 the agent.
    pub channel: usize,
    /// Where the line's audio starts and ends, samples into the call.
    pub start: usize,
    /// (exclusive)
    pub end: usize,
    /// What is said.
    pub text: String,
}

impl CallAudio {
    /// A call of `lines` (side, text) spoken one after the other by espeak-ng (one voice per
    /// side), with `pause_ms` of silence before each.
    pub fn speak(lines: &[(usize, &str)], pause_ms: usize) -> Self {
        let mut call = Self::default();
        for (channel, text) in lines {
            call.silence(pause_ms * RATE / 1000);
            let speech = espeak(*channel, text);
            let start = call.customer.len();
            let end = start + speech.len();
            let (own, other) = if *channel == 0 {
                (&mut call.customer, &mut call.agent)
            } else {
                (&mut call.agent, &mut call.customer)
            };
            own.extend_from_slice(&speech);
            other.resize(end, 0);
            call.lines.push(Line {
                channel: *channel,
                start,
                end,
                text: text.to_string(),
            });
        }
        call.silence(pause_ms * RATE / 1000);
        call
    }

    /// Appends `samples` of silence on both sides (a hold, a pause).
    pub fn silence(&mut self, samples: usize) {
        let len = self.customer.len() + samples;
        self.customer.resize(len, 0);
        self.agent.resize(len, 0);
    }

    /// The call as Connect writes it to Kinesis Video: a fragment a second for contact
    /// `contact_id`, numbered from `first`, produced from `origin_millis` (epoch ms).
    pub fn fragments(
        &self,
        contact_id: &str,
        first: usize,
        origin_millis: u64,
    ) -> Vec<StubFragment> {
        self.customer
            .chunks(FRAGMENT_SAMPLES)
            .zip(self.agent.chunks(FRAGMENT_SAMPLES))
            .enumerate()
            .map(|(i, (customer, agent))| {
                let number = fragment_number(first + i);
                let at_millis = origin_millis + (i * 1000) as u64;
                let bytes = connect_fragment(&number, at_millis, contact_id, customer, agent);
                StubFragment {
                    number,
                    at_millis,
                    bytes,
                }
            })
            .collect()
    }
}

/// `text` spoken by espeak-ng (a male voice for the customer, a female one for the agent),
/// as 8 kHz s16 samples (resampled by sox), without the silence around it.
fn espeak(channel: usize, text: &str) -> Vec<i16> {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let wav = dir.path().join("line.wav");
    let voice = if channel == 0 { "en-us" } else { "en-us+f3" };
    let spoke = std::process::Command::new("espeak-ng")
        .args(["-v", voice, "-s", "165", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng (apt install espeak-ng)");
    assert!(spoke.success(), "espeak-ng failed");
    let raw = std::process::Command::new("sox")
        .arg(&wav)
        .args([
            "-t",
            "raw",
            "-r",
            "8000",
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed-integer",
            "-",
        ])
        .output()
        .expect("sox (apt install sox)");
    assert!(raw.status.success(), "sox failed");
    let samples: Vec<i16> = raw
        .stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    // The speech itself: a line's extent is where its words are.
    let voiced = |s: &i16| s.unsigned_abs() > VOICED as u16;
    let first = samples.iter().position(voiced).unwrap_or(0);
    let last = samples.iter().rposition(voiced).map_or(0, |i| i + 1);
    samples[first..last.max(first)].to_vec()
}

/// A fragment number in KVS's style (decimal, longer than a `u64`).
pub fn fragment_number(index: usize) -> String {
    format!("913438523331814323926820{index:08}")
}

/// One fragment of a stub stream.
#[derive(Debug, Clone)]
pub struct StubFragment {
    /// Its fragment number.
    pub number: String,
    /// When its second of audio begins, epoch ms (served live, it comes once that second
    /// is over).
    pub at_millis: u64,
    /// Its MKV document.
    pub bytes: Vec<u8>,
}

/// A `Tags` element of simple tags.
fn tags(pairs: &[(&str, &str)]) -> MatroskaSpec {
    let tag = pairs
        .iter()
        .map(|(name, value)| {
            MatroskaSpec::SimpleTag(Master::Full(vec![
                MatroskaSpec::TagName(name.to_string()),
                MatroskaSpec::TagString(value.to_string()),
            ]))
        })
        .collect();
    MatroskaSpec::Tags(Master::Full(vec![MatroskaSpec::Tag(Master::Full(tag))]))
}

fn ebml_header() -> MatroskaSpec {
    MatroskaSpec::Ebml(Master::Full(vec![
        MatroskaSpec::EbmlVersion(1),
        MatroskaSpec::EbmlReadVersion(1),
        MatroskaSpec::EbmlMaxIdLength(4),
        MatroskaSpec::EbmlMaxSizeLength(8),
        MatroskaSpec::DocType("matroska".into()),
        MatroskaSpec::DocTypeVersion(4),
        MatroskaSpec::DocTypeReadVersion(2),
    ]))
}

fn track(number: u64, name: &str) -> MatroskaSpec {
    MatroskaSpec::TrackEntry(Master::Full(vec![
        MatroskaSpec::TrackNumber(number),
        MatroskaSpec::TrackUID(number),
        MatroskaSpec::TrackType(2),
        MatroskaSpec::Name(name.into()),
        MatroskaSpec::CodecID("A_AAC".into()),
        MatroskaSpec::CodecPrivate(vec![0x15, 0x88]),
    ]))
}

fn kvs_time(millis: u64) -> String {
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

fn pcm(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// An MKV document being written: an EBML header and a Segment of unknown size.
struct Document(WebmWriter<Vec<u8>>);

impl Document {
    fn new() -> Self {
        let mut document = Self(WebmWriter::new(Vec::new()));
        document.put(&ebml_header());
        document.open(MatroskaSpec::Segment(Master::Start));
        document
    }

    fn put(&mut self, tag: &MatroskaSpec) {
        self.0.write(tag).expect("writing MKV");
    }

    /// Opens a master element of unknown size, as a live producer writes it.
    fn open(&mut self, tag: MatroskaSpec) {
        self.0
            .write_advanced(&tag, WriteOptions::is_unknown_sized_element())
            .expect("writing MKV");
    }

    fn finish(mut self) -> Vec<u8> {
        self.put(&MatroskaSpec::Segment(Master::End));
        self.0.flush().expect("writing MKV");
        self.0.into_inner().expect("writing MKV")
    }
}

/// One fragment as Connect writes it: its own EBML document, a Segment and a Cluster of
/// unknown size, the KVS tags before the cluster and Connect's after it.
pub fn connect_fragment(
    number: &str,
    at_millis: u64,
    contact_id: &str,
    customer: &[i16],
    agent: &[i16],
) -> Vec<u8> {
    let mut document = Document::new();
    let time = kvs_time(at_millis);
    document.put(&MatroskaSpec::Info(Master::Full(vec![
        MatroskaSpec::TimestampScale(1_000_000),
        MatroskaSpec::MuxingApp("callpulse-test".into()),
        MatroskaSpec::WritingApp("callpulse-test".into()),
    ])));
    document.put(&MatroskaSpec::Tracks(Master::Full(vec![
        track(1, CUSTOMER_TRACK),
        track(2, AGENT_TRACK),
    ])));
    document.put(&tags(&[
        ("AWS_KINESISVIDEO_FRAGMENT_NUMBER", number),
        ("AWS_KINESISVIDEO_SERVER_TIMESTAMP", &time),
        ("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP", &time),
    ]));
    document.open(MatroskaSpec::Cluster(Master::Start));
    document.put(&MatroskaSpec::Timestamp(at_millis));
    for (i, (c, a)) in customer
        .chunks(BLOCK_SAMPLES)
        .zip(agent.chunks(BLOCK_SAMPLES))
        .enumerate()
    {
        let offset = (i * BLOCK_SAMPLES * 1000 / RATE) as i16;
        for (track, samples) in [(1, c), (2, a)] {
            let data = pcm(samples);
            let block = SimpleBlock::new_uncheked(&data, track, offset, false, None, false, true);
            document.put(&block.into());
        }
    }
    document.put(&MatroskaSpec::Cluster(Master::End));
    document.put(&tags(&[
        ("ContactId", contact_id),
        ("InstanceId", "c0ffee00-0000-4000-8000-000000000001"),
        ("MimeType", "audio/L16;rate=8000;channels=1;"),
        (CUSTOMER_TRACK, "1"),
        (AGENT_TRACK, "2"),
    ]));
    document.finish()
}

/// A document of tags only, as KVS ends a GetMedia session (continuation token) or says
/// it cannot go on (error code).
pub fn tags_only(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut document = Document::new();
    document.put(&tags(pairs));
    document.finish()
}

/// Kinesis Video: a control stub answering GetDataEndpoint with the media stub's address,
/// and a media stub answering GetMedia with the stream's fragments, paced, in sessions of
/// `session_fragments`, each ended by a continuation token.
pub struct KvsStub {
    /// The control plane (`[audio.kvs] endpoint_url`).
    pub control: Stub,
    /// The data plane GetMedia goes to.
    pub media: Stub,
}

/// What the KVS stub serves.
#[derive(Debug, Clone, Default)]
pub struct KvsScript {
    /// Fragments by stream ARN.
    pub streams: HashMap<String, Vec<StubFragment>>,
    /// Fragments per GetMedia session, at most (KVS ends sessions after about 45 minutes).
    pub session_fragments: Option<usize>,
    /// Time between fragments.
    pub pace: Duration,
    /// Serve live instead: each fragment once its second of audio is over.
    pub live: bool,
}

impl KvsStub {
    /// Starts both stubs. Call from inside an actix runtime.
    pub fn start(script: KvsScript) -> Self {
        let script = Arc::new(script);
        let serving = script.clone();
        let media = Stub::start(move |request, _| get_media(&serving, request));
        let data_endpoint = media.endpoint.clone();
        let control = Stub::start(move |request, _| {
            let body = request.json();
            if !request.is_signed() || request.path != "/getDataEndpoint" {
                return aws_error(
                    400,
                    "InvalidArgumentException",
                    "expected a signed GetDataEndpoint",
                );
            }
            if body["APIName"] != "GET_MEDIA" {
                return aws_error(400, "InvalidArgumentException", "APIName must be GET_MEDIA");
            }
            let arn = body["StreamARN"].as_str().unwrap_or_default();
            if !script.streams.contains_key(arn) {
                return aws_error(
                    404,
                    "ResourceNotFoundException",
                    &format!("stream {arn} not found"),
                );
            }
            HttpResponse::Ok().json(serde_json::json!({"DataEndpoint": data_endpoint}))
        });
        Self { control, media }
    }

    /// The GetMedia requests' start selectors, in order.
    pub fn selectors(&self) -> Vec<serde_json::Value> {
        self.media
            .received()
            .iter()
            .map(|r| r.json()["StartSelector"].clone())
            .collect()
    }
}

/// An AWS JSON error answer.
fn aws_error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("a status"))
        .insert_header(("x-amzn-errortype", code))
        .insert_header(("x-amzn-requestid", "stub-request"))
        .json(serde_json::json!({"message": message}))
}

fn get_media(script: &KvsScript, request: &Received) -> HttpResponse {
    if !request.is_signed() || request.path != "/getMedia" {
        return aws_error(
            400,
            "InvalidArgumentException",
            "expected a signed GetMedia",
        );
    }
    let body = request.json();
    let arn = body["StreamARN"].as_str().unwrap_or_default();
    let Some(fragments) = script.streams.get(arn) else {
        return aws_error(
            404,
            "ResourceNotFoundException",
            &format!("stream {arn} not found"),
        );
    };
    let selector = &body["StartSelector"];
    let from = match selector["StartSelectorType"].as_str() {
        // Inclusive, as far as the documentation says: the reader drops what it has seen.
        Some("FRAGMENT_NUMBER") => {
            let number = selector["AfterFragmentNumber"].as_str().unwrap_or_default();
            match fragments.iter().position(|f| f.number == number) {
                Some(at) => at,
                None => return aws_error(400, "InvalidArgumentException", "no such fragment"),
            }
        }
        Some("CONTINUATION_TOKEN") => {
            let token = selector["ContinuationToken"].as_str().unwrap_or_default();
            match token.strip_prefix("ct-").and_then(|i| i.parse().ok()) {
                Some(at) => at,
                None => {
                    return aws_error(400, "InvalidArgumentException", "bad continuation token");
                }
            }
        }
        Some("NOW") => fragments.len(),
        other => {
            return aws_error(
                400,
                "InvalidArgumentException",
                &format!("start selector {other:?}"),
            );
        }
    };
    let to = fragments
        .len()
        .min(from.saturating_add(script.session_fragments.unwrap_or(usize::MAX)));
    // Each document with when it is due, epoch ms (none: after `pace`).
    let live = |f: &StubFragment| script.live.then_some(f.at_millis + 1000);
    let mut documents: Vec<(Option<u64>, Bytes)> = fragments[from.min(to)..to]
        .iter()
        .map(|f| (live(f), Bytes::from(f.bytes.clone())))
        .collect();
    let token = format!("ct-{to}");
    let due = documents.last().and_then(|(due, _)| *due);
    documents.push((
        due,
        Bytes::from(tags_only(&[(
            "AWS_KINESISVIDEO_CONTINUATION_TOKEN",
            &token,
        )])),
    ));
    let pace = script.pace;
    let paced = futures_util::stream::iter(documents).then(move |(due, document)| async move {
        let wait = match due {
            Some(due) => Duration::from_millis(
                (due as i64 - chrono::Utc::now().timestamp_millis()).max(0) as u64,
            ),
            None => pace,
        };
        tokio::time::sleep(wait).await;
        Ok::<_, actix_web::Error>(document)
    });
    HttpResponse::Ok()
        .content_type("video/webm")
        .streaming(paced)
}

/// What the Transcribe stub does with a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Recognise the audio.
    Transcribe,
    /// Refuse at the start with this HTTP status and error code.
    Refuse(u16, &'static str),
}

/// What the Transcribe stub saw.
#[derive(Debug, Default)]
pub struct Heard {
    /// Sessions opened (refused ones included).
    pub sessions: usize,
    /// Every audio chunk's size, bytes.
    pub chunks: Vec<usize>,
    /// Problems with requests, as AWS would refuse them.
    pub violations: Vec<String>,
}

/// Transcribe streaming over HTTP/1.1 event streams: checks each session's headers, its
/// signed frames and chunk sizes, and answers partial and final results for the lines of
/// `calls` it recognises in the audio (matched sample for sample).
pub struct TranscribeStub {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// What it saw.
    pub heard: Arc<Mutex<Heard>>,
    server: actix_web::dev::ServerHandle,
}

struct Shared {
    calls: Vec<CallAudio>,
    answers: Mutex<Vec<Answer>>,
    heard: Arc<Mutex<Heard>>,
}

impl Shared {
    fn violation(&self, problem: &str) {
        let mut heard = self.heard.lock().expect("heard");
        heard.violations.push(problem.to_string());
    }
}

impl TranscribeStub {
    /// Starts the stub: session `n` is answered `answers[n]` (then [`Answer::Transcribe`]).
    pub fn start(calls: Vec<CallAudio>, answers: Vec<Answer>) -> Self {
        let heard = Arc::new(Mutex::new(Heard::default()));
        let shared = Arc::new(Shared {
            calls,
            answers: Mutex::new(answers.into_iter().rev().collect()),
            heard: heard.clone(),
        });
        let (endpoint, server) =
            serve(move |req: HttpRequest, body: web::Payload| session(shared.clone(), req, body));
        Self {
            endpoint,
            heard,
            server,
        }
    }
}

impl Drop for TranscribeStub {
    fn drop(&mut self) {
        drop(self.server.stop(false));
    }
}

/// What is wrong with a StartStreamTranscription request's headers, if anything.
fn check_start(req: &HttpRequest) -> Option<String> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let signed = header("authorization").starts_with("AWS4-HMAC-SHA256 Credential=")
        && header("x-amz-date").len() == 16;
    let expected = [
        ("x-amzn-transcribe-sample-rate", "8000"),
        ("x-amzn-transcribe-media-encoding", "pcm"),
        ("x-amzn-transcribe-enable-channel-identification", "true"),
        ("x-amzn-transcribe-number-of-channels", "2"),
    ];
    if req.path() != "/stream-transcription" || req.method() != "POST" {
        return Some(format!(
            "{} {} is not StartStreamTranscription",
            req.method(),
            req.path()
        ));
    }
    if !signed {
        return Some("the request is not signed".into());
    }
    if header("x-amzn-transcribe-language-code").is_empty() {
        return Some("no language code".into());
    }
    expected
        .iter()
        .find(|(name, value)| header(name) != *value)
        .map(|(name, value)| format!("{name} is {:?}, expected {value}", header(name)))
}

async fn session(shared: Arc<Shared>, req: HttpRequest, mut body: web::Payload) -> HttpResponse {
    let answer = {
        let mut heard = shared.heard.lock().expect("heard");
        heard.sessions += 1;
        shared
            .answers
            .lock()
            .expect("answers")
            .pop()
            .unwrap_or(Answer::Transcribe)
    };
    if let Some(problem) = check_start(&req) {
        shared.violation(&problem);
        return aws_error(400, "BadRequestException", &problem);
    }
    if let Answer::Refuse(status, code) = answer {
        return aws_error(status, code, "refused by the stub");
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    actix_web::rt::spawn(async move {
        let mut recognition = Recognition::new(&shared.calls);
        let mut decoder = MessageFrameDecoder::new();
        let mut buffer = BytesMut::new();
        let send = |message: Message| {
            let mut out = Vec::new();
            write_message_to(&message, &mut out).expect("encoding an event");
            let _ = tx.send(Bytes::from(out));
        };
        'frames: while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            buffer.extend_from_slice(&chunk);
            loop {
                let frame = match decoder.decode_frame(&mut buffer) {
                    Ok(DecodedFrame::Complete(frame)) => frame,
                    Ok(DecodedFrame::Incomplete) => break,
                    Err(error) => {
                        send(exception(
                            "BadRequestException",
                            &format!("bad frame: {error}"),
                        ));
                        break 'frames;
                    }
                };
                match audio_of(&frame) {
                    Ok(None) => break 'frames,
                    Ok(Some(audio)) => {
                        shared.heard.lock().expect("heard").chunks.push(audio.len());
                        if audio.len() > RATE * 4 || audio.len() % 4 != 0 {
                            send(exception(
                                "BadRequestException",
                                "Your stream is too big or not whole stereo frames",
                            ));
                            break 'frames;
                        }
                        for event in recognition.hear(&audio) {
                            send(event);
                        }
                    }
                    Err(problem) => {
                        shared.violation(&problem);
                        send(exception("BadRequestException", &problem));
                        break 'frames;
                    }
                }
            }
        }
        for event in recognition.finish() {
            send(event);
        }
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let next = rx.recv().await?;
        Some((Ok::<_, actix_web::Error>(next), rx))
    })
    .fuse();
    HttpResponse::Ok()
        .content_type("application/vnd.amazon.eventstream")
        .insert_header(("x-amzn-request-id", "stub-request"))
        .insert_header(("x-amzn-transcribe-session-id", "stub-session"))
        .insert_header(("x-amzn-transcribe-sample-rate", "8000"))
        .insert_header(("x-amzn-transcribe-media-encoding", "pcm"))
        .insert_header(("x-amzn-transcribe-language-code", "en-US"))
        .streaming(events)
}

fn string_header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

/// The audio of one signed frame (none: the signed empty frame that ends the stream).
fn audio_of(frame: &Message) -> Result<Option<Bytes>, String> {
    let has = |name: &str| frame.headers().iter().any(|h| h.name().as_str() == name);
    if !has(":date") || !has(":chunk-signature") {
        return Err("an event-stream frame without :date and :chunk-signature".into());
    }
    if frame.payload().is_empty() {
        return Ok(None);
    }
    let inner =
        read_message_from(frame.payload().clone()).map_err(|e| format!("inner message: {e}"))?;
    if string_header(&inner, ":message-type") != Some("event")
        || string_header(&inner, ":event-type") != Some("AudioEvent")
    {
        return Err("an event that is not an AudioEvent".into());
    }
    Ok(Some(inner.payload().clone()))
}

fn exception(kind: &str, message: &str) -> Message {
    Message::new(Bytes::from(
        serde_json::json!({"Message": message}).to_string(),
    ))
    .add_header(Header::new(
        ":message-type",
        HeaderValue::String("exception".into()),
    ))
    .add_header(Header::new(
        ":exception-type",
        HeaderValue::String(kind.to_string().into()),
    ))
    .add_header(Header::new(
        ":content-type",
        HeaderValue::String("application/json".into()),
    ))
}

/// A result being heard on one channel.
struct Open {
    line: usize,
    /// Samples of the line said before this session heard it (a session started mid-line).
    skipped: usize,
    result_id: String,
    /// Session samples where it starts, and where its last voiced sample is.
    start: usize,
    last_voiced: usize,
    partials: usize,
    /// The line was already said in this session (a long pause within it): heard, not
    /// said again.
    muted: bool,
}

/// The stub's recogniser: splits each channel into utterances at long silences, finds each
/// in the calls' audio by its samples, and says the line it belongs to.
struct Recognition<'a> {
    calls: &'a [CallAudio],
    /// Session samples heard per channel.
    heard: usize,
    open: [Option<Open>; 2],
    /// The line last said per channel.
    said: [Option<usize>; 2],
    /// Voiced samples of a run not yet located, per channel: (session start, samples).
    pending: [Option<(usize, Vec<i16>)>; 2],
    results: usize,
}

/// Samples matched to locate audio in a call.
const FINGERPRINT: usize = 48;

impl<'a> Recognition<'a> {
    fn new(calls: &'a [CallAudio]) -> Self {
        Self {
            calls,
            heard: 0,
            open: [None, None],
            said: [None, None],
            pending: [None, None],
            results: 0,
        }
    }

    fn hear(&mut self, stereo: &[u8]) -> Vec<Message> {
        let mut events = Vec::new();
        for frame in stereo.chunks_exact(4) {
            for channel in 0..2 {
                let sample = i16::from_le_bytes([frame[channel * 2], frame[channel * 2 + 1]]);
                self.sample(channel, sample, &mut events);
            }
            self.heard += 1;
        }
        events
    }

    fn sample(&mut self, channel: usize, sample: i16, events: &mut Vec<Message>) {
        let at = self.heard;
        if let Some(open) = &self.open[channel]
            && at - open.last_voiced > UTTERANCE_GAP
        {
            events.extend(self.close(channel));
        }
        let voiced = sample.unsigned_abs() > VOICED as u16;
        if let Some(open) = self.open[channel].as_mut() {
            if voiced {
                open.last_voiced = at;
                if !open.muted && (at - open.start) / (RATE / 2) > open.partials {
                    open.partials += 1;
                    let open = self.open[channel].as_ref().expect("open");
                    events.push(self.result(channel, open, true));
                }
            }
            return;
        }
        if let Some((start, samples)) = self.pending[channel].as_mut() {
            samples.push(sample);
            if samples.len() >= FINGERPRINT {
                let (start, samples) = (*start, std::mem::take(samples));
                self.pending[channel] = None;
                if let Some((line, skipped)) = self.locate(channel, &samples) {
                    self.results += 1;
                    self.open[channel] = Some(Open {
                        line,
                        skipped,
                        result_id: format!("stub-{}", self.results),
                        start,
                        last_voiced: at,
                        partials: 0,
                        muted: self.said[channel] == Some(line),
                    });
                    self.said[channel] = Some(line);
                }
            }
        } else if voiced {
            self.pending[channel] = Some((at, vec![sample]));
        }
    }

    /// The line (index over all calls' lines) whose audio holds `samples` on `channel`, and
    /// how far into the line they are, samples.
    fn locate(&self, channel: usize, samples: &[i16]) -> Option<(usize, usize)> {
        let mut index = 0;
        for call in self.calls {
            let track = if channel == 0 {
                &call.customer
            } else {
                &call.agent
            };
            if let Some(at) = track.windows(samples.len()).position(|w| w == samples) {
                return call
                    .lines
                    .iter()
                    .position(|l| l.channel == channel && l.start <= at && at < l.end)
                    .map(|i| (index + i, at - call.lines[i].start));
            }
            index += call.lines.len();
        }
        None
    }

    fn line(&self, index: usize) -> &Line {
        self.calls
            .iter()
            .flat_map(|c| c.lines.iter())
            .nth(index)
            .expect("a line")
    }

    fn close(&mut self, channel: usize) -> Option<Message> {
        let open = self.open[channel].take()?;
        (!open.muted).then(|| self.result(channel, &open, false))
    }

    fn result(&self, channel: usize, open: &Open, partial: bool) -> Message {
        let line = self.line(open.line);
        let start = open.start as f64 / RATE as f64;
        let end = (open.last_voiced + 1) as f64 / RATE as f64;
        // Words evenly over the line's length; a session that began mid-line hears the
        // words from the one it began in. A partial's last word may still change.
        let words: Vec<&str> = line.text.split_whitespace().collect();
        let word_samples = (line.end - line.start) / words.len().max(1);
        let first = (open.skipped / word_samples.max(1)).min(words.len());
        let said = if partial {
            &words[first..(first + open.partials).min(words.len())]
        } else {
            &words[first..]
        };
        let items: Vec<serde_json::Value> = said
            .iter()
            .enumerate()
            .map(|(k, w)| {
                let into_line = (first + k) * word_samples;
                let at = (open.start + into_line)
                    .saturating_sub(open.skipped)
                    .max(open.start);
                let (at, to) = (
                    at as f64 / RATE as f64,
                    (at + word_samples) as f64 / RATE as f64,
                );
                serde_json::json!({"Content": w, "Type": "pronunciation", "StartTime": at,
                    "EndTime": to, "Confidence": 0.9,
                    "Stable": !partial || k + 1 < said.len()})
            })
            .collect();
        let said = said.join(" ");
        let transcript = serde_json::json!({"Transcript": {"Results": [{
            "ResultId": open.result_id,
            "StartTime": start,
            "EndTime": end,
            "IsPartial": partial,
            "ChannelId": format!("ch_{channel}"),
            "Alternatives": [{"Transcript": said, "Items": items}],
        }]}});
        Message::new(Bytes::from(transcript.to_string()))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("event".into()),
            ))
            .add_header(Header::new(
                ":event-type",
                HeaderValue::String("TranscriptEvent".into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ))
    }

    /// The end of the audio: every open result is final.
    fn finish(&mut self) -> Vec<Message> {
        (0..2).filter_map(|c| self.close(c)).collect()
    }
}
