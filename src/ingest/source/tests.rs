use super::*;
use crate::redaction::Redactor;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

#[test]
fn a_kinesis_record_gets_stable_ids_and_positions() {
    let data = concat!(
        r#"{"type":"SEGMENT","contactId":"k","participant":"CUSTOMER","transcript":"one","isPartial":false}"#,
        "\nnot json\n",
        r#"{"type":"SEGMENT","contactId":"k","participant":"AGENT","transcript":"two","isPartial":false}"#,
    );
    let mut reader = LineReader::new("kinesis:calls/shardId-1", Redactor::default());
    let mut stats = ReadStats::default();
    let read = |reader: &mut LineReader, stats: &mut ReadStats| {
        reader.ingest_record("4960", data.as_bytes(), stats)
    };
    let items = read(&mut reader, &mut stats);
    assert_eq!(items.len(), 3);
    let ids: Vec<&str> = items
        .iter()
        .filter_map(|i| match i {
            Ingested::Record(r) => Some(r.source_id.as_str()),
            Ingested::Rejected(_) => None,
        })
        .collect();
    assert_eq!(ids, ["k-4960-1", "k-4960-2"]);
    let Ingested::Rejected(bad) = &items[1] else {
        panic!("{:?}", items[1])
    };
    assert_eq!(bad.position.to_string(), "kinesis:calls/shardId-1@4960:2");
    assert_eq!(bad.raw, "not json");
    // Read again (after a restart): the same ids, so the log stores them once.
    assert_eq!(read(&mut reader, &mut stats), items);
    assert_eq!((stats.records, stats.rejected), (4, 2));
}

/// Reads `input`, arriving in pieces of at most `piece` bytes, through a channel of
/// capacity 2 (so backpressure is exercised).
async fn read_in_pieces(input: &[u8], piece: usize) -> (Vec<Ingested>, ReadStats) {
    let (tx, mut rx) = mpsc::channel(2);
    let (mut writer, reader) = tokio::io::duplex(piece);
    let input = input.to_vec();
    tokio::spawn(async move { writer.write_all(&input).await });
    let reading =
        tokio::spawn(
            async move { read_jsonl(reader, "calls.jsonl", Redactor::default(), &tx).await },
        );
    let mut items = Vec::new();
    while let Some(item) = rx.recv().await {
        items.push(item);
    }
    (items, reading.await.unwrap().unwrap())
}

async fn read_all(input: &[u8]) -> (Vec<Ingested>, ReadStats) {
    read_in_pieces(input, 64 * 1024).await
}

/// `(line, source_id, transcript)` of records, `(line, reason)` of rejections.
fn summary(items: &[Ingested]) -> Vec<(u64, String, String)> {
    items
        .iter()
        .map(|item| match item {
            Ingested::Record(r) => {
                assert_eq!(r.position.source, "calls.jsonl");
                let text = match &r.record {
                    Record::Segment(s) => {
                        let id = s.segment_id.as_deref().unwrap();
                        assert!(r.source_id == id || r.source_id == format!("seg:{id}"));
                        s.transcript.clone()
                    }
                    other => other.contact_id().to_string(),
                };
                (r.position.line, r.source_id.clone(), text)
            }
            Ingested::Rejected(r) => (r.position.line, "REJECTED".into(), r.reason.clone()),
        })
        .collect()
}

