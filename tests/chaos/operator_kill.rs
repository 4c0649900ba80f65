//! The operator is SIGKILLed at random moments while it scales up and down, and started
//! again each time: every round converges, and no pod is ever created beyond the
//! increases of spec.replicas (its expectations and the wait for the pod cache after a
//! restart are what make that so). Then SIGTERM at random moments of the start-up: the
//! operator must exit 0 all the same.

use std::time::Duration;

use crate::harness::*;
use crate::support::*;

const ROUNDS: usize = 8;
/// Kills per round: 1 or 2.
const MAX_KILLS: u64 = 2;
const MAX_REPLICAS: u64 = 60;
/// The kill comes this long after the scale (or after the previous restart).
const KILL_WITHIN_MS: u64 = 1500;
/// Operators SIGTERMed while they start, after the rounds.
const STARTUP_SIGTERMS: usize = 3;

#[tokio::test]
async fn operator_sigkill_while_scaling() {
    let name = "operator_sigkill_while_scaling";
    let mut rng = scenario(name);
    // A component an earlier scenario left dead (say kube-controller-manager, which makes
    // the namespace's ServiceAccount) is started again first.
    ensure_control_plane(None).await;
    let env = TestEnv::without_operator("chaos-kill").await;
    wait_for_room(&env, MAX_REPLICAS + 10).await;
    let seen = PodsEverSeen::start(&env).await;
    let mut operator = Operator::start(&env.ns, &[]);
    let mut logs = vec![operator.log.clone()];

    let mut ledger = Ledger::default();
    let mut current = rng.range(0, 10);
    env.create(crane("crane", current as i32)).await;
    ledger.increase(0, current);
    converge(&env, "crane", current, LONG).await;

    let (mut kills, mut worst) = (0, Duration::ZERO);
    for round in 1..=ROUNDS {
        let before = seen.pods();
        let target = rng.range(0, MAX_REPLICAS);
        let scaled_at = jiff::Timestamp::now();
        scale(&env, "crane", target).await;
        ledger.increase(current, target);
        let n = rng.range(1, MAX_KILLS);
        let mut delays = Vec::new();
        let mut timeline = vec![format!("{scaled_at} scaled to {target}")];
        for _ in 0..n {
            // The fault's timing is the point of this pause: it is not a wait for a state.
            let delay = rng.millis(0, KILL_WITHIN_MS);
            tokio::time::sleep(delay).await;
            assert_running(&mut operator, &format!("in round {round}"));
            let log = operator.log.display().to_string();
            drop(operator); // SIGKILL, and reaped
            timeline.push(format!(
                "{} SIGKILLed the operator of {log}",
                jiff::Timestamp::now()
            ));
            operator = Operator::start(&env.ns, &[]);
            logs.push(operator.log.clone());
            delays.push(delay.as_millis());
            kills += 1;
        }
        let t = converge(&env, "crane", target, LONG).await;
        worst = worst.max(t);
        assert_running(&mut operator, &format!("after round {round}"));
        let after = seen.pods();
        let created = after.len();
        // Pods this round made beyond its increase are the overshoot: they were deleted
        // again before the round converged. Show them against the kills.
        let made: Vec<&PodSighting> = after
            .iter()
            .filter(|(uid, _)| !before.contains_key(*uid))
            .map(|(_, p)| p)
            .collect();
        if made.len() as u64 > target.saturating_sub(current) {
            let mut extra: Vec<String> = made
                .iter()
                .filter(|p| p.gone_seen.is_some() || target <= current)
                .map(|p| {
                    format!(
                        "{} pod {} appeared (gone at {:?})",
                        p.first_seen, p.name, p.gone_seen
                    )
                })
                .collect();
            extra.extend(timeline);
            extra.sort();
            eprintln!(
                "chaos[{name}]: round {round} OVERSHOOT {}: timeline (test clock; compare with the operator logs):\n    {}",
                made.len() as u64 - target.saturating_sub(current),
                extra.join("\n    ")
            );
        }
        eprintln!(
            "chaos[{name}]: round {round}: {current} -> {target} replicas, SIGKILL after {delays:?} ms, \
             converged {} after the last restart; pods created {created}, needed {}, overshoot {}",
            secs(t),
            ledger.needed,
            ledger.overshoot(created)
        );
        current = target;
    }

    assert!(
        seen.errors().is_empty(),
        "chaos[{name}]: the pod watch that counts creations failed: {:?}",
        seen.errors()
    );
    let created = seen.pods().len();
    let overshoot = ledger.overshoot(created);
    eprintln!(
        "chaos[{name}]: SUMMARY rounds {ROUNDS}, faults {kills} SIGKILLs, pods created {created}, \
         needed {}, overshoot {overshoot}, slowest convergence {}; operator logs: {}",
        ledger.needed,
        secs(worst),
        logs.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert!(
        overshoot <= 0,
        "chaos[{name}]: {overshoot} pods created beyond the {} the scale changes needed (seed {})",
        ledger.needed,
        base_seed()
    );
    let how = stop_gracefully(operator).await;
    eprintln!("chaos[{name}]: SIGTERM after the rounds: {how}");

    // SIGTERM while the operator starts (syncing its caches, starting its controller): it
    // must still exit 0 promptly, as it does once running. From its metrics port on: a
    // SIGTERM in the process's first milliseconds, before any handler can exist, would end
    // any program by the signal's default action.
    for trial in 1..=STARTUP_SIGTERMS {
        let operator = Operator::start(&env.ns, &[]);
        wait_for_metrics_port(&operator).await;
        let log = operator.log.clone();
        // The fault's timing is the point of this pause: not a wait for a state.
        let delay = rng.millis(0, 150);
        tokio::time::sleep(delay).await;
        let how = stop_gracefully(operator).await;
        eprintln!(
            "chaos[{name}]: SIGTERM {} ms after its metrics port opened (trial {trial}): {how}; log {}",
            delay.as_millis(),
            log.display()
        );
    }
    env.cleanup().await;
}
