//! Reads: by range, bound and count (cases 1 to 12), text byte for byte (case 20), the
//! global feed in a stable order (case 21), old event versions after a reload (case 23).

use super::*;

/// Cases 1 to 12: reads by range, bound and count; highest sequence numbers.
pub(super) async fn read_ranges(backend: &dyn Backend) {
    let store = backend.events();
    let log = setup(&*store, "c-1").await;
    let range = |from, to, max| SeqRange { from, to, max };
    let all = usize::MAX;
    let cases: [(SeqRange, Range<usize>); 10] = [
        (SeqRange::all(), 0..5),       // 1
        (SeqRange::from(3), 2..5),     // 2
        (range(1, 3, all), 0..3),      // 3
        (range(1, u64::MAX, 3), 0..3), // 4
        (range(2, 3, all), 1..3),      // 5
        (range(2, 5, 2), 1..3),        // 6
        (range(2, 2, all), 1..2),      // 7
        (range(2, 4, 1), 1..2),        // 8
        (range(1, u64::MAX, 0), 0..0), // 9
        (range(3, 2, all), 0..0),      // 10
    ];
    for (range, expected) in cases {
        let got = store.read("c-1", range).await.unwrap();
        assert_eq!(got, log[expected], "{range:?}");
        assert_eq!(store.highest_seq("c-1").await.unwrap(), 5, "{range:?}");
    }
    // 11
    assert!(
        store
            .read("nobody", SeqRange::all())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.highest_seq("nobody").await.unwrap(), 0);
    // 12: on a fresh handle that has read nothing (a reload, for stores with a file).
    assert_eq!(backend.events().highest_seq("c-1").await.unwrap(), 5);
}

/// Case 20: unicode, emoji, quotes, backslashes, control characters and newlines in text,
/// ids and source ids come back byte for byte, and still hash alike.
pub(super) async fn text_round_trips_byte_for_byte(backend: &dyn Backend) {
    let store = backend.events();
    let texts = [
        "naïve café, Straße, 日本語, עברית, \u{202e}reversed\u{202c}",
        "😡🔥👍🏽 family: 👨‍👩‍👧 flags: 🇩🇪",
        r#"she said "no", then 'maybe' \ and \" and \\n"#,
        "line one\nline two\r\nline three\ttabbed\u{0}nul\u{7f}\u{200b}",
        "",
        "'; DROP TABLE events; --",
    ];
    let contact = "contact-ü-😀 \"quoted\"";
    let mut head = ChainHead::default();
    let mut log = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let source = format!("src \"{i}\"\n✓");
        log.push(head.seal(contact, Some(&source), &utterance(text), Utc::now()));
    }
    store.append(&log[..2]).await.unwrap();
    store.append(&log[2..]).await.unwrap();

    let stored = backend
        .events()
        .read(contact, SeqRange::all())
        .await
        .unwrap();
    assert_eq!(stored, log);
    verify_chain(&stored);
    for (event, text) in stored.iter().zip(texts) {
        let Ok(Event::UtteranceReceived(body)) = event.decode() else {
            panic!("{event:?} does not decode");
        };
        assert_eq!(body.text.as_bytes(), text.as_bytes());
    }
}

/// Case 21: a global read from a position returns every event once, in a stable order,
/// across contacts, however it is paged.
pub(super) async fn global_read_in_stable_order(backend: &dyn Backend) {
    let store = backend.events();
    let mut heads = [
        ChainHead::default(),
        ChainHead::default(),
        ChainHead::default(),
    ];
    let mut appended = Vec::new();
    for (i, n) in [1, 2, 1, 3, 1, 1, 2, 1, 2, 1].into_iter().enumerate() {
        let contact = ["a", "b", "c"][i % 3];
        let batch = sealed(&mut heads[i % 3], contact, n);
        store.append(&batch).await.unwrap();
        appended.extend(batch);
    }
    let all = store.read_all(0, usize::MAX).await.unwrap();
    let events: Vec<_> = all.iter().map(|p| p.event.clone()).collect();
    assert_eq!(events, appended, "commit order, each event once");
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(store.read_all(0, usize::MAX).await.unwrap(), all, "stable");

    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, 4).await.unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 4);
        after = last.position;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    for k in 0..all.len() {
        assert_eq!(
            store.read_all(all[k].position, usize::MAX).await.unwrap(),
            all[k + 1..]
        );
    }
    assert!(store.read_all(after, 0).await.unwrap().is_empty());
}

/// Case 23: an old event version (the seed's `SentimentAssessed` v1) still loads, upcast,
/// and the hash chain verifies after a reload.
pub(super) async fn old_versions_load_and_verify_after_reload(backend: &dyn Backend) {
    let mut v1 = StoredEvent {
        contact_id: "old".into(),
        seq: 1,
        event_id: uuid::Uuid::now_v7(),
        recorded_at: Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap(),
        schema_version: 1,
        kind: "SentimentAssessed".into(),
        source_id: Some("seed-1".into()),
        payload: r#"{"kind":"SentimentAssessed","segmentId":"s-1","sentiment":"NEGATIVE"}"#.into(),
        prev_hash: GENESIS_HASH.into(),
        hash: String::new(),
    };
    v1.hash = v1.compute_hash();
    let mut head = ChainHead {
        seq: 1,
        hash: v1.hash.clone(),
    };
    let changed = Event::SentimentChanged(SentimentChanged {
        from: None,
        to: Label::Negative,
        why: "first judgement".into(),
    });
    let later = [
        head.seal("old", None, &changed, Utc::now()),
        head.seal("old", Some("in-3"), &utterance("still waiting"), Utc::now()),
    ];
    let store = backend.events();
    store.append(std::slice::from_ref(&v1)).await.unwrap();
    store.append(&later).await.unwrap();
    drop(store);

    let log = backend.events().read("old", SeqRange::all()).await.unwrap();
    assert_eq!(log[0], v1);
    verify_chain(&log);
    let bodies: Vec<Event> = log.iter().map(|e| e.decode().unwrap()).collect();
    let Event::SentimentAssessed(assessed) = &bodies[0] else {
        panic!("{:?}", bodies[0]);
    };
    assert_eq!(
        (assessed.label, assessed.segment_id.as_str()),
        (Label::Negative, "s-1")
    );
    assert_eq!(bodies[1], changed);
}
