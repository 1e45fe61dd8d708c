use std::collections::BTreeSet;
use std::time::Duration;

use actix_web::{App, test};
use serde_json::Value;

use super::auth::{ApiConfig, TokenConfig, token_hash};
use super::*;
use crate::app::query::tests::{at, call_log, three_calls};
use crate::events::Participant;
use crate::store::memory::{MemoryEventStore, MemoryProjectionStore};
use crate::store::projection::catch_up;

const READER: &str = "reader-token";
const INGESTER: &str = "ingest-token";

fn config() -> ApiConfig {
    ApiConfig {
        tokens: vec![
            TokenConfig {
                name: "supervisors".into(),
                sha256: token_hash(READER),
                roles: vec![Role::Read],
            },
            TokenConfig {
                name: "feeder".into(),
                sha256: token_hash(INGESTER),
                roles: vec![Role::Ingest],
            },
        ],
        requests_per_second: 1000,
        burst: 1000,
        live_poll_ms: 20,
        ..ApiConfig::default()
    }
}

/// The API over the three calls of `query`'s tests (read models caught up).
async fn api_with(config: &ApiConfig) -> (Api, Arc<MemoryEventStore>) {
    let events = Arc::new(three_calls().await);
    let projections = Arc::new(MemoryProjectionStore::new());
    catch_up(events.as_ref(), projections.as_ref(), 100)
        .await
        .unwrap();
    let auth = Auth::new(config, None).unwrap();
    let api = Api::start(events.clone(), projections, None, auth, config);
    (api, events)
}

macro_rules! app {
    ($api:expr) => {
        test::init_service(
            App::new()
                .wrap(from_fn(guard))
                .configure(configure(web::Data::new($api))),
        )
        .await
    };
}

/// `GET uri` (with a bearer `token`): status, JSON body (null if none) and headers; a
/// request the guard refuses is answered as the server would.
macro_rules! get {
    ($app:expr, $uri:expr, $token:expr) => {{
        let mut request = test::TestRequest::get().uri($uri);
        let token: Option<&str> = $token;
        if let Some(token) = token {
            request = request.insert_header((header::AUTHORIZATION, format!("Bearer {token}")));
        }
        let response = match test::try_call_service($app, request.to_request()).await {
            Ok(response) => response.map_into_boxed_body(),
            Err(error) => ServiceResponse::new(
                test::TestRequest::default().to_http_request(),
                error.error_response(),
            ),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = test::read_body(response).await;
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, json, headers)
    }};
}

#[actix_web::test]
async fn no_token_a_wrong_token_or_a_wrong_role_is_refused() {
    let (api, _) = api_with(&config()).await;
    let app = app!(api);
    let (status, body, headers) = get!(&app, "/api/contacts", None);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    let (status, body, _) = get!(&app, "/api/contacts", Some("guess"));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "unknown token");
    let (status, body, _) = get!(&app, "/api/contacts/c-angry", Some(INGESTER));
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["error"].as_str().unwrap().contains("read role"),
        "{body}"
    );
    for uri in [
        "/api/live",
        "/api/verify/c-angry",
        "/api/contacts/c-angry/summaries",
    ] {
        assert_eq!(get!(&app, uri, None).0, StatusCode::UNAUTHORIZED, "{uri}");
    }
    let (status, _, _) = get!(&app, "/api/contacts", Some(READER));
    assert_eq!(status, StatusCode::OK);
    // The page and the description hold no data and need no token.
    assert_eq!(get!(&app, "/api/openapi.json", None).0, StatusCode::OK);
}

#[actix_web::test]
async fn without_configured_tokens_the_api_is_shut_and_says_how_to_open_it() {
    let (api, _) = api_with(&ApiConfig::default()).await;
    let app = app!(api);
    let (status, body, _) = get!(&app, "/api/contacts", Some("anything"));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("CALLPULSE_API_TOKENS"),
        "{body}"
    );
}

