//! The cluster under test: a client, namespaces of this run, the three workloads, and the
//! control-plane processes (kube-controller-manager, kube-scheduler) when they run here.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use crane_operator::api::CraneReplicaSet;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};
use serde::Serialize;
use serde_json::{Value, json};

use crate::operator::Metrics;
use crate::placement::on_kwok_nodes;
use crate::track::ApiRequests;

/// Label on every namespace of a run (value: the run id), for finding leftovers by hand.
pub const BENCH_LABEL: &str = "crane.dev/bench";

/// Who keeps the pods: crane-operator, kube-controller-manager's ReplicaSet controller, or
/// the bench itself creating bare pods (the API server's limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Crane,
    Native,
    Raw,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Crane => "crane",
            Variant::Native => "native",
            Variant::Raw => "raw",
        }
    }
}

pub struct Cluster {
    pub client: Client,
    /// The API server URL, as in the kubeconfig (no trailing slash).
    pub server: String,
    pub run_id: String,
    namespaces: Mutex<Vec<String>>,
    seq: Mutex<u32>,
}

impl Cluster {
    pub async fn connect(run_id: String) -> Result<Self> {
        let config = Config::infer()
            .await
            .context("no cluster: set KUBECONFIG (make bench starts the local one)")?;
        let server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let client = Client::try_from(config)?;
        client
            .apiserver_version()
            .await
            .with_context(|| format!("the API server {server} does not answer"))?;
        Ok(Self {
            client,
            server,
            run_id,
            namespaces: Mutex::default(),
            seq: Mutex::new(0),
        })
    }

    /// Installs (or updates) the CRD and waits until it is served.
    pub async fn install_crd(&self) -> Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        api.patch(
            "cranereplicasets.crane.dev",
            &PatchParams::apply("crane-bench").force(),
            &Patch::Apply(&crane_operator::api::crd()),
        )
        .await
        .context("apply the CraneReplicaSet CRD")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let crd = api.get("cranereplicasets.crane.dev").await?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the CRD is not established after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// kube-apiserver's request counts and latencies so far (its /metrics).
    pub async fn apiserver_requests(&self) -> Result<ApiRequests> {
        let request = http::Request::get("/metrics").body(Vec::new())?;
        let text = self
            .client
            .request_text(request)
            .await
            .context("GET /metrics of kube-apiserver")?;
        Ok(ApiRequests::parse(&text))
    }

