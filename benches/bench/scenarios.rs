//! The scenarios: one run converges one workload in a fresh namespace and measures it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use crane_operator::api::CraneReplicaSet;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DeleteParams};
use serde::Serialize;

use crate::cluster::{self, Cluster, Component, Variant, Workload};
use crate::operator::{Operator, Usage};
use crate::track::{ApiRequests, PodTracker, WriteCounter, Writes};

/// What the whole run was asked to do (see `Opts` in main.rs for the defaults).
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub profile: &'static str,
    pub sizes: Vec<usize>,
    pub rounds: usize,
    pub fanout_objects: usize,
    pub fanout_replicas: usize,
    pub fanout_rounds: usize,
    pub recovery_samples: usize,
    pub recovery_replicas: usize,
    pub steady_pods: usize,
    pub steady_window_s: f64,
    /// Also the steady-state step with a ReplicaSet.
    pub steady_native: bool,
    pub fanout_window_s: f64,
    pub raw_candidates: Vec<usize>,
    pub raw_concurrency: Option<usize>,
    /// crane-operator --concurrency (kube-controller-manager --concurrent-replicaset-syncs).
    pub concurrency: u16,
    /// Parallel requests with which the bench creates the CraneReplicaSets / ReplicaSets
    /// of the fan-out and the fleet.
    pub object_parallelism: usize,
    /// The fleet at its largest: objects × pods each (fleet.rs).
    pub fleet_objects: usize,
    pub fleet_replicas: usize,
    /// The objects of the fleet at each step it grows through (the last is `fleet_objects`).
    pub fleet_steps: Vec<usize>,
    /// Samples of each pass-cost probe at each step.
    pub fleet_probes: usize,
    /// Seconds of the fleet's steady-state window.
    pub fleet_window_s: f64,
    /// Pods of each create arm of the wire scenario, and its rounds (wire.rs).
    pub wire_pods: usize,
    pub wire_rounds: usize,
}

pub struct Bench {
    pub cluster: Cluster,
    pub plan: Plan,
    pub operator_bin: PathBuf,
    pub log_dir: PathBuf,
    pub kcm: Option<Component>,
    pub apiserver: Option<Component>,
    pub started: Instant,
    /// Bare-pod creation concurrency of the raw baseline (tuned at the start).
    pub raw: AtomicUsize,
}

/// One convergence: `objects` owners × `replicas` pods (raw: that many bare pods) until all
/// are Ready.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub scenario: &'static str,
    pub variant: Variant,
    pub round: usize,
    pub objects: usize,
    pub pods: usize,
    /// The pods were never scheduled: the run ended when they all existed (`ready_s` is
    /// then the time until all existed).
    pub unscheduled: bool,
    pub namespace: String,
    /// From the first create request to the watch showing every pod Ready.
    pub ready_s: f64,
    /// From the first create request to the watch showing every pod (created).
    pub created_s: f64,
    /// Until every create request of the bench had returned (the owner objects; raw: the
    /// pods).
    pub requests_s: Option<f64>,
    /// (seconds since the first request, pods Ready), at every change.
    pub timeline: Vec<(f64, usize)>,
    /// The writes in the namespace from the first request until every pod was Ready.
    pub writes: Writes,
    /// After every pod was Ready, until the namespace had no write for 2 s.
    pub settle_s: f64,
    pub writes_settling: Writes,
    pub operator: Option<OperatorRun>,
    /// kube-controller-manager's CPU seconds from the first request until Ready (all of its
    /// controllers: the garbage collector sees every pod too).
    pub kcm_cpu_s: Option<f64>,
    /// kube-controller-manager before the first request and when every pod was Ready.
    pub kcm_usage_start: Option<Usage>,
    pub kcm_usage_at_ready: Option<Usage>,
    /// kube-apiserver's CPU seconds from the first request until Ready.
    pub apiserver_cpu_s: Option<f64>,
    /// kube-apiserver's requests (every client) from the first request until Ready.
    pub apiserver_requests: ApiRequests,
    /// The controller's requests by verb over the same time, with the latency it saw
    /// (crane-operator's or kube-controller-manager's own metrics; none for raw).
    pub controller_requests: ApiRequests,
    pub steady: Option<Steady>,
    pub teardown_s: f64,
}