#[actix_web::test]
async fn tokens_from_the_environment_carry_their_roles() {
    let auth = Auth::new(&ApiConfig::default(), Some("read+ingest:both, ingest:feed")).unwrap();
    assert!(auth.has_tokens());
    let request = |token: &str| {
        test::TestRequest::default()
            .insert_header((header::AUTHORIZATION, format!("Bearer {token}")))
            .to_http_request()
    };
    assert_eq!(auth.check(&request("both"), Role::Read).unwrap(), "env-1");
    assert_eq!(auth.check(&request("both"), Role::Ingest).unwrap(), "env-1");
    assert!(matches!(
        auth.check(&request("feed"), Role::Read),
        Err(ApiError::Forbidden(_))
    ));
    for bad in ["reader:x", "read", "read:"] {
        assert!(
            Auth::new(&ApiConfig::default(), Some(bad)).is_err(),
            "{bad}"
        );
    }
    let bad_hash = ApiConfig {
        tokens: vec![TokenConfig {
            name: "t".into(),
            sha256: "abc".into(),
            roles: vec![Role::Read],
        }],
        ..ApiConfig::default()
    };
    assert!(Auth::new(&bad_hash, None).is_err());
}

#[actix_web::test]
async fn over_the_rate_a_token_gets_429_with_retry_after() {
    let (api, _) = api_with(&ApiConfig {
        requests_per_second: 1,
        burst: 2,
        ..config()
    })
    .await;
    let app = app!(api);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let (status, _, headers) = get!(&app, "/api/contacts", Some(READER));
        statuses.push(status);
        retry_after = retry_after.or(headers.get(header::RETRY_AFTER).cloned());
    }
    assert_eq!(statuses[..2], [StatusCode::OK, StatusCode::OK]);
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert!(retry_after.is_some());
}

