//! `crane-operator dashboard`: a local web view of CraneReplicaSets, their pods, Service,
//! conditions and events, live (server-sent events), with scale, delete-pod and restart
//! done with the caller's own kubeconfig and rights (as `kubectl argo rollouts dashboard`).
//!
//! The watches are kube-runtime reflectors on the operator's own client; every change
//! wakes the open pages, which get their view re-rendered on the server.

pub mod view;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::api::{CraneReplicaSet, UpdateStrategyType};
use crate::controller::api_for;
use crate::service::OWNER_LABEL;
use view::{Scope, Snapshot};

/// The header every action must carry: a page of another origin cannot set it without a
/// CORS preflight, which this server never allows.
pub const ACTION_HEADER: &str = "x-crane-dashboard";
/// kubectl rollout restart's annotation, set on the pod template.
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// Changes are gathered this long before the open pages are re-rendered.
const COALESCE: Duration = Duration::from_millis(50);
/// Ages on an open page are brought up to date this often without any change.
const REFRESH: Duration = Duration::from_secs(5);

/// What the watches hold, and a counter that moves on every change.
pub struct Cluster {
    client: Client,
    scope: Scope,
    crs: Store<CraneReplicaSet>,
    pods: Store<Pod>,
    services: Store<Service>,
    events: Store<Event>,
    changes: watch::Sender<u64>,
    /// Watches failing now, by name, with the error.
    errors: Mutex<BTreeMap<&'static str, String>>,
    /// Watches whose first list has arrived.
    synced: Mutex<Vec<&'static str>>,
}

const WATCHES: [&str; 4] = ["cranereplicasets", "pods", "services", "events"];

impl Cluster {
    /// Starts the watches of `scope`; they run as long as the returned value lives.
    pub fn start(client: Client, scope: Scope) -> Arc<Self> {
        let (crs_store, crs_writer) = reflector::store();
        let (pod_store, pod_writer) = reflector::store();
        let (svc_store, svc_writer) = reflector::store();
        let (event_store, event_writer) = reflector::store();
        let cluster = Arc::new(Self {
            client: client.clone(),
            scope: scope.clone(),
            crs: crs_store,
            pods: pod_store,
            services: svc_store,
            events: event_store,
            changes: watch::channel(0).0,
            errors: Mutex::new(BTreeMap::new()),
            synced: Mutex::new(Vec::new()),
        });
        // Only the objects the operator labels: the pods it created or adopted, its Services.
        // Like the controller's watches: any resourceVersion for the lists, and no managed
        // fields kept (a page never shows them; they are most of a pod's size).
        let owned = watcher::Config::default()
            .labels(OWNER_LABEL)
            .any_semantic();
        let all = watcher::Config::default().any_semantic();
        let ns = scope.namespace();
        let weak = || Arc::downgrade(&cluster);
        tokio::spawn(follow(
            weak(),
            WATCHES[0],
            reflector::reflector(crs_writer, lean(api_for(&client, ns), all.clone())),
        ));
        tokio::spawn(follow(
            weak(),
            WATCHES[1],
            reflector::reflector(pod_writer, lean(api_for(&client, ns), owned.clone())),
        ));
        tokio::spawn(follow(
            weak(),
            WATCHES[2],
            reflector::reflector(svc_writer, lean(api_for(&client, ns), owned)),
        ));
        tokio::spawn(follow(
            weak(),
            WATCHES[3],
            reflector::reflector(event_writer, lean(api_for(&client, ns), all)),
        ));
        cluster
    }

    pub fn snapshot(&self) -> Snapshot {
        let synced = self.synced.lock().unwrap().clone();
        Snapshot {
            scope: self.scope.clone(),
            crs: self.crs.state(),
            pods: self.pods.state(),
            services: self.services.state(),
            events: self.events.state(),
            errors: self
                .errors
                .lock()
                .unwrap()
                .iter()
                .map(|(watch, e)| format!("{watch}: {e}"))
                .collect(),
            loading: WATCHES
                .into_iter()
                .filter(|w| !synced.contains(w))
                .collect(),
            now: jiff::Timestamp::now(),
        }
    }

