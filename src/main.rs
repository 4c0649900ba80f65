//! `crane-operator`: `run` the controller, print the `crd`, serve the `dashboard`; installed
//! as `kubectl-crane`, the kubectl plugin (src/plugin).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand};
use crane_operator::cli::{ClusterArgs, Shell, completion_script, kube_config, termination};
use crane_operator::client;
use crane_operator::controller::{self, Config};
use crane_operator::dashboard::launch::DashboardArgs;
use crane_operator::leader::{self, Elector, Timings};
use crane_operator::metrics::{self, Health, Metrics};
use crane_operator::plugin::{self, Invocation};
use crane_operator::probe;
use crane_operator::telemetry::{self, LogFormat};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "crane-operator",
    version = crane_operator::VERSION,
    about = "Keeps N pods of a template alive and exposes them: the ReplicationController of Kubernetes in Action as a CraneReplicaSet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (KUBECONFIG or the in-cluster config, like kubectl).
    Run(RunArgs),
    /// Print the CraneReplicaSet CRD as YAML.
    Crd,
    /// GET an http:// URL until it answers 2xx (the chart's `helm test`, from this image).
    Probe(ProbeArgs),
    /// Serve a live web view of CraneReplicaSets on 127.0.0.1, with your kubeconfig's rights
    /// (also `kubectl crane dashboard`, installed as the plugin kubectl-crane).
    Dashboard(DashboardArgs),
    /// Print the shell completion script of crane-operator (e.g. `source <(crane-operator
    /// completion bash)`).
    Completion {
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(clap::Args)]
struct ProbeArgs {
    /// The URL, e.g. http://crane-operator-metrics:8080/readyz.
    url: http::Uri,
    /// Seconds to keep trying before failing.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "CRANE_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "CRANE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Reconcile only while holding the leader lease (for more than one replica).
    /// `--leader-elect`, `--leader-elect=false`; the variable takes true/false, 1/0,
    /// yes/no, on/off.
    #[arg(
        long,
        env = "CRANE_LEADER_ELECT",
        num_args = 0..=1,
        require_equals = true,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    leader_elect: bool,
    /// How long a leader's lease lasts without renewal (as kube-controller-manager's
    /// --leader-elect-lease-duration).
    #[arg(long, env = "CRANE_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long a leader keeps trying to renew before it stops; shorter than the lease.
    #[arg(long, env = "CRANE_LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// How often candidates try to take, and the leader to renew, the lease.
    #[arg(long, env = "CRANE_LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    leader_elect_retry_period: Duration,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Namespace of the leader lease (default: POD_NAMESPACE, else the watched namespace, else `default`).
    #[arg(long, env = "CRANE_LEADER_ELECT_NAMESPACE")]
    leader_elect_namespace: Option<String>,
    /// Name of the leader Lease that the replicas compete for; two operators that share a
    /// lease namespace need two names (the chart derives it from the release).
    #[arg(
        long,
        env = "CRANE_LEADER_ELECT_LEASE_NAME",
        default_value = "crane-operator-leader"
    )]
    leader_elect_lease_name: String,
    /// Reconcile passes that may run at once (kube-controller-manager's
    /// --concurrent-replicaset-syncs defaults to 5).
    #[arg(long, env = "CRANE_CONCURRENCY", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Log format.
    #[arg(long, env = "CRANE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    // One binary under three names: kubectl-crane is the kubectl plugin, and
    // kubectl_complete-crane completes it for kubectl.
    let argv: Vec<OsString> = std::env::args_os().collect();
    match Invocation::of(argv.first().map(OsString::as_os_str)) {
        Invocation::Plugin => return Ok(plugin::main(argv).await),
        Invocation::Completion => return Ok(plugin::complete(argv).await),
        Invocation::Operator => {}
    }
    let done = match Cli::parse_from(argv).command {
        Command::Crd => {
            print!("{}", crane_operator::api::crd_yaml());
            Ok(())
        }
        Command::Probe(args) => {
            let body = probe::probe(&args.url, Duration::from_secs(args.timeout)).await?;
            print!("{body}");
            Ok(())
        }
        Command::Run(args) => run(args).await,
        Command::Dashboard(args) => crane_operator::dashboard::launch::launch(args).await,
        Command::Completion { shell } => {
            print!(
                "{}",
                completion_script(shell, Cli::command(), "crane-operator")
            );
            Ok(())
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    // Signals first: a SIGTERM at any point of the start (the API server may be down) is
    // a clean exit, never the default action.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        termination().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // Then the port, so that one in use fails the start at once, not after the caches sync.
    let listener = metrics::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot serve metrics on {}", args.metrics_addr))?;
    let kube_config = kube_config(&args.cluster).await?;
    let metrics = Arc::new(Metrics::default());
    let client = client::build_counted(kube_config.clone(), &metrics)
        .context("could not set up the API client")?;
    let lease = args.leader_elect.then(|| {
        (
            lease_namespace(&args),
            args.leader_elect_lease_name.as_str(),
        )
    });
    let lease = lease.as_ref().map(|(ns, name)| (ns.as_str(), *name));
    tokio::select! {
        checked = controller::check_crd_served(&client, args.namespace.as_deref(), lease) => checked?,
        () = stopped(stop_rx.clone()) => return Ok(()),
    }
    let health = Arc::new(Health::default());

    let server = tokio::spawn(metrics::serve(
        listener,
        metrics.clone(),
        health.clone(),
        stopped(stop_rx.clone()),
    ));
    // Unique per process, as client-go's `<hostname>_<uuid>`: two processes on one machine
    // (or a restarted one) must not share a Lease holder identity.
    let identity = format!(
        "{}_{}",
        std::env::var("POD_NAME")
            .ok()
            .or_else(hostname)
            .unwrap_or_else(|| "crane-operator".into()),
        unique_suffix()
    );
    let config = Config {
        namespace: args.namespace.clone(),
        concurrency: args.concurrency,
        instance: Some(identity.clone()),
    };
    if !args.leader_elect {
        metrics.leader.set(1);
        controller::run(client, config, metrics, health, stopped(stop_rx.clone())).await;
    } else {
        let lease_ns = lease_namespace(&args);
        let lease_client = client::build_without_retries(kube_config, &metrics)
            .context("could not set up the Lease client")?;
        let timings = Timings {
            lease_duration: args.leader_elect_lease_duration,
            renew_deadline: args.leader_elect_renew_deadline,
            retry_period: args.leader_elect_retry_period,
        };
        anyhow::ensure!(
            timings.retry_period < timings.renew_deadline
                && timings.renew_deadline < timings.lease_duration,
            "leader election needs --leader-elect-retry-period < --leader-elect-renew-deadline < \
             --leader-elect-lease-duration (a leader must stop before its lease can expire for others); got {:?} < {:?} < {:?}",
            timings.retry_period,
            timings.renew_deadline,
            timings.lease_duration
        );
        let elector = Elector::new(
            lease_client,
            &lease_ns,
            &args.leader_elect_lease_name,
            &identity,
            timings,
        );
        let (leading_tx, leading) = watch::channel(false);
        let (release_tx, release_rx) = watch::channel(false);
        let election = tokio::spawn(elector.run(leading_tx, release_rx));
        leader::stand_by_then_lead(&health, &metrics, leading, stop_rx.clone(), || {
            controller::run(
                client,
                config,
                metrics.clone(),
                health.clone(),
                stopped(stop_rx.clone()),
            )
        })
        .await?;
        let _ = release_tx.send(true);
        // Releasing the lease needs the API server; without it the lease expires by itself.
        let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
    }
    server
        .await
        .context("metrics server task")?
        .with_context(|| format!("serving metrics on {}", args.metrics_addr))?;
    Ok(())
}

/// Where the leader Lease lives: `--leader-elect-namespace`, else the pod's namespace, else
/// the watched one, else `default`.
fn lease_namespace(args: &RunArgs) -> String {
    args.leader_elect_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .or_else(|| args.namespace.clone())
        .unwrap_or_else(|| "default".into())
}

/// A duration as kube-controller-manager's flags take it: `15s`, `500ms`, `2m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: write e.g. 15s, 500ms or 2m"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?}: the unit must be ms, s or m")),
    }
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos:08x}", std::process::id())
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = ["crane-operator", "run"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(args),
            _ => unreachable!("parsed as run"),
        }
    }

    fn dashboard_args(args: &[&str]) -> Result<DashboardArgs, clap::Error> {
        let argv = ["crane-operator", "dashboard"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Dashboard(args) => Ok(args),
            _ => unreachable!("parsed as dashboard"),
        }
    }

    #[test]
    fn the_dashboard_serves_on_loopback_port_8001_unless_told_otherwise() {
        let args = dashboard_args(&[]).unwrap();
        assert_eq!(
            (args.address.to_string(), args.port),
            ("127.0.0.1".into(), 8001)
        );
        assert!(!args.all_namespaces && args.namespace.is_none() && !args.open);
        let args = dashboard_args(&["-A", "--port", "9000", "--open"]).unwrap();
        assert!(args.all_namespaces && args.open && args.port == 9000);
        assert_eq!(
            dashboard_args(&["-n", "demo"])
                .unwrap()
                .namespace
                .as_deref(),
            Some("demo")
        );
        let both = dashboard_args(&["-n", "demo", "--all-namespaces"])
            .err()
            .unwrap();
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn leader_elect_takes_the_usual_boolean_spellings() {
        assert!(!run_args(&[]).unwrap().leader_elect);
        assert!(run_args(&["--leader-elect"]).unwrap().leader_elect);
        assert!(!run_args(&["--leader-elect=false"]).unwrap().leader_elect);
        assert!(run_args(&["--leader-elect=1"]).unwrap().leader_elect);
        assert!(run_args(&["--leader-elect=yes"]).unwrap().leader_elect);
        assert!(run_args(&["--leader-elect=maybe"]).is_err());
    }

    #[test]
    fn durations_read_like_kube_controller_managers_flags() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("15").unwrap_err().contains("no unit"));
        assert!(parse_duration("1h").unwrap_err().contains("unit"));
        assert_eq!(
            run_args(&[]).unwrap().leader_elect_lease_name,
            "crane-operator-leader"
        );
        let args = run_args(&["--leader-elect-renew-deadline", "8s"]).unwrap();
        assert_eq!(args.leader_elect_renew_deadline, Duration::from_secs(8));
        assert_eq!(args.leader_elect_lease_duration, Duration::from_secs(15));
    }

    /// Polls `check` (the paused clock moves on while the tasks under test wait); fails
    /// after a second.
    #[test]
    fn the_version_names_the_commit_the_binary_was_built_from() {
        let head = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string());
        let commit = head.unwrap_or_else(|| "unknown".into());
        assert_eq!(
            Cli::command().render_version().trim(),
            format!(
                "crane-operator {} (commit {commit})",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn the_metrics_address_may_be_ipv6() {
        let args = run_args(&["--metrics-addr", "[::]:8080"]).unwrap();
        assert!(args.metrics_addr.is_ipv6());
    }
}
