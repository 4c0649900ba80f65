//! The pass's writes to pods: claims (adopt, release, label), creations in slow-start
//! batches, deletions by UID.

use super::*;

pub(super) fn pod_ref(crs: &CraneReplicaSet, pod: &PodFacts) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(pod.name.clone()),
        namespace: crs.namespace(),
        uid: Some(pod.uid.clone()),
        ..ObjectReference::default()
    }
}

/// Pod patches carry the operator's field manager (in `managedFields`).
fn pod_patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    }
}

/// A create refused because its namespace is being deleted (the ReplicaSet controller
/// reports no failure for it).
fn namespace_terminating(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => {
            status.reason == "Forbidden"
                && status.message.contains("because it is being terminated")
        }
        _ => false,
    }
}

/// Adopts matching orphans, releases pods that stopped matching, and puts [`OWNER_LABEL`]
/// on every pod counted (the Service selects on it).
pub(super) async fn claim_pods(
    crs: &CraneReplicaSet,
    ctx: &Context,
    api: &Api<Decoded<Pod>>,
    plan: &Plan,
    pods: &[PodFacts],
    desired: &Desired<'_>,
) -> Result<(), Error> {
    let name = crs.name_any();
    let uid = crs.uid().unwrap_or_default();
    let needs_label = planner::needing_owner_label(desired, &name, pods);
    if !plan.adopt.is_empty() {
        may_adopt(crs, ctx).await?;
        // The plan counts these pods as ours: a pass that could not adopt one (another
        // controller took it, its labels changed) stops here, before it creates or deletes
        // on that count (PodControllerRefManager's rule).
        let owner = crate::service::controller_ref(crs);
        for pod in &plan.adopt {
            let patch = json!({"metadata": {
                "uid": pod.uid, "ownerReferences": [owner], "labels": {OWNER_LABEL: name}}});
            match api
                .patch(&pod.name, &pod_patch_params(), &Patch::Strategic(patch))
                .await
            {
                Ok(_) => info!(object = %key_of(crs), pod = %pod.name, "adopted orphan pod"),
                // Gone: nothing to count.
                Err(e) if api_status(&e) == Some(404) => {}
                Err(e) => {
                    return Err(Error::Adoption {
                        object: key_of(crs),
                        message: format!("adopting pod {}: {}", pod.name, error_message(&e)),
                    });
                }
            }
        }
    }
    for pod in needs_label {
        let patch = json!({"metadata": {"uid": pod.uid, "labels": {OWNER_LABEL: name}}});
        patch_pod(api, pod, patch, "label").await?;
    }
    for pod in &plan.release {
        let patch = json!({"metadata": {
            "uid": pod.uid,
            "ownerReferences": [{"$patch": "delete", "uid": uid}],
            "labels": {OWNER_LABEL: null}}});
        patch_pod(api, pod, patch, "release").await?;
        info!(object = %key_of(crs), pod = %pod.name, "released pod whose labels no longer match");
    }
    Ok(())
}

