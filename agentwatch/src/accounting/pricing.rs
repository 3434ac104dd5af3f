//! Model prices and the cost of a call.
//!
//! Shape: prices are data, not code. The built-in table is `agentwatch/pricing.toml`, embedded
//! at build time with `include_str!` (so the binary needs no file at run time) and parsed
//! once; users override or extend it with `[[pricing]]` entries in their config, which are
//! looked up first. Names are exact, or prefixes ending in `*` so dated snapshots
//! (`claude-sonnet-4-5-20250929`) need no entry of their own; exact beats prefix and the
//! longest prefix wins, which keeps `gpt-4o*` from swallowing `gpt-4o-mini`.
//!
//! Cost follows the OTel token semantics of [`Usage`]: `input_tokens` includes the cache
//! tokens, so the uncached part is `input − cache_read − cache_write`, each part is charged at
//! its own rate (a missing cache rate falls back to the input rate), and `output_tokens`
//! (which includes reasoning) is charged at the output rate.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde::Deserialize;

use super::Usage;

/// The built-in table.
const BUILTIN_TOML: &str = include_str!("../../pricing.toml");

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PricingError {
    #[error("pricing table is not valid: {reason}")]
    Parse { reason: String },
    #[error("price entry with an empty model name")]
    EmptyName,
    #[error("model {model:?}: {field} must be a finite, non-negative number")]
    InvalidRate { model: String, field: &'static str },
    #[error("model {model:?} is listed twice")]
    Duplicate { model: String },
}

/// One `[[pricing]]` entry of the user config. Rates are USD per million tokens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    /// Exact model name, or a prefix ending in `*`.
    pub model: String,
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// Defaults to `input_per_mtok`.
    #[serde(default)]
    pub cache_read_per_mtok: Option<f64>,
    /// Defaults to `input_per_mtok`.
    #[serde(default)]
    pub cache_write_per_mtok: Option<f64>,
}

/// Resolved rates of one model, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub cache_read_per_mtok: f64,
    pub cache_write_per_mtok: f64,
}

impl Rates {
    /// USD cost of `usage` at these rates.
    pub fn cost_usd(&self, usage: &Usage) -> f64 {
        let cached = usage.cache_read_tokens + usage.cache_write_tokens;
        let uncached = usage.input_tokens.saturating_sub(cached);
        (uncached as f64 * self.input_per_mtok
            + usage.cache_read_tokens as f64 * self.cache_read_per_mtok
            + usage.cache_write_tokens as f64 * self.cache_write_per_mtok
            + usage.output_tokens as f64 * self.output_per_mtok)
            / 1e6
    }
}

/// The file format of `pricing.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PricingFile {
    #[serde(default)]
    model: Vec<ModelEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    name: String,
    input_per_mtok: f64,
    output_per_mtok: f64,
    #[serde(default)]
    cache_read_per_mtok: Option<f64>,
    #[serde(default)]
    cache_write_per_mtok: Option<f64>,
}

/// Exact names and prefixes (longest first).
#[derive(Debug, Default)]
struct Table {
    exact: HashMap<String, Rates>,
    prefixes: Vec<(String, Rates)>,
}

impl Table {
    fn build(entries: Vec<PriceOverride>) -> Result<Table, PricingError> {
        let mut table = Table::default();
        let mut seen = HashSet::new();
        for e in entries {
            let name = e.model.trim().to_ascii_lowercase();
            if name.is_empty() || name == "*" {
                return Err(PricingError::EmptyName);
            }
            let check = |field: &'static str, v: f64| {
                if v.is_finite() && v >= 0.0 {
                    Ok(v)
                } else {
                    Err(PricingError::InvalidRate {
                        model: e.model.clone(),
                        field,
                    })
                }
            };
            let input = check("input_per_mtok", e.input_per_mtok)?;
            let rates = Rates {
                input_per_mtok: input,
                output_per_mtok: check("output_per_mtok", e.output_per_mtok)?,
                cache_read_per_mtok: check(
                    "cache_read_per_mtok",
                    e.cache_read_per_mtok.unwrap_or(input),
                )?,
                cache_write_per_mtok: check(
                    "cache_write_per_mtok",
                    e.cache_write_per_mtok.unwrap_or(input),
                )?,
            };
            if !seen.insert(name.clone()) {
                return Err(PricingError::Duplicate { model: e.model });
            }
            match name.strip_suffix('*') {
                Some(prefix) => table.prefixes.push((prefix.to_string(), rates)),
                None => {
                    table.exact.insert(name, rates);
                }
            }
        }
        table
            .prefixes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(table)
    }

    fn lookup(&self, model: &str) -> Option<Rates> {
        if let Some(r) = self.exact.get(model) {
            return Some(*r);
        }
        self.prefixes
            .iter()
            .find(|(p, _)| model.starts_with(p.as_str()))
            .map(|(_, r)| *r)
    }
}

