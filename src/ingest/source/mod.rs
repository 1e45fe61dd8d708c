//! From raw input to what the pipeline consumes: lines are framed (never more than
//! [`MAX_RECORD_BYTES`] buffered), parsed, given an idempotency key ([`Incoming::source_id`]),
//! and sent into a bounded channel; partial segments are counted and dropped; every bad
//! line becomes a [`Rejected`] with its position, which [`RejectLog`] keeps on disk.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::AsyncRead;
use tokio::sync::mpsc::Sender;
use tokio_util::bytes::{Bytes, BytesMut};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder, FramedRead};

use super::record::{MAX_RECORD_BYTES, Record, RecordError, Segment, parse_line};
use crate::events::envelope::digest_hex;
use crate::metrics::metrics;
use crate::redaction::Redactor;

/// How much of a refused line [`Rejected::raw`] keeps, in bytes.
pub const RAW_BYTES: usize = 1024;

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Position {
    /// The source: a file path, `stdin`, `http`.
    pub source: String,
    /// 1-based line within the source (within the body for HTTP).
    pub line: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.line)
    }
}

/// What became of a record once the pipeline settled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Appended to the log: durable.
    Appended,
    /// Already in the log (a re-delivery): nothing appended.
    Duplicate,
    /// Refused by the contact's rules (in the reject log), with the reason.
    Refused(String),
    /// The store could not take it after every retry (in the reject log): send it again.
    Undeliverable(String),
}

/// Tells whoever waits for a record (an HTTP request) its [`Fate`], with the record's line.
/// Not part of the record: any two compare equal.
#[derive(Debug, Clone)]
pub struct Ack {
    line: u64,
    to: tokio::sync::mpsc::UnboundedSender<(u64, Fate)>,
}

impl Ack {
    /// Reports line `line`'s fate to `to`.
    pub fn new(line: u64, to: tokio::sync::mpsc::UnboundedSender<(u64, Fate)>) -> Self {
        Self { line, to }
    }

    /// Reports `fate` (the waiter may be gone: then nobody needs it).
    pub fn settle(&self, fate: Fate) {
        let _ = self.to.send((self.line, fate));
    }
}

impl PartialEq for Ack {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Ack {}

/// A record ready for the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The record; a segment always has a `segment_id` here (derived in the minimal form).
    pub record: Record,
    /// Idempotency key within the contact: `seg:{segmentId}`; for an id-less final segment
    /// `m-{content hash}-{n}` (its n-th occurrence in the input), `k-{sequence}-{n}` (the
    /// n-th of a Kinesis record) or `h-{Idempotency-Key}-{n}` (the n-th of an HTTP body);
    /// `started` or `ended`.
    pub source_id: String,
    /// Where it came from.
    pub position: Position,
    /// Who waits for its fate, if anyone.
    pub ack: Option<Ack>,
}

/// A line that was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// Where it came from.
    pub position: Position,
    /// Why it was refused.
    pub reason: String,
    /// The first [`RAW_BYTES`] of the line (invalid UTF-8 replaced).
    pub raw: String,
}

/// What a source sends into the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// A good record.
    Record(Incoming),
    /// A bad line.
    Rejected(Rejected),
}

/// What one reader did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Records passed on.
    pub records: u64,
    /// Lines refused.
    pub rejected: u64,
    /// Partial segments dropped.
    pub partials_skipped: u64,
}

/// One framed line.
#[derive(Debug)]
pub(super) enum Line {
    /// A line of at most [`MAX_RECORD_BYTES`], without its line break.
    Text(Bytes),
    /// A longer line: its first [`RAW_BYTES`]; the rest is skipped, never buffered.
    TooLong(Bytes),
}

/// Splits input at `\n` into [`Line`]s, with `AnyDelimiterCodec` under a length limit (rather
/// than `LinesCodec`, which consumes a line that is not UTF-8 before failing and so loses
/// its bytes); an over-long line is a [`Line::TooLong`], not an error, and framing goes on
/// with the next line.
pub(super) struct LineCodec(AnyDelimiterCodec);

impl Default for LineCodec {
    fn default() -> Self {
        Self(AnyDelimiterCodec::new_with_max_length(
            vec![b'\n'],
            vec![b'\n'],
            MAX_RECORD_BYTES,
        ))
    }
}

type Step =
    fn(&mut AnyDelimiterCodec, &mut BytesMut) -> Result<Option<Bytes>, AnyDelimiterCodecError>;

impl LineCodec {
    fn frame(&mut self, buf: &mut BytesMut, step: Step) -> io::Result<Option<Line>> {
        match step(&mut self.0, buf) {
            Ok(line) => Ok(line.map(Line::Text)),
            // The codec has not consumed the line yet: `buf` starts with it.
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => Ok(Some(Line::TooLong(
                Bytes::copy_from_slice(&buf[..buf.len().min(RAW_BYTES)]),
            ))),
            Err(AnyDelimiterCodecError::Io(e)) => Err(e),
        }
    }
}

