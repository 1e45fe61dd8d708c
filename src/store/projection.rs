//! The contacts read model: a pure fold of a contact's events into its [`ContactRow`], and
//! [`catch_up`], which brings a [`ProjectionStore`] up to date with an [`EventStore`].

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use super::{ContactRow, EventStore, ProjectionStore, SeqRange, StoreError};
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
        Event::AudioStarted(_)
        | Event::AudioCheckpoint(_)
        | Event::AudioStreamFailed(_)
        | Event::AudioEnded(_)
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
/// (each round's changed rows saved together with its checkpoint), until the projection has
/// caught up with the log. Returns how many events were folded.
///
/// It reads from [`EventStore::replay_window`] positions before the checkpoint, so events
/// that became visible behind it since the last round (DynamoDB) are folded too; the
/// checkpoint itself never moves back. Events a row already holds (by `last_seq`) are not
/// folded twice, and an event further on than the row's next one is folded after the
/// events between, read from the contact's log: rows never skip an event, whatever order
/// the global read returns a contact's events in.
///
/// An event whose body cannot be decoded is skipped with a warning: the log itself is
/// intact, and `verify` reports it.
pub async fn catch_up(
    events: &dyn EventStore,
    projections: &dyn ProjectionStore,
    batch: usize,
) -> Result<u64, StoreError> {
    let batch = batch.max(1);
    let mut checkpoint = projections.checkpoint().await?;
    let mut position = checkpoint.saturating_sub(events.replay_window());
    let mut folded = 0;
    loop {
        let page = events.read_all(position, batch).await?;
        let Some(last) = page.last() else {
            return Ok(folded);
        };
        position = last.position;
        // Each contact's row, and its `last_seq` as loaded, fetched for the page at once.
        let ids: Vec<String> = page
            .iter()
            .map(|item| item.event.contact_id.as_str())
            .collect::<HashSet<_>>()
            .into_iter()
            .map(str::to_string)
            .collect();
        let mut stored = projections.rows(&ids).await?;
        let mut rows: HashMap<String, (ContactRow, u64)> = HashMap::new();
        for item in &page {
            let event = &item.event;
            let (row, _) = match rows.entry(event.contact_id.clone()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    let row = stored
                        .remove(&event.contact_id)
                        .unwrap_or_else(|| ContactRow {
                            contact_id: event.contact_id.clone(),
                            ..ContactRow::default()
                        });
                    let loaded = row.last_seq;
                    entry.insert((row, loaded))
                }
            };
            if event.seq <= row.last_seq {
                continue;
            }
            if event.seq > row.last_seq + 1 {
                let between = SeqRange {
                    from: row.last_seq + 1,
                    to: event.seq - 1,
                    max: usize::MAX,
                };
                for missing in events.read(&event.contact_id, between).await? {
                    folded += fold_stored(row, &missing);
                }
            }
            folded += fold_stored(row, event);
        }
        let changed: Vec<ContactRow> = rows
            .into_values()
            .filter(|(row, loaded)| row.last_seq != *loaded)
            .map(|(row, _)| row)
            .collect();
        if !changed.is_empty() || position > checkpoint {
            checkpoint = checkpoint.max(position);
            projections.save(&changed, checkpoint).await?;
        }
        if page.len() < batch {
            return Ok(folded);
        }
    }
}

/// Folds `event` into `row` when its body decodes (returns 1); skips it with a warning
/// otherwise (returns 0).
fn fold_stored(row: &mut ContactRow, event: &StoredEvent) -> u64 {
    match event.decode() {
        Ok(body) => {
            fold(row, event, &body);
            1
        }
        Err(error) => {
            tracing::warn!(%error, "event skipped by the contacts projection");
            row.last_seq = event.seq;
            0
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
            redactions: Default::default(),
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
                rules: None,
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
