//! Token usage and its price.
pub mod usage;
pub use usage::{Usage, UsageSource};
