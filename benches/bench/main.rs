//! `make bench`: crane-operator side by side with kube-controller-manager's ReplicaSet
//! controller ("native") and with a client that creates bare pods as fast as the API server
//! takes them ("raw"), on the cluster in KUBECONFIG. Every run gets a fresh namespace, whose
//! pods are gone before the next run starts; crane-operator is started by the bench for
//! that namespace (`run --namespace`), the native controller is the one already running in
//! the cluster's kube-controller-manager. Scenarios: scale-up (0 → N Ready), fan-out (many
//! small objects), recovery (a deleted pod replaced), steady state (writes, CPU and memory
//! with 10,000 pods); and, only when asked for (`--only fleet`, make bench-fleet), the fleet:
//! 10,000 objects × 10 pods grown from 1,000 pods, cold start, 10 % deleted (fleet.rs).
//!
//! ```text
//! cargo bench --bench bench -- [--smoke] [--sizes 100,500,1000] [--rounds 3] ...
//! ```
//!
//! Writes target/bench/report.md, report.json and ready-over-time.png; operator logs go
//! to target/bench/logs/. Exits non-zero when a scenario failed (the report says which).
//! `--smoke` is a tiny run that checks the harness works, not timings (make bench-smoke).

mod census;
mod cluster;
mod fleet;
mod operator;
#[path = "../../tests/e2e/placement.rs"]
mod placement;
mod report;
mod scenarios;
mod track;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::cluster::{Cluster, Variant, Workload, find_component};
use crate::report::Report;
use crate::scenarios::{Bench, Plan};

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "crane-operator vs the native ReplicaSet controller vs raw pod creation"
)]
struct Opts {
    /// A tiny run that checks the harness works (make bench-smoke): N=10, 1 round,
    /// fan-out 3x2, 3 recovery samples, a steady state of 10 pods, 2 s windows.
    #[arg(long)]
    smoke: bool,
    /// Scale-up sizes (pods of one CraneReplicaSet / ReplicaSet / raw batch).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Scale-up rounds (each round alternates the variants in a rotating order).
    #[arg(long)]
    rounds: Option<usize>,
    /// Fan-out: OBJECTSxREPLICAS, e.g. 200x5.
    #[arg(long)]
    fanout: Option<String>,
    #[arg(long)]
    fanout_rounds: Option<usize>,
    /// Recovery samples per controller.
    #[arg(long)]
    recovery_samples: Option<usize>,
    /// Pods of the steady-state / memory step (0: skip it).
    #[arg(long)]
    steady_pods: Option<usize>,
    /// Seconds of the steady-state window after the steady-state step converged.
    #[arg(long)]
    steady_window: Option<f64>,
    /// Also run the steady-state step with a ReplicaSet (the full run skips it for time:
    /// kube-controller-manager is measured over crane's pods, which it caches too).
    #[arg(long)]
    steady_native: bool,
    /// Bare-pod creation concurrency of the raw baseline (default: tuned at the start).
    #[arg(long)]
    raw_concurrency: Option<usize>,
    /// crane-operator --concurrency (= kube-controller-manager --concurrent-replicaset-syncs).
    #[arg(long, default_value_t = 5)]
    concurrency: u16,
    /// The fleet: OBJECTSxPODS at its largest (default 10000x10: 100,000 pods).
    #[arg(long)]
    fleet: Option<String>,
    /// Fleet sizes (pods) it grows through, each a whole number of objects (default: 1 %,
    /// 10 % and all of the fleet).
    #[arg(long, value_delimiter = ',')]
    fleet_steps: Option<Vec<usize>>,
    /// Samples of each pass-cost probe at each fleet size.
    #[arg(long, default_value_t = 5)]
    fleet_probes: usize,
    /// Seconds of the fleet's steady-state window.
    #[arg(long, default_value_t = 60.0)]
    fleet_window: f64,
    /// Pods of each create arm of the wire scenario (JSON versus protobuf).
    #[arg(long)]
    wire_pods: Option<usize>,
    /// Scenarios to run (default all but fleet): scale-up, fan-out, recovery, steady,
    /// wire, fleet (only when named: 100,000 pods take a long while).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The operator binary (default: the one cargo built along with this bench).
    #[arg(long, env = "CRANE_BENCH_OPERATOR")]
    operator_bin: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// `OBJECTSxPODS`, e.g. 200x5.
fn objects_by_pods(flag: &str, s: &str) -> anyhow::Result<(usize, usize)> {
    let parsed = s
        .split_once('x')
        .and_then(|(o, r)| Some((o.parse().ok()?, r.parse().ok()?)));
    match parsed {
        Some((o, r)) if o > 0 && r > 0 => Ok((o, r)),
        _ => anyhow::bail!("{flag} wants OBJECTSxPODS (both > 0), not {s}"),
    }
}

/// The objects of the fleet at each step: the sizes asked for (pods, whole objects), or 1 %
/// and 10 % of it; always ending with the whole fleet.
fn fleet_steps(
    objects: usize,
    replicas: usize,
    pods: Option<&[usize]>,
) -> anyhow::Result<Vec<usize>> {
    let mut steps = match pods {
        Some(pods) => pods
            .iter()
            .map(|&p| {
                if p == 0 || p % replicas != 0 || p > objects * replicas {
                    anyhow::bail!(
                        "--fleet-steps: {p} pods is not a whole number of objects of {replicas} pods, up to {}",
                        objects * replicas
                    )
                }
                Ok(p / replicas)
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        None => vec![(objects / 100).max(1), (objects / 10).max(1)],
    };
    steps.push(objects);
    steps.sort_unstable();
    steps.dedup();
    Ok(steps)
}

impl Opts {
    fn plan(&self) -> anyhow::Result<Plan> {
        let smoke = self.smoke;
        let (fo, fr) = match &self.fanout {
            Some(s) => objects_by_pods("--fanout", s)?,
            None if smoke => (3, 2),
            None => (200, 5),
        };
        let (fleet_objects, fleet_replicas) = match &self.fleet {
            Some(s) => objects_by_pods("--fleet", s)?,
            None => (10_000, 10),
        };
        Ok(Plan {
            profile: if smoke { "smoke" } else { "full" },
            sizes: self.sizes.clone().unwrap_or_else(|| {
                if smoke {
                    vec![10]
                } else {
                    vec![100, 500, 1000]
                }
            }),
            rounds: self.rounds.unwrap_or(if smoke { 1 } else { 3 }),
            fanout_objects: fo,
            fanout_replicas: fr,
            fanout_rounds: self.fanout_rounds.unwrap_or(if smoke { 1 } else { 2 }),
            recovery_samples: self.recovery_samples.unwrap_or(if smoke { 3 } else { 50 }),
            recovery_replicas: if smoke { 2 } else { 5 },
            steady_pods: self.steady_pods.unwrap_or(if smoke { 10 } else { 10_000 }),
            steady_window_s: self.steady_window.unwrap_or(if smoke { 2.0 } else { 30.0 }),
            steady_native: self.steady_native || smoke,
            fanout_window_s: if smoke { 2.0 } else { 15.0 },
            raw_candidates: if smoke { vec![] } else { vec![8, 32, 128] },
            raw_concurrency: self.raw_concurrency.or(if smoke { Some(8) } else { None }),
            concurrency: self.concurrency,
            object_parallelism: 16,
            fleet_objects,
            fleet_replicas,
            fleet_steps: fleet_steps(fleet_objects, fleet_replicas, self.fleet_steps.as_deref())?,
            fleet_probes: self.fleet_probes.max(1),
            fleet_window_s: self.fleet_window,
            wire_pods: self.wire_pods.unwrap_or(if smoke { 10 } else { 1000 }),
            wire_rounds: if smoke { 1 } else { 3 },
        })
    }

    /// Whether to run `scenario`: every one by default, except the fleet, which runs only
    /// when named in --only.
    fn runs(&self, scenario: &str) -> bool {
        match &self.only {
            Some(only) => only.iter().any(|s| s == scenario),
            None => scenario != "fleet",
        }
    }
}

/// Rounds alternate the variants, starting with a different one each round.
fn rotated(variants: &[Variant], round: usize) -> Vec<Variant> {
    let mut v = variants.to_vec();
    v.rotate_left(round % variants.len());
    v
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = Opts::parse();
    match run(opts).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("[bench] error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(opts: Opts) -> anyhow::Result<bool> {
    let started = Instant::now();
    let plan = opts.plan()?;
    const SCENARIOS: [&str; 6] = ["scale-up", "fan-out", "recovery", "steady", "wire", "fleet"];
    if let Some(unknown) = opts
        .only
        .iter()
        .flatten()
        .find(|s| !SCENARIOS.contains(&s.as_str()))
    {
        anyhow::bail!(
            "--only: no scenario {unknown} (there are {})",
            SCENARIOS.join(", ")
        );
    }
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
            % 0xfffff
    );
    let cluster = Cluster::connect(run_id).await?;
    let kcm = find_component("kube-controller-manager", &cluster.server);
    let scheduler = find_component("kube-scheduler", &cluster.server);
    let apiserver = cluster::find_apiserver(&cluster.server);
    let operator_bin = opts
        .operator_bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_crane-operator")));
    std::fs::create_dir_all(&opts.out)?;
    let bench = Bench {
        cluster,
        plan: plan.clone(),
        operator_bin,
        log_dir: opts.out.join("logs"),
        kcm: kcm.clone(),
        apiserver,
        started,
        raw: AtomicUsize::new(plan.raw_concurrency.unwrap_or(32)),
    };
    let mut report = Report::new(&bench, scheduler).await;
    report.scenarios = SCENARIOS
        .into_iter()
        .filter(|s| opts.runs(s))
        .map(String::from)
        .collect();
    bench.progress(format!(
        "{} run on {} (Kubernetes {}, {} Ready kwok nodes); kube-controller-manager: {}; operator: {}",
        plan.profile,
        bench.cluster.server,
        report.cluster.version,
        report.cluster.nodes,
        report.cluster.kcm_flags,
        bench.operator_bin.display()
    ));
    // The pods that need room on nodes: the fleet's and the steady state's are never
    // scheduled.
    let needed = [
        (
            opts.runs("scale-up"),
            plan.sizes.iter().copied().max().unwrap_or(0),
        ),
        (
            opts.runs("fan-out"),
            plan.fanout_objects * plan.fanout_replicas,
        ),
        (opts.runs("recovery"), plan.recovery_replicas),
    ]
    .into_iter()
    .filter_map(|(runs, pods)| runs.then_some(pods))
    .max()
    .unwrap_or(0);
    if report.cluster.pod_capacity < needed {
        anyhow::bail!(
            "the cluster's Ready kwok nodes hold {} pods, the plan needs {needed}: make bench starts a \
             100-node cluster (CRANE_NODES=100); or choose smaller --sizes / --fanout",
            report.cluster.pod_capacity
        );
    }
    bench.cluster.install_crd().await?;
    // The API server sets up a new CRD's handlers on first use (over 2 s here): not a cost of
    // the first measured run. One CraneReplicaSet of one pod, not reported.
    bench.progress("warm-up: one CraneReplicaSet of one pod");
    let warm_up = Workload {
        variant: Variant::Crane,
        objects: 1,
        replicas: 1,
        unscheduled: false,
    };
    bench
        .converge("warm-up", 0, warm_up, None)
        .await
        .map_err(|e| anyhow::anyhow!("warm-up: {e:#}"))?;

    let work = async {
        scenarios_all(&bench, &opts, &mut report).await;
    };
    let interrupted = tokio::select! {
        _ = work => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    if interrupted {
        report
            .failures
            .push("interrupted (Ctrl-C): cleaning up".into());
        eprintln!("[bench] interrupted: deleting this run's namespaces");
    }
    if let Err(e) = bench.cluster.cleanup().await {
        report.failures.push(format!("cleanup: {e:#}"));
    }

    report.finish(&bench);
    let files = report.write(&opts.out)?;
    let problems = report.check(&files);
    for f in &files {
        bench.progress(format!("wrote {}", f.display()));
    }
    let wall = started.elapsed().as_secs_f64();
    if problems.is_empty() {
        bench.progress(format!(
            "{} run finished in {wall:.0} s: every scenario produced numbers",
            plan.profile
        ));
        if plan.profile == "full" {
            println!("\n{}", std::fs::read_to_string(opts.out.join("report.md"))?);
        }
        Ok(true)
    } else {
        eprintln!(
            "[bench] {} run finished in {wall:.0} s with problems:",
            plan.profile
        );
        for p in &problems {
            eprintln!("  - {p}");
        }
        Ok(false)
    }
}

async fn scenarios_all(bench: &Bench, opts: &Opts, report: &mut Report) {
    let plan = &bench.plan;
    let all = [Variant::Crane, Variant::Native, Variant::Raw];

    if opts.runs("scale-up") {
        if plan.raw_concurrency.is_none() && !plan.raw_candidates.is_empty() {
            match bench.tune_raw(300).await {
                Ok(t) => {
                    let best = t
                        .iter()
                        .max_by(|a, b| a.pods_per_s.total_cmp(&b.pods_per_s))
                        .map(|t| t.concurrency);
                    report.raw_tuning = t;
                    if let Some(best) = best {
                        bench.set_raw_concurrency(best);
                    }
                }
                Err(e) => report.failures.push(format!("raw tuning: {e:#}")),
            }
        }
        report.raw_concurrency = bench.raw_concurrency();
        for round in 0..plan.rounds {
            for &n in &plan.sizes {
                for variant in rotated(&all, round) {
                    bench.progress(format!(
                        "scale-up round {}/{} N={n} {}: starting",
                        round + 1,
                        plan.rounds,
                        variant.name()
                    ));
                    let w = Workload {
                        variant,
                        objects: 1,
                        replicas: n,
                        unscheduled: false,
                    };
                    let result = bench.converge("scale-up", round + 1, w, None).await;
                    match result {
                        Ok(run) => {
                            bench.progress(format!(
                                "scale-up round {}/{} N={n} {}: {:.2} s to Ready ({:.1} pods/s; created in {:.2} s; pods of the deleted namespace gone in {:.1} s)",
                                round + 1,
                                plan.rounds,
                                variant.name(),
                                run.ready_s,
                                run.pods_per_s(),
                                run.created_s,
                                run.teardown_s
                            ));
                            report.scale_up.push(run);
                        }
                        Err(e) => {
                            let msg = format!(
                                "scale-up round {} N={n} {}: {e:#}",
                                round + 1,
                                variant.name()
                            );
                            eprintln!("[bench] FAILED {msg}");
                            report.failures.push(msg);
                        }
                    }
                }
            }
        }
    }

    if opts.runs("fan-out") {
        let (objects, replicas) = (plan.fanout_objects, plan.fanout_replicas);
        for round in 0..plan.fanout_rounds {
            let last = round + 1 == plan.fanout_rounds;
            for variant in rotated(&[Variant::Crane, Variant::Native], round) {
                bench.progress(format!(
                    "fan-out round {}/{} {objects}x{replicas} {}: starting",
                    round + 1,
                    plan.fanout_rounds,
                    variant.name()
                ));
                let window = last.then(|| Duration::from_secs_f64(plan.fanout_window_s));
                let w = Workload {
                    variant,
                    objects,
                    replicas,
                    unscheduled: false,
                };
                match bench.converge("fan-out", round + 1, w, window).await {
                    Ok(run) => {
                        bench.progress(format!(
                            "fan-out round {}/{} {}: {:.2} s to Ready ({:.1} pods/s)",
                            round + 1,
                            plan.fanout_rounds,
                            variant.name(),
                            run.ready_s,
                            run.pods_per_s()
                        ));
                        report.fan_out.push(run);
                    }
                    Err(e) => {
                        let msg = format!("fan-out round {} {}: {e:#}", round + 1, variant.name());
                        eprintln!("[bench] FAILED {msg}");
                        report.failures.push(msg);
                    }
                }
            }
        }
    }

    if opts.runs("recovery") {
        bench.progress(format!(
            "recovery: {} samples per controller, {} replicas",
            plan.recovery_samples, plan.recovery_replicas
        ));
        match bench
            .recovery(plan.recovery_samples, plan.recovery_replicas)
            .await
        {
            Ok(r) => report.recovery = r,
            Err(e) => {
                let msg = format!("recovery: {e:#}");
                eprintln!("[bench] FAILED {msg}");
                report.failures.push(msg);
            }
        }
    }

    if opts.runs("wire") {
        bench.progress(format!(
            "wire: JSON versus protobuf, {} pods per create arm, {} rounds",
            plan.wire_pods, plan.wire_rounds
        ));
        // The API server's idle rate is taken off each arm: the earlier namespaces'
        // clean-up must be over.
        if let Err(e) = bench.cluster.wait_gone(Duration::from_secs(300)).await {
            report.failures.push(format!("before the wire step: {e:#}"));
        }
        match bench.wire(plan.wire_pods, plan.wire_rounds).await {
            Ok(runs) => report.wire = runs,
            Err(e) => {
                let msg = format!("wire: {e:#}");
                eprintln!("[bench] FAILED {msg}");
                report.failures.push(msg);
            }
        }
    }

    if opts.runs("steady") && plan.steady_pods > 0 {
        // A clean start for the memory figures: every earlier namespace gone.
        if let Err(e) = bench.cluster.wait_gone(Duration::from_secs(300)).await {
            report
                .failures
                .push(format!("before the steady state: {e:#}"));
        }
        let variants = if plan.steady_native {
            vec![Variant::Crane, Variant::Native]
        } else {
            vec![Variant::Crane]
        };
        for variant in variants {
            bench.progress(format!(
                "steady state: {} pods {}, then a {:.0} s window",
                plan.steady_pods,
                variant.name(),
                plan.steady_window_s
            ));
            let window = Some(Duration::from_secs_f64(plan.steady_window_s));
            let w = Workload {
                variant,
                objects: 1,
                replicas: plan.steady_pods,
                unscheduled: true,
            };
            match bench.converge("steady", 1, w, window).await {
                Ok(run) => {
                    let s = run.steady.as_ref();
                    bench.progress(format!(
                        "steady state {}: {} pods created in {:.1} s; window: {} writes, operator RSS {:.0} MiB, kube-controller-manager RSS {:.0} MiB",
                        variant.name(),
                        run.pods,
                        run.ready_s,
                        s.map_or(0, |s| s.writes.total),
                        s.and_then(|s| s.operator_usage).map_or(f64::NAN, |u| u.rss_mib),
                        s.and_then(|s| s.kcm_usage).map_or(f64::NAN, |u| u.rss_mib),
                    ));
                    report.steady.push(run);
                }
                Err(e) => {
                    let msg = format!("steady state {}: {e:#}", variant.name());
                    eprintln!("[bench] FAILED {msg}");
                    report.failures.push(msg);
                }
            }
        }
    }

    if opts.runs("fleet") {
        // The native fleet first, while kube-controller-manager has cached no fleet yet (Go
        // is slow to give memory back); crane-operator is a fresh process either way.
        for variant in [Variant::Native, Variant::Crane] {
            if let Err(e) = bench.cluster.wait_gone(Duration::from_secs(600)).await {
                report
                    .failures
                    .push(format!("before the {} fleet: {e:#}", variant.name()));
            }
            bench.progress(format!(
                "fleet {}: {} objects × {} pods, grown through {:?} objects",
                variant.name(),
                plan.fleet_objects,
                plan.fleet_replicas,
                plan.fleet_steps
            ));
            match bench.fleet(variant).await {
                Ok(run) => {
                    if let Some(e) = &run.error {
                        let msg = format!("fleet {}: {e}", variant.name());
                        eprintln!("[bench] FAILED {msg}");
                        report.failures.push(msg);
                    }
                    report.fleet.push(run);
                }
                Err(e) => {
                    let msg = format!("fleet {}: {e:#}", variant.name());
                    eprintln!("[bench] FAILED {msg}");
                    report.failures.push(msg);
                }
            }
        }
    }
}
