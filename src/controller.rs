//! The controller shell: watches, the reconcile pass that carries out the planner's plan
//! against the API server, events, status writes and per-object backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{FutureExt, StreamExt, future};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::api::{CraneReplicaSet, CraneReplicaSetStatus, ServiceStatus};
use crate::expectations::Expectations;
use crate::metrics::{ErrorLabels, Health, Metrics, ResultLabels};
use crate::planner::{self, Desired, Plan, Strategy};
use crate::pod_cache::{Change, PodCache};
use crate::pods::{self, PodFacts, new_pod, template_hash};
use crate::recorder::{self, Series};
use crate::service::{
    MANAGED_BY, MANAGED_BY_LABEL, OWNER_LABEL, desired_service, has_drifted, port_missing,
    service_name, service_status,
};
use crate::status::{self, Failure, Observed};

/// The field manager of every write, and the events' reporting controller.
pub const MANAGER: &str = "crane-operator";

/// Per-object retry delays after failed passes: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long in-flight passes may take to finish after a shutdown request (Kubernetes gives
/// a pod 30 s between SIGTERM and SIGKILL).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// A periodic look at every CraneReplicaSet, as a safety net for missed events. It reads
/// only caches and writes nothing in a steady state.
const RESYNC: Duration = Duration::from_secs(300);

/// Why a reconcile pass failed. Each carries what failed and on which object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {object}: {source}")]
    Kube {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("{object}: invalid selector: {message}")]
    Selector { object: String, message: String },
    #[error("{object}: {}: {}", failure.reason, failure.message)]
    Replicas { object: String, failure: Failure },
    #[error("{object}: {}: {}", failure.reason, failure.message)]
    Service { object: String, failure: Failure },
}

impl Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "Kube",
            Error::Selector { .. } => "InvalidSelector",
            Error::Replicas { failure, .. } | Error::Service { failure, .. } => failure.reason,
        }
    }
}

/// What the controller was started with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch one namespace, or all.
    pub namespace: Option<String>,
    /// Reconcile passes that may run at once.
    pub concurrency: u16,
    /// This process, for events (`reportingInstance`).
    pub instance: Option<String>,
}

/// Shared by every reconcile pass.
pub struct Context {
    client: Client,
    pods: Arc<PodCache>,
    services: Store<Service>,
    expectations: Arc<Expectations>,
    /// To the event publisher (see [`recorder::publish`]).
    events: tokio::sync::mpsc::UnboundedSender<(Event, ObjectReference)>,
    metrics: Arc<Metrics>,
    failures: Arc<Mutex<HashMap<String, u32>>>,
    /// The pod issue reason last announced by an event, per CraneReplicaSet.
    announced: Mutex<HashMap<String, Option<String>>>,
}

/// `namespace/name` of an object: the key of expectations and backoff.
fn key_of<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

fn kube_err(action: &'static str, object: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let object = object.into();
    move |source| Error::Kube {
        action,
        object,
        source,
    }
}

/// What a failed request says, for conditions and events: the API server's own message
/// where there is one (the whole `Status` would bury it).
fn error_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

/// A write that failed this way may still have been carried out (kube-controller-manager
/// keeps the expectation of a create that timed out).
fn may_have_been_stored(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => {
            status.code == 504 || matches!(status.reason.as_str(), "Timeout" | "ServerTimeout")
        }
        _ => false,
    }
}

fn api_status(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

impl Context {
    /// Drops what is kept per CraneReplicaSet, once it is gone.
    fn forget(&self, key: &str) {
        self.expectations.forget(key);
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        self.announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Publishes an event on the CraneReplicaSet, in the background: a reconcile pass never
    /// waits for its events. `related` names the pod or Service it concerns, so that events
    /// about different objects stay apart (up to a point: see [`recorder::SIMILAR_EVENTS`]).
    fn event(
        &self,
        crs: &CraneReplicaSet,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
        related: Option<ObjectReference>,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: related,
        };
        // The publisher is gone only when the controller is shutting down.
        let _ = self.events.send((ev, crs.object_ref(&())));
    }
}

fn pod_ref(crs: &CraneReplicaSet, pod: &PodFacts) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(pod.name.clone()),
        namespace: crs.namespace(),
        uid: Some(pod.uid.clone()),
        ..ObjectReference::default()
    }
}

