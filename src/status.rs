//! The status a CraneReplicaSet reports, computed from what the controller observed.
//!
//! Pure, so that "a steady state writes nothing" comes down to this function returning
//! the same value twice, which the tests check.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Selector;

use crate::api::{
    CraneReplicaSet, CraneReplicaSetStatus, PodIssue, ServiceStatus, UpdateStrategyType,
};
use crate::diagnostics;
use crate::pods::{PodFacts, TEMPLATE_HASH_LABEL, template_hash};

/// The condition type that reports failed creations and deletions, as on ReplicaSets.
pub const REPLICA_FAILURE: &str = "ReplicaFailure";
/// The condition type that reports why the Service could not be made (a missing
/// containerPort, a Service of the same name that belongs to someone else).
pub const SERVICE_FAILURE: &str = "ServiceFailure";
/// True when `replicas` pods are ready; False with the reason most pods are not.
pub const PODS_READY: &str = "PodsReady";
/// kstatus: True when every desired pod is available on the current generation.
pub const READY: &str = "Ready";
/// kstatus: True while the object converges (InProgress for Helm, Flux, Argo CD).
pub const RECONCILING: &str = "Reconciling";
/// kstatus: True when it cannot progress without a change by someone (Failed).
pub const STALLED: &str = "Stalled";

/// Pod issues that do not go away by waiting: the pods need a fixed template, image or
/// configuration. (Unschedulable is not one: a node may come.)
const PERSISTENT_ISSUES: [&str; 7] = [
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "OOMKilled",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Why the last pass could not do what it wanted to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `FailedCreate`, `FailedDelete`, `InvalidServicePort`, `ServiceConflict`.
    pub reason: &'static str,
    pub message: String,
}

/// The observations a status is computed from.
pub struct Observed<'a> {
    /// The pods the CraneReplicaSet counts (see `planner::claimed`), active or not.
    pub claimed: Vec<&'a PodFacts>,
    pub replica_failure: Option<Failure>,
    pub service_failure: Option<Failure>,
    pub service: Option<ServiceStatus>,
    pub now: Timestamp,
}

/// The new status, and when to look again for pods that will become available.
pub fn compute(
    crs: &CraneReplicaSet,
    selector: &Selector,
    observed: Observed<'_>,
) -> (CraneReplicaSetStatus, Option<Duration>) {
    let min_ready = crs.spec.min_ready_seconds;
    let template_labels = crs
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let active: Vec<&PodFacts> = observed
        .claimed
        .into_iter()
        .filter(|p| p.is_active())
        .collect();
    let count = |f: &dyn Fn(&PodFacts) -> bool| active.iter().filter(|p| f(p)).count() as i32;
    let recheck = active
        .iter()
        .filter(|p| !p.is_available(min_ready, observed.now))
        .filter_map(|p| p.ready_since)
        .map(|since| since + jiff::SignedDuration::from_secs(min_ready.into()) - observed.now)
        .filter_map(|left| Duration::try_from(left).ok())
        .min();
    let previous = crs.status.clone().unwrap_or_default();
    let pod_issues = diagnostics::pod_issues(active.iter().copied());
    let hash = template_hash(crs);
    let ready = count(&|p| p.is_ready());
    let pods_ready = pods_ready(crs.spec.replicas, active.len() as i32, ready, &pod_issues);
    let status = CraneReplicaSetStatus {
        observed_generation: crs.metadata.generation,
        replicas: active.len() as i32,
        fully_labeled_replicas: count(&|p| {
            template_labels
                .iter()
                .all(|(k, v)| p.labels.get(k) == Some(v))
        }),
        ready_replicas: ready,
        updated_replicas: count(&|p| p.labels.get(TEMPLATE_HASH_LABEL) == Some(&hash)),
        available_replicas: count(&|p| p.is_available(min_ready, observed.now)),
        selector: Some(selector.to_string()),
        conditions: Vec::new(),
        service: observed.service,
        pod_issues,
    };
    let at = At {
        now: observed.now,
        generation: crs.metadata.generation,
    };
    let mut conditions = previous.conditions;
    set_failure(
        &mut conditions,
        REPLICA_FAILURE,
        &observed.replica_failure,
        at,
    );
    set_failure(
        &mut conditions,
        SERVICE_FAILURE,
        &observed.service_failure,
        at,
    );
    set(&mut conditions, PODS_READY, pods_ready, at);
    let rolling = crs.spec.update_strategy.type_ == UpdateStrategyType::RollingUpdate;
    // Stalled by a failure says what its failure condition says: the first message of a
    // failure that repeats, not the latest (which names another generated pod every time,
    // and a status that changes on every failed pass would trigger the next at once).
    let failure = [
        (REPLICA_FAILURE, observed.replica_failure),
        (SERVICE_FAILURE, observed.service_failure),
    ]
    .into_iter()
    .find_map(|(type_, failure)| {
        let f = failure?;
        let kept = conditions.iter().find(|c| c.type_ == type_);
        Some(Failure {
            message: kept.map_or(f.message, |c| c.message.clone()),
            ..f
        })
    });
    for (type_, state) in kstatus(&status, crs.spec.replicas, rolling, failure) {
        set(&mut conditions, type_, state, at);
    }
    (
        CraneReplicaSetStatus {
            conditions,
            ..status
        },
        recheck,
    )
}

