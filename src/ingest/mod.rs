//! Call events in: the record formats (callpulse's own and Contact Lens), framing and
//! idempotency keys for JSON Lines files and stdin, and HTTP ingest. Everything a source
//! reads becomes an [`Ingested`] sent into one bounded channel.

pub mod contact_lens;
pub mod http;
pub mod record;
pub mod source;

pub use source::{Incoming, Ingested, Position, ReadStats, RejectLog, Rejected, read_jsonl};
