//! A stateful kube-apiserver in memory, behind `kube::Client` as a tower `Service`: the
//! resources the operator uses (CraneReplicaSets with their status subresource, pods,
//! Services, events.k8s.io Events, Leases), resourceVersions, consistent and stale lists,
//! watches with bookmarks, timeouts and 410 Gone, `generateName`, UID and resourceVersion
//! preconditions, JSON merge patch, the strategic-merge and server-side-apply subsets the
//! operator sends; and a fault injector that answers errors before or after storing, drops
//! connections, delays answers and watch events (each watch on its own schedule: streams
//! are reordered against each other, never within one).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use crane_operator::clock::{self, Instant};
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tower::{BoxError, Service};

use crate::rng::Rng;

pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Who sent a request: the world (0) or an operator process (1, 2, ...).
pub type ClientId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Crs,
    Pod,
    Service,
    Event,
    Lease,
}

impl Kind {
    fn of(prefix: &str, resource: &str) -> Option<Kind> {
        Some(match (prefix, resource) {
            ("apis/crane.dev/v1", "cranereplicasets") => Kind::Crs,
            ("api/v1", "pods") => Kind::Pod,
            ("api/v1", "services") => Kind::Service,
            ("apis/events.k8s.io/v1", "events") => Kind::Event,
            ("apis/coordination.k8s.io/v1", "leases") => Kind::Lease,
            _ => return None,
        })
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Crs => "crane.dev/v1",
            Kind::Pod | Kind::Service => "v1",
            Kind::Event => "events.k8s.io/v1",
            Kind::Lease => "coordination.k8s.io/v1",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Kind::Crs => "CraneReplicaSet",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::Event => "Event",
            Kind::Lease => "Lease",
        }
    }

    /// Watched kinds keep a history (for watches and stale lists); events and Leases,
    /// which nobody watches, do not.
    fn logged(self) -> bool {
        matches!(self, Kind::Crs | Kind::Pod | Kind::Service)
    }
}

/// One committed change.
#[derive(Clone, Debug)]
pub struct Entry {
    pub rv: u64,
    pub kind: Kind,
    pub ns: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub at: Instant,
}

/// How often each fault happens while faults are on (probabilities per request or per
/// watch event).
#[derive(Clone, Debug)]
pub struct FaultRates {
    /// A request answered with an error without being carried out.
    pub refuse: f64,
    /// A write carried out whose answer is an error or a dropped connection.
    pub lose_answer: f64,
    /// A request delayed by up to a few seconds (before it is carried out, and after).
    pub slow: f64,
    /// A watch that ends (with an error or cleanly) after an event.
    pub watch_break: f64,
    /// A list allowed to be served from a cache (`resourceVersion=0`) that is served stale.
    pub stale_list: f64,
    /// The most a watch event is held back.
    pub watch_delay: Duration,
}

impl FaultRates {
    pub fn none() -> Self {
        Self {
            refuse: 0.0,
            lose_answer: 0.0,
            slow: 0.0,
            watch_break: 0.0,
            stale_list: 0.0,
            watch_delay: Duration::ZERO,
        }
    }
}

/// Counts for the summary and the steady-state check.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub requests: u64,
    pub faults: u64,
    /// Writes by each operator process, Leases left out.
    pub writes: HashMap<ClientId, u64>,
    pub writes_by_kind: BTreeMap<String, u64>,
}

/// A CraneReplicaSet's spec as the overshoot check reads it: until `to` it asked
/// for `replicas` pods, `surge` more during a rollout.
#[derive(Clone, Debug)]
struct Asked {
    to: Option<Instant>,
    bound: i64,
}

pub struct State {
    pub rv: u64,
    pub objects: BTreeMap<(Kind, String, String), Value>,
    pub log: Vec<Entry>,
    /// Watches from before this resourceVersion are answered 410 Gone.
    pub compacted: u64,
    pub rng: Rng,
    pub faults_on: bool,
    pub rates: FaultRates,
    pub stats: Stats,
    pub violations: Vec<String>,
    pub trace: VecDeque<String>,
    /// Pods a namespace may hold (a ResourceQuota), where one is set.
    pub quota: HashMap<String, usize>,
    /// Lease requests of these clients stall until then (a leader that cannot renew).
    pub slow_leases: HashMap<ClientId, Instant>,
    /// Every watch event delivered goes into the trace too (a replay).
    pub verbose: bool,
    asked: HashMap<String, Vec<Asked>>,
    uids: u64,
    ips: u32,
    /// Requests answered, for the trace of a failing seed.
    pub started: Instant,
}

/// How long a create may act on a spec it saw (see [`State::overshoot`]).
pub const SPEC_WINDOW: Duration = Duration::from_secs(60);

