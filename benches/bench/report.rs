//! report.md, report.json, ready-over-time.png and (the fleet's) fleet-cost.png.

mod fleet;
mod wire;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::cluster::{Component, Variant};
use crate::fleet::FleetRun;
use crate::placement::KWOK_NODE_LABEL;
use crate::scenarios::{Bench, Plan, RawTuning, Recovery, Run, Steady, median};
use crate::wire::WireRun;

#[derive(Debug, Default, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub load_start: String,
    pub load_end: String,
    /// CPU seconds that processes other than the bench, its operators and the cluster's
    /// control plane used during the run (other people's work on a shared machine).
    pub others_cpu_s: f64,
    /// `others_cpu_s` as a share of all CPUs over the wall time.
    pub others_share: f64,
    #[serde(skip)]
    cpu_start: (f64, f64),
    #[serde(skip)]
    cluster_dir: Option<String>,
}

impl Machine {
    /// (machine busy CPU-s, CPU-s of the bench, its children and the control plane).
    fn cpu(&self) -> (f64, f64) {
        let plane: f64 = self
            .cluster_dir
            .as_deref()
            .map(crate::cluster::processes_of)
            .unwrap_or_default()
            .into_iter()
            .filter(|pid| *pid != std::process::id())
            .filter_map(|pid| crate::operator::Usage::of(pid).ok())
            .map(|u| u.cpu_s)
            .sum();
        (
            crate::operator::machine_busy_s(),
            crate::operator::self_with_children_s() + plane,
        )
    }
}

#[derive(Debug, Default, Serialize)]
pub struct ClusterInfo {
    pub server: String,
    pub version: String,
    pub nodes: usize,
    /// Pods the Ready kwok nodes still have room for.
    pub pod_capacity: usize,
    pub kcm_found: bool,
    pub kcm_flags: String,
    pub scheduler_flags: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub commit: String,
    pub operator_binary: String,
    pub operator_profile: &'static str,
    pub machine: Machine,
    pub cluster: ClusterInfo,
    pub plan: Plan,
    pub raw_tuning: Vec<RawTuning>,
    pub raw_concurrency: usize,
    pub scale_up: Vec<Run>,
    pub fan_out: Vec<Run>,
    pub recovery: Vec<Recovery>,
    pub steady: Vec<Run>,
    pub fleet: Vec<FleetRun>,
    pub wire: Vec<WireRun>,
    pub failures: Vec<String>,
    pub wall_s: f64,
    /// The scenarios this run was asked for.
    pub scenarios: Vec<String>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_default()
}

fn machine() -> Machine {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        memory_gib: mem_kib / 1024.0 / 1024.0,
        load_start: loadavg(),
        ..Machine::default()
    }
}

fn git_commit() -> String {
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = out(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".into());
    let dirty = out(&["status", "--porcelain", "--untracked-files=no", "--", "src"])
        .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{rev} + uncommitted changes in src/")
    } else {
        rev
    }
}

