//! `kubectl crane run NAME --image=IMAGE`: what `kubectl run --generator=run/v1` made in
//! the book, a ReplicationController (one container NAME with the image and its
//! containerPort, selected by a label of NAME), as a CraneReplicaSet labelled with the
//! book's `app=NAME`. The operator then makes its LoadBalancer Service: port 8080 (the
//! book's `kubectl expose --port=8080`) to the container's port.

use anyhow::Context as _;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Map, Value, json};

use super::Target;
use crate::api::CraneReplicaSet;

/// The field manager of the objects `run` creates (kubectl's own `run` uses kubectl-run).
const FIELD_MANAGER: &str = "kubectl-crane";

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The CraneReplicaSet's name, which is also its label app=NAME (and selector) and its
    /// container's name.
    pub name: String,
    /// The container image.
    #[arg(long)]
    pub image: String,
    /// The port the container serves on. The CraneReplicaSet's LoadBalancer Service (port
    /// 8080, as the book's `kubectl expose`) sends to it; without --port no Service is made.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Pods to keep running.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(0..=100_000))]
    pub replicas: i32,
    /// client: print the object and send nothing; server: the API server checks it and
    /// stores nothing. `--dry-run` alone is client.
    #[arg(
        long,
        value_enum,
        default_value = "none",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "client"
    )]
    pub dry_run: DryRun,
    /// Print the object (yaml, json) or its name instead of `... created`.
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
    /// A JSON merge patch (RFC 7386) applied to the generated object before it is sent, as
    /// kubectl run's --overrides, e.g.
    /// '{"spec":{"updateStrategy":{"type":"RollingUpdate"}}}'.
    #[arg(long)]
    pub overrides: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DryRun {
    #[default]
    None,
    Client,
    Server,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Yaml,
    Json,
    Name,
}

/// The CraneReplicaSet `args` ask for, as it is printed and sent: only what was asked, the
/// API server fills in the defaults. Refused when --overrides does not leave a
/// CraneReplicaSet.
pub fn object(args: &RunArgs) -> anyhow::Result<Value> {
    let name = &args.name;
    let labels = json!({ "app": name });
    let mut container = json!({ "name": name, "image": args.image });
    if let Some(port) = args.port {
        container["ports"] = json!([{ "containerPort": port }]);
    }
    let mut metadata = json!({ "name": name, "labels": labels });
    if let Some(namespace) = &args.target.namespace {
        metadata["namespace"] = json!(namespace);
    }
    let mut object = json!({
        "apiVersion": "crane.dev/v1",
        "kind": "CraneReplicaSet",
        "metadata": metadata,
        "spec": {
            "replicas": args.replicas,
            "selector": { "matchLabels": labels },
            "template": {
                "metadata": { "labels": labels },
                "spec": { "containers": [container] }
            }
        }
    });
    // A Service needs a port to send to: without one it would only be a ServiceFailure.
    if args.port.is_none() {
        object["spec"]["service"] = json!({ "enabled": false });
    }
    if let Some(overrides) = &args.overrides {
        let patch: Value = serde_json::from_str(overrides)
            .with_context(|| format!("--overrides is not JSON: {overrides}"))?;
        merge_patch(&mut object, &patch);
    }
    if let Err(e) = serde_path_to_error::deserialize::<_, CraneReplicaSet>(&object) {
        anyhow::bail!(
            "--overrides leaves no valid CraneReplicaSet: {}: {}",
            e.path(),
            e.inner()
        );
    }
    Ok(object)
}

