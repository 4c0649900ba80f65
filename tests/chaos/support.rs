//! What the chaos scenarios share: the seed and a small PRNG, faults on the operator and on
//! the local control plane, convergence checks that time themselves, and the accounting
//! of pods created against pods needed.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crane_operator::api::CraneReplicaSet;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;

use crate::harness::*;

/// The run's base seed: `CRANE_CHAOS_SEED`, or the clock. Each scenario mixes in its own
/// name, so one scenario replays alone with the same base seed.
pub fn base_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| match std::env::var("CRANE_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CRANE_CHAOS_SEED must be an unsigned integer, not {s:?}")),
        Err(_) => {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                % 1_000_000_000
        }
    })
}

/// Starts a scenario: prints its seed (first thing, so a failure can be replayed) and
/// returns its PRNG.
pub fn scenario(name: &str) -> Rng {
    let base = base_seed();
    eprintln!(
        "chaos[{name}]: seed {base} (replay: CRANE_CHAOS_SEED={base} cargo test --test chaos -- --test-threads 1 --nocapture {name})"
    );
    let mixed = name.bytes().fold(base ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    Rng::new(mixed)
}

/// xorshift64*: small, fast, and the same sequence everywhere for a given seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi);
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    /// `k` distinct indices below `n`.
    pub fn pick(&mut self, n: usize, k: usize) -> BTreeSet<usize> {
        let mut chosen = BTreeSet::new();
        while chosen.len() < k.min(n) {
            chosen.insert(self.range(0, n as u64 - 1) as usize);
        }
        chosen
    }
}

