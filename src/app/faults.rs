//! `callpulse bench faults`: the fault-injection harness. A mixed stream of calls is fed to
//! `callpulse run` (a child process on SQLite), which is SIGKILLed at random points again
//! and again, then run to the end; the same stream goes once through a worker nobody kills.
//! The invariants are then checked from the two logs and their sinks: nothing accepted is
//! lost, no utterance is stored or judged twice, every call escalates as often as the
//! undisturbed run did, each escalation reaches the attribute sink once, and each summary is
//! generated and saved once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use super::DataDir;
use crate::events::Event;
use crate::sinks::summaries::{SummaryFolder, SummarySink};
use crate::store::{EventStore, SeqRange};

/// What to run.
#[derive(Debug, Clone)]
pub struct FaultOptions {
    /// Calls in the stream.
    pub calls: usize,
    /// Customer and agent utterances per call.
    pub utterances: usize,
    /// SIGKILLs before the run that is let finish.
    pub kills: usize,
    /// Longest a killed run lives, ms (each lives a random time up to it).
    pub max_life_ms: u64,
    /// Seed of the kill times.
    pub seed: u64,
}

/// What the harness found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FaultReport {
    /// Calls in the stream.
    pub calls: usize,
    /// Records in the stream.
    pub records: usize,
    /// SIGKILLs delivered while the worker ran.
    pub kills: usize,
    /// Seconds from the first start to the end of the last run.
    pub seconds: u64,
    /// Utterances of the stream missing from the log.
    pub utterances_lost: usize,
    /// Utterances stored more than once.
    pub utterances_duplicated: usize,
    /// Utterances judged more than once.
    pub judged_twice: usize,
    /// Customer utterances neither judged nor recorded as skipped.
    pub never_judged: usize,
    /// Calls whose number of escalations differs from the undisturbed run's.
    pub escalations_differing: usize,
    /// Attribute updates the sink received beyond one per escalation and clearance.
    pub attribute_updates_duplicated: usize,
    /// Attribute updates owed that the sink never received.
    pub attribute_updates_missing: usize,
    /// Calls without exactly one summary version in the log.
    pub summaries_not_once: usize,
    /// Summary versions in the log that the summary folder lacks.
    pub summaries_unsaved: usize,
    /// Each call that broke an invariant, with what its log and its sinks show.
    pub broken_calls: Vec<String>,
}

impl FaultReport {
    /// How many times the invariants were broken, in all.
    fn breaks(&self) -> usize {
        self.utterances_lost
            + self.utterances_duplicated
            + self.judged_twice
            + self.never_judged
            + self.escalations_differing
            + self.attribute_updates_duplicated
            + self.attribute_updates_missing
            + self.summaries_not_once
            + self.summaries_unsaved
    }

    /// Whether every invariant held.
    pub fn is_clean(&self) -> bool {
        self.breaks() == 0
    }
}

/// The stand-in model's cue words make these customer lines NEGATIVE.
const ANGRY: [&str; 3] = [
    "This is ridiculous, third time this month.",
    "Honestly the worst service I have had.",
    "Unacceptable. I want to cancel.",
];
const CALM: [&str; 3] = [
    "I would like to update my address.",
    "Thanks, that works for me.",
    "Could you check my last bill?",
];