impl State {
    pub fn trace(&mut self, line: String) {
        let t = self.started.elapsed().as_secs_f64();
        if self.trace.len() >= 5000 {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{t:9.3}s {line}"));
    }

    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(kind, ns.to_string(), name.to_string()))
    }

    pub fn all(&self, kind: Kind) -> impl Iterator<Item = &Value> {
        self.objects
            .range((kind, String::new(), String::new())..)
            .take_while(move |((k, _, _), _)| *k == kind)
            .map(|(_, v)| v)
    }

    fn uid(&mut self) -> String {
        self.uids += 1;
        format!("uid-{:06}", self.uids)
    }

    /// Stores `after` (or removes the object), with a new resourceVersion, and logs it.
    pub fn commit(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        after: Option<Value>,
    ) -> Option<Value> {
        self.rv += 1;
        let rv = self.rv;
        let key = (kind, ns.to_string(), name.to_string());
        let after = after.map(|mut v| {
            v["metadata"]["resourceVersion"] = json!(rv.to_string());
            v
        });
        let before = match &after {
            Some(v) => self.objects.insert(key, v.clone()),
            None => self.objects.remove(&key),
        };
        if kind == Kind::Crs {
            self.record_spec(before.as_ref(), after.as_ref());
        }
        if kind.logged() {
            // A deletion is delivered with the object's last state at a new version.
            let after_or_gone = after.clone();
            let before_logged = before.clone().map(|mut b| {
                if after.is_none() {
                    b["metadata"]["resourceVersion"] = json!(rv.to_string());
                }
                b
            });
            self.log.push(Entry {
                rv,
                kind,
                ns: ns.to_string(),
                before: before_logged,
                after: after_or_gone,
                at: Instant::now(),
            });
        }
        after
    }

    fn record_spec(&mut self, before: Option<&Value>, after: Option<&Value>) {
        let now = Instant::now();
        let uid = after
            .or(before)
            .and_then(|v| v["metadata"]["uid"].as_str())
            .unwrap_or_default()
            .to_string();
        let versions = self.asked.entry(uid).or_default();
        let bound = after.map(bound_of);
        if let Some(last) = versions.last_mut() {
            if bound == Some(last.bound) && last.to.is_none() {
                return;
            }
            last.to.get_or_insert(now);
        }
        if let Some(bound) = bound {
            versions.push(Asked { to: None, bound });
        }
    }

    /// Whether the operator's pod create just stored made its owner hold more active pods
    /// than any spec in force within [`SPEC_WINDOW`] allowed (the operator may act on a
    /// spec that changed since it read it, not on one older than that).
    fn overshoot(&mut self, pod: &Value) -> Option<String> {
        let owner = controller_uid(pod)?;
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let now = Instant::now();
        let allowed = self
            .asked
            .get(&owner)?
            .iter()
            .filter(|a| a.to.is_none_or(|to| to + SPEC_WINDOW >= now))
            .map(|a| a.bound)
            .max()?;
        let active = self
            .all(Kind::Pod)
            .filter(|p| p["metadata"]["namespace"] == ns)
            .filter(|p| controller_uid(p).as_deref() == Some(&owner) && is_active(p))
            .count() as i64;
        (active > allowed).then(|| {
            format!(
                "overshoot: {} active pods of {ns}/{} (uid {owner}) after creating {}, at most {allowed} asked for",
                active,
                pod["metadata"]["ownerReferences"][0]["name"].as_str().unwrap_or("?"),
                pod["metadata"]["name"].as_str().unwrap_or("?"),
            )
        })
    }

    pub fn next_ip(&mut self) -> String {
        self.ips += 1;
        format!(
            "10.{}.{}.{}",
            96 + self.ips / 65536,
            (self.ips / 256) % 256,
            self.ips % 256
        )
    }

    /// The objects of `kind` as they were at resourceVersion `rv` (from the log).
    fn snapshot(&self, kind: Kind, rv: u64) -> Vec<Value> {
        let mut at: BTreeMap<(String, String), Value> = BTreeMap::new();
        for e in self.log.iter().filter(|e| e.kind == kind && e.rv <= rv) {
            let obj = e.after.as_ref().or(e.before.as_ref());
            let name = obj
                .and_then(|o| o["metadata"]["name"].as_str())
                .unwrap_or_default()
                .to_string();
            match &e.after {
                Some(v) => at.insert((e.ns.clone(), name), v.clone()),
                None => at.remove(&(e.ns.clone(), name)),
            };
        }
        at.into_values().collect()
    }
}

/// The most active pods a CraneReplicaSet's spec allows: `replicas`, plus the surge of a
/// rolling update.
fn bound_of(crs: &Value) -> i64 {
    let replicas = crs["spec"]["replicas"].as_i64().unwrap_or(1);
    let surge = serde_json::from_value::<crane_operator::api::UpdateStrategy>(
        crs["spec"]["updateStrategy"].clone(),
    )
    .ok()
    .map_or(0, |s| {
        match crane_operator::planner::Strategy::of(&s, replicas as i32) {
            crane_operator::planner::Strategy::RollingUpdate { max_surge, .. } => max_surge as i64,
            crane_operator::planner::Strategy::OnDelete => 0,
        }
    });
    replicas + surge
}

