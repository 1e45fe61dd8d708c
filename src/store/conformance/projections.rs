//! The read-model contract: rows and checkpoint saved together and filtered, the rows that
//! owe work, and `catch_up` folding the log into rows and rebuilding them.

use super::*;

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 9, minute, 0).unwrap()
        + chrono::Duration::nanoseconds(123_456_789)
}

fn row(id: &str, started: Option<u32>, escalated: bool, sentiment: Option<Label>) -> ContactRow {
    ContactRow {
        contact_id: id.into(),
        instance_id: Some(format!("instance of {id}")),
        started_at: started.map(at),
        ended_at: started.map(|m| at(m + 7)),
        escalated,
        escalations: escalated.into(),
        sentiment,
        summary_version: 2,
        utterances: 11,
        last_seq: 40,
    }
}

/// Read models: rows and checkpoint saved together, loaded, filtered, updated and reset.
pub(super) async fn projection_rows_round_trip_and_filter(backend: &dyn Backend) {
    let store = backend.projections();
    assert_eq!(store.checkpoint().await.unwrap(), 0);
    let rows = [
        row("d", Some(30), false, Some(Label::Positive)),
        row("a", Some(10), true, Some(Label::Negative)),
        row("e", None, false, None),
        row("b", Some(20), false, Some(Label::Negative)),
        row("c", Some(20), true, Some(Label::Neutral)),
    ];
    store.save(&rows, 17).await.unwrap();
    assert_eq!(store.checkpoint().await.unwrap(), 17);
    for row in &rows {
        assert_eq!(
            store.contact(&row.contact_id).await.unwrap().as_ref(),
            Some(row)
        );
    }
    assert_eq!(store.contact("nobody").await.unwrap(), None);
    let some = store
        .rows(&["c".into(), "nobody".into(), "a".into()])
        .await
        .unwrap();
    assert_eq!(some.len(), 2);
    assert_eq!(some.get("a"), Some(&rows[1]));
    assert_eq!(some.get("c"), Some(&rows[4]));
    // More ids than one DynamoDB BatchGetItem takes.
    let many: Vec<ContactRow> = (0..120)
        .map(|i| row(&format!("many-{i}"), Some(i % 50), false, None))
        .collect();
    store.save(&many, 17).await.unwrap();
    let ids: Vec<String> = many.iter().map(|r| r.contact_id.clone()).collect();
    let found = store.rows(&ids).await.unwrap();
    assert_eq!(found.len(), 120);
    assert!(many.iter().all(|r| found.get(&r.contact_id) == Some(r)));
    store.reset().await.unwrap();
    store.save(&rows, 17).await.unwrap();

    let ids = async |filter: ContactFilter| -> Vec<String> {
        let rows = store.contacts(&filter).await.unwrap();
        rows.into_iter().map(|row| row.contact_id).collect()
    };
    let filter = ContactFilter::default;
    assert_eq!(
        ids(filter()).await,
        ["a", "b", "c", "d", "e"],
        "oldest first, unstarted last"
    );
    assert_eq!(
        ids(ContactFilter {
            escalated: Some(true),
            ..filter()
        })
        .await,
        ["a", "c"]
    );
    assert_eq!(
        ids(ContactFilter {
            escalated: Some(false),
            ..filter()
        })
        .await,
        ["b", "d", "e"]
    );
    assert_eq!(
        ids(ContactFilter {
            sentiment: Some(Label::Negative),
            ..filter()
        })
        .await,
        ["a", "b"]
    );
    assert_eq!(
        ids(ContactFilter {
            since: Some(at(20)),
            ..filter()
        })
        .await,
        ["b", "c", "d"]
    );
    assert_eq!(
        ids(ContactFilter {
            until: Some(at(20)),
            ..filter()
        })
        .await,
        ["a"]
    );
    let window = ContactFilter {
        since: Some(at(10) + chrono::Duration::nanoseconds(1)),
        until: Some(at(30) + chrono::Duration::nanoseconds(1)),
        escalated: Some(false),
        limit: Some(1),
        ..filter()
    };
    assert_eq!(ids(window).await, ["b"]);
    assert_eq!(
        ids(ContactFilter {
            open: Some(true),
            ..filter()
        })
        .await,
        ["e"]
    );
    assert_eq!(
        ids(ContactFilter {
            open: Some(false),
            contact_contains: Some("c".into()),
            ..filter()
        })
        .await,
        ["c"]
    );
    // Pages of two, each after the last row of the one before, ties on the start by id,
    // the contact not started last.
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .contacts(&ContactFilter {
                after: after.clone(),
                limit: Some(2),
                ..filter()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(ContactCursor::of(last));
        pages.push(
            page.iter()
                .map(|r| r.contact_id.clone())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(pages, [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
    assert_eq!(
        ids(ContactFilter {
            limit: Some(0),
            ..filter()
        })
        .await,
        Vec::<String>::new()
    );

    let mut changed = rows[2].clone();
    changed.started_at = Some(at(5));
    changed.sentiment = Some(Label::Negative);
    store
        .save(std::slice::from_ref(&changed), 18)
        .await
        .unwrap();
    assert_eq!(store.checkpoint().await.unwrap(), 18);
    assert_eq!(store.contact("e").await.unwrap(), Some(changed));
    assert_eq!(ids(filter()).await, ["e", "a", "b", "c", "d"]);
    store.save(&[], 19).await.unwrap();
    assert_eq!(store.checkpoint().await.unwrap(), 19);

    store.reset().await.unwrap();
    assert_eq!(store.checkpoint().await.unwrap(), 0);
    assert!(store.contacts(&filter()).await.unwrap().is_empty());
}

/// Read models: `unfinished` lists exactly the rows that owe work (open, or ended with
/// utterances and no summary), oldest start first, and follows their changes.
pub(super) async fn unfinished_rows_come_from_their_index(backend: &dyn Backend) {
    let store = backend.projections();
    let open = ContactRow {
        ended_at: None,
        summary_version: 0,
        ..row("open", Some(20), false, None)
    };
    let unsummarised = ContactRow {
        summary_version: 0,
        ..row("unsummarised", Some(10), true, Some(Label::Negative))
    };
    let not_started = ContactRow {
        ended_at: None,
        ..row("not-started", None, false, None)
    };
    let silent = ContactRow {
        summary_version: 0,
        utterances: 0,
        ..row("silent", Some(5), false, None)
    };
    let done = row("done", Some(1), false, Some(Label::Positive));
    let rows = [&open, &unsummarised, &not_started, &silent, &done].map(Clone::clone);
    store.save(&rows, 3).await.unwrap();
    let unfinished = || async {
        let rows = store.unfinished().await.unwrap();
        rows.into_iter().map(|r| r.contact_id).collect::<Vec<_>>()
    };
    assert_eq!(unfinished().await, ["unsummarised", "open", "not-started"]);
    assert_eq!(store.unfinished().await.unwrap()[0], unsummarised);

    let summarised = ContactRow {
        summary_version: 1,
        last_seq: 41,
        ..unsummarised
    };
    let ended = ContactRow {
        ended_at: Some(at(30)),
        last_seq: 41,
        ..open
    };
    store.save(&[summarised, ended], 4).await.unwrap();
    assert_eq!(unfinished().await, ["open", "not-started"]);
    let summarised = ContactRow {
        summary_version: 1,
        last_seq: 42,
        ..store.contact("open").await.unwrap().unwrap()
    };
    store.save(&[summarised], 5).await.unwrap();
    assert_eq!(unfinished().await, ["not-started"]);
    store.reset().await.unwrap();
    assert!(store.unfinished().await.unwrap().is_empty());
}

/// `catch_up` folds the log into rows page by page, only what is new on a second call, and
/// rebuilds the same rows after a reset; an event that does not decode is skipped.
pub(super) async fn catch_up_builds_and_rebuilds_rows(backend: &dyn Backend) {
    let (events, projections) = (backend.events(), backend.projections());
    let mut heads = [ChainHead::default(), ChainHead::default()];
    for (h, contact) in [(0, "x"), (1, "y"), (0, "x"), (0, "x"), (1, "y")] {
        let batch = sealed(&mut heads[h], contact, 2);
        events.append(&batch).await.unwrap();
    }
    assert_eq!(catch_up(&*events, &*projections, 3).await.unwrap(), 10);
    let x = projections.contact("x").await.unwrap().unwrap();
    assert_eq!((x.utterances, x.last_seq), (6, 6));
    assert_eq!(catch_up(&*events, &*projections, 3).await.unwrap(), 0);

    let mut bogus = sealed(&mut heads[0], "x", 1);
    bogus[0].kind = "NoSuchKind".into();
    bogus[0].hash = bogus[0].compute_hash();
    events.append(&bogus).await.unwrap();
    let changed = Event::SentimentChanged(SentimentChanged {
        from: None,
        to: Label::Negative,
        why: "w".into(),
    });
    let last = heads[0].seal("x", None, &changed, Utc::now());
    events.append(&[last]).await.unwrap();
    assert_eq!(catch_up(&*events, &*projections, 100).await.unwrap(), 1);
    let x = projections.contact("x").await.unwrap().unwrap();
    assert_eq!(
        (x.utterances, x.last_seq, x.sentiment),
        (6, 8, Some(Label::Negative))
    );
    let last = events.read_all(0, usize::MAX).await.unwrap().pop().unwrap();
    assert_eq!(projections.checkpoint().await.unwrap(), last.position);

    let before = projections
        .contacts(&ContactFilter::default())
        .await
        .unwrap();
    projections.reset().await.unwrap();
    assert_eq!(catch_up(&*events, &*projections, 5).await.unwrap(), 11);
    assert_eq!(
        projections
            .contacts(&ContactFilter::default())
            .await
            .unwrap(),
        before
    );
}
