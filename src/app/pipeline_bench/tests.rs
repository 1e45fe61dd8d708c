use super::*;

#[test]
fn calls_turn_negative_late_enough_to_escalate_once() {
    let shape = Shape::new(3, 8).unwrap();
    assert_eq!((shape.customer_utterances(), shape.first_negative), (4, 2));
    assert_eq!(shape.escalating(), 6);
    let mut out = Vec::new();
    for round in 0..shape.rounds() {
        shape.write_line(&mut out, round, 1);
    }
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10);
    for line in &lines {
        crate::ingest::record::parse_line(line).unwrap();
    }
    assert!(lines[5].contains("ridiculous") && lines[5].contains("CUSTOMER"));
    assert!(!lines[3].contains("ridiculous") && lines[4].contains("AGENT"));
    assert_eq!(Shape::new(1, 3).unwrap().escalating(), 2);
    assert!(Shape::new(1, 2).is_err());
    let pace = Duration::from_millis(1000);
    assert_eq!(shape.due(2, 1, pace), Duration::from_nanos(2_333_333_333));
}

#[actix_rt::test]
async fn a_small_run_is_coherent() {
    let options = PipelineBenchOptions {
        model: BenchModel::StandIn { latency_ms: 0 },
        calls: 20,
        utterances_per_call: 4,
        pace_ms: None,
    };
    let bench = pipeline(&Config::default(), options).await.unwrap();
    assert_eq!(bench.model, "stand-in (fixed latency 0 ms)");
    let t = &bench.throughput;
    assert_eq!((t.records, t.records_appended), (120, 120));
    assert_eq!((t.records_not_appended, t.unsettled_contacts), (0, 0));
    let l = &bench.latency;
    assert_eq!((l.customer_utterances, l.customer_judged), (40, 40));
    assert_eq!(l.utterance_to_sentiment.unwrap().n, 40);
    assert_eq!((l.escalations, l.calls_escalated_once), (20, 20));
    assert_eq!(l.escalations_at_expected_utterance, 20);
    assert_eq!(l.utterance_to_escalation.unwrap().n, 20);
    assert_eq!(l.attribute_updates, 20);
    assert_eq!(l.utterance_to_attributes.unwrap().n, 20);
    assert_eq!(bench.memory.open_contacts, 20);
    assert_eq!(bench.replay.contacts, 20);
    assert_eq!(bench.replay.events, t.events);
}
