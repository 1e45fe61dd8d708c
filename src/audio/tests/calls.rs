//! The real SDK clients against the stubs, with espeak-ng speech: whole calls, restarts,
//! early pieces, KVS session ends, failures, throttling, a reused stream.

use super::*;

#[actix_rt::test]
async fn a_whole_call_becomes_each_sides_utterances_on_the_calls_timeline() {
    let stubs = stub_call(None, vec![], 30);
    let reports = stubs.read_call().await;

    assert_eq!(texts(&reports.said()), lines_of(&stubs.call));
    for ((_, _, begin), line) in reports.said().iter().zip(&stubs.call.lines) {
        let spoken = (line.start * 1000 / RATE) as u64;
        assert!(
            begin.abs_diff(spoken) < 300,
            "said at {begin} ms, spoken at {spoken} ms"
        );
    }
    assert_eq!(reports.ended(), Some(AudioEndReason::CallEnded));
    let checkpoints: Vec<AudioCheckpoint> = reports
        .all()
        .into_iter()
        .filter_map(|r| match r {
            AudioReport::Checkpoint(c) => Some(c),
            _ => None,
        })
        .collect();
    let last = checkpoints.last().expect("a checkpoint");
    assert_eq!(
        last.fragment_number,
        stubs
            .call
            .fragments("contact-1", 0, 0)
            .last()
            .unwrap()
            .number
    );
    assert_eq!(last.origin_millis, Some(ORIGIN_MILLIS as i64));
    stubs.assert_sent_as_transcribe_expects();
    assert_eq!(stubs.transcribe.heard.lock().unwrap().sessions, 1);
    let selectors = stubs.kvs.selectors();
    assert_eq!(selectors[0]["StartSelectorType"], "FRAGMENT_NUMBER");
    assert_eq!(selectors[0]["AfterFragmentNumber"], fragment_number(0));
}

#[actix_rt::test]
async fn a_restart_mid_call_resumes_from_its_checkpoint_and_repeats_no_utterance() {
    // A fragment every 300 ms: the crash comes well before the call's end.
    let stubs = stub_call(None, vec![], 300);
    let first = Arc::new(Reports::default());
    let (_ended, call_ended) = watch::channel(true);
    let reader = AudioReader::new(
        stubs.services().await,
        "contact-1".into(),
        &first.progress(ARN, first_fragment()),
        call_ended,
        first.clone(),
    );
    let running = tokio::spawn(reader.run());
    // Crash once an utterance and a checkpoint after it are recorded.
    loop {
        let arrived = first.arrived.notified();
        let progress = first.progress(ARN, first_fragment());
        let checkpointed = progress
            .checkpoint
            .as_ref()
            .is_some_and(|c| c.covered_millis > 0);
        if !first.said().is_empty() && checkpointed {
            break;
        }
        let waited = tokio::time::timeout(Duration::from_secs(60), arrived).await;
        assert!(
            waited.is_ok(),
            "no checkpoint after an utterance: {:?}",
            first.all()
        );
    }
    running.abort();
    let _ = running.await;
    let before = first.said();
    let resumed_from = first.progress(ARN, first_fragment());
    assert!(
        before.len() < stubs.call.lines.len(),
        "the crash came after the call: {before:?}"
    );

    let opened_before = stubs.kvs.selectors().len();
    let second = stubs.read("contact-1", &resumed_from).await;
    let mut all = before.clone();
    all.extend(second.said());
    assert_eq!(
        texts(&all),
        lines_of(&stubs.call),
        "each line once: {all:?}"
    );
    let selectors = stubs.kvs.selectors();
    let resumed = &selectors[opened_before];
    assert_eq!(resumed["StartSelectorType"], "FRAGMENT_NUMBER");
    assert_eq!(
        resumed["AfterFragmentNumber"],
        resumed_from.checkpoint.unwrap().fragment_number.as_str()
    );
    stubs.assert_sent_as_transcribe_expects();
}

/// What the customer says on and on, and the call it is in.
fn long_complaint() -> (&'static str, CallAudio) {
    let complaint = "I have called four times about this broken boiler and every single time \
        you promise me an engineer and nobody ever comes so I want it fixed today";
    let call = CallAudio::speak(
        &[
            (1, "How can I help?"),
            (0, complaint),
            (1, "I am so sorry."),
        ],
        900,
    );
    (complaint, call)
}

