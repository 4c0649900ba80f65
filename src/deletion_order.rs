//! Which pods go first when scaling down: the ranking of apps/v1 ReplicaSets
//! (`ActivePodsWithRanks` in kube-controller-manager, with `LogarithmicScaleDown`), so
//! that users' expectations and `controller.kubernetes.io/pod-deletion-cost` annotations
//! carry over unchanged.

use std::cmp::Ordering;
use std::collections::HashMap;

use jiff::Timestamp;

use crate::pods::{Phase, PodFacts, UNKNOWN_TIME};

/// The `n` pods to delete from `candidates`, the cheapest to lose first, judged at `now`.
/// `related` are all active pods of the CraneReplicaSet (the candidates may be fewer, e.g.
/// the outdated ones of a rollout): a pod doubled up on a node with any of them goes first.
pub fn pods_to_delete(
    candidates: &[&PodFacts],
    related: &[&PodFacts],
    n: usize,
    now: Timestamp,
) -> Vec<PodFacts> {
    let mut on_node: HashMap<Option<&str>, usize> = HashMap::new();
    for p in related.iter().filter(|p| p.is_active()) {
        *on_node.entry(p.node_name.as_deref()).or_default() += 1;
    }
    let mut ranked: Vec<(&PodFacts, usize)> = candidates
        .iter()
        .map(|p| {
            (
                *p,
                on_node.get(&p.node_name.as_deref()).copied().unwrap_or(0),
            )
        })
        .collect();
    ranked.sort_by(|a, b| delete_first(a, b, now));
    ranked.into_iter().take(n).map(|(p, _)| p.clone()).collect()
}

/// log2 of the nanoseconds from `t` to `now`: times in one bucket count as equal, so that
/// scale-down does not always take the very newest pods (-1: in the future).
fn log_bucket(t: Timestamp, now: Timestamp) -> i64 {
    let nanos = now.as_nanosecond() - t.as_nanosecond();
    if nanos > 0 { nanos.ilog2() as i64 } else { -1 }
}

/// The newer time first; times in the same logarithmic bucket are equal ("Equal" lets the
/// UID decide).
fn newer_first(a: Timestamp, b: Timestamp, now: Timestamp) -> Ordering {
    log_bucket(a, now).cmp(&log_bucket(b, now))
}

/// `Less` if pod `a` (with `a.1` active pods of ours on its node) should go before `b`.
fn delete_first(
    (a, a_rank): &(&PodFacts, usize),
    (b, b_rank): &(&PodFacts, usize),
    now: Timestamp,
) -> Ordering {
    // 1. Unscheduled before scheduled.
    let scheduled = |p: &PodFacts| p.node_name.as_deref().is_some_and(|n| !n.is_empty());
    let by_rules = scheduled(a)
        .cmp(&scheduled(b))
        // 2. Pending before Unknown before Running.
        .then_with(|| phase_ordinal(a.phase).cmp(&phase_ordinal(b.phase)))
        // 3. Not ready before ready.
        .then_with(|| a.is_ready().cmp(&b.is_ready()))
        // 4. Lower deletion cost first.
        .then_with(|| a.deletion_cost.cmp(&b.deletion_cost))
        // 5. More pods of ours on the same node first.
        .then_with(|| b_rank.cmp(a_rank));
    if by_rules != Ordering::Equal {
        return by_rules;
    }
    // 6. Ready for less time first (when both are ready), in log-scale buckets; the
    //    bucket's tie goes to the UID.
    if let (Some(x), Some(y)) = (a.ready_since, b.ready_since)
        && x != y
    {
        // A time not given counts as the newest (upstream's `afterOrZero`).
        return match (x == UNKNOWN_TIME, y == UNKNOWN_TIME) {
            (true, _) => Ordering::Less,
            (_, true) => Ordering::Greater,
            _ => newer_first(x, y, now).then_with(|| a.uid.cmp(&b.uid)),
        };
    }
    // 7. More container restarts first.
    if a.restarts != b.restarts {
        return b.restarts.cmp(&a.restarts);
    }
    // 8. Younger first, in log-scale buckets; an unknown creation time counts as youngest.
    match (a.created, b.created) {
        (Some(x), Some(y)) if x != y => newer_first(x, y, now).then_with(|| a.uid.cmp(&b.uid)),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        // A stable order for full ties, so retries pick the same pods.
        _ => a.uid.cmp(&b.uid),
    }
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
    /// Late enough that the fixtures' times (seconds after the epoch) fall in different
    /// log-scale buckets where the rows need them to.
    fn now() -> Timestamp {
        Timestamp::UNIX_EPOCH + SignedDuration::from_secs(40)
    }

    fn first_chosen(pods: Vec<PodFacts>) -> String {
        let refs: Vec<&PodFacts> = pods.iter().collect();
        pods_to_delete(&refs, &refs, 1, now())[0].name.clone()
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
                        ready_since: at(1),
                        ..pod("keep")
                    },
                    PodFacts {
                        ready_since: at(30),
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
                        created: at(35),
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
        assert_eq!(pods_to_delete(&refs, &refs, 2, now()).len(), 2);
        assert_eq!(pods_to_delete(&refs, &refs, 9, now()).len(), 5);
    }

    #[test]
    fn times_in_one_log_scale_bucket_are_equal_and_the_uid_decides() {
        let now = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(1000);
        let minutes_old = |m: i64| Some(now - SignedDuration::from_mins(m));
        // 40 and 70 minutes old share a bucket (2^41 ns ~ 37 min .. 2^42 ns ~ 73 min).
        let a = PodFacts {
            created: minutes_old(40),
            uid: "b-uid".into(),
            ..pod("a")
        };
        let b = PodFacts {
            created: minutes_old(70),
            uid: "a-uid".into(),
            ..pod("b")
        };
        let refs = [&a, &b];
        assert_eq!(
            pods_to_delete(&refs, &refs, 1, now)[0].name,
            "b",
            "lower UID"
        );
        // A pod a minute old is in a younger bucket than both: it goes first.
        let young = PodFacts {
            created: minutes_old(1),
            uid: "z-uid".into(),
            ..pod("young")
        };
        let refs = [&a, &b, &young];
        assert_eq!(pods_to_delete(&refs, &refs, 1, now)[0].name, "young");
    }

    #[test]
    fn doubled_up_counts_every_active_pod_of_ours_not_only_the_candidates() {
        let on = |name: &str, node: &str| PodFacts {
            node_name: Some(node.into()),
            ..pod(name)
        };
        let (x, y, z) = (on("x", "a"), on("y", "b"), on("z", "b"));
        // Only x and y are outdated (candidates), but y shares node b with z.
        let victims = pods_to_delete(&[&x, &y], &[&x, &y, &z], 1, now());
        assert_eq!(victims[0].name, "y");
    }
}
