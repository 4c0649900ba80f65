//! The kubectl plugin, run as users run it: `kubectl crane VERB` with kubectl-crane and
//! kubectl_complete-crane on PATH (as `make install-plugin` puts them), against the test
//! cluster, one test per verb.

use std::collections::BTreeSet;

use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::dashboard::{Invocation, dashboard};
use crate::harness::*;

/// `kubectl crane run NAME` of the book's app in `env`'s namespace, its pods placed as the
/// suite's are (`--overrides`, merged into the template), with `extra` flags.
fn run(env: &TestEnv, name: &str, extra: &[&str]) -> Result<String, String> {
    run_with(env, name, json!({}), extra)
}

/// The same, with `template_labels` added to the pods' labels.
fn run_with(
    env: &TestEnv,
    name: &str,
    template_labels: Value,
    extra: &[&str],
) -> Result<String, String> {
    let overrides = json!({"spec": {"template": {
        "metadata": {"labels": template_labels},
        "spec": suite_pod_spec(json!({})),
    }}});
    let image = format!("--image={APP_IMAGE}");
    let overrides = format!("--overrides={overrides}");
    let args = [
        &[
            "run",
            name,
            &image,
            "--port=7070",
            "-n",
            &env.ns,
            &overrides,
        ][..],
        extra,
    ]
    .concat();
    kubectl_crane(&args)
}

/// `kubectl crane ARGS -n NAMESPACE`, which must succeed.
fn crane(env: &TestEnv, args: &[&str]) -> String {
    let args = [args, &["-n", &env.ns]].concat();
    kubectl_crane(&args).unwrap_or_else(|e| panic!("kubectl crane {args:?}: {e}"))
}

