//! Where the project's own test and bench pods run: on kwok's simulated nodes, whose stages
//! make a pod Running and Ready without running anything, and simulate failures
//! (tests/cluster/kwok.yaml). The local cluster taints those nodes so that everything else
//! (the book's manifests, real containers) lands on its real node, crane-node-0; the pods
//! here tolerate the taint and ask for a simulated node. Shared by the e2e and chaos suites
//! (through the harness) and the benchmarks.

use serde_json::{Value, json};

/// The label every simulated node carries (kwok's node template).
pub const KWOK_NODE_LABEL: (&str, &str) = ("type", "kwok");

/// Makes `pod_spec` (a core/v1 PodSpec as JSON) tolerate the simulated nodes' taint and,
/// when `require` is set, run only on a simulated node. Without `require` (a cluster with
/// no simulated nodes, such as kind), the toleration alone changes nothing.
pub fn on_kwok_nodes(pod_spec: &mut Value, require: bool) {
    pod_spec["tolerations"] = json!([
        {"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake", "effect": "NoSchedule"}
    ]);
    if require {
        let (key, value) = KWOK_NODE_LABEL;
        pod_spec["nodeSelector"] = json!({ key: value });
    }
}