    /// A fresh namespace `cb-<run>-<n>-<tag>`, ready for pods (its default ServiceAccount
    /// exists: the ServiceAccount admission plugin refuses pods before).
    pub async fn new_namespace(&self, tag: &str) -> Result<String> {
        let n = {
            let mut seq = self.seq.lock().unwrap();
            *seq += 1;
            *seq
        };
        let name = format!("cb-{}-{n}-{tag}", self.run_id);
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {BENCH_LABEL: self.run_id}}
        }))?;
        api.create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("create namespace {name}"))?;
        self.namespaces.lock().unwrap().push(name.clone());
        let sa: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        let deadline = Instant::now() + Duration::from_secs(60);
        while sa.get_opt("default").await?.is_none() {
            if Instant::now() > deadline {
                bail!(
                    "no ServiceAccount default in {name} after 60 s (is kube-controller-manager running?)"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(name)
    }

    /// Deletes a namespace of this run and waits until its pods are gone (the namespace
    /// controller then finishes in the background: [`Cluster::wait_gone`] waits for that).
    /// Returns how long the pods took to go.
    pub async fn delete_namespace(&self, name: &str, timeout: Duration) -> Result<Duration> {
        self.delete_namespace_reporting(name, timeout, |_| {}).await
    }

    /// [`Cluster::delete_namespace`], telling `progress` every 5 s how many pods are left.
    pub async fn delete_namespace_reporting(
        &self,
        name: &str,
        timeout: Duration,
        progress: impl Fn(usize),
    ) -> Result<Duration> {
        let start = Instant::now();
        // The namespace controller starts only after some seconds: remove the owners, then
        // the pods at once (no grace period; nothing runs), then the namespace.
        let all = ListParams::default();
        let background = DeleteParams::background();
        let crs: Api<CraneReplicaSet> = Api::namespaced(self.client.clone(), name);
        let rss: Api<ReplicaSet> = Api::namespaced(self.client.clone(), name);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), name);
        let _ = crs.delete_collection(&background, &all).await;
        let _ = rss.delete_collection(&background, &all).await;
        // A deletecollection ends at the API server's request timeout (a minute), which
        // tens of thousands of pods outlast: it is sent again until none are left.
        let purge = || {
            let pods = pods.clone();
            tokio::spawn(async move {
                let now = DeleteParams::default().grace_period(0);
                let _ = pods.delete_collection(&now, &ListParams::default()).await;
            })
        };
        let mut purging = purge();
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("delete namespace {name}")),
        }
        let mut next_line = start + Duration::from_secs(5);
        loop {
            let left = pods_left(&pods).await?;
            if left == 0 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("namespace {name} still has {left} pods {timeout:?} after its deletion");
            }
            if Instant::now() >= next_line {
                progress(left);
                next_line += Duration::from_secs(5);
            }
            if purging.is_finished() {
                purging = purge();
            }
            let poll = if left > 1000 { 500 } else { 100 };
            tokio::time::sleep(Duration::from_millis(poll)).await;
        }
    }

    /// Waits until every namespace this run deleted is gone.
    pub async fn wait_gone(&self, timeout: Duration) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let start = Instant::now();
        loop {
            let mine = ListParams::default().labels(&format!("{BENCH_LABEL}={}", self.run_id));
            let left = api.list_metadata(&mine).await?.items.len();
            if left == 0 {
                self.namespaces.lock().unwrap().clear();
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("{left} namespaces of this run still exist after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes every namespace this run made (on failure or interruption too) and waits
    /// until they are gone.
    pub async fn cleanup(&self) -> Result<()> {
        let left: Vec<String> = self.namespaces.lock().unwrap().clone();
        for ns in left {
            if let Err(e) = self.delete_namespace(&ns, Duration::from_secs(300)).await {
                eprintln!("[bench] cleanup: {e:#}");
            }
        }
        self.wait_gone(Duration::from_secs(300)).await
    }

    pub async fn version(&self) -> String {
        self.client
            .apiserver_version()
            .await
            .map(|v| v.git_version)
            .unwrap_or_else(|_| "?".into())
    }
}

/// How many pods `pods` has: the API server counts them (one item and the rest's count).
pub async fn pods_left(pods: &Api<Pod>) -> Result<usize> {
    let list = pods.list_metadata(&ListParams::default().limit(1)).await?;
    let rest = list.metadata.remaining_item_count.unwrap_or(0);
    Ok(list.items.len() + usize::try_from(rest).unwrap_or(0))
}

/// What one run makes: `objects` CraneReplicaSets or ReplicaSets of `replicas` pods each
/// (raw: `objects * replicas` bare pods).
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub variant: Variant,
    pub objects: usize,
    pub replicas: usize,
    /// Pods for a scheduler that does not exist: they stay Pending and nothing but their
    /// controller ever writes them (the memory step: 10,000 pods without the scheduler's and
    /// kwok's work).
    pub unscheduled: bool,
}

impl Workload {
    pub fn pods(&self) -> usize {
        self.objects * self.replicas
    }
}

/// The scheduler name of unscheduled pods: no scheduler has it.
pub const NO_SCHEDULER: &str = "crane-bench-no-scheduler";

/// The pod template of every workload: one container, on a simulated node, where kwok
/// makes it Running and Ready as soon as it is scheduled (nothing runs).
pub fn pod_template(app: &str, unscheduled: bool) -> Value {
    let mut t = json!({
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": "app", "image": "crane-bench/app:1"}]}
    });
    on_kwok_nodes(&mut t["spec"], true);
    if unscheduled {
        t["spec"]["schedulerName"] = json!(NO_SCHEDULER);
    }
    t
}

/// Writes by the bench carry its own field manager (the operator is a kube-rs client too).
fn post() -> PostParams {
    PostParams {
        field_manager: Some("crane-bench".into()),
        ..PostParams::default()
    }
}

/// A CraneReplicaSet without a Service (the native ReplicaSet makes none either).
pub fn crane(name: &str, replicas: usize, unscheduled: bool) -> Result<CraneReplicaSet> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "crane.dev/v1", "kind": "CraneReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": pod_template(name, unscheduled),
            "service": {"enabled": false}
        }
    }))?)
}

pub fn replica_set(name: &str, replicas: usize, unscheduled: bool) -> Result<ReplicaSet> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": pod_template(name, unscheduled)
        }
    }))?)
}

/// Creates the workload's owner objects (`<prefix>` or `<prefix>-000`, ...), `parallel`
/// requests at a time; for `Raw`, its bare pods.
pub async fn create_workload(
    client: &Client,
    ns: &str,
    w: &Workload,
    prefix: &str,
    parallel: usize,
) -> Result<()> {
    let names: Vec<String> = if w.objects == 1 {
        vec![prefix.to_string()]
    } else {
        (0..w.objects).map(|i| format!("{prefix}-{i:03}")).collect()
    };
    match w.variant {
        Variant::Raw => {
            create_raw_pods(client, ns, prefix, w.pods(), w.unscheduled, parallel).await
        }
        owner => {
            create_owners(
                client,
                ns,
                owner,
                names,
                w.replicas,
                w.unscheduled,
                parallel,
            )
            .await
        }
    }
}

