//! What only the controller can see is reported, never a crash: a ResourceQuota that
//! refuses pods, pods that fail, a Service without a port to send to.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceQuota;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::harness::*;

/// Backoff after failed passes caps at 60 s, and the quota controller needs a moment to
/// recount: enough for the first retry after the quota is lifted.
const AFTER_BACKOFF: Duration = Duration::from_secs(150);

#[tokio::test]
async fn resource_quota_gives_failed_create_until_lifted() {
    let env = TestEnv::new("quota").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(env.client.clone(), &env.ns);
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "pods"},
        "spec": {"hard": {"pods": "2"}}
    }))
    .unwrap();
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("create the ResourceQuota");
    // Until the quota controller has written the quota's status, admission refuses every
    // pod ("status unknown for quota"), which is not the case under test.
    wait_for(
        "the quota controller to count the namespace",
        SHORT,
        || async {
            let q = quotas.get("pods").await.map_err(|e| e.to_string())?;
            let hard = q.status.as_ref().and_then(|s| s.hard.as_ref());
            hard.is_some_and(|h| h.contains_key("pods"))
                .then_some(())
                .ok_or(seen(&q.status))
        },
    )
    .await;

    env.create(crane("crane", 4)).await;
    // The status catches up with the pods' readiness on a later pass: wait for all three.
    let condition = wait_for(
        "2 ready pods, a status saying so, and a ReplicaFailure condition",
        LONG,
        || async {
            let pods = env.active_pods("crane").await?;
            let ready = pods.iter().filter(|p| is_ready(p)).count();
            let st = env.status("crane").await?;
            let cond = st
                .conditions
                .iter()
                .find(|c| c.type_ == "ReplicaFailure")
                .cloned();
            match cond {
                Some(c)
                    if pods.len() == 2
                        && ready == 2
                        && (st.replicas, st.ready_replicas) == (2, 2) =>
                {
                    Ok(c)
                }
                _ => Err(format!(
                    "{} active pods, {ready} ready; status {st:?}",
                    pods.len()
                )),
            }
        },
    )
    .await;
    assert_eq!(condition.status, "True", "{condition:?}");
    assert_eq!(condition.reason, "FailedCreate", "{condition:?}");
    let message = condition.message.clone();
    assert!(
        message.contains("exceeded quota"),
        "the message names the quota: {message}"
    );
    // kstatus: it cannot progress without a fix, so Stalled says why, and it is not Ready.
    let st = env.status("crane").await.expect("the status");
    let stalled = st.conditions.iter().find(|c| c.type_ == "Stalled");
    assert!(
        stalled.is_some_and(|c| c.status == "True" && c.reason == "FailedCreate"),
        "Stalled: {stalled:?}"
    );
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
    assert!(
        ready.is_some_and(|c| c.status == "False"),
        "Ready: {ready:?}"
    );

    let warnings = wait_for("FailedCreate Warning events", SHORT, || async {
        let events = env.events_for("crane", "FailedCreate").await?;
        (!events.is_empty())
            .then_some(events.clone())
            .ok_or("none yet".to_string())
    })
    .await;
    for event in &warnings {
        assert_eq!(event.type_.as_deref(), Some("Warning"), "{event:?}");
        let note = event.note.as_deref().unwrap_or_default();
        assert!(
            note.contains("exceeded quota"),
            "the event names the quota: {note}"
        );
    }
    let crs = env.crs().get("crane").await.unwrap();
    let st = crs.status.unwrap();
    assert_eq!(
        (st.replicas, st.ready_replicas),
        (2, 2),
        "status counts the 2 pods that exist"
    );
    let pods = env.active_pods("crane").await.unwrap();
    assert_eq!(pods.len(), 2, "exactly 2 pods exist under a quota of 2");

    // Lift the quota: the next retry (at most a minute away) creates the other 2 pods, and
    // the condition goes away.
    quotas
        .patch(
            "pods",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"hard": {"pods": "10"}}})),
        )
        .await
        .expect("raise the quota");
    env.wait_ready("crane", 4, AFTER_BACKOFF).await;
    wait_for("the ReplicaFailure condition to clear", SHORT, || async {
        match env.condition("crane", "ReplicaFailure").await? {
            None => Ok(()),
            Some(c) => Err(seen(c)),
        }
    })
    .await;
    assert_eq!(env.active_pods("crane").await.unwrap().len(), 4);
    env.cleanup().await;
}

