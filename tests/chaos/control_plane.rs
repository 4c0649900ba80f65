//! kube-apiserver, and separately etcd, are killed while the operator scales, and started
//! again: the operator rides it out (its watches and requests fail and are retried), never
//! exits, converges, and creates no pod beyond what the scale changes needed.
//!
//! These stop components of this checkout's local cluster (`tests/cluster/component.sh`),
//! so the chaos target runs with `--test-threads 1`, and they are skipped on any other
//! cluster.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube::api::Api;

use crate::harness::*;
use crate::support::*;

/// After an API server restart, kwok-controller (which plays the kubelets) sometimes takes
/// over a minute to patch pods again (its log shows no pod patched meanwhile): readiness,
/// which is kwok's part, gets this much longer than the operator's part. Restarting kwok
/// does not help: the new process waits for the old one's node leases (200 s).
const KWOK_RECOVERY: Duration = Duration::from_secs(240);

#[tokio::test]
async fn kube_apiserver_restart_while_scaling() {
    restart_while_scaling("kube_apiserver_restart_while_scaling", "kube-apiserver").await;
}

#[tokio::test]
async fn etcd_restart_while_scaling() {
    restart_while_scaling("etcd_restart_while_scaling", "etcd").await;
}

/// Starts every stopped component again when dropped during a panic: a scenario that
/// fails in the middle of an outage must not leave the cluster down for what runs next.
struct RestartOnPanic;

impl Drop for RestartOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::panic::catch_unwind(|| component_blocking(&["start"]));
        }
    }
}

/// What one outage was.
struct Outage {
    /// From the scale to the kill.
    delay: Duration,
    /// From the kill to the start of the component again.
    downtime: Duration,
    /// When the API server was ready again.
    back: Instant,
    back_at: jiff::Timestamp,
    /// With a restart: how an operator SIGTERMed while the component was down ended.
    sigterm_probe: Option<Result<String, String>>,
}

