//! The fleet (`--only fleet`): OBJECTS owners of PODS pods each, grown step by step (by
//! default 1 %, 10 % and all of it: 1,000 → 10,000 → 100,000 pods for 10000x10), with pods
//! that no scheduler takes, so that only their controller works on them. Per contender
//! (kube-controller-manager's ReplicaSet controller first, while its process has seen no
//! fleet, then crane-operator), each in a namespace of its own: at each step the time to
//! create the new pods, the controller's memory and CPU, and the cost of one pass (a probe
//! object scaled up and back, and passes that change nothing); at full size a steady-state
//! window, a cold start of crane-operator over the converged fleet, and 10 % of the pods
//! deleted at once.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde::Serialize;
use serde_json::json;

use crate::census::{Census, OwnerCensus, Owners, PodCensus};
use crate::cluster::{self, Component, Variant};
use crate::operator::{Operator, Usage};
use crate::scenarios::{Bench, owner_resource};
use crate::track::{Describe, Progress, Watched, WriteCounter, Writes};

/// One contender's fleet, as far as it got (`error` says where it stopped).
#[derive(Clone, Debug, Serialize)]
pub struct FleetRun {
    pub variant: Variant,
    pub namespace: String,
    pub replicas: usize,
    pub steps: Vec<FleetStep>,
    pub steady: Option<FleetWindow>,
    /// crane-operator only: kube-controller-manager is the cluster's, not the bench's.
    pub cold_start: Option<ColdStart>,
    pub recovery: Option<FleetRecovery>,
    /// From the namespace's deletion until its pods were gone.
    pub teardown_s: Option<f64>,
    pub operator_logs: Vec<String>,
    pub error: Option<String>,
}

impl FleetRun {
    pub fn pods(&self) -> usize {
        self.steps.last().map_or(0, |s| s.pods)
    }
}

/// The fleet grown to `objects` owners.
#[derive(Clone, Debug, Serialize)]
pub struct FleetStep {
    pub objects: usize,
    pub pods: usize,
    /// Pods this step added.
    pub added: usize,
    /// From the step's first create request until the watch showed every pod of the fleet.
    pub created_s: f64,
    /// From the same request until every object's status was correct.
    pub status_s: f64,
    /// Pods created beyond the ones the step asked for (an overshoot).
    pub extra_pods: u64,
    /// The controller's CPU seconds from the first request until every status was correct
    /// (native: all of kube-controller-manager).
    pub cpu_s: Option<f64>,
    /// The controller's process after the step (native: kube-controller-manager).
    pub usage: Option<Usage>,
    /// kube-apiserver's CPU seconds over the same time, and the process after the step.
    pub apiserver_cpu_s: Option<f64>,
    pub apiserver_usage: Option<Usage>,
    pub probe: Probe,
}

impl FleetStep {
    pub fn pods_per_s(&self) -> f64 {
        self.added as f64 / self.created_s
    }
}

/// The cost of one pass at a fleet size, on one object of the fleet (the probe).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Probe {
    /// Scale-up by one: from the request until the watch showed the new pod, per sample.
    pub new_pod_ms: Vec<f64>,
    /// From the same request until the probe's status said so, per sample.
    pub status_ms: Vec<f64>,
    /// Passes that changed nothing (after an annotation on the probe; crane-operator's
    /// periodic resyncs of every object count too): how many, and their mean duration.
    pub noop_passes: Option<f64>,
    pub noop_pass_ms: Option<f64>,
}

/// A window over the converged fleet, once the namespace has gone quiet.
#[derive(Clone, Debug, Serialize)]
pub struct FleetWindow {
    /// From the end of the last probe until no write for [`QUIET`] (at most
    /// [`Bench::settle_limit`]): what the controller still wrote after converging, such as
    /// events it had queued.
    pub settle_s: f64,
    pub quiet: bool,
    pub settling: Writes,
    pub writes: Writes,
    pub cpu_s: Option<f64>,
    /// Passes in the window and their mean duration.
    pub passes: Option<f64>,
    pub pass_ms: Option<f64>,
    pub usage: Option<Usage>,
}

