//! The operator's clock: every read of the time goes through here, so that a simulation
//! (`make simulate`) can run the whole controller on simulated time.
//!
//! Durations use [`Instant`], tokio's, which follows a runtime's paused clock (and is the
//! OS's monotonic clock otherwise). Wall-clock times ([`now`]) are the OS's, unless this
//! thread runs a simulation ([`simulate`]): then they are its start plus the simulated
//! time since. Jitter is random unless the simulation gave a seed ([`jitter_seed`]).

use std::cell::Cell;

use jiff::{SignedDuration, Timestamp};

pub use tokio::time::Instant;

thread_local! {
    /// On a simulation's thread: its wall-clock start, the instant it started at, and the
    /// seed of its jitter.
    static SIMULATED: Cell<Option<(Timestamp, Instant, u64)>> = const { Cell::new(None) };
}

/// The wall-clock time.
pub fn now() -> Timestamp {
    match SIMULATED.get() {
        Some((start, at, _)) => {
            let elapsed = SignedDuration::try_from(at.elapsed()).unwrap_or(SignedDuration::MAX);
            start.checked_add(elapsed).unwrap_or(Timestamp::MAX)
        }
        None => Timestamp::now(),
    }
}

/// The seed for the next jittered backoff: `None` (random jitter) outside a simulation.
/// Each call gives another seed, so backoffs started one after the other do not move in
/// lockstep.
pub fn jitter_seed() -> Option<u64> {
    SIMULATED.with(|cell| {
        let (start, at, seed) = cell.get()?;
        let next = splitmix64(seed);
        cell.set(Some((start, at, next)));
        Some(next)
    })
}

/// Runs this thread's clock as a simulation from here on: wall-clock time starts at
/// `start` and follows the runtime's (paused) clock; jitter is drawn from `seed`. Call it
/// on the simulation's runtime thread (a current-thread runtime with paused time).
pub fn simulate(start: Timestamp, seed: u64) {
    SIMULATED.set(Some((start, Instant::now(), seed)));
}

/// Ends [`simulate`] on this thread.
pub fn stop_simulating() {
    SIMULATED.set(None);
}

/// The SplitMix64 step: a well-mixed sequence from any seed.
pub fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_simulated_wall_clock_follows_the_paused_runtime() {
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        simulate(start, 7);
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(now(), start + SignedDuration::from_secs(90));
        let (a, b) = (jitter_seed(), jitter_seed());
        assert!(
            a.is_some() && a != b,
            "every backoff gets a seed of its own"
        );
        stop_simulating();
        assert!(jitter_seed().is_none());
        assert!(
            now() > start + SignedDuration::from_secs(3600),
            "the OS clock again"
        );
    }
}
