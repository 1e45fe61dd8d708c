//! What the integration tests that drive the `callpulse` binary share: a workspace (config
//! and data directory), records to feed it, and a minimal HTTP client.
// Each test binary uses part of this.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Workspace {
    /// The directory holding the config and the data directory.
    pub dir: tempfile::TempDir,
}

impl Workspace {
    /// A data directory and a config using the stand-in with `latency_ms`.
    pub fn stand_in(latency_ms: u64) -> Self {
        Self::with_config(&format!(
            "[models]\nbackend = \"stand-in\"\nstand_in_latency_ms = {latency_ms}\n\
             [gateway.limits]\nconcurrency = 64\n\
             [pipeline]\nprojector_interval_ms = 50\n"
        ))
    }

    pub fn with_config(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_callpulse"));
        command
            .arg("--data-dir")
            .arg(self.path("data"))
            .arg("--config")
            .arg(self.path("config.toml"))
            .args(args)
            .env("CALLPULSE_LOG", "warn");
        command
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "callpulse {args:?} failed: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs callpulse expecting it to fail; gives its standard output.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(!out.status.success(), "callpulse {args:?} succeeded");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `sql` on the data directory's SQLite file behind callpulse's back; gives how
    /// many rows it changed.
    pub fn tamper(&self, sql: &str) -> usize {
        let db = rusqlite::Connection::open(self.path("data/callpulse.db")).unwrap();
        db.execute(sql, []).unwrap()
    }

    pub fn write_input(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    pub fn run(&self, input: &Path) {
        self.ok(&["run", "--input", input.to_str().unwrap()]);
    }

    /// `run --listen` on a free port of 127.0.0.1, once it answers: its address and process.
    pub fn serve(&self) -> (String, std::process::Child) {
        self.serve_with(&[])
    }

    /// `run --listen` with extra environment variables, once it answers; its log goes to
    /// `server.log` in the workspace.
    pub fn serve_with(&self, env: &[(&str, &str)]) -> (String, std::process::Child) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|socket| socket.local_addr())
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = self
            .command(&["run", "--listen", &addr])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path("server.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while post(&addr, "/healthz", "").is_err() {
            assert!(Instant::now() < deadline, "server never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        (addr, child)
    }

    pub fn contact(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["query", "contact", id, "--format", "json"])).unwrap()
    }

    pub fn contacts(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["query", "contacts", "--format", "json"];
        args.extend_from_slice(extra);
        serde_json::from_str(&self.ok(&args)).unwrap()
    }
}

pub fn kinds(contact: &Value, kind: &str) -> Vec<Value> {
    contact["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

pub fn started(contact: &str) -> String {
    format!(
        r#"{{"type":"STARTED","contactId":"{contact}","instanceId":"i-1","timestamp":"2026-11-24T09:00:00Z"}}"#
    )
}

pub fn said(contact: &str, segment: &str, who: &str, text: &str) -> String {
    format!(
        r#"{{"type":"SEGMENT","contactId":"{contact}","segmentId":"{segment}","participant":"{who}","transcript":"{text}","isPartial":false}}"#
    )
}

pub fn ended(contact: &str) -> String {
    format!(r#"{{"type":"ENDED","contactId":"{contact}","timestamp":"2026-11-24T09:05:00Z"}}"#)
}

/// A minimal HTTP/1.1 POST; returns the whole reply.
pub fn post(addr: &str, path: &str, body: &str) -> std::io::Result<String> {
    post_with(addr, path, body, &[])
}

/// [`post`] with extra headers, e.g. `("Authorization", "Bearer ...")`.
pub fn post_with(
    addr: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr)?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-ndjson\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}