pub fn controller_uid(obj: &Value) -> Option<String> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"] == json!(true))
        .and_then(|o| o["uid"].as_str())
        .map(str::to_string)
}

/// Counts towards `replicas`: not terminating, not finished.
pub fn is_active(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && !matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
}

pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

pub fn labels_match(selector: &[(String, Option<String>, bool)], labels: &Value) -> bool {
    selector.iter().all(|(k, v, eq)| {
        let have = labels[k].as_str();
        match v {
            Some(v) => (have == Some(v.as_str())) == *eq,
            None => have.is_some() == *eq,
        }
    })
}

/// `a=b,c!=d,e,!f` as (key, value, equal).
fn parse_selector(text: &str) -> Vec<(String, Option<String>, bool)> {
    text.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            if let Some((k, v)) = t.split_once("!=") {
                (k.to_string(), Some(v.to_string()), false)
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                (k.to_string(), Some(v.to_string()), true)
            } else if let Some(k) = t.strip_prefix('!') {
                (k.to_string(), None, false)
            } else {
                (t.to_string(), None, true)
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request, parsed.
#[derive(Debug)]
struct Call {
    method: Method,
    kind: Kind,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    query: HashMap<String, String>,
    content_type: String,
    body: Bytes,
}

impl Call {
    fn parse(req: &http::request::Parts, body: Bytes) -> Result<Call, String> {
        let path = req.uri.path().trim_start_matches('/');
        let parts: Vec<&str> = path.split('/').collect();
        // api/v1/... or apis/GROUP/VERSION/...
        let (prefix_len, rest) = if parts.first() == Some(&"api") {
            (2, &parts[2.min(parts.len())..])
        } else {
            (3, &parts[3.min(parts.len())..])
        };
        let prefix = parts[..prefix_len.min(parts.len())].join("/");
        let (ns, rest) = match rest {
            ["namespaces", ns, rest @ ..] => (Some(ns.to_string()), rest),
            rest => (None, rest),
        };
        let (resource, name, sub) = match rest {
            [r] => (*r, None, None),
            [r, n] => (*r, Some(n.to_string()), None),
            [r, n, s] => (*r, Some(n.to_string()), Some(s.to_string())),
            _ => return Err(format!("unknown path {path}")),
        };
        let kind = Kind::of(&prefix, resource).ok_or_else(|| format!("unknown resource {path}"))?;
        let query = req
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect();
        let content_type = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok(Call {
            method: req.method.clone(),
            kind,
            ns,
            name,
            sub,
            query,
            content_type,
            body,
        })
    }

    fn is_write(&self) -> bool {
        self.method != Method::GET
    }

    fn describe(&self) -> String {
        format!(
            "{} {}{}{}{}",
            self.method,
            self.kind.kind(),
            self.ns
                .as_deref()
                .map(|n| format!(" {n}/"))
                .unwrap_or(" ".into()),
            self.name.as_deref().unwrap_or("*"),
            self.sub
                .as_deref()
                .map(|s| format!("/{s}"))
                .unwrap_or_default()
        )
    }
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "code": code, "reason": reason, "message": message}),
    )
}

/// The server: shared state and the signal of new commits.
#[derive(Clone)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
    committed: watch::Sender<u64>,
    /// Turns true when the faults stop: requests held back by one go on at once.
    healed: watch::Sender<bool>,
}