impl Report {
    pub async fn new(bench: &Bench, scheduler: Option<Component>) -> Self {
        let client = &bench.cluster.client;
        // Only the simulated nodes count: the bench's pods run there (placement.rs).
        let (key, value) = KWOK_NODE_LABEL;
        let (nodes, capacity) = match Api::<Node>::all(client.clone())
            .list(&ListParams::default().labels(&format!("{key}={value}")))
            .await
        {
            Ok(list) => {
                let ready: Vec<&Node> = list
                    .items
                    .iter()
                    .filter(|n| {
                        n.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
                    .collect();
                let pods: usize = ready
                    .iter()
                    .filter_map(|n| n.status.as_ref()?.allocatable.as_ref()?.get("pods"))
                    .filter_map(|q| q.0.parse::<usize>().ok())
                    .sum();
                (ready.len(), pods)
            }
            Err(_) => (0, 0),
        };
        let existing = Api::<Pod>::all(client.clone())
            .list_metadata(&ListParams::default())
            .await
            .map_or(0, |l| l.items.len());
        let kcm_flags = match &bench.kcm {
            Some(k) => [
                k.flag_or("kube-api-qps", "20"),
                k.flag_or("kube-api-burst", "30"),
                k.flag_or("concurrent-replicaset-syncs", "5"),
            ]
            .join(" "),
            None => "not found on this machine (flags unknown)".into(),
        };
        let scheduler_flags = match &scheduler {
            Some(s) => [
                s.flag_or("kube-api-qps", "50"),
                s.flag_or("kube-api-burst", "100"),
            ]
            .join(" "),
            None => "not found on this machine (flags unknown)".into(),
        };
        Self {
            date: jiff::Timestamp::now()
                .strftime("%Y-%m-%d %H:%M UTC")
                .to_string(),
            commit: git_commit(),
            operator_binary: bench.operator_bin.display().to_string(),
            operator_profile: if cfg!(debug_assertions) {
                "debug (not for timings)"
            } else {
                "release"
            },
            machine: {
                let mut m = machine();
                // The control plane's directory: where kube-controller-manager's kubeconfig is.
                m.cluster_dir = bench.kcm.as_ref().and_then(|k| {
                    let kc = k.flag("kubeconfig")?;
                    Some(Path::new(&kc).parent()?.display().to_string() + "/")
                });
                m.cpu_start = m.cpu();
                m
            },
            cluster: ClusterInfo {
                server: bench.cluster.server.clone(),
                version: bench.cluster.version().await,
                nodes,
                pod_capacity: capacity.saturating_sub(existing),
                kcm_found: bench.kcm.is_some(),
                kcm_flags,
                scheduler_flags,
            },
            plan: bench.plan.clone(),
            raw_tuning: Vec::new(),
            raw_concurrency: 0,
            scale_up: Vec::new(),
            fan_out: Vec::new(),
            recovery: Vec::new(),
            steady: Vec::new(),
            fleet: Vec::new(),
            wire: Vec::new(),
            failures: Vec::new(),
            wall_s: 0.0,
            scenarios: Vec::new(),
        }
    }

    pub fn finish(&mut self, bench: &Bench) {
        let m = &mut self.machine;
        m.load_end = loadavg();
        let (busy, ours) = m.cpu();
        self.wall_s = bench.started.elapsed().as_secs_f64();
        m.others_cpu_s = ((busy - m.cpu_start.0) - (ours - m.cpu_start.1)).max(0.0);
        m.others_share = m.others_cpu_s / (m.cpus.max(1) as f64 * self.wall_s);
    }

    /// Writes the three files; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let json = dir.join("report.json");
        std::fs::write(&json, serde_json::to_string_pretty(self)?)?;
        let md = dir.join("report.md");
        std::fs::write(&md, self.markdown())?;
        let png = dir.join("ready-over-time.png");
        let mut files = vec![md, json];
        match self.chart(&png) {
            Ok(true) => files.push(png),
            Ok(false) => {}
            Err(e) => eprintln!("[bench] chart: {e:#}"),
        }
        let png = dir.join(fleet::CHART);
        match self.fleet_chart(&png) {
            Ok(true) => files.push(png),
            Ok(false) => {}
            Err(e) => eprintln!("[bench] fleet chart: {e:#}"),
        }
        Ok(files)
    }

    /// What is missing: failed scenarios, scenarios without numbers, files not written.
    pub fn check(&self, files: &[PathBuf]) -> Vec<String> {
        let mut problems = self.failures.clone();
        // "Exactly N pods": a run that created pods beyond N fails the bench.
        for r in self
            .scale_up
            .iter()
            .chain(&self.fan_out)
            .chain(&self.steady)
        {
            let extra = r.extra_pods();
            if extra > 0 {
                problems.push(format!(
                    "overshoot: {} round {} {} created {extra} pods beyond the {} asked for{}",
                    r.scenario,
                    r.round,
                    r.variant.name(),
                    r.pods,
                    r.operator
                        .as_ref()
                        .map_or(String::new(), |o| format!("; operator log {}", o.log)),
                ));
                if let Some(op) = &r.operator {
                    eprintln!("[bench] overshoot: the end of {}:", op.log);
                    if let Ok(text) = std::fs::read_to_string(&op.log) {
                        let lines: Vec<&str> = text.lines().collect();
                        for line in &lines[lines.len().saturating_sub(40)..] {
                            eprintln!("  {line}");
                        }
                    }
                }
            }
        }
        let ran = |s: &str| self.scenarios.iter().any(|x| x == s);
        let good = |r: &Run| r.ready_s.is_finite() && r.ready_s > 0.0;
        if ran("scale-up") {
            for &n in &self.plan.sizes {
                for v in [Variant::Crane, Variant::Native, Variant::Raw] {
                    if !self
                        .scale_up
                        .iter()
                        .any(|r| r.pods == n && r.variant == v && good(r))
                    {
                        problems.push(format!("scale-up N={n} {}: no result", v.name()));
                    }
                }
            }
        }
        if ran("fan-out") {
            for v in [Variant::Crane, Variant::Native] {
                if !self.fan_out.iter().any(|r| r.variant == v && good(r)) {
                    problems.push(format!("fan-out {}: no result", v.name()));
                }
                if !self
                    .fan_out
                    .iter()
                    .any(|r| r.variant == v && r.steady.is_some())
                {
                    problems.push(format!("fan-out {}: no steady-state window", v.name()));
                }
            }
        }
        if ran("recovery") {
            for v in [Variant::Crane, Variant::Native] {
                let ok = self
                    .recovery
                    .iter()
                    .any(|r| r.variant == v && r.p50_ms.is_finite() && !r.samples_ms.is_empty());
                if !ok {
                    problems.push(format!("recovery {}: no samples", v.name()));
                }
            }
        }
        if ran("steady") && self.plan.steady_pods > 0 {
            let mut variants = vec![Variant::Crane];
            if self.plan.steady_native {
                variants.push(Variant::Native);
            }
            for v in variants {
                let run = self.steady.iter().find(|r| r.variant == v);
                match run.and_then(|r| r.steady.as_ref()) {
                    None => problems.push(format!("steady state {}: no result", v.name())),
                    Some(s) => {
                        if v == Variant::Crane && !s.operator_usage.is_some_and(|u| u.rss_mib > 0.0)
                        {
                            problems.push("steady state crane: no operator memory figure".into());
                        }
                    }
                }
            }
        }
        if ran("wire") {
            problems.extend(self.wire_problems());
        }
        if ran("fleet") {
            problems.extend(self.fleet_problems());
        }
        let mut expected = vec!["report.md", "report.json"];
        if ran("scale-up") {
            expected.push("ready-over-time.png");
        }
        if ran("fleet") {
            expected.push(fleet::CHART);
        }
        for name in expected {
            let ok = files.iter().any(|f| {
                f.file_name().is_some_and(|n| n == name)
                    && std::fs::metadata(f).is_ok_and(|m| m.len() > 0)
            });
            if !ok {
                problems.push(format!("{name} was not written"));
            }
        }
        problems
    }

    fn runs(runs: &[Run], v: Variant, pods: usize) -> Vec<&Run> {
        runs.iter()
            .filter(|r| r.variant == v && r.pods == pods && r.ready_s.is_finite())
            .collect()
    }

    fn med(runs: &[Run], v: Variant, pods: usize, f: impl Fn(&Run) -> f64) -> f64 {
        median(Self::runs(runs, v, pods).into_iter().map(f))
    }

    /// The run whose time to Ready is the median one (lower middle).
    fn median_run(runs: &[Run], v: Variant, pods: usize) -> Option<&Run> {
        let mut rs = Self::runs(runs, v, pods);
        rs.sort_by(|a, b| a.ready_s.total_cmp(&b.ready_s));
        rs.get(rs.len().saturating_sub(1) / 2).copied()
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = self.write_markdown(&mut s);
        s
    }

    fn write_markdown(&self, s: &mut String) -> std::fmt::Result {
        let p = &self.plan;
        let m = &self.machine;
        let c = &self.cluster;
        writeln!(s, "# crane-operator benchmark\n")?;
        writeln!(
            s,
            "{} · `{}` profile · wall time {} · commit {}\n",
            self.date,
            p.profile,
            mmss(self.wall_s),
            self.commit
        )?;
        writeln!(
            s,
            "- **Machine:** {} CPUs ({}), {:.1} GiB memory; load average {} before the run ({} at the end, the bench's own load included); other processes than the bench and its cluster used {:.0} CPU-s during the run, {:.0}% of the machine{}.",
            m.cpus,
            m.cpu_model,
            m.memory_gib,
            m.load_start,
            m.load_end,
            m.others_cpu_s,
            100.0 * m.others_share,
            if load1(&m.load_start) >= 1.5 || m.others_share >= 0.15 {
                " (**taken under load**: other work shared the CPUs)"
            } else {
                ""
            }
        )?;
        writeln!(
            s,
            "- **Cluster:** Kubernetes {} (kube-apiserver, etcd, kube-controller-manager, kube-scheduler on this machine) with {} kwok nodes: nothing runs, a pod is Running and Ready as soon as it is scheduled. The control plane shares the CPUs with the contenders.",
            c.version, c.nodes
        )?;
        writeln!(
            s,
            "- **crane**: crane-operator ({}), `run --namespace <ns> --concurrency {}`, started by the bench for each namespace; no client-side rate limit (kube-rs has none).",
            self.operator_profile, p.concurrency
        )?;
        writeln!(
            s,
            "- **native**: the apps/v1 ReplicaSet controller of the cluster's kube-controller-manager: `{}` (client-go's defaults are qps 20 / burst 30, which would throttle it; raised for a fair match).",
            c.kcm_flags
        )?;
        // The raw baseline, scheduling and rounds are no part of a run of the fleet alone.
        if self.scenarios.iter().all(|x| x == "fleet") {
            writeln!(s)?;
        } else {
            self.write_setup_of_runs(s)?;
        }

        if !self.scale_up.is_empty() {
            writeln!(
                s,
                "## Scale-up: one object 0 → N pods Ready (median of {})\n",
                rounds(p.rounds)
            )?;
            writeln!(
                s,
                "| N | crane s | native s | raw s | crane pods/s | native pods/s | raw pods/s | crane/native | crane/raw |"
            )?;
            writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
            for &n in &p.sizes {
                let t = |v| Self::med(&self.scale_up, v, n, |r| r.ready_s);
                let (cr, na, ra) = (t(Variant::Crane), t(Variant::Native), t(Variant::Raw));
                writeln!(
                    s,
                    "| {n} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    f2(cr),
                    f2(na),
                    f2(ra),
                    f0(n as f64 / cr),
                    f0(n as f64 / na),
                    f0(n as f64 / ra),
                    f2(cr / na),
                    f2(cr / ra)
                )?;
            }
            writeln!(s)?;
        }

        if !self.fan_out.is_empty() {
            let pods = p.fanout_objects * p.fanout_replicas;
            writeln!(
                s,
                "## Fan-out: {} objects × {} replicas until all {pods} pods are Ready (median of {})\n",
                p.fanout_objects,
                p.fanout_replicas,
                rounds(p.fanout_rounds)
            )?;
            let t = |v| Self::med(&self.fan_out, v, pods, |r| r.ready_s);
            let (cr, na) = (t(Variant::Crane), t(Variant::Native));
            writeln!(
                s,
                "| | crane | native | crane/native |\n|---|---:|---:|---:|"
            )?;
            writeln!(s, "| seconds | {} | {} | {} |", f2(cr), f2(na), f2(cr / na))?;
            writeln!(
                s,
                "| pods/s | {} | {} | |",
                f0(pods as f64 / cr),
                f0(pods as f64 / na)
            )?;
            writeln!(
                s,
                "\n(The bench creates the {} objects {} requests at a time; the clock starts at the first.)\n",
                p.fanout_objects, p.object_parallelism
            )?;
        }

        if !self.recovery.is_empty() {
            let r0 = &self.recovery[0];
            writeln!(
                s,
                "## Recovery: delete one pod → its replacement exists ({} samples each, {} replicas; p99 by nearest rank)\n",
                r0.samples_ms.len(),
                r0.replicas
            )?;
            writeln!(s, "| | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|")?;
            for r in &self.recovery {
                writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    r.variant.name(),
                    f0(r.p50_ms),
                    f0(r.p99_ms),
                    f0(r.max_ms)
                )?;
            }
            let ratio = |f: fn(&Recovery) -> f64| {
                let c = self.recovery.iter().find(|r| r.variant == Variant::Crane);
                let n = self.recovery.iter().find(|r| r.variant == Variant::Native);
                c.zip(n).map_or(f64::NAN, |(c, n)| f(c) / f(n))
            };
            writeln!(
                s,
                "| crane/native | {} | {} | |\n",
                f2(ratio(|r| r.p50_ms)),
                f2(ratio(|r| r.p99_ms))
            )?;
            writeln!(
                s,
                "(From the delete request until the bench's watch shows the new pod; the samples alternate between the two, each after the previous replacement is Ready.)\n"
            )?;
        }

        self.write_steady(s)?;
        self.write_wire(s)?;
        self.write_fleet(s)?;
        self.write_where(s)?;
        self.write_rounds(s)?;

        if !self.failures.is_empty() {
            writeln!(s, "## Failures\n")?;
            for f in &self.failures {
                writeln!(s, "- {f}")?;
            }
            writeln!(s)?;
        }
        Ok(())
    }

