//! Substitution: finding paths in the configured caches (best priority first) and
//! importing their closures, references first, several downloads at a time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;

use unrooted_format::narinfo::NarInfo;
use unrooted_format::signature::TrustedKeys;
use unrooted_format::{ContentAddress, StoreDir, StorePath};
use unrooted_store::{CheckSigs, LocalStore, StoreError, ValidPathInfo};

use crate::binary_cache::{BinaryCache, RetryPolicy};
use crate::compression::{can_decompress, decompressor, Bounded};
use crate::disk_cache::NarInfoCache;
use crate::error::{SubstituteError, TransportError};
pub use crate::observer::{Observer, Quiet};
use crate::transport::TransportOptions;

/// How substitution is configured (Nix's settings of the same names).
#[derive(Debug, Clone)]
pub struct SubstituterConfig {
    /// Cache URLs (`substituters`), optionally with `?priority=N`.
    pub urls: Vec<String>,
    /// `trusted-public-keys`.
    pub trusted_keys: TrustedKeys,
    /// `require-sigs`: paths need a signature by a trusted key (or a valid content
    /// address).
    pub require_sigs: bool,
    /// Downloads and queries at once (`max-substitution-jobs`, bounded by
    /// `http-connections`); at least 1.
    pub jobs: usize,
    /// Timeouts and connection pool.
    pub transport: TransportOptions,
    /// Retries of transient failures (`download-attempts`).
    pub retry: RetryPolicy,
}

impl SubstituterConfig {
    /// Nix's defaults for `urls`, requiring signatures by `trusted_keys`.
    pub fn new(urls: Vec<String>, trusted_keys: TrustedKeys) -> Self {
        Self {
            urls,
            trusted_keys,
            require_sigs: true,
            jobs: 16,
            transport: TransportOptions::default(),
            retry: RetryPolicy::default(),
        }
    }
}

/// A path a cache can provide, with the narinfo it gave.
#[derive(Debug, Clone)]
pub struct Substitutable {
    /// The index of the cache in [`Substituter::caches`].
    pub cache: usize,
    /// Its narinfo.
    pub info: NarInfo,
}

/// What [`Substituter::substitute`] did.
#[derive(Debug, Default)]
pub struct SubstituteReport {
    /// Paths imported.
    pub substituted: BTreeSet<StorePath>,
    /// Paths that could not be, with why (their dependents fail too).
    pub failed: BTreeMap<StorePath, SubstituteError>,
}

impl SubstituteReport {
    /// The first failure, if any, as an error.
    pub fn into_result(self) -> Result<BTreeSet<StorePath>, SubstituteError> {
        // A root cause is more useful than "a reference failed".
        let mut failed = self.failed.into_values();
        let mut first = None;
        for e in failed.by_ref() {
            if !matches!(e, SubstituteError::DependencyFailed { .. }) {
                return Err(e);
            }
            first.get_or_insert(e);
        }
        match first {
            Some(e) => Err(e),
            None => Ok(self.substituted),
        }
    }
}

/// The closure of some wanted paths as the caches describe it.
#[derive(Debug, Default)]
pub struct Plan {
    /// Paths to fetch.
    pub fetch: BTreeMap<StorePath, Substitutable>,
    /// Paths neither valid here nor in any cache.
    pub missing: BTreeSet<StorePath>,
}

impl Plan {
    /// Total compressed bytes to download (NAR size where the file size is unknown).
    pub fn download_size(&self) -> u64 {
        self.fetch
            .values()
            .map(|s| match s.info.file_size {
                0 => s.info.nar_size,
                n => n,
            })
            .sum()
    }

    /// Total NAR bytes to unpack.
    pub fn nar_size(&self) -> u64 {
        self.fetch.values().map(|s| s.info.nar_size).sum()
    }
}

