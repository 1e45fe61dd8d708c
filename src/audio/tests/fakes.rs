//! The reader with in-process fakes, on tokio's paused clock: a long hold, a 4-hour call.

use super::*;

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
