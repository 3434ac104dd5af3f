//! Drift of a recurring job: sessions whose roots are the same job (same executable, same
//! `argv[0]`, same working directory) are runs of it. Each job keeps a baseline of its last
//! runs (tools run, hosts contacted, directories written with `[actions] files`, calls and
//! tokens); a run that departs from it — a tool or host its runs never had, a write in a
//! directory that is not one they wrote in nor under one, tokens far outside their range —
//! gets `drift` in its ledger row, naming what changed. The baselines live in
//! `<data_dir>/jobs.json` (written atomically at each session close) so they survive restarts.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `[drift]`: when a run of a recurring job has drifted, and what is done about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftConfig {
    /// What a drifting run gets: `observe` (default: only its ledger row, span and metric
    /// say so), `pause` or `kill` (its session is stopped before its next LLM call, as at a
    /// ceiling; `agentwatch approve` lets a paused one go on until it drifts again).
    pub action: DriftAction,
    /// Runs a job's baseline must have before a run can drift from it. Default 3.
    pub min_runs: u64,
    /// A run's total tokens drift when above this many times the most of the baseline's
    /// runs, or below the fewest divided by it. Default 4.
    pub token_factor: u64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            action: DriftAction::Observe,
            min_runs: 3,
            token_factor: 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftAction {
    #[default]
    Observe,
    Pause,
    Kill,
}

impl DriftAction {
    pub fn action(self) -> crate::policy::Action {
        match self {
            DriftAction::Observe => crate::policy::Action::Observe,
            DriftAction::Pause => crate::policy::Action::Pause,
            DriftAction::Kill => crate::policy::Action::Kill,
        }
    }
}

/// What kind of departure a `drift` entry is (`new tool`, `new host`, `tokens`): the label
/// of the drift metric.
pub fn kind(entry: &str) -> &str {
    if entry.starts_with("tokens") {
        "tokens"
    } else {
        entry.split(':').next().unwrap_or(entry)
    }
}
/// Jobs kept (the least recently run are forgotten past it); tools and hosts kept per job.
const MAX_JOBS: usize = 1024;
const MAX_ITEMS: usize = 512;
/// Distinct tool names a run keeps for its job (a run that runs more is not checked past it).
pub const MAX_TOOLS_PER_RUN: usize = 1024;
/// Distinct directories a run keeps for its job (`[actions] files`).
pub const MAX_DIRS_PER_RUN: usize = 1024;
const FILE: &str = "jobs.json";

/// What a job's runs have done.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub runs: u64,
    pub tools: BTreeSet<String>,
    pub hosts: BTreeSet<String>,
    pub tokens_min: u64,
    pub tokens_max: u64,
    /// Directories its runs changed files in, and how many runs were recorded with
    /// `[actions] files` (a baseline built without it has no directories to compare with).
    #[serde(default)]
    pub dirs: BTreeSet<String>,
    #[serde(default)]
    pub file_runs: u64,
    /// Close time of the last run (RFC 3339), to forget the oldest jobs first.
    pub last_run: String,
}

/// Every job's baseline.
#[derive(Debug)]
pub struct Jobs {
    path: Option<PathBuf>,
    jobs: BTreeMap<String, Baseline>,
    min_runs: u64,
    token_factor: u64,
    /// Writes of `jobs.json` that failed (the baselines stay in memory).
    pub save_errors: u64,
}

impl Default for Jobs {
    /// No baselines and nowhere to keep them (tests, a daemon without a data directory).
    fn default() -> Self {
        let cfg = DriftConfig::default();
        Jobs {
            path: None,
            jobs: BTreeMap::new(),
            min_runs: cfg.min_runs,
            token_factor: cfg.token_factor,
            save_errors: 0,
        }
    }
}

/// The key of a job: executable, `argv[0]` and working directory of its root.
pub fn job_key(exe: Option<&str>, argv0: Option<&str>, cwd: Option<&str>) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}",
        exe.unwrap_or("-"),
        argv0.unwrap_or("-"),
        cwd.unwrap_or("-")
    )
}

