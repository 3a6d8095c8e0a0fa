//! One worker's idle HTTP/1.1 connections to backends, plain and TLS, keyed by endpoint
//! and transport so the two never mix, and its one shared HTTP/2 connection per endpoint
//! and transport (`h2_take`: every request gets a clone of its sender while it is open;
//! requests that find it being opened wait for it). A worker is one thread with a
//! current-thread runtime and every task of its connections is local to it, so the pool
//! is a `RefCell` behind an `Rc`: taking or returning a connection costs no lock, no
//! atomic and no task wake-up.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::http2;
use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use super::body::RequestBody;
use super::h1::Conn;

/// Which connections may serve a request: same endpoint, same transport (`Transport::id`:
/// 0 for plain, a TLS client's own id otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    pub transport: u64,
}

/// How long an idle pooled upstream connection is kept (hyper-util's client default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint and worker; the least recently used goes first when
/// more come back (nginx's `keepalive N`; with the default, a worker can serve 256
/// concurrent requests to one endpoint and keep every connection for the next burst).
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;

pub struct Pool {
    /// Idle connections by endpoint, most recently used last.
    idle: RefCell<FxHashMap<PoolKey, Vec<Idle>>>,
    /// HTTP/2 connections (multiplexed, never idle-listed) by endpoint.
    h2: RefCell<FxHashMap<PoolKey, H2Slot>>,
    max_idle: usize,
    idle_timeout: Duration,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

type H2Sender = http2::SendRequest<RequestBody>;

enum H2Slot {
    Open(H2Sender),
    /// A request is opening the connection; the others wait on this.
    Opening(Rc<Notify>),
}

/// What a request to an HTTP/2 endpoint does (`Pool::h2_take`).
pub enum H2Take<'p> {
    /// Send on this clone of the open connection's sender.
    Open(H2Sender),
    /// Another request is opening the connection: wait, then ask again.
    Wait(Rc<Notify>),
    /// Open the connection and hand it over with `H2Opening::opened`; dropped without
    /// that, the waiters are woken to try themselves.
    Connect(H2Opening<'p>),
}

/// The right, and the duty, to open an endpoint's HTTP/2 connection.
pub struct H2Opening<'p> {
    pool: &'p Pool,
    key: PoolKey,
    notify: Rc<Notify>,
}

impl H2Opening<'_> {
    /// The connection is open: it serves every request to the endpoint from now on.
    pub fn opened(self, sender: &H2Sender) {
        self.pool
            .h2
            .borrow_mut()
            .insert(self.key, H2Slot::Open(sender.clone()));
        // Drop wakes the waiters
    }
}

