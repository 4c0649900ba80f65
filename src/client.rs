//! The operator's API client: kube's stack (base URI, authentication, extra headers, and
//! the retry layer that honours `Retry-After` on 429, 503 and 504), over HTTP/2 when the
//! API server offers it, as client-go does.
//!
//! kube 5 speaks HTTP/1.1 only, where every request in flight needs a connection of its
//! own: a batch of 256 pod creations opens up to 256 TLS connections. Over HTTP/2 they share
//! one. The operator makes no upgrade (websocket) requests, the reason kube keeps HTTP/1.1.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ConfigExt};
use kube::{Client, Config};
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

/// Health checks of an idle HTTP/2 connection (client-go: `ReadIdleTimeout` 30 s).
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// A client for `config`, over HTTP/2 where the server offers it. A proxied configuration
/// gets kube's own client.
pub fn build(config: Config) -> Result<Client, kube::Error> {
    if config.proxy_url.is_some() || config.tls_server_name.is_some() {
        return Client::try_from(config);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    // As Go does: without it, Nagle's algorithm holds back the small HTTP/2 frames of a
    // request until the server's delayed ACK (tens of milliseconds per round trip).
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let transport = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(KEEP_ALIVE)
        .http2_keep_alive_while_idle(true)
        .build::<_, Body>(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(transport);
    Ok(Client::new(service, config.default_namespace))
}
