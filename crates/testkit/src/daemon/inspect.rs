//! What a test checks on the daemon and its store: the store's consistency, the
//! daemon's `/proc` entries, its descendants and temporaries.

use std::fs;

use super::TestDaemon;

impl TestDaemon {
    /// Asserts that `nix-store --verify --check-contents`, run by the store owner in
    /// local mode (without the daemon), finds the store clean.
    pub fn assert_store_clean(&self) {
        let out = self
            .owner_local("nix-store")
            .args(["--verify", "--check-contents"])
            .output()
            .expect("spawning nix-store --verify");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("error") && !stderr.contains("warning"),
            "nix-store --verify --check-contents found problems ({}): {stderr}",
            out.status
        );
    }

    /// The valid paths as Nix sees them in local mode, sorted, one per element.
    pub fn valid_paths_local(&self) -> Vec<String> {
        let mut paths: Vec<String> = self
            .owner_ok("nix", &["path-info", "--all"])
            .lines()
            .map(str::to_owned)
            .collect();
        paths.sort();
        paths
    }

    /// Lines of `/proc/<daemon pid>/status` starting with `key` (e.g. `CapEff`), with
    /// the key removed; the daemon is the process `setpriv` execs into, so the pid is
    /// the child's.
    pub fn proc_status(&self, key: &str) -> String {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading the daemon's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
            .unwrap_or_else(|| panic!("{key} missing from /proc status"))
            .trim()
            .to_owned()
    }

    /// The number of file descriptors the daemon has open.
    pub fn fd_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The daemon's resident memory (`VmRSS`) in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status("VmRSS")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .expect("VmRSS in kB")
    }

    /// The names of the `.unrooted-tmp-*` entries in the store directory.
    pub fn store_temporaries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.store_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(".unrooted-tmp-"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The process ids of every descendant of `pid` (children, their children, …),
    /// from the parent links in `/proc/<pid>/stat`.
    pub fn descendants(pid: u32) -> Vec<u32> {
        let mut parent_of: Vec<(u32, u32)> = Vec::new();
        if let Ok(dir) = fs::read_dir("/proc") {
            for e in dir.filter_map(|e| e.ok()) {
                let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
                    continue;
                };
                // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
                let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                    continue;
                };
                if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|v| v.parse().ok()) {
                    parent_of.push((p, ppid));
                }
            }
        }
        let mut out = Vec::new();
        let mut frontier = vec![pid];
        while let Some(q) = frontier.pop() {
            for &(p, pp) in &parent_of {
                if pp == q && !out.contains(&p) {
                    out.push(p);
                    frontier.push(p);
                }
            }
        }
        out
    }
}
