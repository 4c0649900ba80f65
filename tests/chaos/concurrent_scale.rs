//! Two clients run `kubectl scale` on the same CraneReplicaSet at once, with different
//! values: the last write wins, the operator converges to it, and it creates no more pods
//! than the succession of values it could have seen required.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::support::*;

const SCALES_PER_CLIENT: usize = 8;
const MAX_REPLICAS: u64 = 50;

/// `kubectl scale` as a separate process; Err carries its stderr.
fn kubectl_scale(ns: &str, replicas: u64) -> Result<(), String> {
    let out = Command::new("kubectl")
        .args(["--namespace", ns, "scale", "crs", "crane"])
        .arg(format!("--replicas={replicas}"))
        .env("KUBECONFIG", kubeconfig_path())
        .output()
        .map_err(|e| format!("run kubectl (is it on PATH? source tests/cluster/env.sh): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn two_clients_scaling_at_once() {
    let name = "two_clients_scaling_at_once";
    let mut rng = scenario(name);
    ensure_control_plane(None).await;
    let env = TestEnv::without_operator("chaos-scale").await;
    wait_for_room(&env, MAX_REPLICAS + 10).await;
    let mut operator = Operator::start(&env.ns, &[]);
    let first = rng.range(1, 10);
    env.create(crane("crane", first as i32)).await;
    converge(&env, "crane", first, LONG).await;
    let history = SpecHistory::start(&env, "crane").await;
    let seen = PodsEverSeen::start(&env).await;
    let before = seen.uids().len();

    // Each client's values and pauses come from the seed; which write lands last is up to
    // the race, which the history records.
    let plans: Vec<Vec<(u64, Duration)>> = (0..2)
        .map(|_| {
            (0..SCALES_PER_CLIENT)
                .map(|_| (rng.range(0, MAX_REPLICAS), rng.millis(0, 400)))
                .collect()
        })
        .collect();
    let t0 = Instant::now();
    let clients: Vec<_> = plans
        .into_iter()
        .map(|plan| {
            let ns = env.ns.clone();
            tokio::task::spawn_blocking(move || {
                for (replicas, pause) in plan {
                    kubectl_scale(&ns, replicas)
                        .unwrap_or_else(|e| panic!("kubectl scale --replicas={replicas}: {e}"));
                    // Spreads the writes over time; not a wait for a state.
                    std::thread::sleep(pause);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("a scaling client");
    }
    let writes_done = t0.elapsed();
    let last = env.crs().get("crane").await.expect("get").spec.replicas as u64;
    let t = converge(&env, "crane", last, LONG).await;
    assert_running(&mut operator, "after the concurrent scaling");

    // Let the history catch the last value, then account.
    let values = wait_for(
        "the spec history to reach the final value",
        SHORT,
        || async {
            let v = history.values();
            (v.last() == Some(&(last as i32)))
                .then_some(v.clone())
                .ok_or(seen_values(&v))
        },
    )
    .await;
    assert!(
        history.errors().is_empty() && seen.errors().is_empty(),
        "the watches that account must not fail: {:?} {:?}",
        history.errors(),
        seen.errors()
    );
    let needed = history.increases();
    let created = seen.uids().len() - before;
    let overshoot = created as i64 - needed as i64;
    eprintln!(
        "chaos[{name}]: SUMMARY 2 clients x {SCALES_PER_CLIENT} kubectl scale in {}, spec.replicas went {values:?}; \
         converged to {last} {} after the last write; pods created {created}, needed at most {needed}, overshoot {overshoot}; operator log {}",
        secs(writes_done),
        secs(t),
        operator.log.display()
    );
    assert!(
        overshoot <= 0,
        "chaos[{name}]: {overshoot} pods created beyond the increases of spec.replicas (seed {})",
        base_seed()
    );
    stop_gracefully(operator).await;
    env.cleanup().await;
}

fn seen_values(v: &[i32]) -> String {
    format!("{v:?}")
}
