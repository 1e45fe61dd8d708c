//! Through the whole pipeline: a STARTED record with a media stream, heard, judged and
//! summarised.

use super::*;

#[actix_rt::test]
async fn a_started_record_with_a_media_stream_is_heard_judged_and_summarised() {
    use crate::app::run::{Inputs, run};
    use crate::app::{DataDir, backends, stores};
    use crate::events::Event;
    use crate::store::SeqRange;

    let stubs = stub_call(None, vec![], 30);
    let mut config = crate::config::Config::load(None).unwrap();
    config.models.backend = crate::config::Backend::StandIn;
    config.audio = stubs.config.clone();
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(dir.path()).unwrap();
    let input = dir.path().join("calls.jsonl");
    let gone = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/gone/1";
    let records = [
        serde_json::json!({"type": "STARTED", "contactId": "contact-1", "timestamp": "2026-12-04T10:00:00Z",
            "mediaStreamArn": ARN, "startFragmentNumber": fragment_number(0)}),
        serde_json::json!({"type": "STARTED", "contactId": "contact-2", "timestamp": "2026-12-04T10:00:00Z",
            "mediaStreamArn": gone}),
        serde_json::json!({"type": "ENDED", "contactId": "contact-1", "timestamp": "2026-12-04T10:01:00Z"}),
    ];
    let lines: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let inputs = Inputs {
        files: vec![input],
        settle_timeout: Duration::from_secs(120),
        ..Inputs::default()
    };
    for _ in 0..2 {
        // The second run changes nothing: the audio is over and heard.
        run(
            &config,
            &data,
            backends(&config).await.unwrap(),
            inputs.clone(),
        )
        .await
        .unwrap();
    }

    let (store, _) = stores(&config, &data).await.unwrap();
    let log_of = async |contact: &str| -> Vec<Event> {
        let log = store.read(contact, SeqRange::all()).await.unwrap();
        log.iter().map(|e| e.decode().unwrap()).collect()
    };
    let heard = log_of("contact-1").await;
    let said: Vec<(Participant, String)> = heard
        .iter()
        .filter_map(|e| match e {
            Event::UtteranceReceived(u) => Some((u.participant, u.text.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(said, lines_of(&stubs.call));
    let kinds: Vec<&str> = heard.iter().map(Event::kind).collect();
    for kind in [
        "AudioStarted",
        "AudioCheckpoint",
        "SentimentAssessed",
        "AudioEnded",
        "SummaryGenerated",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let ended = kinds.iter().position(|k| *k == "AudioEnded").unwrap();
    let summarised = kinds.iter().position(|k| *k == "SummaryGenerated").unwrap();
    assert!(
        ended < summarised,
        "the summary waits for the audio: {kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "SummaryGenerated").count(),
        1
    );

    let failed = log_of("contact-2").await;
    assert!(
        failed.iter().any(|e| matches!(e, Event::AudioStreamFailed(f) if f.reason.contains("no such media stream"))),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|e| matches!(e, Event::AudioEnded(a) if a.reason == AudioEndReason::Failed))
    );
}
