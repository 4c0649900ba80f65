//! A hundred CraneReplicaSets created at once under one operator, some broken in ways only
//! the controller can see: the healthy ones converge, the broken ones say why (condition
//! and event), and none slows the others to a stop.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};

use crate::harness::*;
use crate::support::*;

const COUNT: usize = 100;
const BROKEN: usize = 10;
const DEADLINE: Duration = Duration::from_secs(240);
/// The operator's per-object backoff after a failed pass: 1 s, doubled each time, at most
/// 60 s (src/controller/mod.rs, BACKOFF_FIRST and BACKOFF_MAX).
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Passes of one broken object its own changes bring about besides the backoff's retries:
/// the events of its up to 3 pods (created, scheduled, running, ready) and its status
/// writes (seen here: fewer than 2 per object). A hot loop runs hundreds a second.
const TRIGGERED_PASSES: u64 = 15;

/// How many times one object that fails every pass can fail in `elapsed` under the backoff
/// alone: once at once, then once after each delay.
fn failures_by_backoff(elapsed: Duration) -> u64 {
    let (mut failures, mut at, mut delay) = (1, Duration::ZERO, BACKOFF_FIRST);
    while at + delay <= elapsed {
        at += delay;
        failures += 1;
        delay = (delay * 2).min(BACKOFF_MAX);
    }
    failures
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Healthy,
    /// No containerPort: ServiceFailure / InvalidServicePort.
    NoPort,
    /// `<name>-http` exists and belongs to someone else: ServiceFailure / ServiceConflict.
    Clash,
}

impl Kind {
    fn reason(self) -> Option<&'static str> {
        match self {
            Kind::Healthy => None,
            Kind::NoPort => Some("InvalidServicePort"),
            Kind::Clash => Some("ServiceConflict"),
        }
    }
}

fn foreign_service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"owner": "someone-else"}},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "someone-else"}}
    }))
    .expect("a Service")
}

