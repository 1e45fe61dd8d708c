//! One contact's audio reader: from where the call's audio is fully heard (its latest
//! [`AudioCheckpoint`], else its first fragment), read the media stream, demux and mix it,
//! feed a recognition session, and report every final result as an utterance on the call's
//! own timeline, with checkpoints, failures and the end of the audio, to an [`AudioSink`]
//! (the contact's actor, which makes each report durable before it answers).
//!
//! - Nothing twice: an utterance's segment id is its side and its start in the call
//!   (`audio-customer-12340`), and the words of a result that start before the end of the
//!   last utterance recorded for its side are dropped, so the audio heard again after a
//!   restart, a failure or a rollover adds nothing already in the log.
//! - Early where asked: a customer speaking on without a pause is recorded in pieces of
//!   stable words (`[audio] early_sentiment_secs`), each judged as it comes; the final
//!   result then adds only the words after them.
//! - Nothing lost: a checkpoint names the last fragment that ends before every open partial
//!   result and [`COVER_MARGIN_MS`] before the audio sent; resuming there hears again any
//!   speech not yet final.
//! - Any length: a GetMedia that ends (KVS ends them after about 45 minutes) goes on from its
//!   continuation token in the same session; a session is fed silence while no audio comes
//!   and renewed at a quiet moment before Transcribe's 4-hour limit.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::time::Instant;
use tokio_util::bytes::Bytes;

use super::mix::{Chunk, Mixer};
use super::mkv::{Fragment, fragment_order, spawn_demux};
use super::{AudioError, AudioServices, Heard, StartAt, pieces};
use crate::backoff::backoff;
use crate::events::contact::AudioProgress;
use crate::events::{
    AudioCheckpoint, AudioEndReason, AudioEnded, AudioStreamFailed, Participant, UtteranceReceived,
};
use crate::metrics::metrics;

mod session;
use self::session::OpenSession;

/// Audio sent this recently may hold speech the recogniser has not reported yet, not even
/// as a partial result: a checkpoint stays this far behind what was sent, ms.
pub const COVER_MARGIN_MS: u64 = 5_000;
/// Failures in a row (with no checkpoint between them) before the audio is given up.
const MAX_FAILURES: u32 = 8;
/// How long the last results of a closed session may take to come, at most.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Sample rate when a fragment names none (Connect's).
const DEFAULT_RATE: u32 = 8_000;
/// Fragments decoded ahead of the reader.
const QUEUED_FRAGMENTS: usize = 8;

/// What the reader tells the contact.
#[derive(Debug, Clone, PartialEq)]
pub enum AudioReport {
    /// A final result, as an utterance, with its idempotency key.
    Heard {
        /// The utterance.
        utterance: UtteranceReceived,
        /// Its source id.
        source_id: String,
    },
    /// The audio is fully heard this far.
    Checkpoint(AudioCheckpoint),
    /// Something failed.
    Failed(AudioStreamFailed),
    /// The audio is over.
    Ended(AudioEnded),
}

/// Where reports go; a report is answered once it is durable.
#[async_trait]
pub trait AudioSink: Send + Sync {
    /// Records `report`; an error means it was not recorded (the reader tries again).
    async fn report(&self, report: AudioReport) -> Result<(), String>;
}

/// Reads one contact's audio until it is over.
pub struct AudioReader {
    services: Arc<AudioServices>,
    contact_id: String,
    stream_arn: String,
    start_fragment: Option<String>,
    checkpoint: Option<AudioCheckpoint>,
    heard_until: [u64; 2],
    /// Whether the call has ended (its ENDED is in the log).
    call_ended: watch::Receiver<bool>,
    sink: Arc<dyn AudioSink>,
}

/// How one pass over the media ended.
enum PassEnd {
    /// The audio is over.
    Over(AudioEndReason),
    /// It failed; the next pass resumes from the latest checkpoint.
    Failed(AudioError),
}

impl AudioReader {
    /// A reader of the audio `progress` describes, for contact `contact_id`.
    pub fn new(
        services: Arc<AudioServices>,
        contact_id: String,
        progress: &AudioProgress,
        call_ended: watch::Receiver<bool>,
        sink: Arc<dyn AudioSink>,
    ) -> Self {
        Self {
            services,
            contact_id,
            stream_arn: progress.started.stream_arn.clone(),
            start_fragment: progress.started.start_fragment_number.clone(),
            checkpoint: progress.checkpoint.clone(),
            heard_until: progress.heard_until,
            call_ended,
            sink,
        }
    }

