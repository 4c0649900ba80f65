//! One simulated world: the fake API server, a kubelet, a garbage collector and a
//! load-balancer allocator, users doing things, one or two operator processes (killed and
//! restarted at random), all driven by one seed on paused time; then the faults stop and
//! the invariants that must hold once the world is quiet are checked.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crane_operator::api::CraneReplicaSet;
use crane_operator::clock::{self, Instant};
use crane_operator::controller::{self, Config};
use crane_operator::leader::{self, Elector, Timings};
use crane_operator::metrics::{Health, Metrics};
use crane_operator::pods::{TEMPLATE_HASH_LABEL, template_hash};
use crane_operator::service::{OWNER_LABEL, service_name};
use kube::Client;
use serde_json::{Value, json};
use tokio::sync::watch;
use tower::ServiceBuilder;
use tower::retry::RetryLayer;

use crate::apiserver::{
    ApiServer, ClientId, FaultRates, Kind, controller_uid, is_active, is_ready,
};
use crate::rng::Rng;

/// A value the types refuse and the schema admits (k8s-openapi's `Time` is a jiff
/// Timestamp, which ends within year 9999).
pub const BEYOND_JIFF: &str = "9999-12-31T23:59:59Z";

const NAMESPACES: [&str; 2] = ["team-a", "team-b"];
/// The last name is as long as the CRD admits with a default Service name (`<name>-http`,
/// 63 characters): a value at the edge of its format.
const NAMES: [&str; 4] = [
    "web",
    "api",
    "db",
    "a-name-at-the-58-character-limit-that-leaves-room-for-http",
];

/// How long the world has, once the faults stop, to be right: a create of unknown outcome
/// is waited for 65 s, a failed pass retried within its backoff (at most 60 s), a Lease
/// taken over within 15 s. Nothing may wait for the expectations' own 5-minute timeout
/// (seed 793 did: a pod created and deleted unseen across a relist).
pub const SETTLE_WITHIN: Duration = Duration::from_secs(150);
/// How long a world must go without a write to count as settled.
pub const QUIET_FOR: Duration = Duration::from_secs(10);
/// How long a quiet world is watched for writes (past the operator's 5-minute resync).
pub const STEADY_FOR: Duration = Duration::from_secs(320);

