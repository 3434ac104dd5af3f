//! Model prices and the cost of a call.
//!
//! Shape: prices are data, not code. Three layers, looked up in this order:
//! 1. `[[pricing]]` entries of the config;
//! 2. `pricing_file`: a price file in LiteLLM's `model_prices_and_context_window.json` format
//!    (per-token costs, cache reads and writes, 1-hour cache writes, `*_above_<N>k_tokens`
//!    tiers), which many users already keep current;
//! 3. the built-in table `agentwatch/pricing.toml`, embedded at build time.
//!
//! A call's model is looked up as sent, then normalised (routing prefixes of OpenRouter,
//! Bedrock and Vertex, OpenRouter's dotted Claude versions), then without a snapshot suffix
//! (`-2025-08-07`, `-20250929`, `-0613`, `-latest`). Exact names of every layer come before
//! any prefix (a name ending in `*`), and of prefixes the longest wins: `gpt-5-pro` is never
//! priced as `gpt-5`. A model none of them prices is *unpriced*; what that costs a ceiling is
//! the caller's choice ([`Unpriced`]): by default the highest input and output rates listed.
//!
//! Cost follows the OTel token semantics of [`Usage`]: `input_tokens` includes the cache
//! tokens, so the uncached part is `input − cache_read − cache_write`, each part is charged at
//! its own rate (a missing cache rate falls back to the input rate; 1-hour cache writes have
//! their own), and `output_tokens` (which includes reasoning) is charged at the output rate.
//! When the input exceeds a tier's threshold, all of the call's tokens take the tier's rates
//! (Anthropic's and Gemini's long-context pricing, OpenAI's above 272k).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::Usage;

/// Unpriced model names remembered (a caller could send any number of names).
const MAX_UNPRICED_LISTED: usize = 100;
const MAX_UNPRICED_REMEMBERED: usize = 1_000;

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
    #[error(
        "failed to read pricing_file {path}: {reason} (point it at a LiteLLM model_prices_and_context_window.json, or remove it to use the built-in table)"
    )]
    File { path: PathBuf, reason: String },
}

/// What an unpriced call (a model no layer prices) counts toward USD ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Unpriced {
    /// The highest input and output rates of any model listed: a ceiling never fails open.
    #[default]
    Highest,
    /// Nothing (the behaviour of earlier versions): USD ceilings ignore such calls.
    Zero,
    /// Stop the session like a ceiling with action `block` (its later calls fail).
    Block,
}

/// One `[[pricing]]` entry of the user config (and of `pricing.toml`). Rates are USD per
/// million tokens.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    /// Exact model name, or a prefix ending in `*`.
    #[serde(alias = "name")]
    pub model: String,
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// Defaults to `input_per_mtok`.
    #[serde(default)]
    pub cache_read_per_mtok: Option<f64>,
    /// Cache writes (Anthropic's 5-minute TTL). Defaults to `input_per_mtok`.
    #[serde(default)]
    pub cache_write_per_mtok: Option<f64>,
    /// Anthropic's 1-hour cache writes. Defaults to `cache_write_per_mtok`.
    #[serde(default)]
    pub cache_write_1h_per_mtok: Option<f64>,
    /// A call whose input tokens exceed this is charged at the `above_*` rates, all of it.
    #[serde(default)]
    pub above_input_tokens: Option<u64>,
    #[serde(default)]
    pub above_input_per_mtok: Option<f64>,
    #[serde(default)]
    pub above_output_per_mtok: Option<f64>,
    #[serde(default)]
    pub above_cache_read_per_mtok: Option<f64>,
    #[serde(default)]
    pub above_cache_write_per_mtok: Option<f64>,
    #[serde(default)]
    pub above_cache_write_1h_per_mtok: Option<f64>,
}

/// Rates of one band of a model, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Band {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub cache_read_per_mtok: f64,
    pub cache_write_per_mtok: f64,
    pub cache_write_1h_per_mtok: f64,
}

