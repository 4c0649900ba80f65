//! The controller shell: the watches ([`watch`]), the reconcile pass that carries out the
//! planner's plan against the API server ([`reconcile`]), its pod writes ([`pods`]) and its
//! Service ([`service`]), events, status writes and per-object backoff.

mod pods;
mod reconcile;
mod service;
mod watch;

pub use watch::watch_backoff;

pub use reconcile::{error_policy, reconcile};
use watch::{on_pod_event, owner_of, retry_failed_now, watch_health};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{FutureExt, StreamExt, TryStreamExt, future};
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
use crate::clock::Instant;
use crate::decode::{Decoded, OnUndecodable, Undecodable, sift};
use crate::expectations::Expectations;
use crate::metrics::{ErrorLabels, Health, Metrics, ResourceLabels, ResultLabels};
use crate::planner::{self, Desired, Plan, Strategy};
use crate::pod_cache::{Change, PodCache};
use crate::pods::{PodFacts, new_pod, template_hash};
use crate::recorder::{self, Series};
use crate::service::{
    MANAGED_BY, MANAGED_BY_LABEL, OWNER_LABEL, ServiceAction, controller_of, desired_service,
    service_action, service_name, service_status,
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
/// A status change in counts only, within this long of the object's last status write, is
/// written with the next one instead (at the latest when this has passed since the last):
/// while a thousand pods are created and turn Ready one by one, every pod event would
/// otherwise be a status write, each a full CRD validation in kube-apiserver. Changes of a
/// condition, the generation or the Service are written at once. kube-controller-manager's
/// Job controller batches pod events by the same second (`syncJobBatchPeriod`).
const STATUS_BATCH: Duration = Duration::from_secs(1);

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
    #[error("{object}: {message}")]
    Adoption { object: String, message: String },
}

impl Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "Kube",
            Error::Selector { .. } => "InvalidSelector",
            Error::Adoption { .. } => "AdoptionFailed",
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
    /// To the event publisher (see [`recorder::publish`]), at most [`recorder::QUEUE`] waiting.
    events: tokio::sync::mpsc::Sender<(Event, ObjectReference)>,
    metrics: Arc<Metrics>,
    /// Failed passes in a row, per CraneReplicaSet.
    failures: Arc<PerObject<u32>>,
    /// The pod issue reason last announced by an event, per CraneReplicaSet.
    announced: PerObject<Option<String>>,
    /// When this process last wrote each CraneReplicaSet's status (see [`STATUS_BATCH`]).
    status_written: PerObject<Instant>,
    /// When a status write deferred by the batch is due (see [`STATUS_BATCH`]): a failed
    /// pass is retried by then at the latest, whatever its backoff.
    deferred: PerObject<Instant>,
}

/// State kept per CraneReplicaSet: keyed by `namespace/name`, and valid only for the UID it
/// was recorded for, so that an object deleted and made again under its name (a deletion
/// this process may not have seen) starts afresh, without its predecessor's backoff,
/// batching or announcements.
pub(crate) struct PerObject<V>(Mutex<HashMap<String, (String, V)>>);

impl<V> Default for PerObject<V> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<V: Clone> PerObject<V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, V)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is kept for `key`, if it was kept for this `uid`.
    pub(crate) fn get(&self, key: &str, uid: &str) -> Option<V> {
        self.lock()
            .get(key)
            .filter(|(of, _)| of == uid)
            .map(|(_, v)| v.clone())
    }

    /// Keeps `f(what was kept for this uid)` and returns it.
    pub(crate) fn update(&self, key: &str, uid: &str, f: impl FnOnce(Option<V>) -> V) -> V {
        let mut map = self.lock();
        let before = map
            .get(key)
            .filter(|(of, _)| of == uid)
            .map(|(_, v)| v.clone());
        let after = f(before);
        map.insert(key.to_string(), (uid.to_string(), after.clone()));
        after
    }

    pub(crate) fn remove(&self, key: &str) {
        self.lock().remove(key);
    }

    /// The keys of what is kept.
    pub(crate) fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Empties the map; returns the keys it held.
    pub(crate) fn take_keys(&self) -> Vec<String> {
        std::mem::take(&mut *self.lock()).into_keys().collect()
    }
}

