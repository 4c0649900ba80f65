//! Invalid CraneReplicaSets are refused at admission (CRD schema and CEL rules, see
//! `refine_schema` in src/api.rs) with a message that names the field.

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::harness::*;

/// What a case does, and where the refusal is expected.
enum Op {
    /// Create through the API (kube, default field validation: unknown fields are pruned
    /// with a warning); the refusal must be 422 Invalid.
    Create(Value),
    /// Create `valid` (which must succeed), then apply `patch` as a JSON merge patch; the
    /// patch must be refused with 422.
    Update { valid: Value, patch: Value },
    /// `kubectl create -f -` (strict field validation, kubectl's default).
    KubectlCreate(Value),
}

struct Case {
    name: &'static str,
    op: Op,
    /// A fragment of the refusal; None: the request must succeed (a control).
    expect: Option<&'static str>,
}

/// A valid CraneReplicaSet named `name`, changed by `edit`.
fn with(name: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut manifest = crane(name, 1);
    edit(&mut manifest);
    manifest
}

fn cases() -> Vec<Case> {
    let refuse = |name, op, fragment| Case {
        name,
        op,
        expect: Some(fragment),
    };
    let long_name = format!("a{}", "b".repeat(59));
    assert_eq!(long_name.len(), 60);
    vec![
        Case {
            name: "control: the book's CraneReplicaSet",
            op: Op::Create(crane("valid", 1)),
            expect: None,
        },
        Case {
            name: "control: a 60-character name with the Service disabled",
            op: Op::Create(with(&long_name, |m| {
                m["spec"]["service"] = json!({"enabled": false})
            })),
            expect: None,
        },
        Case {
            name: "control: a 60-character name with spec.service.name set",
            op: Op::Create(with(&format!("c{}", "d".repeat(59)), |m| {
                m["spec"]["service"] = json!({"name": "short-http"})
            })),
            expect: None,
        },
        refuse(
            "negative replicas",
            Op::Create(with("neg", |m| m["spec"]["replicas"] = json!(-1))),
            "spec.replicas",
        ),
        refuse(
            "rollingUpdate budgets with the OnDelete strategy",
            Op::Create(with("ondelete-budgets", |m| {
                m["spec"]["updateStrategy"] =
                    json!({"type": "OnDelete", "rollingUpdate": {"maxSurge": 1}})
            })),
            "spec.updateStrategy.rollingUpdate may only be set with type RollingUpdate",
        ),
        refuse(
            "maxSurge and maxUnavailable both 0",
            Op::Create(with(
                "zero-budgets",
                |m| m["spec"]["updateStrategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}),
            )),
            "may not both be 0",
        ),
        refuse(
            "maxUnavailable that is neither a count nor a percentage",
            Op::Create(with(
                "bad-budget",
                |m| {
                    m["spec"]["updateStrategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "half"}})
                },
            )),
            "spec.updateStrategy.rollingUpdate.maxUnavailable",
        ),
        refuse(
            "update strategy type Recreate",
            Op::Create(with("recreate", |m| {
                m["spec"]["updateStrategy"] = json!({"type": "Recreate"})
            })),
            "spec.updateStrategy.type",
        ),
        refuse(
            "replicas above 100000",
            Op::Create(with("huge", |m| m["spec"]["replicas"] = json!(100001))),
            "spec.replicas",
        ),
        refuse(
            "selector that does not match the template labels",
            Op::Create(with("mismatch", |m| {
                m["spec"]["selector"] = json!({"matchLabels": {"app": "other"}})
            })),
            "spec.selector.matchLabels does not match",
        ),
        refuse(
            "selector expression that does not match the template labels",
            Op::Create(with(
                "mismatch-expr",
                |m| m["spec"]["selector"] = json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["other"]}]}),
            )),
            "spec.selector.matchExpressions does not match",
        ),
        refuse(
            "empty selector",
            Op::Create(with("empty-selector", |m| {
                m["spec"]["selector"] = json!({})
            })),
            "spec.selector must not be empty",
        ),
        refuse(
            "empty template labels and no selector",
            Op::Create(with("nolabels", |m| {
                m["spec"]["template"]["metadata"]["labels"] = json!({})
            })),
            "spec.template.metadata.labels must not be empty",
        ),
        refuse(
            "no template metadata and no selector",
            Op::Create(with("nometa", |m| {
                m["spec"]["template"]
                    .as_object_mut()
                    .unwrap()
                    .remove("metadata");
            })),
            "spec.template.metadata.labels must not be empty",
        ),
        refuse(
            "no containers",
            Op::Create(with("nocontainers", |m| {
                m["spec"]["template"]["spec"]["containers"] = json!([])
            })),
            "spec.template.spec.containers",
        ),
        refuse(
            "duplicate container names",
            Op::Create(with(
                "dupnames",
                |m| m["spec"]["template"]["spec"]["containers"] = json!([{"name": "crane", "image": APP_IMAGE}, {"name": "crane", "image": APP_IMAGE}]),
            )),
            "container names must be unique",
        ),
        refuse(
            "service type Foo",
            Op::Create(with("badtype", |m| {
                m["spec"]["service"] = json!({"type": "Foo"})
            })),
            "spec.service.type: Unsupported value",
        ),
        refuse(
            "service port 0",
            Op::Create(with("port0", |m| m["spec"]["service"] = json!({"port": 0}))),
            "spec.service.port",
        ),
        refuse(
            "service port 70000",
            Op::Create(with("port70000", |m| {
                m["spec"]["service"] = json!({"port": 70000})
            })),
            "spec.service.port",
        ),
        refuse(
            "targetPort 0",
            Op::Create(with("target0", |m| {
                m["spec"]["service"] = json!({"targetPort": 0})
            })),
            "spec.service.targetPort",
        ),
        refuse(
            "targetPort that is not a port name",
            Op::Create(with("target-name", |m| {
                m["spec"]["service"] = json!({"targetPort": "Not_A_Name"})
            })),
            "spec.service.targetPort",
        ),
        // The book's typo. kubectl validates strictly and names the unknown field...
        refuse(
            "`lables` in the template metadata (kubectl, strict)",
            Op::KubectlCreate(lables("typo-kubectl")),
            "lables",
        ),
        // ...while a client that lets the server prune it gets an object without labels,
        // which the CEL rule refuses.
        refuse(
            "`lables` in the template metadata (API, pruned)",
            Op::Create(lables("typo-api")),
            "spec.template.metadata.labels must not be empty",
        ),
        refuse(
            "selector change after creation",
            Op::Update {
                valid: with("immutable", |m| {
                    m["spec"]["template"]["metadata"]["labels"] =
                        json!({"app": "immutable", "tier": "web"});
                    m["spec"]["selector"] = json!({"matchLabels": {"app": "immutable"}});
                }),
                patch: json!({"spec": {"selector": {"matchLabels": {"tier": "web"}}}}),
            },
            "spec.selector is immutable",
        ),
        refuse(
            "template label change while the labels are the selector",
            Op::Update {
                valid: crane("relabel", 1),
                patch: json!({"spec": {"template": {"metadata": {"labels": {"app": "other"}}}}}),
            },
            "spec.template.metadata.labels are the selector",
        ),
        refuse(
            "name longer than 58 characters with the Service enabled",
            Op::Create(crane(&format!("x{}", "y".repeat(58)), 1)),
            "metadata.name must start with a letter and be at most 58 characters",
        ),
    ]
}

