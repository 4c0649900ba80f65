//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

mod process;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// A short error class, e.g. `FailedCreate`, `Kube`.
    pub reason: &'static str,
}

/// Every `reason` label of `crane_operator_reconcile_errors_total`.
pub const ERROR_REASONS: [&str; 9] = [
    "InvalidService",
    "ServiceForbidden",
    "Kube",
    "InvalidSelector",
    "AdoptionFailed",
    "FailedCreate",
    "FailedDelete",
    "InvalidServicePort",
    "ServiceConflict",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: &'static str,
    /// The git commit the binary was built from (`--version` prints it too).
    pub commit: &'static str,
}

/// One API request, as client-go's `rest_client_requests_total` counts them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The HTTP method: `GET`, `POST`, `PATCH`, `PUT`, `DELETE` (`OTHER` for the rest).
    pub verb: &'static str,
    /// The HTTP status code, or `error` when no response came (connection, TLS, timeout).
    pub code: String,
}

/// One API request's verb, for its latency (client-go's `rest_client_request_duration_seconds`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    /// The HTTP method, as in [`RequestLabels`].
    pub verb: &'static str,
}

/// The verbs the operator uses, each with a series from the start.
pub const REQUEST_VERBS: [&str; 5] = ["GET", "POST", "PATCH", "PUT", "DELETE"];
/// The codes that alerts and dashboards look for, each with a series from the start
/// (throttling, server errors, no answer at all).
pub const REQUEST_CODES_SEEDED: [&str; 5] = ["429", "500", "503", "504", "error"];

/// A resource the operator watches, for what its watch had to skip.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// `cranereplicasets`, `pods` or `services`.
    pub resource: &'static str,
}

/// The resources the operator watches, each with a series from the start.
pub const WATCHED_RESOURCES: [&str; 3] = ["cranereplicasets", "pods", "services"];

/// One CraneReplicaSet.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    pub namespace: String,
    pub name: String,
}

