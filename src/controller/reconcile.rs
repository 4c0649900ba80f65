//! One reconcile pass: observe (the object, its pods, its expectations), decide (the
//! planner), act (claims, creations, deletions, the Service, the status, events).

use super::pods::{claim_pods, create_pods, delete_pods};
use super::service::sync_service;
use std::borrow::Cow;

use super::*;
use crate::diagnostics::{self, IssueNews};

/// One reconcile pass over one CraneReplicaSet.
pub async fn reconcile(crs: Arc<CraneReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    ctx.metrics.dequeued(&key_of(crs.as_ref()));
    let _working = ctx.metrics.working();
    let result = reconcile_inner(&crs, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(start.elapsed().as_secs_f64());
    ctx.metrics
        .expectations_unsatisfied
        .set(ctx.expectations.unsatisfied() as i64);
    let outcome = if result.is_ok() { "success" } else { "error" };
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabels { result: outcome })
        .inc();
    if result.is_ok() {
        ctx.failures.remove(&key_of(crs.as_ref()));
    }
    result
}

/// The two reads a pass plans from: whether its expectations are met, then its pods.
///
/// The order is the guarantee. The pod watch writes the other way round, the cache first
/// and the observation after ([`on_pod_event`]), so a pass that finds its expectations met
/// also finds every pod they waited for, as `syncReplicaSet` checks
/// `SatisfiedExpectations` before it lists pods. Read the other way round, pods observed
/// between the two reads are missing from the snapshot yet no longer expected, and are
/// created again.
pub(super) fn read_in_order<P>(
    satisfied: impl FnOnce() -> bool,
    pods: impl FnOnce() -> P,
) -> (bool, P) {
    let settled = satisfied();
    (settled, pods())
}

/// The record of the object waits for what its cache cannot tell
/// ([`crate::expectations::Expectations::overdue`]): creations of unknown outcome past
/// their timeout behind a pod watch that resumed without a relist, or a creation answered
/// long ago that the watch never showed. A consistent list of the object's pods tells: an
/// answered pod it lacks was deleted before the watch showed it, and if it shows no pod of
/// the object that the cache lacks (one the watch is still delivering), the creations of
/// unknown outcome were not stored. The pass goes on without them, instead of waiting out
/// the record's whole timeout (5 minutes).
async fn settle_overdue(ctx: &Context, key: &str, ns: &str, selector: &Selector, uid: &str) {
    let api: Api<Decoded<Pod>> = Api::namespaced(ctx.client.clone(), ns);
    // The object's selector, not its owner label: a pod of its own stays its own as long
    // as it matches, whatever else its labels say.
    let params = kube::api::ListParams::default().labels_from(selector);
    let listed = match api.list_metadata(&params).await {
        Ok(listed) => listed,
        // The record stays as it is: the pass goes on without scaling, and looks again.
        Err(e) => {
            warn!(object = %key, error = %e, "could not look up creations the cache cannot tell");
            return;
        }
    };
    // The cache is read after the list: a pod it gained meanwhile counts as unseen, which
    // only makes the pass wait.
    let cached: std::collections::HashSet<String> = ctx
        .pods
        .candidates(ns, uid)
        .into_iter()
        .map(|p| p.uid)
        .collect();
    let listed: std::collections::HashSet<String> = listed
        .items
        .iter()
        // Its own, and orphans it would adopt (an answered pod released meanwhile is
        // still one it counts once the watch shows it).
        .filter(|p| {
            let controller = p
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true));
            controller.is_none_or(|o| o.uid == uid)
        })
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let unseen = listed.iter().any(|u| !cached.contains(u));
    debug!(object = %key, listed = listed.len(), unseen, "looked up creations the cache cannot tell");
    ctx.expectations.settle_overdue(key, uid, &listed, unseen);
}

