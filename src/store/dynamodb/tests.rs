use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::HttpResponse;
use chrono::{DateTime, TimeZone, Utc};

use super::codec::{event_key, source_key};
use super::*;
use crate::aws::dynamodb::n;
use crate::aws::moto;
use crate::aws::stub::Stub;
use crate::events::StoredEvent;
use crate::events::{ChainHead, Event, Participant, UtteranceReceived};
use crate::models::Label;
use crate::store::memory::MemoryProjectionStore;
use crate::store::projection::catch_up;
use crate::store::{Appended, ContactFilter, ContactRow, EventStore, ProjectionStore, SeqRange};

/// A client of the moto server and a config with tables of this test's own.
async fn moto_tables() -> (Client, DynamoConfig) {
    let client = Client::new(&moto::config().await);
    let config = DynamoConfig {
        events_table: moto::unique_name("events"),
        projections_table: moto::unique_name("projections"),
        ..DynamoConfig::default()
    };
    create_tables(&client, &config).await.unwrap();
    (client, config)
}

/// The next `n` utterances of `contact` on `head`, recorded at `at`, of `len` characters,
/// the batch from input `source`.
fn utterances(
    head: &mut ChainHead,
    contact: &str,
    n: usize,
    len: usize,
    at: DateTime<Utc>,
    source: Option<&str>,
) -> Vec<StoredEvent> {
    let body = Event::UtteranceReceived(UtteranceReceived {
        segment_id: "s".into(),
        participant: Participant::Customer,
        text: "x".repeat(len),
        begin_offset_millis: None,
        end_offset_millis: None,
        redactions: Default::default(),
    });
    (0..n)
        .map(|_| head.seal(contact, source, &body, at))
        .collect()
}

#[tokio::test]
async fn idempotency_items_expire_by_the_time_to_live_create_tables_turns_on() {
    let (client, config) = moto_tables().await;
    // A second call finds it on and leaves it so.
    create_tables(&client, &config).await.unwrap();
    let ttl = client
        .describe_time_to_live()
        .table_name(&config.events_table)
        .send()
        .await
        .unwrap();
    let ttl = ttl.time_to_live_description().unwrap();
    assert_eq!(ttl.attribute_name(), Some(EXPIRES_AT));
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));

    let store = DynamoEventStore::new(client.clone(), &config.events_table)
        .with_key_retention(chrono::Duration::days(3));
    let at = Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap();
    let batch = utterances(&mut ChainHead::default(), "c", 2, 5, at, Some("in-1"));
    store.append(&batch).await.unwrap();
    let key = client
        .get_item()
        .table_name(&config.events_table)
        .set_key(Some(source_key("c", "in-1")))
        .send()
        .await
        .unwrap();
    let expires = key.item().and_then(|i| i.get(EXPIRES_AT)).cloned();
    let expected = (at + chrono::Duration::days(3)).timestamp();
    assert_eq!(expires, Some(n(expected)));
    // Events themselves never expire.
    let event = client
        .get_item()
        .table_name(&config.events_table)
        .set_key(Some(event_key("c", 1)))
        .send()
        .await
        .unwrap();
    assert!(event.item().unwrap().get(EXPIRES_AT).is_none());
}

#[tokio::test]
async fn create_tables_is_idempotent_and_checks_an_existing_design() {
    let (client, config) = moto_tables().await;
    create_tables(&client, &config).await.unwrap();
    let store = DynamoEventStore::new(client.clone(), &config.events_table);
    let batch = utterances(&mut ChainHead::default(), "c", 1, 5, Utc::now(), None);
    store.append(&batch).await.unwrap();
    create_tables(&client, &config).await.unwrap();
    assert_eq!(
        store.highest_seq("c").await.unwrap(),
        1,
        "the table was kept"
    );

    let plain = DynamoConfig {
        events_table: config.projections_table.clone(),
        projections_table: config.events_table.clone(),
        ..DynamoConfig::default()
    };
    let error = create_tables(&client, &plain).await.unwrap_err();
    assert!(
        format!("{error:#}").contains("exists with keys"),
        "{error:#}"
    );
}

