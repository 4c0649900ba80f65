//! `crane-operator`: `run` the controller, or print the `crd`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use crane_operator::client;
use crane_operator::controller::{self, Config};
use crane_operator::leader::{Elector, Timings};
use crane_operator::metrics::{self, Health, Metrics};
use crane_operator::probe;
use crane_operator::telemetry::{self, LogFormat};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "crane-operator",
    version,
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
}

#[derive(clap::Args)]
struct DashboardArgs {
    /// Port to serve on.
    #[arg(long, default_value_t = 8001)]
    port: u16,
    /// Address to serve on; anything but loopback lets others act with your rights.
    #[arg(long, default_value = "127.0.0.1")]
    address: std::net::IpAddr,
    /// Show this namespace (default: the kubeconfig context's, else `default`).
    #[arg(short, long, conflicts_with = "all_namespaces")]
    namespace: Option<String>,
    /// Show every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Open the page in the browser (xdg-open, or open on macOS).
    #[arg(long)]
    open: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Which cluster, as kubectl chooses it.
#[derive(clap::Args)]
struct ClusterArgs {
    /// The kubeconfig file (default: KUBECONFIG, ~/.kube/config, or the in-cluster
    /// configuration, as kubectl).
    #[arg(long, env = "CRANE_KUBECONFIG")]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, env = "CRANE_CONTEXT")]
    context: Option<String>,
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
async fn main() -> anyhow::Result<()> {
    match parse_command_line().command {
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
        Command::Dashboard(args) => dashboard(args).await,
    }
}

async fn dashboard(args: DashboardArgs) -> anyhow::Result<()> {
    use crane_operator::dashboard::{self, view::Scope};
    telemetry::init(LogFormat::Text);
    let config = kube_config(&args.cluster).await?;
    let scope = match (args.all_namespaces, args.namespace) {
        (true, _) => Scope::All,
        (false, Some(ns)) => Scope::Namespace(ns),
        (false, None) => Scope::Namespace(config.default_namespace.clone()),
    };
    let client = client::build(config).context("could not set up the API client")?;
    let address = SocketAddr::new(args.address, args.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot serve the dashboard on {address} (is it running already? choose another --port)"))?;
    let token = dashboard::Token::generate().context("no random token from the OS")?;
    let url = match address.ip() {
        ip if ip.is_unspecified() => format!("http://127.0.0.1:{}/", address.port()),
        std::net::IpAddr::V6(ip) => format!("http://[{ip}]:{}/", address.port()),
        ip => format!("http://{ip}:{}/", address.port()),
    };
    let url = format!("{url}?{}={}", dashboard::TOKEN_PARAMETER, token.as_str());
    let what = match &scope {
        Scope::All => "all namespaces".to_string(),
        Scope::Namespace(ns) => format!("namespace {ns}"),
    };
    println!("crane-operator dashboard of {what}: {url} (Ctrl-C to stop)");
    if !address.ip().is_loopback() {
        println!(
            "warning: serving on {address}: whoever reaches it acts on the cluster with your kubeconfig's rights"
        );
    }
    // Kept until the dashboard stops: the browser may read it late.
    let _redirect = args.open.then(|| open_browser(&url)).flatten();
    let cluster = dashboard::Cluster::start(client, scope);
    let stop = futures::FutureExt::shared(Box::pin(termination()));
    // An open page's event stream never ends by itself: a graceful shutdown would wait for
    // the browser tab forever. Requests in flight get a second.
    let abandon = {
        let stop = stop.clone();
        async move {
            stop.await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    tokio::select! {
        served = dashboard::serve(listener, cluster, token, stop) => served.context("serving the dashboard"),
        () = abandon => Ok(()),
    }
}

/// Opens `url` in the user's browser through a redirect page of the user's own, or says
/// how to.
fn open_browser(url: &str) -> Option<crane_operator::dashboard::Redirect> {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let redirect = match crane_operator::dashboard::Redirect::create(&dir, url) {
        Ok(redirect) => redirect,
        Err(e) => {
            println!(
                "could not write a page for the browser in {}: {e}: open the URL above in your browser",
                dir.display()
            );
            return None;
        }
    };
    let opened = std::process::Command::new(opener)
        .arg(redirect.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if opened.is_err() {
        println!("could not run {opener}: open the URL above in your browser");
        return None;
    }
    Some(redirect)
}

/// The command line; as the kubectl plugin `kubectl-crane` (krew's naming), usage and
/// errors say `kubectl crane`.
fn parse_command_line() -> Cli {
    let invoked_as = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let mut command = Cli::command();
    if invoked_as.as_deref() == Some("kubectl-crane") {
        command = command.bin_name("kubectl crane").name("kubectl crane");
    }
    Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit())
}

/// Resolves on the first SIGTERM or SIGINT.
async fn termination() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing reconciles in flight, then exiting"),
        _ = int.recv() => tracing::info!("SIGINT: finishing reconciles in flight, then exiting"),
    }
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
        stand_by_then_lead(&health, &metrics, leading, stop_rx.clone(), || {
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

/// A candidate's part in the election: a standby until `leading` turns true (or `stop`
/// does), then the leader running `work` until it ends; a lost lease ends it with an error.
async fn stand_by_then_lead<F: std::future::Future<Output = ()>>(
    health: &Health,
    metrics: &Metrics,
    mut leading: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    work: impl FnOnce() -> F,
) -> anyhow::Result<()> {
    // A standby serves nothing but is ready to: it must not hold up a rollout.
    health.set_standby(true);
    let elected = tokio::select! {
        _ = stop.wait_for(|s| *s) => false,
        won = leading.wait_for(|l| *l) => won.is_ok(),
    };
    if elected {
        metrics.leader.set(1);
        health.set_standby(false);
        // SIGTERM lets the passes in flight finish (while the lease is still renewed);
        // a lost lease stops every write at once, as kube-controller-manager exits:
        // another leader may start as soon as the lease expires.
        tokio::select! {
            () = work() => {}
            _ = leading.wait_for(|l| !*l) => {
                metrics.leader.set(0);
                anyhow::bail!("lost the leader lease: stopped all work and exiting (a restart campaigns again)");
            }
        }
        metrics.leader.set(0);
    }
    Ok(())
}

/// The cluster to talk to: `--kubeconfig`/`--context` when given, else kubectl's rules
/// (KUBECONFIG, ~/.kube/config, then the in-cluster configuration).
async fn kube_config(args: &ClusterArgs) -> anyhow::Result<kube::Config> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("the kubeconfig {} is not usable", path.display()))
        }
        (None, Some(context)) => kube::Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("no usable kubeconfig context {context}")),
        (None, None) => kube::Config::infer()
            .await
            .context("no Kubernetes configuration: set KUBECONFIG, or run inside a cluster"),
    }
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
    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let polled = tokio::time::timeout(Duration::from_secs(1), async {
            while !check() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        polled.await.unwrap_or_else(|_| panic!("{what}"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_candidate_is_a_ready_standby_until_elected_then_a_leader_that_syncs_first() {
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::default());
        let (leading_tx, leading) = watch::channel(false);
        let (_stop_tx, stop) = watch::channel(false);
        let (seen_tx, seen) = tokio::sync::oneshot::channel();
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        let candidate = {
            let (health, metrics) = (health.clone(), metrics.clone());
            tokio::spawn(async move {
                let (h, m) = (health.clone(), metrics.clone());
                let work = move || async move {
                    let _ = seen_tx.send((h.is_ready(), m.leader.get()));
                    let _ = done.await;
                };
                stand_by_then_lead(&health, &metrics, leading, stop, work).await
            })
        };
        eventually(
            "a standby is ready although its caches never synced",
            || health.is_ready(),
        )
        .await;
        assert_eq!(metrics.leader.get(), 0, "a standby does not lead");

        leading_tx.send(true).unwrap();
        let (ready, leader) = seen.await.expect("the leader runs its work");
        assert!(!ready, "a new leader is not ready until its caches sync");
        assert_eq!(leader, 1);
        done_tx.send(()).unwrap();
        candidate
            .await
            .unwrap()
            .expect("work that ends is a clean end");
        assert_eq!(metrics.leader.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_loses_the_lease_stops_its_work_and_fails() {
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::default());
        let (leading_tx, leading) = watch::channel(false);
        let (_stop_tx, stop) = watch::channel(false);
        let candidate = {
            let (health, metrics) = (health.clone(), metrics.clone());
            tokio::spawn(async move {
                let work = std::future::pending::<()>;
                stand_by_then_lead(&health, &metrics, leading, stop, work).await
            })
        };
        leading_tx.send(true).unwrap();
        eventually("the candidate leads", || metrics.leader.get() == 1).await;
        leading_tx.send(false).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(1), candidate)
            .await
            .expect("a lost lease ends the work at once")
            .unwrap();
        let err = ended.expect_err("a lost lease is an error (the process exits)");
        assert!(err.to_string().contains("lost the leader lease"), "{err}");
        assert_eq!(metrics.leader.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_stopped_before_its_election_never_runs_the_work() {
        let (health, metrics) = (Health::default(), Metrics::default());
        let (_leading_tx, leading) = watch::channel(false);
        let (stop_tx, stop) = watch::channel(false);
        stop_tx.send(true).unwrap();
        let work = || async { panic!("a standby never reconciles") };
        stand_by_then_lead(&health, &metrics, leading, stop, work)
            .await
            .expect("a stop is a clean end");
        assert_eq!(metrics.leader.get(), 0);
    }

    #[test]
    fn the_metrics_address_may_be_ipv6() {
        let args = run_args(&["--metrics-addr", "[::]:8080"]).unwrap();
        assert!(args.metrics_addr.is_ipv6());
    }
}
