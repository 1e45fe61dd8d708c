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
    running: bool,
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
            running: false,
        }
    }
}

impl Actor for Projector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.every, |act, ctx| {
            if act.running {
                return;
            }
            act.running = true;
            let (events, projections) = (act.events.clone(), act.projections.clone());
            ctx.spawn(
                async move { catch_up(events.as_ref(), projections.as_ref(), BATCH).await }
                    .into_actor(act)
                    .map(|result, act, _| {
                        act.running = false;
                        if let Err(error) = result {
                            tracing::warn!(%error, "projector could not catch up; retrying");
                        }
                    }),
            );
        });
    }
}

impl Handler<CatchUp> for Projector {
    type Result = ResponseActFuture<Self, Result<u64, StoreError>>;

    fn handle(&mut self, _: CatchUp, _: &mut Context<Self>) -> Self::Result {
        let (events, projections) = (self.events.clone(), self.projections.clone());
        Box::pin(
            async move { catch_up(events.as_ref(), projections.as_ref(), BATCH).await }
                .into_actor(self),
        )
    }
}
