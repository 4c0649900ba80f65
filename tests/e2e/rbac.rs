//! The chart's RBAC suffices and is minimal (issue 4, acceptance 2): the ServiceAccount and
//! RBAC objects of `charts/crane-operator`, rendered by `helm template` and applied to a
//! test namespace; the operator binary, run on this machine with a token of that
//! ServiceAccount (`kubectl create token`), passes the basic scenario without a single
//! "forbidden" in its log; `kubectl auth can-i` confirms what the ServiceAccount can and
//! cannot do.
//!
//! Both variants of the chart: `watchNamespace` set (a Role in that namespace) and the
//! default (a ClusterRole). The operator runs with `--namespace` in both, as every e2e
//! operator does: one watching all namespaces would reconcile the other tests'
//! CraneReplicaSets. What the all-namespaces mode needs on top (list and watch across
//! namespaces) is checked with `kubectl auth can-i --all-namespaces`.
//!
//! The scenario goes beyond the basic one (adoption of an orphan, a Service switched off, a
//! repeated event) so that it uses every verb the chart grants: with any one of them
//! removed from the chart, it fails with the operator's "forbidden" error (checked verb by
//! verb when this test was written).

use std::collections::BTreeSet;

use kube::ResourceExt;
use kube::api::DeleteParams;
use serde_json::Value;

use crate::harness::*;

const CHART: &str = "charts/crane-operator";