#[tokio::test]
async fn failed_pods_are_replaced_and_not_counted() {
    let env = TestEnv::new("failed").await;
    env.create(crane("crane", 2)).await;
    let before = env.wait_ready("crane", 2, LONG).await;
    let victim = before[0].clone();
    let victim_name = victim.name_any();
    // kwok's crane-pod-failed stage turns a labelled pod into phase Failed, every container
    // terminated with exit code 1 (tests/cluster/kwok.yaml). The label leaves the pod
    // matching the selector, so only its phase takes it out of the count.
    env.kubectl(&["label", "pod", &victim_name, "crane.dev/simulate=Failed"]);
    wait_for("the pod to fail", SHORT, || async {
        let pod = env
            .pods()
            .get(&victim_name)
            .await
            .map_err(|e| e.to_string())?;
        let phase = pod.status.and_then(|s| s.phase);
        (phase.as_deref() == Some("Failed"))
            .then_some(())
            .ok_or(seen(phase))
    })
    .await;

    let after = wait_for(
        "a replacement for the Failed pod, and a status that skips it",
        LONG,
        || async {
            let pods = env.active_pods("crane").await?;
            let names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
            let st = env.status("crane").await?;
            if names.len() == 2
                && !names.contains(&victim_name)
                && pods.iter().all(is_ready)
                && st.replicas == 2
                && st.ready_replicas == 2
            {
                Ok(names)
            } else {
                Err(format!("active {names:?}; status {st:?}"))
            }
        },
    )
    .await;
    assert!(
        after.contains(&before[1].name_any()),
        "the healthy pod is kept: {after:?}"
    );

    // The Failed pod is still there, still owned (as with a ReplicaSet, finished pods are left
    // to the pod garbage collector), and yet status.replicas is 2, so it is not counted.
    let failed = env
        .pods()
        .get(&victim_name)
        .await
        .expect("the Failed pod is left in place");
    assert_eq!(
        failed.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed")
    );
    assert_eq!(failed.metadata.uid, victim.metadata.uid);
    assert!(
        controlled_by(&failed, "crane"),
        "the Failed pod keeps its owner"
    );
    // The status may still show an earlier pass (it lags the pods by one reconcile).
    wait_for(
        "the status to count 2 replicas, not the Failed pod",
        SHORT,
        || async {
            let st = env.status("crane").await?;
            ((st.replicas, st.ready_replicas, st.available_replicas) == (2, 2, 2))
                .then_some(())
                .ok_or(seen(st))
        },
    )
    .await;
    let all = env.pods().list(&Default::default()).await.unwrap().items;
    assert_eq!(
        all.len(),
        3,
        "2 active pods and the Failed one, no more: {:?}",
        all.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    env.cleanup().await;
}

#[tokio::test]
async fn service_without_a_port_is_a_condition_not_a_crash() {
    let mut env = TestEnv::new("noport").await;
    let mut manifest = crane("crane", 2);
    manifest["spec"]["template"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("ports");
    env.create(manifest).await;

    let condition = wait_for("a ServiceFailure condition", LONG, || async {
        env.condition("crane", "ServiceFailure")
            .await?
            .ok_or("no condition yet".to_string())
    })
    .await;
    assert_eq!(condition.status, "True", "{condition:?}");
    assert_eq!(condition.reason, "InvalidServicePort", "{condition:?}");
    let message = condition.message.clone();
    assert!(
        message.contains("spec.service.targetPort"),
        "the message names the field: {message}"
    );

    wait_for("an InvalidServicePort Warning event", SHORT, || async {
        let events = env.events_for("crane", "InvalidServicePort").await?;
        events
            .iter()
            .any(|e| e.type_.as_deref() == Some("Warning"))
            .then_some(())
            .ok_or(format!("{} such events", events.len()))
    })
    .await;

    // The pods are made all the same, and no Service is.
    env.wait_ready("crane", 2, LONG).await;
    assert!(
        env.services()
            .get_opt("crane-http")
            .await
            .unwrap()
            .is_none(),
        "no Service without a port to send to"
    );
    if let Some(operator) = env.operator.as_ref() {
        assert!(
            http_get(&operator.metrics_addr, "/healthz").await.is_ok(),
            "the operator is healthy"
        );
    }

    // Naming the port fixes it: the Service appears and the condition goes away.
    env.crs()
        .patch(
            "crane",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"service": {"targetPort": 7070}}})),
        )
        .await
        .expect("set spec.service.targetPort");
    wait_for(
        "the Service, and the ServiceFailure condition cleared",
        LONG,
        || async {
            let svc = env
                .services()
                .get_opt("crane-http")
                .await
                .map_err(|e| e.to_string())?;
            let cond = env.condition("crane", "ServiceFailure").await?;
            match (&svc, &cond) {
                (Some(_), None) => Ok(()),
                _ => Err(format!(
                    "service exists: {}; condition {cond:?}",
                    svc.is_some()
                )),
            }
        },
    )
    .await;

    if let Some(op) = env.operator.as_mut() {
        assert!(
            op.exit_status().is_none(),
            "the operator kept running: {:?}",
            op.exit_status()
        );
    }
    env.cleanup().await;
}