    /// Reads until the audio is over (its end, or a failure that cannot be mended, is
    /// reported).
    pub async fn run(mut self) {
        let _permit = self.stream_permit().await;
        let mut failures = 0;
        loop {
            let before = self.checkpoint.clone();
            let end = self.pass().await;
            let last = self.checkpoint.as_ref().map(|c| c.fragment_number.clone());
            let reason = match end {
                PassEnd::Over(reason) => reason,
                PassEnd::Failed(error) => {
                    metrics()
                        .audio_failures
                        .with_label_values(&[error.kind()])
                        .inc();
                    failures = if self.checkpoint != before {
                        1
                    } else {
                        failures + 1
                    };
                    let retrying = error.is_retryable() && failures < MAX_FAILURES;
                    tracing::warn!(contact = %self.contact_id, %error, retrying, "audio failed");
                    self.deliver(AudioReport::Failed(AudioStreamFailed {
                        reason: error.to_string(),
                        retrying,
                        fragment_number: last.clone(),
                    }))
                    .await;
                    if retrying {
                        metrics()
                            .audio_stream_restarts
                            .with_label_values(&["failure"])
                            .inc();
                        tokio::time::sleep(backoff(500, 30_000, failures)).await;
                        continue;
                    }
                    AudioEndReason::Failed
                }
            };
            self.deliver(AudioReport::Ended(AudioEnded {
                reason,
                fragment_number: last,
            }))
            .await;
            return;
        }
    }

    /// A recognition stream, waiting (visibly) while all are in use.
    async fn stream_permit(&self) -> OwnedSemaphorePermit {
        let streams = self.services.streams.clone();
        if let Ok(permit) = streams.clone().try_acquire_owned() {
            return permit;
        }
        self.deliver(AudioReport::Failed(AudioStreamFailed {
            reason: format!(
                "waiting for a recognition stream: all {} are in use",
                self.services.config.max_streams
            ),
            retrying: true,
            fragment_number: None,
        }))
        .await;
        metrics().audio_streams_waiting.inc();
        let permit = streams.acquire_owned().await.expect("never closed");
        metrics().audio_streams_waiting.dec();
        permit
    }

    /// Records `report`, trying until it is recorded.
    async fn deliver(&self, report: AudioReport) {
        let mut attempt = 0;
        while let Err(error) = self.sink.report(report.clone()).await {
            attempt += 1;
            tracing::warn!(contact = %self.contact_id, %error, "could not record an audio report; retrying");
            tokio::time::sleep(backoff(200, 5_000, attempt)).await;
        }
    }

    /// One pass: from the latest checkpoint to the end of the audio or a failure.
    async fn pass(&mut self) -> PassEnd {
        let mut pass = Pass::new(self);
        let mut start = match (&self.checkpoint, &self.start_fragment) {
            (Some(checkpoint), _) => StartAt::Fragment(checkpoint.fragment_number.clone()),
            (None, Some(first)) => StartAt::Fragment(first.clone()),
            (None, None) => StartAt::Now,
        };
        loop {
            let taken_before = pass.taken;
            let end = match self.services.media.open(&self.stream_arn, &start).await {
                Ok(payload) => self.read(&mut pass, payload).await,
                Err(error) => Read::Failed(error),
            };
            let end = match end {
                Read::Over(reason) => self.finish(&mut pass, reason).await,
                Read::Failed(error) => PassEnd::Failed(error),
                // The call has ended and the stream has nothing more.
                Read::PayloadEnded if *self.call_ended.borrow() && pass.taken == taken_before => {
                    self.finish(&mut pass, AudioEndReason::CallEnded).await
                }
                Read::PayloadEnded => {
                    // A GetMedia session ended mid-call (or with audio still to come): go
                    // on where it left off, in the same recognition session (kept fed
                    // meanwhile).
                    metrics()
                        .audio_stream_restarts
                        .with_label_values(&["continuation"])
                        .inc();
                    start = match (&pass.continuation, &pass.last_fragment) {
                        (Some(token), _) => StartAt::Continuation(token.clone()),
                        (None, Some(last)) => StartAt::Fragment(last.clone()),
                        (None, None) => start,
                    };
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            return end;
        }
    }

    /// Reads one GetMedia payload until it ends, the audio is over, or something fails.
    async fn read(
        &mut self,
        pass: &mut Pass,
        mut payload: futures_util::stream::BoxStream<'static, Result<Bytes, AudioError>>,
    ) -> Read {
        // Quiet is counted from when this payload opened, not from before the request.
        pass.last_fragment_at = Instant::now();
        let (fragments_out, mut fragments) = mpsc::channel(QUEUED_FRAGMENTS);
        let demux = spawn_demux(fragments_out);
        let feeder = tokio::spawn(async move {
            while let Some(bytes) = payload.next().await {
                if demux.send(bytes?).await.is_err() {
                    break;
                }
            }
            Ok::<(), AudioError>(())
        });
        let _stop_feeder = AbortOnDrop(feeder.abort_handle());
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                fragment = fragments.recv() => match fragment {
                    Some(Ok(fragment)) => {
                        if let Some(end) = self.take_fragment(pass, fragment).await {
                            return end;
                        }
                    }
                    Some(Err(error)) => return Read::Failed(error),
                    None => {
                        return match feeder.await {
                            Ok(Err(error)) => Read::Failed(error),
                            _ => Read::PayloadEnded,
                        };
                    }
                },
                heard = pass.next_heard() => match heard {
                    Some(Ok(heard)) => self.take_heard(pass, heard).await,
                    Some(Err(error)) => return Read::Failed(error),
                    None => {
                        return Read::Failed(AudioError::Unavailable(
                            "the recognition session ended before the audio".into(),
                        ));
                    }
                },
                _ = tick.tick() => {
                    if let Err(error) = self.on_tick(pass).await {
                        return Read::Failed(error);
                    }
                    let quiet = pass.last_fragment_at.elapsed().as_secs() >= self.services.config.drain_secs;
                    if *self.call_ended.borrow() && quiet {
                        return Read::Over(AudioEndReason::CallEnded);
                    }
                }
            }
        }
    }