/// Resolved rates of one model: the base band, and bands above input-token thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    pub base: Band,
    /// (threshold, band), ascending.
    pub tiers: Vec<(u64, Band)>,
}

impl Band {
    fn cost_usd(&self, usage: &Usage) -> f64 {
        let cached = usage.cache_read_tokens + usage.cache_write_tokens;
        let uncached = usage.input_tokens.saturating_sub(cached);
        let write_1h = usage.cache_write_1h_tokens.min(usage.cache_write_tokens);
        let write_5m = usage.cache_write_tokens - write_1h;
        (uncached as f64 * self.input_per_mtok
            + usage.cache_read_tokens as f64 * self.cache_read_per_mtok
            + write_5m as f64 * self.cache_write_per_mtok
            + write_1h as f64 * self.cache_write_1h_per_mtok
            + usage.output_tokens as f64 * self.output_per_mtok)
            / 1e6
    }
}

impl Rates {
    /// The band a call of `input_tokens` is charged at.
    pub fn band(&self, input_tokens: u64) -> &Band {
        self.tiers
            .iter()
            .rev()
            .find(|(above, _)| input_tokens > *above)
            .map_or(&self.base, |(_, b)| b)
    }

    /// USD cost of `usage` at these rates.
    pub fn cost_usd(&self, usage: &Usage) -> f64 {
        self.band(usage.input_tokens).cost_usd(usage)
    }
}

/// The file format of `pricing.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PricingFile {
    #[serde(default)]
    model: Vec<PriceOverride>,
}

fn check(model: &str, field: &'static str, v: f64) -> Result<f64, PricingError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(PricingError::InvalidRate {
            model: model.to_string(),
            field,
        })
    }
}

impl PriceOverride {
    fn rates(&self) -> Result<Rates, PricingError> {
        let m = self.model.as_str();
        let input = check(m, "input_per_mtok", self.input_per_mtok)?;
        let cache_write = check(
            m,
            "cache_write_per_mtok",
            self.cache_write_per_mtok.unwrap_or(input),
        )?;
        let base = Band {
            input_per_mtok: input,
            output_per_mtok: check(m, "output_per_mtok", self.output_per_mtok)?,
            cache_read_per_mtok: check(
                m,
                "cache_read_per_mtok",
                self.cache_read_per_mtok.unwrap_or(input),
            )?,
            cache_write_per_mtok: cache_write,
            cache_write_1h_per_mtok: check(
                m,
                "cache_write_1h_per_mtok",
                self.cache_write_1h_per_mtok.unwrap_or(cache_write),
            )?,
        };
        let mut tiers = Vec::new();
        if let Some(above) = self.above_input_tokens {
            let or = |v: Option<f64>, d: f64| v.unwrap_or(d);
            let band = Band {
                input_per_mtok: check(
                    m,
                    "above_input_per_mtok",
                    or(self.above_input_per_mtok, base.input_per_mtok),
                )?,
                output_per_mtok: check(
                    m,
                    "above_output_per_mtok",
                    or(self.above_output_per_mtok, base.output_per_mtok),
                )?,
                cache_read_per_mtok: check(
                    m,
                    "above_cache_read_per_mtok",
                    or(self.above_cache_read_per_mtok, base.cache_read_per_mtok),
                )?,
                cache_write_per_mtok: check(
                    m,
                    "above_cache_write_per_mtok",
                    or(self.above_cache_write_per_mtok, base.cache_write_per_mtok),
                )?,
                cache_write_1h_per_mtok: check(
                    m,
                    "above_cache_write_1h_per_mtok",
                    or(
                        self.above_cache_write_1h_per_mtok,
                        base.cache_write_1h_per_mtok,
                    ),
                )?,
            };
            tiers.push((above, band));
        }
        Ok(Rates { base, tiers })
    }
}

