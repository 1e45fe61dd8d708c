//! Kinesis Video Streams as a [`MediaSource`]: GetDataEndpoint (API `GET_MEDIA`) once per
//! stream, then GetMedia from a fragment number, a continuation token, or now. The payload
//! is handed on as it arrives, never buffered whole: a call's stream can run for hours.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_kinesisvideo::types::ApiName;
use aws_sdk_kinesisvideomedia::error::ProvideErrorMetadata;
use aws_sdk_kinesisvideomedia::types::{StartSelector, StartSelectorType};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio_util::bytes::Bytes;

use super::{AudioError, MediaSource, StartAt};
use crate::aws::{AwsEndpoint, sdk_error};

/// Kinesis Video Streams.
pub struct Kvs {
    sdk: aws_config::SdkConfig,
    control: aws_sdk_kinesisvideo::Client,
    /// Data endpoints by stream ARN (they do not change for a stream).
    endpoints: Mutex<HashMap<String, String>>,
}

impl Kvs {
    /// A media source reaching KVS through `endpoint` (the control plane: GetDataEndpoint
    /// answers where GetMedia goes).
    pub async fn new(endpoint: &AwsEndpoint) -> Self {
        let sdk = super::streaming_sdk_config(endpoint).await;
        Self {
            control: aws_sdk_kinesisvideo::Client::new(&sdk),
            sdk,
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    async fn data_endpoint(&self, stream_arn: &str) -> Result<String, AudioError> {
        if let Some(known) = self.endpoints.lock().expect("endpoints").get(stream_arn) {
            return Ok(known.clone());
        }
        let answer = self
            .control
            .get_data_endpoint()
            .stream_arn(stream_arn)
            .api_name(ApiName::GetMedia)
            .send()
            .await
            .map_err(|e| classify(e.code(), format!("GetDataEndpoint: {}", sdk_error(&e))))?;
        let endpoint = answer
            .data_endpoint()
            .ok_or_else(|| AudioError::Unavailable("GetDataEndpoint answered no endpoint".into()))?
            .to_string();
        self.endpoints
            .lock()
            .expect("endpoints")
            .insert(stream_arn.to_string(), endpoint.clone());
        Ok(endpoint)
    }
}

#[async_trait]
impl MediaSource for Kvs {
    async fn open(
        &self,
        stream_arn: &str,
        start: &StartAt,
    ) -> Result<BoxStream<'static, Result<Bytes, AudioError>>, AudioError> {
        let endpoint = self.data_endpoint(stream_arn).await?;
        let media = aws_sdk_kinesisvideomedia::Client::from_conf(
            aws_sdk_kinesisvideomedia::config::Builder::from(&self.sdk)
                .endpoint_url(endpoint)
                .build(),
        );
        let selector = match start {
            StartAt::Fragment(number) => StartSelector::builder()
                .start_selector_type(StartSelectorType::FragmentNumber)
                .after_fragment_number(number),
            StartAt::Continuation(token) => StartSelector::builder()
                .start_selector_type(StartSelectorType::ContinuationToken)
                .continuation_token(token),
            StartAt::Now => StartSelector::builder().start_selector_type(StartSelectorType::Now),
        }
        .build()
        .map_err(|e| AudioError::Refused(format!("GetMedia start selector: {e}")))?;
        let answer = media
            .get_media()
            .stream_arn(stream_arn)
            .start_selector(selector)
            .send()
            .await
            .map_err(|e| classify(e.code(), format!("GetMedia: {}", sdk_error(&e))))?;
        let payload = futures_util::stream::unfold(answer.payload, |mut body| async move {
            let next = body
                .next()
                .await?
                .map_err(|e| AudioError::Unavailable(format!("GetMedia payload: {e}")));
            Some((next, body))
        });
        Ok(payload.boxed())
    }
}

/// What a KVS error code means for the reader.
fn classify(code: Option<&str>, message: String) -> AudioError {
    match code {
        Some("ResourceNotFoundException") => AudioError::NoStream(message),
        Some("ClientLimitExceededException" | "ConnectionLimitExceededException") => {
            AudioError::Throttled(message)
        }
        Some(
            "NotAuthorizedException" | "InvalidArgumentException" | "InvalidEndpointException",
        ) => AudioError::Refused(message),
        _ => AudioError::Unavailable(message),
    }
}