/// One reconcile pass over one CraneReplicaSet.
pub async fn reconcile(crs: Arc<CraneReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
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
        ctx.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key_of(crs.as_ref()));
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
fn read_in_order<P>(satisfied: impl FnOnce() -> bool, pods: impl FnOnce() -> P) -> (bool, P) {
    let settled = satisfied();
    (settled, pods())
}

async fn reconcile_inner(crs: &CraneReplicaSet, ctx: &Context) -> Result<Action, Error> {
    let key = key_of(crs);
    if crs.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the pods and the Service; adopt nothing meanwhile.
        ctx.forget(&key);
        return Ok(Action::await_change());
    }
    let ns = crs.namespace().unwrap_or_default();
    let uid = crs.uid().unwrap_or_default();
    let selector: Selector =
        crs.label_selector()
            .try_into()
            .map_err(|e: kube::core::ParseExpressionError| Error::Selector {
                object: key.clone(),
                message: e.to_string(),
            })?;
    let (settled, pods) = read_in_order(
        || ctx.expectations.satisfied(&key, &uid),
        || ctx.pods.candidates(&ns, &uid),
    );
    let hash = template_hash(crs);
    let desired = Desired {
        template_hash: &hash,
        strategy: Strategy::of(&crs.spec.update_strategy, crs.spec.replicas),
        min_ready_seconds: crs.spec.min_ready_seconds,
        now: Timestamp::now(),
        ..Desired::new(&uid, crs.spec.replicas, &selector)
    };
    let plan = planner::plan(&desired, &pods, settled);
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    claim_pods(crs, ctx, &pod_api, &plan, &pods, &selector).await?;
    if plan.create > 0 || !plan.delete.is_empty() {
        let victims = plan.delete.iter().map(|p| p.uid.as_str());
        ctx.expectations.expect(&key, &uid, plan.create, victims);
    }
    // A rolling update may both create (within the surge) and delete (within the budget).
    let created = match plan.create {
        0 => None,
        n => create_pods(crs, ctx, &pod_api, n).await,
    };
    let deleted = match plan.delete.as_slice() {
        [] => None,
        victims => delete_pods(crs, ctx, &pod_api, victims).await,
    };
    let replica_failure = created.or(deleted);
    let (service, service_failure) = match sync_service(crs, ctx, &ns).await {
        Ok(service) => (service, None),
        Err(Error::Service { failure, .. }) => {
            let note = failure.message.clone();
            ctx.event(
                crs,
                EventType::Warning,
                failure.reason,
                "Service",
                note,
                None,
            );
            (None, Some(failure))
        }
        Err(e) => return Err(e),
    };

    let observed = Observed {
        claimed: planner::claimed(&desired, &pods).collect(),
        replica_failure: replica_failure.clone(),
        service_failure: service_failure.clone(),
        service,
        now: Timestamp::now(),
    };
    let (new_status, recheck) = status::compute(crs, &selector, observed);
    announce_pod_issues(crs, ctx, &new_status).await;
    // While this pass's own creations or deletions (or an earlier pass's) are not in the
    // cache yet, the counts are about to change: the pass that sees them all writes the
    // status. Failures are reported at once.
    let in_flight = !settled || plan.create > 0 || !plan.delete.is_empty();
    let transient = in_flight && replica_failure.is_none();
    if crs.status.as_ref() != Some(&new_status) && !transient {
        let api: Api<CraneReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        // Only what changed, as a JSON merge patch: server-side apply would make the API
        // server merge the whole object against the CRD's schema (pod template included)
        // on every status write, the operator's most frequent write.
        let patch = json!({"status": status::merge_patch(
            &serde_json::to_value(&crs.status).unwrap_or_default(),
            &serde_json::to_value(&new_status).unwrap_or_default(),
        )});
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        api.patch_status(&crs.name_any(), &params, &Patch::Merge(patch))
            .await
            .map_err(kube_err("update status of", key.clone()))?;
    }
    if let Some(failure) = replica_failure {
        return Err(Error::Replicas {
            object: key,
            failure,
        });
    }
    if let Some(failure) = service_failure {
        return Err(Error::Service {
            object: key,
            failure,
        });
    }
    Ok(Action::requeue(
        recheck.map_or(RESYNC, |d| d + Duration::from_millis(100)),
    ))
}

