//! An open recognition session: its audio sender and results, what of it is still
//! partial, and how its audio maps onto the call's timeline (keep-alive silence moves the
//! session's time on, not the call's).

use std::collections::HashMap;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::bytes::Bytes;

use crate::audio::{AudioError, Heard};
use crate::metrics::metrics;

/// An open recognition session and how its audio maps onto the call's timeline.
pub(super) struct OpenSession {
    /// `None` once the audio is closed (draining).
    pub(super) audio: Option<mpsc::Sender<Bytes>>,
    /// Its results.
    pub(super) heard: mpsc::Receiver<Result<Heard, AudioError>>,
    /// When it opened.
    pub(super) opened_at: Instant,
    /// When audio (or keep-alive silence) was last sent.
    pub(super) last_sent: Instant,
    /// Audio sent, ms of the session's time.
    pub(super) sent_millis: u64,
    /// Where the call's timeline is expected to go on (the end of the last chunk).
    expected_call_millis: Option<u64>,
    /// Points where session time and call time line up again: (session ms, call ms), in
    /// order. Keep-alive silence moves session time on, not call time.
    timeline: Vec<(u64, u64)>,
    /// Partial results not yet final: (channel, result id) → start, session seconds.
    pub(super) open_partials: HashMap<(usize, String), f64>,
    /// Words of open results already recorded early: (channel, result id) → how many.
    pub(super) delivered: HashMap<(usize, String), usize>,
}

impl OpenSession {
    /// Takes `session` on (counted in the open-streams gauge while it lives).
    pub(super) fn new(session: crate::audio::Session) -> Self {
        metrics().audio_streams_open.inc();
        Self {
            audio: Some(session.audio),
            heard: session.heard,
            opened_at: Instant::now(),
            last_sent: Instant::now(),
            sent_millis: 0,
            expected_call_millis: None,
            timeline: Vec::new(),
            open_partials: HashMap::new(),
            delivered: HashMap::new(),
        }
    }

    /// Notes that the next `millis` of session audio are the call's from `call_millis`.
    pub(super) fn place(&mut self, call_millis: u64, millis: u64) {
        if self.expected_call_millis != Some(call_millis) {
            self.timeline.push((self.sent_millis, call_millis));
        }
        self.expected_call_millis = Some(call_millis + millis);
        self.sent_millis += millis;
    }

    /// Sends audio; an error when the session no longer takes it.
    pub(super) async fn send(&mut self, pcm: Bytes) -> Result<(), AudioError> {
        let audio = self.audio.as_ref().ok_or_else(|| {
            AudioError::Unavailable("audio sent to a closed recognition session".into())
        })?;
        audio.send(pcm).await.map_err(|_| {
            AudioError::Unavailable("the recognition session stopped taking audio".into())
        })?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Sends a chunk of silence that is not the call's audio.
    pub(super) async fn keep_alive(
        &mut self,
        rate: u32,
        chunk_millis: u32,
    ) -> Result<(), AudioError> {
        let frames = rate as usize * chunk_millis as usize / 1000;
        self.sent_millis += u64::from(chunk_millis);
        self.send(Bytes::from(vec![
            0u8;
            frames * crate::audio::mix::CHANNELS * 2
        ]))
        .await
    }

    /// A time of the session (seconds) on the call's timeline, ms.
    pub(super) fn call_millis(&self, session_secs: f64) -> u64 {
        let at = (session_secs.max(0.0) * 1000.0).round() as u64;
        let (session, call) = self
            .timeline
            .iter()
            .rev()
            .find(|(session, _)| *session <= at)
            .or(self.timeline.first())
            .copied()
            .unwrap_or((0, 0));
        call + at.saturating_sub(session)
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        metrics().audio_streams_open.dec();
    }
}
