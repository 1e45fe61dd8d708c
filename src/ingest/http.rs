//! HTTP ingest with actix-web:
//!
//! - `POST /records`: one JSON record, or NDJSON (one record a line). Each line is parsed like
//!   a line of a file (source `http`, line = line within the body) and sent into the
//!   pipeline's channel, waiting while it is full; the answer comes once every record of the
//!   body is settled: durable in the log, already there, or refused. It is [`IngestReply`]:
//!   **200** when nothing needs sending again, **503** when some records could not be made
//!   durable (resend the body: it is idempotent), **400** when lines were refused and none
//!   accepted, **413** for a body over the limit (default [`DEFAULT_BODY_LIMIT`]), **503**
//!   with `{"error":…}` once the pipeline is shutting down. Refused lines also reach the
//!   reject log, like those of files.
//! - `GET /metrics`: [`crate::metrics::render`], Prometheus text format.
//! - `GET /healthz`: `{"status":"ok"}`, or 503 `{"status":"shutting down"}`.
//!
//! Id-less segments get content keys (see `LineReader`), counted within the body, so that
//! resending a body stores nothing twice. A client may name a body with an
//! `Idempotency-Key` header (1 to 128 visible ASCII characters): its id-less segments are
//! then keyed `h-<key>-<n>`, the n-th of the body, and identical utterances sent under
//! different keys are all kept.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{self, Sender};
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::source::{Ack, Fate, Ingested, LineCodec, LineReader, ReadStats};
use crate::redaction::Redactor;

/// Default largest `POST /records` body, in bytes (8 MiB).
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// What the HTTP endpoints share: the pipeline's channel.
pub struct HttpIngest {
    sender: Sender<Ingested>,
    body_limit: usize,
    redactor: Redactor,
}

impl HttpIngest {
    /// Endpoints that send into `sender`, refuse bodies over `body_limit` bytes and redact
    /// transcripts with `redactor`.
    pub fn new(sender: Sender<Ingested>, body_limit: usize, redactor: Redactor) -> Self {
        Self {
            sender,
            body_limit,
            redactor,
        }
    }
}

/// The answer to `POST /records`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestReply {
    /// Records passed on to the pipeline.
    pub accepted: u64,
    /// Of those, appended to the log.
    pub appended: u64,
    /// Of those, already in the log (nothing appended).
    pub duplicates: u64,
    /// Partial segments dropped.
    pub partials_skipped: u64,
    /// Lines refused: by the parser, by the contact's rules, or not durable (`retry`).
    pub rejected: Vec<LineRejection>,
}

/// A refused line of a `POST /records` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRejection {
    /// 1-based line within the body.
    pub line: u64,
    /// Why it was refused.
    pub reason: String,
    /// The store could not take it: sending it again may succeed.
    #[serde(default)]
    pub retry: bool,
}

/// Registers `POST /records`, `GET /metrics` and `GET /healthz` and their shared state on an
/// app: `App::new().configure(configure(data))` (the server is [`crate::api::serve`]).
pub fn configure(ingest: web::Data<HttpIngest>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::PayloadConfig::new(ingest.body_limit))
            .app_data(ingest)
            .route("/records", web::post().to(post_records));
        configure_health(cfg);
    }
}

/// Registers `GET /metrics` and `GET /healthz` alone (a server that takes no records).
pub fn configure_health(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(get_metrics))
        .route("/healthz", web::get().to(get_healthz));
}

fn shutting_down() -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .json(serde_json::json!({"error": "callpulse is shutting down: records are not accepted"}))
}

/// The reader of one body: anchored at its `Idempotency-Key` when it has one; a key that
/// is not 1 to [`MAX_IDEMPOTENCY_KEY`] visible ASCII characters is refused with why.
fn reader_for(request: &HttpRequest, redactor: &Redactor) -> Result<LineReader, String> {
    let Some(key) = request.headers().get("idempotency-key") else {
        return Ok(LineReader::new("http", redactor.clone()));
    };
    match key.to_str() {
        Ok(key)
            if (1..=MAX_IDEMPOTENCY_KEY).contains(&key.len())
                && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(LineReader::anchored(
                "http",
                format!("h-{key}"),
                redactor.clone(),
            ))
        }
        _ => Err(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )),
    }
}

