//! The facts about a pod that the planner decides on, read once from the API object.
//!
//! Keeping the planner on this plain struct (not on `Pod`) makes every decision testable
//! with one-line fixtures, and keeps `Option` juggling out of the decision code.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::api::CraneReplicaSet;
use crate::service::{OWNER_LABEL, controller_ref, fnv1a};

/// Annotation with which users rank pods for scale-down (lower goes first), as on
/// apps/v1 ReplicaSets.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Who controls a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Controller {
    /// No controller ownerReference: may be adopted.
    None,
    /// A controller ownerReference with this UID.
    Uid(String),
}

/// A pod's lifecycle phase, in the order that scale-down prefers to delete them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Pending,
    Unknown,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    fn parse(phase: Option<&str>) -> Self {
        match phase {
            Some("Pending") | None => Self::Pending,
            Some("Running") => Self::Running,
            Some("Succeeded") => Self::Succeeded,
            Some("Failed") => Self::Failed,
            Some(_) => Self::Unknown,
        }
    }
}

/// Label with the hash of the template a pod was made from, as Deployments'
/// `pod-template-hash`: pods whose hash differs from the current template's are outdated.
pub const TEMPLATE_HASH_LABEL: &str = "crane.dev/template-hash";

/// The hash of a CraneReplicaSet's pod template, as it goes into [`TEMPLATE_HASH_LABEL`].
pub fn template_hash(crs: &CraneReplicaSet) -> String {
    let json = serde_json::to_vec(&crs.spec.template).unwrap_or_default();
    // Stable across builds, and short enough for a label value.
    format!("{:010x}", fnv1a(&json) & 0xff_ffff_ffff)
}

/// Why a pod is not ready, as `kubectl get pods` would show it (ImagePullBackOff,
/// CrashLoopBackOff, OOMKilled, Unschedulable, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    pub reason: String,
    pub message: String,
}

/// Waiting reasons of a container that is simply starting: not worth reporting.
const STARTING: [&str; 2] = ["ContainerCreating", "PodInitializing"];

/// A time the API server did not give (Go's zero time): `ready_since` of a Ready condition
/// without a transition time.
pub const UNKNOWN_TIME: Timestamp = Timestamp::UNIX_EPOCH;

/// What the planner knows of one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodFacts {
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub controller: Controller,
    /// The name of the CraneReplicaSet that controls it, if one does.
    pub owner: Option<String>,
    pub terminating: bool,
    pub phase: Phase,
    pub node_name: Option<String>,
    /// When the Ready condition last became True ([`UNKNOWN_TIME`] if not said), if it is
    /// True now.
    pub ready_since: Option<Timestamp>,
    pub restarts: i32,
    pub created: Option<Timestamp>,
    pub deletion_cost: i32,
    /// Why the pod is not ready, when it has a reason worth telling the user.
    pub issue: Option<Issue>,
}

/// The most telling reason a not-ready pod has: OOMKilled over the CrashLoopBackOff it
/// causes, then a waiting container's reason, then the scheduler's.
fn issue_of(pod: &Pod) -> Option<Issue> {
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    let mut waiting = None;
    for c in containers {
        let oom = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .filter(|t| t.reason.as_deref() == Some("OOMKilled"));
        if let Some(t) = oom.filter(|_| !c.ready) {
            let message = t
                .message
                .clone()
                .unwrap_or_else(|| format!("container {} was killed: out of memory", c.name));
            return Some(Issue {
                reason: "OOMKilled".into(),
                message,
            });
        }
        let w = c.state.as_ref().and_then(|s| s.waiting.as_ref());
        if let Some(reason) = w
            .and_then(|w| w.reason.clone())
            .filter(|r| !STARTING.contains(&r.as_str()))
        {
            let message = w.and_then(|w| w.message.clone()).unwrap_or_default();
            // The kubelet alternates the two while it retries a pull: one issue, not two.
            let reason = if reason == "ErrImagePull" {
                "ImagePullBackOff".to_string()
            } else {
                reason
            };
            waiting.get_or_insert(Issue { reason, message });
        }
        // Between two back-offs a crash-looping container runs (or has just exited) for a
        // moment: still crash-looping, or the issue would come and go with every restart.
        let last_exit = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        if let Some(t) = last_exit.filter(|_| !c.ready && c.restart_count > 0 && w.is_none()) {
            let message = format!(
                "container {} restarted {} times; last exit code {}{}",
                c.name,
                c.restart_count,
                t.exit_code,
                t.reason
                    .as_ref()
                    .map_or(String::new(), |r| format!(" ({r})")),
            );
            waiting.get_or_insert(Issue {
                reason: "CrashLoopBackOff".into(),
                message,
            });
        }
    }
    waiting.or_else(|| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .map(|c| Issue {
                reason: c.reason.clone().unwrap_or_else(|| "Unschedulable".into()),
                message: c.message.clone().unwrap_or_default(),
            })
    })
}

