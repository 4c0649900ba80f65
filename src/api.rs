//! The `CraneReplicaSet` custom resource: its Rust types and the CRD generated from them.
//!
//! The types carry the defaults and simple bounds; [`crd`] adds what the derive cannot
//! express (CEL rules that name the offending field, bounds that keep those rules within
//! the API server's cost budget, and the removal of field descriptions inside the embedded
//! pod template, which would otherwise make the CRD half a megabyte).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Keeps `replicas` pods of `template` alive and exposes them through a Service.
// Several printcolumns repeat `type_`; clippy mistakes that for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "crane.dev",
    version = "v1",
    kind = "CraneReplicaSet",
    plural = "cranereplicasets",
    singular = "cranereplicaset",
    shortname = "crs",
    category = "all",
    category = "crane",
    namespaced,
    doc = "A CraneReplicaSet keeps spec.replicas pods of spec.template running, as a ReplicationController does: a pod that is deleted or fails is replaced, and kubectl scale adds or removes pods. It also creates the Service of spec.service (a LoadBalancer on port 8080 by default) in front of them. The status counts the pods as a ReplicaSet's does, and its Ready, Reconciling and Stalled conditions follow kstatus.",
    status = "CraneReplicaSetStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Pods wanted"
    ),
    printcolumn(
        name = "Current",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Active pods owned"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Pods ready"
    ),
    printcolumn(
        name = "External-IP",
        type_ = "string",
        json_path = ".status.service.externalIP",
        description = "The Service's external address, as kubectl get services shows it"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Up-to-date",
        type_ = "integer",
        json_path = ".status.updatedReplicas",
        description = "Active pods made from the current template",
        priority = "1"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.podIssues[0].reason",
        description = "Why the most pods are not ready"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CraneReplicaSetSpec {
    /// Number of pods to keep alive.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100000))]
    pub replicas: i32,

    /// Seconds a pod must be ready, without any of its containers crashing, before it counts
    /// as available.
    #[serde(default)]
    #[schemars(range(min = 0, max = 86400))]
    pub min_ready_seconds: i32,

    /// Which pods count as replicas. Defaults to the template's labels, as a
    /// ReplicationController's selector does. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// The pod to run. Its labels must match the selector.
    pub template: PodTemplateSpec,

    /// The Service that exposes the pods.
    #[serde(default)]
    pub service: ServiceSpec,

    /// What happens to running pods when the template changes.
    #[serde(default)]
    pub update_strategy: UpdateStrategy,
}

/// What happens to running pods when the template changes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// OnDelete (default): running pods are left alone and new pods get the new template,
    /// as with a ReplicationController. RollingUpdate: outdated pods are replaced.
    #[serde(default, rename = "type")]
    pub type_: UpdateStrategyType,
    /// Budgets of a RollingUpdate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum UpdateStrategyType {
    #[default]
    OnDelete,
    RollingUpdate,
}

/// How fast a rolling update goes, as on a Deployment.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    /// Pods that may exist above `replicas` (a number, or a percentage of `replicas` rounded
    /// up). Default 25%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
    /// Pods that may be unavailable below `replicas` (a number, or a percentage rounded
    /// down). Default 25%. Not 0 when maxSurge is 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

impl RollingUpdate {
    /// (max surge, max unavailable) in pods for `replicas`, with a Deployment's rules.
    pub fn budgets(&self, replicas: i32) -> (usize, usize) {
        let replicas = usize::try_from(replicas).unwrap_or(0);
        let percent = |pct: usize, round_up: bool| {
            if round_up {
                (replicas * pct).div_ceil(100)
            } else {
                replicas * pct / 100
            }
        };
        let resolve = |v: &Option<IntOrString>, round_up: bool| match v {
            None => percent(25, round_up),
            Some(IntOrString::Int(n)) => usize::try_from(*n).unwrap_or(0),
            Some(IntOrString::String(s)) => {
                percent(s.trim_end_matches('%').parse().unwrap_or(0), round_up)
            }
        };
        let surge = resolve(&self.max_surge, true);
        let unavailable = resolve(&self.max_unavailable, false);
        // Both zero would never move: allow one unavailable pod, as a Deployment does.
        (
            surge,
            if surge == 0 && unavailable == 0 {
                1
            } else {
                unavailable
            },
        )
    }
}

fn default_replicas() -> i32 {
    1
}