async fn post_records(
    ingest: web::Data<HttpIngest>,
    request: HttpRequest,
    body: web::Bytes,
) -> actix_web::Result<HttpResponse> {
    if ingest.sender.is_closed() {
        return Ok(shutting_down());
    }
    let mut reader = match reader_for(&request, &ingest.redactor) {
        Ok(reader) => reader,
        Err(error) => {
            return Ok(HttpResponse::BadRequest().json(serde_json::json!({ "error": error })));
        }
    };
    let mut stats = ReadStats::default();
    let mut items = Vec::new();
    let mut codec = LineCodec::default();
    let mut buf = BytesMut::from(body);
    let mut number = 0;
    while let Some(line) = codec.decode_eof(&mut buf)? {
        number += 1;
        items.extend(reader.ingest(number, line, &mut stats));
    }
    let mut reply = IngestReply {
        accepted: 0,
        appended: 0,
        duplicates: 0,
        partials_skipped: stats.partials_skipped,
        rejected: Vec::new(),
    };
    let (acks, mut fates) = mpsc::unbounded_channel();
    for mut item in items {
        match &mut item {
            Ingested::Record(incoming) => {
                incoming.ack = Some(Ack::new(incoming.position.line, acks.clone()));
                reply.accepted += 1;
            }
            Ingested::Rejected(r) => reply.rejected.push(LineRejection {
                line: r.position.line,
                reason: r.reason.clone(),
                retry: false,
            }),
        }
        if ingest.sender.send(item).await.is_err() {
            return Ok(shutting_down());
        }
    }
    drop(acks);
    // Every record's ack is settled once, or dropped unsettled if the pipeline stops.
    let mut settled = 0;
    while let Some((line, fate)) = fates.recv().await {
        settled += 1;
        let (reason, retry) = match fate {
            Fate::Appended => {
                reply.appended += 1;
                continue;
            }
            Fate::Duplicate => {
                reply.duplicates += 1;
                continue;
            }
            Fate::Refused(reason) => (reason, false),
            Fate::Undeliverable(reason) => (reason, true),
        };
        reply.rejected.push(LineRejection {
            line,
            reason,
            retry,
        });
    }
    reply.rejected.sort_by_key(|r| r.line);
    let status = if settled < reply.accepted || reply.rejected.iter().any(|r| r.retry) {
        StatusCode::SERVICE_UNAVAILABLE
    } else if reply.accepted == 0 && !reply.rejected.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(reply))
}

async fn get_metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(prometheus::TEXT_FORMAT)
        .body(crate::metrics::render())
}