/// A strategic-merge patch of one pod. A pod that is gone or was replaced (its UID in the
/// patch no longer matches) is skipped: the next pass sees the new state.
pub(super) async fn patch_pod(
    api: &Api<Decoded<Pod>>,
    pod: &PodFacts,
    patch: serde_json::Value,
    action: &'static str,
) -> Result<(), Error> {
    match api
        .patch(&pod.name, &pod_patch_params(), &Patch::Strategic(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if matches!(api_status(&e), Some(404 | 409 | 422)) => {
            debug!(pod = %pod.name, action, error = %e, "pod changed under us; skipped");
            Ok(())
        }
        Err(e) => Err(kube_err(action, format!("pod {}", pod.name))(e)),
    }
}

/// Pods named in an event's note, at most this many; the rest are counted.
const NAMED_PODS: usize = 10;

/// `a, b, c`, or the first [`NAMED_PODS`] names `and N more`.
fn listed(names: &[&str]) -> String {
    let shown = names[..names.len().min(NAMED_PODS)].join(", ");
    match names.len().saturating_sub(NAMED_PODS) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// The note of a pass's event about the pods it created or deleted: `Created pod: a` for
/// one, `Created 12 pods: a, b, ... and 2 more` for several.
pub(super) fn pods_note(verb: &str, names: &[&str]) -> String {
    match names {
        [one] => format!("{verb} pod: {one}"),
        _ => format!("{verb} {} pods: {}", names.len(), listed(names)),
    }
}

/// Announces what a pass did to `pods` in one event: the pod it concerns when there is
/// one, none when there are several (a Deployment's scale events name no pod either).
fn announce(
    crs: &CraneReplicaSet,
    ctx: &Context,
    (type_, reason, action): (EventType, &str, &str),
    note: String,
    pods: &[ObjectReference],
) {
    let related = match pods {
        [one] => Some(one.clone()),
        _ => None,
    };
    ctx.event(crs, type_, reason, action, note, related);
}

const CREATED: (EventType, &str, &str) = (EventType::Normal, "SuccessfulCreate", "Create");
const CREATE_FAILED: (EventType, &str, &str) = (EventType::Warning, "FailedCreate", "Create");
const DELETED: (EventType, &str, &str) = (EventType::Normal, "SuccessfulDelete", "Delete");
const DELETE_FAILED: (EventType, &str, &str) = (EventType::Warning, "FailedDelete", "Delete");

/// Creates `n` pods in slow-start batches; stops at the first failing batch. The pass's
/// creations are one event, its failures another.
pub(super) async fn create_pods(
    crs: &CraneReplicaSet,
    ctx: &Context,
    api: &Api<Decoded<Pod>>,
    n: usize,
) -> Option<Failure> {
    let key = key_of(crs);
    let uid = crs.uid().unwrap_or_default();
    let pod = Decoded::Ok(new_pod(crs));
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    let mut created = Vec::new();
    let mut failed = 0;
    let mut issued = 0;
    let mut stopped_by = None;
    for batch in planner::slow_start_batches(n) {
        issued += batch;
        let started = crate::clock::Instant::now();
        let results = future::join_all((0..batch).map(|_| api.create(&params, &pod))).await;
        debug!(object = %key, batch, took = ?started.elapsed(), "created a batch of pods");
        for result in results {
            match result {
                Ok(pod) => {
                    ctx.metrics.pods_created.inc();
                    let answered = pod.uid().unwrap_or_default();
                    ctx.expectations.creation_answered(&key, &uid, &answered);
                    created.push(pod.object_ref(&()));
                }
                Err(e) => {
                    // A create whose outcome is unknown may have made the pod: its
                    // expectation stays until the watch shows it (or the expectations'
                    // timeout), so no pass makes it again; and, as any failure, it stops
                    // the slow start.
                    if may_have_been_stored(&e) {
                        ctx.expectations.creation_unknown(&key, &uid);
                    } else {
                        ctx.expectations.creation_observed(&key, &uid);
                    }
                    // Nothing to report: the namespace and everything in it are going away.
                    if !namespace_terminating(&e) {
                        failed += 1;
                    }
                    stopped_by.get_or_insert(e);
                }
            }
        }
        if stopped_by.is_some() {
            break;
        }
    }
    if !created.is_empty() {
        let names: Vec<&str> = created.iter().filter_map(|p| p.name.as_deref()).collect();
        let note = pods_note("Created", &names);
        announce(crs, ctx, CREATED, note, &created);
    }
    let e = stopped_by?;
    for _ in issued..n {
        ctx.expectations.creation_observed(&key, &uid);
    }
    if namespace_terminating(&e) {
        debug!(object = %key, "the namespace is terminating: no more pods");
        return None;
    }
    warn!(object = %key, error = %e, "creating pods failed");
    let message = error_message(&e);
    let note = match failed {
        1 => format!("Error creating: {message}"),
        n => format!("Error creating {n} pods: {message}"),
    };
    announce(crs, ctx, CREATE_FAILED, note, &[]);
    Some(Failure {
        reason: "FailedCreate",
        message,
    })
}

fn names_of<'a>(pods: &[&'a PodFacts]) -> Vec<&'a str> {
    pods.iter().map(|p| p.name.as_str()).collect()
}

