//! Live demux of Connect's Kinesis Video media: a GetMedia payload is a run of MKV
//! fragments, each its own EBML document (header, Segment of unknown size, Tracks, Tags,
//! one Cluster of SimpleBlocks, Tags). [`FragmentReader`] turns the tags that
//! `webm-iterable` reads into whole [`Fragment`]s: the KVS tags (fragment number, producer
//! timestamp, continuation token, error code), Connect's tags (ContactId, MimeType, which
//! track is whose) and every audio block with its time. [`spawn_demux`] runs it on a thread
//! of its own over bytes fed in as they arrive, a few at a time or a fragment at a time.

use std::collections::BTreeMap;
use std::io::Read;

use tokio::sync::mpsc::{Receiver, Sender};
use tokio_util::bytes::Bytes;
use webm_iterable::WebmIterator;
use webm_iterable::matroska_spec::{Master, MatroskaSpec, SimpleBlock};

use super::AudioError;

/// Connect's track for the customer's voice.
pub const CUSTOMER_TRACK: &str = "AUDIO_FROM_CUSTOMER";
/// Connect's track for the agent's voice (what the customer hears).
pub const AGENT_TRACK: &str = "AUDIO_TO_CUSTOMER";
/// Longest element the demuxer buffers; a longer one is corrupt data, not audio.
const MAX_TAG_BYTES: usize = 4 * 1024 * 1024;

/// One block of audio: PCM s16le mono of one track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioBlock {
    /// The track number.
    pub track: u64,
    /// When the block starts: its cluster's timestamp plus its own offset, ms.
    pub at_millis: i64,
    /// The samples, s16le.
    pub pcm: Vec<u8>,
}

/// One KVS fragment as GetMedia delivers it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    /// `AWS_KINESISVIDEO_FRAGMENT_NUMBER`: a decimal string too long for `u64`.
    pub number: Option<String>,
    /// `AWS_KINESISVIDEO_PRODUCER_TIMESTAMP`, ms since the Unix epoch.
    pub producer_millis: Option<u64>,
    /// `AWS_KINESISVIDEO_CONTINUATION_TOKEN`: where a new GetMedia goes on from.
    pub continuation_token: Option<String>,
    /// `AWS_KINESISVIDEO_ERROR_CODE` (with its message, when given): KVS could not serve
    /// the stream from here.
    pub error: Option<String>,
    /// Connect's `ContactId`: which contact the stream carries now.
    pub contact_id: Option<String>,
    /// Sample rate from the `MimeType` tag (`audio/L16;rate=8000;channels=1;`).
    pub sample_rate: Option<u32>,
    /// Track numbers by name (`AUDIO_FROM_CUSTOMER`, `AUDIO_TO_CUSTOMER`), from the tags
    /// or the track entries.
    pub tracks: BTreeMap<String, u64>,
    /// The audio, in stream order.
    pub blocks: Vec<AudioBlock>,
}

impl Fragment {
    /// The track number carrying `name`, by Connect's tags or track names, else Connect's
    /// usual numbering (customer 1, agent 2).
    pub fn track_of(&self, name: &str) -> u64 {
        self.tracks
            .get(name)
            .copied()
            .unwrap_or(if name == CUSTOMER_TRACK { 1 } else { 2 })
    }
}

