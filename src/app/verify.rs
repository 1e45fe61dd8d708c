//! `callpulse verify`: walks the event log and checks every contact's hash chain (sequence
//! numbers without gaps, each event linked to the one before, each event's content matching
//! its hash), that every event body can still be decoded, and, given the anchor
//! ([`crate::store::anchor`]), that every sealed head is still in the log as sealed: a
//! deleted tail, a deleted contact or a rewritten chain is reported.

use std::collections::{HashMap, HashSet};
use std::fmt;

use anyhow::bail;

use super::query::BATCH;
use crate::events::{ChainHead, StoredEvent};
use crate::store::anchor::SealedHead;
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
///
/// With `anchor` (every contact's sealed head), each sealed head of the contacts checked
/// must be an event of the log with the sealed hash.
pub async fn verify(
    events: &dyn EventStore,
    contact: Option<&str>,
    anchor: Option<&HashMap<String, SealedHead>>,
) -> anyhow::Result<VerifyReport> {
    let mut chains = Chains {
        anchored: anchor,
        only: contact,
        ..Chains::default()
    };
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
                if let Some((seq, _)) = chains.sealed(contact_id) {
                    bail!(
                        "no events for contact {contact_id}, but the anchor has its #{seq}: its log was deleted"
                    );
                }
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
    chains.unmatched_anchors();
    chains.report.contacts = chains.heads.len();
    Ok(chains.report)
}

/// The chain head of every contact seen so far, and what was found.
#[derive(Default)]
struct Chains<'a> {
    heads: HashMap<String, ChainHead>,
    report: VerifyReport,
    /// The sealed heads to find ...
    anchored: Option<&'a HashMap<String, SealedHead>>,
    /// ... of this contact only, when given.
    only: Option<&'a str>,
    /// The contacts whose sealed head was found as sealed.
    matched: HashSet<String>,
}

