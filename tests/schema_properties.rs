//! Whatever the CRD schema admits, the Rust types decode: objects generated from the schema
//! itself (`crane_operator::api::crd()`, its v1 openAPIV3Schema) deserialize as a
//! `CraneReplicaSet` and round-trip (serialize, deserialize: equal). One object the operator
//! cannot decode would otherwise be an object it cannot manage.
//!
//! The generator honours what the API server checks: `type`; the int32/int64 range of a
//! `format` (the API server enforces both); `date-time` as the API server's format check
//! admits it (any year 0000-9999, fractions, lower-case `t`/`z`, any two-digit offset);
//! `minimum`/`maximum`; both forms of an int-or-string; `pattern`, `minLength`/`maxLength`;
//! `enum`; `required`; `nullable` (null kept) and non-nullable nulls (dropped, then
//! `default`); `minItems`/`maxItems`; `maxProperties`. Of the CEL rules it honours those of
//! the form `!has(self.field)` (the field is never stored); the others only refuse values
//! that the types decode as well (label matching, port ranges, unique names), so ignoring
//! them can only make this test stricter.
//!
//! Two tests: every edge value of every node, each in an otherwise minimal object (every
//! failure listed with its path); and random objects mixing edges and random values.

use std::collections::BTreeMap;

use crane_operator::api::CraneReplicaSet;
use proptest::prelude::*;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, TestRng, TestRunner};
use serde_json::{Map, Value, json};

/// The v1 openAPIV3Schema of the generated CRD, as JSON.
fn schema() -> Value {
    let crd = crane_operator::api::crd();
    let version = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == "v1")
        .expect("a v1 version");
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("an openAPIV3Schema");
    serde_json::to_value(schema).expect("a schema serializes")
}

/// What the operator reads back: decodes as a CraneReplicaSet, and serializing then
/// decoding again gives the same value.
fn decodes(object: &Value) -> Result<(), String> {
    let crs: CraneReplicaSet =
        serde_json::from_value(object.clone()).map_err(|e| format!("does not decode: {e}"))?;
    let written = serde_json::to_value(&crs).map_err(|e| format!("does not serialize: {e}"))?;
    let again: CraneReplicaSet = serde_json::from_value(written.clone())
        .map_err(|e| format!("its serialization {written} does not decode: {e}"))?;
    if again != crs {
        return Err(format!("changes in a round trip, to {written}"));
    }
    Ok(())
}

/// A stored object around `spec` and `status` (metadata is the API server's own).
fn object(spec: Value, status: Option<Value>) -> Value {
    let mut object = json!({
        "apiVersion": "crane.dev/v1",
        "kind": "CraneReplicaSet",
        "metadata": {
            "name": "crane", "namespace": "default", "uid": "5f0c3c3e-0000-4000-8000-000000000000",
            "resourceVersion": "1", "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"
        },
        "spec": spec,
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    object
}

// ---- The edges of one node ----------------------------------------------------------------

/// The integer range a node admits: its format's range (the API server enforces int32 and
/// int64; no format: what Go's JSON decoder holds, an int64), narrowed by minimum/maximum.
fn int_range(node: &Value) -> (i64, i64) {
    let (mut lo, mut hi) = match node["format"].as_str() {
        Some("int32") => (i64::from(i32::MIN), i64::from(i32::MAX)),
        _ => (i64::MIN, i64::MAX),
    };
    if let Some(min) = node["minimum"].as_f64() {
        let exclusive = node["exclusiveMinimum"] == json!(true);
        let min = if exclusive {
            min.floor() + 1.0
        } else {
            min.ceil()
        };
        if min > lo as f64 {
            lo = min as i64;
        }
    }
    if let Some(max) = node["maximum"].as_f64() {
        let exclusive = node["exclusiveMaximum"] == json!(true);
        let max = if exclusive {
            max.ceil() - 1.0
        } else {
            max.floor()
        };
        if max < hi as f64 {
            hi = max as i64;
        }
    }
    assert!(lo <= hi, "an integer node admits nothing: {node}");
    (lo, hi)
}

fn int_edges(node: &Value) -> Vec<Value> {
    let (lo, hi) = int_range(node);
    let mut edges = vec![
        lo,
        hi,
        lo.saturating_add(1).min(hi),
        hi.saturating_sub(1).max(lo),
    ];
    if lo <= 0 && 0 <= hi {
        edges.push(0);
    }
    edges.dedup();
    edges.into_iter().map(Value::from).collect()
}

/// Strings the API server's date-time format check admits, at their edges.
const DATE_TIMES: [&str; 12] = [
    "0000-01-01T00:00:00Z",
    "0000-01-01T00:00:00+23:59",
    "0001-01-01T00:00:00+23:59",
    "2026-02-28T12:30:00Z",
    "2024-02-29T23:59:59-23:59",
    "2026-01-01T00:00:00.123456789Z",
    "2026-01-01T00:00:00.1234567890123Z",
    "2026-01-01t00:00:00z",
    "2026-01-01T00:00:00+99:99",
    "9998-12-31T23:59:59-23:59",
    "9999-12-30T22:00:00Z",
    "9999-12-31T23:59:59Z",
];

/// A node's pattern as a proptest regex (proptest takes no anchors; every pattern in the
/// schema is anchored at both ends).
fn unanchored(pattern: &str) -> &str {
    pattern
        .strip_prefix('^')
        .and_then(|p| p.strip_suffix('$'))
        .unwrap_or_else(|| panic!("pattern {pattern:?} is not anchored at both ends"))
}

fn length_range(node: &Value) -> (usize, usize) {
    let min = node["minLength"].as_u64().unwrap_or(0) as usize;
    let max = node["maxLength"].as_u64().map(|m| m as usize);
    (min, max.unwrap_or(min.max(1024)))
}

/// Whether a string honours the node's pattern and length bounds.
fn admitted_string(node: &Value, s: &str) -> bool {
    let (min, max) = length_range(node);
    let length = s.chars().count();
    let pattern_ok = node["pattern"].as_str().is_none_or(|p| {
        regex::Regex::new(p)
            .unwrap_or_else(|e| panic!("pattern {p:?}: {e}"))
            .is_match(s)
    });
    min <= length && length <= max && pattern_ok
}

/// Strings drawn from a strategy with a fixed seed (the edges are deterministic).
fn samples(strategy: impl Strategy<Value = String>, n: usize) -> Vec<String> {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[7; 32]),
    );
    (0..n)
        .map(|_| {
            strategy
                .new_tree(&mut runner)
                .expect("a regex strategy")
                .current()
        })
        .collect()
}