/// One event when the main reason pods are not ready changes (or goes away), never one
/// per pod or per pass.
///
/// What was announced is remembered here, not read back from the status: the cached
/// CraneReplicaSet may not show this process's last status write yet.
async fn announce_pod_issues(crs: &CraneReplicaSet, ctx: &Context, new: &CraneReplicaSetStatus) {
    let now_reason = new.pod_issues.first().map(|i| i.reason.clone());
    let before = {
        let mut announced = ctx.announced.lock().unwrap_or_else(|p| p.into_inner());
        let from_status = || {
            crs.status
                .as_ref()
                .and_then(|s| s.pod_issues.first())
                .map(|i| i.reason.clone())
        };
        let before = announced
            .get(&key_of(crs))
            .cloned()
            .unwrap_or_else(from_status);
        announced.insert(key_of(crs), now_reason);
        before
    };
    let before = before.as_deref();
    let message = || {
        new.conditions
            .iter()
            .find(|c| c.type_.as_deref() == Some(status::PODS_READY))
            .and_then(|c| c.message.clone())
            .unwrap_or_default()
    };
    match (before, new.pod_issues.first()) {
        (before, Some(now)) if before != Some(now.reason.as_str()) => {
            ctx.event(
                crs,
                EventType::Warning,
                &now.reason,
                "Diagnose",
                message(),
                None,
            );
        }
        (Some(_), None) => {
            let note = "no pod has a known problem any more".to_string();
            ctx.event(
                crs,
                EventType::Normal,
                "PodIssuesResolved",
                "Diagnose",
                note,
                None,
            );
        }
        _ => {}
    }
}

