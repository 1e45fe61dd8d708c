//! Projector: keeps the read models up to date by folding the global event log into them,
//! a little after the events are written. The read models can be dropped and rebuilt from
//! the log at any time (`callpulse projections rebuild`).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::store::projection::catch_up;
use crate::store::{EventStore, ProjectionStore, StoreError};

/// Events folded per read of the log.
const BATCH: usize = 2_000;

/// Fold everything written so far, now; resolves when done.
#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct CatchUp;

/// The projector actor.
pub struct Projector {
    events: Arc<dyn EventStore>,
    projections: Arc<dyn ProjectionStore>,
    every: Duration,
}

impl Projector {
    /// A projector polling the log every `every`.
    pub fn new(
        events: Arc<dyn EventStore>,
        projections: Arc<dyn ProjectionStore>,
        every: Duration,
    ) -> Self {
        Self {
            events,
            projections,
            every,
        }
    }
}

impl Actor for Projector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.schedule(ctx);
    }
}

impl Projector {
    /// The next periodic catch-up, `every` after the last one ended: at most one is ever
    /// waiting, so a store slower than the interval never piles them up in front of a
    /// catch-up asked for.
    fn schedule(&self, ctx: &mut Context<Self>) {
        ctx.run_later(self.every, |act, ctx| {
            // `wait`: nothing else runs on the projector meanwhile, so a catch-up asked for
            // (at shutdown) never folds the same events as a periodic one.
            let (events, projections) = (act.events.clone(), act.projections.clone());
            ctx.wait(
                async move { catch_up(events.as_ref(), projections.as_ref(), BATCH).await }
                    .into_actor(act)
                    .map(|result, act, ctx| {
                        if let Err(error) = result {
                            tracing::warn!(%error, "projector could not catch up; retrying");
                        }
                        act.schedule(ctx);
                    }),
            );
        });
    }
}

impl Handler<CatchUp> for Projector {
    type Result = AtomicResponse<Self, Result<u64, StoreError>>;

    fn handle(&mut self, _: CatchUp, _: &mut Context<Self>) -> Self::Result {
        let (events, projections) = (self.events.clone(), self.projections.clone());
        AtomicResponse::new(Box::pin(
            async move { catch_up(events.as_ref(), projections.as_ref(), BATCH).await }
                .into_actor(self),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::app::query::tests::{at, call_log, three_calls};
    use crate::events::Participant;
    use crate::store::memory::MemoryProjectionStore;
    use crate::store::{ContactFilter, ContactRow};

    /// The in-memory read model, slow to fetch rows, counting the catch-ups that fetch at
    /// the same time.
    #[derive(Default)]
    struct Overlaps {
        inner: MemoryProjectionStore,
        fetching: AtomicUsize,
        most_at_once: AtomicUsize,
        /// Catch-ups begun (each reads the checkpoint first), and how long each read takes.
        begun: AtomicUsize,
        checkpoint_ms: u64,
    }

    #[async_trait]
    impl ProjectionStore for Overlaps {
        async fn checkpoint(&self) -> Result<u64, StoreError> {
            self.begun.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(self.checkpoint_ms)).await;
            self.inner.checkpoint().await
        }

        async fn save(&self, rows: &[ContactRow], checkpoint: u64) -> Result<(), StoreError> {
            self.inner.save(rows, checkpoint).await
        }

        async fn contact(&self, contact_id: &str) -> Result<Option<ContactRow>, StoreError> {
            self.inner.contact(contact_id).await
        }

        async fn rows(&self, ids: &[String]) -> Result<HashMap<String, ContactRow>, StoreError> {
            let now = self.fetching.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            self.fetching.fetch_sub(1, Ordering::SeqCst);
            self.inner.rows(ids).await
        }

        async fn contacts(&self, filter: &ContactFilter) -> Result<Vec<ContactRow>, StoreError> {
            self.inner.contacts(filter).await
        }

        async fn unfinished(&self) -> Result<Vec<ContactRow>, StoreError> {
            self.inner.unfinished().await
        }

        async fn reset(&self) -> Result<(), StoreError> {
            self.inner.reset().await
        }
    }

    #[actix_rt::test]
    async fn a_catch_up_asked_for_never_runs_beside_the_periodic_one() {
        let events = Arc::new(three_calls().await);
        let projections = Arc::new(Overlaps::default());
        let projector = Projector::new(
            events.clone(),
            projections.clone(),
            Duration::from_millis(5),
        )
        .start();
        for i in 0..8 {
            let log = call_log(
                &format!("c-{i}"),
                at(200 + i),
                &[(Participant::Customer, "hi", 0.1)],
                true,
            );
            events.append(&log).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            projector.send(CatchUp).await.unwrap().unwrap();
        }
        assert_eq!(projections.most_at_once.load(Ordering::SeqCst), 1);
        let rows = projections
            .contacts(&ContactFilter::default())
            .await
            .unwrap();
        assert_eq!(rows.len(), 11);
    }

    #[actix_rt::test]
    async fn periodic_catch_ups_slower_than_their_interval_do_not_pile_up() {
        let events = Arc::new(three_calls().await);
        let projections = Arc::new(Overlaps {
            checkpoint_ms: 20,
            ..Overlaps::default()
        });
        let projector = Projector::new(
            events.clone(),
            projections.clone(),
            Duration::from_millis(1),
        )
        .start();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = projections.begun.load(Ordering::SeqCst);
        projector.send(CatchUp).await.unwrap().unwrap();
        let during = projections.begun.load(Ordering::SeqCst) - before;
        assert!(
            during <= 2,
            "{during} catch-ups began while the one asked for waited: periodic ones piled up"
        );
    }
}
