//! Append throughput of each backend: a measurement, not a check (ignored; run by hand).

use super::*;

/// Appends `contacts * per_contact` single events, one task per contact, and prints the rate.
async fn append_rate(name: &str, store: Arc<dyn EventStore>, contacts: usize, per_contact: usize) {
    let batches: Vec<Vec<StoredEvent>> = (0..contacts)
        .map(|c| {
            let mut head = ChainHead::default();
            let contact = format!("contact-{c:05}");
            (0..per_contact)
                .map(|i| {
                    let text =
                        format!("I have been waiting for an hour and nobody called me back ({i})");
                    let source = format!("rec-{c}-{i}");
                    head.seal(&contact, Some(&source), &utterance(&text), Utc::now())
                })
                .collect()
        })
        .collect();
    let start = Instant::now();
    let tasks = batches.into_iter().map(|events| {
        let store = store.clone();
        tokio::spawn(async move {
            for event in events {
                store.append(std::slice::from_ref(&event)).await.unwrap();
            }
        })
    });
    for task in tasks.collect::<Vec<_>>() {
        task.await.unwrap();
    }
    let seconds = start.elapsed().as_secs_f64();
    let n = contacts * per_contact;
    println!(
        "{name}: {n} single-event appends from {contacts} tasks in {seconds:.2} s = {:.0} events/s",
        n as f64 / seconds
    );
}

/// Append throughput (not a check), 100,000 single-event appends with 100, 1,000 and 4,000
/// contacts appending at once: `cargo test --lib append_throughput -- --ignored --nocapture`
/// (the crate's own code is unoptimised in test builds; SQLite itself is built optimised).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing, run by hand"]
async fn append_throughput() {
    append_rate("memory", Arc::new(MemoryEventStore::new()), 1000, 100).await;
    for (contacts, per_contact) in [(100, 1000), (1000, 100), (4000, 25)] {
        let sqlite = Sqlite::new();
        append_rate("sqlite", sqlite.events(), contacts, per_contact).await;
    }
}