/// Adopts matching orphans, releases pods that stopped matching, and puts [`OWNER_LABEL`]
/// on every pod counted (the Service selects on it).
async fn claim_pods(
    crs: &CraneReplicaSet,
    ctx: &Context,
    api: &Api<Pod>,
    plan: &Plan,
    pods: &[PodFacts],
    selector: &Selector,
) -> Result<(), Error> {
    let name = crs.name_any();
    let uid = crs.uid().unwrap_or_default();
    let needs_label: Vec<&PodFacts> = pods
        .iter()
        .filter(|p| p.labels.get(OWNER_LABEL) != Some(&name))
        .filter(|p| {
            p.controller == pods::Controller::Uid(uid.clone()) && selector.matches(&p.labels)
        })
        .filter(|p| !p.terminating)
        .collect();
    if !plan.adopt.is_empty() {
        // The cache may be stale: adopt only if the CraneReplicaSet is still this one and
        // is not being deleted, read fresh from the API server.
        let crs_api: Api<CraneReplicaSet> =
            Api::namespaced(ctx.client.clone(), &crs.namespace().unwrap_or_default());
        let fresh = crs_api
            .get_opt(&name)
            .await
            .map_err(kube_err("re-check before adopting", key_of(crs)))?;
        let current =
            fresh.is_some_and(|f| f.uid() == crs.uid() && f.metadata.deletion_timestamp.is_none());
        if current {
            let owner = crate::service::controller_ref(crs);
            for pod in &plan.adopt {
                let patch = json!({"metadata": {
                    "uid": pod.uid, "ownerReferences": [owner], "labels": {OWNER_LABEL: name}}});
                patch_pod(api, pod, patch, "adopt").await?;
                info!(object = %key_of(crs), pod = %pod.name, "adopted orphan pod");
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
async fn patch_pod(
    api: &Api<Pod>,
    pod: &PodFacts,
    patch: serde_json::Value,
    action: &'static str,
) -> Result<(), Error> {
    match api
        .patch(&pod.name, &PatchParams::default(), &Patch::Strategic(patch))
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

/// Creates `n` pods in slow-start batches; stops at the first failing batch.
async fn create_pods(
    crs: &CraneReplicaSet,
    ctx: &Context,
    api: &Api<Pod>,
    n: usize,
) -> Option<Failure> {
    let key = key_of(crs);
    let uid = crs.uid().unwrap_or_default();
    let pod = new_pod(crs);
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    let mut issued = 0;
    for batch in planner::slow_start_batches(n) {
        issued += batch;
        let started = Instant::now();
        let results = future::join_all((0..batch).map(|_| async {
            let result = api.create(&params, &pod).await;
            match &result {
                Ok(created) => {
                    ctx.metrics.pods_created.inc();
                    let note = format!("Created pod: {}", created.name_any());
                    let related = Some(created.object_ref(&()));
                    ctx.event(
                        crs,
                        EventType::Normal,
                        "SuccessfulCreate",
                        "Create",
                        note,
                        related,
                    );
                }
                Err(e) => {
                    ctx.event(
                        crs,
                        EventType::Warning,
                        "FailedCreate",
                        "Create",
                        format!("Error creating: {}", error_message(e)),
                        None,
                    );
                }
            }
            result
        }))
        .await;
        debug!(object = %key, batch, took = ?started.elapsed(), "created a batch of pods");
        let mut first_error = None;
        for result in results {
            match result {
                Ok(_) => {}
                // A server-side timeout may still have created the pod: the watch will say,
                // and until then (or the expectations' timeout) no pass makes it again.
                Err(e) if may_have_been_stored(&e) => {}
                Err(e) => {
                    ctx.expectations.creation_observed(&key, &uid);
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            for _ in issued..n {
                ctx.expectations.creation_observed(&key, &uid);
            }
            warn!(object = %key, error = %e, "creating pods failed");
            return Some(Failure {
                reason: "FailedCreate",
                message: error_message(&e),
            });
        }
    }
    None
}

/// Deletes the chosen pods, each only if it is still the pod that was chosen (UID).
async fn delete_pods(
    crs: &CraneReplicaSet,
    ctx: &Context,
    api: &Api<Pod>,
    victims: &[PodFacts],
) -> Option<Failure> {
    let key = key_of(crs);
    let results = future::join_all(victims.iter().map(|pod| async {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(pod.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let result = api.delete(&pod.name, &params).await;
        match &result {
            Ok(_) => {
                ctx.metrics.pods_deleted.inc();
                let note = format!("Deleted pod: {}", pod.name);
                let related = Some(pod_ref(crs, pod));
                ctx.event(
                    crs,
                    EventType::Normal,
                    "SuccessfulDelete",
                    "Delete",
                    note,
                    related,
                );
            }
            Err(e) if matches!(api_status(e), Some(404 | 409)) => {
                ctx.expectations.deletion_observed(&key, &pod.uid);
            }
            Err(e) => {
                ctx.expectations.deletion_observed(&key, &pod.uid);
                let note = format!("Error deleting pod {}: {}", pod.name, error_message(e));
                let related = Some(pod_ref(crs, pod));
                ctx.event(
                    crs,
                    EventType::Warning,
                    "FailedDelete",
                    "Delete",
                    note,
                    related,
                );
            }
        }
        result
    }))
    .await;
    results
        .into_iter()
        .filter_map(Result::err)
        .find(|e| !matches!(api_status(e), Some(404 | 409)))
        .map(|e| Failure {
            reason: "FailedDelete",
            message: error_message(&e),
        })
}

/// Applies, reverts, recreates or deletes the Service; returns what its status shows.
async fn sync_service(
    crs: &CraneReplicaSet,
    ctx: &Context,
    ns: &str,
) -> Result<Option<ServiceStatus>, Error> {
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let uid = crs.uid();
    let is_ours = |s: &Service| {
        s.owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
    };
    let wanted = crs.spec.service.enabled.then(|| service_name(crs));
    let owned: Vec<Arc<Service>> = ctx
        .services
        .state()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == Some(ns) && is_ours(s))
        .collect();
    for stale in owned.iter().filter(|s| Some(s.name_any()) != wanted) {
        match api
            .delete(&stale.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {
                let note = format!("Deleted service: {}", stale.name_any());
                let related = Some(stale.object_ref(&()));
                ctx.event(
                    crs,
                    EventType::Normal,
                    "SuccessfulDelete",
                    "Delete",
                    note,
                    related,
                );
            }
            Err(e) if api_status(&e) == Some(404) => {}
            Err(e) => {
                return Err(kube_err("delete", format!("service {}", stale.name_any()))(
                    e,
                ));
            }
        }
    }
    let Some(name) = wanted else { return Ok(None) };
    let desired = desired_service(crs).map_err(|e| Error::Service {
        object: key_of(crs),
        failure: Failure {
            reason: "InvalidServicePort",
            message: e.to_string(),
        },
    })?;
    let live = match ctx.services.get(&ObjectRef::new(&name).within(ns)) {
        Some(live) => Some(live),
        // Not in the cache (which holds only labelled Services): ask the API server, so a
        // Service that someone else made is never taken over.
        None => api
            .get_opt(&name)
            .await
            .map_err(kube_err("get", format!("service {name}")))?
            .map(Arc::new),
    };
    if let Some(live) = &live {
        if !is_ours(live) {
            return Err(Error::Service {
                object: key_of(crs),
                failure: Failure {
                    reason: "ServiceConflict",
                    message: format!(
                        "Service {name} exists and is not controlled by this CraneReplicaSet; delete it or set spec.service.name"
                    ),
                },
            });
        }
        if !has_drifted(live, &desired) {
            return Ok(Some(service_status(live)));
        }
        if port_missing(live, &desired) {
            // Someone edited the port: put the whole list back first (a JSON merge patch
            // replaces lists), then apply as usual.
            let ports = json!({"spec": {"ports": desired.spec.as_ref().map(|s| &s.ports)}});
            api.patch(
                &name,
                &PatchParams {
                    field_manager: Some(MANAGER.into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&ports),
            )
            .await
            .map_err(kube_err("restore the ports of", format!("service {name}")))?;
        }
    }
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
        .map_err(|e| match api_status(&e) {
            // Refused for what the CraneReplicaSet asks (an invalid Service, or one its
            // quota or policy forbids): retrying alone will not help, so say so.
            Some(code @ (400 | 403 | 422)) => Error::Service {
                object: key_of(crs),
                failure: Failure {
                    reason: if code == 403 {
                        "ServiceForbidden"
                    } else {
                        "InvalidService"
                    },
                    message: format!("Service {name} was refused: {}", error_message(&e)),
                },
            },
            _ => kube_err("apply", format!("service {name}"))(e),
        })?;
    if live.is_none() {
        let note = format!("Created service: {name}");
        let related = Some(applied.object_ref(&()));
        ctx.event(
            crs,
            EventType::Normal,
            "SuccessfulCreate",
            "Create",
            note,
            related,
        );
    } else {
        info!(object = %key_of(crs), service = %name, "reverted changes to the service's owned fields");
    }
    Ok(Some(service_status(&applied)))
}

/// Per-object exponential backoff; one failing CraneReplicaSet never delays the others.
pub fn error_policy(crs: Arc<CraneReplicaSet>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            reason: err.reason(),
        })
        .inc();
    let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
    let n = failures.entry(key_of(crs.as_ref())).or_insert(0);
    *n = n.saturating_add(1);
    let delay = BACKOFF_FIRST
        .saturating_mul(1 << (*n - 1).min(16))
        .min(BACKOFF_MAX);
    warn!(object = %key_of(crs.as_ref()), error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The owner CraneReplicaSet of a child object and its UID, from its controller
/// ownerReference.
fn owner_of<K: Resource>(obj: &K) -> Option<(ObjectRef<CraneReplicaSet>, String)> {
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
struct Sightings {
    /// The CraneReplicaSets to reconcile.
    triggers: Vec<ObjectRef<CraneReplicaSet>>,
    /// Pods that appeared, each as (key, UID) of the CraneReplicaSet that controls it.
    created: Vec<(String, String)>,
    /// Pods that went or started terminating, each as (key of its CraneReplicaSet, pod UID).
    deleted: Vec<(String, String)>,
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
                }
            }
            let replaced = before.as_ref().map(|b| &b.uid) != after.as_ref().map(|a| &a.uid);
            if let Some(after) = after {
                if let (Some(key), pods::Controller::Uid(owner)) = (key(after), &after.controller) {
                    if replaced {
                        seen.created.push((key.clone(), owner.clone()));
                    }
                    if after.terminating {
                        seen.deleted.push((key, after.uid.clone()));
                    }
                }
                if after.controller == pods::Controller::None {
                    seen.triggers
                        .extend(selecting(crs_cache, ns, &after.labels));
                }
            }
            if let Some(before) = before.as_ref().filter(|_| replaced)
                && let Some(key) = key(before)
            {
                seen.deleted.push((key, before.uid.clone()));
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
    fn record(&self, expectations: &Expectations) {
        for (key, owner) in &self.created {
            expectations.creation_observed(key, owner);
        }
        for (key, uid) in &self.deleted {
            expectations.deletion_observed(key, uid);
        }
    }
}

/// The CraneReplicaSets of `namespace` whose selector matches these labels.
fn selecting(
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
fn on_pod_event(
    event: &watcher::Event<Pod>,
    cache: &PodCache,
    crs_cache: &Store<CraneReplicaSet>,
    expectations: &Expectations,
) -> Vec<ObjectRef<CraneReplicaSet>> {
    let seen = Sightings::of(&cache.apply(event), crs_cache);
    seen.record(expectations);
    seen.triggers
}

fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Fails when the API server does not serve CraneReplicaSets (the CRD is not installed),
/// instead of idling with a watch that can never work. Any other error (the API server
/// is down, say) is left to the watches, which retry.
pub async fn check_crd_served(client: &Client, namespace: Option<&str>) -> anyhow::Result<()> {
    let api = api_for::<CraneReplicaSet>(client, namespace);
    match api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
    {
        Err(e) if api_status(&e) == Some(404) => anyhow::bail!(
            "the API server does not serve cranereplicasets.crane.dev/v1: install the CRD \
             (kubectl apply --server-side -f manifests/crd.yaml, or the Helm chart) and start again"
        ),
        Err(e) => {
            warn!(error = %e, "could not check that the CRD is served; starting anyway");
            Ok(())
        }
        Ok(_) => Ok(()),
    }
}

/// Aborts a spawned task when dropped: a controller whose future is dropped (its leader
/// lease lost) must leave no task of its own writing behind.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the controller until `shutdown` resolves; returns once in-flight passes finished.
/// Dropping the future stops everything it started at once.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = config.namespace.as_deref();
    let controller = Controller::new(
        api_for::<CraneReplicaSet>(&client, ns),
        watcher::Config::default().any_semantic(),
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
    .trigger_backoff(watch_backoff());
    let crs_cache = controller.store();
    let expectations = Arc::new(Expectations::default());
    let (trigger_tx, trigger_rx) = mpsc::unbounded::<ObjectRef<CraneReplicaSet>>();

    let pods = Arc::new(PodCache::default());
    let failures: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let pod_stream = {
        let (cache, crs_cache, expectations, tx, health, failures) = (
            pods.clone(),
            crs_cache.clone(),
            expectations.clone(),
            trigger_tx.clone(),
            health.clone(),
            failures.clone(),
        );
        let mut watch_failed = false;
        watcher(
            api_for::<Pod>(&client, ns),
            watcher::Config::default().any_semantic(),
        )
        .backoff(watch_backoff())
        .for_each(move |event| {
            watch_health(&health, "pods", event.as_ref().err());
            // Only once a relist made the cache whole again: a resumed watch delivers what
            // it missed one event at a time, and a pass in the middle of that could take
            // the pods of a create that failed for us but was stored (an outage's classic)
            // for missing ones.
            match &event {
                Err(_) => watch_failed = true,
                Ok(watcher::Event::InitDone) if std::mem::take(&mut watch_failed) => {
                    retry_failed_now(&failures, &tx)
                }
                Ok(_) => {}
            }
            if let Ok(event) = event {
                for owner in on_pod_event(&event, &cache, &crs_cache, &expectations) {
                    let _ = tx.unbounded_send(owner);
                }
            }
            future::ready(())
        })
    };
    let (services, service_writer) = reflector::store::<Service>();
    let service_stream = {
        let (tx, health) = (trigger_tx.clone(), health.clone());
        let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
        watcher(
            api_for::<Service>(&client, ns),
            watcher::Config::default().labels(&selector).any_semantic(),
        )
        .backoff(watch_backoff())
        .modify(|s| s.metadata.managed_fields = None)
        .reflect(service_writer)
        .for_each(move |event| {
            watch_health(&health, "services", event.as_ref().err());
            if let Ok(event) = event {
                let touched = match event {
                    watcher::Event::Apply(s)
                    | watcher::Event::InitApply(s)
                    | watcher::Event::Delete(s) => Some(s),
                    _ => None,
                };
                if let Some((owner, _)) = touched.as_ref().and_then(owner_of) {
                    let _ = tx.unbounded_send(owner);
                }
            }
            future::ready(())
        })
    };
    let watches = AbortOnDrop(tokio::spawn(future::join(pod_stream, service_stream)));

    info!(
        namespace = ns.unwrap_or("<all>"),
        "waiting for the pod and service caches to sync"
    );
    // SIGTERM (or a lost lease) may come before the caches sync, e.g. while the API
    // server is down: stop then too.
    let shutdown = shutdown.boxed().shared();
    let synced = tokio::select! {
        (_, synced) = future::join(pods.wait_until_ready(), services.wait_until_ready()) => synced,
        () = shutdown.clone() => {
            info!("stopped before the caches synced");
            return;
        }
    };
    if let Err(e) = synced {
        warn!(error = %e, "a cache writer went away before syncing");
        return;
    }
    info!(
        pods = pods.len(),
        services = services.len(),
        "caches synced; reconciling"
    );
    health.set_ready();

    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut publisher = AbortOnDrop(tokio::spawn(recorder::publish(
        client.clone(),
        Series::new(MANAGER, config.instance),
        events_rx,
    )));
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods,
        services,
        expectations,
        events: events_tx,
        metrics,
        failures,
        announced: Mutex::default(),
    });
    let state = ctx.clone();
    controller
        .reconcile_on(trigger_rx)
        // kube's runner holds queued passes until the CraneReplicaSet cache is ready, and a
        // shutdown stops the watch that would make it ready: let it sync first (briefly).
        .graceful_shutdown_on({
            let (shutdown, crs_cache) = (shutdown.clone(), crs_cache.clone());
            async move {
                shutdown.await;
                let _ = tokio::time::timeout(Duration::from_secs(5), crs_cache.wait_until_ready())
                    .await;
            }
        })
        .run(reconcile, error_policy, ctx)
        // In-flight passes get a grace period to finish; one stuck on an unreachable API
        // server must not keep the process alive past it.
        .take_until(shutdown.then(|()| tokio::time::sleep(SHUTDOWN_GRACE)))
        .for_each(|result| {
            match result {
                Ok((obj, _)) => debug!(object = %obj, "reconciled"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {} // logged by error_policy
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    debug!(object = %obj, "gone");
                    let ns = obj.namespace.as_deref().unwrap_or_default();
                    state.forget(&format!("{ns}/{}", obj.name));
                }
                // The CraneReplicaSet watch failed (it retries): a missing CRD or a lost
                // RBAC grant must show in /healthz, not leave the process idle and healthy.
                Err(kube::runtime::controller::Error::QueueError(e)) => {
                    watch_health(&health, "cranereplicasets", Some(&e));
                }
                Err(e) => warn!(error = %e, "controller stream error (retried)"),
            }
            future::ready(())
        })
        .await;
    drop(watches);
    // Let the events of the last passes out, but do not hang the shutdown on them.
    drop(state);
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut publisher.0).await;
    info!("controller stopped");
}

/// The API server is back (a failed watch works again): the CraneReplicaSets whose passes
/// failed meanwhile are retried now, not after the backoff their failures during the
/// outage built up, which would be up to a minute.
fn retry_failed_now(
    failures: &Mutex<HashMap<String, u32>>,
    tx: &mpsc::UnboundedSender<ObjectRef<CraneReplicaSet>>,
) {
    let failed = std::mem::take(&mut *failures.lock().unwrap_or_else(|p| p.into_inner()));
    if !failed.is_empty() {
        info!(
            objects = failed.len(),
            "the API server is back: retrying failed passes now"
        );
    }
    for key in failed.into_keys() {
        if let Some((ns, name)) = key.split_once('/') {
            let _ = tx.unbounded_send(ObjectRef::new(name).within(ns));
        }
    }
}

/// Retry delays of a failed watch: client-go's reflector doubles from 0.8 s up to 30 s,
/// which after a brief API server restart leaves the operator blind for up to half a
/// minute; one operator's watches are few, so this stops at 5 s.
fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

fn watch_health(health: &Health, stream: &'static str, err: Option<&watcher::Error>) {
    match err {
        None => health.stream_ok(stream),
        Some(e) => {
            health.stream_failed(stream);
            warn!(stream, error = %e, "watch failed; retrying with backoff");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fixtures::crane;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    const NONE: [&str; 0] = [];

    fn pod(name: &str, owner: Option<(&str, &str)>) -> Pod {
        let owners: Vec<_> = owner
            .map(|(kind, uid)| json!({"apiVersion": if kind == "CraneReplicaSet" { "crane.dev/v1" } else { "apps/v1" },
                "kind": kind, "name": "crane", "uid": uid, "controller": true}))
            .into_iter()
            .collect();
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "labels": {"app": "crane"}, "ownerReferences": owners}}),
        )
        .unwrap()
    }

    fn stores() -> (PodCache, Store<CraneReplicaSet>) {
        let (crs, mut crs_writer) = reflector::store::<CraneReplicaSet>();
        crs_writer.apply_watcher_event(&watcher::Event::Apply(crane(1)));
        (PodCache::default(), crs)
    }

    fn ours(name: &str) -> Pod {
        pod(name, Some(("CraneReplicaSet", "crs-uid")))
    }

    fn crane_ref() -> Vec<ObjectRef<CraneReplicaSet>> {
        vec![ObjectRef::new("crane").within("default")]
    }

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
        let (pods, crs) = stores();
        let e = Expectations::default();
        for name in ["a", "b"] {
            on_pod_event(&watcher::Event::Apply(ours(name)), &pods, &crs, &e);
        }
        e.expect("default/crane", "crs-uid", 0, ["uid-a", "uid-b"]);
        on_pod_event(&watcher::Event::Delete(ours("a")), &pods, &crs, &e);
        let mut terminating = ours("b");
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        on_pod_event(&watcher::Event::Apply(terminating), &pods, &crs, &e);
        assert!(e.satisfied("default/crane", "crs-uid"));
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
        let (pods, crs) = stores();
        let e = Expectations::default();
        for name in ["a", "b"] {
            on_pod_event(&watcher::Event::Apply(ours(name)), &pods, &crs, &e);
        }
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

    /// One pass of `replicas` over the caches, with `between` run once, by the watch,
    /// right after the pass's first read: the interleaving that made the bench overshoot.
    fn pass_with_watch_between(
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
        let (pods, crs) = stores();
        let e = Expectations::default();
        for name in ["a", "b"] {
            on_pod_event(&watcher::Event::Apply(ours(name)), &pods, &crs, &e);
        }
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

    #[test]
    fn orphans_trigger_the_replica_sets_that_select_them_and_others_pods_nothing() {
        let (pods, crs) = stores();
        let e = Expectations::default();
        let orphan = watcher::Event::Apply(pod("o", None));
        assert_eq!(on_pod_event(&orphan, &pods, &crs, &e), crane_ref());
        let theirs = watcher::Event::Apply(pod("r", Some(("ReplicaSet", "rs-uid"))));
        assert_eq!(on_pod_event(&theirs, &pods, &crs, &e), []);
    }
}