/// A CraneReplicaSet whose pods the API server always refuses costs a bounded number of
/// requests (per-object exponential backoff: 1 s doubling to 60 s) and does not slow down
/// a healthy one next to it.
#[tokio::test]
async fn a_permanently_failing_crane_replica_set_backs_off_and_delays_no_one() {
    let env = TestEnv::new("backoff").await;
    let operator = env
        .operator
        .as_ref()
        .expect("this test reads its operator's metrics");
    // Valid for the CRD, refused by the pod API (container names are RFC 1123 labels).
    let mut broken = crane("broken", 3);
    broken["spec"]["template"]["spec"]["containers"][0]["name"] = json!("Not_A_Name");
    env.create(broken).await;
    env.create(crane("healthy", 3)).await;
    env.wait_ready("healthy", 3, SHORT).await;

    let failed_passes = || async {
        let text = operator.metrics().await?;
        metric_value(
            &text,
            "crane_operator_reconcile_errors_total{reason=\"FailedCreate\"}",
        )
        .ok_or("no FailedCreate series".to_string())
    };
    let first = wait_for("the first failed pass", SHORT, || async {
        let n = failed_passes().await?;
        (n >= 1.0).then_some(n).ok_or(format!("{n}"))
    })
    .await;
    // A measurement window, not a wait: the rate of failed passes is what is under test.
    const WINDOW: Duration = Duration::from_secs(30);
    tokio::time::sleep(WINDOW).await;
    let passes = failed_passes().await.unwrap() - first;
    // Backoff 1, 2, 4, 8, 16 s: about 5 passes in 30 s; each costs one pod create and at
    // most one event write (a repeat only counts in its series, written at most once a second):
    // an upper bound of 2 requests per pass. Without backoff it would be hundreds.
    eprintln!(
        "permanently failing CraneReplicaSet: {passes} failed passes in {WINDOW:?} (~{} API requests/min)",
        passes * 2.0 * 2.0
    );
    assert!(
        passes <= 8.0,
        "{passes} failed passes in {WINDOW:?}: the backoff is not working"
    );
    // The healthy one was served throughout, and still is.
    env.kubectl(&["scale", "crs", "healthy", "--replicas=5"]);
    env.wait_ready("healthy", 5, SHORT).await;
    env.cleanup().await;
}
