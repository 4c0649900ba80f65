//! What every e2e test stands on: a client for the test cluster, a namespace of its own,
//! the operator binary started for that namespace, and polling with a deadline.
//!
//! The cluster is the one in `KUBECONFIG`, else the local one from `make cluster`
//! (`.cluster/kubeconfig`). With `CRANE_E2E_EXTERNAL_OPERATOR=1` the tests expect an
//! operator that is already running (installed by Helm, say) instead of starting their own.

use std::fmt::Debug;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crane_operator::api::{CraneReplicaSet, CraneReplicaSetStatus};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};

use crate::placement::{KWOK_NODE_LABEL, on_kwok_nodes};

pub const POLL: Duration = Duration::from_millis(200);
/// Generous deadlines: these are correctness tests on a shared 2-core machine, not timings.
pub const SHORT: Duration = Duration::from_secs(30);
pub const LONG: Duration = Duration::from_secs(120);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A new log file `target/e2e-logs/<name>` for a process a test starts: its path and the
/// file.
pub fn new_log(name: &str) -> (PathBuf, File) {
    let logs = repo_root().join("target/e2e-logs");
    std::fs::create_dir_all(&logs).expect("create target/e2e-logs");
    let log = logs.join(name);
    let file = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    (log, file)
}

/// The kubeconfig the tests and the operator use.
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cluster/kubeconfig"))
}

pub fn external_operator() -> bool {
    std::env::var("CRANE_E2E_EXTERNAL_OPERATOR").is_ok_and(|v| v == "1" || v == "true")
}

/// A client for the test cluster. Fails the test, loudly, when there is none.
pub async fn client() -> Client {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "no test cluster: cannot read kubeconfig {}: {e}\n\
             Start the local cluster with `make cluster`, or set KUBECONFIG to another cluster.",
            path.display()
        )
    });
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {} is unusable: {e}", path.display()));
    let client = Client::try_from(config).expect("a client from the kubeconfig");
    client.apiserver_version().await.unwrap_or_else(|e| {
        panic!(
            "no test cluster: the API server in {} does not answer: {e}\n\
             Start the local cluster with `make cluster`, or set KUBECONFIG to another cluster.",
            path.display()
        )
    });
    client
}

/// Installs (or updates) the CRD and waits until it is served.
pub async fn install_crd(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crane_operator::api::crd();
    api.patch(
        "cranereplicasets.crane.dev",
        &PatchParams::apply("crane-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the CRD");
    wait_for("the CRD to be established", SHORT, || async {
        let crd = api
            .get("cranereplicasets.crane.dev")
            .await
            .map_err(|e| e.to_string())?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established
            .then_some(())
            .ok_or_else(|| "not established".to_string())
    })
    .await;
}

/// Polls `check` until it returns `Ok`, or fails the test after `timeout` with the last
/// state `check` described.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    wait_every(what, POLL, timeout, check).await
}