/// `namespace/name` of an object: the key of expectations and backoff.
fn key_of<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// [`key_of`] of the object a reference names.
fn ref_key(obj: &ObjectRef<CraneReplicaSet>) -> String {
    format!(
        "{}/{}",
        obj.namespace.as_deref().unwrap_or_default(),
        obj.name
    )
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

/// A write that failed this way may still have been carried out: its outcome is unknown,
/// so a create keeps its expectation until the watch shows the pod or the expectation
/// times out. kube-controller-manager keeps it only for a timeout and deletes the surplus
/// later; we promise no surplus, so every answer that does not say "not stored" counts:
/// the API server's timeouts and internal errors (an etcd request that timed out may
/// still commit), a 5xx that is not the API server's own `Status` (a proxy or load
/// balancer in between), a connection that broke after the request may have gone out, an
/// answer that could not be read. A refusal (4xx), a 503 (the API server could not take
/// the request), an admission webhook that could not be called, and a connection never
/// made say that nothing was stored.
fn may_have_been_stored(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => {
            let refused_before_storage = status.code == 503
                || (status.reason != NOT_A_STATUS
                    && status.message.contains("failed calling webhook"));
            status.code == 504
                || matches!(status.reason.as_str(), "Timeout" | "ServerTimeout")
                || (status.code >= 500 && !refused_before_storage)
        }
        kube::Error::Service(e) => !never_sent(e.as_ref()),
        kube::Error::HyperError(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::SerdeError(_)
        | kube::Error::FromUtf8(_) => true,
        _ => false,
    }
}

/// The reason kube gives an error answer whose body is not a `Status`.
const NOT_A_STATUS: &str = "Failed to parse error data";

/// The request failed before it reached the API server (no connection could be made).
fn never_sent(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
        {
            return true;
        }
        next = e.source();
    }
    false
}

