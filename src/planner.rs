//! The functional core: what one reconcile pass must do to the pods of a CraneReplicaSet.
//!
//! `plan` reads the desired state, the pods in the namespace and whether earlier writes
//! have been observed, and returns the writes to make. It has no client and no clock, so
//! the whole decision is covered by table and property tests.

use kube::core::{Selector, SelectorExt};

use jiff::Timestamp;

use crate::api::{UpdateStrategy, UpdateStrategyType};
use crate::deletion_order::pods_to_delete;
use crate::pods::{Controller, PodFacts, TEMPLATE_HASH_LABEL};
use crate::service::OWNER_LABEL;

/// At most this many pods are created or deleted in one pass, as kube-controller-manager's
/// `BurstReplicas`: a large scale-up proceeds over several passes instead of one flood.
pub const BURST_REPLICAS: usize = 500;

/// How pods whose template is out of date are replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Never: new pods get the new template (a ReplicationController's behaviour).
    #[default]
    OnDelete,
    /// Replace them, at most `max_surge` pods above `replicas` and at most
    /// `max_unavailable` below, as a Deployment does.
    RollingUpdate {
        max_surge: usize,
        max_unavailable: usize,
    },
}

/// What the planner needs of the CraneReplicaSet.
#[derive(Clone, Debug)]
pub struct Desired<'a> {
    pub uid: &'a str,
    pub replicas: i32,
    pub selector: &'a Selector,
    /// The CraneReplicaSet is being deleted: adopt nothing, scale nothing.
    pub deleting: bool,
    /// The current template's hash (the [`TEMPLATE_HASH_LABEL`] of up-to-date pods).
    pub template_hash: &'a str,
    pub strategy: Strategy,
    pub min_ready_seconds: i32,
    /// The time availability is judged at (the planner has no clock of its own).
    pub now: Timestamp,
}

impl Strategy {
    /// The strategy a CraneReplicaSet asks for, its budgets resolved for `replicas`.
    pub fn of(spec: &UpdateStrategy, replicas: i32) -> Self {
        match spec.type_ {
            UpdateStrategyType::OnDelete => Self::OnDelete,
            UpdateStrategyType::RollingUpdate => {
                let (max_surge, max_unavailable) = spec
                    .rolling_update
                    .clone()
                    .unwrap_or_default()
                    .budgets(replicas);
                Self::RollingUpdate {
                    max_surge,
                    max_unavailable,
                }
            }
        }
    }
}

impl<'a> Desired<'a> {
    /// `replicas` pods of `selector` for the CraneReplicaSet `uid`, with OnDelete updates.
    pub fn new(uid: &'a str, replicas: i32, selector: &'a Selector) -> Self {
        Self {
            uid,
            replicas,
            selector,
            deleting: false,
            template_hash: "",
            strategy: Strategy::OnDelete,
            min_ready_seconds: 0,
            now: Timestamp::UNIX_EPOCH,
        }
    }

    fn is_current(&self, pod: &PodFacts) -> bool {
        pod.labels.get(TEMPLATE_HASH_LABEL).map(String::as_str) == Some(self.template_hash)
    }
}

/// The writes of one pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Orphans that match the selector: add our controller reference.
    pub adopt: Vec<PodFacts>,
    /// Our pods whose labels no longer match: remove our controller reference.
    pub release: Vec<PodFacts>,
    /// How many pods to create.
    pub create: usize,
    /// Which pods to delete, in order.
    pub delete: Vec<PodFacts>,
    /// Active pods counted after adoption and release (before creations and deletions).
    pub active: usize,
}

/// How a CraneReplicaSet relates to one pod in its namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Ours and matching: counted.
    Owned,
    /// An orphan that matches: adopted, then counted.
    Adopt,
    /// Ours but no longer matching: released, not counted.
    Release,
    /// Not ours to touch.
    Ignore,
}

/// The claim rules of kube-controller-manager's `PodControllerRefManager`.
pub fn claim(desired: &Desired<'_>, pod: &PodFacts) -> Claim {
    let matches = desired.selector.matches(&pod.labels);
    match &pod.controller {
        Controller::Uid(uid) if uid == desired.uid => match (matches, desired.deleting) {
            (true, _) => Claim::Owned,
            (false, false) => Claim::Release,
            (false, true) => Claim::Ignore,
        },
        // Only active orphans, as `claimPods` runs over `FilterActivePods`: a finished pod
        // would be adopted just to be replaced.
        Controller::None if matches && !desired.deleting && pod.is_active() => Claim::Adopt,
        _ => Claim::Ignore,
    }
}