impl PodFacts {
    pub fn from_pod(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let ready_since = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|conds| conds.iter().find(|c| c.type_ == "Ready"))
            .filter(|c| c.status == "True")
            .map(|c| {
                c.last_transition_time
                    .as_ref()
                    .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
            });
        let restarts = status
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |cs| {
                cs.iter().map(|c| c.restart_count).max().unwrap_or(0)
            });
        let controller = pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true));
        Self {
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
            labels: pod.labels().clone(),
            controller: controller.map_or(Controller::None, |o| Controller::Uid(o.uid.clone())),
            owner: controller
                .filter(|o| o.kind == "CraneReplicaSet" && o.api_version.starts_with("crane.dev/"))
                .map(|o| o.name.clone()),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            phase: Phase::parse(status.and_then(|s| s.phase.as_deref())),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ready_since,
            restarts,
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            // An unparsable cost counts as the default, as in kube-controller-manager.
            deletion_cost: pod
                .annotations()
                .get(DELETION_COST_ANNOTATION)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            issue: if ready_since.is_some() {
                None
            } else {
                issue_of(pod)
            },
        }
    }

    /// Counts towards `replicas`: not terminating and not finished.
    pub fn is_active(&self) -> bool {
        !self.terminating && !matches!(self.phase, Phase::Succeeded | Phase::Failed)
    }

    pub fn is_ready(&self) -> bool {
        self.ready_since.is_some()
    }

    /// Ready for at least `min_ready_seconds` at `now`. A pod whose Ready condition has no
    /// transition time is not available until then, as in `IsPodAvailable`.
    pub fn is_available(&self, min_ready_seconds: i32, now: Timestamp) -> bool {
        self.ready_since.is_some_and(|since| {
            min_ready_seconds <= 0
                || (since != UNKNOWN_TIME
                    && since + jiff::SignedDuration::from_secs(min_ready_seconds.into()) <= now)
        })
    }
}

/// A new pod from the CraneReplicaSet's template, named `<name>-<5 random chars>` by the
/// API server, controlled by the CraneReplicaSet and carrying [`OWNER_LABEL`].
pub fn new_pod(crs: &CraneReplicaSet) -> Pod {
    let template = crs.spec.template.metadata.clone().unwrap_or_default();
    let mut labels = template.labels.unwrap_or_default();
    labels.insert(OWNER_LABEL.into(), crs.name_any());
    labels.insert(TEMPLATE_HASH_LABEL.into(), template_hash(crs));
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", crs.name_any())),
            namespace: crs.namespace(),
            labels: Some(labels),
            annotations: template.annotations,
            finalizers: template.finalizers,
            owner_references: Some(vec![controller_ref(crs)]),
            ..ObjectMeta::default()
        },
        spec: crs.spec.template.spec.clone(),
        status: None,
    }
}

#[cfg(test)]
pub mod fixtures {
    //! Pods in one line, for the planner's tests.
    use super::*;

    pub const OURS: &str = "crs-uid";

    /// An active, ready, scheduled pod of ours with the label app=crane.
    pub fn pod(name: &str) -> PodFacts {
        PodFacts {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            labels: BTreeMap::from([("app".to_string(), "crane".to_string())]),
            controller: Controller::Uid(OURS.to_string()),
            owner: Some("crane".to_string()),
            terminating: false,
            phase: Phase::Running,
            node_name: Some("node-1".to_string()),
            ready_since: Some(Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(1)),
            restarts: 0,
            created: Some(Timestamp::UNIX_EPOCH),
            deletion_cost: 0,
            issue: None,
        }
    }

