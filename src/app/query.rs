//! `callpulse query`: the contacts read model as a table, JSON or CSV, and one contact's
//! timeline straight from its event log; and `projections rebuild`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use anyhow::bail;
use chrono::{DateTime, SecondsFormat, Utc};
use comfy_table::{Table, presets};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::events::{EndReason, Event, ModelTask, StoredEvent, SummaryGenerated};
use crate::store::projection::catch_up;
use crate::store::{ContactFilter, EventStore, ProjectionStore, SeqRange, StoreError};

/// Events read per round when paging through the whole log (catch-up, rebuild, verify).
pub const BATCH: usize = 10_000;

/// How query results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns (contacts) or a timeline (one contact), for people.
    Table,
    /// JSON with camelCase keys.
    Json,
    /// Comma-separated values with a header row (contacts only).
    Csv,
}

/// Writes the contacts passing `filter`, oldest start first.
pub async fn contacts(
    projections: &dyn ProjectionStore,
    filter: &ContactFilter,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let rows = projections.contacts(filter).await?;
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &rows)?;
            writeln!(out)?;
        }
        Format::Csv => {
            let mut csv = csv::Writer::from_writer(out);
            for row in &rows {
                csv.serialize(row)?;
            }
            csv.flush()?;
        }
        Format::Table => {
            let mut table = Table::new();
            table.load_style(presets::UTF8_FULL_CONDENSED).set_header([
                "Contact",
                "Started",
                "Ended",
                "Utterances",
                "Sentiment",
                "Escalations",
                "Summary",
            ]);
            for row in &rows {
                table.add_row([
                    row.contact_id.clone(),
                    row.started_at.map_or_else(String::new, time),
                    row.ended_at.map_or_else(|| "(open)".into(), time),
                    row.utterances.to_string(),
                    row.sentiment.map_or_else(String::new, |l| l.to_string()),
                    row.escalations.to_string(),
                    match row.summary_version {
                        0 => String::new(),
                        v => format!("v{v}"),
                    },
                ]);
            }
            writeln!(out, "{table}")?;
            writeln!(out, "{} contacts", rows.len())?;
        }
    }
    Ok(())
}

/// Writes one contact's log: every event and every summary version, as a timeline (table)
/// or JSON. Events are read from the log itself, so this works without the read models.
pub async fn contact(
    events: &dyn EventStore,
    contact_id: &str,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if format == Format::Csv {
        bail!("`query contact` writes table or json, not csv");
    }
    let log = events.read(contact_id, SeqRange::all()).await?;
    if log.is_empty() {
        bail!("no events for contact {contact_id}");
    }
    if format == Format::Json {
        serde_json::to_writer_pretty(&mut *out, &timeline(contact_id, &log)?)?;
        writeln!(out)?;
        return Ok(());
    }
    let decoded = decode_all(&log);
    let summaries = summaries_of(&decoded);
    let judged = judgements(&decoded);
    for (stored, body) in &decoded {
        let line = match body {
            Ok(event) => describe(event, &judged),
            Err(reason) => Some(format!("UNREADABLE {} event: {reason}", stored.kind)),
        };
        if let Some(line) = line {
            writeln!(
                out,
                "{:>4}  {}  {line}",
                stored.seq,
                time(stored.recorded_at)
            )?;
        }
    }
    for summary in summaries {
        writeln!(
            out,
            "\nsummary v{} by {} (prompt v{}):\n{}\n  reason: {}\n  resolution: {}\n  follow-up: {}",
            summary.version,
            summary.model,
            summary.prompt_version,
            summary.text,
            summary.reason,
            summary.resolution,
            summary.follow_up
        )?;
    }
    Ok(())
}

/// One contact's log as `query contact --format json` and `GET /api/contacts/{id}` give it:
/// `contactId`, `events` (each with `seq`, `kind`, `recordedAt` and its fields) and
/// `summaries` (every version).
pub fn timeline(contact_id: &str, log: &[StoredEvent]) -> anyhow::Result<Value> {
    let decoded = decode_all(log);
    let events = decoded
        .iter()
        .map(|(stored, body)| EventView::new(stored, body))
        .collect::<anyhow::Result<_>>()?;
    let document = ContactView {
        contact_id,
        events,
        summaries: summaries_of(&decoded),
    };
    Ok(serde_json::to_value(document)?)
}

