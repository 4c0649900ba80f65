//! `crane-operator dashboard` in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `make e2e` installs) driven through WebDriver, against the
//! local cluster. The page must follow the cluster without a reload and act with the
//! caller's rights. The screenshots it takes (light and dark) go to
//! target/e2e-screenshots/; the README shows copies of them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams};
use serde_json::{Value, json};

use crate::harness::*;

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How the dashboard is started.
pub(crate) enum Invocation {
    Binary,
    /// `kubectl crane dashboard`: the binary installed as the kubectl plugin `kubectl-crane`.
    KubectlPlugin,
}

/// A running dashboard.
pub(crate) struct Dashboard {
    process: Process,
    /// `http://127.0.0.1:PORT`, without the token.
    pub(crate) base: String,
    /// The URL it printed: `http://127.0.0.1:PORT/?token=...`.
    printed: String,
    /// `token=...`, the printed URL's query.
    pub(crate) token: String,
}

/// `crane-operator dashboard` for `namespace` with `kubeconfig`, once it serves.
pub(crate) async fn dashboard(
    namespace: &str,
    kubeconfig: &std::path::Path,
    how: Invocation,
) -> Dashboard {
    let port = free_port();
    let (log, out) = new_log(&format!("dashboard-{namespace}-{port}.log"));
    let binary = env!("CARGO_BIN_EXE_crane-operator");
    let mut command = match how {
        Invocation::Binary => Command::new(binary),
        Invocation::KubectlPlugin => {
            let mut kubectl = Command::new("kubectl");
            kubectl.arg("crane").env("PATH", path_with_plugin());
            kubectl
        }
    };
    let child = command
        .args([
            "dashboard",
            "--namespace",
            namespace,
            "--port",
            &port.to_string(),
        ])
        .args(["--kubeconfig".as_ref(), kubeconfig.as_os_str()])
        .stdout(out.try_clone().expect("clone log handle"))
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .expect("start crane-operator dashboard");
    let process = Process(child);
    let addr = format!("127.0.0.1:{port}");
    let base = format!("http://{addr}");
    let printed = wait_for("the dashboard to print its URL", SHORT, || async {
        let out = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
        out.split_whitespace()
            .find(|word| word.starts_with(&format!("{base}/?token=")))
            .map(str::to_string)
            .ok_or_else(|| format!("it printed {out:?}"))
    })
    .await;
    let token = printed
        .split_once('?')
        .map(|(_, query)| query.to_string())
        .expect("the printed URL has a query");
    wait_for("the dashboard to serve", SHORT, || async {
        http_get(&addr, &format!("/assets/style.css?{token}")).await
    })
    .await;
    Dashboard {
        process,
        base,
        printed,
        token,
    }
}

/// A POST of `body` to `path` as any local process can send it: the page's action header
/// and origin, no token. The answer's status line and body.
async fn post_without_token(base: &str, path: &str, body: &Value) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the dashboard");
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nOrigin: {base}\r\nX-Crane-Dashboard: 1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the POST");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the answer");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// Chromium under chromedriver, headless, in a window the size of a laptop's.
async fn browser() -> (Process, Browser) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver (Debian's chromium-driver; make e2e installs it)");
    let driver = Process(child);
    let profile = std::env::temp_dir().join(format!("crane-dashboard-chromium-{port}"));
    let capabilities: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", format!("--user-data-dir={}", profile.display())]
        }
    }))
    .expect("capabilities");
    let url = format!("http://127.0.0.1:{port}");
    let browser = wait_for("chromedriver to start a session", SHORT, || async {
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    (driver, browser)
}

/// The text of the first element matching `css`, or why there is none.
async fn text(browser: &Browser, css: &str) -> Result<String, String> {
    let element = browser
        .find(Locator::Css(css))
        .await
        .map_err(|e| format!("no {css}: {e}"))?;
    element.text().await.map_err(|e| e.to_string())
}

async fn text_is(browser: &Browser, css: &str, want: &str) -> Result<(), String> {
    let seen = text(browser, css).await?;
    if seen.trim() == want {
        Ok(())
    } else {
        Err(format!("{css} shows {seen:?}"))
    }
}

/// Names of the pods the page lists, with the status word it shows for each.
async fn pods_shown(browser: &Browser) -> Result<Vec<(String, String)>, String> {
    let rows = browser
        .find_all(Locator::Css("#pods tbody tr"))
        .await
        .map_err(|e| e.to_string())?;
    let mut shown = Vec::new();
    for row in rows {
        let name = row.attr("data-pod").await.map_err(|e| e.to_string())?;
        let status = row.attr("data-status").await.map_err(|e| e.to_string())?;
        shown.push((name.unwrap_or_default(), status.unwrap_or_default()));
    }
    Ok(shown)
}

/// The names of the pods the page lists that are not terminating.
fn live(shown: &[(String, String)]) -> Vec<String> {
    shown
        .iter()
        .filter(|(_, status)| status != "Terminating")
        .map(|(name, _)| name.clone())
        .collect()
}

async fn screenshot(browser: &Browser, name: &str) {
    let png = browser.screenshot().await.expect("take a screenshot");
    let dir = repo_root().join("target/e2e-screenshots");
    std::fs::create_dir_all(&dir).expect("create target/e2e-screenshots");
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, png).expect("write the screenshot");
}