/// `wait_for` with another poll interval (a slower one for checks that list hundreds of
/// objects).
pub async fn wait_every<T, F, Fut>(
    what: &str,
    every: Duration,
    timeout: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {state}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// The operator binary, run for one namespace; killed when dropped.
pub struct Operator {
    child: Child,
    pub metrics_addr: String,
    pub log: PathBuf,
}

impl Operator {
    pub fn start(namespace: &str, extra_args: &[&str]) -> Self {
        Self::start_with_kubeconfig(namespace, extra_args, &kubeconfig_path())
    }

    fn spawn(namespace: &str, extra_args: &[&str], kubeconfig: &std::path::Path) -> Self {
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        Self::spawn_with(
            namespace,
            metrics_addr,
            extra_args,
            &[("KUBECONFIG", kubeconfig.as_os_str())],
        )
    }

    /// The operator binary for one namespace, serving its metrics on `metrics_addr`, with
    /// `envs` (KUBECONFIG among them, or a kubeconfig in `extra_args`).
    pub fn spawn_with(
        namespace: &str,
        metrics_addr: String,
        extra_args: &[&str],
        envs: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        let port = metrics_addr.rsplit(':').next().unwrap_or_default();
        let (log, out) = new_log(&format!("{namespace}-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_crane-operator"))
            .args([
                "run",
                "--namespace",
                namespace,
                "--metrics-addr",
                &metrics_addr,
            ])
            .args(extra_args)
            .env_remove("KUBECONFIG")
            .envs(envs.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,crane_operator=debug".into()),
            )
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the crane-operator binary");
        Self {
            child,
            metrics_addr,
            log,
        }
    }

    /// The process id, for tests that signal it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited, and how.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The scraped `/metrics` text.
    pub async fn metrics(&self) -> Result<String, String> {
        http_get(&self.metrics_addr, "/metrics").await
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!(
                "--- last lines of the operator log {} ---",
                self.log.display()
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A minimal HTTP/1.0 GET on loopback, enough to scrape the operator's endpoints.
pub async fn http_get(addr: &str, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP header")?;
    if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") {
        Ok(body.to_string())
    } else {
        Err(head.lines().next().unwrap_or_default().to_string())
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One test's world: its namespace and, unless external, its own operator.
pub struct TestEnv {
    pub client: Client,
    pub ns: String,
    pub operator: Option<Operator>,
}

impl TestEnv {
    /// A fresh namespace named after the test, with the CRD installed and an operator
    /// watching it.
    pub async fn new(test: &str) -> Self {
        let env = Self::without_operator(test).await;
        let operator = (!external_operator()).then(|| Operator::start(&env.ns, &[]));
        let mut env = env;
        env.operator = operator;
        env
    }

    /// The same, but no operator is started (tests that start their own).
    pub async fn without_operator(test: &str) -> Self {
        let client = client().await;
        install_crd(&client).await;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let ns = format!(
            "e2e-{test}-{:x}{}",
            nanos % 0xfffff,
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let namespaces: Api<Namespace> = Api::all(client.clone());
        // lb-allocator=off: the local cluster's LoadBalancer allocator (tests/cluster/lb.sh)
        // leaves this namespace's Services <pending>; the tests set their addresses.
        let namespace: Namespace = serde_json::from_value(json!({
            "metadata": {"name": ns, "labels": {"crane.dev/e2e": "true", "crane.dev/lb-allocator": "off"}}
        }))
        .expect("namespace");
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create the test namespace");
        wait_for("the namespace's default ServiceAccount", SHORT, || async {
            let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                Api::namespaced(client.clone(), &ns);
            sa.get_opt("default")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("not yet".to_string())
        })
        .await;
        Self {
            client,
            ns,
            operator: None,
        }
    }

    pub fn crs(&self) -> Api<CraneReplicaSet> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The status of the named CraneReplicaSet (empty while it has none), or what went
    /// wrong reading it, for `wait_for`.
    pub async fn status(&self, name: &str) -> Result<CraneReplicaSetStatus, String> {
        let crs = self.crs().get(name).await.map_err(|e| e.to_string())?;
        Ok(crs.status.unwrap_or_default())
    }

    /// Creates a CraneReplicaSet from JSON.
    pub async fn create(&self, manifest: Value) -> CraneReplicaSet {
        let crs: CraneReplicaSet =
            serde_json::from_value(manifest).expect("a CraneReplicaSet manifest");
        self.crs()
            .create(&PostParams::default(), &crs)
            .await
            .expect("create the CraneReplicaSet")
    }

    /// Active pods (not terminating, not finished) controlled by the named CraneReplicaSet.
    pub async fn active_pods(&self, name: &str) -> Result<Vec<Pod>, String> {
        let pods = self
            .pods()
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(pods
            .items
            .into_iter()
            .filter(|p| controlled_by(p, name))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .collect())
    }

    /// Waits until exactly `n` active pods of `name` exist, all Ready, and the status says
    /// so for the current generation.
    pub async fn wait_ready(&self, name: &str, n: usize, timeout: Duration) -> Vec<Pod> {
        wait_for(
            &format!("{n} ready pods of {name} and a status saying so"),
            timeout,
            || async {
                let pods = self.active_pods(name).await?;
                let ready = pods.iter().filter(|p| is_ready(p)).count();
                let crs = self.crs().get(name).await.map_err(|e| e.to_string())?;
                let st = crs.status.clone().unwrap_or_default();
                let current = st.observed_generation == crs.metadata.generation;
                if pods.len() == n
                    && ready == n
                    && current
                    && st.replicas == n as i32
                    && st.ready_replicas == n as i32
                {
                    Ok(pods)
                } else {
                    Err(format!(
                        "{} active, {ready} ready; status {st:?}",
                        pods.len()
                    ))
                }
            },
        )
        .await
    }

    /// Deletes the namespace (the tests do not wait for it to go).
    pub async fn cleanup(self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces.delete(&self.ns, &DeleteParams::default()).await;
    }
}

impl Drop for TestEnv {
    /// A test that fails before `cleanup` must not leave its pods filling the cluster's
    /// nodes for the tests after it.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kubectl")
                .args(["delete", "namespace", &self.ns, "--wait=false"])
                .env("KUBECONFIG", kubeconfig_path())
                .output();
        }
    }
}

impl TestEnv {
    /// Runs kubectl against the test cluster in this namespace; returns stdout or fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .args(["--namespace", &self.ns])
            .args(args)
            .env("KUBECONFIG", kubeconfig_path())
            .output()
            .expect("run kubectl (is it on PATH? `make test` puts the cluster's kubectl there)");
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

pub fn controlled_by(pod: &Pod, name: &str) -> bool {
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == "CraneReplicaSet" && o.name == name)
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The image of the suite's pods: the book's app (app/), as `make image` builds it. On the
/// local cluster the pods run on kwok's simulated nodes, which pull nothing; on kind,
/// tests/kind/e2e.sh loads it into the nodes with `kind load image-archive`, so no test
/// pulls an image from a registry.
pub const APP_IMAGE: &str = "localhost/crane-app:dev";

/// The book's CraneReplicaSet (the book's app, `APP_IMAGE`, containerPort 7070) with
/// `replicas`, its pods placed as the suite's are (`suite_pod_spec`).
pub fn crane(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "crane.dev/v1",
        "kind": "CraneReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": suite_pod_spec(json!({"containers": [{"name": "crane", "image": APP_IMAGE, "ports": [{"containerPort": 7070}]}]}))
            }
        }
    })
}

/// `pod_spec` placed where the suite's pods run: on kwok's simulated nodes when the
/// cluster has them (the local one), which make them Ready without running anything and
/// simulate failures; elsewhere (kind) wherever the scheduler likes. See placement.rs.
pub fn suite_pod_spec(mut pod_spec: Value) -> Value {
    on_kwok_nodes(&mut pod_spec, has_kwok_nodes());
    pod_spec
}

/// Whether the cluster has simulated nodes (asked once per test process).
pub fn has_kwok_nodes() -> bool {
    static KWOK: OnceLock<bool> = OnceLock::new();
    *KWOK.get_or_init(|| {
        let (key, value) = KWOK_NODE_LABEL;
        let selector = format!("{key}={value}");
        run_tool(
            "kubectl",
            &["get", "nodes", "-l", &selector, "-o", "name"],
            None,
        )
        .map(|nodes| !nodes.trim().is_empty())
        .unwrap_or_else(|e| panic!("list the cluster's nodes with kubectl: {e}"))
    })
}

/// Formats anything for a wait_for state.
pub fn seen<T: Debug>(value: T) -> String {
    format!("{value:?}")
}

// ---------------------------------------------------------------------------------------
// Helpers for the failure, validation, scale and operations tests.

impl TestEnv {
    /// Runs kubectl in this namespace, with `stdin` piped in when given; returns stdout on
    /// success and stderr (plus stdout) on failure, for tests that expect a refusal.
    pub fn kubectl_result(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let args: Vec<&str> = ["--namespace", self.ns.as_str()]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        run_tool("kubectl", &args, stdin)
    }

    /// The events.k8s.io events with `reason` about the named CraneReplicaSet.
    pub async fn events_for(
        &self,
        name: &str,
        reason: &str,
    ) -> Result<Vec<k8s_openapi::api::events::v1::Event>, String> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("CraneReplicaSet") && r.name.as_deref() == Some(name)
                })
            })
            .collect())
    }

    /// The condition of `type_` in the named CraneReplicaSet's status, if any.
    pub async fn condition(
        &self,
        name: &str,
        type_: &str,
    ) -> Result<Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>, String> {
        let crs = self.crs().get(name).await.map_err(|e| e.to_string())?;
        Ok(crs
            .status
            .unwrap_or_default()
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_))
    }

    /// The holder of the operator's leader Lease (the default name) in this namespace
    /// (None: no Lease, or released).
    pub async fn lease_holder(&self) -> Result<Option<String>, String> {
        self.lease_holder_of("crane-operator-leader").await
    }

    /// The holder of the leader Lease `name` in this namespace.
    pub async fn lease_holder_of(&self, name: &str) -> Result<Option<String>, String> {
        let api: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), &self.ns);
        let lease = api.get_opt(name).await.map_err(|e| e.to_string())?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }
}

