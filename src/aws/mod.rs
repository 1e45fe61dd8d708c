//! What every AWS adapter shares: the SDK configuration (standard credential and region
//! chain, per-service endpoint overrides for local testing), and, for tests, a moto server
//! and a stub HTTP server that checks requests as AWS would receive them.

#[cfg(test)]
pub(crate) mod moto;
#[cfg(test)]
pub(crate) mod stub;

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

/// The SDK configuration for one service: credentials and region from the standard chain
/// (environment, profile, SSO, instance role), with `endpoint`'s overrides.
pub async fn sdk_config(endpoint: &AwsEndpoint) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &endpoint.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &endpoint.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    loader.load().await
}
