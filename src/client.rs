//! The operator's API client: kube's stack (base URI, authentication, extra headers) with
//! client-go's retry rule ([`SafeRetry`]), over HTTP/2 when the API server offers it, as
//! client-go does.
//!
//! kube 5 speaks HTTP/1.1 only, where every request in flight needs a connection of its
//! own: a batch of 256 pod creations opens up to 256 TLS connections. Over HTTP/2 they share
//! one. The operator makes no upgrade (websocket) requests, the reason kube keeps HTTP/1.1.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::{Body, ConfigExt};
use kube::{Client, Config};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tower::retry::{Policy, RetryLayer};
use tower::{BoxError, Layer, Service, ServiceBuilder};

use crate::metrics::{Metrics, RequestLabels, VerbLabels};

use http::header::RETRY_AFTER;
use http::{HeaderValue, Method, Request, Response, StatusCode};

/// Health checks of an idle HTTP/2 connection (client-go: `ReadIdleTimeout` 30 s).
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Retries of one request, at most (client-go: 10).
const MAX_RETRIES: u32 = 10;
/// The longest `Retry-After` honoured: a request waits no longer than this per retry.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// client-go's retry rule: a request refused with `Retry-After` is sent again after that
/// many seconds, at most [`MAX_RETRIES`] times; without the header it fails at once, to
/// the caller's own backoff. 429 (API Priority and Fairness: the request was not served)
/// is retried for every method; 503 and 504 only for requests that may be repeated.
///
/// A POST answered 503 or 504 may have been carried out: a pod create sent again with
/// `generateName` would make a second pod (kube's `RetryPolicy` does that, kube-rs#2082).
/// Every other write of the operator is idempotent or fails cleanly when repeated (a
/// PATCH sets values, a DELETE carries the pod's UID, a Lease PUT its resourceVersion).
#[derive(Clone, Debug, Default)]
pub struct SafeRetry {
    retries: u32,
}

impl SafeRetry {
    /// How long to wait before sending the request again, or `None` not to.
    fn delay(
        &self,
        method: &Method,
        status: StatusCode,
        retry_after: Option<&HeaderValue>,
    ) -> Option<Duration> {
        let retryable = match status {
            StatusCode::TOO_MANY_REQUESTS => true,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => method != Method::POST,
            _ => false,
        };
        if !retryable || self.retries >= MAX_RETRIES {
            return None;
        }
        let seconds: u64 = retry_after?.to_str().ok()?.trim().parse().ok()?;
        Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
    }
}

impl<Res> Policy<Request<Body>, Response<Res>, BoxError> for SafeRetry {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut Request<Body>,
        result: &mut Result<Response<Res>, BoxError>,
    ) -> Option<Self::Future> {
        let response = result.as_ref().ok()?;
        let delay = self.delay(
            req.method(),
            response.status(),
            response.headers().get(RETRY_AFTER),
        )?;
        self.retries += 1;
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &Request<Body>) -> Option<Request<Body>> {
        // Only bodies held in memory can be sent twice (every request of the operator's).
        let mut copy = Request::new(req.body().try_clone()?);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}

/// Counts every request sent and its answer in `crane_operator_api_requests_total`: each
/// attempt, retries included, as client-go's `rest_client_requests_total` does; and times
/// it in `crane_operator_api_request_duration_seconds` (client-go's
/// `rest_client_request_duration_seconds`: until the answer's headers).
#[derive(Clone)]
pub struct CountRequests {
    requests: Family<RequestLabels, Counter>,
    latency: Family<VerbLabels, Histogram>,
}

impl CountRequests {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            requests: metrics.api_requests.clone(),
            latency: metrics.api_request_duration.clone(),
        }
    }
}

impl<S> Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            requests: self.requests.clone(),
            latency: self.latency.clone(),
        }
    }
}

/// The service of [`CountRequests`].
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    requests: Family<RequestLabels, Counter>,
    latency: Family<VerbLabels, Histogram>,
}

fn verb(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Counted<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let verb = verb(req.method());
        let requests = self.requests.clone();
        let latency = self.latency.clone();
        let sent = std::time::Instant::now();
        let response = self.inner.call(req);
        Box::pin(async move {
            let result = response.await;
            latency
                .get_or_create(&VerbLabels { verb })
                .observe(sent.elapsed().as_secs_f64());
            let code = match &result {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            requests.get_or_create(&RequestLabels { verb, code }).inc();
            result
        })
    }
}

/// A client for `config`, over HTTP/2 where the server offers it ([`CONNECTIONS`]
/// connections, used in turn), that retries as [`SafeRetry`] says.
pub fn build(config: Config) -> Result<Client, kube::Error> {
    stack(config, true, None)
}

/// The same, counting its requests in `metrics`: the operator's client.
pub fn build_counted(config: Config, metrics: &Metrics) -> Result<Client, kube::Error> {
    stack(config, true, Some(CountRequests::new(metrics)))
}

/// Without any retry, counting its requests in `metrics`: for the leader Lease, whose
/// every request must end within the renew deadline (client-go's leader election makes
/// no retries of its own either).
pub fn build_without_retries(config: Config, metrics: &Metrics) -> Result<Client, kube::Error> {
    stack(config, false, Some(CountRequests::new(metrics)))
}

