//! A timer for a connection's deadlines that is polled once per registration.
//!
//! A `Sleep` polled while it waits re-registers the task's waker with the wheel every time
//! (about 100 instructions, with tokio's budget check); a connection's deadlines are
//! checked on every read that would block and every response written, several times a
//! request. `LazyTimer` polls its `Sleep` only when it is not registered yet, was moved,
//! has fired, or the waker is another one: otherwise the registration it holds already
//! wakes this task.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::time::{Instant, Sleep};

pub struct LazyTimer {
    sleep: Pin<Box<Sleep>>,
    /// The waker the registered, not yet fired timer wakes.
    waker: Option<Waker>,
}

impl LazyTimer {
    pub fn new(deadline: Instant) -> Self {
        LazyTimer {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            waker: None,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.sleep.deadline()
    }

    pub fn is_elapsed(&self) -> bool {
        self.sleep.is_elapsed()
    }

    pub fn reset(&mut self, deadline: Instant) {
        self.sleep.as_mut().reset(deadline);
        self.waker = None;
    }

    /// Whether the timer is registered to wake `cx`'s task and has not fired.
    pub fn waits(&self, cx: &Context<'_>) -> bool {
        self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) && !self.sleep.is_elapsed()
    }

    /// Ready once the deadline has passed; Pending when `cx`'s task will be woken then.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.waits(cx) {
            return Poll::Pending;
        }
        // outside tokio's budget: a Pending from an exhausted budget would not have
        // registered, and the timer would be taken for armed
        let mut sleep = tokio::task::unconstrained(self.sleep.as_mut());
        match Pin::new(&mut sleep).poll(cx) {
            Poll::Ready(()) => {
                self.waker = None;
                Poll::Ready(())
            }
            Poll::Pending => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
