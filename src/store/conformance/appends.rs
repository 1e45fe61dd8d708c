//! Appends: failed batches (cases 13 and 14), stale expected versions (15), redelivered
//! inputs (16), racing writers (17), many contacts at once (18), the size limit (19), and
//! idempotency keys of long-ended contacts.

use super::*;

/// Cases 13 and 14: a failing batch leaves none of its events, even next to batches that
/// succeed at the same moment, and the highest sequence number never decreases.
pub(super) async fn failed_batches_leave_nothing(backend: &dyn Backend) {
    let store = backend.events();
    let log = setup(&*store, "c-1").await;
    let mut highest = 5;
    let mut never_decreases = async |store: &dyn EventStore| {
        let now = store.highest_seq("c-1").await.unwrap();
        assert!(now >= highest, "highest went from {highest} to {now}");
        highest = now;
    };

    let mut head = head_at(&log, 5);
    let mut oversize = sealed(&mut head.clone(), "c-1", 2);
    oversize[1].payload = "x".repeat(MAX_EVENT_BYTES);
    let mut gap = sealed(&mut head.clone(), "c-1", 3);
    gap.remove(1);
    let mut two_contacts = sealed(&mut head.clone(), "c-1", 2);
    two_contacts[1].contact_id = "c-2".into();
    let stale = sealed_from(&mut head_at(&log, 3), "c-1", 2, "late");

    assert!(matches!(
        store.append(&oversize).await,
        Err(StoreError::TooLarge { seq: 7, .. })
    ));
    never_decreases(&*store).await;
    for invalid in [&gap[..], &two_contacts[..], &[]] {
        let result = store.append(invalid).await;
        assert!(
            matches!(result, Err(StoreError::InvalidBatch(_))),
            "{result:?}"
        );
        never_decreases(&*store).await;
    }

    // A conflicting batch among good ones, all sent at once (SQLite commits them together).
    let good_before = sealed(&mut ChainHead::default(), "c-3", 3);
    let good_after = sealed(&mut ChainHead::default(), "c-4", 2);
    let (before, conflict, after) = tokio::join!(
        store.append(&good_before),
        store.append(&stale),
        store.append(&good_after)
    );
    assert_eq!(before.unwrap(), written(1, 3));
    assert!(
        matches!(conflict, Err(StoreError::Conflict { .. })),
        "{conflict:?}"
    );
    assert_eq!(after.unwrap(), written(1, 2));
    never_decreases(&*store).await;

    assert_eq!(store.read("c-1", SeqRange::all()).await.unwrap(), log);
    assert!(store.read("c-2", SeqRange::all()).await.unwrap().is_empty());
    let next = sealed(&mut head, "c-1", 2);
    assert_eq!(store.append(&next).await.unwrap(), written(6, 7));
    never_decreases(&*store).await;
    assert_eq!(highest, 7);
}

