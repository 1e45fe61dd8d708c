//! The gateway's waiting requests: sentiment jobs queued per class of speaker (customers
//! before agents), first come, first served across contacts, with a contact's new utterance
//! merged into its last waiting job; and the summary jobs.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::lane::estimate_tokens;
use super::{JudgeUtterance, WriteSummary};
use crate::events::Participant;

/// What a model request is for, within its contact: the gateway holds each at most once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Work {
    /// Judging the utterance with this segment id.
    Sentiment(String),
    /// Writing this summary version.
    Summary(u32),
}

impl SentimentJob {
    /// The utterances it judges.
    pub(super) fn work(&self) -> Vec<Work> {
        std::iter::once(&self.request.segment_id)
            .chain(&self.coalesced)
            .map(|s| Work::Sentiment(s.clone()))
            .collect()
    }
}

/// A sentiment request waiting or running, with the utterances merged into it.
pub(super) struct SentimentJob {
    /// The newest utterance, its text joined to those of the coalesced ones.
    pub(super) request: JudgeUtterance,
    /// Segment ids of the older utterances merged into it.
    pub(super) coalesced: Vec<String>,
    /// When it was queued.
    pub(super) enqueued: Instant,
    /// When its newest utterance arrived.
    pub(super) newest: Instant,
    /// Calls made so far.
    pub(super) attempts: u32,
}

/// A summary request waiting or running.
pub(super) struct SummaryJob {
    /// The request.
    pub(super) request: WriteSummary,
    /// Calls made so far.
    pub(super) attempts: u32,
    /// When it was queued.
    pub(super) enqueued: Instant,
}

/// Waiting sentiment jobs of one class of speaker: first come, first served across
/// contacts; a contact's new utterance joins its last waiting job when the speaker is the
/// same and there is room.
#[derive(Default)]
struct ContactFifo {
    order: VecDeque<String>,
    jobs: HashMap<String, VecDeque<SentimentJob>>,
    len: usize,
}

impl ContactFifo {
    /// Merges `request` into the contact's last waiting job when it can; gives it back
    /// otherwise.
    fn coalesce(
        &mut self,
        request: JudgeUtterance,
        max_coalesced: usize,
    ) -> Option<JudgeUtterance> {
        let Some(last) = self
            .jobs
            .get_mut(&request.contact_id)
            .and_then(|q| q.back_mut())
            .filter(|last| {
                last.request.participant == request.participant
                    && last.coalesced.len() + 1 < max_coalesced
            })
        else {
            return Some(request);
        };
        let older = std::mem::replace(&mut last.request, request);
        last.coalesced.push(older.segment_id);
        last.request.text = format!("{}\n{}", older.text, last.request.text);
        last.newest = Instant::now();
        None
    }

    fn push_job(&mut self, job: SentimentJob, front: bool) {
        let contact = job.request.contact_id.clone();
        let queue = self.jobs.entry(contact.clone()).or_default();
        if front {
            queue.push_front(job);
            self.order.push_front(contact);
        } else {
            queue.push_back(job);
            self.order.push_back(contact);
        }
        self.len += 1;
    }

    /// The oldest job, and whether a newer job of the same contact waits behind it.
    fn front(&self) -> Option<(&SentimentJob, bool)> {
        let contact = self.order.front()?;
        let queue = self.jobs.get(contact)?;
        Some((queue.front()?, queue.len() > 1))
    }

    fn pop_front(&mut self) -> Option<SentimentJob> {
        let contact = self.order.pop_front()?;
        let queue = self.jobs.get_mut(&contact)?;
        let job = queue.pop_front();
        if queue.is_empty() {
            self.jobs.remove(&contact);
        }
        self.len -= 1;
        job
    }
}

/// Waiting sentiment jobs: customer utterances (and those of unnamed speakers, which
/// escalate like them) before agent turns, each class first come, first served.
#[derive(Default)]
pub(super) struct SentimentQueue {
    customers: ContactFifo,
    agents: ContactFifo,
}

/// The next job to start or drop, and what may be done with it.
pub(super) struct Front {
    /// From the agents' queue.
    pub(super) agent: bool,
    /// When the newest utterance in it arrived.
    pub(super) newest: Instant,
    /// Rough prompt size.
    pub(super) tokens: u32,
    /// A newer job of the same contact and class waits behind it.
    pub(super) superseded: bool,
}

impl SentimentQueue {
    /// Jobs waiting, both classes.
    pub(super) fn len(&self) -> usize {
        self.customers.len + self.agents.len
    }

    fn class(&mut self, agent: bool) -> &mut ContactFifo {
        if agent {
            &mut self.agents
        } else {
            &mut self.customers
        }
    }

    /// Queues a request (or merges it); returns the oldest job if the queue overflowed
    /// (an agent turn while there is one).
    pub(super) fn push(
        &mut self,
        request: JudgeUtterance,
        max_coalesced: usize,
        max_len: usize,
    ) -> Option<SentimentJob> {
        let agent = request.participant == Participant::Agent;
        let request = self.class(agent).coalesce(request, max_coalesced)?;
        let overflow = if self.len() >= max_len {
            self.pop_front_of(self.agents.len > 0)
        } else {
            None
        };
        let now = Instant::now();
        self.class(agent).push_job(
            SentimentJob {
                request,
                coalesced: Vec::new(),
                enqueued: now,
                newest: now,
                attempts: 0,
            },
            false,
        );
        overflow
    }

    /// Puts a job back at the front of its class (a retry).
    pub(super) fn push_front(&mut self, job: SentimentJob) {
        let agent = job.request.participant == Participant::Agent;
        self.class(agent).push_job(job, true);
    }

    /// What would be started next: a customer's job while one waits, else an agent's.
    pub(super) fn front(&self) -> Option<Front> {
        let (agent, (job, superseded)) = match self.customers.front() {
            Some(front) => (false, front),
            None => (true, self.agents.front()?),
        };
        Some(Front {
            agent,
            newest: job.newest,
            tokens: estimate_tokens(job.request.text.len()),
            superseded,
        })
    }

    /// Takes the oldest job of one class (the agents' when `agent`).
    pub(super) fn pop_front_of(&mut self, agent: bool) -> Option<SentimentJob> {
        self.class(agent).pop_front()
    }
}
