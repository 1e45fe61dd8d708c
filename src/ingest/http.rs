//! HTTP ingest with actix-web:
//!
//! - `POST /records`: one JSON record, or NDJSON (one record a line). Each line is parsed like
//!   a line of a file (source `http`, line = line within the body) and sent into the
//!   pipeline's channel, waiting while it is full. Answers [`IngestReply`] with **202
//!   Accepted** (records are queued, not yet durable), or **400** with the same body when
//!   lines were refused and none accepted. Rejected lines also go into the channel, so they
//!   reach the reject log like those of files. **413** for a body over the limit (default
//!   [`DEFAULT_BODY_LIMIT`]), **503** with `{"error":…}` once the channel is closed (lines
//!   of the body before that point may have been queued).
//! - `GET /metrics`: [`crate::metrics::render`], Prometheus text format.
//! - `GET /healthz`: `{"status":"ok"}`, or 503 `{"status":"shutting down"}`.
//!
//! The numbering of id-less segments (`m-1`, `m-2`, …) lives as long as the server, so
//! successive POSTs for one contact continue it. A retried POST of such segments before the
//! contact's `ENDED` gets new ids: clients that retry should send segment ids.

use std::net::ToSocketAddrs;
use std::sync::{Mutex, PoisonError};

use actix_web::dev::Server;
use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, web};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::Sender;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::source::{Ingested, LineCodec, LineReader, ReadStats};

/// Default largest `POST /records` body, in bytes (8 MiB).
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// What the HTTP endpoints share: the pipeline's channel and the id numbering.
pub struct HttpIngest {
    sender: Sender<Ingested>,
    reader: Mutex<LineReader>,
    body_limit: usize,
}

impl HttpIngest {
    /// Endpoints that send into `sender` and refuse bodies over `body_limit` bytes.
    pub fn new(sender: Sender<Ingested>, body_limit: usize) -> Self {
        Self {
            sender,
            reader: Mutex::new(LineReader::new("http")),
            body_limit,
        }
    }
}

/// The answer to `POST /records`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestReply {
    /// Records passed on.
    pub accepted: u64,
    /// Partial segments dropped.
    pub partials_skipped: u64,
    /// Lines refused.
    pub rejected: Vec<LineRejection>,
}

/// A refused line of a `POST /records` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRejection {
    /// 1-based line within the body.
    pub line: u64,
    /// Why it was refused.
    pub reason: String,
}

/// Registers the routes and shared state on an app: `App::new().configure(configure(data))`.
pub fn configure(ingest: web::Data<HttpIngest>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::PayloadConfig::new(ingest.body_limit))
            .app_data(ingest)
            .route("/records", web::post().to(post_records))
            .route("/metrics", web::get().to(get_metrics))
            .route("/healthz", web::get().to(get_healthz));
    }
}

/// Binds `addr` and returns the running server; run it inside an actix System (await it or
/// spawn it) and stop it with its handle's `.stop(true)` (graceful). The server installs no
/// signal handlers: the caller owns shutdown.
pub fn serve(
    addr: impl ToSocketAddrs,
    sender: Sender<Ingested>,
    body_limit: usize,
) -> std::io::Result<Server> {
    let ingest = web::Data::new(HttpIngest::new(sender, body_limit));
    Ok(
        HttpServer::new(move || App::new().configure(configure(ingest.clone())))
            .disable_signals()
            .bind(addr)?
            .run(),
    )
}

fn shutting_down() -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .json(serde_json::json!({"error": "callpulse is shutting down: records are not accepted"}))
}

async fn post_records(
    ingest: web::Data<HttpIngest>,
    body: web::Bytes,
) -> actix_web::Result<HttpResponse> {
    if ingest.sender.is_closed() {
        return Ok(shutting_down());
    }
    let mut stats = ReadStats::default();
    let items = {
        let mut codec = LineCodec::default();
        let mut buf = BytesMut::from(body);
        let mut reader = ingest.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let mut items = Vec::new();
        let mut number = 0;
        while let Some(line) = codec.decode_eof(&mut buf)? {
            number += 1;
            items.extend(reader.ingest(number, line, &mut stats));
        }
        items
    };
    let mut reply = IngestReply {
        accepted: 0,
        partials_skipped: stats.partials_skipped,
        rejected: Vec::new(),
    };
    for item in items {
        let rejection = match &item {
            Ingested::Record(_) => None,
            Ingested::Rejected(r) => Some(LineRejection {
                line: r.position.line,
                reason: r.reason.clone(),
            }),
        };
        if ingest.sender.send(item).await.is_err() {
            return Ok(shutting_down());
        }
        match rejection {
            None => reply.accepted += 1,
            Some(r) => reply.rejected.push(r),
        }
    }
    let status = if reply.accepted == 0 && !reply.rejected.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::ACCEPTED
    };
    Ok(HttpResponse::build(status).json(reply))
}