/// Deletes the chosen pods, each only if it is still the pod that was chosen (UID). The
/// pass's deletions are one event, its failures another.
pub(super) async fn delete_pods(
    crs: &CraneReplicaSet,
    ctx: &Context,
    api: &Api<Decoded<Pod>>,
    victims: &[PodFacts],
) -> Option<Failure> {
    let key = key_of(crs);
    let results = future::join_all(victims.iter().map(|pod| {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(pod.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        async move { (pod, api.delete(&pod.name, &params).await) }
    }))
    .await;
    let (mut deleted, mut failed) = (Vec::new(), Vec::new());
    let mut first_error = None;
    for (pod, result) in results {
        match result {
            Ok(_) => {
                ctx.metrics.pods_deleted.inc();
                deleted.push(pod);
            }
            // Gone already, or replaced: the watch shows it, nothing failed.
            Err(e) if matches!(api_status(&e), Some(404 | 409)) => {
                ctx.expectations.deletion_observed(&key, &pod.uid);
            }
            Err(e) => {
                ctx.expectations.deletion_observed(&key, &pod.uid);
                failed.push(pod);
                first_error.get_or_insert(e);
            }
        }
    }
    let refs = |pods: &[&PodFacts]| -> Vec<ObjectReference> {
        pods.iter().map(|p| pod_ref(crs, p)).collect()
    };
    if !deleted.is_empty() {
        let note = pods_note("Deleted", &names_of(&deleted));
        announce(crs, ctx, DELETED, note, &refs(&deleted));
    }
    let e = first_error?;
    let message = error_message(&e);
    let note = match names_of(&failed).as_slice() {
        [one] => format!("Error deleting pod {one}: {message}"),
        several => format!(
            "Error deleting {} pods ({}): {message}",
            several.len(),
            listed(several)
        ),
    };
    announce(crs, ctx, DELETE_FAILED, note, &refs(&failed));
    Some(Failure {
        reason: "FailedDelete",
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fixtures::crane;
    use crate::controller::fixtures::*;
    use http::Method;

    /// What the scripted API does with the first POST.
    enum First {
        Answer(http::Response<kube::client::Body>),
        /// The connection breaks before an answer comes.
        Broken(&'static str),
    }

    /// What became of a pass's creation of 2 pods whose first POST got `first`.
    #[derive(Debug)]
    struct Created {
        posts: usize,
        /// The expectations were met right after the pass.
        met: bool,
        /// ... and once the watch showed the pod the first POST may have made.
        met_once_seen: bool,
        /// When a creation of unknown outcome would be given up on, right after the pass.
        gives_up_in: Option<Duration>,
    }

    /// Creates 2 pods (slow start: a batch of 1, then of 1) against a scripted API that
    /// answers the first POST with `first` and any other with 201.
    async fn create_two(first: First) -> Created {
        let (ctx, mut api) = scripted_context();
        let crs = crane(2);
        ctx.expectations.expect("default/crane", "crs-uid", 2, NONE);
        let pods: Api<Decoded<Pod>> = Api::namespaced(ctx.client.clone(), "default");
        let server = tokio::spawn(async move {
            let mut posts = 0;
            let mut first = Some(first);
            while let Some((req, send)) = api.next_request().await {
                assert_eq!(req.method(), Method::POST, "{}", req.uri());
                posts += 1;
                match first.take() {
                    Some(First::Answer(answer)) => send.send_response(answer),
                    Some(First::Broken(why)) => send.send_error(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        why,
                    )),
                    None => send
                        .send_response(answer(201, serde_json::to_value(ours("crane-b")).unwrap())),
                }
            }
            posts
        });
        let failure = create_pods(&crs, &ctx, &pods, 2).await;
        let met = ctx.expectations.satisfied("default/crane", "crs-uid");
        let gives_up_in = ctx.expectations.wait_ends_in("default/crane", "crs-uid");
        let observed = watcher::Event::Apply(ours("crane-a"));
        let crs_cache = reflector::store::<CraneReplicaSet>().0;
        super::super::on_pod_event(&observed, &ctx.pods, &crs_cache, &ctx.expectations);
        let met_once_seen = ctx.expectations.satisfied("default/crane", "crs-uid");
        drop(ctx);
        drop(pods);
        drop(failure);
        Created {
            posts: server.await.unwrap(),
            met,
            met_once_seen,
            gives_up_in,
        }
    }

    /// An outcome that may have made the pod: the slow start stops (as at any failure),
    /// the pod is not created again, and the object waits until the watch shows it.
    fn assert_outcome_unknown(created: Created, what: &str) {
        assert_eq!(
            created.posts, 1,
            "{what}: {created:?}: the POST was sent again, or the slow start went on"
        );
        assert!(
            !created.met,
            "{what}: the pod may exist: no pass may create it again until it is seen or the expectation times out"
        );
        assert!(created.met_once_seen, "{what}: {created:?}");
        assert!(
            created
                .gives_up_in
                .is_some_and(|d| d <= crate::expectations::UNKNOWN_OUTCOME_TIMEOUT),
            "{what}: {created:?}: waited for until the expectations' 5-minute timeout"
        );
    }

    /// Refused: nothing was made, nothing is outstanding.
    fn assert_refused(created: Created, what: &str) {
        assert_eq!(
            created.posts, 1,
            "{what}: the first failing batch stops the creations"
        );
        assert!(
            created.met,
            "{what}: nothing is outstanding: the next pass may create it"
        );
    }

    /// `failure` with the `Retry-After` header that makes a client retry what it may.
    fn retry_after(mut answer: http::Response<kube::client::Body>) -> First {
        answer.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        First::Answer(answer)
    }

    #[tokio::test]
    async fn a_504_create_is_sent_once_and_keeps_its_expectation() {
        let created = create_two(retry_after(failure(504, "Timeout"))).await;
        assert_outcome_unknown(created, "a 504 with Retry-After");
    }

    #[tokio::test]
    async fn a_create_whose_answer_was_lost_keeps_its_expectation() {
        let etcd_timeout = answer(
            500,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500,
                "message": "etcdserver: request timed out"}),
        );
        for (first, what) in [
            (
                First::Broken("connection reset after the request went out"),
                "a broken connection",
            ),
            (
                First::Answer(answer(502, json!("<html>Bad Gateway</html>"))),
                "a proxy's 502 (no Status from the API server)",
            ),
            (
                First::Answer(etcd_timeout),
                "an etcd request that timed out (it may still commit)",
            ),
        ] {
            assert_outcome_unknown(create_two(first).await, what);
        }
    }

    #[tokio::test]
    async fn a_create_refused_before_it_could_be_stored_is_not_expected() {
        let webhook = answer(
            500,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500,
                "reason": "InternalError", "message": "Internal error occurred: failed calling webhook \"pods.example.com\": connection refused"}),
        );
        for (first, what) in [
            (First::Answer(failure(422, "Invalid")), "a 422"),
            (First::Answer(failure(503, "ServiceUnavailable")), "a 503"),
            (
                First::Answer(webhook),
                "an admission webhook that could not be called",
            ),
        ] {
            assert_refused(create_two(first).await, what);
        }
    }

    /// A scripted API that answers every pod creation with a pod named `crane-<n>` (the
    /// n-th creation), or with `refuse` from the creation `refuse_from` on; and every
    /// deletion of a pod named in `delete_fails` with a 500, any other with 200.
    fn pod_api(
        refuse_from: usize,
        delete_fails: &'static [&'static str],
    ) -> (Context, Published, Api<Decoded<Pod>>) {
        let (ctx, mut api, published) = scripted_context_with_events();
        tokio::spawn(async move {
            let mut posts = 0;
            while let Some((req, send)) = api.next_request().await {
                let path = req.uri().path().to_string();
                let reply = match *req.method() {
                    Method::POST => {
                        posts += 1;
                        if posts > refuse_from {
                            failure(403, "Forbidden")
                        } else {
                            let name = format!("crane-{}", posts - 1);
                            answer(201, serde_json::to_value(ours(&name)).unwrap())
                        }
                    }
                    _ if delete_fails
                        .iter()
                        .any(|n| path.ends_with(&format!("/{n}"))) =>
                    {
                        failure(500, "InternalError")
                    }
                    _ => answer(200, serde_json::to_value(ours("gone")).unwrap()),
                };
                send.send_response(reply);
            }
        });
        let pods = Api::namespaced(ctx.client.clone(), "default");
        (ctx, published, pods)
    }

    fn event(reason: &str, note: &str, related: Option<&str>) -> (String, String, Option<String>) {
        (reason.into(), note.into(), related.map(String::from))
    }

    #[tokio::test]
    async fn a_pass_announces_its_creations_in_one_event_naming_at_most_ten_pods() {
        let (ctx, mut published, pods) = pod_api(usize::MAX, &[]);
        assert_eq!(create_pods(&crane(12), &ctx, &pods, 12).await, None);
        let names: Vec<String> = (0..10).map(|i| format!("crane-{i}")).collect();
        assert_eq!(
            events_of(&mut published),
            [event(
                "SuccessfulCreate",
                &format!("Created 12 pods: {} and 2 more", names.join(", ")),
                None
            )],
            "one event for the pass's 12 creations (slow start: 4 batches), naming no pod"
        );

        assert_eq!(create_pods(&crane(1), &ctx, &pods, 1).await, None);
        assert_eq!(
            events_of(&mut published),
            [event(
                "SuccessfulCreate",
                "Created pod: crane-12",
                Some("crane-12")
            )],
            "one pod: named, and the event's related object"
        );
    }

    #[tokio::test]
    async fn a_pass_whose_creations_fail_announces_the_error_once() {
        // Slow start: a batch of 1 (made), then a batch of 2 (both refused); the pass stops.
        let (ctx, mut published, pods) = pod_api(1, &[]);
        ctx.expectations.expect("default/crane", "crs-uid", 5, NONE);
        let failure = create_pods(&crane(5), &ctx, &pods, 5).await;
        assert_eq!(failure.map(|f| f.reason), Some("FailedCreate"));
        assert_eq!(
            events_of(&mut published),
            [
                event("SuccessfulCreate", "Created pod: crane-0", Some("crane-0")),
                event("FailedCreate", "Error creating 2 pods: Forbidden", None),
            ]
        );
    }

    #[tokio::test]
    async fn a_pass_announces_its_deletions_and_their_failures_in_one_event_each() {
        let (ctx, mut published, pods) = pod_api(0, &["crane-c"]);
        let victims: Vec<PodFacts> = ["crane-a", "crane-b", "crane-c"]
            .map(|n| PodFacts::from_pod(&ours(n)))
            .into();
        let failure = delete_pods(&crane(0), &ctx, &pods, &victims).await;
        assert_eq!(failure.map(|f| f.reason), Some("FailedDelete"));
        assert_eq!(
            events_of(&mut published),
            [
                event("SuccessfulDelete", "Deleted 2 pods: crane-a, crane-b", None),
                event(
                    "FailedDelete",
                    "Error deleting pod crane-c: InternalError",
                    Some("crane-c")
                ),
            ]
        );
    }

    #[test]
    fn an_event_names_ten_pods_then_counts_the_rest() {
        let names: Vec<String> = (0..11).map(|i| format!("p{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(pods_note("Deleted", &names[..1]), "Deleted pod: p0");
        assert_eq!(pods_note("Deleted", &names[..2]), "Deleted 2 pods: p0, p1");
        assert_eq!(
            pods_note("Created", &names[..10]),
            "Created 10 pods: p0, p1, p2, p3, p4, p5, p6, p7, p8, p9"
        );
        assert_eq!(
            pods_note("Created", &names),
            "Created 11 pods: p0, p1, p2, p3, p4, p5, p6, p7, p8, p9 and 1 more"
        );
    }
}
