//! Call events in: the record formats (callpulse's own and Contact Lens), framing and
//! idempotency keys for JSON Lines files and stdin, HTTP ingest, and Kinesis shards read
//! under leases. Everything a source reads becomes an [`Ingested`] fed to the pipeline.

pub mod contact_lens;
pub mod http;
pub mod kinesis;
pub mod record;
pub mod source;

pub use source::{Incoming, Ingested, Position, ReadStats, RejectLog, Rejected, read_jsonl};