/// The operator's metrics, named `crane_operator_*`, and the standard `process_*` ones.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    /// Requeues after failed passes (controller-runtime's `workqueue_retries_total`).
    pub reconcile_retries: Counter,
    /// Reconcile passes running now (controller-runtime's `active_workers`).
    pub active_workers: Gauge,
    pub pods_created: Counter,
    pub pods_deleted: Counter,
    pub expectations_unsatisfied: Gauge,
    pub leader: Gauge,
    pub api_requests: Family<RequestLabels, Counter>,
    /// From sending a request to its answer's headers, by verb.
    pub api_request_duration: Family<VerbLabels, Histogram>,
    /// `spec.replicas` of each CraneReplicaSet, as of its last pass.
    pub replicas_desired: Family<ObjectLabels, Gauge>,
    /// `status.readyReplicas` of each CraneReplicaSet, as of its last pass.
    pub replicas_ready: Family<ObjectLabels, Gauge>,
    /// Objects triggered and waiting for their pass (controller-runtime's `workqueue_depth`).
    pub workqueue_depth: Gauge,
    /// From an object's first trigger to the start of its pass (controller-runtime's
    /// `workqueue_queue_duration_seconds`).
    pub workqueue_queue_duration: Histogram,
    /// Objects the watches cannot decode now, by resource (see [`crate::decode`]).
    pub undecodable_objects: Family<ResourceLabels, Gauge>,
    /// Each time an object was found undecodable (once per object and reason).
    pub decode_failures: Family<ResourceLabels, Counter>,
    /// Events not sent because the queue to the API server was full (client-go drops too).
    pub events_dropped: Counter,
    /// When each waiting object was first triggered.
    queued: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("crane_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconcile",
            "Reconcile passes by result",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconcile passes by reason",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile pass takes",
            reconcile_duration.clone(),
        );
        let pods_created = Counter::default();
        registry.register("pods_created", "Pods created", pods_created.clone());
        let pods_deleted = Counter::default();
        registry.register("pods_deleted", "Pods deleted", pods_deleted.clone());
        let expectations_unsatisfied = Gauge::default();
        registry.register(
            "expectations_unsatisfied",
            "CraneReplicaSets waiting to observe their own creations or deletions",
            expectations_unsatisfied.clone(),
        );
        // Known label values start at 0, so dashboards and alerts see the series from the start.
        for result in ["success", "error"] {
            let _ = reconciles.get_or_create(&ResultLabels { result });
        }
        for reason in ERROR_REASONS {
            let _ = reconcile_errors.get_or_create(&ErrorLabels { reason });
        }
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this process holds the leader lease (or runs without election)",
            leader.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "build_info",
            "1, labelled with the operator's version and git commit",
            build_info.clone(),
        );
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: crate::GIT_COMMIT,
            })
            .set(1);
        let reconcile_retries = Counter::default();
        registry.register(
            "reconcile_retries",
            "Reconciles requeued after a failed pass",
            reconcile_retries.clone(),
        );
        let active_workers = Gauge::default();
        registry.register(
            "active_workers",
            "Reconcile passes running now",
            active_workers.clone(),
        );
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Requests to the API server by verb and status code (each retry counts)",
            api_requests.clone(),
        );
        for verb in REQUEST_VERBS {
            for code in REQUEST_CODES_SEEDED {
                let code = code.to_string();
                let _ = api_requests.get_or_create(&RequestLabels { verb, code });
            }
        }
        let api_request_duration = Family::<VerbLabels, Histogram>::new_with_constructor(
            api_latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "api_request_duration_seconds",
            "Time from sending a request to the API server to its answer (headers), by verb",
            api_request_duration.clone(),
        );
        for verb in REQUEST_VERBS {
            let _ = api_request_duration.get_or_create(&VerbLabels { verb });
        }
        let replicas_desired = Family::<ObjectLabels, Gauge>::default();
        registry.register(
            "replicas_desired",
            "spec.replicas of each CraneReplicaSet",
            replicas_desired.clone(),
        );
        let replicas_ready = Family::<ObjectLabels, Gauge>::default();
        registry.register(
            "replicas_ready",
            "Ready pods of each CraneReplicaSet, as its status says",
            replicas_ready.clone(),
        );
        let workqueue_depth = Gauge::default();
        registry.register(
            "workqueue_depth",
            "CraneReplicaSets triggered (by a change of theirs, their pods or Service) and waiting for their pass",
            workqueue_depth.clone(),
        );
        let workqueue_queue_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "workqueue_queue_duration_seconds",
            "Time from a CraneReplicaSet's trigger to the start of its pass",
            workqueue_queue_duration.clone(),
        );
        let undecodable_objects = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "undecodable_objects",
            "Objects the operator's watches cannot decode (skipped, or for pods counted by their metadata), by resource",
            undecodable_objects.clone(),
        );
        let decode_failures = Family::<ResourceLabels, Counter>::default();
        registry.register(
            "decode_failures",
            "Objects found undecodable, once per object and reason, by resource",
            decode_failures.clone(),
        );
        for resource in WATCHED_RESOURCES {
            let _ = undecodable_objects.get_or_create(&ResourceLabels { resource });
            let _ = decode_failures.get_or_create(&ResourceLabels { resource });
        }
        let events_dropped = Counter::default();
        registry.register(
            "events_dropped",
            "Events dropped because the queue to the API server was full",
            events_dropped.clone(),
        );
        Self {
            undecodable_objects,
            decode_failures,
            events_dropped,
            workqueue_depth,
            workqueue_queue_duration,
            queued: Default::default(),
            registry: root,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            reconcile_retries,
            active_workers,
            pods_created,
            pods_deleted,
            expectations_unsatisfied,
            leader,
            api_requests,
            api_request_duration,
            replicas_desired,
            replicas_ready,
        }
    }
}

/// client-go's buckets for `rest_client_request_duration_seconds`.
fn api_latency_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0,
    ])
}

impl Metrics {
    /// Records what the last pass over `namespace/name` computed.
    pub fn set_replicas(&self, namespace: &str, name: &str, desired: i32, ready: i32) {
        let labels = ObjectLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.replicas_desired
            .get_or_create(&labels)
            .set(desired.into());
        self.replicas_ready.get_or_create(&labels).set(ready.into());
    }

    /// Counts a reconcile pass in `active_workers` until the returned guard is dropped: on
    /// every way out of the pass, one dropped at shutdown included.
    pub fn working(&self) -> Working<'_> {
        self.active_workers.inc();
        Working(&self.active_workers)
    }

    /// `key` was triggered: it waits for a pass from now, unless it was waiting already.
    pub fn enqueued(&self, key: String) {
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        queued.entry(key).or_insert_with(Instant::now);
        self.workqueue_depth.set(queued.len() as i64);
    }

    /// The objects waiting in the work queue (see [`Metrics::enqueued`]).
    pub fn queued_keys(&self) -> Vec<String> {
        let queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        queued.keys().cloned().collect()
    }

    /// The pass of `key` starts: how long it waited goes into the queue histogram. A pass
    /// that no trigger asked for (a requeue coming due) waited for nothing.
    pub fn dequeued(&self, key: &str) {
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = queued.remove(key) {
            self.workqueue_queue_duration
                .observe(since.elapsed().as_secs_f64());
        }
        self.workqueue_depth.set(queued.len() as i64);
    }

    /// Drops the series of a CraneReplicaSet that is gone.
    pub fn forget_replicas(&self, namespace: &str, name: &str) {
        self.dequeued(&format!("{namespace}/{name}"));
        let labels = ObjectLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.replicas_desired.remove(&labels);
        self.replicas_ready.remove(&labels);
    }

    /// The text exposition (OpenMetrics) of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A reconcile pass in progress (see [`Metrics::working`]).