fn string_edges(node: &Value) -> Vec<Value> {
    let (min, max) = length_range(node);
    let mut candidates: Vec<String> = Vec::new();
    if node["format"] == "date-time" {
        candidates.extend(DATE_TIMES.iter().map(|s| s.to_string()));
    } else if let Some(pattern) = node["pattern"].as_str() {
        candidates.extend(samples(
            proptest::string::string_regex(unanchored(pattern)).expect("a supported pattern"),
            8,
        ));
        candidates.push(String::new());
    } else {
        candidates.extend([
            String::new(),
            "a".into(),
            "12".into(),
            "25%".into(),
            "ünïcødé ✓ 𝄞 \"quoted\"\n\t\\ \u{0}".into(),
            "x".repeat(max),
            "é".repeat(max),
        ]);
        candidates.push("y".repeat(min));
    }
    let mut edges: Vec<Value> = candidates
        .into_iter()
        .filter(|s| admitted_string(node, s))
        .map(Value::from)
        .collect();
    edges.dedup();
    assert!(!edges.is_empty(), "no admitted string found for {node}");
    edges
}

/// The CEL rules `!has(self.field)` of an object node: fields that are never stored.
fn forbidden_fields(node: &Value) -> Vec<String> {
    node["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["rule"].as_str())
        .filter_map(|r| r.strip_prefix("!has(self.")?.strip_suffix(')'))
        .map(str::to_string)
        .collect()
}

/// The kind of a schema node, as the generators see it.
enum Kind<'a> {
    IntOrString,
    Integer,
    String,
    Boolean,
    Enum(&'a Vec<Value>),
    Array,
    Object,
}

fn kind(node: &Value) -> Kind<'_> {
    if node["x-kubernetes-int-or-string"] == json!(true) {
        return Kind::IntOrString;
    }
    if let Some(values) = node["enum"].as_array() {
        return Kind::Enum(values);
    }
    assert!(
        node.get("anyOf").is_none() && node.get("allOf").is_none() && node.get("oneOf").is_none(),
        "a schema combinator this test does not generate: {node}"
    );
    assert!(
        node["x-kubernetes-preserve-unknown-fields"] != json!(true),
        "a node that keeps unknown fields: add a generator for it"
    );
    match node["type"].as_str() {
        Some("integer") => Kind::Integer,
        Some("string") => Kind::String,
        Some("boolean") => Kind::Boolean,
        Some("array") => Kind::Array,
        Some("object") => Kind::Object,
        other => panic!("a type this test does not generate: {other:?} in {node}"),
    }
}

/// The edge values of a leaf node (scalars), and the smallest admitted value of any node.
fn leaf_edges(node: &Value) -> Vec<Value> {
    match kind(node) {
        Kind::IntOrString => {
            let mut edges = int_edges(node);
            edges.extend(string_edges(node));
            edges
        }
        Kind::Integer => int_edges(node),
        Kind::String => string_edges(node),
        Kind::Boolean => vec![json!(true), json!(false)],
        Kind::Enum(values) => values.clone(),
        Kind::Array | Kind::Object => vec![minimal(node)],
    }
}