pub(super) async fn reconcile_inner(crs: &CraneReplicaSet, ctx: &Context) -> Result<Action, Error> {
    let key = key_of(crs);
    // The garbage collector removes the pods and the Service: adopt, scale and apply
    // nothing meanwhile, but keep the status true (as the ReplicaSet controller does).
    let deleting = crs.metadata.deletion_timestamp.is_some();
    let ns = crs.namespace().unwrap_or_default();
    let uid = crs.uid().unwrap_or_default();
    let selector: Selector =
        crs.label_selector()
            .try_into()
            .map_err(|e: kube::core::ParseExpressionError| Error::Selector {
                object: key.clone(),
                message: e.to_string(),
            })?;
    if ctx.expectations.overdue(&key, &uid) {
        settle_overdue(ctx, &key, &ns, &selector, &uid).await;
    }
    let (settled, pods) = read_in_order(
        || ctx.expectations.satisfied(&key, &uid),
        || ctx.pods.candidates(&ns, &uid),
    );
    let hash = template_hash(crs);
    let desired = Desired {
        template_hash: &hash,
        strategy: Strategy::of(&crs.spec.update_strategy, crs.spec.replicas),
        min_ready_seconds: crs.spec.min_ready_seconds,
        now: crate::clock::now(),
        deleting,
        ..Desired::new(&uid, crs.spec.replicas, &selector)
    };
    let plan = planner::plan(&desired, &pods, settled);
    debug!(object = %key, settled, ?plan, pods = pods.len(), expectations = ?ctx.expectations.debug_record(&key), "planned");
    let pod_api: Api<Decoded<Pod>> = Api::namespaced(ctx.client.clone(), &ns);

    if !deleting {
        claim_pods(crs, ctx, &pod_api, &plan, &pods, &desired).await?;
    }
    if plan.create > 0 || !plan.delete.is_empty() {
        let victims = plan.delete.iter().map(|p| p.uid.as_str());
        ctx.expectations.expect(&key, &uid, plan.create, victims);
    }
    // A rolling update may both create (within the surge) and delete (within the budget).
    let pod_writes = async {
        let created = match plan.create {
            0 => None,
            n => create_pods(crs, ctx, &pod_api, n).await,
        };
        let deleted = match plan.delete.as_slice() {
            [] => None,
            victims => delete_pods(crs, ctx, &pod_api, victims).await,
        };
        created.or(deleted)
    };
    let pass = StatusPass {
        crs,
        ctx,
        key: &key,
        ns: &ns,
        selector: &selector,
        desired: &desired,
        pods: &pods,
    };
    // The status says what this pass's snapshot shows, so it need not wait for the pass's
    // own pod writes, which only show in it when they fail: it is written alongside them
    // (a pass of a fan-out then holds its worker for the longer of the two round trips, not
    // their sum). When they fail it is written again, with the failure; an object whose
    // status already carries a failure waits for them, so that it never shows the failure
    // cleared and set again.
    let writing = plan.create > 0 || !plan.delete.is_empty();
    let failing = crs.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == status::REPLICA_FAILURE)
    });
    let (replica_failure, written) = if writing && !failing && !deleting {
        let (failure, written) = future::join(pod_writes, pass.settle(None, None)).await;
        let written = written?;
        match failure {
            None => (None, written),
            Some(failure) => {
                let again = pass.settle(Some(failure.clone()), Some(written)).await?;
                (Some(failure), again)
            }
        }
    } else {
        let failure = pod_writes.await;
        (failure.clone(), pass.settle(failure, None).await?)
    };
    if let Some(failure) = replica_failure {
        return Err(Error::Replicas {
            object: key,
            failure,
        });
    }
    if let Some(failure) = written.service_failure {
        return Err(Error::Service {
            object: key,
            failure,
        });
    }
    let recheck = written.recheck.map(|d| d + Duration::from_millis(100));
    // Creations of unknown outcome are given up on, answered ones unseen looked up, after
    // a while: look again then.
    let unknown = ctx
        .expectations
        .wait_ends_in(&key, &uid)
        .map(|d| d + Duration::from_millis(100));
    // The periodic look is never put off past RESYNC, even by a recheck a day away
    // (minReadySeconds).
    Ok(Action::requeue(
        [recheck, written.deferred, unknown, Some(RESYNC)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(RESYNC),
    ))
}

/// What a pass knows when it settles the object's Service and status.
struct StatusPass<'a> {
    crs: &'a CraneReplicaSet,
    ctx: &'a Context,
    key: &'a str,
    ns: &'a str,
    selector: &'a Selector,
    desired: &'a Desired<'a>,
    pods: &'a [PodFacts],
}

/// What settling the Service and status left.
struct Settled {
    /// The status the object has now (written by this pass, or as it was).
    status: Option<CraneReplicaSetStatus>,
    service: Option<ServiceStatus>,
    service_failure: Option<Failure>,
    /// When pods become available, to look again.
    recheck: Option<Duration>,
    /// When a deferred status write is due.
    deferred: Option<Duration>,
}