/// The rules the chart grants in the watched namespace(s), as (apiGroup, resource,
/// resourceNames, verbs): exactly the verbs the operator uses (README, "Security and
/// RBAC"). A new verb must be added here on purpose.
const OPERATOR_RULES: &[(&str, &str, &str, &str)] = &[
    ("crane.dev", "cranereplicasets", "", "get list watch"),
    ("crane.dev", "cranereplicasets/status", "", "patch"),
    ("", "pods", "", "create delete list patch watch"),
    ("", "services", "", "create delete get list patch watch"),
    ("events.k8s.io", "events", "", "create patch"),
];
/// And in the release namespace, for leader election, on the release's own Lease.
fn leader_rules(lease: &str) -> BTreeSet<(String, String, String, String)> {
    expected(&[
        ("coordination.k8s.io", "leases", "", "create"),
        ("coordination.k8s.io", "leases", lease, "get update"),
    ])
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scope {
    /// `--set watchNamespace=<ns>`: a Role and RoleBinding in the namespace.
    Namespaced,
    /// The default: a ClusterRole and ClusterRoleBinding.
    ClusterWide,
}

#[tokio::test]
async fn namespaced_role_suffices_and_is_minimal() {
    scenario("rbac-role", Scope::Namespaced).await;
}

#[tokio::test]
async fn cluster_role_suffices_and_is_minimal() {
    scenario("rbac-clusterrole", Scope::ClusterWide).await;
}

/// A start with the chart's RBAC short of one grant it cannot work without fails within
/// seconds, naming the verb and resource and how to grant them, where it used to start
/// anyway and retry 403s forever, Ready never: `list pods`, then `update` of the Lease.
#[tokio::test]
async fn a_start_short_of_a_grant_fails_at_once_naming_it() {
    let env = TestEnv::without_operator("rbac-short").await;
    let ns = env.ns.clone();
    let chart = helm_template(&ns, Scope::Namespaced);
    let sa_name = chart
        .iter()
        .find(|o| kind_of(o) == "ServiceAccount")
        .map(|o| name_of(o).to_string())
        .expect("a ServiceAccount in the render");
    let sa = format!("system:serviceaccount:{ns}:{sa_name}");
    let lease = "crane-operator-leader";
    let lease_ref = format!("leases.coordination.k8s.io/{lease}");
    let n = ["-n", ns.as_str()];
    // (the Role, the resource, the verb taken away, `kubectl auth can-i` of it, what the
    // refusal must say)
    let cases = [
        (
            "crane-operator",
            "pods",
            "list",
            vec!["list", "pods"],
            format!("list pods (core) in namespace {ns}"),
        ),
        (
            "crane-operator-leader-election",
            "leases",
            "update",
            vec!["update", lease_ref.as_str()],
            format!("update lease {lease} (coordination.k8s.io) in namespace {ns}"),
        ),
    ];
    let mut token = None;
    for (role, resource, verb, can_i_args, says) in cases {
        let mut objects = chart.clone();
        let rules = objects
            .iter_mut()
            .find(|o| kind_of(o) == "Role" && name_of(o) == role)
            .and_then(|o| o["rules"].as_array_mut())
            .unwrap_or_else(|| panic!("no Role {role} in the render"));
        let rule = rules
            .iter_mut()
            .find(|r| r["resources"][0] == resource && r["verbs"].to_string().contains(verb))
            .unwrap_or_else(|| panic!("no rule with {verb} {resource} in the Role {role}"));
        let verbs = rule["verbs"].as_array_mut().expect("verbs");
        verbs.retain(|v| v != verb);
        env.kubectl_result(&["apply", "-f", "-"], Some(&as_yaml(&objects)))
            .unwrap_or_else(|e| panic!("apply the chart's RBAC without {verb} {resource}: {e}"));
        // The API server's authorizer reads the Role from its cache: wait until it says no
        // (and yes again to what the case before took away).
        let mut probe: Vec<&str> = can_i_args.clone();
        probe.extend(n);
        wait_for(
            &format!("{sa} refused {verb} {resource}"),
            SHORT,
            || async {
                (!can_i(&sa, &probe)
                    && can_i(&sa, &["list", "pods", "-n", &ns]) == (resource != "pods"))
                    .then_some(())
                    .ok_or_else(|| "not yet".to_string())
            },
        )
        .await;

        let token = token
            .get_or_insert_with(|| env.kubectl(&["create", "token", &sa_name, "--duration", "1h"]));
        let kubeconfig = token_kubeconfig(&ns, token.trim());
        let mut operator = Operator::start_with_kubeconfig(
            &ns,
            &[
                "--leader-elect",
                "--leader-elect-namespace",
                &ns,
                "--leader-elect-lease-name",
                lease,
            ],
            &kubeconfig,
        );
        let status = wait_for(
            &format!("the operator without {verb} {resource} to exit"),
            SHORT,
            || {
                let exited = operator.exit_status().ok_or_else(|| {
                    let log = operator.log_text();
                    let tail: Vec<String> = log
                        .lines()
                        .rev()
                        .take(2)
                        .map(|l| l.chars().take(200).collect())
                        .collect();
                    format!("still running; its log ends {tail:?}")
                });
                async move { exited }
            },
        )
        .await;
        let log = operator.log_text();
        assert!(!status.success(), "it exited with {status}: {log}");
        assert!(
            log.contains(&format!("{sa} may not {says}")) && log.contains("rbac.create"),
            "the refusal names neither what is missing ({says}) nor how to grant it:\n{log}"
        );
        assert!(
            log.contains(&format!("verbs: [\"{verb}\"]")),
            "the refusal shows no rule that grants {verb}:\n{log}"
        );
    }
    env.cleanup().await;
}

/// Deletes the cluster-scoped objects of a render when dropped (the namespace takes the
/// rest with it), also when the test fails.
pub(crate) struct ClusterScoped(pub(crate) Vec<(String, String)>);

impl ClusterScoped {
    /// The cluster-scoped objects among `objects`.
    pub(crate) fn of(objects: &[Value]) -> Self {
        Self(
            objects
                .iter()
                .filter(|o| kind_of(o).starts_with("Cluster"))
                .map(|o| (kind_of(o).to_string(), name_of(o).to_string()))
                .collect(),
        )
    }
}

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        for (kind, name) in &self.0 {
            let _ = run_tool(
                "kubectl",
                &["delete", kind, name, "--ignore-not-found", "--wait=false"],
                None,
            );
        }
    }
}