impl Drop for H2Opening<'_> {
    fn drop(&mut self) {
        let mut h2 = self.pool.h2.borrow_mut();
        if matches!(h2.get(&self.key), Some(H2Slot::Opening(n)) if Rc::ptr_eq(n, &self.notify)) {
            h2.remove(&self.key);
        }
        self.notify.notify_waiters();
    }
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Rc<Pool> {
        Rc::new(Pool {
            idle: RefCell::default(),
            h2: RefCell::default(),
            max_idle,
            idle_timeout,
        })
    }

    /// The most recently used usable idle connection for `key`; closed ones are dropped.
    pub fn take(&self, key: PoolKey) -> Option<Conn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        while let Some(mut i) = list.pop() {
            if i.conn.is_usable() {
                return Some(i.conn);
            }
        }
        None
    }

    /// The endpoint's HTTP/2 connection while it is open; else whether to wait for the
    /// request opening it or to open it.
    pub fn h2_take(&self, key: PoolKey) -> H2Take<'_> {
        let mut h2 = self.h2.borrow_mut();
        match h2.get(&key) {
            Some(H2Slot::Open(sender)) if !sender.is_closed() => H2Take::Open(sender.clone()),
            Some(H2Slot::Opening(notify)) => H2Take::Wait(notify.clone()),
            // none yet, or a dead one: replaced
            _ => {
                let notify = Rc::new(Notify::new());
                h2.insert(key, H2Slot::Opening(notify.clone()));
                H2Take::Connect(H2Opening {
                    pool: self,
                    key,
                    notify,
                })
            }
        }
    }

    /// Return a connection whose response has ended. Over the cap, or idle too long at the
    /// front of the list, the oldest ones are closed.
    pub fn put(&self, key: PoolKey, conn: Conn) {
        if self.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(key).or_default();
        let expired = list
            .iter()
            .take_while(|i| now.duration_since(i.since) >= self.idle_timeout)
            .count();
        let over = (list.len() - expired + 1).saturating_sub(self.max_idle);
        list.drain(..expired + over);
        list.push(Idle { conn, since: now });
    }

    /// Idle connections for `key`.
    #[cfg(test)]
    fn idle_count(&self, key: PoolKey) -> usize {
        self.idle.borrow().get(&key).map_or(0, Vec::len)
    }

    /// Close connections idle longer than the idle timeout, every third of it, until the
    /// pool is dropped (endpoints without traffic never call `put`, which also expires).
    pub async fn sweep(pool: Weak<Pool>) {
        let Some(period) = pool.upgrade().map(|p| p.idle_timeout / 3) else {
            return;
        };
        let mut tick = tokio::time::interval(period.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(pool) = pool.upgrade() else { return };
            let now = Instant::now();
            let mut idle = pool.idle.borrow_mut();
            for list in idle.values_mut() {
                list.retain_mut(|i| {
                    now.duration_since(i.since) < pool.idle_timeout && i.conn.is_usable()
                });
            }
            idle.retain(|_, list| !list.is_empty());
            drop(idle);
            pool.h2
                .borrow_mut()
                .retain(|_, slot| !matches!(slot, H2Slot::Open(s) if s.is_closed()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;

    /// A backend that accepts any number of connections and never answers: enough for
    /// handshakes, and every connection stays open.
    async fn backend() -> PoolKey {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        PoolKey { addr, transport: 0 }
    }

    async fn connection(key: PoolKey) -> Conn {
        let tcp = tokio::net::TcpStream::connect(key.addr).await.unwrap();
        Conn::new(super::super::h1::Io::Plain(tcp))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn idle_connections_are_capped_per_endpoint_and_expire() {
        let (a, b) = (backend().await, backend().await);
        let pool = Pool::new(2, Duration::from_secs(3600));
        for _ in 0..4 {
            let conn = connection(a).await;
            pool.put(a, conn);
        }
        pool.put(b, connection(b).await);
        assert_eq!(pool.idle_count(a), 2, "capped at 2, the oldest closed");
        assert_eq!(pool.idle_count(b), 1, "the cap is per endpoint");
        assert!(pool.take(a).is_some());
        assert!(pool.take(a).is_some());
        assert!(pool.take(a).is_none());
        // the same endpoint over another transport is another pool entry
        pool.put(b, connection(b).await);
        let b_tls = PoolKey { transport: 7, ..b };
        assert!(pool.take(b_tls).is_none());
        assert_eq!(pool.idle_count(b), 2);

        // idle past the timeout: closed when the next one comes back
        let pool = Pool::new(8, Duration::from_millis(1));
        pool.put(a, connection(a).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
        pool.put(a, connection(a).await);
        assert_eq!(pool.idle_count(a), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_h2_connection_is_opened_once_waited_for_shared_and_replaced_when_closed() {
        use hyper_util::rt::TokioExecutor;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let key = PoolKey {
            addr: listener.local_addr().unwrap(),
            transport: 0,
        };
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(|_| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc);
            // dropped when told: the connection closes
            tokio::select! { _ = conn => {}, _ = closed => {} }
        });
        let pool = Pool::new(8, Duration::from_secs(3600));

        // an opener given up on wakes its waiters, and the next request opens
        let H2Take::Connect(opening) = pool.h2_take(key) else {
            panic!("nothing open: connect")
        };
        let H2Take::Wait(notify) = pool.h2_take(key) else {
            panic!("being opened: wait")
        };
        let woken = notify.notified();
        drop(opening);
        woken.await;
        let H2Take::Connect(opening) = pool.h2_take(key) else {
            panic!("connect again")
        };
        let H2Take::Wait(notify) = pool.h2_take(key) else {
            panic!("wait again")
        };
        let woken = notify.notified();
        let tcp = tokio::net::TcpStream::connect(key.addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, RequestBody>(
            TokioExecutor::new(),
            TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        opening.opened(&sender);
        woken.await;
        // every request now gets a clone of the one open connection
        for _ in 0..3 {
            assert!(matches!(pool.h2_take(key), H2Take::Open(_)));
        }
        // closed by the backend: replaced by the next request
        close.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sender.is_closed() {
            assert!(Instant::now() < deadline, "the close was never seen");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(matches!(pool.h2_take(key), H2Take::Connect(_)));
    }
}