/// What the fault injector chose for one request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    /// Not carried out: this answer instead (code, reason, Retry-After seconds).
    Refuse(u16, &'static str, Option<u64>),
    /// Not carried out: the connection broke first.
    DropBefore,
    /// Carried out, but answered with this error (with a Retry-After, as a proxy's
    /// timeout may carry one).
    LoseAnswer(u16, &'static str, Option<u64>),
    /// Carried out, but the connection broke before the answer.
    DropAfter,
}

impl ApiServer {
    pub fn new(seed: u64) -> Self {
        let state = State {
            rv: 1000,
            objects: BTreeMap::new(),
            log: Vec::new(),
            compacted: 0,
            rng: Rng::new(seed),
            faults_on: false,
            rates: FaultRates::none(),
            stats: Stats::default(),
            violations: Vec::new(),
            trace: VecDeque::new(),
            quota: HashMap::new(),
            slow_leases: HashMap::new(),
            verbose: std::env::var_os("SEED").is_some(),
            asked: HashMap::new(),
            uids: 0,
            ips: 0,
            started: Instant::now(),
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            committed: watch::channel(1000).0,
            healed: watch::channel(false).0,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the faults: requests held back (slow, or a stalled Lease) go on now.
    pub fn heal(&self) {
        self.lock().faults_on = false;
        self.healed.send_replace(true);
    }

    /// Tells the watches that something was committed.
    pub fn notify(&self) {
        let rv = self.lock().rv;
        self.committed.send_replace(rv);
    }

    /// An endpoint for one client (an operator process); its requests are tagged with `id`.
    pub fn endpoint(&self, id: ClientId) -> Endpoint {
        Endpoint {
            server: self.clone(),
            id,
        }
    }

    /// Creates an object as a user would (no faults); returns it as stored.
    pub fn create(&self, kind: Kind, ns: &str, mut obj: Value) -> Result<Value, String> {
        let out = {
            let mut s = self.lock();
            let (code, v) = create(&mut s, kind, ns, None, &mut obj, 0);
            if code >= 300 {
                return Err(v["message"].as_str().unwrap_or_default().to_string());
            }
            v
        };
        self.notify();
        Ok(out)
    }

    /// Changes an object as a user would: `f` edits it; a spec change bumps the generation.
    pub fn update(&self, kind: Kind, ns: &str, name: &str, f: impl FnOnce(&mut Value)) -> bool {
        let done = {
            let mut s = self.lock();
            let Some(old) = s.get(kind, ns, name).cloned() else {
                return false;
            };
            let mut new = old.clone();
            f(&mut new);
            if new != old {
                if new["spec"] != old["spec"] && kind == Kind::Crs {
                    let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                    new["metadata"]["generation"] = json!(g + 1);
                }
                s.commit(kind, ns, name, Some(new));
            }
            true
        };
        self.notify();
        done
    }

    /// Deletes an object as a user or the garbage collector would (pods: gracefully when
    /// they run on a node).
    pub fn delete(&self, kind: Kind, ns: &str, name: &str) {
        {
            let mut s = self.lock();
            delete(&mut s, kind, ns, name, None);
        }
        self.notify();
    }

    /// Removes an object at once (the kubelet finishing a terminating pod).
    pub fn remove(&self, kind: Kind, ns: &str, name: &str) {
        {
            let mut s = self.lock();
            if s.get(kind, ns, name).is_some() {
                s.commit(kind, ns, name, None);
            }
        }
        self.notify();
    }

    /// Answers one request on `reply`, unless its client goes away while it waits (as
    /// kube-apiserver cancels a request whose connection closed before it was stored: a
    /// killed operator's queued creates are not carried out; one already being stored is).
    async fn serve(
        self,
        id: ClientId,
        call: Call,
        mut reply: oneshot::Sender<Result<Response<Body>, BoxError>>,
    ) {
        tokio::select! {
            answer = self.clone().answer(id, &call) => {
                let _ = reply.send(answer);
            }
            () = reply.closed() => {
                self.lock().trace(format!("client {id}: {} cancelled: the client went away", call.describe()));
            }
        }
    }

    async fn answer(self, id: ClientId, call: &Call) -> Result<Response<Body>, BoxError> {
        let (fault, before, after, watch_rates) = {
            let mut s = self.lock();
            s.stats.requests += 1;
            let fault = if s.faults_on && !(call.kind == Kind::Lease && id == 0) {
                draw_fault(&mut s, call)
            } else {
                Fault::None
            };
            if fault != Fault::None {
                s.stats.faults += 1;
            }
            let rate = s.rates.slow;
            let slow = s.faults_on && s.rng.chance(rate);
            let mut before = if slow {
                s.rng.millis(100, 4000)
            } else {
                s.rng.millis(0, 20)
            };
            if call.kind == Kind::Lease
                && s.slow_leases
                    .get(&id)
                    .is_some_and(|until| *until > Instant::now())
            {
                before += s.rng.millis(5000, 15000);
            }
            let after = if slow && s.rng.chance(0.5) {
                s.rng.millis(100, 4000)
            } else {
                s.rng.millis(0, 20)
            };
            let watch_rates = s.rates.clone();
            (fault, before, after, watch_rates)
        };
        let mut healed = self.healed.subscribe();
        tokio::select! {
            () = tokio::time::sleep(before) => {}
            _ = healed.wait_for(|h| *h) => {}
        }
        match fault {
            Fault::Refuse(code, reason, retry_after) => {
                self.lock().trace(format!(
                    "client {id}: {} -> {code} {reason} (not carried out)",
                    call.describe()
                ));
                return Ok(simulated_failure(code, reason, retry_after));
            }
            Fault::DropBefore => {
                self.lock().trace(format!(
                    "client {id}: {} -> connection dropped (not carried out)",
                    call.describe()
                ));
                return Err("simulated: connection reset before the request was read".into());
            }
            _ => {}
        }
        if call.method == Method::GET
            && call
                .query
                .get("watch")
                .is_some_and(|w| w == "true" || w == "1")
        {
            return Ok(self.watch(id, call, watch_rates));
        }
        let (code, body) = {
            let mut s = self.lock();
            let out = handle(&mut s, id, call);
            if call.is_write() && call.kind != Kind::Lease && id != 0 {
                *s.stats.writes.entry(id).or_default() += 1;
                *s.stats
                    .writes_by_kind
                    .entry(format!("{} {}", call.method, call.kind.kind()))
                    .or_default() += 1;
            }
            // Leases renewed are left out: they would drown the rest.
            if call.kind != Kind::Lease || out.0 >= 300 {
                let made = match (&call.method, out.1["metadata"]["name"].as_str()) {
                    (&Method::POST, Some(name)) if out.0 < 300 => format!(" {name}"),
                    _ => String::new(),
                };
                let mut line = format!("client {id}: {} -> {}{made}", call.describe(), out.0);
                if s.verbose && matches!(call.method, Method::PATCH | Method::POST) {
                    line.push_str(&format!(" {}", String::from_utf8_lossy(&call.body)));
                }
                s.trace(line);
            }
            out
        };
        self.notify();
        tokio::time::sleep(after).await;
        match fault {
            Fault::LoseAnswer(code, reason, retry_after) => {
                self.lock().trace(format!(
                    "client {id}: the answer to {} lost: {code} {reason}",
                    call.describe()
                ));
                Ok(simulated_failure(code, reason, retry_after))
            }
            Fault::DropAfter => {
                self.lock().trace(format!(
                    "client {id}: the answer to {} lost: connection dropped",
                    call.describe()
                ));
                Err("simulated: connection reset before the answer".into())
            }
            _ => Ok(json_response(code, &body)),
        }
    }

    /// A watch: the events after the requested resourceVersion that match, then new ones
    /// as they are committed, each held back on this stream's own schedule.
    fn watch(&self, id: ClientId, call: &Call, rates: FaultRates) -> Response<Body> {
        let (tx, rx) = mpsc::unbounded_channel::<Result<Frame<Bytes>, BoxError>>();
        let from: u64 = call
            .query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = call
            .query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(1800), Duration::from_secs);
        let bookmarks = call
            .query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true");
        let selector = call
            .query
            .get("labelSelector")
            .map(|s| parse_selector(s))
            .unwrap_or_default();
        let (kind, ns) = (call.kind, call.ns.clone());
        let server = self.clone();
        let mut rng = self.lock().rng.fork();
        let mut committed = self.committed.subscribe();
        let describe = call.describe();
        self.lock()
            .trace(format!("client {id}: watch {describe} from rv {from}"));
        tokio::spawn(async move {
            let send = |v: Value| {
                tx.send(Ok(Frame::data(Bytes::from(format!("{v}\n")))))
                    .is_ok()
            };
            let compacted = server.lock().compacted;
            if from != 0 && from < compacted {
                let (_, st) = status(
                    410,
                    "Expired",
                    &format!("too old resource version: {from} ({compacted})"),
                );
                send(json!({"type": "ERROR", "object": st}));
                return;
            }
            let end = Instant::now() + timeout;
            let mut next = server.lock().log.partition_point(|e| e.rv <= from);
            let mut last_delivery = Instant::now();
            let mut last_bookmark = Instant::now();
            loop {
                let (batch, faults_on, rv) = {
                    let s = server.lock();
                    let batch: Vec<Entry> = s.log[next..].to_vec();
                    next = s.log.len();
                    (batch, s.faults_on, s.rv)
                };
                for e in batch {
                    if e.kind != kind || ns.as_ref().is_some_and(|n| *n != e.ns) {
                        continue;
                    }
                    let matches = |v: &Option<Value>| {
                        v.as_ref()
                            .is_some_and(|v| labels_match(&selector, &v["metadata"]["labels"]))
                    };
                    let (was, is) = (matches(&e.before), matches(&e.after));
                    let event = match (was, is) {
                        (false, true) => json!({"type": "ADDED", "object": e.after}),
                        (true, true) => json!({"type": "MODIFIED", "object": e.after}),
                        (true, false) => {
                            let mut gone = e.after.clone().or(e.before.clone()).unwrap_or_default();
                            gone["metadata"]["resourceVersion"] = json!(e.rv.to_string());
                            json!({"type": "DELETED", "object": gone})
                        }
                        (false, false) => continue,
                    };
                    let held = if faults_on {
                        rng.millis(0, rates.watch_delay.as_millis() as u64)
                    } else {
                        rng.millis(0, 5)
                    };
                    let at = (e.at + held).max(last_delivery);
                    tokio::time::sleep_until(at).await;
                    last_delivery = at;
                    if server.lock().verbose {
                        let line = format!(
                            "client {id}: watch {describe} delivers {} {} rv {}",
                            event["type"], event["object"]["metadata"]["name"], e.rv
                        );
                        server.lock().trace(line);
                    }
                    if Instant::now() >= end || !send(event) {
                        return;
                    }
                    if faults_on && rng.chance(rates.watch_break) {
                        let mut s = server.lock();
                        s.stats.faults += 1;
                        s.trace(format!(
                            "client {id}: watch {describe} broken after rv {}",
                            e.rv
                        ));
                        drop(s);
                        if rng.chance(0.5) {
                            let _ = tx.send(Err("simulated: watch connection reset".into()));
                        }
                        return;
                    }
                }
                if bookmarks && last_bookmark.elapsed() >= Duration::from_secs(60) {
                    last_bookmark = Instant::now();
                    let mark = json!({"type": "BOOKMARK", "object": {"kind": kind.kind(), "apiVersion": kind.api_version(),
                        "metadata": {"resourceVersion": rv.to_string()}}});
                    if !send(mark) {
                        return;
                    }
                }
                tokio::select! {
                    changed = committed.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep_until(end) => return,
                    () = tokio::time::sleep(Duration::from_secs(60)) => {}
                    () = tx.closed() => return,
                }
            }
        });
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        let body = StreamBody::new(stream.boxed());
        Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(BodyExt::boxed_unsync(body))
            .expect("a valid response")
    }
}

/// A fault's answer: a `Status` failure, with a Retry-After when it carries one.
fn simulated_failure(code: u16, reason: &str, retry_after: Option<u64>) -> Response<Body> {
    let (code, body) = status(code, reason, &format!("simulated: {reason}"));
    let mut resp = json_response(code, &body);
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, secs.into());
    }
    resp
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    let full = Full::new(Bytes::from(body.to_string())).map_err(|e: Infallible| match e {});
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed_unsync(full))
        .expect("a valid response")
}

