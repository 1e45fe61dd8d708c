//! A stub AWS endpoint for services that cannot be emulated here (Bedrock runtime, Connect):
//! a real HTTP server on 127.0.0.1 that records every request the real SDK client sends,
//! checks the SigV4 signature is present, and answers with what the test's handler says
//! (recorded-format bodies, throttling, errors).

use std::sync::{Arc, Mutex};
#[cfg(test)]
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{App, FromRequest, Handler, HttpRequest, HttpResponse, HttpServer, Responder, web};

/// One request as the stub received it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// HTTP method.
    pub method: String,
    /// Path, percent-decoded.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// When it arrived.
    #[cfg(test)]
    pub at: Instant,
}

impl Received {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    #[cfg(test)]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Whether the request carries a SigV4 signature as AWS requires.
    pub fn is_signed(&self) -> bool {
        self.header("authorization").is_some_and(|a| {
            a.starts_with("AWS4-HMAC-SHA256 Credential=") && a.contains("Signature=")
        }) && self.header("x-amz-date").is_some()
    }
}

type Answerer = dyn Fn(&Received, usize) -> HttpResponse + Send + Sync;

/// Bedrock's Converse answer: the assistant says `text`.
pub(crate) fn converse_answer(text: &str) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 120, "outputTokens": 2, "totalTokens": 122},
        "metrics": {"latencyMs": 80}
    }))
}

/// Bedrock's InvokeModel answer for a Llama 3 body: the model generates `generation`.
pub(crate) fn llama_answer(generation: &str) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "generation": generation,
        "prompt_token_count": 900,
        "generation_token_count": 60,
        "stop_reason": "stop"
    }))
}

/// A running stub.
pub(crate) struct Stub {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    received: Arc<Mutex<Vec<Received>>>,
    server: ServerHandle,
}

impl Stub {
    /// Starts a stub answering each request with `handler(request, index)` (index counts
    /// from 0). Call from inside an actix or tokio runtime.
    pub fn start(
        handler: impl Fn(&Received, usize) -> HttpResponse + Send + Sync + 'static,
    ) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Answerer> = Arc::new(handler);
        let log = received.clone();
        let (endpoint, server) = serve(move |req: HttpRequest, body: web::Bytes| {
            let (log, handler) = (log.clone(), handler.clone());
            async move {
                let request = Received {
                    method: req.method().to_string(),
                    path: percent_decode(req.path()),
                    headers: req
                        .headers()
                        .iter()
                        .map(|(n, v)| {
                            (n.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                        })
                        .collect(),
                    body: body.to_vec(),
                    #[cfg(test)]
                    at: Instant::now(),
                };
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(request.clone());
                    log.len() - 1
                };
                handler(&request, index)
            }
        });
        Self {
            endpoint,
            received,
            server,
        }
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The most requests that arrived within any `window`: what a rate limit caps.
    #[cfg(test)]
    pub fn busiest(&self, window: Duration) -> usize {
        let times: Vec<Instant> = self.received().iter().map(|r| r.at).collect();
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| t.duration_since(times[i]) < window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        let server = self.server.clone();
        drop(server.stop(false));
    }
}

/// Serves every request with `handler` on a free port of 127.0.0.1 (one worker, no signal
/// handling); answers `http://127.0.0.1:PORT` and the server's handle. Call from inside an
/// actix or tokio runtime.
pub(crate) fn serve<F, Args>(handler: F) -> (String, ServerHandle)
where
    F: Handler<Args> + Send,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    let server = HttpServer::new(move || App::new().default_service(web::to(handler.clone())))
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("binding the stub");
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (format!("http://127.0.0.1:{port}"), handle)
}

fn percent_decode(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}