/// The stream: every call's STARTED, utterances and ENDED, interleaved record by record;
/// every other call angry. Each utterance ends with its tag, `(ref <contact> u<n>)`, so
/// that a model stub can tell which one it is asked about.
pub(super) fn stream(calls: usize, utterances: usize) -> Vec<String> {
    let call = |c: usize| -> Vec<String> {
        let id = format!("f-{c}");
        let mut lines = vec![format!(
            r#"{{"type":"STARTED","contactId":"{id}","instanceId":"i-1"}}"#
        )];
        for u in 0..utterances {
            let (who, text) = match (u % 2, c % 2) {
                (1, _) => ("AGENT", "Let me check that for you."),
                (_, 0) => ("CUSTOMER", ANGRY[u / 2 % ANGRY.len()]),
                _ => ("CUSTOMER", CALM[u / 2 % CALM.len()]),
            };
            lines.push(format!(
                r#"{{"type":"SEGMENT","contactId":"{id}","segmentId":"{id}-u{u}","participant":"{who}","transcript":"{text} (ref {id} u{u})","isPartial":false}}"#
            ));
        }
        lines.push(format!(r#"{{"type":"ENDED","contactId":"{id}"}}"#));
        lines
    };
    let per_call: Vec<Vec<String>> = (0..calls).map(call).collect();
    let longest = per_call.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| per_call.iter().filter_map(move |c| c.get(i).cloned()))
        .collect()
}

/// A worker: `callpulse run` on `input` over `data`, with the stand-in model.
fn worker(exe: &Path, dir: &Path, data: &Path, input: &Path) -> Command {
    let mut command = Command::new(exe);
    command
        .arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .arg("run")
        .arg("--input")
        .arg(input)
        .env("CALLPULSE_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Runs the harness with the `callpulse` binary `exe`, in a fresh temporary directory.
pub async fn run(exe: &Path, options: &FaultOptions) -> anyhow::Result<FaultReport> {
    let dir = tempfile::Builder::new()
        .prefix("callpulse-faults-")
        .tempdir()?;
    std::fs::write(
        dir.path().join("config.toml"),
        // A slow model (100 ms a call, two at a time), so that kills land while judgements,
        // escalations and summaries are owed and in flight, not only while records are read.
        "[models]\nbackend = \"stand-in\"\nstand_in_latency_ms = 100\n\
         [gateway]\nsentiment_deadline_ms = 3600000\nmax_coalesced = 1\n\
         [gateway.limits]\nconcurrency = 2\n\
         [attributes]\nrequests_per_second = 0\n\
         [pipeline]\nprojector_interval_ms = 50\nidle_timeout_secs = 3600\n",
    )?;
    let lines = stream(options.calls, options.utterances);
    let input = dir.path().join("calls.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n")?;
    let (killed, calm) = (dir.path().join("killed"), dir.path().join("undisturbed"));

    let status = worker(exe, dir.path(), &calm, &input)
        .status()
        .context("starting the undisturbed worker")?;
    if !status.success() {
        bail!("the undisturbed worker failed: {status}");
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let started = Instant::now();
    let mut kills = 0;
    while kills < options.kills {
        let mut child = worker(exe, dir.path(), &killed, &input).spawn()?;
        let life = rng.random_range(10..=options.max_life_ms.max(10));
        tokio::time::sleep(Duration::from_millis(life)).await;
        if child.try_wait()?.is_none() {
            child.kill()?;
            kills += 1;
        }
        child.wait()?;
    }
    let status = worker(exe, dir.path(), &killed, &input).status()?;
    if !status.success() {
        bail!("the last worker, let finish, failed: {status}");
    }
    let mut report = compare(&DataDir::open(&killed)?, &DataDir::open(&calm)?, &lines).await?;
    report.kills = kills;
    report.seconds = started.elapsed().as_secs();
    report.calls = options.calls;
    Ok(report)
}

/// One call's log as the invariants see it.
#[derive(Default)]
pub(super) struct CallLog {
    /// Segment ids of the utterances stored, in order.
    pub utterances: Vec<String>,
    /// Segment ids judged (each judgement's own and those coalesced into it).
    pub judged: Vec<String>,
    /// Segment ids recorded as skipped.
    pub skipped: HashSet<String>,
    /// Escalations raised.
    pub escalations: usize,
    /// Escalations and clearances that set contact attributes.
    pub attribute_sets: usize,
    /// Summary versions generated.
    pub summaries: Vec<u32>,
}

/// What one call's log shows against the segments the stream sent for it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct CallChecks {
    /// Segments missing from the log.
    pub lost: usize,
    /// Utterances stored more than once.
    pub duplicated: usize,
    /// Utterances judged more than once.
    pub judged_twice: usize,
    /// Utterances neither judged nor recorded as skipped.
    pub never_judged: usize,
}

impl CallLog {
    /// Checks the log against `segments`, the ids the stream sent for the call.
    pub(super) fn check(&self, segments: &[String]) -> CallChecks {
        let stored: HashSet<&String> = self.utterances.iter().collect();
        let judged: HashSet<&String> = self.judged.iter().collect();
        CallChecks {
            lost: segments.iter().filter(|s| !stored.contains(s)).count(),
            duplicated: self.utterances.len() - stored.len(),
            judged_twice: self.judged.len() - judged.len(),
            never_judged: segments
                .iter()
                .filter(|s| !judged.contains(s) && !self.skipped.contains(*s))
                .count(),
        }
    }
}

/// The segment ids the stream sends for each call.
pub(super) fn segments_per_call(lines: &[String]) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line)?;
        let contact = value["contactId"].as_str().unwrap_or_default().to_string();
        let entry = expected.entry(contact).or_default();
        if let Some(segment) = value["segmentId"].as_str() {
            entry.push(segment.to_string());
        }
    }
    Ok(expected)
}

/// One call's log, read from `store`.
pub(super) async fn call_log(store: &dyn EventStore, contact: &str) -> anyhow::Result<CallLog> {
    let mut log = CallLog::default();
    for stored in store.read(contact, SeqRange::all()).await? {
        match stored.decode()? {
            Event::UtteranceReceived(u) => log.utterances.push(u.segment_id),
            Event::SentimentAssessed(j) => {
                log.judged.extend(j.coalesced);
                log.judged.push(j.segment_id);
            }
            Event::ModelCallSkipped(s) => log.skipped.extend(s.segment_ids),
            Event::EscalationRaised(e) => {
                log.escalations += 1;
                log.attribute_sets += usize::from(!e.attributes.is_empty());
            }
            Event::EscalationCleared(e) => {
                log.attribute_sets += usize::from(!e.attributes.is_empty());
            }
            Event::SummaryGenerated(s) => log.summaries.push(s.version),
            _ => {}
        }
    }
    Ok(log)
}

