//! Test support for agentwatch: the mock LLM server (`mock`) used by the
//! privileged integration tests, and helpers to run it.

pub mod clickhouse;
pub mod harness;
pub mod history;
pub mod mock;
pub mod otlp_receiver;
