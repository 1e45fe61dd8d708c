//! Speech for the tests: a call's lines spoken by espeak-ng, one voice per side, and
//! written as Connect writes it to Kinesis Video (an MKV document a second, two tracks, the
//! KVS and Connect tags, unknown sizes).

use webm_iterable::WebmWriter;
use webm_iterable::WriteOptions;
use webm_iterable::matroska_spec::{Master, MatroskaSpec, SimpleBlock};

use crate::audio::mkv::{AGENT_TRACK, CUSTOMER_TRACK};

/// Connect's sample rate.
pub const RATE: usize = 8_000;
/// Samples per fragment: Connect writes a fragment a second.
const FRAGMENT_SAMPLES: usize = RATE;
/// Samples per block within a fragment.
const BLOCK_SAMPLES: usize = RATE / 8;
/// Above this, a sample is speech (espeak-ng speaks far louder).
pub(super) const VOICED: i16 = 400;

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