/// Attribute updates the log sink received, per contact.
fn sink_updates(data: &DataDir) -> anyhow::Result<HashMap<String, usize>> {
    let mut updates = HashMap::new();
    let text = std::fs::read_to_string(data.attribute_log()).unwrap_or_default();
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line)?;
        let contact = value["contactId"].as_str().unwrap_or_default().to_string();
        *updates.entry(contact).or_default() += 1;
    }
    Ok(updates)
}

/// Checks the killed worker's log and sinks against the stream and the undisturbed run.
async fn compare(
    killed: &DataDir,
    calm: &DataDir,
    lines: &[String],
) -> anyhow::Result<FaultReport> {
    let expected = segments_per_call(lines)?;
    let (killed_store, _) = killed.stores()?;
    let (calm_store, _) = calm.stores()?;
    let updates = sink_updates(killed)?;
    let folder = SummaryFolder::new(killed.summaries());
    let mut report = FaultReport {
        records: lines.len(),
        ..FaultReport::default()
    };
    for (contact, segments) in &expected {
        let breaks_before = report.breaks();
        let log = call_log(killed_store.as_ref(), contact).await?;
        let reference = call_log(calm_store.as_ref(), contact).await?;
        let checks = log.check(segments);
        report.utterances_lost += checks.lost;
        report.utterances_duplicated += checks.duplicated;
        report.judged_twice += checks.judged_twice;
        report.never_judged += checks.never_judged;
        report.escalations_differing += usize::from(log.escalations != reference.escalations);
        let received = updates.get(contact).copied().unwrap_or(0);
        report.attribute_updates_duplicated += received.saturating_sub(log.attribute_sets);
        report.attribute_updates_missing += log.attribute_sets.saturating_sub(received);
        report.summaries_not_once += usize::from(log.summaries != [1]);
        for version in &log.summaries {
            report.summaries_unsaved += usize::from(!folder.has(contact, *version).await);
        }
        if report.breaks() > breaks_before {
            report.broken_calls.push(format!(
                "{contact}: {checks:?}, escalations {} (undisturbed {}), attribute sets {}, updates received {received}, summaries {:?}",
                log.escalations, reference.escalations, log.attribute_sets, log.summaries,
            ));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::query::tests::{at, call_log};
    use crate::events::Participant;

    #[tokio::test]
    async fn the_checks_catch_a_lost_utterance_a_missing_update_and_an_unsaved_summary() {
        let lines: Vec<String> = [
            r#"{"type":"STARTED","contactId":"f-0"}"#,
            r#"{"type":"SEGMENT","contactId":"f-0","segmentId":"s1","participant":"CUSTOMER","transcript":"a"}"#,
            r#"{"type":"SEGMENT","contactId":"f-0","segmentId":"s2","participant":"CUSTOMER","transcript":"b"}"#,
            r#"{"type":"ENDED","contactId":"f-0"}"#,
        ]
        .map(String::from)
        .to_vec();
        let angry = [
            (Participant::Customer, "a", 0.7),
            (Participant::Customer, "b", 0.7),
        ];
        let (calm_dir, killed_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (calm, killed) = (
            DataDir::open(calm_dir.path()).unwrap(),
            DataDir::open(killed_dir.path()).unwrap(),
        );
        let (store, _) = calm.stores().unwrap();
        store
            .append(&call_log("f-0", at(0), &angry, true))
            .await
            .unwrap();
        let (store, _) = killed.stores().unwrap();
        store
            .append(&call_log("f-0", at(0), &angry[..1], true))
            .await
            .unwrap();
        let report = compare(&killed, &calm, &lines).await.unwrap();
        assert!(!report.is_clean());
        assert_eq!(report.utterances_lost, 1, "{report:?}");
        assert_eq!(report.never_judged, 1, "{report:?}");
        assert_eq!(report.escalations_differing, 1, "{report:?}");
        assert_eq!(report.summaries_unsaved, 1, "{report:?}");
        assert_eq!(report.utterances_duplicated + report.judged_twice, 0);
        assert_eq!(report.broken_calls.len(), 1, "{report:?}");
        assert!(report.broken_calls[0].starts_with("f-0: "), "{report:?}");
    }

    #[test]
    fn the_stream_interleaves_every_call_with_angry_and_calm_ones() {
        let lines = stream(2, 4);
        assert_eq!(lines.len(), 12);
        assert!(lines[0].contains("f-0") && lines[1].contains("f-1"));
        assert!(lines[2].contains("ridiculous") && lines[3].contains("update my address"));
        assert!(lines[2].contains("(ref f-0 u0)"), "{}", lines[2]);
        assert!(lines[11].contains("ENDED"));
    }
}