/// Exact names and prefixes (longest first) of one layer.
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
            let rates = e.rates()?;
            if !seen.insert(name.clone()) {
                return Err(PricingError::Duplicate { model: e.model });
            }
            table.insert(name, rates);
        }
        table.sort();
        Ok(table)
    }

    fn insert(&mut self, name: String, rates: Rates) {
        match name.strip_suffix('*') {
            Some(prefix) => self.prefixes.push((prefix.to_string(), rates)),
            None => {
                self.exact.insert(name, rates);
            }
        }
    }

    fn sort(&mut self) {
        self.prefixes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    }

    fn len(&self) -> usize {
        self.exact.len() + self.prefixes.len()
    }

    fn all(&self) -> impl Iterator<Item = &Rates> {
        self.exact
            .values()
            .chain(self.prefixes.iter().map(|(_, r)| r))
    }
}

/// The names a model is looked up by, most specific first: as sent, normalised, and
/// without a snapshot suffix.
pub fn lookup_names(model: &str) -> Vec<String> {
    let raw = model.trim().to_ascii_lowercase();
    let norm = normalise(&raw);
    let bare = strip_snapshot(&norm);
    let mut out = vec![raw];
    for n in [norm, bare] {
        if !n.is_empty() && !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// Routing decorations removed: `vendor/` paths (OpenRouter, LiteLLM, Vertex resource names),
/// Vertex `@version`, Bedrock `region.vendor.` prefixes and `-v1:0` suffixes; Claude versions
/// written with dots (OpenRouter's `claude-opus-4.5`) take Anthropic's dashes.
fn normalise(raw: &str) -> String {
    let mut n = raw.rsplit('/').next().unwrap_or(raw);
    if let Some((head, _)) = n.split_once('@') {
        n = head;
    }
    // `us.anthropic.claude-…`: leading segments of letters only (a version such as `gpt-4.1`
    // has a digit before its dot).
    while let Some((head, rest)) = n.split_once('.') {
        let vendor = !head.is_empty()
            && head.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            && rest.starts_with(|c: char| c.is_ascii_alphabetic());
        if !vendor {
            break;
        }
        n = rest;
    }
    let mut n = n.to_string();
    // Bedrock's `-v1:0` / `-v2`, and a bare `:0`.
    if let Some(i) = n.rfind(":") {
        if n[i + 1..].chars().all(|c| c.is_ascii_digit()) {
            n.truncate(i);
        }
    }
    if let Some(i) = n.rfind("-v") {
        if i + 2 < n.len() && n[i + 2..].chars().all(|c| c.is_ascii_digit()) {
            n.truncate(i);
        }
    }
    if n.starts_with("claude") {
        let b: Vec<char> = n.chars().collect();
        n = b
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let digits = i > 0
                    && i + 1 < b.len()
                    && b[i - 1].is_ascii_digit()
                    && b[i + 1].is_ascii_digit();
                if c == '.' && digits { '-' } else { c }
            })
            .collect();
    }
    n
}

/// `name` without a trailing snapshot: `-2025-08-07`, `-20250929`, `-0613` (OpenAI's
/// month-day), `-001` (Vertex), `-latest`.
fn strip_snapshot(name: &str) -> String {
    let mut n = name.to_string();
    loop {
        let before = n.len();
        let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        if let Some(rest) = n.strip_suffix("-latest") {
            n = rest.to_string();
        } else if n.len() > 11
            && n.as_bytes()[n.len() - 11] == b'-'
            && n.as_bytes()[n.len() - 6] == b'-'
            && n.as_bytes()[n.len() - 3] == b'-'
            && digits(&n[n.len() - 10..n.len() - 6])
            && digits(&n[n.len() - 5..n.len() - 3])
            && digits(&n[n.len() - 2..])
        {
            n.truncate(n.len() - 11);
        } else if let Some((head, tail)) = n.rsplit_once('-')
            && digits(tail)
            && (tail.len() == 8 || tail.len() == 4 || (tail.len() == 3 && tail.starts_with('0')))
            && !head.is_empty()
        {
            n = head.to_string();
        }
        if n.len() == before {
            return n;
        }
    }
}

