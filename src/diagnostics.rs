//! Why pods are not ready, said where the user already looks: grouped by reason on the
//! CraneReplicaSet's status, with a hint for the usual causes. In the book a pod sat in
//! ImagePullBackOff because its image existed only on the author's machine; finding out
//! took `kubectl describe pod`.

use std::collections::BTreeMap;

use crate::api::PodIssue;
use crate::pods::PodFacts;

/// What usually causes `reason`, and what to do about it.
pub fn hint(reason: &str, pod: &str) -> String {
    match reason {
        "ImagePullBackOff" | "ErrImagePull" => "the nodes cannot pull the image: check its name and tag; an image built \
             only on your machine must be pushed to a registry the nodes can pull from (and the pods given \
             imagePullSecrets if it is private)"
            .into(),
        "InvalidImageName" => "the image reference is not valid: check spec.template.spec.containers[].image".into(),
        "CrashLoopBackOff" => format!("the container keeps exiting: see `kubectl logs --previous {pod}`"),
        "OOMKilled" => "the container ran out of memory: raise resources.limits.memory in the template".into(),
        "Unschedulable" => format!(
            "no node fits the pod: see `kubectl describe pod {pod}` (resource requests, nodeSelector, taints)"
        ),
        "CreateContainerConfigError" | "CreateContainerError" => format!(
            "the container could not be created, often a missing ConfigMap or Secret: see `kubectl describe pod {pod}`"
        ),
        _ => format!("see `kubectl describe pod {pod}`"),
    }
}

/// The issues of the not-ready pods, the most frequent reason first. The example pod is
/// the first by name, so the status stays the same while nothing changes.
pub fn pod_issues<'a>(pods: impl IntoIterator<Item = &'a PodFacts>) -> Vec<PodIssue> {
    let mut by_reason: BTreeMap<&str, (i32, &PodFacts)> = BTreeMap::new();
    for pod in pods {
        if let Some(issue) = &pod.issue {
            let entry = by_reason.entry(issue.reason.as_str()).or_insert((0, pod));
            entry.0 += 1;
            if pod.name < entry.1.name {
                entry.1 = pod;
            }
        }
    }
    let mut issues: Vec<PodIssue> = by_reason
        .into_iter()
        .map(|(reason, (count, pod))| PodIssue {
            reason: reason.to_string(),
            count,
            example_pod: pod.name.clone(),
            message: pod
                .issue
                .as_ref()
                .map(|i| i.message.clone())
                .unwrap_or_default(),
            hint: hint(reason, &pod.name),
        })
        .collect();
    // Stable: equal counts keep the reasons' alphabetical order.
    issues.sort_by_key(|i| std::cmp::Reverse(i.count));
    issues
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::Issue;
    use crate::pods::fixtures::pod;

    fn sick(name: &str, reason: &str) -> PodFacts {
        PodFacts {
            ready_since: None,
            issue: Some(Issue {
                reason: reason.into(),
                message: format!("{reason} on {name}"),
            }),
            ..pod(name)
        }
    }

    #[test]
    fn groups_by_reason_most_frequent_first() {
        let pods = [
            sick("c", "ImagePullBackOff"),
            sick("a", "ImagePullBackOff"),
            sick("b", "CrashLoopBackOff"),
            pod("ok"),
        ];
        let issues = pod_issues(&pods);
        assert_eq!(issues.len(), 2);
        assert_eq!(
            (
                issues[0].reason.as_str(),
                issues[0].count,
                issues[0].example_pod.as_str()
            ),
            ("ImagePullBackOff", 2, "a")
        );
        assert_eq!(issues[0].message, "ImagePullBackOff on a");
        assert!(issues[0].hint.contains("registry"));
        assert!(issues[1].hint.contains("kubectl logs --previous b"));
    }

    #[test]
    fn healthy_pods_have_no_issues() {
        assert!(pod_issues(&[pod("a"), pod("b")]).is_empty());
    }
}
