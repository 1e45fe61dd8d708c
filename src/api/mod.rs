//! The audit API, the live feed and the supervisor's dashboard over HTTP (docs/API.md), served
//! by `run --listen` beside `POST /records`, or alone by `callpulse serve`:
//!
//! - `GET /api/contacts` (filters and paging), `GET /api/contacts/{id}` (timeline),
//!   `GET /api/contacts/{id}/summaries`, `GET /api/verify/{id}`;
//! - `GET /api/live`: Server-Sent Events ([`live`]);
//! - `GET /api/openapi.json`: the OpenAPI description; `GET /`: the dashboard page.
//!
//! Every `/api/*` route needs a token with the `read` role ([`auth`]); `POST /records` needs
//! `ingest` once tokens are configured.

pub mod auth;
pub mod live;

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::{Condition, DefaultHeaders, Next, from_fn};
use actix_web::{App, HttpResponse, HttpServer, ResponseError, web};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::app::query;
use crate::app::verify::verify;
use crate::ingest::http::{self as ingest_http, HttpIngest};
use crate::metrics::metrics;
use crate::models::Label;
use crate::store::anchor::Anchor;
use crate::store::{
    ContactCursor, ContactFilter, EventStore, ProjectionStore, SeqRange, StoreError,
};
use auth::{Auth, Role};

/// The dashboard page, script and styles included.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The OpenAPI description of the routes.
const OPENAPI: &str = include_str!("openapi.json");

/// Rows per page of `GET /api/contacts` unless `limit` says otherwise.
pub const DEFAULT_PAGE: usize = 100;
/// The most rows one page may ask for.
pub const MAX_PAGE: usize = 1000;

/// A refused or failed API request, answered as `{"error": …}` with its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a parameter that cannot be read.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, or an unknown one.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a token without the route's role.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such contact.
    #[error("{0}")]
    NotFound(String),
    /// 429: over the rate limit; retry after this many seconds.
    #[error("too many requests: retry in {0} s")]
    TooManyRequests(u64),
    /// 503: the store could not answer.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Unavailable(format!("{e:#}"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::TooManyRequests(secs) => {
                response.insert_header((header::RETRY_AFTER, secs.to_string()));
            }
            _ => {}
        }
        response.json(json!({ "error": self.to_string() }))
    }
}

/// What the API routes share: the stores, the live feed and the tokens.
pub struct Api {
    events: Arc<dyn EventStore>,
    projections: Arc<dyn ProjectionStore>,
    anchor: Option<PathBuf>,
    live: live::Live,
    auth: Auth,
}

impl Api {
    /// The API over these stores (verifying against the anchor file at `anchor`, when
    /// given), its live feed polling the log every `config.live_poll_ms`. Starts the feed's
    /// poller: call it inside the runtime that serves.
    pub fn start(
        events: Arc<dyn EventStore>,
        projections: Arc<dyn ProjectionStore>,
        anchor: Option<PathBuf>,
        auth: Auth,
        config: &auth::ApiConfig,
    ) -> Self {
        let live = live::Live::start(
            events.clone(),
            projections.clone(),
            std::time::Duration::from_millis(config.live_poll_ms.max(10)),
        );
        Self {
            events,
            projections,
            anchor,
            live,
            auth,
        }
    }
}

/// Registers the API routes and the dashboard on an app.
pub fn configure(api: web::Data<Api>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(api)
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                ApiError::BadRequest(format!("bad query parameter: {e}")).into()
            }))
            .route("/", web::get().to(dashboard))
            .route("/api/openapi.json", web::get().to(openapi))
            .route("/api/contacts", web::get().to(contacts))
            .route("/api/contacts/{id}", web::get().to(contact))
            .route("/api/contacts/{id}/summaries", web::get().to(summaries))
            .route("/api/verify/{id}", web::get().to(verify_contact))
            .route("/api/live", web::get().to(live::stream));
    }
}

/// The role a path needs: `read` for `/api/*` (the description excepted), `ingest` for
/// `POST /records` when tokens are configured, none for the rest.
fn role_for(request: &ServiceRequest, auth: &Auth) -> Option<Role> {
    let path = request.path();
    if path.starts_with("/api/") && path != "/api/openapi.json" {
        Some(Role::Read)
    } else if path == "/records" && auth.has_tokens() {
        Some(Role::Ingest)
    } else {
        None
    }
}

/// The middleware that checks tokens and rates before any route runs.
async fn guard(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(api) = request.app_data::<web::Data<Api>>()
        && let Some(role) = role_for(&request, &api.auth)
        && let Err(refused) = api.auth.check(request.request(), role)
    {
        metrics()
            .api_refused
            .with_label_values(&[refused.status_code().as_str()])
            .inc();
        return Err(refused.into());
    }
    next.call(request).await
}