    pub fn orphan(name: &str) -> PodFacts {
        PodFacts {
            controller: Controller::None,
            owner: None,
            ..pod(name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::pod;
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_facts_of_an_api_pod() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": "crane-abcde", "uid": "u1", "labels": {"app": "crane"},
                "annotations": {DELETION_COST_ANNOTATION: "-5"},
                "ownerReferences": [{"apiVersion": "crane.dev/v1", "kind": "CraneReplicaSet", "name": "crane", "uid": "c1", "controller": true}],
                "creationTimestamp": "2026-01-01T00:00:00Z"
            },
            "spec": {"nodeName": "kwok-node-0", "containers": []},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:10Z"}],
                "containerStatuses": [{"name": "a", "restartCount": 3, "ready": true, "image": "x", "imageID": ""}]}
        }))
        .unwrap();
        let f = PodFacts::from_pod(&p);
        assert_eq!(f.controller, Controller::Uid("c1".into()));
        assert_eq!(f.owner.as_deref(), Some("crane"));
        assert_eq!(f.deletion_cost, -5);
        assert_eq!(f.restarts, 3);
        assert_eq!(f.phase, Phase::Running);
        assert!(f.is_active() && f.is_ready());
        let ready_at: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        assert!(!f.is_available(30, ready_at + jiff::SignedDuration::from_secs(29)));
        assert!(f.is_available(30, ready_at + jiff::SignedDuration::from_secs(30)));
        let untimed = PodFacts {
            ready_since: Some(UNKNOWN_TIME),
            ..f
        };
        assert!(untimed.is_ready());
        assert!(untimed.is_available(0, ready_at));
        assert!(
            !untimed.is_available(30, ready_at + jiff::SignedDuration::from_hours(1)),
            "Ready without a transition time: not available while minReadySeconds applies"
        );
    }

    #[test]
    fn new_pods_are_controlled_and_labelled() {
        let p = new_pod(&crate::api::fixtures::crane(1));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("crane-"));
        assert_eq!(p.labels()[OWNER_LABEL], "crane");
        assert_eq!(p.labels()["app"], "crane");
        let owner = &p.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("CraneReplicaSet", Some(true))
        );
        let f = PodFacts::from_pod(&p);
        assert_eq!(f.controller, Controller::Uid("crs-uid".into()));
    }

    fn not_ready(status: serde_json::Value) -> Option<Issue> {
        let p: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap();
        PodFacts::from_pod(&p).issue
    }

    #[test]
    fn reads_why_a_pod_is_not_ready() {
        let waiting = |reason: &str| {
            json!({"phase": "Pending", "containerStatuses": [{"name": "c", "ready": false,
            "restartCount": 0, "image": "i", "imageID": "", "state": {"waiting": {"reason": reason, "message": "m"}}}]})
        };
        assert_eq!(
            not_ready(waiting("ImagePullBackOff")).unwrap().reason,
            "ImagePullBackOff"
        );
        assert_eq!(
            not_ready(waiting("ContainerCreating")),
            None,
            "starting is not an issue"
        );
        let oom = json!({"phase": "Running", "containerStatuses": [{"name": "c", "ready": false, "restartCount": 3,
            "image": "i", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]});
        assert_eq!(not_ready(oom).unwrap().reason, "OOMKilled");
        let unschedulable = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/3 nodes are available"}]});
        let issue = not_ready(unschedulable).unwrap();
        assert_eq!(
            (issue.reason.as_str(), issue.message.as_str()),
            ("Unschedulable", "0/3 nodes are available")
        );
        let ready = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "c", "ready": true, "restartCount": 1, "image": "i", "imageID": "",
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]});
        assert_eq!(not_ready(ready), None, "a ready pod has no issue");
        let between_back_offs = json!({"phase": "Running", "containerStatuses": [{"name": "c", "ready": false,
            "restartCount": 4, "image": "i", "imageID": "", "state": {"running": {}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]});
        let issue = not_ready(between_back_offs).unwrap();
        assert_eq!(
            issue.reason, "CrashLoopBackOff",
            "a crash loop between back-offs"
        );
        assert!(issue.message.contains("exit code 1"), "{}", issue.message);
        assert_eq!(
            not_ready(waiting("ErrImagePull")).unwrap().reason,
            "ImagePullBackOff",
            "the kubelet's pull retries are one issue"
        );
    }

    #[test]
    fn finished_and_terminating_pods_are_not_active() {
        assert!(
            !PodFacts {
                phase: Phase::Failed,
                ..pod("a")
            }
            .is_active()
        );
        assert!(
            !PodFacts {
                phase: Phase::Succeeded,
                ..pod("a")
            }
            .is_active()
        );
        assert!(
            !PodFacts {
                terminating: true,
                ..pod("a")
            }
            .is_active()
        );
        assert!(
            PodFacts {
                phase: Phase::Unknown,
                ..pod("a")
            }
            .is_active()
        );
    }
}