fn draw_fault(s: &mut State, call: &Call) -> Fault {
    let refuse = s.rates.refuse;
    let lose = s.rates.lose_answer;
    if s.rng.chance(refuse) {
        return match s.rng.below(6) {
            0 => Fault::Refuse(429, "TooManyRequests", Some(1)),
            1 => Fault::Refuse(503, "ServiceUnavailable", Some(1)),
            2 => Fault::Refuse(500, "InternalError", None),
            3 => Fault::Refuse(504, "Timeout", s.rng.chance(0.5).then_some(1)),
            4 if call.method == Method::POST && call.kind == Kind::Pod => {
                Fault::Refuse(403, "Forbidden", None)
            }
            _ => Fault::DropBefore,
        };
    }
    if call.is_write() && s.rng.chance(lose) {
        return match s.rng.below(3) {
            0 => Fault::LoseAnswer(504, "Timeout", s.rng.chance(0.5).then_some(1)),
            1 => Fault::LoseAnswer(500, "InternalError", None),
            _ => Fault::DropAfter,
        };
    }
    Fault::None
}

/// Carries out one request on the state.
fn handle(s: &mut State, id: ClientId, call: &Call) -> (u16, Value) {
    let ns = call.ns.clone().unwrap_or_default();
    let body: Value = if call.body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&call.body) {
            Ok(v) => v,
            Err(e) => return status(400, "BadRequest", &format!("cannot decode the body: {e}")),
        }
    };
    match (&call.method, &call.name) {
        (&Method::GET, None) => list(s, call),
        (&Method::GET, Some(name)) => match s.get(call.kind, &ns, name) {
            Some(v) => (200, v.clone()),
            None => not_found(call.kind, name),
        },
        (&Method::POST, None) => {
            let mut obj = body;
            create(s, call.kind, &ns, None, &mut obj, id)
        }
        (&Method::PUT, Some(name)) => replace(s, call.kind, &ns, name, body),
        (&Method::PATCH, Some(name)) => patch(s, call, &ns, name, body),
        (&Method::DELETE, Some(name)) => {
            if s.get(call.kind, &ns, name).is_none() {
                return not_found(call.kind, name);
            }
            delete(s, call.kind, &ns, name, Some(&body))
        }
        _ => status(
            405,
            "MethodNotAllowed",
            &format!("{} is not served here", call.describe()),
        ),
    }
}