fn helm_template(ns: &str, scope: Scope) -> Vec<Value> {
    let watch = format!("watchNamespace={ns}");
    // The cluster-wide objects are named after the release: one name per test namespace, so
    // that runs and tests never share (or delete) each other's ClusterRole.
    let fullname = format!("fullnameOverride={ns}");
    let set = match scope {
        Scope::Namespaced => watch.as_str(),
        Scope::ClusterWide => fullname.as_str(),
    };
    render_chart(
        ns,
        &["templates/serviceaccount.yaml", "templates/rbac.yaml"],
        &[set],
    )
}

/// The chart's `templates` only, rendered by `helm template` for namespace `ns` with the
/// values `set` (K=V each).
pub(crate) fn render_chart(ns: &str, templates: &[&str], set: &[&str]) -> Vec<Value> {
    let chart = repo_root().join(CHART);
    let chart = chart.to_str().expect("a UTF-8 path");
    let mut args = vec!["template", "crane-operator", chart, "--namespace", ns];
    for template in templates {
        args.extend(["--show-only", template]);
    }
    for value in set {
        args.extend(["--set", value]);
    }
    let yaml = run_tool("helm", &args, None).unwrap_or_else(|e| panic!("helm {args:?}: {e}"));
    // Empty documents (a template that renders nothing) are skipped.
    serde_saphyr::from_multiple(&yaml).expect("helm renders YAML")
}

/// The objects as one multi-document YAML, for `kubectl apply -f -`.
pub(crate) fn as_yaml(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| format!("---\n{}", serde_saphyr::to_string(o).expect("YAML")))
        .collect()
}

pub(crate) fn kind_of(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or_default()
}

pub(crate) fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

/// The rules of a (Cluster)Role, one (apiGroup, resource, resourceNames, verbs) per
/// combination, verbs sorted: comparable with OPERATOR_RULES whatever the grouping.
fn rules(role: &Value) -> BTreeSet<(String, String, String, String)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let mut verbs = strings(&rule["verbs"]);
        verbs.sort();
        let names = strings(&rule["resourceNames"]).join(" ");
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                out.insert((group.clone(), resource, names.clone(), verbs.join(" ")));
            }
        }
    }
    out
}

fn expected(table: &[(&str, &str, &str, &str)]) -> BTreeSet<(String, String, String, String)> {
    table
        .iter()
        .map(|(g, r, n, v)| (g.to_string(), r.to_string(), n.to_string(), v.to_string()))
        .collect()
}

/// `kubectl auth can-i` as the ServiceAccount (impersonated by the admin): true for "yes"
/// (exit 0), false for "no" (exit 1, "no" on stdout, perhaps with a reason).
pub(crate) fn can_i(sa: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i", "--as", sa];
    all.extend_from_slice(args);
    let says_no = |out: &str| {
        out.lines()
            .any(|l| l.trim() == "no" || l.trim().starts_with("no - "))
    };
    match run_tool("kubectl", &all, None) {
        Ok(out) if out.trim() == "yes" => true,
        Err(out) if says_no(&out) => false,
        other => panic!("kubectl {all:?}: unexpected answer {other:?}"),
    }
}