/// The configured caches, opened, in the order they are tried.
#[derive(Debug)]
pub struct Substituter {
    store_dir: StoreDir,
    caches: Vec<BinaryCache>,
    disk: Option<Arc<NarInfoCache>>,
    config: SubstituterConfig,
    /// Content addresses known in advance ([`Substituter::hint_content_address`]).
    content_addresses: Mutex<BTreeMap<StorePath, ContentAddress>>,
}

/// Runs `f` over `items` on up to `jobs` threads, keeping the order.
fn parallel_map<T: Sync, U: Send>(items: &[T], jobs: usize, f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    let jobs = jobs.clamp(1, items.len().max(1));
    if jobs == 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<U>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                results.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .into_iter()
        .flatten()
        .collect()
}

impl Substituter {
    /// Opens every cache in `config.urls`, skipping (with a warning to `observer`,
    /// as Nix does) those that cannot be used, and orders them by priority (lower
    /// first; ties keep the configured order).
    pub fn new(
        store_dir: StoreDir,
        config: SubstituterConfig,
        disk: Option<Arc<NarInfoCache>>,
        observer: &dyn Observer,
    ) -> Self {
        let mut seen = BTreeSet::new();
        let urls: Vec<&String> = config.urls.iter().filter(|u| seen.insert(*u)).collect();
        let opened = parallel_map(&urls, config.jobs, |url| {
            BinaryCache::open(
                url,
                &store_dir,
                &config.transport,
                config.retry,
                disk.as_deref(),
            )
        });
        let mut caches = Vec::new();
        for (url, r) in urls.iter().zip(opened) {
            // A cache made for another store directory (`?store=…`) still serves
            // content-addressed paths, under the path they have there (Nix 2.8's
            // substitution goal); it is kept for those only.
            let r = match r {
                Err(SubstituteError::StoreDirMismatch {
                    theirs,
                    url: u,
                    ours,
                }) => match StoreDir::new(&theirs) {
                    Ok(dir) => BinaryCache::open(
                        url,
                        &dir,
                        &config.transport,
                        config.retry,
                        disk.as_deref(),
                    ),
                    Err(_) => Err(SubstituteError::StoreDirMismatch {
                        url: u,
                        theirs,
                        ours,
                    }),
                },
                other => other,
            };
            match r {
                Ok(c) => caches.push(c),
                Err(e) => observer.warn(&format!(
                    "warning: {}; ignoring substituter '{url}'",
                    error_chain(&e)
                )),
            }
        }
        caches.sort_by_key(BinaryCache::priority);
        Self {
            store_dir,
            caches,
            disk,
            config,
            content_addresses: Mutex::new(BTreeMap::new()),
        }
    }

    /// Tells the substituter the content address `path` will have (a fixed output of
    /// a derivation), so that caches for another store directory can be asked for it
    /// under the path it has there.
    pub fn hint_content_address(&self, path: StorePath, ca: ContentAddress) {
        self.content_addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(path, ca);
    }

    /// The usable caches, best first.
    pub fn caches(&self) -> &[BinaryCache] {
        &self.caches
    }

    /// The configuration.
    pub fn config(&self) -> &SubstituterConfig {
        &self.config
    }

    /// Asks the caches in turn for `path`; the first that has it answers. A cache
    /// that fails is reported to `observer` and passed over.
    pub fn query(&self, path: &StorePath, observer: &dyn Observer) -> Option<Substitutable> {
        let ca = self
            .content_addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .cloned();
        for (i, cache) in self.caches.iter().enumerate() {
            let foreign = cache.store_dir() != &self.store_dir;
            // There, a content-addressed path (without references) has the path its
            // content address gives in that store directory.
            let asked = match (&ca, foreign) {
                (_, false) => path.clone(),
                (None, true) => continue,
                (Some(ca), true) => {
                    match ca.store_path(cache.store_dir(), path.name(), &BTreeSet::new(), false) {
                        Ok(p) => p,
                        Err(_) => continue,
                    }
                }
            };
            let shown = cache.store_dir().display(&asked);
            let mut id = 0;
            let mut asking = |started: bool| {
                if started {
                    id = observer.query_started(&shown, cache.url());
                } else {
                    observer.query_finished(id);
                }
            };
            match cache.query_narinfo_noting(&asked, self.disk.as_deref(), &mut asking) {
                Ok(Some(mut info)) => {
                    if foreign {
                        if !info.references.is_empty() || info.ca.as_ref() != ca.as_ref() {
                            continue;
                        }
                        info.store_path = path.clone();
                    }
                    return Some(Substitutable { cache: i, info });
                }
                Ok(None) => {}
                Err(e) => observer.warn(&format!("warning: {}", error_chain(&e))),
            }
        }
        None
    }