/// How the pods are exposed (`kubectl expose rc NAME --type=LoadBalancer --port=8080`, done
/// for you).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// false: no Service (an existing one that this CraneReplicaSet owns is deleted).
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Service name. Defaults to `<metadata.name>-http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<String>,

    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Port the Service listens on.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Container port (number or name) the Service sends to. Defaults to the first
    /// containerPort of the first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,

    /// Annotations copied onto the Service (cloud load-balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            name: None,
            type_: ServiceType::default(),
            port: default_port(),
            target_port: None,
            annotations: BTreeMap::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_port() -> i32 {
    8080
}

/// The Service types a CraneReplicaSet may ask for.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    LoadBalancer,
    NodePort,
    ClusterIP,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoadBalancer => "LoadBalancer",
            Self::NodePort => "NodePort",
            Self::ClusterIP => "ClusterIP",
        }
    }
}

/// What the controller last observed, in the shape of apps/v1 ReplicaSetStatus.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CraneReplicaSetStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Active pods owned: not terminating, not Succeeded or Failed.
    #[serde(default)]
    pub replicas: i32,
    /// Active pods whose labels match the template's labels.
    #[serde(default)]
    pub fully_labeled_replicas: i32,
    /// Active pods with the Ready condition.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Active pods ready for at least minReadySeconds.
    #[serde(default)]
    pub available_replicas: i32,
    /// Active pods made from the current template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// The selector in string form, for the scale subresource and HorizontalPodAutoscalers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// metav1.Conditions, one per type, each with the generation it describes. kstatus
    /// (Helm's --wait, Flux, Argo CD, kubectl wait) reads Ready (every desired pod available
    /// on the current generation, and nothing failed), Reconciling (converging) and Stalled
    /// (cannot progress: failed creations or deletions and a Service it cannot make, even
    /// while the pods serve; pods that cannot start); the details are in ReplicaFailure
    /// (FailedCreate / FailedDelete), ServiceFailure and PodsReady.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The Service that exposes the pods, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceStatus>,
    /// Why pods are not ready, grouped by reason, the most frequent first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_issues: Vec<PodIssue>,
}

/// Pods that are not ready for one reason.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodIssue {
    /// As `kubectl get pods` shows it: ImagePullBackOff, CrashLoopBackOff, OOMKilled,
    /// Unschedulable, CreateContainerConfigError, ...
    pub reason: String,
    /// How many pods have it.
    pub count: i32,
    /// One of them.
    pub example_pod: String,
    /// What Kubernetes says about the example pod.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// What usually causes it, and what to do.
    pub hint: String,
}

/// The Service as the controller last saw it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// Load-balancer ingress IPs and host names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_addresses: Vec<String>,
    /// The EXTERNAL-IP column of `kubectl get services`: the addresses, `<pending>` while
    /// a load balancer is awaited, `<none>` for other types.
    #[serde(rename = "externalIP")]
    pub external_ip: String,
}

impl CraneReplicaSet {
    /// The selector in force: `spec.selector`, or the template's labels when it is not set.
    pub fn label_selector(&self) -> LabelSelector {
        self.spec.selector.clone().unwrap_or_else(|| LabelSelector {
            match_labels: self
                .spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone()),
            match_expressions: None,
        })
    }
}

/// The CRD, with the validation rules that name the field a user got wrong.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = CraneReplicaSet::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let mut value = serde_json::to_value(&*schema).expect("a JSONSchemaProps serializes");
            refine_schema(&mut value);
            *schema = serde_json::from_value(value)
                .expect("the refined schema is still a JSONSchemaProps");
        }
    }
    crd
}

/// The CRD as YAML, as `crane-operator crd` prints it and `manifests/crd.yaml` holds it.
pub fn crd_yaml() -> String {
    format!(
        "# Generated by `crane-operator crd`; do not edit.\n{}",
        to_yaml(&crd()).expect("a CRD serializes to YAML")
    )
}

/// An object as YAML, as the project prints it. A one-line string stays on one line, not
/// folded at 80 columns: objects stay greppable and their diffs small.
pub fn to_yaml<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_saphyr::to_string_with_options(
        value,
        serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX },
    )?)
}

/// A CEL rule and the message shown when it fails.
fn rule(rule: &str, message: &str) -> Value {
    json!({ "rule": rule, "message": message })
}

/// A CEL rule whose error points at `field_path` (relative to the node holding the rule),
/// so that `kubectl` names the field itself rather than its parent.
fn rule_at(field_path: &str, rule: &str, message: &str) -> Value {
    json!({ "rule": rule, "message": message, "fieldPath": field_path })
}

/// The schema node of the property at `path` (each step descends into `properties`).
fn prop<'a>(schema: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter()
        .fold(schema, |node, name| &mut node["properties"][*name])
}

fn add_rules(node: &mut Value, rules: Vec<Value>) {
    let list = node
        .as_object_mut()
        .expect("schema nodes are objects")
        .entry("x-kubernetes-validations")
        .or_insert_with(|| json!([]));
    list.as_array_mut()
        .expect("x-kubernetes-validations is a list")
        .extend(rules);
}

fn set(node: &mut Value, key: &str, value: Value) {
    node.as_object_mut()
        .expect("schema nodes are objects")
        .insert(key.to_string(), value);
}

/// Removes `description` everywhere below `node` (the embedded pod spec repeats the whole
/// core/v1 documentation, which `kubectl explain pod` already shows).
fn strip_descriptions(node: &mut Value) {
    match node {
        Value::Object(map) => {
            map.remove("description");
            map.values_mut().for_each(strip_descriptions);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

/// Keeps only the `kept` fields of an embedded ObjectMeta (controller-gen keeps labels,
/// annotations, name, namespace and finalizers), so that the API server prunes the rest:
/// server-owned fields such as deletionTimestamp or managedFields mean nothing in a
/// template, and their values need not fit the Rust types.
///
/// `creationTimestamp` stays known but may only be absent: Go clients and `kubectl create
/// --dry-run=client -o yaml` write `creationTimestamp: null` into templates, which the API
/// server drops from a known field but refuses as an unknown one under kubectl's strict
/// field validation.
fn embedded_metadata(node: &mut Value, kept: &[&str], path: &str) {
    let properties = node["properties"]
        .as_object_mut()
        .expect("an ObjectMeta schema has properties");
    properties.retain(|name, _| kept.contains(&name.as_str()));
    properties.insert("creationTimestamp".into(), json!({ "type": "string" }));
    add_rules(
        node,
        vec![rule_at(
            ".creationTimestamp",
            "!has(self.creationTimestamp)",
            &format!(
                "{path}.creationTimestamp is set by the API server on each object made from the template: leave it out (null is accepted)"
            ),
        )],
    );
}

