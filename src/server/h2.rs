//! HTTP/2 streams served in their connection's own task. hyper's HTTP/2 server hands each
//! accepted stream (the service's future, the response and its body) to an executor; a
//! task per stream costs a spawn, a task header and a schedule-and-poll on the worker's
//! run queue every time the stream wakes. Here the executor only queues the stream, and
//! the connection's task polls it among its own (`serve`): a stream still wakes only
//! itself (each has its own waker in the set), and what it writes is flushed by the
//! connection's next poll in the same task. README, "Per-request round, fifth pass", has
//! the counts.
//!
//! Nothing else changes: hyper still accepts the streams, answers resets, pings and
//! GOAWAY, and writes the responses.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::Poll;

use futures_util::stream::{FuturesUnordered, StreamExt};

type Stream = Pin<Box<dyn Future<Output = ()>>>;

/// hyper's executor for one HTTP/2 connection: the streams it is given wait here until the
/// connection's task takes them into its set (never while hyper is being polled, so the
/// queue is borrowed only for a push or a take).
#[derive(Clone, Default)]
pub(super) struct StreamExec(Rc<RefCell<Vec<Stream>>>);

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + 'static,
{
    fn execute(&self, fut: F) {
        self.0.borrow_mut().push(Box::pin(fut));
    }
}

/// Drive `connection` (hyper's, given `exec`) and the streams it starts, all in this task,
/// to the end of the connection and of its last stream.
pub(super) async fn serve<T>(exec: &StreamExec, connection: impl Future<Output = T>) -> T {
    let mut connection = pin!(connection);
    let mut streams = FuturesUnordered::new();
    let mut ended = None;
    poll_fn(move |cx| loop {
        if ended.is_none() {
            if let Poll::Ready(out) = connection.as_mut().poll(cx) {
                ended = Some(out);
            }
        }
        streams.extend(exec.0.borrow_mut().drain(..));
        // a stream's response wakes the connection (this task), whose next poll sends it
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        // a stream may start another (an upgraded CONNECT's copy): take it in now
        if !exec.0.borrow().is_empty() {
            continue;
        }
        if streams.is_empty() {
            if let Some(out) = ended.take() {
                return Poll::Ready(out);
            }
        }
        return Poll::Pending;
    })
    .await
}