/// The value of one series in a Prometheus text exposition, e.g.
/// `crane_operator_reconcile_total{result="success"}` or `crane_operator_leader`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// The type a Prometheus text exposition declares for a metric family (`# TYPE name type`).
pub fn metric_type<'a>(text: &'a str, family: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let mut words = l.strip_prefix("# TYPE ")?.split_whitespace();
        (words.next()? == family).then(|| words.next()).flatten()
    })
}

/// Watches `api` in the background and hands every object event to `record` (with `true`
/// for a deletion); returns once the initial list is in. Watch errors are collected: after
/// one, the watch re-lists, and what happened in the gap may have gone unseen.
pub async fn watch_in_background<K>(
    api: Api<K>,
    config: kube::runtime::watcher::Config,
    what: &str,
    mut record: impl FnMut(&K, bool) + Send + 'static,
) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<String>>>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Debug + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let errors = Arc::new(Mutex::new(Vec::new()));
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let stream = watcher(api, config).default_backoff();
    let task = {
        let errors = errors.clone();
        tokio::spawn(async move {
            let mut synced_tx = Some(synced_tx);
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        record(&o, false)
                    }
                    Ok(watcher::Event::Delete(o)) => record(&o, true),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = synced_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(watcher::Event::Init) => {}
                    Err(e) => errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(e.to_string()),
                }
            }
        })
    };
    tokio::time::timeout(SHORT, synced_rx)
        .await
        .unwrap_or_else(|_| panic!("{what} lists in time"))
        .unwrap_or_else(|_| panic!("{what} runs"));
    (task, errors)
}

