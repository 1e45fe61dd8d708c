//! Given/when/then tables for the contact rules: no actors, no I/O.

use super::*;
use crate::events::testing::judgement;
use crate::models::Label;

fn rules() -> Arc<EscalationRules> {
    Arc::new(EscalationRules::default())
}

/// Decides, seals and applies, as the actor does; returns the new events.
fn when(contact: &mut Contact, command: Command) -> Vec<Event> {
    let events = contact.decide(command, Utc::now()).expect("accepted");
    let mut head = contact.head.clone();
    for event in &events {
        let stored = head.seal(contact.id(), None, event, Utc::now());
        contact.apply(&stored, event);
    }
    events
}

fn said(id: &str, who: Participant, text: &str) -> Command {
    Command::Utterance {
        utterance: UtteranceReceived {
            segment_id: id.into(),
            participant: who,
            text: text.into(),
            begin_offset_millis: None,
            end_offset_millis: None,
            redactions: Default::default(),
        },
        at: Utc::now(),
    }
}

fn judged(id: &str, who: Participant, negative: f32) -> Command {
    Command::Judged(judgement(id, who, negative))
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::kind).collect()
}

/// A customer says `n` things, each judged with P(NEGATIVE) from `negatives`.
fn customer_says(contact: &mut Contact, negatives: &[f32]) -> Vec<Vec<&'static str>> {
    negatives
        .iter()
        .map(|&p| {
            let id = format!("s{}", contact.spoken.len() + 1);
            when(contact, said(&id, Participant::Customer, "..."));
            kinds(&when(contact, judged(&id, Participant::Customer, p)))
        })
        .collect()
}

const NEG: f32 = 0.7; // NEGATIVE, below the one-shot threshold
const CALM: f32 = 0.1;

#[test]
fn a_first_segment_opens_the_contact_and_duplicates_change_nothing() {
    let mut c = Contact::new("c", rules());
    assert_eq!(
        kinds(&when(&mut c, said("s1", Participant::Customer, "hi"))),
        ["ContactStarted", "UtteranceReceived"]
    );
    assert!(when(&mut c, said("s1", Participant::Customer, "hi")).is_empty());
    assert_eq!(
        kinds(&when(&mut c, said("s2", Participant::Customer, "x"))),
        ["UtteranceReceived"]
    );
}

fn started(at: DateTime<Utc>, instance: &str) -> Command {
    Command::Start(ContactStarted {
        instance_id: Some(instance.into()),
        channel: Some("VOICE".into()),
        started_at: at,
        media_stream_arn: Some("arn:aws:kinesisvideo:eu-west-2:1:stream/s/1".into()),
        start_fragment_number: Some("9134385233318150666908441974883000111".into()),
        implicit: false,
        rules: None,
    })
}

#[test]
fn a_started_record_after_the_first_segment_is_merged_in_once() {
    let mut c = Contact::new("c", rules());
    when(&mut c, said("s1", Participant::Customer, "hi"));
    let opened_at = c.start.as_ref().unwrap().started_at;
    let later = opened_at + chrono::Duration::seconds(5);
    let merged = when(&mut c, started(later, "i-1"));
    let [Event::ContactStarted(start)] = merged.as_slice() else {
        panic!("{merged:?}");
    };
    assert!(!start.implicit);
    assert_eq!(start.instance_id.as_deref(), Some("i-1"));
    assert!(start.media_stream_arn.is_some() && start.start_fragment_number.is_some());
    assert_eq!(start.started_at, opened_at, "the earlier start time stays");
    assert_eq!(c.start.as_ref(), Some(start));
    assert!(
        when(&mut c, started(later, "i-1")).is_empty(),
        "a duplicate"
    );
}

#[test]
fn a_second_started_record_changes_nothing() {
    let mut c = Contact::new("c", rules());
    assert_eq!(
        kinds(&when(&mut c, started(Utc::now(), "i-1"))),
        ["ContactStarted"]
    );
    assert!(when(&mut c, started(Utc::now(), "i-2")).is_empty());
    assert_eq!(
        c.start.as_ref().unwrap().instance_id.as_deref(),
        Some("i-1")
    );
}

