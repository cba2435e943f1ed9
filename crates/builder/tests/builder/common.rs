//! A private store and a scheduler whose builders (static busybox) run directly
//! (`sandbox = false`, so no user namespaces are needed), shared by the build crate's
//! tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use unrooted_builder::{
    BuildObserver, BuildOptions, BuildResult, BuilderConfig, Scheduler, Status, Target,
};
use unrooted_format::derivation::{Derivation, DerivationOutput, DrvHasher};
use unrooted_format::{StoreDir, StorePath};
use unrooted_sandbox::Sandbox;
use unrooted_store::{LocalStore, LocalStoreConfig};

pub const BUSYBOX: &str = "/bin/busybox";

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub store: LocalStore,
    pub sched: Scheduler,
}

pub fn lab(max_jobs: usize) -> Option<Lab> {
    if !Path::new(BUSYBOX).exists() {
        assert!(
            !unrooted_testkit::in_ci(),
            "/bin/busybox is missing, but CI=true"
        );
        eprintln!("skipping: /bin/busybox is missing");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mut cfg = LocalStoreConfig::new(
        StoreDir::new(store_dir.to_str().unwrap()).unwrap(),
        store_dir.clone(),
        dir.path().join("state"),
        dir.path().join("log"),
    );
    cfg.fsync_paths = false;
    let store = LocalStore::open(cfg).unwrap();
    let mut bc = BuilderConfig::new(Sandbox::new("/nonexistent", vec![]));
    bc.sandbox = false;
    bc.max_jobs = max_jobs;
    bc.tmp_dir = dir.path().to_path_buf();
    bc.log_dir = Some(dir.path().join("log"));
    let sched = Scheduler::new(bc).unwrap();
    Some(Lab { dir, store, sched })
}

impl Lab {
    /// Adds a derivation running `busybox sh -c script` with `deps` as inputs; `$out`
    /// is its output. Returns the `.drv` path.
    pub fn drv(&self, name: &str, script: &str, deps: &[&StorePath]) -> StorePath {
        self.drv_with(name, script, deps, &["out"], &[])
    }

    /// As [`Lab::drv`], with the given outputs (each an environment variable) and
    /// more environment (`exportReferencesGraph`, `allowedReferences`, …).
    pub fn drv_with(
        &self,
        name: &str,
        script: &str,
        deps: &[&StorePath],
        outputs: &[&str],
        env_extra: &[(&str, &str)],
    ) -> StorePath {
        let dir = self.store.store_dir().clone();
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("builder", BUSYBOX),
            ("name", name),
            ("system", &unrooted_builder::default_system()),
            ("outputs", &outputs.join(" ")),
        ] {
            env.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        for o in outputs {
            env.insert(o.as_bytes().to_vec(), Vec::new());
        }
        let mut script = script.to_owned();
        let mut input_drvs = BTreeMap::new();
        for (i, d) in deps.iter().enumerate() {
            input_drvs.insert((*d).clone(), BTreeSet::from(["out".to_owned()]));
            let out = self.out_of(d);
            env.insert(format!("dep{i}").into_bytes(), out.into_bytes());
        }
        for (k, v) in env_extra {
            env.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        script = format!("set -e; B={BUSYBOX}; {script}");
        let mut drv = Derivation {
            name: name.to_owned(),
            outputs: outputs
                .iter()
                .map(|o| ((*o).to_owned(), DerivationOutput::Deferred))
                .collect(),
            input_drvs,
            input_srcs: BTreeSet::new(),
            system: unrooted_builder::default_system().into_bytes(),
            builder: BUSYBOX.as_bytes().to_vec(),
            args: vec![b"sh".to_vec(), b"-c".to_vec(), script.into_bytes()],
            env,
        };
        let store = &self.store;
        let load = |p: &StorePath| unrooted_builder::load_derivation(store, p);
        DrvHasher::new(dir.clone(), load)
            .fill_output_paths(&mut drv)
            .unwrap();
        let info = self
            .store
            .add_text(
                &format!("{name}.drv"),
                &drv.to_aterm(&dir),
                &drv.references(),
                false,
            )
            .unwrap();
        info.path
    }

    pub fn out_of(&self, drv: &StorePath) -> String {
        self.output(drv, "out")
    }

    /// The printed path of `drv`'s output `name`.
    pub fn output(&self, drv: &StorePath, name: &str) -> String {
        let map = self.store.query_derivation_output_map(drv).unwrap();
        self.store.print_path(&map[name])
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn build(&self, drvs: &[&StorePath], opts: &BuildOptions) -> (Vec<BuildResult>, Recorder) {
        let targets: Vec<Target> = drvs
            .iter()
            .map(|d| Target::Built {
                drv: (*d).clone(),
                outputs: None,
            })
            .collect();
        let mut rec = Recorder::default();
        let r = self.sched.build(&self.store, &targets, opts, &mut rec);
        (r, rec)
    }
}

#[derive(Default)]
pub struct Recorder {
    pub started: Vec<StorePath>,
    pub lines: Vec<String>,
    pub hooks: Vec<String>,
    pub hook_lines: Vec<String>,
    pub finished: Vec<(StorePath, Status)>,
    pub disconnect_after: Option<Instant>,
}

impl BuildObserver for Recorder {
    fn started(&mut self, drv: &StorePath) -> bool {
        self.started.push(drv.clone());
        true
    }
    fn log_line(&mut self, _drv: &StorePath, line: &str) -> bool {
        self.lines.push(line.to_owned());
        true
    }
    fn note(&mut self, _drv: &StorePath, text: &str) -> bool {
        self.lines.push(text.to_owned());
        true
    }
    fn hook_started(&mut self, _drv: &StorePath, hook: &str) -> bool {
        self.hooks.push(hook.to_owned());
        true
    }
    fn hook_line(&mut self, _drv: &StorePath, line: &str) -> bool {
        self.hook_lines.push(line.to_owned());
        true
    }
    fn finished(&mut self, drv: &StorePath, result: &BuildResult) -> bool {
        self.finished.push((drv.clone(), result.status));
        true
    }
    fn connected(&mut self) -> bool {
        self.disconnect_after.is_none_or(|t| Instant::now() < t)
    }
}