/// A fresh crane-operator over the converged fleet.
#[derive(Clone, Debug, Serialize)]
pub struct ColdStart {
    /// From the start of the process until /readyz (its caches synced).
    pub ready_s: f64,
    /// From the same start until every object had had a pass.
    pub passed_s: f64,
    pub objects: usize,
    /// Objects whose status was correct when every one had had a pass.
    pub correct: usize,
    /// Every write in the namespace from the start until 2 s after the last first pass.
    pub writes: Writes,
    /// The operator's own count of its requests other than GET (POST, PATCH, PUT,
    /// DELETE), and of all its requests (the lists and watches included).
    pub operator_writes: f64,
    pub operator_requests: f64,
    pub usage: Usage,
}

/// 10 % of the pods deleted at once.
#[derive(Clone, Debug, Serialize)]
pub struct FleetRecovery {
    pub deleted: usize,
    /// Until every delete request had returned.
    pub deletes_s: f64,
    /// Until the watch showed as many new pods as were deleted, and the fleet whole.
    pub replaced_s: f64,
    /// Until every object's status was correct again.
    pub status_s: f64,
    pub extra_pods: u64,
    pub writes: Writes,
    pub cpu_s: Option<f64>,
}

/// Delete requests in flight for the 10 % deletion.
const DELETE_PARALLELISM: usize = 64;
/// A wait fails when what it waits for has not moved for this long.
const STALL: Duration = Duration::from_secs(120);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// A namespace without a write for this long has settled.
const QUIET: Duration = Duration::from_secs(5);

/// What every phase of one contender's fleet works with.
struct Fleet<'a> {
    ns: &'a str,
    variant: Variant,
    ctl: Controller<'a>,
    pods: PodCensus,
    owners: OwnerCensus,
}

/// The process that does a contender's work, and its pass metrics.
struct Controller<'a> {
    operator: Option<Operator>,
    kcm: Option<&'a Component>,
}

impl Controller<'_> {
    fn usage(&self) -> Option<Usage> {
        match &self.operator {
            Some(op) => op.usage().ok(),
            None => self.kcm.and_then(|k| Usage::of(k.pid).ok()),
        }
    }

    /// (passes so far, seconds spent in them): crane-operator's reconcile histogram, or
    /// the ReplicaSet controller's work queue (its syncs of every namespace).
    async fn passes(&self) -> Option<(f64, f64)> {
        match &self.operator {
            Some(op) => {
                let m = op.metrics().await.ok()?;
                let name = "crane_operator_reconcile_duration_seconds";
                Some((
                    m.sum(&format!("{name}_count")),
                    m.sum(&format!("{name}_sum")),
                ))
            }
            None => {
                let m = self.kcm?.metrics().await.ok()?;
                let queue = "name=\"replicaset\"";
                Some((
                    m.with_label("workqueue_work_duration_seconds_count", queue),
                    m.with_label("workqueue_work_duration_seconds_sum", queue),
                ))
            }
        }
    }
}

/// (passes, mean ms) between two readings of [`Controller::passes`].
fn mean_pass(before: Option<(f64, f64)>, after: Option<(f64, f64)>) -> (Option<f64>, Option<f64>) {
    match before.zip(after) {
        Some(((c0, s0), (c1, s1))) if c1 > c0 => {
            (Some(c1 - c0), Some((s1 - s0) * 1000.0 / (c1 - c0)))
        }
        Some(_) => (Some(0.0), None),
        None => (None, None),
    }
}

fn cpu_between(a: Option<Usage>, b: Option<Usage>) -> Option<f64> {
    a.zip(b).map(|(a, b)| b.cpu_s - a.cpu_s)
}

/// 12345 → "12,345".
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn object_name(i: usize) -> String {
    format!("fleet-{i:05}")
}

