//! The command line, end to end, with the real packaged model.

use std::process::Command;

fn callpulse(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callpulse"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn eval_sentiment_prints_the_documented_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("s.jsonl");
    std::fs::write(
        &data,
        concat!(
            r#"{"id":"a-1","source":"airline","text":"Worst airline ever, lost my bag and nobody cares","label":"NEGATIVE"}"#, "\n",
            r#"{"id":"a-2","source":"airline","text":"Thanks for the upgrade, lovely crew!","label":"POSITIVE"}"#, "\n",
            r#"{"id":"m-1","source":"movie","text":"A dull, lifeless film that wastes its cast.","label":"NEGATIVE"}"#, "\n",
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = callpulse(&[
        "eval",
        "sentiment",
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for key in [
        "macro_f1",
        "accuracy",
        "negative_precision",
        "negative_recall",
        "n",
        "per_source",
    ] {
        assert!(report.get(key).is_some(), "missing {key}: {stdout}");
    }
    assert_eq!(report["n"], 3);
    assert_eq!(report["per_source"]["airline"]["n"], 2);
    assert_eq!(report["per_source"]["movie"]["n"], 1);

    let (ok, stdout, _) = callpulse(&[
        "eval",
        "sentiment",
        "--data",
        data.to_str().unwrap(),
        "--json",
        "--limit",
        "2",
    ]);
    assert!(ok);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["n"], 2, "a limited run takes rows from every source");
    assert_eq!(report["per_source"]["movie"]["n"], 1);
}

#[test]
fn eval_summary_prints_the_documented_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(
        &data,
        concat!(
            r#"{"id":"t-1","source":"tweetsumm","turns":[{"participant":"CUSTOMER","text":"My package never arrived, order 5521."},{"participant":"AGENT","text":"Sorry! I have sent a replacement for order 5521 today."}],"references":["Customer's package did not arrive. Agent sent a replacement."]}"#, "\n",
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = callpulse(&[
        "eval",
        "summary",
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for key in ["rouge1", "rouge2", "rougeL", "n", "per_source"] {
        assert!(report.get(key).is_some(), "missing {key}: {stdout}");
    }
    assert_eq!(report["per_source"]["tweetsumm"]["n"], 1);
    assert!(report["rougeL"].as_f64().unwrap() > 0.0, "{stdout}");
}

#[test]
fn a_malformed_eval_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    std::fs::write(&data, "{\"id\":1}\n").unwrap();
    let (ok, _, stderr) = callpulse(&["eval", "sentiment", "--data", data.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("bad.jsonl:1"), "{stderr}");
}

#[test]
fn a_missing_model_names_the_fetch_command() {
    let (ok, _, stderr) = callpulse(&["--model", "/nonexistent/x.gguf", "model", "info"]);
    assert!(!ok);
    assert!(stderr.contains("callpulse model fetch"), "{stderr}");
}