    /// The raw baseline, kube-scheduler and how each run is timed (the scenarios but the
    /// fleet).
    fn write_setup_of_runs(&self, s: &mut String) -> std::fmt::Result {
        let c = &self.cluster;
        let tuning = self
            .raw_tuning
            .iter()
            .map(|t| format!("{} → {:.0} creates/s", t.concurrency, t.pods_per_s))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(
            s,
            "- **raw**: the bench itself creating bare pods, {} requests in flight{}: the API server's limit on this machine.",
            self.raw_concurrency,
            if tuning.is_empty() {
                String::new()
            } else {
                format!(" (tuned: {tuning})")
            }
        )?;
        writeln!(
            s,
            "- kube-scheduler binds every pod in all three cases: `{}`. CraneReplicaSets run with `service.enabled: false` (a ReplicaSet makes no Service either).",
            c.scheduler_flags
        )?;
        writeln!(
            s,
            "- Each run: a fresh namespace, deleted after the run; the next run starts once its pods are gone (teardown; the namespace controller finishes in the background, and every namespace is gone before the steady-state step). Times from the first create request until the bench's own pod watch shows every pod Ready. Rounds alternate the contenders in a rotating order; tables show medians. Ratios are time ratios: below 1.0 crane is faster.\n"
        )?;
        Ok(())
    }

