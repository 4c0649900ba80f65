//! Running the operator: its metrics and health endpoints, leader election between two
//! processes, and a clean exit on SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Lease duration (15 s) plus a retry period (2 s), with room for a busy machine.
const TAKEOVER: Duration = Duration::from_secs(30);

fn signal(operator: &Operator, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &operator.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {} failed", operator.pid());
}

fn leader_election_args(ns: &str) -> [&str; 3] {
    ["--leader-elect", "--leader-elect-namespace", ns]
}

async fn leader_gauge(operator: &Operator) -> Result<f64, String> {
    let text = operator.metrics().await?;
    metric_value(&text, "crane_operator_leader")
        .ok_or_else(|| "no crane_operator_leader sample".to_string())
}

#[tokio::test]
async fn metrics_and_health_endpoints() {
    let env = TestEnv::new("metrics").await;
    let operator = env
        .operator
        .as_ref()
        .expect("this test scrapes the operator it starts");
    env.create(crane("crane", 3)).await;
    env.wait_ready("crane", 3, LONG).await;

    // The last pass after the pods were observed leaves no expectation open.
    let text = wait_for("expectations_unsatisfied to read 0", SHORT, || async {
        let text = operator.metrics().await?;
        match metric_value(&text, "crane_operator_expectations_unsatisfied") {
            Some(0.0) => Ok(text),
            v => Err(format!("crane_operator_expectations_unsatisfied = {v:?}")),
        }
    })
    .await;
    let families = [
        ("crane_operator_reconcile", "counter"),
        ("crane_operator_reconcile_errors", "counter"),
        ("crane_operator_reconcile_duration_seconds", "histogram"),
        ("crane_operator_pods_created", "counter"),
        ("crane_operator_pods_deleted", "counter"),
        ("crane_operator_expectations_unsatisfied", "gauge"),
        ("crane_operator_leader", "gauge"),
    ];
    let mut problems = Vec::new();
    for (family, kind) in families {
        match metric_type(&text, family) {
            Some(t) if t == kind => {}
            other => problems.push(format!(
                "{family}: expected `# TYPE {family} {kind}`, found {other:?}"
            )),
        }
    }
    let value = |series: &str| metric_value(&text, series);
    type Check = fn(f64) -> bool;
    let checks: [(&str, Check, &str); 6] = [
        // Exactly the 3 created: a count that runs ahead of the creations is as wrong as
        // one that lags.
        ("crane_operator_pods_created_total", |v| v == 3.0, "== 3"),
        ("crane_operator_pods_deleted_total", |v| v == 0.0, "== 0"),
        (
            "crane_operator_reconcile_total{result=\"success\"}",
            |v| v > 0.0,
            "> 0",
        ),
        (
            "crane_operator_reconcile_duration_seconds_count",
            |v| v > 0.0,
            "> 0",
        ),
        (
            "crane_operator_expectations_unsatisfied",
            |v| v == 0.0,
            "== 0",
        ),
        ("crane_operator_leader", |v| v == 1.0, "== 1"),
    ];
    for (series, ok, wanted) in &checks {
        match value(series) {
            Some(v) if ok(v) => {}
            v => problems.push(format!("{series}: expected {wanted}, found {v:?}")),
        }
    }
    assert!(
        problems.is_empty(),
        "metrics:\n  - {}\n--- /metrics ---\n{text}",
        problems.join("\n  - ")
    );

    http_get(&operator.metrics_addr, "/healthz")
        .await
        .expect("/healthz is 200");
    http_get(&operator.metrics_addr, "/readyz")
        .await
        .expect("/readyz is 200");
    env.cleanup().await;
}

