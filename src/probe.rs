//! `crane-operator probe URL`: an HTTP GET that succeeds on a 2xx answer, retried until a
//! deadline. The chart's `helm test` pod runs it from the operator's own image, which has
//! no shell and no HTTP client of its own: the test then needs no third-party image and
//! runs wherever the operator runs (air-gapped clusters and the local node included).

use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause between two attempts.
const RETRY_EVERY: Duration = Duration::from_secs(1);

type HttpClient = Client<HttpConnector, String>;

/// GETs `url` (plain `http://`) until it answers 2xx or `timeout` has passed. Returns the
/// body of the successful answer; else the last failure, each earlier one on stderr.
pub async fn probe(url: &http::Uri, timeout: Duration) -> anyhow::Result<String> {
    if url.scheme_str() != Some("http") {
        bail!("{url}: only http:// URLs can be probed");
    }
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + timeout;
    let mut attempt = 1u32;
    loop {
        let failure = match tokio::time::timeout(ATTEMPT_TIMEOUT, get(&client, url)).await {
            Ok(Ok((status, body))) if status.is_success() => return Ok(body),
            Ok(Ok((status, body))) => format!("{status}: {}", body.trim()),
            Ok(Err(err)) => format!("{err:#}"),
            Err(_) => format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()),
        };
        if Instant::now() + RETRY_EVERY >= deadline {
            bail!("GET {url}: {failure} (attempt {attempt}; gave up after {timeout:?})");
        }
        eprintln!("attempt {attempt}: GET {url}: {failure}");
        tokio::time::sleep(RETRY_EVERY).await;
        attempt += 1;
    }
}

async fn get(client: &HttpClient, url: &http::Uri) -> anyhow::Result<(http::StatusCode, String)> {
    let response = client.get(url.clone()).await.context("no answer")?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;

    /// A server answering 200 on /ok and 503 on /unready; its base URL.
    async fn server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/ok", get(|| async { "ok\n" })).route(
            "/unready",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "caches not synced\n") }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_2xx_answer_passes_with_its_body() {
        let base = server().await;
        let url = format!("{base}/ok").parse().unwrap();
        assert_eq!(probe(&url, Duration::ZERO).await.unwrap(), "ok\n");
    }

    #[tokio::test]
    async fn another_status_fails_with_the_status_and_the_body() {
        let base = server().await;
        let url = format!("{base}/unready").parse().unwrap();
        let err = probe(&url, Duration::ZERO).await.unwrap_err().to_string();
        assert!(
            err.contains("503 Service Unavailable: caches not synced"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_until_the_deadline() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/readyz").parse().unwrap();
        let started = std::time::Instant::now();
        let err = probe(&url, Duration::from_millis(1500))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("attempt 2"), "{err}");
        assert!(started.elapsed() >= RETRY_EVERY, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn only_plain_http_is_probed() {
        let url = "https://127.0.0.1:1/readyz".parse().unwrap();
        let err = probe(&url, Duration::ZERO).await.unwrap_err().to_string();
        assert!(err.contains("only http://"), "{err}");
    }
}