fn api_status(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Adoption re-reads its owner: the cache may be stale, so a pass adopts (pods, or an
/// orphaned Service) only if the CraneReplicaSet is still this one and is not being
/// deleted, read fresh from the API server (the ReplicaSet controller's `canAdopt`).
async fn may_adopt(crs: &CraneReplicaSet, ctx: &Context) -> Result<(), Error> {
    let crs_api: Api<Decoded<CraneReplicaSet>> =
        Api::namespaced(ctx.client.clone(), &crs.namespace().unwrap_or_default());
    let fresh = crs_api
        .get_opt(&crs.name_any())
        .await
        .map_err(kube_err("re-check before adopting", key_of(crs)))?;
    // Read by its metadata: whether the body decodes does not change whose it is.
    let current =
        fresh.is_some_and(|f| f.uid() == crs.uid() && f.meta().deletion_timestamp.is_none());
    if current {
        Ok(())
    } else {
        Err(Error::Adoption {
            object: key_of(crs),
            message: "the CraneReplicaSet was deleted or replaced; adopting nothing".into(),
        })
    }
}

impl crate::metrics::Footprinted for Context {
    fn footprint(&self) -> crate::metrics::Footprint {
        crate::metrics::Footprint {
            per_object: vec![
                ("expectations", self.expectations.keys()),
                ("failures", self.failures.keys()),
                ("announced", self.announced.keys()),
                ("status_written", self.status_written.keys()),
                ("deferred", self.deferred.keys()),
                ("work queue", self.metrics.queued_keys()),
            ],
            pods: self.pods.len(),
            pod_index: self.pods.index_len(),
        }
    }
}

impl Context {
    /// The objects something is kept for that the CraneReplicaSet cache no longer holds:
    /// gone while the watch was down (a relist does not report what it no longer lists,
    /// where client-go's informers deliver `DeletedFinalStateUnknown`), or left out as
    /// undecodable. A pass for each finds it gone, or still undecodable, and does what
    /// [`Context::not_in_cache`] says.
    fn sweep(&self, cache: &Store<CraneReplicaSet>) -> Vec<ObjectRef<CraneReplicaSet>> {
        use crate::metrics::Footprinted;
        let kept: std::collections::BTreeSet<String> = self
            .footprint()
            .per_object
            .into_iter()
            .flat_map(|(_, keys)| keys)
            .collect();
        kept.iter()
            .filter_map(|key| key.split_once('/'))
            .map(|(ns, name)| ObjectRef::new(name).within(ns))
            .filter(|obj| cache.get(obj).is_none())
            .collect()
    }

    /// Drops what is kept per CraneReplicaSet, once it is gone, its metrics included.
    fn forget(&self, namespace: &str, name: &str) {
        let key = &format!("{namespace}/{name}");
        self.metrics.forget_replicas(namespace, name);
        self.expectations.forget(key);
        self.failures.remove(key);
        self.announced.remove(key);
        self.status_written.remove(key);
        self.deferred.remove(key);
    }

    /// A pass found its object no longer in the cache: what is kept for it is dropped if
    /// it is gone. Left out because it cannot be decoded is not gone: what is kept for it
    /// (its expectations above all) must be there when it is fixed, or its next pass could
    /// create its pods again.
    fn not_in_cache(
        &self,
        skipped: &crate::decode::Skipped,
        obj: &ObjectRef<kube::api::DynamicObject>,
    ) {
        if skipped.holds("cranereplicasets", obj.namespace.as_deref(), &obj.name) {
            debug!(object = %obj, "not in the cache: it cannot be decoded");
        } else {
            debug!(object = %obj, "gone");
            let ns = obj.namespace.as_deref().unwrap_or_default();
            self.forget(ns, &obj.name);
        }
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
        send_event(&self.events, &self.metrics, ev, crs.object_ref(&()));
    }
}

/// Queues an event for the publisher; when the queue is full the event is dropped and
/// counted, never waited for. (The publisher is gone only when the controller stops.)
fn send_event(
    events: &tokio::sync::mpsc::Sender<(Event, ObjectReference)>,
    metrics: &Metrics,
    event: Event,
    regarding: ObjectReference,
) -> bool {
    // The last tenth of the queue is kept for Warnings: a burst of news must not crowd out
    // a failure.
    if event.type_ == EventType::Normal && events.capacity() < recorder::QUEUE / 10 {
        metrics.events_dropped.inc();
        return false;
    }
    match events.try_send((event, regarding)) {
        Ok(()) => true,
        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
            metrics.events_dropped.inc();
            false
        }
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// Says so where the owner of an object the watches cannot decode looks: a Warning event
/// on the object itself, naming the field (once per object and reason), and the count.
fn undecodable_reporter(
    events: tokio::sync::mpsc::Sender<(Event, ObjectReference)>,
    metrics: Arc<Metrics>,
) -> OnUndecodable {
    Arc::new(move |resource, bad: &Undecodable| {
        metrics
            .decode_failures
            .get_or_create(&ResourceLabels { resource })
            .inc();
        let (api_version, kind) = match resource {
            "cranereplicasets" => ("crane.dev/v1", "CraneReplicaSet"),
            "services" => ("v1", "Service"),
            _ => ("v1", "Pod"),
        };
        let regarding = ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
            name: bad.meta.name.clone(),
            namespace: bad.meta.namespace.clone(),
            uid: bad.meta.uid.clone(),
            ..ObjectReference::default()
        };
        let mut note = format!(
            "crane-operator cannot decode {}: {}; it skips this object until it is fixed",
            bad.field, bad.error
        );
        // events.k8s.io caps a note at 1 kB.
        if note.len() > 1000 {
            let mut end = 1000;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        let event = Event {
            type_: EventType::Warning,
            reason: "DecodeFailed".into(),
            note: Some(note),
            action: "Decode".into(),
            secondary: None,
        };
        send_event(&events, &metrics, event, regarding)
    })
}

/// Every watch lists with the most recent semantic (a consistent read, served from the
/// watch cache since Kubernetes 1.31): a relist answered from a lagging cache
/// (`resourceVersion=0`) could go back in time, drop pods already observed, and make a
/// pass create them again. (kube sends no `resourceVersion=0` with a page size anyway;
/// `any_semantic()` only read as if it did.)
pub(crate) fn watch_config() -> watcher::Config {
    watcher::Config::default()
}

pub(crate) fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
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
/// or does not let the operator list and watch its resources, write events or, with
/// `lease` (its namespace and name), take the leader Lease ([`crate::access`]): instead
/// of idling with watches that can never work, it names what is missing and how to grant
/// it. An API server that does not answer (down, say) is left to the watches, which retry.
pub async fn check_crd_served(
    client: &Client,
    namespace: Option<&str>,
    lease: Option<(&str, &str)>,
) -> anyhow::Result<()> {
    let api = api_for::<CraneReplicaSet>(client, namespace);
    let params = kube::api::ListParams::default().limit(1);
    let list = api.list_metadata(&params);
    // An API server that does not answer soon is left to the watches too.
    let Ok(listed) = tokio::time::timeout(Duration::from_secs(5), list).await else {
        warn!("the API server did not answer within 5 s; starting anyway");
        return Ok(());
    };
    match listed {
        Err(e) if api_status(&e) == Some(404) => anyhow::bail!(
            "the API server does not serve cranereplicasets.crane.dev/v1: install the CRD \
             (kubectl apply --server-side -f manifests/crd.yaml, or the Helm chart) and start again"
        ),
        // A 403 is for the access review to explain, with every other refusal.
        Err(e) if api_status(&e) != Some(403) => {
            warn!(error = %e, "could not check that the CRD is served; starting anyway");
            return Ok(());
        }
        _ => {}
    }
    let needs = crate::access::needs(namespace, lease);
    let reviewed = tokio::time::timeout(
        Duration::from_secs(5),
        crate::access::denied(client, &needs),
    );
    match reviewed.await {
        Ok(Ok(denied)) if denied.is_empty() => Ok(()),
        Ok(Ok(denied)) => {
            let user = crate::access::whoami(client).await;
            anyhow::bail!(crate::access::refusal(&denied, user.as_deref()))
        }
        Ok(Err(e)) => {
            warn!(error = %e, "could not check the operator's permissions; starting anyway");
            Ok(())
        }
        Err(_) => {
            warn!(
                "the API server did not review the operator's permissions within 5 s; starting anyway"
            );
            Ok(())
        }
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
    // Events go out through one bounded queue, from the passes and from the watches (an
    // object they cannot decode is announced on itself).
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(recorder::QUEUE);
    let report = undecodable_reporter(events_tx.clone(), metrics.clone());
    let skipped = health.skipped.clone();
    // The CraneReplicaSet watch as Controller::new makes it, each object decoded on its own
    // (see [`crate::decode`]), with each change counted into the work-queue metrics on its
    // way in.
    let (crs_cache, crs_writer) = reflector::store::<CraneReplicaSet>();
    let (trigger_tx, trigger_rx) = mpsc::unbounded::<ObjectRef<CraneReplicaSet>>();
    // The CraneReplicaSet watch relisted: what is kept for objects it no longer holds is
    // dropped (see [`Context::sweep`]).
    let crs_relisted = Arc::new(tokio::sync::Notify::new());
    let crs_changes = {
        let (metrics, health) = (metrics.clone(), health.clone());
        let (tx, relisted) = (trigger_tx.clone(), crs_relisted.clone());
        let watch = watcher(
            api_for::<Decoded<CraneReplicaSet>>(&client, ns),
            watch_config(),
        );
        reflector::reflector(
            crs_writer,
            sift(watch, "cranereplicasets", skipped.clone(), report.clone()).inspect(
                move |event| {
                    // Ready once the CraneReplicaSets are listed (this stream runs only after
                    // the pod and Service caches synced). Not through a second
                    // `Store::wait_until_ready`: kube's runner waits on it, and its one-shot
                    // channel wakes only the last of two waiters.
                    if matches!(event, Ok(watcher::Event::InitDone)) {
                        health.set_ready();
                    }
                    watch_health(&health, "cranereplicasets", event.as_ref())
                },
            ),
        )
        // As with kube's Controller::new, only a change is a reason for a pass; but what
        // is kept for an object must go with it, whichever way it went (no pass may come
        // otherwise: one left out as undecodable, say, or one with no pods left): its pass
        // finds it gone, once the cache no longer holds it.
        .inspect(move |event| match event {
            Ok(watcher::Event::Delete(crs)) => {
                let _ = tx.unbounded_send(ObjectRef::from_obj(crs));
            }
            Ok(watcher::Event::InitDone) => relisted.notify_one(),
            _ => {}
        })
        .applied_objects()
        .inspect_ok(move |crs| metrics.enqueued(key_of(crs)))
    };
    let controller = Controller::for_stream(crs_changes, crs_cache.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        .trigger_backoff(watch_backoff());
    let expectations = Arc::new(Expectations::default());

    let pods = Arc::new(PodCache::default());
    let failures: Arc<PerObject<u32>> = Arc::default();
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
        let watch =
            watcher(api_for::<Decoded<Pod>>(&client, ns), watch_config()).backoff(watch_backoff());
        sift(watch, "pods", skipped.clone(), report.clone()).for_each(move |event| {
            watch_health(&health, "pods", event.as_ref());
            // Only once a relist made the cache whole again: a resumed watch delivers what
            // it missed one event at a time, and a pass in the middle of that could take
            // the pods of a create that failed for us but was stored (an outage's classic)
            // for missing ones.
            match &event {
                Err(_) => {
                    watch_failed = true;
                    expectations.pod_watch(false);
                }
                Ok(watcher::Event::InitDone) => {
                    expectations.pod_watch(true);
                    if std::mem::take(&mut watch_failed) {
                        retry_failed_now(&failures, &tx)
                    }
                }
                Ok(_) => {}
            }
            if let Ok(event) = event {
                let relisted = matches!(event, watcher::Event::InitDone) && cache.is_synced();
                let owners = on_pod_event(&event, &cache, &crs_cache, &expectations);
                if relisted {
                    info!(
                        pods = cache.len(),
                        objects = owners.len(),
                        "pod watch relisted; what changed meanwhile is observed"
                    );
                }
                for owner in owners {
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
        let watch = watcher(
            api_for::<Decoded<Service>>(&client, ns),
            watch_config().labels(&selector),
        )
        .backoff(watch_backoff());
        sift(watch, "services", skipped, report)
            .modify(|s| s.metadata.managed_fields = None)
            .reflect(service_writer)
            .for_each(move |event| {
                watch_health(&health, "services", event.as_ref());
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
    let mut publisher = AbortOnDrop(tokio::spawn(recorder::publish(
        client.clone(),
        Series::new(MANAGER, config.instance),
        events_rx,
        metrics.events_dropped.clone(),
    )));
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods,
        services,
        expectations,
        events: events_tx,
        metrics,
        failures,
        announced: PerObject::default(),
        status_written: PerObject::default(),
        deferred: PerObject::default(),
    });
    let state = ctx.clone();
    health.running(Arc::downgrade(&ctx) as std::sync::Weak<dyn crate::metrics::Footprinted>);
    let _sweeper = AbortOnDrop(tokio::spawn({
        let (ctx, crs_cache, tx) = (ctx.clone(), crs_cache.clone(), trigger_tx.clone());
        async move {
            loop {
                crs_relisted.notified().await;
                for gone in ctx.sweep(&crs_cache) {
                    let _ = tx.unbounded_send(gone);
                }
            }
        }
    }));
    controller
        .reconcile_on({
            let metrics = state.metrics.clone();
            trigger_rx.inspect(move |obj| metrics.enqueued(ref_key(obj)))
        })
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
                    state.not_in_cache(&health.skipped, &obj);
                }
                // The CraneReplicaSet watch failed (it retries); its health saw it on the way.
                Err(kube::runtime::controller::Error::QueueError(e)) => {
                    debug!(error = %e, "the CraneReplicaSet watch failed");
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

#[cfg(test)]
pub(crate) mod fixtures {
    //! Pods, caches and a scripted API in one line, for the shell's tests.
    use super::*;
    use crate::api::fixtures::crane;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;
    use tower_test::mock;

    pub const NONE: [&str; 0] = [];

    /// Caches that hold pods `names` of ours (seen by the pod watch), and expectations.
    pub fn watched(names: &[&str]) -> (PodCache, Store<CraneReplicaSet>, Expectations) {
        let (pods, crs) = stores();
        let e = Expectations::default();
        for name in names {
            watch::on_pod_event(&watcher::Event::Apply(ours(name)), &pods, &crs, &e);
        }
        (pods, crs, e)
    }

    /// The other end of a scripted API: each request is answered by the test.
    pub type ApiHandle = mock::Handle<Request<Body>, Response<Body>>;

    /// A context whose client talks to a scripted API, with empty caches. The client
    /// retries as the operator's own does ([`crate::client::SafeRetry`]).
    pub fn scripted_context() -> (Context, ApiHandle) {
        let (ctx, handle, _) = scripted_context_with_events();
        (ctx, handle)
    }

    /// The events a context published, as its publisher would receive them.
    pub type Published = tokio::sync::mpsc::Receiver<(Event, ObjectReference)>;

    /// [`scripted_context`], and the other end of its event queue.
    pub fn scripted_context_with_events() -> (Context, ApiHandle, Published) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let service = tower::ServiceBuilder::new()
            .layer(tower::retry::RetryLayer::new(
                crate::client::SafeRetry::default(),
            ))
            .service(service);
        let (events, published) = tokio::sync::mpsc::channel(recorder::QUEUE);
        let (services, _) = reflector::store::<Service>();
        let ctx = Context {
            client: Client::new(service, "default"),
            pods: Arc::default(),
            services,
            expectations: Arc::default(),
            events,
            metrics: Arc::default(),
            failures: Arc::default(),
            announced: PerObject::default(),
            status_written: PerObject::default(),
            deferred: PerObject::default(),
        };
        (ctx, handle, published)
    }

    /// The events published so far: (reason, note, the pod or Service it names).
    pub fn events_of(published: &mut Published) -> Vec<(String, String, Option<String>)> {
        std::iter::from_fn(|| published.try_recv().ok())
            .map(|(ev, _)| {
                let related = ev.secondary.and_then(|r| r.name);
                (ev.reason, ev.note.unwrap_or_default(), related)
            })
            .collect()
    }

    /// An API answer: `status` with a JSON body.
    pub fn answer(status: u16, body: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .body(Body::from(body.to_string().into_bytes()))
            .expect("a valid response")
    }

    /// A `Status` failure as the API server sends it.
    pub fn failure(code: u16, reason: &str) -> Response<Body> {
        answer(
            code,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "code": code, "reason": reason, "message": reason}),
        )
    }

    pub fn pod(name: &str, owner: Option<(&str, &str)>) -> Pod {
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

    pub fn stores() -> (PodCache, Store<CraneReplicaSet>) {
        let (crs, mut crs_writer) = reflector::store::<CraneReplicaSet>();
        crs_writer.apply_watcher_event(&watcher::Event::Apply(crane(1)));
        (PodCache::default(), crs)
    }

    pub fn ours(name: &str) -> Pod {
        pod(name, Some(("CraneReplicaSet", "crs-uid")))
    }

    pub fn crane_ref() -> Vec<ObjectRef<CraneReplicaSet>> {
        vec![ObjectRef::new("crane").within("default")]
    }
}