    /// Records what a watch delivered: `Ok(true)` its first (re)list is complete.
    fn note(&self, watch: &'static str, outcome: Result<bool, String>) {
        match outcome {
            Ok(listed) => {
                self.errors.lock().unwrap().remove(watch);
                if listed {
                    let mut synced = self.synced.lock().unwrap();
                    if !synced.contains(&watch) {
                        synced.push(watch);
                    }
                }
            }
            Err(e) => {
                self.errors.lock().unwrap().insert(watch, e);
            }
        }
        self.changes.send_modify(|n| *n += 1);
    }
}

/// A watch of `api` whose objects are kept without their managed fields.
fn lean<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, config).modify(|o| o.meta_mut().managed_fields = None)
}

/// Drives one reflector until the dashboard is gone; a failing watch is retried with the
/// controller's backoff and said on the page meanwhile.
async fn follow<K>(
    cluster: std::sync::Weak<Cluster>,
    name: &'static str,
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
) {
    let mut stream = std::pin::pin!(stream.backoff(crate::controller::watch_backoff()));
    while let Some(item) = stream.next().await {
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let outcome = match &item {
            Ok(event) => Ok(matches!(event, watcher::Event::InitDone)),
            Err(e) => Err(explain(e)),
        };
        cluster.note(name, outcome);
    }
}

/// A watch error as the user can act on it.
fn explain(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => {
            format!("{} ({})", s.message, s.reason)
        }
        other => other.to_string(),
    }
}

#[derive(Clone)]
struct Shared {
    cluster: Arc<Cluster>,
    /// Host header values the server answers to (DNS-rebinding protection).
    hosts: Arc<Hosts>,
}

/// The dashboard's routes, for `cluster`, answering to `hosts`.
pub fn router(cluster: Arc<Cluster>, hosts: Hosts) -> Router {
    let shared = Shared {
        cluster,
        hosts: Arc::new(hosts),
    };
    Router::new()
        .route("/", get(overview_page))
        .route("/crs/{ns}/{name}", get(detail_page))
        .route("/live/overview", get(live_overview))
        .route("/live/crs/{ns}/{name}", get(live_detail))
        .route("/assets/style.css", get(style))
        .route("/assets/app.js", get(script))
        .route(
            "/api/namespaces/{ns}/cranereplicasets/{name}/scale",
            post(scale),
        )
        .route(
            "/api/namespaces/{ns}/cranereplicasets/{name}/restart",
            post(restart),
        )
        .route("/api/namespaces/{ns}/pods/{name}/delete", post(delete_pod))
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// The Host header values a server on one address answers to (DNS-rebinding protection):
/// the loopback names and its own address; on an unspecified address (`0.0.0.0`, `::`),
/// any IP address too: a browser sends one only when it reached the server by that
/// address, and no DNS name of another site can stand for it.
#[derive(Clone, Debug)]
pub struct Hosts {
    names: Vec<String>,
    port: u16,
    any_ip: bool,
}

impl Hosts {
    pub fn for_address(address: SocketAddr) -> Self {
        let port = address.port();
        let mut names = vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ];
        let any_ip = address.ip().is_unspecified();
        let own = address.to_string();
        if !any_ip && !names.contains(&own) {
            names.push(own);
        }
        Hosts {
            names,
            port,
            any_ip,
        }
    }

    fn allows(&self, host: &str) -> bool {
        self.names.iter().any(|h| h.eq_ignore_ascii_case(host))
            || (self.any_ip
                && host
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| a.port() == self.port))
    }

    fn describe(&self) -> String {
        let names = self.names.join(", ");
        if self.any_ip {
            format!(
                "{names} and this machine's IP addresses on port {}",
                self.port
            )
        } else {
            names
        }
    }
}