async fn get_metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(prometheus::TEXT_FORMAT)
        .body(crate::metrics::render())
}

async fn get_healthz(ingest: web::Data<HttpIngest>) -> HttpResponse {
    if ingest.sender.is_closed() {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "shutting down"}))
    } else {
        HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test;
    use tokio::sync::mpsc;

    /// `POST /records` with a body; gives the status and the reply's body.
    macro_rules! post {
        ($app:expr, $body:expr) => {{
            let req = test::TestRequest::post()
                .uri("/records")
                .set_payload($body)
                .to_request();
            let res = test::call_service($app, req).await;
            (res.status(), test::read_body(res).await)
        }};
    }

    fn app_data(limit: usize) -> (web::Data<HttpIngest>, mpsc::Receiver<Ingested>) {
        let (tx, rx) = mpsc::channel(64);
        (web::Data::new(HttpIngest::new(tx, limit)), rx)
    }

    fn drain(rx: &mut mpsc::Receiver<Ingested>) -> Vec<Ingested> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[actix_web::test]
    async fn one_record_then_more_for_the_same_contact_continue_the_numbering() {
        let (data, mut rx) = app_data(DEFAULT_BODY_LIMIT);
        let app = test::init_service(App::new().configure(configure(data))).await;
        let (status, body) = post!(&app, r#"{"contactId":"h-1","transcript":"hi"}"#);
        assert_eq!(status, StatusCode::ACCEPTED);
        let reply: IngestReply = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            reply,
            IngestReply {
                accepted: 1,
                partials_skipped: 0,
                rejected: vec![]
            }
        );
        let (status, _) = post!(&app, r#"{"contactId":"h-1","transcript":"again"}"#);
        assert_eq!(status, StatusCode::ACCEPTED);
        let ids: Vec<_> = drain(&mut rx)
            .into_iter()
            .map(|i| match i {
                Ingested::Record(r) => (r.source_id, r.position.source, r.position.line),
                Ingested::Rejected(r) => panic!("rejected {r:?}"),
            })
            .collect();
        assert_eq!(
            ids,
            [
                ("m-1".into(), "http".into(), 1),
                ("m-2".into(), "http".into(), 1)
            ]
        );
    }

    #[actix_web::test]
    async fn an_ndjson_batch_keeps_the_lines_around_a_bad_one() {
        let (data, mut rx) = app_data(DEFAULT_BODY_LIMIT);
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
        assert_eq!(status, StatusCode::ACCEPTED);
        let reply: IngestReply = serde_json::from_slice(&reply).unwrap();
        assert_eq!((reply.accepted, reply.partials_skipped), (3, 1));
        assert_eq!(reply.rejected.len(), 1);
        assert_eq!(reply.rejected[0].line, 3);
        assert!(reply.rejected[0].reason.starts_with("not a valid record"));
        let seen: Vec<_> = drain(&mut rx)
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
        let (data, mut rx) = app_data(1024);
        let app = test::init_service(App::new().configure(configure(data))).await;
        let (status, body) = post!(&app, r#"{"type":"NOPE","contactId":"x"}"#);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let reply: IngestReply = serde_json::from_slice(&body).unwrap();
        assert_eq!(reply.rejected[0].reason, r#"unknown record type "NOPE""#);
        let big = format!(r#"{{"contactId":"x","transcript":"{}"}}"#, "a".repeat(2048));
        let (status, _) = post!(&app, big);
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(matches!(&drain(&mut rx)[..], [Ingested::Rejected(_)]));
    }

    #[actix_web::test]
    async fn a_closed_channel_answers_503() {
        let (data, rx) = app_data(DEFAULT_BODY_LIMIT);
        drop(rx);
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
        let (data, _rx) = app_data(DEFAULT_BODY_LIMIT);
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

    #[actix_web::test]
    async fn serve_answers_over_tcp_and_stops_gracefully() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (tx, mut rx) = mpsc::channel(8);
        let server = serve(("127.0.0.1", port), tx, DEFAULT_BODY_LIMIT).unwrap();
        let handle = server.handle();
        let running = actix_rt::spawn(server);
        let body = r#"{"type":"STARTED","contactId":"tcp-1"}"#;
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let request = format!(
            "POST /records HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 202"), "{response}");
        assert!(matches!(rx.recv().await, Some(Ingested::Record(r)) if r.source_id == "started"));
        handle.stop(true).await;
        running.await.unwrap().unwrap();
    }
}