impl Decoder for LineCodec {
    type Item = Line;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Line>> {
        self.frame(buf, AnyDelimiterCodec::decode)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> io::Result<Option<Line>> {
        self.frame(buf, AnyDelimiterCodec::decode_eof)
    }
}

/// Turns the lines of one source into [`Ingested`] items, giving every id-less segment an
/// idempotency key that is the same whenever the same input is read again (see
/// [`LineReader::anchored`] and [`content_key`]). A contact's counts are dropped after its
/// `ENDED`, which bounds the memory kept.
pub(super) struct LineReader {
    source: String,
    label: &'static str,
    /// Per contact, how often each content digest was seen so far.
    minimal: HashMap<String, HashMap<String, u64>>,
    /// While reading one positioned unit (a Kinesis record, an HTTP body with an
    /// `Idempotency-Key`): the key's prefix and the id-less segments numbered so far.
    anchor: Option<(String, u64)>,
    /// Replaces personal data in transcripts and rejected lines before they go anywhere.
    redactor: Redactor,
}

/// What the content key of an id-less segment is made from: 16 hex digits of the SHA-256 of
/// its contact, speaker, text and offsets. The key is `m-<digest>-<n>` for its n-th
/// occurrence in the input, so re-reading a file, or resending an HTTP body, gives the same
/// keys, and two inputs with different utterances never share one.
fn content_digest(segment: &Segment) -> String {
    let offset = |o: Option<u64>| o.map(|o| o.to_string()).unwrap_or_default();
    let (begin, end) = (
        offset(segment.begin_offset_millis),
        offset(segment.end_offset_millis),
    );
    let digest = digest_hex(&[
        segment.contact_id.as_bytes(),
        segment.participant.as_deref().unwrap_or("").as_bytes(),
        segment.transcript.as_bytes(),
        begin.as_bytes(),
        end.as_bytes(),
    ]);
    digest[..16].to_string()
}

impl LineReader {
    /// A reader of `source` redacting with `redactor`; its metric label is `stdin`, `http`,
    /// `kinesis`, or `file` for anything else.
    pub(super) fn new(source: &str, redactor: Redactor) -> Self {
        let label = match source {
            "stdin" => "stdin",
            "http" => "http",
            _ if source.starts_with("kinesis:") => "kinesis",
            _ => "file",
        };
        Self {
            source: source.into(),
            label,
            minimal: HashMap::new(),
            anchor: None,
            redactor,
        }
    }

    /// A reader whose id-less segments are numbered after `prefix` (`<prefix>-1`, ...)
    /// instead of keyed by content: for input that names itself, such as an HTTP body sent
    /// with an `Idempotency-Key`.
    pub(super) fn anchored(source: &str, prefix: String, redactor: Redactor) -> Self {
        Self {
            anchor: Some((prefix, 0)),
            ..Self::new(source, redactor)
        }
    }

    /// The items of one Kinesis record: `data` holds one record or several lines of them,
    /// positioned as `<source>@<sequence>`, line N. Id-less segments get ids made from the
    /// sequence number (`k-<sequence>-<n>`), so reading the record again gives the same ids.
    pub(super) fn ingest_record(
        &mut self,
        sequence: &str,
        data: &[u8],
        stats: &mut ReadStats,
    ) -> Vec<Ingested> {
        let source = format!("{}@{sequence}", self.source);
        self.anchor = Some((format!("k-{sequence}"), 0));
        let mut codec = LineCodec::default();
        let mut buf = BytesMut::from(data);
        let mut items = Vec::new();
        let mut number = 0;
        // Framing bytes in memory cannot fail.
        while let Ok(Some(line)) = codec.decode_eof(&mut buf) {
            number += 1;
            let position = Position {
                source: source.clone(),
                line: number,
            };
            items.extend(self.ingest_at(position, line, stats));
        }
        self.anchor = None;
        items
    }

    /// The items of line `number`: none for a blank line or a partial, one rejection for a
    /// bad line, one or more (Contact Lens) records otherwise.
    pub(super) fn ingest(
        &mut self,
        number: u64,
        line: Line,
        stats: &mut ReadStats,
    ) -> Vec<Ingested> {
        let position = Position {
            source: self.source.clone(),
            line: number,
        };
        self.ingest_at(position, line, stats)
    }

