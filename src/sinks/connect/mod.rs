//! The Amazon Connect [`AttributeSink`]: UpdateContactAttributes on the configured instance.
//!
//! The [`AttributeDispatcher`](crate::actors::dispatcher::AttributeDispatcher) in front of it owns the
//! rate limit (`[attributes] requests_per_second`; Connect's account-wide quota is a few
//! requests per second), the per-contact debounce and the retries with backoff. So the SDK's
//! own retries are disabled here: every call is exactly one HTTP request, and the
//! dispatcher's rate limit counts real requests. Connect's limits are checked before anything
//! is sent, and a refusal names the limit.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_connect::config::http::HttpResponse;
use aws_sdk_connect::config::retry::RetryConfig;
use aws_sdk_connect::config::timeout::TimeoutConfig;
use aws_sdk_connect::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_connect::operation::update_contact_attributes::UpdateContactAttributesError;
use serde::{Deserialize, Serialize};

use super::attributes::{AttributeSink, SinkError};
use crate::aws::{AwsEndpoint, sdk_config};

/// All attributes of a contact together, keys and values, in UTF-8 bytes (Connect's limit).
pub const MAX_ATTRIBUTES_BYTES: usize = 32_768;

/// Longest contact id Connect accepts (`InitialContactId`), in characters.
const MAX_CONTACT_ID_CHARS: usize = 256;

/// One UpdateContactAttributes call may take this long before it counts as failed (and the
/// dispatcher retries it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Error codes Connect (and AWS's front ends) use for throttling.
const THROTTLING_CODES: [&str; 4] = [
    "TooManyRequestsException",
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
];

/// The `[connect]` config table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    /// The Amazon Connect instance id (the last part of the instance ARN).
    pub instance_id: String,
    /// Region and endpoint override.
    #[serde(default)]
    pub endpoint: AwsEndpoint,
}

/// Sets contact attributes with Connect's UpdateContactAttributes.
pub struct ConnectSink {
    client: aws_sdk_connect::Client,
    instance_id: String,
}

impl ConnectSink {
    /// A sink for `config`'s instance, with credentials and region from the standard chain.
    pub async fn new(config: &ConnectConfig) -> Result<Self, String> {
        Self::with_sdk_config(config, &sdk_config(&config.endpoint).await)
    }

    /// A sink for `config`'s instance using `sdk` (its endpoint, not `config.endpoint`).
    pub fn with_sdk_config(
        config: &ConnectConfig,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self, String> {
        if config.instance_id.trim().is_empty() {
            return Err("[connect] instance_id is empty; set the Connect instance id".into());
        }
        let client_config = aws_sdk_connect::config::Builder::from(sdk)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(REQUEST_TIMEOUT)
                    .build(),
            )
            .build();
        Ok(Self {
            client: aws_sdk_connect::Client::from_conf(client_config),
            instance_id: config.instance_id.clone(),
        })
    }
}

/// Checks an update against Connect's documented limits (API reference,
/// UpdateContactAttributes): `InitialContactId` 1 to 256 characters; attribute keys not
/// empty and made of ASCII letters, digits, `-` and `_`; at most 32,768 UTF-8 bytes across
/// all keys and values (which also bounds each key and value to Connect's 32,767 characters).
/// Connect counts the attributes the contact already has too; only those sent can be checked.
pub fn check_limits(contact_id: &str, attributes: &BTreeMap<String, String>) -> Result<(), String> {
    let id_chars = contact_id.chars().count();
    if !(1..=MAX_CONTACT_ID_CHARS).contains(&id_chars) {
        return Err(format!(
            "Connect refuses contact id {contact_id:?}: it must be 1 to {MAX_CONTACT_ID_CHARS} characters, not {id_chars}"
        ));
    }
    if let Some(key) = attributes.keys().find(|k| {
        k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }) {
        return Err(format!(
            "Connect refuses attribute key {key:?}: keys must be non-empty ASCII letters, digits, '-' or '_'"
        ));
    }
    let bytes: usize = attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_ATTRIBUTES_BYTES {
        return Err(format!(
            "Connect refuses the attributes: {bytes} bytes of keys and values, over its limit of {MAX_ATTRIBUTES_BYTES} bytes per contact"
        ));
    }
    Ok(())
}

/// A failed call in words; throttling and server errors say "throttled" or "unavailable"
/// and "retryable", so the record shows why the dispatcher tried again.
fn describe(error: &SdkError<UpdateContactAttributesError, HttpResponse>) -> SinkError {
    let status = error.raw_response().map(|r| r.status().as_u16());
    let code = error.code().unwrap_or("no error code");
    let detail = DisplayErrorContext(error);
    let transient = SinkError::Transient;
    match status {
        Some(429) => transient(format!(
            "Connect throttled the request (HTTP 429 {code}), retryable: {detail}"
        )),
        _ if THROTTLING_CODES.contains(&code) => transient(format!(
            "Connect throttled the request ({code}), retryable: {detail}"
        )),
        Some(s) if s >= 500 => transient(format!(
            "Connect unavailable or throttled (HTTP {s} {code}), retryable: {detail}"
        )),
        Some(s) => SinkError::Refused(format!(
            "Connect refused the update (HTTP {s} {code}): {detail}"
        )),
        None => transient(format!("Connect not reached, retryable: {detail}")),
    }
}

#[async_trait]
impl AttributeSink for ConnectSink {
    fn name(&self) -> &str {
        "connect"
    }

    async fn set(
        &self,
        contact_id: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), SinkError> {
        check_limits(contact_id, attributes).map_err(SinkError::Refused)?;
        self.client
            .update_contact_attributes()
            .instance_id(&self.instance_id)
            .initial_contact_id(contact_id)
            .set_attributes(Some(attributes.clone().into_iter().collect()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| describe(&e))
    }
}

#[cfg(test)]
mod tests;