    fn write_steady(&self, s: &mut String) -> std::fmt::Result {
        let get = |v| self.steady.iter().find(|r| r.variant == v);
        let (cr, na) = (get(Variant::Crane), get(Variant::Native));
        let fan = |v| {
            self.fan_out
                .iter()
                .rev()
                .find(|r| r.variant == v && r.steady.is_some())
                .and_then(|r| r.steady.as_ref())
        };
        let (fc, fna) = (fan(Variant::Crane), fan(Variant::Native));
        if cr.is_none() && na.is_none() && fc.is_none() && fna.is_none() {
            return Ok(());
        }
        let p = &self.plan;
        writeln!(
            s,
            "## Steady state
"
        )?;
        writeln!(
            s,
            "| | crane (crane-operator) | native (kube-controller-manager) |\n|---|---:|---:|"
        )?;
        let opt = |x: Option<f64>, fmt: fn(f64) -> String| x.map_or("–".to_string(), fmt);
        if fc.is_some() || fna.is_some() {
            writeln!(
                s,
                "| API writes/min after the fan-out converged ({} objects × {} pods, {:.0} s window) | {} | {} |",
                p.fanout_objects,
                p.fanout_replicas,
                p.fanout_window_s,
                opt(fc.map(|w| w.writes.per_minute()), f1),
                opt(fna.map(|w| w.writes.per_minute()), f1)
            )?;
        }
        let n = cr.or(na).map_or(p.steady_pods, |r| r.pods);
        fn win(r: Option<&Run>) -> Option<&Steady> {
            r.and_then(|r| r.steady.as_ref())
        }
        let (wc, wn) = (win(cr), win(na));
        if cr.is_some() || na.is_some() {
            writeln!(
                s,
                "| 0 → {n} pods created by one object (1 run; not scheduled), s | {} | {} |",
                opt(cr.map(|r| r.ready_s), f1),
                opt(na.map(|r| r.ready_s), f1)
            )?;
            writeln!(
                s,
                "| API writes/min with {n} pods ({:.0} s window after convergence) | {} | {} |",
                p.steady_window_s,
                opt(wc.map(|w| w.writes.per_minute()), f1),
                opt(wn.map(|w| w.writes.per_minute()), f1)
            )?;
            // kube-controller-manager caches every pod of the cluster: in crane's window it
            // holds the same pods as the operator.
            let kcm_w = wn.or(wc);
            writeln!(
                s,
                "| CPU s in that window | {} | {} |",
                opt(wc.and_then(|w| w.operator_cpu_s), f2),
                opt(kcm_w.and_then(|w| w.kcm_cpu_s), f2)
            )?;
            writeln!(
                s,
                "| resident memory (VmRSS) with the {n} pods watched, MiB | {} | {} |",
                opt(wc.and_then(|w| w.operator_usage).map(|u| u.rss_mib), f0),
                opt(kcm_w.and_then(|w| w.kcm_usage).map(|u| u.rss_mib), f0)
            )?;
            writeln!(
                s,
                "| peak resident memory (VmHWM), MiB | {} | {} |",
                opt(
                    wc.and_then(|w| w.operator_usage).map(|u| u.peak_rss_mib),
                    f0
                ),
                opt(kcm_w.and_then(|w| w.kcm_usage).map(|u| u.peak_rss_mib), f0)
            )?;
            writeln!(
                s,
                "| resident memory before the first pod, MiB | {} | {} |",
                opt(
                    cr.and_then(|r| r.operator.as_ref())
                        .map(|o| o.usage_start.rss_mib),
                    f0
                ),
                opt(
                    na.or(cr).and_then(|r| r.kcm_usage_start).map(|u| u.rss_mib),
                    f0
                )
            )?;
            writeln!(
                s,
                "| CPU s from 0 to all {n} created | {} | {} |",
                opt(cr.and_then(|r| r.operator.as_ref()).map(|o| o.cpu_s), f2),
                opt(na.and_then(|r| r.kcm_cpu_s), f2)
            )?;
            writeln!(
                s,
                "| pods created beyond {n} (deleted again later) | {} | {} |",
                cr.map_or("–".into(), |r| r.extra_pods().to_string()),
                na.map_or("–".into(), |r| r.extra_pods().to_string())
            )?;
            writeln!(
                s,
                "| kube-controller-manager CPU s while crane made its {n} pods | {} | |",
                opt(cr.and_then(|r| r.kcm_cpu_s), f2)
            )?;
        }
        if cr.is_none() && na.is_none() {
            writeln!(
                s,
                "\nWrites are counted by the bench's watches on the namespace's pods, owner objects and events (one watch event = one write), scaled to a minute.\n"
            )?;
        } else {
            writeln!(
                s,
                "\nThe {n} pods of this step name a scheduler that does not exist (`{}`): they stay Pending, so the step measures the controllers (their caches, their writes) without the scheduling and status work for {n} pods, which would take this 2-core machine several minutes. Writes are counted by the bench's watches on the namespace's pods, owner objects and events (one watch event = one write), scaled to a minute. kube-controller-manager runs all of its controllers (garbage collector, namespace, ...), so its CPU and memory are an upper bound for its ReplicaSet controller; it caches every pod of the cluster, so in crane's window it holds the same {n} pods as the operator{}. Go keeps freed memory for a while: its resident memory lags behind its live heap.\n",
                crate::cluster::NO_SCHEDULER,
                if na.is_some() {
                    " (the native column is from its own run)"
                } else {
                    " (the native column is from that window: `--steady-native` runs a ReplicaSet of its own)"
                }
            )?;
        }
        for (name, w) in [
            ("crane", wc),
            ("native", wn),
            ("crane fan-out", fc),
            ("native fan-out", fna),
        ] {
            if let Some(w) = w
                && w.writes.total > 0
            {
                writeln!(
                    s,
                    "Writes in the {name} window: {}\n",
                    writers(&w.writes.by_writer)
                )?;
            }
        }
        Ok(())
    }

