//! Waiting for convergence: a patience taken from the environment, a
//! [`retry`] that returns the value it waited for, and `assert_eventually!`.

use std::{
    thread,
    time::{Duration, Instant},
};

/// Env var: seconds to wait for a cluster to converge.
pub const ENV_PATIENCE: &str = "SWARMNET_TEST_PATIENCE_SECS";
const DEFAULT_PATIENCE_SECS: u64 = 30;
/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(200);

/// How long to wait for convergence (`SWARMNET_TEST_PATIENCE_SECS`, default
/// 30 s).
pub fn patience() -> Duration {
    match std::env::var(ENV_PATIENCE) {
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(secs) if secs > 0.0 => Duration::from_secs_f64(secs),
            _ => panic!("{ENV_PATIENCE}={v:?} is not a positive number of seconds"),
        },
        Err(_) => Duration::from_secs(DEFAULT_PATIENCE_SECS),
    }
}

/// Calls `f` until it returns `Ok`, for at most [`patience`]; returns the
/// value, or panics with `what` and the last error.
#[track_caller]
pub fn retry<T>(what: &str, f: impl FnMut() -> Result<T, String>) -> T {
    retry_for(patience(), what, f)
}

/// [`retry`] with an explicit deadline.
#[track_caller]
pub fn retry_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match f() {
            Ok(v) => return v,
            Err(e) => {
                if start.elapsed() >= timeout {
                    panic!(
                        "timed out after {:.1}s ({attempts} attempts) waiting for {what}; last: {e}",
                        start.elapsed().as_secs_f64()
                    );
                }
            }
        }
        thread::sleep(POLL);
    }
}

/// Asserts that a condition becomes true within the patience:
/// `assert_eventually!(cond)` or `assert_eventually!(cond, "fmt", args..)`.
/// The message is formatted when the wait gives up.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!($cond, "{}", stringify!($cond))
    };
    ($cond:expr, $($arg:tt)+) => {
        $crate::eventually::retry(stringify!($cond), || {
            if $cond { Ok(()) } else { Err(format!($($arg)+)) }
        })
    };
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn retry_returns_the_first_ok() {
        let n = Cell::new(0);
        let v = retry_for(Duration::from_secs(5), "n to reach 3", || {
            n.set(n.get() + 1);
            if n.get() >= 3 {
                Ok(n.get())
            } else {
                Err(format!("n = {}", n.get()))
            }
        });
        assert_eq!(v, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for never; last: still no")]
    fn retry_gives_up_with_the_last_error() {
        retry_for(Duration::from_millis(300), "never", || {
            Err::<(), _>("still no".to_owned())
        });
    }

    #[test]
    fn assert_eventually_waits_for_a_condition() {
        let start = Instant::now();
        crate::assert_eventually!(
            start.elapsed() > Duration::from_millis(300),
            "only {:?} elapsed",
            start.elapsed()
        );
    }
}
