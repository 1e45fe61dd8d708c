use std::sync::{Arc, Mutex};

use actix::prelude::*;
use actix_web::HttpResponse;
use aws_sdk_connect::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
use serde_json::json;
use tokio::sync::mpsc;

use super::*;
use crate::actors::dispatcher::{
    AttributeDispatcher, AttributeOutcome, AttributesConfig, SetAttributes,
};
use crate::aws::stub::Stub;

/// SDK configuration pointing at `stub`, with fixed credentials (so requests are signed).
fn stub_config(stub: &Stub) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&stub.endpoint)
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "AKIDSTUB",
            "stub-secret",
            None,
            None,
            "stub",
        )))
        .build()
}

fn sink(stub: &Stub) -> ConnectSink {
    let config = ConnectConfig {
        instance_id: "inst-1".into(),
        endpoint: AwsEndpoint::default(),
    };
    ConnectSink::with_sdk_config(&config, &stub_config(stub)).unwrap()
}

fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn unavailable() -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header(("x-amzn-ErrorType", "ServiceUnavailableException"))
        .json(json!({"message": "Service Unavailable"}))
}

/// Forwards the dispatcher's outcomes to the test.
struct Outcomes(mpsc::UnboundedSender<AttributeOutcome>);

impl Actor for Outcomes {
    type Context = Context<Self>;
}

impl Handler<AttributeOutcome> for Outcomes {
    type Result = ();

    fn handle(&mut self, outcome: AttributeOutcome, _: &mut Context<Self>) {
        let _ = self.0.send(outcome);
    }
}

/// A dispatcher over a ConnectSink on `stub`, and where its outcomes arrive.
fn dispatcher(
    stub: &Stub,
    requests_per_second: u32,
) -> (
    Addr<AttributeDispatcher>,
    Recipient<AttributeOutcome>,
    mpsc::UnboundedReceiver<AttributeOutcome>,
) {
    let config = AttributesConfig {
        requests_per_second,
        max_attempts: 5,
        retry_base_ms: 5,
        ..AttributesConfig::default()
    };
    let dispatcher = AttributeDispatcher::new(config, Arc::new(sink(stub))).start();
    let (tx, rx) = mpsc::unbounded_channel();
    (dispatcher, Outcomes(tx).start().recipient(), rx)
}

fn set(
    contact: &str,
    for_seq: u64,
    pairs: &[(&str, &str)],
    reply: &Recipient<AttributeOutcome>,
) -> SetAttributes {
    SetAttributes {
        contact_id: contact.into(),
        for_seq,
        attributes: attrs(pairs),
        reply: reply.clone(),
    }
}

#[actix_rt::test]
async fn sends_a_signed_update_contact_attributes_request() {
    let stub = Stub::start(|_, _| HttpResponse::Ok().json(json!({})));
    let attributes = attrs(&[("RealTimeSentiment", "NEGATIVE"), ("Escalated", "true")]);
    sink(&stub).set("c-1", &attributes).await.unwrap();

    let received = stub.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/contact/attributes");
    assert!(
        request
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        request.header("content-type")
    );
    assert!(request.is_signed(), "{:?}", request.header("authorization"));
    assert_eq!(
        request.json(),
        json!({
            "InstanceId": "inst-1",
            "InitialContactId": "c-1",
            "Attributes": {"RealTimeSentiment": "NEGATIVE", "Escalated": "true"}
        })
    );
}

#[actix_rt::test]
async fn throttling_is_an_error_that_says_so() {
    let stub = Stub::start(|_, _| {
        HttpResponse::TooManyRequests()
            .insert_header(("x-amzn-ErrorType", "TooManyRequestsException"))
            .json(json!({"Message": "Rate exceeded"}))
    });
    let error = sink(&stub)
        .set("c-1", &attrs(&[("RealTimeSentiment", "NEGATIVE")]))
        .await
        .unwrap_err();
    assert!(matches!(error, SinkError::Transient(_)), "{error}");
    let error = error.to_string();
    assert!(error.contains("throttled"), "{error}");
    assert!(error.contains("TooManyRequestsException"), "{error}");
    assert_eq!(stub.received().len(), 1, "the SDK's own retries are off");
}

#[actix_rt::test]
async fn attributes_over_connects_limits_are_refused_without_a_request() {
    let stub = Stub::start(|_, _| HttpResponse::Ok().json(json!({})));
    let sink = sink(&stub);
    let big = "x".repeat(MAX_ATTRIBUTES_BYTES);
    let error = sink
        .set("c-1", &attrs(&[("Notes", &big)]))
        .await
        .unwrap_err();
    assert!(matches!(error, SinkError::Refused(_)), "{error}");
    let error = error.to_string();
    assert!(error.contains("32768"), "{error}");
    let error = sink
        .set("c-1", &attrs(&[("bad key", "v")]))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("bad key"), "{error}");
    let error = sink
        .set("", &attrs(&[("k", "v")]))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("contact id"), "{error}");
    assert!(stub.received().is_empty());

    // Exactly at the limit is fine: multi-byte characters count as their UTF-8 bytes.
    let at_limit = "é".repeat((MAX_ATTRIBUTES_BYTES - 2) / 2);
    sink.set("c-1", &attrs(&[("ab", &at_limit)])).await.unwrap();
    assert_eq!(stub.received().len(), 1);
}

