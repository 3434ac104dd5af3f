use std::path::Path;
use std::process::{Child, Command};

use super::test_support::FakeProc;
use super::*;

fn k(tgid: u32, start_ticks: u64) -> ProcKey {
    ProcKey { tgid, start_ticks }
}

struct Sleeper(Child);

impl Sleeper {
    fn spawn() -> Self {
        Self(
            Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("spawn sleep"),
        )
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the child has exec'd `sleep` (its comm changes after exec).
/// Waits (bounded) until `pid` has exec'd `comm` and its arguments are in place: the kernel
/// sets the name early in exec and the argument pages only later, so /proc can show the new
/// name with an empty cmdline for a moment.
fn wait_comm(pid: u32, comm: &str) {
    for _ in 0..200 {
        let named = stat::read_stat(Path::new("/proc"), pid).is_some_and(|s| s.comm == comm);
        let args = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|a| !a.is_empty());
        if named && args {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn procs_seed_real_proc_finds_self_parent_and_child() {
    let child = Sleeper::spawn();
    wait_comm(child.pid(), "sleep");
    let tree = ProcTree::seed(Path::new("/proc")).unwrap();
    let me = std::process::id();
    let my = tree.get_by_tgid(me).expect("test process in tree");
    let my_stat = stat::read_stat(Path::new("/proc"), me).unwrap();
    assert_eq!(my.key, k(me, my_stat.start_ticks));
    assert_eq!(my.ppid, my_stat.ppid);
    let parent = tree.parent(my.key).expect("parent in tree");
    assert_eq!(parent.key.tgid, my_stat.ppid);
    assert!(!my.exited);
    assert!(my.children >= 1);

    let c = tree.get_by_tgid(child.pid()).expect("sleep child in tree");
    assert_eq!(c.comm, "sleep");
    assert_eq!(c.cmdline, vec!["sleep", "30"]);
    assert!(c.exe.as_deref().unwrap().ends_with("sleep"));
    assert_eq!(c.parent, Some(my.key));
    assert_eq!(tree.ancestors(c.key).next().map(|p| p.key), Some(my.key));
    assert!(tree.ancestors(c.key).any(|p| p.key.tgid == 1));
    assert_eq!(tree.exited_kept_count(), 0);
}

#[test]
fn procs_ensure_learns_unknown_real_process() {
    let me = std::process::id();
    let mut tree = ProcTree::new(Path::new("/proc"), ProcConfig::default());
    let child = Sleeper::spawn();
    wait_comm(child.pid(), "sleep");
    let key = tree.ensure(child.pid()).expect("ensure child");
    assert_eq!(key.tgid, child.pid());
    let ancestors: Vec<u32> = tree.ancestors(key).map(|p| p.key.tgid).collect();
    assert_eq!(ancestors.first(), Some(&me));
    assert_eq!(ancestors.last(), Some(&1));
    assert_eq!(tree.live_count(), ancestors.len() + 1);
    // Idempotent.
    assert_eq!(tree.ensure(child.pid()), Some(key));
    assert_eq!(tree.live_count(), ancestors.len() + 1);
    // A pid that does not exist.
    assert_eq!(tree.ensure(u32::MAX - 1), None);
}

#[test]
fn procs_fork_exec_exit_sequence_keeps_exited_parent_and_cascades() {
    let fake = FakeProc::new();
    fake.add(1, 0, "init", 1, &["/sbin/init"]);
    fake.add(100, 1, "agent", 500, &["agent"]);
    let mut tree = ProcTree::seed(fake.root()).unwrap();
    assert_eq!(tree.live_count(), 2);

    // 100 forks 200 (bash), 200 forks 300 (sub agent).
    fake.add(200, 100, "agent", 600, &["agent"]);
    assert_eq!(tree.on_fork(100, 200, 6_000_000_000), Some(k(200, 600)));
    fake.add(200, 100, "bash", 600, &["bash", "-c", "sub"]);
    assert_eq!(tree.on_exec(200, "/bin/bash"), Some(k(200, 600)));
    let bash = tree.get_by_tgid(200).unwrap();
    assert_eq!(bash.comm, "bash");
    assert_eq!(bash.cmdline, vec!["bash", "-c", "sub"]);
    assert_eq!(bash.exe.as_deref(), Some("/usr/bin/bash"));
    fake.add(300, 200, "sub", 700, &["sub"]);
    assert_eq!(tree.on_fork(200, 300, 7_000_000_000), Some(k(300, 700)));
    assert_eq!(tree.get(k(100, 500)).unwrap().children, 1);

    // The agent exits first: kept (its descendants live).
    assert_eq!(tree.on_exit(100), Vec::<ProcKey>::new());
    assert!(tree.get(k(100, 500)).unwrap().exited);
    assert!(tree.get_by_tgid(100).is_none());
    assert_eq!(tree.live_count(), 3);
    assert_eq!(tree.exited_kept_count(), 1);
    // bash exits: kept too.
    assert_eq!(tree.on_exit(200), Vec::<ProcKey>::new());
    assert_eq!(tree.exited_kept_count(), 2);
    // The sub agent still sees its original ancestors (the kernel would reparent it).
    let anc: Vec<ProcKey> = tree.ancestors(k(300, 700)).map(|p| p.key).collect();
    assert_eq!(anc, vec![k(200, 600), k(100, 500), k(1, 1)]);
    // The last descendant exits: it, bash and the agent go, in that order; init stays.
    assert_eq!(
        tree.on_exit(300),
        vec![k(300, 700), k(200, 600), k(100, 500)]
    );
    assert_eq!(tree.len(), 1);
    assert_eq!(tree.get(k(1, 1)).unwrap().children, 0);
    // Unknown exit: nothing.
    assert_eq!(tree.on_exit(4242), Vec::<ProcKey>::new());
}

#[test]
fn procs_fork_of_vanished_child_uses_boot_clock_and_parent_info() {
    let fake = FakeProc::new();
    fake.add(1, 0, "init", 1, &["/sbin/init"]);
    fake.add(100, 1, "node", 500, &["node", "agent.js"]);
    let mut tree = ProcTree::seed(fake.root()).unwrap();
    let tck = stat::clk_tck();
    let ts = 12_340_000_000u64; // 12.34 s after boot
    let key = tree.on_fork(100, 101, ts).unwrap();
    assert_eq!(key, k(101, 12_340_000_000 / (1_000_000_000 / tck)));
    let c = tree.get(key).unwrap();
    assert_eq!(c.comm, "node");
    assert_eq!(c.cmdline, vec!["node", "agent.js"]);
    assert_eq!(c.parent, Some(k(100, 500)));
    // Exec with /proc gone keeps the filename.
    assert_eq!(tree.on_exec(101, "/usr/bin/git"), Some(key));
    let c = tree.get(key).unwrap();
    assert_eq!(c.comm, "git");
    assert_eq!(c.exe.as_deref(), Some("/usr/bin/git"));
    assert_eq!(c.cmdline, vec!["/usr/bin/git"]);
}

#[test]
fn procs_pid_reuse_with_other_start_time_is_another_process() {
    let fake = FakeProc::new();
    fake.add(1, 0, "init", 1, &[]);
    fake.add(100, 1, "shell", 50, &[]);
    let mut tree = ProcTree::seed(fake.root()).unwrap();
    fake.add(200, 100, "first", 60, &[]);
    assert_eq!(tree.on_fork(100, 200, 0), Some(k(200, 60)));
    assert_eq!(tree.on_exit(200), vec![k(200, 60)]);
    // Same pid, later start: a different process.
    fake.add(200, 100, "second", 90, &[]);
    assert_eq!(tree.on_fork(100, 200, 0), Some(k(200, 90)));
    assert!(tree.get(k(200, 60)).is_none());
    assert_eq!(tree.get_by_tgid(200).unwrap().comm, "second");

    // Missed exit: the stale entry is evicted when the pid shows up again.
    fake.add(200, 100, "third", 120, &[]);
    assert_eq!(tree.on_fork(100, 200, 0), Some(k(200, 120)));
    assert_eq!(tree.take_removed(), vec![k(200, 90)]);
    assert_eq!(tree.live_count(), 3);

    // ensure() also notices nothing wrong for a known live pid (no /proc read).
    assert_eq!(tree.ensure(200), Some(k(200, 120)));
    // exec sees a different start time in /proc: stale entry replaced.
    fake.add(200, 100, "fourth", 150, &[]);
    assert_eq!(tree.on_exec(200, "/bin/fourth"), Some(k(200, 150)));
    assert_eq!(tree.on_exit(200), vec![k(200, 120), k(200, 150)]);
    assert!(!tree.is_live(k(200, 150)));
}

#[test]
fn procs_ensure_inserts_parent_chain_from_fake_proc() {
    let fake = FakeProc::new();
    fake.add(1, 0, "init", 1, &[]);
    let mut tree = ProcTree::seed(fake.root()).unwrap();
    fake.add(10, 1, "sshd", 5, &[]);
    fake.add(20, 10, "bash", 6, &[]);
    fake.add(30, 20, "claude", 7, &["claude"]);
    assert_eq!(tree.ensure(30), Some(k(30, 7)));
    let anc: Vec<ProcKey> = tree.ancestors(k(30, 7)).map(|p| p.key).collect();
    assert_eq!(anc, vec![k(20, 6), k(10, 5), k(1, 1)]);
    assert_eq!(tree.live_count(), 4);
    assert!(tree.is_live(k(10, 5)));
    // A process that vanished before we looked: unknown, nothing inserted.
    fake.add(40, 20, "gone", 8, &[]);
    fake.remove(40);
    assert_eq!(tree.ensure(40), None);
    assert_eq!(tree.live_count(), 4);
}

#[test]
fn procs_cap_counts_what_is_not_inserted() {
    let fake = FakeProc::new();
    fake.add(1, 0, "init", 1, &[]);
    fake.add(2, 1, "a", 2, &[]);
    fake.add(3, 1, "b", 3, &[]);
    let mut tree = ProcTree::seed_with(fake.root(), ProcConfig { max_procs: 2 }).unwrap();
    assert_eq!(tree.len(), 2);
    assert_eq!(tree.dropped_over_cap(), 1);
    assert!(tree.get_by_tgid(3).is_none());
    assert_eq!(tree.on_fork(1, 4, 0), None);
    assert_eq!(tree.dropped_over_cap(), 2);
}

#[test]
fn procs_seed_missing_root_is_an_error() {
    let err = ProcTree::seed(Path::new("/nonexistent/agentwatch-proc")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/agentwatch-proc"));
}

/// Reparenting moves a process under another; an exited parent kept only for it goes.
#[test]
fn reparent_moves_a_child_and_lets_an_exited_parent_go() {
    let fake = FakeProc::new();
    fake.add(1, 0, "init", 1, &["init"]);
    fake.add(10, 1, "agent", 10, &["agent"]);
    fake.add(20, 1, "sh", 20, &["sh"]);
    fake.add(30, 20, "sleep", 30, &["sleep"]);
    let mut tree = ProcTree::seed_with(fake.root(), ProcConfig::default()).unwrap();
    tree.on_exit(20); // kept: 30 is its child
    assert!(tree.contains(k(20, 20)));
    assert!(!tree.reparent(k(30, 30), k(30, 30)));
    assert!(tree.reparent(k(30, 30), k(10, 10)));
    assert_eq!(tree.parent(k(30, 30)).map(|p| p.key), Some(k(10, 10)));
    assert!(!tree.contains(k(20, 20)));
    assert_eq!(tree.take_removed(), vec![k(20, 20)]);
    // Not under its own descendant.
    assert!(!tree.reparent(k(10, 10), k(30, 30)));
}
