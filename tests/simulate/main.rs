//! `make simulate`: the whole controller, run against a simulated API server and cluster on
//! simulated time, in thousands of worlds each decided by a seed (see [`world`]). Every
//! world's invariants are checked: no pod beyond what was asked for, ever; once the faults
//! stop, the right pods and a truthful status within a bound; then no writes at all; no
//! panic. A failing seed is printed with the command that replays it.
//!
//! `SEEDS=N` worlds (default 200) from `FIRST=S` (default 1), on `THREADS` threads;
//! `SEED=S` replays one and prints its trace. The seeds in `regressions.txt` run first.

mod apiserver;
mod rng;
mod world;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok().filter(|v| !v.trim().is_empty())?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            eprintln!("[simulate] {name}={value} is not a number");
            std::process::exit(2);
        }
    }
}

/// Log lines stamped with the simulation's wall clock.
struct SimulatedTime;

impl tracing_subscriber::fmt::time::FormatTime for SimulatedTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{}", crane_operator::clock::now())
    }
}

thread_local! {
    /// The entropy of this thread's world: the seed's, once [`run_one`] has set it.
    static ENTROPY: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// The C library's `getrandom`, taken over for this process: on a world's thread it
/// answers from the world's seed, so that std's hash maps (which kube's controller polls
/// its passes from, in their iteration order) iterate the same way in every replay.
/// Elsewhere it asks the kernel. std finds it through `dlsym`: `make simulate` links
/// with `-rdynamic`.
///
/// # Safety
/// As the C function: `buf` points to `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getrandom(buf: *mut u8, len: usize, flags: u32) -> isize {
    match ENTROPY.get() {
        Some(mut state) => {
            for i in 0..len {
                state = crane_operator::clock::splitmix64(state);
                // SAFETY: the caller hands over `len` writable bytes at `buf`.
                unsafe { *buf.add(i) = state as u8 };
            }
            ENTROPY.set(Some(state));
            len as isize
        }
        // SAFETY: the same contract as the system call's.
        None => unsafe { libc::syscall(libc::SYS_getrandom, buf, len, flags) as isize },
    }
}

/// Runs world `seed` on a thread of its own (its hash-map keys are drawn afresh from the
/// seed), on a current-thread runtime with paused time whose own randomness (the order
/// in which `select!` polls) comes from the seed too where tokio allows it
/// (`--cfg tokio_unstable`, as `make simulate` builds).
fn run_one(seed: u64) -> world::Outcome {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                ENTROPY.set(Some(seed));
                let mut builder = tokio::runtime::Builder::new_current_thread();
                builder.enable_time().start_paused(true);
                #[cfg(tokio_unstable)]
                builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
                let rt = builder.build().expect("a runtime");
                let outcome = rt.block_on(world::run(seed));
                // The world's tasks (dropped with the runtime) still draw from the seed.
                drop(rt);
                ENTROPY.set(None);
                outcome
            })
            .join()
            .unwrap_or_else(|panic| world::Outcome {
                violations: vec![format!("the world itself panicked: {panic:?}")],
                ..world::Outcome::default()
            })
    })
}