/// The price list: user overrides over the built-in table.
#[derive(Debug, Default)]
pub struct Pricing {
    overrides: Table,
    builtin: Table,
    /// Unknown models already warned about (warn once per name).
    warned: Mutex<HashSet<String>>,
}

impl Pricing {
    /// The built-in table (`pricing.toml`).
    pub fn builtin() -> Result<Pricing, PricingError> {
        Self::from_toml(BUILTIN_TOML)
    }

    /// A table in the `pricing.toml` format.
    pub fn from_toml(text: &str) -> Result<Pricing, PricingError> {
        let file: PricingFile = toml::from_str(text).map_err(|e| PricingError::Parse {
            reason: e.to_string(),
        })?;
        let entries = file
            .model
            .into_iter()
            .map(|m| PriceOverride {
                model: m.name,
                input_per_mtok: m.input_per_mtok,
                output_per_mtok: m.output_per_mtok,
                cache_read_per_mtok: m.cache_read_per_mtok,
                cache_write_per_mtok: m.cache_write_per_mtok,
            })
            .collect();
        Ok(Pricing {
            builtin: Table::build(entries)?,
            ..Pricing::default()
        })
    }

    /// Adds the user's `[[pricing]]` entries; they win over the built-in table.
    pub fn with_overrides(self, overrides: Vec<PriceOverride>) -> Result<Pricing, PricingError> {
        Ok(Pricing {
            overrides: Table::build(overrides)?,
            ..self
        })
    }

    /// Rates for `model`: overrides, then the built-in table (exact, then longest prefix).
    /// A routed name such as `openai/gpt-4o-mini` (OpenRouter) falls back to the part after
    /// the last `/`.
    pub fn rates(&self, model: &str) -> Option<Rates> {
        let model = model.trim().to_ascii_lowercase();
        let find = |m: &str| self.overrides.lookup(m).or_else(|| self.builtin.lookup(m));
        find(&model).or_else(|| {
            let (_, short) = model.rsplit_once('/')?;
            find(short)
        })
    }

    /// The highest input rate of any model listed (overrides and the built-in table): what
    /// an estimated call, whose model is unknown, is taken to cost at most per input token.
    pub fn highest_input_per_mtok(&self) -> f64 {
        [&self.overrides, &self.builtin]
            .iter()
            .flat_map(|t| {
                t.exact
                    .values()
                    .chain(t.prefixes.iter().map(|(_, r)| r))
                    .map(|r| r.input_per_mtok)
            })
            .fold(0.0, f64::max)
    }

    /// USD cost of `usage` on `model`; `None` (and one warning per name) for unknown models.
    pub fn cost_usd(&self, model: &str, usage: &Usage) -> Option<f64> {
        match self.rates(model) {
            Some(r) => Some(r.cost_usd(usage)),
            None => {
                let first = self
                    .warned
                    .lock()
                    .map(|mut w| w.insert(model.to_string()))
                    .unwrap_or(false);
                if first {
                    tracing::warn!(
                        model,
                        "no price for model; its calls are counted without cost (add a [[pricing]] entry)"
                    );
                }
                None
            }
        }
    }

    /// Unknown model names seen so far (for `status`).
    pub fn unknown_models(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .warned
            .lock()
            .map(|w| w.iter().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: cache_read,
            cache_write_tokens: cache_write,
            reasoning_tokens: 0,
        }
    }

