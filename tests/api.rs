//! The HTTP API and the dashboard through the binary (`run --listen`, stand-in model): the
//! card numbers, emails and phone numbers of a call reach neither the log, the summaries,
//! the reject log, the process's log nor an API answer; and the dashboard, in Debian's
//! headless Chromium driven through chromedriver, shows a call streamed into the worker,
//! its sentiment line moving and its escalation, with a screenshot saved by the run.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use serde_json::{Value, json};

use common::*;

const TOKEN: &str = "test-token-read-ingest";

/// Kills the process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A workspace with the stand-in model and a live feed polling often.
fn workspace() -> Workspace {
    Workspace::with_config(
        "[models]\nbackend = \"stand-in\"\nstand_in_latency_ms = 20\n\
         [gateway.limits]\nconcurrency = 16\n\
         [pipeline]\nprojector_interval_ms = 50\n\
         [api]\nlive_poll_ms = 100\nrequests_per_second = 1000\nburst = 1000\n",
    )
}

fn start(ws: &Workspace) -> (String, Killed) {
    let (addr, child) = ws.serve_with(&[
        ("CALLPULSE_API_TOKENS", &format!("read+ingest:{TOKEN}")),
        ("CALLPULSE_LOG", "info"),
    ]);
    (addr, Killed(child))
}

fn ingest(addr: &str, lines: &[String]) -> String {
    let reply = post_with(
        addr,
        "/records",
        &(lines.join("\n") + "\n"),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    )
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply
}

async fn api(addr: &str, path: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

/// What `check` gives once it gives something, asking every 100 ms for at most 60 s.
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

#[tokio::test]
async fn no_card_number_email_or_phone_of_a_call_reaches_the_log_summaries_logs_or_api() {
    let ws = workspace();
    let (addr, server) = start(&ws);
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/calls");
    let call = std::fs::read_to_string(samples.join("card-payment.jsonl")).unwrap();
    let lines: Vec<String> = call.lines().map(str::to_string).collect();
    ingest(&addr, &lines);
    // A broken line holding the card number goes to the reject log, redacted.
    let broken =
        r#"{"type":"SEGMENT","contactId":"card-payment","transcript": 4556 7375 8689 9855}"#;
    let reply = post_with(
        &addr,
        "/records",
        broken,
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    )
    .unwrap();
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");

    let summaries = eventually("no summary", || async {
        let summaries = api(&addr, "/api/contacts/card-payment/summaries").await;
        (!summaries["summaries"].as_array().unwrap().is_empty()).then_some(summaries)
    })
    .await;
    let timeline = api(&addr, "/api/contacts/card-payment").await;
    let contacts = api(&addr, "/api/contacts").await;
    let card = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["segmentId"] == "s-4")
        .unwrap();
    assert!(card["text"].as_str().unwrap().contains("[CARD]"), "{card}");
    assert_eq!(card["redactions"], json!({"CARD": 1}));
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for kind in ["CARD", "EMAIL", "PHONE"] {
        let line = format!("callpulse_pii_redacted_total{{kind=\"{kind}\"}} 1");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    let mut server = server;
    let _ = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status();
    let _ = server.0.wait();

    let mut places = vec![
        (
            "the summaries answer".to_string(),
            summaries.to_string().into_bytes(),
        ),
        (
            "the timeline answer".to_string(),
            timeline.to_string().into_bytes(),
        ),
        (
            "the contacts answer".to_string(),
            contacts.to_string().into_bytes(),
        ),
    ];
    places.extend(files_under(ws.dir.path()));
    let reject_log = std::fs::read_to_string(ws.path("data/rejected.jsonl")).unwrap();
    assert!(reject_log.contains("[CARD]"), "{reject_log}");
    assert!(places.iter().any(|(name, _)| name.ends_with("server.log")));
    for (name, bytes) in &places {
        let text = String::from_utf8_lossy(bytes).to_lowercase();
        for value in [
            "4556737586899855",
            "4556 7375 8689 9855",
            "four five five six seven three",
            "priya",
            "900461",
        ] {
            assert!(!text.contains(value), "{name} holds {value:?}");
        }
    }
}

/// chromedriver on a free port, once it answers.
fn chromedriver() -> (String, Killed) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; scripts/setup installs it)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    (format!("http://127.0.0.1:{port}"), Killed(child))
}

#[tokio::test]
async fn the_dashboard_shows_a_streamed_call_its_sentiment_moving_and_its_escalation() {
    let ws = workspace();
    let (addr, _server) = start(&ws);
    let (driver, _chromedriver) = chromedriver();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1366,768"],
        }),
    );
    let browser = ClientBuilder::rustls()
        .expect("TLS roots")
        .capabilities(capabilities)
        .connect(&driver)
        .await
        .expect("a Chromium session");
    let wait = Duration::from_secs(30);

    browser.goto(&format!("http://{addr}/")).await.unwrap();
    browser
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    browser
        .find(Locator::Css("#connect"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the page never went live", || async {
        let status = browser.find(Locator::Css("#status")).await.unwrap();
        (status.text().await.unwrap() == "live").then_some(())
    })
    .await;

    ingest(
        &addr,
        &[
            started("web-1"),
            said(
                "web-1",
                "c1",
                "CUSTOMER",
                "Hi, I am calling about my order.",
            ),
        ],
    );
    let row = r#"#calls li.call[data-contact-id="web-1"]"#;
    let points = |browser: fantoccini::Client| async move {
        let line = browser
            .find(Locator::Css(&format!("{row} svg.trend polyline")))
            .await
            .ok()?;
        let points = line.attr("points").await.ok()??;
        Some(points.split_whitespace().count())
    };
    eventually("the call never appeared with a point", || {
        let browser = browser.clone();
        async move { points(browser).await.filter(|&n| n >= 1) }
    })
    .await;

    ingest(
        &addr,
        &[
            said(
                "web-1",
                "c2",
                "CUSTOMER",
                "This is ridiculous and unacceptable.",
            ),
            said(
                "web-1",
                "c3",
                "CUSTOMER",
                "Honestly the worst service ever.",
            ),
        ],
    );
    let sent = Instant::now();
    let escalated = format!("{row}.escalated");
    browser
        .wait()
        .at_most(wait)
        .for_element(Locator::Css(&escalated))
        .await
        .expect("the escalation never showed");
    // Shown in (measured, not asserted: docs/BENCHMARKS.md):
    println!(
        "escalation visible {} ms after its records were acknowledged",
        sent.elapsed().as_millis()
    );
    eventually("the sentiment line did not move", || {
        let browser = browser.clone();
        async move { points(browser).await.filter(|&n| n >= 3) }
    })
    .await;
    let badge = browser
        .find(Locator::Css(&format!("{row} .badge")))
        .await
        .unwrap();
    assert_eq!(badge.text().await.unwrap(), "ESCALATED");

    // The call's timeline on click, the escalation in it.
    browser
        .find(Locator::Css(row))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .at_most(wait)
        .for_element(Locator::Css("#timeline li.escalation"))
        .await
        .expect("the timeline shows the escalation");
    let title = browser
        .find(Locator::Css("#detail-title"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(title, "web-1");

    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&shot, &png).unwrap();
    println!("screenshot: {}", shot.display());
    browser.close().await.unwrap();
}
