//! `GET /api/live`: Server-Sent Events of what contacts receive and decide, as it is appended.
//!
//! One poller reads the log's global order ([`EventStore::read_all`]) every `live_poll_ms`
//! from where the read models stood when it started, and broadcasts each event of the kinds
//! a supervisor watches as a ready SSE frame (`id:` its position), so a hundred pages cost
//! one reader. A connection that names where it stopped (`Last-Event-ID`, or `after`) first
//! gets every later event from the log itself, then the broadcast; one that does not first
//! gets the story so far of the open contacts (frames without `id`), then an `event: live`
//! marker carrying the position it continues from. A connection that falls behind the
//! broadcast catches up from the log, losing nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::stream;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};

use super::{Api, ApiError};
use crate::app::query::event_json;
use crate::metrics::metrics;
use crate::store::{ContactFilter, EventStore, Positioned, ProjectionStore, SeqRange, StoreError};

/// The kinds of event the feed carries.
pub const KINDS: [&str; 8] = [
    "ContactStarted",
    "UtteranceReceived",
    "SentimentAssessed",
    "SentimentChanged",
    "EscalationRaised",
    "EscalationCleared",
    "ContactEnded",
    "SummaryGenerated",
];

/// Events read from the log per round.
const BATCH: usize = 1000;

/// Open contacts whose story a new connection gets first (the most recent).
pub const SNAPSHOT_CONTACTS: usize = 1000;

/// A comment is sent after this long without an event, so proxies keep the connection.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One broadcast event.
#[derive(Debug)]
struct Frame {
    position: u64,
    contact_id: String,
    /// The whole SSE message, `id:` line included.
    text: Bytes,
}

/// The poller's broadcast, and what a connection needs to read the log itself.
pub struct Live {
    frames: broadcast::Sender<Arc<Frame>>,
    /// Every event up to this position has been broadcast (none until the first round).
    polled: watch::Receiver<Option<u64>>,
    events: Arc<dyn EventStore>,
    projections: Arc<dyn ProjectionStore>,
}

impl Live {
    /// Starts the poller (on the current runtime), reading every `every`.
    pub fn start(
        events: Arc<dyn EventStore>,
        projections: Arc<dyn ProjectionStore>,
        every: Duration,
    ) -> Self {
        let (frames, _) = broadcast::channel(4096);
        let (polled_tx, polled) = watch::channel(None);
        tokio::spawn(poll(
            events.clone(),
            projections.clone(),
            frames.clone(),
            polled_tx,
            every,
        ));
        Self {
            frames,
            polled,
            events,
            projections,
        }
    }
}

/// The SSE message of `item`, when it is of a kind the feed carries: with its position as
/// `id` (`live`), or without (`position` null in the data: the story so far).
fn message(item: &Positioned, live: bool) -> Option<Bytes> {
    let event = &item.event;
    if !KINDS.contains(&event.kind.as_str()) {
        return None;
    }
    let mut fields = match event_json(event) {
        Ok(fields) => fields,
        Err(e) => {
            tracing::warn!(contact = %event.contact_id, seq = event.seq, error = %e, "event not shown live");
            return None;
        }
    };
    fields.insert(
        "position".into(),
        if live {
            Value::from(item.position)
        } else {
            Value::Null
        },
    );
    fields.insert("contactId".into(), Value::from(event.contact_id.clone()));
    let data = Value::Object(fields).to_string();
    let id = if live {
        format!("id: {}\n", item.position)
    } else {
        String::new()
    };
    Some(Bytes::from(format!(
        "{id}event: {}\ndata: {data}\n\n",
        event.kind
    )))
}

/// Reads the log from the read models' checkpoint on, broadcasting what it finds, until the
/// feed is dropped. Events that become visible behind positions already read (DynamoDB's
/// replay window) are read again and sent once.
async fn poll(
    events: Arc<dyn EventStore>,
    projections: Arc<dyn ProjectionStore>,
    frames: broadcast::Sender<Arc<Frame>>,
    polled: watch::Sender<Option<u64>>,
    every: Duration,
) {
    let window = events.replay_window();
    let mut position = None;
    // Events sent within the replay window, by contact and sequence number: their position.
    let mut sent: HashMap<(String, u64), u64> = HashMap::new();
    while !polled.is_closed() {
        let from = match position {
            Some(p) => p,
            None => match projections.checkpoint().await {
                Ok(p) => p,
                Err(e) => {
                    read_failed("the checkpoint", &e, every).await;
                    continue;
                }
            },
        };
        let page = match events
            .read_all(u64::saturating_sub(from, window), BATCH)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                read_failed("the log", &e, every).await;
                continue;
            }
        };
        let mut newest = from;
        let mut fresh = 0;
        for item in &page {
            // Behind `from` only within a replay window, and then only if not sent yet.
            let key = || (item.event.contact_id.clone(), item.event.seq);
            if item.position <= from && (window == 0 || sent.contains_key(&key())) {
                continue;
            }
            fresh += 1;
            newest = newest.max(item.position);
            if let Some(text) = message(item, true) {
                // No receiver yet is fine: nobody is watching.
                let _ = frames.send(Arc::new(Frame {
                    position: item.position,
                    contact_id: item.event.contact_id.clone(),
                    text,
                }));
            }
            if window > 0 {
                sent.insert(key(), item.position);
            }
        }
        sent.retain(|_, p| *p + window >= newest);
        position = Some(newest);
        polled.send_replace(Some(newest));
        if fresh < BATCH / 2 {
            tokio::time::sleep(every).await;
        }
    }
}

