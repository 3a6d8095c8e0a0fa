//! Hot reload: watch the configuration's folders, debounce, load, validate, build a new
//! routing table off the request path and swap it in with one store. An invalid
//! configuration never replaces a valid one.
//!
//! The watch is on folders, not files, so that editors that write through a rename and
//! Kubernetes ConfigMap/Secret mounts (an update swaps the `..data` symlink in the mounted
//! folder) are both seen. The content fingerprint makes spurious events free.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::app::Shared;
use crate::config::{self, ConfigError};
use crate::routing::{self, RoutingTable};
use crate::tls;

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

/// The file watcher, registered before the proxy starts serving so that no change made
/// after `Server::start` returns can be missed.
pub struct ConfigWatch {
    shared: &'static Shared,
    watcher: Option<notify::RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
    events: mpsc::Receiver<()>,
}

impl ConfigWatch {
    pub fn new(shared: &'static Shared) -> ConfigWatch {
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
            shared,
            watcher,
            watched: BTreeSet::new(),
            events,
        };
        update_watches(&mut watch.watcher, &mut watch.watched, shared);
        watch
    }

    /// Run forever: reload on file events and on `Shared::reload_now` (SIGHUP).
    pub async fn run(mut self) {
        let shared = self.shared;
        loop {
            let trigger: &'static str = tokio::select! {
                Some(()) = self.events.recv() => "file change",
                () = shared.reload_now.notified() => "SIGHUP",
            };
            if trigger == "file change" {
                let start = tokio::time::Instant::now();
                while start.elapsed() < DEBOUNCE_MAX {
                    match tokio::time::timeout(DEBOUNCE, self.events.recv()).await {
                        Ok(Some(())) => continue,
                        _ => break,
                    }
                }
            }
            let _ = apply(shared, trigger).await;
            update_watches(&mut self.watcher, &mut self.watched, shared);
        }
    }
}

/// Folders to watch: the configuration folder (or a file's folder), and the folders of
/// the TLS files the live configuration names.
fn update_watches(
    watcher: &mut Option<notify::RecommendedWatcher>,
    watched: &mut BTreeSet<PathBuf>,
    shared: &Shared,
) {
    let Some(w) = watcher else { return };
    let table = shared.routes.load();
    let mut want = BTreeSet::new();
    let path = &shared.config_path;
    want.insert(if path.is_dir() {
        path.clone()
    } else {
        parent(path)
    });
    for file in &table.config.files {
        want.insert(parent(file));
    }
    for dir in watched.difference(&want) {
        let _ = w.unwatch(dir);
    }
    for dir in want.difference(watched) {
        if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!("cannot watch {}: {e}", dir.display());
        }
    }
    *watched = want;
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `config::load` on the blocking pool: file reads stay off the async workers.
pub async fn load_config(path: PathBuf) -> Result<config::Config, Vec<ConfigError>> {
    tokio::task::spawn_blocking(move || config::load(&path))
        .await
        .unwrap_or_else(|e| {
            Err(vec![ConfigError {
                file: PathBuf::new(),
                document: None,
                object: None,
                field: None,
                reason: format!("loader panicked: {e}"),
            }])
        })
}

/// Load the configuration and, when it is valid and changed, make it live.
pub async fn apply(
    shared: &'static Shared,
    trigger: &'static str,
) -> Result<Outcome, Vec<ConfigError>> {
    let loaded = load_config(shared.config_path.clone()).await;
    let cfg = match loaded {
        Ok(cfg) => cfg,
        Err(errors) => {
            // report a broken file once, not at every event while it stays broken
            let fingerprint = fingerprint_of(&errors);
            if shared.last_fingerprint.swap(fingerprint, Ordering::SeqCst) != fingerprint {
                reject(shared, trigger, &errors);
            }
            return Err(errors);
        }
    };
    if shared
        .last_fingerprint
        .swap(cfg.fingerprint, Ordering::SeqCst)
        == cfg.fingerprint
    {
        tracing::debug!("{trigger}: configuration unchanged");
        return Ok(Outcome::Unchanged);
    }
    let old = shared.routes.load_full();
    let (old_proxy, new_proxy) = (&old.config.proxy, &cfg.proxy);
    if old_proxy.listen != new_proxy.listen || old_proxy.admin != new_proxy.admin {
        tracing::warn!(
            "{}: spec.listen and spec.admin take effect at the next start; still on {} and {}",
            new_proxy.origin,
            old_proxy.listen,
            old_proxy.admin
        );
    }
    if old_proxy.tls.is_some() != new_proxy.tls.is_some() {
        tracing::warn!(
            "{}: adding or removing spec.tls takes effect at the next start",
            new_proxy.origin
        );
    }
    // TLS material first: a bad certificate keeps the whole old configuration
    let acceptor = match &new_proxy.tls {
        Some(t) if old_proxy.tls.is_some() => match tls::Acceptor::new(t) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => {
                let errors = vec![ConfigError {
                    file: new_proxy.origin.file.to_path_buf(),
                    document: Some(new_proxy.origin.document),
                    object: Some(("Proxy".into(), new_proxy.origin.name.clone())),
                    field: None,
                    reason: e.to_string(),
                }];
                reject(shared, trigger, &errors);
                return Err(errors);
            }
        },
        _ => None,
    };
    let changes = routing::diff(&old.config, &cfg);
    let version = old.version + 1;
    shared
        .upstream
        .set_connect_timeout(cfg.proxy.timeouts.connect);
    let table = match RoutingTable::build(Arc::new(cfg), version, &shared.metrics, &shared.upstream)
        .await
    {
        Ok(t) => t,
        Err(errors) => {
            reject(shared, trigger, &errors);
            return Err(errors);
        }
    };
    shared.routes.store(Arc::new(table));
    if let Some(a) = acceptor {
        shared.tls.store(Some(a));
    }
    shared.last_errors.store(None);
    shared.metrics.reload(true);
    shared.metrics.config_version.set(version as i64);
    shared.metrics.last_reload_seconds.set(crate::unix_now());
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

fn reject(shared: &Shared, trigger: &str, errors: &[ConfigError]) {
    shared.metrics.reload(false);
    let version = shared.routes.load().version;
    for e in errors {
        tracing::error!("{e}");
    }
    tracing::error!(
        "{trigger}: configuration rejected ({} error(s)); version {version} keeps serving",
        errors.len()
    );
    shared.last_errors.store(Some(Arc::new(
        errors.iter().map(ToString::to_string).collect(),
    )));
}

fn fingerprint_of(errors: &[ConfigError]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for e in errors {
        e.to_string().hash(&mut h);
    }
    h.finish()
}