#[actix_web::test]
async fn contacts_filter_and_page_with_a_cursor() {
    let (api, _) = api_with(&config()).await;
    let app = app!(api);
    let ids = |body: &Value| -> Vec<String> {
        body["contacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["contactId"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, all, _) = get!(&app, "/api/contacts", Some(READER));
    assert_eq!(ids(&all), ["c-angry", "c-calm", "c-open"]);
    assert_eq!(all["nextCursor"], Value::Null);
    assert_eq!(all["contacts"][0]["escalated"], true);
    let (_, escalated, _) = get!(&app, "/api/contacts?escalated=true", Some(READER));
    assert_eq!(ids(&escalated), ["c-angry"]);
    let (_, open, _) = get!(&app, "/api/contacts?open=true", Some(READER));
    assert_eq!(ids(&open), ["c-open"]);
    let (_, calm, _) = get!(&app, "/api/contacts?contact=cal", Some(READER));
    assert_eq!(ids(&calm), ["c-calm"]);
    let since = at(30).to_rfc3339();
    let uri = format!("/api/contacts?since={}", since.replace('+', "%2B"));
    let (_, later, _) = get!(&app, &uri, Some(READER));
    assert_eq!(ids(&later), ["c-calm", "c-open"]);

    let (_, first, _) = get!(&app, "/api/contacts?limit=2", Some(READER));
    assert_eq!(ids(&first), ["c-angry", "c-calm"]);
    let cursor = first["nextCursor"].as_str().unwrap();
    let uri = format!("/api/contacts?limit=2&cursor={cursor}");
    let (_, second, _) = get!(&app, &uri, Some(READER));
    assert_eq!(ids(&second), ["c-open"]);
    assert_eq!(second["nextCursor"], Value::Null);

    for bad in [
        "/api/contacts?limit=0",
        "/api/contacts?limit=5000",
        "/api/contacts?since=yesterday",
        "/api/contacts?sentiment=FURIOUS",
        "/api/contacts?cursor=zz",
        "/api/contacts?escalated=maybe",
        "/api/contacts?colour=red",
    ] {
        let (status, body, _) = get!(&app, bad, Some(READER));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
}

#[actix_web::test]
async fn a_contact_its_summaries_and_its_verification() {
    let (api, _) = api_with(&config()).await;
    let app = app!(api);
    let (status, timeline, _) = get!(&app, "/api/contacts/c-angry", Some(READER));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(timeline["contactId"], "c-angry");
    let kinds: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "ContactStarted");
    assert!(kinds.contains(&"EscalationRaised"), "{kinds:?}");
    assert_eq!(timeline["events"][1]["text"], "My order never came");
    let (_, summaries, _) = get!(&app, "/api/contacts/c-angry/summaries", Some(READER));
    assert_eq!(summaries["summaries"][0]["version"], 1);
    assert_eq!(summaries["summaries"][0]["followUp"], "none");
    let (_, none_yet, _) = get!(&app, "/api/contacts/c-open/summaries", Some(READER));
    assert_eq!(none_yet["summaries"], serde_json::json!([]));
    let (_, verified, _) = get!(&app, "/api/verify/c-angry", Some(READER));
    assert_eq!(verified["ok"], true);
    assert_eq!(verified["events"], kinds.len());
    for uri in [
        "/api/contacts/nobody",
        "/api/contacts/nobody/summaries",
        "/api/verify/nobody",
    ] {
        let (status, body, _) = get!(&app, uri, Some(READER));
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert!(body["error"].as_str().unwrap().contains("nobody"));
    }
}

#[actix_web::test]
async fn every_documented_get_route_is_served_and_every_served_route_documented() {
    let (api, _) = api_with(&config()).await;
    let app = app!(api);
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for route in [
        "/",
        "/api/openapi.json",
        "/api/contacts",
        "/api/contacts/{id}",
        "/api/contacts/{id}/summaries",
        "/api/verify/{id}",
        "/api/live",
        "/records",
        "/metrics",
        "/healthz",
    ] {
        assert!(paths.contains(route), "{route} is not in openapi.json");
    }
    for path in paths {
        let operations = doc["paths"][path].as_object().unwrap();
        if !operations.contains_key("get") || ["/api/live", "/metrics", "/healthz"].contains(&path)
        {
            continue;
        }
        let uri = path.replace("{id}", "c-angry");
        let (status, _, _) = get!(&app, &uri, Some(READER));
        assert_eq!(status, StatusCode::OK, "{uri}");
    }
}

#[actix_web::test]
async fn the_dashboard_is_one_page_that_loads_nothing_from_elsewhere() {
    let (api, _) = api_with(&config()).await;
    let app = app!(api);
    let response = test::call_service(&app, test::TestRequest::get().uri("/").to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let csp = response
        .headers()
        .get(header::CONTENT_SECURITY_POLICY)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let page = String::from_utf8(test::read_body(response).await.to_vec()).unwrap();
    assert!(page.contains("/api/live"));
    // Nothing from elsewhere: no script, style sheet or import by address (the one address
    // in the page is SVG's namespace).
    let page = page.replace("'http://www.w3.org/2000/svg'", "");
    for outside in [
        "http://",
        "https://",
        "rel=\"stylesheet\"",
        "@import",
        "<script src",
    ] {
        assert!(!page.contains(outside), "the page holds {outside}");
    }
}

/// The server on a free port over these stores.
fn server(api: Api) -> (String, actix_web::dev::ServerHandle) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = serve(("127.0.0.1", port), api, None, &[]).unwrap();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (format!("http://127.0.0.1:{port}"), handle)
}

/// A Server-Sent Events message.
#[derive(Debug, Clone, PartialEq)]
struct Message {
    id: Option<u64>,
    event: String,
    data: Value,
}

/// Reads a live feed message by message.
struct Feed {
    response: reqwest::Response,
    buffer: String,
}

impl Feed {
    async fn open(base: &str, last_event_id: Option<u64>) -> Self {
        let mut request = reqwest::Client::new()
            .get(format!("{base}/api/live"))
            .bearer_auth(READER);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> Message {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if block.starts_with(':') {
                    continue;
                }
                let mut message = Message {
                    id: None,
                    event: String::new(),
                    data: Value::Null,
                };
                for line in block.lines() {
                    if let Some(id) = line.strip_prefix("id: ") {
                        message.id = Some(id.parse().unwrap());
                    } else if let Some(event) = line.strip_prefix("event: ") {
                        message.event = event.into();
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        message.data = serde_json::from_str(data).unwrap();
                    }
                }
                return message;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.response.chunk())
                .await
                .expect("the feed went quiet")
                .unwrap()
                .expect("the feed ended");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

fn key(message: &Message) -> (String, u64) {
    (
        message.data["contactId"].as_str().unwrap().to_string(),
        message.data["seq"].as_u64().unwrap(),
    )
}

/// The live-feed keys of a call's log.
fn live_keys(log: &[crate::events::StoredEvent]) -> Vec<(String, u64)> {
    log.iter()
        .filter(|e| live::KINDS.contains(&e.kind.as_str()))
        .map(|e| (e.contact_id.clone(), e.seq))
        .collect()
}

#[actix_web::test]
async fn the_live_feed_shows_open_calls_then_follows_and_resumes_after_a_reconnect_losing_and_repeating_nothing()
 {
    let (api, events) = api_with(&config()).await;
    let (base, handle) = server(api);

    let mut feed = Feed::open(&base, None).await;
    let mut story = Vec::new();
    let tip = loop {
        let message = feed.next().await;
        if message.event == "live" {
            break message.id.unwrap();
        }
        assert_eq!(message.id, None, "the story so far has no ids");
        assert_eq!(message.data["position"], Value::Null);
        story.push(key(&message));
    };
    // Only the open call's story: the ended ones are history.
    assert!(!story.is_empty());
    assert!(story.iter().all(|(c, _)| c == "c-open"), "{story:?}");

    let angry = [
        (Participant::Customer, "Where is my refund?", 0.95),
        (Participant::Agent, "Let me look", 0.1),
        (Participant::Customer, "Unbelievable", 0.97),
    ];
    let first = call_log("c-new", at(180), &angry, true);
    events.append(&first).await.unwrap();
    let expected_first = live_keys(&first);
    // Read part of it, then the page goes away.
    let mut seen = Vec::new();
    let mut last_id = tip;
    for _ in 0..3 {
        let message = feed.next().await;
        assert_eq!(message.event, message.data["kind"].as_str().unwrap());
        last_id = message.id.unwrap();
        assert!(last_id > tip);
        seen.push(key(&message));
    }
    drop(feed);

    let second = call_log("c-later", at(240), &angry[..1], false);
    events.append(&second).await.unwrap();
    let mut rest = Vec::new();
    let mut feed = Feed::open(&base, Some(last_id)).await;
    let wanted = expected_first.len() + live_keys(&second).len();
    while seen.len() + rest.len() < wanted {
        let message = feed.next().await;
        assert!(message.id.unwrap() > last_id);
        rest.push(key(&message));
    }
    let mut all = seen.clone();
    all.extend(rest);
    let mut expected = expected_first;
    expected.extend(live_keys(&second));
    assert_eq!(all, expected, "every event once, in log order");
    assert!(all.iter().any(|(c, _)| c == "c-new"));
    drop(feed);
    handle.stop(true).await;
}

#[actix_web::test]
async fn the_live_feed_of_one_contact_and_an_unreadable_resume_point() {
    let (api, events) = api_with(&config()).await;
    let (base, handle) = server(api);
    let response = reqwest::Client::new()
        .get(format!("{base}/api/live"))
        .bearer_auth(READER)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let mut feed = {
        let response = reqwest::Client::new()
            .get(format!("{base}/api/live?contact=c-two&after=0"))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap();
        Feed {
            response,
            buffer: String::new(),
        }
    };
    let one = call_log(
        "c-one",
        at(300),
        &[(Participant::Customer, "hi", 0.1)],
        false,
    );
    let two = call_log(
        "c-two",
        at(301),
        &[(Participant::Customer, "hello", 0.1)],
        false,
    );
    events.append(&one).await.unwrap();
    events.append(&two).await.unwrap();
    let expected = live_keys(&two);
    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(key(&feed.next().await));
    }
    assert_eq!(got, expected);
    drop(feed);
    handle.stop(true).await;
}