/// Creates CraneReplicaSets (`Crane`) or ReplicaSets (`Native`) of `replicas` pods, one per
/// name, `parallel` requests at a time.
pub async fn create_owners(
    client: &Client,
    ns: &str,
    variant: Variant,
    names: Vec<String>,
    replicas: usize,
    unscheduled: bool,
    parallel: usize,
) -> Result<()> {
    let crs: Api<CraneReplicaSet> = Api::namespaced(client.clone(), ns);
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    stream::iter(names)
        .map(|name| {
            let (crs, rss) = (crs.clone(), rss.clone());
            async move {
                match variant {
                    Variant::Native => rss
                        .create(&post(), &replica_set(&name, replicas, unscheduled)?)
                        .await
                        .map(drop)
                        .with_context(|| format!("create ReplicaSet {name}")),
                    _ => crs
                        .create(&post(), &crane(&name, replicas, unscheduled)?)
                        .await
                        .map(drop)
                        .with_context(|| format!("create CraneReplicaSet {name}")),
                }
            }
        })
        .buffer_unordered(parallel.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// The raw baseline: `n` bare pods, `parallel` create requests in flight.
pub async fn create_raw_pods(
    client: &Client,
    ns: &str,
    app: &str,
    n: usize,
    unscheduled: bool,
    parallel: usize,
) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut pod: Pod = serde_json::from_value(pod_template(app, unscheduled))?;
    pod.metadata.generate_name = Some(format!("{app}-"));
    stream::iter(0..n)
        .map(|_| {
            let (api, pod) = (api.clone(), pod.clone());
            async move { api.create(&post(), &pod).await.context("create a bare pod") }
        })
        .buffer_unordered(parallel.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// A control-plane process of the cluster under test, found in /proc: its kubeconfig
/// names the same API server as ours.
#[derive(Clone, Debug, Serialize)]
pub struct Component {
    pub name: String,
    pub pid: u32,
    pub args: Vec<String>,
}

impl Component {
    /// The value of `--flag=value` (or `--flag value`) on its command line.
    pub fn flag(&self, flag: &str) -> Option<String> {
        let long = format!("--{flag}");
        let with_eq = format!("{long}=");
        self.args.iter().enumerate().find_map(|(i, a)| {
            a.strip_prefix(&with_eq).map(str::to_string).or_else(|| {
                (*a == long)
                    .then(|| self.args.get(i + 1).cloned())
                    .flatten()
            })
        })
    }

    /// Its Prometheus metrics from its secure port, when anyone may read them
    /// (`--authorization-always-allow-paths` names /metrics, as the local cluster's
    /// kube-controller-manager's does); its serving certificate is not checked.
    pub async fn metrics(&self) -> Result<Metrics> {
        let open = self
            .flag("authorization-always-allow-paths")
            .is_some_and(|p| p.split(',').any(|p| p == "/metrics"));
        if !open {
            bail!(
                "{} does not serve /metrics without authorization",
                self.name
            );
        }
        let port = self.flag("secure-port").unwrap_or_else(|| "10257".into());
        let host = self
            .flag("bind-address")
            .filter(|a| !a.is_empty() && a != "0.0.0.0" && a != "::")
            .unwrap_or_else(|| "127.0.0.1".into());
        let mut config = Config::new(format!("https://{host}:{port}").parse()?);
        config.accept_invalid_certs = true;
        let request = http::Request::get("/metrics").body(Vec::new())?;
        let text = Client::try_from(config)?
            .request_text(request)
            .await
            .with_context(|| format!("GET /metrics of {}", self.name))?;
        Ok(Metrics(text))
    }

    /// `flag=value`, or `flag=default (default)` when not given.
    pub fn flag_or(&self, flag: &str, default: &str) -> String {
        match self.flag(flag) {
            Some(v) => format!("--{flag}={v}"),
            None => format!("--{flag}={default} (default)"),
        }
    }
}

/// The processes whose command line names `dir` (the control plane of a kwokctl cluster:
/// every component's flags name files of its directory).
pub fn processes_of(dir: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(dir))
        })
        .collect()
}

/// kube-apiserver of the cluster at `server`: the process serving its port.
pub fn find_apiserver(server: &str) -> Option<Component> {
    let port = server.rsplit(':').next()?.trim_end_matches('/').to_string();
    processes("kube-apiserver").find(|c| c.flag("secure-port").as_deref() == Some(port.as_str()))
}

/// Every process whose program is `name`.
fn processes(name: &str) -> impl Iterator<Item = Component> + '_ {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (args.first()?.rsplit('/').next() == Some(name)).then(|| Component {
                name: name.to_string(),
                pid,
                args,
            })
        })
}

pub fn find_component(name: &str, server: &str) -> Option<Component> {
    processes(name).find(|comp| {
        let Some(kubeconfig) = comp.flag("kubeconfig") else {
            return false;
        };
        let Ok(text) = std::fs::read_to_string(&kubeconfig) else {
            return false;
        };
        text.lines().any(|l| {
            l.trim()
                .trim_start_matches("server:")
                .trim()
                .trim_end_matches('/')
                == server
        })
    })
}
