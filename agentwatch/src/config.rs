//! The daemon's TOML configuration. Every field has a documented default, so an empty
//! file (or none: `agentwatch run` with no `--config`) is a complete configuration.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::accounting::pricing::PriceOverride;
use crate::capture::CaptureLimits;
use crate::probes::ProbesConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where `calls.jsonl` and `ledger.jsonl` are written. Default `/var/lib/agentwatch`.
    pub data_dir: PathBuf,
    /// The control socket used by the CLI (created 0600, root only).
    /// Default `/run/agentwatch/agentwatch.sock`.
    pub socket: PathBuf,
    /// Host name written in rows. Default: `$AGENTWATCH_HOST_NAME` (a DaemonSet sets it to
    /// the node's name: a pod's own host name is the pod's), else the machine's host name.
    pub host_name: Option<String>,
    /// Kernel probes.
    pub probes: ProbesConfig,
    /// Per-connection buffering bounds.
    pub capture: CaptureLimits,
    /// Bounds of the daemon's own tables.
    pub limits: Limits,
    /// Price overrides, winning over the built-in table (`[[pricing]]`).
    pub pricing: Vec<PriceOverride>,
    /// A LiteLLM `model_prices_and_context_window.json` whose prices win over the built-in
    /// table (the `[[pricing]]` entries win over both). Default: none.
    pub pricing_file: Option<PathBuf>,
    /// Ceilings for every session and the host (`[ceilings]`); none by default.
    pub ceilings: crate::policy::CeilingsConfig,
    /// Processes that start a session at exec, with their own ceilings (`[[session_roots]]`).
    pub session_roots: Vec<crate::policy::SessionRootRule>,
    /// Network sinks (`[sinks.clickhouse]`, `[sinks.otlp]`); JSONL is always on. See README § Export.
    pub sinks: crate::sinks::SinksConfig,
    /// `[metrics]`: the loopback Prometheus endpoint (off by default).
    pub metrics: crate::sinks::MetricsConfig,
    /// `[actions]`: what is kept of the tools a session's agents run (argv off by default).
    pub actions: crate::sessions::actions::ActionsConfig,
    /// `[drift]`: runs of a recurring job that depart from its baseline (observed by default).
    pub drift: crate::sessions::drift::DriftConfig,
    /// `[kubernetes]`: where pod names and labels come from (none by default; container ids
    /// and pod UIDs come from cgroup paths regardless).
    pub kubernetes: crate::workloads::KubernetesConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// TLS connections tracked at once; the least recently used is evicted (counted). Default 16,384.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/agentwatch"),
            socket: PathBuf::from("/run/agentwatch/agentwatch.sock"),
            host_name: None,
            probes: ProbesConfig::default(),
            capture: CaptureLimits::default(),
            limits: Limits::default(),
            pricing: Vec::new(),
            pricing_file: None,
            ceilings: Default::default(),
            session_roots: Vec::new(),
            sinks: crate::sinks::SinksConfig::default(),
            metrics: crate::sinks::MetricsConfig::default(),
            actions: Default::default(),
            drift: Default::default(),
            kubernetes: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        })
    }

    /// The price list: `[[pricing]]` over `pricing_file` over the built-in table.
    pub fn prices(
        &self,
    ) -> Result<crate::accounting::pricing::Pricing, crate::accounting::pricing::PricingError> {
        let mut p = crate::accounting::pricing::Pricing::builtin()?
            .with_overrides(self.pricing.clone())?
            .with_unpriced(self.ceilings.unpriced);
        if let Some(path) = &self.pricing_file {
            p = p.with_litellm_file(path)?;
        }
        Ok(p)
    }

    /// Everything `run` would refuse in this config beyond its keys (which `load` checks):
    /// rule patterns, prices, sinks' settings and URLs, the metrics address. Needs no root
    /// and touches neither the kernel nor the network (sinks are built, not connected).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = crate::policy::check_rules(&self.session_roots) {
            out.push(e.to_string());
        }
        for (index, rule) in self.session_roots.iter().enumerate() {
            if rule.cluster && rule.budget_usd_per_day.is_some() && self.sinks.clickhouse.is_none()
            {
                out.push(
                    crate::policy::PolicyError::ClusterWithoutClickHouse {
                        index,
                        name: rule.name.clone().unwrap_or_default(),
                    }
                    .to_string(),
                );
            }
        }
        if let Err(e) = self.prices() {
            out.push(e.to_string());
        }
        if let Some(w) = self.ceilings.warn_at
            && !(w > 0.0 && w < 1.0)
        {
            out.push(format!(
                "[ceilings] warn_at = {w}: must be a fraction of the ceilings, between 0 and 1 (e.g. 0.8)"
            ));
        }
        let ctx = crate::sinks::destination::BuildContext {
            host: "validate".into(),
            metrics: None,
        };
        for d in self.sinks.destinations() {
            if let Err(e) = d.build(&ctx) {
                out.push(format!("[sinks.{}] {e}", d.name()));
            }
        }
        out
    }

    pub fn host_name(&self) -> String {
        self.host_name
            .clone()
            .or_else(|| {
                std::env::var("AGENTWATCH_HOST_NAME")
                    .ok()
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "unknown".into())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default_and_unknown_keys_are_rejected() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/agentwatch"));
        assert_eq!(c.probes.ring_buffer_bytes, 8 << 20);
        assert!(toml::from_str::<Config>("data_dirr = '/x'").is_err());
        let c: Config = toml::from_str(
            "data_dir = '/tmp/aw'\n[[pricing]]\nmodel = 'm'\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n",
        )
        .unwrap();
        assert_eq!(c.pricing.len(), 1);
    }
}