/// Clicks the first element matching `locator`. The page swaps its view in whenever the
/// cluster changes, so an element found a moment ago may be gone (a stale reference): it
/// is found again until the click lands.
async fn click(browser: &Browser, what: &str, locator: Locator<'_>) {
    wait_for(&format!("a click on {what}"), SHORT, || async {
        let element = browser
            .find(locator)
            .await
            .map_err(|e| format!("no {what}: {e}"))?;
        element
            .click()
            .await
            .map_err(|e| format!("click {what}: {e}"))
    })
    .await;
}

/// Clicks `css`, then the confirmation dialog's Confirm button.
async fn confirm(browser: &Browser, css: &str) {
    click(browser, css, Locator::Css(css)).await;
    click(
        browser,
        "the confirmation dialog's Confirm",
        Locator::Css("dialog#confirm[open] #confirm-ok"),
    )
    .await;
}

/// Types `replicas` into the scale form and confirms. The page keeps a value being typed
/// across its view swaps; a swap between finding the field and typing is retried.
async fn scale_to(browser: &Browser, replicas: i32) {
    wait_for(
        "the replicas field to hold the new value",
        SHORT,
        || async {
            let input = browser
                .find(Locator::Css("#replicas"))
                .await
                .map_err(|e| format!("no replicas field: {e}"))?;
            input.clear().await.map_err(|e| e.to_string())?;
            input
                .send_keys(&replicas.to_string())
                .await
                .map_err(|e| e.to_string())?;
            let value = input.prop("value").await.map_err(|e| e.to_string())?;
            if value.as_deref() == Some(replicas.to_string().as_str()) {
                Ok(())
            } else {
                Err(format!("the replicas field holds {value:?}"))
            }
        },
    )
    .await;
    confirm(browser, "#scale button[type=submit]").await;
}