/// When a pod was seen first and seen gone (or terminating), by the test's clock.
#[derive(Clone, Debug)]
#[allow(dead_code)] // read by the chaos tests
pub struct PodSighting {
    pub name: String,
    pub first_seen: jiff::Timestamp,
    pub gone_seen: Option<jiff::Timestamp>,
}

/// Every pod that appeared in a namespace since `start`, with the times the test saw it
/// appear and go, recorded by a watch running in the background: proves that a controller
/// never created more pods than it should have, even ones it deleted again.
pub struct PodsEverSeen {
    pods: Arc<Mutex<std::collections::BTreeMap<String, PodSighting>>>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodsEverSeen {
    /// Pods that went away (deleted, terminating, or ended Failed or Succeeded) other than
    /// the `deleted_by_operator` ones: each needs a replacement, which is no overshoot.
    #[allow(dead_code)] // used by the chaos tests
    pub fn lost_to_others(&self, deleted_by_operator: f64) -> i64 {
        let gone = self
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|p| p.gone_seen.is_some())
            .count() as i64;
        (gone - deleted_by_operator as i64).max(0)
    }

    pub async fn start(env: &TestEnv) -> Self {
        let pods = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let map = pods.clone();
        let (task, errors) = watch_in_background(
            env.pods(),
            kube::runtime::watcher::Config::default(),
            "the pod watch",
            move |p: &Pod, gone| {
                let now = jiff::Timestamp::now();
                let Some(uid) = p.uid() else { return };
                let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
                let entry = map.entry(uid).or_insert_with(|| PodSighting {
                    name: p.name_any(),
                    first_seen: now,
                    gone_seen: None,
                });
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                let ended = matches!(phase, Some("Succeeded" | "Failed"));
                if (gone || ended || p.metadata.deletion_timestamp.is_some())
                    && entry.gone_seen.is_none()
                {
                    entry.gone_seen = Some(now);
                }
            },
        )
        .await;
        Self { pods, errors, task }
    }

