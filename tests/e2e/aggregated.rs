//! Namespace users work with CraneReplicaSets as with ReplicaSets: the chart's ClusterRoles
//! aggregated to the built-in `view`, `edit` and `admin` (templates/aggregated-roles.yaml,
//! the same in manifests/rbac.yaml). A ServiceAccount bound to `edit` in one namespace
//! creates, scales and deletes a CraneReplicaSet there with plain kubectl; one bound to
//! `view` lists it, reads its scale, and is refused a scale and a delete.
//!
//! The test applies the chart's aggregated ClusterRoles under names of its own (as
//! rbac.rs does, so that parallel runs never share or delete each other's), and waits for
//! kube-controller-manager's aggregation controller to fold them into `view` and `edit`.

use serde_json::Value;

use crate::harness::*;
use crate::rbac::{ClusterScoped, as_yaml, can_i, render_chart};

/// A ServiceAccount `name` in the test namespace, bound there (a RoleBinding) to the
/// built-in ClusterRole `role`; returns its user name and a kubeconfig with its token.
fn bound_to(env: &TestEnv, name: &str, role: &str) -> (String, std::path::PathBuf) {
    env.kubectl(&["create", "serviceaccount", name]);
    let sa = format!("{}:{name}", env.ns);
    env.kubectl(&[
        "create",
        "rolebinding",
        name,
        &format!("--clusterrole={role}"),
        &format!("--serviceaccount={sa}"),
    ]);
    let token = env.kubectl(&["create", "token", name, "--duration", "1h"]);
    let kubeconfig = token_kubeconfig(&format!("{}-{name}", env.ns), token.trim());
    (format!("system:serviceaccount:{sa}"), kubeconfig)
}

/// kubectl in the test namespace as the user of `kubeconfig`: stdout, or the refusal.
fn kubectl_as(
    env: &TestEnv,
    kubeconfig: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, String> {
    let kubeconfig = kubeconfig.to_str().expect("a UTF-8 path");
    let mut all = vec!["--kubeconfig", kubeconfig];
    all.extend_from_slice(args);
    env.kubectl_result(&all, stdin)
}

#[tokio::test]
async fn edit_and_view_users_work_with_cranereplicasets_as_with_replicasets() {
    let env = TestEnv::new("aggregated").await;
    let ns = env.ns.clone();
    let roles = render_chart(
        &ns,
        &["templates/aggregated-roles.yaml"],
        &[&format!("fullnameOverride={ns}")],
    );
    assert_eq!(
        roles.len(),
        2,
        "the chart renders a view and an edit ClusterRole by default: {roles:?}"
    );
    let _roles = ClusterScoped::of(&roles);
    env.kubectl_result(&["apply", "-f", "-"], Some(&as_yaml(&roles)))
        .unwrap_or_else(|e| panic!("apply the aggregated ClusterRoles: {e}"));

    let (editor, editor_config) = bound_to(&env, "editor", "edit");
    let (viewer, viewer_config) = bound_to(&env, "viewer", "view");
    let n = ["-n", ns.as_str()];
    let ask = |user: &str, verb: &str, resource: &str| {
        let mut args = vec![verb, resource];
        args.extend(n);
        can_i(user, &args)
    };
    wait_for(
        "the aggregation controller to give edit and view the crane.dev verbs",
        LONG,
        || async {
            let granted = [
                ask(&editor, "create", "cranereplicasets.crane.dev"),
                ask(&editor, "update", "cranereplicasets.crane.dev/scale"),
                ask(&viewer, "list", "cranereplicasets.crane.dev"),
                ask(&viewer, "get", "cranereplicasets.crane.dev/scale"),
            ];
            granted.iter().all(|g| *g).then_some(()).ok_or(format!(
                "editor create, scale; viewer list, get scale: {granted:?}"
            ))
        },
    )
    .await;

    // edit: create, scale, as a ReplicaSet's user would.
    let manifest: Value = crane("crane", 1);
    kubectl_as(
        &env,
        &editor_config,
        &["apply", "-f", "-"],
        Some(&manifest.to_string()),
    )
    .unwrap_or_else(|e| panic!("{editor} creates a CraneReplicaSet: {e}"));
    env.wait_ready("crane", 1, LONG).await;
    kubectl_as(
        &env,
        &editor_config,
        &["scale", "crs", "crane", "--replicas=2"],
        None,
    )
    .unwrap_or_else(|e| panic!("{editor} scales it: {e}"));
    env.wait_ready("crane", 2, LONG).await;

    // view: reads it and its scale, may change nothing.
    let listed = kubectl_as(&env, &viewer_config, &["get", "crs", "-o", "name"], None)
        .unwrap_or_else(|e| panic!("{viewer} lists CraneReplicaSets: {e}"));
    assert_eq!(listed.trim(), "cranereplicaset.crane.dev/crane");
    let scale_path = format!("/apis/crane.dev/v1/namespaces/{ns}/cranereplicasets/crane/scale");
    let scale = kubectl_as(&env, &viewer_config, &["get", "--raw", &scale_path], None)
        .unwrap_or_else(|e| panic!("{viewer} reads the scale subresource: {e}"));
    let scale: Value = serde_json::from_str(&scale).expect("a Scale");
    assert_eq!(scale["spec"]["replicas"], 2, "{scale}");
    for refused in [
        &["scale", "crs", "crane", "--replicas=3"][..],
        &["delete", "crs", "crane", "--wait=false"],
    ] {
        let answer = kubectl_as(&env, &viewer_config, refused, None);
        assert!(
            matches!(&answer, Err(e) if e.contains("forbidden")),
            "{viewer} may not `kubectl {}`: {answer:?}",
            refused.join(" ")
        );
    }
    assert_eq!(
        env.crs()
            .get("crane")
            .await
            .expect("the CraneReplicaSet")
            .spec
            .replicas,
        2,
        "the viewer's scale changed nothing"
    );

    // edit: delete.
    kubectl_as(
        &env,
        &editor_config,
        &["delete", "crs", "crane", "--wait=false"],
        None,
    )
    .unwrap_or_else(|e| panic!("{editor} deletes it: {e}"));
    wait_for("the CraneReplicaSet to be gone", SHORT, || async {
        match env.crs().get_opt("crane").await {
            Ok(None) => Ok(()),
            other => Err(seen(other.map(|o| o.is_some()))),
        }
    })
    .await;
    env.cleanup().await;
}