async fn scenario(test: &str, scope: Scope) {
    let env = TestEnv::without_operator(test).await;
    let ns = env.ns.clone();

    // --- the chart's ServiceAccount and RBAC, and nothing else of it ---------------------
    let objects = helm_template(&ns, scope);
    let kinds: Vec<(&str, &str)> = objects.iter().map(|o| (kind_of(o), name_of(o))).collect();
    let (role_kind, binding_kind) = match scope {
        Scope::Namespaced => ("Role", "RoleBinding"),
        Scope::ClusterWide => ("ClusterRole", "ClusterRoleBinding"),
    };
    let role = objects
        .iter()
        .find(|o| kind_of(o) == role_kind && !name_of(o).ends_with("-leader-election"))
        .unwrap_or_else(|| panic!("no {role_kind} in the render: {kinds:?}"));
    let leader_role = objects
        .iter()
        .find(|o| kind_of(o) == "Role" && name_of(o).ends_with("-leader-election"))
        .unwrap_or_else(|| panic!("no leader-election Role in the render: {kinds:?}"));
    let sa_name = objects
        .iter()
        .find(|o| kind_of(o) == "ServiceAccount")
        .map(|o| name_of(o).to_string())
        .unwrap_or_else(|| panic!("no ServiceAccount in the render: {kinds:?}"));
    assert!(
        objects.iter().any(|o| kind_of(o) == binding_kind),
        "no {binding_kind} in the render: {kinds:?}"
    );
    if scope == Scope::Namespaced {
        assert!(
            !objects.iter().any(|o| kind_of(o).starts_with("Cluster")),
            "watchNamespace renders cluster-wide RBAC: {kinds:?}"
        );
        assert_eq!(role["metadata"]["namespace"], ns.as_str());
    }
    // The Lease is the release's: `<fullname>-leader`.
    let fullname = match scope {
        Scope::Namespaced => "crane-operator",
        Scope::ClusterWide => ns.as_str(),
    };
    let lease = format!("{fullname}-leader");
    // Minimal on paper: exactly the verbs the operator uses, no secrets, no wildcards.
    assert_eq!(rules(role), expected(OPERATOR_RULES), "{role_kind} rules");
    assert_eq!(
        rules(leader_role),
        leader_rules(&lease),
        "leader-election rules"
    );

    let _cluster_scoped = ClusterScoped::of(&objects);
    env.kubectl_result(&["apply", "-f", "-"], Some(&as_yaml(&objects)))
        .unwrap_or_else(|e| panic!("apply the chart's ServiceAccount and RBAC: {e}"));

    // --- the operator with the ServiceAccount's token -------------------------------------
    let token = env.kubectl(&["create", "token", &sa_name, "--duration", "1h"]);
    let kubeconfig = token_kubeconfig(&ns, token.trim());
    let mut operator = Operator::start_with_kubeconfig(
        &ns,
        &[
            "--leader-elect",
            "--leader-elect-namespace",
            &ns,
            "--leader-elect-lease-name",
            &lease,
        ],
        &kubeconfig,
    );
    let forbidden = |operator: &Operator| -> Vec<String> {
        operator
            .log_text()
            .lines()
            .filter(|l| {
                // 403 and 401 answers (kube-rs: `reason: "Forbidden"`, `"Unauthorized"`).
                let l = l.to_ascii_lowercase();
                l.contains("forbidden") || l.contains("unauthorized")
            })
            .map(|l| l.chars().take(400).collect())
            .collect()
    };

    // Leases: create, get, update (renewals every 2 s).
    let holder = wait_for("the operator to take the leader Lease", LONG, || async {
        env.lease_holder_of(&lease)
            .await?
            .ok_or_else(|| format!("no holder; forbidden: {:?}", forbidden(&operator)))
    })
    .await;

    // cranereplicasets list/watch, status patch; pods list/watch/create; services
    // get/create (server-side apply); events create.
    env.create(crane("crane", 3)).await;
    let pods = env.wait_ready("crane", 3, LONG).await;
    wait_for("the Service crane-http", SHORT, || async {
        env.services()
            .get_opt("crane-http")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "not yet".to_string())
    })
    .await;

    // pods delete by someone else: replaced.
    let victim = pods[0].name_any();
    env.pods()
        .delete(&victim, &DeleteParams::default().grace_period(0))
        .await
        .expect("delete a pod");
    wait_for("a replacement for the deleted pod", LONG, || async {
        let pods = env.active_pods("crane").await?;
        let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        (pods.len() == 3 && ready == 3 && !names.contains(&victim))
            .then_some(())
            .ok_or(format!("{names:?}, {ready} ready"))
    })
    .await;

    // kubectl scale: pods delete by the operator.
    env.kubectl(&["scale", "crs", "crane", "--replicas=1"]);
    env.wait_ready("crane", 1, LONG).await;

    // An orphan that matches the selector: adopted (cranereplicasets get to re-check, pods
    // patch), then one pod too many is deleted.
    env.kubectl_result(
        &[
            "run",
            "orphan",
            &format!("--image={APP_IMAGE}"),
            "--labels=app=crane",
        ],
        None,
    )
    .expect("create an orphan pod");
    wait_for(
        "the orphan adopted or removed, 1 pod left",
        LONG,
        || async {
            let orphan = env
                .pods()
                .get_opt("orphan")
                .await
                .map_err(|e| e.to_string())?;
            let settled = orphan.as_ref().is_none_or(|p| {
                controlled_by(p, "crane") || p.metadata.deletion_timestamp.is_some()
            });
            let n = env.active_pods("crane").await?.len();
            (settled && n == 1)
                .then_some(())
                .ok_or(format!("orphan owned or gone: {settled}; {n} active"))
        },
    )
    .await;

    // services delete: the Service is switched off.
    env.kubectl(&[
        "patch",
        "crs",
        "crane",
        "--type=merge",
        "-p",
        r#"{"spec":{"service":{"enabled":false}}}"#,
    ]);
    wait_for("the Service to be deleted", LONG, || async {
        match env
            .services()
            .get_opt("crane-http")
            .await
            .map_err(|e| e.to_string())?
        {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        }
    })
    .await;

    // events patch: a repeated event becomes a series (kube-rs' Recorder patches the first
    // one). A Service that is not ours gives a ServiceConflict event on every retry.
    env.kubectl(&["create", "service", "clusterip", "taken", "--tcp=80:8080"]);
    let mut conflict = crane("conflict", 0);
    conflict["spec"]["service"] = serde_json::json!({"name": "taken"});
    env.create(conflict).await;
    wait_for(
        "a ServiceConflict event repeated as a series",
        LONG,
        || async {
            let counts: Vec<i32> = env
                .events_for("conflict", "ServiceConflict")
                .await?
                .iter()
                .map(|e| e.series.as_ref().map_or(1, |s| s.count))
                .collect();
            counts
                .iter()
                .any(|&n| n >= 2)
                .then_some(())
                .ok_or(format!("series counts {counts:?}"))
        },
    )
    .await;
    // kstatus: a Service it may not take is a fix only a person can make: Stalled.
    wait_for("Stalled True for the ServiceConflict", SHORT, || async {
        let stalled = env.condition("conflict", "Stalled").await?;
        match &stalled {
            Some(c) if c.status == "True" && c.reason == "ServiceConflict" => Ok(()),
            _ => Err(format!("Stalled: {stalled:?}")),
        }
    })
    .await;

    // events create: on the CraneReplicaSet, as kubectl describe shows them: one per pass
    // and reason (the 3 pods, the replacement, the Service; the 2 pods scaled away, the
    // surplus pod, the Service).
    wait_for(
        "SuccessfulCreate and SuccessfulDelete events",
        SHORT,
        || async {
            let created = env.events_for("crane", "SuccessfulCreate").await?.len();
            let deleted = env.events_for("crane", "SuccessfulDelete").await?.len();
            (created >= 3 && deleted >= 3).then_some(()).ok_or(format!(
                "{created} SuccessfulCreate, {deleted} SuccessfulDelete"
            ))
        },
    )
    .await;

    assert_eq!(
        env.lease_holder_of(&lease)
            .await
            .expect("read the Lease")
            .as_deref(),
        Some(holder.as_str()),
        "the leader kept its Lease (renewals need leases get/update)"
    );
    assert!(
        operator.exit_status().is_none(),
        "the operator exited: {:?}",
        operator.exit_status()
    );
    let denied = forbidden(&operator);
    assert!(
        denied.is_empty(),
        "the operator was refused something (see {}):\n{}",
        operator.log.display(),
        denied.join("\n")
    );
    drop(operator);

    // --- kubectl auth can-i: what the ServiceAccount can and cannot do ---------------------
    let sa = format!("system:serviceaccount:{ns}:{sa_name}");
    let n = ["-n", ns.as_str()];
    let all = ["--all-namespaces"];
    let mut wrong = Vec::new();
    let mut expect = |allowed: bool, args: &[&str]| {
        if can_i(&sa, args) != allowed {
            wrong.push(format!(
                "{} {}",
                if allowed { "cannot" } else { "CAN" },
                args.join(" ")
            ));
        }
    };
    let with = |a: &[&str], b: &[&str]| -> Vec<String> {
        a.iter().chain(b).map(|s| s.to_string()).collect()
    };
    let cases_no: Vec<Vec<String>> = vec![
        with(&["get", "secrets"], &n),
        with(&["list", "secrets"], &n),
        with(&["watch", "secrets"], &n),
        with(&["get", "secrets"], &all),
        with(&["list", "secrets"], &all),
        with(&["get", "configmaps"], &n),
        with(&["create", "namespaces"], &[]),
        with(&["delete", "namespaces"], &[]),
        with(&["create", "nodes"], &[]),
        with(&["delete", "nodes"], &[]),
        with(&["create", "clusterroles"], &[]),
        with(&["bind", "clusterroles"], &[]),
        with(&["escalate", "clusterroles"], &[]),
        with(&["create", "clusterrolebindings"], &[]),
        with(&["create", "roles"], &n),
        with(&["create", "rolebindings"], &n),
        with(
            &["create", "customresourcedefinitions.apiextensions.k8s.io"],
            &[],
        ),
        with(&["create", "deployments.apps"], &n),
        with(&["create", "replicasets.apps"], &n),
        with(&["create", "pods", "--subresource=exec"], &n),
        with(&["create", "serviceaccounts", "--subresource=token"], &n),
        with(&["update", "pods"], &n),
        with(&["create", "cranereplicasets.crane.dev"], &n),
        with(&["update", "cranereplicasets.crane.dev"], &n),
        with(&["delete", "cranereplicasets.crane.dev"], &n),
        with(&["get", "leases.coordination.k8s.io/another-lease"], &n),
        with(&["update", "leases.coordination.k8s.io/another-lease"], &n),
        with(&["*", "*"], &n),
        with(&["*", "*"], &all),
        with(&["*", "pods"], &n),
    ];
    for args in &cases_no {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        expect(false, &args);
    }
    let cases_yes: Vec<Vec<String>> = vec![
        with(&["create", "pods"], &n),
        with(&["delete", "pods"], &n),
        with(&["patch", "pods"], &n),
        with(&["watch", "pods"], &n),
        with(&["watch", "cranereplicasets.crane.dev"], &n),
        with(
            &[
                "patch",
                "cranereplicasets.crane.dev",
                "--subresource=status",
            ],
            &n,
        ),
        with(&["create", "services"], &n),
        with(&["create", "events.events.k8s.io"], &n),
        with(&["create", "leases.coordination.k8s.io"], &n),
        with(&["get", &format!("leases.coordination.k8s.io/{lease}")], &n),
        with(
            &["update", &format!("leases.coordination.k8s.io/{lease}")],
            &n,
        ),
    ];
    for args in &cases_yes {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        expect(true, &args);
    }
    // Outside the watched namespace: nothing with the Role; with the ClusterRole, what the
    // all-namespaces mode needs.
    let elsewhere = scope == Scope::ClusterWide;
    for args in [
        &["list", "pods", "--all-namespaces"][..],
        &["watch", "cranereplicasets.crane.dev", "--all-namespaces"],
        &["watch", "services", "--all-namespaces"],
        &["create", "pods", "-n", "default"],
    ] {
        expect(elsewhere, args);
    }
    // Leader election stays in the release namespace either way.
    expect(
        false,
        &["create", "leases.coordination.k8s.io", "-n", "default"],
    );
    assert!(
        wrong.is_empty(),
        "{sa} ({scope:?}):\n  {}",
        wrong.join("\n  ")
    );

    env.cleanup().await;
}
