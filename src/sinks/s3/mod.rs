//! The S3 [`SummarySink`]: one JSON and one Markdown object per contact and summary version,
//! `<prefix><contact>/v<version>.json` and `.md`, written with S3 conditional writes
//! (`If-None-Match: *`) so that nothing, a replay included, ever overwrites a saved version.

use async_trait::async_trait;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};

use super::summaries::{SummarySink, id_segment, markdown, summary_json};
use crate::aws::{AwsEndpoint, sdk_config};
use crate::events::SummaryGenerated;

/// The `[s3]` config table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Put before every key (`summaries/` by default; may be empty).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Path-style requests (`http://host/bucket/key`), as emulators (moto, MinIO) need.
    #[serde(default)]
    pub force_path_style: bool,
    /// Region and endpoint override.
    #[serde(default)]
    pub endpoint: AwsEndpoint,
}

fn default_prefix() -> String {
    "summaries/".into()
}

/// Saves summaries as S3 objects.
pub struct S3SummarySink {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl S3SummarySink {
    /// A sink for `config`'s bucket, with credentials and region from the standard chain.
    pub async fn new(config: &S3Config) -> Result<Self, String> {
        Self::with_sdk_config(config, &sdk_config(&config.endpoint).await)
    }

    /// A sink for `config`'s bucket using `sdk` (its endpoint, not `config.endpoint`).
    pub fn with_sdk_config(config: &S3Config, sdk: &aws_config::SdkConfig) -> Result<Self, String> {
        if config.bucket.trim().is_empty() {
            return Err("[s3] bucket is empty; set the bucket summaries go to".into());
        }
        let client_config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(config.force_path_style)
            .build();
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(client_config),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
        })
    }

    fn key(&self, contact_id: &str, version: u32, ext: &str) -> String {
        format!("{}{}/v{version}.{ext}", self.prefix, id_segment(contact_id))
    }

    /// Writes `body` under `key` unless something is there already; an object already there
    /// is fine when it holds the same bytes (a replay saving the same version again).
    async fn put_new(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), String> {
        let put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .if_none_match("*")
            .body(ByteStream::from(body.clone()))
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => {
                let existing = self.get(key).await?;
                if existing == body {
                    Ok(())
                } else {
                    Err(format!(
                        "s3://{}/{key} already holds a different summary; saved versions are never overwritten",
                        self.bucket
                    ))
                }
            }
            Err(e) => Err(format!(
                "writing s3://{}/{key}: {}",
                self.bucket,
                DisplayErrorContext(&e)
            )),
        }
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, String> {
        let failed = |e: &dyn std::fmt::Display| format!("reading s3://{}/{key}: {e}", self.bucket);
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| failed(&DisplayErrorContext(&e)))?;
        let bytes = object.body.collect().await.map_err(|e| failed(&e))?;
        Ok(bytes.into_bytes().to_vec())
    }
}

#[async_trait]
impl SummarySink for S3SummarySink {
    /// The Markdown object first, then the JSON one, which marks the version saved.
    async fn save(&self, contact_id: &str, summary: &SummaryGenerated) -> Result<(), String> {
        if contact_id.is_empty() {
            return Err("cannot save a summary for an empty contact id".into());
        }
        let json = summary_json(contact_id, summary)?;
        let md = markdown(contact_id, summary).into_bytes();
        let version = summary.version;
        self.put_new(
            &self.key(contact_id, version, "md"),
            md,
            "text/markdown; charset=utf-8",
        )
        .await?;
        self.put_new(
            &self.key(contact_id, version, "json"),
            json,
            "application/json",
        )
        .await
    }

    /// HeadObject on the JSON object. An error other than "not found" is logged and reads
    /// as not saved: saving again is harmless, it never overwrites.
    async fn has(&self, contact_id: &str, version: u32) -> bool {
        let key = self.key(contact_id, version, "json");
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(_) => true,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => false,
            Err(e) => {
                tracing::warn!(bucket = %self.bucket, %key, error = %DisplayErrorContext(&e), "checking for a saved summary failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
