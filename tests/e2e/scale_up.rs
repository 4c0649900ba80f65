//! Scaling 0 → 200 creates exactly 200 pods: every pod ever seen in the namespace is
//! counted, so a stale cache that made the operator create twice would show.

use std::time::{Duration, Instant};

use crate::harness::*;

const PODS: usize = 200;

#[tokio::test]
async fn scale_from_0_to_200_creates_exactly_200_pods() {
    let env = TestEnv::new("scale200").await;
    env.create(crane("crane", 0)).await;
    env.wait_ready("crane", 0, LONG).await;
    let seen_pods = PodsEverSeen::start(&env).await;

    let start = Instant::now();
    env.kubectl(&["scale", "crs", "crane", &format!("--replicas={PODS}")]);
    // kwok's simulated pods are Ready as soon as they are scheduled; real ones (a kind
    // cluster's three workers) first start a sandbox and a container each.
    let deadline = Duration::from_secs(if has_kwok_nodes() { 180 } else { 300 });
    env.wait_ready("crane", PODS, deadline).await;
    let elapsed = start.elapsed();
    eprintln!(
        "scale 0 -> {PODS}: all Ready and reported in the status after {:.1} s",
        elapsed.as_secs_f64()
    );

    // Keep watching a little: a late duplicate creation would show up now.
    let settle = Instant::now() + Duration::from_secs(3);
    wait_for(
        &format!("{PODS} pods to stay {PODS} for 3 s"),
        Duration::from_secs(10),
        || async {
            let active = env.active_pods("crane").await?.len();
            if active != PODS {
                panic!("the pod count left {PODS}: {active} active pods");
            }
            (Instant::now() >= settle)
                .then_some(())
                .ok_or(format!("{active} active, still observing"))
        },
    )
    .await;

    let errors = seen_pods.errors();
    assert!(
        errors.is_empty(),
        "the pod watch had errors, so the count may have gaps: {errors:?}"
    );
    let uids = seen_pods.uids();
    assert_eq!(
        uids.len(),
        PODS,
        "pods ever seen in the namespace: {} (expected exactly {PODS})",
        uids.len()
    );
    let st = env.crs().get("crane").await.unwrap().status.unwrap();
    assert_eq!(
        (st.replicas, st.ready_replicas, st.available_replicas),
        (200, 200, 200),
        "{st:?}"
    );
    // One pass made the 200 pods (at most 500 per pass): one event, naming ten of them.
    let notes = wait_for("the SuccessfulCreate event", SHORT, || async {
        let events = env.events_for("crane", "SuccessfulCreate").await?;
        let notes: Vec<String> = events
            .iter()
            .filter_map(|e| e.note.clone())
            .filter(|n| n.contains("pod"))
            .collect();
        (!notes.is_empty())
            .then_some(notes.clone())
            .ok_or("none yet".to_string())
    })
    .await;
    let [note] = notes.as_slice() else {
        panic!("one event per pass, not per pod: {notes:#?}");
    };
    let named = note
        .strip_prefix(&format!("Created {PODS} pods: "))
        .and_then(|names| names.strip_suffix(&format!(" and {} more", PODS - 10)))
        .unwrap_or_else(|| panic!("{note}"));
    assert_eq!(named.split(", ").count(), 10, "{note}");
    env.cleanup().await;
}