    /// Mixes a fragment in and sends its audio; answers how the read ends, if it does.
    async fn take_fragment(&mut self, pass: &mut Pass, fragment: Fragment) -> Option<Read> {
        if let Some(error) = &fragment.error {
            return Some(Read::Failed(fragment_error(error)));
        }
        if let (Some(number), Some(seen)) = (&fragment.number, &pass.skip_through)
            && fragment_order(number, seen).is_le()
        {
            return None;
        }
        if fragment
            .contact_id
            .as_ref()
            .is_some_and(|id| *id != self.contact_id)
        {
            tracing::info!(contact = %self.contact_id, next = ?fragment.contact_id, "the media stream now carries another contact");
            return Some(Read::Over(AudioEndReason::ContactChanged));
        }
        if fragment.continuation_token.is_some() {
            pass.continuation = fragment.continuation_token.clone();
        }
        pass.last_fragment_at = Instant::now();
        if fragment.number.is_some() {
            pass.taken += 1;
        }
        let origin = self.checkpoint.as_ref().and_then(|c| c.origin_millis);
        let chunk_millis = self.services.config.chunk_millis.clamp(20, 1_000);
        let mixer = pass.mixer.get_or_insert_with(|| {
            Mixer::new(
                fragment.sample_rate.unwrap_or(DEFAULT_RATE),
                chunk_millis,
                origin,
            )
        });
        let chunks = mixer.push(&fragment);
        let reached = mixer.reached_millis();
        if let Some(number) = &fragment.number {
            pass.fragments.push_back((number.clone(), reached));
            pass.last_fragment = Some(number.clone());
            pass.skip_through = Some(number.clone());
        }
        for chunk in chunks {
            if let Err(error) = self.send(pass, chunk).await {
                return Some(Read::Failed(error));
            }
        }
        None
    }

    /// Sends a chunk, opening a session first when none is open.
    async fn send(&mut self, pass: &mut Pass, chunk: Chunk) -> Result<(), AudioError> {
        let rate = pass.mixer.as_ref().map_or(DEFAULT_RATE, Mixer::rate);
        if pass.session.is_none() {
            let session = self.services.recogniser.open(rate).await?;
            pass.session = Some(OpenSession::new(session));
        }
        let session = pass.session.as_mut().expect("opened above");
        let millis = chunk_duration_millis(chunk.pcm.len(), rate);
        session.place(chunk.call_millis, millis);
        metrics().audio_seconds.inc_by(millis as f64 / 1000.0);
        session.send(Bytes::from(chunk.pcm)).await
    }

