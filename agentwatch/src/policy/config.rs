//! The `[ceilings]` and `[[session_roots]]` tables of the config.
use serde::{Deserialize, Serialize};

/// What happens when a session reaches a ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Record the hit; let the call pass.
    Observe,
    /// SIGSTOP the whole session tree until `agentwatch approve` or `agentwatch kill`.
    #[default]
    Pause,
    /// SIGKILL the whole session tree, tool processes included.
    Kill,
    /// Keep the processes alive but make their LLM calls fail: LLM connections are cut,
    /// new ones refused with EPERM, and a held write is released onto the cut connection.
    Block,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Observe => "observe",
            Action::Pause => "pause",
            Action::Kill => "kill",
            Action::Block => "block",
        }
    }
}

/// What a restarted daemon does with processes it left paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnRestart {
    /// SIGCONT them; the ceiling still applies, so their next LLM call is stopped again.
    #[default]
    Release,
    /// Keep them stopped, waiting for `agentwatch approve` or `agentwatch kill`.
    Keep,
}

/// Limits of a session. Every limit is optional; none set means no enforcement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// USD per session.
    pub session_usd: Option<f64>,
    /// Tokens (input + output) per session.
    pub session_tokens: Option<u64>,
    /// LLM calls per session.
    pub session_calls: Option<u64>,
    /// LLM calls started in any 60 s window of a session (loop protection).
    pub session_calls_per_minute: Option<u64>,
    /// A call from an agent deeper than this is a ceiling hit (recursion protection).
    pub max_depth: Option<u32>,
    /// What happens at a ceiling. Default `pause`.
    pub action: Option<Action>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.session_usd.is_some()
            || self.session_tokens.is_some()
            || self.session_calls.is_some()
            || self.session_calls_per_minute.is_some()
            || self.max_depth.is_some()
    }

    /// `self` with the fields `over` sets replaced.
    pub fn overlaid(&self, over: &Limits) -> Limits {
        Limits {
            session_usd: over.session_usd.or(self.session_usd),
            session_tokens: over.session_tokens.or(self.session_tokens),
            session_calls: over.session_calls.or(self.session_calls),
            session_calls_per_minute: over
                .session_calls_per_minute
                .or(self.session_calls_per_minute),
            max_depth: over.max_depth.or(self.max_depth),
            action: over.action.or(self.action),
        }
    }
}

/// `[ceilings]`: defaults for every session (the `Limits` fields), and host-wide limits.
/// (Fields are spelled out rather than flattened so that unknown keys are rejected.)
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CeilingsConfig {
    pub session_usd: Option<f64>,
    pub session_tokens: Option<u64>,
    pub session_calls: Option<u64>,
    pub session_calls_per_minute: Option<u64>,
    pub max_depth: Option<u32>,
    pub action: Option<Action>,
    /// USD over a rolling 24 h, all sessions on the host.
    pub host_usd_per_day: Option<f64>,
    /// Paused processes after a daemon restart: `release` (default) or `keep`.
    pub on_restart: OnRestart,
    /// What a call of a model no price lists counts toward USD ceilings: `highest` (default:
    /// the highest input and output rates listed), `zero`, or `block` (the session is stopped
    /// like a ceiling with action `block`).
    pub unpriced: crate::accounting::pricing::Unpriced,
    /// A fraction of every ceiling (e.g. 0.8): a session (or the host's day) that reaches it
    /// raises one `warn` notification per ceiling, before the stop. Default none.
    pub warn_at: Option<f64>,
    /// Seconds a paused session waits for `approve` or `kill`; then it is killed (a
    /// `pause_timeout` notification). Default none: it waits.
    pub pause_timeout_secs: Option<u64>,
    /// A paused session is notified again (`paused`) every this many seconds. Default 3,600;
    /// 0: never.
    pub renotify_secs: Option<u64>,
    /// How often cluster budgets (`cluster = true` rules) are read from ClickHouse. Default 5.
    pub cluster_refresh_secs: Option<u64>,
}

