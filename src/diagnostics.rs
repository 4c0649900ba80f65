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

/// What the change of the top pod issue means for the user, once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssueNews {
    /// A new top reason (a Warning event).
    Appeared(String),
    /// The problem went away and every pod is ready (a Normal event).
    Resolved,
    Quiet,
}

/// From the reason announced `before` and the new status of a CraneReplicaSet that wants
/// `replicas`: what to announce, and the reason to remember as announced.
///
/// No issue is not yet a resolution: between two back-offs of a crash loop, or while a
/// replacement starts, the pods are simply not ready. Only all pods ready resolve it, so
/// the news does not flap with the kubelet's retry cycle.
pub fn issue_news(
    before: Option<&str>,
    issues: &[PodIssue],
    ready: i32,
    replicas: i32,
) -> (IssueNews, Option<String>) {
    match (before, issues.first()) {
        (before, Some(now)) if before != Some(now.reason.as_str()) => (
            IssueNews::Appeared(now.reason.clone()),
            Some(now.reason.clone()),
        ),
        (before, Some(_)) => (IssueNews::Quiet, before.map(str::to_string)),
        (Some(_), None) if ready >= replicas => (IssueNews::Resolved, None),
        (before, None) => (IssueNews::Quiet, before.map(str::to_string)),
    }
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

    #[test]
    fn issue_news_does_not_flap_with_the_kubelets_back_off() {
        let crash = |n| PodIssue {
            reason: "CrashLoopBackOff".into(),
            count: n,
            ..PodIssue::default()
        };
        let news =
            |before: Option<&str>, issues: &[PodIssue], ready| issue_news(before, issues, ready, 3);
        let appeared = (
            IssueNews::Appeared("CrashLoopBackOff".into()),
            Some("CrashLoopBackOff".to_string()),
        );
        assert_eq!(news(None, &[crash(3)], 0), appeared);
        let quiet = (IssueNews::Quiet, Some("CrashLoopBackOff".to_string()));
        assert_eq!(news(Some("CrashLoopBackOff"), &[crash(3)], 0), quiet);
        assert_eq!(
            news(Some("CrashLoopBackOff"), &[], 1),
            quiet,
            "no issue but pods not ready: not resolved"
        );
        assert_eq!(
            news(Some("CrashLoopBackOff"), &[], 3),
            (IssueNews::Resolved, None)
        );
        assert_eq!(news(None, &[], 3), (IssueNews::Quiet, None));
    }
}