    fn write_where(&self, s: &mut String) -> std::fmt::Result {
        if let Some(&n) = self.plan.sizes.iter().max() {
            self.write_where_of(s, &format!("scale-up N={n}"), &self.scale_up, n)?;
        }
        let pods = self.plan.fanout_objects * self.plan.fanout_replicas;
        let title = format!(
            "fan-out {}×{}",
            self.plan.fanout_objects, self.plan.fanout_replicas
        );
        self.write_where_of(s, &title, &self.fan_out, pods)
    }

    fn write_where_of(
        &self,
        s: &mut String,
        title: &str,
        runs: &[Run],
        n: usize,
    ) -> std::fmt::Result {
        let (Some(c), Some(na)) = (
            Self::median_run(runs, Variant::Crane, n),
            Self::median_run(runs, Variant::Native, n),
        ) else {
            return Ok(());
        };
        writeln!(s, "## Where the time goes ({title}, median round)\n")?;
        writeln!(s, "| | crane | native |\n|---|---:|---:|")?;
        writeln!(
            s,
            "| all owner objects created (the bench's requests returned), s | {} | {} |",
            c.requests_s.map_or("–".into(), f2),
            na.requests_s.map_or("–".into(), f2)
        )?;
        writeln!(
            s,
            "| all pods created (watch), s | {} | {} |",
            f2(c.created_s),
            f2(na.created_s)
        )?;
        writeln!(
            s,
            "| all pods Ready, s | {} | {} |",
            f2(c.ready_s),
            f2(na.ready_s)
        )?;
        writeln!(
            s,
            "| last write settled after Ready, s | {} | {} |",
            f1(c.settle_s),
            f1(na.settle_s)
        )?;
        if let Some(o) = &c.operator {
            writeln!(
                s,
                "| reconcile passes (errors) | {:.0} ({:.0}) | |",
                o.reconciles, o.reconcile_errors
            )?;
            writeln!(
                s,
                "| time inside reconcile passes (sum), s | {} | |",
                f2(o.reconcile_seconds_sum)
            )?;
            writeln!(
                s,
                "| controller CPU s until Ready | {} | {} |",
                f2(o.cpu_s),
                na.kcm_cpu_s.map_or("–".into(), f2)
            )?;
            writeln!(
                s,
                "| controller CPU s per 1,000 pods | {} | {} |",
                f2(o.cpu_s * 1000.0 / n as f64),
                na.kcm_cpu_s
                    .map_or("–".into(), |x| f2(x * 1000.0 / n as f64))
            )?;
            writeln!(
                s,
                "| API requests by the operator per pod | {} | |",
                f2(o.api_requests / n as f64)
            )?;
        }
        let per_k = |r: &Run| {
            r.apiserver_cpu_s
                .map_or("–".into(), |x| f2(x * 1000.0 / n as f64))
        };
        writeln!(
            s,
            "| kube-apiserver CPU s per 1,000 pods (until Ready) | {} | {} |",
            per_k(c),
            per_k(na)
        )?;
        let count = |r: &Run, what: &str, who: &str| -> u64 {
            r.writes
                .by_writer
                .iter()
                .filter(|(k, _)| k.starts_with(what) && k.contains(who))
                .map(|(_, v)| v)
                .sum()
        };
        for (label, what, who_c, who_n) in [
            ("pod creates", "pods create", "", ""),
            (
                "event writes by the controller",
                "events",
                "crane-operator",
                "replicaset-controller",
            ),
            (
                "owner status writes",
                "replicasets update",
                "(status)",
                "(status)",
            ),
        ] {
            let what_c = what.replace("replicasets", "cranereplicasets");
            writeln!(
                s,
                "| {label} | {} | {} |",
                count(c, &what_c, who_c),
                count(na, what, who_n)
            )?;
        }
        writeln!(
            s,
            "| pods created beyond N (deleted again later) | {} | {} |",
            c.extra_pods(),
            na.extra_pods()
        )?;
        writeln!(
            s,
            "\nWrites until Ready, by writer (managedFields manager; events by reporting component; `unknown` is a write without a field manager: in the crane namespace, crane-operator's pod creates):\n"
        )?;
        writeln!(s, "- crane: {}", writers(&c.writes.by_writer))?;
        writeln!(s, "- native: {}", writers(&na.writes.by_writer))?;
        writeln!(
            s,
            "- after Ready, crane: {}",
            writers(&c.writes_settling.by_writer)
        )?;
        writeln!(
            s,
            "- after Ready, native: {}\n",
            writers(&na.writes_settling.by_writer)
        )?;
        let resources = ["pods", "cranereplicasets", "replicasets", "events"];
        writeln!(
            s,
            "kube-apiserver requests until Ready (every client; count, mean latency as the API server measures it):\n"
        )?;
        writeln!(s, "- crane: {}", c.apiserver_requests.summary(&resources))?;
        writeln!(
            s,
            "- native: {}\n",
            na.apiserver_requests.summary(&resources)
        )?;
        writeln!(
            s,
            "The controller's own requests until Ready by verb, with the latency it measured (crane-operator's `crane_operator_api_request_duration_seconds`; kube-controller-manager's `rest_client_request_duration_seconds`, all of its controllers):\n"
        )?;
        writeln!(s, "- crane: {}", c.controller_requests.summary(&[]))?;
        writeln!(s, "- native: {}\n", na.controller_requests.summary(&[]))?;
        if let Some(o) = &c.operator {
            writeln!(s, "Operator log of that run: `{}`\n", o.log)?;
        }
        Ok(())
    }