impl Bench {
    /// One contender's fleet, in a namespace of its own, deleted at the end.
    pub async fn fleet(&self, variant: Variant) -> Result<FleetRun> {
        let ns = self
            .cluster
            .new_namespace(&format!("fleet-{}", variant.name()))
            .await?;
        let mut run = FleetRun {
            variant,
            namespace: ns.clone(),
            replicas: self.plan.fleet_replicas,
            steps: Vec::new(),
            steady: None,
            cold_start: None,
            recovery: None,
            teardown_s: None,
            operator_logs: Vec::new(),
            error: None,
        };
        if let Err(e) = self.fleet_in(&ns, &mut run).await {
            run.error = Some(format!("{e:#}"));
        }
        let pods = run
            .pods()
            .max(self.plan.fleet_objects * self.plan.fleet_replicas);
        let timeout = Duration::from_secs(300) + Duration::from_millis(20 * pods as u64);
        self.progress(format!(
            "fleet {}: deleting namespace {ns} (waiting up to {} s for its pods to go)",
            variant.name(),
            timeout.as_secs()
        ));
        let left = |n: usize| {
            self.progress(format!(
                "fleet {}: {} pods left to delete",
                variant.name(),
                thousands(n)
            ))
        };
        match self
            .cluster
            .delete_namespace_reporting(&ns, timeout, left)
            .await
        {
            Ok(d) => run.teardown_s = Some(d.as_secs_f64()),
            Err(e) => {
                let e = format!(
                    "teardown: {e:#}; the namespace controller goes on deleting in the background"
                );
                run.error = Some(run.error.map_or(e.clone(), |first| format!("{first}; {e}")));
            }
        }
        Ok(run)
    }

    async fn fleet_in(&self, ns: &str, run: &mut FleetRun) -> Result<()> {
        let (client, plan, variant) = (&self.cluster.client, &self.plan, run.variant);
        let mut ctl = Controller {
            operator: None,
            kcm: self.kcm.as_ref(),
        };
        if variant == Variant::Crane {
            let op =
                Operator::start(&self.operator_bin, ns, plan.concurrency, &self.log_dir).await?;
            run.operator_logs.push(op.log.display().to_string());
            ctl.operator = Some(op);
        }
        let f = &mut Fleet {
            ns,
            variant,
            ctl,
            pods: PodCensus::start(client, ns).await?,
            owners: OwnerCensus::start(client, ns, &owner_resource(variant)).await?,
        };
        let mut made = 0;
        for &objects in &plan.fleet_steps {
            let step = self
                .fleet_step(f, made, objects)
                .await
                .with_context(|| format!("growing the fleet to {objects} objects"))?;
            self.progress(format!(
                "fleet {}: {} pods in {:.1} s ({:.0} pods/s), statuses correct at {:.1} s; controller RSS {:.0} MiB; new pod on scale-up {:.0} ms, pass that changes nothing {} ms",
                variant.name(),
                thousands(step.pods),
                step.created_s,
                step.pods_per_s(),
                step.status_s,
                step.usage.map_or(f64::NAN, |u| u.rss_mib),
                crate::scenarios::median(step.probe.new_pod_ms.iter().copied()),
                step.probe
                    .noop_pass_ms
                    .map_or("?".into(), |ms| format!("{ms:.2}")),
            ));
            made = objects;
            run.steps.push(step);
        }

        let steady = self.fleet_window(f).await?;
        self.progress(format!(
            "fleet {}: steady state: {} writes ({:.1}/min), {} passes",
            variant.name(),
            steady.writes.total,
            steady.writes.per_minute(),
            steady.passes.map_or("?".into(), |p| format!("{p:.0}"))
        ));
        run.steady = Some(steady);

        if let Some(op) = f.ctl.operator.take() {
            let (cold, op) = self.fleet_cold_start(f, op).await?;
            self.progress(format!(
                "fleet crane: cold start: caches synced in {:.1} s, every object passed at {:.1} s, {} / {} statuses correct, {} writes (operator: {:.0} non-GET requests)",
                cold.ready_s,
                cold.passed_s,
                cold.correct,
                cold.objects,
                cold.writes.total,
                cold.operator_writes
            ));
            run.operator_logs.push(op.log.display().to_string());
            run.cold_start = Some(cold);
            f.ctl.operator = Some(op);
        }

        let recovery = self.fleet_recovery(f).await?;
        self.progress(format!(
            "fleet {}: {} pods deleted: replaced in {:.1} s, statuses correct in {:.1} s",
            variant.name(),
            thousands(recovery.deleted),
            recovery.replaced_s,
            recovery.status_s
        ));
        run.recovery = Some(recovery);
        if let Some(op) = f.ctl.operator.take() {
            op.stop().await?;
        }
        Ok(())
    }

