//! Property tests of the planner: from any observed pod set, carrying out its plans
//! converges to exactly `replicas`, creates no more than the shortfall, deletes no more than
//! the excess, and never touches another controller's pods — also when the cache lags
//! behind the controller's own writes and only the expectations stand in the way.

use std::collections::BTreeMap;

use crane_operator::expectations::Expectations;
use crane_operator::planner::{Desired, Plan, claimed, plan};
use crane_operator::pods::{Controller, Phase, PodFacts};
use jiff::{SignedDuration, Timestamp};
use kube::core::Selector;
use proptest::prelude::*;

const OURS: &str = "ours";
const KEY: &str = "ns/crane";

fn selector() -> Selector {
    Selector::from_iter([("app", "crane")])
}

fn arb_pod() -> impl Strategy<Value = PodFacts> {
    (
        prop_oneof![
            Just(Controller::None),
            Just(Controller::Uid(OURS.into())),
            Just(Controller::Uid("other".into()))
        ],
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(Phase::Pending),
            Just(Phase::Running),
            Just(Phase::Unknown),
            Just(Phase::Succeeded),
            Just(Phase::Failed)
        ],
        any::<bool>(),
        prop::option::of(0u8..3),
        -5i32..5,
        0i64..1000,
        0i32..3,
    )
        .prop_map(
            |(controller, matching, terminating, phase, ready, node, cost, age, restarts)| {
                PodFacts {
                    name: String::new(),
                    uid: String::new(),
                    labels: BTreeMap::from([(
                        "app".into(),
                        if matching { "crane" } else { "other" }.into(),
                    )]),
                    owner: matches!(controller, Controller::Uid(_)).then(|| "crane".into()),
                    controller,
                    terminating,
                    phase,
                    node_name: node.map(|n| format!("node-{n}")),
                    ready_since: ready
                        .then_some(Timestamp::UNIX_EPOCH + SignedDuration::from_secs(age)),
                    restarts,
                    created: Some(Timestamp::UNIX_EPOCH + SignedDuration::from_secs(age)),
                    deletion_cost: cost,
                    issue: None,
                }
            },
        )
}

fn arb_world() -> impl Strategy<Value = (Vec<PodFacts>, i32)> {
    (prop::collection::vec(arb_pod(), 0..40), 0i32..40).prop_map(|(mut pods, replicas)| {
        for (i, p) in pods.iter_mut().enumerate() {
            p.name = format!("p{i}");
            p.uid = format!("u{i}");
        }
        (pods, replicas)
    })
}

fn new_pod(n: usize) -> PodFacts {
    PodFacts {
        name: format!("new{n}"),
        uid: format!("new-u{n}"),
        labels: BTreeMap::from([("app".into(), "crane".into())]),
        controller: Controller::Uid(OURS.into()),
        owner: Some("crane".into()),
        terminating: false,
        phase: Phase::Pending,
        node_name: None,
        ready_since: None,
        restarts: 0,
        created: None,
        deletion_cost: 0,
        issue: None,
    }
}

/// Carries out a plan on the world; returns (created, deleted).
fn execute(world: &mut Vec<PodFacts>, p: &Plan, next_id: &mut usize) -> (usize, usize) {
    for a in &p.adopt {
        let pod = world
            .iter_mut()
            .find(|w| w.uid == a.uid)
            .expect("adopted pod exists");
        pod.controller = Controller::Uid(OURS.into());
    }
    for r in &p.release {
        let pod = world
            .iter_mut()
            .find(|w| w.uid == r.uid)
            .expect("released pod exists");
        pod.controller = Controller::None;
    }
    for _ in 0..p.create {
        world.push(new_pod(*next_id));
        *next_id += 1;
    }
    world.retain(|w| !p.delete.iter().any(|d| d.uid == w.uid));
    (p.create, p.delete.len())
}

