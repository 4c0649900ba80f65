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
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::api::CraneReplicaSet;
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
        let owned = watcher::Config::default().labels(OWNER_LABEL);
        let all = watcher::Config::default();
        tokio::spawn(follow(
            Arc::downgrade(&cluster),
            WATCHES[0],
            reflector::reflector(crs_writer, watcher(api(&client, &scope), all.clone())),
        ));
        tokio::spawn(follow(
            Arc::downgrade(&cluster),
            WATCHES[1],
            reflector::reflector(pod_writer, watcher(api(&client, &scope), owned.clone())),
        ));
        tokio::spawn(follow(
            Arc::downgrade(&cluster),
            WATCHES[2],
            reflector::reflector(svc_writer, watcher(api(&client, &scope), owned)),
        ));
        tokio::spawn(follow(
            Arc::downgrade(&cluster),
            WATCHES[3],
            reflector::reflector(event_writer, watcher(api(&client, &scope), all)),
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

fn api<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match scope {
        Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        Scope::All => Api::all(client.clone()),
    }
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
    hosts: Arc<Vec<String>>,
}

/// The dashboard's routes, for `cluster`, answering to `hosts`.
pub fn router(cluster: Arc<Cluster>, hosts: Vec<String>) -> Router {
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

/// The Host names a server on `address` answers to.
pub fn allowed_hosts(address: SocketAddr) -> Vec<String> {
    let port = address.port();
    let mut hosts = vec![
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ];
    let own = match address.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]:{port}"),
        ip => format!("{ip}:{port}"),
    };
    if !address.ip().is_unspecified() && !hosts.contains(&own) {
        hosts.push(own);
    }
    hosts
}

/// Refuses requests for another host name (a DNS-rebinding page) and actions without the
/// dashboard's header or from another origin.
async fn guard(State(s): State<Shared>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !s.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            format!("this dashboard answers only to {}\n", s.hosts.join(", ")),
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

async fn restart(State(s): State<Shared>, Path((ns, name)): Path<(String, String)>) -> Response {
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
    let app = router(cluster, allowed_hosts(address));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
