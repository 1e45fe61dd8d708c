//! The pipeline end to end through the command line: `run`, `query`, `replay`,
//! `summaries resend`, `verify`, with the real SQLite store. The escalation-exactness tests use the fixed-latency model
//! stand-in (its labels follow cue words, so where the rules must fire is known); the last
//! test runs a sample call through the real local SLM.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

/// Three calls, interleaved record by record. With the default rules (2 of the last 3
/// customer utterances NEGATIVE; 3 calm ones in a row end an episode):
/// - `angry`: escalates at its third customer utterance, once.
/// - `calm`: never escalates; an angry *agent* line does not count.
/// - `twice`: escalates at c2, calms down (c3..c5 end the episode), escalates again at c7.
fn interleaved() -> Vec<String> {
    let angry = vec![
        started("angry"),
        said("angry", "c1", "CUSTOMER", "My parcel is late again."),
        said("angry", "a1", "AGENT", "Let me check that for you."),
        said(
            "angry",
            "c2",
            "CUSTOMER",
            "This is ridiculous, third time this month.",
        ),
        said(
            "angry",
            "c3",
            "CUSTOMER",
            "Honestly the worst service I have had.",
        ),
        said("angry", "c4", "CUSTOMER", "Unacceptable. I want to cancel."),
        ended("angry"),
    ];
    let calm = vec![
        started("calm"),
        said(
            "calm",
            "c1",
            "CUSTOMER",
            "Hi, I would like to update my address.",
        ),
        said(
            "calm",
            "a1",
            "AGENT",
            "This awful system is slow today, sorry.",
        ),
        said("calm", "c2", "CUSTOMER", "No problem, it is 5 Elm Street."),
        said("calm", "c3", "CUSTOMER", "Thanks, that is great."),
        ended("calm"),
    ];
    let twice = vec![
        said("twice", "c1", "CUSTOMER", "This is terrible."),
        said("twice", "c2", "CUSTOMER", "Absolutely awful."),
        said("twice", "c3", "CUSTOMER", "Okay, I see."),
        said("twice", "c4", "CUSTOMER", "Fine, go on."),
        said("twice", "c5", "CUSTOMER", "Thanks, that helps."),
        said("twice", "c6", "CUSTOMER", "Wait, this is ridiculous again."),
        said("twice", "c7", "CUSTOMER", "Useless, just useless."),
        ended("twice"),
    ];
    let mut lines = Vec::new();
    let longest = angry.len().max(calm.len()).max(twice.len());
    for i in 0..longest {
        for call in [&angry, &calm, &twice] {
            if let Some(line) = call.get(i) {
                lines.push(line.clone());
            }
        }
    }
    lines
}

