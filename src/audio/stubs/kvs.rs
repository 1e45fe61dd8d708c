//! Kinesis Video for the tests: GetDataEndpoint on a control stub, GetMedia on a media
//! stub serving each stream's fragments, paced or live, in sessions ended by a continuation
//! token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpResponse;
use futures_util::StreamExt;
use tokio_util::bytes::Bytes;

use super::aws_error;
use super::speech::{StubFragment, tags_only};
use crate::aws::stub::{Received, Stub};

/// Kinesis Video: a control stub answering GetDataEndpoint with the media stub's address,
/// and a media stub answering GetMedia with the stream's fragments, paced, in sessions of
/// `session_fragments`, each ended by a continuation token.
pub struct KvsStub {
    /// The control plane (`[audio.kvs] endpoint_url`).
    pub control: Stub,
    /// The data plane GetMedia goes to.
    pub media: Stub,
}

/// What the KVS stub serves.
#[derive(Debug, Clone, Default)]
pub struct KvsScript {
    /// Fragments by stream ARN.
    pub streams: HashMap<String, Vec<StubFragment>>,
    /// Fragments per GetMedia session, at most (KVS ends sessions after about 45 minutes).
    pub session_fragments: Option<usize>,
    /// Time between fragments.
    pub pace: Duration,
    /// Serve live instead: each fragment once its second of audio is over.
    pub live: bool,
}

impl KvsStub {
    /// Starts both stubs. Call from inside an actix runtime.
    pub fn start(script: KvsScript) -> Self {
        let script = Arc::new(script);
        let serving = script.clone();
        let media = Stub::start(move |request, _| get_media(&serving, request));
        let data_endpoint = media.endpoint.clone();
        let control = Stub::start(move |request, _| {
            let body = request.json();
            if !request.is_signed() || request.path != "/getDataEndpoint" {
                return aws_error(
                    400,
                    "InvalidArgumentException",
                    "expected a signed GetDataEndpoint",
                );
            }
            if body["APIName"] != "GET_MEDIA" {
                return aws_error(400, "InvalidArgumentException", "APIName must be GET_MEDIA");
            }
            let arn = body["StreamARN"].as_str().unwrap_or_default();
            if !script.streams.contains_key(arn) {
                return aws_error(
                    404,
                    "ResourceNotFoundException",
                    &format!("stream {arn} not found"),
                );
            }
            HttpResponse::Ok().json(serde_json::json!({"DataEndpoint": data_endpoint}))
        });
        Self { control, media }
    }

    /// The GetMedia requests' start selectors, in order.
    pub fn selectors(&self) -> Vec<serde_json::Value> {
        self.media
            .received()
            .iter()
            .map(|r| r.json()["StartSelector"].clone())
            .collect()
    }
}

fn get_media(script: &KvsScript, request: &Received) -> HttpResponse {
    if !request.is_signed() || request.path != "/getMedia" {
        return aws_error(
            400,
            "InvalidArgumentException",
            "expected a signed GetMedia",
        );
    }
    let body = request.json();
    let arn = body["StreamARN"].as_str().unwrap_or_default();
    let Some(fragments) = script.streams.get(arn) else {
        return aws_error(
            404,
            "ResourceNotFoundException",
            &format!("stream {arn} not found"),
        );
    };
    let selector = &body["StartSelector"];
    let from = match selector["StartSelectorType"].as_str() {
        // Inclusive, as far as the documentation says: the reader drops what it has seen.
        Some("FRAGMENT_NUMBER") => {
            let number = selector["AfterFragmentNumber"].as_str().unwrap_or_default();
            match fragments.iter().position(|f| f.number == number) {
                Some(at) => at,
                None => return aws_error(400, "InvalidArgumentException", "no such fragment"),
            }
        }
        Some("CONTINUATION_TOKEN") => {
            let token = selector["ContinuationToken"].as_str().unwrap_or_default();
            match token.strip_prefix("ct-").and_then(|i| i.parse().ok()) {
                Some(at) => at,
                None => {
                    return aws_error(400, "InvalidArgumentException", "bad continuation token");
                }
            }
        }
        Some("NOW") => fragments.len(),
        other => {
            return aws_error(
                400,
                "InvalidArgumentException",
                &format!("start selector {other:?}"),
            );
        }
    };
    let to = fragments
        .len()
        .min(from.saturating_add(script.session_fragments.unwrap_or(usize::MAX)));
    // Each document with when it is due, epoch ms (none: after `pace`).
    let live = |f: &StubFragment| script.live.then_some(f.at_millis + 1000);
    let mut documents: Vec<(Option<u64>, Bytes)> = fragments[from.min(to)..to]
        .iter()
        .map(|f| (live(f), Bytes::from(f.bytes.clone())))
        .collect();
    let token = format!("ct-{to}");
    let due = documents.last().and_then(|(due, _)| *due);
    documents.push((
        due,
        Bytes::from(tags_only(&[(
            "AWS_KINESISVIDEO_CONTINUATION_TOKEN",
            &token,
        )])),
    ));
    let pace = script.pace;
    let paced = futures_util::stream::iter(documents).then(move |(due, document)| async move {
        let wait = match due {
            Some(due) => Duration::from_millis(
                (due as i64 - chrono::Utc::now().timestamp_millis()).max(0) as u64,
            ),
            None => pace,
        };
        tokio::time::sleep(wait).await;
        Ok::<_, actix_web::Error>(document)
    });
    HttpResponse::Ok()
        .content_type("video/webm")
        .streaming(paced)
}