fn mixed_stream() -> Vec<u8> {
    let mut input = Vec::new();
    let mut line = |l: &[u8]| {
        input.extend_from_slice(l);
        input.push(b'\n');
    };
    line(br#"{"type":"STARTED","contactId":"c-1"}"#); // 1
    line(br#"{"contactId":"c-1","transcript":"hello","isPartial":false}"#); // 2
    line(br#"{"contactId":"c-1","transcript":"I ha","isPartial":true}"#); // 3
    line(b"not json at all"); // 4
    line(b""); // 5
    line(br#"{"contactId":"c-2","transcript":"other call"}"#); // 6
    line(
        format!(
            r#"{{"contactId":"c-1","transcript":"{}"}}"#,
            "x".repeat(MAX_RECORD_BYTES)
        )
        .as_bytes(),
    ); // 7
    line(br#"{"contactId":"c-1","transcript":"I have waited","isPartial":false}"#); // 8
    line(b"{\"contactId\":\"c-1\",\"transcript\":\"caf\xe9\"}"); // 9
    line(br#"{"type":"SEGMENT","contactId":"c-1","segmentId":"s-9","participant":"AGENT","transcript":"sorry"}"#); // 10
    line(b"   \r"); // 11
    line(br#"{"type":"SEGMENT","transcript":"no contact"}"#); // 12
    line(br#"{"type":"HOLD","contactId":"c-1"}"#); // 13
    line(br#"{"ContactId":"c-1","EventType":"SEGMENTS","Segments":[{"Utterance":{"Id":"u","ParticipantRole":"CUSTOMER","PartialContent":"so"}},{"Transcript":{"Id":"t-1","ParticipantRole":"CUSTOMER","Content":"so slow"}}]}"#); // 14
    line(br#"{"contactId":"c-1","transcript":"third","isPartial":false}"#); // 15
    input.extend_from_slice(br#"{"type":"ENDED","contactId":"c-1"}"#); // 16, no final newline
    input
}

/// The key the reader gives the `occurrence`-th id-less `segment` of an input.
fn content_key(segment: &Segment, occurrence: u64) -> String {
    format!("m-{}-{occurrence}", content_digest(segment))
}

/// The key of an id-less segment of `contact` saying `text` (no speaker, no offsets),
/// said for the `n`-th time.
fn key(contact: &str, text: &str, n: u64) -> String {
    let segment = Segment {
        contact_id: contact.into(),
        segment_id: None,
        participant: None,
        transcript: text.into(),
        is_partial: false,
        begin_offset_millis: None,
        end_offset_millis: None,
        redactions: Default::default(),
    };
    content_key(&segment, n)
}

#[test]
fn content_keys_differ_by_contact_speaker_text_offsets_and_occurrence() {
    let base = Segment {
        contact_id: "c".into(),
        segment_id: None,
        participant: Some("CUSTOMER".into()),
        transcript: "yes".into(),
        is_partial: false,
        begin_offset_millis: Some(10),
        end_offset_millis: Some(20),
        redactions: Default::default(),
    };
    let variants = [
        Segment {
            contact_id: "d".into(),
            ..base.clone()
        },
        Segment {
            participant: Some("AGENT".into()),
            ..base.clone()
        },
        Segment {
            participant: None,
            ..base.clone()
        },
        Segment {
            transcript: "yes!".into(),
            ..base.clone()
        },
        Segment {
            begin_offset_millis: None,
            ..base.clone()
        },
        Segment {
            end_offset_millis: Some(21),
            ..base.clone()
        },
    ];
    let mut keys: Vec<String> = variants.iter().map(|v| content_key(v, 1)).collect();
    keys.push(content_key(&base, 1));
    keys.push(content_key(&base, 2));
    let distinct: std::collections::HashSet<_> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "{keys:?}");
    assert!(
        keys[6].starts_with("m-") && keys[6].ends_with("-1"),
        "{}",
        keys[6]
    );
    assert_eq!(content_key(&base, 1), keys[6], "stable");
}

#[tokio::test]
async fn every_line_arrives_in_order_with_its_position_and_source_id() {
    let (items, stats) = read_all(&mixed_stream()).await;
    let s = |l: u64, id: &str, t: &str| (l, id.to_string(), t.to_string());
    let too_large = format!("record of more than {MAX_RECORD_BYTES} bytes");
    let expected = vec![
        s(1, "started", "c-1"),
        s(2, &key("c-1", "hello", 1), "hello"),
        s(
            4,
            "REJECTED",
            "not a valid record: expected ident at line 1 column 2",
        ),
        s(6, &key("c-2", "other call", 1), "other call"),
        s(7, "REJECTED", &too_large),
        s(8, &key("c-1", "I have waited", 1), "I have waited"),
        s(9, "REJECTED", "record is not valid UTF-8"),
        s(10, "seg:s-9", "sorry"),
        s(12, "REJECTED", "missing field contactId"),
        s(13, "REJECTED", "unknown record type \"HOLD\""),
        s(14, "seg:t-1", "so slow"),
        s(15, &key("c-1", "third", 1), "third"),
        s(16, "ended", "c-1"),
    ];
    assert_eq!(summary(&items), expected);
    assert_eq!(
        stats,
        ReadStats {
            records: 8,
            rejected: 5,
            partials_skipped: 2
        }
    );
    let Ingested::Rejected(oversize) = &items[4] else {
        panic!()
    };
    assert_eq!(oversize.raw.len(), RAW_BYTES);
    assert!(
        oversize
            .raw
            .starts_with(r#"{"contactId":"c-1","transcript":"xxx"#)
    );
    let Ingested::Rejected(latin1) = &items[6] else {
        panic!()
    };
    assert!(latin1.raw.ends_with("caf\u{fffd}\"}"));

    let (again, _) = read_in_pieces(&mixed_stream(), 7).await;
    assert_eq!(
        again, items,
        "re-reading gives identical items and source ids"
    );
}

#[tokio::test]
async fn the_same_words_twice_are_two_keys_and_counts_restart_after_ended() {
    let call = br#"{"contactId":"c","transcript":"a"}
{"contactId":"c","transcript":"a"}
{"contactId":"c","transcript":"b"}
{"type":"ENDED","contactId":"c"}
"#;
    let (items, _) = read_all(&call.repeat(2)).await;
    let ids: Vec<_> = summary(&items).into_iter().map(|(_, id, _)| id).collect();
    let (a1, a2, b1) = (key("c", "a", 1), key("c", "a", 2), key("c", "b", 1));
    let once = [a1, a2, b1, "ended".to_string()];
    assert_eq!(ids, [once.clone(), once].concat());
}

#[tokio::test]
async fn an_oversize_last_line_without_newline_is_rejected_and_reading_ends() {
    let mut input = br#"{"type":"ENDED","contactId":"c"}"#.to_vec();
    input.push(b'\n');
    input.extend(std::iter::repeat_n(b'y', MAX_RECORD_BYTES * 3));
    let (items, stats) = read_all(&input).await;
    assert_eq!(items.len(), 2);
    assert!(matches!(&items[1], Ingested::Rejected(r) if r.position.line == 2));
    assert_eq!((stats.records, stats.rejected), (1, 1));
}

#[tokio::test]
async fn a_closed_receiver_ends_reading_cleanly() {
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    let stats = read_jsonl(&mixed_stream()[..], "calls.jsonl", Redactor::default(), &tx)
        .await
        .unwrap();
    assert_eq!(stats.records, 1, "stops at the first send");
}

#[test]
fn reject_log_appends_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("rejected.jsonl");
    let rejected = Rejected {
        position: Position {
            source: "calls.jsonl".into(),
            line: 4,
        },
        reason: "not a valid record".into(),
        raw: "not json".into(),
    };
    RejectLog::open(&path).unwrap().record(&rejected).unwrap();
    RejectLog::open(&path).unwrap().record(&rejected).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["position"]["line"], 4);
    assert_eq!(lines[1]["position"]["source"], "calls.jsonl");
    assert_eq!(lines[1]["reason"], "not a valid record");
    assert_eq!(lines[1]["raw"], "not json");
    assert!(lines[1]["at"].is_string());
}
