#![warn(missing_docs)]
//! callpulse: real-time call analytics for contact centres. Judges the sentiment of every
//! customer utterance with a small language model, escalates when a customer turns negative,
//! and summarises every call.

pub mod actors;
pub mod api;
pub mod app;
pub mod audio;
pub mod aws;
pub mod backoff;
pub mod config;
pub mod eval;
pub mod events;
pub mod ingest;
pub mod metrics;
pub mod models;
pub mod redaction;
pub mod sinks;
pub mod store;
