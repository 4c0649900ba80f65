//! The invalid-input corpus, `tests/data/invalid/*.yaml`: every file is a CraneReplicaSet
//! written wrong, with the message fragment it must produce in its header:
//!
//! ```yaml
//! # expect: <a fragment of the refusal, or of the condition's message and the event's note>
//! # via: admission | api | controller
//! # condition: <Type>/<Reason>          (controller cases only)
//! # why: <what is wrong, for the reader>
//! ```
//!
//! - `admission`: `kubectl create -f` (kubectl's strict field validation, as users run it)
//!   must be refused. A file with two CraneReplicaSet documents is an update: the first is
//!   created (and must be accepted), then `kubectl replace -f` with the second must be
//!   refused.
//! - `api`: a create through the API with the server's default field validation (unknown
//!   fields pruned with a warning, as most clients send) must be refused with 422.
//! - `controller`: the CraneReplicaSet is accepted; the controller must report the
//!   condition (status True, that reason, the fragment in its message) and a Warning event
//!   whose note carries the fragment.
//!
//! Documents of other kinds (a Service, a ResourceQuota) are created first: the setting
//! the case needs. All cases share one namespace and one operator, which must keep serving a
//! healthy CraneReplicaSet there throughout.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::ResourceQuota;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use serde_json::Value;

use crate::harness::*;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Via {
    Admission,
    Api,
    Controller,
}

#[derive(Debug)]
struct Case {
    file: String,
    expect: String,
    via: Via,
    /// (type, reason) of the condition, for controller cases.
    condition: Option<(String, String)>,
    /// Documents of other kinds, created first.
    setup: Vec<(String, Value)>,
    /// The CraneReplicaSet documents: one, or a valid one and its invalid update.
    crs: Vec<(String, Value)>,
}

fn corpus_dir() -> PathBuf {
    repo_root().join("tests/data/invalid")
}

/// Reads and checks the corpus (a malformed file fails the test, naming it).
fn load() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("read tests/data/invalid")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files.iter().map(parse).collect()
}

fn parse(path: &PathBuf) -> Case {
    let file = path
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(path).expect("read a corpus file");
    let header = |key: &str| {
        text.lines()
            .take_while(|l| l.starts_with('#'))
            .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
            .map(|v| v.trim().to_string())
    };
    let expect = header("expect").unwrap_or_else(|| panic!("{file}: no `# expect:` line"));
    let via = match header("via").as_deref() {
        Some("admission") => Via::Admission,
        Some("api") => Via::Api,
        Some("controller") => Via::Controller,
        other => panic!("{file}: `# via:` must be admission, api or controller, not {other:?}"),
    };
    let condition = header("condition").map(|c| {
        let (t, r) = c
            .split_once('/')
            .unwrap_or_else(|| panic!("{file}: `# condition:` is Type/Reason"));
        (t.to_string(), r.to_string())
    });
    assert_eq!(
        via == Via::Controller,
        condition.is_some(),
        "{file}: controller cases, and only they, name a `# condition:`"
    );
    // The raw text of each document, so that kubectl reads exactly what the file says.
    let mut docs: Vec<String> = vec![String::new()];
    for line in text.lines() {
        if line == "---" {
            docs.push(String::new());
        } else if !line.starts_with('#') {
            let doc = docs.last_mut().expect("a document");
            doc.push_str(line);
            doc.push('\n');
        }
    }
    let (mut setup, mut crs) = (Vec::new(), Vec::new());
    for raw in docs.into_iter().filter(|d| !d.trim().is_empty()) {
        let value: Value = serde_saphyr::from_str(&raw)
            .unwrap_or_else(|e| panic!("{file}: a document is not YAML: {e}"));
        if value["kind"] == "CraneReplicaSet" {
            crs.push((raw, value));
        } else {
            setup.push((raw, value));
        }
    }
    assert!(
        (1..=2).contains(&crs.len()),
        "{file}: one CraneReplicaSet, or two (an update), not {}",
        crs.len()
    );
    assert!(
        crs.len() == 1 || via == Via::Admission,
        "{file}: updates are admission cases"
    );
    Case {
        file,
        expect,
        via,
        condition,
        setup,
        crs,
    }
}