/// How a call was priced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Priced {
    /// Its cost; `None` when unpriced.
    pub cost_usd: Option<f64>,
    /// The entry that priced it (`claude-opus-4-6` for `anthropic/claude-opus-4.6`).
    pub priced_as: Option<String>,
    /// Unpriced: what it counts toward USD ceilings (by [`Unpriced`]; `None` for `zero`).
    pub unpriced_charge_usd: Option<f64>,
}

impl From<Option<f64>> for Priced {
    fn from(cost_usd: Option<f64>) -> Priced {
        Priced {
            cost_usd,
            ..Priced::default()
        }
    }
}

/// Counts of the layers, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PricingInfo {
    pub builtin_models: usize,
    pub file_models: usize,
    pub override_models: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// File entries not loaded: no per-token input and output cost, or not a text model.
    pub file_entries_skipped: usize,
    pub unpriced: Unpriced,
    pub highest_input_per_mtok: f64,
    pub highest_output_per_mtok: f64,
}

/// `status.pricing`: the layers, and each unpriced model seen with its calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PricingStatus {
    #[serde(flatten)]
    pub info: PricingInfo,
    pub unpriced_calls: u64,
    pub unpriced_models: Vec<UnpricedModel>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnpricedModel {
    pub name: String,
    pub calls: u64,
}

