//! Hot reload: watch the configuration's folders, debounce, run the load pipeline off the
//! request path and swap the new table in with one store. An invalid configuration never
//! replaces a valid one. This task is the only writer of the live state; it owns its own
//! status (the last fingerprint, the last errors) and lends admin a read handle.
//!
//! The watch is on folders, not files, so that editors that write through a rename and
//! Kubernetes ConfigMap/Secret mounts (an update swaps the `..data` symlink in the mounted
//! folder) are both seen. The content fingerprint makes spurious events free.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};

use crate::config::ConfigError;
use crate::live::Live;
use crate::load::{self, Loaded};
use crate::routing;

/// Quiet time after the last file event before reading: a rename-write or a `..data` swap
/// arrives as a burst of events within a millisecond or two.
const DEBOUNCE: Duration = Duration::from_millis(10);
/// Upper bound on the wait when events keep coming.
const DEBOUNCE_MAX: Duration = Duration::from_millis(100);

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new table is live, with this version.
    Applied(u64),
    /// The files are as they were at the last attempt.
    Unchanged,
}

pub type Result = std::result::Result<Outcome, Vec<ConfigError>>;

/// A reload asked for from outside (SIGHUP, `Server::reload`), with where to send its result.
pub type Request = oneshot::Sender<Result>;

/// What admin may read of the reloads.
#[derive(Default)]
pub struct Status {
    last_errors: ArcSwapOption<Vec<String>>,
}

impl Status {
    /// The errors of the last failed reload; empty after a good one.
    pub fn last_errors(&self) -> Vec<String> {
        self.last_errors
            .load()
            .as_deref()
            .cloned()
            .unwrap_or_default()
    }
}

/// The reload task's state.
pub struct Reloader {
    path: PathBuf,
    live: Arc<Live>,
    /// Fingerprint of the last configuration read, valid or not (or of its errors):
    /// unchanged files are not loaded twice, and a broken file is reported once.
    fingerprint: u64,
    status: Arc<Status>,
}

impl Reloader {
    /// `fingerprint`: of the configuration `live` was started from.
    pub fn new(path: PathBuf, live: Arc<Live>, fingerprint: u64) -> Self {
        Reloader {
            path,
            live,
            fingerprint,
            status: Arc::default(),
        }
    }

    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Run the pipeline and, when the configuration is valid and changed, make it live.
    pub async fn apply(&mut self, trigger: &str) -> Result {
        let old = self.live.routes.load_full();
        let version = old.version + 1;
        let metrics = &self.live.metrics;
        let loaded = match load::read(&self.path).await {
            Ok(config) if config.fingerprint == self.fingerprint => {
                tracing::debug!("{trigger}: configuration unchanged");
                return Ok(Outcome::Unchanged);
            }
            Ok(config) => load::prepare(config, version, metrics, Some(&old)).await,
            Err(errors) => Err(errors),
        };
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(errors) => {
                // report a broken file once, not at every event while it stays broken
                let fingerprint = fingerprint_of(&errors);
                if std::mem::replace(&mut self.fingerprint, fingerprint) != fingerprint {
                    self.reject(trigger, &errors, old.version);
                }
                return Err(errors);
            }
        };
        self.fingerprint = loaded.config.fingerprint;
        let Loaded {
            config,
            acceptor,
            table,
        } = loaded;
        let (old_proxy, new_proxy) = (&old.config.proxy, &config.proxy);
        if old_proxy.listen != new_proxy.listen || old_proxy.admin != new_proxy.admin {
            tracing::warn!(
                "{}: spec.listen and spec.admin take effect at the next start; still on {} and {}",
                new_proxy.origin,
                old_proxy.listen,
                old_proxy.admin
            );
        }
        if old_proxy.limits.connections != new_proxy.limits.connections {
            tracing::warn!(
                "{}: spec.limits.connections takes effect at the next start",
                new_proxy.origin
            );
        }
        if old_proxy.tls.is_some() != new_proxy.tls.is_some() {
            tracing::warn!(
                "{}: adding or removing spec.tls takes effect at the next start",
                new_proxy.origin
            );
        }
        let changes = routing::diff(&old.config, &config);
        self.live.routes.store(Arc::new(table));
        // new handshakes use the new material; a listener started plain stays plain
        if let (Some(a), true) = (acceptor, old_proxy.tls.is_some()) {
            self.live.tls.store(Some(a));
        }
        self.status.last_errors.store(None);
        metrics.reload(true);
        metrics.config_version.set(version as i64);
        metrics.last_reload_seconds.set(crate::unix_now());
        if changes.is_empty() {
            tracing::info!("{trigger}: configuration version {version} live");
        } else {
            tracing::info!(
                "{trigger}: configuration version {version} live: {}",
                changes.join("; ")
            );
        }
        Ok(Outcome::Applied(version))
    }

    fn reject(&self, trigger: &str, errors: &[ConfigError], version: u64) {
        self.live.metrics.reload(false);
        for e in errors {
            tracing::error!("{e}");
        }
        tracing::error!(
            "{trigger}: configuration rejected ({} error(s)); version {version} keeps serving",
            errors.len()
        );
        let errors = errors.iter().map(ToString::to_string).collect();
        self.status.last_errors.store(Some(Arc::new(errors)));
    }
}

fn fingerprint_of(errors: &[ConfigError]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for e in errors {
        e.to_string().hash(&mut h);
    }
    h.finish()
}

/// The file watcher, registered before the proxy starts serving so that no change made
/// after `Server::start` returns can be missed.
pub struct ConfigWatch {
    reloader: Reloader,
    watcher: Option<notify::RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
    events: mpsc::Receiver<()>,
}

impl ConfigWatch {
    pub fn new(reloader: Reloader) -> ConfigWatch {
        let (tx, events) = mpsc::channel::<()>(1);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                // our own reads show up as access events
                if !matches!(event.kind, EventKind::Access(_)) {
                    let _ = tx.try_send(());
                }
            }
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "cannot watch the configuration for changes ({e}); reload with SIGHUP"
                );
                None
            }
        };
        let mut watch = ConfigWatch {
            reloader,
            watcher,
            watched: BTreeSet::new(),
            events,
        };
        watch.update_watches();
        watch
    }

    /// Reload on file events and on requests (SIGHUP), until every request sender is gone.
    pub async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        loop {
            let (trigger, reply) = tokio::select! {
                Some(()) = self.events.recv() => ("file change", None),
                request = requests.recv() => match request {
                    Some(reply) => ("SIGHUP", Some(reply)),
                    None => return,
                },
            };
            if reply.is_none() {
                let start = tokio::time::Instant::now();
                while start.elapsed() < DEBOUNCE_MAX {
                    match tokio::time::timeout(DEBOUNCE, self.events.recv()).await {
                        Ok(Some(())) => continue,
                        _ => break,
                    }
                }
            }
            let result = self.reloader.apply(trigger).await;
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
            self.update_watches();
        }
    }

    /// Folders to watch: the configuration folder (or a file's folder), and the folders of
    /// the TLS files the live configuration names.
    fn update_watches(&mut self) {
        let Some(w) = &mut self.watcher else { return };
        let table = self.reloader.live.routes.load();
        let path = &self.reloader.path;
        let mut want = BTreeSet::new();
        want.insert(if path.is_dir() {
            path.clone()
        } else {
            parent(path)
        });
        for file in &table.config.files {
            want.insert(parent(file));
        }
        for dir in self.watched.difference(&want) {
            let _ = w.unwatch(dir);
        }
        for dir in want.difference(&self.watched) {
            if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!("cannot watch {}: {e}", dir.display());
            }
        }
        self.watched = want;
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