/// Refuses requests for another host name (a DNS-rebinding page) and actions without the
/// dashboard's header or from another origin.
async fn guard(State(s): State<Shared>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !s.hosts.allows(host) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            format!("this dashboard answers only to {}\n", s.hosts.describe()),
        )
            .into_response();
    }
    if request.method() != axum::http::Method::GET {
        let same_origin = headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .is_none_or(|o| o.strip_prefix("http://") == Some(host));
        if !headers.contains_key(ACTION_HEADER) || !same_origin {
            return failure(
                StatusCode::FORBIDDEN,
                "actions come only from the dashboard's own page",
            );
        }
    }
    next.run(request).await
}

async fn overview_page(State(s): State<Shared>) -> Html<String> {
    let snapshot = s.cluster.snapshot();
    Html(
        view::page(
            "CraneReplicaSets",
            &snapshot.scope,
            "/live/overview",
            view::overview(&snapshot),
        )
        .into_string(),
    )
}

async fn detail_page(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Html<String> {
    let snapshot = s.cluster.snapshot();
    let live = format!("/live/crs/{ns}/{name}");
    Html(
        view::page(
            &name,
            &snapshot.scope,
            &live,
            view::detail(&snapshot, &ns, &name),
        )
        .into_string(),
    )
}

async fn live_overview(State(s): State<Shared>) -> impl IntoResponse {
    live(s.cluster, |snapshot| view::overview(snapshot).into_string())
}

async fn live_detail(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> impl IntoResponse {
    live(s.cluster, move |snapshot| {
        view::detail(snapshot, &ns, &name).into_string()
    })
}

/// The view, re-rendered after every change (gathered for [`COALESCE`]) and every
/// [`REFRESH`], sent when it differs from what the page shows. The first message is the
/// view as of now: a page that reconnects catches up at once.
fn live(
    cluster: Arc<Cluster>,
    render: impl Fn(&Snapshot) -> String + Send + 'static,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let changes = cluster.changes.subscribe();
    let state = (cluster, changes, render, None::<String>);
    let stream =
        futures::stream::unfold(state, |(cluster, mut changes, render, last)| async move {
            loop {
                if last.is_some() {
                    tokio::select! {
                        changed = changes.changed() => {
                            changed.ok()?;
                            tokio::time::sleep(COALESCE).await;
                        }
                        () = tokio::time::sleep(REFRESH) => {}
                    }
                }
                changes.borrow_and_update();
                let html = render(&cluster.snapshot());
                if last.as_ref() != Some(&html) {
                    let event = SseEvent::default().event("view").data(&html);
                    return Some((Ok(event), (cluster, changes, render, Some(html))));
                }
            }
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        view::STYLE,
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        view::SCRIPT,
    )
}

fn failure(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// An API error as the page shows it: the API server's status and message, so that a 403
/// reads "forbidden: User ... cannot patch resource ...".
fn api_failure(e: kube::Error) -> Response {
    match e {
        kube::Error::Api(s) => failure(
            StatusCode::from_u16(s.code).unwrap_or(StatusCode::BAD_GATEWAY),
            &s.message,
        ),
        other => failure(StatusCode::BAD_GATEWAY, &other.to_string()),
    }
}

fn done(message: String) -> Response {
    (StatusCode::OK, axum::Json(json!({ "message": message }))).into_response()
}

#[derive(Deserialize)]
struct ScaleRequest {
    replicas: i32,
}

async fn scale(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    axum::Json(body): axum::Json<ScaleRequest>,
) -> Response {
    if body.replicas < 0 {
        return failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "replicas must be 0 or more",
        );
    }
    let api: Api<CraneReplicaSet> = Api::namespaced(s.cluster.client.clone(), &ns);
    let patch = Patch::Merge(json!({ "spec": { "replicas": body.replicas } }));
    match api
        .patch_scale(&name, &PatchParams::default(), &patch)
        .await
    {
        Ok(_) => done(format!("{name} scaled to {}", body.replicas)),
        Err(e) => api_failure(e),
    }
}

/// Why a restart of `crs` is refused: only a RollingUpdate object replaces its pods when
/// its template changes (the page disables its button with this reason; a request from
/// elsewhere gets it as a 409).
fn restart_refused(crs: &CraneReplicaSet) -> Option<String> {
    (crs.spec.update_strategy.type_ != UpdateStrategyType::RollingUpdate).then(|| {
        format!(
            "{} has updateStrategy OnDelete: a restart would replace no pod (delete its pods instead)",
            crs.name_any()
        )
    })
}

async fn restart(State(s): State<Shared>, Path((ns, name)): Path<(String, String)>) -> Response {
    let shown = s
        .cluster
        .crs
        .get(&ObjectRef::<CraneReplicaSet>::new(&name).within(&ns));
    if let Some(refused) = shown.as_deref().and_then(restart_refused) {
        return failure(StatusCode::CONFLICT, &refused);
    }
    let api: Api<CraneReplicaSet> = Api::namespaced(s.cluster.client.clone(), &ns);
    let now = jiff::Timestamp::now().to_string();
    let patch = Patch::Merge(json!({
        "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT: now } } } }
    }));
    match api.patch(&name, &PatchParams::default(), &patch).await {
        Ok(_) => done(format!(
            "{name} restarting: its pods are replaced a few at a time"
        )),
        Err(e) => api_failure(e),
    }
}

#[derive(Deserialize)]
struct DeletePodRequest {
    /// The pod shown on the page: a pod of the same name created since is not deleted.
    uid: Option<String>,
}

async fn delete_pod(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    axum::Json(body): axum::Json<DeletePodRequest>,
) -> Response {
    let api: Api<Pod> = Api::namespaced(s.cluster.client.clone(), &ns);
    let params = DeleteParams {
        preconditions: body.uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => done(format!("pod {name} deleted: watch its replacement appear")),
        Err(e) => api_failure(e),
    }
}

/// Serves the dashboard until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cluster: Arc<Cluster>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    let app = router(cluster, Hosts::for_address(address));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_dashboard_answers_only_to_loopback_names() {
        let hosts = Hosts::for_address("127.0.0.1:8001".parse().unwrap());
        for host in [
            "127.0.0.1:8001",
            "localhost:8001",
            "LOCALHOST:8001",
            "[::1]:8001",
        ] {
            assert!(hosts.allows(host), "{host}");
        }
        for host in ["evil.example:8001", "10.0.0.7:8001", "127.0.0.1:9000", ""] {
            assert!(!hosts.allows(host), "{host}");
        }
    }

    #[test]
    fn a_dashboard_on_every_address_answers_to_ip_addresses_but_no_other_name() {
        let hosts = Hosts::for_address("0.0.0.0:8001".parse().unwrap());
        for host in ["10.0.0.7:8001", "[fd00::7]:8001", "localhost:8001"] {
            assert!(hosts.allows(host), "{host}");
        }
        // A DNS name can point anywhere (DNS rebinding); another port is another server.
        for host in ["evil.example:8001", "10.0.0.7:9000", "10.0.0.7"] {
            assert!(!hosts.allows(host), "{host}");
        }
        let own = Hosts::for_address("[fd00::7]:8001".parse().unwrap());
        assert!(own.allows("[fd00::7]:8001"));
        assert!(!own.allows("10.0.0.7:8001"), "only its own address");
    }

    #[test]
    fn only_a_rolling_update_object_is_restarted() {
        let object = |strategy| {
            let mut crs = crate::api::fixtures::crane(1);
            crs.spec.update_strategy.type_ = strategy;
            crs
        };
        assert_eq!(
            restart_refused(&object(UpdateStrategyType::RollingUpdate)),
            None
        );
        let refused = restart_refused(&object(UpdateStrategyType::OnDelete)).expect("refused");
        assert!(
            refused.contains("crane has updateStrategy OnDelete"),
            "{refused}"
        );
    }
}
