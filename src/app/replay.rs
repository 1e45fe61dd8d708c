//! `callpulse replay`: regenerates call summaries from the event log with the configured
//! model and appends them as new versions. Earlier versions (events and files) stay as they
//! are: a replay only ever adds.

use std::fmt;
use std::io::Write;
use std::sync::Arc;

use anyhow::bail;
use chrono::{DateTime, Utc};

use super::query::BATCH;
use crate::events::SummaryGenerated;
use crate::events::contact::{Command, Contact};
use crate::events::rules::EscalationRules;
use crate::models::{CancellationToken, Summariser};
use crate::sinks::summaries::{SummarySink, markdown};
use crate::store::projection::catch_up;
use crate::store::{Appended, ContactFilter, EventStore, ProjectionStore, SeqRange, StoreError};

/// Which contacts to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayTarget {
    /// One contact.
    Contact(String),
    /// Every contact in the read model (brought up to date first).
    All {
        /// Only contacts started at or after this time.
        since: Option<DateTime<Utc>>,
    },
}

impl ReplayTarget {
    /// The contacts meant: the one named, or every contact in the read model (brought up
    /// to date first) that started at or after `since`.
    pub async fn contact_ids(
        &self,
        events: &dyn EventStore,
        projections: &dyn ProjectionStore,
    ) -> Result<Vec<String>, StoreError> {
        match self {
            ReplayTarget::Contact(id) => Ok(vec![id.clone()]),
            ReplayTarget::All { since } => {
                catch_up(events, projections, BATCH).await?;
                let filter = ContactFilter {
                    since: *since,
                    ..ContactFilter::default()
                };
                let rows = projections.contacts(&filter).await?;
                Ok(rows.into_iter().map(|row| row.contact_id).collect())
            }
        }
    }
}

/// What a replay did, contact by contact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Summaries written (in a dry run: that would have been written).
    pub written: usize,
    /// Contacts with nothing to summarise (no utterances, or not ended).
    pub skipped: usize,
    /// Contacts whose model call, log check or append failed.
    pub failed: usize,
    /// Whether this was a dry run (nothing appended, nothing saved).
    pub dry_run: bool,
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would be written (dry run: nothing appended)"
        } else {
            "written"
        };
        write!(
            f,
            "{} summaries {verb}, {} contacts skipped, {} failed",
            self.written, self.skipped, self.failed
        )
    }
}