/// One event as JSON: `seq`, `kind`, `recordedAt`, then its fields (or, for a body that
/// cannot be decoded, `error`).
pub fn event_json(stored: &StoredEvent) -> anyhow::Result<Map<String, Value>> {
    let body = stored.decode().map_err(|e| e.reason);
    match serde_json::to_value(EventView::new(stored, &body)?)? {
        Value::Object(fields) => Ok(fields),
        _ => unreachable!("an event view is an object"),
    }
}

/// The summaries of a contact's log, every version in log order.
pub fn summaries(log: &[StoredEvent]) -> Vec<SummaryGenerated> {
    summaries_of(&decode_all(log))
        .into_iter()
        .cloned()
        .collect()
}

fn decode_all(log: &[StoredEvent]) -> Vec<(&StoredEvent, Result<Event, String>)> {
    log.iter()
        .map(|stored| (stored, stored.decode().map_err(|e| e.reason)))
        .collect()
}

fn summaries_of<'a>(
    decoded: &'a [(&StoredEvent, Result<Event, String>)],
) -> Vec<&'a SummaryGenerated> {
    decoded
        .iter()
        .filter_map(|(_, body)| match body {
            Ok(Event::SummaryGenerated(summary)) => Some(summary),
            _ => None,
        })
        .collect()
}

/// Drops the read models and folds the whole log into them again. Returns how many events
/// were folded.
pub async fn rebuild_projections(
    events: &dyn EventStore,
    projections: &dyn ProjectionStore,
) -> Result<u64, StoreError> {
    projections.reset().await?;
    catch_up(events, projections, BATCH).await
}

/// RFC 3339 to the second, as every table shows times.
fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `query contact` as JSON.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ContactView<'a> {
    contact_id: &'a str,
    events: Vec<EventView<'a>>,
    summaries: Vec<&'a SummaryGenerated>,
}

/// One event as JSON: `seq`, `kind`, `recordedAt`, then the body's fields (or, for a body
/// that cannot be decoded, `error`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventView<'a> {
    seq: u64,
    kind: &'a str,
    recorded_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(flatten)]
    body: Map<String, Value>,
}

impl<'a> EventView<'a> {
    fn new(stored: &'a StoredEvent, body: &'a Result<Event, String>) -> anyhow::Result<Self> {
        let (error, body) = match body {
            Ok(event) => {
                let mut fields: Map<String, Value> =
                    serde_json::from_value(serde_json::to_value(event)?)?;
                fields.remove("kind");
                (None, fields)
            }
            Err(reason) => (Some(reason.as_str()), Map::new()),
        };
        Ok(Self {
            seq: stored.seq,
            kind: &stored.kind,
            recorded_at: stored.recorded_at,
            error,
            body,
        })
    }
}

/// The sentiment label each judged segment got, for marking the transcript.
fn judgements<'a>(
    decoded: &'a [(&StoredEvent, Result<Event, String>)],
) -> HashMap<&'a str, String> {
    let mut judged = HashMap::new();
    for (_, body) in decoded {
        if let Ok(Event::SentimentAssessed(assessed)) = body {
            let mark = format!(
                "{} {:.2}",
                assessed.label,
                assessed.scores.get(assessed.label)
            );
            for segment in assessed.coalesced.iter().chain([&assessed.segment_id]) {
                judged.insert(segment.as_str(), mark.clone());
            }
        }
    }
    judged
}

