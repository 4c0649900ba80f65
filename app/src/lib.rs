//! The book's app: `kubia` of *Kubernetes in Action* (the seed's `heejeong/crane`). An HTTP
//! server that answers every GET with `You've hit <hostname>`, so that repeated curls
//! through a Service show which pod answered, and that stops cleanly on SIGTERM, so that a
//! deleted pod goes away at once instead of after its grace period.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The address the book's pods listen on (`containerPort: 7070`).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7070";

/// The kernel's host name: in a pod, the pod's name (what Node's `os.hostname()` returned
/// for kubia). Falls back to /etc/hostname, then to "unknown".
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// What every GET gets back.
pub fn greeting(hostname: &str) -> String {
    format!("You've hit {hostname}\n")
}

/// Answers GET (and HEAD) on every path with the greeting, logging one line per request
/// to stdout as kubia did.
pub fn router(hostname: String) -> Router {
    let answer = get(
        |State(hostname): State<String>, ConnectInfo(client): ConnectInfo<SocketAddr>| async move {
            println!("Received request from {client}");
            greeting(&hostname)
        },
    );
    Router::new()
        .route("/", answer.clone())
        .route("/{*path}", answer)
        .with_state(hostname)
}

/// Serves `router(hostname)` on `listener` until `shutdown` resolves; then stops accepting,
/// lets requests in flight finish, closes idle keep-alive connections, and returns.
pub async fn serve(
    listener: TcpListener,
    hostname: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(hostname).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// SIGTERM (what the kubelet sends) and SIGINT (Ctrl-C), caught from the moment it is
/// installed: install it before announcing the server, so that no early signal kills the
/// process the default way.
pub struct Termination {
    term: Signal,
    int: Signal,
}

impl Termination {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves with the name of the first of the two signals.
    pub async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_greeting_names_the_host_on_one_line() {
        assert_eq!(greeting("crane-x7k2p"), "You've hit crane-x7k2p\n");
    }

    #[test]
    fn the_hostname_is_the_kernels_without_its_newline() {
        let name = hostname();
        assert!(!name.is_empty() && !name.contains('\n'), "{name:?}");
        if let Ok(kernel) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            assert_eq!(name, kernel.trim());
        }
    }
}
