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
mod tests;