/// HTTP/2 connections to the API server, used in turn. One connection carries at most the
/// server's limit of concurrent streams (250 for kube-apiserver); hyper queues requests
/// beyond it on that connection, where Go's transport opens another one. A pass creates up
/// to 500 pods at once (its last slow-start batch): with one connection half of them
/// waited in the client (`make bench`, 0 → 1000 pods: 396 ms per create as the operator
/// timed it against 184 ms as the API server did; 272 ms with two).
const CONNECTIONS: usize = 2;

/// Requests spread over several clients (each with its own connection), in turn.
#[derive(Clone)]
struct Spread<S> {
    transports: Arc<[S]>,
    next: Arc<AtomicUsize>,
}

impl<S, Req> Service<Req> for Spread<S>
where
    S: Service<Req> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    /// hyper's client is always ready: it queues on its connection.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> S::Future {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.transports.len();
        self.transports[i].clone().call(req)
    }
}

fn stack(
    mut config: Config,
    retry: bool,
    count: Option<CountRequests>,
) -> Result<Client, kube::Error> {
    if config.proxy_url.is_some() || config.tls_server_name.is_some() {
        // kube's own client (HTTP/1.1), without kube's retry layer, which would send a
        // POST again.
        config.default_retry = false;
        let builder = kube::client::ClientBuilder::try_from(config)?;
        return Ok(match count {
            Some(count) => builder.with_layer(&count).build(),
            None => builder.build(),
        });
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
    let transports: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .http2_keep_alive_interval(KEEP_ALIVE)
                .http2_keep_alive_while_idle(true)
                .build::<_, Body>(https.clone())
        })
        .collect();
    let transport = Spread {
        transports: transports.into(),
        next: Arc::default(),
    };
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            (retry && config.default_retry).then(|| RetryLayer::new(SafeRetry::default())),
        )
        // Inside the retry layer: every attempt is counted.
        .option_layer(count)
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(transport);
    Ok(Client::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delay(
        retry: &SafeRetry,
        method: Method,
        status: u16,
        after: Option<&str>,
    ) -> Option<Duration> {
        let after = after.map(|a| HeaderValue::from_str(a).unwrap());
        retry.delay(
            &method,
            StatusCode::from_u16(status).unwrap(),
            after.as_ref(),
        )
    }

    #[tokio::test]
    async fn counts_and_times_each_answer_by_verb_and_code_and_a_missing_one_as_error() {
        let metrics = Metrics::default();
        let mut svc =
            CountRequests::new(&metrics).layer(tower::service_fn(|req: Request<()>| async move {
                match *req.method() {
                    Method::POST => Ok(Response::builder().status(429).body(()).unwrap()),
                    Method::GET => Ok(Response::new(())),
                    _ => Err(BoxError::from("connection refused")),
                }
            }));
        let send = |method: Method| Request::builder().method(method).body(()).unwrap();
        for method in [Method::POST, Method::POST, Method::GET, Method::DELETE] {
            let _ = svc.call(send(method)).await;
        }
        let text = metrics.encode();
        for line in [
            r#"crane_operator_api_requests_total{verb="POST",code="429"} 2"#,
            r#"crane_operator_api_requests_total{verb="GET",code="200"} 1"#,
            r#"crane_operator_api_requests_total{verb="DELETE",code="error"} 1"#,
            r#"crane_operator_api_request_duration_seconds_count{verb="POST"} 2"#,
            r#"crane_operator_api_request_duration_seconds_count{verb="DELETE"} 1"#,
            r#"crane_operator_api_request_duration_seconds_count{verb="PUT"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[tokio::test]
    async fn requests_take_the_connections_in_turn() {
        let connection =
            |n: usize| tower::service_fn(move |_: ()| async move { Ok::<_, BoxError>(n) });
        let mut spread = Spread {
            transports: vec![connection(0), connection(1)].into(),
            next: Arc::default(),
        };
        let mut used = Vec::new();
        for _ in 0..4 {
            used.push(spread.call(()).await.unwrap());
        }
        assert_eq!(used, [0, 1, 0, 1]);
    }

    #[test]
    fn retries_as_client_go_and_never_resends_a_post_that_may_have_been_served() {
        let fresh = SafeRetry::default();
        let one = Some(Duration::from_secs(1));
        assert_eq!(
            delay(&fresh, Method::POST, 429, Some("1")),
            one,
            "429: not served"
        );
        assert_eq!(delay(&fresh, Method::POST, 504, Some("1")), None);
        assert_eq!(delay(&fresh, Method::POST, 503, Some("1")), None);
        for method in [Method::GET, Method::PATCH, Method::PUT, Method::DELETE] {
            assert_eq!(
                delay(&fresh, method.clone(), 503, Some("1")),
                one,
                "{method}"
            );
            assert_eq!(
                delay(&fresh, method.clone(), 504, Some("1")),
                one,
                "{method}"
            );
        }
        assert_eq!(delay(&fresh, Method::GET, 500, Some("1")), None);
        assert_eq!(
            delay(&fresh, Method::GET, 429, None),
            None,
            "no Retry-After: no retry"
        );
        assert_eq!(
            delay(&fresh, Method::GET, 429, Some("3600")),
            Some(MAX_RETRY_AFTER)
        );
        let spent = SafeRetry {
            retries: MAX_RETRIES,
        };
        assert_eq!(delay(&spent, Method::GET, 429, Some("1")), None);
    }
}