#[tokio::test]
async fn batches_over_a_transaction_are_refused_clearly() {
    let (client, config) = moto_tables().await;
    let store = DynamoEventStore::new(client, &config.events_table);
    let now = Utc::now();

    let too_many = utterances(&mut ChainHead::default(), "many", 99, 5, now, None);
    let error = store.append(&too_many).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::InvalidBatch(m) if m.contains("at most 98")),
        "{error}"
    );
    let too_big = utterances(&mut ChainHead::default(), "big", 13, 340_000, now, None);
    let error = store.append(&too_big).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::InvalidBatch(m) if m.contains("smaller batches")),
        "{error}"
    );
    let long_id = "c".repeat(MAX_CONTACT_ID_BYTES + 1);
    let long = utterances(&mut ChainHead::default(), &long_id, 1, 5, now, None);
    let error = store.append(&long).await.unwrap_err();
    assert!(
        matches!(&error, StoreError::InvalidBatch(m) if m.contains("2046 bytes")),
        "{error}"
    );
    for contact in ["many", "big", &long_id] {
        assert_eq!(store.highest_seq(contact).await.unwrap(), 0);
    }

    // The largest batch fits: the check of event 1, 98 events and the source id item
    // are the 100 actions of one transaction.
    let mut head = ChainHead::default();
    store
        .append(&utterances(&mut head, "many", 1, 5, now, None))
        .await
        .unwrap();
    let largest = utterances(&mut head, "many", MAX_BATCH_EVENTS, 5, now, Some("in"));
    assert_eq!(
        store.append(&largest).await.unwrap(),
        Appended::Written {
            first_seq: 2,
            last_seq: 99
        }
    );
    let log = store.read("many", SeqRange::all()).await.unwrap();
    assert_eq!(&log[1..], &largest[..]);
}

