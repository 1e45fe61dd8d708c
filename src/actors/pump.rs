//! The rate-limited, retrying pump the model gateway and the attribute dispatcher share: an
//! actor starts whatever its limits allow ([`Pump::start_due`]), and [`pump`] wakes it again
//! when the soonest limit lifts, or [`retry_later`] when a failed call may be tried again. All
//! time is tokio's, so tests can pause and advance it instead of sleeping.

use std::num::NonZeroU32;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{InsufficientCapacity, Quota, RateLimiter};

/// An actor that starts queued work as its limits allow.
pub trait Pump: Actor<Context = Context<Self>> {
    /// Starts every piece of work its limits allow now; answers how long until more could
    /// start, when work waits on a limit that lifts by itself (a rate, a deferral).
    fn start_due(&mut self, ctx: &mut Context<Self>) -> Option<Duration>;

    /// The actor's pending wake-up.
    fn wake(&mut self) -> &mut Wake;
}

/// An actor's pending wake-up, if any: when it fires, and its timer.
#[derive(Debug, Default)]
pub struct Wake {
    pending: Option<(Instant, SpawnHandle)>,
}

/// Starts what is due on `act`, and wakes it again when its soonest limit lifts: one timer,
/// moved sooner when a sooner deadline comes, so a long wait (a token budget) never delays
/// a short one (a rate) and timers never pile up.
pub fn pump<A: Pump>(act: &mut A, ctx: &mut Context<A>) {
    let Some(wait) = act.start_due(ctx) else {
        return;
    };
    let at = Instant::now() + wait;
    if let Some((pending, timer)) = act.wake().pending {
        if pending <= at {
            return;
        }
        ctx.cancel_future(timer);
    }
    let timer = ctx.run_later(wait, |act, ctx| {
        act.wake().pending = None;
        pump(act, ctx);
    });
    act.wake().pending = Some((at, timer));
}

/// After `delay`, gives failed work back to `act` (`requeue`) and pumps again.
pub fn retry_later<A: Pump>(
    ctx: &mut Context<A>,
    delay: Duration,
    requeue: impl FnOnce(&mut A, &mut Context<A>) + 'static,
) {
    ctx.run_later(delay, move |act, ctx| {
        requeue(act, ctx);
        pump(act, ctx);
    });
}

/// A rate limit (GCRA, from `governor`) on tokio's clock.
pub struct RateLimit {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>,
    clock: TokioClock,
}

impl RateLimit {
    /// `n` per second; none for 0.
    pub fn per_second(n: u32) -> Option<Self> {
        NonZeroU32::new(n).map(|n| Self::new(Quota::per_second(n)))
    }

    /// `n` per minute; none for 0.
    pub fn per_minute(n: u32) -> Option<Self> {
        NonZeroU32::new(n).map(|n| Self::new(Quota::per_minute(n)))
    }

    fn new(quota: Quota) -> Self {
        let clock = TokioClock {
            origin: Instant::now(),
        };
        Self {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Takes one unit, or says how long until one is free.
    pub fn check(&self) -> Result<(), Duration> {
        self.check_n(1).unwrap_or(Ok(()))
    }

    /// Takes `n` units, or says how long until they are free; an error when `n` exceeds
    /// the whole burst, so it can never fit.
    pub fn check_n(&self, n: u32) -> Result<Result<(), Duration>, InsufficientCapacity> {
        let n = NonZeroU32::new(n.max(1)).expect("at least 1");
        Ok(self
            .limiter
            .check_n(n)?
            .map_err(|not_until| not_until.wait_time_from(self.clock.now())))
    }
}

/// governor's clock over tokio's: the time since the limiter was made.
#[derive(Debug, Clone)]
struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Instant::now() - self.origin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_rate_limit_lifts_on_tokios_clock() {
        tokio::time::pause();
        let limit = RateLimit::per_second(2).unwrap();
        assert_eq!(limit.check(), Ok(()));
        assert_eq!(limit.check(), Ok(()));
        let wait = limit.check().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        tokio::time::advance(wait).await;
        assert_eq!(limit.check(), Ok(()));
        assert!(limit.check_n(3).is_err(), "3 never fit a burst of 2");
        assert!(RateLimit::per_minute(0).is_none());
    }

    /// Work items that may start at set times; counts wake-ups.
    struct Timed {
        due: Vec<Instant>,
        started: Vec<Instant>,
        wakes: usize,
        wake: Wake,
    }

    impl Actor for Timed {
        type Context = Context<Self>;
    }

    impl Pump for Timed {
        fn start_due(&mut self, _: &mut Context<Self>) -> Option<Duration> {
            self.wakes += 1;
            let now = Instant::now();
            let (due, later): (Vec<_>, Vec<_>) = self.due.iter().partition(|at| **at <= now);
            self.started.extend(due);
            self.due = later;
            self.due.iter().min().map(|at| *at - now)
        }

        fn wake(&mut self) -> &mut Wake {
            &mut self.wake
        }
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Add(Duration);

    impl Handler<Add> for Timed {
        type Result = ();

        fn handle(&mut self, Add(after): Add, ctx: &mut Context<Self>) {
            self.due.push(Instant::now() + after);
            pump(self, ctx);
        }
    }

    #[derive(Message)]
    #[rtype(result = "Vec<usize>")]
    struct Counts;

    impl Handler<Counts> for Timed {
        type Result = Vec<usize>;

        fn handle(&mut self, _: Counts, _: &mut Context<Self>) -> Vec<usize> {
            vec![self.started.len(), self.wakes]
        }
    }

    #[actix_rt::test]
    async fn a_later_deadline_never_delays_a_sooner_one_and_timers_do_not_pile_up() {
        tokio::time::pause();
        let addr = Timed {
            due: Vec::new(),
            started: Vec::new(),
            wakes: 0,
            wake: Wake::default(),
        }
        .start();
        addr.send(Add(Duration::from_secs(60))).await.unwrap();
        addr.send(Add(Duration::from_secs(1))).await.unwrap();
        for _ in 0..5 {
            addr.send(Add(Duration::from_secs(30))).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(
            addr.send(Counts).await.unwrap()[0],
            1,
            "the 1 s item waited"
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        let [started, wakes] = addr.send(Counts).await.unwrap()[..] else {
            unreachable!()
        };
        assert_eq!(started, 7);
        // A pump per arrival, then one wake-up per deadline (1 s, 30 s, 60 s): the first
        // 60 s timer was moved to 1 s, and the 30 s items shared one.
        assert_eq!(wakes, 7 + 3);
    }
}