#[tokio::test]
async fn leader_election_hands_over_without_extra_pods() {
    let env = TestEnv::without_operator("leader").await;
    let args = leader_election_args(&env.ns);
    let mut operators = [
        Operator::start(&env.ns, &args),
        Operator::start(&env.ns, &args),
    ];
    let seen_pods = PodsEverSeen::start(&env).await;

    env.create(crane("crane", 3)).await;
    env.wait_ready("crane", 3, LONG).await;

    // Exactly one of the two leads.
    let leader = wait_for("exactly one leader", SHORT, || async {
        let a = leader_gauge(&operators[0]).await?;
        let b = leader_gauge(&operators[1]).await?;
        match (a, b) {
            (1.0, 0.0) => Ok(0),
            (0.0, 1.0) => Ok(1),
            other => Err(format!(
                "crane_operator_leader of the two processes: {other:?}"
            )),
        }
    })
    .await;
    let survivor = 1 - leader;
    let holder_before = env
        .lease_holder()
        .await
        .unwrap()
        .expect("the leader holds the Lease");

    // SIGKILL: no chance to release the Lease, the survivor must wait for it to expire.
    signal(&operators[leader], "-KILL");
    let killed = Instant::now();
    wait_for("the leader to die", SHORT, || {
        let status = operators[leader].exit_status();
        async move { status.map(drop).ok_or("still running".to_string()) }
    })
    .await;
    env.kubectl(&["scale", "crs", "crane", "--replicas=5"]);

    wait_for("the survivor to take over", TAKEOVER, || async {
        match leader_gauge(&operators[survivor]).await? {
            1.0 => Ok(()),
            v => Err(format!("survivor's crane_operator_leader = {v}")),
        }
    })
    .await;
    eprintln!(
        "the survivor leads {:.1} s after the leader was killed",
        killed.elapsed().as_secs_f64()
    );
    env.wait_ready("crane", 5, SHORT).await;

    let holder_after = env
        .lease_holder()
        .await
        .unwrap()
        .expect("the survivor holds the Lease");
    assert_ne!(holder_after, holder_before, "the Lease changed hands");

    // Keep watching a little: a duplicate creation across the hand-over would show now.
    let settle = Instant::now() + Duration::from_secs(3);
    wait_for(
        "5 pods to stay 5 for 3 s",
        Duration::from_secs(10),
        || async {
            let active = env.active_pods("crane").await?.len();
            if active != 5 {
                panic!("the pod count left 5: {active} active pods");
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
    assert!(
        uids.len() <= 5,
        "{} pods were ever created across the hand-over (at most 5 expected)",
        uids.len()
    );
    env.cleanup().await;
}

#[tokio::test]
async fn sigterm_exits_cleanly() {
    let env = TestEnv::without_operator("sigterm").await;
    let mut operator = Operator::start(&env.ns, &[]);
    env.create(crane("crane", 1)).await;
    env.wait_ready("crane", 1, LONG).await;

    signal(&operator, "-TERM");
    let status = wait_for(
        "the operator to exit after SIGTERM",
        Duration::from_secs(10),
        || {
            let status = operator.exit_status();
            async move { status.ok_or("still running".to_string()) }
        },
    )
    .await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    env.cleanup().await;
}

#[tokio::test]
async fn sigterm_releases_the_leader_lease() {
    let env = TestEnv::without_operator("release").await;
    let mut operator = Operator::start(&env.ns, &leader_election_args(&env.ns));
    wait_for("the operator to lead", SHORT, || async {
        match leader_gauge(&operator).await? {
            1.0 => Ok(()),
            v => Err(format!("crane_operator_leader = {v}")),
        }
    })
    .await;
    env.create(crane("crane", 1)).await;
    env.wait_ready("crane", 1, LONG).await;
    let holder = env.lease_holder().await.unwrap();
    assert!(holder.is_some(), "the leader holds the Lease");

    signal(&operator, "-TERM");
    let status = wait_for(
        "the operator to exit after SIGTERM",
        Duration::from_secs(10),
        || {
            let status = operator.exit_status();
            async move { status.ok_or("still running".to_string()) }
        },
    )
    .await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let after = env.lease_holder().await.unwrap();
    assert_eq!(
        after, None,
        "the Lease is released on the way out (was held by {holder:?})"
    );
    env.cleanup().await;
}

/// As kubectl users and container platforms run it: KUBECONFIG naming two files (the first
/// one's current context a cluster nobody serves) and `--context` naming the real one,
/// leader election switched on by `CRANE_LEADER_ELECT=1` (a boolean as environments spell
/// it), and the metrics served on the IPv6 loopback.
#[tokio::test]
async fn the_operator_takes_a_context_a_boolean_env_and_an_ipv6_metrics_address() {
    let env = TestEnv::without_operator("cli").await;
    let (_, real, context) = admin_context();
    let user = context.user;
    // JSON is YAML: a kubeconfig whose current context points at a port nobody listens on.
    let elsewhere = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "elsewhere", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "elsewhere", "context": {"cluster": "elsewhere", "user": user}}],
        "current-context": "elsewhere",
    });
    let dir = repo_root().join("target/e2e-kubeconfigs");
    std::fs::create_dir_all(&dir).expect("create target/e2e-kubeconfigs");
    let first = dir.join(format!("{}-elsewhere.kubeconfig", env.ns));
    std::fs::write(&first, elsewhere.to_string()).expect("write the kubeconfig");
    let kubeconfig = std::env::join_paths([first, kubeconfig_path()]).expect("KUBECONFIG");

    let metrics_addr = format!("[::1]:{}", free_port());
    let operator = Operator::spawn_with(
        &env.ns,
        metrics_addr,
        &["--context", &real, "--leader-elect-namespace", &env.ns],
        &[
            ("KUBECONFIG", kubeconfig.as_os_str()),
            ("CRANE_LEADER_ELECT", "1".as_ref()),
        ],
    );
    wait_for(
        "the operator to lead, as its metrics on [::1] say",
        LONG,
        || async {
            match leader_gauge(&operator).await? {
                1.0 => Ok(()),
                v => Err(format!("crane_operator_leader = {v}")),
            }
        },
    )
    .await;
    let holder = env.lease_holder().await.expect("read the Lease");
    assert!(holder.is_some(), "CRANE_LEADER_ELECT=1 took no Lease");
    env.create(crane("crane", 1)).await;
    env.wait_ready("crane", 1, LONG).await;
    drop(operator);
    env.cleanup().await;
}
