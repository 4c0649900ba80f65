//! `kubectl crane get [NAME]`: the CraneReplicaSets as a table (the counts of `kubectl get
//! rc`, the Service's address the book waited for, the pods' issues), or one in detail with
//! its pods, as `kubectl argo rollouts get` shows a rollout. Everything comes from the
//! object's status, as the operator wrote it, and the pods it controls.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Client, ResourceExt};

use super::{object_and_pods, table};
use crate::api::{CraneReplicaSet, CraneReplicaSetStatus, ServiceType, UpdateStrategyType};
use crate::controller::api_for;
use crate::dashboard::view::{age, pod_status, ready_count, summary};
use crate::decode::Decoded;
use crate::pods::{PodFacts, TEMPLATE_HASH_LABEL, template_hash};

/// The conditions that say something is wrong when True.
const TROUBLE: [&str; 3] = ["Stalled", "ReplicaFailure", "ServiceFailure"];

/// The table of `namespace`'s CraneReplicaSets (every namespace's when None), or the
/// detail of `name`.
pub async fn get(
    client: &Client,
    namespace: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<String> {
    let now = Timestamp::now();
    if let (Some(namespace), Some(name)) = (namespace, name) {
        let (crs, pods) = object_and_pods(client, namespace, name).await?;
        return Ok(detail(&crs, &pods, now));
    }
    let api = api_for::<Decoded<CraneReplicaSet>>(client, namespace);
    let listed = match api.list(&Default::default()).await {
        Err(kube::Error::Api(e)) if e.code == 404 => anyhow::bail!(
            "the cluster does not serve cranereplicasets.crane.dev/v1: install the CRD \
             (kubectl apply --server-side -f manifests/crd.yaml, or the Helm chart)"
        ),
        listed => listed?,
    };
    Ok(overview(&listed.items, namespace, now))
}

/// One line per CraneReplicaSet, by namespace and name; one that cannot be read says why.
pub fn overview(
    all: &[Decoded<CraneReplicaSet>],
    namespace: Option<&str>,
    now: Timestamp,
) -> String {
    if all.is_empty() {
        return match namespace {
            Some(ns) => format!("No CraneReplicaSets found in namespace {ns}.\n"),
            None => "No CraneReplicaSets found.\n".into(),
        };
    }
    let mut sorted: Vec<&Decoded<CraneReplicaSet>> = all.iter().collect();
    sorted.sort_by_key(|d| {
        let meta = kube::Resource::meta(*d);
        (meta.namespace.clone(), meta.name.clone())
    });
    let mut header = vec![
        "NAME",
        "STATUS",
        "DESIRED",
        "CURRENT",
        "READY",
        "AVAILABLE",
        "UP-TO-DATE",
        "ADDRESS",
        "AGE",
        "POD-ISSUES",
    ];
    if namespace.is_none() {
        header.insert(0, "NAMESPACE");
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for object in sorted {
        let meta = kube::Resource::meta(object);
        let mut row = match object {
            Decoded::Ok(c) => {
                let st = c.status.clone().unwrap_or_default();
                vec![
                    c.name_any(),
                    summary(c).into(),
                    c.spec.replicas.to_string(),
                    st.replicas.to_string(),
                    st.ready_replicas.to_string(),
                    st.available_replicas.to_string(),
                    st.updated_replicas.to_string(),
                    address(c),
                    age(created(c), now),
                    st.pod_issues
                        .iter()
                        .map(|i| format!("{} ({})", i.reason, i.count))
                        .collect::<Vec<_>>()
                        .join(", "),
                ]
            }
            Decoded::Undecodable(bad) => {
                let mut row = vec![meta.name.clone().unwrap_or_default(), "Unreadable".into()];
                row.extend(std::iter::repeat_n("-".to_string(), 6));
                row.push(age(meta.creation_timestamp.as_ref().map(|t| t.0), now));
                row.push(format!("cannot be read: {}: {}", bad.field, bad.error));
                row
            }
        };
        if namespace.is_none() {
            row.insert(0, meta.namespace.clone().unwrap_or_default());
        }
        rows.push(row);
    }
    table(&rows)
}

/// One CraneReplicaSet: state, counts, Service, what is wrong, and its pods.
pub fn detail(c: &CraneReplicaSet, pods: &[Pod], now: Timestamp) -> String {
    let st = c.status.clone().unwrap_or_default();
    let mut lines: Vec<(String, String)> = vec![
        ("Name".into(), c.name_any()),
        ("Namespace".into(), c.namespace().unwrap_or_default()),
        ("Status".into(), summary(c).into()),
    ];
    if let Some(note) = observed(c, &st) {
        lines.push(("Observed".into(), note));
    }
    lines.extend([
        (
            "Strategy".into(),
            match c.spec.update_strategy.type_ {
                UpdateStrategyType::OnDelete => "OnDelete".to_string(),
                UpdateStrategyType::RollingUpdate => "RollingUpdate".to_string(),
            },
        ),
        ("Images".into(), images(c)),
        ("Replicas".into(), String::new()),
        ("  Desired".into(), c.spec.replicas.to_string()),
        ("  Current".into(), st.replicas.to_string()),
        ("  Ready".into(), st.ready_replicas.to_string()),
        ("  Available".into(), st.available_replicas.to_string()),
        ("  Up-to-date".into(), st.updated_replicas.to_string()),
        ("Service".into(), service(c)),
    ]);
    if c.spec.service.enabled {
        lines.push(("  Address".into(), address(c)));
    }
    lines.push(("Age".into(), age(created(c), now)));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 3;
    let mut out = String::new();
    for (key, value) in &lines {
        let key = format!("{key}:");
        out.push_str(format!("{key:width$}{value}").trim_end());
        out.push('\n');
    }
    let trouble: Vec<_> = st
        .conditions
        .iter()
        .filter(|cond| TROUBLE.contains(&cond.type_.as_str()) && cond.status == "True")
        .collect();
    if !trouble.is_empty() {
        out.push_str("\nProblems:\n");
        for cond in trouble {
            out.push_str(&format!(
                "  {} ({}): {}\n",
                cond.type_, cond.reason, cond.message
            ));
        }
    }
    if !st.pod_issues.is_empty() {
        out.push_str("\nPod issues:\n");
        for issue in &st.pod_issues {
            let pods = if issue.count == 1 { "pod" } else { "pods" };
            let message = if issue.message.is_empty() {
                String::new()
            } else {
                format!(": {}", issue.message)
            };
            out.push_str(&format!(
                "  {}: {} {pods}, e.g. {}{message}\n    hint: {}\n",
                issue.reason, issue.count, issue.example_pod, issue.hint
            ));
        }
    }
    out.push('\n');
    out.push_str(&pod_table(c, pods, now));
    out
}

/// The pods, as `kubectl get pods -o wide` shows them, with whether each was made from the
/// current template.
fn pod_table(c: &CraneReplicaSet, pods: &[Pod], now: Timestamp) -> String {
    if pods.is_empty() {
        return "No pods.\n".into();
    }
    let hash = template_hash(c);
    let mut rows = vec![
        [
            "NAME", "STATUS", "READY", "RESTARTS", "AGE", "NODE", "REVISION",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in pods {
        let facts = PodFacts::from_pod(p);
        let current = p.labels().get(TEMPLATE_HASH_LABEL) == Some(&hash);
        rows.push(vec![
            facts.name.clone(),
            pod_status(p, &facts),
            ready_count(p),
            facts.restarts.to_string(),
            age(facts.created, now),
            facts.node_name.clone().unwrap_or_else(|| "<none>".into()),
            (if current { "updated" } else { "outdated" }).into(),
        ]);
    }
    table(&rows)
}

/// Whether the status describes the object as it is now; None when it does.
fn observed(c: &CraneReplicaSet, st: &CraneReplicaSetStatus) -> Option<String> {
    let generation = c.metadata.generation?;
    match st.observed_generation {
        Some(seen) if seen == generation => None,
        Some(seen) if seen > 0 => Some(format!(
            "generation {seen} of {generation}: the operator has not seen the latest change yet"
        )),
        _ => Some("not yet: is the operator running?".into()),
    }
}

fn images(c: &CraneReplicaSet) -> String {
    c.spec
        .template
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| c.image.clone().unwrap_or_else(|| "<none>".into()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Service as asked for: name, type and ports.
fn service(c: &CraneReplicaSet) -> String {
    let spec = &c.spec.service;
    if !spec.enabled {
        return "none (spec.service.enabled is false)".into();
    }
    let target = match crate::service::target_port(c) {
        Ok(IntOrString::Int(n)) => n.to_string(),
        Ok(IntOrString::String(name)) => name,
        Err(e) => format!("? ({e})"),
    };
    format!(
        "{} ({}, port {} -> {target})",
        crate::service::service_name(c),
        spec.type_.as_str(),
        spec.port
    )
}

/// Where the Service answers, as the operator last saw it: the load balancer's addresses
/// with the port (the book's `curl` target), `<pending>` while one is awaited, else the
/// cluster IP; `<none>` without a Service.
fn address(c: &CraneReplicaSet) -> String {
    if !c.spec.service.enabled {
        return "<none>".into();
    }
    let port = c.spec.service.port;
    let Some(svc) = c.status.as_ref().and_then(|s| s.service.as_ref()) else {
        return "<pending>".into();
    };
    if !svc.external_addresses.is_empty() {
        return svc
            .external_addresses
            .iter()
            .map(|a| format!("{a}:{port}"))
            .collect::<Vec<_>>()
            .join(",");
    }
    match (
        &svc.cluster_ip,
        svc.type_ == ServiceType::LoadBalancer.as_str(),
    ) {
        (_, true) => "<pending>".into(),
        (Some(ip), false) if ip != "None" => format!("{ip}:{port}"),
        _ => "<none>".into(),
    }
}

fn created(c: &CraneReplicaSet) -> Option<Timestamp> {
    c.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PodIssue, ServiceStatus};
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-12-01T12:10:00Z".parse().unwrap()
    }

    /// The book's object as the operator leaves it: 3 ready pods behind 172.31.250.193.
    fn serving() -> CraneReplicaSet {
        let mut c = crate::api::fixtures::crane(3);
        c.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-12-01T12:05:00Z".parse().unwrap(),
        ));
        c.status = Some(CraneReplicaSetStatus {
            observed_generation: Some(1),
            replicas: 3,
            fully_labeled_replicas: 3,
            ready_replicas: 3,
            available_replicas: 3,
            updated_replicas: 3,
            conditions: vec![condition("Ready", "True", "AllPodsAvailable", "")],
            service: Some(ServiceStatus {
                name: "crane-http".into(),
                type_: "LoadBalancer".into(),
                cluster_ip: Some("10.96.0.10".into()),
                external_addresses: vec!["172.31.250.193".into()],
                external_ip: "172.31.250.193".into(),
            }),
            ..CraneReplicaSetStatus::default()
        });
        c
    }

    /// Its pods failing to pull their image.
    fn pulling(replicas: i32) -> CraneReplicaSet {
        let mut c = serving();
        c.metadata.name = Some("web".into());
        let st = c.status.as_mut().unwrap();
        (st.ready_replicas, st.available_replicas, st.replicas) = (0, 0, replicas);
        st.service.as_mut().unwrap().external_addresses.clear();
        st.conditions = vec![
            condition("Ready", "False", "ImagePullBackOff", ""),
            condition(
                "Stalled",
                "True",
                "ImagePullBackOff",
                "2 of 2 pods: ImagePullBackOff",
            ),
        ];
        st.pod_issues = vec![PodIssue {
            reason: "ImagePullBackOff".into(),
            count: replicas,
            example_pod: "web-qvnkv".into(),
            message: "Back-off pulling image \"heejeong/crane\"".into(),
            hint: crate::diagnostics::hint("ImagePullBackOff", "web-qvnkv"),
        }];
        c
    }

    fn condition(
        type_: &str,
        status: &str,
        reason: &str,
        message: &str,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        serde_json::from_value(json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-12-01T12:05:00Z", "observedGeneration": 1
        }))
        .unwrap()
    }

    fn pod(name: &str, owner: &CraneReplicaSet, node: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": "default", "creationTimestamp": "2026-12-01T12:06:00Z",
                "labels": {TEMPLATE_HASH_LABEL: if ready { template_hash(owner) } else { "old".into() }},
                "ownerReferences": [{"apiVersion": "crane.dev/v1", "kind": "CraneReplicaSet",
                    "name": owner.name_any(), "uid": "crs-uid", "controller": true}]
            },
            "spec": {"nodeName": node, "containers": [{"name": "crane"}]},
            "status": {
                "phase": if ready { "Running" } else { "Pending" },
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{"name": "crane", "ready": ready, "restartCount": 0, "image": "", "imageID": "",
                    "state": if ready { json!({"running": {}}) } else { json!({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off"}}) }}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_table_has_the_counts_the_address_and_the_pod_issues() {
        let all = [Decoded::Ok(pulling(2)), Decoded::Ok(serving())];
        assert_eq!(
            overview(&all, Some("default"), now()),
            "\
NAME    STATUS    DESIRED   CURRENT   READY   AVAILABLE   UP-TO-DATE   ADDRESS               AGE   POD-ISSUES
crane   Ready     3         3         3       3           3            172.31.250.193:8080   5m
web     Stalled   3         2         0       0           3            <pending>             5m    ImagePullBackOff (2)
"
        );
    }

    #[test]
    fn every_namespace_adds_a_column_and_an_unreadable_object_says_why() {
        let bad = Decoded::<CraneReplicaSet>::Undecodable(Box::new(crate::decode::Undecodable {
            meta: serde_json::from_value(json!({"name": "poison", "namespace": "a"})).unwrap(),
            field: "status.conditions[0].lastTransitionTime".into(),
            error: "year out of range".into(),
            pruned: None,
        }));
        let text = overview(&[Decoded::Ok(serving()), bad], None, now());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE   NAME "), "{text}");
        assert!(
            lines[1].starts_with("a           poison   Unreadable   -"),
            "{text}"
        );
        assert!(
            lines[1].ends_with(
                "cannot be read: status.conditions[0].lastTransitionTime: year out of range"
            ),
            "{text}"
        );
        assert!(
            lines[2].starts_with("default     crane    Ready "),
            "{text}"
        );
    }

    #[test]
    fn an_empty_namespace_says_so() {
        assert_eq!(
            overview(&[], Some("demo"), now()),
            "No CraneReplicaSets found in namespace demo.\n"
        );
    }

    #[test]
    fn the_detail_shows_counts_service_address_and_pods_by_name() {
        let c = serving();
        let pods = [
            pod("crane-4xq2z", &c, "node-000000", true),
            pod("crane-8xl0p", &c, "node-000001", true),
        ];
        assert_eq!(
            detail(&c, &pods, now()),
            "\
Name:          crane
Namespace:     default
Status:        Ready
Strategy:      OnDelete
Images:        heejeong/crane
Replicas:
  Desired:     3
  Current:     3
  Ready:       3
  Available:   3
  Up-to-date:  3
Service:       crane-http (LoadBalancer, port 8080 -> 7070)
  Address:     172.31.250.193:8080
Age:           5m

NAME          STATUS    READY   RESTARTS   AGE   NODE          REVISION
crane-4xq2z   Running   1/1     0          4m    node-000000   updated
crane-8xl0p   Running   1/1     0          4m    node-000001   updated
"
        );
    }

    #[test]
    fn the_detail_says_what_is_wrong_and_the_hint() {
        let c = pulling(1);
        let text = detail(&c, &[pod("web-qvnkv", &c, "node-000000", false)], now());
        assert!(text.contains("Status:        Stalled\n"), "{text}");
        assert!(text.contains("  Address:     <pending>\n"), "{text}");
        assert!(
            text.contains(
                "\nProblems:\n  Stalled (ImagePullBackOff): 2 of 2 pods: ImagePullBackOff\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\n\nPod issues:\n  ImagePullBackOff: 1 pod, e.g. web-qvnkv: Back-off pulling image \"heejeong/crane\"\n    hint: the nodes cannot pull the image"),
            "{text}"
        );
        assert!(
            text.contains(
                "web-qvnkv   ImagePullBackOff   0/1     0          4m    node-000000   outdated\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_object_the_operator_has_not_seen_says_so_and_a_disabled_service_too() {
        let mut c = crate::api::fixtures::crane(1);
        c.spec.service.enabled = false;
        c.status = Some(CraneReplicaSetStatus {
            observed_generation: Some(-1),
            ..CraneReplicaSetStatus::default()
        });
        let text = detail(&c, &[], now());
        assert!(text.contains("Status:        Progressing\n"), "{text}");
        assert!(
            text.contains("Observed:      not yet: is the operator running?\n"),
            "{text}"
        );
        assert!(
            text.contains("Service:       none (spec.service.enabled is false)\n"),
            "{text}"
        );
        assert!(!text.contains("Address"), "{text}");
        assert!(text.ends_with("\nNo pods.\n"), "{text}");
    }
}