/// Int-or-string fields that are `Quantity`s (any number decodes) rather than `IntOrString`s
/// (an int32): these, and the values of maps (resource lists).
const QUANTITY_FIELDS: [&str; 2] = ["divisor", "sizeLimit"];

/// A metav1.Time that the Rust `Time` (a jiff Timestamp) holds and writes back unchanged:
/// years 0001 to 9998 (jiff's range ends on 9999-12-30, and a year-0000 time with a
/// positive offset falls before year 0), whole seconds, `Z` or an offset.
const TIME: &str = "^(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$";

/// Narrows, everywhere below `node`, what the API server admits to what the Rust types
/// decode. Integers need nothing: the API server enforces their int32/int64 formats (and
/// refuses float bounds beyond int64 on an int64). It does not bound the integer of an
/// int-or-string, nor the year, fraction or offset of a date-time. `quantity`: the node
/// holds a `Quantity`.
fn within_rust_types(node: &mut Value, quantity: bool) {
    if node.get("x-kubernetes-int-or-string") == Some(&json!(true)) && !quantity {
        if node
            .get("minimum")
            .and_then(Value::as_f64)
            .is_none_or(|min| min < f64::from(i32::MIN))
        {
            set(node, "minimum", json!(f64::from(i32::MIN)));
        }
        if node
            .get("maximum")
            .and_then(Value::as_f64)
            .is_none_or(|max| max > f64::from(i32::MAX))
        {
            set(node, "maximum", json!(f64::from(i32::MAX)));
        }
    }
    if node.get("format") == Some(&json!("date-time")) && node.get("pattern").is_none() {
        set(node, "pattern", json!(TIME));
    }
    if let Some(properties) = node.get_mut("properties").and_then(Value::as_object_mut) {
        for (name, property) in properties {
            within_rust_types(property, QUANTITY_FIELDS.contains(&name.as_str()));
        }
    }
    if let Some(items) = node.get_mut("items") {
        within_rust_types(items, false);
    }
    if let Some(values) = node
        .get_mut("additionalProperties")
        .filter(|v| v.is_object())
    {
        within_rust_types(values, true);
    }
}

