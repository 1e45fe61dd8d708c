//! Benchmarks, run by hand: demux throughput, and how many live calls a worker carries.

use super::*;

/// This process's CPU time (user and system, all threads), from /proc.
fn cpu_time() -> Duration {
    cpu_of(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// The user and system time of a `/proc/.../stat` line.
fn cpu_of(stat: &str) -> Duration {
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Audio seconds demuxed and mixed per CPU second: an hour of two-track Connect media fed
/// in 16 KiB pieces. `cargo test --lib audio::tests::bench::demux_throughput -- --ignored --nocapture`
#[tokio::test]
#[ignore = "a benchmark: run by hand, figures in docs/BENCHMARKS.md"]
async fn demux_throughput() {
    let seconds = 3600;
    let (customer, agent) = (tone(RATE, 3000), tone(RATE, -1500));
    let mut media = Vec::new();
    for i in 0..seconds {
        let at = ORIGIN_MILLIS + i as u64 * 1000;
        media.extend(connect_fragment(
            &fragment_number(i),
            at,
            "bench",
            &customer,
            &agent,
        ));
    }
    let started = (Instant::now(), cpu_time());
    let (out, mut fragments) = mpsc::channel(8);
    let input = spawn_demux(out);
    let feeding = tokio::spawn(async move {
        for piece in media.chunks(16 * 1024) {
            input.send(Bytes::copy_from_slice(piece)).await.unwrap();
        }
    });
    let mut mixer = crate::audio::mix::Mixer::new(8_000, 100, None);
    let mut chunks = 0;
    while let Some(fragment) = fragments.recv().await {
        chunks += mixer.push(&fragment.unwrap()).len();
    }
    feeding.await.unwrap();
    let (wall, cpu) = (started.0.elapsed(), cpu_time() - started.1);
    assert_eq!(chunks, seconds * 10);
    println!(
        "{seconds} s of audio demuxed and mixed in {wall:?} wall, {cpu:?} CPU: {:.0} audio s per CPU s ({} build)",
        seconds as f64 / cpu.as_secs_f64().max(0.01),
        crate::app::bench::build_kind()
    );
}

/// Live calls one worker carries: `CALLS` calls at once (20 unless set), their starts spread
/// over a second, their media served live (a fragment once its second is over), Transcribe's
/// stub answering a final once it has heard 0.7 s of silence after the speech. Reports the lag
/// from the end of each spoken line to its utterance, the CPU the readers used apart from the
/// stubs' (which run in this process too), and peak memory.
/// `CALLS=1000 cargo test --lib audio::tests::bench::live_calls -- --ignored --nocapture`
#[actix_rt::test]
#[ignore = "a benchmark: run by hand, figures in docs/BENCHMARKS.md"]
async fn live_calls() {
    let calls: usize = std::env::var("CALLS").map_or(20, |n| n.parse().expect("CALLS: a number"));
    let call = call();
    let seconds = call.fragments("", 0, 0).len() as u64;
    // The calls begin as the benchmark does: call i a little after call i - 1.
    let begins = chrono::Utc::now().timestamp_millis() as u64 + 1000;
    let origin = move |i: usize| begins + (i * 1000 / calls) as u64;
    let streams: HashMap<String, _> = (0..calls)
        .map(|i| {
            let fragments = call.fragments(&format!("contact-{i}"), 0, origin(i));
            (format!("{ARN}-{i}"), fragments)
        })
        .collect();
    let media_bytes: usize = streams.values().flatten().map(|f| f.bytes.len()).sum();
    let kvs = KvsStub::start(KvsScript {
        streams,
        session_fragments: None,
        pace: Duration::ZERO,
        live: true,
    });
    let transcribe = TranscribeStub::start(vec![call.clone()], vec![]);
    let mut config = stub_config(&kvs, &transcribe);
    config.max_streams = calls;
    let stubs = StubCall {
        config,
        kvs,
        transcribe,
        call,
    };
    let services = stubs.services().await;
    // The readers run on arbiters, one per core, as contact actors do.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let arbiters: Vec<actix::Arbiter> = (0..cores).map(|_| actix::Arbiter::new()).collect();
    let reader_threads = futures_util::future::join_all(arbiters.iter().map(|arbiter| {
        let (tx, id) = tokio::sync::oneshot::channel();
        arbiter.spawn_fn(move || drop(tx.send(thread_id())));
        id
    }))
    .await
    .into_iter()
    .map(|id| id.expect("an arbiter's thread id"))
    .collect::<Vec<_>>();
    let started = cpu_time();
    let readers = (0..calls).map(|i| {
        let services = services.clone();
        let (done, result) = tokio::sync::oneshot::channel();
        arbiters[i % cores].spawn_fn(move || {
            actix::spawn(async move {
                let reports = Arc::new(Reports::default());
                // ENDED comes a second after the call's last audio.
                let (ended, call_ended) = watch::channel(false);
                let end_at = origin(i) + (seconds + 1) * 1000;
                tokio::spawn(async move {
                    let now = chrono::Utc::now().timestamp_millis() as u64;
                    tokio::time::sleep(Duration::from_millis(end_at.saturating_sub(now))).await;
                    ended.send_replace(true);
                });
                let progress = reports.progress(&format!("{ARN}-{i}"), first_fragment());
                let sink = Arc::new(Timed(reports.clone(), Mutex::new(Vec::new())));
                AudioReader::new(
                    services,
                    format!("contact-{i}"),
                    &progress,
                    call_ended,
                    sink.clone(),
                )
                .run()
                .await;
                let lags: Vec<i64> = sink
                    .lags()
                    .into_iter()
                    .map(|(at, end)| at - (origin(i) + end) as i64)
                    .collect();
                let _ = done.send((reports.said().len(), lags));
            });
        });
        result
    });
    let heard = futures_util::future::join_all(readers).await;
    // The stubs' servers run on actix threads of their own.
    let stub_threads: Vec<String> = threads()
        .into_iter()
        .filter(|(id, name)| name.starts_with("actix-") && !reader_threads.contains(id))
        .map(|(id, _)| id)
        .collect();
    let (cpu, stub_cpu) = (cpu_time() - started, threads_cpu_time(&stub_threads));
    let wall = Duration::from_millis(
        (chrono::Utc::now().timestamp_millis() as u64).saturating_sub(begins),
    );
    let whole = heard.iter().filter(|h| h.as_ref().unwrap().0 == 4).count();
    let mut lags: Vec<i64> = heard.into_iter().flat_map(|h| h.unwrap().1).collect();
    lags.sort_unstable();
    let at = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize];
    let core_share = |cpu: Duration| 100.0 * cpu.as_secs_f64() / wall.as_secs_f64();
    println!(
        "{calls} live calls of {seconds} s ({} build, {cores} cores): {whole} heard whole, {} utterances; \
         lag p50 {} ms, p99 {} ms, max {} ms; readers {:.0}% of a core ({:.2} ms CPU per call-second), \
         stubs {:.0}%; peak RSS {:.0} MiB (stub media held: {} MiB)",
        crate::app::bench::build_kind(),
        lags.len(),
        at(0.5),
        at(0.99),
        lags.last().unwrap(),
        core_share(cpu - stub_cpu),
        (cpu - stub_cpu).as_secs_f64() * 1000.0 / (calls as u64 * seconds) as f64,
        core_share(stub_cpu),
        crate::app::bench::peak_rss_mib(),
        media_bytes >> 20,
    );
    assert_eq!(whole, calls, "every call heard in full");
}

/// This process's threads now: (id, name).
fn threads() -> Vec<(String, String)> {
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    tasks
        .flatten()
        .map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let id = task.file_name().to_string_lossy().into_owned();
            (id, name.trim().to_string())
        })
        .collect()
}

/// The calling thread's id.
fn thread_id() -> String {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// The CPU time of those of `threads` still running, from /proc.
fn threads_cpu_time(threads: &[String]) -> Duration {
    threads
        .iter()
        .filter_map(|id| std::fs::read_to_string(format!("/proc/self/task/{id}/stat")).ok())
        .map(|stat| cpu_of(&stat))
        .sum()
}

/// Notes when each utterance is reported (epoch ms) and where it ends in the call.
struct Timed(Arc<Reports>, Mutex<Vec<(i64, u64)>>);

impl Timed {
    fn lags(&self) -> Vec<(i64, u64)> {
        self.1.lock().unwrap().clone()
    }
}

#[async_trait]
impl AudioSink for Timed {
    async fn report(&self, report: AudioReport) -> Result<(), String> {
        if let AudioReport::Heard { utterance, .. } = &report {
            let now = chrono::Utc::now().timestamp_millis();
            self.1
                .lock()
                .unwrap()
                .push((now, utterance.end_offset_millis.unwrap()));
        }
        self.0.report(report).await
    }
}