/// The pods it owns and counts that lack [`OWNER_LABEL`] with its `name` (the Service
/// selects on it): created before the label existed, or with it removed by someone.
pub fn needing_owner_label<'p>(
    desired: &Desired<'_>,
    name: &str,
    pods: &'p [PodFacts],
) -> Vec<&'p PodFacts> {
    pods.iter()
        .filter(|p| claim(desired, p) == Claim::Owned && !p.terminating)
        .filter(|p| p.labels.get(OWNER_LABEL).map(String::as_str) != Some(name))
        .collect()
}

/// The pods a CraneReplicaSet counts after this pass's adoptions and releases.
pub fn claimed<'p>(
    desired: &Desired<'_>,
    pods: &'p [PodFacts],
) -> impl Iterator<Item = &'p PodFacts> {
    pods.iter()
        .filter(|p| matches!(claim(desired, p), Claim::Owned | Claim::Adopt))
}

/// Plans one pass. `expectations_satisfied` is false while earlier creations or deletions
/// are not yet visible in `pods`; then only adoption and release are planned.
pub fn plan(desired: &Desired<'_>, pods: &[PodFacts], expectations_satisfied: bool) -> Plan {
    let mut plan = Plan::default();
    for pod in pods {
        match claim(desired, pod) {
            Claim::Adopt => plan.adopt.push(pod.clone()),
            Claim::Release => plan.release.push(pod.clone()),
            Claim::Owned | Claim::Ignore => {}
        }
    }
    let active: Vec<&PodFacts> = claimed(desired, pods).filter(|p| p.is_active()).collect();
    plan.active = active.len();
    if !expectations_satisfied || desired.deleting {
        return plan;
    }
    let want = usize::try_from(desired.replicas).unwrap_or(0);
    if let Strategy::RollingUpdate {
        max_surge,
        max_unavailable,
    } = desired.strategy
    {
        let (current, outdated): (Vec<&PodFacts>, Vec<&PodFacts>) =
            active.iter().partition(|p| desired.is_current(p));
        if !outdated.is_empty() {
            roll(
                &mut plan,
                desired,
                &active,
                &current,
                &outdated,
                (want, max_surge, max_unavailable),
            );
            return plan;
        }
    }
    if active.len() < want {
        plan.create = (want - active.len()).min(BURST_REPLICAS);
    } else if active.len() > want {
        let n = (active.len() - want).min(BURST_REPLICAS);
        plan.delete = pods_to_delete(&active, &active, n, desired.now);
    }
    plan
}

/// One step of a rolling update: create up-to-date pods within the surge, delete outdated
/// ones within the unavailability budget. Outdated pods that are not available anyway go
/// first and cost no budget, as in a Deployment.
fn roll(
    plan: &mut Plan,
    desired: &Desired<'_>,
    active: &[&PodFacts],
    current: &[&PodFacts],
    outdated: &[&PodFacts],
    (want, max_surge, max_unavailable): (usize, usize, usize),
) {
    let available = |p: &PodFacts| p.is_available(desired.min_ready_seconds, desired.now);
    plan.create = want
        .saturating_sub(current.len())
        .min((want + max_surge).saturating_sub(active.len()))
        .min(BURST_REPLICAS);
    let mut budget = active
        .iter()
        .filter(|p| available(p))
        .count()
        .saturating_sub(want.saturating_sub(max_unavailable));
    for pod in pods_to_delete(outdated, active, outdated.len(), desired.now) {
        if !available(&pod) {
            plan.delete.push(pod);
        } else if budget > 0 {
            budget -= 1;
            plan.delete.push(pod);
        }
    }
    plan.delete.truncate(BURST_REPLICAS);
}