fn not_found(kind: Kind, name: &str) -> (u16, Value) {
    status(
        404,
        "NotFound",
        &format!("{} \"{name}\" not found", kind.kind().to_lowercase()),
    )
}

fn list(s: &mut State, call: &Call) -> (u16, Value) {
    let selector = call
        .query
        .get("labelSelector")
        .map(|l| parse_selector(l))
        .unwrap_or_default();
    // Served from the cache, which may lag, only when the request allows it.
    let rv_param = call
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok());
    let may_lag = match (
        rv_param,
        call.query.get("resourceVersionMatch").map(String::as_str),
    ) {
        (Some(0), _) => Some(0),
        (Some(rv), Some("NotOlderThan")) => Some(rv),
        _ => None,
    };
    let (items, rv) = match may_lag {
        Some(floor)
            if s.faults_on
                && s.rng.chance(s.rates.stale_list)
                && s.rv > floor.max(s.compacted) + 1 =>
        {
            let lo = floor.max(s.compacted).max(1000);
            let rv = lo + s.rng.below(s.rv - lo);
            s.stats.faults += 1;
            s.trace(format!(
                "list of {} served stale at rv {rv} (current {})",
                call.kind.kind(),
                s.rv
            ));
            (s.snapshot(call.kind, rv), rv)
        }
        _ => (s.all(call.kind).cloned().collect::<Vec<_>>(), s.rv),
    };
    let items: Vec<Value> = items
        .into_iter()
        .filter(|v| {
            call.ns
                .as_ref()
                .is_none_or(|n| v["metadata"]["namespace"] == json!(n))
        })
        .filter(|v| labels_match(&selector, &v["metadata"]["labels"]))
        .collect();
    (
        200,
        json!({"apiVersion": call.kind.api_version(), "kind": format!("{}List", call.kind.kind()),
            "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    )
}

const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub fn create(
    s: &mut State,
    kind: Kind,
    ns: &str,
    name: Option<&str>,
    obj: &mut Value,
    id: ClientId,
) -> (u16, Value) {
    let name = match name
        .map(str::to_string)
        .or_else(|| obj["metadata"]["name"].as_str().map(str::to_string))
    {
        Some(n) => n,
        None => match obj["metadata"]["generateName"].as_str() {
            Some(prefix) => {
                let suffix: String = (0..5)
                    .map(|_| NAME_CHARS[s.rng.below(NAME_CHARS.len() as u64) as usize] as char)
                    .collect();
                format!("{prefix}{suffix}")
            }
            None => return status(422, "Invalid", "metadata.name: Required value"),
        },
    };
    if s.get(kind, ns, &name).is_some() {
        return status(
            409,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", kind.kind().to_lowercase()),
        );
    }
    if kind == Kind::Pod
        && let Some(&limit) = s.quota.get(ns)
    {
        let used = s
            .all(Kind::Pod)
            .filter(|p| p["metadata"]["namespace"] == ns && is_active(p))
            .count();
        if used >= limit {
            return status(
                403,
                "Forbidden",
                &format!(
                    "pods \"{name}\" is forbidden: exceeded quota: compute, requested: pods=1, used: pods={used}, limited: pods={limit}"
                ),
            );
        }
    }
    let uid = s.uid();
    let meta = &mut obj["metadata"];
    meta["name"] = json!(name);
    meta["namespace"] = json!(ns);
    meta["uid"] = json!(uid);
    meta["creationTimestamp"] = json!(clock::now().to_string());
    if let Some(m) = meta.as_object_mut() {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    obj["apiVersion"] = json!(kind.api_version());
    obj["kind"] = json!(kind.kind());
    match kind {
        Kind::Crs => {
            obj["metadata"]["generation"] = json!(1);
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        Kind::Pod => {
            obj["status"] = json!({"phase": "Pending"});
        }
        Kind::Service => {
            let ip = s.next_ip();
            obj["spec"]["clusterIP"] = json!(ip);
            obj["spec"]["clusterIPs"] = json!([ip]);
            obj["status"] = json!({"loadBalancer": {}});
        }
        Kind::Event | Kind::Lease => {}
    }
    let stored = s
        .commit(kind, ns, &name, Some(obj.clone()))
        .unwrap_or_default();
    if kind == Kind::Pod
        && id != 0
        && let Some(v) = s.overshoot(&stored)
    {
        s.trace(format!("VIOLATION {v}"));
        s.violations.push(v);
    }
    (201, stored)
}

fn replace(s: &mut State, kind: Kind, ns: &str, name: &str, mut body: Value) -> (u16, Value) {
    let Some(old) = s.get(kind, ns, name).cloned() else {
        return not_found(kind, name);
    };
    if body["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] {
        return status(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                kind.kind().to_lowercase()
            ),
        );
    }
    for keep in [
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "generation",
    ] {
        body["metadata"][keep] = old["metadata"][keep].clone();
    }
    (
        200,
        s.commit(kind, ns, name, Some(body)).unwrap_or_default(),
    )
}

fn patch(s: &mut State, call: &Call, ns: &str, name: &str, patch: Value) -> (u16, Value) {
    let kind = call.kind;
    let old = s.get(kind, ns, name).cloned();
    let apply = call.content_type.starts_with("application/apply-patch");
    let Some(old) = old else {
        if apply && call.sub.is_none() {
            let mut obj = patch;
            return create(s, kind, ns, Some(name), &mut obj, 0);
        }
        return not_found(kind, name);
    };
    // A UID in the patch is a precondition of the main resource (its UID is immutable);
    // the status subresource takes the status only and ignores it (as kube-apiserver's
    // status strategy does).
    if let Some(uid) = patch["metadata"]["uid"]
        .as_str()
        .filter(|_| call.sub.is_none())
        && Some(uid) != old["metadata"]["uid"].as_str()
    {
        return status(
            409,
            "Conflict",
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                old["metadata"]["uid"].as_str().unwrap_or_default()
            ),
        );
    }
    let mut new = old.clone();
    if call.content_type.starts_with("application/merge-patch") {
        merge_patch(&mut new, &patch);
    } else if call
        .content_type
        .starts_with("application/strategic-merge-patch")
    {
        strategic_merge(&mut new, &patch);
    } else if apply {
        apply_patch(&mut new, &patch);
    } else {
        return status(415, "UnsupportedMediaType", &call.content_type);
    }
    // The status subresource changes the status only; the main resource all but it.
    let has_status = matches!(kind, Kind::Crs | Kind::Service);
    if has_status {
        if call.sub.as_deref() == Some("status") {
            let status = new["status"].clone();
            new = old.clone();
            new["status"] = status;
        } else {
            new["status"] = old["status"].clone();
        }
    }
    for keep in [
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "resourceVersion",
        "deletionTimestamp",
        "generation",
    ] {
        new["metadata"][keep] = old["metadata"][keep].clone();
    }
    if let Some(m) = new["metadata"].as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    if kind == Kind::Crs && new["spec"] != old["spec"] {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
        new["metadata"]["generation"] = json!(g + 1);
    }
    if new == old {
        return (200, old);
    }
    if kind == Kind::Crs
        && let Err(e) = schema_admits(&new)
    {
        return status(
            422,
            "Invalid",
            &format!("CraneReplicaSet.crane.dev \"{name}\" is invalid: {e}"),
        );
    }
    (200, s.commit(kind, ns, name, Some(new)).unwrap_or_default())
}

/// Whether the CRD's schema would admit a CraneReplicaSet: the operator's types, which
/// are stricter only about times (the world's poison, which the schema admits).
fn schema_admits(obj: &Value) -> Result<(), String> {
    let text = obj
        .to_string()
        .replace(crate::world::BEYOND_JIFF, "2026-01-01T00:00:00Z");
    let value: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize::<_, crane_operator::api::CraneReplicaSet>(value)
        .map(|_| ())
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

fn delete(
    s: &mut State,
    kind: Kind,
    ns: &str,
    name: &str,
    options: Option<&Value>,
) -> (u16, Value) {
    let Some(old) = s.get(kind, ns, name).cloned() else {
        return not_found(kind, name);
    };
    if let Some(pre) = options.map(|o| &o["preconditions"]) {
        let uid_differs = pre["uid"]
            .as_str()
            .is_some_and(|u| Some(u) != old["metadata"]["uid"].as_str());
        let rv_differs = pre["resourceVersion"]
            .as_str()
            .is_some_and(|r| Some(r) != old["metadata"]["resourceVersion"].as_str());
        if uid_differs || rv_differs {
            return status(
                409,
                "Conflict",
                &format!(
                    "Precondition failed: UID in precondition: {}, UID in object meta: {}",
                    pre["uid"].as_str().unwrap_or_default(),
                    old["metadata"]["uid"].as_str().unwrap_or_default()
                ),
            );
        }
    }
    // A pod on a node ends gracefully: the kubelet removes it later.
    if kind == Kind::Pod && !old["spec"]["nodeName"].is_null() {
        if !old["metadata"]["deletionTimestamp"].is_null() {
            return (200, old);
        }
        let mut new = old.clone();
        new["metadata"]["deletionTimestamp"] =
            json!((clock::now() + jiff::SignedDuration::from_secs(30)).to_string());
        new["metadata"]["deletionGracePeriodSeconds"] = json!(30);
        return (200, s.commit(kind, ns, name, Some(new)).unwrap_or_default());
    }
    s.commit(kind, ns, name, None);
    (200, old)
}

/// RFC 7386.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in p {
        if v.is_null() {
            if let Some(t) = target.as_object_mut() {
                t.remove(k);
            }
        } else {
            merge_patch(&mut target[k], v);
        }
    }
}

/// The strategic-merge subset the operator sends: maps merge, `null` deletes, and
/// `ownerReferences` merge by `uid` with the `$patch: delete` directive; other lists are
/// replaced.
fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in p {
        if v.is_null() {
            if let Some(t) = target.as_object_mut() {
                t.remove(k);
            }
        } else if k == "ownerReferences" {
            let mut list = target[k].as_array().cloned().unwrap_or_default();
            for item in v.as_array().into_iter().flatten() {
                let uid = &item["uid"];
                list.retain(|o| &o["uid"] != uid);
                if item["$patch"] != json!("delete") {
                    list.push(item.clone());
                }
            }
            target[k] = json!(list);
        } else if v.is_object() {
            strategic_merge(&mut target[k], v);
        } else {
            target[k] = v.clone();
        }
    }
}

/// The server-side-apply subset the operator uses (one manager, forced): the applied
/// configuration merged into the object, lists replaced.
fn apply_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if k == "apiVersion" || k == "kind" {
                    continue;
                }
                apply_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        _ => *target = patch.clone(),
    }
}

/// One client's way in.
#[derive(Clone)]
pub struct Endpoint {
    server: ApiServer,
    id: ClientId,
}

impl Service<Request<kube::client::Body>> for Endpoint {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
        let (server, id) = (self.server.clone(), self.id);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            let call = match Call::parse(&parts, body) {
                Ok(call) => call,
                Err(e) => {
                    let (code, st) = status(404, "NotFound", &e);
                    return Ok(json_response(code, &st));
                }
            };
            // The server works on its own task: a request being stored when its client goes
            // away is still stored (see `serve`).
            let (tx, rx) = oneshot::channel();
            tokio::spawn(async move {
                server.serve(id, call, tx).await;
            });
            rx.await
                .map_err(|_| BoxError::from("simulated server gone"))?
        })
    }
}
