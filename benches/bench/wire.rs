//! The wire format's cost to kube-apiserver (scenario `wire`): what a pod create, a pod
//! watch event and a start-up relist cost its CPU when the client speaks JSON (kube-rs,
//! hence crane-operator) or protobuf (client-go, hence kube-controller-manager).
//!
//! Arms, each measured as kube-apiserver's CPU seconds over the arm minus its idle rate
//! (node heartbeats of 100 kwok nodes; taken for a second before the arm) over the same
//! time, rotated each round, once every earlier namespace is gone:
//! - `create json` / `create protobuf`: the same bare pod (unscheduled, so no scheduler or
//!   kwok work follows), body and answer in that format, 32 requests in flight;
//! - `watch none` / `watch json` / `watch protobuf`: one label patch per pod (JSON merge
//!   patch in every arm) with no extra watch, or one watch of the namespace's pods in that
//!   format that must see every change; the watch's own cost per event is the arm minus
//!   `watch none`;
//! - `list paged` / `list streaming`: a kube-runtime watcher's initial list of the
//!   namespace's pods, pages of 500 (the default) or a streaming list (`sendInitialEvents`,
//!   `watcher::Config::streaming_lists()`), until the watcher says the list is done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use prost::Message;
use serde::Serialize;
use serde_json::json;

use crate::cluster::NO_SCHEDULER;
use crate::scenarios::Bench;

pub const JSON: &str = "application/json";
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
/// Requests in flight while creating or patching (the raw baseline's best on this machine).
const IN_FLIGHT: usize = 32;

/// One arm of one round.
#[derive(Clone, Debug, Serialize)]
pub struct WireRun {
    pub round: usize,
    pub arm: &'static str,
    /// Pods created, changes watched or pods listed.
    pub items: usize,
    pub seconds: f64,
    /// kube-apiserver CPU seconds over the arm, its idle rate over the same time taken off.
    pub apiserver_cpu_s: f64,
}

impl WireRun {
    pub fn cpu_ms_per_item(&self) -> f64 {
        1000.0 * self.apiserver_cpu_s / self.items.max(1) as f64
    }
}

pub const ARMS: [&str; 7] = [
    "create json",
    "create protobuf",
    "watch none",
    "watch json",
    "watch protobuf",
    "list paged",
    "list streaming",
];

/// The bare pod of every create arm, as JSON.
fn pod_json(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "wire"}},
        "spec": {
            "schedulerName": NO_SCHEDULER,
            "containers": [{"name": "app", "image": "crane-bench/app:1"}]
        }
    }))
    .expect("a pod serialises")
}

