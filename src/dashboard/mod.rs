//! `crane-operator dashboard`: a local web view of CraneReplicaSets, their pods, Service,
//! conditions and events, live (server-sent events), with scale, delete-pod and restart
//! done with the caller's own kubeconfig and rights (as `kubectl argo rollouts dashboard`).
//!
//! The watches are kube-runtime reflectors on the operator's own client; every change
//! wakes the open pages, which get their view re-rendered on the server.
//!
//! It serves only the one who launched it: every request carries the launch's random
//! [`Token`], in the printed URL's `?token=` or in the cookie the first page sets, as
//! Jupyter does; without it, 403.

pub mod launch;
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
use maud::html;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::api::CraneReplicaSet;
use crate::controller::{api_for, watch_config};
use crate::decode::Decoded;
use crate::service::OWNER_LABEL;
use view::{Scope, Snapshot};

/// The header every action must carry: a page of another origin cannot set it without a
/// CORS preflight, which this server never allows.
pub const ACTION_HEADER: &str = "x-crane-dashboard";
/// The query parameter of the printed URL that carries the token.
pub const TOKEN_PARAMETER: &str = "token";
/// Changes are gathered this long before the open pages are re-rendered.
const COALESCE: Duration = Duration::from_millis(50);
/// Ages on an open page are brought up to date this often without any change.
const REFRESH: Duration = Duration::from_secs(5);