    /// The UIDs seen so far.
    pub fn uids(&self) -> std::collections::BTreeSet<String> {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Every pod seen so far, by UID.
    #[allow(dead_code)] // used by the chaos tests
    pub fn pods(&self) -> std::collections::BTreeMap<String, PodSighting> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Watch errors so far. After one, the watch re-lists and a pod created and deleted in
    /// the gap could go unseen, so a test that counts pods requires there were none.
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for PodsEverSeen {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestEnv {
    /// Touches the CraneReplicaSet `name` (an annotation: any change of it brings it to a
    /// pass) and waits until this test's operator has run that pass and is idle: a pass
    /// started since the touch was queued, none running, none waiting. Returns the object
    /// as the touch left it.
    pub async fn touch_and_wait_for_its_pass(&self, name: &str) -> CraneReplicaSet {
        let operator = self
            .operator
            .as_ref()
            .expect("the test counts the passes of the operator it starts");
        let sample = |text: &str, series: &str| {
            metric_value(text, series).ok_or_else(|| format!("no {series} in /metrics"))
        };
        const STARTED: &str = "crane_operator_workqueue_queue_duration_seconds_count";
        const DONE: &str = "crane_operator_reconcile_total{result=\"success\"}";
        let text = operator.metrics().await.expect("scrape the operator");
        let (started, done) = (
            sample(&text, STARTED).unwrap_or_else(|e| panic!("{e}")),
            sample(&text, DONE).unwrap_or_else(|e| panic!("{e}")),
        );
        let touch = json!({"metadata": {"annotations": {"example.com/touched": jiff::Timestamp::now().to_string()}}});
        let touched = self
            .crs()
            .patch(name, &PatchParams::default(), &Patch::Merge(touch))
            .await
            .unwrap_or_else(|e| panic!("touch {name}: {e}"));
        wait_for("the operator to run the touch's pass", SHORT, || async {
            let text = operator.metrics().await?;
            let now = (
                sample(&text, STARTED)?,
                sample(&text, DONE)?,
                sample(&text, "crane_operator_workqueue_depth")?,
                sample(&text, "crane_operator_active_workers")?,
            );
            (now.0 > started && now.1 > done && now.2 == 0.0 && now.3 == 0.0)
                .then_some(())
                .ok_or(format!(
                    "passes started {}, done {}, waiting {}, running {} ({started} started and {done} done before the touch)",
                    now.0, now.1, now.2, now.3
                ))
        })
        .await;
        touched
    }
}

// ---------------------------------------------------------------------------------------
// Helpers for the RBAC tests (rbac.rs): the operator run with another identity.

impl Operator {
    /// The operator binary for one namespace, with `kubeconfig` instead of the test
    /// cluster's admin kubeconfig (e.g. a ServiceAccount token's).
    pub fn start_with_kubeconfig(
        namespace: &str,
        extra_args: &[&str],
        kubeconfig: &std::path::Path,
    ) -> Self {
        Self::spawn(namespace, extra_args, kubeconfig)
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs a command from PATH (helm, kubectl) against the test cluster, with `stdin` piped in
/// when given; returns stdout on success, stderr (plus stdout) on failure.
pub fn run_tool(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    run_command(Command::new(program), program, args, stdin)
}

/// `kubectl crane ARGS` against the test cluster, kubectl finding the plugin on PATH as
/// `make install-plugin` installs it; stdout on success, stderr (plus stdout) on failure.
pub fn kubectl_crane(args: &[&str]) -> Result<String, String> {
    let mut kubectl = Command::new("kubectl");
    kubectl.env("PATH", path_with_plugin()).arg("crane");
    run_command(kubectl, "kubectl crane", args, None)
}

/// PATH with [`plugin_dir`] first.
pub fn path_with_plugin() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{}:{path}", plugin_dir().display())
}

/// A directory holding the binary as `make install-plugin` installs it: kubectl-crane and
/// kubectl_complete-crane (made once per test process).
pub fn plugin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_root().join(format!("target/e2e-plugins/{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the plugin directory");
        for name in ["kubectl-crane", "kubectl_complete-crane"] {
            let link = dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_crane-operator"), &link)
                .unwrap_or_else(|e| panic!("install {}: {e}", link.display()));
        }
        dir
    })
    .clone()
}

/// Runs `command` (`program`, for messages) with `args` against the test cluster.
fn run_command(
    mut command: Command,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, String> {
    use std::io::Write;
    let mut child = command
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("run {program}: {e} (is it on PATH? `source tests/cluster/env.sh` puts the cluster's there)")
        });
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("the child's stdin");
        pipe.write_all(input.as_bytes())
            .expect("write the child's stdin");
    }
    let out = child.wait_with_output().expect("wait for the child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{}{stdout}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The test cluster's admin kubeconfig, the name of its current context and that context.
pub fn admin_context() -> (Kubeconfig, String, kube::config::Context) {
    let path = kubeconfig_path();
    let admin = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("read kubeconfig {}: {e}", path.display()));
    let name = admin
        .current_context
        .clone()
        .expect("the admin kubeconfig has a current-context");
    let context = admin
        .contexts
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.context.clone())
        .unwrap_or_else(|| panic!("no context {name} in {}", path.display()));
    (admin, name, context)
}