/// Binds `addr` and returns the running server: the API and dashboard, and the ingest
/// endpoints when `ingest` is given. Run it inside an actix System and stop it with its
/// handle's `.stop(true)`; it installs no signal handlers.
pub fn serve(
    addr: impl ToSocketAddrs,
    api: Api,
    ingest: Option<HttpIngest>,
    cors_origins: &[String],
) -> std::io::Result<Server> {
    let api = web::Data::new(api);
    let ingest = ingest.map(web::Data::new);
    let origins = cors_origins.to_vec();
    Ok(HttpServer::new(move || {
        let mut cors = actix_cors::Cors::default()
            .allowed_methods(["GET", "POST"])
            .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers(["Retry-After"]);
        for origin in &origins {
            cors = cors.allowed_origin(origin);
        }
        let app = App::new()
            .wrap(from_fn(guard))
            .wrap(Condition::new(!origins.is_empty(), cors))
            .wrap(DefaultHeaders::new().add((header::X_CONTENT_TYPE_OPTIONS, "nosniff")))
            .configure(configure(api.clone()));
        match &ingest {
            Some(ingest) => app.configure(ingest_http::configure(ingest.clone())),
            None => app.configure(ingest_http::configure_health),
        }
    })
    .disable_signals()
    .bind(addr)?
    .run())
}

async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(DASHBOARD)
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// The query of `GET /api/contacts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactsQuery {
    escalated: Option<bool>,
    since: Option<String>,
    until: Option<String>,
    sentiment: Option<String>,
    open: Option<bool>,
    contact: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn time_param(name: &str, text: Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    text.map(|t| {
        DateTime::parse_from_rfc3339(t.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| ApiError::BadRequest(format!("{name} must be an RFC 3339 time")))
    })
    .transpose()
}

/// A cursor as the API hands it out: hex of `<start, RFC 3339 or empty>|<contact id>`.
pub fn encode_cursor(cursor: &ContactCursor) -> String {
    let started = cursor
        .started_at
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Nanos, true))
        .unwrap_or_default();
    hex::encode(format!("{started}|{}", cursor.contact_id))
}

fn decode_cursor(text: &str) -> Result<ContactCursor, ApiError> {
    let bad = || ApiError::BadRequest("cursor is not one this API handed out".into());
    let bytes = hex::decode(text).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (started, contact_id) = text.split_once('|').ok_or_else(bad)?;
    let started_at = match started {
        "" => None,
        t => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|_| bad())?
                .with_timezone(&Utc),
        ),
    };
    Ok(ContactCursor {
        started_at,
        contact_id: contact_id.to_string(),
    })
}

async fn contacts(
    api: web::Data<Api>,
    query: web::Query<ContactsQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_PAGE}"
        )));
    }
    let sentiment = query
        .sentiment
        .map(|s| {
            serde_json::from_value::<Label>(json!(s.to_ascii_uppercase())).map_err(|_| {
                ApiError::BadRequest("sentiment must be POSITIVE, NEUTRAL or NEGATIVE".into())
            })
        })
        .transpose()?;
    let filter = ContactFilter {
        escalated: query.escalated,
        since: time_param("since", query.since)?,
        until: time_param("until", query.until)?,
        sentiment,
        open: query.open,
        contact_contains: query.contact.filter(|c| !c.is_empty()),
        after: query.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: Some(limit + 1),
    };
    let mut rows = api.projections.contacts(&filter).await?;
    let next_cursor = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        encode_cursor(&ContactCursor::of(&rows[limit - 1]))
    });
    Ok(HttpResponse::Ok().json(json!({ "contacts": rows, "nextCursor": next_cursor })))
}

async fn read_log(
    api: &Api,
    contact_id: &str,
) -> Result<Vec<crate::events::StoredEvent>, ApiError> {
    let log = api.events.read(contact_id, SeqRange::all()).await?;
    if log.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no events for contact {contact_id}"
        )));
    }
    Ok(log)
}

async fn contact(api: web::Data<Api>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let log = read_log(&api, &id).await?;
    Ok(HttpResponse::Ok().json(query::timeline(&id, &log)?))
}

async fn summaries(api: web::Data<Api>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let log = read_log(&api, &id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "contactId": id.as_str(),
        "summaries": query::summaries(&log),
    })))
}

async fn verify_contact(
    api: web::Data<Api>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let anchor = api.anchor.as_ref().map(Anchor::open).transpose()?;
    let heads = anchor.as_ref().map(Anchor::heads);
    if api.events.highest_seq(&id).await? == 0 {
        return match heads.and_then(|h| h.get(id.as_str())) {
            Some(sealed) => Ok(HttpResponse::Ok().json(json!({
                "contactId": id.as_str(),
                "ok": false,
                "events": 0,
                "problems": [{
                    "seq": sealed.0,
                    "reason": format!("no events, but the anchor sealed #{}: the log was deleted", sealed.0),
                }],
            }))),
            None => Err(ApiError::NotFound(format!("no events for contact {id}"))),
        };
    }
    let report = verify(api.events.as_ref(), Some(&id), heads).await?;
    let problems: Vec<_> = report
        .problems
        .iter()
        .map(|p| json!({ "seq": p.seq, "reason": p.reason }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "contactId": id.as_str(),
        "ok": report.is_ok(),
        "events": report.events,
        "problems": problems,
    })))
}

#[cfg(test)]
mod tests;
