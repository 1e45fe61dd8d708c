//! What the log says happened: events matched to the utterances that led to them, and every
//! contact rebuilt from the global log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::PAGE;
use super::UNSENT;
use super::calls::{Shape, is_customer};
use super::report::Replay;
use crate::actors::router::shard_of;
use crate::events::contact::Contact;
use crate::events::rules::EscalationRules;
use crate::events::{Event, Participant};
use crate::store::{EventStore, Positioned};

/// What the log says happened.
#[derive(Default)]
pub(super) struct Observed {
    pub(super) events: u64,
    pub(super) customer_judged: u64,
    pub(super) customer_skipped: u64,
    pub(super) sentiment_ms: Vec<f64>,
    pub(super) escalations: u64,
    pub(super) at_expected: u64,
    pub(super) escalations_per_call: Vec<u32>,
    pub(super) escalation_ms: Vec<f64>,
    pub(super) attribute_updates: u64,
    pub(super) attribute_ms: Vec<f64>,
}

fn ms_between(from_micros: i64, to_micros: i64) -> f64 {
    (to_micros - from_micros) as f64 / 1e3
}

/// Reads the whole log and matches events to the utterances that led to them.
pub(super) async fn observe(
    store: &dyn EventStore,
    shape: &Shape,
    sent: &[i64],
) -> anyhow::Result<Observed> {
    let mut seen = Observed {
        escalations_per_call: vec![0; shape.calls],
        ..Observed::default()
    };
    // (call, seq of its EscalationRaised) → when the utterance that fired it was written.
    let mut raised: HashMap<(usize, u64), i64> = HashMap::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.position;
        for item in &page {
            let stored = &item.event;
            seen.events += 1;
            let Some(call) = shape.call_index(&stored.contact_id) else {
                continue;
            };
            let at = stored.recorded_at.timestamp_micros();
            match stored.decode()? {
                Event::SentimentAssessed(s) if s.participant == Participant::Customer => {
                    for segment in std::iter::once(&s.segment_id).chain(&s.coalesced) {
                        if let Some(t) = shape.sent_at(sent, call, segment) {
                            seen.customer_judged += 1;
                            seen.sentiment_ms.push(ms_between(t, at));
                        }
                    }
                }
                Event::ModelCallSkipped(s) => {
                    seen.customer_skipped += s
                        .segment_ids
                        .iter()
                        .filter(|seg| shape.segment_index(seg).is_some_and(is_customer))
                        .count() as u64;
                }
                Event::EscalationRaised(r) => {
                    seen.escalations += 1;
                    seen.escalations_per_call[call] += 1;
                    let trigger = r
                        .evidence
                        .iter()
                        .filter_map(|seg| shape.segment_index(seg))
                        .max();
                    if trigger == Some(shape.escalating()) {
                        seen.at_expected += 1;
                    }
                    if let Some(t) = trigger.map(|k| sent[call * shape.utterances + k])
                        && t != UNSENT
                    {
                        seen.escalation_ms.push(ms_between(t, at));
                        raised.insert((call, stored.seq), t);
                    }
                }
                Event::AttributesUpdated(u) => {
                    seen.attribute_updates += 1;
                    if let Some(&t) = raised.get(&(call, u.for_seq)) {
                        seen.attribute_ms.push(ms_between(t, at));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(seen)
}

/// Loads each event into its contact ([`Contact::load_next`]).
fn fold_events(
    contacts: &mut HashMap<String, Contact>,
    events: &[&Positioned],
    rules: &Arc<EscalationRules>,
) -> anyhow::Result<()> {
    for item in events {
        let stored = &item.event;
        contacts
            .entry(stored.contact_id.clone())
            .or_insert_with(|| Contact::new(stored.contact_id.clone(), rules.clone()))
            .load_next(stored)
            .map_err(|e| anyhow::anyhow!("{}#{}: {e}", stored.contact_id, stored.seq))?;
    }
    Ok(())
}

/// Folds `page` into the contacts, a thread per shard; a contact always falls in the same
/// shard, so its events are still folded in order.
fn fold_page(
    shards: &mut [HashMap<String, Contact>],
    page: &[Positioned],
    rules: &Arc<EscalationRules>,
) -> anyhow::Result<()> {
    let mut parts: Vec<Vec<&Positioned>> = vec![Vec::new(); shards.len()];
    for item in page {
        parts[shard_of(&item.event.contact_id, shards.len())].push(item);
    }
    std::thread::scope(|scope| {
        let workers: Vec<_> = shards
            .iter_mut()
            .zip(&parts)
            .map(|(shard, part)| scope.spawn(move || fold_events(shard, part, rules)))
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a fold thread panicked"))
    })
}

/// Rebuilds every contact from the global log, page by page: the contacts are split over
/// one folding thread per core, and the next page is read while the current one is folded.
pub(super) async fn replay(
    store: &dyn EventStore,
    rules: Arc<EscalationRules>,
) -> anyhow::Result<Replay> {
    let timed_read = |after| async move {
        let started = Instant::now();
        let page = store.read_all(after, PAGE).await;
        (page, started.elapsed())
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let mut shards: Vec<HashMap<String, Contact>> = vec![HashMap::new(); cores];
    let mut events = 0;
    let (mut page, mut read_busy) = timed_read(0).await;
    let mut fold_busy = Duration::ZERO;
    loop {
        let current = page?;
        let Some(last) = current.last() else {
            break;
        };
        let after = last.position;
        events += current.len() as u64;
        let rules = rules.clone();
        let folding = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            fold_page(&mut shards, &current, &rules).map(|()| (shards, started.elapsed()))
        });
        let ((next, read_took), folded) = tokio::join!(timed_read(after), folding);
        let (folded, fold_took) = folded.context("folding task failed")??;
        shards = folded;
        read_busy += read_took;
        fold_busy += fold_took;
        page = next;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Replay {
        events,
        contacts: shards.iter().map(HashMap::len).sum(),
        fold_threads: cores,
        seconds,
        events_per_s: events as f64 / seconds,
        read_s: read_busy.as_secs_f64(),
        fold_s: fold_busy.as_secs_f64(),
    })
}
