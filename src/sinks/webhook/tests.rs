use actix_web::HttpResponse;
use serde_json::json;

use super::*;
use crate::aws::stub::{Received, Stub};
use crate::sinks::summaries::SummaryFolder;

const SECRET: &[u8] = b"shared-secret";

fn summary(version: u32) -> SummaryGenerated {
    SummaryGenerated {
        version,
        model: "local:smollm2-135m".into(),
        prompt_version: 2,
        text: "- Refund asked for".into(),
        reason: "refund".into(),
        resolution: "escalated".into(),
        follow_up: "call back".into(),
        customer_sentiment: None,
        chunks: 1,
        tokens_in: 300,
        tokens_out: 40,
        cost_usd: None,
    }
}

fn config(url: &str) -> WebhookConfig {
    WebhookConfig {
        url: url.into(),
        retry_base_ms: 5,
        retry_max_ms: 50,
        max_attempts: 4,
        ..WebhookConfig::default()
    }
}

fn webhook(url: &str) -> Webhook {
    Webhook::with_secret(&config(url), SECRET.to_vec()).unwrap()
}

/// Checks a request's signature the way a receiver would.
fn verifies(request: &Received) -> bool {
    let timestamp: i64 = request.header(TIMESTAMP_HEADER).unwrap().parse().unwrap();
    request.header(SIGNATURE_HEADER) == Some(&signature(SECRET, timestamp, &request.body))
}

fn unavailable() -> HttpResponse {
    HttpResponse::ServiceUnavailable().body("down for maintenance")
}

#[actix_rt::test]
async fn posts_the_summary_signed_with_its_delivery_id() {
    let stub = Stub::start(|_, _| HttpResponse::NoContent().finish());
    let url = format!("{}/hooks/calls?tenant=7", stub.endpoint);
    webhook(&url).deliver("c-1", &summary(2)).await.unwrap();

    let received = stub.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/calls");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header(DELIVERY_HEADER), Some("c-1/v2"));
    assert!(verifies(request), "{:?}", request.headers);
    let body = request.json();
    assert_eq!(body["contactId"], "c-1");
    assert_eq!(body["version"], 2);
    assert_eq!(body["text"], "- Refund asked for");

    // A changed body or another secret does not verify.
    let mut tampered = request.clone();
    tampered.body.push(b' ');
    assert!(!verifies(&tampered));
    let timestamp: i64 = request.header(TIMESTAMP_HEADER).unwrap().parse().unwrap();
    assert_ne!(
        request.header(SIGNATURE_HEADER),
        Some(signature(b"other", timestamp, &request.body).as_str())
    );
}

#[actix_rt::test]
async fn outages_and_throttling_are_retried_with_the_same_delivery() {
    let stub = Stub::start(|_, i| match i {
        0 => unavailable(),
        1 => HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", "0"))
            .finish(),
        _ => HttpResponse::Ok().json(json!({"ok": true})),
    });
    webhook(&stub.endpoint)
        .deliver("c-1", &summary(1))
        .await
        .unwrap();
    let received = stub.received();
    assert_eq!(received.len(), 3);
    for request in &received {
        assert_eq!(request.header(DELIVERY_HEADER), Some("c-1/v1"));
        assert_eq!(request.body, received[0].body);
        assert!(verifies(request));
    }
}

#[actix_rt::test]
async fn a_refusal_is_final_and_quoted() {
    let stub = Stub::start(|_, _| HttpResponse::BadRequest().body("unknown contact"));
    let error = webhook(&stub.endpoint)
        .deliver("c-1", &summary(1))
        .await
        .unwrap_err();
    assert!(error.contains("refused summary c-1/v1"), "{error}");
    assert!(error.contains("400"), "{error}");
    assert!(error.contains("unknown contact"), "{error}");
    assert_eq!(stub.received().len(), 1, "a 400 is not retried");
}

