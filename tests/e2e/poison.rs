//! One object the operator cannot decode (the poison pill) must never stop the others: an
//! operator that starts with one present reconciles every other object, says which one it
//! skips (health, metrics, a Warning event on it), and takes it back once it is fixed.

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use crate::harness::*;

/// A date the API server accepts in a `metav1.Time` and the Rust types cannot hold
/// (k8s-openapi's `Time` is a jiff::Timestamp, which ends in year 9999 before this).
const BEYOND_JIFF: &str = "9999-12-31T23:59:59Z";

/// The CRD's schema refuses such dates since the schema fix, so the test admits one for a
/// moment: the CRD with the `pattern` of `status.conditions[].lastTransitionTime` removed.
fn crd_admitting_any_condition_time() -> Value {
    let mut crd = serde_json::to_value(crane_operator::api::crd()).expect("the CRD serializes");
    for version in crd["spec"]["versions"].as_array_mut().expect("versions") {
        let time = &mut version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
            ["conditions"]["items"]["properties"]["lastTransitionTime"];
        time.as_object_mut()
            .expect("a lastTransitionTime schema")
            .remove("pattern");
    }
    crd
}

/// Writes a condition dated [`BEYOND_JIFF`] into `name`'s status, through a CRD version
/// that admits it. Other tests re-apply the real CRD as they start, so the two steps are
/// repeated until the write lands.
pub(crate) async fn poison(env: &TestEnv, name: &str) {
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(env.client.clone());
    let ar = ApiResource::erase::<crane_operator::api::CraneReplicaSet>(&());
    let objects: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &ar);
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "False",
        "reason": "Poisoned", "message": "a date beyond what the operator can decode",
        "lastTransitionTime": BEYOND_JIFF}]}});
    wait_for(
        "a status the operator cannot decode to be stored",
        SHORT,
        || async {
            crds.patch(
                "cranereplicasets.crane.dev",
                &PatchParams::apply("crane-e2e").force(),
                &Patch::Apply(crd_admitting_any_condition_time()),
            )
            .await
            .map_err(|e| format!("relax the CRD: {e}"))?;
            objects
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .map_err(|e| format!("write the status: {e}"))?;
            Ok(())
        },
    )
    .await;
    install_crd(&env.client).await;
}

/// The readiness answer's body, if ready.
async fn readyz(operator: &Operator) -> Result<String, String> {
    http_get(&operator.metrics_addr, "/readyz").await
}

#[tokio::test]
async fn an_object_the_operator_cannot_decode_stops_no_other() {
    let env = TestEnv::without_operator("poison").await;
    env.create(crane("alive", 1)).await;
    env.create(crane("poison", 1)).await;
    poison(&env, "poison").await;

    // The operator starts (a restart, a leader hand-over, a relist after 410 Gone: each
    // lists every object) with the poison present.
    let operator = Operator::start(&env.ns, &[]);
    env.wait_ready("alive", 1, LONG).await;
    env.kubectl(&["scale", "crs", "alive", "--replicas=3"]);
    env.wait_ready("alive", 3, LONG).await;

    let skipped = format!(
        "cranereplicasets {}/poison: status.conditions[0].lastTransitionTime: ",
        env.ns
    );
    let body = wait_for("/readyz to name the object it skips", SHORT, || async {
        let body = readyz(&operator).await?;
        body.contains(&skipped)
            .then_some(body.clone())
            .ok_or_else(|| format!("/readyz said: {body}"))
    })
    .await;
    assert!(
        body.starts_with("ok\n"),
        "ready, serving the others: {body}"
    );
    let health = http_get(&operator.metrics_addr, "/healthz").await;
    assert!(
        health.as_ref().is_ok_and(|h| h.contains(&skipped)),
        "/healthz: {health:?}"
    );
    let metrics = operator.metrics().await.expect("metrics");
    assert_eq!(
        metric_value(
            &metrics,
            r#"crane_operator_undecodable_objects{resource="cranereplicasets"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            r#"crane_operator_decode_failures_total{resource="cranereplicasets"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    let events = wait_for("a Warning event on the object it skips", SHORT, || async {
        let events = env.events_for("poison", "DecodeFailed").await?;
        (!events.is_empty())
            .then_some(events)
            .ok_or_else(|| "no DecodeFailed event".to_string())
    })
    .await;
    let note = events[0].note.clone().unwrap_or_default();
    assert!(
        note.contains("status.conditions[0].lastTransitionTime"),
        "the event names the field: {note}"
    );
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));

    // Fixed (a status that decodes), it is reconciled again and no longer reported.
    let fixed = json!({"status": {"conditions": [{"type": "Ready", "status": "False",
        "reason": "Fixed", "message": "fixed", "lastTransitionTime": "2026-12-07T00:00:00Z"}]}});
    let ar = ApiResource::erase::<crane_operator::api::CraneReplicaSet>(&());
    let objects: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &ar);
    objects
        .patch_status("poison", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .expect("fix the status");
    wait_for("the fixed object to be reconciled", LONG, || async {
        let status = env.status("poison").await?;
        (status.observed_generation == Some(1) && status.replicas == 1)
            .then_some(())
            .ok_or_else(|| format!("status: {status:?}"))
    })
    .await;
    wait_for("/readyz to skip nothing", SHORT, || async {
        let body = readyz(&operator).await?;
        (body == "ok\n")
            .then_some(())
            .ok_or_else(|| format!("/readyz said: {body}"))
    })
    .await;
    drop(operator);
    env.cleanup().await;
}