/// The price list: overrides, then a LiteLLM file, then the built-in table.
#[derive(Debug, Default)]
pub struct Pricing {
    overrides: Table,
    file: Table,
    builtin: Table,
    file_path: Option<PathBuf>,
    file_skipped: usize,
    unpriced: Unpriced,
    /// Unpriced models seen, with their calls.
    unpriced_seen: Mutex<HashMap<String, u64>>,
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
        Ok(Pricing {
            builtin: Table::build(file.model)?,
            ..Pricing::default()
        })
    }

    /// Adds the user's `[[pricing]]` entries; they win over every other layer.
    pub fn with_overrides(self, overrides: Vec<PriceOverride>) -> Result<Pricing, PricingError> {
        Ok(Pricing {
            overrides: Table::build(overrides)?,
            ..self
        })
    }

    /// What unpriced calls count toward USD ceilings.
    pub fn with_unpriced(self, unpriced: Unpriced) -> Pricing {
        Pricing { unpriced, ..self }
    }

    pub fn unpriced_mode(&self) -> Unpriced {
        self.unpriced
    }

    /// Loads a LiteLLM price file (`pricing_file`), between the overrides and the built-in
    /// table.
    pub fn with_litellm_file(self, path: &Path) -> Result<Pricing, PricingError> {
        let err = |reason: String| PricingError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let (file, skipped) = litellm_table(&text).map_err(err)?;
        Ok(Pricing {
            file,
            file_path: Some(path.to_path_buf()),
            file_skipped: skipped,
            ..self
        })
    }

    fn layers(&self) -> [&Table; 3] {
        [&self.overrides, &self.file, &self.builtin]
    }

    /// The entry name and rates for `model`: exact names of every layer (overrides first) for
    /// each of its [`lookup_names`], then the longest matching prefix of any layer.
    pub fn entry(&self, model: &str) -> Option<(String, &Rates)> {
        let names = lookup_names(model);
        for n in &names {
            for t in self.layers() {
                if let Some(r) = t.exact.get(n) {
                    return Some((n.clone(), r));
                }
            }
        }
        let mut best: Option<(&str, &Rates)> = None;
        for t in self.layers() {
            for (p, r) in &t.prefixes {
                if names.iter().any(|n| n.starts_with(p.as_str()))
                    && best.is_none_or(|(b, _)| p.len() > b.len())
                {
                    best = Some((p, r));
                }
            }
        }
        best.map(|(p, r)| (format!("{p}*"), r))
    }

    /// Rates for `model` (see [`Pricing::entry`]).
    pub fn rates(&self, model: &str) -> Option<Rates> {
        self.entry(model).map(|(_, r)| r.clone())
    }

    /// The highest input and output rates of any model listed, base or tier.
    pub fn highest_per_mtok(&self) -> (f64, f64) {
        self.layers()
            .iter()
            .flat_map(|t| t.all())
            .flat_map(|r| std::iter::once(&r.base).chain(r.tiers.iter().map(|(_, b)| b)))
            .fold((0.0, 0.0), |(i, o), b| {
                (
                    f64::max(i, b.input_per_mtok.max(b.cache_write_1h_per_mtok)),
                    f64::max(o, b.output_per_mtok),
                )
            })
    }

    /// The highest input rate of any model listed: what an estimated call, whose model is
    /// unknown, is taken to cost at most per input token.
    pub fn highest_input_per_mtok(&self) -> f64 {
        self.highest_per_mtok().0
    }

    /// USD cost of `usage` on `model`; `None` for unpriced models (counted, warned once).
    pub fn cost_usd(&self, model: &str, usage: &Usage) -> Option<f64> {
        self.price(Some(model), usage).cost_usd
    }

    /// Prices a call: by the first of `models` (the response's model first: it names what
    /// served the call, e.g. behind an Azure deployment name) that any layer prices.
    pub fn price_call(&self, models: &[Option<&str>], usage: &Usage) -> Priced {
        for m in models.iter().flatten() {
            if let Some((name, r)) = self.entry(m) {
                return Priced {
                    cost_usd: Some(r.cost_usd(usage)),
                    priced_as: Some(name),
                    unpriced_charge_usd: None,
                };
            }
        }
        self.price(models.iter().flatten().next().copied(), usage)
    }

    /// Prices a call of `model` (`None`: the request named none).
    pub fn price(&self, model: Option<&str>, usage: &Usage) -> Priced {
        if let Some((name, r)) = model.and_then(|m| self.entry(m)) {
            return Priced {
                cost_usd: Some(r.cost_usd(usage)),
                priced_as: Some(name),
                unpriced_charge_usd: None,
            };
        }
        let name = model.unwrap_or("(no model)").to_string();
        let first = self
            .unpriced_seen
            .lock()
            .map(|mut w| {
                if w.len() >= MAX_UNPRICED_REMEMBERED && !w.contains_key(&name) {
                    *w.entry("(other models)".to_string()).or_insert(0) += 1;
                    return false;
                }
                let n = w.entry(name.clone()).or_insert(0);
                *n += 1;
                *n == 1
            })
            .unwrap_or(false);
        if first {
            tracing::warn!(
                model = name,
                unpriced = ?self.unpriced,
                "no price for model; add a [[pricing]] entry or a pricing_file that lists it (until then USD ceilings count its calls as `unpriced` says)"
            );
        }
        let charge = match self.unpriced {
            Unpriced::Zero => None,
            Unpriced::Highest | Unpriced::Block => {
                let (i, o) = self.highest_per_mtok();
                Some((usage.input_tokens as f64 * i + usage.output_tokens as f64 * o) / 1e6)
            }
        };
        Priced {
            cost_usd: None,
            priced_as: None,
            unpriced_charge_usd: charge,
        }
    }

    /// Whether `model` (as a request names it) has no price in any layer.
    pub fn is_unpriced(&self, model: &str) -> bool {
        self.entry(model).is_none()
    }

    /// Unpriced model names seen so far (for `status`).
    pub fn unknown_models(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .unpriced_seen
            .lock()
            .map(|w| w.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn status(&self) -> PricingStatus {
        let mut models: Vec<UnpricedModel> = self
            .unpriced_seen
            .lock()
            .map(|w| {
                w.iter()
                    .map(|(name, calls)| UnpricedModel {
                        name: name.clone(),
                        calls: *calls,
                    })
                    .collect()
            })
            .unwrap_or_default();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        // Bounded: the names are the callers' (at most this many listed; all counted).
        let unpriced_calls = models.iter().map(|m| m.calls).sum();
        models.truncate(MAX_UNPRICED_LISTED);
        PricingStatus {
            info: self.info(),
            unpriced_calls,
            unpriced_models: models,
        }
    }

    pub fn info(&self) -> PricingInfo {
        let (hi, ho) = self.highest_per_mtok();
        PricingInfo {
            builtin_models: self.builtin.len(),
            file_models: self.file.len(),
            override_models: self.overrides.len(),
            file: self.file_path.clone(),
            file_entries_skipped: self.file_skipped,
            unpriced: self.unpriced,
            highest_input_per_mtok: hi,
            highest_output_per_mtok: ho,
        }
    }
}

/// A LiteLLM `model_prices_and_context_window.json`: an object of model name → fields,
/// costs per token. Entries without per-token input and output costs (images, audio by the
/// second, `sample_spec`) and of modes other than text are skipped and counted. A key routed
/// through a provider (`openrouter/anthropic/claude-opus-4.5`) is also found by the name
/// that provider's responses carry (`anthropic/claude-opus-4.5`), unless a key of that name
/// exists.
fn litellm_table(bytes: &[u8]) -> Result<(Table, usize), String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("not a JSON object of model names".to_string())?;
    let mut table = Table::default();
    let mut skipped = 0;
    let mut routed = Vec::new();
    for (key, e) in obj {
        let f = |k: &str| e.get(k).and_then(|x| x.as_f64());
        let text_mode = matches!(
            e.get("mode").and_then(|m| m.as_str()),
            None | Some("chat" | "completion" | "responses" | "embedding")
        );
        let (Some(input), Some(output)) = (
            f("input_cost_per_token"),
            f("output_cost_per_token").or(Some(0.0)),
        ) else {
            skipped += 1;
            continue;
        };
        if !text_mode || key == "sample_spec" {
            skipped += 1;
            continue;
        }
        let mtok = |x: Option<f64>| x.map(|x| x * 1e6);
        let mut entry = PriceOverride {
            model: key.clone(),
            input_per_mtok: input * 1e6,
            output_per_mtok: output * 1e6,
            cache_read_per_mtok: mtok(f("cache_read_input_token_cost")),
            cache_write_per_mtok: mtok(f("cache_creation_input_token_cost")),
            cache_write_1h_per_mtok: mtok(f("cache_creation_input_token_cost_above_1hr")),
            ..PriceOverride::default()
        };
        // Tiers: `input_cost_per_token_above_200k_tokens` and its siblings.
        let mut thresholds: Vec<u64> = e
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .filter_map(|k| {
                let n = k
                    .strip_prefix("input_cost_per_token_above_")?
                    .strip_suffix("k_tokens")?;
                n.parse::<u64>().ok().map(|n| n * 1000)
            })
            .collect();
        thresholds.sort_unstable();
        let Ok(mut rates) = entry.rates() else {
            skipped += 1;
            continue;
        };
        for above in thresholds {
            let sfx = format!("_above_{}k_tokens", above / 1000);
            entry.above_input_tokens = Some(above);
            entry.above_input_per_mtok = mtok(f(&format!("input_cost_per_token{sfx}")));
            entry.above_output_per_mtok = mtok(f(&format!("output_cost_per_token{sfx}")));
            entry.above_cache_read_per_mtok = mtok(f(&format!("cache_read_input_token_cost{sfx}")));
            entry.above_cache_write_per_mtok =
                mtok(f(&format!("cache_creation_input_token_cost{sfx}")));
            entry.above_cache_write_1h_per_mtok = mtok(f(&format!(
                "cache_creation_input_token_cost_above_1hr{sfx}"
            )));
            if let Ok(r) = entry.rates() {
                rates.tiers.extend(r.tiers);
            }
        }
        let name = key.trim().to_ascii_lowercase();
        if let Some(provider) = e.get("litellm_provider").and_then(|p| p.as_str())
            && let Some(rest) = name.strip_prefix(&format!("{provider}/"))
        {
            routed.push((rest.to_string(), rates.clone()));
        }
        table.exact.insert(name, rates);
    }
    for (name, rates) in routed {
        table.exact.entry(name).or_insert(rates);
    }
    table.sort();
    Ok((table, skipped))
}

#[cfg(test)]
#[path = "pricing_tests.rs"]
mod tests;
