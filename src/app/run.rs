//! `callpulse run`: records from files, stdin, HTTP and/or a Kinesis stream through the
//! pipeline, until the input ends (files only) or SIGTERM/SIGINT; then a graceful drain (no
//! accepted record is lost: every record read is made durable or written to the reject log,
//! and Kinesis checkpoints only cover durable records).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::mpsc;

use super::DataDir;
use crate::actors::Pipeline;
use crate::actors::feed::{FeedStats, feed};
use crate::actors::gateway::Backends;
use crate::api::auth::{Auth, TOKENS_ENV};
use crate::api::{self, Api};
use crate::config::Config;
use crate::ingest::http::HttpIngest;
use crate::ingest::kinesis::KinesisSource;
use crate::ingest::source::{Ingested, RejectLog, read_jsonl};
use crate::metrics::metrics;
use crate::models::CancellationToken;
use crate::redaction::Redactor;
use crate::store::EventStore;
use crate::store::anchor::Anchor;

/// Largest HTTP body accepted.
const HTTP_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Where records come from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// JSON Lines files; `-` is stdin.
    pub files: Vec<PathBuf>,
    /// Accept records over HTTP here.
    pub listen: Option<SocketAddr>,
    /// How long to wait for owed model work after the input ends.
    pub settle_timeout: Duration,
    /// Read the stream of the `[kinesis]` config table, under leases shared with other
    /// workers.
    pub kinesis: bool,
    /// Cancelled to stop the sources as a signal would.
    pub stop: CancellationToken,
}

/// Runs the pipeline over `inputs` and returns what the feed did.
pub async fn run(
    config: &Config,
    data: &DataDir,
    backends: Backends,
    inputs: Inputs,
) -> anyhow::Result<FeedStats> {
    // The stream is checked first: a misconfigured worker starts nothing.
    let kinesis = match (inputs.kinesis, &config.kinesis) {
        (false, _) => None,
        (true, Some(kinesis)) => {
            let source = KinesisSource::new(kinesis)
                .await?
                .redacting(Redactor::new(&config.redaction));
            source.check().await?;
            Some(source)
        }
        (true, None) => bail!("--kinesis needs a [kinesis] config table naming the stream"),
    };
    let auth = match inputs.listen {
        Some(_) => Some(Auth::new(
            &config.api,
            std::env::var(TOKENS_ENV).ok().as_deref(),
        )?),
        None => None,
    };
    let redactor = Redactor::new(&config.redaction);
    let parts = super::parts(config, data, backends).await?;
    let store = parts.store.clone();
    let projections = parts.projections.clone();
    let mut anchor = Anchor::open(data.anchor())?;
    let pipeline = Pipeline::start(parts);
    // A fleet worker resumes only the contacts of the shards it takes (the Kinesis source
    // does it as it takes them); one machine resumes all.
    if kinesis.is_none() {
        pipeline
            .resume_unfinished()
            .await
            .context("resuming unfinished contacts")?;
    }
    let rejects = RejectLog::open(&data.reject_log())
        .with_context(|| format!("opening {}", data.reject_log().display()))?;
    let (tx, rx) = mpsc::channel::<Ingested>(config.pipeline.max_in_flight.max(1));

    let server = match (inputs.listen, auth) {
        (Some(addr), Some(auth)) => {
            let api = Api::start(
                store.clone(),
                projections,
                Some(data.anchor()),
                auth,
                &config.api,
            );
            let ingest = HttpIngest::new(tx.clone(), HTTP_BODY_LIMIT, redactor.clone());
            let server = api::serve(addr, api, Some(ingest), &config.api.cors_origins)
                .with_context(|| format!("listening on {addr}"))?;
            let handle = server.handle();
            actix::spawn(server);
            tracing::info!(%addr, "accepting records over HTTP: POST /records; the API and dashboard at /");
            Some(handle)
        }
        _ => None,
    };
    let files = inputs.files.clone();
    let file_tx = tx.clone();
    drop(tx);
    let reading = async move {
        for file in files {
            let result = if file.as_os_str() == "-" {
                read_jsonl(tokio::io::stdin(), "stdin", redactor.clone(), &file_tx).await
            } else {
                let name = file.display().to_string();
                match tokio::fs::File::open(&file).await {
                    Ok(f) => read_jsonl(f, &name, redactor.clone(), &file_tx).await,
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = result {
                tracing::error!(file = %file.display(), error = %e, "reading input failed");
            }
        }
    };
    let feeding = feed(
        pipeline.router.clone(),
        rx,
        &rejects,
        config.pipeline.max_in_flight.max(1),
    );
    // Sources stop at the end of the files (with HTTP or Kinesis: at a signal) or at a
    // signal; the feeds end once every record read is settled.
    let stop = inputs.stop.clone();
    let endless = server.is_some() || kinesis.is_some();
    let stop_sources = async {
        tokio::select! {
            _ = reading => if endless { stopped(&stop).await },
            _ = stopped(&stop) => tracing::info!("stopping: draining"),
        }
        stop.cancel();
        if let Some(server) = &server {
            server.stop(true).await;
        }
    };
    let max_in_flight = config.pipeline.max_in_flight.max(1);
    let streaming = async {
        match &kinesis {
            Some(source) => {
                source
                    .run(
                        &pipeline,
                        &rejects,
                        max_in_flight,
                        inputs.settle_timeout,
                        stop.clone(),
                    )
                    .await
            }
            None => FeedStats::default(),
        }
    };
    let every = Duration::from_secs(config.pipeline.anchor_interval_secs.max(1));
    let retention = config.store.key_retention();
    let done = CancellationToken::new();
    let sealing = async {
        forget_sources(store.as_ref(), retention).await;
        loop {
            tokio::select! {
                () = done.cancelled() => break,
                () = tokio::time::sleep(every) => {
                    seal(&mut anchor, store.as_ref()).await;
                    forget_sources(store.as_ref(), retention).await;
                }
            }
        }
    };
    let working = async {
        let (mut stats, (), streamed) = tokio::join!(feeding, stop_sources, streaming);
        stats += streamed;
        let settled = pipeline.settle(inputs.settle_timeout).await;
        done.cancel();
        settled.map(|()| stats)
    };
    let (stats, ()) = tokio::join!(working, sealing);
    seal(&mut anchor, store.as_ref()).await;
    pipeline.stop();
    Ok(stats?)
}

/// Seals the heads that moved into the anchor; a failure is logged and retried next time.
async fn seal(anchor: &mut Anchor, store: &dyn EventStore) {
    match anchor.seal(store).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(contacts = n, "anchor sealed"),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), anchor = %anchor.path().display(), "sealing the anchor failed; retrying at the next interval")
        }
    }
}

/// Drops the idempotency keys of contacts that ended more than `retention` ago; a failure is
/// logged and retried next time.
async fn forget_sources(store: &dyn EventStore, retention: chrono::Duration) {
    match store.forget_sources(chrono::Utc::now() - retention).await {
        Ok(0) => {}
        Ok(n) => {
            metrics().idempotency_keys_forgotten.inc_by(n);
            tracing::info!(
                keys = n,
                "forgot the idempotency keys of long-ended contacts"
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "forgetting old idempotency keys failed; retrying at the next interval")
        }
    }
}

/// SIGTERM, SIGINT, or `stop` cancelled.
async fn stopped(stop: &CancellationToken) {
    tokio::select! {
        () = shutdown_signal() => {}
        () = stop.cancelled() => {}
    }
}

/// SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
