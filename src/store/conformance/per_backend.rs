//! What concerns one backend: DynamoDB commits whose answer was lost, SQLite's stores on one
//! file and its schema version, and a SQLite writer killed mid-batch (case 22).

use super::*;

/// A [`one_at_a_time`] endpoint of its own that, while `losing` is up, has moto apply each
/// `TransactWriteItems` and then closes the connection without its answer.
fn losing_answers(losing: Arc<std::sync::atomic::AtomicBool>) -> String {
    use crate::aws::moto::{Forward, proxy};
    use std::sync::atomic::Ordering;
    proxy(move |request| {
        let transaction = String::from_utf8_lossy(request)
            .to_ascii_lowercase()
            .contains("x-amz-target: dynamodb_20120810.transactwriteitems");
        if transaction && losing.load(Ordering::SeqCst) {
            Forward::LoseAnswer
        } else {
            Forward::Answer
        }
    })
    .0
}

/// Case 5b of the fleet issue: DynamoDB commits a transaction but its answer never comes
/// back (every retry of the SDK's too). The append is reported as failed, never as a second
/// write: appended again, a batch with a source id is a duplicate at its original numbers,
/// one without is a conflict (the writer reloads and finds its events), and the log holds
/// each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_commits_whose_answer_was_lost_are_not_written_twice() {
    let tables = Dynamo::new().await;
    let losing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sdk = crate::aws::moto::config().await;
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .endpoint_url(losing_answers(losing.clone()))
            .build(),
    );
    let lossy = DynamoEventStore::new(client, &tables.config.events_table);
    let store = tables.events();
    let mut head = ChainHead::default();
    let sourced = sealed(&mut head, "c-lost", 2);
    let error = lossy.append(&sourced).await.unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert_eq!(
        store.read("c-lost", SeqRange::all()).await.unwrap(),
        sourced
    );
    losing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        lossy.append(&sourced).await.unwrap(),
        Appended::Duplicate {
            first_seq: 1,
            last_seq: 2
        }
    );

    let unsourced = head.seal("c-lost", None, &utterance("no key"), Utc::now());
    losing.store(true, std::sync::atomic::Ordering::SeqCst);
    lossy
        .append(std::slice::from_ref(&unsourced))
        .await
        .unwrap_err();
    losing.store(false, std::sync::atomic::Ordering::SeqCst);
    let again = lossy.append(std::slice::from_ref(&unsourced)).await;
    assert!(
        matches!(again, Err(StoreError::Conflict { actual: 3, .. })),
        "{again:?}"
    );
    let log = store.read("c-lost", SeqRange::all()).await.unwrap();
    assert_eq!(log.len(), 3);
    verify_chain(&log);
}

#[tokio::test]
async fn sqlite_stores_share_one_file_and_persist() {
    let sqlite = Sqlite::new();
    let db = SqliteDb::open(sqlite.path()).unwrap();
    let (events, projections) = (db.events(), db.projections());
    let log = setup(&events, "c-1").await;
    assert_eq!(catch_up(&events, &projections, 10).await.unwrap(), 5);
    drop((events, projections, db));

    let db = SqliteDb::open(sqlite.path()).unwrap();
    assert_eq!(db.events().read("c-1", SeqRange::all()).await.unwrap(), log);
    let row = db.projections().contact("c-1").await.unwrap().unwrap();
    assert_eq!((row.utterances, row.last_seq), (5, 5));
    let version: i64 = rusqlite::Connection::open(sqlite.path())
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, crate::store::sqlite::SCHEMA_VERSION);
}

#[tokio::test]
async fn sqlite_refuses_a_newer_schema() {
    let sqlite = Sqlite::new();
    let conn = rusqlite::Connection::open(sqlite.path()).unwrap();
    conn.pragma_update(
        None,
        "user_version",
        crate::store::sqlite::SCHEMA_VERSION + 1,
    )
    .unwrap();
    let error = SqliteDb::open(sqlite.path()).err().expect("refused");
    assert!(error.to_string().contains("upgrade"), "{error}");
}

/// Set (to a database path) in the child process of the crash test.
const CRASH_DB: &str = "CALLPULSE_TEST_CRASH_DB";
/// Events per batch in the crash test.
const CRASH_BATCH: usize = 50;
/// Contacts written concurrently in the crash test.
const CRASH_CONTACTS: usize = 4;

/// The child process of [`sqlite_kill_during_batches_leaves_whole_batches`]: with
/// `CALLPULSE_TEST_CRASH_DB` set, appends batches to that database until it is killed.
/// Without it, does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of sqlite_kill_during_batches_leaves_whole_batches"]
async fn crash_child() {
    let Ok(path) = std::env::var(CRASH_DB) else {
        return;
    };
    let store = Arc::new(SqliteEventStore::open(path).unwrap());
    let mut writers = tokio::task::JoinSet::new();
    for c in 0..CRASH_CONTACTS {
        let store = store.clone();
        writers.spawn(async move {
            let contact = format!("crash-{c}");
            let mut head = head_of(&*store, &contact).await;
            loop {
                let batch = sealed(&mut head, &contact, CRASH_BATCH);
                if let Err(error) = store.append(&batch).await {
                    return error;
                }
            }
        });
    }
    let stopped = writers.join_next().await;
    panic!("a writer stopped before the kill: {stopped:?}");
}

/// Case 22 for SQLite: a process killed (SIGKILL) while it writes batches leaves, after
/// a reopen, every contact's log a whole number of batches with an unbroken chain; and it
/// can carry on writing. Three rounds, killed at different moments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kill_during_batches_leaves_whole_batches() {
    let sqlite = Sqlite::new();
    let watcher = SqliteEventStore::open(sqlite.path()).unwrap();
    let mut total = 0;
    for round in 0..3 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::conformance::per_backend::crash_child",
                "--ignored",
                "--nocapture",
            ])
            .env(CRASH_DB, sqlite.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for_growth(&watcher, total + 4 * CRASH_BATCH, &mut child).await;
        tokio::time::sleep(Duration::from_millis(13 * round)).await;
        child.kill().unwrap();
        child.wait().unwrap();

        let store = SqliteEventStore::open(sqlite.path()).unwrap();
        let mut now = 0;
        for c in 0..CRASH_CONTACTS {
            let log = store
                .read(&format!("crash-{c}"), SeqRange::all())
                .await
                .unwrap();
            assert_eq!(log.len() % CRASH_BATCH, 0, "round {round}: a partial batch");
            verify_chain(&log);
            now += log.len();
        }
        assert_eq!(store.read_all(0, usize::MAX).await.unwrap().len(), now);
        assert!(now > total, "round {round}: the child wrote nothing");
        total = now;
    }
}

/// Waits until `store` holds more than `events` events of the crash test's contacts.
async fn wait_for_growth(store: &dyn EventStore, events: usize, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut now = 0;
        for c in 0..CRASH_CONTACTS {
            now += store.highest_seq(&format!("crash-{c}")).await.unwrap() as usize;
        }
        if now > events {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child process ended by itself: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the child process wrote nothing in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
