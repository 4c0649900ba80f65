//! The pod and Service watches: what each change means for the expectations and which
//! CraneReplicaSets it brings to a pass; their backoff and health.

use super::*;

/// The owner CraneReplicaSet of a child object and its UID, from its controller
/// ownerReference.
pub(super) fn owner_of<K: Resource>(obj: &K) -> Option<(ObjectRef<CraneReplicaSet>, String)> {
    let owner = obj.owner_references().iter().find(|o| {
        o.controller == Some(true)
            && o.kind == "CraneReplicaSet"
            && o.api_version.starts_with("crane.dev/")
    })?;
    let crs = ObjectRef::new(&owner.name).within(&obj.namespace()?);
    Some((crs, owner.uid.clone()))
}

/// What changes in the pod cache mean for the controller.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Sightings {
    /// The CraneReplicaSets to reconcile.
    triggers: Vec<ObjectRef<CraneReplicaSet>>,
    /// Pods that appeared, each as (key, UID) of the CraneReplicaSet that controls it, and
    /// the pod's UID.
    created: Vec<(String, String, String)>,
    /// Pods that went or started terminating, each as (key of its CraneReplicaSet, pod UID).
    deleted: Vec<(String, String)>,
    /// Pods that went or started terminating as orphans in the cache: a pass may have
    /// adopted and deleted one before the watch showed the adoption (a relist after it
    /// was gone), and expects its deletion all the same.
    orphans_deleted: Vec<String>,
}

impl Sightings {
    /// What the cache's changes show: a pod is created when its UID first appears, and
    /// deleted when its UID disappears (a watch event, or a relist that no longer lists
    /// it) or it starts terminating. The owners on both sides are reconciled, so a pod
    /// that loses its controller reference brings its former owner to look, and an
    /// orphan brings every CraneReplicaSet of its namespace that selects it.
    fn of(changes: &[Change], crs_cache: &Store<CraneReplicaSet>) -> Self {
        let mut seen = Sightings::default();
        for Change {
            namespace: ns,
            before,
            after,
        } in changes
        {
            let key = |p: &PodFacts| p.owner.as_ref().map(|owner| format!("{ns}/{owner}"));
            for pod in before.iter().chain(after) {
                if let Some(owner) = &pod.owner {
                    seen.triggers.push(ObjectRef::new(owner).within(ns));
                } else if pod.controller == crate::pods::Controller::None {
                    // An orphan, coming or going: each CraneReplicaSet that selects it may
                    // adopt it, or may have adopted and counted it before the watch showed
                    // that (the cache still holds it as an orphan), and must look again.
                    seen.triggers.extend(selecting(crs_cache, ns, &pod.labels));
                }
            }
            let replaced = before.as_ref().map(|b| &b.uid) != after.as_ref().map(|a| &a.uid);
            if let Some(after) = after {
                if let (Some(key), crate::pods::Controller::Uid(owner)) =
                    (key(after), &after.controller)
                {
                    if replaced {
                        seen.created
                            .push((key.clone(), owner.clone(), after.uid.clone()));
                    }
                    if after.terminating {
                        seen.deleted.push((key, after.uid.clone()));
                    }
                } else if after.terminating && after.owner.is_none() {
                    seen.orphans_deleted.push(after.uid.clone());
                }
            }
            if let Some(before) = before.as_ref().filter(|_| replaced) {
                match key(before) {
                    Some(key) => seen.deleted.push((key, before.uid.clone())),
                    None => seen.orphans_deleted.push(before.uid.clone()),
                }
            }
        }
        seen.triggers
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        seen.triggers.dedup();
        seen
    }

    /// Records the observations. Called only after the pod cache has taken the changes,
    /// as client-go's handlers run after its indexer: a pass that finds its expectations
    /// met must also find the pods in the cache (see [`read_in_order`]).
    /// Returns the CraneReplicaSets that expected the deletion of a pod gone as an orphan.
    fn record(&self, expectations: &Expectations) -> Vec<ObjectRef<CraneReplicaSet>> {
        for (key, owner, pod) in &self.created {
            expectations.pod_observed(key, owner, pod);
        }
        for (key, uid) in &self.deleted {
            expectations.deletion_observed(key, uid);
        }
        self.orphans_deleted
            .iter()
            .flat_map(|uid| expectations.deletion_observed_anywhere(uid))
            .filter_map(|key| {
                let (ns, name) = key.split_once('/')?;
                Some(ObjectRef::new(name).within(ns))
            })
            .collect()
    }
}