impl StatusPass<'_> {
    /// Syncs the Service, computes the status with `replica_failure`, and writes it when it
    /// changed (and may not wait for the batch). `before`: what this pass settled already,
    /// when it settles a second time (its Service is not synced again).
    async fn settle(
        &self,
        replica_failure: Option<Failure>,
        before: Option<Settled>,
    ) -> Result<Settled, Error> {
        let (crs, ctx, key) = (self.crs, self.ctx, self.key);
        // The object as this pass left it: with the status it wrote, the second time.
        let (base, service, service_failure) = match before {
            Some(before) => {
                let mut written = crs.clone();
                written.status = before.status;
                (Cow::Owned(written), before.service, before.service_failure)
            }
            None if self.desired.deleting => {
                let service = crs.status.as_ref().and_then(|s| s.service.clone());
                (Cow::Borrowed(crs), service, None)
            }
            None => {
                let (service, failure) =
                    self.service_outcome(sync_service(crs, ctx, self.ns).await)?;
                (Cow::Borrowed(crs), service, failure)
            }
        };
        // A pass that fails comes back after the error backoff (up to a minute), not when
        // a deferred write is due: it writes what it has now.
        let failing = replica_failure.is_some() || service_failure.is_some();
        let observed = Observed {
            claimed: planner::claimed(self.desired, self.pods).collect(),
            replica_failure,
            service_failure: service_failure.clone(),
            service: service.clone(),
            now: crate::clock::now(),
        };
        let (new_status, recheck) = status::compute(&base, self.selector, observed);
        ctx.metrics.set_replicas(
            self.ns,
            &crs.name_any(),
            crs.spec.replicas,
            new_status.ready_replicas,
        );
        announce_pod_issues(&base, ctx, &new_status).await;
        // Written whenever it changed, creations and deletions in flight or not, as the
        // ReplicaSet controller does: the status says what the cache shows now.
        let uid = crs.uid().unwrap_or_default();
        let deferred = (!failing)
            .then(|| status_deferred(ctx, key, &uid, base.status.as_ref(), &new_status))
            .flatten();
        if let Some(wait) = deferred {
            ctx.deferred.update(key, &uid, |_| Instant::now() + wait);
        }
        if base.status.as_ref() == Some(&new_status) || deferred.is_some() {
            return Ok(Settled {
                status: base.status.clone(),
                service,
                service_failure,
                recheck,
                deferred,
            });
        }
        // The answer is not used: one that does not decode (a field written by someone else
        // meanwhile) must not fail the write that was done.
        let api: Api<Decoded<CraneReplicaSet>> = Api::namespaced(ctx.client.clone(), self.ns);
        // Only what changed, as a JSON merge patch: server-side apply would make the API
        // server merge the whole object against the CRD's schema (pod template included)
        // on every status write, the operator's most frequent write.
        let patch = json!({"status": status::merge_patch(
            &serde_json::to_value(&base.status).unwrap_or_default(),
            &serde_json::to_value(&new_status).unwrap_or_default(),
        )});
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        api.patch_status(&crs.name_any(), &params, &Patch::Merge(patch))
            .await
            .map_err(kube_err("update status of", key.to_string()))?;
        ctx.status_written.update(key, &uid, |_| Instant::now());
        ctx.deferred.remove(key);
        Ok(Settled {
            status: Some(new_status),
            service,
            service_failure,
            recheck,
            deferred: None,
        })
    }

    /// The Service as the status shows it, or its failure (also an event).
    fn service_outcome(
        &self,
        synced: Result<Option<ServiceStatus>, Error>,
    ) -> Result<(Option<ServiceStatus>, Option<Failure>), Error> {
        match synced {
            Ok(service) => Ok((service, None)),
            Err(Error::Service { failure, .. }) => {
                let note = failure.message.clone();
                self.ctx.event(
                    self.crs,
                    EventType::Warning,
                    failure.reason,
                    "Service",
                    note,
                    None,
                );
                Ok((None, Some(failure)))
            }
            Err(e) => Err(e),
        }
    }
}

/// How long a status change waits to be written with the next, if it is one that may
/// ([`STATUS_BATCH`]): counts only, and this process wrote the status less than that ago.
pub(super) fn status_deferred(
    ctx: &Context,
    key: &str,
    uid: &str,
    old: Option<&CraneReplicaSetStatus>,
    new: &CraneReplicaSetStatus,
) -> Option<Duration> {
    let old = old?;
    if old == new || !status::only_counts_changed(old, new) {
        return None;
    }
    let since = ctx.status_written.get(key, uid)?.elapsed();
    STATUS_BATCH.checked_sub(since).filter(|d| !d.is_zero())
}