#[tokio::test]
async fn the_dashboard_follows_the_cluster_and_acts_with_the_users_rights() {
    let env = TestEnv::new("dashboard").await;
    env.create(crane("crane", 2)).await;
    let mut broken = crane("broken", 1);
    broken["spec"]["selector"] = json!({"matchLabels": {"app": "broken"}});
    broken["spec"]["template"]["metadata"]["labels"]["crane.dev/simulate"] =
        json!("ImagePullBackOff");
    env.create(broken).await;
    let before = env.wait_ready("crane", 2, LONG).await;

    let launched = dashboard(&env.ns, &kubeconfig_path(), Invocation::Binary).await;
    let url = launched.base.clone();
    let (_driver, browser) = browser().await;

    // --- only the one who launched it: the old constant header alone deletes nothing ----
    let target = &before[0];
    let (status, answer) = post_without_token(
        &url,
        &format!(
            "/api/namespaces/{}/pods/{}/delete",
            env.ns,
            target.name_any()
        ),
        &json!({"uid": target.uid()}),
    )
    .await;
    assert!(status.contains(" 403 "), "{status}: {answer}");
    assert!(
        answer.contains("?token="),
        "the refusal says how to get in: {answer}"
    );
    let untouched = env
        .pods()
        .get(&target.name_any())
        .await
        .expect("the pod is there");
    assert_eq!(untouched.uid(), target.uid());
    assert!(
        untouched.metadata.deletion_timestamp.is_none(),
        "a POST without the token deleted {}",
        target.name_any()
    );
    // A browser without the token is refused too, and told where the way in is.
    browser
        .goto(&format!("{url}/"))
        .await
        .expect("open the overview without the token");
    let refused = text(&browser, "body").await.expect("the refusal's text");
    assert!(
        refused.contains("open the URL that `crane-operator dashboard` printed"),
        "{refused}"
    );

    // --- the overview: counts, and the broken object's reason and hint ----------------
    // The printed URL lets the browser in; its cookie lets in everything after.
    browser
        .goto(&launched.printed)
        .await
        .expect("open the printed URL");
    wait_for(
        "the overview to show crane with 2 of 2 ready",
        LONG,
        || async {
            text_is(&browser, "tr[data-name=crane] td.desired", "2").await?;
            text_is(&browser, "tr[data-name=crane] td.current", "2").await?;
            text_is(&browser, "tr[data-name=crane] td.ready", "2").await?;
            text_is(&browser, "tr[data-name=crane] td.available", "2").await?;
            text_is(&browser, "tr[data-name=crane] td.status", "Ready").await
        },
    )
    .await;
    wait_for(
        "the overview to show broken's ImagePullBackOff with its hint",
        LONG,
        || async {
            let issue = text(&browser, "tr[data-name=broken] td.issue").await?;
            if issue.contains("ImagePullBackOff") && issue.contains("cannot pull the image") {
                Ok(())
            } else {
                Err(format!("broken's issue reads {issue:?}"))
            }
        },
    )
    .await;
    wait_for("the page to say it is live", SHORT, || {
        text_is(&browser, "#connection", "live")
    })
    .await;
    screenshot(&browser, "dashboard-overview-light.png").await;

    // --- one object: a pod deleted through the API goes, its replacement comes ----------
    click(&browser, "the link to crane", Locator::LinkText("crane")).await;
    let names = |pods: &[Pod]| pods.iter().map(|p| p.name_any()).collect::<Vec<_>>();
    wait_for("crane's page to list its 2 pods", LONG, || async {
        let shown = pods_shown(&browser).await?;
        let shown: Vec<String> = shown.into_iter().map(|(n, _)| n).collect();
        if shown == names(&before) {
            Ok(())
        } else {
            Err(format!("pods shown: {shown:?}"))
        }
    })
    .await;
    // Its Service (the book's 8080 → the app's 7070) and its conditions.
    wait_for("crane's Service and Ready condition", LONG, || async {
        let service = text(&browser, "#service").await?;
        if !(service.contains("LoadBalancer") && service.contains("8080 → 7070/TCP")) {
            return Err(format!("the Service reads {service:?}"));
        }
        let ready = text(&browser, "#conditions tr[data-type=Ready]").await?;
        if ready.split_whitespace().take(2).eq(["Ready", "True"]) {
            Ok(())
        } else {
            Err(format!("the Ready condition reads {ready:?}"))
        }
    })
    .await;
    // A mark on the page: it survives only if the page is not reloaded.
    browser
        .execute("window.craneNotReloaded = true;", vec![])
        .await
        .expect("mark the page");
    let victim = before[0].name_any();
    env.pods()
        .delete(&victim, &DeleteParams::default())
        .await
        .expect("delete a pod through the API");
    wait_for(
        "the deleted pod to go and a replacement to appear on the page",
        LONG,
        || async {
            let shown = pods_shown(&browser).await?;
            let live = live(&shown);
            let replaced = live.len() == 2
                && !live.contains(&victim)
                && live.iter().any(|n| !names(&before).contains(n));
            if replaced {
                Ok(())
            } else {
                Err(format!("pods shown: {shown:?}"))
            }
        },
    )
    .await;
    let mark = browser
        .execute("return window.craneNotReloaded === true;", vec![])
        .await
        .expect("read the mark");
    assert_eq!(
        mark,
        json!(true),
        "the page was reloaded to show the change"
    );

    // --- scale through the page: spec.replicas changes --------------------------------
    scale_to(&browser, 3).await;
    wait_for("spec.replicas to be 3", SHORT, || async {
        let crs = env.crs().get("crane").await.map_err(|e| e.to_string())?;
        if crs.spec.replicas == 3 {
            Ok(())
        } else {
            Err(format!("spec.replicas {}", crs.spec.replicas))
        }
    })
    .await;
    wait_for("the page to show 3 desired and 3 pods", LONG, || async {
        text_is(&browser, "#desired", "3").await?;
        let shown = pods_shown(&browser).await?;
        if live(&shown).len() == 3 {
            Ok(())
        } else {
            Err(format!("pods shown: {shown:?}"))
        }
    })
    .await;
    wait_for("the notice to say it scaled", SHORT, || {
        text_is(&browser, "#notice", "crane scaled to 3")
    })
    .await;
    screenshot(&browser, "dashboard-crane-light.png").await;

    // --- delete a pod from the page; Escape cancels (after a confirmed action too) -------
    let shown = live(&pods_shown(&browser).await.expect("the pods table"));
    let (kept, deleted) = (shown[0].clone(), shown[1].clone());
    let kept_uid = env.pods().get(&kept).await.expect("get the kept pod").uid();
    click(
        &browser,
        "the kept pod's Delete",
        Locator::Css(&format!("button.delete-pod[data-pod='{kept}']")),
    )
    .await;
    wait_for("the confirmation dialog", SHORT, || async {
        browser
            .find(Locator::Css("dialog#confirm[open]"))
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    browser
        .active_element()
        .await
        .expect("the focused element")
        .send_keys(&fantoccini::key::Key::Escape.to_string())
        .await
        .expect("press Escape");
    wait_for("the dialog to close", SHORT, || async {
        let open = browser
            .execute("return document.getElementById('confirm').open;", vec![])
            .await
            .map_err(|e| e.to_string())?;
        if open == json!(false) {
            Ok(())
        } else {
            Err("still open".to_string())
        }
    })
    .await;
    confirm(
        &browser,
        &format!("button.delete-pod[data-pod='{deleted}']"),
    )
    .await;
    let deleted_notice = format!("pod {deleted} deleted: watch its replacement appear");
    wait_for("the notice to say the pod was deleted", SHORT, || {
        text_is(&browser, "#notice", &deleted_notice)
    })
    .await;
    let after_escape = env.pods().get(&kept).await.expect("the kept pod is there");
    assert_eq!(after_escape.uid(), kept_uid);
    assert!(
        after_escape.metadata.deletion_timestamp.is_none(),
        "Escape deleted {kept}"
    );
    wait_for(
        "a replacement for the pod deleted from the page",
        LONG,
        || async {
            let live = live(&pods_shown(&browser).await?);
            if live.len() == 3 && !live.contains(&deleted) && live.contains(&kept) {
                Ok(())
            } else {
                Err(format!("live pods shown: {live:?}"))
            }
        },
    )
    .await;
    click(&browser, "the theme button", Locator::Css("#theme")).await;
    wait_for("the dark theme", SHORT, || async {
        let theme = browser
            .execute("return document.documentElement.dataset.theme;", vec![])
            .await
            .map_err(|e| e.to_string())?;
        if theme == json!("dark") {
            Ok(())
        } else {
            Err(format!("theme {theme}"))
        }
    })
    .await;
    screenshot(&browser, "dashboard-crane-dark.png").await;

    // --- restart (RollingUpdate objects): the template gets kubectl's restartedAt ---------
    let mut rolling = crane("rolling", 1);
    rolling["spec"]["updateStrategy"] = json!({"type": "RollingUpdate"});
    env.create(rolling).await;
    browser
        .goto(&format!("{url}/crs/{}/rolling", env.ns))
        .await
        .expect("open rolling");
    wait_for("rolling's page with Restart enabled", LONG, || async {
        let restart = browser
            .find(Locator::Css("#restart:not([disabled])"))
            .await
            .map_err(|e| e.to_string())?;
        restart.text().await.map_err(|e| e.to_string())
    })
    .await;
    confirm(&browser, "#restart").await;
    wait_for("the template's restartedAt annotation", SHORT, || async {
        let crs = env.crs().get("rolling").await.map_err(|e| e.to_string())?;
        let annotations = crs
            .spec
            .template
            .metadata
            .and_then(|m| m.annotations)
            .unwrap_or_default();
        annotations
            .get("kubectl.kubernetes.io/restartedAt")
            .cloned()
            .ok_or_else(|| format!("template annotations {annotations:?}"))
    })
    .await;

    // --- a user who may look but not scale: a clear "forbidden" -------------------------
    let viewer = "dashboard-viewer";
    env.kubectl(&["create", "serviceaccount", viewer]);
    env.kubectl(&[
        "create",
        "role",
        viewer,
        "--verb=get,list,watch",
        "--resource=cranereplicasets.crane.dev,pods,services,events.events.k8s.io",
    ]);
    env.kubectl(&[
        "create",
        "rolebinding",
        viewer,
        "--role",
        viewer,
        "--serviceaccount",
        &format!("{}:{viewer}", env.ns),
    ]);
    let token = env.kubectl(&["create", "token", viewer, "--duration", "1h"]);
    let kubeconfig = token_kubeconfig(&format!("{}-viewer", env.ns), token.trim());
    // As kubectl users run it: `kubectl crane dashboard`.
    let viewer_dashboard = dashboard(&env.ns, &kubeconfig, Invocation::KubectlPlugin).await;
    browser
        .goto(&format!(
            "{}/crs/{}/crane?{}",
            viewer_dashboard.base, env.ns, viewer_dashboard.token
        ))
        .await
        .expect("open crane as the viewer");
    wait_for("the viewer's page to show crane", LONG, || {
        text_is(&browser, "#desired", "3")
    })
    .await;
    scale_to(&browser, 1).await;
    wait_for("a forbidden message", SHORT, || async {
        let notice = text(&browser, "#notice.failed").await?;
        if notice.starts_with("Forbidden:")
            && notice.contains("cannot patch resource \"cranereplicasets/scale\"")
        {
            Ok(())
        } else {
            Err(format!("the notice reads {notice:?}"))
        }
    })
    .await;
    let crs = env.crs().get("crane").await.expect("get crane");
    assert_eq!(
        crs.spec.replicas, 3,
        "the forbidden scale changed spec.replicas"
    );
    // The page is still whole: the pods are still listed.
    let pods = env
        .pods()
        .list(&ListParams::default().labels("app=crane"))
        .await
        .expect("list pods");
    assert!(!pods.items.is_empty());
    let shown = pods_shown(&browser).await.expect("the pods table");
    assert!(
        !shown.is_empty(),
        "the page lost its pods after the forbidden action"
    );

    browser.close().await.expect("close the browser");
    env.cleanup().await;
}

#[tokio::test]
async fn an_object_the_dashboard_cannot_decode_is_a_row_that_says_why() {
    let env = TestEnv::without_operator("dashboard-poison").await;
    env.create(crane("alive", 1)).await;
    env.create(crane("poison", 1)).await;
    crate::poison::poison(&env, "poison").await;
    let launched = dashboard(&env.ns, &kubeconfig_path(), Invocation::Binary).await;
    let addr = launched.base.trim_start_matches("http://").to_string();
    let overview = wait_for(
        "the overview to list alive, and poison as unreadable",
        SHORT,
        || async {
            let html = http_get(&addr, &format!("/?{}", launched.token)).await?;
            if html.contains(r#"<tr data-name="alive""#)
                && html.contains(r#"<tr class="unreadable" data-name="poison""#)
            {
                Ok(html)
            } else {
                Err(html)
            }
        },
    )
    .await;
    assert!(!overview.contains("Cannot watch"), "{overview}");
    assert!(
        overview.contains("status.conditions[0].lastTransitionTime"),
        "the row names the field that cannot be read: {overview}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_dashboard_stops_on_sigterm_with_a_page_open() {
    let env = TestEnv::without_operator("dashboard-stop").await;
    let mut dashboard = dashboard(&env.ns, &kubeconfig_path(), Invocation::Binary).await;
    // A page's live connection: its event stream never ends by itself.
    let addr = dashboard.base.trim_start_matches("http://").to_string();
    let mut page = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let token = &dashboard.token;
    page.write_all(
        format!("GET /live/overview?{token} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("open the event stream");
    let mut first = [0u8; 64];
    let n = page.read(&mut first).await.expect("the stream answers");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let pid = dashboard.process.0.id().to_string();
    run_tool("kill", &["-TERM", &pid], None).expect("send SIGTERM");
    let status = wait_for(
        "the dashboard to exit with the page still open",
        SHORT,
        || {
            let exited = dashboard.process.0.try_wait().map_err(|e| e.to_string());
            async move { exited?.ok_or_else(|| "still running".to_string()) }
        },
    )
    .await;
    assert!(status.success(), "exit status {status}");
    drop(page);
    env.cleanup().await;
}