/// A kubeconfig for the test cluster's API server (server and CA of the admin
/// kubeconfig's current context) that authenticates with `token` only, written to
/// `target/e2e-kubeconfigs/<name>.kubeconfig`; returns its path.
pub fn token_kubeconfig(name: &str, token: &str) -> PathBuf {
    let (admin, _, context) = admin_context();
    let admin_path = kubeconfig_path();
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .unwrap_or_else(|| panic!("no cluster {} in {}", context.cluster, admin_path.display()));
    let mut cluster_json = json!({"server": cluster.server.expect("the cluster has a server")});
    if let Some(data) = cluster.certificate_authority_data {
        cluster_json["certificate-authority-data"] = json!(data);
    } else if let Some(file) = cluster.certificate_authority {
        // A relative path is relative to the kubeconfig it was written in.
        let file = admin_path
            .parent()
            .map_or_else(|| PathBuf::from(&file), |dir| dir.join(&file));
        cluster_json["certificate-authority"] = json!(file);
    }
    if let Some(skip) = cluster.insecure_skip_tls_verify {
        cluster_json["insecure-skip-tls-verify"] = json!(skip);
    }
    if let Some(tls_server_name) = cluster.tls_server_name {
        cluster_json["tls-server-name"] = json!(tls_server_name);
    }
    // JSON is YAML: kubectl and kube-rs read it as a kubeconfig.
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster_json}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "test", "user": name}}],
        "current-context": name,
    });
    let dir = repo_root().join("target/e2e-kubeconfigs");
    std::fs::create_dir_all(&dir).expect("create target/e2e-kubeconfigs");
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&kubeconfig).expect("serialize the kubeconfig"),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}
