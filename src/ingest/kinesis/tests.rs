use std::collections::BTreeMap;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::StreamStatus;

use super::leases::{LATEST, TRIM_HORIZON};
use super::*;
use crate::actors::router::GetActivity;
use crate::app::run::{Inputs, run};
use crate::app::{DataDir, backends};
use crate::aws::{AwsEndpoint, moto};
use crate::config::{Backend, Config};
use crate::ingest::source::RejectLog;
use crate::store::{EventStore, SeqRange};

/// How long a worker waits for owed work before giving leases back.
const SETTLE: Duration = Duration::from_secs(30);

/// A stream with `shards` shards on moto, and a client for it.
async fn stream(shards: i32) -> (aws_sdk_kinesis::Client, String) {
    let client = aws_sdk_kinesis::Client::new(&moto::config().await);
    let name = moto::unique_name("calls");
    client
        .create_stream()
        .stream_name(&name)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    loop {
        let summary = client
            .describe_stream_summary()
            .stream_name(&name)
            .send()
            .await
            .unwrap();
        let status = summary.stream_description_summary.unwrap().stream_status;
        if status == StreamStatus::Active {
            return (client, name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Puts `lines` as one record each, partitioned by contact (on the shard owning
/// `hash`, when given); the last sequence number put on each shard.
async fn put(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    lines: &[(&str, String)],
    hash: Option<&str>,
) -> BTreeMap<String, String> {
    let mut last = BTreeMap::new();
    for (contact, line) in lines {
        let out = client
            .put_record()
            .stream_name(stream)
            .partition_key(*contact)
            .set_explicit_hash_key(hash.map(str::to_string))
            .data(Blob::new(line.as_bytes()))
            .send()
            .await
            .unwrap();
        last.insert(out.shard_id, out.sequence_number);
    }
    last
}

/// A lease table of this test's own on moto, for `stream`: a client, the table's name,
/// and the table.
async fn lease_table(stream: &str) -> (aws_sdk_dynamodb::Client, String, LeaseTable) {
    let dynamo = aws_sdk_dynamodb::Client::new(&moto::config().await);
    let name = moto::unique_name("leases");
    LeaseTable::create(&dynamo, &name).await.unwrap();
    let leases = LeaseTable::new(dynamo.clone(), &name, stream);
    (dynamo, name, leases)
}

/// The config of `run --kinesis` as `worker`, everything on moto, with the instant
/// stand-in model.
fn worker_config(stream: &str, lease_table: &str, worker: &str, lease_ms: u64) -> Config {
    let moto_endpoint = AwsEndpoint {
        region: Some("us-east-1".into()),
        endpoint_url: Some(moto::endpoint().to_string()),
    };
    let mut config = Config::load(None).unwrap();
    config.models.backend = Backend::StandIn;
    config.models.stand_in_latency_ms = 0;
    config.kinesis = Some(KinesisConfig {
        stream: stream.into(),
        lease_table: lease_table.into(),
        worker_id: worker.into(),
        lease_duration_ms: lease_ms,
        idle_poll_ms: 20,
        endpoint: moto_endpoint.clone(),
        lease_endpoint: moto_endpoint,
        ..KinesisConfig::default()
    });
    config
}

/// A source on `stream` that no worker runs (to look at the stream), and its shards,
/// each with its lease added.
async fn leased_shards(
    kinesis: &aws_sdk_kinesis::Client,
    dynamo: &aws_sdk_dynamodb::Client,
    stream: &str,
    lease_table: &str,
    leases: &LeaseTable,
) -> (KinesisSource, Vec<ShardInfo>) {
    let config = KinesisConfig {
        stream: stream.into(),
        lease_table: lease_table.into(),
        ..KinesisConfig::default()
    };
    let source = KinesisSource::with_clients(&config, kinesis.clone(), dynamo.clone()).unwrap();
    let shards = source.shards().await.unwrap();
    leases.add_missing(&shards, TRIM_HORIZON).await.unwrap();
    (source, shards)
}

/// The first contact id `c-<n>` whose records land on `shard`.
fn contact_on(shard: &ShardInfo) -> String {
    (0..)
        .map(|n| format!("c-{n}"))
        .find(|id| shard.holds(id))
        .unwrap()
}

/// Whether every shard's checkpoint has reached the sequence number in `last`.
fn reached(last: &BTreeMap<String, String>) -> impl Fn(&[Lease]) -> bool + '_ {
    move |table| {
        last.iter().all(|(shard, sequence)| {
            table
                .iter()
                .any(|l| &l.shard_id == shard && &l.checkpoint == sequence)
        })
    }
}

fn call(contact: &str) -> Vec<(&str, String)> {
    vec![
        (
            contact,
            format!(r#"{{"type":"STARTED","contactId":"{contact}","instanceId":"i-1"}}"#),
        ),
        (
            contact,
            format!(
                r#"{{"type":"SEGMENT","contactId":"{contact}","segmentId":"s-1","participant":"CUSTOMER","transcript":"My order never came.","isPartial":false}}"#
            ),
        ),
        (
            contact,
            format!(
                r#"{{"type":"SEGMENT","contactId":"{contact}","participant":"AGENT","transcript":"Let me look into it.","isPartial":false}}"#
            ),
        ),
        (
            contact,
            format!(r#"{{"type":"ENDED","contactId":"{contact}"}}"#),
        ),
    ]
}

/// Runs the pipeline on the stream until every shard's checkpoint reaches `last`.
async fn run_until(
    config: &Config,
    data: &DataDir,
    leases: &LeaseTable,
    last: &BTreeMap<String, String>,
) -> FeedStats {
    let stop = CancellationToken::new();
    let inputs = Inputs {
        kinesis: true,
        stop: stop.clone(),
        settle_timeout: Duration::from_secs(60),
        ..Inputs::default()
    };
    let watch = async {
        wait_for_leases(leases, "the checkpoints reached", reached(last)).await;
        stop.cancel();
    };
    let backends = backends(config).await.unwrap();
    let (stats, ()) = tokio::join!(run(config, data, backends, inputs), watch);
    stats.unwrap()
}

#[actix_rt::test]
async fn a_stream_is_read_into_the_log_once_and_resumed_from_its_checkpoints() {
    let (kinesis, name) = stream(2).await;
    let (_, lease_table, leases) = lease_table(&name).await;
    let config = worker_config(&name, &lease_table, "worker-1", 3_000);
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(dir.path()).unwrap();

    let mut lines: Vec<(&str, String)> =
        ["k-1", "k-2", "k-3"].iter().flat_map(|c| call(c)).collect();
    lines.insert(5, ("junk", "not json at all".into()));
    let last = put(&kinesis, &name, &lines, None).await;
    assert_eq!(last.len(), 2, "records on both shards");

    let stats = run_until(&config, &data, &leases, &last).await;
    assert_eq!(
        (stats.appended, stats.rejected, stats.duplicates),
        (12, 1, 0),
        "{stats:?}"
    );
    let (events, _) = data.stores().unwrap();
    for contact in ["k-1", "k-2", "k-3"] {
        let log = events.read(contact, SeqRange::all()).await.unwrap();
        let kinds: Vec<&str> = log.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds.iter().filter(|k| **k == "UtteranceReceived").count(),
            2,
            "{kinds:?}"
        );
        assert!(kinds.contains(&"ContactEnded"), "{kinds:?}");
    }
    let rejected = std::fs::read_to_string(data.reject_log()).unwrap();
    assert!(
        rejected.contains(&format!("kinesis:{name}/shardId-")),
        "{rejected}"
    );
    assert!(rejected.contains("not json at all"), "{rejected}");
    // Operators see each shard's lag.
    let exposed = crate::metrics::render();
    assert!(
        exposed.contains("callpulse_kinesis_millis_behind{shard=\"shardId-"),
        "{exposed}"
    );
    // On the way out the worker gave its leases back.
    let table = leases.list().await.unwrap();
    assert!(table.iter().all(|l| l.owner.is_none()), "{table:#?}");

    // The next run starts after the checkpoints: only the new call is read.
    let more = put(&kinesis, &name, &call("k-4"), None).await;
    let mut last = last;
    last.extend(more);
    let stats = run_until(&config, &data, &leases, &last).await;
    assert_eq!(
        (stats.appended, stats.rejected, stats.duplicates),
        (4, 0, 0),
        "{stats:?}"
    );
    let k4 = events.read("k-4", SeqRange::all()).await.unwrap();
    assert!(k4.iter().any(|e| e.kind == "ContactEnded"), "{k4:?}");
}

#[actix_rt::test]
async fn a_worker_resumes_the_unfinished_contacts_of_the_shards_it_takes_and_no_others() {
    let (kinesis, name) = stream(2).await;
    let (dynamo, lease_table, leases) = lease_table(&name).await;
    let (_, shards) = leased_shards(&kinesis, &dynamo, &name, &lease_table, &leases).await;
    // A live worker holds the second shard; this one will take the first.
    let theirs = &shards[1];
    let key = format!("{name}/{}", theirs.shard_id);
    leases
        .take(&key, 0, "other", "other-token")
        .await
        .unwrap()
        .unwrap();
    // One call per shard that ended before its summary was written (a worker died).
    let (mine, other) = (contact_on(&shards[0]), contact_on(theirs));
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(dir.path()).unwrap();
    let (events, _) = data.stores().unwrap();
    for id in [&mine, &other] {
        let mut log = crate::app::query::tests::call_log(
            id,
            crate::app::query::tests::at(0),
            &[(
                crate::events::Participant::Customer,
                "Where is my refund?",
                0.7,
            )],
            true,
        );
        assert_eq!(log.pop().unwrap().kind, "SummaryGenerated");
        events.append(&log).await.unwrap();
    }

    let config = worker_config(&name, &lease_table, "me", 60_000);
    let stop = CancellationToken::new();
    let inputs = Inputs {
        kinesis: true,
        stop: stop.clone(),
        settle_timeout: Duration::from_secs(30),
        ..Inputs::default()
    };
    let summarised = |id: &str| {
        let events = events.clone();
        let id = id.to_string();
        async move {
            let log = events.read(&id, SeqRange::all()).await.unwrap();
            log.iter().any(|e| e.kind == "SummaryGenerated")
        }
    };
    let watch = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !summarised(&mine).await {
            assert!(Instant::now() < deadline, "{mine} never summarised");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        stop.cancel();
    };
    let backends = backends(&config).await.unwrap();
    let (stats, ()) = tokio::join!(run(&config, &data, backends, inputs), watch);
    stats.unwrap();
    assert!(summarised(&mine).await);
    assert!(
        !summarised(&other).await,
        "{other} is on a shard another live worker holds: not this worker's to finish"
    );
}

#[actix_rt::test]
async fn fleet_status_shows_owners_checkpoints_lag_and_unfinished_contacts_per_worker() {
    let (kinesis, name) = stream(2).await;
    let (dynamo, lease_table, leases) = lease_table(&name).await;
    let (source, shards) = leased_shards(&kinesis, &dynamo, &name, &lease_table, &leases).await;
    let key = format!("{name}/{}", shards[0].shard_id);
    leases.take(&key, 0, "w-1", "t").await.unwrap().unwrap();
    assert!(leases.claim(&key, "w-1", "w-2").await.unwrap());
    assert!(
        !leases.claim(&key, "w-1", "w-3").await.unwrap(),
        "one claim at a time"
    );
    let open = contact_on(&shards[0]);
    put(&kinesis, &name, &call(&open), None).await;
    let events = crate::store::memory::MemoryEventStore::new();
    let log = crate::app::query::tests::call_log(
        &open,
        crate::app::query::tests::at(0),
        &[(crate::events::Participant::Customer, "Hello?", 0.1)],
        false,
    );
    events.append(&log).await.unwrap();
    let projections = crate::store::memory::MemoryProjectionStore::new();
    crate::store::projection::catch_up(&events, &projections, 100)
        .await
        .unwrap();

    let status = crate::app::fleet::status(&source, &projections)
        .await
        .unwrap();
    assert_eq!(status.len(), 2);
    let held = status.iter().find(|s| s.owner.is_some()).unwrap();
    assert_eq!(held.owner.as_deref(), Some("w-1"));
    assert_eq!(held.claimant.as_deref(), Some("w-2"), "being handed over");
    assert_eq!(held.checkpoint.as_deref(), Some(TRIM_HORIZON));
    assert_eq!(held.unfinished_contacts, 1);
    assert!(
        status.iter().all(|s| s.millis_behind.is_some()),
        "{status:?}"
    );
    let mut out = Vec::new();
    crate::app::fleet::write(&status, crate::app::query::Format::Json, &mut out).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(json["workers"]["w-1"]["leases"], 1);
    assert_eq!(json["workers"]["w-1"]["unfinishedContacts"], 1);
    assert_eq!(json["workers"]["(none)"]["leases"], 1);
    let mut table = Vec::new();
    crate::app::fleet::write(&status, crate::app::query::Format::Table, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(
        table.contains("w-1: 1 leases, 1 unfinished contacts"),
        "{table}"
    );
}

/// Each shard's lease owner, by shard id.
async fn owners(leases: &LeaseTable) -> BTreeMap<String, Option<String>> {
    let table = leases.list().await.unwrap();
    table.into_iter().map(|l| (l.shard_id, l.owner)).collect()
}

/// Waits (at most 30 s) until `done` holds for the lease table.
async fn wait_for_leases(leases: &LeaseTable, what: &str, done: impl Fn(&[Lease]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let table = leases.list().await.unwrap();
        if done(&table) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {table:#?}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// A pipeline with the instant stand-in model in a fresh data directory (removed with
/// the `TempDir`), and its reject log.
async fn stand_in_pipeline() -> (
    tempfile::TempDir,
    DataDir,
    crate::actors::Pipeline,
    RejectLog,
) {
    let mut config = Config::load(None).unwrap();
    config.models.backend = Backend::StandIn;
    config.models.stand_in_latency_ms = 0;
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(dir.path()).unwrap();
    let pipeline = crate::actors::Pipeline::start(
        crate::app::parts(&config, &data, backends(&config).await.unwrap())
            .await
            .unwrap(),
    );
    let rejects = RejectLog::open(&data.reject_log()).unwrap();
    (dir, data, pipeline, rejects)
}

#[actix_rt::test]
async fn two_workers_share_a_stream_and_hand_shards_over_while_reading() {
    let (kinesis, name) = stream(4).await;
    let (dynamo, lease_table, leases) = lease_table(&name).await;
    let (_dir, data, pipeline, rejects) = stand_in_pipeline().await;
    let worker = |id: &str| {
        let config = KinesisConfig {
            stream: name.clone(),
            lease_table: lease_table.clone(),
            worker_id: id.into(),
            lease_duration_ms: 900,
            idle_poll_ms: 20,
            ..KinesisConfig::default()
        };
        KinesisSource::with_clients(&config, kinesis.clone(), dynamo.clone()).unwrap()
    };
    let (a, b) = (worker("a"), worker("b"));
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());

    // Two records of each call on every shard: the first half now, the rest once the
    // shards have been split between the workers.
    let shards = kinesis
        .list_shards()
        .stream_name(&name)
        .send()
        .await
        .unwrap()
        .shards
        .unwrap();
    let calls: Vec<(String, String)> = (0..8)
        .map(|n| {
            let range = shards[n % 4].hash_key_range().unwrap();
            (format!("k-{n}"), range.starting_hash_key().to_string())
        })
        .collect();
    let put_lines = async |part: std::ops::Range<usize>| {
        let mut last = BTreeMap::new();
        for (contact, hash) in &calls {
            let lines = &call(contact)[part.clone()];
            last.extend(put(&kinesis, &name, lines, Some(hash)).await);
        }
        last
    };
    let b_started = CancellationToken::new();
    let driving = async {
        let first = put_lines(0..2).await;
        assert_eq!(first.len(), 4, "the first half on every shard");
        wait_for_leases(&leases, "a reading every shard", reached(&first)).await;
        assert!(
            owners(&leases)
                .await
                .values()
                .all(|o| o.as_deref() == Some("a"))
        );
        b_started.cancel();
        wait_for_leases(&leases, "an even split", |table| {
            table
                .iter()
                .filter(|l| l.owner.as_deref() == Some("b"))
                .count()
                == 2
                && table
                    .iter()
                    .filter(|l| l.owner.as_deref() == Some("a"))
                    .count()
                    == 2
        })
        .await;
        let rest = put_lines(2..4).await;
        wait_for_leases(&leases, "the rest read", reached(&rest)).await;
        stop_a.cancel();
        stop_b.cancel();
    };
    let running_b = async {
        b_started.cancelled().await;
        b.run(&pipeline, &rejects, 64, SETTLE, stop_b.clone()).await
    };
    let (read_a, read_b, ()) = tokio::join!(
        a.run(&pipeline, &rejects, 64, SETTLE, stop_a.clone()),
        running_b,
        driving
    );
    pipeline.settle(Duration::from_secs(30)).await.unwrap();

    assert!(read_b.appended > 0, "b read the shards it took: {read_b:?}");
    assert!(
        metrics().kinesis_lease_takeovers.get() >= 2,
        "b's two leases were taken from a"
    );
    assert!(crate::metrics::render().contains("callpulse_kinesis_leases_held"));
    assert_eq!(
        read_a.appended + read_b.appended,
        32,
        "{read_a:?} {read_b:?}"
    );
    assert_eq!(read_a.rejected + read_b.rejected, 0);
    let (events, _) = data.stores().unwrap();
    for (contact, _) in &calls {
        let log = events.read(contact, SeqRange::all()).await.unwrap();
        let kinds: Vec<&str> = log.iter().map(|e| e.kind.as_str()).collect();
        let received = kinds.iter().filter(|k| **k == "UtteranceReceived").count();
        assert_eq!(received, 2, "{contact}: {kinds:?}");
        assert_eq!(kinds.iter().filter(|k| **k == "ContactEnded").count(), 1);
    }
    assert!(owners(&leases).await.values().all(Option::is_none));
    pipeline.stop();
}

#[actix_rt::test]
async fn a_missing_stream_or_lease_table_is_a_clear_error_at_start() {
    let (kinesis, name) = stream(1).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&moto::config().await);
    let source = |stream: &str, lease_table: &str| {
        let config = KinesisConfig {
            stream: stream.into(),
            lease_table: lease_table.into(),
            ..KinesisConfig::default()
        };
        KinesisSource::with_clients(&config, kinesis.clone(), dynamo.clone()).unwrap()
    };
    let error = source("no-such-stream", "no-such-table")
        .check()
        .await
        .unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("\"no-such-stream\" cannot be read"), "{text}");
    assert!(text.contains("ResourceNotFound"), "{text}");

    let error = source(&name, "no-such-table").check().await.unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("callpulse store init"), "{text}");
    assert!(text.contains("no-such-table"), "{text}");

    let table = moto::unique_name("leases");
    LeaseTable::create(&dynamo, &table).await.unwrap();
    source(&name, &table).check().await.unwrap();
}

#[test]
fn config_is_checked() {
    let config: KinesisConfig = toml::from_str("stream = \"calls\"").unwrap();
    assert_eq!(config.lease_table, "callpulse-leases");
    assert_eq!(config.initial_position, InitialPosition::TrimHorizon);
    assert!(toml::from_str::<KinesisConfig>("stream = \"s\"\nshards = 2").is_err());
    let latest: KinesisConfig =
        toml::from_str("stream = \"s\"\ninitial_position = \"latest\"").unwrap();
    assert_eq!(latest.initial_position.checkpoint(), LATEST);

    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    let source = |config: &KinesisConfig| {
        KinesisSource::with_clients(
            config,
            aws_sdk_kinesis::Client::new(&sdk),
            aws_sdk_dynamodb::Client::new(&sdk),
        )
    };
    let error = source(&KinesisConfig::default()).err().unwrap();
    assert!(error.to_string().contains("stream"), "{error}");
    let error = source(&KinesisConfig {
        max_records: 0,
        ..config.clone()
    })
    .err()
    .unwrap();
    assert!(error.to_string().contains("max_records"), "{error}");
    let named = source(&config).unwrap();
    assert_ne!(
        named.worker_id(),
        source(&config).unwrap().worker_id(),
        "fresh ids differ"
    );
}

/// A proxy in front of moto that holds the requests `holds` picks while its switch is on:
/// the switch, the proxy's endpoint, and how many held requests their client gave up on.
fn switched_proxy(
    holds: impl Fn(&[u8]) -> bool + Send + 'static,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let on = std::sync::Arc::new(AtomicBool::new(false));
    let switch = on.clone();
    let (endpoint, abandoned) = moto::proxy(move |request| {
        if switch.load(Ordering::SeqCst) && holds(request) {
            moto::Forward::Hold
        } else {
            moto::Forward::Answer
        }
    });
    (on, endpoint, abandoned)
}

/// Worker "a" on `stream` with 900 ms leases and quick polls.
fn quick_worker_config(stream: &str, lease_table: &str) -> KinesisConfig {
    KinesisConfig {
        stream: stream.to_string(),
        lease_table: lease_table.to_string(),
        worker_id: "a".into(),
        lease_duration_ms: 900,
        idle_poll_ms: 20,
        ..KinesisConfig::default()
    }
}

/// How many contacts have a live actor in `pipeline`.
async fn live_contacts(pipeline: &crate::actors::Pipeline) -> usize {
    pipeline
        .router
        .send(GetActivity { among: None })
        .await
        .unwrap()
        .live
}

/// Puts the start of call `contact` and waits until the worker has read it and its actor
/// runs.
async fn open_call(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    leases: &LeaseTable,
    pipeline: &crate::actors::Pipeline,
    contact: &str,
) {
    let open = put(kinesis, stream, &call(contact)[..2], None).await;
    wait_for_leases(leases, "the call read", reached(&open)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while live_contacts(pipeline).await == 0 {
        assert!(Instant::now() < deadline, "the call never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker whose lease store stops answering (a partition, a hung connection) stops
/// the shard's contacts once a lease duration has passed since its last renewal was
/// sent, on its own clock: from then on another worker may take the lease, and nothing
/// of the shard may still run here. Not after the hung request finally fails.
#[actix_rt::test]
async fn a_worker_cut_off_from_its_leases_stops_their_contacts_on_its_own_clock() {
    use std::sync::atomic::Ordering;
    let (kinesis, name) = stream(1).await;
    let (_, lease_table, leases) = lease_table(&name).await;
    let (cut_off, endpoint, abandoned) = switched_proxy(|_| true);
    let sdk = moto::config().await;
    let dynamo = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .endpoint_url(endpoint)
            .build(),
    );
    let (_dir, _data, pipeline, rejects) = stand_in_pipeline().await;
    let kinesis_config = quick_worker_config(&name, &lease_table);
    let worker = KinesisSource::with_clients(&kinesis_config, kinesis.clone(), dynamo).unwrap();
    let stop = CancellationToken::new();
    let driving = async {
        open_call(&kinesis, &name, &leases, &pipeline, "k-cut").await;
        cut_off.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(90);
        while live_contacts(&pipeline).await > 0 {
            assert!(Instant::now() < deadline, "never stopped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            abandoned.load(Ordering::SeqCst),
            0,
            "the contact was stopped only once a request to the store had timed out"
        );
        cut_off.store(false, Ordering::SeqCst);
        stop.cancel();
    };
    let (_, ()) = tokio::join!(
        worker.run(&pipeline, &rejects, 64, SETTLE, stop.clone()),
        driving
    );
    pipeline.stop();
}

#[actix_rt::test]
async fn a_slow_shard_listing_never_holds_the_lease_renewals_back() {
    use std::sync::atomic::Ordering;
    let (kinesis, name) = stream(1).await;
    let (dynamo, lease_table, leases) = lease_table(&name).await;
    // ListShards goes unanswered while `slow` is on (and, the proxy taking one request at a
    // time, so does the reader's GetRecords): a Kinesis control plane throttling or down.
    let (slow, endpoint, _) =
        switched_proxy(|request| request.windows(10).any(|w| w == b"ListShards"));
    let sdk = moto::config().await;
    let slow_kinesis = aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::config::Builder::from(&sdk)
            .endpoint_url(endpoint)
            .build(),
    );
    let (_dir, _data, pipeline, rejects) = stand_in_pipeline().await;
    let kinesis_config = KinesisConfig {
        shard_sync_ms: 100,
        ..quick_worker_config(&name, &lease_table)
    };
    let worker = KinesisSource::with_clients(&kinesis_config, slow_kinesis, dynamo).unwrap();
    let stop = CancellationToken::new();
    let driving = async {
        open_call(&kinesis, &name, &leases, &pipeline, "k-slow").await;
        slow.store(true, Ordering::SeqCst);
        // Four lease durations of a stalled listing: the lease is still renewed, so the
        // shard's contact keeps running here.
        let until = Instant::now() + Duration::from_millis(4 * 900);
        while Instant::now() < until {
            assert!(
                live_contacts(&pipeline).await > 0,
                "the contact was stopped: the renewals waited behind the shard listing"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slow.store(false, Ordering::SeqCst);
        stop.cancel();
    };
    let (_, ()) = tokio::join!(
        worker.run(&pipeline, &rejects, 64, SETTLE, stop.clone()),
        driving
    );
    pipeline.stop();
}