impl Jobs {
    /// The baselines of `<data_dir>/jobs.json` (none when it is missing or unreadable: a
    /// broken file is set aside as `jobs.json.bad`, not a reason to stop).
    pub fn load(data_dir: &Path, cfg: &DriftConfig) -> Jobs {
        let path = data_dir.join(FILE);
        let jobs = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("{}: {e}; starting with no job baselines", path.display());
                let _ = std::fs::rename(&path, data_dir.join("jobs.json.bad"));
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Jobs {
            path: Some(path),
            jobs,
            min_runs: cfg.min_runs.max(1),
            token_factor: cfg.token_factor.max(1),
            save_errors: 0,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Baseline> {
        self.jobs.get(key).filter(|b| b.runs >= self.min_runs)
    }

    /// Whether a run of `key` that changes a file in `dir` departs from its baseline: the
    /// baseline has enough runs recorded with `[actions] files`, and none of them changed a
    /// file in `dir` or in a directory above it.
    pub fn is_new_dir(&self, key: &str, dir: &str) -> bool {
        self.jobs.get(key).is_some_and(|b| {
            b.file_runs >= self.min_runs
                && !b
                    .dirs
                    .iter()
                    .any(|known| Path::new(dir).starts_with(Path::new(known)))
        })
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// A run of `key` ended: what drifted in it (tokens; tools, hosts and directories are
    /// checked as they happen), then the run joins the baseline, which is saved. `dirs` is
    /// `None` for a run recorded without `[actions] files`.
    pub fn close_run(
        &mut self,
        key: &str,
        tools: &BTreeSet<String>,
        hosts: &BTreeSet<String>,
        dirs: Option<&BTreeSet<String>>,
        tokens: u64,
        ended_at: &str,
    ) -> Vec<String> {
        let mut drift = Vec::new();
        let factor = self.token_factor;
        if let Some(b) = self.get(key) {
            if tokens > b.tokens_max.saturating_mul(factor) {
                drift.push(format!(
                    "tokens {tokens} above {factor}x the most of its last runs ({})",
                    b.tokens_max
                ));
            } else if tokens.saturating_mul(factor) < b.tokens_min {
                drift.push(format!(
                    "tokens {tokens} below 1/{factor}x the fewest of its last runs ({})",
                    b.tokens_min
                ));
            }
        }
        let b = self.jobs.entry(key.to_string()).or_default();
        if b.runs == 0 {
            b.tokens_min = tokens;
        }
        b.runs += 1;
        b.tokens_min = b.tokens_min.min(tokens);
        b.tokens_max = b.tokens_max.max(tokens);
        for t in tools {
            if b.tools.len() < MAX_ITEMS {
                b.tools.insert(t.clone());
            }
        }
        for h in hosts {
            if b.hosts.len() < MAX_ITEMS {
                b.hosts.insert(h.clone());
            }
        }
        if let Some(dirs) = dirs {
            b.file_runs += 1;
            for d in dirs {
                if b.dirs.len() < MAX_ITEMS {
                    b.dirs.insert(d.clone());
                }
            }
        }
        b.last_run = ended_at.to_string();
        while self.jobs.len() > MAX_JOBS {
            let oldest = self
                .jobs
                .iter()
                .min_by(|a, b| a.1.last_run.cmp(&b.1.last_run))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.jobs.remove(&k),
                None => break,
            };
        }
        self.save();
        drift
    }

    fn save(&mut self) {
        let Some(path) = &self.path else {
            return;
        };
        let tmp = path.with_extension("json.tmp");
        let r = serde_json::to_vec(&self.jobs)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, path)
            });
        if let Err(e) = r {
            self.save_errors += 1;
            tracing::error!(
                "cannot write {}: {e}; job baselines stay in memory (check the data directory)",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_job_drifts_only_past_its_baseline_and_it_survives_a_restart() {
        let dir = crate::procs::test_support::TempDir::new("jobs");
        let mut jobs = Jobs::load(dir.path(), &DriftConfig::default());
        let key = job_key(Some("/usr/bin/python3"), Some("python3"), Some("/srv/job"));
        for (i, tokens) in [100, 120, 90].into_iter().enumerate() {
            assert!(jobs.get(&key).is_none(), "no baseline before 3 runs");
            let d = jobs.close_run(
                &key,
                &set(&["git"]),
                &set(&["1.2.3.4:443"]),
                Some(&set(&["/srv/job/out"])),
                tokens,
                &i.to_string(),
            );
            assert!(d.is_empty(), "{d:?}");
        }
        // A restart keeps it.
        let mut jobs = Jobs::load(dir.path(), &DriftConfig::default());
        let b = jobs.get(&key).expect("three runs make a baseline");
        assert_eq!((b.runs, b.tokens_min, b.tokens_max), (3, 90, 120));
        assert!(b.tools.contains("git"));
        assert!(
            jobs.close_run(&key, &set(&["git"]), &set(&[]), None, 110, "4")
                .is_empty()
        );
        // Directories: under one its runs wrote is not new; beside it is.
        assert!(!jobs.is_new_dir(&key, "/srv/job/out"));
        assert!(!jobs.is_new_dir(&key, "/srv/job/out/2026"));
        assert!(jobs.is_new_dir(&key, "/srv/job/outside"));
        assert!(jobs.is_new_dir(&key, "/srv/job"));
        let d = jobs.close_run(&key, &set(&[]), &set(&[]), None, 10_000, "5");
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].starts_with("tokens 10000 above"), "{d:?}");
        // Another job is another baseline.
        let other = job_key(
            Some("/usr/bin/python3"),
            Some("python3"),
            Some("/srv/other"),
        );
        assert!(jobs.get(&other).is_none());
        assert!(!jobs.is_new_dir(&other, "/anywhere"));
        // A job whose runs were recorded without `[actions] files` has no directories to
        // depart from.
        let quiet = job_key(Some("/bin/sh"), Some("sh"), Some("/"));
        for i in 0..3 {
            jobs.close_run(&quiet, &set(&[]), &set(&[]), None, 1, &i.to_string());
        }
        assert!(!jobs.is_new_dir(&quiet, "/etc"));
        // A broken file is set aside, not fatal.
        std::fs::write(dir.path().join("jobs.json"), b"{not json").unwrap();
        assert!(Jobs::load(dir.path(), &DriftConfig::default()).is_empty());
        assert!(dir.path().join("jobs.json.bad").exists());
    }
}
