//! The committed CRD copies are exactly what `crane-operator crd` prints (`make crd`
//! regenerates them), and the chart's dashboard and alerts query metrics that exist.

use std::path::Path;

#[test]
fn committed_crds_match_the_rust_types() {
    let want = crane_operator::api::crd_yaml();
    for file in ["manifests/crd.yaml", "charts/crane-operator/files/crd.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let have = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {file}: {e}"));
        assert!(
            have == want,
            "{file} is out of date with the Rust types: run `make crd`"
        );
    }
}

/// `kubectl explain crs` says what a CraneReplicaSet is, not kube-derive's placeholder
/// ("Auto-generated derived type for ...").
#[test]
fn the_crd_describes_the_resource_at_its_root() {
    let crd = crane_operator::api::crd();
    let version = &crd.spec.versions[0];
    let root = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("a schema");
    let description = root.description.as_deref().unwrap_or_default();
    assert!(
        description.contains("spec.replicas") && !description.contains("Auto-generated"),
        "the root description: {description:?}"
    );
}

/// Every metric the shipped dashboard and alerts query is one the operator exports: a
/// renamed metric must not leave an empty panel or an alert that can never fire.
mod chart_queries {
    use std::collections::BTreeSet;
    use std::path::Path;

    fn read(file: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {file}: {e}"))
    }

    /// The sample names of the operator's exposition, with one CraneReplicaSet known so
    /// that the per-object families have a series too.
    fn exported() -> BTreeSet<String> {
        let m = crane_operator::metrics::Metrics::default();
        m.set_replicas("default", "web", 1, 1);
        m.encode()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_string)
            .collect()
    }

    /// The operator's metric names in a PromQL expression (histogram series such as
    /// `_bucket` are sample names of their own in the exposition).
    fn metric_names(expr: &str) -> Vec<String> {
        expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| w.starts_with("crane_operator_") || w.starts_with("process_"))
            .map(str::to_string)
            .collect()
    }

    fn assert_all_exported(file: &str, exprs: &[String]) {
        assert!(!exprs.is_empty(), "{file}: no expressions found");
        let have = exported();
        for expr in exprs {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{file}: no operator metric in `{expr}`");
            for name in names {
                assert!(
                    have.contains(&name),
                    "{file}: `{expr}` queries {name}, which the operator does not export"
                );
            }
        }
    }

    fn dashboard_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    out.push(expr.clone());
                }
                map.values().for_each(|v| dashboard_exprs(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_dashboard_parses_and_queries_only_exported_metrics() {
        let file = "charts/crane-operator/files/dashboard.json";
        let dashboard: serde_json::Value =
            serde_json::from_str(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(dashboard["uid"], "crane-operator");
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(panels.iter().all(|p| p["targets"].is_array()));
        let mut exprs = Vec::new();
        dashboard_exprs(&dashboard, &mut exprs);
        // The variables' queries too (`label_values(<metric>, job)`): a variable whose
        // metric is gone leaves every panel that uses it empty.
        let variables = dashboard["templating"]["list"]
            .as_array()
            .expect("templating");
        let queries: Vec<String> = variables
            .iter()
            .filter(|v| v["type"] == "query")
            .flat_map(|v| [&v["definition"], &v["query"]["query"], &v["query"]])
            .filter_map(|q| q.as_str().map(str::to_string))
            .collect();
        assert!(!queries.is_empty(), "{file}: no query variable");
        exprs.extend(queries);
        assert_all_exported(file, &exprs);
    }

    #[test]
    fn the_alerts_query_only_exported_metrics() {
        let file = "charts/crane-operator/files/alerts.yaml";
        let rules: serde_json::Value =
            serde_saphyr::from_str(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let exprs: Vec<String> = rules["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().expect("rules").iter())
            .map(|r| r["expr"].as_str().expect("expr").to_string())
            .collect();
        assert_all_exported(file, &exprs);
    }
}
