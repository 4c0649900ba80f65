//! `crane-operator`: `run` the controller, or print the `crd`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use crane_operator::client;
use crane_operator::controller::{self, Config};
use crane_operator::leader::{Elector, Timings};
use crane_operator::metrics::{self, Health, Metrics};
use crane_operator::probe;
use crane_operator::telemetry::{self, LogFormat};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The Lease that operator replicas compete for.
const LEASE_NAME: &str = "crane-operator-leader";

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
    #[arg(long, env = "CRANE_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the leader lease (default: POD_NAMESPACE, else the watched namespace, else `default`).
    #[arg(long, env = "CRANE_LEADER_ELECT_NAMESPACE")]
    leader_elect_namespace: Option<String>,
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
    match Cli::parse().command {
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
    }
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
    let kube_config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration: set KUBECONFIG, or run inside a cluster")?;
    let client = client::build(kube_config.clone()).context("could not set up the API client")?;
    tokio::select! {
        checked = controller::check_crd_served(&client, args.namespace.as_deref()) => checked?,
        () = stopped(stop_rx.clone()) => return Ok(()),
    }
    let metrics = Arc::new(Metrics::default());
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
        let lease_ns = args
            .leader_elect_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| args.namespace.clone())
            .unwrap_or_else(|| "default".into());
        // A standby serves nothing but is ready to: it must not hold up a rollout.
        health.set_standby(true);
        let lease_client = client::build_without_retries(kube_config)
            .context("could not set up the Lease client")?;
        let elector = Elector::new(
            lease_client,
            &lease_ns,
            LEASE_NAME,
            &identity,
            Timings::default(),
        );
        let (leading_tx, mut leading) = watch::channel(false);
        let (release_tx, release_rx) = watch::channel(false);
        let election = tokio::spawn(elector.run(leading_tx, release_rx));
        let mut stop = stop_rx.clone();
        let elected = tokio::select! {
            _ = stop.wait_for(|s| *s) => false,
            won = leading.wait_for(|l| *l) => won.is_ok(),
        };
        if elected {
            metrics.leader.set(1);
            health.set_standby(false);
            let work = controller::run(
                client,
                config,
                metrics.clone(),
                health.clone(),
                stopped(stop_rx.clone()),
            );
            // SIGTERM lets the passes in flight finish (while the lease is still renewed);
            // a lost lease stops every write at once, as kube-controller-manager exits:
            // another leader may start as soon as the lease expires.
            tokio::select! {
                () = work => {}
                _ = leading.wait_for(|l| !*l) => {
                    metrics.leader.set(0);
                    anyhow::bail!("lost the leader lease: stopped all work and exiting (a restart campaigns again)");
                }
            }
            metrics.leader.set(0);
        }
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