    /// Waits on a census, printing `line` every few seconds and failing when `measure`
    /// stops moving.
    async fn fleet_wait<S: Describe + Send + 'static>(
        &self,
        census: &Watched<S>,
        what: &str,
        timeout: Duration,
        done: impl Fn(&S) -> bool,
        measure: impl Fn(&S) -> (u64, String) + Sync,
    ) -> Result<()> {
        let print = |line: String| self.progress(line);
        let progress = Progress {
            every: PROGRESS_EVERY,
            stall: STALL,
            measure: &measure,
            print: &print,
        };
        census
            .wait_reporting(what, timeout, done, Some(progress))
            .await
    }

    /// Waits until every one of `objects` owners has a correct status.
    async fn all_correct(
        &self,
        variant: Variant,
        owners: &OwnerCensus,
        objects: usize,
    ) -> Result<()> {
        let timeout = Duration::from_secs(300) + Duration::from_millis(20 * objects as u64);
        self.fleet_wait(
            owners,
            "every status correct",
            timeout,
            |o: &Owners| o.len() >= objects && o.correct >= objects,
            |o: &Owners| {
                let line = format!(
                    "fleet {}: {} / {} statuses correct",
                    variant.name(),
                    thousands(o.correct),
                    thousands(objects)
                );
                (o.correct as u64, line)
            },
        )
        .await
    }

    async fn fleet_step(&self, f: &Fleet<'_>, made: usize, objects: usize) -> Result<FleetStep> {
        let (ns, variant, ctl, pods, owners) = (f.ns, f.variant, &f.ctl, &f.pods, &f.owners);
        let replicas = self.plan.fleet_replicas;
        let (target, added) = (objects * replicas, (objects - made) * replicas);
        self.progress(format!(
            "fleet {}: growing to {} objects × {replicas} = {} pods",
            variant.name(),
            thousands(objects),
            thousands(target)
        ));
        let created_before = pods.with(|c| c.created);
        let (usage_before, apiserver_before) = (ctl.usage(), self.apiserver_usage());
        let t0 = Instant::now();
        let names = (made..objects).map(object_name).collect();
        let create = cluster::create_owners(
            &self.cluster.client,
            ns,
            variant,
            names,
            replicas,
            true,
            self.plan.object_parallelism,
        );
        let timeout = Duration::from_secs(300) + Duration::from_millis(30 * added as u64);
        let what = format!("{target} pods");
        let wait = self.fleet_wait(
            pods,
            &what,
            timeout,
            |c: &Census| c.active >= target,
            |c: &Census| {
                let s = t0.elapsed().as_secs_f64();
                let rate = (c.created - created_before) as f64 / s;
                let line = format!(
                    "fleet {}: {} / {} pods created ({rate:.0} pods/s)",
                    variant.name(),
                    thousands(c.active),
                    thousands(target)
                );
                (c.created, line)
            },
        );
        tokio::try_join!(create, wait)?;
        let created_s = t0.elapsed().as_secs_f64();
        self.all_correct(variant, owners, objects).await?;
        let status_s = t0.elapsed().as_secs_f64();
        let (usage, apiserver_usage) = (ctl.usage(), self.apiserver_usage());
        // Late creations of an overshoot would show within this.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let created = pods.with(|c| c.created) - created_before;
        let probe = self.fleet_probe(f).await?;
        Ok(FleetStep {
            objects,
            pods: target,
            added,
            created_s,
            status_s,
            extra_pods: created.saturating_sub(added as u64),
            cpu_s: cpu_between(usage_before, usage),
            usage,
            apiserver_cpu_s: cpu_between(apiserver_before, apiserver_usage),
            apiserver_usage,
            probe,
        })
    }

    /// The probe object (the first) scaled up by one and back, `fleet_probes` times, then
    /// as many passes that change nothing (an annotation each).
    async fn fleet_probe(&self, f: &Fleet<'_>) -> Result<Probe> {
        let (ns, variant, ctl, pods, owners) = (f.ns, f.variant, &f.ctl, &f.pods, &f.owners);
        let replicas = self.plan.fleet_replicas;
        let name = object_name(0);
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.cluster.client.clone(), ns, &owner_resource(variant));
        let params = PatchParams {
            field_manager: Some("crane-bench".into()),
            ..PatchParams::default()
        };
        let patch = |body: serde_json::Value| {
            let (api, params, name) = (api.clone(), params.clone(), name.clone());
            async move {
                api.patch(&name, &params, &Patch::Merge(body))
                    .await
                    .with_context(|| format!("patch the probe {name}"))
            }
        };
        let limit = Duration::from_secs(60);
        let mut probe = Probe::default();
        for _ in 0..self.plan.fleet_probes {
            let t0 = Instant::now();
            patch(json!({"spec": {"replicas": replicas + 1}})).await?;
            pods.wait("the probe's new pod", limit, |c| {
                c.owned_by(&name) > replicas
            })
            .await?;
            probe.new_pod_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            owners
                .wait("the probe's status", limit, |o| {
                    o.settled_at(&name, replicas as i64 + 1)
                })
                .await?;
            probe.status_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            patch(json!({"spec": {"replicas": replicas}})).await?;
            pods.wait("the probe back to its size", limit, |c| {
                c.owned_by(&name) == replicas
            })
            .await?;
            owners
                .wait("the probe's status back", limit, |o| {
                    o.settled_at(&name, replicas as i64)
                })
                .await?;
        }
        // The passes that follow the last status write are over within this.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = ctl.passes().await;
        for i in 0..self.plan.fleet_probes {
            let note =
                json!({"metadata": {"annotations": {"crane.dev/bench-probe": i.to_string()}}});
            patch(note).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        (probe.noop_passes, probe.noop_pass_ms) = mean_pass(before, ctl.passes().await);
        Ok(probe)
    }

    /// How long the fleet may take to go quiet before the steady-state window starts anyway.
    fn settle_limit(&self) -> Duration {
        Duration::from_secs(120) + Duration::from_millis(50 * self.plan.fleet_objects as u64)
    }

    async fn fleet_window(&self, f: &Fleet<'_>) -> Result<FleetWindow> {
        let (ns, variant, ctl) = (f.ns, f.variant, &f.ctl);
        let (client, owner) = (&self.cluster.client, owner_resource(variant));
        let counter = WriteCounter::start_now(client, ns, &owner).await?;
        let (t0, limit) = (Instant::now(), self.settle_limit());
        let (mut last, mut quiet_since, mut next_line) = (0, t0, t0 + 2 * PROGRESS_EVERY);
        while quiet_since.elapsed() < QUIET && t0.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let total = counter.snapshot().total;
            if total != last {
                (last, quiet_since) = (total, Instant::now());
            }
            if Instant::now() >= next_line {
                self.progress(format!(
                    "fleet {}: waiting for the namespace to go quiet: {total} writes since convergence",
                    variant.name()
                ));
                next_line += PROGRESS_EVERY;
            }
        }
        let quiet = quiet_since.elapsed() >= QUIET;
        let (settle_s, settling) = ((quiet_since - t0).as_secs_f64(), counter.stop());
        self.progress(format!(
            "fleet {}: {} writes after convergence, over {settle_s:.1} s{}; steady state, a {:.0} s window",
            variant.name(),
            settling.total,
            if quiet { "" } else { " (not quiet yet)" },
            self.plan.fleet_window_s
        ));
        let counter = WriteCounter::start_now(client, ns, &owner).await?;
        let (usage0, passes0) = (ctl.usage(), ctl.passes().await);
        tokio::time::sleep(Duration::from_secs_f64(self.plan.fleet_window_s)).await;
        let (usage, passes1) = (ctl.usage(), ctl.passes().await);
        let (passes, pass_ms) = mean_pass(passes0, passes1);
        Ok(FleetWindow {
            settle_s,
            quiet,
            settling,
            writes: counter.stop(),
            cpu_s: cpu_between(usage0, usage),
            passes,
            pass_ms,
            usage,
        })
    }

    /// Stops `op` and starts a fresh crane-operator over the fleet it converged.
    async fn fleet_cold_start(&self, f: &Fleet<'_>, op: Operator) -> Result<(ColdStart, Operator)> {
        let (ns, owners) = (f.ns, &f.owners);
        op.stop().await?;
        let objects = owners.with(|o| o.len());
        let counter =
            WriteCounter::start_now(&self.cluster.client, ns, &owner_resource(Variant::Crane))
                .await?;
        self.progress(format!(
            "fleet crane: cold start over {} objects",
            thousands(objects)
        ));
        let t0 = Instant::now();
        let op = Operator::start_logged(
            &self.operator_bin,
            ns,
            &format!("{ns}-cold-start"),
            self.plan.concurrency,
            &self.log_dir,
            Duration::from_secs(600),
        )
        .await?;
        let ready_s = t0.elapsed().as_secs_f64();
        // Each pass sets the object's series of crane_operator_replicas_desired.
        let timeout = Duration::from_secs(120) + Duration::from_millis(10 * objects as u64);
        let mut next_line = Instant::now();
        loop {
            let passed = op
                .metrics()
                .await?
                .series("crane_operator_replicas_desired");
            if passed >= objects {
                break;
            }
            if t0.elapsed() > timeout {
                anyhow::bail!(
                    "cold start: {passed} of {objects} objects had a pass after {timeout:?}; see {}",
                    op.log.display()
                );
            }
            if Instant::now() >= next_line {
                self.progress(format!(
                    "fleet crane: cold start: {} / {} objects passed",
                    thousands(passed),
                    thousands(objects)
                ));
                next_line += PROGRESS_EVERY;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let passed_s = t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let writes = counter.stop();
        let m = op.metrics().await?;
        let requests = "crane_operator_api_requests_total";
        let operator_writes = ["POST", "PATCH", "PUT", "DELETE"]
            .iter()
            .map(|v| m.with_label(requests, &format!("verb=\"{v}\"")))
            .sum();
        let cold = ColdStart {
            ready_s,
            passed_s,
            objects,
            correct: owners.with(|o| o.correct),
            writes,
            operator_writes,
            operator_requests: m.sum(requests),
            usage: op.usage()?,
        };
        Ok((cold, op))
    }

    /// Every 10th pod (by name: one per object at 10 pods each) deleted, many requests in
    /// flight, until the fleet is whole and every status correct again.
    async fn fleet_recovery(&self, f: &Fleet<'_>) -> Result<FleetRecovery> {
        let (ns, variant, ctl, pods, owners) = (f.ns, f.variant, &f.ctl, &f.pods, &f.owners);
        let client = &self.cluster.client;
        let (objects, total) = (owners.with(|o| o.len()), pods.with(|c| c.active));
        let victims = pods.with(|c| c.every_nth(10));
        let deleted = victims.len();
        self.progress(format!(
            "fleet {}: deleting {} of {} pods",
            variant.name(),
            thousands(deleted),
            thousands(total)
        ));
        let counter = WriteCounter::start_now(client, ns, &owner_resource(variant)).await?;
        let usage0 = ctl.usage();
        let created0 = pods.with(|c| c.created);
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let t0 = Instant::now();
        let deletes = async {
            stream::iter(victims)
                .map(|name| {
                    let api = api.clone();
                    async move {
                        match api.delete(&name, &DeleteParams::default()).await {
                            Ok(_) => Ok(()),
                            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                            Err(e) => Err(e).with_context(|| format!("delete pod {name}")),
                        }
                    }
                })
                .buffer_unordered(DELETE_PARALLELISM)
                .try_collect::<Vec<_>>()
                .await?;
            anyhow::Ok(t0.elapsed().as_secs_f64())
        };
        let timeout = Duration::from_secs(300) + Duration::from_millis(30 * deleted as u64);
        let replaced = self.fleet_wait(
            pods,
            "the deleted pods replaced",
            timeout,
            |c: &Census| c.created - created0 >= deleted as u64 && c.active >= total,
            |c: &Census| {
                let line = format!(
                    "fleet {}: {} / {} deleted pods replaced; {} / {} pods active",
                    variant.name(),
                    thousands((c.created - created0) as usize),
                    thousands(deleted),
                    thousands(c.active),
                    thousands(total)
                );
                (c.created + c.deleted, line)
            },
        );
        let (deletes_s, ()) = tokio::try_join!(deletes, replaced)?;
        let replaced_s = t0.elapsed().as_secs_f64();
        self.all_correct(variant, owners, objects).await?;
        let status_s = t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let created = pods.with(|c| c.created) - created0;
        Ok(FleetRecovery {
            deleted,
            deletes_s,
            replaced_s,
            status_s,
            extra_pods: created.saturating_sub(deleted as u64),
            writes: counter.stop(),
            cpu_s: cpu_between(usage0, ctl.usage()),
        })
    }
}
