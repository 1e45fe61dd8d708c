//! Transcribe streaming for the tests: HTTP/1.1 event streams, each session's headers,
//! signed frames and chunk sizes checked as Transcribe would, and partial and final results
//! for the lines of the calls it recognises in the audio it hears.

use std::sync::{Arc, Mutex};

use actix_web::{HttpRequest, HttpResponse, web};
use aws_smithy_eventstream::frame::{
    DecodedFrame, MessageFrameDecoder, read_message_from, write_message_to,
};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use futures_util::StreamExt;
use tokio_util::bytes::{Bytes, BytesMut};

use super::aws_error;
use super::speech::{CallAudio, Line, RATE, VOICED};
use crate::aws::stub::serve;

/// This much silence ends what the Transcribe stub hears as one utterance, samples.
const UTTERANCE_GAP: usize = RATE * 7 / 10;

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
