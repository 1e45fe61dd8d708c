//! Where a call's effects go: attribute sinks (the attribute log, Amazon Connect) and
//! summary sinks (the summary folder, S3, a webhook), one module per adapter.

pub mod attributes;
pub mod connect;
pub mod s3;
pub mod summaries;
pub mod webhook;
