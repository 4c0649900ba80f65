//! Ownership: adoption of orphans, release of relabelled pods, scale-down ranking, garbage
//! collection.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::harness::*;

fn bare_pod(name: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": suite_pod_spec(json!({"containers": [{"name": "crane", "image": APP_IMAGE}]}))
    }))
    .unwrap()
}

#[tokio::test]
async fn orphans_with_matching_labels_are_adopted() {
    let env = TestEnv::new("adopt").await;
    env.pods()
        .create(&PostParams::default(), &bare_pod("orphan", "crane"))
        .await
        .unwrap();
    env.pods()
        .create(&PostParams::default(), &bare_pod("stranger", "other"))
        .await
        .unwrap();
    let crs = env.create(crane("crane", 2)).await;
    let pods = env.wait_ready("crane", 2, LONG).await;
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    assert!(
        names.contains(&"orphan".to_string()),
        "the orphan is one of the two: {names:?}"
    );
    let orphan = env.pods().get("orphan").await.unwrap();
    assert_eq!(orphan.owner_references()[0].uid, crs.uid().unwrap());
    assert_eq!(
        orphan
            .labels()
            .get("crane.dev/replicaset")
            .map(String::as_str),
        Some("crane")
    );
    let stranger = env.pods().get("stranger").await.unwrap();
    assert!(
        stranger.owner_references().is_empty(),
        "a pod that does not match is left alone"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn relabelled_pod_is_released_and_replaced() {
    let env = TestEnv::new("release").await;
    env.create(crane("crane", 2)).await;
    let pods = env.wait_ready("crane", 2, LONG).await;
    let victim = pods[0].name_any();
    let relabel = json!({"metadata": {"labels": {"app": "debug"}}});
    env.pods()
        .patch(&victim, &PatchParams::default(), &Patch::Merge(relabel))
        .await
        .unwrap();
    let released = wait_for("the pod to be released", SHORT, || async {
        let pod = env.pods().get(&victim).await.map_err(|e| e.to_string())?;
        let free =
            pod.owner_references().is_empty() && !pod.labels().contains_key("crane.dev/replicaset");
        free.then_some(pod.clone())
            .ok_or(seen((pod.owner_references(), pod.labels())))
    })
    .await;
    let after = env.wait_ready("crane", 2, LONG).await;
    assert!(
        after.iter().all(|p| p.name_any() != victim),
        "the relabelled pod is no longer counted"
    );
    // Read again after one more pass (a touch of the object brings it to one): a pod deleted
    // after its release is gone or terminating by then, which the copy taken at the release
    // cannot show.
    env.touch_and_wait_for_its_pass("crane").await;
    let now = env
        .pods()
        .get_opt(&victim)
        .await
        .expect("read the released pod");
    assert!(
        now.as_ref().is_some_and(|p| p.uid() == released.uid()
            && p.metadata.deletion_timestamp.is_none()
            && p.owner_references().is_empty()),
        "released, not deleted: {:?}",
        now.map(|p| (
            p.uid(),
            p.metadata.deletion_timestamp.clone(),
            p.owner_references().to_vec()
        ))
    );
    env.cleanup().await;
}

#[tokio::test]
async fn scale_down_honours_pod_deletion_cost() {
    let env = TestEnv::new("cost").await;
    env.create(crane("crane", 6)).await;
    let mut pods = env.wait_ready("crane", 6, LONG).await;
    // Without costs, pods ready in the same (logarithmic) time bucket go in UID order, the
    // lowest first: the costs go the other way, so that a ranking that ignored them would
    // delete the wrong three (and with ready times in different buckets, pick the right
    // three by chance one time in twenty).
    pods.sort_by_key(|p| p.uid());
    let n = pods.len();
    for (i, pod) in pods.iter().enumerate() {
        let cost = (100 * (n - 1 - i)).to_string();
        let patch = json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": cost}}});
        env.pods()
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .unwrap();
    }
    env.kubectl(&["scale", "crs", "crane", "--replicas=3"]);
    let after = env.wait_ready("crane", 3, LONG).await;
    let mut kept: Vec<String> = after.iter().map(|p| p.name_any()).collect();
    kept.sort();
    let mut dearest: Vec<String> = pods[..3].iter().map(|p| p.name_any()).collect();
    dearest.sort();
    assert_eq!(
        kept, dearest,
        "the three cheapest pods went, the dearest stayed"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn deleting_the_crane_replica_set_collects_its_pods_and_service() {
    let env = TestEnv::new("gc").await;
    env.create(crane("crane", 2)).await;
    env.wait_ready("crane", 2, LONG).await;
    wait_for("the service", SHORT, || async {
        env.services()
            .get_opt("crane-http")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("none".to_string())
    })
    .await;
    env.crs()
        .delete("crane", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "the garbage collector to remove pods and service",
        LONG,
        || async {
            let pods = env
                .pods()
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            let svc = env
                .services()
                .get_opt("crane-http")
                .await
                .map_err(|e| e.to_string())?
                .is_some();
            (pods == 0 && !svc)
                .then_some(())
                .ok_or(format!("{pods} pods, service present: {svc}"))
        },
    )
    .await;
    env.cleanup().await;
}

/// `kubectl delete --cascade=orphan`, then the same CraneReplicaSet again: it takes back
/// its pods and its Service (once a ServiceConflict for good).
#[tokio::test]
async fn an_object_recreated_after_an_orphaning_delete_adopts_its_pods_and_service() {
    let env = TestEnv::new("orphaned").await;
    env.create(crane("crane", 2)).await;
    let before = env.wait_ready("crane", 2, LONG).await;
    wait_for("the service", SHORT, || async {
        env.services()
            .get_opt("crane-http")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("none".to_string())
    })
    .await;
    env.kubectl(&["delete", "crs", "crane", "--cascade=orphan", "--wait=true"]);
    wait_for("the service to be orphaned", LONG, || async {
        let svc = env
            .services()
            .get("crane-http")
            .await
            .map_err(|e| e.to_string())?;
        svc.owner_references()
            .is_empty()
            .then_some(())
            .ok_or(seen(svc.owner_references()))
    })
    .await;
    let crs = env.create(crane("crane", 2)).await;
    let uid = crs.uid().unwrap();
    wait_for("the service to be re-adopted", LONG, || async {
        let svc = env
            .services()
            .get("crane-http")
            .await
            .map_err(|e| e.to_string())?;
        let owned = svc.owner_references().iter().any(|o| o.uid == uid);
        owned.then_some(()).ok_or(seen(svc.owner_references()))
    })
    .await;
    let after = env.wait_ready("crane", 2, LONG).await;
    let names = |pods: &[Pod]| {
        let mut n: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&after), names(&before), "the same pods, adopted");
    let conflict = env.condition("crane", "ServiceFailure").await.unwrap();
    assert!(
        conflict.as_ref().is_none_or(|c| c.status == "False"),
        "no ServiceConflict: {conflict:?}"
    );
    env.cleanup().await;
}
