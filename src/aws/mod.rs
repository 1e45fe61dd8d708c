//! What every AWS adapter shares: the SDK configuration (standard credential and region
//! chain, per-service endpoint overrides for local testing), SDK errors in words
//! (`sdk_error`), DynamoDB's attribute values and table designs (`dynamodb`), and, for
//! tests and the fleet benchmark, a moto server and a stub HTTP server that checks requests
//! as AWS would receive them.

pub(crate) mod dynamodb;
pub(crate) mod moto;
pub(crate) mod stub;

use std::time::Duration;

use aws_smithy_types::error::display::DisplayErrorContext;
use serde::{Deserialize, Serialize};

/// Where one AWS service is reached: the standard chain, or an override.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsEndpoint {
    /// Region (unset = the standard chain: `AWS_REGION`, profile, instance metadata).
    pub region: Option<String>,
    /// Endpoint URL (unset = the service's AWS endpoint; `AWS_ENDPOINT_URL_<SERVICE>` also
    /// works), e.g. `http://127.0.0.1:5000` for a local emulator.
    pub endpoint_url: Option<String>,
}

/// Longest one attempt of an AWS call may take before it is given up (and retried, where
/// the client retries): a connection that hangs never holds work in flight for good.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest an AWS call may take, its retries included.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a new connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The SDK configuration for one service: credentials and region from the standard chain
/// (environment, profile, SSO, instance role), with `endpoint`'s overrides, and timeouts
/// on every call ([`ATTEMPT_TIMEOUT`], [`OPERATION_TIMEOUT`], [`CONNECT_TIMEOUT`]).
pub async fn sdk_config(endpoint: &AwsEndpoint) -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build();
    let mut loader =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts);
    if let Some(region) = &endpoint.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &endpoint.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    loader.load().await
}

/// An SDK error as an [`anyhow::Error`] that says what went wrong with the whole chain of
/// causes (an SDK error's own message is only "service error" or "dispatch failure").
pub(crate) fn sdk_error<E: std::error::Error>(error: E) -> anyhow::Error {
    anyhow::anyhow!("{}", DisplayErrorContext(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_client_has_call_and_connect_timeouts() {
        let sdk = sdk_config(&AwsEndpoint::default()).await;
        let timeouts = sdk.timeout_config().expect("timeouts set");
        assert_eq!(timeouts.operation_attempt_timeout(), Some(ATTEMPT_TIMEOUT));
        assert_eq!(timeouts.operation_timeout(), Some(OPERATION_TIMEOUT));
        assert_eq!(timeouts.connect_timeout(), Some(CONNECT_TIMEOUT));
    }
}