/// The book's misspelling: `lables` where `labels` belongs.
fn lables(name: &str) -> Value {
    let mut manifest = crane(name, 1);
    let metadata = &mut manifest["spec"]["template"]["metadata"];
    *metadata = json!({"lables": metadata["labels"].clone()});
    manifest
}

/// What the API server said: Ok, or the refusal (code and message).
async fn attempt(env: &TestEnv, api: &Api<DynamicObject>, op: &Op) -> Result<(), String> {
    let refusal = |e: kube::Error| match e {
        kube::Error::Api(s) if s.code == 422 => s.message,
        kube::Error::Api(s) => format!(
            "[HTTP {} {}, expected 422 Invalid] {}",
            s.code, s.reason, s.message
        ),
        e => format!("[not an API refusal] {e}"),
    };
    let object =
        |v: &Value| serde_json::from_value::<DynamicObject>(v.clone()).expect("a manifest");
    match op {
        Op::Create(manifest) => api
            .create(&PostParams::default(), &object(manifest))
            .await
            .map(drop)
            .map_err(refusal),
        Op::Update { valid, patch } => {
            api.create(&PostParams::default(), &object(valid))
                .await
                .map_err(|e| format!("[the valid object was refused] {}", refusal(e)))?;
            let name = valid["metadata"]["name"].as_str().unwrap();
            api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(drop)
                .map_err(refusal)
        }
        Op::KubectlCreate(manifest) => env
            .kubectl_result(&["create", "-f", "-"], Some(&manifest.to_string()))
            .map(drop),
    }
}

