//! Back-pressure without a cluster: an API server that answers 429 Too Many Requests (API
//! Priority and Fairness) or 503 with `Retry-After` is given that time before the request
//! is sent again. The client is the operator's own (`crane_operator::client::build`, with
//! client-go's retry rule, `crane_operator::client::SafeRetry`); errors beyond that
//! layer fall to the controller's per-object backoff (tests/e2e `failures`). A create that
//! timed out may have been stored, and is never sent again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Config};
use serde_json::json;

fn json_body(v: serde_json::Value) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string())
}

/// Answers `refusals` times with `status` and `Retry-After: 1`, then with the pod; records
/// when each request came.
async fn server(status: StatusCode, refusals: usize) -> (String, Arc<Mutex<Vec<Instant>>>) {
    let seen: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let log = seen.clone();
    let app = Router::new().route(
        "/api/v1/namespaces/default/pods/p",
        get(move || {
            let log = log.clone();
            async move {
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(Instant::now());
                    log.len()
                };
                if n <= refusals {
                    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "too many requests, please try again later", "reason": "TooManyRequests",
                        "code": status.as_u16()});
                    let mut r: Response = (status, json_body(body)).into_response();
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    r
                } else {
                    json_body(json!({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": "p", "namespace": "default"}}))
                    .into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

async fn get_through_refusals(status: StatusCode) {
    let (url, seen) = server(status, 2).await;
    let client = crane_operator::client::build(Config::new(url.parse().unwrap())).unwrap();
    let pod = Api::<Pod>::namespaced(client, "default")
        .get("p")
        .await
        .unwrap_or_else(|e| panic!("{status}: the request was not retried to success: {e}"));
    assert_eq!(pod.metadata.name.as_deref(), Some("p"));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{status}: 2 refusals, then the answer");
    for pair in seen.windows(2) {
        let gap = pair[1] - pair[0];
        // Retry-After is whole seconds: the retry must not come sooner.
        assert!(
            gap >= Duration::from_millis(950),
            "{status}: retried after {gap:?}, before the 1 s Retry-After"
        );
    }
}

#[tokio::test]
async fn too_many_requests_is_retried_after_the_servers_retry_after() {
    get_through_refusals(StatusCode::TOO_MANY_REQUESTS).await;
}

#[tokio::test]
async fn service_unavailable_is_retried_after_the_servers_retry_after() {
    get_through_refusals(StatusCode::SERVICE_UNAVAILABLE).await;
}

/// A pod create answered 504 (or 503) may have been stored by the API server: sent again
/// with `generateName`, it would make a second pod (kube-rs#2082).
#[tokio::test]
async fn a_create_that_timed_out_is_sent_once() {
    for status in [StatusCode::GATEWAY_TIMEOUT, StatusCode::SERVICE_UNAVAILABLE] {
        let posts: Arc<Mutex<usize>> = Arc::default();
        let seen = posts.clone();
        let app = Router::new().route(
            "/api/v1/namespaces/default/pods",
            post(move || {
                let seen = seen.clone();
                async move {
                    *seen.lock().unwrap() += 1;
                    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "Timeout: request did not complete within the allotted timeout",
                        "reason": "Timeout", "code": status.as_u16()});
                    let mut r: Response = (status, json_body(body)).into_response();
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    r
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = crane_operator::client::build(Config::new(url.parse().unwrap())).unwrap();
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"generateName": "crane-"}})).unwrap();
        let err = Api::<Pod>::namespaced(client, "default")
            .create(&Default::default(), &pod)
            .await
            .expect_err("the create fails");
        assert!(err.to_string().contains("Timeout"), "{status}: {err}");
        assert_eq!(
            *posts.lock().unwrap(),
            1,
            "{status}: the create was sent again"
        );
    }
}