/// Applies a JSON merge patch (RFC 7386): objects merge key by key, `null` removes a key,
/// anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(fields) = target {
        for (key, value) in patch {
            if value.is_null() {
                fields.remove(key);
            } else {
                merge_patch(fields.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// What `run` prints of `object`: kubectl's `kind.group/name created` (with the dry run
/// said), or the object itself.
fn printed(object: &Value, args: &RunArgs) -> anyhow::Result<String> {
    let name = object["metadata"]["name"].as_str().unwrap_or(&args.name);
    Ok(match args.output {
        Some(Output::Yaml) => crate::api::to_yaml(object).context("printing YAML")?,
        Some(Output::Json) => {
            let mut out = Vec::new();
            let indent = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut serializer = serde_json::Serializer::with_formatter(&mut out, indent);
            serde::Serialize::serialize(object, &mut serializer).context("printing JSON")?;
            format!("{}\n", String::from_utf8_lossy(&out))
        }
        Some(Output::Name) => format!("cranereplicaset.crane.dev/{name}\n"),
        None => {
            let dry = match args.dry_run {
                DryRun::None => "",
                DryRun::Client => " (dry run)",
                DryRun::Server => " (server dry run)",
            };
            format!("cranereplicaset.crane.dev/{name} created{dry}\n")
        }
    })
}

/// What `--dry-run=client` prints: no cluster is asked.
pub fn client_dry_run(args: &RunArgs) -> anyhow::Result<String> {
    printed(&object(args)?, args)
}

/// Creates the object in `namespace` (the API server only checks it with
/// `--dry-run=server`) and says so; an existing one is the API server's AlreadyExists.
pub async fn create(client: &Client, namespace: &str, args: &RunArgs) -> anyhow::Result<String> {
    let object: DynamicObject = serde_json::from_value(object(args)?)
        .context("the generated CraneReplicaSet is not a Kubernetes object")?;
    let resource = ApiResource::erase::<CraneReplicaSet>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let params = PostParams {
        dry_run: args.dry_run == DryRun::Server,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    let created = api.create(&params, &object).await?;
    printed(
        &serde_json::to_value(&created).context("reading the created object")?,
        args,
    )
}

#[cfg(test)]
mod tests {
    use super::super::{Plugin, Verb, command};
    use super::*;
    use clap::FromArgMatches;

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = ["kubectl-crane", "run"]
            .into_iter()
            .chain(args.iter().copied());
        let verb = command()
            .try_get_matches_from(argv)
            .and_then(|m| Plugin::from_arg_matches(&m))?
            .verb;
        match verb {
            Verb::Run(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    /// The book's `kubectl run crane --image=heejeong/crane --port=7070`, generator run/v1.
    const BOOK: [&str; 4] = [
        "crane",
        "--image=heejeong/crane",
        "--port=7070",
        "--dry-run=client",
    ];

    #[test]
    fn the_books_run_prints_the_crane_replica_set_it_would_create() {
        let args = run_args(&[&BOOK[..], &["-o", "yaml"]].concat()).unwrap();
        assert_eq!(
            client_dry_run(&args).unwrap(),
            "\
apiVersion: crane.dev/v1
kind: CraneReplicaSet
metadata:
  labels:
    app: crane
  name: crane
spec:
  replicas: 1
  selector:
    matchLabels:
      app: crane
  template:
    metadata:
      labels:
        app: crane
    spec:
      containers:
      - image: heejeong/crane
        name: crane
        ports:
        - containerPort: 7070
"
        );
    }

    #[test]
    fn the_generated_object_is_a_crane_replica_set_whose_service_sends_8080_to_the_port() {
        let args = run_args(&BOOK).unwrap();
        let crs: CraneReplicaSet = serde_json::from_value(object(&args).unwrap()).unwrap();
        assert_eq!(crs.spec.replicas, 1);
        let labels = crs
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone());
        assert_eq!(
            labels,
            Some([("app".to_string(), "crane".to_string())].into())
        );
        assert_eq!(crs.label_selector().match_labels, labels);
        let container = &crs.spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            (container.name.as_str(), container.image.as_deref()),
            ("crane", Some("heejeong/crane"))
        );
        let desired = crate::service::desired_service(&crs).expect("a Service");
        let port = &desired.spec.unwrap().ports.unwrap()[0];
        assert_eq!(port.port, 8080, "the book's kubectl expose --port=8080");
        assert_eq!(
            port.target_port,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(7070))
        );
        assert_eq!(
            crate::service::service_name(&crs),
            "crane-http",
            "the book's crane-http"
        );
        assert_eq!(
            crs.spec.service.type_,
            crate::api::ServiceType::LoadBalancer
        );
    }

    #[test]
    fn without_a_port_no_service_is_asked_for() {
        let args = run_args(&["web", "--image=nginx", "--replicas=3", "--dry-run"]).unwrap();
        assert_eq!(args.dry_run, DryRun::Client);
        let object = object(&args).unwrap();
        assert_eq!(object["spec"]["service"], json!({ "enabled": false }));
        assert_eq!(object["spec"]["replicas"], 3);
        assert!(
            object["spec"]["template"]["spec"]["containers"][0]
                .get("ports")
                .is_none()
        );
        assert_eq!(
            client_dry_run(&args).unwrap(),
            "cranereplicaset.crane.dev/web created (dry run)\n"
        );
    }

    #[test]
    fn json_output_is_indented_as_kubectls_and_names_the_namespace_given() {
        let args = run_args(&[&BOOK[..], &["-n", "demo", "-o", "json"]].concat()).unwrap();
        let printed = client_dry_run(&args).unwrap();
        assert!(
            printed.starts_with("{\n    \"apiVersion\": \"crane.dev/v1\",\n"),
            "{printed}"
        );
        let value: Value = serde_json::from_str(&printed).unwrap();
        assert_eq!(value["metadata"]["namespace"], "demo");
        let args = run_args(&[&BOOK[..], &["-o", "name"]].concat()).unwrap();
        assert_eq!(
            client_dry_run(&args).unwrap(),
            "cranereplicaset.crane.dev/crane\n"
        );
    }

    #[test]
    fn overrides_merge_into_the_object_and_must_leave_a_crane_replica_set() {
        let args = run_args(&[
            "crane",
            "--image=heejeong/crane",
            "--port=7070",
            r#"--overrides={"spec":{"updateStrategy":{"type":"RollingUpdate"},"template":{"spec":{"nodeSelector":{"type":"kwok"}}}},"metadata":{"labels":null}}"#,
        ])
        .unwrap();
        let merged = object(&args).unwrap();
        assert_eq!(merged["spec"]["updateStrategy"]["type"], "RollingUpdate");
        assert_eq!(
            merged["spec"]["template"]["spec"]["nodeSelector"]["type"],
            "kwok"
        );
        assert_eq!(
            merged["spec"]["template"]["spec"]["containers"][0]["image"], "heejeong/crane",
            "the rest of the template is kept"
        );
        assert!(merged["metadata"].get("labels").is_none(), "null removes");

        let bad = run_args(&[
            "crane",
            "--image=x",
            r#"--overrides={"spec":{"replicas":"three"}}"#,
        ])
        .unwrap();
        let e = object(&bad).unwrap_err().to_string();
        assert!(e.contains("spec.replicas"), "{e}");
        let bad = run_args(&["crane", "--image=x", "--overrides={"]).unwrap();
        assert!(object(&bad).unwrap_err().to_string().contains("not JSON"));
    }

    #[test]
    fn run_refuses_what_kubectl_run_refuses() {
        let kind = |args: &[&str]| run_args(args).unwrap_err().kind();
        use clap::error::ErrorKind;
        assert_eq!(
            kind(&["crane"]),
            ErrorKind::MissingRequiredArgument,
            "no --image"
        );
        assert_eq!(
            kind(&["--image=x"]),
            ErrorKind::MissingRequiredArgument,
            "no NAME"
        );
        assert_eq!(
            kind(&["crane", "--image=x", "--replicas=-1"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["crane", "--image=x", "--port=0"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["crane", "--image=x", "--port=70000"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["crane", "--image=x", "--dry-run=maybe"]),
            ErrorKind::InvalidValue
        );
        assert_eq!(
            kind(&["crane", "--image=x", "-o", "wide"]),
            ErrorKind::InvalidValue
        );
        let args = run_args(&["crane", "--image=x"]).unwrap();
        assert_eq!(
            (args.replicas, args.dry_run, args.port),
            (1, DryRun::None, None)
        );
    }
}