/// The PodsReady condition: its status, reason and message.
fn pods_ready(
    desired: i32,
    active: i32,
    ready: i32,
    issues: &[PodIssue],
) -> (bool, String, String) {
    match issues.first() {
        Some(top) => {
            let message = match top.message.as_str() {
                "" => format!(
                    "{} of {desired} pods: {} (e.g. {}); {}",
                    top.count, top.reason, top.example_pod, top.hint
                ),
                m => format!(
                    "{} of {desired} pods: {} (e.g. {}: {m}); {}",
                    top.count, top.reason, top.example_pod, top.hint
                ),
            };
            (false, top.reason.clone(), message)
        }
        None if ready == desired && active == desired => (
            true,
            "AllPodsReady".into(),
            format!("{ready} of {desired} pods are ready"),
        ),
        None => (
            false,
            "PodsNotReady".into(),
            format!("{ready} of {desired} pods are ready"),
        ),
    }
}

/// When a status is computed: its time, and the generation it describes.
#[derive(Clone, Copy)]
struct At {
    now: Timestamp,
    generation: Option<i64>,
}

/// Ready, Reconciling and Stalled, as kstatus reads them (at most one of them True).
fn kstatus(
    status: &CraneReplicaSetStatus,
    desired: i32,
    rolling: bool,
    failure: Option<Failure>,
) -> [(&'static str, (bool, String, String)); 3] {
    let counts = format!(
        "{} of {desired} pods available, {} up to date",
        status.available_replicas, status.updated_replicas
    );
    let pods_stuck = || {
        let top = status.pod_issues.first()?;
        PERSISTENT_ISSUES.contains(&top.reason.as_str()).then(|| {
            let message = format!(
                "{} of {desired} pods: {} (e.g. {}); {}",
                top.count, top.reason, top.example_pod, top.hint
            );
            (top.reason.clone(), message)
        })
    };
    let pods_ready = status.replicas == desired
        && status.available_replicas == desired
        && (!rolling || status.updated_replicas == desired);
    // A failure (pods it cannot create or delete, a Service it cannot make: DESIGN's
    // "FailedCreate, quota, Service conflict") stalls the object even while every desired
    // pod is available: what it was asked for is not all there, and only a fix makes it so.
    // Pods stuck in a persistent issue stall it only while they keep it from being ready.
    let (ready, stalled) = match failure {
        Some(f) => (false, Some((f.reason.to_string(), f.message))),
        None if pods_ready => (true, None),
        None => (false, pods_stuck()),
    };
    let progress = if status.replicas < desired {
        "ScalingUp"
    } else if status.replicas > desired {
        "ScalingDown"
    } else if rolling && status.updated_replicas < desired {
        "RollingUpdate"
    } else {
        "WaitingForAvailablePods"
    };
    match (ready, stalled) {
        (true, _) => [
            (READY, (true, "AllPodsAvailable".into(), counts.clone())),
            (
                RECONCILING,
                (false, "AllPodsAvailable".into(), counts.clone()),
            ),
            (STALLED, (false, "AllPodsAvailable".into(), counts)),
        ],
        (false, Some((reason, message))) => [
            (READY, (false, reason.clone(), message.clone())),
            (RECONCILING, (false, reason.clone(), message.clone())),
            (STALLED, (true, reason, message)),
        ],
        (false, None) => [
            (READY, (false, progress.into(), counts.clone())),
            (RECONCILING, (true, progress.into(), counts.clone())),
            (STALLED, (false, progress.into(), counts)),
        ],
    }
}

/// Sets a condition to `(status, reason, message)`. `lastTransitionTime` moves only when
/// its status changes.
fn set(conditions: &mut Vec<Condition>, type_: &str, state: (bool, String, String), at: At) {
    let (ok, reason, message) = state;
    let status = if ok { "True" } else { "False" };
    let since = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(at.now), |c| c.last_transition_time.clone());
    put(
        conditions,
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason,
            message,
            observed_generation: at.generation,
            last_transition_time: since,
        },
    );
}

