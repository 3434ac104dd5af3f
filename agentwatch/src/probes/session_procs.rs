//! The user-space half of "hosts contacted": which processes belong to a session
//! (`SESSION_PROCS`). A session's processes are marked when it opens; the kernel marks their
//! children at fork and forgets each at exit, and reports their TCP connects.
use aya::maps::{HashMap, MapData};

pub struct SessionProcs {
    map: Option<HashMap<MapData, u32, u32>>,
    /// Marks that failed (the map full: that process's connects are not reported; counted).
    pub errors: u64,
}

impl SessionProcs {
    pub fn new(map: HashMap<MapData, u32, u32>) -> Self {
        Self {
            map: Some(map),
            errors: 0,
        }
    }

    /// No kernel behind it (unit tests, a daemon without probes).
    pub fn disabled() -> Self {
        Self {
            map: None,
            errors: 0,
        }
    }

    /// Every process the kernel holds as a session's: (pid, its root's pid).
    pub fn entries(&self) -> Vec<(u32, u32)> {
        let Some(map) = self.map.as_ref() else {
            return Vec::new();
        };
        map.iter().filter_map(Result::ok).collect()
    }

    /// Marks live processes as the session's whose root is `root` (a pid).
    pub fn mark(&mut self, root: u32, tgids: impl IntoIterator<Item = u32>) {
        let Some(map) = self.map.as_mut() else {
            return;
        };
        for tgid in tgids {
            if map.insert(tgid, root, 0).is_err() {
                self.errors += 1;
            }
        }
    }
}
