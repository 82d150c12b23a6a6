//! Tests whose timing matters (Raft failover under chaos) can run with no
//! other cluster of this process up: [`exclusive`] waits until the
//! clusters running now are gone and keeps new ones from starting until it
//! is dropped. Every [`crate::Cluster`] holds a shared [`Claim`] for its
//! lifetime; a thread that already holds one (a test with two clusters)
//! gets another even while an exclusive test waits, so nothing deadlocks.
//!
//! On this 2-core machine the container and overlay tests load both cores
//! for seconds at a time; a 60 s Raft chaos history running beside them
//! then measures the scheduler more than swarmnet.

use std::{
    collections::HashMap,
    sync::{Condvar, Mutex, MutexGuard},
    thread::{self, ThreadId},
};

#[derive(Default)]
struct State {
    /// Shared claims by the thread that took them.
    shared: HashMap<ThreadId, usize>,
    /// The thread that runs alone, if one does.
    alone: Option<ThreadId>,
    waiting: usize,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
static CHANGED: Condvar = Condvar::new();

fn lock() -> MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held by a test that runs alone.
pub struct Exclusive {
    _private: (),
}

/// Waits until no other cluster of this test process is up, then keeps
/// others from starting while the result lives.
pub fn exclusive() -> Exclusive {
    let me = thread::current().id();
    let mut g = lock();
    g.get_or_insert_with(State::default).waiting += 1;
    loop {
        let st = g.get_or_insert_with(State::default);
        let others = st.shared.iter().any(|(t, n)| *t != me && *n > 0);
        if st.alone.is_none() && !others {
            st.alone = Some(me);
            st.waiting -= 1;
            return Exclusive { _private: () };
        }
        g = CHANGED.wait(g).unwrap_or_else(|e| e.into_inner());
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        if let Some(st) = lock().as_mut() {
            st.alone = None;
        }
        CHANGED.notify_all();
    }
}

/// A cluster's shared claim.
#[derive(Debug)]
pub struct Claim {
    thread: ThreadId,
}

pub(crate) fn shared() -> Claim {
    let me = thread::current().id();
    let mut g = lock();
    loop {
        let st = g.get_or_insert_with(State::default);
        let mine = st.shared.get(&me).copied().unwrap_or(0) > 0 || st.alone == Some(me);
        if mine || (st.alone.is_none() && st.waiting == 0) {
            *st.shared.entry(me).or_insert(0) += 1;
            return Claim { thread: me };
        }
        g = CHANGED.wait(g).unwrap_or_else(|e| e.into_inner());
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(st) = lock().as_mut()
            && let Some(n) = st.shared.get_mut(&self.thread)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.shared.remove(&self.thread);
            }
        }
        CHANGED.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicBool, Ordering},
        time::Duration,
    };

    use super::*;

    /// An exclusive test waits for the clusters up; a thread with a
    /// cluster may make another meanwhile; new threads wait.
    #[test]
    fn exclusive_waits_and_nothing_deadlocks() {
        let first = shared();
        let got = AtomicBool::new(false);
        thread::scope(|s| {
            let waiter = s.spawn(|| {
                let _alone = exclusive();
                got.store(true, Ordering::SeqCst);
            });
            thread::sleep(Duration::from_millis(100));
            assert!(!got.load(Ordering::SeqCst), "ran beside a live cluster");
            // This thread already has a claim: a second one is granted.
            let second = shared();
            drop(first);
            thread::sleep(Duration::from_millis(100));
            assert!(!got.load(Ordering::SeqCst), "ran beside the second cluster");
            drop(second);
            waiter.join().expect("exclusive thread");
        });
        assert!(got.load(Ordering::SeqCst));
        let _again = shared();
    }
}
