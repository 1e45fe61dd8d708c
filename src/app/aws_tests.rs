//! The whole pipeline on the AWS adapters, chosen by `config/aws.toml`-style settings:
//! DynamoDB and S3 on the moto server, Bedrock runtime and Connect on stubs that check what
//! AWS would check; the CRM webhook on a plain stub. Events land in DynamoDB, each escalation
//! reaches Connect once, summaries land in S3 and reach the webhook signed; running the same
//! input again changes nothing, and a replay adds version 2 everywhere.

use actix_web::HttpResponse;
use serde_json::json;

use super::replay::{ReplayTarget, replay};
use super::run::Inputs;
use super::{DataDir, backends, run::run, stores, summary_sink};
use crate::aws::stub::{Received, Stub, converse_answer, llama_answer};
use crate::aws::{AwsEndpoint, moto};
use crate::config::{Backend, Config, StoreKind, SummarySinkKind};
use crate::sinks::attributes::AttributeSinkKind;
use crate::sinks::connect::ConnectConfig;
use crate::sinks::s3::S3Config;
use crate::sinks::webhook::{
    DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookConfig, signature,
};
use crate::store::dynamodb::{DynamoEventStore, create_tables};
use crate::store::{EventStore, SeqRange};

const INSTANCE: &str = "11111111-2222-3333-4444-555555555555";

/// Bedrock: Converse answers a label by cue words; Llama 3 answers the summary lines.
fn bedrock(request: &Received, _: usize) -> HttpResponse {
    assert!(request.is_signed(), "unsigned Bedrock request");
    let body = String::from_utf8_lossy(&request.body).to_lowercase();
    if request.path.ends_with("/converse") {
        let angry = ["ridiculous", "unacceptable", "worst", "done with this"]
            .iter()
            .any(|cue| body.contains(cue));
        converse_answer(if angry { "NEGATIVE" } else { "NEUTRAL" })
    } else {
        llama_answer(
            " The customer wanted a refund and the agent escalated it.\nReason: A refund.\nResolution: The agent escalated it.\nFollow-up: The refunds team calls back.\nCustomer sentiment at end: NEGATIVE",
        )
    }
}

fn connect(request: &Received, _: usize) -> HttpResponse {
    assert!(request.is_signed(), "unsigned Connect request");
    assert_eq!(request.path, "/contact/attributes");
    HttpResponse::Ok().json(json!({}))
}

fn samples() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/calls");
    vec![
        dir.join("angry-refund.jsonl"),
        dir.join("calm-billing.jsonl"),
        dir.join("card-payment.jsonl"),
    ]
}

/// The card number, email and phone number the card-payment call speaks (in every form the
/// call gives them), lower-cased.
const SPOKEN_PII: [&str; 5] = [
    "4556737586899855",
    "four five five six seven three",
    "priya",
    "900461",
    "07700",
];

/// Fails naming `what` if `bytes` hold any of [`SPOKEN_PII`].
fn assert_no_pii(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes).to_lowercase();
    for value in SPOKEN_PII {
        assert!(!text.contains(value), "{what} holds {value:?}: {text}");
    }
}