    fn ingest_at(
        &mut self,
        position: Position,
        line: Line,
        stats: &mut ReadStats,
    ) -> Vec<Ingested> {
        let (bytes, parsed) = match &line {
            Line::TooLong(head) => (head, Err(RecordError::TooLarge)),
            Line::Text(bytes) => {
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    return Vec::new();
                }
                let parsed = std::str::from_utf8(bytes)
                    .map_err(|_| RecordError::InvalidUtf8)
                    .and_then(|text| parse_line(text.strip_suffix('\r').unwrap_or(text)));
                (bytes, parsed)
            }
        };
        match parsed {
            Ok(records) => records
                .into_iter()
                .filter_map(|record| self.incoming(record, &position, stats))
                .collect(),
            Err(e) => {
                stats.rejected += 1;
                metrics().records_rejected.inc();
                let raw = String::from_utf8_lossy(&bytes[..bytes.len().min(RAW_BYTES)]);
                vec![Ingested::Rejected(Rejected {
                    position,
                    reason: self.redact(&e.to_string()),
                    raw: self.redact(&raw),
                })]
            }
        }
    }

    /// `text` with personal data replaced (a rejected line's reason and raw text).
    fn redact(&self, text: &str) -> String {
        self.redactor.redact(text).text
    }

    fn incoming(
        &mut self,
        mut record: Record,
        position: &Position,
        stats: &mut ReadStats,
    ) -> Option<Ingested> {
        let source_id = match &mut record {
            Record::Segment(s) if s.is_partial => {
                stats.partials_skipped += 1;
                metrics().partials_skipped.inc();
                return None;
            }
            Record::Segment(s) => {
                s.redactions = self.redactor.redact_in_place(&mut s.transcript);
                crate::redaction::count_in_metrics(&s.redactions);
                match &s.segment_id {
                    Some(id) => format!("seg:{id}"),
                    None => {
                        let id = match &mut self.anchor {
                            Some((prefix, n)) => {
                                *n += 1;
                                format!("{prefix}-{n}")
                            }
                            None => {
                                let digest = content_digest(s);
                                let n = self
                                    .minimal
                                    .entry(s.contact_id.clone())
                                    .or_default()
                                    .entry(digest.clone())
                                    .or_default();
                                *n += 1;
                                format!("m-{digest}-{n}")
                            }
                        };
                        s.segment_id = Some(id.clone());
                        id
                    }
                }
            }
            Record::Started { .. } => "started".into(),
            Record::Ended { contact_id, .. } => {
                self.minimal.remove(contact_id.as_str());
                "ended".into()
            }
        };
        stats.records += 1;
        metrics().records_in.with_label_values(&[self.label]).inc();
        Some(Ingested::Record(Incoming {
            record,
            source_id,
            position: position.clone(),
            ack: None,
        }))
    }
}

/// Reads JSON Lines from `reader` (named `source` in positions) into `out`, in order,
/// waiting whenever `out` is full. Blank lines are skipped; bad lines, lines over
/// [`MAX_RECORD_BYTES`] and invalid UTF-8 are sent as [`Ingested::Rejected`] and reading goes
/// on. Transcripts and rejected lines are redacted by `redactor`. Ends at end of input, or
/// early and cleanly when the receiver is gone; fails only on an I/O error of `reader`.
pub async fn read_jsonl<R: AsyncRead + Unpin>(
    reader: R,
    source: &str,
    redactor: Redactor,
    out: &Sender<Ingested>,
) -> io::Result<ReadStats> {
    let mut lines = FramedRead::new(reader, LineCodec::default());
    let mut reader = LineReader::new(source, redactor);
    let mut stats = ReadStats::default();
    let mut number = 0;
    while let Some(line) = lines.next().await {
        number += 1;
        for item in reader.ingest(number, line?, &mut stats) {
            if out.send(item).await.is_err() {
                return Ok(stats);
            }
        }
    }
    Ok(stats)
}

/// Keeps every rejected line as one JSON line (`at`, `position`, `reason`, `raw`) appended to
/// a file, e.g. `<data-dir>/rejected.jsonl`, and logs a warning, so that no bad record is
/// lost silently.
#[derive(Debug)]
pub struct RejectLog {
    file: File,
}

#[derive(Serialize)]
struct RejectLine<'a> {
    at: chrono::DateTime<chrono::Utc>,
    #[serde(flatten)]
    rejected: &'a Rejected,
}

impl RejectLog {
    /// Opens `path` for appending, creating it and its folder when missing.
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { file })
    }

    /// Logs `rejected` and appends it to the file (one short blocking write).
    pub fn record(&self, rejected: &Rejected) -> io::Result<()> {
        tracing::warn!(position = %rejected.position, reason = %rejected.reason, "record rejected");
        let mut line = serde_json::to_vec(&RejectLine {
            at: chrono::Utc::now(),
            rejected,
        })?;
        line.push(b'\n');
        (&self.file).write_all(&line)
    }
}

#[cfg(test)]
mod tests;
