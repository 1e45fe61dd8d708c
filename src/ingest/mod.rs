//! Call events in: the record format of JSON Lines files, stdin, HTTP bodies and Kinesis.

pub mod record;