    /// A recogniser's result: the words of a final one not yet recorded become an
    /// utterance, and so does a long stable stretch of a customer's partial one where
    /// `[audio] early_sentiment_secs` asks for it.
    async fn take_heard(&mut self, pass: &mut Pass, heard: Heard) {
        let Some(session) = pass.session.as_mut() else {
            return;
        };
        let channel = heard.channel.min(1);
        let key = (heard.channel, heard.result_id.clone());
        let until = self.heard_until[channel];
        let piece = if heard.partial {
            session.open_partials.insert(key.clone(), heard.start_secs);
            let early_secs = self.services.config.early_sentiment_secs;
            if channel != 0 || early_secs == 0 {
                return;
            }
            let delivered = session.delivered.get(&key).copied().unwrap_or(0);
            let stable = delivered + pieces::stable_after(&heard.words, delivered);
            let fresh = pieces::new_words(&heard.words[..stable], delivered, |start| {
                session.call_millis(start) >= until
            });
            match pieces::piece_of(&fresh) {
                Some(piece) if pieces::long_enough(&piece, early_secs as f64) => {
                    session.delivered.insert(key, stable);
                    piece
                }
                // Heard again after a restart: already in the log.
                None if stable > delivered => {
                    session.delivered.insert(key, stable);
                    return;
                }
                _ => return,
            }
        } else {
            session.open_partials.remove(&key);
            let delivered = session.delivered.remove(&key).unwrap_or(0);
            let is_new = |start| session.call_millis(start) >= until;
            let fresh = pieces::new_words(&heard.words, delivered, is_new);
            if heard.words.is_empty() || fresh.len() == heard.words.len() {
                // All of it: as the recogniser wrote it (a recogniser without word times
                // gives it whole, unless it starts before the last one recorded).
                if heard.text.is_empty() || !is_new(heard.start_secs) {
                    return;
                }
                pieces::Piece {
                    start_secs: heard.start_secs,
                    end_secs: heard.end_secs,
                    text: heard.text,
                }
            } else {
                let Some(piece) = pieces::piece_of(&fresh) else {
                    return;
                };
                piece
            }
        };
        let begin = session.call_millis(piece.start_secs);
        let end = session.call_millis(piece.end_secs).max(begin);
        self.record(pass, channel, begin, end, piece.text).await;
    }

    /// Records what `channel` said from `begin` to `end` (call ms) as an utterance.
    async fn record(&mut self, pass: &Pass, channel: usize, begin: u64, end: u64, text: String) {
        let mut text = text;
        let redactions = self.services.redactor.redact_in_place(&mut text);
        crate::redaction::count_in_metrics(&redactions);
        let (participant, side) = if channel == 0 {
            (Participant::Customer, "customer")
        } else {
            (Participant::Agent, "agent")
        };
        let segment_id = format!("audio-{side}-{begin}");
        self.deliver(AudioReport::Heard {
            source_id: format!("audio:{segment_id}"),
            utterance: UtteranceReceived {
                segment_id,
                participant,
                text,
                begin_offset_millis: Some(begin),
                end_offset_millis: Some(end),
                redactions,
            },
        })
        .await;
        self.heard_until[channel] = end;
        if let Some(origin) = pass.mixer.as_ref().and_then(Mixer::origin_millis) {
            let spoken_end = origin.saturating_add(end as i64);
            let lag = Utc::now().timestamp_millis() - spoken_end;
            if lag >= 0 {
                metrics().audio_lag.observe(lag as f64 / 1000.0);
            }
        }
    }

    /// Every half second: keep the session fed, checkpoint, renew an old session.
    async fn on_tick(&mut self, pass: &mut Pass) -> Result<(), AudioError> {
        let config = &self.services.config;
        let keepalive = Duration::from_secs(config.keepalive_secs.max(1));
        let rate = pass.mixer.as_ref().map_or(DEFAULT_RATE, Mixer::rate);
        let chunk_millis = config.chunk_millis.clamp(20, 1_000);
        let max_session = Duration::from_secs(config.max_session_minutes.max(1) * 60);
        if let Some(session) = pass.session.as_mut()
            && session.last_sent.elapsed() >= keepalive
        {
            session.keep_alive(rate, chunk_millis).await?;
        }
        if pass.last_checkpoint.elapsed() >= Duration::from_secs(config.checkpoint_secs.max(1)) {
            pass.last_checkpoint = Instant::now();
            let covered = pass.covered_millis();
            self.checkpoint_to(pass, covered).await;
        }
        let renew = pass
            .session
            .as_ref()
            .is_some_and(|s| s.opened_at.elapsed() >= max_session && s.open_partials.is_empty());
        if renew {
            metrics()
                .audio_stream_restarts
                .with_label_values(&["rollover"])
                .inc();
            self.drain_session(pass).await?;
        }
        Ok(())
    }

    /// Records the last fragment that ends by `covered_millis`, if it is new.
    async fn checkpoint_to(&mut self, pass: &mut Pass, covered_millis: u64) {
        let mut last = None;
        while let Some((_, end)) = pass.fragments.front()
            && *end <= covered_millis
        {
            last = pass.fragments.pop_front();
        }
        let Some((fragment_number, covered_millis)) = last else {
            return;
        };
        let checkpoint = AudioCheckpoint {
            fragment_number,
            origin_millis: pass.mixer.as_ref().and_then(Mixer::origin_millis),
            covered_millis,
        };
        self.deliver(AudioReport::Checkpoint(checkpoint.clone()))
            .await;
        self.checkpoint = Some(checkpoint);
    }