/// The CraneReplicaSets of `namespace` whose selector matches these labels.
pub(super) fn selecting(
    crs_cache: &Store<CraneReplicaSet>,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Vec<ObjectRef<CraneReplicaSet>> {
    crs_cache
        .state()
        .iter()
        .filter(|crs| crs.namespace().as_deref() == Some(namespace))
        .filter(|crs| Selector::try_from(crs.label_selector()).is_ok_and(|s| s.matches(labels)))
        .map(|crs| ObjectRef::from_obj(crs.as_ref()))
        .collect()
}

/// Takes one event of the pod watch: into the cache first, then into the expectations
/// (see [`read_in_order`] for why this order). Returns the CraneReplicaSets to reconcile.
pub(super) fn on_pod_event(
    event: &watcher::Event<Pod>,
    cache: &PodCache,
    crs_cache: &Store<CraneReplicaSet>,
    expectations: &Expectations,
) -> Vec<ObjectRef<CraneReplicaSet>> {
    if matches!(event, watcher::Event::Init) {
        expectations.relist_started();
    }
    let mut seen = Sightings::of(&cache.apply(event), crs_cache);
    let expected_by = seen.record(expectations);
    seen.triggers.extend(expected_by);
    if matches!(event, watcher::Event::InitDone) {
        let present = |key: &str, owner: &str| {
            let ns = key.split_once('/').map_or("", |(ns, _)| ns);
            cache
                .candidates(ns, owner)
                .into_iter()
                .map(|p| p.uid)
                .collect()
        };
        for key in expectations.relist_done(present) {
            if let Some((ns, name)) = key.split_once('/') {
                seen.triggers.push(ObjectRef::new(name).within(ns));
            }
        }
    }
    seen.triggers
}

/// The API server is back (a failed watch works again): the CraneReplicaSets whose passes
/// failed meanwhile are retried now, not after the backoff their failures during the
/// outage built up, which would be up to a minute.
pub(super) fn retry_failed_now(
    failures: &PerObject<u32>,
    tx: &mpsc::UnboundedSender<ObjectRef<CraneReplicaSet>>,
) {
    let failed = failures.take_keys();
    if !failed.is_empty() {
        info!(
            objects = failed.len(),
            "the API server is back: retrying failed passes now"
        );
    }
    for key in failed {
        if let Some((ns, name)) = key.split_once('/') {
            let _ = tx.unbounded_send(ObjectRef::new(name).within(ns));
        }
    }
}

/// Retry delays of a failed watch: client-go's reflector doubles from 0.8 s up to 30 s,
/// which after a brief API server restart leaves the operator blind for up to half a
/// minute; one operator's watches are few, so this stops at 5 s.
pub fn watch_backoff() -> watcher::ExponentialBackoff {
    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    match crate::clock::jitter_seed() {
        Some(seed) => builder.with_jitter_seed(seed).into(),
        None => builder.into(),
    }
}

/// What one item of a watch says of its health: a list that fails keeps the cache from
/// syncing (not ready until one completes), and any failure counts towards `/healthz`.
pub(super) fn watch_health<K>(
    health: &Health,
    stream: &'static str,
    item: Result<&watcher::Event<K>, &watcher::Error>,
) {
    match item {
        Ok(event) => {
            if matches!(event, watcher::Event::InitDone) {
                health.list_done(stream);
            }
            health.stream_ok(stream);
        }
        Err(e) => {
            if matches!(
                e,
                watcher::Error::InitialListFailed(_) | watcher::Error::NoResourceVersion
            ) {
                health.list_failed(stream);
            }
            health.stream_failed(stream);
            warn!(stream, error = %e, "watch failed; retrying with backoff");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::*;
    use crate::controller::reconcile::tests::pass_with_watch_between;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn a_new_pod_of_ours_is_an_observed_creation_once() {
        let (pods, crs) = stores();
        let e = Expectations::default();
        e.expect("default/crane", "crs-uid", 1, NONE);
        let ev = watcher::Event::Apply(ours("a"));
        assert_eq!(on_pod_event(&ev, &pods, &crs, &e), crane_ref());
        assert!(e.satisfied("default/crane", "crs-uid"));
        // The same pod again is not a second creation (nor a reason for a pass).
        e.expect("default/crane", "crs-uid", 1, NONE);
        assert_eq!(on_pod_event(&ev, &pods, &crs, &e), []);
        assert!(!e.satisfied("default/crane", "crs-uid"));
    }

    #[test]
    fn a_deleted_or_terminating_pod_is_an_observed_deletion() {
        let (pods, crs, e) = watched(&["a", "b"]);
        e.expect("default/crane", "crs-uid", 0, ["uid-a", "uid-b"]);
        on_pod_event(&watcher::Event::Delete(ours("a")), &pods, &crs, &e);
        let mut terminating = ours("b");
        terminating.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        on_pod_event(&watcher::Event::Apply(terminating), &pods, &crs, &e);
        assert!(e.satisfied("default/crane", "crs-uid"));
    }

    /// A pass adopted an orphan and deleted it (a surplus) before the watch showed either:
    /// the pod goes from the cache as an orphan. Its deletion is still the one the pass
    /// expects, and its owner must look again (its status still counts the pod), not
    /// wait out the expectations' timeout.
    #[test]
    fn an_orphan_adopted_and_deleted_unseen_is_an_observed_deletion_of_its_adopter() {
        let (pods, crs) = stores();
        let e = Expectations::default();
        let orphan = pod("stray", None);
        on_pod_event(&watcher::Event::Apply(orphan.clone()), &pods, &crs, &e);
        e.expect("default/crane", "crs-uid", 0, ["uid-stray"]);
        // Gone by the relist after a broken watch.
        for event in [watcher::Event::Init, watcher::Event::InitDone] {
            let triggers = on_pod_event(&event, &pods, &crs, &e);
            if matches!(event, watcher::Event::InitDone) {
                assert!(triggers.contains(&crane_ref()[0]), "{triggers:?}");
            }
        }
        assert!(e.satisfied("default/crane", "crs-uid"));

        // The same with the pod seen terminating, still an orphan in the cache.
        on_pod_event(&watcher::Event::Apply(orphan.clone()), &pods, &crs, &e);
        e.expect("default/crane", "crs-uid", 0, ["uid-stray"]);
        let mut terminating = orphan;
        terminating.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let triggers = on_pod_event(&watcher::Event::Apply(terminating), &pods, &crs, &e);
        assert!(triggers.contains(&crane_ref()[0]), "{triggers:?}");
        assert!(e.satisfied("default/crane", "crs-uid"));
    }

    /// A pass adopted an orphan, its deletion (a surplus) failed as already done, and a
    /// relist removes the pod from the cache, where it was still an orphan: no
    /// expectation waits for it, but the status counted it, so its adopter looks again
    /// (the simulator's seed 26121: a status of 1 replica for a day).
    #[test]
    fn an_orphan_gone_brings_the_replica_sets_that_select_it() {
        let (pods, crs) = stores();
        let e = Expectations::default();
        on_pod_event(&watcher::Event::Apply(pod("stray", None)), &pods, &crs, &e);
        on_pod_event(&watcher::Event::Init, &pods, &crs, &e);
        let triggers = on_pod_event(&watcher::Event::InitDone, &pods, &crs, &e);
        assert_eq!(triggers, crane_ref());
    }

    /// A pod created and deleted (by a user, say) before the watch showed it, while the
    /// watch relisted: the relist cannot show it, and waiting for it would hold the object
    /// for the expectations' whole timeout (5 minutes). A creation answered before the
    /// relist began and absent from it came and went; one answered later may be missing
    /// from the list only because it came after it, and is still waited for.
    #[test]
    fn a_creation_answered_before_a_relist_that_does_not_hold_it_came_and_went() {
        let (pods, crs) = stores();
        let e = Expectations::default();
        e.expect("default/crane", "crs-uid", 2, NONE);
        e.creation_answered("default/crane", "crs-uid", "uid-a");
        assert_eq!(on_pod_event(&watcher::Event::Init, &pods, &crs, &e), []);
        e.creation_answered("default/crane", "crs-uid", "uid-b");
        let triggers = on_pod_event(&watcher::Event::InitDone, &pods, &crs, &e);
        assert_eq!(triggers, crane_ref(), "its owner looks again");
        assert!(
            !e.satisfied("default/crane", "crs-uid"),
            "b, answered after the list went out, is still expected"
        );
        on_pod_event(&watcher::Event::Apply(ours("b")), &pods, &crs, &e);
        assert!(e.satisfied("default/crane", "crs-uid"));
    }

    /// The watch may show a pod before its creation is answered: that answer is then no
    /// creation to wait for, and a relist without the pod (deleted since) settles nothing
    /// else in its name.
    #[test]
    fn a_creation_answered_after_the_watch_showed_it_is_not_counted_twice() {
        let (pods, crs) = stores();
        let e = Expectations::default();
        e.expect("default/crane", "crs-uid", 2, NONE);
        on_pod_event(&watcher::Event::Apply(ours("a")), &pods, &crs, &e);
        e.creation_answered("default/crane", "crs-uid", "uid-a");
        for event in [watcher::Event::Init, watcher::Event::InitDone] {
            on_pod_event(&event, &pods, &crs, &e);
        }
        assert!(
            !e.satisfied("default/crane", "crs-uid"),
            "the second creation is still expected"
        );
    }

    /// A relist (after a watch error or a 410 Gone) delivers its pods before the cache
    /// holds them: observed then, a pass could find its expectations met and the pods
    /// missing, and create them again.
    #[test]
    fn pods_of_a_relist_are_observed_only_once_the_cache_holds_them() {
        let (pods, crs) = stores();
        let e = Expectations::default();
        on_pod_event(&watcher::Event::Apply(ours("a")), &pods, &crs, &e);
        e.expect("default/crane", "crs-uid", 1, NONE);
        // The watch broke; "b", created meanwhile, comes back in the relist.
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(ours("a")),
            watcher::Event::InitApply(ours("b")),
        ] {
            assert_eq!(on_pod_event(&event, &pods, &crs, &e), []);
            let plan = pass_with_watch_between(2, &pods, &e, || ());
            assert_eq!(plan.create, 0, "b is still expected: {plan:?}");
        }
        assert_eq!(
            on_pod_event(&watcher::Event::InitDone, &pods, &crs, &e),
            crane_ref()
        );
        assert_eq!(
            pass_with_watch_between(2, &pods, &e, || ()),
            Plan {
                active: 2,
                ..Plan::default()
            }
        );
    }

    #[test]
    fn a_relist_that_lost_a_delete_unblocks_the_object() {
        let (pods, crs, e) = watched(&["a", "b"]);
        e.expect("default/crane", "crs-uid", 0, ["uid-b"]);
        // b was deleted while the watch was down: the relist just no longer lists it.
        for event in [watcher::Event::Init, watcher::Event::InitApply(ours("a"))] {
            on_pod_event(&event, &pods, &crs, &e);
        }
        assert!(!e.satisfied("default/crane", "crs-uid"));
        assert_eq!(
            on_pod_event(&watcher::Event::InitDone, &pods, &crs, &e),
            crane_ref()
        );
        assert!(
            e.satisfied("default/crane", "crs-uid"),
            "not blocked until the expectations time out"
        );
    }

    #[test]
    fn a_pod_that_loses_its_controller_reference_brings_its_former_owner_to_look() {
        let (pods, crs) = stores();
        let e = Expectations::default();
        on_pod_event(&watcher::Event::Apply(ours("a")), &pods, &crs, &e);
        let taken = watcher::Event::Apply(pod("a", Some(("ReplicaSet", "rs-uid"))));
        assert_eq!(on_pod_event(&taken, &pods, &crs, &e), crane_ref());
    }

    #[test]
    fn orphans_trigger_the_replica_sets_that_select_them_and_others_pods_nothing() {
        let (pods, crs) = stores();
        let e = Expectations::default();
        let orphan = watcher::Event::Apply(pod("o", None));
        assert_eq!(on_pod_event(&orphan, &pods, &crs, &e), crane_ref());
        let theirs = watcher::Event::Apply(pod("r", Some(("ReplicaSet", "rs-uid"))));
        assert_eq!(on_pod_event(&theirs, &pods, &crs, &e), []);
    }

    /// Every watch of the controller lists with the most recent semantic: a list served
    /// from a lagging cache (`resourceVersion=0`) could answer an older snapshot, drop pods
    /// already observed and make a pass create them again.
    #[tokio::test]
    async fn every_watch_lists_the_most_recent_state() {
        let (service, mut handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = Client::new(service, "default");
        let config = Config {
            namespace: Some("default".into()),
            concurrency: 1,
            instance: None,
        };
        let health = Arc::new(Health::default());
        let (stop, stopped) = futures::channel::oneshot::channel::<()>();
        let controller = tokio::spawn(run(
            client,
            config,
            Arc::default(),
            health.clone(),
            stopped.map(|_| ()),
        ));
        let mut lists = Vec::new();
        // Watches are held open (never answered): each list is answered, empty.
        let mut held = Vec::new();
        while lists.len() < 3 {
            let (req, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
                .await
                .expect("the controller's requests")
                .expect("a request");
            let uri = req.uri().clone();
            if uri.query().unwrap_or_default().contains("watch=true") {
                held.push(send);
                continue;
            }
            lists.push(uri.to_string());
            let kind = if uri.path().contains("cranereplicasets") {
                "CraneReplicaSetList"
            } else {
                "List"
            };
            send.send_response(fixtures::answer(
                200,
                json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "42"}, "items": []}),
            ));
        }
        lists.sort();
        assert_eq!(lists.len(), 3, "{lists:?}");
        for list in &lists {
            assert!(
                !list.contains("resourceVersion="),
                "a list that may be served from a lagging cache: {list}"
            );
        }
        assert!(
            lists.iter().any(|l| l.contains("/cranereplicasets")),
            "{lists:?}"
        );
        let _ = stop.send(());
        drop(held);
        drop(handle);
        let _ = tokio::time::timeout(Duration::from_secs(30), controller).await;
    }
}
