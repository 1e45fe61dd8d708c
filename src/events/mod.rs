//! Events: what a contact receives and decides, the envelope they are stored in (sequence,
//! UUID v7, time, schema version, hash chain), upcasting of old schemas, and the contact's
//! pure decision rules.

pub mod contact;
pub mod cues;
pub mod envelope;
pub mod kinds;
pub mod rules;
#[cfg(test)]
pub(crate) mod testing;
pub mod upcast;

pub use envelope::{ChainHead, DecodeError, GENESIS_HASH, StoredEvent};
pub use kinds::*;
