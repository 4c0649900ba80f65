//! `kubectl crane why NAME`: which pods of a CraneReplicaSet are not ready and why, with
//! the hint of src/diagnostics.rs for each reason, from the pods as they are now (not the
//! status, which may be a pass behind or, without an operator, never written); and what
//! else keeps the object from its replicas (failed creates, its Service).

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::api::CraneReplicaSet;
use crate::dashboard::view::pod_status;
use crate::diagnostics::{hint, pod_issues};
use crate::pods::PodFacts;

/// The explanation, one paragraph per reason.
pub fn explain(c: &CraneReplicaSet, pods: &[Pod]) -> String {
    let name = c.name_any();
    let mut facts: Vec<(&Pod, PodFacts)> = pods
        .iter()
        .map(|p| (p, PodFacts::from_pod(p)))
        .filter(|(_, f)| f.is_active())
        .collect();
    facts.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    let ready = facts.iter().filter(|(_, f)| f.is_ready()).count();
    let desired = c.spec.replicas;
    let mut out = format!(
        "{name}: {ready} of {} pods ready, {desired} desired.\n",
        facts.len()
    );
    let issues = pod_issues(facts.iter().map(|(_, f)| f));
    for issue in &issues {
        let count = issue.count;
        out.push_str(&format!(
            "\n{} ({count} {}):\n",
            issue.reason,
            if count == 1 { "pod" } else { "pods" }
        ));
        let with_reason = facts
            .iter()
            .filter(|(_, f)| f.issue.as_ref().is_some_and(|i| i.reason == issue.reason));
        for (_, f) in with_reason {
            let message = f.issue.as_ref().map_or("", |i| i.message.as_str());
            out.push_str(format!("  {}   {message}", f.name).trim_end());
            out.push('\n');
        }
        out.push_str(&format!("  hint: {}\n", issue.hint));
    }
    // Not ready, and nothing the kubelet or the scheduler said: starting, or a readiness
    // probe failing.
    let silent: Vec<&(&Pod, PodFacts)> = facts
        .iter()
        .filter(|(_, f)| !f.is_ready() && f.issue.is_none())
        .collect();
    if !silent.is_empty() {
        out.push_str(&format!(
            "\nNot ready, no reason reported ({} {}):\n",
            silent.len(),
            if silent.len() == 1 { "pod" } else { "pods" }
        ));
        for (p, f) in &silent {
            out.push_str(&format!("  {}   {}\n", f.name, pod_status(p, f)));
        }
        let example = silent.first().map(|(_, f)| f.name.as_str()).unwrap_or("");
        // diagnostics' hint for a reason it does not know: describe the pod.
        out.push_str(&format!(
            "  hint: starting, or a readiness probe fails: {}\n",
            hint("", example)
        ));
    }
    let st = c.status.clone().unwrap_or_default();
    let failures: Vec<_> = st
        .conditions
        .iter()
        .filter(|cond| {
            ["ReplicaFailure", "ServiceFailure"].contains(&cond.type_.as_str())
                && cond.status == "True"
        })
        .collect();
    for cond in &failures {
        out.push_str(&format!(
            "\n{} ({}):\n  {}\n",
            cond.type_, cond.reason, cond.message
        ));
    }
    if st.observed_generation != c.metadata.generation {
        out.push_str(
            "\nThe operator has not observed this version of the object yet: is it running?\n",
        );
    }
    let missing = usize::try_from(desired)
        .unwrap_or(0)
        .saturating_sub(facts.len());
    let explained = !issues.is_empty() || !silent.is_empty() || !failures.is_empty();
    if missing > 0 && failures.is_empty() {
        out.push_str(&format!(
            "\n{missing} {} not created yet.\n",
            if missing == 1 { "pod" } else { "pods" }
        ));
    } else if !explained && ready == facts.len() {
        out.push_str("Nothing keeps its pods from serving.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CraneReplicaSetStatus;
    use serde_json::json;

    fn pod(name: &str, state: serde_json::Value, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "crane"}]},
            "status": {
                "phase": if state.get("running").is_some() { "Running" } else { "Pending" },
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{"name": "crane", "ready": ready, "restartCount": 0,
                    "image": "", "imageID": "", "state": state}]
            }
        }))
        .unwrap()
    }

    fn observed(replicas: i32) -> CraneReplicaSet {
        let mut c = crate::api::fixtures::crane(replicas);
        c.status = Some(CraneReplicaSetStatus {
            observed_generation: Some(1),
            ..CraneReplicaSetStatus::default()
        });
        c
    }

    fn pulling(name: &str) -> Pod {
        pod(
            name,
            json!({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"heejeong/crane\""}}),
            false,
        )
    }

    #[test]
    fn each_reason_lists_its_pods_and_the_diagnostics_hint() {
        let c = observed(3);
        let pods = [
            pulling("crane-b"),
            pod("crane-c", json!({"running": {}}), true),
            pulling("crane-a"),
        ];
        assert_eq!(
            explain(&c, &pods),
            format!(
                "\
crane: 1 of 3 pods ready, 3 desired.

ImagePullBackOff (2 pods):
  crane-a   Back-off pulling image \"heejeong/crane\"
  crane-b   Back-off pulling image \"heejeong/crane\"
  hint: {}
",
                hint("ImagePullBackOff", "crane-a")
            )
        );
    }

    #[test]
    fn a_pod_not_ready_for_no_reported_reason_is_listed_too() {
        let c = observed(1);
        let text = explain(&c, &[pod("crane-a", json!({"running": {}}), false)]);
        assert!(
            text.contains("Not ready, no reason reported (1 pod):\n  crane-a   Running\n  hint: starting, or a readiness probe fails: see `kubectl describe pod crane-a`\n"),
            "{text}"
        );
    }

    #[test]
    fn failed_creates_and_missing_pods_are_explained() {
        let mut c = observed(2);
        let failure: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition =
            serde_json::from_value(json!({
                "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                "message": "pods \"crane-\" is forbidden: exceeded quota: pods",
                "lastTransitionTime": "2026-12-01T12:05:00Z"
            }))
            .unwrap();
        c.status.as_mut().unwrap().conditions.push(failure);
        let text = explain(&c, &[]);
        assert_eq!(
            text,
            "crane: 0 of 0 pods ready, 2 desired.\n\nReplicaFailure (FailedCreate):\n  pods \"crane-\" is forbidden: exceeded quota: pods\n"
        );
        c.status.as_mut().unwrap().conditions.clear();
        assert!(explain(&c, &[]).ends_with("\n2 pods not created yet.\n"));
    }

    #[test]
    fn all_ready_says_nothing_is_wrong_and_an_unobserved_object_asks_for_the_operator() {
        let c = observed(1);
        assert_eq!(
            explain(&c, &[pod("crane-a", json!({"running": {}}), true)]),
            "crane: 1 of 1 pods ready, 1 desired.\nNothing keeps its pods from serving.\n"
        );
        let unseen = crate::api::fixtures::crane(1);
        assert!(
            explain(&unseen, &[]).contains("has not observed this version of the object yet"),
            "{}",
            explain(&unseen, &[])
        );
    }
}
