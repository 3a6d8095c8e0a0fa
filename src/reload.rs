//! Hot reload: watch the configuration's folders, debounce, run the load pipeline off the
//! request path and swap the new table in with one store. An invalid configuration never
//! replaces a valid one. This task is the only writer of the live state; it owns its own
//! status (the last fingerprint, the last errors) and lends admin a read handle.
//!
//! The watch is on folders, not files, so that editors that write through a rename and
//! Kubernetes ConfigMap/Secret mounts (an update swaps the `..data` symlink in the mounted
//! folder) are both seen; but only an event that names one of the configuration's own
//! files triggers a read: a YAML file of the folder (or the file itself), a file the
//! documents name (TLS material), or a `..data` swap. A log file kept in the folder is
//! not the configuration. The content fingerprint makes the remaining spurious events
//! (an unchanged file touched) cheap, and a configuration's warnings are logged once,
//! not at every read.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};

use crate::config::{self, ConfigError};
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
    /// The warnings of the last configuration read, all logged already.
    warned: Vec<String>,
    /// The files the last configuration read names, found or not (its folders are
    /// watched, and their changes trigger a read).
    named_files: Vec<PathBuf>,
    status: Arc<Status>,
}

impl Reloader {
    /// `fingerprint`: of the configuration `live` was started from (whose warnings were
    /// logged when it was loaded).
    pub fn new(path: PathBuf, live: Arc<Live>, fingerprint: u64) -> Self {
        let config = live.routes.load().config.clone();
        Reloader {
            path,
            live,
            fingerprint,
            warned: config.warnings.clone(),
            named_files: config.files.clone(),
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
        let live = self.live.clone();
        let metrics = &live.metrics;
        tracing::debug!("{trigger}: reading the configuration");
        let config::Read {
            result,
            warnings,
            named_files,
        } = load::read(&self.path).await;
        self.named_files = named_files;
        let loaded = match result {
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
                    self.warn(warnings);
                    self.reject(trigger, &errors, old.version);
                }
                return Err(errors);
            }
        };
        self.fingerprint = loaded.config.fingerprint;
        self.warn(warnings);
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

