//! ContactRouter: finds or starts the actor of a record's contact and hands the record over,
//! in arrival order. Contacts are spread over the pipeline's arbiters (one per core) by a
//! hash of their id; finished contacts are forgotten (passivated) and come back from the log
//! if anything arrives for them again.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use actix::prelude::*;

use super::Services;
use super::contact::{ContactActor, ContactInput, InputError, InputOutcome, IsBusy, Stop};
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
/// new owner resumes them from the log); answers how many were stopped.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Release(pub Selector);

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
    contacts: HashMap<String, Addr<ContactActor>>,
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
            mailbox,
        }
    }

    /// Stops a contact's actor for good; anything that arrives for it later reloads it.
    fn forget(&mut self, id: &str) {
        if let Some(addr) = self.contacts.remove(id) {
            addr.do_send(Stop);
        }
    }

    fn contact(&mut self, id: &str) -> Addr<ContactActor> {
        if let Some(addr) = self.contacts.get(id)
            && addr.connected()
        {
            return addr.clone();
        }
        let services = self
            .services
            .clone()
            .expect("services set before records flow");
        let arbiter = &self.arbiters[shard_of(id, self.arbiters.len())];
        let (owned, mailbox) = (id.to_string(), self.mailbox);
        let addr = Supervisor::start_in_arbiter(arbiter, move |ctx| {
            ctx.set_mailbox_capacity(mailbox);
            ContactActor::new(owned, services)
        });
        self.contacts.insert(id.to_string(), addr.clone());
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
            self.contact(&id);
        }
    }
}

impl Handler<Release> for ContactRouter {
    type Result = usize;

    fn handle(&mut self, Release(selects): Release, _: &mut Context<Self>) -> usize {
        let released: Vec<String> = self
            .contacts
            .keys()
            .filter(|id| selects(id))
            .cloned()
            .collect();
        for id in &released {
            self.forget(id);
        }
        released.len()
    }
}

impl Handler<GetActivity> for ContactRouter {
    type Result = ResponseFuture<Activity>;

    fn handle(
        &mut self,
        GetActivity { among }: GetActivity,
        _: &mut Context<Self>,
    ) -> Self::Result {
        self.contacts.retain(|_, addr| addr.connected());
        let addrs: Vec<_> = self
            .contacts
            .iter()
            .filter(|(id, _)| among.as_ref().is_none_or(|selects| selects(id)))
            .map(|(_, addr)| addr.clone())
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