thread_local! {
    /// Panics on this thread (the simulation's), recorded by the panic hook.
    pub static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// What one world came to.
#[derive(Debug, Default)]
pub struct Outcome {
    pub violations: Vec<String>,
    pub faults: u64,
    pub requests: u64,
    pub trace: Vec<String>,
    pub settled_after: Option<Duration>,
    pub plan: String,
}

/// The world's knobs, drawn from the seed.
#[derive(Debug)]
struct Plan {
    operators: usize,
    leader_elect: bool,
    active: Duration,
    rates: FaultRates,
    /// Mean time between user actions.
    pace: Duration,
}

impl Plan {
    fn draw(rng: &mut Rng) -> Plan {
        let operators = 1 + rng.below(2) as usize;
        let intensity = [0.0, 0.02, 0.05, 0.12][rng.below(4) as usize];
        Plan {
            operators,
            leader_elect: operators > 1 || rng.chance(0.3),
            active: Duration::from_secs(30 + rng.below(90)),
            rates: FaultRates {
                refuse: intensity,
                lose_answer: intensity,
                slow: intensity,
                watch_break: intensity / 2.0,
                stale_list: 0.5,
                watch_delay: rng.millis(0, 3000),
            },
            pace: rng.millis(300, 3000),
        }
    }
}

/// Runs world `seed` to its end. Call on a current-thread runtime with paused time.
pub async fn run(seed: u64) -> Outcome {
    let start: jiff::Timestamp = "2026-12-07T12:00:00Z".parse().expect("a timestamp");
    clock::simulate(start, seed);
    PANICS.with(|p| p.borrow_mut().clear());
    let server = ApiServer::new(seed);
    let mut rng = Rng::new(seed ^ 0x5EED);
    let plan = Plan::draw(&mut rng);
    {
        let mut s = server.lock();
        s.rates = plan.rates.clone();
        s.faults_on = true;
    }
    let mut outcome = Outcome {
        plan: format!("{plan:?}"),
        ..Outcome::default()
    };
    let nodes = tokio::spawn(cluster(server.clone(), rng.fork()));
    let mut operators: Vec<Operator> = (1..=plan.operators)
        .map(|id| Operator::start(&server, id, plan.leader_elect))
        .collect();

    // The users, and the faults, for the active phase.
    let mut users = Users::new(server.clone(), rng.fork());
    let end = Instant::now() + plan.active;
    while Instant::now() < end {
        let wait = rng.millis(0, 2 * plan.pace.as_millis() as u64);
        tokio::time::sleep(wait).await;
        match rng.below(20) {
            0 if !operators.is_empty() => {
                let i = rng.below(operators.len() as u64) as usize;
                let down = rng.millis(0, 5000);
                server.lock().trace(format!(
                    "world: operator {} killed, back in {down:?}",
                    i + 1
                ));
                operators[i].kill();
                tokio::time::sleep(down).await;
                operators[i] = Operator::start(&server, i + 1, plan.leader_elect);
            }
            1 if plan.leader_elect => {
                let id = 1 + rng.below(plan.operators as u64) as usize;
                let until = Instant::now() + rng.millis(5000, 20000);
                let mut s = server.lock();
                s.trace(format!("world: Lease requests of operator {id} stall"));
                s.slow_leases.insert(id, until);
            }
            2 => {
                let mut s = server.lock();
                let rv = s.rv;
                s.compacted = rv;
                s.trace(format!("world: history compacted up to rv {rv}"));
            }
            _ => users.act(),
        }
    }

    // Quiet: no more faults, every operator running, every refusal lifted.
    {
        server.heal();
        let mut s = server.lock();
        s.quota.clear();
        s.slow_leases.clear();
        s.trace("world: faults stop".into());
    }
    // Objects the operator cannot decode stay so: it must settle everything else around
    // them (one bad object never stops the others); they are repaired at the end.
    server.notify();
    let quiet = Instant::now();
    let mut last_problem = String::new();
    // Settled: right, and no write for QUIET_FOR (a leader that just took over announces
    // what it finds once, then is quiet too).
    let writes = |server: &ApiServer| server.lock().stats.writes.values().sum::<u64>();
    let (mut last_writes, mut quiet_since) = (writes(&server), Instant::now());
    while quiet.elapsed() < SETTLE_WITHIN {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now_writes = writes(&server);
        if now_writes != last_writes {
            (last_writes, quiet_since) = (now_writes, Instant::now());
        }
        let led = operators.iter().any(Operator::leading);
        match converged(&server) {
            Ok(()) if !led => last_problem = "right, but no operator leads".into(),
            Ok(()) if quiet_since.elapsed() >= QUIET_FOR => {
                outcome.settled_after = Some(quiet.elapsed());
                break;
            }
            Ok(()) => last_problem = "right, but the operator still writes".into(),
            Err(problem) => last_problem = problem,
        }
    }
    match outcome.settled_after {
        None => outcome.violations.push(format!(
            "not settled {SETTLE_WITHIN:?} after the faults stopped: {last_problem}"
        )),
        Some(_) => {
            // From here on a quiet world must cost nothing.
            let before = server.lock().stats.clone();
            tokio::time::sleep(STEADY_FOR).await;
            let after = server.lock().stats.clone();
            let wrote: u64 =
                after.writes.values().sum::<u64>() - before.writes.values().sum::<u64>();
            if wrote > 0 {
                let kinds: Vec<String> = after
                    .writes_by_kind
                    .iter()
                    .filter_map(|(k, n)| {
                        let d = n - before.writes_by_kind.get(k).copied().unwrap_or(0);
                        (d > 0).then(|| format!("{k} ×{d}"))
                    })
                    .collect();
                outcome.violations.push(format!(
                    "a steady state wrote {wrote} times in {STEADY_FOR:?}: {}",
                    kinds.join(", ")
                ));
            }
            if let Err(problem) = converged(&server) {
                outcome
                    .violations
                    .push(format!("no longer right in the steady state: {problem}"));
            }
        }
    }
    // Repaired, the objects left out must come right too.
    if outcome.violations.is_empty() && users.heal() {
        let repaired = Instant::now();
        let mut settled = false;
        while repaired.elapsed() < SETTLE_WITHIN && !settled {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match converged(&server) {
                Ok(()) => settled = true,
                Err(problem) => last_problem = problem,
            }
        }
        if !settled {
            outcome.violations.push(format!(
                "not settled {SETTLE_WITHIN:?} after the undecodable objects were repaired: {last_problem}"
            ));
        }
    }
    if outcome.violations.is_empty() {
        for (i, op) in operators.iter().enumerate() {
            if let Err(problem) = op.bounded(&server) {
                outcome
                    .violations
                    .push(format!("operator {}: {problem}", i + 1));
            }
        }
    }
    for op in &mut operators {
        op.kill();
    }
    nodes.abort();
    PANICS.with(|p| {
        for panic in p.borrow_mut().drain(..) {
            outcome.violations.push(format!("panic: {panic}"));
        }
    });
    let s = server.lock();
    outcome.violations.extend(s.violations.iter().cloned());
    outcome.faults = s.stats.faults;
    outcome.requests = s.stats.requests;
    outcome.trace = s.trace.iter().cloned().collect();
    drop(s);
    clock::stop_simulating();
    outcome
}

/// One operator process: its controller, behind leader election when there are several.
struct Operator {
    task: tokio::task::JoinHandle<()>,
    /// The running incarnation's metrics and health.
    shown: Shown,
}

type Shown = Arc<std::sync::Mutex<Option<(Arc<Metrics>, Arc<Health>)>>>;

impl Operator {
    fn start(server: &ApiServer, id: ClientId, leader_elect: bool) -> Operator {
        let server = server.clone();
        let shown = Shown::default();
        let showing = shown.clone();
        let task = tokio::spawn(async move {
            let mut incarnation = 0;
            loop {
                incarnation += 1;
                process(&server, id, incarnation, leader_elect, &showing).await;
                // It exited (a lost lease): the kubelet starts it again.
                server
                    .lock()
                    .trace(format!("world: operator {id} exited; restarting"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Operator { task, shown }
    }

    /// Leads, with its caches synced.
    fn leading(&self) -> bool {
        let shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        shown
            .as_ref()
            .is_some_and(|(m, h)| m.leader.get() == 1 && h.is_ready())
    }

    fn kill(&mut self) {
        self.task.abort();
    }

    /// Memory per object stays bounded: once the world is quiet, what the running
    /// controller keeps is kept for objects that exist (nothing for one that is gone: a
    /// map that only grows is a leak over weeks of churn), and its pod cache holds the
    /// pods that exist.
    fn bounded(&self, server: &ApiServer) -> Result<(), String> {
        let Some((metrics, health)) = self.shown.lock().unwrap_or_else(|p| p.into_inner()).clone()
        else {
            return Ok(());
        };
        let Some(footprint) = health.footprint() else {
            return Ok(()); // a standby: it keeps nothing
        };
        let s = server.lock();
        let live: BTreeSet<String> = s
            .all(Kind::Crs)
            .map(|o| {
                let (ns, name) = names(o);
                format!("{ns}/{name}")
            })
            .collect();
        let pods = s.all(Kind::Pod).count();
        drop(s);
        for (kind, keys) in &footprint.per_object {
            if let Some(gone) = keys.iter().find(|k| !live.contains(*k)) {
                return Err(format!("keeps {kind} for {gone}, which is gone"));
            }
        }
        // Per-object metric series too (`namespace="…",name="…"`).
        for line in metrics.encode().lines() {
            let label = |l: &str| {
                let start = line.find(&format!("{l}=\""))? + l.len() + 2;
                let len = line[start..].find('"')?;
                Some(line[start..start + len].to_string())
            };
            if let (Some(ns), Some(name)) = (label("namespace"), label("name")) {
                let key = format!("{ns}/{name}");
                if !live.contains(&key) {
                    return Err(format!("exports a metric for {key}, which is gone: {line}"));
                }
            }
        }
        if footprint.pods != pods {
            return Err(format!("caches {} pods, {pods} exist", footprint.pods));
        }
        if footprint.pod_index > footprint.pods {
            return Err(format!(
                "indexes {} entries for {} pods",
                footprint.pod_index, footprint.pods
            ));
        }
        Ok(())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Aborts a task when dropped (a killed process takes its tasks with it).
struct Owned(tokio::task::JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn process(
    server: &ApiServer,
    id: ClientId,
    incarnation: u32,
    leader_elect: bool,
    shown: &Shown,
) {
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    *shown.lock().unwrap_or_else(|p| p.into_inner()) = Some((metrics.clone(), health.clone()));
    let client = Client::new(
        ServiceBuilder::new()
            .layer(RetryLayer::new(crane_operator::client::SafeRetry::default()))
            .service(server.endpoint(id)),
        "default",
    );
    let identity = format!("operator-{id}_{incarnation}");
    let config = Config {
        namespace: None,
        concurrency: 4,
        instance: Some(identity.clone()),
    };
    let never = std::future::pending::<()>;
    if !leader_elect {
        metrics.leader.set(1);
        controller::run(client, config, metrics, health, never()).await;
        return;
    }
    let lease_client = Client::new(server.endpoint(id), "default");
    let elector = Elector::new(
        lease_client,
        "kube-system",
        "crane-operator-leader",
        &identity,
        Timings::default(),
    );
    let (leading_tx, leading) = watch::channel(false);
    let (_release_tx, release_rx) = watch::channel(false);
    let _election = Owned(tokio::spawn(elector.run(leading_tx, release_rx)));
    let (_stop_tx, stop) = watch::channel(false);
    let _ = leader::stand_by_then_lead(&health, &metrics, leading, stop, || {
        controller::run(client, config, metrics.clone(), health.clone(), never())
    })
    .await;
}

/// The kubelet (pods start, become Ready, finish terminating), the garbage collector and
/// the load-balancer allocator.
async fn cluster(server: ApiServer, mut rng: Rng) {
    let mut seen: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(rng.millis(100, 400)).await;
        let now = Instant::now();
        let (pods, crs_uids, services) = {
            let s = server.lock();
            let pods: Vec<Value> = s.all(Kind::Pod).cloned().collect();
            let uids: Vec<String> = s
                .all(Kind::Crs)
                .filter_map(|c| c["metadata"]["uid"].as_str().map(str::to_string))
                .collect();
            let services: Vec<Value> = s.all(Kind::Service).cloned().collect();
            (pods, uids, services)
        };
        for pod in &pods {
            let meta = &pod["metadata"];
            let (ns, name) = (
                meta["namespace"].as_str().unwrap_or_default(),
                meta["name"].as_str().unwrap_or_default(),
            );
            let uid = meta["uid"].as_str().unwrap_or_default().to_string();
            let first = *seen.entry(uid.clone()).or_insert(now);
            let waited = now - first;
            if !meta["deletionTimestamp"].is_null() {
                if waited >= rng.millis(500, 4000) {
                    server.remove(Kind::Pod, ns, name);
                    seen.remove(&uid);
                }
                continue;
            }
            // Orphaned by a deleted owner: collected.
            if let Some(owner) = controller_uid(pod)
                && !crs_uids.contains(&owner)
                && waited > Duration::from_millis(500)
            {
                server.delete(Kind::Pod, ns, name);
                continue;
            }
            if pod["status"]["phase"] == "Pending" && waited >= rng.millis(300, 2500) {
                let ts = clock::now().to_string();
                server.update(Kind::Pod, ns, name, |p| {
                    p["spec"]["nodeName"] = json!("node-1");
                    p["status"] = json!({
                        "phase": "Running", "podIP": format!("10.244.0.{}", 2 + (uid.len() % 250)),
                        "conditions": [
                            {"type": "PodScheduled", "status": "True", "lastTransitionTime": ts},
                            {"type": "Ready", "status": "True", "lastTransitionTime": ts},
                            {"type": "ContainersReady", "status": "True", "lastTransitionTime": ts}],
                        "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "crane", "imageID": "", "started": true,
                            "state": {"running": {"startedAt": ts}}}]
                    });
                });
            }
        }
        for svc in &services {
            let meta = &svc["metadata"];
            let (ns, name) = (
                meta["namespace"].as_str().unwrap_or_default(),
                meta["name"].as_str().unwrap_or_default(),
            );
            if let Some(owner) = controller_uid(svc)
                && !crs_uids.contains(&owner)
            {
                server.delete(Kind::Service, ns, name);
                continue;
            }
            if svc["spec"]["type"] == "LoadBalancer"
                && svc["status"]["loadBalancer"]["ingress"].is_null()
            {
                let ip = format!("172.18.255.{}", 1 + rng.below(250));
                server.update(Kind::Service, ns, name, |s| {
                    s["status"] =
                        json!({"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}});
                });
            }
        }
        seen.retain(|uid, _| pods.iter().any(|p| p["metadata"]["uid"] == json!(uid)));
    }
}

/// What users do: make, scale, change and delete CraneReplicaSets, delete and break pods,
/// make orphans, relabel pods, set quotas, store objects the operator cannot decode.
struct Users {
    server: ApiServer,
    rng: Rng,
    generation: u32,
}

impl Users {
    fn new(server: ApiServer, rng: Rng) -> Self {
        Self {
            server,
            rng,
            generation: 0,
        }
    }

    fn crs(&mut self, name: &str) -> Value {
        let rolling = self.rng.chance(0.5);
        let strategy = if rolling {
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": self.rng.below(3), "maxUnavailable": self.rng.below(2)}})
        } else {
            json!({"type": "OnDelete"})
        };
        let obj = json!({
            "apiVersion": "crane.dev/v1", "kind": "CraneReplicaSet",
            "metadata": {"name": name},
            "spec": {
                "replicas": self.rng.below(5),
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": "crane:v0", "ports": [{"containerPort": 7070}]}]}
                },
                "service": {"enabled": self.rng.chance(0.6), "type": "LoadBalancer", "port": 8080},
                "updateStrategy": strategy
            }
        });
        // What the CRD admits, the operator's types must read.
        serde_json::from_value::<CraneReplicaSet>(obj.clone())
            .expect("the world makes valid CraneReplicaSets");
        obj
    }

    fn existing(&mut self) -> Option<(String, String)> {
        let all: Vec<(String, String)> = {
            let s = self.server.lock();
            s.all(Kind::Crs)
                .map(|c| {
                    (
                        c["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        c["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect()
        };
        self.rng.pick(&all).cloned()
    }

    fn pod(&mut self, owned: bool) -> Option<Value> {
        let pods: Vec<Value> = {
            let s = self.server.lock();
            s.all(Kind::Pod)
                .filter(|p| is_active(p) && controller_uid(p).is_some() == owned)
                .cloned()
                .collect()
        };
        self.rng.pick(&pods).cloned()
    }

    fn trace(&self, line: String) {
        self.server.lock().trace(format!("world: {line}"));
    }

    fn act(&mut self) {
        match self.rng.below(15) {
            0..=2 => {
                let ns = *self.rng.pick(&NAMESPACES).unwrap_or(&"team-a");
                let name = *self.rng.pick(&NAMES).unwrap_or(&"web");
                let obj = self.crs(name);
                if self.server.create(Kind::Crs, ns, obj.clone()).is_ok() {
                    self.trace(format!(
                        "create {ns}/{name} replicas {} {}",
                        obj["spec"]["replicas"], obj["spec"]["updateStrategy"]["type"]
                    ));
                }
            }
            3..=5 => {
                if let Some((ns, name)) = self.existing() {
                    let n = self.rng.below(7);
                    self.trace(format!("scale {ns}/{name} to {n}"));
                    self.server
                        .update(Kind::Crs, &ns, &name, |c| c["spec"]["replicas"] = json!(n));
                }
            }
            6 => {
                if let Some((ns, name)) = self.existing() {
                    self.generation += 1;
                    let image = format!("crane:v{}", self.generation);
                    self.trace(format!("change the template of {ns}/{name} to {image}"));
                    self.server.update(Kind::Crs, &ns, &name, |c| {
                        c["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image)
                    });
                }
            }
            7 => {
                if let Some((ns, name)) = self.existing() {
                    self.trace(format!("delete {ns}/{name}"));
                    self.server.delete(Kind::Crs, &ns, &name);
                }
            }
            8 | 9 => {
                if let Some(pod) = self.pod(true) {
                    let (ns, name) = names(&pod);
                    if self.rng.chance(0.5) {
                        self.trace(format!("delete pod {ns}/{name}"));
                        self.server.delete(Kind::Pod, &ns, &name);
                    } else {
                        self.trace(format!("pod {ns}/{name} fails"));
                        self.server.update(Kind::Pod, &ns, &name, |p| {
                            p["status"]["phase"] = json!("Failed");
                            p["status"]["conditions"] = json!([]);
                        });
                    }
                }
            }
            10 => {
                // An orphan that a CraneReplicaSet's selector matches: adopted.
                if let Some((ns, name)) = self.existing() {
                    let pod = json!({"metadata": {"generateName": format!("{name}-orphan-"), "labels": {"app": name}},
                        "spec": {"containers": [{"name": "app", "image": "crane:orphan"}]}});
                    if let Ok(made) = self.server.create(Kind::Pod, &ns, pod) {
                        self.trace(format!(
                            "orphan pod {ns}/{}",
                            made["metadata"]["name"].as_str().unwrap_or("?")
                        ));
                    }
                }
            }
            11 => {
                // A pod relabelled out of its selector: released.
                if let Some(pod) = self.pod(true) {
                    let (ns, name) = names(&pod);
                    self.trace(format!("relabel pod {ns}/{name} out of its selector"));
                    self.server.update(Kind::Pod, &ns, &name, |p| {
                        p["metadata"]["labels"]["app"] = json!("elsewhere")
                    });
                }
            }
            12 => {
                let ns = *self.rng.pick(&NAMESPACES).unwrap_or(&"team-a");
                let mut s = self.server.lock();
                if s.quota.remove(ns).is_none() {
                    let used = s
                        .all(Kind::Pod)
                        .filter(|p| p["metadata"]["namespace"] == ns && is_active(p))
                        .count();
                    let limit = used + self.rng.below(3) as usize;
                    s.quota.insert(ns.to_string(), limit);
                    s.trace(format!("world: quota of {limit} pods in {ns}"));
                } else {
                    s.trace(format!("world: quota lifted in {ns}"));
                }
            }
            13 => self.edge(),
            _ => self.poison(),
        }
    }

    /// Stores values at the edge of their formats, which the operator's types read: the
    /// oldest and latest times, the largest restart count, deletion costs at both ends of
    /// an int32 and one that is no number. The pod stays what it was (Ready, active).
    fn edge(&mut self) {
        let Some(pod) = self.pod(true) else { return };
        let (ns, name) = names(&pod);
        type Edit = Box<dyn FnOnce(&mut Value)>;
        let (what, edit): (&str, Edit) = match self.rng.below(3) {
            0 => {
                let cost = *self
                    .rng
                    .pick(&["2147483647", "-2147483648", "not-a-number"])
                    .unwrap_or(&"0");
                (
                    "a deletion cost at the edge",
                    Box::new(move |p: &mut Value| {
                        p["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"] =
                            json!(cost)
                    }),
                )
            }
            1 => (
                "the largest restart count, a start in year 1",
                Box::new(|p: &mut Value| {
                    p["status"]["containerStatuses"] = json!([{
                        "name": "app", "ready": true, "started": true, "image": "crane",
                        "imageID": "", "restartCount": i32::MAX,
                        "state": {"running": {"startedAt": "0001-01-01T00:00:00Z"}},
                        "lastState": {"terminated": {"exitCode": i32::MIN,
                            "startedAt": "0001-01-01T00:00:00Z", "finishedAt": "9998-12-31T23:59:59Z"}}
                    }]);
                }),
            ),
            _ => (
                "conditions at the oldest and latest times",
                Box::new(|p: &mut Value| {
                    if let Some(conditions) = p["status"]["conditions"].as_array_mut() {
                        for (i, c) in conditions.iter_mut().enumerate() {
                            c["lastTransitionTime"] = json!(if i % 2 == 0 {
                                "0001-01-01T00:00:00Z"
                            } else {
                                "9998-12-31T23:59:59Z"
                            });
                        }
                    }
                }),
            ),
        };
        self.trace(format!("pod {ns}/{name}: {what}"));
        self.server.update(Kind::Pod, &ns, &name, edit);
    }

    /// Stores a value the operator's types refuse: in a CraneReplicaSet's status or a
    /// pod's condition (both admitted by the API server).
    fn poison(&mut self) {
        if self.rng.chance(0.5) {
            if let Some((ns, name)) = self.existing() {
                self.trace(format!("poison {ns}/{name}"));
                self.server.update(Kind::Crs, &ns, &name, |c| {
                    c["status"]["conditions"] = json!([{"type": "Ready", "status": "False", "reason": "Poison",
                        "message": "", "lastTransitionTime": BEYOND_JIFF}]);
                });
            }
        } else if let Some(pod) = self.pod(true) {
            let (ns, name) = names(&pod);
            if pod["status"]["conditions"].is_array() {
                self.trace(format!("poison pod {ns}/{name}"));
                self.server.update(Kind::Pod, &ns, &name, |p| {
                    p["status"]["conditions"][0]["lastTransitionTime"] = json!(BEYOND_JIFF);
                });
            }
        }
    }

    /// The users fix what they broke: poisoned objects are repaired. Returns whether there
    /// was any.
    fn heal(&mut self) -> bool {
        let poisoned: Vec<(Kind, String, String)> = {
            let s = self.server.lock();
            [Kind::Crs, Kind::Pod]
                .into_iter()
                .flat_map(|k| {
                    s.all(k)
                        .filter(|o| o.to_string().contains(BEYOND_JIFF))
                        .map(move |o| {
                            let (ns, name) = names(o);
                            (k, ns, name)
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let now = clock::now().to_string();
        let any = !poisoned.is_empty();
        for (kind, ns, name) in poisoned {
            self.trace(format!("repair {} {ns}/{name}", kind.kind()));
            self.server.update(kind, &ns, &name, |o| {
                let fixed = o.to_string().replace(BEYOND_JIFF, &now);
                *o = serde_json::from_str(&fixed).unwrap_or(Value::Null);
            });
        }
        any
    }
}

fn names(obj: &Value) -> (String, String) {
    (
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Whether the world is as it must be once quiet: every CraneReplicaSet with exactly its
/// replicas (up to date under RollingUpdate), no orphan it should adopt, its Service
/// there (or gone), and a status that tells the truth.
pub fn converged(server: &ApiServer) -> Result<(), String> {
    let s = server.lock();
    let pods: Vec<&Value> = s.all(Kind::Pod).collect();
    for obj in s.all(Kind::Crs) {
        let (ns, name) = names(obj);
        let at = format!("{ns}/{name}");
        // Left out by the operator until it is repaired.
        if obj.to_string().contains(BEYOND_JIFF) {
            continue;
        }
        let crs: CraneReplicaSet = serde_json::from_value(obj.clone())
            .map_err(|e| format!("{at} does not decode: {e}"))?;
        let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
        let in_ns = |p: &&&Value| p["metadata"]["namespace"] == json!(ns);
        let owned: Vec<&&Value> = pods
            .iter()
            .filter(in_ns)
            .filter(|p| controller_uid(p).as_deref() == Some(uid) && is_active(p))
            .collect();
        let replicas = crs.spec.replicas as usize;
        if owned.len() != replicas {
            return Err(format!(
                "{at} has {} active pods, wants {replicas}",
                owned.len()
            ));
        }
        let matches = |p: &Value| p["metadata"]["labels"]["app"] == json!(name);
        if let Some(orphan) = pods
            .iter()
            .filter(in_ns)
            .find(|p| controller_uid(p).is_none() && is_active(p) && matches(p))
        {
            return Err(format!(
                "{at} left the orphan {} unadopted",
                names(orphan).1
            ));
        }
        if let Some(stray) = owned.iter().find(|p| !matches(p)) {
            return Err(format!(
                "{at} still owns {}, whose labels no longer match",
                names(stray).1
            ));
        }
        let rolling = obj["spec"]["updateStrategy"]["type"] == "RollingUpdate";
        let hash = template_hash(&crs);
        let updated = owned
            .iter()
            .filter(|p| p["metadata"]["labels"][TEMPLATE_HASH_LABEL] == json!(hash))
            .count();
        if rolling && updated != replicas {
            return Err(format!(
                "{at}: {updated} of {replicas} pods up to date after a rollout"
            ));
        }
        let ready = owned.iter().filter(|p| is_ready(p)).count();
        // This world's kubelet makes every pod Ready (a failed one is no longer active):
        // until it has, the status still has news to tell.
        if ready != replicas {
            return Err(format!("{at}: {ready} of {replicas} pods Ready"));
        }
        let status = &obj["status"];
        let want = [
            ("observedGeneration", obj["metadata"]["generation"].clone()),
            ("replicas", json!(replicas)),
            ("readyReplicas", json!(ready)),
            ("availableReplicas", json!(ready)),
            ("updatedReplicas", json!(updated)),
        ];
        for (field, value) in want {
            let have = if status[field].is_null() {
                json!(0)
            } else {
                status[field].clone()
            };
            if have != value {
                return Err(format!(
                    "{at}: status.{field} is {have}, the truth is {value}"
                ));
            }
        }
        let svc_name = service_name(&crs);
        let svc = s.get(Kind::Service, &ns, &svc_name);
        if crs.spec.service.enabled {
            let Some(svc) = svc else {
                return Err(format!("{at}: its Service {svc_name} is missing"));
            };
            if controller_uid(svc).as_deref() != Some(uid) {
                return Err(format!(
                    "{at}: its Service {svc_name} is not controlled by it"
                ));
            }
            if svc["spec"]["selector"][OWNER_LABEL] != json!(name) {
                return Err(format!(
                    "{at}: its Service {svc_name} selects {}",
                    svc["spec"]["selector"]
                ));
            }
            if let Some(ip) = svc["status"]["loadBalancer"]["ingress"][0]["ip"].as_str()
                && !status["service"]["externalAddresses"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == ip))
            {
                return Err(format!(
                    "{at}: status.service is {}, the Service's address is {ip}",
                    status["service"]
                ));
            }
        } else if svc.is_some_and(|svc| controller_uid(svc).as_deref() == Some(uid)) {
            return Err(format!(
                "{at}: its Service {svc_name} is still there, service.enabled is false"
            ));
        }
    }
    Ok(())
}
