//! The CRM webhook: every saved summary is also POSTed as JSON to a URL, signed with
//! HMAC-SHA256 so the receiver can tell it came from this worker, and retried with backoff
//! while the receiver is down, slow or throttling.
//!
//! Each request carries `X-Callpulse-Delivery: <contact>/v<version>` (the same on every
//! retry and after a restart, so the receiver can drop duplicates), `X-Callpulse-Timestamp`
//! (Unix seconds) and `X-Callpulse-Signature: sha256=<hex>`, the HMAC of
//! `<timestamp>.<body>` under the shared secret.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::summaries::{SummarySink, summary_json};
use crate::backoff::backoff;
use crate::events::SummaryGenerated;
use crate::metrics::metrics;

/// Header naming the delivery: `<contact>/v<version>`.
pub const DELIVERY_HEADER: &str = "x-callpulse-delivery";
/// Header with the signing time, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-callpulse-timestamp";
/// Header with the signature, `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-callpulse-signature";

/// Most of a refusal's body quoted in the error.
const QUOTED_BODY_CHARS: usize = 200;

/// The `[summaries.webhook]` config table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where summaries are POSTed (`http://` or `https://`).
    pub url: String,
    /// The environment variable holding the signing secret (it never goes in a file).
    pub secret_env: String,
    /// Tries per summary before it is reported as not delivered.
    pub max_attempts: u32,
    /// First retry delay, ms (doubled per try, with jitter).
    pub retry_base_ms: u64,
    /// Longest retry delay, ms; a longer `Retry-After` is cut to this.
    pub retry_max_ms: u64,
    /// Time allowed for one request, ms.
    pub timeout_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            secret_env: "CALLPULSE_WEBHOOK_SECRET".into(),
            max_attempts: 6,
            retry_base_ms: 500,
            retry_max_ms: 30_000,
            timeout_ms: 10_000,
        }
    }
}

/// POSTs summaries to a webhook.
pub struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The receiver as logs and errors name it: scheme, host and port only, since the path
    /// or query of a webhook URL often holds a token.
    receiver: String,
    secret: Vec<u8>,
    config: WebhookConfig,
}

impl Webhook {
    /// A webhook for `config`, its secret read from `config.secret_env`.
    pub fn new(config: &WebhookConfig) -> Result<Self, String> {
        let secret = std::env::var(&config.secret_env).unwrap_or_default();
        if secret.is_empty() {
            return Err(format!(
                "[summaries.webhook] signs every request: set {} to the shared secret",
                config.secret_env
            ));
        }
        Self::with_secret(config, secret.into_bytes())
    }

