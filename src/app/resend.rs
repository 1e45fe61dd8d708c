//! `callpulse summaries resend`: saves each contact's latest summary, as the log holds it,
//! to the configured summary sink again: after the store (S3, the folder) or the CRM
//! webhook was down when a call ended. Nothing is appended and no model runs; the store
//! never overwrites (a version already saved with the same bytes is fine), and the webhook
//! gets the same delivery id, so a receiver that already has it drops it.

use std::fmt;
use std::io::Write;
use std::sync::Arc;

use super::replay::ReplayTarget;
use crate::events::contact::Contact;
use crate::events::rules::EscalationRules;
use crate::sinks::summaries::SummarySink;
use crate::store::{EventStore, ProjectionStore, SeqRange};

/// What a resend did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResendReport {
    /// Summaries saved.
    pub saved: usize,
    /// Contacts skipped: no summary yet, or (with `missing_only`) already in the store.
    pub skipped: usize,
    /// Contacts whose log did not load or whose save failed.
    pub failed: usize,
}

impl fmt::Display for ResendReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} summaries saved, {} contacts skipped, {} failed",
            self.saved, self.skipped, self.failed
        )
    }
}

/// Saves the latest summary of every contact of `target` to `sink` (with `missing_only`,
/// only those the sink's store lacks), one line per contact to `out`. A contact that fails
/// is reported and the others go on; a store outage ends the run with an error.
pub async fn resend(
    events: &dyn EventStore,
    projections: &dyn ProjectionStore,
    rules: Arc<EscalationRules>,
    sink: &dyn SummarySink,
    target: &ReplayTarget,
    missing_only: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ResendReport> {
    let mut report = ResendReport::default();
    for id in target.contact_ids(events, projections).await? {
        let log = events.read(&id, SeqRange::all()).await?;
        let summary = match Contact::load(&id, rules.clone(), &log) {
            Ok(contact) => contact.latest_summary,
            Err(reason) => {
                report.failed += 1;
                writeln!(out, "{id}  FAILED: its log does not load ({reason})")?;
                continue;
            }
        };
        let Some(summary) = summary else {
            report.skipped += 1;
            writeln!(out, "{id}  skipped: no summary yet")?;
            continue;
        };
        if missing_only && sink.has(&id, summary.version).await {
            report.skipped += 1;
            writeln!(out, "{id}  skipped: v{} already saved", summary.version)?;
            continue;
        }
        match sink.save(&id, &summary).await {
            Ok(()) => {
                report.saved += 1;
                writeln!(out, "{id}  v{}  saved", summary.version)?;
            }
            Err(error) => {
                report.failed += 1;
                writeln!(out, "{id}  v{}  FAILED: {error}", summary.version)?;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use actix_web::HttpResponse;

    use super::*;
    use crate::app::query::tests::three_calls;
    use crate::aws::stub::Stub;
    use crate::sinks::summaries::SummaryFolder;
    use crate::sinks::webhook::{DELIVERY_HEADER, Webhook, WebhookConfig, WithWebhook};
    use crate::store::memory::MemoryProjectionStore;

    async fn run(
        events: &dyn EventStore,
        sink: &dyn SummarySink,
        missing_only: bool,
    ) -> (ResendReport, String) {
        let mut out = Vec::new();
        let report = resend(
            events,
            &MemoryProjectionStore::new(),
            Arc::new(EscalationRules::default()),
            sink,
            &ReplayTarget::All { since: None },
            missing_only,
            &mut out,
        )
        .await
        .unwrap();
        (report, String::from_utf8(out).unwrap())
    }

    #[actix_rt::test]
    async fn latest_summaries_reach_the_store_and_the_crm_again() {
        let events = three_calls().await;
        let crm = Stub::start(|_, i| {
            if i == 0 {
                HttpResponse::ServiceUnavailable().finish()
            } else {
                HttpResponse::Ok().finish()
            }
        });
        let config = WebhookConfig {
            url: crm.endpoint.clone(),
            retry_base_ms: 1,
            ..WebhookConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let folder: Arc<dyn SummarySink> = Arc::new(SummaryFolder::new(dir.path()));
        let sink = WithWebhook::new(
            folder.clone(),
            Webhook::with_secret(&config, b"s".to_vec()).unwrap(),
        );

        let (report, out) = run(&events, &sink, false).await;
        assert_eq!(
            (report.saved, report.skipped, report.failed),
            (2, 1, 0),
            "{out}"
        );
        assert!(out.contains("c-open  skipped: no summary yet"), "{out}");
        assert!(folder.has("c-angry", 1).await && folder.has("c-calm", 1).await);
        let mut delivered: Vec<String> = crm
            .received()
            .iter()
            .map(|r| r.header(DELIVERY_HEADER).unwrap().to_string())
            .collect();
        delivered.dedup();
        assert_eq!(
            delivered,
            ["c-angry/v1", "c-calm/v1"],
            "the outage was retried"
        );

        // Only what the store lacks: nothing now, and the CRM hears nothing more.
        let before = crm.received().len();
        let (report, _) = run(&events, &sink, true).await;
        assert_eq!((report.saved, report.skipped, report.failed), (0, 3, 0));
        assert_eq!(crm.received().len(), before);

        // Everything again: the store keeps its bytes, the CRM gets the same deliveries.
        let (report, _) = run(&events, &sink, false).await;
        assert_eq!(report.saved, 2);
        assert_eq!(crm.received().len(), before + 2);
    }

    #[actix_rt::test]
    async fn a_failing_save_is_reported_and_the_rest_go_on() {
        let events = three_calls().await;
        let crm = Stub::start(|_, _| HttpResponse::BadRequest().body("no such contact"));
        let config = WebhookConfig {
            url: crm.endpoint.clone(),
            ..WebhookConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let sink = WithWebhook::new(
            Arc::new(SummaryFolder::new(dir.path())),
            Webhook::with_secret(&config, b"s".to_vec()).unwrap(),
        );
        let (report, out) = run(&events, &sink, false).await;
        assert_eq!(
            (report.saved, report.skipped, report.failed),
            (0, 1, 2),
            "{out}"
        );
        assert!(out.contains("c-angry  v1  FAILED"), "{out}");
        assert!(out.contains("no such contact"), "{out}");
        assert_eq!(
            report.to_string(),
            "0 summaries saved, 1 contacts skipped, 2 failed"
        );
    }
}