/// One event when the main reason pods are not ready changes (or goes away), never one
/// per pod or per pass.
///
/// What was announced is remembered here, not read back from the status: the cached
/// CraneReplicaSet may not show this process's last status write yet.
pub(super) async fn announce_pod_issues(
    crs: &CraneReplicaSet,
    ctx: &Context,
    new: &CraneReplicaSetStatus,
) {
    let mut news = IssueNews::Quiet;
    ctx.announced
        .update(&key_of(crs), &crs.uid().unwrap_or_default(), |before| {
            let before = before.unwrap_or_else(|| {
                crs.status
                    .as_ref()
                    .and_then(|s| s.pod_issues.first())
                    .map(|i| i.reason.clone())
            });
            let (said, remember) = diagnostics::issue_news(
                before.as_deref(),
                &new.pod_issues,
                new.ready_replicas,
                crs.spec.replicas,
            );
            news = said;
            remember
        });
    let message = || {
        new.conditions
            .iter()
            .find(|c| c.type_ == status::PODS_READY)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    match news {
        IssueNews::Appeared(reason) => {
            ctx.event(
                crs,
                EventType::Warning,
                &reason,
                "Diagnose",
                message(),
                None,
            );
        }
        IssueNews::Resolved => {
            let note = "every pod is ready again".to_string();
            ctx.event(
                crs,
                EventType::Normal,
                "PodIssuesResolved",
                "Diagnose",
                note,
                None,
            );
        }
        IssueNews::Quiet => {}
    }
}

/// Per-object exponential backoff; one failing CraneReplicaSet never delays the others.
pub fn error_policy(crs: Arc<CraneReplicaSet>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_retries.inc();
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            reason: err.reason(),
        })
        .inc();
    let delay = retry_delay(&crs, &ctx);
    warn!(object = %key_of(crs.as_ref()), error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// How long a failed pass waits to be retried: its backoff, or less when a deferred status
/// write is due sooner.
fn retry_delay(crs: &CraneReplicaSet, ctx: &Context) -> Duration {
    let (key, uid) = (key_of(crs), crs.uid().unwrap_or_default());
    let n = ctx
        .failures
        .update(&key, &uid, |n| n.unwrap_or(0).saturating_add(1));
    let mut delay = BACKOFF_FIRST
        .saturating_mul(1 << (n - 1).min(16))
        .min(BACKOFF_MAX);
    // A pass that failed before it could write a deferred status is retried when that
    // write is due, not after its whole backoff (up to a minute): once per deferral, so a
    // pass that keeps failing before its status backs off as usual.
    if let Some(due) = ctx.deferred.get(&key, &uid) {
        ctx.deferred.remove(&key);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            delay = delay.min(wait + Duration::from_millis(100));
        }
    }
    delay
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::api::fixtures::crane;
    use crate::controller::fixtures::*;
    use crate::controller::watch::on_pod_event;

    /// One pass of `replicas` over the caches, with `between` run once, by the watch,
    /// right after the pass's first read: the interleaving that made the bench overshoot.
    pub(in crate::controller) fn pass_with_watch_between(
        replicas: i32,
        pods: &PodCache,
        e: &Expectations,
        between: impl FnOnce(),
    ) -> Plan {
        let between = std::cell::Cell::new(Some(between));
        let watch = || {
            if let Some(f) = between.take() {
                f()
            }
        };
        let (settled, candidates) = read_in_order(
            || {
                let settled = e.satisfied("default/crane", "crs-uid");
                watch();
                settled
            },
            || {
                let candidates = pods.candidates("default", "crs-uid");
                watch();
                candidates
            },
        );
        let selector: Selector = crane(replicas).label_selector().try_into().unwrap();
        planner::plan(
            &Desired::new("crs-uid", replicas, &selector),
            &candidates,
            settled,
        )
    }

    /// `name`, controlled by the fixture's CraneReplicaSet, Ready or not.
    fn running(name: &str, ready: bool) -> Pod {
        let mut pod = ours(name);
        pod.labels_mut()
            .insert(crate::service::OWNER_LABEL.into(), "crane".into());
        pod.status = serde_json::from_value(serde_json::json!({"phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                            "lastTransitionTime": "2026-11-30T12:00:00Z"}]}))
        .unwrap();
        pod
    }

    #[tokio::test]
    async fn a_change_in_counts_only_waits_for_the_status_batch_and_news_is_written_at_once() {
        use http_body_util::BodyExt;
        let (ctx, mut api) = scripted_context();
        let (tx, mut patches) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
        tokio::spawn(async move {
            while let Some((req, send)) = api.next_request().await {
                assert_eq!(req.method(), http::Method::PATCH, "{}", req.uri());
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let _ = tx.send(serde_json::from_slice(&body).unwrap());
                send.send_response(answer(200, serde_json::to_value(crane(2)).unwrap()));
            }
        });
        let mut crs = crane(2);
        crs.spec.service.enabled = false;
        let observe = |pod: Pod| {
            ctx.pods.apply(&watcher::Event::Apply(pod));
        };
        observe(running("crane-a", false));
        observe(running("crane-b", false));

        // The object's first status is written at once; the cache then shows it.
        reconcile_inner(&crs, &ctx).await.expect("a pass");
        let first = patches.try_recv().expect("the first status is written");
        crs.status = Some(serde_json::from_value(first["status"].clone()).unwrap());

        // One pod turns Ready: counts only, within the second after that write.
        observe(running("crane-a", true));
        let action = reconcile_inner(&crs, &ctx).await.expect("a pass");
        assert!(
            patches.try_recv().is_err(),
            "a count-only change is written with the next write"
        );
        assert_ne!(
            action,
            Action::requeue(RESYNC),
            "the pass comes back for the deferred write within the batch"
        );

        // Every pod Ready: the Ready condition changes, written at once, counts included.
        observe(running("crane-b", true));
        reconcile_inner(&crs, &ctx).await.expect("a pass");
        let news = patches
            .try_recv()
            .expect("the Ready news is written at once");
        assert_eq!(news["status"]["readyReplicas"], 2, "{news:#}");
        let ready = news["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned());
        assert_eq!(
            ready.map(|c| c["status"].clone()),
            Some("True".into()),
            "{news:#}"
        );
    }

    /// The requests of a scripted API, each with its JSON body, answered by `respond`
    /// (which gets the request's method, path and body).
    fn serve(
        mut api: ApiHandle,
        mut respond: impl FnMut(
            &http::Method,
            &str,
            &serde_json::Value,
        ) -> Option<http::Response<kube::client::Body>>
        + Send
        + 'static,
    ) -> Seen {
        use http_body_util::BodyExt;
        let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            // Requests whose answer waits for a later request.
            let mut held: Vec<(
                tower_test::mock::SendResponse<http::Response<kube::client::Body>>,
                _,
            )> = Vec::new();
            while let Some((req, send)) = api.next_request().await {
                let (method, path) = (req.method().clone(), req.uri().path().to_string());
                let bytes = req.into_body().collect().await.unwrap().to_bytes();
                let body = serde_json::from_slice(&bytes).unwrap_or_default();
                match respond(&method, &path, &body) {
                    Some(answer) => {
                        send.send_response(answer);
                        // A status write releases the pod creations held until it came.
                        if method == http::Method::PATCH {
                            for (send, answer) in held.drain(..) {
                                send.send_response(answer);
                            }
                        }
                    }
                    None => held.push((
                        send,
                        answer(201, serde_json::to_value(ours("crane-new")).unwrap()),
                    )),
                }
                let _ = tx.send((method, path, body));
            }
        });
        seen
    }

    type Seen = tokio::sync::mpsc::UnboundedReceiver<(http::Method, String, serde_json::Value)>;

    /// A scripted API that refuses every pod creation (403) and takes every status write,
    /// and a CraneReplicaSet of one pod without a Service.
    fn creations_refused() -> (Context, Seen, CraneReplicaSet) {
        let (ctx, api) = scripted_context();
        let seen = serve(api, |method, _, _| match *method {
            http::Method::POST => Some(failure(403, "Forbidden")),
            _ => Some(answer(200, serde_json::to_value(crane(1)).unwrap())),
        });
        let mut crs = crane(1);
        crs.spec.service.enabled = false;
        (ctx, seen, crs)
    }

    /// The status writes seen so far, oldest first.
    fn status_writes(seen: &mut Seen) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| seen.try_recv().ok())
            .filter(|(method, _, _)| method == http::Method::PATCH)
            .map(|(_, _, body)| body)
            .collect()
    }

    fn conditions_of(patch: &serde_json::Value) -> Vec<String> {
        patch["status"]["conditions"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|c| c["type"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_pass_that_creates_writes_its_status_without_waiting_for_the_creations() {
        let (ctx, api) = scripted_context();
        // The creation is answered only once the status write has come: a pass that waited
        // for its creations before writing the status would wait forever.
        let mut seen = serve(api, |method, _, _| match *method {
            http::Method::POST => None,
            _ => Some(answer(200, serde_json::to_value(crane(1)).unwrap())),
        });
        let mut crs = crane(1);
        crs.spec.service.enabled = false;
        let pass = tokio::time::timeout(Duration::from_secs(10), reconcile_inner(&crs, &ctx)).await;
        pass.expect("the status write did not wait for the creation")
            .expect("a pass");
        let mut methods = Vec::new();
        while let Ok((method, _, _)) = seen.try_recv() {
            methods.push(method);
        }
        assert_eq!(
            methods,
            [http::Method::POST, http::Method::PATCH],
            "one creation and one status write"
        );
    }

    #[tokio::test]
    async fn a_failed_creation_is_written_in_a_second_status_write() {
        let (ctx, mut seen, crs) = creations_refused();
        let err = reconcile_inner(&crs, &ctx)
            .await
            .expect_err("the creation failed");
        assert!(matches!(err, Error::Replicas { .. }), "{err:?}");
        let patches = status_writes(&mut seen);
        assert_eq!(patches.len(), 2, "{patches:#?}");
        assert!(!conditions_of(&patches[0]).contains(&status::REPLICA_FAILURE.to_string()));
        assert!(
            conditions_of(&patches[1]).contains(&status::REPLICA_FAILURE.to_string()),
            "{:#}",
            patches[1]
        );
    }

    #[tokio::test]
    async fn an_object_that_is_failing_never_shows_its_failure_cleared_while_it_retries() {
        let (ctx, mut seen, mut crs) = creations_refused();
        crs.spec.replicas = 2;
        // The first pass fails and writes the failure; the object's status then shows it.
        let _ = reconcile_inner(&crs, &ctx).await;
        let last = status_writes(&mut seen)
            .pop()
            .expect("the failure was written");
        crs.status = Some(serde_json::from_value(last["status"].clone()).unwrap());
        assert!(conditions_of(&last).contains(&status::REPLICA_FAILURE.to_string()));
        ctx.expectations.forget("default/crane");
        ctx.status_written.take_keys();

        // A pod appears, so the retry has a count to write; its creation of the other fails
        // again: no status write in between says the failure is gone.
        ctx.pods
            .apply(&watcher::Event::Apply(running("crane-a", false)));
        let _ = reconcile_inner(&crs, &ctx).await;
        let writes = status_writes(&mut seen);
        assert!(
            !writes.is_empty(),
            "the retry wrote no status: the new count is lost"
        );
        for body in &writes {
            assert!(
                body["status"].get("conditions").is_none()
                    || conditions_of(body).contains(&status::REPLICA_FAILURE.to_string()),
                "a status write cleared the failure while the object retried: {body:#}"
            );
        }
        assert_eq!(
            writes.last().unwrap()["status"]["replicas"],
            1,
            "{writes:#?}"
        );
    }

    /// A pass that fails is retried after the error backoff (up to a minute), so a status
    /// correction it deferred would wait that long (seen: 61 s with Kubernetes' own RC
    /// lifecycle test). It writes at once instead.
    #[tokio::test]
    async fn a_failing_pass_writes_a_count_change_at_once_rather_than_after_its_backoff() {
        let (ctx, api) = scripted_context();
        let mut seen = serve(api, |method, _, _| match *method {
            http::Method::PATCH => Some(answer(200, serde_json::to_value(crane(1)).unwrap())),
            _ => Some(failure(500, "InternalError")),
        });
        // A Service cannot be made: the template has no containerPort.
        let mut crs = crane(1);
        crs.spec.template.spec.as_mut().unwrap().containers[0].ports = None;
        ctx.pods
            .apply(&watcher::Event::Apply(running("crane-a", true)));
        let err = reconcile_inner(&crs, &ctx)
            .await
            .expect_err("no Service port");
        assert!(matches!(err, Error::Service { .. }), "{err:?}");
        let first = status_writes(&mut seen)
            .pop()
            .expect("the first status is written");
        crs.status = Some(serde_json::from_value(first["status"].clone()).unwrap());

        // Someone (a foreign status patch, a lost write) makes the stored counts wrong,
        // within the batch window of the last write: only counts differ.
        crs.status.as_mut().unwrap().ready_replicas = 0;
        crs.status.as_mut().unwrap().available_replicas = 0;
        let err = reconcile_inner(&crs, &ctx)
            .await
            .expect_err("still no Service port");
        assert!(matches!(err, Error::Service { .. }), "{err:?}");
        let writes = status_writes(&mut seen);
        assert_eq!(
            writes.len(),
            1,
            "the correction waits for the error backoff instead of being written now"
        );
        assert_eq!(writes[0]["status"]["readyReplicas"], 1, "{:#}", writes[0]);
    }

    #[test]
    fn only_counts_tells_counts_from_news() {
        let status = |ready: i32, reason: &str| -> CraneReplicaSetStatus {
            serde_json::from_value(serde_json::json!({
                "observedGeneration": 1, "replicas": 2, "readyReplicas": ready,
                "conditions": [{"type": "Ready", "status": "False", "reason": reason,
                    "message": format!("{ready} of 2 pods available"),
                    "lastTransitionTime": "2026-11-30T12:00:00Z", "observedGeneration": 1}]
            }))
            .unwrap()
        };
        let old = status(0, "PodsUnavailable");
        assert!(status::only_counts_changed(
            &old,
            &status(1, "PodsUnavailable")
        ));
        assert!(!status::only_counts_changed(
            &old,
            &status(1, "FailedCreate")
        ));
        let scaling = status(0, "ScalingUp");
        assert!(
            status::only_counts_changed(&scaling, &status(1, "WaitingForAvailablePods")),
            "progress from one reason to the next is counted, not news"
        );
        assert!(!status::only_counts_changed(
            &scaling,
            &status(0, "ImagePullBackOff")
        ));
        let mut newer = status(0, "PodsUnavailable");
        newer.observed_generation = Some(2);
        assert!(!status::only_counts_changed(&old, &newer));
    }

    #[tokio::test]
    async fn a_failed_pass_counts_a_retry_and_a_forgotten_object_loses_its_gauges() {
        let (ctx, _api) = scripted_context();
        let ctx = Arc::new(ctx);
        let err = Error::Selector {
            object: "default/crane".into(),
            message: "bad".into(),
        };
        error_policy(Arc::new(crane(1)), &err, ctx.clone());
        assert_eq!(ctx.metrics.reconcile_retries.get(), 1);
        ctx.metrics.set_replicas("default", "crane", 1, 0);
        ctx.forget("default", "crane");
        let text = ctx.metrics.encode();
        assert!(!text.contains(r#"name="crane""#), "{text}");
    }

    /// What is kept for an object the cache no longer holds (gone while the watch was
    /// down, or left out as undecodable) is swept: a pass for it finds it gone.
    #[tokio::test]
    async fn what_is_kept_for_an_object_the_cache_no_longer_holds_is_swept() {
        let (ctx, _api) = scripted_context();
        let (_, crs) = stores();
        ctx.expectations.expect("default/crane", "crs-uid", 1, NONE);
        ctx.failures.update("default/gone", "uid-g", |_| 1);
        ctx.status_written
            .update("other/gone", "uid-o", |_| crate::clock::Instant::now());
        ctx.metrics.enqueued("default/queued-gone".into());
        let swept: Vec<String> = ctx.sweep(&crs).iter().map(ref_key).collect();
        assert_eq!(
            swept,
            ["default/gone", "default/queued-gone", "other/gone"],
            "the object the cache holds is not swept"
        );
    }

    #[test]
    fn a_pod_observed_between_the_two_reads_of_a_pass_is_not_created_again() {
        let (pods, crs) = stores();
        let e = Expectations::default();
        e.expect("default/crane", "crs-uid", 2, NONE);
        on_pod_event(&watcher::Event::Apply(ours("a")), &pods, &crs, &e);
        let plan = pass_with_watch_between(2, &pods, &e, || {
            on_pod_event(&watcher::Event::Apply(ours("b")), &pods, &crs, &e);
        });
        assert_eq!(plan.create, 0, "b was created by the last pass: {plan:?}");
        // The next pass sees both and settles.
        assert_eq!(
            pass_with_watch_between(2, &pods, &e, || ()),
            Plan {
                active: 2,
                ..Plan::default()
            }
        );
    }

    #[test]
    fn a_deletion_observed_between_the_two_reads_of_a_pass_deletes_no_second_pod() {
        let (pods, crs, e) = watched(&["a", "b"]);
        e.expect("default/crane", "crs-uid", 0, ["uid-b"]);
        let plan = pass_with_watch_between(1, &pods, &e, || {
            on_pod_event(&watcher::Event::Delete(ours("b")), &pods, &crs, &e);
        });
        assert!(
            plan.delete.is_empty(),
            "b was deleted by the last pass: {plan:?}"
        );
    }

    /// The same race with real threads and no scripted order: a pass that runs while the
    /// watch delivers must never see its expectations met without the pods they awaited.
    #[test]
    fn passes_concurrent_with_the_watch_never_see_met_expectations_without_their_pods() {
        let (pods, crs) = stores();
        let e = Expectations::default();
        const ROUNDS: usize = 2_000;
        std::thread::scope(|s| {
            let (to_watch, from_pass) = std::sync::mpsc::channel::<usize>();
            s.spawn(|| {
                for n in from_pass {
                    let name = format!("p{n}");
                    let event = watcher::Event::Apply(ours(&name));
                    on_pod_event(&event, &pods, &crs, &e);
                }
            });
            for n in 0..ROUNDS {
                e.expect("default/crane", "crs-uid", 1, NONE);
                to_watch.send(n).unwrap();
                loop {
                    let (settled, seen) = read_in_order(
                        || e.satisfied("default/crane", "crs-uid"),
                        || pods.candidates("default", "crs-uid"),
                    );
                    if settled {
                        assert_eq!(
                            seen.len(),
                            n + 1,
                            "round {n}: expectations met, pod missing"
                        );
                        break;
                    }
                    std::hint::spin_loop();
                }
            }
        });
    }

    /// A CraneReplicaSet read fresh from the API server: the cached one, or none (404).
    fn fresh(current: bool) -> http::Response<kube::client::Body> {
        if current {
            answer(200, serde_json::to_value(crane(2)).unwrap())
        } else {
            failure(404, "NotFound")
        }
    }

    #[tokio::test]
    async fn an_orphaned_service_is_not_re_adopted_for_an_object_deleted_meanwhile() {
        let (ctx, api) = scripted_context();
        let crs = crane(1);
        let mut orphan = crate::service::desired_service(&crs).unwrap();
        orphan.metadata.owner_references = None;
        let mut seen = serve(api, move |method, path, _| {
            Some(match (method.as_str(), path) {
                ("GET", p) if p.ends_with("/services/crane-http") => {
                    answer(200, serde_json::to_value(&orphan).unwrap())
                }
                ("GET", p) if p.ends_with("/cranereplicasets/crane") => fresh(false),
                _ => answer(200, serde_json::to_value(crane(1)).unwrap()),
            })
        });
        let err = crate::controller::service::sync_service(&crs, &ctx, "default")
            .await
            .expect_err("the object is gone: nothing to adopt for");
        assert!(matches!(err, Error::Adoption { .. }), "{err:?}");
        let writes: Vec<_> = std::iter::from_fn(|| seen.try_recv().ok())
            .filter(|(method, _, _)| method != http::Method::GET)
            .map(|(method, path, _)| format!("{method} {path}"))
            .collect();
        assert!(writes.is_empty(), "the orphan was taken: {writes:?}");
    }

    #[tokio::test]
    async fn an_orphan_pod_that_cannot_be_adopted_stops_the_pass_before_it_creates() {
        let (ctx, api) = scripted_context();
        let mut seen = serve(api, |method, path, _| {
            Some(match method.as_str() {
                "GET" if path.ends_with("/cranereplicasets/crane") => fresh(true),
                // Another controller took the pod first.
                "PATCH" if path.contains("/pods/") => failure(409, "Conflict"),
                _ => answer(200, serde_json::to_value(crane(2)).unwrap()),
            })
        });
        let mut crs = crane(2);
        crs.spec.service.enabled = false;
        ctx.pods.apply(&watcher::Event::Apply(pod("orphan", None)));
        let err = reconcile_inner(&crs, &ctx)
            .await
            .expect_err("the adoption failed");
        assert!(matches!(err, Error::Adoption { .. }), "{err:?}");
        let requests: Vec<_> = std::iter::from_fn(|| seen.try_recv().ok())
            .map(|(method, path, _)| format!("{method} {path}"))
            .collect();
        assert!(
            !requests.iter().any(|r| r.starts_with("POST")),
            "the pass created pods on a count that included a pod it could not adopt: {requests:?}"
        );
    }

    #[tokio::test]
    async fn a_pass_comes_back_within_the_resync_whatever_its_recheck() {
        let (ctx, api) = scripted_context();
        let _seen = serve(api, |_, _, _| {
            Some(answer(200, serde_json::to_value(crane(1)).unwrap()))
        });
        let mut crs = crane(1);
        crs.spec.service.enabled = false;
        // A pod Ready just now, available only in a day.
        crs.spec.min_ready_seconds = 86_400;
        let mut ready = running("crane-a", true);
        let now = serde_json::to_value(jiff::Timestamp::now()).unwrap();
        ready.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(serde_json::from_value(now).unwrap());
        ctx.pods.apply(&watcher::Event::Apply(ready));
        let action = reconcile_inner(&crs, &ctx).await.expect("a pass");
        assert_eq!(
            action,
            Action::requeue(RESYNC),
            "the periodic look was put off"
        );
    }

    /// An object deleted and made again under its name, whose deletion this process did
    /// not see, is a new object: its predecessor's backoff and status batching are not its.
    #[tokio::test]
    async fn a_recreated_object_starts_without_its_predecessors_backoff_or_batch() {
        let (ctx, _api) = scripted_context();
        let ctx = Arc::new(ctx);
        let err = Error::Selector {
            object: "default/crane".into(),
            message: "bad".into(),
        };
        let old = Arc::new(crane(1));
        for _ in 0..5 {
            error_policy(old.clone(), &err, ctx.clone());
        }
        let mut new = crane(1);
        new.metadata.uid = Some("new-uid".into());
        assert_eq!(
            error_policy(Arc::new(new), &err, ctx.clone()),
            Action::requeue(BACKOFF_FIRST),
            "the new object's first failure is retried after the first delay"
        );

        ctx.status_written
            .update("default/crane", "crs-uid", |_| Instant::now());
        let status = |ready: i32| -> CraneReplicaSetStatus {
            serde_json::from_value(serde_json::json!({"replicas": 1, "readyReplicas": ready}))
                .unwrap()
        };
        assert!(
            status_deferred(
                &ctx,
                "default/crane",
                "crs-uid",
                Some(&status(0)),
                &status(1)
            )
            .is_some(),
            "the same object batches its counts"
        );
        assert_eq!(
            status_deferred(
                &ctx,
                "default/crane",
                "new-uid",
                Some(&status(0)),
                &status(1)
            ),
            None,
            "another object of the same name does not"
        );
    }

    /// An object left out of the cache because it cannot be decoded is not gone: its
    /// expectations stay for when it is fixed (else its next pass could create its pods
    /// again); an object really gone loses them.
    #[tokio::test]
    async fn an_undecodable_object_keeps_its_expectations_a_gone_one_does_not() {
        let (ctx, _api) = scripted_context();
        let skipped = crate::decode::Skipped::default();
        let bad: crate::decode::Undecodable = crate::decode::Undecodable {
            meta: crane(1).metadata,
            field: "status.conditions[0].lastTransitionTime".into(),
            error: "out of range".into(),
            pruned: None,
        };
        skipped.skip("cranereplicasets", &bad);
        ctx.expectations.expect("default/crane", "crs-uid", 3, NONE);
        let obj = ObjectRef::<kube::api::DynamicObject>::new_with(
            "crane",
            kube::api::ApiResource::erase::<CraneReplicaSet>(&()),
        )
        .within("default");
        ctx.not_in_cache(&skipped, &obj);
        assert!(
            !ctx.expectations.satisfied("default/crane", "crs-uid"),
            "its 3 creations are still expected"
        );
        ctx.not_in_cache(&crate::decode::Skipped::default(), &obj);
        assert!(
            ctx.expectations.satisfied("default/crane", "crs-uid"),
            "gone: nothing is expected of it"
        );
    }

    /// A pass that fails before it writes a deferred status is retried when that write is
    /// due, once, not after its backoff.
    #[tokio::test]
    async fn a_pass_failing_before_its_deferred_status_is_retried_when_the_write_is_due() {
        let (ctx, _api) = scripted_context();
        let crs = crane(1);
        for _ in 0..5 {
            retry_delay(&crs, &ctx);
        }
        ctx.deferred.update("default/crane", "crs-uid", |_| {
            Instant::now() + Duration::from_millis(500)
        });
        let early = retry_delay(&crs, &ctx);
        assert!(
            early <= Duration::from_millis(600),
            "{early:?}: the deferred write waits for the backoff"
        );
        let late = retry_delay(&crs, &ctx);
        assert!(
            late >= Duration::from_secs(30),
            "{late:?}: once per deferral, then the backoff as usual"
        );
    }

    /// Writes are answered with the object as it is now, which may not decode (a field
    /// someone else wrote): the write was done, so the pass must not report it failed.
    #[tokio::test]
    async fn a_write_answered_with_an_object_that_does_not_decode_is_done() {
        let (ctx, api) = scripted_context();
        let mut undecodable = serde_json::to_value(running("crane-a", true)).unwrap();
        undecodable["status"]["conditions"][0]["lastTransitionTime"] =
            "9999-12-31T23:59:59Z".into();
        let _seen = serve(api, move |_, _, _| Some(answer(200, undecodable.clone())));
        let crs = crane(0);
        let pods: Api<Decoded<Pod>> = Api::namespaced(ctx.client.clone(), "default");
        let victim = crate::pods::PodFacts::from_pod(&running("crane-a", true));
        let failure = crate::controller::pods::delete_pods(&crs, &ctx, &pods, &[victim]).await;
        assert_eq!(failure, None, "the delete was done");
        assert_eq!(ctx.metrics.pods_deleted.get(), 1);
    }
}