// Bounds that keep the CEL rules below within the API server's cost budget. They are far
// above what a pod template or a selector needs in practice.
const MAX_LABELS: u32 = 64;
const MAX_LABEL_VALUE: u32 = 63;
/// A label value (apimachinery's `IsValidLabelValue`): empty, or alphanumerics with `-`,
/// `_` and `.` inside. The API server checks it on pods, not on a custom resource.
const LABEL_VALUE: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
const MAX_SELECTOR_EXPRESSIONS: u32 = 32;
const MAX_CONTAINERS: u32 = 64;

/// The `has(...)` chain for "the template has labels".
const HAS_TEMPLATE_LABELS: &str =
    "has(self.template.metadata) && has(self.template.metadata.labels)";

fn refine_schema(root: &mut Value) {
    // A CraneReplicaSet the operator has not seen yet reads as observedGeneration -1, not
    // as no status at all, which kstatus (Helm's --wait, Flux) would call Current at once.
    set(prop(root, &["status"]), "default", json!({}));
    set(
        prop(root, &["status", "observedGeneration"]),
        "default",
        json!(-1),
    );
    // One condition per type, merged by type (metav1.Condition lists' convention).
    let conditions = prop(root, &["status", "conditions"]);
    set(conditions, "x-kubernetes-list-type", json!("map"));
    set(conditions, "x-kubernetes-list-map-keys", json!(["type"]));

    let template = prop(root, &["spec", "template"]);
    for part in ["metadata", "spec"] {
        strip_descriptions(prop(template, &[part]));
    }
    set(template, "required", json!(["spec"]));
    embedded_metadata(
        prop(template, &["metadata"]),
        &["labels", "annotations", "finalizers", "name", "namespace"],
        "spec.template.metadata",
    );
    let claim_templates = prop(template, &["spec", "volumes"]);
    embedded_metadata(
        prop(
            &mut claim_templates["items"],
            &["ephemeral", "volumeClaimTemplate", "metadata"],
        ),
        &["labels", "annotations"],
        "spec.template.spec.volumes[].ephemeral.volumeClaimTemplate.metadata",
    );
    // Upstream's ValidatePodTemplateSpecForReplicaSet: the pods are always restarted, and a
    // deadline would kill them and have them replaced forever.
    add_rules(
        prop(template, &["spec"]),
        vec![
            rule_at(
                ".restartPolicy",
                "!has(self.restartPolicy) || self.restartPolicy in ['Always', '']",
                "spec.template.spec.restartPolicy: Unsupported value: only Always is supported (a CraneReplicaSet's pods are always restarted)",
            ),
            rule_at(
                ".activeDeadlineSeconds",
                "!has(self.activeDeadlineSeconds)",
                "spec.template.spec.activeDeadlineSeconds is not supported: the pods would be killed at the deadline and replaced forever",
            ),
        ],
    );

    let labels = prop(template, &["metadata", "labels"]);
    set(labels, "maxProperties", json!(MAX_LABELS));
    set(
        &mut labels["additionalProperties"],
        "maxLength",
        json!(MAX_LABEL_VALUE),
    );
    set(
        &mut labels["additionalProperties"],
        "pattern",
        json!(LABEL_VALUE),
    );

    let containers = prop(template, &["spec", "containers"]);
    set(containers, "minItems", json!(1));
    set(containers, "maxItems", json!(MAX_CONTAINERS));
    set(
        &mut containers["items"]["properties"]["name"],
        "maxLength",
        json!(MAX_LABEL_VALUE),
    );
    add_rules(
        containers,
        vec![rule(
            "self.all(c, self.filter(d, d.name == c.name).size() == 1)",
            "spec.template.spec.containers: container names must be unique",
        )],
    );

    let selector = prop(root, &["spec", "selector"]);
    let match_labels = prop(selector, &["matchLabels"]);
    set(match_labels, "maxProperties", json!(MAX_LABELS));
    set(
        &mut match_labels["additionalProperties"],
        "maxLength",
        json!(MAX_LABEL_VALUE),
    );
    set(
        &mut match_labels["additionalProperties"],
        "pattern",
        json!(LABEL_VALUE),
    );
    let expressions = prop(selector, &["matchExpressions"]);
    set(expressions, "maxItems", json!(MAX_SELECTOR_EXPRESSIONS));
    let expression = &mut expressions["items"];
    set(prop(expression, &["key"]), "maxLength", json!(317));
    set(
        prop(expression, &["operator"]),
        "enum",
        json!(["In", "NotIn", "Exists", "DoesNotExist"]),
    );
    let values = prop(expression, &["values"]);
    set(values, "maxItems", json!(MAX_LABELS));
    set(&mut values["items"], "maxLength", json!(MAX_LABEL_VALUE));
    set(&mut values["items"], "pattern", json!(LABEL_VALUE));
    add_rules(
        expression,
        vec![rule(
            "self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0 : !has(self.values) || size(self.values) == 0",
            "spec.selector.matchExpressions: values must be set for In and NotIn, and empty for Exists and DoesNotExist",
        )],
    );

    let target_port = prop(root, &["spec", "service", "targetPort"]);
    add_rules(
        target_port,
        vec![rule(
            "type(self) == int ? self >= 1 && self <= 65535 : self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.size() <= 15 && self.matches('[a-z]')",
            "spec.service.targetPort must be a port number from 1 to 65535 or a container port name (IANA_SVC_NAME)",
        )],
    );
    set(
        prop(root, &["spec", "service", "annotations"]),
        "maxProperties",
        json!(MAX_LABELS),
    );
    set(
        prop(root, &["spec", "updateStrategy"]),
        "default",
        json!({}),
    );
    let count_or_percent = "type(self) == int ? self >= 0 : self.matches('^[0-9]+%$')";
    for budget in ["maxSurge", "maxUnavailable"] {
        add_rules(
            prop(root, &["spec", "updateStrategy", "rollingUpdate", budget]),
            vec![rule(
                count_or_percent,
                &format!(
                    "spec.updateStrategy.rollingUpdate.{budget} must be a count of pods (0 or more) or a percentage such as 25%"
                ),
            )],
        );
    }
    add_rules(
        prop(root, &["spec", "updateStrategy"]),
        vec![rule_at(
            ".rollingUpdate",
            "self.type == 'RollingUpdate' || !has(self.rollingUpdate)",
            "spec.updateStrategy.rollingUpdate may only be set with type RollingUpdate",
        )],
    );
    add_rules(
        prop(root, &["spec", "updateStrategy", "rollingUpdate"]),
        vec![rule(
            "!(has(self.maxSurge) && has(self.maxUnavailable) && string(self.maxSurge) in ['0', '0%'] && string(self.maxUnavailable) in ['0', '0%'])",
            "spec.updateStrategy.rollingUpdate: maxSurge and maxUnavailable may not both be 0",
        )],
    );
    // Defaulting an absent `service` to {} lets the API server fill in its fields' defaults.
    set(prop(root, &["spec", "service"]), "default", json!({}));

    let template_label =
        |key: &str| format!("{HAS_TEMPLATE_LABELS} && {key} in self.template.metadata.labels");
    let spec_rules = vec![
        rule_at(
            ".selector",
            "!has(self.selector) || (has(self.selector.matchLabels) && size(self.selector.matchLabels) > 0) || (has(self.selector.matchExpressions) && size(self.selector.matchExpressions) > 0)",
            "spec.selector must not be empty: an empty selector would select every pod in the namespace",
        ),
        rule_at(
            ".template.metadata",
            &format!(
                "has(self.selector) || ({HAS_TEMPLATE_LABELS} && size(self.template.metadata.labels) > 0)"
            ),
            "spec.template.metadata.labels must not be empty when spec.selector is not set (the labels are the selector)",
        ),
        rule_at(
            ".selector.matchLabels",
            &format!(
                "!has(self.selector) || !has(self.selector.matchLabels) || self.selector.matchLabels.all(k, {} && self.template.metadata.labels[k] == self.selector.matchLabels[k])",
                template_label("k")
            ),
            "spec.selector.matchLabels does not match spec.template.metadata.labels",
        ),
        rule_at(
            ".selector.matchExpressions",
            &format!(
                "!has(self.selector) || !has(self.selector.matchExpressions) || self.selector.matchExpressions.all(e, \
                 e.operator == 'In' ? ({l} && self.template.metadata.labels[e.key] in e.values) : \
                 e.operator == 'NotIn' ? !({l}) || !(self.template.metadata.labels[e.key] in e.values) : \
                 e.operator == 'Exists' ? ({l}) : !({l}))",
                l = template_label("e.key")
            ),
            "spec.selector.matchExpressions does not match spec.template.metadata.labels",
        ),
        rule_at(
            ".selector",
            "has(oldSelf.selector) ? has(self.selector) && self.selector == oldSelf.selector : \
             !has(self.selector) || (has(self.selector.matchLabels) && !has(self.selector.matchExpressions) && \
             has(oldSelf.template.metadata) && has(oldSelf.template.metadata.labels) && \
             self.selector.matchLabels == oldSelf.template.metadata.labels)",
            "spec.selector is immutable (it may only be set to the template labels it defaulted to)",
        ),
        rule_at(
            ".template.metadata",
            "has(self.selector) || has(oldSelf.selector) || self.template.metadata.labels == oldSelf.template.metadata.labels",
            "spec.template.metadata.labels are the selector while spec.selector is not set, and the selector is immutable: set spec.selector to the current labels first",
        ),
    ];
    add_rules(prop(root, &["spec"]), spec_rules);

    add_rules(
        root,
        vec![
            rule(
                "size(self.metadata.name) <= 63",
                "metadata.name must be at most 63 characters (it is a label value on the pods)",
            ),
            rule(
                "!self.spec.service.enabled || has(self.spec.service.name) || \
                 (size(self.metadata.name) <= 58 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$'))",
                "metadata.name must start with a letter and be at most 58 characters to name the Service <name>-http; set spec.service.name otherwise",
            ),
        ],
    );
    within_rust_types(root, false);
}

