//! `callpulse verify`: walks the event log and checks every contact's hash chain (sequence
//! numbers without gaps, each event linked to the one before, each event's content matching
//! its hash) and that every event body can still be decoded.

use std::collections::HashMap;
use std::fmt;

use anyhow::bail;

use super::query::BATCH;
use crate::events::{ChainHead, StoredEvent};
use crate::store::{EventStore, SeqRange};

/// One thing wrong with the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The contact.
    pub contact_id: String,
    /// The event where its chain breaks (or that cannot be decoded).
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Contacts checked.
    pub contacts: usize,
    /// Events checked.
    pub events: u64,
    /// Everything wrong, in log order.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether the log is intact.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checked {} events of {} contacts: ",
            self.events, self.contacts
        )?;
        if self.is_ok() {
            return write!(f, "every hash chain is intact");
        }
        write!(f, "{} problems", self.problems.len())?;
        for p in &self.problems {
            write!(f, "\n  {}#{}: {}", p.contact_id, p.seq, p.reason)?;
        }
        Ok(())
    }
}

/// Checks one contact's log (`Some`), or every contact's in one pass over the global order
/// (`None`), reading [`BATCH`] events at a time. A single contact must have events, and its
/// highest sequence number must be the last one verified.
pub async fn verify(
    events: &dyn EventStore,
    contact: Option<&str>,
) -> anyhow::Result<VerifyReport> {
    let mut chains = Chains::default();
    match contact {
        Some(contact_id) => {
            let mut from = 1;
            loop {
                let page = events
                    .read(
                        contact_id,
                        SeqRange {
                            from,
                            to: u64::MAX,
                            max: BATCH,
                        },
                    )
                    .await?;
                let Some(last) = page.last() else { break };
                from = last.seq + 1;
                page.iter().for_each(|event| chains.check(event));
            }
            let Some(head) = chains.heads.get(contact_id) else {
                bail!("no events for contact {contact_id}");
            };
            let highest = events.highest_seq(contact_id).await?;
            if highest != head.seq {
                let problem = Problem {
                    contact_id: contact_id.to_string(),
                    seq: highest,
                    reason: format!(
                        "the log's highest sequence number is {highest}, but its events end at {}",
                        head.seq
                    ),
                };
                chains.report.problems.push(problem);
            }
        }
        None => {
            let mut after = 0;
            loop {
                let page = events.read_all(after, BATCH).await?;
                let Some(last) = page.last() else { break };
                after = last.position;
                page.iter().for_each(|item| chains.check(&item.event));
                if page.len() < BATCH {
                    break;
                }
            }
        }
    }
    chains.report.contacts = chains.heads.len();
    Ok(chains.report)
}

/// The chain head of every contact seen so far, and what was found.
#[derive(Default)]
struct Chains {
    heads: HashMap<String, ChainHead>,
    report: VerifyReport,
}

impl Chains {
    /// Checks `event` against its contact's head. After a break the head moves onto the
    /// event anyway, so one modified event is reported once, not again for all that follow.
    fn check(&mut self, event: &StoredEvent) {
        self.report.events += 1;
        let head = self.heads.entry(event.contact_id.clone()).or_default();
        let broken = head.verify_next(event).err();
        if broken.is_some() {
            *head = ChainHead {
                seq: event.seq,
                hash: event.hash.clone(),
            };
        }
        let undecodable = event.decode().err().map(|e| {
            format!(
                "its {} v{} body cannot be decoded: {}",
                e.kind, e.version, e.reason
            )
        });
        for reason in broken.into_iter().chain(undecodable) {
            self.report.problems.push(Problem {
                contact_id: event.contact_id.clone(),
                seq: event.seq,
                reason,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::query::tests::{at, call_log, three_calls};
    use crate::events::Participant;
    use crate::store::memory::MemoryEventStore;

    #[tokio::test]
    async fn a_clean_log_verifies() {
        let events = three_calls().await;
        let total: u64 = [
            events.highest_seq("c-angry").await.unwrap(),
            events.highest_seq("c-calm").await.unwrap(),
            events.highest_seq("c-open").await.unwrap(),
        ]
        .iter()
        .sum();
        let report = verify(&events, None).await.unwrap();
        assert!(report.is_ok(), "{report}");
        assert_eq!((report.contacts, report.events), (3, total));

        let one = verify(&events, Some("c-calm")).await.unwrap();
        assert!(one.is_ok(), "{one}");
        assert_eq!(one.contacts, 1);
        assert!(verify(&events, Some("c-nobody")).await.is_err());
    }

    /// A log where the stored text of one utterance was edited after it was written (the
    /// stores accept any batch whose sequence numbers run on; only the chain shows it).
    async fn tampered() -> MemoryEventStore {
        let events = three_calls().await;
        let mut log = call_log(
            "c-edited",
            at(30),
            &[
                (Participant::Customer, "You are useless", 0.9),
                (Participant::Customer, "I want to cancel", 0.9),
            ],
            true,
        );
        let utterance = log
            .iter_mut()
            .find(|e| e.payload.contains("I want to cancel"))
            .unwrap();
        utterance.payload = utterance.payload.replace("I want to cancel", "Thanks!");
        events.append(&log).await.unwrap();
        events
    }

    #[tokio::test]
    async fn an_edited_event_is_reported_at_its_sequence_number_only() {
        let events = tampered().await;
        let seq = events
            .read("c-edited", SeqRange::all())
            .await
            .unwrap()
            .iter()
            .find(|e| e.payload.contains("Thanks!"))
            .unwrap()
            .seq;
        for report in [
            verify(&events, None).await.unwrap(),
            verify(&events, Some("c-edited")).await.unwrap(),
        ] {
            assert!(!report.is_ok());
            assert_eq!(report.problems.len(), 1, "{report}");
            let problem = &report.problems[0];
            assert_eq!(
                (problem.contact_id.as_str(), problem.seq),
                ("c-edited", seq)
            );
            assert!(problem.reason.contains("modified"), "{report}");
            assert!(report.to_string().contains(&format!("c-edited#{seq}")));
        }
        assert!(verify(&events, Some("c-angry")).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn an_undecodable_event_is_reported_even_when_its_hash_is_right() {
        let events = MemoryEventStore::new();
        let mut log = call_log("c-1", at(0), &[(Participant::Customer, "hi", 0.1)], false);
        let mut head = ChainHead::default();
        for event in &mut log {
            event.prev_hash = head.hash.clone();
            if event.kind == "UtteranceReceived" {
                event.payload = r#"{"kind":"UtteranceReceived","text":42}"#.into();
            }
            event.hash = event.compute_hash();
            head.verify_next(event).unwrap();
        }
        events.append(&log).await.unwrap();
        let report = verify(&events, None).await.unwrap();
        assert_eq!(report.problems.len(), 1, "{report}");
        assert_eq!(report.problems[0].seq, 2);
    }
}