impl Run {
    pub fn pods_per_s(&self) -> f64 {
        self.pods as f64 / self.ready_s
    }

    /// Pods created beyond the `pods` asked for, until the namespace settled (an overshoot:
    /// the controller later deletes them again).
    pub fn extra_pods(&self) -> u64 {
        let creates = |w: &Writes| -> u64 {
            w.by_writer
                .iter()
                .filter(|(k, _)| k.starts_with("pods create"))
                .map(|(_, v)| v)
                .sum()
        };
        (creates(&self.writes) + creates(&self.writes_settling)).saturating_sub(self.pods as u64)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct OperatorRun {
    pub reconciles: f64,
    pub reconcile_errors: f64,
    pub pods_created: f64,
    pub reconcile_seconds_sum: f64,
    /// Requests the operator sent to the API server (retries included), from its start.
    pub api_requests: f64,
    /// CPU seconds from the first request until every pod was Ready.
    pub cpu_s: f64,
    /// Started, caches synced, no pods yet.
    pub usage_start: Usage,
    pub usage_at_ready: Usage,
    pub log: String,
}

/// A window after convergence.
#[derive(Clone, Debug, Serialize)]
pub struct Steady {
    pub window_s: f64,
    pub writes: Writes,
    pub operator_cpu_s: Option<f64>,
    pub operator_usage: Option<Usage>,
    pub kcm_cpu_s: Option<f64>,
    pub kcm_usage: Option<Usage>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Recovery {
    pub variant: Variant,
    pub replicas: usize,
    /// Delete request sent → the watch shows the replacement pod, per sample.
    pub samples_ms: Vec<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RawTuning {
    pub concurrency: usize,
    pub pods: usize,
    pub seconds: f64,
    pub pods_per_s: f64,
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn owner_resource(variant: Variant) -> ApiResource {
    match variant {
        Variant::Native => ApiResource::erase::<ReplicaSet>(&()),
        _ => ApiResource::erase::<CraneReplicaSet>(&()),
    }
}

impl Bench {
    pub fn progress(&self, msg: impl AsRef<str>) {
        let s = self.started.elapsed().as_secs();
        println!("[bench {:02}:{:02}] {}", s / 60, s % 60, msg.as_ref());
    }

    /// The requests the controller of `variant` has sent so far, by verb, with the latency
    /// it measured (empty when it has no such metrics).
    async fn controller_requests(
        &self,
        variant: Variant,
        operator: Option<&Operator>,
    ) -> ApiRequests {
        let text = match (variant, operator) {
            (Variant::Crane, Some(op)) => op.metrics().await.map(|m| m.0).ok(),
            (Variant::Native, _) => match &self.kcm {
                Some(kcm) => kcm.metrics().await.map(|m| m.0).ok(),
                None => None,
            },
            _ => None,
        };
        let name = match variant {
            Variant::Crane => "crane_operator_api_request_duration_seconds",
            _ => "rest_client_request_duration_seconds",
        };
        text.map(|t| ApiRequests::client(&t, name))
            .unwrap_or_default()
    }

    fn kcm_usage(&self) -> Option<Usage> {
        self.kcm.as_ref().and_then(|k| Usage::of(k.pid).ok())
    }

    pub fn apiserver_usage(&self) -> Option<Usage> {
        self.apiserver.as_ref().and_then(|k| Usage::of(k.pid).ok())
    }

    fn ready_timeout(pods: usize) -> Duration {
        Duration::from_secs(120) + Duration::from_millis(100 * pods as u64)
    }

    /// Converges one workload in a fresh namespace, measures it, then deletes the
    /// namespace. `window`: also measure a steady-state window. The run ends when every pod
    /// is Ready, or for unscheduled pods when every pod exists.
    pub async fn converge(
        &self,
        scenario: &'static str,
        round: usize,
        w: Workload,
        window: Option<Duration>,
    ) -> Result<Run> {
        let tag = format!("{}-{}", w.variant.name(), w.pods());
        let ns = self.cluster.new_namespace(&tag).await?;
        let result = self.converge_in(&ns, scenario, round, w, window).await;
        let deleted = self
            .cluster
            .delete_namespace(&ns, Duration::from_secs(600))
            .await;
        let mut run = result?;
        run.teardown_s = deleted?.as_secs_f64();
        Ok(run)
    }

    async fn converge_in(
        &self,
        ns: &str,
        scenario: &'static str,
        round: usize,
        w: Workload,
        window: Option<Duration>,
    ) -> Result<Run> {
        let client = &self.cluster.client;
        let (variant, objects, pods) = (w.variant, w.objects, w.pods());
        let operator = match variant {
            Variant::Crane => Some(
                Operator::start(&self.operator_bin, ns, self.plan.concurrency, &self.log_dir)
                    .await?,
            ),
            _ => None,
        };
        let tracker = PodTracker::start(client, ns).await?;
        let counter = WriteCounter::start(client, ns, &owner_resource(variant)).await?;
        let op_before = operator.as_ref().map(|o| o.usage()).transpose()?;
        let kcm_before = self.kcm_usage();
        let apiserver_before = self.apiserver_usage();
        let requests_before = self.cluster.apiserver_requests().await?;
        let controller_before = self.controller_requests(variant, operator.as_ref()).await;

        let t0 = Instant::now();
        let parallel = match variant {
            Variant::Raw => self.raw_concurrency(),
            _ => self.plan.object_parallelism,
        };
        cluster::create_workload(client, ns, &w, "bench", parallel).await?;
        let requests_s = Some(t0.elapsed().as_secs_f64());
        if w.unscheduled {
            tracker
                .wait(
                    &format!("{pods} pods created"),
                    Self::ready_timeout(pods),
                    |p| p.active() >= pods,
                )
                .await?;
        } else {
            tracker
                .wait(
                    &format!("{pods} pods Ready"),
                    Self::ready_timeout(pods),
                    |p| p.ready >= pods,
                )
                .await?;
        }
        let op_at_ready = operator.as_ref().map(|o| o.usage()).transpose()?;
        let kcm_at_ready = self.kcm_usage();
        let apiserver_at_ready = self.apiserver_usage();
        let apiserver_requests = self
            .cluster
            .apiserver_requests()
            .await?
            .since(&requests_before);
        let controller_requests = self
            .controller_requests(variant, operator.as_ref())
            .await
            .since(&controller_before);
        let writes = counter.snapshot();
        let (ready_at, seen_at, timeline) = tracker.with(|p| {
            (
                p.ready_at(pods),
                p.seen_at(pods),
                p.timeline
                    .iter()
                    .map(|(t, c)| (t.saturating_duration_since(t0).as_secs_f64(), *c))
                    .collect::<Vec<_>>(),
            )
        });
        let secs = |t: Option<Instant>| t.map_or(f64::NAN, |t| (t - t0).as_secs_f64());

        // Settle: the last status writes after the last pod turned Ready.
        let settle_start = Instant::now();
        let mut last_total = counter.snapshot().total;
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(2)
            && settle_start.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let total = counter.snapshot().total;
            if total != last_total {
                last_total = total;
                quiet_since = Instant::now();
            }
        }
        let settle_s = (quiet_since - settle_start).as_secs_f64();
        let all = counter.stop();
        let writes_settling = all.minus(&writes);

        let steady = match window {
            Some(window) => {
                let counter = WriteCounter::start(client, ns, &owner_resource(variant)).await?;
                let op0 = operator.as_ref().map(|o| o.usage()).transpose()?;
                let kcm0 = self.kcm_usage();
                tokio::time::sleep(window).await;
                let writes = counter.stop();
                let op1 = operator.as_ref().map(|o| o.usage()).transpose()?;
                let kcm1 = self.kcm_usage();
                Some(Steady {
                    window_s: writes.seconds,
                    writes,
                    operator_cpu_s: op0.zip(op1).map(|(a, b)| b.cpu_s - a.cpu_s),
                    operator_usage: op1,
                    kcm_cpu_s: kcm0.zip(kcm1).map(|(a, b)| b.cpu_s - a.cpu_s),
                    kcm_usage: kcm1,
                })
            }
            None => None,
        };

        let operator_run = match operator {
            Some(op) => {
                let m = op.metrics().await?;
                let run = OperatorRun {
                    reconciles: m.sum("crane_operator_reconcile_total"),
                    reconcile_errors: m.with_label("crane_operator_reconcile_total", "error"),
                    pods_created: m.sum("crane_operator_pods_created_total"),
                    reconcile_seconds_sum: m.sum("crane_operator_reconcile_duration_seconds_sum"),
                    api_requests: m.sum("crane_operator_api_requests_total"),
                    cpu_s: op_before
                        .zip(op_at_ready)
                        .map_or(f64::NAN, |(a, b)| b.cpu_s - a.cpu_s),
                    usage_start: op_before.unwrap_or_default(),
                    usage_at_ready: op_at_ready.unwrap_or_default(),
                    log: op.log.display().to_string(),
                };
                op.stop().await?;
                Some(run)
            }
            None => None,
        };
        drop(tracker);
        Ok(Run {
            scenario,
            variant,
            round,
            objects,
            pods,
            unscheduled: w.unscheduled,
            namespace: ns.to_string(),
            ready_s: if w.unscheduled {
                secs(seen_at)
            } else {
                secs(ready_at)
            },
            created_s: secs(seen_at),
            requests_s,
            timeline,
            writes,
            settle_s,
            writes_settling,
            operator: operator_run,
            kcm_cpu_s: kcm_before.zip(kcm_at_ready).map(|(a, b)| b.cpu_s - a.cpu_s),
            kcm_usage_start: kcm_before,
            kcm_usage_at_ready: kcm_at_ready,
            apiserver_cpu_s: apiserver_before
                .zip(apiserver_at_ready)
                .map(|(a, b)| b.cpu_s - a.cpu_s),
            apiserver_requests,
            controller_requests,
            steady,
            teardown_s: f64::NAN,
        })
    }

    pub fn raw_concurrency(&self) -> usize {
        self.raw.load(Ordering::Relaxed)
    }

    pub fn set_raw_concurrency(&self, c: usize) {
        self.raw.store(c, Ordering::Relaxed);
    }

    /// Creation throughput of bare pods at each candidate concurrency (requests only).
    pub async fn tune_raw(&self, pods: usize) -> Result<Vec<RawTuning>> {
        let mut out = Vec::new();
        for &c in &self.plan.raw_candidates {
            let ns = self.cluster.new_namespace(&format!("tune-{c}")).await?;
            let t0 = Instant::now();
            let created =
                cluster::create_raw_pods(&self.cluster.client, &ns, "tune", pods, false, c).await;
            let seconds = t0.elapsed().as_secs_f64();
            self.cluster
                .delete_namespace(&ns, Duration::from_secs(600))
                .await?;
            created?;
            self.progress(format!(
                "raw tuning: {pods} pods at concurrency {c}: {seconds:.2} s ({:.0} creates/s)",
                pods as f64 / seconds
            ));
            out.push(RawTuning {
                concurrency: c,
                pods,
                seconds,
                pods_per_s: pods as f64 / seconds,
            });
        }
        Ok(out)
    }

    /// Recovery: with a converged CraneReplicaSet and ReplicaSet side by side, deletes one
    /// pod of each in turn and times until the watch shows its replacement.
    pub async fn recovery(&self, samples: usize, replicas: usize) -> Result<Vec<Recovery>> {
        let ns_c = self.cluster.new_namespace("recovery-crane").await?;
        let ns_n = self.cluster.new_namespace("recovery-native").await?;
        let result = self.recovery_in(&ns_c, &ns_n, samples, replicas).await;
        for ns in [&ns_c, &ns_n] {
            self.cluster
                .delete_namespace(ns, Duration::from_secs(600))
                .await?;
        }
        result
    }

    async fn recovery_in(
        &self,
        ns_c: &str,
        ns_n: &str,
        samples: usize,
        replicas: usize,
    ) -> Result<Vec<Recovery>> {
        let client = &self.cluster.client;
        let operator = Operator::start(
            &self.operator_bin,
            ns_c,
            self.plan.concurrency,
            &self.log_dir,
        )
        .await?;
        let tc = PodTracker::start(client, ns_c).await?;
        let tn = PodTracker::start(client, ns_n).await?;
        for (ns, variant) in [(ns_c, Variant::Crane), (ns_n, Variant::Native)] {
            let w = Workload {
                variant,
                objects: 1,
                replicas,
                unscheduled: false,
            };
            cluster::create_workload(client, ns, &w, "bench", 1).await?;
        }
        for t in [&tc, &tn] {
            t.wait(
                "the recovery workloads to be Ready",
                Self::ready_timeout(replicas),
                |p| p.ready >= replicas,
            )
            .await?;
        }
        let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for i in 0..samples {
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                let (tracker, ns) = if which == 0 { (&tc, ns_c) } else { (&tn, ns_n) };
                let ms = Self::replace_one(client, tracker, ns, replicas)
                    .await
                    .with_context(|| {
                        format!(
                            "recovery sample {} of {}",
                            i + 1,
                            ["crane", "native"][which]
                        )
                    })?;
                times[which].push(ms);
            }
            if (i + 1) % 10 == 0 || i + 1 == samples {
                self.progress(format!(
                    "recovery: {}/{samples} samples (last: crane {:.0} ms, native {:.0} ms)",
                    i + 1,
                    times[0].last().unwrap_or(&f64::NAN),
                    times[1].last().unwrap_or(&f64::NAN)
                ));
            }
        }
        operator.stop().await?;
        Ok([Variant::Crane, Variant::Native]
            .into_iter()
            .zip(times)
            .map(|(variant, samples_ms)| {
                let mut sorted = samples_ms.clone();
                sorted.sort_by(f64::total_cmp);
                Recovery {
                    variant,
                    replicas,
                    p50_ms: percentile(&sorted, 50.0),
                    p99_ms: percentile(&sorted, 99.0),
                    max_ms: sorted.last().copied().unwrap_or(f64::NAN),
                    samples_ms,
                }
            })
            .collect())
    }

    /// Deletes one Ready pod; returns the milliseconds until a new pod showed up, after
    /// waiting for the workload to be whole again.
    async fn replace_one(
        client: &kube::Client,
        tracker: &PodTracker,
        ns: &str,
        replicas: usize,
    ) -> Result<f64> {
        let (victim, known) = tracker.with(|p| {
            let victim = p
                .present
                .values()
                .find(|s| s.ready && !s.terminating)
                .map(|s| s.name.clone());
            (victim, p.first_seen.keys().cloned().collect::<HashSet<_>>())
        });
        let Some(victim) = victim else {
            bail!("no Ready pod to delete");
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let t0 = Instant::now();
        api.delete(&victim, &DeleteParams::default()).await?;
        tracker
            .wait("the replacement pod", Duration::from_secs(60), |p| {
                p.first_seen.len() > known.len()
            })
            .await?;
        let appeared = tracker.with(|p| {
            p.first_seen
                .iter()
                .filter(|(uid, _)| !known.contains(*uid))
                .map(|(_, t)| *t)
                .min()
        });
        let ms = appeared.map_or(f64::NAN, |t| (t - t0).as_secs_f64() * 1000.0);
        tracker
            .wait(
                "the workload to be whole again",
                Duration::from_secs(60),
                |p| p.ready == replicas && p.terminating() == 0 && p.present.len() == replicas,
            )
            .await?;
        Ok(ms)
    }
}
