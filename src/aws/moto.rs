//! One moto server per test process (moto's own server, from the PyPI package
//! `moto[server]`), on a free port of 127.0.0.1, stopped when the process ends. moto's state
//! is shared by everything that talks to it: give each test its own table, bucket or stream
//! names.
//!
//! The server answers one request at a time ([`LAUNCHER`]): moto rolls a failed
//! TransactWriteItems back by putting back a copy of each table it touched, taken when it
//! started, which undoes whatever other requests wrote to those tables meanwhile. Served
//! concurrently, a conditional append that fails (a re-delivered record) erases appends
//! that succeeded beside it, and a fleet on moto loses acknowledged events; DynamoDB itself
//! does not.

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{AwsEndpoint, sdk_config};

/// The running server's endpoint, `http://127.0.0.1:PORT`.
pub(crate) fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(start)
}

/// A second server, for lease tables: a worker's lease renewals are answered at once there
/// however busy the first one is with the fleet's event writes (moto serves requests one
/// at a time in effect, and a renewal stuck behind them fences a live worker; DynamoDB
/// would answer it).
pub(crate) fn lease_endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(start)
}

/// SDK configuration pointing at the moto server, with test credentials.
pub(crate) async fn config() -> aws_config::SdkConfig {
    config_for(endpoint()).await
}

/// SDK configuration pointing at the lease tables' server ([`lease_endpoint`]).
pub(crate) async fn lease_config() -> aws_config::SdkConfig {
    config_for(lease_endpoint()).await
}

/// Sets the test credentials (the same everywhere) the SDK clients of tests sign with.
pub(crate) fn use_test_credentials() {
    // SAFETY: always the same values, set before a client reads them.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    }
}

async fn config_for(endpoint: &str) -> aws_config::SdkConfig {
    use_test_credentials();
    sdk_config(&AwsEndpoint {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint.to_string()),
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

/// Runs `python3 -m moto.server` with its application behind one lock: each connection
/// still has a thread of its own, but one request is handled at a time. (A single-threaded
/// server would not do: a connection a client opened and has not used yet, such as one an
/// HTTP pool kept from a cancelled request, would hold it up until the client closed it.)
const LAUNCHER: &str = "
import sys, threading
import moto.server as server

lock = threading.Lock()
run_simple = server.run_simple

def one_at_a_time(app):
    def handle(environ, start_response):
        with lock:
            return list(app(environ, start_response))
    return handle

server.run_simple = lambda host, port, app, **options: run_simple(
    host, port, one_at_a_time(app), **options)
server.main(sys.argv[1:])
";

fn start() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // A watchdog shell stops the server when this test process is gone.
    let script = format!(
        "python3 -c \"$MOTO_LAUNCHER\" -H 127.0.0.1 -p {port} >/dev/null 2>&1 & server=$!; \
         while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill -9 $server",
        parent = std::process::id()
    );
    // Without our stdout and stderr: a caller reading this process's output to its end
    // (a test running the bench) would otherwise wait for the watchdog too.
    let mut watchdog = Command::new("sh")
        .args(["-c", &script])
        .env("MOTO_LAUNCHER", LAUNCHER)
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

/// What a [`proxy`] does with one request.
#[cfg(test)]
pub(crate) enum Forward {
    /// Passes it to moto and the answer back.
    Answer,
    /// Passes it to moto (which applies it) and closes the connection without the answer,
    /// as a network failing after the commit would.
    LoseAnswer,
    /// Keeps it, unanswered and unsent, while `decide` says so (and the client waits), then
    /// passes it on as `decide` says next.
    Hold,
}

/// An endpoint in front of the moto server that takes one connection at a time: it reads a
/// request, asks `decide` (given the request's head and body) what to do with it, does so
/// and closes the connection. Hands back the endpoint and the count of held requests whose
/// client gave up waiting (closed the connection).
#[cfg(test)]
pub(crate) fn proxy(
    decide: impl Fn(&[u8]) -> Forward + Send + 'static,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let endpoint = format!("http://{}", listener.local_addr().expect("its address"));
    let abandoned = std::sync::Arc::new(AtomicUsize::new(0));
    let given_up = abandoned.clone();
    let moto = endpoint_address();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let forwarded = client.and_then(|mut client| {
                client.set_read_timeout(Some(Duration::from_secs(60)))?;
                let request = read_message(&mut client)?;
                let mut forward = decide(&request);
                if matches!(forward, Forward::Hold) {
                    client.set_read_timeout(Some(Duration::from_millis(20)))?;
                }
                while matches!(forward, Forward::Hold) {
                    // Until the client gives up (closes) or the hold ends.
                    match client.peek(&mut [0u8; 1]) {
                        Ok(0) => {
                            given_up.fetch_add(1, Ordering::SeqCst);
                            return Ok(());
                        }
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => return Err(e),
                    }
                    forward = decide(&request);
                }
                let mut server = std::net::TcpStream::connect(&moto)?;
                server.set_read_timeout(Some(Duration::from_secs(60)))?;
                server.write_all(&request)?;
                let answer = read_message(&mut server)?;
                match forward {
                    Forward::LoseAnswer => Ok(()),
                    _ => client.write_all(&answer),
                }
            });
            if let Err(error) = forwarded {
                eprintln!("moto proxy: {error}");
            }
        }
    });
    (endpoint, abandoned)
}

/// moto's `host:port`.
#[cfg(test)]
fn endpoint_address() -> String {
    endpoint().trim_start_matches("http://").to_string()
}

/// One HTTP/1.1 message from `stream`: the head, and a body of its `Content-Length`.
#[cfg(test)]
fn read_message(stream: &mut std::net::TcpStream) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut message = Vec::new();
    let mut byte = [0u8; 1];
    while !message.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        message.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&message).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(Ok(0), |n| n.trim().parse::<usize>())
        .map_err(std::io::Error::other)?;
    let start = message.len();
    message.resize(start + length, 0);
    stream.read_exact(&mut message[start..])?;
    Ok(message)
}
