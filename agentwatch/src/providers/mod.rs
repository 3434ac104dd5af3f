//! LLM APIs recognised by request shape; each turns a request and a response into an [`LlmCall`].
pub mod call;
pub use call::{LlmCall, LlmRequest};
