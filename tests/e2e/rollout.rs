//! Template changes: OnDelete (the default, a ReplicationController's behaviour) leaves
//! running pods alone; RollingUpdate replaces them within maxSurge / maxUnavailable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::harness::*;

const HASH: &str = "crane.dev/template-hash";

/// Changes the template (a new annotation), as a new image version would.
async fn change_template(env: &TestEnv, version: &str) {
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {"example.com/version": version}}}}});
    env.crs()
        .patch("crane", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

fn hashes(pods: &[Pod]) -> BTreeMap<String, usize> {
    let mut by_hash = BTreeMap::new();
    for p in pods {
        *by_hash
            .entry(p.labels().get(HASH).cloned().unwrap_or_default())
            .or_insert(0) += 1;
    }
    by_hash
}

#[tokio::test]
async fn on_delete_leaves_running_pods_alone_and_new_pods_get_the_new_template() {
    let env = TestEnv::new("ondelete").await;
    env.create(crane("crane", 2)).await;
    let before = env.wait_ready("crane", 2, LONG).await;
    change_template(&env, "2").await;
    wait_for("the status to see the new generation", SHORT, || async {
        let crs = env.crs().get("crane").await.map_err(|e| e.to_string())?;
        let st = crs.status.clone().unwrap_or_default();
        (st.observed_generation == crs.metadata.generation && st.updated_replicas == 0)
            .then_some(())
            .ok_or(seen(st))
    })
    .await;
    let pods = env.wait_ready("crane", 2, SHORT).await;
    let names = |p: &[Pod]| p.iter().map(|p| p.name_any()).collect::<Vec<_>>();
    assert_eq!(
        names(&pods),
        names(&before),
        "OnDelete: running pods are left alone"
    );

    // A pod deleted by hand comes back with the new template.
    env.pods()
        .delete(&before[0].name_any(), &Default::default())
        .await
        .unwrap();
    wait_for("a replacement with the new template", LONG, || async {
        let pods = env.active_pods("crane").await?;
        let fresh = pods
            .iter()
            .filter(|p| {
                p.annotations()
                    .get("example.com/version")
                    .map(String::as_str)
                    == Some("2")
            })
            .count();
        let st = env.status("crane").await?;
        (pods.len() == 2 && fresh == 1 && st.updated_replicas == 1)
            .then_some(())
            .ok_or(seen((pods.len(), fresh, st.updated_replicas)))
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn rolling_update_keeps_nine_of_ten_ready_and_ends_on_the_new_template() {
    let env = TestEnv::new("rolling").await;
    let mut manifest = crane("crane", 10);
    manifest["spec"]["updateStrategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}});
    env.create(manifest).await;
    let before = env.wait_ready("crane", 10, LONG).await;
    let old_hash = before[0].labels()[HASH].clone();

    // Ready and active (not terminating, not finished) pods of ours as the watch sees them,
    // the lowest ready and highest active counts, and the watch's errors (after one, it
    // relists, and what happened in the gap went unseen), for the whole rollout.
    #[derive(Default)]
    struct Seen {
        pods: BTreeMap<String, (bool, bool)>,
        lowest_ready: usize,
        highest_active: usize,
        errors: Vec<String>,
    }
    let seen_pods: Arc<Mutex<Seen>> = Arc::default();
    let watch = {
        let seen_pods = seen_pods.clone();
        let events = watcher(env.pods(), watcher::Config::default()).default_backoff();
        tokio::spawn(events.for_each(move |event| {
            let mut s = seen_pods.lock().unwrap();
            match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                    let active = pod.metadata.deletion_timestamp.is_none()
                        && controlled_by(&pod, "crane")
                        && !matches!(phase, Some("Succeeded" | "Failed"));
                    s.pods
                        .insert(pod.name_any(), (active, active && is_ready(&pod)));
                }
                Ok(watcher::Event::Delete(pod)) => {
                    s.pods.remove(&pod.name_any());
                }
                Ok(_) => {}
                Err(e) => s.errors.push(e.to_string()),
            }
            let active = s.pods.values().filter(|(a, _)| *a).count();
            let ready = s.pods.values().filter(|(_, r)| *r).count();
            s.lowest_ready = s.lowest_ready.min(ready);
            s.highest_active = s.highest_active.max(active);
            futures::future::ready(())
        }))
    };
    wait_for("the watch to see all 10 ready pods", SHORT, || async {
        let n = seen_pods
            .lock()
            .unwrap()
            .pods
            .values()
            .filter(|(_, r)| *r)
            .count();
        (n == 10).then_some(()).ok_or(format!("{n} ready"))
    })
    .await;

    // From here on, before the template changes, the counts are what the rollout left.
    {
        let mut s = seen_pods.lock().unwrap();
        (s.lowest_ready, s.highest_active) = (10, 10);
    }
    change_template(&env, "2").await;
    let after = wait_for(
        "all 10 pods on the new template and the status saying so",
        LONG,
        || async {
            let pods = env.active_pods("crane").await?;
            let st = env.status("crane").await?;
            let by_hash = hashes(&pods);
            let done = pods.len() == 10
                && pods.iter().all(is_ready)
                && !by_hash.contains_key(&old_hash)
                && st.updated_replicas == 10
                && st.ready_replicas == 10;
            done.then_some(pods.clone()).ok_or(seen((
                by_hash,
                st.updated_replicas,
                st.ready_replicas,
            )))
        },
    )
    .await;
    watch.abort();
    let (low, high, errors) = {
        let s = seen_pods.lock().unwrap();
        (s.lowest_ready, s.highest_active, s.errors.clone())
    };
    eprintln!(
        "rolling update of 10 with maxSurge 0, maxUnavailable 1: lowest ready count seen {low}, highest active count {high}"
    );
    assert!(
        errors.is_empty(),
        "the pod watch failed, so the counts prove nothing: {errors:?}"
    );
    assert!(
        low >= 9,
        "fewer than 9 pods were ready during the rollout: {low}"
    );
    assert!(
        high <= 10,
        "more than 10 + maxSurge 0 pods were active during the rollout: {high}"
    );
    assert!(after.iter().all(|p| {
        p.annotations()
            .get("example.com/version")
            .map(String::as_str)
            == Some("2")
    }));
    env.cleanup().await;
}