/// Compares two fragment numbers (decimal strings of any length) as numbers.
pub fn fragment_order(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Builds fragments from the tags of a live MKV stream.
#[derive(Debug, Default)]
pub struct FragmentReader {
    current: Option<Fragment>,
    cluster_millis: i64,
    /// Nanoseconds per timestamp unit (Matroska's default: 1 ms).
    timestamp_scale: u64,
    /// Whether the current fragment's cluster has begun (its trailing tags end it).
    in_cluster: bool,
}

impl FragmentReader {
    /// Takes the next tag; answers a fragment when `tag` closes one.
    pub fn push(&mut self, tag: MatroskaSpec) -> Result<Option<Fragment>, AudioError> {
        let mut done = None;
        match tag {
            MatroskaSpec::Ebml(Master::Start) | MatroskaSpec::Ebml(Master::Full(_)) => {
                done = self.current.take();
                self.current = Some(Fragment::default());
                self.in_cluster = false;
                self.cluster_millis = 0;
                self.timestamp_scale = 1_000_000;
            }
            MatroskaSpec::Segment(Master::End) => done = self.current.take(),
            MatroskaSpec::TimestampScale(scale) => self.timestamp_scale = scale.max(1),
            MatroskaSpec::Timestamp(at) => {
                let millis = u128::from(at) * u128::from(self.scale()) / 1_000_000;
                self.cluster_millis = i64::try_from(millis).unwrap_or(i64::MAX);
            }
            MatroskaSpec::SimpleBlock(data) => {
                let block = SimpleBlock::try_from(&data)
                    .map_err(|e| AudioError::Malformed(format!("a SimpleBlock: {e}")))?;
                let offset = i64::from(block.timestamp) * self.scale() as i64 / 1_000_000;
                let at_millis = self.cluster_millis + offset;
                let pcm = block.raw_frame_data().to_vec();
                self.fragment().blocks.push(AudioBlock {
                    track: block.track,
                    at_millis,
                    pcm,
                });
            }
            MatroskaSpec::Tags(Master::Full(children)) => {
                for (name, value) in simple_tags(&children) {
                    self.tag(&name, value);
                }
                // Tags after the cluster close the fragment: hand it on now rather than
                // when the next one begins (a second later, live).
                if self.in_cluster {
                    self.in_cluster = false;
                    done = self.current.take();
                }
            }
            MatroskaSpec::Cluster(Master::Start) => self.in_cluster = true,
            MatroskaSpec::Tracks(Master::Full(children)) => {
                let fragment = self.fragment();
                for entry in &children {
                    if let MatroskaSpec::TrackEntry(Master::Full(fields)) = entry {
                        let number = fields.iter().find_map(|f| match f {
                            MatroskaSpec::TrackNumber(n) => Some(*n),
                            _ => None,
                        });
                        let name = fields.iter().find_map(|f| match f {
                            MatroskaSpec::Name(n) => Some(n.clone()),
                            _ => None,
                        });
                        if let (Some(number), Some(name)) = (number, name) {
                            fragment.tracks.entry(name).or_insert(number);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(done)
    }

    /// The fragment still open when the stream ends (complete if its tags came).
    pub fn finish(&mut self) -> Option<Fragment> {
        self.current.take()
    }

    fn scale(&self) -> u64 {
        if self.timestamp_scale == 0 {
            1_000_000
        } else {
            self.timestamp_scale
        }
    }

    fn fragment(&mut self) -> &mut Fragment {
        self.current.get_or_insert_with(Fragment::default)
    }

    fn tag(&mut self, name: &str, value: String) {
        let fragment = self.fragment();
        match name {
            "AWS_KINESISVIDEO_FRAGMENT_NUMBER" => fragment.number = Some(value),
            "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP" => {
                fragment.producer_millis = seconds_to_millis(&value)
            }
            "AWS_KINESISVIDEO_CONTINUATION_TOKEN" => fragment.continuation_token = Some(value),
            "AWS_KINESISVIDEO_ERROR_CODE" => {
                fragment.error = Some(match fragment.error.take() {
                    Some(message) => format!("{value}: {message}"),
                    None => value,
                })
            }
            "AWS_KINESISVIDEO_ERROR_ID" | "AWS_KINESISVIDEO_ERROR_MESSAGE" => {
                fragment.error = Some(match fragment.error.take() {
                    Some(code) => format!("{code}: {value}"),
                    None => value,
                })
            }
            "ContactId" => fragment.contact_id = Some(value),
            "MimeType" => fragment.sample_rate = mime_rate(&value),
            CUSTOMER_TRACK | AGENT_TRACK => {
                if let Ok(number) = value.trim().parse() {
                    fragment.tracks.insert(name.to_string(), number);
                }
            }
            _ => {}
        }
    }
}

/// Every `SimpleTag`'s name and string value under a buffered `Tags` element.
fn simple_tags(children: &[MatroskaSpec]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for child in children {
        match child {
            MatroskaSpec::Tag(Master::Full(inner)) => found.extend(simple_tags(inner)),
            MatroskaSpec::SimpleTag(Master::Full(fields)) => {
                let name = fields.iter().find_map(|f| match f {
                    MatroskaSpec::TagName(n) => Some(n.clone()),
                    _ => None,
                });
                let value = fields.iter().find_map(|f| match f {
                    MatroskaSpec::TagString(s) => Some(s.clone()),
                    MatroskaSpec::TagBinary(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    _ => None,
                });
                if let (Some(name), Some(value)) = (name, value) {
                    found.push((name, value));
                }
            }
            _ => {}
        }
    }
    found
}

/// `1700000000.250` (seconds, as KVS writes its timestamps) in ms.
fn seconds_to_millis(text: &str) -> Option<u64> {
    let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    let seconds: u64 = whole.parse().ok()?;
    let millis: u64 = format!("{fraction:0<3}")[..3].parse().ok()?;
    Some(seconds * 1000 + millis)
}

/// The `rate=` of an `audio/L16;rate=8000;channels=1;` MIME type.
fn mime_rate(mime: &str) -> Option<u32> {
    mime.split(';')
        .find_map(|part| part.trim().strip_prefix("rate="))
        .and_then(|rate| rate.trim().parse().ok())
}

/// Blocking reads over chunks sent from async code: the demux thread's view of a GetMedia
/// payload. A closed channel is the end of the stream.
struct ChunkReader {
    chunks: Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(next) => self.current = next,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Chunks of a payload queued for the demuxer before its feeder waits.
const QUEUED_CHUNKS: usize = 64;

/// Demuxes bytes sent into the returned sender on a thread of its own; fragments (or the
/// first error: nothing after corrupt data is trusted) come out of `out`, in order. Closing
/// the sender ends the stream; a closed `out` ends the thread.
pub fn spawn_demux(out: Sender<Result<Fragment, AudioError>>) -> Sender<Bytes> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUED_CHUNKS);
    std::thread::Builder::new()
        .name("mkv-demux".into())
        .stack_size(256 * 1024)
        .spawn(move || demux(rx, out))
        .expect("a thread for the demuxer");
    tx
}

fn demux(chunks: Receiver<Bytes>, out: Sender<Result<Fragment, AudioError>>) {
    let reader = ChunkReader {
        chunks,
        current: Bytes::new(),
    };
    let buffered = [
        MatroskaSpec::Tags(Master::Start),
        MatroskaSpec::Tracks(Master::Start),
    ];
    let mut tags = WebmIterator::new(reader, &buffered);
    tags.set_max_allowable_tag_size(Some(MAX_TAG_BYTES));
    let mut fragments = FragmentReader::default();
    for tag in tags.by_ref() {
        let next = tag
            .map_err(|e| AudioError::Malformed(format!("the media stream is not valid MKV: {e}")))
            .and_then(|tag| fragments.push(tag));
        match next {
            Ok(None) => {}
            Ok(Some(fragment)) => {
                if out.blocking_send(Ok(fragment)).is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = out.blocking_send(Err(error));
                return;
            }
        }
    }
    if let Some(last) = fragments.finish() {
        let _ = out.blocking_send(Ok(last));
    }
}
