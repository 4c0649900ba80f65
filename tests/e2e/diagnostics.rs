//! Why pods are not ready, on the CraneReplicaSet: podIssues, the PodsReady condition, the
//! REASON column and one event per change. kwok's `crane.dev/simulate` label puts pods in
//! the failing states (tests/cluster/kwok.yaml).

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

use crate::harness::*;

/// A CraneReplicaSet whose pods are put in `simulate` by kwok, with an explicit selector so
/// that the template's labels may be fixed later.
fn failing(name: &str, replicas: i32, simulate: &str) -> Value {
    let mut m = crane(name, replicas);
    m["spec"]["selector"] = json!({"matchLabels": {"app": name}});
    m["spec"]["template"]["metadata"]["labels"]["crane.dev/simulate"] = json!(simulate);
    m
}

async fn warning_events(env: &TestEnv, reason: &str) -> Result<usize, String> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let list = events
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        // An event repeated as a series counts once per occurrence.
        .map(|e| e.series.as_ref().map_or(1, |s| s.count as usize))
        .sum())
}

/// Waits until the top pod issue is `reason` with `count` pods, and PodsReady says so.
async fn wait_for_issue(
    env: &TestEnv,
    name: &str,
    reason: &str,
    count: i32,
) -> crane_operator::api::PodIssue {
    wait_for(
        &format!("{count} pods with {reason} in the status"),
        LONG,
        || async {
            let st = env.status(name).await?;
            let ready = st.conditions.iter().find(|c| c.type_ == "PodsReady");
            match (st.pod_issues.first(), ready) {
                (Some(i), Some(c))
                    if i.reason == reason
                        && i.count == count
                        && c.reason == reason
                        && c.status == "False" =>
                {
                    Ok(i.clone())
                }
                other => Err(seen(other)),
            }
        },
    )
    .await
}

/// Fixes the template and deletes the failing pods (OnDelete: running pods keep their
/// template), then waits for the issues to clear.
async fn fix(env: &TestEnv, name: &str, replicas: usize) {
    let patch =
        json!({"spec": {"template": {"metadata": {"labels": {"crane.dev/simulate": null}}}}});
    let patched = env
        .crs()
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    // Only once the operator has seen the new template: a replacement made by a pass that
    // still read the old one (its watch of the object lagging the pod watch) would be a
    // failing pod again, kept for good under OnDelete.
    wait_for(
        "the operator to observe the fixed template",
        SHORT,
        || async {
            let st = env.status(name).await?;
            (st.observed_generation == patched.metadata.generation)
                .then_some(())
                .ok_or(seen(st.observed_generation))
        },
    )
    .await;
    for pod in env.active_pods(name).await.unwrap() {
        env.pods()
            .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
    env.wait_ready(name, replicas, LONG).await;
    wait_for("the issues to clear", SHORT, || async {
        let st = env.status(name).await?;
        let ready = st
            .conditions
            .iter()
            .find(|c| c.type_ == "PodsReady")
            .map(|c| c.status.clone());
        (st.pod_issues.is_empty() && ready.as_deref() == Some("True"))
            .then_some(())
            .ok_or(seen((st.pod_issues, ready)))
    })
    .await;
}

#[tokio::test]
async fn image_pull_backoff_is_reported_with_a_hint_and_clears_when_fixed() {
    let env = TestEnv::new("diag-pull").await;
    env.create(failing("crane", 2, "ImagePullBackOff")).await;
    let issue = wait_for_issue(&env, "crane", "ImagePullBackOff", 2).await;
    assert!(issue.hint.contains("registry"), "{issue:?}");
    assert!(issue.example_pod.starts_with("crane-"), "{issue:?}");
    let table = env.kubectl(&["get", "crs", "crane"]);
    assert!(table.lines().next().unwrap().contains("REASON"), "{table}");
    assert!(
        table.contains("ImagePullBackOff"),
        "kubectl get crs: {table}"
    );
    wait_for("one ImagePullBackOff event", SHORT, || async {
        match warning_events(&env, "ImagePullBackOff").await? {
            1 => Ok(()),
            n => Err(format!("{n} events")),
        }
    })
    .await;
    fix(&env, "crane", 2).await;
    assert_eq!(
        warning_events(&env, "ImagePullBackOff").await.unwrap(),
        1,
        "one event per change, not per pod or pass"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn crash_loop_backoff_is_reported_with_a_hint_and_clears_when_fixed() {
    let env = TestEnv::new("diag-crash").await;
    env.create(failing("crane", 1, "CrashLoopBackOff")).await;
    let issue = wait_for_issue(&env, "crane", "CrashLoopBackOff", 1).await;
    assert!(
        issue
            .hint
            .contains(&format!("kubectl logs --previous {}", issue.example_pod)),
        "{issue:?}"
    );
    fix(&env, "crane", 1).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_healthy_crane_replica_set_shows_no_issues_and_its_status_does_not_churn() {
    let env = TestEnv::new("diag-healthy").await;
    env.create(crane("crane", 3)).await;
    env.wait_ready("crane", 3, LONG).await;
    wait_for("PodsReady True and every count at 3", SHORT, || async {
        let crs = env.crs().get("crane").await.map_err(|e| e.to_string())?;
        let st = crs.status.clone().unwrap_or_default();
        let ready = st
            .conditions
            .iter()
            .any(|c| c.type_ == "PodsReady" && c.status == "True");
        let settled = st.observed_generation == crs.metadata.generation
            && (st.replicas, st.ready_replicas, st.available_replicas) == (3, 3, 3);
        (ready && settled && st.pod_issues.is_empty())
            .then_some(())
            .ok_or(seen(st))
    })
    .await;
    // In a steady state a pass writes nothing: after a pass of a touched object, the object
    // is as the touch left it, and stays so for longer than the operator defers a write of
    // changed counts (STATUS_BATCH, 1 s): an observation window, not a wait.
    let touched = env.touch_and_wait_for_its_pass("crane").await;
    let now = env.crs().get("crane").await.unwrap();
    assert_eq!(
        now.resource_version(),
        touched.resource_version(),
        "the pass after a touch wrote the object in a steady state; status before {:?}, after {:?}",
        touched.status,
        now.status
    );
    let params = WatchParams::default()
        .fields("metadata.name=crane")
        .timeout(3);
    let changes: Vec<_> = env
        .crs()
        .watch(&params, &touched.resource_version().unwrap_or_default())
        .await
        .unwrap()
        .try_filter(|e| futures::future::ready(matches!(e, WatchEvent::Modified(_))))
        .collect()
        .await;
    assert!(
        changes.is_empty(),
        "the status changed after the pass of a touch, in a steady state: {changes:?}"
    );
    env.cleanup().await;
}