pub struct Working<'a>(&'a Gauge);

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How long a watch stream may keep failing before `/healthz` reports the process unhealthy
/// (and a liveness probe restarts it).
pub const WATCH_FAILURE_GRACE: Duration = Duration::from_secs(120);

/// A watch that has not failed for this long has recovered, even if no event came since:
/// a broken watch is retried (and fails again) within its 5 s backoff ceiling.
pub const WATCH_RECOVERED_AFTER: Duration = Duration::from_secs(15);

/// Failures of one watch stream, since it last worked.
#[derive(Clone, Copy)]
struct Failing {
    since: Instant,
    last: Instant,
}

/// Readiness and the health of each watch stream.
///
/// Ready as kube-controller-manager and controller-runtime are: independent of the
/// leader lease. A standby is ready (it serves nothing, but a rollout must be able to
/// replace it); the leader is ready once its caches are synced, and not while a watch
/// cannot complete its list (its cache cannot sync).
#[derive(Default)]
pub struct Health {
    synced: AtomicBool,
    standby: AtomicBool,
    failing: Mutex<HashMap<&'static str, Failing>>,
    /// Watches whose (re)list failed and has not completed since.
    lists_failing: Mutex<std::collections::BTreeSet<&'static str>>,
    /// The objects the watches cannot decode, reported by `/healthz` and `/readyz`.
    pub skipped: Arc<crate::decode::Skipped>,
    /// The running controller, to measure what it keeps (see [`Footprint`]).
    controller: Mutex<Option<std::sync::Weak<dyn Footprinted>>>,
}

/// What a running controller keeps in memory, to check that it is bounded by what exists:
/// nothing is kept for an object that is gone (the simulator checks it in every world).
#[derive(Clone, Debug, Default)]
pub struct Footprint {
    /// Each kind of state kept per CraneReplicaSet, with the keys (`namespace/name`) it is
    /// kept for.
    pub per_object: Vec<(&'static str, Vec<String>)>,
    /// Pods in the pod cache.
    pub pods: usize,
    /// Entries of the pod cache's indexes: controllers with pods, and orphans.
    pub pod_index: usize,
}

/// A controller whose [`Footprint`] can be measured.
pub trait Footprinted: Send + Sync {
    fn footprint(&self) -> Footprint;
}

impl Health {
    /// The controller now running in this process is `controller`.
    pub fn running(&self, controller: std::sync::Weak<dyn Footprinted>) {
        *self.controller.lock().unwrap_or_else(|p| p.into_inner()) = Some(controller);
    }

    /// What the running controller keeps, if one runs.
    pub fn footprint(&self) -> Option<Footprint> {
        let controller = self
            .controller
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()?
            .upgrade()?;
        Some(controller.footprint())
    }

    /// The controller's caches are synced.
    pub fn set_ready(&self) {
        self.synced.store(true, Ordering::SeqCst);
    }

    /// This process waits for the leader lease (true), or leads (false).
    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.standby.load(Ordering::SeqCst)
            || (self.synced.load(Ordering::SeqCst) && self.lists_failing().is_empty())
    }