/// Sizes of the create batches for `n` pods: 1, 2, 4, ... so that a systematic failure
/// (quota, admission) costs a handful of requests, not `n`.
pub fn slow_start_batches(n: usize) -> Vec<usize> {
    let mut batches = Vec::new();
    let (mut size, mut left) = (1, n);
    while left > 0 {
        let batch = size.min(left);
        batches.push(batch);
        left -= batch;
        size *= 2;
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::Phase;
    use crate::pods::fixtures::{OURS, orphan, pod};
    use std::collections::BTreeMap;

    fn app_crane() -> Selector {
        Selector::from_iter([("app", "crane")])
    }

    fn desired(replicas: i32, selector: &Selector) -> Desired<'_> {
        Desired::new(OURS, replicas, selector)
    }

    fn names(pods: &[PodFacts]) -> Vec<&str> {
        pods.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn situations() {
        let sel = app_crane();
        let relabelled = PodFacts {
            labels: BTreeMap::from([("app".into(), "debug".into())]),
            ..pod("relabelled")
        };
        let theirs = PodFacts {
            controller: Controller::Uid("other".into()),
            ..pod("theirs")
        };
        let cases: Vec<(&str, i32, Vec<PodFacts>, Plan)> = vec![
            (
                "new CraneReplicaSet creates all replicas",
                3,
                vec![],
                Plan {
                    create: 3,
                    ..Plan::default()
                },
            ),
            (
                "one pod deleted: one replacement",
                3,
                vec![pod("a"), pod("b")],
                Plan {
                    create: 1,
                    active: 2,
                    ..Plan::default()
                },
            ),
            (
                "steady state: nothing to do",
                2,
                vec![pod("a"), pod("b")],
                Plan {
                    active: 2,
                    ..Plan::default()
                },
            ),
            (
                "failed pod is replaced, not counted",
                1,
                vec![PodFacts {
                    phase: Phase::Failed,
                    ..pod("a")
                }],
                Plan {
                    create: 1,
                    ..Plan::default()
                },
            ),
            (
                "terminating pod is not counted",
                1,
                vec![PodFacts {
                    terminating: true,
                    ..pod("a")
                }],
                Plan {
                    create: 1,
                    ..Plan::default()
                },
            ),
            (
                "orphan with matching labels is adopted and counted",
                1,
                vec![orphan("o")],
                Plan {
                    adopt: vec![orphan("o")],
                    active: 1,
                    ..Plan::default()
                },
            ),
            (
                "relabelled pod is released and replaced",
                1,
                vec![relabelled.clone()],
                Plan {
                    release: vec![relabelled],
                    create: 1,
                    ..Plan::default()
                },
            ),
            (
                "another controller's pod is left alone",
                1,
                vec![theirs],
                Plan {
                    create: 1,
                    ..Plan::default()
                },
            ),
            (
                "scale to zero deletes everything",
                0,
                vec![pod("a")],
                Plan {
                    delete: vec![pod("a")],
                    active: 1,
                    ..Plan::default()
                },
            ),
            (
                "a huge scale-up is capped per pass",
                100_000,
                vec![],
                Plan {
                    create: BURST_REPLICAS,
                    ..Plan::default()
                },
            ),
        ];
        for (situation, replicas, pods, want) in cases {
            assert_eq!(
                plan(&desired(replicas, &sel), &pods, true),
                want,
                "{situation}"
            );
        }
    }

    #[test]
    fn nothing_is_created_or_deleted_while_expectations_are_pending() {
        let sel = app_crane();
        let p = plan(&desired(5, &sel), &[pod("a"), orphan("o")], false);
        assert_eq!((p.create, p.delete.len(), p.adopt.len()), (0, 0, 1));
        let p = plan(&desired(0, &sel), &[pod("a")], false);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn a_deleting_replica_set_adopts_releases_and_scales_nothing() {
        let sel = app_crane();
        let d = Desired {
            deleting: true,
            ..desired(5, &sel)
        };
        let other = PodFacts {
            labels: BTreeMap::new(),
            ..pod("x")
        };
        assert_eq!(plan(&d, &[orphan("o"), other], true), Plan::default());
    }

    #[test]
    fn orphans_being_deleted_are_not_adopted() {
        let sel = app_crane();
        let dying = PodFacts {
            terminating: true,
            ..orphan("o")
        };
        assert_eq!(plan(&desired(1, &sel), &[dying], true).adopt, vec![]);
    }

    #[test]
    fn owned_pods_without_the_owner_label_get_it() {
        let sel = app_crane();
        let labelled = |name: &str| {
            let mut p = pod(name);
            p.labels.insert(OWNER_LABEL.into(), "crane".into());
            p
        };
        let dying = PodFacts {
            terminating: true,
            ..pod("dying")
        };
        let pods = [labelled("ok"), pod("bare"), dying, orphan("o")];
        let names: Vec<&str> = needing_owner_label(&desired(3, &sel), "crane", &pods)
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["bare"]);
    }

    #[test]
    fn finished_orphans_are_not_adopted() {
        let sel = app_crane();
        for phase in [Phase::Succeeded, Phase::Failed] {
            let done = PodFacts {
                phase,
                ..orphan("o")
            };
            let p = plan(&desired(1, &sel), &[done], true);
            assert_eq!((p.adopt, p.create), (vec![], 1), "{phase:?}");
        }
    }

    #[test]
    fn scale_down_deletes_the_cheapest_pods() {
        let sel = app_crane();
        let pods = vec![
            pod("a"),
            PodFacts {
                deletion_cost: -10,
                ..pod("cheap")
            },
            PodFacts {
                ready_since: None,
                ..pod("unready")
            },
        ];
        assert_eq!(
            names(&plan(&desired(1, &sel), &pods, true).delete),
            ["unready", "cheap"]
        );
    }

    fn version(name: &str, hash: &str) -> PodFacts {
        let mut p = pod(name);
        p.labels.insert(TEMPLATE_HASH_LABEL.into(), hash.into());
        p
    }

    fn rolling(
        replicas: i32,
        selector: &Selector,
        max_surge: usize,
        max_unavailable: usize,
    ) -> Desired<'_> {
        Desired {
            template_hash: "new",
            strategy: Strategy::RollingUpdate {
                max_surge,
                max_unavailable,
            },
            ..Desired::new(OURS, replicas, selector)
        }
    }

    #[test]
    fn on_delete_leaves_outdated_pods_alone() {
        let sel = app_crane();
        let d = Desired {
            template_hash: "new",
            ..desired(2, &sel)
        };
        let p = plan(&d, &[version("a", "old"), version("b", "old")], true);
        assert_eq!((p.create, p.delete.len()), (0, 0));
    }

    #[test]
    fn rolling_update_surges_then_replaces_within_the_budget() {
        let sel = app_crane();
        let old: Vec<PodFacts> = (0..10).map(|i| version(&format!("o{i}"), "old")).collect();
        // 10 outdated and available, surge 3, unavailable 1: create 3, delete 1.
        let p = plan(&rolling(10, &sel, 3, 1), &old, true);
        assert_eq!((p.create, p.delete.len()), (3, 1));
        // The 3 new ones are not ready yet: nothing more may go, and no more may come.
        let mut pods = old[1..].to_vec();
        pods.extend((0..3).map(|i| PodFacts {
            ready_since: None,
            ..version(&format!("n{i}"), "new")
        }));
        let p = plan(&rolling(10, &sel, 3, 1), &pods, true);
        assert_eq!((p.create, p.delete.len()), (1, 0));
    }

    #[test]
    fn rolling_update_deletes_unavailable_outdated_pods_for_free() {
        let sel = app_crane();
        let pods = vec![
            PodFacts {
                ready_since: None,
                ..version("broken", "old")
            },
            version("ok", "old"),
        ];
        let p = plan(&rolling(2, &sel, 0, 0), &pods, true);
        assert_eq!(names(&p.delete), ["broken"]);
    }

    #[test]
    fn a_finished_rollout_is_plain_scaling() {
        let sel = app_crane();
        let pods: Vec<PodFacts> = (0..3).map(|i| version(&format!("n{i}"), "new")).collect();
        let p = plan(&rolling(3, &sel, 1, 1), &pods, true);
        assert_eq!(
            p,
            Plan {
                active: 3,
                ..Plan::default()
            }
        );
    }

    #[test]
    fn slow_start_doubles_until_done() {
        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(slow_start_batches(1), [1]);
        assert_eq!(slow_start_batches(10), [1, 2, 4, 3]);
        assert_eq!(slow_start_batches(500).iter().sum::<usize>(), 500);
        assert_eq!(slow_start_batches(500).len(), 9);
    }
}