async fn get_healthz(ingest: Option<web::Data<HttpIngest>>) -> HttpResponse {
    if ingest.is_some_and(|i| i.sender.is_closed()) {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "shutting down"}))
    } else {
        HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{App, test};
    use std::sync::{Arc, Mutex};

    /// `POST /records` with a body (and headers); gives the status and the reply's body.
    macro_rules! post {
        ($app:expr, $body:expr $(, $header:expr)*) => {{
            let req = test::TestRequest::post()
                .uri("/records")
                $(.insert_header($header))*
                .set_payload($body)
                .to_request();
            let res = test::call_service($app, req).await;
            (res.status(), test::read_body(res).await)
        }};
    }

    /// What the stand-in feed received.
    type Seen = Arc<Mutex<Vec<Ingested>>>;

    /// Endpoints over a stand-in feed that keeps what it receives and settles each record
    /// with `fate` (a duplicate when the same source id came before).
    fn app_data(limit: usize, fate: Fate) -> (web::Data<HttpIngest>, Seen) {
        let (tx, mut rx) = mpsc::channel(64);
        let seen = Seen::default();
        let kept = seen.clone();
        actix_rt::spawn(async move {
            let mut keys = std::collections::HashSet::new();
            while let Some(mut item) = rx.recv().await {
                // Kept without its ack (the request waits until every ack is gone), and
                // kept before it is settled, so the answer comes after.
                let settle = match &mut item {
                    Ingested::Record(r) => {
                        let ack = r.ack.take().expect("HTTP records wait for their fate");
                        let key = (r.record.contact_id().to_string(), r.source_id.clone());
                        Some((ack, key))
                    }
                    Ingested::Rejected(_) => None,
                };
                kept.lock().unwrap().push(item);
                if let Some((ack, key)) = settle {
                    ack.settle(match fate {
                        Fate::Appended if !keys.insert(key) => Fate::Duplicate,
                        ref fate => fate.clone(),
                    });
                }
            }
        });
        (
            web::Data::new(HttpIngest::new(tx, limit, Redactor::default())),
            seen,
        )
    }

    fn drain(seen: &Seen) -> Vec<Ingested> {
        std::mem::take(&mut *seen.lock().unwrap())
    }

    /// Waits until the stand-in feed has `n` items (refused lines need no ack, so the
    /// answer can come before the feed took them), then drains them.
    async fn drain_n(seen: &Seen, n: usize) -> Vec<Ingested> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while seen.lock().unwrap().len() < n && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drain(seen)
    }

    fn ids(items: Vec<Ingested>) -> Vec<String> {
        items
            .into_iter()
            .map(|i| match i {
                Ingested::Record(r) => r.source_id,
                Ingested::Rejected(r) => panic!("rejected {r:?}"),
            })
            .collect()
    }

    #[actix_web::test]
    async fn the_answer_comes_once_the_records_are_settled_and_a_resend_stores_nothing_twice() {
        let (data, seen) = app_data(DEFAULT_BODY_LIMIT, Fate::Appended);
        let app = test::init_service(App::new().configure(configure(data))).await;
        let body = "{\"contactId\":\"h-1\",\"transcript\":\"hi\"}\n{\"contactId\":\"h-1\",\"transcript\":\"hi\"}";
        let (status, reply) = post!(&app, body);
        assert_eq!(status, StatusCode::OK);
        let reply: IngestReply = serde_json::from_slice(&reply).unwrap();
        assert_eq!(
            reply,
            IngestReply {
                accepted: 2,
                appended: 2,
                duplicates: 0,
                partials_skipped: 0,
                rejected: vec![]
            }
        );
        let first = ids(drain(&seen));
        assert_ne!(
            first[0], first[1],
            "the same words said twice are two segments"
        );
        // A client retrying the same body gets the same keys: stored once.
        let (status, reply) = post!(&app, body);
        assert_eq!(status, StatusCode::OK);
        let reply: IngestReply = serde_json::from_slice(&reply).unwrap();
        assert_eq!((reply.appended, reply.duplicates), (0, 2));
        assert_eq!(ids(drain(&seen)), first);
        // Different words for the same contact are new segments.
        post!(&app, r#"{"contactId":"h-1","transcript":"again"}"#);
        let next = ids(drain(&seen));
        assert!(!first.contains(&next[0]), "{next:?}");
    }

    #[actix_web::test]
    async fn an_idempotency_key_names_the_bodys_segments() {
        let (data, seen) = app_data(DEFAULT_BODY_LIMIT, Fate::Appended);
        let app = test::init_service(App::new().configure(configure(data))).await;
        let body = r#"{"contactId":"h-4","transcript":"yes"}"#;
        post!(&app, body, ("Idempotency-Key", "req-1"));
        post!(&app, body, ("Idempotency-Key", "req-1"));
        let (_, reply) = post!(&app, body, ("Idempotency-Key", "req-2"));
        let reply: IngestReply = serde_json::from_slice(&reply).unwrap();
        assert_eq!(reply.appended, 1, "another request saying the same is kept");
        assert_eq!(ids(drain(&seen)), ["h-req-1-1", "h-req-1-1", "h-req-2-1"]);
        for bad in ["", "with space", &"k".repeat(MAX_IDEMPOTENCY_KEY + 1)] {
            let (status, reply) = post!(&app, body, ("Idempotency-Key", bad));
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}");
            let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
            assert!(reply["error"].as_str().unwrap().contains("Idempotency-Key"));
        }
        assert!(drain(&seen).is_empty());
    }

    #[actix_web::test]
    async fn records_the_store_could_not_take_are_a_503_to_retry() {
        let (data, _seen) = app_data(DEFAULT_BODY_LIMIT, Fate::Undeliverable("disk full".into()));
        let app = test::init_service(App::new().configure(configure(data))).await;
        let (status, reply) = post!(&app, r#"{"type":"STARTED","contactId":"h-5"}"#);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let reply: IngestReply = serde_json::from_slice(&reply).unwrap();
        assert_eq!(
            reply.rejected,
            [LineRejection {
                line: 1,
                reason: "disk full".into(),
                retry: true
            }]
        );
    }

    #[actix_web::test]
    async fn an_ndjson_batch_keeps_the_lines_around_a_bad_one() {
        let (data, seen) = app_data(DEFAULT_BODY_LIMIT, Fate::Appended);
        let app = test::init_service(App::new().configure(configure(data))).await;
        let body = concat!(
            r#"{"type":"STARTED","contactId":"h-2","channel":"VOICE"}"#,
            "\n",
            r#"{"type":"SEGMENT","contactId":"h-2","transcript":"half","isPartial":true}"#,
            "\r\n",
            "{broken\n",
            "\n",
            r#"{"ContactId":"h-2","EventType":"SEGMENTS","Segments":[{"Transcript":{"Id":"t-1","ParticipantRole":"CUSTOMER","Content":"too slow"}}]}"#,
            "\n",
            r#"{"type":"ENDED","contactId":"h-2"}"#,
        );
        let (status, reply) = post!(&app, body);
        assert_eq!(status, StatusCode::OK);
        let reply: IngestReply = serde_json::from_slice(&reply).unwrap();
        assert_eq!(
            (reply.accepted, reply.appended, reply.partials_skipped),
            (3, 3, 1)
        );
        assert_eq!(reply.rejected.len(), 1);
        assert_eq!(reply.rejected[0].line, 3);
        assert!(reply.rejected[0].reason.starts_with("not a valid record"));
        let seen: Vec<_> = drain_n(&seen, 4)
            .await
            .into_iter()
            .map(|i| match i {
                Ingested::Record(r) => (r.position.line, r.source_id),
                Ingested::Rejected(r) => (r.position.line, format!("rejected: {}", r.raw)),
            })
            .collect();
        assert_eq!(
            seen,
            [
                (1, "started".into()),
                (3, "rejected: {broken".into()),
                (5, "seg:t-1".into()),
                (6, "ended".into()),
            ]
        );
    }

    #[actix_web::test]
    async fn only_bad_lines_is_a_bad_request_and_an_oversize_body_is_413() {
        let (data, seen) = app_data(1024, Fate::Appended);
        let app = test::init_service(App::new().configure(configure(data))).await;
        let (status, body) = post!(&app, r#"{"type":"NOPE","contactId":"x"}"#);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let reply: IngestReply = serde_json::from_slice(&body).unwrap();
        assert_eq!(reply.rejected[0].reason, r#"unknown record type "NOPE""#);
        let big = format!(r#"{{"contactId":"x","transcript":"{}"}}"#, "a".repeat(2048));
        let (status, _) = post!(&app, big);
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(matches!(
            &drain_n(&seen, 1).await[..],
            [Ingested::Rejected(_)]
        ));
    }

    #[actix_web::test]
    async fn a_closed_channel_answers_503() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let data = web::Data::new(HttpIngest::new(tx, DEFAULT_BODY_LIMIT, Redactor::default()));
        let app = test::init_service(App::new().configure(configure(data))).await;
        let (status, body) = post!(&app, r#"{"type":"ENDED","contactId":"x"}"#);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(body["error"].as_str().unwrap().contains("shutting down"));
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[actix_web::test]
    async fn metrics_and_health() {
        let (data, _seen) = app_data(DEFAULT_BODY_LIMIT, Fate::Appended);
        let app = test::init_service(App::new().configure(configure(data))).await;
        post!(&app, r#"{"type":"STARTED","contactId":"h-3"}"#);
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/metrics").to_request()).await;
        assert_eq!(res.status(), StatusCode::OK);
        let text = String::from_utf8(test::read_body(res).await.to_vec()).unwrap();
        assert!(text.contains(r#"callpulse_records_in_total{source="http"}"#));
        assert!(text.contains("callpulse_records_rejected_total"));
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
}
