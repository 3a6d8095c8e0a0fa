//! The pooled client to backends: hyper-util's keep-alive pool over TCP with TCP_NODELAY.
//! The connect timeout can change on reload without dropping the pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

pub struct Upstream {
    client: Client<TimeoutConnector, Incoming>,
    connect_timeout_ms: Arc<AtomicU64>,
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(true);
        let connect_timeout_ms = Arc::new(AtomicU64::new(connect_timeout.as_millis() as u64));
        let connector = TimeoutConnector {
            inner: http,
            timeout_ms: connect_timeout_ms.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Upstream {
            client,
            connect_timeout_ms,
        }
    }

    pub fn set_connect_timeout(&self, timeout: Duration) {
        self.connect_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    #[inline]
    pub fn request(&self, req: http::Request<Incoming>) -> ResponseFuture {
        self.client.request(req)
    }
}

/// `HttpConnector` with a connect timeout read at each new connection.
#[derive(Clone)]
struct TimeoutConnector {
    inner: HttpConnector,
    timeout_ms: Arc<AtomicU64>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for TimeoutConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed));
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(io)) => Ok(io),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(format!(
                    "connect timed out after {}",
                    humantime::format_duration(timeout)
                )
                .into()),
            }
        })
    }
}
