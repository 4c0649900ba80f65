//! The status as the ecosystem's tools read it (kstatus: Helm 4's `--wait`, Flux, Argo CD,
//! `kubectl wait`): Ready when every desired pod is available on the current generation,
//! Stalled (and never Ready) when the pods cannot start.

use serde_json::json;

use crate::harness::*;

/// `kubectl wait --for=condition=Ready` returns once the pods are available; for an object
/// whose pods all sit in ImagePullBackOff it times out, and Stalled says why.
#[tokio::test]
async fn kubectl_wait_for_ready_returns_when_available_and_times_out_when_stalled() {
    let env = TestEnv::new("kstatus-wait").await;
    env.create(crane("good", 3)).await;
    env.kubectl_result(
        &["wait", "--for=condition=Ready", "crs/good", "--timeout=60s"],
        None,
    )
    .unwrap_or_else(|e| panic!("Ready never came: {e}"));
    let st = env.status("good").await.unwrap();
    assert_eq!(st.available_replicas, 3, "Ready means available: {st:?}");

    let mut bad = crane("bad", 2);
    bad["spec"]["selector"] = json!({"matchLabels": {"app": "bad"}});
    bad["spec"]["template"]["metadata"]["labels"]["crane.dev/simulate"] = json!("ImagePullBackOff");
    env.create(bad).await;
    let stalled = wait_for("Stalled True on bad", LONG, || async {
        match env.condition("bad", "Stalled").await? {
            Some(c) if c.status == "True" => Ok(c),
            other => Err(seen(other)),
        }
    })
    .await;
    assert_eq!(stalled.reason, "ImagePullBackOff", "{stalled:?}");
    let waited = env.kubectl_result(
        &["wait", "--for=condition=Ready", "crs/bad", "--timeout=3s"],
        None,
    );
    // The timeout itself: any other error (no such object, no API server) proves nothing.
    assert!(
        waited
            .as_ref()
            .is_err_and(|e| e.contains("timed out waiting for the condition")),
        "kubectl wait must time out on a stalled object: {waited:?}"
    );
    let reconciling = env.condition("bad", "Reconciling").await.unwrap();
    assert!(
        reconciling.is_some_and(|c| c.status == "False"),
        "Stalled and Reconciling are never both True"
    );
    env.cleanup().await;
}

/// Helm 4 waits with kstatus: `helm install --wait` of a chart holding a CraneReplicaSet
/// returns once it is Ready, not at once and not never.
#[tokio::test]
async fn helm_install_wait_waits_for_a_crane_replica_set() {
    let env = TestEnv::new("kstatus-helm").await;
    let dir = std::env::temp_dir().join(format!("crane-kstatus-chart-{}", env.ns));
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: tiny\nversion: 0.1.0\n",
    )
    .unwrap();
    let manifest = serde_json::to_string(&crane("tiny", 4)).unwrap();
    std::fs::write(dir.join("templates/crs.json"), manifest).unwrap();
    let chart = dir.to_string_lossy().into_owned();
    let kubeconfig = kubeconfig_path().to_string_lossy().into_owned();
    let out = run_tool(
        "helm",
        &[
            "install",
            "tiny",
            &chart,
            "--namespace",
            &env.ns,
            "--kubeconfig",
            &kubeconfig,
            "--wait",
            "--timeout",
            "90s",
        ],
        None,
    );
    let st = env.status("tiny").await;
    std::fs::remove_dir_all(&dir).ok();
    out.unwrap_or_else(|e| panic!("helm install --wait failed: {e}"));
    let st = st.unwrap();
    assert_eq!(
        (st.replicas, st.available_replicas),
        (4, 4),
        "helm returned before the pods were available: {st:?}"
    );
    let _ = run_tool(
        "helm",
        &[
            "uninstall",
            "tiny",
            "--namespace",
            &env.ns,
            "--kubeconfig",
            &kubeconfig,
        ],
        None,
    );
    env.cleanup().await;
}