/// What the watches hold, and a counter that moves on every change.
pub struct Cluster {
    client: Client,
    scope: Scope,
    // Each object decoded on its own: one the types cannot hold is shown as unreadable
    // and never fails the list of the others.
    crs: Store<Decoded<CraneReplicaSet>>,
    pods: Store<Decoded<Pod>>,
    services: Store<Decoded<Service>>,
    events: Store<Decoded<Event>>,
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
        // Like the controller's watches: the most recent state in every list, and no
        // managed fields kept (a page never shows them; they are most of a pod's size).
        let owned = watch_config().labels(OWNER_LABEL);
        let all = watch_config();
        let ns = scope.namespace();
        let weak = || Arc::downgrade(&cluster);
        tokio::spawn(follow(
            weak(),
            WATCHES[0],
            reflector::reflector(
                crs_writer,
                lean(
                    api_for::<Decoded<CraneReplicaSet>>(&client, ns),
                    all.clone(),
                ),
            ),
        ));
        tokio::spawn(follow(
            weak(),
            WATCHES[1],
            reflector::reflector(
                pod_writer,
                lean(api_for::<Decoded<Pod>>(&client, ns), owned.clone()),
            ),
        ));
        tokio::spawn(follow(
            weak(),
            WATCHES[2],
            reflector::reflector(
                svc_writer,
                lean(api_for::<Decoded<Service>>(&client, ns), owned),
            ),
        ));
        tokio::spawn(follow(
            weak(),
            WATCHES[3],
            reflector::reflector(
                event_writer,
                lean(api_for::<Decoded<Event>>(&client, ns), all),
            ),
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

/// The secret of one launch of the dashboard: 256 bits from the operating system's RNG, as
/// 64 hex digits (safe in a URL and a cookie as they are).
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn generate() -> std::io::Result<Self> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this token, in a time that does not depend on where they
    /// differ (a guesser learns nothing from how long a refusal takes).
    fn matches(&self, candidate: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(candidate.as_bytes()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// A page, readable only by its owner, that sends the browser on to the tokened URL: the
/// browser is started with its path rather than the URL, which every local user could
/// read in the process list (Jupyter's way). Removed when dropped.
#[derive(Debug)]
pub struct Redirect {
    path: std::path::PathBuf,
}

impl Redirect {
    /// Writes the page into `dir` (the user's runtime directory where there is one).
    pub fn create(dir: &std::path::Path, url: &str) -> std::io::Result<Self> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = dir.join(format!(
            "crane-dashboard-{}-{}.html",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        // A new file only (never one another user planted), mode 0600 from its creation.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let page = html! {
            (maud::DOCTYPE)
            meta charset="utf-8";
            meta http-equiv="refresh" content=(format!("0;url={url}"));
            title { "crane-operator dashboard" }
            p { a href=(url) { "Open the crane-operator dashboard" } }
        };
        file.write_all(page.into_string().as_bytes())?;
        Ok(Redirect { path })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Clone)]
struct Shared {
    cluster: Arc<Cluster>,
    /// Host header values the server answers to (DNS-rebinding protection).
    hosts: Arc<Hosts>,
    token: Token,
    /// The cookie's name holds the port: dashboards on two ports of one host share the
    /// browser's cookies for that host, and neither may overwrite the other's.
    cookie: String,
}

/// The dashboard's routes, for `cluster`, answering to `hosts`, for whoever has `token`.
pub fn router(cluster: Arc<Cluster>, hosts: Hosts, token: Token) -> Router {
    let shared = Shared {
        cluster,
        cookie: format!("crane-dashboard-{}", hosts.port),
        hosts: Arc::new(hosts),
        token,
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

/// How a request proved it comes from the one who launched the dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proof {
    /// The token in the URL: the response sets the cookie.
    Query,
    Cookie,
}

/// Whether `request` carries `s`'s token, and how.
fn proof(s: &Shared, request: &Request) -> Option<Proof> {
    let in_query = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .any(|(key, value)| key == TOKEN_PARAMETER && s.token.matches(value));
    if in_query {
        return Some(Proof::Query);
    }
    let in_cookie = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == s.cookie && s.token.matches(value));
    in_cookie.then_some(Proof::Cookie)
}

/// Refuses requests for another host name (a DNS-rebinding page), requests without the
/// launch's token, and actions without the dashboard's header or from another origin.
async fn guard(State(s): State<Shared>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if !s.hosts.allows(&host) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            format!("this dashboard answers only to {}\n", s.hosts.describe()),
        )
            .into_response();
    }
    let Some(proof) = proof(&s, &request) else {
        let message = format!(
            "this dashboard serves only the one who started it: open the URL that \
             `crane-operator dashboard` printed when it started (http://{host}/?{TOKEN_PARAMETER}=...)"
        );
        return if request.method() == axum::http::Method::GET {
            (StatusCode::FORBIDDEN, format!("{message}\n")).into_response()
        } else {
            failure(StatusCode::FORBIDDEN, &message)
        };
    };
    let headers = request.headers();
    if request.method() != axum::http::Method::GET {
        let same_origin = headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .is_none_or(|o| o.strip_prefix("http://") == Some(host.as_str()));
        if !headers.contains_key(ACTION_HEADER) || !same_origin {
            return failure(
                StatusCode::FORBIDDEN,
                "actions come only from the dashboard's own page",
            );
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // The URL holds the token: no link followed from the page may send it on.
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    if proof == Proof::Query {
        let cookie = format!(
            "{}={}; HttpOnly; SameSite=Strict; Path=/",
            s.cookie,
            s.token.as_str()
        );
        if let Ok(cookie) = header::HeaderValue::from_str(&cookie) {
            headers.insert(header::SET_COOKIE, cookie);
        }
    }
    response
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

/// Restarts `name` through [`crate::restart`]: a refusal, or an object that kept changing,
/// is a 409 with the reason.
async fn restart(State(s): State<Shared>, Path((ns, name)): Path<(String, String)>) -> Response {
    let api: Api<CraneReplicaSet> = Api::namespaced(s.cluster.client.clone(), &ns);
    match crate::restart::restart(&api, &name).await {
        Ok(_) => done(format!(
            "{name} restarting: its pods are replaced a few at a time"
        )),
        Err(crate::restart::Error::Api(e)) => api_failure(e),
        Err(refused) => failure(StatusCode::CONFLICT, &refused.to_string()),
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

/// Serves the dashboard, to whoever has `token`, until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cluster: Arc<Cluster>,
    token: Token,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    let app = router(cluster, Hosts::for_address(address), token);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::UpdateStrategyType;
    use axum::body::Body;
    use http::{HeaderMap, Method};
    use tower::ServiceExt as _;
    use tower_test::mock;

    type ApiHandle =
        mock::Handle<http::Request<kube::client::Body>, http::Response<kube::client::Body>>;
    /// What the scripted API server was asked: method, path and JSON body.
    type Seen = tokio::sync::mpsc::UnboundedReceiver<(Method, String, serde_json::Value)>;

    const HOST: &str = "127.0.0.1:8001";
    const COOKIE: &str = "crane-dashboard-8001";

    /// A dashboard on 127.0.0.1:8001 whose cache holds `cached`, on a scripted API server.
    fn dashboard(cached: &[CraneReplicaSet]) -> (Router, Token, ApiHandle) {
        let (service, handle) = mock::pair();
        let (crs, mut writer) = reflector::store();
        for c in cached {
            writer.apply_watcher_event(&watcher::Event::Apply(Decoded::Ok(c.clone())));
        }
        let cluster = Arc::new(Cluster {
            client: Client::new(service, "default"),
            scope: Scope::Namespace("default".into()),
            crs,
            pods: reflector::store().0,
            services: reflector::store().0,
            events: reflector::store().0,
            changes: watch::channel(0).0,
            errors: Mutex::new(BTreeMap::new()),
            synced: Mutex::new(WATCHES.to_vec()),
        });
        let token = Token::generate().expect("a token");
        let hosts = Hosts::for_address(HOST.parse().unwrap());
        (router(cluster, hosts, token.clone()), token, handle)
    }

    /// Answers the API requests in turn with `answers` (status and JSON body), and reports
    /// each request.
    fn scripted(mut api: ApiHandle, answers: Vec<(u16, serde_json::Value)>) -> Seen {
        use http_body_util::BodyExt as _;
        let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            while let Some((request, send)) = api.next_request().await {
                let (method, path) = (request.method().clone(), request.uri().path().to_string());
                let bytes = request.into_body().collect().await.unwrap().to_bytes();
                let body = serde_json::from_slice(&bytes).unwrap_or_default();
                let _ = tx.send((method, path, body));
                let Some((status, answer)) = answers.next() else {
                    // Unscripted: the dashboard gets an error, the test what was asked.
                    continue;
                };
                let response = http::Response::builder()
                    .status(status)
                    .body(kube::client::Body::from(answer.to_string().into_bytes()))
                    .unwrap();
                send.send_response(response);
            }
        });
        seen
    }

    /// Every request the API server got once the dashboard is gone.
    async fn all_seen(app: Router, mut seen: Seen) -> Vec<(Method, String, serde_json::Value)> {
        drop(app);
        let mut all = Vec::new();
        while let Some(request) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .expect("the scripted API server stops when the dashboard is gone")
        {
            all.push(request);
        }
        all
    }

    fn get(path: &str) -> http::Request<Body> {
        http::Request::get(path)
            .header(header::HOST, HOST)
            .body(Body::empty())
            .unwrap()
    }

    fn with_cookie(mut request: http::Request<Body>, cookie: &str) -> http::Request<Body> {
        request
            .headers_mut()
            .insert(header::COOKIE, cookie.parse().unwrap());
        request
    }

    /// An action as the page sends it, header and origin included.
    fn action(path: &str, body: serde_json::Value) -> http::Request<Body> {
        http::Request::post(path)
            .header(header::HOST, HOST)
            .header(header::ORIGIN, format!("http://{HOST}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(ACTION_HEADER, "1")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    async fn send(app: &Router, request: http::Request<Body>) -> (StatusCode, HeaderMap, String) {
        let response = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(request))
            .await
            .expect("the dashboard answers within 10 s")
            .expect("an answer");
        let (parts, body) = response.into_parts();
        // An event stream never ends: its first bytes are enough.
        let text = if parts.headers.get(header::CONTENT_TYPE)
            == Some(&header::HeaderValue::from_static("text/event-stream"))
        {
            String::new()
        } else {
            let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("a body");
            String::from_utf8_lossy(&bytes).into_owned()
        };
        (parts.status, parts.headers, text)
    }

    fn refused_with_the_way_in(status: StatusCode, body: &str) {
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(
            body.contains("open the URL that `crane-operator dashboard` printed")
                && body.contains("http://127.0.0.1:8001/?token=..."),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_request_without_the_token_is_refused_and_told_how_to_get_in() {
        let (app, _token, _api) = dashboard(&[]);
        for path in [
            "/",
            "/crs/default/crane",
            "/live/overview",
            "/assets/app.js",
        ] {
            let (status, headers, body) = send(&app, get(path)).await;
            refused_with_the_way_in(status, &body);
            assert!(!headers.contains_key(header::SET_COOKIE), "{path}");
        }
    }

    #[tokio::test]
    async fn a_wrong_token_is_refused_in_the_url_and_in_the_cookie() {
        let (app, token, _api) = dashboard(&[]);
        let other = Token::generate().unwrap();
        let mut near = token.as_str().to_string();
        let last = if near.ends_with('0') { "1" } else { "0" };
        near.replace_range(near.len() - 1.., last);
        let prefix = &token.as_str()[..32];
        for wrong in [other.as_str(), near.as_str(), prefix, ""] {
            let (status, _, body) = send(&app, get(&format!("/?token={wrong}"))).await;
            refused_with_the_way_in(status, &body);
            let cookie = format!("{COOKIE}={wrong}");
            let (status, _, body) = send(&app, with_cookie(get("/"), &cookie)).await;
            refused_with_the_way_in(status, &body);
        }
        // The right token under another port's cookie name is another dashboard's.
        let elsewhere = format!("crane-dashboard-9000={}", token.as_str());
        let (status, _, body) = send(&app, with_cookie(get("/"), &elsewhere)).await;
        refused_with_the_way_in(status, &body);
    }

    #[tokio::test]
    async fn the_printed_url_opens_the_page_and_sets_the_cookie() {
        let (app, token, _api) = dashboard(&[]);
        let (status, headers, body) = send(&app, get(&format!("/?token={}", token.as_str()))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("<h1>CraneReplicaSets</h1>"), "{body}");
        assert_eq!(
            headers
                .get(header::SET_COOKIE)
                .and_then(|c| c.to_str().ok()),
            Some(
                format!(
                    "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
                    token.as_str()
                )
                .as_str()
            )
        );
        assert_eq!(
            headers
                .get(header::REFERRER_POLICY)
                .and_then(|c| c.to_str().ok()),
            Some("no-referrer"),
            "a link followed from the page would send the token on"
        );
    }

    #[tokio::test]
    async fn the_cookie_alone_lets_in_the_pages_their_stream_and_their_actions() {
        let (app, token, api) = dashboard(&[]);
        let seen = scripted(
            api,
            vec![(200, json!({"kind": "Status", "status": "Success"}))],
        );
        let cookie = format!("theme=dark; {COOKIE}={}", token.as_str());
        for path in [
            "/",
            "/crs/default/crane",
            "/assets/app.js",
            "/live/overview",
        ] {
            let (status, headers, body) = send(&app, with_cookie(get(path), &cookie)).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            assert!(!headers.contains_key(header::SET_COOKIE), "{path}");
        }
        let delete = action(
            "/api/namespaces/default/pods/crane-abcde/delete",
            json!({"uid": "pod-uid"}),
        );
        let (status, _, body) = send(&app, with_cookie(delete, &cookie)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let sent = all_seen(app, seen).await;
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(
            (&sent[0].0, sent[0].1.as_str()),
            (
                &Method::DELETE,
                "/api/v1/namespaces/default/pods/crane-abcde"
            )
        );
    }

    #[tokio::test]
    async fn an_action_without_the_token_reaches_nothing() {
        let (app, _token, api) = dashboard(&[crate::api::fixtures::crane(1)]);
        // Any request would be seen, then fail (no answer is scripted).
        let seen = scripted(api, vec![]);
        let actions = [
            ("/api/namespaces/default/pods/crane-abcde/delete", json!({})),
            (
                "/api/namespaces/default/cranereplicasets/crane/scale",
                json!({"replicas": 0}),
            ),
            (
                "/api/namespaces/default/cranereplicasets/crane/restart",
                json!({}),
            ),
        ];
        for (path, body) in actions {
            // The page's constant header and origin, as any local process can send them.
            let (status, headers, answer) = send(&app, action(path, body)).await;
            refused_with_the_way_in(status, &answer);
            assert_eq!(
                headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|c| c.to_str().ok()),
                Some("application/json"),
                "the page shows an action's error from its JSON"
            );
        }
        let sent = all_seen(app, seen).await;
        assert!(sent.is_empty(), "requests reached the API server: {sent:?}");
    }

    /// The fixture as the API server has it, with `strategy`, at `resource_version`.
    fn stored(strategy: UpdateStrategyType, resource_version: &str) -> CraneReplicaSet {
        let mut crs = crate::api::fixtures::crane(1);
        crs.spec.update_strategy.type_ = strategy;
        crs.metadata.resource_version = Some(resource_version.into());
        crs
    }

    fn restart_request(token: &Token) -> http::Request<Body> {
        action(
            &format!(
                "/api/namespaces/default/cranereplicasets/crane/restart?token={}",
                token.as_str()
            ),
            json!({}),
        )
    }

    #[tokio::test]
    async fn a_restart_is_refused_when_the_object_turned_on_delete_after_the_cache_saw_it() {
        let (app, token, api) = dashboard(&[stored(UpdateStrategyType::RollingUpdate, "1")]);
        let now = serde_json::to_value(stored(UpdateStrategyType::OnDelete, "2")).unwrap();
        let seen = scripted(api, vec![(200, now)]);
        let (status, _, body) = send(&app, restart_request(&token)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body.contains("crane has updateStrategy OnDelete"), "{body}");
        let sent = all_seen(app, seen).await;
        let methods: Vec<&Method> = sent.iter().map(|(m, _, _)| m).collect();
        assert_eq!(methods, [&Method::GET], "{sent:?}");
    }

    #[tokio::test]
    async fn a_restart_is_done_when_the_object_turned_rolling_update_after_the_cache_saw_it() {
        let (app, token, api) = dashboard(&[stored(UpdateStrategyType::OnDelete, "1")]);
        let now = serde_json::to_value(stored(UpdateStrategyType::RollingUpdate, "2")).unwrap();
        let seen = scripted(api, vec![(200, now.clone()), (200, now)]);
        let (status, _, body) = send(&app, restart_request(&token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let sent = all_seen(app, seen).await;
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[0].0, Method::GET);
        let (method, path, patch) = &sent[1];
        assert_eq!(
            (method, path.as_str()),
            (
                &Method::PATCH,
                "/apis/crane.dev/v1/namespaces/default/cranereplicasets/crane"
            )
        );
        assert_eq!(patch["metadata"]["resourceVersion"], "2", "{patch:#}");
        assert!(
            patch["spec"]["template"]["metadata"]["annotations"][crate::restart::RESTARTED_AT]
                .is_string(),
            "{patch:#}"
        );
    }

    #[tokio::test]
    async fn a_restart_that_meets_a_changed_object_decides_again_on_the_new_one() {
        let (app, token, api) = dashboard(&[stored(UpdateStrategyType::RollingUpdate, "1")]);
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Conflict", "code": 409, "message": "the object has been modified"});
        let seen = scripted(
            api,
            vec![
                (
                    200,
                    serde_json::to_value(stored(UpdateStrategyType::RollingUpdate, "1")).unwrap(),
                ),
                (409, conflict),
                (
                    200,
                    serde_json::to_value(stored(UpdateStrategyType::OnDelete, "2")).unwrap(),
                ),
            ],
        );
        let (status, _, body) = send(&app, restart_request(&token)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body.contains("crane has updateStrategy OnDelete"), "{body}");
        let sent = all_seen(app, seen).await;
        let methods: Vec<&Method> = sent.iter().map(|(m, _, _)| m).collect();
        assert_eq!(
            methods,
            [&Method::GET, &Method::PATCH, &Method::GET],
            "{sent:?}"
        );
        assert_eq!(sent[1].2["metadata"]["resourceVersion"], "1");
    }

    /// An API server whose lists hold `crs` and nothing else, and whose watches never
    /// send anything.
    fn listing(mut api: ApiHandle, crs: Vec<serde_json::Value>) {
        tokio::spawn(async move {
            let mut watches = Vec::new();
            while let Some((request, send)) = api.next_request().await {
                if request
                    .uri()
                    .query()
                    .unwrap_or_default()
                    .contains("watch=true")
                {
                    watches.push(send);
                    continue;
                }
                let path = request.uri().path();
                let items = if path.ends_with("/cranereplicasets") {
                    crs.clone()
                } else {
                    vec![]
                };
                let list = json!({"apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": "7"}, "items": items});
                let response = http::Response::builder()
                    .status(200)
                    .body(kube::client::Body::from(list.to_string().into_bytes()))
                    .unwrap();
                send.send_response(response);
            }
        });
    }

    #[tokio::test]
    async fn one_undecodable_crane_replica_set_is_listed_as_unreadable_beside_the_others() {
        let (service, api) = mock::pair();
        let object = |name: &str| {
            let mut crs = serde_json::to_value(crate::api::fixtures::crane(2)).unwrap();
            crs["metadata"]["name"] = json!(name);
            crs["metadata"]["uid"] = json!(format!("uid-{name}"));
            crs
        };
        // A year the API server stores and the Rust types cannot hold.
        let mut poison = object("poison");
        poison["spec"]["template"]["metadata"]["creationTimestamp"] = json!("9999-12-31T23:59:59Z");
        listing(api, vec![poison, object("alive")]);
        let cluster = Cluster::start(
            Client::new(service, "default"),
            Scope::Namespace("default".into()),
        );
        let mut changes = cluster.changes.subscribe();
        let listed =
            |s: &Snapshot| !s.loading.contains(&"cranereplicasets") || !s.errors.is_empty();
        let snapshot = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let snapshot = cluster.snapshot();
                if listed(&snapshot) {
                    return snapshot;
                }
                changes.changed().await.expect("the dashboard is there");
            }
        })
        .await
        .expect("the CraneReplicaSets are listed, or their watch fails, within 10 s");
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        let html = view::text(view::overview(&snapshot));
        assert!(html.contains(r#"<tr data-name="alive""#), "{html}");
        assert!(
            html.contains(r#"<tr class="unreadable" data-name="poison""#),
            "{html}"
        );
        assert!(
            html.contains("spec.template.metadata.creationTimestamp"),
            "the row says which field cannot be read: {html}"
        );
    }

    #[test]
    fn tokens_are_256_random_bits_in_hex() {
        let (a, b) = (Token::generate().unwrap(), Token::generate().unwrap());
        assert_eq!(a.as_str().len(), 64);
        assert!(
            a.as_str().bytes().all(|c| c.is_ascii_hexdigit()),
            "{}",
            a.as_str()
        );
        assert_ne!(a.as_str(), b.as_str());
        assert!(a.matches(a.as_str()) && !a.matches(b.as_str()));
        assert_eq!(format!("{a:?}"), "Token(..)", "a log line must not show it");
    }

    #[test]
    fn the_browser_is_sent_on_by_a_page_only_its_owner_can_read() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir();
        let url = "http://127.0.0.1:8001/?token=0123abcd";
        let redirect = Redirect::create(&dir, url).expect("the page is written");
        let path = redirect.path().to_path_buf();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let page = std::fs::read_to_string(&path).unwrap();
        assert!(
            page.contains(&format!(r#"content="0;url={url}""#)),
            "{page}"
        );
        drop(redirect);
        assert!(!path.exists(), "the page outlives the dashboard");
    }

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
}