#[actix_rt::test]
async fn the_demo_calls_run_end_to_end_on_the_aws_adapters() {
    let sdk = moto::config().await;
    let moto_endpoint = AwsEndpoint {
        region: Some("us-east-1".into()),
        endpoint_url: Some(moto::endpoint().to_string()),
    };
    let bedrock_stub = Stub::start(bedrock);
    let connect_stub = Stub::start(connect);

    let mut config = Config::load(None).unwrap();
    config.store.kind = StoreKind::Dynamodb;
    config.store.dynamodb.events_table = moto::unique_name("e2e-events");
    config.store.dynamodb.projections_table = moto::unique_name("e2e-projections");
    config.store.dynamodb.endpoint = moto_endpoint.clone();
    config.models.backend = Backend::Bedrock;
    config.models.bedrock.endpoint = AwsEndpoint {
        region: Some("us-east-1".into()),
        endpoint_url: Some(bedrock_stub.endpoint.clone()),
    };
    config.gateway.limits.concurrency = 8;
    config.attributes.sink = AttributeSinkKind::Connect;
    config.attributes.connect = Some(ConnectConfig {
        instance_id: INSTANCE.into(),
        endpoint: AwsEndpoint {
            region: Some("us-east-1".into()),
            endpoint_url: Some(connect_stub.endpoint.clone()),
        },
    });
    let bucket = moto::unique_name("e2e-summaries");
    config.summaries.sink = SummarySinkKind::S3;
    config.summaries.s3 = Some(S3Config {
        bucket: bucket.clone(),
        prefix: "summaries/".into(),
        force_path_style: true,
        endpoint: moto_endpoint,
    });

    let crm = Stub::start(|_, _| HttpResponse::Accepted().finish());
    config.summaries.webhook = Some(WebhookConfig {
        url: format!("{}/callpulse", crm.endpoint),
        // Tests cannot safely set a variable; one that is always there holds the secret.
        secret_env: "PATH".into(),
        ..WebhookConfig::default()
    });
    let secret = std::env::var("PATH").unwrap();

    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    create_tables(&dynamo, &config.store.dynamodb)
        .await
        .unwrap();
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket(&bucket).send().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(dir.path()).unwrap();
    let inputs = Inputs {
        files: samples(),
        listen: None,
        settle_timeout: std::time::Duration::from_secs(120),
        ..Inputs::default()
    };
    let stats = run(
        &config,
        &data,
        backends(&config).await.unwrap(),
        inputs.clone(),
    )
    .await
    .unwrap();
    assert_eq!(stats.undeliverable, 0);
    assert!(stats.appended > 20, "{stats:?}");

    // Events are in DynamoDB.
    let events = DynamoEventStore::new(dynamo.clone(), &config.store.dynamodb.events_table);
    let angry = events.read("angry-refund", SeqRange::all()).await.unwrap();
    let kinds: Vec<&str> = angry.iter().map(|e| e.kind.as_str()).collect();
    for kind in [
        "UtteranceReceived",
        "SentimentAssessed",
        "EscalationRaised",
        "AttributesUpdated",
        "SummaryGenerated",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let calm = events.read("calm-billing", SeqRange::all()).await.unwrap();
    assert!(calm.iter().all(|e| e.kind != "EscalationRaised"));

    // The card payment's card number, email and phone never reached a model prompt or the
    // log: the log says what was redacted.
    for request in bedrock_stub.received() {
        assert_no_pii("a Bedrock request", &request.body);
    }
    let paid = events.read("card-payment", SeqRange::all()).await.unwrap();
    let mut redacted = crate::redaction::Counts::new();
    for event in &paid {
        assert_no_pii("an event", event.payload.as_bytes());
        if let Ok(crate::events::Event::UtteranceReceived(u)) = event.decode() {
            for (kind, n) in u.redactions {
                *redacted.entry(kind).or_default() += n;
            }
        }
    }
    use crate::redaction::PiiKind;
    assert_eq!(
        redacted,
        crate::redaction::Counts::from([
            (PiiKind::Card, 1),
            (PiiKind::Phone, 1),
            (PiiKind::Email, 1)
        ])
    );

    // The escalation reached Connect once, with the contact and the configured attribute.
    let updates = connect_stub.received();
    assert_eq!(updates.len(), 1, "{updates:?}");
    let body = updates[0].json();
    assert_eq!(body["InstanceId"], INSTANCE);
    assert_eq!(body["InitialContactId"], "angry-refund");
    assert_eq!(body["Attributes"]["RealTimeSentiment"], "NEGATIVE");

    // Summaries are in S3, and went to the CRM signed.
    let object = |key: String| {
        let request = s3.get_object().bucket(&bucket).key(key);
        async move {
            let object = request.send().await.unwrap();
            object.body.collect().await.unwrap().into_bytes().to_vec()
        }
    };
    let mut first_versions = Vec::new();
    for contact in ["angry-refund", "calm-billing", "card-payment"] {
        let bytes = object(format!("summaries/{contact}/v1.json")).await;
        assert_no_pii("a summary", &bytes);
        let summary: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(summary["version"], 1);
        assert_eq!(summary["model"], "meta.llama3-8b-instruct-v1:0");
        assert!(summary["costUsd"].as_f64().unwrap() > 0.0, "{summary}");
        first_versions.push(bytes);
    }
    let deliveries = |crm: &Stub| {
        let mut ids: Vec<String> = crm
            .received()
            .iter()
            .map(|r| {
                let timestamp: i64 = r.header(TIMESTAMP_HEADER).unwrap().parse().unwrap();
                let expected = signature(secret.as_bytes(), timestamp, &r.body);
                assert_eq!(r.header(SIGNATURE_HEADER), Some(expected.as_str()));
                assert_eq!(r.path, "/callpulse");
                assert_no_pii("a CRM delivery", &r.body);
                r.header(DELIVERY_HEADER).unwrap().to_string()
            })
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        deliveries(&crm),
        ["angry-refund/v1", "calm-billing/v1", "card-payment/v1"]
    );

    // The same input again: nothing new anywhere.
    let bedrock_calls = bedrock_stub.received().len();
    let again = run(&config, &data, backends(&config).await.unwrap(), inputs)
        .await
        .unwrap();
    assert_eq!(again.appended, 0, "{again:?}");
    assert_eq!(connect_stub.received().len(), 1);
    assert_eq!(bedrock_stub.received().len(), bedrock_calls);
    assert_eq!(
        events.read("angry-refund", SeqRange::all()).await.unwrap(),
        angry
    );
    assert_eq!(crm.received().len(), 3);

    // A replay regenerates both summaries as version 2, on the same adapters; version 1
    // stays as it was.
    let (store, projections) = stores(&config, &data).await.unwrap();
    let mut out = Vec::new();
    let report = replay(
        store.as_ref(),
        projections.as_ref(),
        backends(&config).await.unwrap().summariser.as_ref(),
        std::sync::Arc::new(config.escalation.clone()),
        summary_sink(&config, &data).await.unwrap().as_ref(),
        &ReplayTarget::All { since: None },
        false,
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!((report.written, report.failed), (3, 0), "{report}");
    for (contact, v1) in ["angry-refund", "calm-billing", "card-payment"]
        .iter()
        .zip(&first_versions)
    {
        let v2: serde_json::Value =
            serde_json::from_slice(&object(format!("summaries/{contact}/v2.json")).await).unwrap();
        assert_eq!(v2["version"], 2);
        assert_eq!(&object(format!("summaries/{contact}/v1.json")).await, v1);
        let log = events.read(contact, SeqRange::all()).await.unwrap();
        let summaries = log.iter().filter(|e| e.kind == "SummaryGenerated").count();
        assert_eq!(summaries, 2, "{contact}");
    }
    assert_eq!(
        deliveries(&crm),
        [
            "angry-refund/v1",
            "angry-refund/v2",
            "calm-billing/v1",
            "calm-billing/v2",
            "card-payment/v1",
            "card-payment/v2"
        ]
    );
}