impl CeilingsConfig {
    /// `cluster_refresh_secs`, defaulted (at least 1).
    pub fn cluster_refresh_secs(&self) -> u64 {
        self.cluster_refresh_secs.unwrap_or(5).max(1)
    }

    /// `renotify_secs`, defaulted.
    pub fn renotify_secs(&self) -> u64 {
        self.renotify_secs.unwrap_or(3_600)
    }
}

impl CeilingsConfig {
    pub fn session(&self) -> Limits {
        Limits {
            session_usd: self.session_usd,
            session_tokens: self.session_tokens,
            session_calls: self.session_calls,
            session_calls_per_minute: self.session_calls_per_minute,
            max_depth: self.max_depth,
            action: self.action,
        }
    }
}

/// `[[session_roots]]`: processes that start a session at exec, before their first call,
/// with their own limits. Every `match_*` given must match; patterns are regexes except
/// `match_exe`, which is the executable's file name (or full path when it has a `/`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionRootRule {
    pub match_exe: Option<String>,
    pub match_comm: Option<String>,
    pub match_cmdline: Option<String>,
    pub match_cgroup: Option<String>,
    /// `key=value` (or just `key`): a label of the process's pod, from `[kubernetes]` pod
    /// metadata. Never matches when pod metadata is not configured or not available.
    pub match_pod_label: Option<String>,
    /// A regex on the process's pod namespace, from `[kubernetes]` pod metadata (e.g.
    /// `^team-a$`). Never matches when pod metadata is not configured or not available.
    pub match_pod_namespace: Option<String>,
    /// The rule's name: its shared budget's name in rows (`budget` of a call), status and
    /// notifications. Required with `budget_usd_per_day`.
    pub name: Option<String>,
    /// A budget shared by every session the rule matches: USD over a rolling 24 h, all of
    /// them together (a team's budget). Reaching it is a `budget_usd_per_day` hit for each
    /// session that calls on. Default none.
    pub budget_usd_per_day: Option<f64>,
    /// With `budget_usd_per_day`: the budget is the cluster's, every node's calls of this
    /// budget together, read from `[sinks.clickhouse]` (where every node writes its calls).
    /// Default false: this node's calls only.
    pub cluster: bool,
    pub session_usd: Option<f64>,
    pub session_tokens: Option<u64>,
    pub session_calls: Option<u64>,
    pub session_calls_per_minute: Option<u64>,
    pub max_depth: Option<u32>,
    pub action: Option<Action>,
}

impl SessionRootRule {
    pub fn limits(&self) -> Limits {
        Limits {
            session_usd: self.session_usd,
            session_tokens: self.session_tokens,
            session_calls: self.session_calls,
            session_calls_per_minute: self.session_calls_per_minute,
            max_depth: self.max_depth,
            action: self.action,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_example_parses() {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct C {
            ceilings: CeilingsConfig,
            session_roots: Vec<SessionRootRule>,
        }
        let c: C = toml::from_str(
            r#"
[ceilings]
session_usd = 5.0
session_tokens = 2_000_000
session_calls = 500
max_depth = 4
host_usd_per_day = 200.0
action = "kill"

[[session_roots]]
match_exe = "claude"
session_usd = 2.0
action = "pause"
"#,
        )
        .unwrap();
        assert_eq!(c.ceilings.session().session_tokens, Some(2_000_000));
        assert_eq!(c.ceilings.session().action, Some(Action::Kill));
        assert_eq!(c.ceilings.host_usd_per_day, Some(200.0));
        let rule = &c.session_roots[0];
        let merged = c.ceilings.session().overlaid(&rule.limits());
        assert_eq!(merged.session_usd, Some(2.0));
        assert_eq!(merged.session_tokens, Some(2_000_000));
        assert_eq!(merged.action, Some(Action::Pause));
        assert!(toml::from_str::<C>("[ceilings]\nsesion_usd = 1\n").is_err());
        assert!(
            toml::from_str::<C>("[[session_roots]]\nmatch_exe = 'x'\nsesion_usd = 1\n").is_err()
        );
    }
}
