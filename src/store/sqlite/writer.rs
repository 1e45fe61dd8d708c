//! The writer thread: it owns the write connection, takes the requests waiting and commits
//! them group-wise, each in its own savepoint (module docs of `store::sqlite`).

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::schema::{FORGET_SOURCES, get_uint, time_text};
use super::{HIGHEST_SEQ, LINGER, MAX_GROUP, SEQ_CACHE_MAX, is_constraint, sql_int, unavailable};
use crate::events::StoredEvent;
use crate::store::{Appended, ContactRow, StoreError};

/// What the writer thread is asked to do; each answers on its own channel.
pub(super) enum Request {
    Append {
        events: Vec<StoredEvent>,
        reply: oneshot::Sender<Result<Appended, StoreError>>,
    },
    SaveContacts {
        rows: Vec<ContactRow>,
        checkpoint: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    ResetContacts {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    ForgetSources {
        ended_before: DateTime<Utc>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// A request's outcome, held back until its group's transaction has ended.
trait Answer: Send {
    /// Sends the outcome, or `failure` instead when the group did not commit.
    fn send(self: Box<Self>, failure: Option<&str>);
}

struct Outcome<T> {
    result: Result<T, StoreError>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send> Answer for Outcome<T> {
    fn send(self: Box<Self>, failure: Option<&str>) {
        let result = match failure {
            None => self.result,
            Some(why) => Err(StoreError::Unavailable(why.to_string())),
        };
        // A caller that stopped waiting no longer needs the answer.
        let _ = self.reply.send(result);
    }
}

fn outcome<T: Send + 'static>(
    result: Result<T, StoreError>,
    reply: oneshot::Sender<Result<T, StoreError>>,
) -> Box<dyn Answer> {
    Box::new(Outcome { result, reply })
}

impl Request {
    /// The answer of a request that was not applied because its group failed first.
    fn unapplied(self) -> Box<dyn Answer> {
        let not_applied = || StoreError::Unavailable("not applied".into());
        match self {
            Request::Append { reply, .. } => outcome(Err(not_applied()), reply),
            Request::SaveContacts { reply, .. } | Request::ResetContacts { reply } => {
                outcome(Err(not_applied()), reply)
            }
            Request::ForgetSources { reply, .. } => outcome(Err(not_applied()), reply),
        }
    }
}

/// Highest sequence numbers written by the transaction in progress: they reach
/// `Writer::highest` only if it commits.
type Uncommitted = HashMap<String, u64>;

/// The writer thread's state: the write connection and the highest sequence number of
/// recently written contacts (only ever values that were committed or read from the table).
pub(super) struct Writer {
    conn: Connection,
    highest: HashMap<String, u64>,
}

impl Writer {
    pub(super) fn new(conn: Connection) -> Self {
        Self {
            conn,
            highest: HashMap::new(),
        }
    }

    /// Commits group after group until every sender is gone.
    ///
    /// A group takes what is waiting; and while it is smaller than the last one (whose
    /// callers, just answered, are likely to come back at once) it waits for more, up to
    /// [`LINGER`], so that a steady load keeps its groups large.
    pub(super) fn run(mut self, requests: mpsc::Receiver<Request>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut expected = 1;
        while let Ok(request) = requests.recv() {
            let deadline = Instant::now() + LINGER;
            group.push(request);
            while group.len() < MAX_GROUP {
                let next = if group.len() < expected {
                    requests
                        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                        .ok()
                } else {
                    requests.try_recv().ok()
                };
                let Some(request) = next else {
                    break;
                };
                group.push(request);
            }
            expected = group.len();
            self.commit_group(group.drain(..));
        }
    }

    /// Applies `group` in one transaction, a savepoint per request, then answers them all:
    /// with their own outcomes if it committed, with the failure if not.
    fn commit_group(&mut self, group: impl Iterator<Item = Request>) {
        let mut uncommitted = Uncommitted::new();
        let mut answers = Vec::with_capacity(MAX_GROUP);
        let mut fatal = self.execute("BEGIN IMMEDIATE").err().map(|e| e.to_string());
        for request in group {
            let answer = match fatal {
                Some(_) => request.unapplied(),
                None => {
                    let (answer, failed) = self.apply(request, &mut uncommitted);
                    fatal = failed;
                    answer
                }
            };
            answers.push(answer);
        }
        let fatal = fatal.or_else(|| self.execute("COMMIT").err().map(|e| e.to_string()));
        let failure = fatal.map(|why| {
            // Ends the transaction if it is still open; an error here means it is not.
            let _ = self.conn.execute_batch("ROLLBACK");
            format!("SQLite write failed: {why}")
        });
        if failure.is_none() {
            if self.highest.len() + uncommitted.len() > SEQ_CACHE_MAX {
                self.highest.clear();
            }
            self.highest.extend(uncommitted);
        }
        for answer in answers {
            answer.send(failure.as_deref());
        }
    }

    /// Applies one request in its own savepoint. Returns its answer, and what went wrong
    /// if the whole transaction has to be given up.
    fn apply(
        &mut self,
        request: Request,
        uncommitted: &mut Uncommitted,
    ) -> (Box<dyn Answer>, Option<String>) {
        match request {
            Request::Append { events, reply } => {
                let (result, fatal) = self.in_savepoint(|w| w.append(&events, uncommitted));
                (outcome(result, reply), fatal)
            }
            Request::SaveContacts {
                rows,
                checkpoint,
                reply,
            } => {
                let (result, fatal) = self.in_savepoint(|w| w.save_contacts(&rows, checkpoint));
                (outcome(result, reply), fatal)
            }
            Request::ResetContacts { reply } => {
                let (result, fatal) = self.in_savepoint(|w| {
                    w.conn
                        .execute_batch("DELETE FROM contacts; DELETE FROM projection_checkpoint;")
                        .map_err(unavailable)
                });
                (outcome(result, reply), fatal)
            }
            Request::ForgetSources {
                ended_before,
                reply,
            } => {
                let (result, fatal) = self.in_savepoint(|w| w.forget_sources(ended_before));
                (outcome(result, reply), fatal)
            }
        }
    }

    /// Runs `work` inside a savepoint, rolled back if it fails.
    fn in_savepoint<T>(
        &mut self,
        work: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> (Result<T, StoreError>, Option<String>) {
        if let Err(e) = self.execute("SAVEPOINT request") {
            return (Err(unavailable(e)), Some("cannot open a savepoint".into()));
        }
        let result = work(self);
        let end = match result {
            Ok(_) => self.execute("RELEASE request"),
            Err(_) => self
                .execute("ROLLBACK TO request")
                .and_then(|()| self.execute("RELEASE request")),
        };
        match end {
            Ok(()) => (result, None),
            Err(e) => {
                let why = e.to_string();
                (Err(StoreError::Unavailable(why.clone())), Some(why))
            }
        }
    }

    /// Appends one checked batch (see [`EventStore::append`]).
    fn append(
        &mut self,
        events: &[StoredEvent],
        uncommitted: &mut Uncommitted,
    ) -> Result<Appended, StoreError> {
        let first = &events[0];
        let contact = &first.contact_id;
        let first_seq = first.seq;
        let last_seq = first_seq + events.len() as u64 - 1;
        if let Some(source) = &first.source_id {
            let inserted = self
                .conn
                .prepare_cached(
                    "INSERT INTO sources (contact_id, source_id, first_seq, last_seq) \
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut insert| {
                    insert.execute(params![
                        contact,
                        source,
                        sql_int(first_seq),
                        sql_int(last_seq)
                    ])
                });
            match inserted {
                Ok(_) => {}
                Err(e) if is_constraint(&e) => {
                    let (first_seq, last_seq) = self
                        .conn
                        .prepare_cached(
                            "SELECT first_seq, last_seq FROM sources \
                             WHERE contact_id = ?1 AND source_id = ?2",
                        )
                        .and_then(|mut select| {
                            select.query_row(params![contact, source], |row| {
                                Ok((get_uint(row, 0)?, get_uint(row, 1)?))
                            })
                        })
                        .map_err(unavailable)?;
                    return Ok(Appended::Duplicate {
                        first_seq,
                        last_seq,
                    });
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        let expected = first_seq - 1;
        let known = uncommitted
            .get(contact)
            .or_else(|| self.highest.get(contact));
        if known != Some(&expected) {
            // Unknown, or the cache says conflict: the table (with this transaction's own
            // writes) decides.
            let actual = self.highest_in_table(contact)?;
            uncommitted.insert(contact.clone(), actual);
            if actual != expected {
                return Err(StoreError::Conflict {
                    contact_id: contact.clone(),
                    expected,
                    actual,
                });
            }
        }
        let mut insert = self
            .conn
            .prepare_cached(concat!(
                "INSERT INTO events (",
                event_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))
            .map_err(unavailable)?;
        for event in events {
            let inserted = insert.execute(params![
                event.contact_id,
                sql_int(event.seq),
                event.event_id.to_string(),
                time_text(event.recorded_at, SecondsFormat::Micros),
                event.schema_version,
                event.kind,
                event.source_id,
                event.payload,
                event.prev_hash,
                event.hash,
            ]);
            match inserted {
                Ok(_) => {}
                // Taken by another writer of the file: the cache was behind.
                Err(e) if is_constraint(&e) => {
                    drop(insert);
                    uncommitted.remove(contact);
                    self.highest.remove(contact);
                    return Err(StoreError::Conflict {
                        contact_id: contact.clone(),
                        expected,
                        actual: self.highest_in_table(contact)?,
                    });
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        uncommitted.insert(contact.clone(), last_seq);
        Ok(Appended::Written {
            first_seq,
            last_seq,
        })
    }

    /// Deletes the idempotency keys of the contacts whose end was recorded from the last
    /// call's bound up to `ended_before`, and keeps that bound in `sources_forgotten`, so each
    /// ended contact is looked at once (through the partial index `events_ended`).
    fn forget_sources(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError> {
        let from: String = self
            .conn
            .query_row(
                "SELECT ended_before FROM sources_forgotten WHERE id = 0",
                [],
                |row| row.get(0),
            )
            .optional()
            .map_err(unavailable)?
            .unwrap_or_default();
        let until = time_text(ended_before, SecondsFormat::Micros);
        if from >= until {
            return Ok(0);
        }
        let forgotten = self
            .conn
            .execute(FORGET_SOURCES, params![from, until])
            .map_err(unavailable)?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO sources_forgotten (id, ended_before) VALUES (0, ?1)",
                [until],
            )
            .map_err(unavailable)?;
        Ok(forgotten as u64)
    }

    fn highest_in_table(&self, contact_id: &str) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached(HIGHEST_SEQ)
            .and_then(|mut select| select.query_row([contact_id], |row| get_uint(row, 0)))
            .map_err(unavailable)
    }

    fn save_contacts(&self, rows: &[ContactRow], checkpoint: u64) -> Result<(), StoreError> {
        let mut upsert = self
            .conn
            .prepare_cached(concat!(
                "INSERT OR REPLACE INTO contacts (",
                contact_columns!(),
                ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))
            .map_err(unavailable)?;
        for row in rows {
            upsert
                .execute(params![
                    row.contact_id,
                    row.instance_id,
                    row.started_at.map(|t| time_text(t, SecondsFormat::Nanos)),
                    row.ended_at.map(|t| time_text(t, SecondsFormat::Nanos)),
                    row.escalated,
                    row.escalations,
                    row.sentiment.map(|label| label.to_string()),
                    row.summary_version,
                    row.utterances,
                    sql_int(row.last_seq),
                ])
                .map_err(unavailable)?;
        }
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO projection_checkpoint (id, position) VALUES (0, ?1)",
            )
            .and_then(|mut save| save.execute([sql_int(checkpoint)]))
            .map_err(unavailable)?;
        Ok(())
    }

    fn execute(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(drop)
    }
}