    /// Ends the session's audio and records its last results; the next chunk opens a new
    /// session.
    async fn drain_session(&mut self, pass: &mut Pass) -> Result<(), AudioError> {
        let Some(session) = pass.session.as_mut() else {
            return Ok(());
        };
        session.audio = None;
        let deadline = tokio::time::sleep(DRAIN_TIMEOUT);
        tokio::pin!(deadline);
        let result = loop {
            tokio::select! {
                heard = pass.next_heard() => match heard {
                    Some(Ok(heard)) => self.take_heard(pass, heard).await,
                    Some(Err(error)) => break Err(error),
                    None => break Ok(()),
                },
                _ = &mut deadline => break Err(AudioError::Unavailable(
                    "the recognition session's last results did not come".into(),
                )),
            }
        };
        pass.session = None;
        result
    }

    /// The audio is over: send what is left, record the last results and a checkpoint at
    /// the end.
    async fn finish(&mut self, pass: &mut Pass, reason: AudioEndReason) -> PassEnd {
        if let Some(last) = pass.mixer.as_mut().and_then(Mixer::finish)
            && let Err(error) = self.send(pass, last).await
        {
            return PassEnd::Failed(error);
        }
        if let Err(error) = self.drain_session(pass).await {
            return PassEnd::Failed(error);
        }
        self.checkpoint_to(pass, u64::MAX).await;
        PassEnd::Over(reason)
    }
}

/// How reading one payload ended.
enum Read {
    /// The audio is over.
    Over(AudioEndReason),
    /// GetMedia's payload ended (its session is over, or the stream has no more).
    PayloadEnded,
    /// Something failed.
    Failed(AudioError),
}

/// A pass's state: the mix, the session, and which fragments are heard.
struct Pass {
    mixer: Option<Mixer>,
    session: Option<OpenSession>,
    /// Fragments mixed and not yet checkpointed, with where each ends in the call, ms.
    fragments: VecDeque<(String, u64)>,
    /// Fragments up to this one are already heard (or mixed): dropped when delivered again.
    skip_through: Option<String>,
    last_fragment: Option<String>,
    continuation: Option<String>,
    /// Fragments taken (not dropped as seen; tag-only documents do not count).
    taken: u64,
    last_fragment_at: Instant,
    last_checkpoint: Instant,
}

impl Pass {
    fn new(reader: &AudioReader) -> Self {
        Self {
            mixer: None,
            session: None,
            fragments: VecDeque::new(),
            skip_through: reader
                .checkpoint
                .as_ref()
                .map(|c| c.fragment_number.clone()),
            last_fragment: None,
            continuation: None,
            taken: 0,
            last_fragment_at: Instant::now(),
            last_checkpoint: Instant::now(),
        }
    }

    /// The session's next result; pending forever while no session is open.
    async fn next_heard(&mut self) -> Option<Result<Heard, AudioError>> {
        match self.session.as_mut() {
            Some(session) => session.heard.recv().await,
            None => std::future::pending().await,
        }
    }

    /// How far into the call every result is final: before any open partial result, and a
    /// margin before the audio sent.
    fn covered_millis(&self) -> u64 {
        let Some(session) = &self.session else {
            return self.mixer.as_ref().map_or(0, Mixer::reached_millis);
        };
        let sent = session.call_millis(session.sent_millis as f64 / 1000.0);
        session
            .open_partials
            .values()
            .map(|start| session.call_millis(*start))
            .fold(sent.saturating_sub(COVER_MARGIN_MS), u64::min)
    }
}

/// Stereo s16le bytes at `rate` as ms.
fn chunk_duration_millis(bytes: usize, rate: u32) -> u64 {
    (bytes / (super::mix::CHANNELS * 2)) as u64 * 1000 / u64::from(rate.max(1))
}

/// What an `AWS_KINESISVIDEO_ERROR_CODE` tag means: KMS and permission errors are for good.
fn fragment_error(error: &str) -> AudioError {
    let message = format!("Kinesis Video stopped the media: {error}");
    let upper = error.to_ascii_uppercase();
    if upper.contains("KMS") || upper.contains("ACCESS_DENIED") || upper.contains("NOT_AUTHORIZED")
    {
        AudioError::Refused(message)
    } else {
        AudioError::Unavailable(message)
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