/// The same pod in Kubernetes' protobuf envelope: the magic `k8s\0`, then a
/// `runtime.Unknown` holding the type and the encoded `v1.Pod`.
pub fn pod_protobuf(name: &str) -> Vec<u8> {
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    let pod = core::Pod {
        metadata: Some(ObjectMeta {
            name: Some(name.into()),
            labels: [("app".to_string(), "wire".to_string())].into(),
            ..Default::default()
        }),
        spec: Some(core::PodSpec {
            scheduler_name: Some(NO_SCHEDULER.into()),
            containers: vec![core::Container {
                name: Some("app".into()),
                image: Some("crane-bench/app:1".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    let envelope = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
        }),
        raw: Some(pod.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(envelope.encode_to_vec());
    body
}

/// Creates pod `name` in `format` (body and answer), failing unless the API server
/// answers 201 in that format.
async fn create(client: &kube::Client, ns: &str, name: &str, format: &str) -> Result<()> {
    let body = if format == PROTOBUF {
        pod_protobuf(name)
    } else {
        pod_json(name)
    };
    let request = http::Request::post(format!("/api/v1/namespaces/{ns}/pods"))
        .header(http::header::CONTENT_TYPE, format)
        .header(http::header::ACCEPT, format)
        .body(body.into())?;
    let response = client.send(request).await?;
    let status = response.status();
    let answered = content_type(&response);
    let body = response.into_body().collect().await?.to_bytes();
    if status != http::StatusCode::CREATED {
        bail!(
            "create pod {name} ({format}): {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    if !answered.starts_with(format) {
        bail!("create pod {name}: asked for {format}, the API server answered {answered}");
    }
    Ok(())
}

fn content_type<B>(response: &http::Response<B>) -> String {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// A watch of `ns`'s pods from `resource_version` in `format`; counts the events it
/// receives (JSON: one per line; protobuf: length-prefixed frames).
async fn watch(
    client: &kube::Client,
    ns: &str,
    resource_version: &str,
    format: &str,
    seen: Arc<AtomicUsize>,
) -> Result<tokio::task::JoinHandle<()>> {
    let request = http::Request::get(format!(
        "/api/v1/namespaces/{ns}/pods?watch=true&resourceVersion={resource_version}&timeoutSeconds=300"
    ))
    .header(http::header::ACCEPT, format)
    .body(kube::client::Body::empty())?;
    let response = client.send(request).await?;
    if response.status() != http::StatusCode::OK {
        bail!("watch ({format}): {}", response.status());
    }
    let answered = content_type(&response);
    if !answered.starts_with(format) {
        bail!("watch: asked for {format}, the API server answered {answered}");
    }
    let protobuf = format == PROTOBUF;
    let mut body = response.into_body();
    Ok(tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            let mut used = 0;
            loop {
                let rest = &buf[used..];
                let event_len = if protobuf {
                    match rest.get(..4) {
                        Some(len) => {
                            let n = u32::from_be_bytes(len.try_into().unwrap()) as usize;
                            (rest.len() >= 4 + n).then_some(4 + n)
                        }
                        None => None,
                    }
                } else {
                    rest.iter().position(|b| *b == b'\n').map(|i| i + 1)
                };
                match event_len {
                    Some(n) => {
                        used += n;
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                    None => break,
                }
            }
            buf.drain(..used);
        }
    }))
}

impl Bench {
    /// kube-apiserver's idle CPU rate (CPU seconds per second) over `over`.
    async fn apiserver_idle_rate(&self, over: Duration) -> Result<f64> {
        let a = self.apiserver_cpu()?;
        let t = Instant::now();
        tokio::time::sleep(over).await;
        Ok((self.apiserver_cpu()? - a) / t.elapsed().as_secs_f64())
    }

    fn apiserver_cpu(&self) -> Result<f64> {
        self.apiserver_usage().map(|u| u.cpu_s).context(
            "kube-apiserver's process is not on this machine: the wire scenario reads its CPU",
        )
    }

    /// `work` measured: its items, time and kube-apiserver CPU less the idle rate.
    async fn measured<F>(
        &self,
        round: usize,
        arm: &'static str,
        idle: f64,
        work: F,
    ) -> Result<WireRun>
    where
        F: Future<Output = Result<usize>>,
    {
        let cpu = self.apiserver_cpu()?;
        let start = Instant::now();
        let items = work.await.with_context(|| format!("wire: {arm}"))?;
        let seconds = start.elapsed().as_secs_f64();
        let apiserver_cpu_s = (self.apiserver_cpu()? - cpu - idle * seconds).max(0.0);
        Ok(WireRun {
            round,
            arm,
            items,
            seconds,
            apiserver_cpu_s,
        })
    }

    /// Every round of every arm; pods accumulate in one namespace (the list arms read
    /// them all), which is deleted at the end.
    pub async fn wire(&self, pods: usize, rounds: usize) -> Result<Vec<WireRun>> {
        let ns = self.cluster.new_namespace("wire").await?;
        let client = self.cluster.client.clone();
        let pod_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let mut runs = Vec::new();
        for round in 1..=rounds {
            let mut arms = ARMS.to_vec();
            arms.rotate_left((round - 1) % ARMS.len());
            for arm in arms {
                let idle = self.apiserver_idle_rate(Duration::from_secs(1)).await?;
                let run = match arm {
                    "create json" | "create protobuf" => {
                        let format = if arm == "create json" { JSON } else { PROTOBUF };
                        let tag = if format == JSON { "j" } else { "p" };
                        let work = async {
                            stream::iter(0..pods)
                                .map(|i| {
                                    let name = format!("wire-{round}-{tag}-{i}");
                                    let (client, ns) = (&client, &ns);
                                    async move { create(client, ns, &name, format).await }
                                })
                                .buffer_unordered(IN_FLIGHT)
                                .try_collect::<Vec<()>>()
                                .await?;
                            Ok(pods)
                        };
                        self.measured(round, arm, idle, work).await?
                    }
                    "watch none" | "watch json" | "watch protobuf" => {
                        // `pods` of the pods created so far; the watch starts at the list.
                        let list = pod_api
                            .list_metadata(&ListParams::default().labels("app=wire"))
                            .await?;
                        let rv = list.metadata.resource_version.unwrap_or_default();
                        let targets: Vec<String> = list
                            .items
                            .into_iter()
                            .filter_map(|p| p.metadata.name)
                            .take(pods)
                            .collect();
                        let seen = Arc::new(AtomicUsize::new(0));
                        let watcher = match arm {
                            "watch json" => {
                                Some(watch(&client, &ns, &rv, JSON, seen.clone()).await?)
                            }
                            "watch protobuf" => {
                                Some(watch(&client, &ns, &rv, PROTOBUF, seen.clone()).await?)
                            }
                            _ => None,
                        };
                        let value = format!("{round}-{}", arm.replace(' ', "-"));
                        let work = async {
                            stream::iter(targets.iter())
                                .map(|name| {
                                    let patch =
                                        json!({"metadata": {"labels": {"crane.dev/wire": value}}});
                                    let pod_api = &pod_api;
                                    async move {
                                        pod_api
                                            .patch(
                                                name,
                                                &PatchParams::default(),
                                                &Patch::Merge(patch),
                                            )
                                            .await
                                    }
                                })
                                .buffer_unordered(IN_FLIGHT)
                                .try_collect::<Vec<_>>()
                                .await?;
                            if watcher.is_some() {
                                let deadline = Instant::now() + Duration::from_secs(60);
                                while seen.load(Ordering::Relaxed) < targets.len() {
                                    if Instant::now() > deadline {
                                        bail!(
                                            "the watch saw {} of {} changes in 60 s",
                                            seen.load(Ordering::Relaxed),
                                            targets.len()
                                        );
                                    }
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                            }
                            Ok(targets.len())
                        };
                        let run = self.measured(round, arm, idle, work).await;
                        if let Some(w) = watcher {
                            w.abort();
                        }
                        run?
                    }
                    _ => {
                        let config = match arm {
                            "list streaming" => watcher::Config::default().streaming_lists(),
                            _ => watcher::Config::default(),
                        };
                        let api = pod_api.clone();
                        let work = async move {
                            let mut events = std::pin::pin!(watcher(api, config));
                            let mut items = 0;
                            while let Some(event) = events.try_next().await? {
                                match event {
                                    watcher::Event::InitApply(_) => items += 1,
                                    watcher::Event::InitDone => return Ok(items),
                                    _ => {}
                                }
                            }
                            bail!("the watcher ended before its initial list was done")
                        };
                        self.measured(round, arm, idle, work).await?
                    }
                };
                self.progress(format!(
                    "wire round {round}/{rounds} {arm}: {} items in {:.2} s, kube-apiserver {:.3} CPU ms each",
                    run.items,
                    run.seconds,
                    run.cpu_ms_per_item()
                ));
                runs.push(run);
            }
        }
        self.cluster
            .delete_namespace(&ns, Duration::from_secs(300))
            .await?;
        Ok(runs)
    }
}