#[cfg(test)]
pub mod fixtures {
    //! The book's ReplicationController as a CraneReplicaSet, for tests.
    use super::*;

    pub fn crane(replicas: i32) -> CraneReplicaSet {
        let mut crs: CraneReplicaSet = serde_json::from_value(json!({
            "apiVersion": "crane.dev/v1", "kind": "CraneReplicaSet",
            "metadata": {"name": "crane", "namespace": "default", "uid": "crs-uid", "generation": 1},
            "spec": {
                "replicas": replicas,
                "template": {
                    "metadata": {"labels": {"app": "crane"}},
                    "spec": {"containers": [{"name": "crane", "image": "heejeong/crane", "ports": [{"containerPort": 7070}]}]}
                }
            }
        }))
        .expect("the fixture is a valid CraneReplicaSet");
        crs.status = None;
        crs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_has_the_public_names() {
        let crd = crd();
        assert_eq!(crd.spec.group, "crane.dev");
        assert_eq!(crd.spec.names.kind, "CraneReplicaSet");
        assert_eq!(crd.spec.names.plural, "cranereplicasets");
        assert_eq!(crd.spec.names.short_names, Some(vec!["crs".to_string()]));
        assert_eq!(
            crd.spec.names.categories,
            Some(vec!["all".to_string(), "crane".to_string()])
        );
        let version = &crd.spec.versions[0];
        let scale = version
            .subresources
            .as_ref()
            .and_then(|s| s.scale.as_ref())
            .expect("scale subresource");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.to_uppercase())
            .collect();
        assert_eq!(
            columns,
            [
                "DESIRED",
                "CURRENT",
                "READY",
                "EXTERNAL-IP",
                "AGE",
                "UP-TO-DATE",
                "REASON"
            ]
        );
    }