/// The smallest object the node admits: required fields only, arrays at minItems.
fn minimal(node: &Value) -> Value {
    match kind(node) {
        Kind::Array => {
            let n = node["minItems"].as_u64().unwrap_or(0) as usize;
            Value::Array((0..n).map(|_| minimal(&node["items"])).collect())
        }
        Kind::Object => {
            let mut object = Map::new();
            for name in node["required"].as_array().into_iter().flatten() {
                let name = name.as_str().expect("required names are strings");
                object.insert(name.into(), minimal(&node["properties"][name]));
            }
            Value::Object(object)
        }
        // The integer nearest 0: the edges of one field must not fail the objects around it.
        Kind::Integer | Kind::IntOrString => {
            let (lo, hi) = int_range(node);
            Value::from(0.clamp(lo, hi))
        }
        _ => leaf_edges(node).swap_remove(0),
    }
}

// ---- Every edge of every node, in a minimal object ------------------------------------------

/// One step from a node to a child.
#[derive(Clone, Debug)]
enum Step {
    Property(String),
    Item,
    MapValue,
}

fn path_text(path: &[Step]) -> String {
    path.iter()
        .map(|s| match s {
            Step::Property(name) => format!(".{name}"),
            Step::Item => "[]".into(),
            Step::MapValue => "{}".into(),
        })
        .collect()
}

/// Every (path, value) the edge test tries: the leaves' edges, null where nullable, arrays at
/// minItems and maxItems, maps at maxProperties.
fn edge_cases(node: &Value, path: &mut Vec<Step>, out: &mut Vec<(Vec<Step>, Value)>) {
    if node["nullable"] == json!(true) {
        out.push((path.clone(), Value::Null));
    }
    match kind(node) {
        Kind::Object => {
            let forbidden = forbidden_fields(node);
            for (name, property) in node["properties"].as_object().into_iter().flatten() {
                if forbidden.contains(name) {
                    continue;
                }
                path.push(Step::Property(name.clone()));
                edge_cases(property, path, out);
                path.pop();
            }
            if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
                if let Some(max) = node["maxProperties"].as_u64() {
                    let full: Map<String, Value> = (0..max)
                        .map(|i| (format!("key-{i}"), minimal(values)))
                        .collect();
                    out.push((path.clone(), Value::Object(full)));
                }
                path.push(Step::MapValue);
                edge_cases(values, path, out);
                path.pop();
            }
        }
        Kind::Array => {
            if let Some(max) = node["maxItems"].as_u64() {
                let full = (0..max).map(|_| minimal(&node["items"])).collect();
                out.push((path.clone(), Value::Array(full)));
            }
            path.push(Step::Item);
            edge_cases(&node["items"], path, out);
            path.pop();
        }
        _ => out.extend(leaf_edges(node).into_iter().map(|v| (path.clone(), v))),
    }
}

/// The minimal object of `node` with `value` at `path`.
fn with_value(node: &Value, path: &[Step], value: Value) -> Value {
    let Some((step, rest)) = path.split_first() else {
        return value;
    };
    match step {
        Step::Property(name) => {
            let mut object = minimal(node);
            let child = with_value(&node["properties"][name], rest, value);
            object[name] = child;
            object
        }
        Step::Item => {
            let mut items = match minimal(node) {
                Value::Array(items) if !items.is_empty() => items,
                _ => vec![Value::Null],
            };
            items[0] = with_value(&node["items"], rest, value);
            Value::Array(items)
        }
        Step::MapValue => {
            let mut object = minimal(node);
            object["key"] = with_value(&node["additionalProperties"], rest, value);
            object
        }
    }
}

#[test]
fn every_edge_of_every_node_decodes() {
    let root = schema();
    let mut cases = Vec::new();
    for part in ["spec", "status"] {
        let mut path = vec![Step::Property(part.into())];
        edge_cases(&root["properties"][part], &mut path, &mut cases);
    }
    assert!(cases.len() > 1000, "only {} edge cases", cases.len());
    // Failures by path: one line per field, with the values that failed there.
    let mut failures: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, value) in cases {
        let shown: String = value.to_string().chars().take(60).collect();
        let whole = with_value(&root, &path, value);
        let object = object(whole["spec"].clone(), whole.get("status").cloned());
        if let Err(e) = decodes(&object) {
            let e: String = e.chars().take(160).collect();
            failures
                .entry(path_text(&path))
                .or_default()
                .push(format!("{shown} ({e})"));
        }
    }
    let lines: Vec<String> = failures
        .iter()
        .map(|(path, values)| format!("{path}: {}", values.join("; ")))
        .collect();
    assert!(
        lines.is_empty(),
        "{} fields admit values that do not decode as a CraneReplicaSet:\n  {}",
        lines.len(),
        lines.join("\n  ")
    );
}