#[actix_rt::test]
async fn a_redirect_is_not_followed() {
    let stub = Stub::start(|_, _| {
        HttpResponse::TemporaryRedirect()
            .insert_header(("Location", "http://127.0.0.1:9/elsewhere"))
            .finish()
    });
    let error = webhook(&stub.endpoint)
        .deliver("c-1", &summary(1))
        .await
        .unwrap_err();
    assert!(error.contains("307"), "{error}");
    assert_eq!(stub.received().len(), 1);
}

#[actix_rt::test]
async fn a_receiver_that_stays_down_is_reported_after_max_attempts() {
    let stub = Stub::start(|_, _| unavailable());
    let error = webhook(&stub.endpoint)
        .deliver("c-1", &summary(1))
        .await
        .unwrap_err();
    assert!(error.contains("in 4 attempts"), "{error}");
    assert!(error.contains("down for maintenance"), "{error}");
    assert_eq!(stub.received().len(), 4);

    // Nothing listening at all: connection errors are retried the same way.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let error = webhook(&url).deliver("c-1", &summary(1)).await.unwrap_err();
    assert!(error.contains("in 4 attempts"), "{error}");
}

#[actix_rt::test]
async fn errors_name_the_receiver_but_never_its_path_or_query() {
    let stub = Stub::start(|_, _| HttpResponse::Forbidden().finish());
    let secret_url = format!("{}/hooks/T0KEN-PATH?token=s3cr3t", stub.endpoint);
    let error = webhook(&secret_url)
        .deliver("c-1", &summary(1))
        .await
        .unwrap_err();
    assert!(error.contains(&stub.endpoint), "{error}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!(
        "http://{}/hooks/T0KEN-PATH?token=s3cr3t",
        closed.local_addr().unwrap()
    );
    drop(closed);
    let unreachable = webhook(&down)
        .deliver("c-1", &summary(1))
        .await
        .unwrap_err();
    let refused = Webhook::with_secret(
        &config("ftp://crm.example/T0KEN-PATH?token=s3cr3t"),
        SECRET.to_vec(),
    )
    .err()
    .unwrap();
    for message in [error, unreachable, refused] {
        assert!(
            !message.contains("T0KEN") && !message.contains("s3cr3t"),
            "{message}"
        );
    }
}

#[actix_rt::test]
async fn the_store_is_saved_even_when_delivery_fails() {
    let stub = Stub::start(|_, _| HttpResponse::Forbidden().finish());
    let dir = tempfile::tempdir().unwrap();
    let folder: Arc<dyn SummarySink> = Arc::new(SummaryFolder::new(dir.path()));
    let sink = WithWebhook::new(folder, webhook(&stub.endpoint));
    assert!(!sink.has("c-1", 1).await);
    let error = sink.save("c-1", &summary(1)).await.unwrap_err();
    assert!(error.starts_with("saved, but not delivered"), "{error}");
    assert!(error.contains("403"), "{error}");
    assert!(sink.has("c-1", 1).await);
    assert!(dir.path().join("c-1/v1.json").exists());
}

#[test]
fn config_is_checked() {
    let config: WebhookConfig = toml::from_str("url = \"https://crm.example/hook\"").unwrap();
    assert_eq!(config.secret_env, "CALLPULSE_WEBHOOK_SECRET");
    assert_eq!(config.max_attempts, 6);
    assert!(toml::from_str::<WebhookConfig>("url = \"x\"\nsecret = \"s\"").is_err());

    let unset = WebhookConfig {
        secret_env: "CALLPULSE_TEST_VARIABLE_NOBODY_SETS".into(),
        ..config.clone()
    };
    let error = Webhook::new(&unset).err().unwrap();
    assert!(
        error.contains("CALLPULSE_TEST_VARIABLE_NOBODY_SETS"),
        "{error}"
    );

    for url in ["ftp://crm.example/hook", "not a url", ""] {
        let bad = WebhookConfig {
            url: url.into(),
            ..config.clone()
        };
        let error = Webhook::with_secret(&bad, SECRET.to_vec()).err().unwrap();
        assert!(error.contains("url"), "{error}");
    }
}