    /// A watch's list request failed: its cache cannot sync until one completes.
    pub fn list_failed(&self, stream: &'static str) {
        self.lists_failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stream);
    }

    /// A watch's list completed.
    pub fn list_done(&self, stream: &'static str) {
        self.lists_failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(stream);
    }

    /// The watches whose list cannot complete now.
    pub fn lists_failing(&self) -> Vec<&'static str> {
        let failing = self.lists_failing.lock().unwrap_or_else(|p| p.into_inner());
        failing.iter().copied().collect()
    }

    /// A watch stream delivered an event.
    pub fn stream_ok(&self, stream: &'static str) {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(stream);
    }

    /// A watch stream failed (it retries with backoff).
    pub fn stream_failed(&self, stream: &'static str) {
        self.stream_failed_at(stream, Instant::now());
    }

    fn stream_failed_at(&self, stream: &'static str, now: Instant) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let f = failing.entry(stream).or_insert(Failing {
            since: now,
            last: now,
        });
        // A failure long after the last one starts a new episode: the watch worked meanwhile.
        if now.duration_since(f.last) >= WATCH_RECOVERED_AFTER {
            f.since = now;
        }
        f.last = now;
    }

    /// The streams failing without a break for longer than the grace period.
    pub fn unhealthy_streams(&self) -> Vec<&'static str> {
        self.unhealthy_streams_at(Instant::now())
    }

    fn unhealthy_streams_at(&self, now: Instant) -> Vec<&'static str> {
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let mut streams: Vec<_> = failing
            .iter()
            .filter(|(_, f)| {
                now.duration_since(f.since) > WATCH_FAILURE_GRACE
                    && now.duration_since(f.last) < WATCH_RECOVERED_AFTER
            })
            .map(|(s, _)| *s)
            .collect();
        streams.sort_unstable();
        streams
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Takes the endpoints' address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves the endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Shared { metrics, health });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_handler(State(s): State<Shared>) -> impl IntoResponse {
    for resource in WATCHED_RESOURCES {
        let n = s.health.skipped.count(resource);
        s.metrics
            .undecodable_objects
            .get_or_create(&ResourceLabels { resource })
            .set(n as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// The objects skipped because they cannot be decoded, as lines to append to a health
/// answer: they do not make the process unhealthy (the others are served), but whoever
/// looks must see them.
fn skipped_lines(health: &Health) -> String {
    let lines = health.skipped.lines();
    if lines.is_empty() {
        return String::new();
    }
    let mut text = format!(
        "skipping {} object(s) that cannot be decoded (fix or delete them):\n",
        lines.len()
    );
    for line in lines {
        text.push_str(&format!("  {line}\n"));
    }
    text
}

async fn healthz(State(s): State<Shared>) -> impl IntoResponse {
    let skipped = skipped_lines(&s.health);
    match s.health.unhealthy_streams().as_slice() {
        [] => (StatusCode::OK, format!("ok\n{skipped}")),
        failing => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("watch streams failing: {}\n{skipped}", failing.join(", ")),
        ),
    }
}

async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    let skipped = skipped_lines(&s.health);
    if s.health.is_ready() {
        return (StatusCode::OK, format!("ok\n{skipped}"));
    }
    let why = match s.health.lists_failing().as_slice() {
        [] => "leading, caches not synced yet".to_string(),
        lists => format!("leading, and cannot list: {}", lists.join(", ")),
    };
    (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n{skipped}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_carry_the_documented_names() {
        let m = Metrics::default();
        m.pods_created.inc();
        m.reconciles
            .get_or_create(&ResultLabels { result: "success" })
            .inc();
        let text = m.encode();
        for name in [
            "crane_operator_reconcile_total{result=\"success\"} 1",
            "crane_operator_pods_created_total 1",
            "crane_operator_reconcile_duration_seconds_bucket",
            "crane_operator_expectations_unsatisfied 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn the_work_queue_counts_each_waiting_object_once_and_times_its_wait() {
        let m = Metrics::default();
        m.enqueued("default/a".into());
        m.enqueued("default/a".into());
        m.enqueued("default/b".into());
        assert_eq!(
            m.workqueue_depth.get(),
            2,
            "a's second trigger joins its first"
        );
        m.dequeued("default/a");
        m.dequeued("default/a"); // a requeue coming due: it waited for no trigger
        assert_eq!(m.workqueue_depth.get(), 1);
        m.forget_replicas("default", "b");
        assert_eq!(
            m.workqueue_depth.get(),
            0,
            "a deleted object does not wait forever"
        );
        let text = m.encode();
        for name in [
            "crane_operator_workqueue_depth 0",
            "crane_operator_workqueue_queue_duration_seconds_count 2",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn build_info_workers_retries_and_api_requests_exist_from_the_start() {
        let text = Metrics::default().encode();
        let build = format!(
            "crane_operator_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::GIT_COMMIT
        );
        for name in [
            build.as_str(),
            "crane_operator_active_workers 0",
            "crane_operator_reconcile_retries_total 0",
            "crane_operator_api_requests_total{verb=\"POST\",code=\"429\"} 0",
            "crane_operator_api_requests_total{verb=\"GET\",code=\"error\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn a_pass_counts_as_an_active_worker_until_it_ends() {
        let m = Metrics::default();
        let first = m.working();
        let second = m.working();
        assert_eq!(m.active_workers.get(), 2);
        drop(first);
        drop(second);
        assert_eq!(m.active_workers.get(), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_unprefixed() {
        let text = Metrics::default().encode();
        for name in [
            "process_cpu_seconds_total ",
            "process_start_time_seconds ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn per_object_gauges_are_set_and_removed_with_the_object() {
        let m = Metrics::default();
        m.set_replicas("default", "web", 3, 2);
        let text = m.encode();
        for name in [
            "crane_operator_replicas_desired{namespace=\"default\",name=\"web\"} 3",
            "crane_operator_replicas_ready{namespace=\"default\",name=\"web\"} 2",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        m.forget_replicas("default", "web");
        assert!(!m.encode().contains("name=\"web\""));
    }

    #[test]
    fn a_briefly_failing_stream_is_still_healthy() {
        let h = Health::default();
        h.stream_failed("pods");
        assert!(h.unhealthy_streams().is_empty());
        h.stream_ok("pods");
        assert!(h.unhealthy_streams().is_empty());
    }

    #[test]
    fn a_stream_failing_without_a_break_is_unhealthy_after_the_grace() {
        let h = Health::default();
        let t0 = Instant::now();
        let mut t = t0;
        while t <= t0 + WATCH_FAILURE_GRACE + Duration::from_secs(5) {
            h.stream_failed_at("crs", t);
            t += Duration::from_secs(5);
        }
        assert_eq!(h.unhealthy_streams_at(t), ["crs"]);
    }

    /// A quiet watch that failed once and resumed delivers no event to say so: it must
    /// not be reported unhealthy (and restarted by the liveness probe) two minutes later.
    #[test]
    fn one_failure_on_a_quiet_watch_is_not_unhealthy_later() {
        let h = Health::default();
        let t0 = Instant::now();
        h.stream_failed_at("pods", t0);
        let later = t0 + WATCH_FAILURE_GRACE + Duration::from_secs(1);
        assert!(h.unhealthy_streams_at(later).is_empty());
        // A new failure much later starts a new episode, not one 2 minutes old.
        h.stream_failed_at("pods", later);
        assert!(
            h.unhealthy_streams_at(later + Duration::from_secs(1))
                .is_empty()
        );
    }

    #[test]
    fn a_standby_is_ready_and_a_leader_once_its_caches_are_synced() {
        let h = Health::default();
        assert!(!h.is_ready());
        h.set_standby(true);
        assert!(h.is_ready(), "a standby must not hold up a rollout");
        h.set_standby(false);
        assert!(!h.is_ready(), "a new leader syncs its caches first");
        h.set_ready();
        assert!(h.is_ready());
    }

    #[test]
    fn a_leader_is_not_ready_while_a_list_fails() {
        let h = Health::default();
        h.set_ready();
        h.list_failed("cranereplicasets");
        assert!(
            !h.is_ready(),
            "a list that cannot complete is a cache that cannot sync"
        );
        assert_eq!(h.lists_failing(), ["cranereplicasets"]);
        h.list_done("cranereplicasets");
        assert!(h.is_ready());
    }

    #[tokio::test]
    async fn health_names_the_objects_it_skips_and_the_lists_that_fail() {
        use http_body_util::BodyExt;
        let health = Arc::new(Health::default());
        let bad = crate::decode::Undecodable {
            meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("poison".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            field: "spec.template.metadata.creationTimestamp".into(),
            error: "out of range".into(),
            pruned: None,
        };
        health.skipped.skip("cranereplicasets", &bad);
        health.set_ready();
        let shared = Shared {
            metrics: Arc::default(),
            health: health.clone(),
        };
        let text = |r: axum::response::Response| async move {
            let status = r.status();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        };
        let skipped_line = "  cranereplicasets ns/poison: spec.template.metadata.creationTimestamp: out of range\n";
        let (status, body) = text(readyz(State(shared.clone())).await.into_response()).await;
        assert_eq!(status, StatusCode::OK, "the others are served: {body}");
        assert!(body.ends_with(skipped_line), "{body}");
        let (status, body) = text(healthz(State(shared.clone())).await.into_response()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.ends_with(skipped_line), "{body}");
        let (_, body) = text(metrics_handler(State(shared.clone())).await.into_response()).await;
        assert!(
            body.contains("crane_operator_undecodable_objects{resource=\"cranereplicasets\"} 1"),
            "{body}"
        );
        health.list_failed("cranereplicasets");
        let (status, body) = text(readyz(State(shared)).await.into_response()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.starts_with("leading, and cannot list: cranereplicasets\n"),
            "{body}"
        );
    }
}