fn evidence_of_escalations(contact: &Value) -> Vec<Vec<String>> {
    kinds(contact, "EscalationRaised")
        .iter()
        .map(|e| {
            e["evidence"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn an_interleaved_stream_escalates_exactly_where_the_rules_say_with_one_summary_per_call() {
    let ws = Workspace::stand_in(0);
    let mut lines = interleaved();
    // Re-delivery: a record sent twice is stored once.
    lines.insert(
        5,
        said("angry", "c1", "CUSTOMER", "My parcel is late again."),
    );
    let input = ws.write_input("calls.jsonl", &lines);
    ws.run(&input);

    let angry = ws.contact("angry");
    assert_eq!(evidence_of_escalations(&angry), [vec!["c2", "c3"]]);
    let received = kinds(&angry, "UtteranceReceived");
    assert_eq!(received.len(), 5, "c1 stored once");

    let calm = ws.contact("calm");
    assert!(evidence_of_escalations(&calm).is_empty());

    let twice = ws.contact("twice");
    assert_eq!(
        evidence_of_escalations(&twice),
        [vec!["c1", "c2"], vec!["c6", "c7"]]
    );
    assert_eq!(kinds(&twice, "EscalationCleared").len(), 1);
    assert!(kinds(&twice, "ContactStarted")[0]["implicit"] == true);

    for contact in [&angry, &calm, &twice] {
        let summaries = contact["summaries"].as_array().unwrap();
        assert_eq!(summaries.len(), 1, "{contact}");
        assert_eq!(summaries[0]["version"], 1);
        let id = contact["contactId"].as_str().unwrap();
        assert!(ws.path(&format!("data/summaries/{id}/v1.json")).exists());
        assert!(ws.path(&format!("data/summaries/{id}/v1.md")).exists());
    }
    // Every escalation set the configured attribute, once.
    let attributes = std::fs::read_to_string(ws.path("data/attributes.jsonl")).unwrap();
    assert_eq!(attributes.lines().count(), 3, "{attributes}");
    assert!(attributes.contains(r#""RealTimeSentiment":"NEGATIVE""#));
    assert_eq!(kinds(&twice, "AttributesUpdated").len(), 2);

    let escalated = ws.contacts(&["--escalated"]);
    let mut ids: Vec<&str> = escalated
        .iter()
        .map(|c| c["contactId"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["angry", "twice"]);
    for key in [
        "contactId",
        "startedAt",
        "endedAt",
        "escalated",
        "sentiment",
        "summaryVersion",
    ] {
        assert!(escalated[0].get(key).is_some(), "missing {key}");
    }
    // Running the same input again changes nothing.
    ws.run(&input);
    assert_eq!(ws.contact("twice")["events"], twice["events"]);
}

#[test]
fn bad_records_are_reported_with_their_line_and_lose_nothing_around_them() {
    let ws = Workspace::stand_in(0);
    let lines = vec![
        started("n"),
        said("n", "c1", "CUSTOMER", "First."),
        "{not json".to_string(),
        r#"{"type":"HEARTBEAT","contactId":"n"}"#.to_string(),
        r#"{"type":"SEGMENT","transcript":"no contact"}"#.to_string(),
        said("n", "c2", "CUSTOMER", "Second."),
        ended("n"),
        said("n", "c3", "CUSTOMER", "After the end."),
    ];
    let input = ws.write_input("noisy.jsonl", &lines);
    ws.run(&input);
    let contact = ws.contact("n");
    let texts: Vec<_> = kinds(&contact, "UtteranceReceived")
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["First.", "Second."]);
    let rejected = std::fs::read_to_string(ws.path("data/rejected.jsonl")).unwrap();
    let lines: Vec<Value> = rejected
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut at: Vec<u64> = lines
        .iter()
        .map(|r| r["position"]["line"].as_u64().unwrap())
        .collect();
    at.sort();
    assert_eq!(at, [3, 4, 5, 8], "{rejected}");
    assert!(rejected.contains("HEARTBEAT"));
    assert!(rejected.contains("after its end"));
}

#[test]
fn replay_adds_version_two_and_leaves_version_one_alone() {
    let ws = Workspace::stand_in(0);
    let input = ws.write_input("calls.jsonl", &interleaved());
    ws.run(&input);
    let v1 = ws.path("data/summaries/angry/v1.json");
    let v1_bytes = std::fs::read(&v1).unwrap();

    let dry = ws.ok(&["replay", "angry", "--dry-run"]);
    assert!(!dry.is_empty());
    assert_eq!(
        ws.contact("angry")["summaries"].as_array().unwrap().len(),
        1
    );

    ws.ok(&["replay", "angry"]);
    let summaries = ws.contact("angry")["summaries"].clone();
    let versions: Vec<_> = summaries
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(std::fs::read(&v1).unwrap(), v1_bytes);
    assert!(ws.path("data/summaries/angry/v2.json").exists());
    let listed = ws.contacts(&[]);
    let angry = listed.iter().find(|c| c["contactId"] == "angry").unwrap();
    assert_eq!(angry["summaryVersion"], 2);
}

#[test]
fn summaries_lost_from_the_store_are_resent_from_the_log() {
    let ws = Workspace::stand_in(0);
    let input = ws.write_input("calls.jsonl", &interleaved());
    ws.run(&input);
    let calm = ws.path("data/summaries/calm/v1.json");
    let bytes = std::fs::read(&calm).unwrap();
    std::fs::remove_dir_all(ws.path("data/summaries/calm")).unwrap();

    let out = ws.ok(&["summaries", "resend", "--all", "--missing"]);
    assert!(out.contains("calm  v1  saved"), "{out}");
    assert!(out.contains("angry  skipped: v1 already saved"), "{out}");
    assert_eq!(
        std::fs::read(&calm).unwrap(),
        bytes,
        "the same summary, byte for byte"
    );
    assert_eq!(
        ws.contact("calm")["summaries"].as_array().unwrap().len(),
        1,
        "nothing appended"
    );
    let out = ws.ok(&["summaries", "resend", "twice"]);
    assert!(out.contains("twice  v1  saved"), "{out}");
}

#[test]
fn verify_passes_a_clean_log_and_catches_a_modified_row() {
    let ws = Workspace::stand_in(0);
    let input = ws.write_input("calls.jsonl", &interleaved());
    ws.run(&input);
    ws.ok(&["verify"]);

    let changed = ws.tamper(
        "UPDATE events SET payload = replace(payload, 'worst', 'best') \
         WHERE contact_id = 'angry' AND kind = 'UtteranceReceived' AND payload LIKE '%worst%'",
    );
    assert_eq!(changed, 1);

    let report = ws.fails(&["verify"]);
    assert!(report.contains("angry"), "{report}");
    let out = ws.command(&["verify", "calm"]).output().unwrap();
    assert!(out.status.success(), "other contacts still verify");
}

#[test]
fn verify_catches_events_deleted_from_a_contacts_end_against_the_anchor() {
    let ws = Workspace::stand_in(0);
    let input = ws.write_input("calls.jsonl", &interleaved());
    ws.run(&input);
    let out = ws.ok(&["verify"]);
    assert!(
        out.contains("anchor") && out.contains("3 contacts"),
        "{out}"
    );

    let deleted = ws.tamper(
        "DELETE FROM events WHERE contact_id = 'angry' \
         AND seq = (SELECT max(seq) FROM events WHERE contact_id = 'angry')",
    );
    assert_eq!(deleted, 1);

    let report = ws.fails(&["verify"]);
    assert!(report.contains("angry#"), "{report}");
    assert!(report.contains("deleted from its end"), "{report}");
    // Without the anchor, the chain alone cannot tell.
    let elsewhere = ws.path("no-anchor.jsonl");
    let out = ws
        .command(&["verify", "--anchor", elsewhere.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn a_second_worker_on_the_same_data_directory_is_refused_naming_the_first() {
    let ws = Workspace::stand_in(0);
    let (_, mut first) = ws.serve();
    let input = ws.write_input("calls.jsonl", &interleaved());
    let out = ws
        .command(&["run", "--input", input.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("in use by callpulse run")
            && stderr.contains(&format!("pid {}", first.id())),
        "{stderr}"
    );
    let out = ws.command(&["projections", "rebuild"]).output().unwrap();
    assert!(!out.status.success());
    // Reading stays possible while the worker runs.
    ws.ok(&["query", "contacts", "--format", "json"]);
    first.kill().unwrap();
    first.wait().unwrap();
    // A killed holder lets go: the next worker starts.
    ws.run(&input);
}

#[test]
fn acknowledged_http_records_survive_a_kill_right_after_the_answer() {
    let ws = Workspace::stand_in(0);
    let (addr, mut child) = ws.serve();
    let body: Vec<String> = (0..2_000)
        .map(|i| {
            format!(
                r#"{{"contactId":"bulk-{}","transcript":"utterance {i}","isPartial":false}}"#,
                i % 50
            )
        })
        .collect();
    let reply = post(&addr, "/records", &body.join("\n")).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#""appended":2000"#), "{reply}");
    child.kill().unwrap();
    child.wait().unwrap();

    let db = rusqlite::Connection::open(ws.path("data/callpulse.db")).unwrap();
    let kept: i64 = db
        .query_row(
            "SELECT count(*) FROM events WHERE kind = 'UtteranceReceived'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(kept, 2_000);
}

#[test]
fn id_less_segments_of_two_files_for_one_contact_are_all_kept_and_a_rerun_adds_nothing() {
    let ws = Workspace::stand_in(0);
    let minimal =
        |text: &str| format!(r#"{{"contactId":"m","transcript":"{text}","isPartial":false}}"#);
    let first = ws.write_input(
        "a.jsonl",
        &[minimal("hello"), minimal("my card was charged twice")],
    );
    let second = ws.write_input("b.jsonl", &[minimal("are you there?"), minimal("hello")]);
    ws.run(&first);
    ws.run(&second);
    ws.run(&first);
    let texts: Vec<String> = kinds(&ws.contact("m"), "UtteranceReceived")
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        texts,
        ["hello", "my card was charged twice", "are you there?"],
        "the second file's new utterance is kept; its \"hello\" repeats the first file's"
    );
}

#[test]
fn a_killed_worker_rerun_on_the_same_input_loses_and_duplicates_nothing() {
    let ws = Workspace::stand_in(40);
    let lines = interleaved();
    let input = ws.write_input("calls.jsonl", &lines);

    // Feed half the stream through stdin, let it get going, then SIGKILL it.
    let mut child = ws
        .command(&["run", "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in &lines[..lines.len() * 2 / 3] {
        writeln!(stdin, "{line}").unwrap();
    }
    stdin.flush().unwrap();
    let db = ws.path("data/callpulse.db");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !events_in(&db, "EscalationRaised") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);

    ws.run(&input);
    for (id, escalations) in [("angry", 1), ("calm", 0), ("twice", 2)] {
        let contact = ws.contact(id);
        assert_eq!(
            kinds(&contact, "EscalationRaised").len(),
            escalations,
            "{id}"
        );
        assert_eq!(contact["summaries"].as_array().unwrap().len(), 1, "{id}");
        let mut segments: Vec<_> = kinds(&contact, "UtteranceReceived")
            .iter()
            .map(|e| e["segmentId"].as_str().unwrap().to_string())
            .collect();
        let n = segments.len();
        segments.dedup();
        assert_eq!(segments.len(), n, "{id}: no utterance twice");
        let expected = lines
            .iter()
            .filter(|l| l.contains(&format!(r#""contactId":"{id}""#)) && l.contains("SEGMENT"))
            .count();
        assert_eq!(n, expected, "{id}: no utterance lost");
    }
    ws.ok(&["verify"]);
}

fn events_in(db: &Path, kind: &str) -> bool {
    let Ok(conn) = rusqlite::Connection::open(db) else {
        return false;
    };
    conn.query_row(
        "SELECT count(*) FROM events WHERE kind = ?1",
        [kind],
        |row| row.get::<_, i64>(0),
    )
    .is_ok_and(|n| n > 0)
}

#[test]
fn http_records_are_all_kept_through_a_graceful_shutdown() {
    let ws = Workspace::stand_in(20);
    let (addr, mut child) = ws.serve();
    let reply = post(&addr, "/records", &interleaved().join("\n")).unwrap();
    assert!(reply.starts_with("HTTP/1.1 20"), "{reply}");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());

    for (id, utterances) in [("angry", 5), ("calm", 4), ("twice", 7)] {
        let contact = ws.contact(id);
        assert_eq!(
            kinds(&contact, "UtteranceReceived").len(),
            utterances,
            "{id}"
        );
    }
}

#[test]
fn a_sample_call_through_the_real_local_model_escalates_and_is_summarised() {
    let ws = Workspace::with_config("[pipeline]\nprojector_interval_ms = 50\n");
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/calls");
    for sample in ["angry-refund.jsonl", "calm-billing.jsonl"] {
        ws.run(&samples.join(sample));
    }
    let angry = ws.contact("angry-refund");
    assert!(!kinds(&angry, "EscalationRaised").is_empty(), "{angry}");
    let calm = ws.contact("calm-billing");
    assert!(kinds(&calm, "EscalationRaised").is_empty(), "{calm}");
    for contact in [&angry, &calm] {
        let judged = kinds(contact, "SentimentAssessed");
        assert!(!judged.is_empty());
        let model = judged[0]["model"].as_str().unwrap();
        assert!(
            model.contains("135M") && !model.contains("stand-in"),
            "{model}"
        );
        let summary = &contact["summaries"][0];
        assert!(
            summary["model"].as_str().unwrap().contains("Qwen"),
            "{summary}"
        );
        assert!(!summary["text"].as_str().unwrap().is_empty(), "{summary}");
    }
}

#[test]
fn the_fault_harness_kills_the_worker_again_and_again_and_finds_nothing_lost_or_doubled() {
    let ws = Workspace::stand_in(0);
    let out = ws
        .command(&[
            "bench",
            "faults",
            "--calls",
            "6",
            "--kills",
            "6",
            "--max-life-ms",
            "700",
        ])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["kills"], 6, "{report:#}");
    assert_eq!(report["records"], 60);
    for invariant in [
        "utterances_lost",
        "utterances_duplicated",
        "judged_twice",
        "never_judged",
        "escalations_differing",
        "attribute_updates_duplicated",
        "attribute_updates_missing",
        "summaries_not_once",
        "summaries_unsaved",
    ] {
        assert_eq!(report[invariant], 0, "{invariant}: {report:#}");
    }
}

#[test]
fn the_fleet_harness_kills_one_worker_adds_another_and_splits_a_shard_losing_and_doubling_nothing()
{
    let ws = Workspace::stand_in(0);
    let out = ws
        .command(&[
            "bench",
            "fleet",
            "--calls",
            "24",
            "--utterances",
            "4",
            "--put-secs",
            "12",
            "--throughput-records",
            "500",
        ])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    // What was redone, for the test's output: only work in flight on the killed worker.
    println!("{report:#}");
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["records"], 24 * 6);
    assert_eq!(report["workers_started"], 4);
    assert!(
        report["killed_worker_leases"].as_u64() > Some(0),
        "{report:#}"
    );
    assert!(
        report["failover_ms"].as_u64() > Some(0),
        "the takeover was seen: {report:#}"
    );
    assert!(report["worker_records_per_second"].as_u64() > Some(0));
    for invariant in [
        "utterances_lost",
        "utterances_duplicated",
        "judged_twice",
        "never_judged",
        "escalations_wrong",
        "connect_updates_duplicated",
        "connect_updates_missing",
        "summaries_not_once",
        "summaries_unsaved",
        "model_calls_repeated_elsewhere",
    ] {
        assert_eq!(report[invariant], 0, "{invariant}: {report:#}");
    }
}