// ---- Random objects ------------------------------------------------------------------------

/// Random admitted values of a node, mixed with its edges.
fn strategy(node: &Value) -> BoxedStrategy<Value> {
    let edges = prop::sample::select(leaf_edges(node));
    match kind(node) {
        Kind::Integer => {
            let (lo, hi) = int_range(node);
            prop_oneof![edges, (lo..=hi).prop_map(Value::from)].boxed()
        }
        Kind::IntOrString => {
            let (lo, hi) = int_range(node);
            prop_oneof![
                edges,
                (lo..=hi).prop_map(Value::from),
                any::<String>().prop_map(Value::from)
            ]
            .boxed()
        }
        Kind::String if node.get("pattern").is_none() && node["format"] != "date-time" => {
            let (min, max) = length_range(node);
            let random = proptest::collection::vec(any::<char>(), min..=max.min(min + 64))
                .prop_map(|c| Value::from(c.into_iter().collect::<String>()));
            prop_oneof![edges, random].boxed()
        }
        Kind::String if node.get("pattern").is_some() && node["format"] != "date-time" => {
            let pattern = node["pattern"].as_str().unwrap_or_default();
            let node = node.clone();
            let random = proptest::string::string_regex(unanchored(pattern))
                .expect("a supported pattern")
                .prop_filter("within the length bounds", move |s| {
                    admitted_string(&node, s)
                })
                .prop_map(Value::from);
            prop_oneof![edges, random].boxed()
        }
        Kind::String | Kind::Boolean | Kind::Enum(_) => edges.boxed(),
        Kind::Array => {
            let min = node["minItems"].as_u64().unwrap_or(0) as usize;
            let max = node["maxItems"].as_u64().map(|m| m as usize);
            let items = strategy(&node["items"]);
            let few = proptest::collection::vec(items.clone(), min..=min + 2);
            match max {
                Some(max) => prop_oneof![
                    4 => few,
                    1 => proptest::collection::vec(items, max..=max)
                ]
                .prop_map(Value::Array)
                .boxed(),
                None => few.prop_map(Value::Array).boxed(),
            }
        }
        Kind::Object => object_strategy(node),
    }
}

fn object_strategy(node: &Value) -> BoxedStrategy<Value> {
    let required: Vec<&str> = node["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let forbidden = forbidden_fields(node);
    let mut fields: Vec<BoxedStrategy<Option<(String, Value)>>> = Vec::new();
    for (name, property) in node["properties"].as_object().into_iter().flatten() {
        if forbidden.contains(name) {
            continue;
        }
        let named = {
            let name = name.clone();
            move |v: Value| Some((name.clone(), v))
        };
        let present = strategy(property).prop_map(named.clone());
        let nullable = property["nullable"] == json!(true);
        // A non-nullable null is dropped by the API server, then defaulted like an absent field.
        let absent = match property.get("default") {
            Some(default) => Just(named(default.clone())).boxed(),
            None => Just(None).boxed(),
        };
        let field = match (required.contains(&name.as_str()), nullable) {
            (true, false) => present.boxed(),
            (true, true) => prop_oneof![3 => present, 1 => Just(named(Value::Null))].boxed(),
            (false, false) => prop_oneof![absent, present].boxed(),
            (false, true) => {
                prop_oneof![2 => absent, 2 => present, 1 => Just(named(Value::Null))].boxed()
            }
        };
        fields.push(field);
    }
    let entries = match node.get("additionalProperties").filter(|v| v.is_object()) {
        Some(values) => {
            let max = node["maxProperties"].as_u64().map_or(3, |m| m as usize);
            let key = prop_oneof![Just(String::new()), "[a-z0-9./-]{1,20}", any::<String>()];
            proptest::collection::btree_map(key, strategy(values), 0..=max).boxed()
        }
        None => Just(BTreeMap::new()).boxed(),
    };
    (fields, entries)
        .prop_map(|(fields, entries)| {
            let mut object: Map<String, Value> = entries.into_iter().collect();
            object.extend(fields.into_iter().flatten());
            Value::Object(object)
        })
        .boxed()
}

proptest! {
    // Each object is large (a whole pod template): 48 cases stay within seconds in debug.
    #![proptest_config(Config { cases: 48, max_shrink_iters: 2000, ..Config::default() })]

    #[test]
    fn whatever_the_schema_admits_decodes(
        (spec, status) in {
            let root = schema();
            (strategy(&root["properties"]["spec"]), prop::option::of(strategy(&root["properties"]["status"])))
        }
    ) {
        let object = object(spec, status);
        prop_assert!(decodes(&object).is_ok(), "{}: {object}", decodes(&object).unwrap_err());
    }
}
