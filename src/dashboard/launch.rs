//! `crane-operator dashboard` and `kubectl crane dashboard`: the flags, the printed URL,
//! the browser opened on request, and serving until Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;

use super::view::Scope;
use crate::cli::{ClusterArgs, kube_config, termination};
use crate::client;
use crate::telemetry::{self, LogFormat};

/// `dashboard`'s flags.
#[derive(clap::Args, Debug)]
pub struct DashboardArgs {
    /// Port to serve on.
    #[arg(long, default_value_t = 8001)]
    pub port: u16,
    /// Address to serve on; anything but loopback lets others act with your rights.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: std::net::IpAddr,
    /// Show this namespace (default: the kubeconfig context's, else `default`).
    #[arg(short, long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Show every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Open the page in the browser (xdg-open, or open on macOS).
    #[arg(long)]
    pub open: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Serves the dashboard of `args` until SIGINT or SIGTERM, after printing its URL.
pub async fn launch(args: DashboardArgs) -> anyhow::Result<()> {
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
    let token = super::Token::generate().context("no random token from the OS")?;
    let url = match address.ip() {
        ip if ip.is_unspecified() => format!("http://127.0.0.1:{}/", address.port()),
        std::net::IpAddr::V6(ip) => format!("http://[{ip}]:{}/", address.port()),
        ip => format!("http://{ip}:{}/", address.port()),
    };
    let url = format!("{url}?{}={}", super::TOKEN_PARAMETER, token.as_str());
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
    let cluster = super::Cluster::start(client, scope);
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
        served = super::serve(listener, cluster, token, stop) => served.context("serving the dashboard"),
        () = abandon => Ok(()),
    }
}

/// Opens `url` in the user's browser through a redirect page of the user's own, or says
/// how to.
fn open_browser(url: &str) -> Option<super::Redirect> {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let redirect = match super::Redirect::create(&dir, url) {
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