/// Replaces the condition of its type, keeping the list's order.
fn put(conditions: &mut Vec<Condition>, condition: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
}

/// Sets (True, with the failure's reason) or clears a failure condition. An unchanged
/// failure keeps its time and message, so a failure that repeats does not rewrite the
/// status on every retry.
fn set_failure(conditions: &mut Vec<Condition>, type_: &str, failure: &Option<Failure>, at: At) {
    let current = conditions.iter().position(|c| c.type_ == type_);
    match (failure, current) {
        (None, Some(i)) => {
            conditions.remove(i);
        }
        (Some(f), Some(i))
            if conditions[i].status == "True" && conditions[i].reason == f.reason =>
        {
            conditions[i].observed_generation = at.generation;
        }
        (Some(f), _) => put(
            conditions,
            Condition {
                type_: type_.into(),
                status: "True".into(),
                reason: f.reason.into(),
                message: f.message.clone(),
                observed_generation: at.generation,
                last_transition_time: Time(at.now),
            },
        ),
        (None, None) => {}
    }
}

/// Reasons that only say how far a convergence has come, read off the counts: going from
/// one to another (ScalingUp to WaitingForAvailablePods as the last pod appears) is
/// progress, not news.
const PROGRESS_REASONS: [&str; 5] = [
    "ScalingUp",
    "ScalingDown",
    "RollingUpdate",
    "WaitingForAvailablePods",
    "PodsNotReady",
];