#[actix_rt::test]
async fn a_customer_speaking_on_is_heard_in_stable_pieces_before_the_end_and_once_after_a_restart()
{
    let (complaint, call) = long_complaint();
    let mut stubs = stub_call_of(call, None, vec![], 30);
    stubs.config.early_sentiment_secs = 3;
    let reports = stubs.read_call().await;

    let customer: Vec<(String, u64)> = reports
        .said()
        .into_iter()
        .filter(|(who, ..)| *who == Participant::Customer)
        .map(|(_, text, begin)| (text, begin))
        .collect();
    assert!(customer.len() >= 2, "heard in pieces: {customer:?}");
    let words: Vec<&str> = customer.iter().map(|(text, _)| text.as_str()).collect();
    assert_eq!(words.join(" "), complaint, "every word once, in order");
    assert!(customer.windows(2).all(|w| w[0].1 < w[1].1));
    // The first piece ends seconds before the customer stops: it came from a partial.
    let line = &stubs.call.lines[1];
    let first_end = reports
        .all()
        .into_iter()
        .find_map(|r| match r {
            AudioReport::Heard { utterance, .. }
                if utterance.participant == Participant::Customer =>
            {
                utterance.end_offset_millis
            }
            _ => None,
        })
        .unwrap();
    let stops = (line.end * 1000 / RATE) as u64;
    assert!(
        first_end + 2_000 < stops,
        "first piece ends at {first_end} ms, speech at {stops}"
    );
    // The agent is heard as before.
    let agent: Vec<String> = reports
        .said()
        .into_iter()
        .filter(|(who, ..)| *who == Participant::Agent)
        .map(|(_, text, _)| text)
        .collect();
    assert_eq!(agent, ["How can I help?", "I am so sorry."]);

    // Restarted after its first piece, from a checkpoint before the complaint began: the
    // complaint is heard again, and only the words after that piece are added.
    let crashed = Reports::default();
    for report in reports.all() {
        let first_piece = matches!(&report, AudioReport::Heard { utterance, .. }
            if utterance.participant == Participant::Customer);
        crashed.report(report).await.unwrap();
        if first_piece {
            break;
        }
    }
    let mut resumed_from = crashed.progress(ARN, first_fragment());
    resumed_from.checkpoint = Some(AudioCheckpoint {
        fragment_number: fragment_number(1),
        origin_millis: Some(ORIGIN_MILLIS as i64),
        covered_millis: 2_000,
    });
    assert!(
        line.start * 1000 / RATE > 2_000,
        "the checkpoint is before the complaint"
    );
    let again = stubs.read("contact-1", &resumed_from).await;
    let mut all: Vec<String> = crashed
        .said()
        .into_iter()
        .chain(again.said())
        .filter(|(who, ..)| *who == Participant::Customer)
        .map(|(_, text, _)| text)
        .collect();
    assert!(all.len() >= 2, "{all:?}");
    assert_eq!(std::mem::take(&mut all).join(" "), complaint);
}

#[actix_rt::test]
async fn a_kvs_session_ending_mid_call_goes_on_from_its_continuation_token() {
    let stubs = stub_call(Some(4), vec![], 30);
    let reports = stubs.read_call().await;

    assert_eq!(texts(&reports.said()), lines_of(&stubs.call));
    let selectors = stubs.kvs.selectors();
    assert!(selectors.len() >= 3, "{selectors:?}");
    assert!(
        selectors[1..]
            .iter()
            .all(|s| s["StartSelectorType"] == "CONTINUATION_TOKEN")
    );
    assert_eq!(selectors[1]["ContinuationToken"], "ct-4");
    assert_eq!(
        stubs.transcribe.heard.lock().unwrap().sessions,
        1,
        "one recognition session throughout"
    );
    stubs.assert_sent_as_transcribe_expects();
}

/// The reasons of the failures reported, and whether each was to be retried.
fn failures(reports: &Reports) -> Vec<(String, bool)> {
    reports
        .all()
        .into_iter()
        .filter_map(|r| match r {
            AudioReport::Failed(f) => Some((f.reason, f.retrying)),
            _ => None,
        })
        .collect()
}