#[tokio::test]
async fn hundred_crane_replica_sets_some_broken() {
    let name = "hundred_crane_replica_sets_some_broken";
    let mut rng = scenario(name);
    ensure_control_plane(None).await;
    let mut env = TestEnv::new("chaos-many").await;
    wait_for_room(&env, 3 * COUNT as u64).await;
    let seen = PodsEverSeen::start(&env).await;

    let broken = rng.pick(COUNT, BROKEN);
    let mut plan: BTreeMap<String, (Kind, u64)> = BTreeMap::new();
    for i in 0..COUNT {
        let kind = match broken.iter().position(|&b| b == i) {
            None => Kind::Healthy,
            Some(k) if k % 2 == 0 => Kind::NoPort,
            Some(_) => Kind::Clash,
        };
        plan.insert(format!("crane-{i:03}"), (kind, rng.range(1, 3)));
    }
    for (crs, (kind, _)) in &plan {
        if *kind == Kind::Clash {
            env.services()
                .create(
                    &PostParams::default(),
                    &foreign_service(&format!("{crs}-http")),
                )
                .await
                .expect("create a foreign Service");
        }
    }
    let manifests: Vec<Value> = plan
        .iter()
        .map(|(crs, (kind, replicas))| {
            let mut m = crane(crs, *replicas as i32);
            if *kind == Kind::NoPort {
                m["spec"]["template"]["spec"]["containers"][0]
                    .as_object_mut()
                    .expect("a container")
                    .remove("ports");
            }
            m
        })
        .collect();

    let t0 = Instant::now();
    let env_ref = &env;
    stream::iter(manifests)
        .for_each_concurrent(20, |m| async move {
            env_ref.create(m).await;
        })
        .await;
    let created_in = t0.elapsed();

    let settled = wait_every(
        "all 100 CraneReplicaSets to settle",
        Duration::from_secs(1),
        DEADLINE,
        || async {
            let crs = all_crs(&env).await?;
            let pods = env
                .pods()
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items;
            let services: BTreeSet<String> = env
                .services()
                .list(&ListParams::default().labels("app.kubernetes.io/managed-by=crane-operator"))
                .await
                .map_err(|e| e.to_string())?
                .items
                .iter()
                .map(|s| s.name_any())
                .collect();
            let mut active: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            for p in pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
            {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                if matches!(phase, Some("Succeeded" | "Failed")) {
                    continue;
                }
                if let Some(owner) = p
                    .owner_references()
                    .iter()
                    .find(|o| o.controller == Some(true) && o.kind == "CraneReplicaSet")
                {
                    let e = active.entry(owner.name.clone()).or_default();
                    e.0 += 1;
                    e.1 += usize::from(is_ready(p));
                }
            }
            let mut pending = Vec::new();
            for c in &crs {
                let n = c.name_any();
                let Some((kind, replicas)) = plan.get(&n) else {
                    continue;
                };
                let st = c.status.clone().unwrap_or_default();
                let (count, ready) = active.get(&n).copied().unwrap_or_default();
                let pods_ok = count as u64 == *replicas
                    && ready as u64 == *replicas
                    && st.replicas as u64 == *replicas
                    && st.ready_replicas as u64 == *replicas
                    && st.observed_generation == c.metadata.generation;
                let service_ok = match kind.reason() {
                    None => {
                        services.contains(&format!("{n}-http"))
                            && !st.conditions.iter().any(|c| {
                                c.status == "True"
                                    && matches!(
                                        c.type_.as_str(),
                                        "ServiceFailure" | "ReplicaFailure"
                                    )
                            })
                    }
                    Some(reason) => st.conditions.iter().any(|c| {
                        c.type_ == "ServiceFailure" && c.status == "True" && c.reason == reason
                    }),
                };
                if !(pods_ok && service_ok) {
                    pending.push(format!(
                        "{n} ({kind:?}: {count} active, {ready} ready, status {}/{})",
                        st.replicas, st.ready_replicas
                    ));
                }
            }
            if crs.len() == COUNT && pending.is_empty() {
                Ok(t0.elapsed())
            } else {
                Err(format!(
                    "{} CraneReplicaSets, {} not settled: {}",
                    crs.len(),
                    pending.len(),
                    pending
                        .iter()
                        .take(8)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        },
    )
    .await;

    // Each broken one has its Warning event; the foreign Services were not touched.
    for (crs, (kind, _)) in plan.iter().filter(|(_, (k, _))| *k != Kind::Healthy) {
        let reason = kind.reason().expect("broken");
        wait_for(&format!("a {reason} event on {crs}"), SHORT, || async {
            let events = env.events_for(crs, reason).await?;
            events
                .iter()
                .any(|e| e.type_.as_deref() == Some("Warning"))
                .then_some(())
                .ok_or(format!("{} {reason} events", events.len()))
        })
        .await;
        if *kind == Kind::Clash {
            let svc = env
                .services()
                .get(&format!("{crs}-http"))
                .await
                .expect("the foreign Service");
            assert!(
                svc.owner_references().is_empty()
                    && svc.spec.as_ref().and_then(|s| s.selector.as_ref())
                        == Some(&BTreeMap::from([(
                            "app".to_string(),
                            "someone-else".to_string()
                        )])),
                "a Service that belongs to someone else is left alone: {svc:?}"
            );
        }
    }
    let operator = env
        .operator
        .as_mut()
        .expect("this test starts its operator");
    assert_running(operator, "after a hundred CraneReplicaSets");
    let healthz = http_get(&operator.metrics_addr, "/healthz").await;
    assert!(healthz.is_ok(), "the operator is healthy: {healthz:?}");
    let errors = counter(
        operator,
        "crane_operator_reconcile_errors_total{reason=\"InvalidServicePort\"}",
    )
    .await
        + counter(
            operator,
            "crane_operator_reconcile_errors_total{reason=\"ServiceConflict\"}",
        )
        .await;

    // Never a hot loop: the broken ones failed no more often than their backoff (and their
    // own pods' and status' changes) let them.
    let failing_for = t0.elapsed();
    let most = BROKEN as u64 * (failures_by_backoff(failing_for) + TRIGGERED_PASSES);
    assert!(
        errors as u64 <= most,
        "chaos[{name}]: {errors} failed passes of the {BROKEN} broken CraneReplicaSets in {}, more than their backoff allows ({most}): a hot loop",
        secs(failing_for)
    );

    assert_watch_clean(&seen, name);
    let needed: u64 = plan.values().map(|(_, r)| r).sum();
    let created = seen.uids().len();
    let overshoot = created as i64 - needed as i64;
    eprintln!(
        "chaos[{name}]: SUMMARY {COUNT} CraneReplicaSets ({BROKEN} broken: {} without a containerPort, {} with a Service name taken) \
         created in {}, all settled {} after the first create; pods created {created}, needed {needed}, overshoot {overshoot}; \
         {errors} failed passes of the broken ones so far (backoff); operator log {}",
        plan.values().filter(|(k, _)| *k == Kind::NoPort).count(),
        plan.values().filter(|(k, _)| *k == Kind::Clash).count(),
        secs(created_in),
        secs(settled),
        operator.log.display()
    );
    assert!(
        overshoot <= 0,
        "chaos[{name}]: {overshoot} pods created beyond the replicas asked for (seed {})",
        base_seed()
    );
    let operator = env.operator.take().expect("the operator");
    stop_gracefully(operator).await;
    env.cleanup().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_bound_counts_one_failure_per_delay() {
        assert_eq!(failures_by_backoff(Duration::ZERO), 1);
        // 1, 2, 4, 8, 16, 32 s: failures at 0, 1, 3, 7, 15, 31 and 63 s.
        assert_eq!(failures_by_backoff(Duration::from_secs(62)), 6);
        assert_eq!(failures_by_backoff(Duration::from_secs(63)), 7);
        // Then one a minute.
        assert_eq!(failures_by_backoff(Duration::from_secs(243)), 10);
    }
}