fn name_of(doc: &Value) -> String {
    doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Runs one admission or API case; Err says what went wrong.
async fn refused(env: &TestEnv, api: &Api<DynamicObject>, case: &Case) -> Result<String, String> {
    let outcome = match case.via {
        Via::Admission => {
            let (last, first) = case.crs.split_last().expect("a document");
            if let Some((raw, _)) = first.first() {
                env.kubectl_result(&["create", "-f", "-"], Some(raw))
                    .map_err(|e| format!("the valid first document was refused: {e}"))?;
            }
            let verb = if first.is_empty() {
                "create"
            } else {
                "replace"
            };
            // kubectl replace reads the live resourceVersion first: a status write by the
            // operator in between is a Conflict, to be retried as any client would.
            let mut attempt = 0;
            loop {
                let result = env.kubectl_result(&[verb, "-f", "-"], Some(&last.0));
                match result {
                    Err(e) if e.contains("(Conflict)") && attempt < 5 => attempt += 1,
                    other => break other,
                }
            }
        }
        Via::Api => {
            let object: DynamicObject =
                serde_json::from_value(case.crs[0].1.clone()).map_err(|e| e.to_string())?;
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => Ok("created".into()),
                Err(kube::Error::Api(s)) if s.code == 422 => Err(s.message),
                Err(e) => return Err(format!("expected a 422 refusal, got: {e}")),
            }
        }
        Via::Controller => unreachable!("not an admission case"),
    };
    match outcome {
        Ok(out) => Err(format!("accepted ({})", out.trim())),
        Err(message) if message.contains(&case.expect) => Ok(message),
        Err(message) => Err(format!("refused, but without the fragment: {message}")),
    }
}

