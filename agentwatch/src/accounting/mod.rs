//! Token usage and its price.
//!
//! `usage` holds the provider-neutral token counts (OTel GenAI semantics); `pricing` turns
//! them into USD from a data file plus user overrides. Nothing here knows about wire formats:
//! providers produce [`Usage`], sessions consume costs.
pub mod pricing;
pub mod usage;
pub use pricing::{PriceOverride, Pricing, PricingError, Rates};
pub use usage::{Estimate, Usage, UsageSource};
