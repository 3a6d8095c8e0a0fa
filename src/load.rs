//! The one load pipeline: files -> validated configuration -> TLS acceptor -> routing
//! table, as a `Loaded` value that nothing has seen yet. `run` starts from it, a reload
//! swaps it in, `validate` prints it: the three cannot disagree, and a configuration
//! rejected at any step leaves nothing behind in the live state.

use std::path::Path;
use std::sync::Arc;

use crate::config::{self, Config, ConfigError};
use crate::metrics::Metrics;
use crate::routing::RoutingTable;
use crate::tls::Acceptor;

/// A configuration ready to serve.
pub struct Loaded {
    pub config: Arc<Config>,
    /// `None` for a plain-HTTP configuration.
    pub acceptor: Option<Arc<Acceptor>>,
    pub table: RoutingTable,
}

/// Read and validate `path` (its warnings logged), build its TLS acceptor and its routing
/// table (as `version`, reusing what `previous` can lend).
pub async fn load(
    path: &Path,
    version: u64,
    metrics: &Metrics,
    previous: Option<&RoutingTable>,
) -> Result<Loaded, Vec<ConfigError>> {
    let read = read(path).await;
    read.log_warnings();
    prepare(read.result?, version, metrics, previous).await
}

/// The steps of `load` after reading: a reload reads first, to skip unchanged files (and
/// to log only the warnings it has not logged yet).
pub async fn prepare(
    config: Config,
    version: u64,
    metrics: &Metrics,
    previous: Option<&RoutingTable>,
) -> Result<Loaded, Vec<ConfigError>> {
    let config = Arc::new(config);
    let acceptor = match &config.proxy.tls {
        Some(settings) => match Acceptor::new(settings) {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => return Err(vec![config.proxy.origin.error("", e.to_string())]),
        },
        None => None,
    };
    let table = RoutingTable::build(config.clone(), version, metrics, previous).await?;
    Ok(Loaded {
        config,
        acceptor,
        table,
    })
}

/// `config::read` on the blocking pool: file reads stay off the async workers. The
/// warnings are the caller's to log.
pub async fn read(path: &Path) -> config::Read {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || config::read(&owned))
        .await
        .unwrap_or_else(|e| config::Read {
            result: Err(vec![config::file_error(
                path,
                format!("loader panicked: {e}"),
            )]),
            warnings: Vec::new(),
            named_files: Vec::new(),
        })
}