/// Sets spec.replicas through the scale subresource, as `kubectl scale` does.
pub async fn scale(env: &TestEnv, name: &str, replicas: u64) {
    env.crs()
        .patch_scale(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap_or_else(|e| panic!("scale {name} to {replicas}: {e}"));
}

/// Waits (with a deadline) for `n` ready pods and a status saying so, as
/// `TestEnv::wait_ready` does, but names the pods that are not ready when it times out
/// (a pod the scheduler never placed is the cluster's fault, not the operator's); returns
/// how long it took.
pub async fn converge(env: &TestEnv, name: &str, n: u64, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    wait_for(
        &format!("{n} ready pods of {name} and a status saying so"),
        timeout,
        || async {
            let pods = env.active_pods(name).await?;
            let unready: Vec<String> = pods
                .iter()
                .filter(|p| !is_ready(p))
                .map(|p| {
                    let st = p.status.clone().unwrap_or_default();
                    let conditions: Vec<String> = st
                        .conditions
                        .unwrap_or_default()
                        .iter()
                        .map(|c| format!("{}={}", c.type_, c.status))
                        .collect();
                    format!(
                        "{} (phase {:?}, node {:?}, {conditions:?})",
                        p.name_any(),
                        st.phase,
                        p.spec.as_ref().and_then(|s| s.node_name.clone())
                    )
                })
                .collect();
            let crs = env.crs().get(name).await.map_err(|e| e.to_string())?;
            let st = crs.status.clone().unwrap_or_default();
            let current = st.observed_generation == crs.metadata.generation;
            if pods.len() as u64 == n
                && unready.is_empty()
                && current
                && st.replicas as u64 == n
                && st.ready_replicas as u64 == n
            {
                Ok(())
            } else {
                Err(format!(
                    "{} active, not ready: {unready:?}; status replicas {} ready {} observedGeneration {:?} (generation {:?})",
                    pods.len(),
                    st.replicas,
                    st.ready_replicas,
                    st.observed_generation,
                    crs.metadata.generation
                ))
            }
        },
    )
    .await;
    t0.elapsed()
}

/// Like [`converge`], with two times and two deadlines: until `n` active pods exist and the
/// status counts them (the operator's part, within `timeout`), and until they are all ready
/// as well (the scheduler's and kwok's part, within `ready_timeout`).
pub async fn converge_in_two(
    env: &TestEnv,
    name: &str,
    n: u64,
    timeout: Duration,
    ready_timeout: Duration,
) -> (Duration, Duration) {
    let t0 = Instant::now();
    wait_for(
        &format!("{n} active pods of {name} and a status counting them"),
        timeout,
        || async {
            let active = env.active_pods(name).await?.len() as u64;
            let crs = env.crs().get(name).await.map_err(|e| e.to_string())?;
            let st = crs.status.clone().unwrap_or_default();
            (active == n && st.replicas as u64 == n)
                .then_some(())
                .ok_or(format!("{active} active; status {st:?}"))
        },
    )
    .await;
    let created = t0.elapsed();
    converge(env, name, n, ready_timeout).await;
    (created, t0.elapsed())
}

/// Fails the test if the operator exited: it must only ever exit on SIGTERM.
pub fn assert_running(operator: &mut Operator, when: &str) {
    if let Some(status) = operator.exit_status() {
        panic!(
            "the operator exited by itself {when}: {status}; its log: {}",
            operator.log.display()
        );
    }
}

/// SIGTERM, then waits up to `timeout` for the operator to exit. Ok: exit 0, in how long.
/// Err: still running (it is then SIGKILLed), or any other end (see [`sigterm_outcome`]).
pub async fn sigterm_and_wait(mut operator: Operator, timeout: Duration) -> Result<String, String> {
    let status = Command::new("kill")
        .args(["-TERM", &operator.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {}", operator.pid());
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let exit = loop {
        if let Some(exit) = operator.exit_status() {
            break exit;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "still running {timeout:?} after SIGTERM; log {}",
                operator.log.display()
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    sigterm_outcome(exit, t0.elapsed())
        .map_err(|why| format!("{why}; log {}", operator.log.display()))
}

/// How a SIGTERMed process ended: Ok only for exit 0. Killed by the signal itself means no
/// handler ran (a binary without one ends so), which is never a clean exit.
pub fn sigterm_outcome(exit: std::process::ExitStatus, took: Duration) -> Result<String, String> {
    match exit.code() {
        Some(0) => Ok(format!("exit 0 in {}", secs(took))),
        _ => Err(format!("ended with {exit} after SIGTERM, not exit 0")),
    }
}

/// Waits until the operator serves its metrics port: its SIGTERM handler is set up before
/// it binds the port, so a SIGTERM from then on must end it with exit 0.
pub async fn wait_for_metrics_port(operator: &Operator) {
    wait_every(
        "the operator to listen on its metrics port",
        Duration::from_millis(10),
        SHORT,
        || async {
            tokio::net::TcpStream::connect(&operator.metrics_addr)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await;
}

/// SIGTERM, then the operator must exit 0 within 30 s (as a pod's grace period).
pub async fn stop_gracefully(mut operator: Operator) -> String {
    assert_running(&mut operator, "before the SIGTERM");
    sigterm_and_wait(operator, SHORT)
        .await
        .unwrap_or_else(|why| panic!("SIGTERM must end the operator with exit 0: {why}"))
}

/// A counter of the operator's /metrics.
pub async fn counter(operator: &Operator, series: &str) -> f64 {
    let text = operator
        .metrics()
        .await
        .unwrap_or_else(|e| panic!("scrape {}: {e}", operator.metrics_addr));
    required_value(&text, series)
}

/// The value of `series` in a /metrics text; fails when it is absent: a renamed metric read
/// as 0 would, in the accounting, cancel an overshoot.
pub fn required_value(text: &str, series: &str) -> f64 {
    metric_value(text, series)
        .unwrap_or_else(|| panic!("the operator's /metrics has no series {series}"))
}

/// Whether the cluster under test is this checkout's local control plane (the one
/// `tests/cluster/component.sh` can stop): the control-plane faults can run only there.
pub fn local_control_plane() -> Result<(), String> {
    let own = repo_root().join(".cluster/kubeconfig");
    let used = kubeconfig_path();
    let canon = |p: &PathBuf| std::fs::canonicalize(p).ok();
    if canon(&own).is_some() && canon(&own) == canon(&used) {
        Ok(())
    } else {
        Err(format!(
            "KUBECONFIG is {}, not this checkout's local cluster {}: control-plane faults need `make cluster` \
             (on another cluster, leave these scenarios out: `-- --skip control_plane`)",
            used.display(),
            own.display()
        ))
    }
}

/// `tests/cluster/component.sh ARGS...` against this checkout's cluster, off the async
/// runtime (the watches that count pods keep running meanwhile).
pub async fn component(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        component_blocking(&args)
    })
    .await
    .expect("component.sh task")
}

pub fn component_blocking(args: &[&str]) -> String {
    let script = repo_root().join("tests/cluster/component.sh");
    let out = Command::new(&script)
        .args(args)
        .env("KUBECONFIG", repo_root().join(".cluster/kubeconfig"))
        .output()
        .expect("run tests/cluster/component.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "component.sh {args:?} failed: {text}");
    text.trim().to_string()
}

/// Makes sure the local control plane is whole: every component running, and
/// kube-controller-manager and kube-scheduler leading (they exit when the API server is away
/// for ~10 s, which may happen after `component.sh start` already ran: a scheduler gone
/// would leave every new pod Pending). With `since` (the end of an outage), their leases
/// must have been renewed after it. Returns the components it had to start again.
/// Does nothing on a cluster that is not this checkout's.
pub async fn ensure_control_plane(since: Option<jiff::Timestamp>) -> Vec<String> {
    use k8s_openapi::api::coordination::v1::Lease;
    let mut restarted = Vec::new();
    if local_control_plane().is_err() {
        return restarted;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut leases: Option<Api<Lease>> = None;
    loop {
        let status = component(&["status"]).await;
        let stopped: Vec<String> = status
            .lines()
            .filter_map(|l| l.strip_suffix(": stopped"))
            .map(str::to_string)
            .collect();
        let state = if stopped.is_empty() {
            // A client only once every component runs (it needs the API server).
            if leases.is_none() {
                leases = Some(Api::namespaced(client().await, "kube-system"));
            }
            let leases = leases.as_ref().expect("just set");
            let mut stale = Vec::new();
            for name in ["kube-controller-manager", "kube-scheduler"] {
                let renew_time = leases
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec?.renew_time);
                let renewed = renew_time
                    .as_ref()
                    .map(|t| jiff::Timestamp::now().duration_since(t.0).as_secs_f64());
                let after_outage = since.is_none_or(|s| renew_time.is_some_and(|t| t.0 > s));
                if !(after_outage && renewed.is_some_and(|age| age < 6.0)) {
                    stale.push(format!("{name} lease renewed {renewed:?} s ago"));
                }
            }
            if stale.is_empty() {
                return restarted;
            }
            stale.join(", ")
        } else {
            component(&["start"]).await;
            let what = format!("started again: {stopped:?}");
            restarted.extend(stopped);
            what
        };
        assert!(
            Instant::now() < deadline,
            "the local control plane is not whole 120 s on: {state}; {status}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Copies the local control plane's component logs to target/e2e-logs/ (`kwokctl start`
/// truncates the log of every component it starts again), for the evidence of a failure.
pub fn save_component_logs(tag: &str) {
    let from = repo_root().join(".cluster/kwok/clusters/crane/logs");
    let to = repo_root().join("target/e2e-logs");
    for c in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        let _ = std::fs::copy(
            from.join(format!("{c}.log")),
            to.join(format!("{tag}-{c}.log")),
        );
    }
}

/// Pods created against pods needed. `needed` is what a controller without overshoot
/// must create: every increase of spec.replicas it may have seen, plus every pod others
/// deleted.
#[derive(Default, Debug)]
pub struct Ledger {
    pub needed: u64,
}

impl Ledger {
    pub fn increase(&mut self, from: u64, to: u64) {
        self.needed += to.saturating_sub(from);
    }

    /// Created minus needed, as a signed number (negative: fewer than needed so far,
    /// which cannot be once converged).
    pub fn overshoot(&self, created: usize) -> i64 {
        created as i64 - self.needed as i64
    }
}

/// Every value spec.replicas of one CraneReplicaSet took, in the order the API server
/// stored them, recorded by a watch.
pub struct SpecHistory {
    values: Arc<Mutex<Vec<i32>>>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SpecHistory {
    pub async fn start(env: &TestEnv, name: &str) -> Self {
        let values = Arc::new(Mutex::new(Vec::new()));
        let seen = values.clone();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let (task, errors) = watch_in_background(
            env.crs(),
            config,
            "the CraneReplicaSet watch",
            move |crs: &CraneReplicaSet, deleted| {
                let mut v = seen.lock().unwrap_or_else(|e| e.into_inner());
                if !deleted && v.last() != Some(&crs.spec.replicas) {
                    v.push(crs.spec.replicas);
                }
            },
        )
        .await;
        Self {
            values,
            errors,
            task,
        }
    }

    pub fn values(&self) -> Vec<i32> {
        self.values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Pods a controller may need to create to follow this history from its first value
    /// on: the sum of its increases.
    pub fn increases(&self) -> u64 {
        self.values()
            .windows(2)
            .map(|w| (w[1] - w[0]).max(0) as u64)
            .sum()
    }
}

impl Drop for SpecHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The UIDs of every pod in the namespace right now (any phase, terminating or not).
pub async fn pod_uids(env: &TestEnv) -> BTreeSet<String> {
    env.pods()
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .items
        .iter()
        .filter_map(|p| p.uid())
        .collect()
}

/// Fails if the pod watch that counts creations had an error: a pod created and deleted
/// in the gap could have gone unseen, and the count would prove nothing.
pub fn assert_watch_clean(seen: &PodsEverSeen, scenario: &str) {
    let errors = seen.errors();
    assert!(
        errors.is_empty(),
        "chaos[{scenario}]: the pod watch that counts creations failed, so the count is not proof: {errors:?}"
    );
}

/// Waits until the nodes have room for `pods` more pods: the namespaces of earlier tests
/// may still be draining.
pub async fn wait_for_room(env: &TestEnv, pods: u64) {
    use k8s_openapi::api::core::v1::{Node, Pod};
    let nodes: Api<Node> = Api::all(env.client.clone());
    let all_pods: Api<Pod> = Api::all(env.client.clone());
    wait_every(
        &format!("room for {pods} pods on the nodes"),
        Duration::from_secs(1),
        LONG,
        || async {
            let capacity: u64 = nodes
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .iter()
                .filter_map(|n| n.status.as_ref()?.allocatable.as_ref()?.get("pods"))
                .filter_map(|q| q.0.parse::<u64>().ok())
                .sum();
            let used = all_pods
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .iter()
                .filter(|p| {
                    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                    !matches!(phase, Some("Succeeded" | "Failed"))
                })
                .count() as u64;
            (capacity >= used + pods)
                .then_some(())
                .ok_or(format!("{used} pods on nodes for {capacity}"))
        },
    )
    .await;
}

/// Seconds with one decimal, for the figures.
pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The CraneReplicaSets of a namespace, by name.
pub async fn all_crs(env: &TestEnv) -> Result<Vec<CraneReplicaSet>, String> {
    let api: Api<CraneReplicaSet> = env.crs();
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
        .items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_process_killed_by_the_sigterm_itself_did_not_exit_cleanly() {
        // A process without a SIGTERM handler: the signal's default action ends it.
        let mut child = Command::new("sleep").arg("30").spawn().expect("run sleep");
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success());
        let exit = child.wait().expect("wait for sleep");
        assert_eq!(exit.signal(), Some(15));
        let outcome = sigterm_outcome(exit, Duration::ZERO);
        assert!(outcome.is_err(), "{outcome:?}");
        let exit_0 = std::process::ExitStatus::from_raw(0);
        assert!(sigterm_outcome(exit_0, Duration::ZERO).is_ok());
        let exit_1 = std::process::ExitStatus::from_raw(1 << 8);
        assert!(sigterm_outcome(exit_1, Duration::ZERO).is_err());
    }

    #[test]
    #[should_panic(expected = "has no series crane_operator_pods_created_total")]
    fn a_missing_counter_is_an_error_not_zero() {
        let text = "# TYPE crane_operator_pods_made counter\ncrane_operator_pods_made_total 3\n";
        required_value(text, "crane_operator_pods_created_total");
    }

    #[test]
    fn a_present_counter_is_read() {
        let text = "crane_operator_pods_deleted_total 0\ncrane_operator_pods_created_total 7\n";
        assert_eq!(
            required_value(text, "crane_operator_pods_created_total"),
            7.0
        );
        assert_eq!(
            required_value(text, "crane_operator_pods_deleted_total"),
            0.0
        );
    }
}