/// One timeline line for `event`; none for judgements, which are shown next to the
/// utterance they judged.
fn describe(event: &Event, judged: &HashMap<&str, String>) -> Option<String> {
    let pairs = |attributes: &BTreeMap<String, String>| {
        attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(match event {
        Event::ContactStarted(e) => format!(
            "call started at {}{}{}",
            time(e.started_at),
            e.instance_id
                .as_ref()
                .map_or_else(String::new, |i| format!(" on instance {i}")),
            if e.implicit {
                " (no STARTED record: opened by its first segment)"
            } else {
                ""
            }
        ),
        Event::UtteranceReceived(e) => format!(
            "{:<8} {}{}",
            e.participant.as_str(),
            e.text,
            judged
                .get(e.segment_id.as_str())
                .map_or_else(String::new, |mark| format!("  [{mark}]"))
        ),
        Event::AudioStarted(e) => format!("audio read from {}", e.stream_arn),
        Event::AudioCheckpoint(e) => format!(
            "audio heard to {} ms (fragment {})",
            e.covered_millis, e.fragment_number
        ),
        Event::AudioStreamFailed(e) => format!(
            "audio FAILED: {}{}",
            e.reason,
            if e.retrying { " (retrying)" } else { "" }
        ),
        Event::AudioEnded(e) => format!("audio ended ({:?})", e.reason),
        Event::SentimentAssessed(_) => return None,
        Event::SentimentChanged(e) => format!(
            "customer sentiment {} -> {} ({})",
            e.from.map_or_else(|| "none".into(), |l| l.to_string()),
            e.to,
            e.why
        ),
        Event::EscalationRaised(e) => format!(
            "ESCALATION raised: {} (evidence {}; sets {})",
            e.rule,
            e.evidence.join(", "),
            pairs(&e.attributes)
        ),
        Event::EscalationCleared(e) => format!("escalation cleared: {}", e.why),
        Event::AttributesUpdated(e) => format!(
            "attributes set by {} for #{}: {} ({} tries)",
            e.sink,
            e.for_seq,
            pairs(&e.attributes),
            e.attempts
        ),
        Event::AttributesUpdateFailed(e) => format!(
            "attributes NOT set by {} for #{}: {} ({} tries: {})",
            e.sink,
            e.for_seq,
            pairs(&e.attributes),
            e.attempts,
            e.error
        ),
        Event::ContactEnded(e) => format!(
            "call ended at {} ({})",
            time(e.ended_at),
            match e.reason {
                EndReason::Ended => "ENDED record",
                EndReason::IdleTimeout => "idle timeout",
            }
        ),
        Event::SummaryGenerated(e) => format!("summary v{} written by {}", e.version, e.model),
        Event::SummaryFailed(e) => format!(
            "summary v{} failed ({}, try {}): {}",
            e.version, e.model, e.attempts, e.error
        ),
        Event::ModelCallSkipped(e) => format!(
            "{} skipped for {}: {} ({} ms old)",
            match e.task {
                ModelTask::Sentiment => "sentiment",
                ModelTask::Summary => "summary",
            },
            e.segment_ids.join(", "),
            e.why,
            e.stale_ms
        ),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use chrono::{Duration, TimeZone};

    use super::*;
    use crate::events::contact::{Command, Contact};
    use crate::events::rules::EscalationRules;
    use crate::events::testing::judgement;
    use crate::events::{ContactEnded, ContactStarted, Participant, UtteranceReceived};
    use crate::models::Label;
    use crate::store::memory::{MemoryEventStore, MemoryProjectionStore};

    /// 09:00 UTC on a fixed day, plus `minutes`.
    pub(crate) fn at(minutes: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap() + Duration::minutes(minutes)
    }

    /// The first summary of a call, as a live worker would have written it.
    pub(crate) fn first_summary() -> SummaryGenerated {
        SummaryGenerated {
            version: 1,
            model: "live-model".into(),
            prompt_version: 1,
            text: "- asked about a refund\n- refund issued\n- nothing left to do".into(),
            reason: "refund".into(),
            resolution: "issued".into(),
            follow_up: "none".into(),
            customer_sentiment: Some(Label::Neutral),
            chunks: 1,
            tokens_in: 10,
            tokens_out: 5,
            cost_usd: None,
        }
    }

    /// A call's log as the pipeline writes it: started at `start`, each line said and
    /// judged (P(NEGATIVE) given), then, when `ended`, ended and summarised (v1).
    pub(crate) fn call_log(
        id: &str,
        start: DateTime<Utc>,
        lines: &[(Participant, &str, f32)],
        ended: bool,
    ) -> Vec<StoredEvent> {
        let mut contact = Contact::new(id, Arc::new(EscalationRules::default()));
        let mut log = Vec::new();
        let mut step = |command, now: DateTime<Utc>| {
            let mut head = contact.head.clone();
            for event in contact.decide(command, now).expect("accepted") {
                let stored = head.seal(id, None, &event, now);
                contact.apply(&stored, &event);
                log.push(stored);
            }
        };
        step(
            Command::Start(ContactStarted {
                instance_id: Some("i-1".into()),
                channel: None,
                started_at: start,
                media_stream_arn: None,
                start_fragment_number: None,
                implicit: false,
                rules: None,
            }),
            start,
        );
        for (n, &(participant, text, negative)) in lines.iter().enumerate() {
            let now = start + Duration::seconds(n as i64 + 1);
            let segment_id = format!("s{}", n + 1);
            step(
                Command::Utterance {
                    utterance: UtteranceReceived {
                        segment_id: segment_id.clone(),
                        participant,
                        text: text.into(),
                        begin_offset_millis: None,
                        end_offset_millis: None,
                        redactions: Default::default(),
                    },
                    at: now,
                },
                now,
            );
            step(
                Command::Judged(judgement(&segment_id, participant, negative)),
                now,
            );
        }
        if ended {
            let end = start + Duration::minutes(5);
            step(
                Command::End(ContactEnded {
                    ended_at: end,
                    reason: EndReason::Ended,
                }),
                end,
            );
            step(Command::Summarised(first_summary()), end);
        }
        log
    }

    /// An angry call at 09:00 (escalated, ended, summarised), a calm one at 10:00 (ended,
    /// summarised) and one still open at 11:00, in a memory store.
    pub(crate) async fn three_calls() -> MemoryEventStore {
        let store = MemoryEventStore::new();
        let angry = [
            (Participant::Customer, "My order never came", 0.7),
            (Participant::Agent, "Sorry to hear that", 0.1),
            (Participant::Customer, "This is ridiculous", 0.8),
        ];
        let calm = [
            (Participant::Customer, "Where is my parcel?", 0.1),
            (Participant::Agent, "It arrives tomorrow", 0.1),
        ];
        let open = [(Participant::Customer, "Hello?", 0.1)];
        for log in [
            call_log("c-angry", at(0), &angry, true),
            call_log("c-calm", at(60), &calm, true),
            call_log("c-open", at(120), &open, false),
        ] {
            store.append(&log).await.unwrap();
        }
        store
    }

    async fn rows_json(projections: &dyn ProjectionStore, filter: ContactFilter) -> Vec<Value> {
        let mut out = Vec::new();
        contacts(projections, &filter, Format::Json, &mut out)
            .await
            .unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    fn ids(rows: &[Value]) -> Vec<&str> {
        rows.iter()
            .map(|r| r["contactId"].as_str().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn contacts_json_has_the_documented_keys_and_filters_apply() {
        let events = three_calls().await;
        let projections = MemoryProjectionStore::new();
        assert!(rebuild_projections(&events, &projections).await.unwrap() > 0);

        let all = rows_json(&projections, ContactFilter::default()).await;
        assert_eq!(ids(&all), ["c-angry", "c-calm", "c-open"]);
        for key in [
            "contactId",
            "instanceId",
            "startedAt",
            "endedAt",
            "escalated",
            "escalations",
            "sentiment",
            "summaryVersion",
            "utterances",
        ] {
            assert!(all[0].get(key).is_some(), "{key} missing: {}", all[0]);
        }
        assert_eq!(all[0]["escalated"], true);
        assert_eq!(all[0]["sentiment"], "NEGATIVE");
        assert_eq!(all[0]["summaryVersion"], 1);
        assert_eq!(all[2]["endedAt"], Value::Null);

        let escalated = ContactFilter {
            escalated: Some(true),
            ..ContactFilter::default()
        };
        assert_eq!(ids(&rows_json(&projections, escalated).await), ["c-angry"]);
        let window = ContactFilter {
            since: Some(at(30)),
            until: Some(at(90)),
            ..ContactFilter::default()
        };
        assert_eq!(ids(&rows_json(&projections, window).await), ["c-calm"]);
        let calm = ContactFilter {
            sentiment: Some(Label::Neutral),
            ..ContactFilter::default()
        };
        assert_eq!(
            ids(&rows_json(&projections, calm).await),
            ["c-calm", "c-open"]
        );
    }

    #[tokio::test]
    async fn contacts_csv_and_table_show_every_row() {
        let events = three_calls().await;
        let projections = MemoryProjectionStore::new();
        rebuild_projections(&events, &projections).await.unwrap();

        let mut csv = Vec::new();
        contacts(
            &projections,
            &ContactFilter::default(),
            Format::Csv,
            &mut csv,
        )
        .await
        .unwrap();
        let csv = String::from_utf8(csv).unwrap();
        let mut lines = csv.lines();
        let header = lines.next().unwrap();
        assert!(header.starts_with("contactId,instanceId,startedAt,endedAt,escalated"));
        assert_eq!(lines.count(), 3);

        let mut table = Vec::new();
        contacts(
            &projections,
            &ContactFilter::default(),
            Format::Table,
            &mut table,
        )
        .await
        .unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("2026-11-24T09:00:00Z"), "{table}");
        assert!(
            table.contains("(open)") && table.contains("NEGATIVE"),
            "{table}"
        );
        assert!(table.contains("3 contacts"), "{table}");
    }

    #[tokio::test]
    async fn contact_json_lists_events_and_summaries() {
        let events = three_calls().await;
        let mut out = Vec::new();
        contact(&events, "c-angry", Format::Json, &mut out)
            .await
            .unwrap();
        let doc: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["contactId"], "c-angry");
        let listed = doc["events"].as_array().unwrap();
        assert_eq!(
            listed.len() as u64,
            events.highest_seq("c-angry").await.unwrap()
        );
        for (n, event) in listed.iter().enumerate() {
            assert_eq!(event["seq"], n as u64 + 1);
            assert!(event["recordedAt"].is_string(), "{event}");
        }
        let utterance = &listed[1];
        assert_eq!(utterance["kind"], "UtteranceReceived");
        assert_eq!(utterance["segmentId"], "s1");
        assert_eq!(utterance["text"], "My order never came");
        assert!(listed.iter().any(|e| e["kind"] == "EscalationRaised"));
        let summaries = doc["summaries"].as_array().unwrap();
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0]["version"], 1);
        assert_eq!(summaries[0]["model"], "live-model");
        assert_eq!(summaries[0]["followUp"], "none");
    }

    #[tokio::test]
    async fn contact_timeline_marks_judgements_and_ends_with_summaries() {
        let events = three_calls().await;
        let mut out = Vec::new();
        contact(&events, "c-angry", Format::Table, &mut out)
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("CUSTOMER This is ridiculous  [NEGATIVE 0.80]"),
            "{text}"
        );
        assert!(text.contains("ESCALATION raised"), "{text}");
        assert!(text.contains("customer sentiment"), "{text}");
        assert!(
            text.contains("call ended at 2026-11-24T09:05:00Z"),
            "{text}"
        );
        let summary = text
            .find("summary v1 by live-model")
            .expect("summary shown");
        assert!(text[summary..].contains("- refund issued"), "{text}");
    }

    #[tokio::test]
    async fn unknown_contacts_and_csv_timelines_are_refused() {
        let events = three_calls().await;
        let err = contact(&events, "c-nobody", Format::Table, &mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "no events for contact c-nobody");
        assert!(
            contact(&events, "c-angry", Format::Csv, &mut Vec::new())
                .await
                .is_err()
        );
    }
}
