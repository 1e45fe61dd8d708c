//! ContactRouter: finds or starts the actor of a record's contact and hands the record over,
//! in arrival order. Contacts are spread over the pipeline's arbiters (one per core) by a
//! hash of their id; finished contacts are forgotten (passivated) and come back from the log
//! if anything arrives for them again. A contact is halted the moment it is let go, and the
//! contacts of a shard leaving this worker are fenced until its reader has ended: their
//! records are answered [`InputOutcome::NotOwned`] instead of starting them again here.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use actix::prelude::*;

use super::Services;
use super::contact::{ContactActor, ContactInput, Halt, InputError, InputOutcome, IsBusy, Stop};
use crate::ingest::source::Incoming;

/// Hand a record to its contact; resolves once it is durable (or refused).
#[derive(Message)]
#[rtype(result = "Result<InputOutcome, InputError>")]
pub struct Route(pub Incoming);

/// A contact has nothing left to do.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Passivate {
    /// The contact.
    pub contact_id: String,
}

/// Start these contacts now (recovery: they owe work after a restart of the process).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resume(pub Vec<String>);

/// Picks contacts by id.
pub type Selector = Box<dyn Fn(&str) -> bool + Send>;

/// Stop the live contacts this selects (those of a shard this worker no longer reads: its
/// new owner resumes them from the log); answers how many were stopped. With a fence, their
/// records are answered NotOwned, and none of them is started or resumed here, until
/// [`Unfence`] lifts it (a shard whose reader is still feeding a batch when it is let go).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Release {
    /// The contacts.
    pub selects: Selector,
    /// The fence's name (a lease key), if they are fenced.
    pub fence: Option<String>,
}

/// Lift the fence of this name (the shard's reader has ended).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unfence(pub String);

/// How many contacts are live and how many of them owe work (of all, or of those `among`
/// selects).
#[derive(Message, Default)]
#[rtype(result = "Activity")]
pub struct GetActivity {
    /// Count only these contacts.
    pub among: Option<Selector>,
}

/// Live and busy contact counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub struct Activity {
    /// Contacts with a live actor.
    pub live: usize,
    /// Of those, contacts with model or sink work due or in flight.
    pub busy: usize,
}

/// Which of `n` arbiters (or folding threads) contact `id` always goes to.
pub fn shard_of(id: &str, n: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut hasher);
    (hasher.finish() % n as u64) as usize
}

/// The router actor.
pub struct ContactRouter {
    services: Option<Arc<Services>>,
    arbiters: Vec<ArbiterHandle>,
    contacts: HashMap<String, (Addr<ContactActor>, Halt)>,
    fences: HashMap<String, Selector>,
    mailbox: usize,
}

impl ContactRouter {
    /// A router starting contacts on `arbiters`, each with a mailbox of `mailbox` messages.
    /// It needs [`SetServices`] before the first record.
    pub fn new(arbiters: Vec<ArbiterHandle>, mailbox: usize) -> Self {
        Self {
            services: None,
            arbiters,
            contacts: HashMap::new(),
            fences: HashMap::new(),
            mailbox,
        }
    }

    /// Halts a contact's actor and stops it for good; anything that arrives for it later
    /// reloads it.
    fn forget(&mut self, id: &str) {
        if let Some((addr, halt)) = self.contacts.remove(id) {
            halt.halt();
            addr.do_send(Stop);
        }
    }

    /// Whether a fence keeps contact `id` off this worker.
    fn fenced(&self, id: &str) -> bool {
        self.fences.values().any(|selects| selects(id))
    }

    fn contact(&mut self, id: &str) -> Addr<ContactActor> {
        if let Some((addr, _)) = self.contacts.get(id)
            && addr.connected()
        {
            return addr.clone();
        }
        let services = self
            .services
            .clone()
            .expect("services set before records flow");
        let arbiter = &self.arbiters[shard_of(id, self.arbiters.len())];
        let (owned, mailbox, halt) = (id.to_string(), self.mailbox, Halt::default());
        let halts = halt.clone();
        let addr = Supervisor::start_in_arbiter(arbiter, move |ctx| {
            ctx.set_mailbox_capacity(mailbox);
            ContactActor::new(owned, services, halts)
        });
        self.contacts.insert(id.to_string(), (addr.clone(), halt));
        addr
    }
}

/// Gives the router the services its contacts use (they hold the router's address, so they
/// are built after it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetServices(pub Arc<Services>);

impl Actor for ContactRouter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox.max(16));
    }
}

impl Handler<SetServices> for ContactRouter {
    type Result = ();

    fn handle(&mut self, msg: SetServices, _: &mut Context<Self>) {
        self.services = Some(msg.0);
    }
}

impl Handler<Route> for ContactRouter {
    type Result = ResponseFuture<Result<InputOutcome, InputError>>;

    fn handle(&mut self, Route(incoming): Route, _: &mut Context<Self>) -> Self::Result {
        if self.fenced(incoming.record.contact_id()) {
            return Box::pin(async { Ok(InputOutcome::NotOwned) });
        }
        let addr = self.contact(incoming.record.contact_id());
        // Queued now, in arrival order; the future only waits for the answer.
        let request = addr.send(ContactInput {
            record: incoming.record,
            source_id: incoming.source_id,
        });
        Box::pin(async move {
            request
                .await
                .map_err(|e| InputError(format!("contact actor unavailable: {e}")))?
        })
    }
}

impl Handler<Passivate> for ContactRouter {
    type Result = ();

    fn handle(&mut self, msg: Passivate, _: &mut Context<Self>) {
        self.forget(&msg.contact_id);
    }
}

impl Handler<Resume> for ContactRouter {
    type Result = ();

    fn handle(&mut self, Resume(ids): Resume, _: &mut Context<Self>) {
        for id in ids {
            if !self.fenced(&id) {
                self.contact(&id);
            }
        }
    }
}

impl Handler<Release> for ContactRouter {
    type Result = usize;

    fn handle(&mut self, Release { selects, fence }: Release, _: &mut Context<Self>) -> usize {
        let released: Vec<String> = self
            .contacts
            .keys()
            .filter(|id| selects(id))
            .cloned()
            .collect();
        for id in &released {
            self.forget(id);
        }
        if let Some(name) = fence {
            self.fences.insert(name, selects);
        }
        released.len()
    }
}

impl Handler<Unfence> for ContactRouter {
    type Result = ();

    fn handle(&mut self, Unfence(name): Unfence, _: &mut Context<Self>) {
        self.fences.remove(&name);
    }
}

impl Handler<GetActivity> for ContactRouter {
    type Result = ResponseFuture<Activity>;

    fn handle(
        &mut self,
        GetActivity { among }: GetActivity,
        _: &mut Context<Self>,
    ) -> Self::Result {
        self.contacts.retain(|_, (addr, _)| addr.connected());
        let addrs: Vec<_> = self
            .contacts
            .iter()
            .filter(|(id, _)| among.as_ref().is_none_or(|selects| selects(id)))
            .map(|(_, (addr, _))| addr.clone())
            .collect();
        Box::pin(async move {
            let live = addrs.len();
            let answers =
                futures_util::future::join_all(addrs.iter().map(|a| a.send(IsBusy))).await;
            let busy = answers
                .into_iter()
                .filter(|a| *a.as_ref().unwrap_or(&false))
                .count();
            Activity { live, busy }
        })
    }
}