    /// Log the warnings of a configuration just read that the one read before did not
    /// have: a reload that changes a weight does not repeat "plain HTTP" every time.
    fn warn(&mut self, warnings: Vec<String>) {
        for w in warnings.iter().filter(|w| !self.warned.contains(w)) {
            tracing::warn!("{w}");
        }
        self.warned = warnings;
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

/// The paths whose changes are changes of the configuration; shared with the watcher's
/// callback, which drops every other event.
struct Interest {
    /// The configuration path: a folder (its YAML files) or a file.
    config: PathBuf,
    folder: bool,
    /// (folder, file name) of each file the documents name.
    named: Vec<(PathBuf, OsString)>,
}

impl Interest {
    fn new(config: &Path, named_files: &[PathBuf]) -> Interest {
        Interest {
            config: config.to_path_buf(),
            folder: config.is_dir(),
            named: named_files
                .iter()
                .filter_map(|f| Some((parent(f), f.file_name()?.to_os_string())))
                .collect(),
        }
    }

    /// Whether an event on `path` (in a watched folder) may change the configuration.
    fn wants(&self, path: &Path) -> bool {
        let Some(name) = path.file_name() else {
            return true; // not a file of a folder: cannot tell, read
        };
        // the kubelet publishes a ConfigMap or Secret update by renaming `..data_tmp`
        // over `..data`: every file of the mount changes at once
        if name.as_encoded_bytes().starts_with(b"..data") || same_path(path, &self.config) {
            return true;
        }
        let dir = parent(path);
        (self.folder && config::is_config_file_name(name) && same_path(&dir, &self.config))
            || self
                .named
                .iter()
                .any(|(d, n)| n == name && same_path(d, &dir))
    }
}

/// Path equality that ignores a leading `./` (notify joins names to the watched path:
/// a configuration `proxy.yaml` is watched as `.`, its events name `./proxy.yaml`).
fn same_path(a: &Path, b: &Path) -> bool {
    fn parts(p: &Path) -> impl Iterator<Item = Component<'_>> {
        p.components().filter(|c| !matches!(c, Component::CurDir))
    }
    parts(a).eq(parts(b))
}

/// The file watcher, registered before the proxy starts serving so that no change made
/// after `Server::start` returns can be missed.
pub struct ConfigWatch {
    reloader: Reloader,
    watcher: Option<notify::RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
    interest: Arc<ArcSwap<Interest>>,
    events: mpsc::Receiver<()>,
}

impl ConfigWatch {
    pub fn new(reloader: Reloader) -> ConfigWatch {
        let (tx, events) = mpsc::channel::<()>(1);
        let interest = Arc::new(ArcSwap::from_pointee(Interest::new(
            &reloader.path,
            &reloader.named_files,
        )));
        let wanted = interest.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            // our own reads show up as access events
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            let wanted = wanted.load();
            // a lost event queue (rescan) or an event without a path: read, to be sure
            if event.need_rescan()
                || event.paths.is_empty()
                || event.paths.iter().any(|p| wanted.wants(p))
            {
                let _ = tx.try_send(());
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
            interest,
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
    /// the files the last configuration read names; and which of their files matter.
    fn update_watches(&mut self) {
        let path = &self.reloader.path;
        let named = &self.reloader.named_files;
        self.interest.store(Arc::new(Interest::new(path, named)));
        let Some(w) = &mut self.watcher else { return };
        let mut want = BTreeSet::new();
        want.insert(if path.is_dir() {
            path.clone()
        } else {
            parent(path)
        });
        for file in named {
            want.insert(parent(file));
        }
        for dir in self.watched.difference(&want) {
            let _ = w.unwatch(dir);
        }
        let mut watched = BTreeSet::new();
        for dir in want {
            if self.watched.contains(&dir) {
                watched.insert(dir);
                continue;
            }
            match w.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                // a folder of a file not there yet: tried again after the next read
                Err(e) => tracing::warn!("cannot watch {}: {e}", dir.display()),
            }
        }
        self.watched = watched;
    }
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configuration_s_own_files_are_of_interest() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("conf");
        std::fs::create_dir(&folder).unwrap();
        let certs = dir.path().join("certs");
        let named = [certs.join("server.pem"), folder.join("ca.pem")];
        let interest = Interest::new(&folder, &named);
        for yes in [
            folder.join("proxy.yaml"),
            folder.join("20-split.yml"),
            folder.join("..data"),
            folder.join("..data_tmp"),
            folder.join("ca.pem"),
            certs.join("server.pem"),
            certs.join("..data"),
            folder.clone(),
        ] {
            assert!(interest.wants(&yes), "{}", yes.display());
        }
        for no in [
            folder.join("proxy.log"),
            folder.join("notes.txt"),
            folder.join(".proxy.yaml.swp"),
            folder.join("proxy.yaml~"),
            folder.join("config.tmp"),
            folder.join("..2026_11_28_01"),
            folder.join("server.pem"),
            certs.join("ca.pem"),
            certs.join("other.yaml"),
            dir.path().join("proxy.yaml"),
        ] {
            assert!(!interest.wants(&no), "{}", no.display());
        }

        // a file: only itself in its folder (and a `..data` swap), with or without `./`
        let interest = Interest::new(Path::new("proxy.yaml"), &[]);
        assert!(interest.wants(Path::new("./proxy.yaml")));
        assert!(interest.wants(Path::new("proxy.yaml")));
        assert!(interest.wants(Path::new("./..data")));
        assert!(!interest.wants(Path::new("./other.yaml")));
        assert!(!interest.wants(Path::new("./proxy.log")));
    }
}