    #[test]
    fn pod_template_descriptions_are_dropped() {
        let yaml = crd_yaml();
        assert!(yaml.len() < 200_000, "CRD is {} bytes", yaml.len());
        assert!(yaml.contains("Number of pods to keep alive."));
    }

    #[test]
    fn rolling_update_budgets_resolve_like_a_deployment() {
        let ru = |s: Option<IntOrString>, u: Option<IntOrString>| RollingUpdate {
            max_surge: s,
            max_unavailable: u,
        };
        assert_eq!(
            ru(None, None).budgets(10),
            (3, 2),
            "25% surge rounds up, 25% unavailable down"
        );
        assert_eq!(
            ru(Some(IntOrString::Int(0)), Some(IntOrString::Int(1))).budgets(10),
            (0, 1)
        );
        assert_eq!(
            ru(Some(IntOrString::String("50%".into())), None).budgets(3),
            (2, 0)
        );
        assert_eq!(
            ru(
                Some(IntOrString::Int(0)),
                Some(IntOrString::String("0%".into()))
            )
            .budgets(3),
            (0, 1)
        );
        assert_eq!(ru(None, None).budgets(1), (1, 0));
    }

    #[test]
    fn spec_defaults_match_the_design() {
        let spec: CraneReplicaSetSpec = serde_json::from_value(json!({
            "template": {"metadata": {"labels": {"app": "crane"}}, "spec": {"containers": [{"name": "crane"}]}}
        }))
        .unwrap();
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.min_ready_seconds, 0);
        assert_eq!(spec.service, ServiceSpec::default());
        assert_eq!(spec.service.port, 8080);
        assert_eq!(spec.service.type_, ServiceType::LoadBalancer);
    }
}