/// DynamoDB answers a retried `TransactWriteItems` with a token it has already applied
/// without applying it again; moto does not keep tokens, so this checks our half on a
/// stub: the SDK's retry of an attempt carries the same token and body, and a separate
/// append carries a new token.
#[actix_rt::test]
async fn sdk_retries_resend_a_transaction_with_its_token() {
    let transactions = Arc::new(AtomicUsize::new(0));
    let counted = transactions.clone();
    let stub = Stub::start(move |request, _| {
        let target = request.header("x-amz-target").unwrap_or_default();
        let first =
            target.ends_with(".TransactWriteItems") && counted.fetch_add(1, Ordering::SeqCst) == 0;
        let (mut response, body) = if first {
            (
                HttpResponse::InternalServerError(),
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"lost"}"#,
            )
        } else {
            (HttpResponse::Ok(), "{}")
        };
        response
            .content_type("application/x-amz-json-1.0")
            .body(body)
    });
    let sdk = moto::config().await;
    let client = Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .endpoint_url(&stub.endpoint)
            .build(),
    );
    let store = DynamoEventStore::new(client, "events");
    let batch = utterances(&mut ChainHead::default(), "c", 2, 5, Utc::now(), Some("in"));
    let written = Appended::Written {
        first_seq: 1,
        last_seq: 2,
    };
    assert_eq!(store.append(&batch).await.unwrap(), written);
    assert_eq!(store.append(&batch).await.unwrap(), written);

    let sent: Vec<_> = stub
        .received()
        .into_iter()
        .filter(|r| r.header("x-amz-target") == Some("DynamoDB_20120810.TransactWriteItems"))
        .collect();
    assert_eq!(sent.len(), 3, "one attempt, its retry, a second append");
    assert!(sent.iter().all(|r| r.is_signed()));
    let token = |i: usize| {
        sent[i].json()["ClientRequestToken"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(token(0), token(1));
    assert_eq!(sent[0].body, sent[1].body);
    assert_ne!(token(2), token(0));
    assert!(token(0).len() <= 36);
    let actions = sent[0].json()["TransactItems"].as_array().unwrap().len();
    assert_eq!(actions, 3, "two events and the source id item");
}

#[tokio::test]
async fn the_feed_spans_days_in_position_order() {
    let (client, config) = moto_tables().await;
    let store = DynamoEventStore::new(client, &config.events_table);
    let days = [
        Utc.with_ymd_and_hms(2024, 3, 1, 23, 59, 59).unwrap(),
        Utc.with_ymd_and_hms(2025, 7, 14, 0, 0, 0).unwrap(),
        Utc::now(),
    ];
    let mut appended = Vec::new();
    for (i, at) in days.into_iter().enumerate().rev() {
        let batch = utterances(&mut ChainHead::default(), &format!("c{i}"), 2, 5, at, None);
        store.append(&batch).await.unwrap();
        appended.splice(0..0, batch);
    }
    let all = store.read_all(0, usize::MAX).await.unwrap();
    let events: Vec<_> = all.iter().map(|p| p.event.clone()).collect();
    assert_eq!(events, appended);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    for k in 0..all.len() {
        assert_eq!(
            store.read_all(all[k].position, 3).await.unwrap(),
            all[k + 1..(k + 4).min(all.len())]
        );
    }
}

#[tokio::test]
async fn late_and_out_of_order_commits_are_projected() {
    let (client, config) = moto_tables().await;
    let events = DynamoEventStore::new(client.clone(), &config.events_table);
    let projections = DynamoProjectionStore::new(client, &config.projections_table);
    let now = Utc::now();
    let on_time = utterances(&mut ChainHead::default(), "on-time", 1, 5, now, None);
    events.append(&on_time).await.unwrap();
    assert_eq!(catch_up(&events, &projections, 10).await.unwrap(), 1);
    let checkpoint = projections.checkpoint().await.unwrap();

    // Sealed 5 s ago, committed only now: behind the checkpoint.
    let late = utterances(
        &mut ChainHead::default(),
        "late",
        1,
        5,
        now - chrono::Duration::seconds(5),
        None,
    );
    events.append(&late).await.unwrap();
    // A writer whose clock is behind: event 2 is positioned before event 1.
    let mut head = ChainHead::default();
    let first = utterances(&mut head, "skewed", 1, 5, now, None);
    let second = utterances(
        &mut head,
        "skewed",
        1,
        5,
        now - chrono::Duration::seconds(9),
        None,
    );
    events.append(&first).await.unwrap();
    events.append(&second).await.unwrap();

    assert_eq!(catch_up(&events, &projections, 2).await.unwrap(), 3);
    for (contact, utterances) in [("on-time", 1), ("late", 1), ("skewed", 2)] {
        let row = projections.contact(contact).await.unwrap().unwrap();
        assert_eq!(
            (row.utterances, row.last_seq),
            (utterances, utterances as u64),
            "{contact}"
        );
    }
    assert!(projections.checkpoint().await.unwrap() >= checkpoint);
    assert_eq!(catch_up(&events, &projections, 2).await.unwrap(), 0);
}

fn row(
    id: &str,
    started: Option<DateTime<Utc>>,
    escalated: bool,
    sentiment: Option<Label>,
) -> ContactRow {
    ContactRow {
        contact_id: id.into(),
        instance_id: None,
        started_at: started,
        ended_at: None,
        escalated,
        escalations: escalated.into(),
        sentiment,
        summary_version: 0,
        utterances: 3,
        last_seq: 9,
    }
}

/// Two workers fold the same log at their own pace into one read-model table.
#[tokio::test]
async fn a_slower_fold_never_overwrites_a_newer_row_or_moves_the_checkpoint_back() {
    let (client, config) = moto_tables().await;
    let fast = DynamoProjectionStore::new(client.clone(), &config.projections_table);
    let slow = DynamoProjectionStore::new(client, &config.projections_table);
    let started = Some(Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap());
    let newer = ContactRow {
        utterances: 5,
        last_seq: 12,
        ..row("c-1", started, true, Some(Label::Negative))
    };
    fast.save(std::slice::from_ref(&newer), 100).await.unwrap();
    let older = ContactRow {
        utterances: 2,
        last_seq: 4,
        ..row("c-1", started, false, None)
    };
    let other = row("c-2", started, false, None);
    slow.save(&[older, other.clone()], 50).await.unwrap();
    assert_eq!(fast.contact("c-1").await.unwrap(), Some(newer.clone()));
    assert_eq!(
        fast.contact("c-2").await.unwrap(),
        Some(other),
        "the rest is written"
    );
    assert_eq!(fast.checkpoint().await.unwrap(), 100);
    // The same fold again (a catch-up re-reading its window) is written as before.
    fast.save(std::slice::from_ref(&newer), 100).await.unwrap();
    assert_eq!(slow.contact("c-1").await.unwrap(), Some(newer));
}

/// The audit queries over several days give what the in-memory store gives.
#[tokio::test]
async fn audit_queries_across_days_match_the_memory_store() {
    let (client, config) = moto_tables().await;
    let dynamo = DynamoProjectionStore::new(client, &config.projections_table);
    let memory = MemoryProjectionStore::new();
    let day = |d: u32, h: u32| Some(Utc.with_ymd_and_hms(2026, 11, d, h, 30, 0).unwrap());
    let labels = [None, Some(Label::Negative), Some(Label::Positive)];
    let mut rows = Vec::new();
    for (i, started) in [
        day(20, 23),
        day(21, 0),
        day(21, 12),
        day(23, 8),
        None,
        day(23, 8),
    ]
    .into_iter()
    .enumerate()
    {
        rows.push(row(&format!("c{i}"), started, i % 2 == 0, labels[i % 3]));
    }
    dynamo.save(&rows, 7).await.unwrap();
    memory.save(&rows, 7).await.unwrap();

    let times = [
        None,
        day(19, 0),
        day(21, 0),
        day(21, 13),
        day(23, 8),
        day(30, 0),
    ];
    for escalated in [None, Some(true), Some(false)] {
        for sentiment in [None, Some(Label::Negative), Some(Label::Neutral)] {
            for since in times {
                for until in times {
                    for limit in [None, Some(1), Some(2)] {
                        let filter = ContactFilter {
                            escalated,
                            since,
                            until,
                            sentiment,
                            limit,
                            ..ContactFilter::default()
                        };
                        assert_eq!(
                            dynamo.contacts(&filter).await.unwrap(),
                            memory.contacts(&filter).await.unwrap(),
                            "{filter:?}"
                        );
                    }
                }
            }
        }
    }
}
