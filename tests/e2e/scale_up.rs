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
    env.wait_ready("crane", PODS, Duration::from_secs(180))
        .await;
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
    env.cleanup().await;
}