    /// [`Substituter::query`] for many paths, in parallel.
    pub fn query_many(
        &self,
        paths: &BTreeSet<StorePath>,
        observer: &dyn Observer,
    ) -> BTreeMap<StorePath, Substitutable> {
        if self.caches.is_empty() {
            return BTreeMap::new();
        }
        let items: Vec<&StorePath> = paths.iter().collect();
        let found = parallel_map(&items, self.config.jobs, |p| self.query(p, observer));
        items
            .into_iter()
            .zip(found)
            .filter_map(|(p, s)| s.map(|s| (p.clone(), s)))
            .collect()
    }

    /// Which of `paths` the caches that invite mass queries have: Nix's
    /// `querySubstitutablePaths` (QuerySubstitutablePaths, what `nix-env -qas` asks),
    /// which asks only the caches for this store directory whose `nix-cache-info`
    /// says `WantMassQuery: 1`. The others still substitute a path asked for by name
    /// ([`Substituter::query`]).
    pub fn query_mass(
        &self,
        paths: &BTreeSet<StorePath>,
        observer: &dyn Observer,
    ) -> BTreeSet<StorePath> {
        let caches: Vec<&BinaryCache> = self
            .caches
            .iter()
            .filter(|c| c.want_mass_query() && c.store_dir() == &self.store_dir)
            .collect();
        if caches.is_empty() {
            return BTreeSet::new();
        }
        let items: Vec<&StorePath> = paths.iter().collect();
        let found = parallel_map(&items, self.config.jobs, |p| {
            caches
                .iter()
                .any(|cache| match cache.query_narinfo(p, self.disk.as_deref()) {
                    Ok(info) => info.is_some(),
                    Err(e) => {
                        observer.warn(&format!("warning: {}", error_chain(&e)));
                        false
                    }
                })
        });
        items
            .into_iter()
            .zip(found)
            .filter(|(_, f)| *f)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// What fetching `paths` and everything they refer to would take: the paths
    /// missing from `store`, found through the caches' references.
    ///
    /// Up to `jobs` lookups run at once, and a path's references are looked up as
    /// soon as its narinfo arrives (not a level of the graph at a time), so a deep
    /// closure costs no more round trips in a row than its longest chain.
    pub fn plan(
        &self,
        store: &LocalStore,
        paths: &BTreeSet<StorePath>,
        observer: &dyn Observer,
    ) -> Result<Plan, SubstituteError> {
        struct Walk {
            queue: Vec<StorePath>,
            seen: BTreeSet<StorePath>,
            busy: usize,
            plan: Plan,
            error: Option<SubstituteError>,
        }
        let walk = Mutex::new(Walk {
            queue: paths.iter().cloned().collect(),
            seen: paths.clone(),
            busy: 0,
            plan: Plan::default(),
            error: None,
        });
        let wake = Condvar::new();
        let lock = || walk.lock().unwrap_or_else(PoisonError::into_inner);
        let work = || {
            let mut w = lock();
            loop {
                if w.error.is_some() {
                    break;
                }
                let Some(p) = w.queue.pop() else {
                    if w.busy == 0 {
                        break;
                    }
                    w = wake.wait(w).unwrap_or_else(PoisonError::into_inner);
                    continue;
                };
                w.busy += 1;
                drop(w);
                let found = match is_valid(store, &p) {
                    Ok(true) => Ok(None),
                    Ok(false) => Ok(Some(self.query(&p, observer))),
                    Err(e) => Err(e),
                };
                w = lock();
                w.busy -= 1;
                match found {
                    Ok(None) => {}
                    Ok(Some(None)) => {
                        w.plan.missing.insert(p);
                    }
                    Ok(Some(Some(s))) => {
                        for r in &s.info.references {
                            if w.seen.insert(r.clone()) {
                                w.queue.push(r.clone());
                            }
                        }
                        w.plan.fetch.insert(p, s);
                    }
                    Err(e) => {
                        w.error.get_or_insert(e);
                    }
                }
                wake.notify_all();
            }
            wake.notify_all();
        };
        let jobs = if self.caches.is_empty() {
            1
        } else {
            self.config.jobs.max(1)
        };
        if jobs == 1 {
            work();
        } else {
            thread::scope(|s| {
                for _ in 1..jobs {
                    s.spawn(work);
                }
                work();
            });
        }
        let w = walk.into_inner().unwrap_or_else(PoisonError::into_inner);
        match w.error {
            Some(e) => Err(e),
            None => Ok(w.plan),
        }
    }

    /// Substitutes `paths` and their closures into `store`: references before
    /// referrers, up to `jobs` downloads at once. Paths already valid are left alone.
    /// A path that fails makes the paths referring to it fail; the others go on.
    pub fn substitute(
        &self,
        store: &LocalStore,
        paths: &BTreeSet<StorePath>,
        observer: &dyn Observer,
    ) -> Result<SubstituteReport, SubstituteError> {
        let plan = self.plan(store, paths, observer)?;
        Ok(self.execute(store, plan, observer))
    }

    /// Fetches what `plan` lists (see [`Substituter::substitute`]).
    pub fn execute(
        &self,
        store: &LocalStore,
        plan: Plan,
        observer: &dyn Observer,
    ) -> SubstituteReport {
        let Plan { fetch, missing } = plan;
        let mut sched = Schedule::default();
        for p in &missing {
            sched.report.failed.insert(
                p.clone(),
                SubstituteError::NotSubstitutable {
                    path: self.store_dir.display(p),
                },
            );
        }
        for (p, s) in &fetch {
            let deps: Vec<&StorePath> = s
                .info
                .references
                .iter()
                .filter(|r| *r != p && (fetch.contains_key(*r) || missing.contains(*r)))
                .collect();
            sched.waiting.insert(p.clone(), deps.len());
            for d in deps {
                sched
                    .dependents
                    .entry(d.clone())
                    .or_default()
                    .push(p.clone());
            }
        }
        sched.unfinished = fetch.len();
        let mut roots: VecDeque<StorePath> = VecDeque::new();
        for (p, n) in &sched.waiting {
            if *n == 0 {
                roots.push_back(p.clone());
            }
        }
        sched.ready = roots;
        for m in &missing {
            sched.fail_dependents(m, &self.store_dir);
        }
        let state = Mutex::new(sched);
        let wake = Condvar::new();
        let jobs = self.config.jobs.clamp(1, fetch.len().max(1));
        thread::scope(|s| {
            for _ in 0..jobs {
                s.spawn(|| {
                    let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
                    loop {
                        if let Some(p) = st.ready.pop_front() {
                            drop(st);
                            let result = match fetch.get(&p) {
                                Some(sub) => self.substitute_one(store, sub, observer),
                                None => Ok(()),
                            };
                            st = state.lock().unwrap_or_else(PoisonError::into_inner);
                            st.finish(&p, result, &self.store_dir);
                            wake.notify_all();
                            continue;
                        }
                        if st.unfinished == 0 {
                            break;
                        }
                        st = wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                    }
                });
            }
        });
        state
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .report
    }

    /// Downloads and imports one path whose references are already valid,
    /// checking its signature (when `require-sigs`) before downloading, and its NAR
    /// hash and size while it streams into the store. Transient download failures
    /// are retried from the start.
    pub fn substitute_one(
        &self,
        store: &LocalStore,
        sub: &Substitutable,
        observer: &dyn Observer,
    ) -> Result<(), SubstituteError> {
        let cache = &self.caches[sub.cache];
        let info = &sub.info;
        let path = self.store_dir.display(&info.store_path);
        let nar_url = cache.nar_url(info);
        if !can_decompress(info.compression) {
            return Err(SubstituteError::UnsupportedCompression {
                path,
                cache: cache.url().to_owned(),
                compression: info.compression.name(),
            });
        }
        let vpi = to_path_info(info);
        if self.config.require_sigs && !vpi.is_trusted(&self.store_dir, &self.config.trusted_keys) {
            return Err(SubstituteError::Untrusted {
                path,
                cache: cache.url().to_owned(),
            });
        }
        let check = if self.config.require_sigs {
            CheckSigs::Check
        } else {
            CheckSigs::DontCheck
        };
        let retry = cache.retry();
        let mut attempt = 0;
        loop {
            let result = self.try_import(store, cache, info, &vpi, check, observer);
            match result {
                Err(SubstituteError::Download { source, .. })
                    if source.is_transient() && attempt + 1 < retry.attempts.max(1) =>
                {
                    observer.warn(&format!(
                        "warning: download of '{nar_url}' failed ({}); retrying",
                        error_chain(&source)
                    ));
                    thread::sleep(retry.delay(attempt));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn try_import(
        &self,
        store: &LocalStore,
        cache: &BinaryCache,
        info: &NarInfo,
        vpi: &ValidPathInfo,
        check: CheckSigs,
        observer: &dyn Observer,
    ) -> Result<(), SubstituteError> {
        let path = self.store_dir.display(&info.store_path);
        let nar_url = cache.nar_url(info);
        let body = cache.open_nar(info)?;
        let expected = match info.file_size {
            0 => body.length.unwrap_or(info.nar_size),
            n => n,
        };
        // A compressed NAR is never much larger than the NAR itself.
        let max_file = match info.file_size {
            0 => info
                .nar_size
                .saturating_add(info.nar_size / 2)
                .saturating_add(1 << 20),
            n => n,
        };
        let id = observer.download_started(&info.store_path, cache.url(), &nar_url, expected);
        let failure = Arc::new(Mutex::new(None));
        let done = Arc::new(AtomicU64::new(0));
        let meter = Meter {
            inner: Bounded::new(body.reader, max_file, "compressed NAR"),
            done: Arc::clone(&done),
            reported: 0,
            expected,
            id,
            observer,
            failure: Arc::clone(&failure),
        };
        let result = match decompressor(info.compression, Box::new(meter)) {
            None => Err(SubstituteError::UnsupportedCompression {
                path: path.clone(),
                cache: cache.url().to_owned(),
                compression: info.compression.name(),
            }),
            Some(plain) => {
                let mut nar = Bounded::new(plain, info.nar_size, "NAR");
                let imported = store.add_to_store_nar(vpi, &mut nar, false, check);
                if imported.is_ok() {
                    // Read the end of the compressed stream too (its checksum, and
                    // so that an HTTP connection can be reused); the NAR itself has
                    // been checked already, so what this finds does not matter.
                    let _ = io::copy(&mut nar, &mut io::sink());
                    let n = done.load(Ordering::Relaxed);
                    observer.download_progress(id, n, n.max(expected));
                }
                imported.map_err(|source| {
                    let transport = failure
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take();
                    match (transport, source) {
                        (Some(e), _) => SubstituteError::Download {
                            url: nar_url.clone(),
                            source: TransportError::Io { source: e },
                        },
                        (
                            None,
                            source @ (StoreError::HashMismatch { .. }
                            | StoreError::SizeMismatch { .. }),
                        ) => SubstituteError::HashMismatch {
                            path: path.clone(),
                            url: nar_url.clone(),
                            source: Box::new(source),
                        },
                        (None, StoreError::Untrusted { .. }) => SubstituteError::Untrusted {
                            path: path.clone(),
                            cache: cache.url().to_owned(),
                        },
                        (None, source) => SubstituteError::Import {
                            path: path.clone(),
                            url: nar_url.clone(),
                            source: Box::new(source),
                        },
                    }
                })
            }
        };
        observer.download_finished(id, result.is_ok());
        result
    }
}

fn is_valid(store: &LocalStore, p: &StorePath) -> Result<bool, SubstituteError> {
    store
        .is_valid_path(p)
        .map_err(|source| SubstituteError::Store {
            source: Box::new(source),
        })
}

/// The record a narinfo gives a path once imported.
pub fn to_path_info(info: &NarInfo) -> ValidPathInfo {
    let mut v = ValidPathInfo::new(info.store_path.clone(), info.nar_hash);
    v.deriver = info.deriver.clone();
    v.references = info.references.clone();
    v.nar_size = info.nar_size;
    v.sigs = info.signatures.iter().map(ToString::to_string).collect();
    v.ca = info.ca;
    v
}

pub use unrooted_format::error_chain;

/// The dependency-ordered work list of [`Substituter::execute`].
#[derive(Default)]
struct Schedule {
    ready: VecDeque<StorePath>,
    waiting: BTreeMap<StorePath, usize>,
    dependents: BTreeMap<StorePath, Vec<StorePath>>,
    unfinished: usize,
    report: SubstituteReport,
}

impl Schedule {
    fn finish(&mut self, p: &StorePath, result: Result<(), SubstituteError>, dir: &StoreDir) {
        self.waiting.remove(p);
        self.unfinished = self.unfinished.saturating_sub(1);
        match result {
            Ok(()) => {
                self.report.substituted.insert(p.clone());
                for d in self.dependents.get(p).cloned().unwrap_or_default() {
                    if let Some(n) = self.waiting.get_mut(&d) {
                        *n -= 1;
                        if *n == 0 {
                            self.ready.push_back(d);
                        }
                    }
                }
            }
            Err(e) => {
                self.report.failed.insert(p.clone(), e);
                self.fail_dependents(p, dir);
            }
        }
    }

    /// Fails every path still waiting that refers to `p`, directly or not.
    fn fail_dependents(&mut self, p: &StorePath, dir: &StoreDir) {
        let mut stack = vec![p.clone()];
        while let Some(q) = stack.pop() {
            for d in self.dependents.get(&q).cloned().unwrap_or_default() {
                if self.waiting.remove(&d).is_some() {
                    self.unfinished = self.unfinished.saturating_sub(1);
                    self.report.failed.insert(
                        d.clone(),
                        SubstituteError::DependencyFailed {
                            path: dir.display(&d),
                            reference: dir.display(&q),
                        },
                    );
                    stack.push(d);
                }
            }
        }
    }
}

/// Counts downloaded bytes for progress, and keeps the transport's error aside so
/// that a broken download is told apart from a broken NAR.
struct Meter<'o, R> {
    inner: R,
    done: Arc<AtomicU64>,
    reported: u64,
    expected: u64,
    id: u64,
    observer: &'o dyn Observer,
    failure: Arc<Mutex<Option<io::Error>>>,
}

/// Progress is reported at most every this many bytes (and at the end).
const PROGRESS_STEP: u64 = 256 * 1024;

impl<R: Read> Read for Meter<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                let done = self.done.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                if n != 0 && done - self.reported >= PROGRESS_STEP {
                    self.reported = done;
                    self.observer
                        .download_progress(self.id, done, self.expected.max(done));
                }
                Ok(n)
            }
            Err(e) => {
                let kind = e.kind();
                let message = e.to_string();
                *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                Err(io::Error::new(kind, message))
            }
        }
    }
}