#[test]
fn a_segment_after_the_end_is_refused_with_its_id() {
    let mut c = Contact::new("c", rules());
    when(&mut c, said("s1", Participant::Customer, "bye"));
    when(
        &mut c,
        Command::End(ContactEnded {
            ended_at: Utc::now(),
            reason: EndReason::Ended,
        }),
    );
    let err = c
        .decide(said("s9", Participant::Customer, "late"), Utc::now())
        .unwrap_err();
    assert!(err.to_string().contains("s9"), "{err}");
}

#[test]
fn two_of_three_negative_escalates_once_per_episode() {
    let mut c = Contact::new("c", rules());
    let steps = customer_says(&mut c, &[NEG, CALM, NEG, NEG, NEG]);
    let raised: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, k)| k.contains(&"EscalationRaised"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(raised, [2], "{steps:?}");
    assert!(c.mood.escalated);
}

#[test]
fn one_calm_sentence_does_not_end_an_episode_but_three_do_and_it_can_reopen() {
    let mut c = Contact::new("c", rules());
    customer_says(&mut c, &[NEG, NEG]);
    assert!(c.mood.escalated);
    let steps = customer_says(&mut c, &[CALM, NEG, CALM, CALM]);
    assert!(steps.iter().all(|k| !k.contains(&"EscalationCleared")));
    let steps = customer_says(&mut c, &[CALM]);
    assert!(steps[0].contains(&"EscalationCleared"), "{steps:?}");
    assert!(!c.mood.escalated);
    // The window restarted: one negative is not enough, a second one reopens.
    let steps = customer_says(&mut c, &[NEG, NEG]);
    assert!(!steps[0].contains(&"EscalationRaised"));
    assert!(steps[1].contains(&"EscalationRaised"));
}

#[test]
fn a_very_negative_utterance_escalates_at_once() {
    let mut c = Contact::new("c", rules());
    let steps = customer_says(&mut c, &[0.95]);
    assert!(steps[0].contains(&"EscalationRaised"), "{steps:?}");
}

#[test]
fn negative_but_not_angry_never_escalates_and_angry_does() {
    let mut c = Contact::new("c", rules());
    let mut steps = Vec::new();
    for (i, anger) in [0.1, 0.2, 0.3, 0.9].into_iter().enumerate() {
        let id = format!("s{i}");
        when(&mut c, said(&id, Participant::Customer, "..."));
        let mut judgement = judgement(&id, Participant::Customer, 0.95);
        judgement.anger = Some(anger);
        steps.push(kinds(&when(&mut c, Command::Judged(judgement))));
    }
    let raised: Vec<usize> = (0..steps.len())
        .filter(|&i| steps[i].contains(&"EscalationRaised"))
        .collect();
    assert_eq!(raised, [3], "{steps:?}");
}

#[test]
fn agents_are_judged_but_do_not_escalate_by_default() {
    let mut c = Contact::new("c", rules());
    when(&mut c, said("a1", Participant::Agent, "this is awful"));
    assert!(matches!(c.due()[..], [Due::Sentiment { .. }]));
    let events = when(&mut c, judged("a1", Participant::Agent, 0.99));
    assert_eq!(kinds(&events), ["SentimentAssessed"]);
    assert!(!c.mood.escalated);
}

#[test]
fn smoothed_sentiment_changes_are_recorded_when_the_mean_moves() {
    let mut c = Contact::new("c", rules());
    let steps = customer_says(&mut c, &[CALM, CALM, NEG, NEG]);
    assert!(steps[0].contains(&"SentimentChanged"));
    assert!(!steps[1].contains(&"SentimentChanged"));
    assert!(steps[3].contains(&"SentimentChanged"), "{steps:?}");
    assert_eq!(c.mood.smoothed, Some(Label::Negative));
}

