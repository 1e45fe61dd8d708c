//! Two tracks into one stereo stream: each fragment's blocks are placed on the call's
//! timeline by their timestamps (channel 0 the customer, channel 1 the agent), gaps are
//! filled with silence, overlaps dropped, and both channels are brought to the same end at
//! every fragment, so neither drifts. Out come interleaved s16le chunks of a fixed length
//! (100 ms by default: 3,200 bytes at 8 kHz), each with where it starts in the call.

use std::collections::VecDeque;

use super::mkv::{AGENT_TRACK, CUSTOMER_TRACK, Fragment};

/// Channels of the mixed stream: 0 the customer, 1 the agent.
pub const CHANNELS: usize = 2;
/// A gap in the media longer than this (a stalled stream) is not filled with silence: the
/// mix jumps over it (the reader keeps the recogniser fed meanwhile), ms.
const MAX_FILL_MILLIS: u64 = 1_000;

/// A stereo chunk ready for the recogniser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where it starts on the call's timeline, ms.
    pub call_millis: u64,
    /// Interleaved s16le, customer first.
    pub pcm: Vec<u8>,
}

/// Mixes fragments into stereo chunks.
#[derive(Debug)]
pub struct Mixer {
    rate: u32,
    chunk_frames: usize,
    /// The call's time zero: the absolute ms of its first audio.
    origin_millis: Option<i64>,
    /// Sample index (on the call's timeline) of each channel's next sample to buffer.
    ends: [u64; CHANNELS],
    /// Samples buffered per channel, starting at `emitted`.
    pending: [VecDeque<i16>; CHANNELS],
    /// Sample index of the next chunk's first frame.
    emitted: u64,
}

impl Mixer {
    /// A mixer for audio at `rate` Hz in chunks of `chunk_millis`; `origin_millis` is the
    /// call's time zero when it is known already (a resumed call), else its first block's.
    pub fn new(rate: u32, chunk_millis: u32, origin_millis: Option<i64>) -> Self {
        Self {
            rate,
            chunk_frames: (rate as usize * chunk_millis as usize / 1000).max(1),
            origin_millis,
            ends: [0; CHANNELS],
            pending: [VecDeque::new(), VecDeque::new()],
            emitted: 0,
        }
    }

    /// The call's time zero (absolute ms), once a block has come.
    pub fn origin_millis(&self) -> Option<i64> {
        self.origin_millis
    }

    /// Where the mixed audio has reached on the call's timeline, ms (a fragment's end, once
    /// it is mixed).
    pub fn reached_millis(&self) -> u64 {
        self.ends.iter().copied().max().unwrap_or(0) * 1000 / u64::from(self.rate)
    }

    /// Sample rate, Hz.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Mixes `fragment` in; answers the chunks now complete.
    pub fn push(&mut self, fragment: &Fragment) -> Vec<Chunk> {
        let tracks = [
            fragment.track_of(CUSTOMER_TRACK),
            fragment.track_of(AGENT_TRACK),
        ];
        let mut chunks = self.jump_gap(fragment, &tracks);
        for block in &fragment.blocks {
            let Some(channel) = tracks.iter().position(|t| *t == block.track) else {
                continue;
            };
            let origin = *self.origin_millis.get_or_insert(block.at_millis);
            let start_ms = (block.at_millis - origin).max(0) as u64;
            let start = start_ms * u64::from(self.rate) / 1000;
            if self.emitted == 0 && self.ends == [0; CHANNELS] {
                // The first audio of a resumed call: the mix starts here, not at zero.
                self.emitted = start;
                self.ends = [start; CHANNELS];
            }
            let mut samples = block
                .pcm
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]));
            if start < self.ends[channel] {
                // Overlaps what is buffered (a repeated block): keep only what is new.
                let skip = (self.ends[channel] - start) as usize;
                samples.by_ref().take(skip).for_each(drop);
            }
            self.fill_to(channel, start);
            for sample in samples {
                self.pending[channel].push_back(sample);
                self.ends[channel] += 1;
            }
        }
        // The fragment covers both tracks up to its end: the quieter one is silence there.
        let end = self.ends.iter().copied().max().unwrap_or(0);
        for channel in 0..CHANNELS {
            self.fill_to(channel, end);
        }
        chunks.extend(self.take_chunks());
        chunks
    }

    /// When `fragment` starts more than [`MAX_FILL_MILLIS`] after the mix, ends the mix's
    /// last chunk and moves the mix to the fragment's start.
    fn jump_gap(&mut self, fragment: &Fragment, tracks: &[u64; CHANNELS]) -> Vec<Chunk> {
        let (Some(origin), Some(first)) = (
            self.origin_millis,
            fragment
                .blocks
                .iter()
                .filter(|b| tracks.contains(&b.track))
                .map(|b| b.at_millis)
                .min(),
        ) else {
            return Vec::new();
        };
        let start = (first - origin).max(0) as u64 * u64::from(self.rate) / 1000;
        let end = self.ends.iter().copied().max().unwrap_or(0);
        if start <= end + MAX_FILL_MILLIS * u64::from(self.rate) / 1000 {
            return Vec::new();
        }
        let last = self.finish();
        self.emitted = start;
        self.ends = [start; CHANNELS];
        last.into_iter().collect()
    }

    /// The last, short chunk padded with silence, when the stream ends mid-chunk.
    pub fn finish(&mut self) -> Option<Chunk> {
        let buffered = self.pending.iter().map(VecDeque::len).max().unwrap_or(0);
        if buffered == 0 {
            return None;
        }
        let end = self.emitted + self.chunk_frames as u64;
        for channel in 0..CHANNELS {
            self.fill_to(channel, end);
        }
        self.take_chunks().pop()
    }

    fn fill_to(&mut self, channel: usize, end: u64) {
        while self.ends[channel] < end {
            self.pending[channel].push_back(0);
            self.ends[channel] += 1;
        }
    }

    fn take_chunks(&mut self) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        while self.pending.iter().all(|p| p.len() >= self.chunk_frames) {
            let mut pcm = Vec::with_capacity(self.chunk_frames * CHANNELS * 2);
            for _ in 0..self.chunk_frames {
                for channel in &mut self.pending {
                    let sample = channel.pop_front().expect("checked above");
                    pcm.extend_from_slice(&sample.to_le_bytes());
                }
            }
            chunks.push(Chunk {
                call_millis: self.emitted * 1000 / u64::from(self.rate),
                pcm,
            });
            self.emitted += self.chunk_frames as u64;
        }
        chunks
    }
}