/// Waits for a controller case's condition and event; Err says what was seen instead.
async fn reported(env: &TestEnv, case: &Case) -> Result<String, String> {
    let name = name_of(&case.crs[0].1);
    let (type_, reason) = case.condition.clone().expect("a controller case");
    let event_reason = if type_ == "ReplicaFailure" {
        "FailedCreate".to_string()
    } else {
        reason.clone()
    };
    let check = || async {
        let condition = env.condition(&name, &type_).await?;
        let ok = condition.as_ref().is_some_and(|c| {
            c.status == "True" && c.reason == reason.as_str() && c.message.contains(&case.expect)
        });
        let events = env.events_for(&name, &event_reason).await?;
        let event = events.iter().find(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.note.as_deref().unwrap_or_default().contains(&case.expect)
        });
        match (ok, event) {
            (true, Some(_)) => Ok(condition.map(|c| c.message).unwrap_or_default()),
            _ => Err(format!(
                "condition {condition:?}; {} {event_reason} events: {:?}",
                events.len(),
                events.iter().map(|e| e.note.clone()).collect::<Vec<_>>()
            )),
        }
    };
    // A deadline well past the first passes (a failed pass retries after 1 s, 2 s, ...).
    let deadline = std::time::Instant::now() + SHORT;
    loop {
        match check().await {
            Ok(m) => return Ok(m),
            Err(seen) if std::time::Instant::now() >= deadline => return Err(seen),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

#[tokio::test]
async fn invalid_input_corpus() {
    let cases = load();
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());
    let mut env = TestEnv::new("corpus").await;
    let resource = ApiResource::erase::<crane_operator::api::CraneReplicaSet>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &resource);

    // A healthy CraneReplicaSet that the operator must keep serving throughout.
    env.create(crane("corpus-healthy", 2)).await;
    env.wait_ready("corpus-healthy", 2, LONG).await;

    let mut failures = Vec::new();
    // Setup documents first, for every case.
    for case in &cases {
        for (raw, value) in &case.setup {
            if let Err(e) = env.kubectl_result(&["create", "-f", "-"], Some(raw)) {
                failures.push(format!(
                    "{}: setup {} refused: {e}",
                    case.file, value["kind"]
                ));
            }
            if value["kind"] == "ResourceQuota" {
                // Until the quota controller has counted, admission refuses the pods it
                // covers for another reason ("status unknown for quota").
                let quotas: Api<ResourceQuota> = Api::namespaced(env.client.clone(), &env.ns);
                let q = name_of(value);
                wait_for("the quota controller to count the quota", SHORT, || async {
                    let quota = quotas.get(&q).await.map_err(|e| e.to_string())?;
                    quota
                        .status
                        .and_then(|s| s.hard)
                        .map(drop)
                        .ok_or("not counted yet".to_string())
                })
                .await;
            }
        }
    }

    // Controller cases are accepted; create them all now and check them after the
    // admission cases, so that their first passes and retries overlap.
    let controller: Vec<&Case> = cases.iter().filter(|c| c.via == Via::Controller).collect();
    for case in &controller {
        if let Err(e) = env.kubectl_result(&["create", "-f", "-"], Some(&case.crs[0].0)) {
            failures.push(format!(
                "{}: must be accepted (the controller judges it): {e}",
                case.file
            ));
        }
    }

    let (mut kubectl_creates, mut updates, mut api_creates) = (0, 0, 0);
    for case in cases.iter().filter(|c| c.via != Via::Controller) {
        match refused(&env, &api, case).await {
            Ok(message) => {
                let first = message
                    .lines()
                    .find(|l| l.contains(&case.expect))
                    .unwrap_or_default();
                eprintln!("ok   {} [{:?}]: {}", case.file, case.via, first.trim());
            }
            Err(why) => failures.push(format!("{} [{:?}]: {why}", case.file, case.via)),
        }
        match (case.via, case.crs.len()) {
            (Via::Api, _) => api_creates += 1,
            (_, 2) => updates += 1,
            _ => kubectl_creates += 1,
        }
    }
    for case in &controller {
        match reported(&env, case).await {
            Ok(message) => eprintln!(
                "ok   {} [Controller {}]: {message}",
                case.file,
                case.condition
                    .as_ref()
                    .map(|(t, r)| format!("{t}/{r}"))
                    .unwrap_or_default()
            ),
            Err(seen) => failures.push(format!(
                "{} [Controller]: no {:?} condition and Warning event with {:?}; saw {seen}",
                case.file, case.condition, case.expect
            )),
        }
    }

    // The operator kept serving: still running and healthy, the healthy CraneReplicaSet still
    // at its replicas, and a pod deleted now is replaced.
    let operator = env.operator.as_mut();
    if let Some(op) = operator {
        assert!(
            op.exit_status().is_none(),
            "the operator exited: {:?}",
            op.exit_status()
        );
        let health = http_get(&op.metrics_addr, "/healthz").await;
        assert!(health.is_ok(), "the operator is healthy: {health:?}");
    }
    let pods = env.wait_ready("corpus-healthy", 2, LONG).await;
    env.pods()
        .delete(&pods[0].name_any(), &DeleteParams::default())
        .await
        .expect("delete a healthy pod");
    wait_for("the deleted healthy pod to be replaced", LONG, || async {
        let now = env.active_pods("corpus-healthy").await?;
        let replaced = now.len() == 2
            && now.iter().all(is_ready)
            && now.iter().all(|p| p.uid() != pods[0].uid());
        replaced
            .then_some(())
            .ok_or(format!("{} active", now.len()))
    })
    .await;

    eprintln!(
        "corpus: {} cases: {} refused at admission ({kubectl_creates} by kubectl create, {updates} by kubectl replace of an existing object, \
         {api_creates} by an API create), {} reported by the controller (condition and event)",
        cases.len(),
        kubectl_creates + updates + api_creates,
        controller.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases went wrong:\n  - {}",
        failures.len(),
        cases.len(),
        failures.join("\n  - ")
    );
    env.cleanup().await;
}