#[test]
fn due_work_follows_the_log() {
    let mut c = Contact::new("c", rules());
    when(&mut c, said("s1", Participant::Customer, "one"));
    when(&mut c, said("s2", Participant::Customer, "two"));
    let ids: Vec<_> = c
        .due()
        .into_iter()
        .map(|d| match d {
            Due::Sentiment { segment_id, .. } => segment_id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, ["s1", "s2"]);

    when(&mut c, judged("s1", Participant::Customer, 0.95));
    when(
        &mut c,
        Command::Skipped(ModelCallSkipped {
            task: ModelTask::Sentiment,
            segment_ids: vec!["s2".into()],
            why: "deadline".into(),
            stale_ms: 3000,
        }),
    );
    let raised_seq = c.head.seq - 1;
    assert!(
        matches!(&c.due()[..], [Due::Attributes { for_seq, .. }] if *for_seq < raised_seq + 1),
        "{:?}",
        c.due()
    );
    let (for_seq, attributes) = match c.due().remove(0) {
        Due::Attributes {
            for_seq,
            attributes,
        } => (for_seq, attributes.clone()),
        other => unreachable!("{other:?}"),
    };
    when(
        &mut c,
        Command::AttributesSet(AttributesUpdated {
            for_seq,
            sink: "log".into(),
            attributes,
            attempts: 1,
        }),
    );
    assert!(c.due().is_empty());

    when(
        &mut c,
        Command::End(ContactEnded {
            ended_at: Utc::now(),
            reason: EndReason::IdleTimeout,
        }),
    );
    assert_eq!(c.due(), [Due::Summary { version: 1 }]);
    // A stale result for something not asked for is refused, not appended.
    assert!(
        c.decide(judged("s1", Participant::Customer, 0.1), Utc::now())
            .is_err()
    );
}

fn summary(version: u32) -> SummaryGenerated {
    SummaryGenerated {
        version,
        model: "test".into(),
        prompt_version: 1,
        text: "- a\n- b\n- c".into(),
        reason: "r".into(),
        resolution: "r".into(),
        follow_up: "none".into(),
        customer_sentiment: None,
        chunks: 1,
        tokens_in: 1,
        tokens_out: 1,
        cost_usd: None,
    }
}

#[test]
fn summaries_version_up_and_failures_are_bounded() {
    let mut c = Contact::new("c", rules());
    when(&mut c, said("s1", Participant::Agent, "hello"));
    when(&mut c, judged("s1", Participant::Agent, 0.1));
    when(
        &mut c,
        Command::End(ContactEnded {
            ended_at: Utc::now(),
            reason: EndReason::Ended,
        }),
    );
    assert!(
        c.decide(Command::Summarised(summary(2)), Utc::now())
            .is_err()
    );
    when(&mut c, Command::Summarised(summary(1)));
    assert!(c.due().is_empty());
    assert_eq!(c.want_new_summary(), 2);
    for attempt in 1..=MAX_SUMMARY_ATTEMPTS {
        assert_eq!(c.due(), [Due::Summary { version: 2 }]);
        when(
            &mut c,
            Command::SummaryFailed(SummaryFailed {
                version: 2,
                model: "test".into(),
                error: "repetition loop".into(),
                attempts: attempt,
            }),
        );
    }
    assert!(c.due().is_empty(), "gives up after {MAX_SUMMARY_ATTEMPTS}");
}

#[test]
fn a_reloaded_contact_has_the_same_state_and_due_work() {
    let mut c = Contact::new("c", rules());
    let mut log = Vec::new();
    let mut head = ChainHead::default();
    let commands = vec![
        said("s1", Participant::Customer, "late again"),
        judged("s1", Participant::Customer, 0.95),
        said("s2", Participant::Customer, "and now?"),
    ];
    for command in commands {
        for event in c.decide(command, Utc::now()).unwrap() {
            let stored = head.seal("c", Some("src"), &event, Utc::now());
            c.apply(&stored, &event);
            log.push(stored);
        }
    }
    let reloaded = Contact::load("c", rules(), &log).unwrap();
    assert_eq!(reloaded.due(), c.due());
    assert_eq!(reloaded.head, c.head);
    assert_eq!(reloaded.mood, c.mood);

    log[1].payload = log[1].payload.replace("s1", "s7");
    assert!(Contact::load("c", rules(), &log).is_err());
}

#[test]
fn judgements_arriving_out_of_order_are_ruled_on_in_spoken_order() {
    // Spoken: calm, calm, NEG, NEG. Results come back last first.
    let mut c = Contact::new("c", rules());
    for id in ["s1", "s2", "s3", "s4"] {
        when(&mut c, said(id, Participant::Customer, "..."));
    }
    let early = when(&mut c, judged("s4", Participant::Customer, NEG));
    assert_eq!(
        kinds(&early),
        ["SentimentAssessed"],
        "held until s1..s3 are in"
    );
    when(&mut c, judged("s3", Participant::Customer, NEG));
    when(&mut c, judged("s2", Participant::Customer, CALM));
    assert!(!c.mood.escalated);
    // s1 releases s1..s4 in order: calm, calm, NEG, NEG -> 2 of the last 3 at s4.
    let released = when(&mut c, judged("s1", Participant::Customer, CALM));
    let raised = released
        .iter()
        .find_map(|e| match e {
            Event::EscalationRaised(r) => Some(r.evidence.clone()),
            _ => None,
        })
        .expect("escalates");
    assert_eq!(raised, ["s3", "s4"]);
}

#[test]
fn a_skipped_utterance_releases_the_judgements_waiting_behind_it() {
    let mut c = Contact::new("c", rules());
    for id in ["s1", "s2", "s3"] {
        when(&mut c, said(id, Participant::Customer, "..."));
    }
    when(&mut c, judged("s2", Participant::Customer, NEG));
    when(&mut c, judged("s3", Participant::Customer, NEG));
    let events = when(
        &mut c,
        Command::Skipped(ModelCallSkipped {
            task: ModelTask::Sentiment,
            segment_ids: vec!["s1".into()],
            why: "deadline".into(),
            stale_ms: 5000,
        }),
    );
    assert!(kinds(&events).contains(&"EscalationRaised"), "{events:?}");
}

#[test]
fn a_batch_released_at_once_folds_back_to_the_same_mood() {
    // NEG NEG calm calm calm NEG NEG: escalates, clears, escalates again, even when every
    // judgement is held back until the first one arrives.
    let scores = [NEG, NEG, CALM, CALM, CALM, NEG, NEG];
    let mut c = Contact::new("c", rules());
    let mut head = ChainHead::default();
    let mut log = Vec::new();
    let mut run = |c: &mut Contact, command: Command| {
        let events = c.decide(command, Utc::now()).unwrap();
        for event in &events {
            let stored = head.seal("c", None, event, Utc::now());
            c.apply(&stored, event);
            log.push(stored);
        }
        events
    };
    for i in 1..=scores.len() {
        run(&mut c, said(&format!("s{i}"), Participant::Customer, "..."));
    }
    for i in (2..=scores.len()).chain([1]) {
        let events = run(
            &mut c,
            judged(&format!("s{i}"), Participant::Customer, scores[i - 1]),
        );
        if i == 1 {
            let k = kinds(&events);
            let count = |kind| k.iter().filter(|x| **x == kind).count();
            assert_eq!(count("EscalationRaised"), 2, "{k:?}");
            assert_eq!(count("EscalationCleared"), 1, "{k:?}");
        }
    }
    let reloaded = Contact::load("c", rules(), &log).unwrap();
    assert_eq!(reloaded.mood, c.mood);
    assert!(reloaded.mood.escalated);
}

#[test]
fn a_contact_is_folded_by_the_rules_it_began_under_whatever_the_config_says_later() {
    let mut c = Contact::new("c", rules());
    let mut log = Vec::new();
    let mut head = ChainHead::default();
    let mut record = |c: &mut Contact, command| {
        let events = c.decide(command, Utc::now()).unwrap();
        for event in &events {
            let stored = head.seal("c", Some("src"), event, Utc::now());
            c.apply(&stored, event);
            log.push(stored);
        }
        kinds(&events)
    };
    record(&mut c, said("s1", Participant::Customer, "late again"));
    record(&mut c, judged("s1", Participant::Customer, NEG));
    record(&mut c, said("a1", Participant::Agent, "let me see"));
    // Today's config: one NEGATIVE escalates, and agents are not judged at all.
    let stricter = Arc::new(EscalationRules {
        window: 1,
        negatives: 1,
        judge_agent: false,
        ..EscalationRules::default()
    });
    let reloaded = Contact::load("c", stricter, &log).unwrap();
    assert_eq!(reloaded.mood, c.mood, "the past is what it was");
    assert_eq!(
        reloaded.due(),
        c.due(),
        "the agent turn is still owed a judgement"
    );
    assert!(!reloaded.mood.escalated);
    // What comes next is ruled by the rules the call began under: 2 of 3.
    let mut reloaded = reloaded;
    let next = |c: &mut Contact| {
        let events = c
            .decide(judged("a1", Participant::Agent, CALM), Utc::now())
            .unwrap();
        kinds(&events)
    };
    assert_eq!(next(&mut reloaded), next(&mut c));
}

fn heard(id: &str, who: Participant, begin: u64, end: u64) -> Command {
    let Command::Utterance { mut utterance, at } = said(id, who, "heard") else {
        unreachable!()
    };
    utterance.begin_offset_millis = Some(begin);
    utterance.end_offset_millis = Some(end);
    Command::Utterance { utterance, at }
}

#[test]
fn a_call_with_audio_is_heard_after_its_end_and_summarised_once_the_audio_is_over() {
    let mut c = Contact::new("c", rules());
    when(&mut c, started(Utc::now(), "i-1"));
    let Some(audio) = c.wants_audio() else {
        panic!("a media stream named, nothing reading it")
    };
    assert_eq!(
        kinds(&when(&mut c, Command::AudioStart(audio.clone()))),
        ["AudioStarted"]
    );
    assert!(c.wants_audio().is_none());
    assert!(
        when(&mut c, Command::AudioStart(audio)).is_empty(),
        "started once"
    );
    when(
        &mut c,
        heard("audio-customer-1000", Participant::Customer, 1000, 2500),
    );
    let checkpoint = |fragment: &str| {
        Command::AudioProgress(AudioCheckpoint {
            fragment_number: fragment.into(),
            origin_millis: Some(1),
            covered_millis: 3000,
        })
    };
    assert_eq!(
        kinds(&when(&mut c, checkpoint("0012"))),
        ["AudioCheckpoint"]
    );
    assert!(
        when(&mut c, checkpoint("11")).is_empty(),
        "an older fragment is not progress"
    );
    when(
        &mut c,
        Command::End(ContactEnded {
            ended_at: Utc::now(),
            reason: EndReason::Ended,
        }),
    );
    // The audio is still being heard: its last words are taken, and no summary yet.
    when(
        &mut c,
        heard("audio-agent-4000", Participant::Agent, 4000, 5200),
    );
    let audio = c.audio.clone().unwrap();
    assert_eq!(audio.heard_until, [2500, 5200]);
    assert_eq!(audio.checkpoint.unwrap().fragment_number, "0012");
    assert!(
        matches!(&c.due()[..], [Due::Sentiment { .. }, .., Due::Audio(_)]),
        "{:?}",
        c.due()
    );
    when(
        &mut c,
        Command::AudioEnd(AudioEnded {
            reason: AudioEndReason::CallEnded,
            fragment_number: Some("14".into()),
        }),
    );
    assert!(
        c.due().contains(&Due::Summary { version: 1 }),
        "{:?}",
        c.due()
    );
    assert!(!c.due().iter().any(|d| matches!(d, Due::Audio(_))));
    assert!(
        c.decide(checkpoint("15"), Utc::now()).is_err(),
        "no audio reports after its end"
    );
    assert!(
        c.decide(
            heard("audio-agent-9000", Participant::Agent, 9000, 9500),
            Utc::now()
        )
        .is_err()
    );
}