fn active_claimed(world: &[PodFacts], d: &Desired<'_>) -> usize {
    claimed(d, world).filter(|p| p.is_active()).count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn converges_without_overshoot((mut world, replicas) in arb_world()) {
        let sel = selector();
        let d = Desired::new(OURS, replicas, &sel);
        let start = active_claimed(&world, &d);
        let others_before: Vec<PodFacts> =
            world.iter().filter(|p| p.controller == Controller::Uid("other".into())).cloned().collect();
        let (mut created, mut deleted, mut next) = (0, 0, 0);
        for _ in 0..3 {
            let p = plan(&d, &world, true);
            for touched in p.adopt.iter().chain(&p.release).chain(&p.delete) {
                prop_assert_ne!(&touched.controller, &Controller::Uid("other".into()));
            }
            let (c, x) = execute(&mut world, &p, &mut next);
            created += c;
            deleted += x;
        }
        prop_assert_eq!(active_claimed(&world, &d), replicas as usize);
        prop_assert_eq!(plan(&d, &world, true), Plan { active: replicas as usize, ..Plan::default() });
        prop_assert!(created <= (replicas as usize).saturating_sub(start));
        prop_assert!(deleted <= start.saturating_sub(replicas as usize));
        let others_after: Vec<PodFacts> =
            world.iter().filter(|p| p.controller == Controller::Uid("other".into())).cloned().collect();
        prop_assert_eq!(others_before, others_after);
    }

    /// The controller plans from a cache that shows its own creations and deletions only
    /// `lag` passes later; the expectations keep it from acting twice on the same shortfall.
    #[test]
    fn a_lagging_cache_never_causes_extra_creations(
        (world, replicas) in arb_world(),
        lag in 1usize..4,
        rescale in 0i32..40,
    ) {
        let sel = selector();
        let expectations = Expectations::default();
        let mut world = world;
        let mut history: Vec<Vec<PodFacts>> = vec![world.clone()];
        let (mut created, mut next) = (0usize, 0usize);
        let mut needed = {
            let d = Desired::new(OURS, replicas, &sel);
            (replicas as usize).saturating_sub(active_claimed(&world, &d))
        };
        for pass in 0..20 {
            let want = if pass < 10 { replicas } else { rescale };
            let d = Desired::new(OURS, want, &sel);
            if pass == 10 {
                needed += (want as usize).saturating_sub(active_claimed(&world, &d).max(replicas as usize));
            }
            let cache = history[history.len().saturating_sub(1 + lag).min(history.len() - 1)].clone();
            // The watch delivers what the cache now shows that the expectations wait for.
            for p in &cache {
                if p.name.starts_with("new") && !history.iter().rev().skip(lag + 1).any(|h| h.iter().any(|q| q.uid == p.uid)) {
                    expectations.creation_observed(KEY, OURS);
                }
            }
            for gone in history.iter().rev().nth(lag + 1).into_iter().flatten() {
                if !cache.iter().any(|p| p.uid == gone.uid) {
                    expectations.deletion_observed(KEY, &gone.uid);
                }
            }
            let p = plan(&d, &cache, expectations.satisfied(KEY, OURS));
            if p.create > 0 || !p.delete.is_empty() {
                expectations.expect(KEY, OURS, p.create, p.delete.iter().map(|x| x.uid.as_str()));
            }
            // Plans made from a stale cache may name pods that are already gone: skip those.
            let p = Plan {
                adopt: p.adopt.into_iter().filter(|a| world.iter().any(|w| w.uid == a.uid)).collect(),
                release: p.release.into_iter().filter(|a| world.iter().any(|w| w.uid == a.uid)).collect(),
                ..p
            };
            created += execute(&mut world, &p, &mut next).0;
            history.push(world.clone());
        }
        prop_assert!(created <= needed, "created {} but {} were needed", created, needed);
        let d = Desired::new(OURS, rescale, &sel);
        prop_assert_eq!(active_claimed(&world, &d), rescale as usize);
    }
}