    fn close(a: Option<f64>, b: f64) {
        let a = a.expect("a price");
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn pricing_builtin_parses_and_has_required_models() {
        let p = Pricing::builtin().unwrap();
        let expect = [
            ("gpt-4o", 2.50, 10.0, 1.25, 2.50),
            ("gpt-4o-mini", 0.15, 0.60, 0.075, 0.15),
            ("gpt-4.1", 2.0, 8.0, 0.50, 2.0),
            ("gpt-4.1-mini", 0.40, 1.60, 0.10, 0.40),
            ("gpt-4.1-nano", 0.10, 0.40, 0.025, 0.10),
            ("o3", 2.0, 8.0, 0.50, 2.0),
            ("o4-mini", 1.10, 4.40, 0.275, 1.10),
            ("gpt-5", 1.25, 10.0, 0.125, 1.25),
            ("gpt-5-mini", 0.25, 2.0, 0.025, 0.25),
            ("gpt-5-nano", 0.05, 0.40, 0.005, 0.05),
            ("claude-opus-4-5", 5.0, 25.0, 0.50, 6.25),
            ("claude-opus-4-1", 15.0, 75.0, 1.50, 18.75),
            ("claude-opus-4", 15.0, 75.0, 1.50, 18.75),
            ("claude-sonnet-4-5", 3.0, 15.0, 0.30, 3.75),
            ("claude-sonnet-4", 3.0, 15.0, 0.30, 3.75),
            ("claude-haiku-4-5", 1.0, 5.0, 0.10, 1.25),
            ("claude-3-5-haiku", 0.80, 4.0, 0.08, 1.0),
            ("gemini-2.5-pro", 1.25, 10.0, 0.31, 1.25),
            ("gemini-2.5-flash", 0.30, 2.50, 0.075, 0.30),
            ("gemini-2.5-flash-lite", 0.10, 0.40, 0.025, 0.10),
            ("gemini-2.0-flash", 0.10, 0.40, 0.025, 0.10),
        ];
        for (model, i, o, cr, cw) in expect {
            assert_eq!(
                p.rates(model),
                Some(Rates {
                    input_per_mtok: i,
                    output_per_mtok: o,
                    cache_read_per_mtok: cr,
                    cache_write_per_mtok: cw
                }),
                "{model}"
            );
        }
    }

    #[test]
    fn pricing_prefixes_longest_wins() {
        let p = Pricing::builtin().unwrap();
        let r = |m: &str| p.rates(m).map(|r| r.input_per_mtok);
        assert_eq!(r("gpt-4o-mini-2024-07-18"), Some(0.15));
        assert_eq!(r("gpt-4o-2024-08-06"), Some(2.50));
        assert_eq!(r("claude-sonnet-4-5-20250929"), Some(3.0));
        assert_eq!(r("claude-opus-4-20250514"), Some(15.0));
        assert_eq!(r("claude-opus-4-5-20251101"), Some(5.0));
        assert_eq!(r("gemini-2.5-flash-lite-preview"), Some(0.10));
        assert_eq!(r("o3-2025-04-16"), Some(2.0));
        assert_eq!(r("o3-pro"), None);
        assert_eq!(r("openai/gpt-4o-mini"), Some(0.15));
        assert_eq!(r("GPT-4o-Mini"), Some(0.15));
    }

    #[test]
    fn pricing_cost_formula() {
        let p = Pricing::builtin().unwrap();
        // gpt-4o-mini: 1200 input of which 1024 cached, 300 output.
        // (176 × 0.15 + 1024 × 0.075 + 300 × 0.60) / 1e6
        close(
            p.cost_usd("gpt-4o-mini", &usage(1200, 300, 1024, 0)),
            (176.0 * 0.15 + 1024.0 * 0.075 + 300.0 * 0.60) / 1e6,
        );
        // claude-sonnet-4-5: 5025 input = 25 + 1000 write + 4000 read, 87 output.
        close(
            p.cost_usd("claude-sonnet-4-5-20250929", &usage(5025, 87, 4000, 1000)),
            (25.0 * 3.0 + 4000.0 * 0.30 + 1000.0 * 3.75 + 87.0 * 15.0) / 1e6,
        );
        close(
            p.cost_usd("gpt-5", &usage(1_000_000, 1_000_000, 0, 0)),
            11.25,
        );
    }

    #[test]
    fn pricing_exact_beats_prefix_and_cache_fallback() {
        let p = Pricing::from_toml(
            r#"
            [[model]]
            name = "m*"
            input_per_mtok = 1.0
            output_per_mtok = 2.0
            [[model]]
            name = "m-1"
            input_per_mtok = 10.0
            output_per_mtok = 20.0
            cache_write_per_mtok = 12.5
            "#,
        )
        .unwrap();
        assert_eq!(p.rates("m-1").unwrap().input_per_mtok, 10.0);
        assert_eq!(p.rates("m-10").unwrap().input_per_mtok, 1.0);
        // Missing cache-read rate → the input rate.
        let r = p.rates("m-1").unwrap();
        assert_eq!(
            (r.cache_read_per_mtok, r.cache_write_per_mtok),
            (10.0, 12.5)
        );
        close(
            p.cost_usd("m-1", &usage(100, 10, 50, 20)),
            (30.0 * 10.0 + 50.0 * 10.0 + 20.0 * 12.5 + 10.0 * 20.0) / 1e6,
        );
    }

    #[test]
    fn pricing_overrides_win_and_parse_from_config() {
        #[derive(Deserialize)]
        struct Config {
            pricing: Vec<PriceOverride>,
        }
        let cfg: Config = toml::from_str(
            r#"
            [[pricing]]
            model = "gpt-4o-mini"
            input_per_mtok = 1.0
            output_per_mtok = 4.0
            cache_read_per_mtok = 0.5
            [[pricing]]
            model = "my-local-*"
            input_per_mtok = 0
            output_per_mtok = 0
            "#,
        )
        .unwrap();
        let p = Pricing::builtin()
            .unwrap()
            .with_overrides(cfg.pricing)
            .unwrap();
        let r = p.rates("gpt-4o-mini").unwrap();
        assert_eq!(
            (
                r.input_per_mtok,
                r.output_per_mtok,
                r.cache_read_per_mtok,
                r.cache_write_per_mtok
            ),
            (1.0, 4.0, 0.5, 1.0)
        );
        // The exact override does not cover dated variants; the built-in prefix does.
        assert_eq!(
            p.rates("gpt-4o-mini-2024-07-18").unwrap().input_per_mtok,
            0.15
        );
        close(p.cost_usd("my-local-llama", &usage(1000, 1000, 0, 0)), 0.0);

        let bad: Result<Config, _> = toml::from_str(
            "[[pricing]]\nmodel = \"x\"\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\ncolor = 1\n",
        );
        assert!(bad.is_err(), "unknown fields are refused");
        let negative = PriceOverride {
            model: "x".into(),
            input_per_mtok: -1.0,
            output_per_mtok: 1.0,
            cache_read_per_mtok: None,
            cache_write_per_mtok: None,
        };
        assert_eq!(
            Pricing::builtin()
                .unwrap()
                .with_overrides(vec![negative])
                .err(),
            Some(PricingError::InvalidRate {
                model: "x".into(),
                field: "input_per_mtok"
            })
        );
    }

    #[test]
    fn pricing_unknown_model_is_none_and_warned_once() {
        let p = Pricing::builtin().unwrap();
        assert_eq!(p.cost_usd("mystery-model", &usage(10, 10, 0, 0)), None);
        assert_eq!(p.cost_usd("mystery-model", &usage(10, 10, 0, 0)), None);
        assert_eq!(p.unknown_models(), vec!["mystery-model".to_string()]);
        assert!(matches!(
            Pricing::from_toml("[[model]]\nname = \"a\"\n"),
            Err(PricingError::Parse { .. })
        ));
        assert!(matches!(
            Pricing::from_toml(
                "[[model]]\nname=\"a\"\ninput_per_mtok=1.0\noutput_per_mtok=1.0\n[[model]]\nname=\"A\"\ninput_per_mtok=1.0\noutput_per_mtok=1.0\n"
            ),
            Err(PricingError::Duplicate { .. })
        ));
    }

    #[test]
    fn highest_input_rate_covers_overrides() {
        let p = Pricing::builtin().unwrap();
        let top = p.highest_input_per_mtok();
        assert!(top >= 15.0, "{top}");
        let p = p
            .with_overrides(vec![PriceOverride {
                model: "house-model".into(),
                input_per_mtok: 99.0,
                output_per_mtok: 1.0,
                cache_read_per_mtok: None,
                cache_write_per_mtok: None,
            }])
            .unwrap();
        assert_eq!(p.highest_input_per_mtok(), 99.0);
    }
}