#[tokio::test]
async fn invalid_crane_replica_sets_are_refused_naming_the_field() {
    // Admission alone decides here: no operator is needed.
    let env = TestEnv::without_operator("validation").await;
    let resource = ApiResource::erase::<crane_operator::api::CraneReplicaSet>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &resource);

    let cases = cases();
    let mut mismatches = Vec::new();
    for case in &cases {
        let outcome = attempt(&env, &api, &case.op).await;
        let verdict = match (&case.expect, &outcome) {
            (None, Ok(())) => Ok(()),
            (None, Err(message)) => Err(format!("expected success, was refused: {message}")),
            (Some(fragment), Ok(())) => Err(format!(
                "expected a refusal mentioning {fragment:?}, was accepted"
            )),
            (Some(fragment), Err(message))
                if message.contains(fragment) && !message.starts_with('[') =>
            {
                Ok(())
            }
            (Some(fragment), Err(message)) => Err(format!(
                "expected a refusal mentioning {fragment:?}, got: {message}"
            )),
        };
        match verdict {
            Ok(()) => eprintln!(
                "ok   {}: {}",
                case.name,
                outcome.err().unwrap_or_else(|| "accepted".into()).trim()
            ),
            Err(why) => mismatches.push(format!("{}: {why}", case.name)),
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} validation cases went wrong:\n  - {}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n  - ")
    );
    env.cleanup().await;
}

/// The template's server-owned metadata is pruned at admission, so a value that does not fit
/// the Rust types (deletionTimestamp in year 9999) never reaches the operator, and the
/// `creationTimestamp: null` that Go clients write is accepted even by kubectl's strict
/// field validation.
#[tokio::test]
async fn template_metadata_keeps_only_what_pods_are_given() {
    let env = TestEnv::without_operator("pruned").await;
    let resource = ApiResource::erase::<crane_operator::api::CraneReplicaSet>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &resource);
    let server_owned = json!({
        "creationTimestamp": null,
        "deletionTimestamp": "9999-12-31T23:59:59Z",
        "deletionGracePeriodSeconds": 30,
        "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}],
        "managedFields": [{"manager": "m", "operation": "Apply", "time": "9999-12-31T23:59:59Z"}],
        "uid": "u", "resourceVersion": "1", "generation": 7, "generateName": "g-",
    });
    let manifest = with("pruned", |m| {
        let metadata = &mut m["spec"]["template"]["metadata"];
        for (key, value) in server_owned.as_object().expect("an object") {
            metadata[key] = value.clone();
        }
        metadata["annotations"] = json!({"note": "kept"});
        metadata["finalizers"] = json!(["example.com/kept"]);
    });
    let object: DynamicObject = serde_json::from_value(manifest).expect("a manifest");
    api.create(&PostParams::default(), &object)
        .await
        .expect("created, the server-owned fields pruned with a warning");

    let stored = api.get("pruned").await.expect("read back");
    let metadata = &stored.data["spec"]["template"]["metadata"];
    let mut kept: Vec<&str> = metadata
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    kept.sort_unstable();
    assert_eq!(
        kept,
        ["annotations", "finalizers", "labels"],
        "stored template metadata: {metadata}"
    );
    let crs = env
        .crs()
        .get("pruned")
        .await
        .expect("the stored object decodes as a CraneReplicaSet");
    let template = crs.spec.template.metadata.expect("template metadata");
    assert!(template.owner_references.is_none() && template.deletion_timestamp.is_none());

    // kubectl's strict field validation: a null creationTimestamp is dropped, not refused.
    let strict = with("created-null", |m| {
        m["spec"]["template"]["metadata"]["creationTimestamp"] = Value::Null
    });
    env.kubectl_result(&["create", "-f", "-"], Some(&strict.to_string()))
        .expect("kubectl create accepts creationTimestamp: null in the template");
    env.cleanup().await;
}