#[tokio::test]
async fn run_makes_the_books_crane_replica_set_and_its_service_and_refuses_it_twice() {
    let env = TestEnv::new("plugin-run").await;
    let printed = run(&env, "crane", &["--replicas=2"]).expect("kubectl crane run");
    assert_eq!(printed, "cranereplicaset.crane.dev/crane created\n");

    let crs = env.crs().get("crane").await.unwrap();
    let app = Some([("app".to_string(), "crane".to_string())].into());
    assert_eq!(crs.metadata.labels, app);
    assert_eq!(crs.label_selector().match_labels, app);
    assert_eq!(crs.spec.replicas, 2);
    let pod_spec = crs.spec.template.spec.clone().unwrap_or_default();
    let container = &pod_spec.containers[0];
    assert_eq!(container.name, "crane");
    assert_eq!(container.image.as_deref(), Some(APP_IMAGE));
    let ports = container.ports.clone().unwrap_or_default();
    assert_eq!(ports[0].container_port, 7070);
    let managers: Vec<String> = crs
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.contains(&"kubectl-crane".into()), "{managers:?}");

    env.wait_ready("crane", 2, LONG).await;
    let service = wait_for("the Service crane-http", LONG, || {
        crate::service::service(&env, "crane-http")
    })
    .await;
    let spec = service.spec.unwrap_or_default();
    let port = &spec.ports.unwrap_or_default()[0];
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(
        (
            port.port,
            port.target_port.clone().map(|p| format!("{p:?}"))
        ),
        (8080, Some("Int(7070)".into()))
    );

    let again = run(&env, "crane", &[]).expect_err("a second run of crane is refused");
    assert_eq!(
        again.trim(),
        "Error from server (AlreadyExists): cranereplicasets.crane.dev \"crane\" already exists"
    );

    let yaml = run(&env, "other", &["--dry-run=client", "-o", "yaml"]).expect("dry run");
    assert!(
        yaml.starts_with("apiVersion: crane.dev/v1\nkind: CraneReplicaSet\n"),
        "{yaml}"
    );
    let server = run(&env, "other", &["--dry-run=server"]).expect("server dry run");
    assert_eq!(
        server,
        "cranereplicaset.crane.dev/other created (server dry run)\n"
    );
    assert!(
        env.crs().get_opt("other").await.unwrap().is_none(),
        "a dry run stores nothing"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn get_shows_the_counts_the_address_and_each_pod() {
    let env = TestEnv::new("plugin-get").await;
    run(&env, "crane", &["--replicas=2"]).expect("kubectl crane run");
    let pods = env.wait_ready("crane", 2, LONG).await;
    // What a cloud controller does once the load balancer exists (this namespace has the
    // local cluster's allocator off).
    wait_for("the Service crane-http", LONG, || {
        crate::service::service(&env, "crane-http")
    })
    .await;
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.20"}]}}});
    env.services()
        .patch_status("crane-http", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
    let table = wait_for("the address in kubectl crane get", SHORT, || async {
        let table = kubectl_crane(&["get", "-n", &env.ns])?;
        table
            .contains("203.0.113.20:8080")
            .then_some(table.clone())
            .ok_or(table)
    })
    .await;
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "NAME",
            "STATUS",
            "DESIRED",
            "CURRENT",
            "READY",
            "AVAILABLE",
            "UP-TO-DATE",
            "ADDRESS",
            "AGE",
            "POD-ISSUES"
        ]
    );
    assert_eq!(
        lines[1][..8],
        [
            "crane",
            "Ready",
            "2",
            "2",
            "2",
            "2",
            "2",
            "203.0.113.20:8080"
        ],
        "{table}"
    );
    assert_eq!(lines.len(), 2, "{table}");

    let everywhere = kubectl_crane(&["get", "-A"]).expect("kubectl crane get -A");
    assert!(
        everywhere.starts_with("NAMESPACE "),
        "{}",
        everywhere.lines().next().unwrap_or_default()
    );
    assert!(
        everywhere
            .lines()
            .any(|l| l.starts_with(&format!("{} ", env.ns)) && l.contains(" crane ")),
        "{everywhere}"
    );

    let detail = crane(&env, &["get", "crane"]);
    for line in [
        "Status:        Ready",
        "  Ready:       2",
        "Service:       crane-http (LoadBalancer, port 8080 -> 7070)",
        "  Address:     203.0.113.20:8080",
    ] {
        assert!(detail.lines().any(|l| l == line), "{line:?} in:\n{detail}");
    }
    for pod in &pods {
        let row = detail
            .lines()
            .find(|l| l.starts_with(&format!("{} ", pod.name_any())))
            .unwrap_or_else(|| panic!("{} in:\n{detail}", pod.name_any()));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            (cells[1], cells[2], cells.last().copied()),
            ("Running", "1/1", Some("updated")),
            "{row}"
        );
    }
    let missing = kubectl_crane(&["get", "nope", "-n", &env.ns]).expect_err("no such object");
    assert_eq!(
        missing.trim(),
        "Error from server (NotFound): cranereplicasets.crane.dev \"nope\" not found"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn why_names_each_pod_that_cannot_pull_its_image_and_the_hint() {
    let env = TestEnv::new("plugin-why").await;
    // kwok's simulated nodes put pods with this label in ImagePullBackOff.
    let simulate = json!({"crane.dev/simulate": "ImagePullBackOff"});
    run_with(&env, "crane", simulate, &["--replicas=2"]).expect("kubectl crane run");
    let why = wait_for("kubectl crane why to name 2 pods", LONG, || async {
        let why = kubectl_crane(&["why", "crane", "-n", &env.ns])?;
        why.contains("ImagePullBackOff (2 pods):")
            .then_some(why.clone())
            .ok_or(why)
    })
    .await;
    assert!(
        why.starts_with("crane: 0 of 2 pods ready, 2 desired.\n"),
        "{why}"
    );
    let pods = env.active_pods("crane").await.unwrap();
    let mut names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    names.sort();
    for name in &names {
        assert!(
            why.lines().any(|l| l.starts_with(&format!("  {name}   "))),
            "{name} in:\n{why}"
        );
    }
    let hint = crane_operator::diagnostics::hint("ImagePullBackOff", &names[0]);
    assert!(why.contains(&format!("  hint: {hint}\n")), "{why}");

    let table = wait_for("the pod issue in kubectl crane get", LONG, || async {
        let table = kubectl_crane(&["get", "-n", &env.ns])?;
        table
            .contains("ImagePullBackOff (2)")
            .then_some(table.clone())
            .ok_or(table)
    })
    .await;
    assert!(table.contains(" Stalled "), "{table}");
    env.cleanup().await;
}

#[tokio::test]
async fn restart_refuses_an_on_delete_object_and_replaces_a_rolling_updates_pods() {
    let env = TestEnv::new("plugin-restart").await;
    run(&env, "crane", &["--replicas=2"]).expect("kubectl crane run");
    let before: BTreeSet<String> = env
        .wait_ready("crane", 2, LONG)
        .await
        .iter()
        .filter_map(|p| p.uid())
        .collect();
    let refused =
        kubectl_crane(&["restart", "crane", "-n", &env.ns]).expect_err("OnDelete is refused");
    assert_eq!(
        refused.trim(),
        "error: crane has updateStrategy OnDelete: a restart would replace no pod (delete its pods instead)"
    );

    let rolling = json!({"spec": {"updateStrategy": {"type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}});
    env.crs()
        .patch("crane", &PatchParams::default(), &Patch::Merge(rolling))
        .await
        .unwrap();
    assert_eq!(
        crane(&env, &["restart", "crane"]),
        "cranereplicaset.crane.dev/crane restarted\n"
    );
    let crs = env.crs().get("crane").await.unwrap();
    let annotations = crs
        .spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert!(
        annotations.contains_key(crane_operator::restart::RESTARTED_AT),
        "{annotations:?}"
    );
    wait_for("every pod replaced, 2 ready", LONG, || async {
        let pods = env.active_pods("crane").await?;
        let uids: BTreeSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        (uids.is_disjoint(&before) && pods.len() == 2 && ready == 2)
            .then_some(())
            .ok_or(format!("{} pods, {ready} ready, {uids:?}", pods.len()))
    })
    .await;
    let missing = kubectl_crane(&["restart", "nope", "-n", &env.ns]).expect_err("not found");
    assert_eq!(
        missing.trim(),
        "Error from server (NotFound): cranereplicasets.crane.dev \"nope\" not found"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_dashboard_serves_the_namespace_it_is_given() {
    let env = TestEnv::new("plugin-dashboard").await;
    run(&env, "crane", &[]).expect("kubectl crane run");
    let served = dashboard(&env.ns, &kubeconfig_path(), Invocation::KubectlPlugin).await;
    let addr = served.base.trim_start_matches("http://").to_string();
    wait_for("the overview to list crane", SHORT, || async {
        let page = http_get(&addr, &format!("/?{}", served.token)).await?;
        page.contains(&format!("/crs/{}/crane", env.ns))
            .then_some(())
            .ok_or_else(|| "crane not listed yet".to_string())
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn kubectl_completes_the_plugins_verbs_flags_and_object_names() {
    let env = TestEnv::new("plugin-complete").await;
    run(&env, "crane", &[]).expect("kubectl crane run");
    let complete = |words: &[&str]| {
        let args = [&["__complete", "crane"][..], words].concat();
        let mut kubectl = std::process::Command::new("kubectl");
        kubectl.args(&args).env("PATH", path_with_plugin());
        kubectl.env("KUBECONFIG", kubeconfig_path());
        let out = kubectl.output().expect("run kubectl __complete");
        assert!(out.status.success(), "kubectl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        complete(&["re"]),
        "restart\tReplace every pod of a RollingUpdate CraneReplicaSet, a few at a time (as `kubectl rollout restart`)\n:4\n"
    );
    assert_eq!(complete(&["why", "-n", &env.ns, ""]), "crane\n:4\n");
    assert_eq!(complete(&["get", "-n", &env.ns, "x"]), ":4\n");
    assert_eq!(complete(&["run", "x", "-o", ""]), "yaml\njson\nname\n:4\n");
    let namespaces = complete(&["get", "-n", &env.ns[..env.ns.len() - 1]]);
    assert!(
        namespaces.lines().any(|l| l == env.ns),
        "{}: {namespaces}",
        env.ns
    );
    env.cleanup().await;
}
