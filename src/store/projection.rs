//! The contacts read model: a pure fold of a contact's events into its [`ContactRow`], and
//! [`catch_up`], which brings a [`ProjectionStore`] up to date with an [`EventStore`].

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use super::{ContactRow, EventStore, ProjectionStore, StoreError};
use crate::events::{Event, StoredEvent};

/// Folds one event (`event`, with `body` its decoded body) into its contact's row.
pub fn fold(row: &mut ContactRow, event: &StoredEvent, body: &Event) {
    match body {
        Event::ContactStarted(started) => {
            row.instance_id.clone_from(&started.instance_id);
            row.started_at = Some(started.started_at);
        }
        Event::UtteranceReceived(_) => {
            row.utterances += 1;
            row.started_at.get_or_insert(event.recorded_at);
        }
        Event::SentimentChanged(changed) => row.sentiment = Some(changed.to),
        Event::EscalationRaised(_) => {
            row.escalated = true;
            row.escalations += 1;
        }
        Event::ContactEnded(ended) => row.ended_at = Some(ended.ended_at),
        Event::SummaryGenerated(summary) => {
            row.summary_version = row.summary_version.max(summary.version);
        }
        Event::AudioCheckpoint(_)
        | Event::SentimentAssessed(_)
        | Event::EscalationCleared(_)
        | Event::AttributesUpdated(_)
        | Event::AttributesUpdateFailed(_)
        | Event::SummaryFailed(_)
        | Event::ModelCallSkipped(_) => {}
    }
    row.last_seq = event.seq;
}

/// Folds every event after the projection's checkpoint into its rows, `batch` events a round
/// (each round's rows saved together with its checkpoint), until the projection has caught
/// up with the log. Returns how many events were folded.
///
/// An event whose body cannot be decoded is skipped with a warning: the log itself is
/// intact, and `verify` reports it. Events a row already holds (by `last_seq`) are not
/// folded twice.
pub async fn catch_up(
    events: &dyn EventStore,
    projections: &dyn ProjectionStore,
    batch: usize,
) -> Result<u64, StoreError> {
    let batch = batch.max(1);
    let mut position = projections.checkpoint().await?;
    let mut folded = 0;
    loop {
        let page = events.read_all(position, batch).await?;
        let Some(last) = page.last() else {
            return Ok(folded);
        };
        position = last.position;
        let mut rows: HashMap<String, ContactRow> = HashMap::new();
        for item in &page {
            let event = &item.event;
            let row = match rows.entry(event.contact_id.clone()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    let row = projections.contact(&event.contact_id).await?;
                    entry.insert(row.unwrap_or_else(|| ContactRow {
                        contact_id: event.contact_id.clone(),
                        ..ContactRow::default()
                    }))
                }
            };
            if event.seq <= row.last_seq {
                continue;
            }
            match event.decode() {
                Ok(body) => {
                    fold(row, event, &body);
                    folded += 1;
                }
                Err(error) => {
                    tracing::warn!(%error, position = item.position, "event skipped by the contacts projection");
                    row.last_seq = event.seq;
                }
            }
        }
        let rows: Vec<ContactRow> = rows.into_values().collect();
        projections.save(&rows, position).await?;
        if page.len() < batch {
            return Ok(folded);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::events::{
        ChainHead, ContactEnded, ContactStarted, EndReason, EscalationRaised, Participant,
        SentimentChanged, SummaryGenerated, UtteranceReceived,
    };
    use crate::models::Label;

    fn summary(version: u32) -> Event {
        Event::SummaryGenerated(SummaryGenerated {
            version,
            model: "m".into(),
            prompt_version: 1,
            text: "t".into(),
            reason: String::new(),
            resolution: String::new(),
            follow_up: String::new(),
            customer_sentiment: None,
            chunks: 1,
            tokens_in: 0,
            tokens_out: 0,
            cost_usd: None,
        })
    }

    #[test]
    fn every_kind_moves_the_row_as_documented() {
        let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap();
        let t1 = Utc.with_ymd_and_hms(2026, 11, 24, 9, 7, 12).unwrap();
        let utterance = Event::UtteranceReceived(UtteranceReceived {
            segment_id: "s-1".into(),
            participant: Participant::Customer,
            text: "hello".into(),
            begin_offset_millis: None,
            end_offset_millis: None,
        });
        let escalation = Event::EscalationRaised(EscalationRaised {
            rule: "r".into(),
            evidence: vec!["s-1".into()],
            attributes: Default::default(),
        });
        let bodies = [
            utterance.clone(),
            Event::ContactStarted(ContactStarted {
                instance_id: Some("i-1".into()),
                channel: None,
                started_at: t0,
                media_stream_arn: None,
                start_fragment_number: None,
                implicit: false,
            }),
            utterance,
            Event::SentimentChanged(SentimentChanged {
                from: None,
                to: Label::Negative,
                why: "w".into(),
            }),
            escalation.clone(),
            escalation,
            Event::ContactEnded(ContactEnded {
                ended_at: t1,
                reason: EndReason::Ended,
            }),
            summary(2),
            summary(1),
        ];
        let mut head = ChainHead::default();
        let mut row = ContactRow::default();
        let first_recorded = t0 - chrono::Duration::seconds(5);
        for body in &bodies {
            let event = head.seal("c-1", None, body, first_recorded);
            fold(&mut row, &event, body);
        }
        let expected = ContactRow {
            contact_id: String::new(),
            instance_id: Some("i-1".into()),
            started_at: Some(t0),
            ended_at: Some(t1),
            escalated: true,
            escalations: 2,
            sentiment: Some(Label::Negative),
            summary_version: 2,
            utterances: 2,
            last_seq: bodies.len() as u64,
        };
        assert_eq!(row, expected);
    }
}
