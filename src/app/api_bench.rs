//! `callpulse bench api`: the HTTP API over a SQLite data directory in a temporary folder
//! holding `--contacts` contacts: latency of `GET /api/contacts` (the first page, a filtered
//! page, a page deep behind a cursor, a contact's timeline), then the live feed's fan-out:
//! `--pages` connections to `GET /api/live` while `--events` events are appended, and the
//! events per second delivered to all of them. Server and client share the machine's cores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{TimeZone, Utc};
use futures_util::future::join_all;
use serde::Serialize;

use super::bench::{Latency, build_kind, peak_rss_mib};
use crate::api::auth::{ApiConfig, Auth, Role, TokenConfig, token_hash};
use crate::api::{self, Api};
use crate::events::{ChainHead, Event, Participant, UtteranceReceived};
use crate::models::Label;
use crate::store::sqlite::SqliteDb;
use crate::store::{ContactRow, EventStore, ProjectionStore};

const TOKEN: &str = "bench-token";

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct ApiBenchOptions {
    /// Contacts in the read model.
    pub contacts: usize,
    /// Requests timed per route.
    pub requests: usize,
    /// Live-feed connections.
    pub pages: usize,
    /// Events appended while they follow.
    pub events: usize,
}

/// What it measured.
#[derive(Debug, Clone, Serialize)]
pub struct ApiBenchReport {
    /// Contacts stored.
    pub contacts: usize,
    /// CPU cores available (server and client share them).
    pub cores: usize,
    /// `release` or `dev`, and the opt-level.
    pub build: String,
    /// `GET /api/contacts` (first page of 100).
    pub first_page: Latency,
    /// `GET /api/contacts?escalated=true&sentiment=NEGATIVE`.
    pub filtered_page: Latency,
    /// `GET /api/contacts?cursor=…` half-way through the contacts.
    pub deep_page: Latency,
    /// `GET /api/contacts/{id}` of a 40-event contact.
    pub timeline: Latency,
    /// Live-feed connections.
    pub pages: usize,
    /// Events appended while they followed.
    pub events: usize,
    /// Events delivered to every page, per second (pages × events / time to the last).
    pub fan_out_events_per_sec: f64,
    /// From the first append until every page had every event, ms.
    pub fan_out_ms: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
}

fn row(i: usize) -> ContactRow {
    let start = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
        + chrono::Duration::seconds(i as i64 * 7);
    ContactRow {
        contact_id: format!("bench-{i:07}"),
        instance_id: Some("bench".into()),
        started_at: Some(start),
        ended_at: Some(start + chrono::Duration::minutes(5)),
        escalated: i.is_multiple_of(7),
        escalations: u32::from(i.is_multiple_of(7)),
        sentiment: Some(Label::ALL[i % 3]),
        summary_version: 1,
        utterances: 20,
        last_seq: 40,
    }
}

fn utterances(contact: &str, n: usize) -> Vec<crate::events::StoredEvent> {
    let mut head = ChainHead::default();
    (0..n)
        .map(|i| {
            let event = Event::UtteranceReceived(UtteranceReceived {
                segment_id: format!("s-{i}"),
                participant: Participant::Customer,
                text: "I would like to know where my parcel is, please.".into(),
                begin_offset_millis: None,
                end_offset_millis: None,
                redactions: Default::default(),
            });
            head.seal(contact, None, &event, Utc::now())
        })
        .collect()
}

async fn time(client: &reqwest::Client, url: &str, n: usize) -> anyhow::Result<Latency> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let response = client.get(url).bearer_auth(TOKEN).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        response.bytes().await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Latency::of(&mut samples))
}

/// Reads one page's feed until it has `events` events with an id.
async fn follow(base: String, events: usize) -> anyhow::Result<()> {
    let mut response = reqwest::Client::new()
        .get(format!("{base}/api/live"))
        .bearer_auth(TOKEN)
        .send()
        .await?;
    let mut seen = 0;
    let mut live = false;
    let mut buffer = String::new();
    while seen < events {
        let chunk = tokio::time::timeout(Duration::from_secs(60), response.chunk())
            .await
            .context("the feed went quiet")??
            .context("the feed ended")?;
        buffer.push_str(std::str::from_utf8(&chunk)?);
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            if message.contains("event: live") {
                live = true;
            } else if live && message.starts_with("id: ") {
                seen += 1;
            }
        }
    }
    Ok(())
}

/// Runs the benchmark (inside an actix System).
pub async fn run(options: ApiBenchOptions) -> anyhow::Result<ApiBenchReport> {
    let dir = tempfile::tempdir()?;
    let db = SqliteDb::open(dir.path().join("callpulse.db"))?;
    let (events, projections): (Arc<dyn EventStore>, Arc<dyn ProjectionStore>) =
        (Arc::new(db.events()), Arc::new(db.projections()));
    let rows: Vec<ContactRow> = (0..options.contacts).map(row).collect();
    for chunk in rows.chunks(5000) {
        projections.save(chunk, 0).await?;
    }
    events.append(&utterances("bench-0000000", 40)).await?;
    let config = ApiConfig {
        tokens: vec![TokenConfig {
            name: "bench".into(),
            sha256: token_hash(TOKEN),
            roles: vec![Role::Read],
        }],
        requests_per_second: 1_000_000,
        burst: 1_000_000,
        ..ApiConfig::default()
    };
    let auth = Auth::new(&config, None)?;
    let api = Api::start(events.clone(), projections.clone(), None, auth, &config);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = api::serve(("127.0.0.1", port), api, None, &[])?;
    let handle = server.handle();
    actix::spawn(server);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    let first_page = time(&client, &format!("{base}/api/contacts"), options.requests).await?;
    let filtered_page = time(
        &client,
        &format!("{base}/api/contacts?escalated=true&sentiment=NEGATIVE"),
        options.requests,
    )
    .await?;
    let middle = &rows[rows.len() / 2];
    let cursor = api::encode_cursor(&crate::store::ContactCursor::of(middle));
    let deep_page = time(
        &client,
        &format!("{base}/api/contacts?cursor={cursor}"),
        options.requests,
    )
    .await?;
    let timeline = time(
        &client,
        &format!("{base}/api/contacts/bench-0000000"),
        options.requests,
    )
    .await?;

    // Fan-out: every page connected and live before the first append.
    let followers: Vec<_> = (0..options.pages)
        .map(|_| tokio::spawn(follow(base.clone(), options.events)))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let contacts = options.events.div_ceil(50).max(1);
    for c in 0..contacts {
        let n = 50.min(options.events - c * 50);
        events
            .append(&utterances(&format!("live-{c:05}"), n))
            .await?;
    }
    for follower in join_all(followers).await {
        follower??;
    }
    let fan_out = started.elapsed().as_secs_f64();
    handle.stop(true).await;
    Ok(ApiBenchReport {
        contacts: options.contacts,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        build: build_kind(),
        first_page,
        filtered_page,
        deep_page,
        timeline,
        pages: options.pages,
        events: options.events,
        fan_out_events_per_sec: (options.pages * options.events) as f64 / fan_out,
        fan_out_ms: fan_out * 1000.0,
        peak_rss_mib: peak_rss_mib(),
    })
}
