//! Which pods go first when scaling down: the ranking of apps/v1 ReplicaSets
//! (`ActivePodsWithRanks` in kube-controller-manager), so that users' expectations and
//! `controller.kubernetes.io/pod-deletion-cost` annotations carry over unchanged.

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::pods::{Phase, PodFacts};

/// The `n` pods to delete from `active`, the cheapest to lose first.
pub fn pods_to_delete(active: &[&PodFacts], n: usize) -> Vec<PodFacts> {
    // Pods doubled up on a node go before pods alone on theirs: it spreads the survivors.
    let mut on_node: HashMap<Option<&str>, usize> = HashMap::new();
    for p in active {
        *on_node.entry(p.node_name.as_deref()).or_default() += 1;
    }
    let mut ranked: Vec<(&PodFacts, usize)> = active
        .iter()
        .map(|p| (*p, on_node[&p.node_name.as_deref()]))
        .collect();
    ranked.sort_by(delete_first);
    ranked.into_iter().take(n).map(|(p, _)| p.clone()).collect()
}

/// `Less` if pod `a` (with `a.1` active pods of ours on its node) should go before `b`.
fn delete_first((a, a_rank): &(&PodFacts, usize), (b, b_rank): &(&PodFacts, usize)) -> Ordering {
    // 1. Unscheduled before scheduled.
    let scheduled = |p: &PodFacts| p.node_name.as_deref().is_some_and(|n| !n.is_empty());
    scheduled(a)
        .cmp(&scheduled(b))
        // 2. Pending before Unknown before Running.
        .then_with(|| phase_ordinal(a.phase).cmp(&phase_ordinal(b.phase)))
        // 3. Not ready before ready.
        .then_with(|| a.is_ready().cmp(&b.is_ready()))
        // 4. Lower deletion cost first.
        .then_with(|| a.deletion_cost.cmp(&b.deletion_cost))
        // 5. More pods of ours on the same node first.
        .then_with(|| b_rank.cmp(a_rank))
        // 6. Ready for less time first (both ready here, or both not).
        .then_with(|| b.ready_since.cmp(&a.ready_since))
        // 7. More container restarts first.
        .then_with(|| b.restarts.cmp(&a.restarts))
        // 8. Younger first; an unknown creation time counts as youngest.
        .then_with(|| match (a.created, b.created) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(x), Some(y)) => y.cmp(&x),
        })
        // A stable order for ties, so retries pick the same pods.
        .then_with(|| a.name.cmp(&b.name))
}

fn phase_ordinal(phase: Phase) -> u8 {
    match phase {
        Phase::Pending => 0,
        Phase::Unknown => 1,
        Phase::Running => 2,
        // Finished pods are never active; place them first if one slips in.
        Phase::Succeeded | Phase::Failed => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::fixtures::pod;
    use jiff::{SignedDuration, Timestamp};

    fn at(secs: i64) -> Option<Timestamp> {
        Some(Timestamp::UNIX_EPOCH + SignedDuration::from_secs(secs))
    }

    /// Each row: a situation, the pods in it (the first one must be chosen), and why.
    fn first_chosen(pods: Vec<PodFacts>) -> String {
        let refs: Vec<&PodFacts> = pods.iter().collect();
        pods_to_delete(&refs, 1)[0].name.clone()
    }

    #[test]
    fn scale_down_ranking_follows_replicaset() {
        let cases: Vec<(&str, Vec<PodFacts>)> = vec![
            (
                "unscheduled pod goes before a scheduled one",
                vec![
                    PodFacts {
                        node_name: None,
                        ..pod("victim")
                    },
                    pod("keep"),
                ],
            ),
            (
                "pending before running",
                vec![
                    pod("keep"),
                    PodFacts {
                        phase: Phase::Pending,
                        ready_since: None,
                        ..pod("victim")
                    },
                ],
            ),
            (
                "unknown before running",
                vec![
                    pod("keep"),
                    PodFacts {
                        phase: Phase::Unknown,
                        ..pod("victim")
                    },
                ],
            ),
            (
                "not ready before ready",
                vec![
                    pod("keep"),
                    PodFacts {
                        ready_since: None,
                        ..pod("victim")
                    },
                ],
            ),
            (
                "lower pod-deletion-cost first, even if older",
                vec![
                    PodFacts {
                        deletion_cost: 10,
                        created: at(100),
                        ..pod("keep")
                    },
                    PodFacts {
                        deletion_cost: -1,
                        created: at(0),
                        ..pod("victim")
                    },
                ],
            ),
            (
                "doubled up on a node before alone",
                vec![
                    PodFacts {
                        node_name: Some("a".into()),
                        ..pod("keep")
                    },
                    PodFacts {
                        node_name: Some("b".into()),
                        ..pod("victim")
                    },
                    PodFacts {
                        node_name: Some("b".into()),
                        ..pod("x-other-b")
                    },
                ],
            ),
            (
                "ready for less time first",
                vec![
                    PodFacts {
                        ready_since: at(10),
                        ..pod("keep")
                    },
                    PodFacts {
                        ready_since: at(20),
                        ..pod("victim")
                    },
                ],
            ),
            (
                "more restarts first",
                vec![
                    pod("keep"),
                    PodFacts {
                        restarts: 4,
                        ..pod("victim")
                    },
                ],
            ),
            (
                "younger first",
                vec![
                    PodFacts {
                        created: at(10),
                        ..pod("keep")
                    },
                    PodFacts {
                        created: at(20),
                        ..pod("victim")
                    },
                ],
            ),
        ];
        for (situation, pods) in cases {
            assert_eq!(first_chosen(pods), "victim", "{situation}");
        }
    }

    #[test]
    fn takes_exactly_n() {
        let pods: Vec<PodFacts> = (0..5).map(|i| pod(&format!("p{i}"))).collect();
        let refs: Vec<&PodFacts> = pods.iter().collect();
        assert_eq!(pods_to_delete(&refs, 2).len(), 2);
        assert_eq!(pods_to_delete(&refs, 9).len(), 5);
    }
}