fn main() {
    // Panics inside the operator's tasks are caught by tokio; record them per world.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        world::PANICS.with(|p| p.borrow_mut().push(info.to_string()));
        if std::env::var_os("SIMULATE_PANIC_BACKTRACE").is_some() {
            default_hook(info);
        }
    }));
    if let Some(seed) = env_u64("SEED") {
        // SIMULATE_LOG=debug (a tracing filter) shows the operator's own log, on simulated time.
        if let Ok(filter) = std::env::var("SIMULATE_LOG") {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_timer(SimulatedTime)
                .with_ansi(false)
                .init();
        }
        let started = Instant::now();
        let outcome = run_one(seed);
        for line in &outcome.trace {
            println!("{line}");
        }
        println!("[simulate] seed {seed}: {}", outcome.plan);
        println!(
            "[simulate] seed {seed}: {} requests, {} faults injected, settled after {:?}, {:.1} s",
            outcome.requests,
            outcome.faults,
            outcome.settled_after,
            started.elapsed().as_secs_f64()
        );
        for v in &outcome.violations {
            println!("[simulate] seed {seed}: VIOLATION {v}");
        }
        std::process::exit(i32::from(!outcome.violations.is_empty()));
    }
    let count = env_u64("SEEDS").unwrap_or(200);
    let first = env_u64("FIRST").unwrap_or(1);
    let threads = env_u64("THREADS").map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        |n| n.max(1) as usize,
    );
    // REGRESSIONS=0 leaves out the kept seeds (a mutation run counts schedules from 1).
    let regressions: Vec<u64> = if env_u64("REGRESSIONS") == Some(0) {
        Vec::new()
    } else {
        include_str!("regressions.txt")
            .lines()
            .filter_map(|l| l.split('#').next()?.trim().parse().ok())
            .collect()
    };
    // FAIL_FAST=1 stops at the first violation (tests/simulate/mutants.sh).
    let fail_fast = env_u64("FAIL_FAST").is_some_and(|f| f != 0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let seeds: Vec<u64> = regressions
        .iter()
        .copied()
        .chain(first..first + count)
        .collect();
    println!(
        "[simulate] {} schedules ({} regression seeds, then {first}..{}) on {threads} threads",
        seeds.len(),
        regressions.len(),
        first + count
    );
    let next = AtomicUsize::new(0);
    let (faults, requests, done) = (AtomicU64::new(0), AtomicU64::new(0), AtomicUsize::new(0));
    let failed: Mutex<Vec<(usize, u64, world::Outcome)>> = Mutex::new(Vec::new());
    let settle_max = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { break };
                    let outcome = run_one(seed);
                    faults.fetch_add(outcome.faults, Ordering::Relaxed);
                    requests.fetch_add(outcome.requests, Ordering::Relaxed);
                    if let Some(after) = outcome.settled_after {
                        settle_max.fetch_max(after.as_millis() as u64, Ordering::Relaxed);
                    }
                    if !outcome.violations.is_empty() {
                        println!(
                            "[simulate] seed {seed}: {} (replay: make simulate SEED={seed})",
                            outcome.violations[0]
                        );
                        failed.lock().unwrap_or_else(|p| p.into_inner()).push((
                            i + 1,
                            seed,
                            outcome,
                        ));
                        if fail_fast {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % (seeds.len() / 10).max(1) == 0 {
                        println!(
                            "[simulate] {n}/{} schedules, {:.1} per second",
                            seeds.len(),
                            n as f64 / started.elapsed().as_secs_f64()
                        );
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
    let elapsed = started.elapsed();
    let ran = done.load(Ordering::Relaxed);
    if let Some((index, seed, outcome)) = failed.iter().min_by_key(|(i, _, _)| *i) {
        println!("[simulate] first violation in schedule {index} (seed {seed})");
        println!(
            "[simulate] the trace of seed {seed} (last lines), {}:",
            outcome.plan
        );
        for line in outcome.trace.iter().rev().take(60).rev() {
            println!("    {line}");
        }
        for v in &outcome.violations {
            println!("[simulate] seed {seed}: VIOLATION {v}");
        }
    }
    println!(
        "[simulate] {:.0} s, {:.1} schedules per second, slowest settle {:.1} s, {} requests",
        elapsed.as_secs_f64(),
        ran as f64
            / elapsed
                .as_secs_f64()
                .max(Duration::from_millis(1).as_secs_f64()),
        settle_max.load(Ordering::Relaxed) as f64 / 1000.0,
        requests.load(Ordering::Relaxed)
    );
    println!(
        "{} schedules, {} faults injected, {} invariant violations",
        ran,
        faults.load(Ordering::Relaxed),
        failed
            .iter()
            .map(|(_, _, o)| o.violations.len())
            .sum::<usize>()
    );
    if !failed.is_empty() {
        let seeds: Vec<String> = failed.iter().map(|(_, s, _)| s.to_string()).collect();
        println!(
            "[simulate] failing seeds: {} (replay one: make simulate SEED=S)",
            seeds.join(" ")
        );
        std::process::exit(1);
    }
}