/// Whether `new` differs from `old` in counts only: the replica counts, how many pods
/// each issue has (and its example), the messages that quote them, and a condition's
/// progress reason ([`PROGRESS_REASONS`]) while its status stays. Such a change may wait
/// a moment to be written with the next (see the controller's status batching); anything
/// else (a condition's status, a failure's reason, the observed generation, the Service,
/// a new issue) is news to write at once.
pub fn only_counts_changed(old: &CraneReplicaSetStatus, new: &CraneReplicaSetStatus) -> bool {
    fn without_counts(s: &CraneReplicaSetStatus) -> CraneReplicaSetStatus {
        let mut s = s.clone();
        s.replicas = 0;
        s.fully_labeled_replicas = 0;
        s.ready_replicas = 0;
        s.available_replicas = 0;
        s.updated_replicas = 0;
        for c in &mut s.conditions {
            c.message.clear();
            if PROGRESS_REASONS.contains(&c.reason.as_str()) {
                c.reason = "Progressing".into();
            }
        }
        for i in &mut s.pod_issues {
            i.count = 0;
            i.example_pod.clear();
            i.message.clear();
            i.hint.clear();
        }
        s
    }
    without_counts(old) == without_counts(new)
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`: changed and new fields,
/// `null` for the ones gone; lists are replaced whole.
pub fn merge_patch(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut patch = serde_json::Map::new();
            for (k, v) in new {
                match old.get(k) {
                    Some(was) if was == v => {}
                    Some(was) => {
                        patch.insert(k.clone(), merge_patch(was, v));
                    }
                    None => {
                        patch.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in old.keys().filter(|k| !new.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fixtures::crane;
    use crate::pods::fixtures::pod;
    use jiff::SignedDuration;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn app_crane() -> Selector {
        Selector::from_iter([("app", "crane")])
    }

    fn observe(pods: &[PodFacts], failure: Option<Failure>, now: Timestamp) -> Observed<'_> {
        Observed {
            claimed: pods.iter().collect(),
            replica_failure: failure,
            service_failure: None,
            service: None,
            now,
        }
    }

    #[test]
    fn counts_like_a_replicaset() {
        let now = Timestamp::UNIX_EPOCH + SignedDuration::from_secs(100);
        let mut crs = crane(4);
        crs.spec.min_ready_seconds = 30;
        let pods = vec![
            pod("available"),
            PodFacts {
                ready_since: Some(now - SignedDuration::from_secs(10)),
                ..pod("ready-not-available")
            },
            PodFacts {
                ready_since: None,
                ..pod("not-ready")
            },
            PodFacts {
                labels: BTreeMap::from([("app".into(), "crane".into()), ("x".into(), "y".into())]),
                ..pod("extra-label")
            },
            PodFacts {
                terminating: true,
                ..pod("terminating")
            },
        ];
        let (st, recheck) = compute(&crs, &app_crane(), observe(&pods, None, now));
        assert_eq!(
            (
                st.replicas,
                st.fully_labeled_replicas,
                st.ready_replicas,
                st.available_replicas
            ),
            (4, 4, 3, 2)
        );
        assert_eq!(st.selector.as_deref(), Some("app=crane"));
        assert_eq!(st.observed_generation, Some(1));
        assert_eq!(
            recheck,
            Some(Duration::from_secs(20)),
            "look again when the pod turns available"
        );
    }

    #[test]
    fn replica_failure_is_set_kept_and_cleared() {
        let t0 = Timestamp::UNIX_EPOCH;
        let mut crs = crane(1);
        let failed = || {
            Some(Failure {
                reason: "FailedCreate",
                message: "exceeded quota: pods=1".into(),
            })
        };
        let (st, _) = compute(&crs, &app_crane(), observe(&[], failed(), t0));
        let failure = condition(&st, REPLICA_FAILURE).expect("ReplicaFailure");
        assert_eq!(failure.reason, "FailedCreate");
        let stalled = condition(&st, STALLED).unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "FailedCreate")
        );

        crs.status = Some(st.clone());
        let later = t0 + SignedDuration::from_secs(60);
        let next_pod = Some(Failure {
            reason: "FailedCreate",
            message: "pod crane-xyz12: exceeded quota: pods=1".into(),
        });
        let (again, _) = compute(&crs, &app_crane(), observe(&[], next_pod, later));
        assert_eq!(
            again, st,
            "a repeated failure does not change the status, even with another pod's name"
        );

        crs.status = Some(again);
        let (cleared, _) = compute(&crs, &app_crane(), observe(&[], None, later));
        assert!(condition(&cleared, REPLICA_FAILURE).is_none());
    }

    fn condition<'a>(st: &'a CraneReplicaSetStatus, type_: &str) -> Option<&'a Condition> {
        st.conditions.iter().find(|c| c.type_ == type_)
    }

    /// (status, reason) of Ready, Reconciling and Stalled.
    type Kstatus = [(String, String); 3];

    fn kstatus_of(st: &CraneReplicaSetStatus) -> Kstatus {
        [READY, RECONCILING, STALLED].map(|t| {
            let c = condition(st, t).unwrap_or_else(|| panic!("no {t} condition"));
            (c.status.clone(), c.reason.clone())
        })
    }

    fn row(ready: &str, reconciling: &str, stalled: &str, reason: &str) -> Kstatus {
        [ready, reconciling, stalled].map(|s| (s.to_string(), reason.to_string()))
    }

    #[test]
    fn ready_reconciling_and_stalled_as_kstatus_reads_them() {
        let now = Timestamp::UNIX_EPOCH + SignedDuration::from_secs(100);
        let mut crs = crane(2);
        crs.metadata.generation = Some(7);
        let pulling = |name: &str| PodFacts {
            ready_since: None,
            issue: Some(crate::pods::Issue {
                reason: "ImagePullBackOff".into(),
                message: String::new(),
            }),
            ..pod(name)
        };
        let starting = PodFacts {
            ready_since: None,
            ..pod("b")
        };
        let cases: [(&str, Vec<PodFacts>, Kstatus); 4] = [
            (
                "all available",
                vec![pod("a"), pod("b")],
                row("True", "False", "False", "AllPodsAvailable"),
            ),
            (
                "one to create",
                vec![pod("a")],
                row("False", "True", "False", "ScalingUp"),
            ),
            (
                "one starting",
                vec![pod("a"), starting],
                row("False", "True", "False", "WaitingForAvailablePods"),
            ),
            (
                "every pod ImagePullBackOff",
                vec![pulling("a"), pulling("b")],
                row("False", "False", "True", "ImagePullBackOff"),
            ),
        ];
        for (situation, pods, want) in cases {
            let (st, _) = compute(&crs, &app_crane(), observe(&pods, None, now));
            assert_eq!(kstatus_of(&st), want, "{situation}");
            assert!(
                st.conditions
                    .iter()
                    .all(|c| c.observed_generation == Some(7)),
                "{situation}: every condition names its generation"
            );
        }
    }

    /// DESIGN: Stalled for FailedCreate, quota and a Service conflict. A conflict leaves
    /// the pods serving but no Service: `kubectl wait --for=condition=Ready` and Helm's
    /// `--wait` must not report the object done.
    #[test]
    fn a_service_it_cannot_make_stalls_an_object_whose_pods_are_available() {
        let now = Timestamp::UNIX_EPOCH + SignedDuration::from_secs(100);
        let crs = crane(2);
        let pods = [pod("a"), pod("b")];
        let observed = Observed {
            service_failure: Some(Failure {
                reason: "ServiceConflict",
                message: "Service crane-http exists and is not ours".into(),
            }),
            ..observe(&pods, None, now)
        };
        let (st, _) = compute(&crs, &app_crane(), observed);
        assert_eq!(
            kstatus_of(&st),
            row("False", "False", "True", "ServiceConflict")
        );
        assert_eq!(
            st.available_replicas, 2,
            "the counts still say the pods serve"
        );
        let (fixed, _) = compute(
            &CraneReplicaSet {
                status: Some(st),
                ..crs.clone()
            },
            &app_crane(),
            observe(&pods, None, now + SignedDuration::from_secs(5)),
        );
        assert_eq!(
            kstatus_of(&fixed),
            row("True", "False", "False", "AllPodsAvailable")
        );
    }

    #[test]
    fn pods_ready_names_the_reason_and_keeps_its_time() {
        let t0 = Timestamp::UNIX_EPOCH;
        let mut crs = crane(2);
        let stuck = PodFacts {
            ready_since: None,
            issue: Some(crate::pods::Issue {
                reason: "ImagePullBackOff".into(),
                message: "Back-off pulling image".into(),
            }),
            ..pod("b")
        };
        let pods = [pod("a"), stuck];
        let (st, _) = compute(&crs, &app_crane(), observe(&pods, None, t0));
        let c = condition(&st, PODS_READY).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ImagePullBackOff")
        );
        assert!(c.message.contains("registry"), "{c:?}");
        assert_eq!(st.pod_issues[0].example_pod, "b");

        crs.status = Some(st.clone());
        let (again, _) = compute(
            &crs,
            &app_crane(),
            observe(&pods, None, t0 + SignedDuration::from_secs(30)),
        );
        assert_eq!(again, st, "no churn while nothing changes");

        let healthy = [pod("a"), pod("b")];
        let (fixed, _) = compute(
            &crs,
            &app_crane(),
            observe(&healthy, None, t0 + SignedDuration::from_secs(60)),
        );
        let c = condition(&fixed, PODS_READY).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "AllPodsReady")
        );
        assert!(fixed.pod_issues.is_empty());
        assert_eq!(c.last_transition_time.0, t0 + SignedDuration::from_secs(60));
    }

    #[test]
    fn steady_state_is_a_fixed_point() {
        let now = Timestamp::UNIX_EPOCH + SignedDuration::from_secs(1000);
        let mut crs = crane(2);
        let pods = [pod("a"), pod("b")];
        let (st, recheck) = compute(&crs, &app_crane(), observe(&pods, None, now));
        assert!(recheck.is_none());
        crs.status = Some(st.clone());
        let (st2, _) = compute(
            &crs,
            &app_crane(),
            observe(&pods, None, now + SignedDuration::from_secs(5)),
        );
        assert_eq!(st, st2);
    }

    #[test]
    fn merge_patch_holds_only_the_changes_and_nulls_what_went() {
        let old = json!({"replicas": 3, "readyReplicas": 2, "service": {"name": "s", "externalIP": "1.2.3.4"},
            "conditions": [{"type": "A"}], "podIssues": [{"reason": "X"}]});
        let new = json!({"replicas": 3, "readyReplicas": 3, "service": {"name": "s"},
            "conditions": [{"type": "A"}, {"type": "B"}]});
        assert_eq!(
            merge_patch(&old, &new),
            json!({"readyReplicas": 3, "service": {"externalIP": null},
                "conditions": [{"type": "A"}, {"type": "B"}], "podIssues": null})
        );
        assert_eq!(merge_patch(&serde_json::Value::Null, &new), new);
    }
}