/// Case 15: an append whose expected version is stale (or ahead) conflicts and writes
/// nothing; after a reload it succeeds.
pub(super) async fn stale_expected_version_conflicts(backend: &dyn Backend) {
    let store = backend.events();
    let log = setup(&*store, "c-1").await;
    let stale = sealed_from(&mut head_at(&log, 3), "c-1", 1, "late");
    match store.append(&stale).await {
        Err(StoreError::Conflict {
            contact_id,
            expected,
            actual,
        }) => {
            assert_eq!((contact_id.as_str(), expected, actual), ("c-1", 3, 5));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let ahead = sealed(
        &mut ChainHead {
            seq: 6,
            hash: "f".repeat(64),
        },
        "c-1",
        1,
    );
    assert!(matches!(
        store.append(&ahead).await,
        Err(StoreError::Conflict {
            expected: 6,
            actual: 5,
            ..
        })
    ));
    assert_eq!(store.read("c-1", SeqRange::all()).await.unwrap(), log);

    let mut head = head_of(&*store, "c-1").await;
    let retry = sealed(&mut head, "c-1", 1);
    assert_eq!(store.append(&retry).await.unwrap(), written(6, 6));
}

/// Case 16: a batch whose source id is already in the contact's log is a no-op that returns
/// the original numbers, whatever its expected version; other contacts are not affected.
pub(super) async fn redelivered_inputs_are_no_ops(backend: &dyn Backend) {
    let store = backend.events();
    let log = setup(&*store, "c-1").await;
    let duplicate = Appended::Duplicate {
        first_seq: 4,
        last_seq: 5,
    };
    assert_eq!(store.append(&log[3..5]).await.unwrap(), duplicate);
    // Sealed again on today's head: same input, different numbers and hashes.
    let mut head = head_at(&log, 5);
    let mut again = sealed(&mut head, "c-1", 1);
    again[0].source_id = Some("in-4".into());
    again[0].hash = again[0].compute_hash();
    assert_eq!(store.append(&again).await.unwrap(), duplicate);
    // Also when only the key matches and the version is stale.
    let mut stale = sealed(&mut ChainHead::default(), "c-1", 1);
    stale[0].source_id = Some("in-2".into());
    assert_eq!(
        store.append(&stale).await.unwrap(),
        Appended::Duplicate {
            first_seq: 2,
            last_seq: 2
        }
    );
    assert_eq!(store.highest_seq("c-1").await.unwrap(), 5);
    assert_eq!(store.read("c-1", SeqRange::all()).await.unwrap(), log);
    // The key is per contact.
    let elsewhere = sealed(&mut ChainHead::default(), "c-2", 1);
    assert_eq!(elsewhere[0].source_id.as_deref(), Some("in-1"));
    assert_eq!(store.append(&elsewhere).await.unwrap(), written(1, 1));
    // Events without a source id are never duplicates of each other.
    let mut head = head_at(&log, 5);
    for seq in 6..8 {
        let event = head.seal("c-1", None, &utterance("again"), Utc::now());
        assert_eq!(store.append(&[event]).await.unwrap(), written(seq, seq));
    }
}

/// Case 17: two writers racing on one contact: exactly one wins each sequence number, the
/// other gets a conflict; writers that reload and retry end with one unbroken chain.
pub(super) async fn racing_writers(backend: &dyn Backend) {
    let store = backend.events();
    for round in 1..=20u64 {
        let head = head_of(&*store, "race").await;
        let barrier = Arc::new(Barrier::new(2));
        let racers = (0..2).map(|writer| {
            let (store, barrier, mut head) = (store.clone(), barrier.clone(), head.clone());
            tokio::spawn(async move {
                let source = format!("w{writer}-r{round}");
                let event = head.seal("race", Some(&source), &utterance("mine"), Utc::now());
                barrier.wait().await;
                store.append(&[event]).await
            })
        });
        let mut results = Vec::new();
        for racer in racers.collect::<Vec<_>>() {
            results.push(racer.await.unwrap());
        }
        let wins = results
            .iter()
            .filter(|r| matches!(r, Ok(a) if *a == written(round, round)));
        assert_eq!(wins.count(), 1, "round {round}: {results:?}");
        assert!(
            results.iter().any(|r| matches!(
                r,
                Err(StoreError::Conflict { expected, actual, .. }) if *expected == round - 1 && *actual == round
            )),
            "round {round}: {results:?}"
        );
    }

    // Free for all: four writers, 25 events each, reloading on every conflict.
    let writers = (0..4).map(|writer| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut done = 0;
            while done < 25 {
                let mut head = head_of(&*store, "race").await;
                let source = format!("free-{writer}-{done}");
                let event = head.seal("race", Some(&source), &utterance("mine"), Utc::now());
                match store.append(&[event]).await {
                    Ok(Appended::Written { .. }) => done += 1,
                    Err(StoreError::Conflict { .. }) => tokio::task::yield_now().await,
                    other => panic!("writer {writer}: {other:?}"),
                }
            }
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.unwrap();
    }
    let log = store.read("race", SeqRange::all()).await.unwrap();
    assert_eq!(log.len(), 120);
    verify_chain(&log);
}

/// Case 18: many writers on different contacts at once all succeed, each contact's order kept.
pub(super) async fn many_contacts_at_once(backend: &dyn Backend) {
    let store = backend.events();
    let writers = (0..16).map(|writer| {
        let store = store.clone();
        tokio::spawn(async move {
            let contact = format!("many-{writer}");
            let mut head = ChainHead::default();
            let mut log = Vec::new();
            while log.len() < 40 {
                let batch = sealed(&mut head, &contact, 1 + log.len() % 3);
                let first = batch[0].seq;
                assert_eq!(
                    store.append(&batch).await.unwrap(),
                    written(first, head.seq)
                );
                log.extend(batch);
            }
            (contact, log)
        })
    });
    let mut total = 0;
    for writer in writers.collect::<Vec<_>>() {
        let (contact, log) = writer.await.unwrap();
        let stored = store.read(&contact, SeqRange::all()).await.unwrap();
        assert_eq!(stored, log);
        verify_chain(&stored);
        total += log.len();
    }
    let global = store.read_all(0, usize::MAX).await.unwrap();
    assert_eq!(global.len(), total);
    for writer in 0..16 {
        let contact = format!("many-{writer}");
        let seqs: Vec<u64> = global
            .iter()
            .filter(|p| p.event.contact_id == contact)
            .map(|p| p.event.seq)
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    }
}

/// The next event of `contact` on `head`, padded to exactly `bytes` ([`StoredEvent::stored_len`]).
fn of_size(head: &mut ChainHead, contact: &str, bytes: usize) -> StoredEvent {
    let now = Utc::now();
    let bare = head
        .clone()
        .seal(contact, None, &utterance(""), now)
        .stored_len();
    let event = head.seal(contact, None, &utterance(&"x".repeat(bytes - bare)), now);
    assert_eq!(event.stored_len(), bytes);
    event
}

/// Case 19: an event at the size limit round-trips; one over it is refused with
/// `TooLarge`, with the rest of its batch.
pub(super) async fn size_limit(backend: &dyn Backend) {
    let store = backend.events();
    let mut head = ChainHead::default();
    let at_limit = of_size(&mut head, "big", MAX_EVENT_BYTES);
    assert_eq!(
        store.append(std::slice::from_ref(&at_limit)).await.unwrap(),
        written(1, 1)
    );
    assert_eq!(
        store.read("big", SeqRange::all()).await.unwrap(),
        [at_limit]
    );

    let small = sealed(&mut head.clone(), "big", 1).remove(0);
    let mut after_small = ChainHead {
        seq: small.seq,
        hash: small.hash.clone(),
    };
    let over = of_size(&mut after_small, "big", MAX_EVENT_BYTES + 1);
    match store.append(&[small, over]).await {
        Err(StoreError::TooLarge {
            contact_id,
            seq,
            bytes,
        }) => {
            assert_eq!(
                (contact_id.as_str(), seq, bytes),
                ("big", 3, MAX_EVENT_BYTES + 1)
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let alone = of_size(&mut head.clone(), "big", MAX_EVENT_BYTES + 1);
    assert!(matches!(
        store.append(&[alone]).await,
        Err(StoreError::TooLarge { seq: 2, .. })
    ));
    assert_eq!(store.highest_seq("big").await.unwrap(), 1);
    assert_eq!(store.read_all(0, usize::MAX).await.unwrap().len(), 1);
}

/// Idempotency keys of a contact whose end was recorded before the bound may be forgotten
/// (then a batch with one is judged by its sequence number alone); every other key is kept,
/// and a second pass over the same bound forgets nothing.
pub(super) async fn keys_of_long_ended_contacts_may_be_forgotten(backend: &dyn Backend) {
    let store = backend.events();
    let now = Utc::now();
    let long_ago = now - chrono::Duration::days(10);
    let ended = |at| {
        Event::ContactEnded(ContactEnded {
            ended_at: at,
            reason: EndReason::Ended,
        })
    };
    let mut firsts = Vec::new();
    for (contact, end) in [
        ("long-ended", Some(long_ago)),
        ("open", None),
        ("just-ended", Some(now)),
    ] {
        let mut head = ChainHead::default();
        let first = head.seal(contact, Some("in-1"), &utterance("hello"), long_ago);
        store.append(std::slice::from_ref(&first)).await.unwrap();
        if let Some(at) = end {
            let last = head.seal(contact, Some("end"), &ended(at), at);
            store.append(&[last]).await.unwrap();
        }
        firsts.push(first);
    }
    let forgotten = store
        .forget_sources(now - chrono::Duration::days(7))
        .await
        .unwrap();
    assert_eq!(forgotten, if backend.forgets_sources() { 2 } else { 0 });
    let duplicate = Appended::Duplicate {
        first_seq: 1,
        last_seq: 1,
    };
    for kept in &firsts[1..] {
        assert_eq!(
            store.append(std::slice::from_ref(kept)).await.unwrap(),
            duplicate
        );
    }
    let again = store.append(std::slice::from_ref(&firsts[0])).await;
    if forgotten == 0 {
        assert_eq!(again.unwrap(), duplicate);
    } else {
        assert!(
            matches!(again, Err(StoreError::Conflict { actual: 2, .. })),
            "{again:?}"
        );
    }
    let store = backend.events();
    assert_eq!(
        store
            .forget_sources(now - chrono::Duration::days(7))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .read("long-ended", SeqRange::all())
            .await
            .unwrap()
            .len(),
        2
    );
}