    /// A webhook for `config` signing with `secret`.
    pub fn with_secret(config: &WebhookConfig, secret: Vec<u8>) -> Result<Self, String> {
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| format!("[summaries.webhook] url is not a URL: {e}"))?;
        let receiver = receiver(&url);
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "[summaries.webhook] url {receiver} is not http:// or https://"
            ));
        }
        if config.max_attempts == 0 {
            return Err("[summaries.webhook] max_attempts must be at least 1".into());
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            // A redirect would resend the signed body somewhere not configured.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("building the webhook client: {e}"))?;
        Ok(Self {
            client,
            url,
            receiver,
            secret,
            config: config.clone(),
        })
    }

    /// POSTs one summary, retrying connection errors, timeouts, 408, 429 and 5xx (after
    /// `Retry-After` when the receiver gives one). Any other answer but 2xx is final.
    pub async fn deliver(
        &self,
        contact_id: &str,
        summary: &SummaryGenerated,
    ) -> Result<(), String> {
        let body = summary_json(contact_id, summary)?;
        let delivery = format!("{contact_id}/v{}", summary.version);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (error, retry_after) = match self.post(&delivery, &body).await {
                Ok(()) => {
                    metrics()
                        .webhook_deliveries
                        .with_label_values(&["ok"])
                        .inc();
                    return Ok(());
                }
                Err(Failure::Final(error)) => {
                    metrics()
                        .webhook_deliveries
                        .with_label_values(&["failed"])
                        .inc();
                    return Err(format!(
                        "{} refused summary {delivery}: {error}",
                        self.receiver
                    ));
                }
                Err(Failure::Transient { error, retry_after }) => (error, retry_after),
            };
            if attempts >= self.config.max_attempts {
                metrics()
                    .webhook_deliveries
                    .with_label_values(&["failed"])
                    .inc();
                return Err(format!(
                    "{} did not take summary {delivery} in {attempts} attempts: {error}",
                    self.receiver
                ));
            }
            metrics()
                .webhook_deliveries
                .with_label_values(&["retried"])
                .inc();
            let delay = match retry_after {
                Some(wait) => wait.min(Duration::from_millis(self.config.retry_max_ms)),
                None => backoff(
                    self.config.retry_base_ms,
                    self.config.retry_max_ms,
                    attempts,
                ),
            };
            tracing::warn!(receiver = %self.receiver, %delivery, %error, attempts, ?delay, "webhook delivery failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One signed POST.
    async fn post(&self, delivery: &str, body: &[u8]) -> Result<(), Failure> {
        let timestamp = chrono::Utc::now().timestamp();
        let response = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(DELIVERY_HEADER, delivery)
            .header(TIMESTAMP_HEADER, timestamp)
            .header(SIGNATURE_HEADER, signature(&self.secret, timestamp, body))
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| Failure::Transient {
                // The URL stays out of the message (it may hold a token).
                error: format!("{:#}", anyhow::Error::from(e.without_url())),
                retry_after: None,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = retry_after(response.headers());
        let text = response.text().await.unwrap_or_default();
        let quoted: String = text.chars().take(QUOTED_BODY_CHARS).collect();
        let error = format!("HTTP {status}: {}", quoted.trim());
        let transient = status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT;
        Err(if transient {
            Failure::Transient { error, retry_after }
        } else {
            Failure::Final(error)
        })
    }
}

/// `scheme://host[:port]` of `url`: what may be logged of a webhook's address.
fn receiver(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// Why one POST did not deliver.
enum Failure {
    /// Worth another try (after `retry_after`, when the receiver said).
    Transient {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The receiver refused it; trying again would not help.
    Final(String),
}

/// A `Retry-After` given in seconds (the HTTP-date form is ignored: backoff applies).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// `sha256=<hex>`: the HMAC-SHA256 of `<timestamp>.<body>` under `secret`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={:x}", mac.finalize().into_bytes())
}

/// A summary sink that delivers to the webhook first, then saves to `store` (the folder or
/// S3). Whether a version is saved is the store's answer, so after a restart a summary the
/// store lacks is delivered again (same delivery id): the webhook gets every summary at least
/// once. The store save happens even when delivery fails, and the error says so.
pub struct WithWebhook {
    store: Arc<dyn SummarySink>,
    webhook: Webhook,
}

impl WithWebhook {
    /// `store` plus `webhook`.
    pub fn new(store: Arc<dyn SummarySink>, webhook: Webhook) -> Self {
        Self { store, webhook }
    }
}

#[async_trait]
impl SummarySink for WithWebhook {
    async fn save(&self, contact_id: &str, summary: &SummaryGenerated) -> Result<(), String> {
        let delivered = self.webhook.deliver(contact_id, summary).await;
        let saved = self.store.save(contact_id, summary).await;
        match (delivered, saved) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) => Err(format!("saved, but not delivered to the webhook: {e}")),
            (Ok(()), Err(e)) => Err(format!("delivered to the webhook, but not saved: {e}")),
            (Err(d), Err(s)) => Err(format!("neither delivered ({d}) nor saved ({s})")),
        }
    }

    async fn has(&self, contact_id: &str, version: u32) -> bool {
        self.store.has(contact_id, version).await
    }
}

#[cfg(test)]
mod tests {
    use actix_web::HttpResponse;
    use serde_json::json;

    use super::*;
    use crate::actors::summaries::SummaryFolder;
    use crate::aws::stub::{Received, Stub};

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
}