/// Summarises every contact of `target` again and, unless `dry_run`, appends each summary
/// as the contact's next version (source id `replay-v<version>`) and saves it to `sink`.
/// Writes one line per contact to `out` (in a dry run followed by the summary itself).
///
/// A contact whose log does not verify, whose model call fails, or whose log moved on
/// meanwhile (an append conflict) is reported and counted as failed; the others go on.
/// Store outages and an unknown single contact end the replay with an error.
#[allow(clippy::too_many_arguments)] // the command's inputs, each passed straight through
pub async fn replay(
    events: &dyn EventStore,
    projections: &dyn ProjectionStore,
    summariser: &dyn Summariser,
    rules: Arc<EscalationRules>,
    sink: &dyn SummarySink,
    target: &ReplayTarget,
    dry_run: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ReplayReport> {
    let ids = target.contact_ids(events, projections).await?;
    let mut report = ReplayReport {
        dry_run,
        ..ReplayReport::default()
    };
    for id in &ids {
        match replay_one(events, summariser, &rules, sink, id, dry_run).await? {
            Outcome::Written(summary) => {
                report.written += 1;
                let first_line = summary.text.lines().next().unwrap_or("");
                writeln!(
                    out,
                    "{id}  v{}  {}  {first_line}",
                    summary.version, summary.model
                )?;
                if dry_run {
                    writeln!(out, "{}", markdown(id, &summary))?;
                }
            }
            Outcome::Skipped(why) => {
                report.skipped += 1;
                writeln!(out, "{id}  skipped: {why}")?;
            }
            Outcome::Failed(why) => {
                report.failed += 1;
                writeln!(out, "{id}  FAILED: {why}")?;
            }
        }
    }
    Ok(report)
}

/// What happened to one contact.
enum Outcome {
    /// This summary was written (or, in a dry run, would have been).
    Written(SummaryGenerated),
    /// Nothing to summarise.
    Skipped(&'static str),
    /// Something went wrong for this contact only.
    Failed(String),
}

async fn replay_one(
    events: &dyn EventStore,
    summariser: &dyn Summariser,
    rules: &Arc<EscalationRules>,
    sink: &dyn SummarySink,
    id: &str,
    dry_run: bool,
) -> anyhow::Result<Outcome> {
    let log = events.read(id, SeqRange::all()).await?;
    if log.is_empty() {
        bail!("no events for contact {id}");
    }
    let mut contact = match Contact::load(id, rules.clone(), &log) {
        Ok(contact) => contact,
        Err(reason) => {
            return Ok(Outcome::Failed(format!(
                "its log does not verify ({reason}); see `callpulse verify {id}`"
            )));
        }
    };
    if contact.spoken.is_empty() {
        return Ok(Outcome::Skipped("no utterances"));
    }
    if contact.ended.is_none() {
        return Ok(Outcome::Skipped("not ended yet"));
    }
    let version = contact.want_new_summary();
    let summary = match summariser
        .summarise(&contact.turns(), &CancellationToken::new())
        .await
    {
        Ok(summary) => summary.into_event(version),
        Err(e) => return Ok(Outcome::Failed(format!("the model failed: {e}"))),
    };
    if dry_run {
        return Ok(Outcome::Written(summary));
    }
    let now = Utc::now();
    let new_events = match contact.decide(Command::Summarised(summary.clone()), now) {
        Ok(new_events) => new_events,
        Err(refusal) => return Ok(Outcome::Failed(refusal.to_string())),
    };
    let source_id = format!("replay-v{version}");
    let sealed = contact
        .head
        .clone()
        .seal_all(id, Some(&source_id), &new_events, now);
    match events.append(&sealed).await {
        Ok(Appended::Written { .. }) => {}
        Ok(Appended::Duplicate { .. }) => {
            return Ok(Outcome::Failed(format!(
                "another replay appended v{version} meanwhile"
            )));
        }
        Err(e @ StoreError::Unavailable(_)) => return Err(e.into()),
        Err(e) => return Ok(Outcome::Failed(format!("{e}; nothing appended"))),
    }
    if let Err(e) = sink.save(id, &summary).await {
        return Ok(Outcome::Failed(format!(
            "v{version} is in the log, but saving its files failed: {e}"
        )));
    }
    Ok(Outcome::Written(summary))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::app::query::tests::{first_summary, three_calls};
    use crate::events::{Event, StoredEvent};
    use crate::models::standin::StandInModel;
    use crate::models::{ModelError, Summary, Turn};
    use crate::sinks::summaries::SummaryFolder;
    use crate::store::Positioned;
    use crate::store::memory::{MemoryEventStore, MemoryProjectionStore};

    fn all() -> ReplayTarget {
        ReplayTarget::All { since: None }
    }

    async fn run(
        events: &dyn EventStore,
        summariser: &dyn Summariser,
        sink: &dyn SummarySink,
        target: ReplayTarget,
        dry_run: bool,
    ) -> anyhow::Result<(ReplayReport, String)> {
        let mut out = Vec::new();
        let report = replay(
            events,
            &MemoryProjectionStore::new(),
            summariser,
            Arc::new(EscalationRules::default()),
            sink,
            &target,
            dry_run,
            &mut out,
        )
        .await?;
        Ok((report, String::from_utf8(out)?))
    }

    #[tokio::test]
    async fn replay_adds_version_two_and_leaves_version_one_alone() {
        let events = three_calls().await;
        let dir = tempfile::tempdir().unwrap();
        let sink = SummaryFolder::new(dir.path());
        sink.save("c-angry", &first_summary()).await.unwrap();
        let v1_file = dir.path().join("c-angry").join("v1.md");
        let v1_text = std::fs::read(&v1_file).unwrap();
        let before = events.read("c-angry", SeqRange::all()).await.unwrap();

        let model = StandInModel::new(Duration::ZERO);
        let (report, out) = run(&events, &model, &sink, all(), false).await.unwrap();
        assert_eq!((report.written, report.skipped, report.failed), (2, 1, 0));
        assert!(out.contains("c-open  skipped: not ended yet"), "{out}");
        assert!(
            out.contains("c-angry  v2  stand-in (fixed latency 0 ms)  - Customer: My order"),
            "{out}"
        );

        let after = events.read("c-angry", SeqRange::all()).await.unwrap();
        assert_eq!(after[..before.len()], before[..]);
        let [added] = &after[before.len()..] else {
            panic!("one event added: {after:?}")
        };
        assert_eq!(added.source_id.as_deref(), Some("replay-v2"));
        let Event::SummaryGenerated(v2) = added.decode().unwrap() else {
            panic!("{added:?}")
        };
        assert_eq!(v2.version, 2);
        assert!(v2.model.contains("stand-in"));
        assert!(sink.has("c-angry", 2).await);
        assert_eq!(std::fs::read(&v1_file).unwrap(), v1_text);

        let (again, _) = run(&events, &model, &sink, all(), false).await.unwrap();
        assert_eq!(again.written, 2);
        assert!(sink.has("c-calm", 3).await);
    }

    #[tokio::test]
    async fn a_dry_run_shows_the_summary_and_appends_nothing() {
        let events = three_calls().await;
        let dir = tempfile::tempdir().unwrap();
        let sink = SummaryFolder::new(dir.path());
        let before = events.read_all(0, usize::MAX).await.unwrap();

        let model = StandInModel::new(Duration::ZERO);
        let target = ReplayTarget::Contact("c-calm".into());
        let (report, out) = run(&events, &model, &sink, target, true).await.unwrap();
        assert_eq!((report.written, report.dry_run), (1, true));
        assert!(report.to_string().contains("dry run"));
        assert!(out.contains("# Call c-calm: summary v2"), "{out}");
        assert!(out.contains("- Agent: It arrives tomorrow"), "{out}");
        assert_eq!(events.read_all(0, usize::MAX).await.unwrap(), before);
        assert!(!sink.has("c-calm", 2).await);
    }

    /// Fails on any call where someone said `trigger`; otherwise the stand-in.
    struct FailsOn(&'static str);

    #[async_trait]
    impl Summariser for FailsOn {
        async fn summarise(
            &self,
            turns: &[Turn],
            cancel: &CancellationToken,
        ) -> Result<Summary, ModelError> {
            if turns.iter().any(|t| t.text.contains(self.0)) {
                return Err(ModelError::InvalidOutput("repetition loop".into()));
            }
            StandInModel::new(Duration::ZERO)
                .summarise(turns, cancel)
                .await
        }
    }

    #[tokio::test]
    async fn a_model_failure_fails_that_contact_and_the_others_go_on() {
        let events = three_calls().await;
        let dir = tempfile::tempdir().unwrap();
        let sink = SummaryFolder::new(dir.path());
        let angry_seq = events.highest_seq("c-angry").await.unwrap();
        let (report, out) = run(&events, &FailsOn("ridiculous"), &sink, all(), false)
            .await
            .unwrap();
        assert_eq!((report.written, report.skipped, report.failed), (1, 1, 1));
        assert!(out.contains("c-angry  FAILED: the model failed"), "{out}");
        assert!(sink.has("c-calm", 2).await);
        assert_eq!(events.highest_seq("c-angry").await.unwrap(), angry_seq);
        assert!(!sink.has("c-angry", 2).await);
    }

    /// A store where someone else always appended first.
    struct Raced(MemoryEventStore);

    #[async_trait]
    impl EventStore for Raced {
        async fn append(&self, events: &[StoredEvent]) -> Result<Appended, StoreError> {
            Err(StoreError::Conflict {
                contact_id: events[0].contact_id.clone(),
                expected: events[0].seq - 1,
                actual: events[0].seq,
            })
        }

        async fn read(&self, id: &str, range: SeqRange) -> Result<Vec<StoredEvent>, StoreError> {
            self.0.read(id, range).await
        }

        async fn highest_seq(&self, id: &str) -> Result<u64, StoreError> {
            self.0.highest_seq(id).await
        }

        async fn read_all(&self, after: u64, max: usize) -> Result<Vec<Positioned>, StoreError> {
            self.0.read_all(after, max).await
        }
    }

    #[tokio::test]
    async fn a_conflict_is_reported_once_and_nothing_is_saved() {
        let events = Raced(three_calls().await);
        let dir = tempfile::tempdir().unwrap();
        let sink = SummaryFolder::new(dir.path());
        let model = StandInModel::new(Duration::ZERO);
        let target = ReplayTarget::Contact("c-angry".into());
        let (report, out) = run(&events, &model, &sink, target, false).await.unwrap();
        assert_eq!((report.written, report.failed), (0, 1));
        assert!(out.contains("c-angry  FAILED: conflict"), "{out}");
        assert!(!sink.has("c-angry", 2).await);
    }

    #[tokio::test]
    async fn an_unknown_contact_is_an_error() {
        let events = three_calls().await;
        let dir = tempfile::tempdir().unwrap();
        let sink = SummaryFolder::new(dir.path());
        let model = StandInModel::new(Duration::ZERO);
        let target = ReplayTarget::Contact("c-nobody".into());
        let err = run(&events, &model, &sink, target, false)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "no events for contact c-nobody");
    }
}