impl<'a> Chains<'a> {
    /// The head the anchor sealed for `contact_id`, if it is one of those checked.
    fn sealed(&self, contact_id: &str) -> Option<&'a SealedHead> {
        let anchored = self.anchored?;
        if self.only.is_some_and(|only| only != contact_id) {
            return None;
        }
        anchored.get(contact_id)
    }

    /// Reports every sealed head not found in the log: events deleted from the contact's
    /// end, or the whole contact deleted.
    fn unmatched_anchors(&mut self) {
        let mut missing: Vec<_> = self
            .anchored
            .into_iter()
            .flatten()
            .filter(|(id, _)| self.only.is_none_or(|only| only == id.as_str()))
            .filter(|(id, _)| !self.matched.contains(*id))
            .collect();
        missing.sort();
        for (id, (seq, _)) in missing {
            let reason = match self.heads.get(id) {
                Some(head) if head.seq < *seq => format!(
                    "the log ends at #{}, but the anchor sealed #{seq}: events were deleted from its end",
                    head.seq
                ),
                Some(_) => continue, // reported where the hashes differ
                None => format!(
                    "the anchor sealed #{seq}, but the contact has no events: its log was deleted"
                ),
            };
            self.report.problems.push(Problem {
                contact_id: id.clone(),
                seq: *seq,
                reason,
            });
        }
    }

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
        let unlike_anchor = match self.sealed(&event.contact_id) {
            Some((seq, hash)) if *seq == event.seq => {
                self.matched.insert(event.contact_id.clone());
                (hash != &event.hash).then(|| {
                    "differs from the event the anchor sealed: the log was rewritten".to_string()
                })
            }
            _ => None,
        };
        for reason in broken.into_iter().chain(undecodable).chain(unlike_anchor) {
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
    use crate::store::anchor::Anchor;
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
        let report = verify(&events, None, None).await.unwrap();
        assert!(report.is_ok(), "{report}");
        assert_eq!((report.contacts, report.events), (3, total));

        let one = verify(&events, Some("c-calm"), None).await.unwrap();
        assert!(one.is_ok(), "{one}");
        assert_eq!(one.contacts, 1);
        assert!(verify(&events, Some("c-nobody"), None).await.is_err());
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
            verify(&events, None, None).await.unwrap(),
            verify(&events, Some("c-edited"), None).await.unwrap(),
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
        assert!(
            verify(&events, Some("c-angry"), None)
                .await
                .unwrap()
                .is_ok()
        );
    }

    /// `events` with the contact's last `n` events removed (a store that lets rows be
    /// deleted, as SQLite does to anyone with the file).
    async fn without_tail(events: &MemoryEventStore, contact: &str, n: usize) -> MemoryEventStore {
        let copy = MemoryEventStore::new();
        let mut page = events.read_all(0, usize::MAX).await.unwrap();
        let total = page
            .iter()
            .filter(|p| p.event.contact_id == contact)
            .count();
        let mut kept = 0;
        page.retain(|p| {
            if p.event.contact_id != contact {
                return true;
            }
            kept += 1;
            kept <= total - n
        });
        append_in_batches(&copy, page.into_iter().map(|p| p.event).collect()).await;
        copy
    }

    /// Appends `log` as the batches it was written in (runs of one contact and source id:
    /// a batch's key is its first event's source id).
    async fn append_in_batches(store: &MemoryEventStore, log: Vec<StoredEvent>) {
        let mut batch: Vec<StoredEvent> = Vec::new();
        for event in log {
            let same = batch.last().is_some_and(|last| {
                last.contact_id == event.contact_id && last.source_id == event.source_id
            });
            if !same && !batch.is_empty() {
                store.append(&std::mem::take(&mut batch)).await.unwrap();
            }
            batch.push(event);
        }
        if !batch.is_empty() {
            store.append(&batch).await.unwrap();
        }
    }

    #[tokio::test]
    async fn the_anchor_shows_a_deleted_tail_a_deleted_contact_and_a_rewritten_chain() {
        let events = three_calls().await;
        let dir = tempfile::tempdir().unwrap();
        let mut anchor = Anchor::open(dir.path().join("anchors.jsonl")).unwrap();
        anchor.seal(&events).await.unwrap();
        let heads = anchor.heads();
        assert!(verify(&events, None, Some(heads)).await.unwrap().is_ok());

        // The tail: the chain alone cannot tell.
        let cut = without_tail(&events, "c-angry", 1).await;
        assert!(verify(&cut, None, None).await.unwrap().is_ok());
        let sealed = heads["c-angry"].0;
        for report in [
            verify(&cut, None, Some(heads)).await.unwrap(),
            verify(&cut, Some("c-angry"), Some(heads)).await.unwrap(),
        ] {
            assert_eq!(report.problems.len(), 1, "{report}");
            assert_eq!(report.problems[0].seq, sealed);
            assert!(
                report.problems[0].reason.contains("deleted from its end"),
                "{report}"
            );
        }

        // A whole contact.
        let calm = events.highest_seq("c-calm").await.unwrap() as usize;
        let gone = without_tail(&events, "c-calm", calm).await;
        let report = verify(&gone, None, Some(heads)).await.unwrap();
        assert_eq!(report.problems.len(), 1, "{report}");
        assert!(report.problems[0].reason.contains("no events"), "{report}");
        let error = verify(&gone, Some("c-calm"), Some(heads))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("log was deleted"), "{error}");

        // A chain rewritten with fresh hashes from the edit on.
        let rewritten = MemoryEventStore::new();
        let mut heads_now: HashMap<String, ChainHead> = HashMap::new();
        let mut log = Vec::new();
        for item in events.read_all(0, usize::MAX).await.unwrap() {
            let mut event = item.event;
            let head = heads_now.entry(event.contact_id.clone()).or_default();
            if event.contact_id == "c-open" {
                event.payload = event.payload.replace("Hello?", "Goodbye?");
                event.prev_hash = head.hash.clone();
                event.hash = event.compute_hash();
            }
            head.verify_next(&event).unwrap();
            log.push(event);
        }
        append_in_batches(&rewritten, log).await;
        assert!(verify(&rewritten, None, None).await.unwrap().is_ok());
        let report = verify(&rewritten, None, Some(heads)).await.unwrap();
        assert_eq!(report.problems.len(), 1, "{report}");
        assert!(report.problems[0].reason.contains("rewritten"), "{report}");
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
        let report = verify(&events, None, None).await.unwrap();
        assert_eq!(report.problems.len(), 1, "{report}");
        assert_eq!(report.problems[0].seq, 2);
    }
}
