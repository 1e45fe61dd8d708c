//! One moto server per test process (`python3 -m moto.server`, from the PyPI package
//! `moto[server]`), on a free port of 127.0.0.1, stopped when the process ends. moto's state
//! is shared by everything that talks to it: give each test its own table, bucket or stream
//! names.

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{AwsEndpoint, sdk_config};

/// The running server's endpoint, `http://127.0.0.1:PORT`.
pub(crate) fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(start)
}

/// SDK configuration pointing at the moto server, with test credentials.
pub(crate) async fn config() -> aws_config::SdkConfig {
    // SAFETY: set once, to the same values, before any client reads them.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    }
    sdk_config(&AwsEndpoint {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint().to_string()),
    })
    .await
}

/// A name no other test uses: `prefix` plus the process id and a counter.
pub(crate) fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn start() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // A watchdog shell stops the server when this test process is gone.
    let script = format!(
        "python3 -m moto.server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & server=$!; \
         while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill -9 $server",
        parent = std::process::id()
    );
    // Without our stdout and stderr: a caller reading this process's output to its end
    // (a test running the bench) would otherwise wait for the watchdog too.
    let mut watchdog = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting moto's server (bash scripts/setup installs moto[server])");
    std::thread::spawn(move || watchdog.wait());
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "moto's server did not start on port {port} within 30 s; is it installed (bash scripts/setup)?"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    format!("http://127.0.0.1:{port}")
}