/// A failed read of the feed: counted, logged, then a pause before it is tried again.
async fn read_failed(what: &str, error: &StoreError, pause: Duration) {
    metrics().live_poll_errors.inc();
    tracing::warn!(%error, "live feed: reading {what} failed; retrying");
    tokio::time::sleep(pause).await;
}

/// The query of `GET /api/live`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    /// Continue after this position (as `Last-Event-ID`).
    after: Option<u64>,
    /// Only this contact's events.
    contact: Option<String>,
}

/// `GET /api/live`.
pub async fn stream(
    api: web::Data<Api>,
    request: HttpRequest,
    query: web::Query<LiveQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let resume = match request.headers().get("last-event-id") {
        Some(id) => Some(
            id.to_str()
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::BadRequest("Last-Event-ID must be a position".into()))?,
        ),
        None => query.after,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let connection = Connection {
        frames: api.live.frames.subscribe(),
        polled: api.live.polled.clone(),
        events: api.live.events.clone(),
        projections: api.live.projections.clone(),
        contact: query.contact,
        out: tx,
    };
    actix_web::rt::spawn(connection.run(resume));
    let body = stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, std::convert::Infallible>(bytes), rx))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// One page's feed.
struct Connection {
    frames: broadcast::Receiver<Arc<Frame>>,
    polled: watch::Receiver<Option<u64>>,
    events: Arc<dyn EventStore>,
    projections: Arc<dyn ProjectionStore>,
    contact: Option<String>,
    out: mpsc::Sender<Bytes>,
}

/// The page went away.
struct Gone;

impl Connection {
    async fn run(mut self, resume: Option<u64>) {
        metrics().live_connections.inc();
        let _ = self.feed(resume).await;
        metrics().live_connections.dec();
    }

    async fn send(&self, bytes: Bytes) -> Result<(), Gone> {
        self.out.send(bytes).await.map_err(|_| Gone)
    }

    fn wanted(&self, contact_id: &str) -> bool {
        self.contact.as_deref().is_none_or(|c| c == contact_id)
    }

    async fn feed(&mut self, resume: Option<u64>) -> Result<(), Gone> {
        let start = loop {
            if let Some(p) = *self.polled.borrow_and_update() {
                break p;
            }
            if self.polled.changed().await.is_err() {
                return Err(Gone);
            }
        };
        let window = self.events.replay_window();
        let mut caught_up = match resume {
            Some(after) => {
                self.replay_log(after.saturating_sub(window), start).await?;
                start.max(after)
            }
            None => {
                self.story_so_far().await?;
                self.send(Bytes::from(format!(
                    "id: {start}\nevent: live\ndata: {{\"position\":{start}}}\n\n"
                )))
                .await?;
                start
            }
        };
        loop {
            let next = tokio::time::timeout(KEEP_ALIVE, self.frames.recv()).await;
            match next {
                Err(_) => self.send(Bytes::from_static(b": keep-alive\n\n")).await?,
                Ok(Ok(frame)) => {
                    // At or before `caught_up` it came from the log already (but DynamoDB
                    // can show an event late, behind positions read: pages dedupe by
                    // contact and sequence number).
                    if (frame.position > caught_up || window > 0) && self.wanted(&frame.contact_id)
                    {
                        self.send(frame.text.clone()).await?;
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    tracing::info!(
                        missed,
                        "live feed: a page fell behind; catching up from the log"
                    );
                    let now = (*self.polled.borrow()).unwrap_or(caught_up);
                    self.replay_log(caught_up, now).await?;
                    caught_up = now;
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return Err(Gone),
            }
        }
    }

    /// Every event after `after` up to `until`, read from the log.
    async fn replay_log(&self, mut after: u64, until: u64) -> Result<(), Gone> {
        while after < until {
            let page = match self.events.read_all(after, BATCH).await {
                Ok(page) => page,
                Err(e) => {
                    read_failed("the log", &e, Duration::from_millis(500)).await;
                    continue;
                }
            };
            let Some(last) = page.last() else { break };
            after = last.position;
            for item in page.iter().filter(|i| i.position <= until) {
                if self.wanted(&item.event.contact_id)
                    && let Some(text) = message(item, true)
                {
                    self.send(text).await?;
                }
            }
        }
        Ok(())
    }

    /// The events so far of the most recent open contacts (or of the one contact asked for).
    async fn story_so_far(&self) -> Result<(), Gone> {
        let contacts = match &self.contact {
            Some(contact) => vec![contact.clone()],
            None => {
                let open = ContactFilter {
                    open: Some(true),
                    ..ContactFilter::default()
                };
                match self.projections.contacts(&open).await {
                    Ok(rows) => {
                        let skip = rows.len().saturating_sub(SNAPSHOT_CONTACTS);
                        rows.into_iter().skip(skip).map(|r| r.contact_id).collect()
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "live feed: listing open contacts failed");
                        Vec::new()
                    }
                }
            }
        };
        for contact in contacts {
            let log = match self.events.read(&contact, SeqRange::all()).await {
                Ok(log) => log,
                Err(e) => {
                    tracing::warn!(%contact, error = %e, "live feed: reading a contact failed");
                    continue;
                }
            };
            for event in log {
                let item = Positioned { position: 0, event };
                if let Some(text) = message(&item, false) {
                    self.send(text).await?;
                }
            }
        }
        Ok(())
    }
}