#[test]
fn an_empty_instance_id_is_refused() {
    let config: Result<ConnectConfig, _> = toml::from_str("instance_id = \"i\"\nregion = \"x\"");
    assert!(config.is_err(), "unknown fields are refused");
    let config: ConnectConfig =
        toml::from_str("instance_id = \" \"\n[endpoint]\nregion = \"eu-west-2\"").unwrap();
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .build();
    let error = ConnectSink::with_sdk_config(&config, &sdk).err().unwrap();
    assert!(error.contains("instance_id"), "{error}");
}

#[actix_rt::test]
async fn the_dispatcher_retries_while_connect_is_failing() {
    let stub = Stub::start(|_, i| {
        if i < 3 {
            unavailable()
        } else {
            HttpResponse::Ok().json(json!({}))
        }
    });
    let (dispatcher, reply, mut outcomes) = dispatcher(&stub, 0);
    dispatcher.do_send(set("c-1", 7, &[("RealTimeSentiment", "NEGATIVE")], &reply));
    match outcomes.recv().await.unwrap() {
        AttributeOutcome::Updated(updated) => {
            assert_eq!(updated.attempts, 4);
            assert_eq!(updated.for_seq, 7);
            assert_eq!(updated.sink, "connect");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stub.received().len(), 4);
}

#[actix_rt::test]
async fn the_dispatcher_gives_up_after_max_attempts() {
    let stub = Stub::start(|_, _| unavailable());
    let (dispatcher, reply, mut outcomes) = dispatcher(&stub, 0);
    dispatcher.do_send(set("c-1", 3, &[("RealTimeSentiment", "NEGATIVE")], &reply));
    match outcomes.recv().await.unwrap() {
        AttributeOutcome::Failed(failed) => {
            assert_eq!(failed.attempts, 5);
            assert!(failed.error.contains("HTTP 503"), "{}", failed.error);
            assert!(failed.error.contains("retryable"), "{}", failed.error);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stub.received().len(), 5);
}

#[actix_rt::test]
async fn a_throttling_storm_delivers_every_update_once_within_the_rate() {
    const PER_SECOND: u32 = 5;
    const CONTACTS: usize = 12;
    // Connect throttles the first request for each contact: half of all calls.
    let throttled = Mutex::new(std::collections::HashSet::new());
    let stub = Stub::start(move |request, _| {
        let contact = request.json()["InitialContactId"]
            .as_str()
            .unwrap()
            .to_string();
        if throttled.lock().unwrap().insert(contact) {
            HttpResponse::TooManyRequests()
                .insert_header(("x-amzn-ErrorType", "TooManyRequestsException"))
                .json(json!({"Message": "Rate exceeded"}))
        } else {
            HttpResponse::Ok().json(json!({}))
        }
    });
    let (dispatcher, reply, mut outcomes) = dispatcher(&stub, PER_SECOND);
    for n in 0..CONTACTS {
        let contact = format!("c-{n}");
        dispatcher.do_send(set(
            &contact,
            4,
            &[("RealTimeSentiment", "NEGATIVE")],
            &reply,
        ));
    }
    let mut updated = Vec::new();
    for _ in 0..CONTACTS {
        match outcomes.recv().await.unwrap() {
            AttributeOutcome::Updated(u) => {
                assert_eq!(u.attempts, 2, "{u:?}");
                updated.push(u.for_seq);
            }
            other => panic!("an update was lost: {other:?}"),
        }
    }
    assert_eq!(updated, [4; CONTACTS]);
    let received = stub.received();
    assert_eq!(
        received.len(),
        2 * CONTACTS,
        "one throttled try and one success each"
    );
    for n in 0..CONTACTS {
        let tries = received
            .iter()
            .filter(|r| r.json()["InitialContactId"] == format!("c-{n}"))
            .count();
        assert_eq!(tries, 2, "contact c-{n}");
    }
    // A burst of PER_SECOND, then PER_SECOND a second, retries included: no 1 s window
    // sees more than twice the rate (unlimited, all 24 would come within milliseconds).
    let busiest = stub.busiest(Duration::from_secs(1));
    assert!(
        busiest <= 2 * PER_SECOND as usize,
        "{busiest} requests within 1 s"
    );
}

#[actix_rt::test]
async fn updates_queued_behind_a_slow_request_are_merged_into_one() {
    // The first request is held until the test lets it go.
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let stub = Stub::start(move |_, i| {
        if i == 0 {
            let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(30));
        }
        HttpResponse::Ok().json(json!({}))
    });
    // One request per second: the first takes the allowance, the next two wait and merge.
    let (dispatcher, reply, mut outcomes) = dispatcher(&stub, 1);
    dispatcher.do_send(set("c-1", 1, &[("RealTimeSentiment", "NEGATIVE")], &reply));
    while stub.received().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    dispatcher.do_send(set(
        "c-1",
        2,
        &[("RealTimeSentiment", "MIXED"), ("Escalated", "true")],
        &reply,
    ));
    dispatcher.do_send(set("c-1", 3, &[("RealTimeSentiment", "NEGATIVE")], &reply));
    release.send(()).unwrap();

    let mut updated = Vec::new();
    for _ in 0..3 {
        match outcomes.recv().await.unwrap() {
            AttributeOutcome::Updated(u) => updated.push(u.for_seq),
            other => panic!("{other:?}"),
        }
    }
    updated.sort();
    assert_eq!(updated, [1, 2, 3]);
    let received = stub.received();
    assert_eq!(
        received.len(),
        2,
        "the two queued updates went as one request"
    );
    assert_eq!(
        received[1].json()["Attributes"],
        json!({"RealTimeSentiment": "NEGATIVE", "Escalated": "true"})
    );
}