#[actix_rt::test]
async fn a_missing_stream_corrupt_media_a_kms_error_and_a_refusal_are_clear_events_and_stall_no_other_call()
 {
    let good = stub_call(None, vec![Answer::Refuse(400, "BadRequestException")], 30);
    // Transcribe refuses the first session: this call fails for good.
    let (from_start, nowhere) = (
        Reports::default().progress(ARN, first_fragment()),
        Reports::default().progress(
            "arn:aws:kinesisvideo:us-east-1:111122223333:stream/gone/1",
            None,
        ),
    );
    let refused = good.read("contact-1", &from_start);
    let missing = good.read("contact-2", &nowhere);
    let (refused, missing) = tokio::join!(refused, missing);
    let refusal = failures(&refused);
    assert_eq!(refusal.len(), 1, "{refusal:?}");
    assert!(
        refusal[0].0.contains("refused") && refusal[0].0.contains("BadRequestException"),
        "{refusal:?}"
    );
    assert!(!refusal[0].1);
    assert_eq!(refused.ended(), Some(AudioEndReason::Failed));
    let gone = failures(&missing);
    assert!(gone[0].0.contains("no such media stream"), "{gone:?}");
    assert_eq!(missing.ended(), Some(AudioEndReason::Failed));

    // Corrupt media for one call while another is read in full beside it.
    let mut fragments = good.call.fragments("contact-3", 0, ORIGIN_MILLIS);
    let bytes = &mut fragments[3].bytes;
    let at = bytes.len() / 2;
    bytes.splice(at..at, std::iter::repeat_n(0xffu8, 48));
    let corrupt_arn = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/corrupt/1";
    // And a stream KVS cannot decrypt after its second fragment.
    let mut undecryptable = good.call.fragments("contact-4", 0, ORIGIN_MILLIS);
    undecryptable.truncate(2);
    undecryptable.push(StubFragment {
        number: fragment_number(2),
        at_millis: ORIGIN_MILLIS + 2000,
        bytes: tags_only(&[
            ("AWS_KINESISVIDEO_ERROR_CODE", "KMS_KEY_ACCESS_DENIED"),
            ("AWS_KINESISVIDEO_ERROR_ID", "4500"),
        ]),
    });
    let kms_arn = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/kms/1";
    let kvs = KvsStub::start(KvsScript {
        streams: HashMap::from([
            (corrupt_arn.to_string(), fragments),
            (kms_arn.to_string(), undecryptable),
            (
                ARN.to_string(),
                good.call.fragments("contact-1", 0, ORIGIN_MILLIS),
            ),
        ]),
        session_fragments: None,
        pace: Duration::from_millis(30),
        live: false,
    });
    let transcribe = TranscribeStub::start(vec![good.call.clone()], vec![]);
    let both = StubCall {
        config: stub_config(&kvs, &transcribe),
        kvs,
        transcribe,
        call: good.call.clone(),
    };
    let (corrupt_start, kms_start) = (
        Reports::default().progress(corrupt_arn, first_fragment()),
        Reports::default().progress(kms_arn, first_fragment()),
    );
    let corrupt = both.read("contact-3", &corrupt_start);
    let denied = both.read("contact-4", &kms_start);
    let fine = both.read("contact-1", &from_start);
    let (corrupt, denied, fine) = tokio::join!(corrupt, denied, fine);
    let kms = failures(&denied);
    assert!(
        kms[0].0.contains("refused") && kms[0].0.contains("KMS_KEY_ACCESS_DENIED"),
        "{kms:?}"
    );
    assert_eq!(denied.ended(), Some(AudioEndReason::Failed));
    let broken = failures(&corrupt);
    assert!(broken[0].0.contains("malformed media"), "{broken:?}");
    assert!(!broken[0].1);
    assert_eq!(corrupt.ended(), Some(AudioEndReason::Failed));
    assert_eq!(texts(&fine.said()), lines_of(&both.call));
}

#[actix_rt::test]
async fn a_throttled_transcribe_is_retried_and_the_call_is_heard_in_full() {
    let stubs = stub_call(
        None,
        vec![Answer::Refuse(429, "LimitExceededException")],
        30,
    );
    let reports = stubs.read_call().await;
    let throttled = failures(&reports);
    assert_eq!(throttled.len(), 1, "{throttled:?}");
    assert!(
        throttled[0].0.contains("throttled") && throttled[0].1,
        "{throttled:?}"
    );
    assert_eq!(texts(&reports.said()), lines_of(&stubs.call));
    assert_eq!(reports.ended(), Some(AudioEndReason::CallEnded));
}

#[actix_rt::test]
async fn a_stream_reused_by_the_next_contact_stops_at_the_contact_id_change() {
    let first = call();
    let next = CallAudio::speak(&[(0, "This is somebody else entirely.")], 600);
    let mut fragments = first.fragments("contact-1", 0, ORIGIN_MILLIS);
    let after = fragments.len();
    let next_origin = ORIGIN_MILLIS + after as u64 * 1000;
    fragments.extend(next.fragments("contact-9", after, next_origin));
    let kvs = KvsStub::start(KvsScript {
        streams: HashMap::from([(ARN.to_string(), fragments)]),
        session_fragments: None,
        pace: Duration::from_millis(30),
        live: false,
    });
    let transcribe = TranscribeStub::start(vec![first.clone(), next], vec![]);
    let stubs = StubCall {
        config: stub_config(&kvs, &transcribe),
        kvs,
        transcribe,
        call: first,
    };
    // The call has not ended: the change of contact alone ends its audio.
    let reports = Arc::new(Reports::default());
    let (_ended, call_ended) = watch::channel(false);
    AudioReader::new(
        stubs.services().await,
        "contact-1".into(),
        &reports.progress(ARN, first_fragment()),
        call_ended,
        reports.clone(),
    )
    .run()
    .await;
    assert_eq!(reports.ended(), Some(AudioEndReason::ContactChanged));
    assert_eq!(texts(&reports.said()), lines_of(&stubs.call));
}