/// One outage of `component`: stopped `delay` after a scale, down for `downtime`, started
/// again (component.sh waits for the API server's /readyz). With `restart`, in the middle
/// of the outage the operator is SIGKILLed and started again (it must start without an API
/// server, and wait for it), and another operator (for a namespace of its own, so that it
/// cannot touch this test's pods) is started and SIGTERMed: it must exit all the same.
async fn outage(
    rng: &mut Rng,
    component_name: &str,
    restart: Option<(&mut Operator, &str)>,
) -> Outage {
    // The fault's timing is the point of these pauses: they are not waits for a state.
    let delay = rng.millis(0, 1000);
    tokio::time::sleep(delay).await;
    component(&["stop", component_name]).await;
    let killed = Instant::now();
    // Mostly under 10 s with the restart, so kube-controller-manager and kube-scheduler
    // often keep their leases (`heal` starts them again when they do not).
    let downtime = rng.millis(2000, 6000);
    tokio::time::sleep(downtime / 2).await;
    let mut sigterm_probe = None;
    if let Some((operator, ns)) = restart {
        assert_running(operator, &format!("while {component_name} is down"));
        *operator = Operator::start(ns, &[]); // the old one is SIGKILLed as it drops
        let probe = Operator::start(&format!("{ns}-sigterm-probe"), &[]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        sigterm_probe = Some(sigterm_and_wait(probe, Duration::from_millis(1500)).await);
    }
    let rest = downtime.saturating_sub(killed.elapsed());
    tokio::time::sleep(rest).await;
    let downtime = killed.elapsed();
    component(&["start"]).await;
    Outage {
        delay,
        downtime,
        back: Instant::now(),
        back_at: jiff::Timestamp::now(),
        sigterm_probe,
    }
}

/// After an outage: the control plane whole again, and what that took, for the figures.
///
/// kube-controller-manager, kube-scheduler and kwok-controller (which plays the kubelets)
/// do not always recover from an outage by themselves: their watches may stall for minutes
/// (seen here: kwok patched no pod for 4 min after an etcd restart, so new pods stayed
/// Pending; a new namespace got no ServiceAccount), which has nothing to do with the
/// operator under test. They are restarted, with their leases deleted so that the new
/// processes lead at once (kwok's node leases last 200 s). The operator is left alone.
async fn heal(env: &TestEnv, tag: &str, since: jiff::Timestamp) -> String {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{DeleteParams, ListParams};
    save_component_logs(&format!("{}-{tag}", env.ns));
    let t0 = Instant::now();
    component(&[
        "stop",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok-controller",
    ])
    .await;
    let system: Api<Lease> = Api::namespaced(env.client.clone(), "kube-system");
    for lease in ["kube-controller-manager", "kube-scheduler"] {
        let _ = system.delete(lease, &DeleteParams::default()).await;
    }
    let node_leases: Api<Lease> = Api::namespaced(env.client.clone(), "kube-node-lease");
    let _ = node_leases
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let mut restarted = ensure_control_plane(Some(since)).await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
    let nodes = nodes
        .list(&ListParams::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or(1);
    wait_for("kwok to hold every node lease again", LONG, || async {
        let leases = node_leases
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items;
        let fresh = leases
            .iter()
            .filter(|l| {
                l.spec
                    .as_ref()
                    .and_then(|s| s.renew_time.as_ref())
                    .is_some_and(|t| t.0 > since)
            })
            .count();
        (fresh >= nodes)
            .then_some(())
            .ok_or(format!("{fresh} of {nodes} node leases renewed"))
    })
    .await;
    restarted.sort();
    format!(" ({restarted:?} restarted in {})", secs(t0.elapsed()))
}

async fn restart_while_scaling(name: &str, target_component: &str) {
    let mut rng = scenario(name);
    if let Err(why) = local_control_plane() {
        panic!("chaos[{name}]: {why}");
    }
    let short_name = if target_component == "etcd" {
        "chaos-etcd"
    } else {
        "chaos-apiserver"
    };
    let _restart_on_panic = RestartOnPanic;
    ensure_control_plane(None).await;
    let env = TestEnv::without_operator(short_name).await;
    wait_for_room(&env, 60).await;
    let mut operator = Operator::start(&env.ns, &[]);
    let seen = PodsEverSeen::start(&env).await;

    let first = rng.range(5, 15);
    env.create(crane("crane", first as i32)).await;
    converge(&env, "crane", first, LONG).await;

    // Up: scale, then the outage while the operator creates; right after it, scale again.
    let up1 = first + rng.range(10, 25);
    scale(&env, "crane", up1).await;
    let Outage {
        delay,
        downtime,
        back,
        back_at,
        ..
    } = outage(&mut rng, target_component, None).await;
    let healed = heal(&env, "outage1", back_at).await;
    assert_running(
        &mut operator,
        &format!("after the {target_component} outage"),
    );
    let up2 = up1 + rng.range(5, 15);
    scale(&env, "crane", up2).await;
    let (t_created, t_up) = converge_in_two(&env, "crane", up2, LONG, KWOK_RECOVERY).await;
    let since_back = back.elapsed();
    let created_since_back = since_back - (t_up - t_created);
    // The pods there now plus any the watch saw come and go (an overshoot the operator
    // deleted again); a pod created and deleted while the outage broke that watch is in
    // neither, so the operator's own count of creations (since it started: every pod of
    // this object) stands in when it is larger, as in the other scenarios.
    let mut created_up = pod_uids(&env).await;
    created_up.extend(seen.pods().into_keys());
    let acknowledged = counter(&operator, "crane_operator_pods_created_total").await;
    let created = (created_up.len() as u64).max(acknowledged as u64);
    // Pods that others removed meanwhile (kwok-controller and kube-controller-manager
    // restart after an outage) are replaced, rightly.
    let lost_up =
        seen.lost_to_others(counter(&operator, "crane_operator_pods_deleted_total").await);
    let overshoot_up = created as i64 - up2 as i64 - lost_up;
    if overshoot_up > 0 {
        let pods = seen.pods();
        let mut gone: Vec<String> = pods
            .values()
            .filter(|p| p.gone_seen.is_some())
            .map(|p| {
                format!(
                    "{} (appeared {}, gone {:?})",
                    p.name, p.first_seen, p.gone_seen
                )
            })
            .collect();
        gone.sort();
        eprintln!(
            "chaos[{name}]: scale-up OVERSHOOT {overshoot_up}: the operator counts {acknowledged} creations acknowledged \
             (needed {}); {target_component} was back at {}; pods deleted again: {gone:?}",
            up2 - first,
            back_at
        );
    }
    eprintln!(
        "chaos[{name}]: scale-up {first} -> {up1} -> {up2}: {target_component} killed {} ms after the scale, \
         down {}{healed}; converged {} after the API server was ready again (pods made and counted after {}, the rest is scheduling); pods created {created} ({} seen, {acknowledged} by the operator's count), needed {} ({up2} + {lost_up} removed by others), overshoot {overshoot_up}",
        delay.as_millis(),
        secs(downtime),
        secs(since_back),
        secs(created_since_back),
        created_up.len(),
        up2 as i64 + lost_up,
    );

    // Down: scale down, the outage while the operator deletes; in the middle of the
    // outage, the operator is SIGKILLed and started again without an API server.
    let down = rng.range(2, up2 / 2);
    let lost_before_down =
        seen.lost_to_others(counter(&operator, "crane_operator_pods_deleted_total").await);
    scale(&env, "crane", down).await;
    let Outage {
        delay: delay2,
        downtime: downtime2,
        back: back2,
        back_at: back2_at,
        sigterm_probe,
    } = outage(
        &mut rng,
        target_component,
        Some((&mut operator, env.ns.as_str())),
    )
    .await;
    let healed2 = heal(&env, "outage2", back2_at).await;
    assert_running(
        &mut operator,
        &format!("after the second {target_component} outage"),
    );
    converge_in_two(&env, "crane", down, LONG, KWOK_RECOVERY).await;
    let since_back2 = back2.elapsed();
    // No creation was needed: the survivors are pods from before, the new operator's
    // creation counter is 0, and the pod watch saw no new UID.
    let survivors = pod_uids(&env).await;
    let new_pods: BTreeSet<String> = survivors
        .union(&seen.pods().into_keys().collect())
        .filter(|u| !created_up.contains(*u))
        .cloned()
        .collect();
    let created_metric = counter(&operator, "crane_operator_pods_created_total").await;
    let created_down = (new_pods.len() as f64).max(created_metric);
    // Replacements of pods others removed after the scale-up's count and before this scale.
    let needed_down = (lost_before_down - lost_up) as f64;
    let overshoot_down = created_down - needed_down;
    eprintln!(
        "chaos[{name}]: scale-down {up2} -> {down}: {target_component} killed {} ms after the scale, down {}{healed2}, operator SIGKILLed and restarted meanwhile; \
         converged {} after the API server was ready; pods created {created_down}, needed {needed_down}, overshoot {overshoot_down}; \
         pod-watch errors during the outages {}",
        delay2.as_millis(),
        secs(downtime2),
        secs(since_back2),
        seen.errors().len()
    );
    let probe = sigterm_probe.expect("the second outage probes SIGTERM");
    eprintln!(
        "chaos[{name}]: an operator SIGTERMed while {target_component} was down: {}",
        match &probe {
            Ok(how) => how.clone(),
            Err(why) => format!("FAILED: {why}"),
        }
    );
    let overshoot = overshoot_up + overshoot_down as i64;
    eprintln!(
        "chaos[{name}]: SUMMARY faults 2 {target_component} kills and 1 operator restart during the second ({} and {} down), convergence after the restart {} and {}, \
         overshoot {overshoot}; operator log {}",
        secs(downtime),
        secs(downtime2),
        secs(since_back),
        secs(since_back2),
        operator.log.display()
    );
    assert!(
        overshoot <= 0,
        "chaos[{name}]: {overshoot} pods created beyond what the scale changes needed (seed {}); {created} created by the scale to {up2}, {created_down} created while scaling down ({needed_down} needed)",
        base_seed()
    );
    if let Err(why) = probe {
        panic!(
            "chaos[{name}]: an operator SIGTERMed while {target_component} was down must exit (seed {}): {why}",
            base_seed()
        );
    }
    assert_running(&mut operator, "at the end");
    stop_gracefully(operator).await;
    env.cleanup().await;
}

/// A watch that breaks while the operator deletes pods may resume past what it missed only
/// through a relist (410 Gone after kube-apiserver restarts with a fresh watch cache): the
/// deletions are then absent from the list, never delivered one by one. They must count
/// as observed (client-go's DeletedFinalStateUnknown), or the CraneReplicaSet waits for
/// the expectations' 5-minute timeout before it scales again. Pods that are never
/// scheduled go the moment they are deleted, so the outage falls in the deletions' burst.
#[tokio::test]
async fn relist_with_lost_deletions() {
    let name = "relist_with_lost_deletions";
    let mut rng = scenario(name);
    if let Err(why) = local_control_plane() {
        panic!("chaos[{name}]: {why}");
    }
    let _restart_on_panic = RestartOnPanic;
    ensure_control_plane(None).await;
    let env = TestEnv::without_operator("chaos-relist").await;
    let operator = Operator::start(&env.ns, &[]);
    let seen = PodsEverSeen::start(&env).await;
    let active = |n: u64| {
        let env = &env;
        move || async move {
            let pods = env.active_pods("crane").await?;
            (pods.len() as u64 == n)
                .then_some(())
                .ok_or(format!("{} active pods", pods.len()))
        }
    };
    let mut manifest = crane("crane", 40);
    // No node has this label: the pods stay unscheduled, and a DELETE removes one at once.
    manifest["spec"]["template"]["spec"]["nodeSelector"] =
        serde_json::json!({"crane.dev/nowhere": "true"});
    env.create(manifest).await;
    wait_for("40 unscheduled pods", LONG, active(40)).await;
    let mut replicas = 40;
    let mut created = 40;
    let mut report = Vec::new();
    // Two rounds, and more (up to five) until the operator's pod watch relisted: whether a
    // watch resumed after kube-apiserver's restart gets 410 Gone depends on how far its
    // watch cache came up (seen in make test: two rounds, no relist).
    for round in 1..=5 {
        if round > 2 && operator.log_text().contains("pod watch relisted") {
            break;
        }
        if replicas < 12 {
            scale(&env, "crane", 40).await;
            wait_for(
                &format!("round {round}: 40 active pods"),
                Duration::from_secs(60),
                active(40),
            )
            .await;
            created += 40 - replicas;
            replicas = 40;
        }
        let down = rng.range(3, replicas / 2);
        scale(&env, "crane", down).await;
        // The outage's timing is the point of this pause: the deletions' burst.
        tokio::time::sleep(rng.millis(0, 150)).await;
        component(&["stop", "kube-apiserver"]).await;
        let downtime = rng.millis(1500, 3000);
        tokio::time::sleep(downtime).await;
        component(&["start"]).await;
        let back = Instant::now();
        // Far below the expectations' 5 minutes: a stall would time out here.
        wait_for(
            &format!("round {round}: {down} active pods"),
            Duration::from_secs(60),
            active(down),
        )
        .await;
        let since_back = back.elapsed();
        // And it still scales: back up by a few.
        let up = down + rng.range(2, 6);
        scale(&env, "crane", up).await;
        wait_for(
            &format!("round {round}: {up} active pods"),
            Duration::from_secs(60),
            active(up),
        )
        .await;
        created += up - down;
        report.push(format!(
            "round {round}: {replicas} -> {down} with kube-apiserver down {} during the deletions, converged {} after it was back; then -> {up}",
            secs(downtime),
            secs(since_back)
        ));
        replicas = up;
    }
    // The background watch may trail the list that saw the last pods.
    let now_there = pod_uids(&env).await;
    wait_for("the pod watch to have seen every pod", SHORT, || async {
        let missing = now_there.difference(&seen.uids()).count();
        (missing == 0)
            .then_some(())
            .ok_or(format!("{missing} not seen yet"))
    })
    .await;
    // Pods the operator created, by its own count and by the test's watch (which can miss
    // pods across its own relists), as the other control-plane scenarios count them.
    let acknowledged = counter(&operator, "crane_operator_pods_created_total").await as u64;
    let ever = (seen.pods().len() as u64).max(acknowledged);
    let relists = operator.log_text().matches("pod watch relisted").count();
    let overshoot = ever as i64 - created as i64;
    for line in &report {
        eprintln!("chaos[{name}]: {line}");
    }
    eprintln!(
        "chaos[{name}]: SUMMARY pods created {ever}, needed {created}, overshoot {overshoot}; relists of the operator's pod watch {relists}; operator log {}",
        operator.log.display()
    );
    assert_eq!(overshoot, 0, "pods created beyond what the scales needed");
    // Without a relist the deletions were delivered one by one, and the scenario tested
    // nothing of what it is about.
    assert!(
        relists > 0,
        "chaos[{name}]: the operator's pod watch never relisted across the outages (seed {}): the lost deletions were not exercised; operator log {}",
        base_seed(),
        operator.log.display()
    );
    env.cleanup().await;
}