    fn write_rounds(&self, s: &mut String) -> std::fmt::Result {
        if self.scale_up.is_empty() && self.fan_out.is_empty() && self.steady.is_empty() {
            return Ok(());
        }
        writeln!(s, "## Every run\n")?;
        writeln!(
            s,
            "| scenario | pods | round | contender | created s | Ready s | pods/s | operator CPU s | API server CPU s | extra pods created | teardown s |"
        )?;
        writeln!(s, "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")?;
        let mut all: Vec<&Run> = self
            .scale_up
            .iter()
            .chain(&self.fan_out)
            .chain(&self.steady)
            .collect();
        all.sort_by_key(|r| (r.scenario, r.pods, r.round, r.variant));
        for r in all {
            writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.pods,
                r.round,
                r.variant.name(),
                f2(r.created_s),
                if r.unscheduled {
                    "(not scheduled)".to_string()
                } else {
                    f2(r.ready_s)
                },
                f0(r.pods_per_s()),
                r.operator.as_ref().map_or("".into(), |o| f2(o.cpu_s)),
                r.apiserver_cpu_s.map_or("–".into(), f2),
                r.extra_pods(),
                f1(r.teardown_s)
            )?;
        }
        writeln!(s)
    }

    /// Pods Ready over time at the largest scale-up size, the median round of each.
    /// Returns false when there is nothing to draw.
    fn chart(&self, path: &Path) -> Result<bool> {
        use plotters::prelude::*;
        let Some(&n) = self.plan.sizes.iter().max() else {
            return Ok(false);
        };
        let series: Vec<(Variant, &Run)> = [Variant::Crane, Variant::Native, Variant::Raw]
            .into_iter()
            .filter_map(|v| Some((v, Self::median_run(&self.scale_up, v, n)?)))
            .collect();
        if series.is_empty() {
            return Ok(false);
        }
        register_font();
        let x_max = series.iter().map(|(_, r)| r.ready_s).fold(0.0f64, f64::max) * 1.05;
        let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Pods Ready over time, 0 → {n} (median of {}) · {}",
                    rounds(self.plan.rounds),
                    self.date
                ),
                ("sans-serif", 22),
            )
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max.max(0.1), 0usize..(n + n / 20).max(1))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the first create request")
            .y_desc("pods Ready")
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(plot_err)?;
        for (v, run) in series {
            let color = match v {
                Variant::Crane => RGBColor(0x1f, 0x77, 0xb4),
                Variant::Native => RGBColor(0xd6, 0x27, 0x28),
                Variant::Raw => RGBColor(0x2c, 0xa0, 0x2c),
            };
            let mut points = vec![(0.0, 0usize)];
            let mut last = 0;
            for &(t, c) in &run.timeline {
                points.push((t, last));
                points.push((t, c));
                last = c;
            }
            let label = format!("{} ({:.2} s)", v.name(), run.ready_s);
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 16))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
        drop(chart);
        drop(root);
        std::fs::metadata(path).with_context(|| format!("{} not written", path.display()))?;
        Ok(true)
    }
}

/// DejaVu Sans, embedded: the chart needs no system fonts.
fn register_font() {
    use plotters::style::FontStyle;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e:?}")
}

fn writers(w: &BTreeMap<String, u64>) -> String {
    if w.is_empty() {
        return "none".into();
    }
    w.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn rounds(n: usize) -> String {
    if n == 1 {
        "1 round".into()
    } else {
        format!("{n} rounds")
    }
}

fn load1(load: &str) -> f64 {
    load.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn mmss(s: f64) -> String {
    let s = s.round() as u64;
    format!("{}m{:02}s", s / 60, s % 60)
}

fn f0(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.0}")
    } else {
        "–".into()
    }
}
fn f1(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "–".into()
    }
}
fn f2(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "–".into()
    }
}
