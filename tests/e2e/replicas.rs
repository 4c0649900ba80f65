//! Pods at `replicas`: creation, replacement, `kubectl scale`.

use std::collections::BTreeSet;

use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};

use crate::harness::*;

#[tokio::test]
async fn creates_replicas_and_reports_status() {
    let env = TestEnv::new("create").await;
    env.create(crane("crane", 3)).await;
    let pods = env.wait_ready("crane", 3, LONG).await;
    for pod in &pods {
        let name = pod.name_any();
        let suffix = name
            .strip_prefix("crane-")
            .expect("pods are named <crs>-<suffix>");
        assert_eq!(suffix.len(), 5, "{name}");
        assert_eq!(pod.labels()["app"], "crane");
    }
    let st = env.crs().get("crane").await.unwrap().status.unwrap();
    assert_eq!((st.fully_labeled_replicas, st.available_replicas), (3, 3));
    assert_eq!(st.selector.as_deref(), Some("app=crane"));
    let failures: Vec<_> = st
        .conditions
        .iter()
        .filter(|c| {
            c.status == "True"
                && ["ReplicaFailure", "ServiceFailure", "Stalled", "Reconciling"]
                    .contains(&c.type_.as_str())
        })
        .collect();
    assert!(failures.is_empty(), "{failures:?}");

    // One pass made the three pods: one event names them all (and one the Service).
    let names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    let notes = wait_for("the SuccessfulCreate events", SHORT, || async {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let mut notes: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("SuccessfulCreate"))
            .filter_map(|e| e.note.clone())
            .collect();
        notes.sort();
        (notes.len() == 2)
            .then_some(notes.clone())
            .ok_or(format!("{notes:?}"))
    })
    .await;
    let named: Option<BTreeSet<String>> = notes[0]
        .strip_prefix("Created 3 pods: ")
        .map(|n| n.split(", ").map(String::from).collect());
    assert_eq!(
        named.as_ref(),
        Some(&names),
        "one event for the pass that made the pods, naming each: {notes:?}"
    );
    assert_eq!(notes[1], "Created service: crane-http");
    env.cleanup().await;
}

#[tokio::test]
async fn replaces_a_deleted_pod() {
    let env = TestEnv::new("replace").await;
    env.create(crane("crane", 2)).await;
    let before = env.wait_ready("crane", 2, LONG).await;
    let victim = before[0].name_any();
    env.pods()
        .delete(&victim, &DeleteParams::default().grace_period(0))
        .await
        .expect("force-delete a pod");
    let after = wait_for("a replacement pod", SHORT, || async {
        let pods = env.active_pods("crane").await?;
        let names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
        (names.len() == 2 && !names.contains(&victim) && pods.iter().all(is_ready))
            .then_some(names.clone())
            .ok_or(seen(&names))
    })
    .await;
    assert!(
        after.contains(&before[1].name_any()),
        "the surviving pod is kept"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn kubectl_scale_follows() {
    let env = TestEnv::new("scale").await;
    env.create(crane("crane", 1)).await;
    env.wait_ready("crane", 1, LONG).await;
    env.kubectl(&["scale", "crs", "crane", "--replicas=4"]);
    env.wait_ready("crane", 4, LONG).await;
    let crs = env.crs().get("crane").await.unwrap();
    assert_eq!(crs.spec.replicas, 4);
    assert_eq!(
        crs.status.unwrap().observed_generation,
        crs.metadata.generation
    );
    env.kubectl(&["scale", "crs", "crane", "--replicas=0"]);
    env.wait_ready("crane", 0, LONG).await;
    let table = env.kubectl(&["get", "crs", "crane"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "EXTERNAL-IP",
            "AGE",
            "REASON"
        ]
    );
    env.cleanup().await;
}
