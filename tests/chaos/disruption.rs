//! Others meddle with what the operator owns: half the pods deleted at once, the Service
//! deleted, the Service's owned fields edited. Everything is restored, with exactly one new
//! pod per deleted pod, and what the operator does not own is left alone.

use std::collections::BTreeMap;
use std::time::Instant;

use futures::future;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::harness::*;
use crate::support::*;

const REPLICAS: u64 = 30;

/// The Service as the operator makes it for `crane("crane", _)`.
fn restored(svc: &Service) -> Result<(), String> {
    let spec = svc.spec.clone().unwrap_or_default();
    let selector = spec.selector.clone().unwrap_or_default();
    let want_selector = BTreeMap::from([
        ("app".to_string(), "crane".to_string()),
        ("crane.dev/replicaset".to_string(), "crane".to_string()),
    ]);
    let ports = spec.ports.clone().unwrap_or_default();
    let ok = spec.type_.as_deref() == Some("LoadBalancer")
        && selector == want_selector
        && ports
            .iter()
            .any(|p| p.port == 8080 && p.target_port == Some(IntOrString::Int(7070)))
        && svc
            .labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("crane-operator");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "type {:?}, selector {selector:?}, ports {ports:?}, labels {:?}",
            spec.type_,
            svc.labels()
        ))
    }
}

async fn service_restored(env: &TestEnv) -> Result<Service, String> {
    let svc = env
        .services()
        .get_opt("crane-http")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no Service")?;
    restored(&svc).map(|()| svc)
}

#[tokio::test]
async fn bulk_pod_deletion_and_service_tampering() {
    let name = "bulk_pod_deletion_and_service_tampering";
    let mut rng = scenario(name);
    ensure_control_plane(None).await;
    let env = TestEnv::without_operator("chaos-tamper").await;
    wait_for_room(&env, 2 * REPLICAS).await;
    let seen = PodsEverSeen::start(&env).await;
    let mut operator = Operator::start(&env.ns, &[]);
    let mut ledger = Ledger::default();
    env.create(crane("crane", REPLICAS as i32)).await;
    ledger.increase(0, REPLICAS);
    converge(&env, "crane", REPLICAS, LONG).await;
    let mut faults = 0;

    // Half of the pods, deleted at once, twice: the second wave comes while the first is
    // being replaced, and may hit replacements.
    let t0 = Instant::now();
    let mut waves = Vec::new();
    for wave in 1..=2 {
        let pods = env.active_pods("crane").await.expect("list pods");
        let victims: Vec<String> = rng
            .pick(pods.len(), pods.len() / 2)
            .into_iter()
            .map(|i| pods[i].name_any())
            .collect();
        let (pod_api, params) = (env.pods(), DeleteParams::default());
        let deleted = future::join_all(victims.iter().map(|p| pod_api.delete(p, &params)))
            .await
            .into_iter()
            .filter(Result::is_ok)
            .count();
        ledger.needed += deleted as u64;
        waves.push(deleted);
        faults += 1;
        if wave == 1 {
            // The fault's timing is the point of this pause: not a wait for a state.
            tokio::time::sleep(rng.millis(0, 500)).await;
        }
    }
    let t = converge(&env, "crane", REPLICAS, LONG).await;
    let created = seen.uids().len();
    let overshoot = ledger.overshoot(created);
    eprintln!(
        "chaos[{name}]: pods deleted in 2 waves {waves:?}: converged {} after the second wave ({} after the first); \
         pods created {created}, needed {}, overshoot {overshoot}",
        secs(t),
        secs(t0.elapsed()),
        ledger.needed
    );

    // The Service, deleted: made again.
    let before = service_restored(&env).await.expect("the Service is there");
    let t0 = Instant::now();
    env.services()
        .delete("crane-http", &DeleteParams::default())
        .await
        .expect("delete the Service");
    faults += 1;
    let again = wait_for("the Service to be made again", SHORT, || async {
        let svc = service_restored(&env).await?;
        (svc.uid() != before.uid())
            .then_some(svc)
            .ok_or("still the old one".to_string())
    })
    .await;
    eprintln!(
        "chaos[{name}]: Service deleted: recreated in {}",
        secs(t0.elapsed())
    );

    // Owned fields edited by someone else, in a random order (with a foreign annotation
    // alongside each edit, which the operator does not own and must keep). The port edit
    // comes last: it changes the key of the port list's only entry.
    let mut edits: Vec<(&str, Value)> = vec![
        (
            "type",
            json!([{"op": "replace", "path": "/spec/type", "value": "ClusterIP"}]),
        ),
        (
            "selector",
            json!([{"op": "replace", "path": "/spec/selector", "value": {"app": "someone-else"}}]),
        ),
        (
            "selector key added",
            json!([{"op": "add", "path": "/spec/selector/extra", "value": "x"}]),
        ),
        (
            "targetPort",
            json!([{"op": "replace", "path": "/spec/ports/0/targetPort", "value": 9999}]),
        ),
        (
            "managed-by label",
            json!([{"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1managed-by"}]),
        ),
    ];
    for i in (1..edits.len()).rev() {
        edits.swap(i, rng.range(0, i as u64) as usize);
    }
    edits.push((
        "port",
        json!([{"op": "replace", "path": "/spec/ports/0/port", "value": 9090}]),
    ));
    let mut failures = Vec::new();
    for (i, (field, patch)) in edits.iter().enumerate() {
        let mut ops = patch.as_array().cloned().unwrap_or_default();
        let note = format!("note-{i}");
        ops.push(
            json!({"op": "add", "path": "/metadata/annotations/someone.else~1note", "value": note}),
        );
        let t0 = Instant::now();
        env.services()
            .patch(
                "crane-http",
                &PatchParams::default(),
                &Patch::<()>::Json(
                    serde_json::from_value(Value::Array(ops)).expect("a JSON patch"),
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("edit the Service's {field}: {e}"));
        faults += 1;
        // Not wait_for: a Service left unrestored is recorded, and the other edits still run.
        let deadline = t0 + SHORT;
        let svc = loop {
            match service_restored(&env).await {
                Ok(svc) => break Ok(svc),
                Err(seen) if Instant::now() >= deadline => break Err(seen),
                Err(_) => tokio::time::sleep(POLL).await,
            }
        };
        let svc = match svc {
            Ok(svc) => svc,
            Err(seen) => {
                eprintln!(
                    "chaos[{name}]: Service {field} edited: NOT restored within {SHORT:?}: {seen}"
                );
                failures.push(format!(
                    "the Service's {field} was not restored within {SHORT:?}: {seen}"
                ));
                continue;
            }
        };
        let took = t0.elapsed();
        if svc.uid() != again.uid() {
            failures.push(format!(
                "the {field} edit was undone by recreating the Service, not in place"
            ));
        }
        if svc.annotations().get("someone.else/note") != Some(&note) {
            failures.push(format!(
                "the foreign annotation was not left alone after the {field} edit"
            ));
        }
        let ports: Vec<String> = svc
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .map(|p| format!("{}->{:?}", p.port, p.target_port))
            .collect();
        eprintln!(
            "chaos[{name}]: Service {field} edited: restored in {} (ports now {ports:?})",
            secs(took)
        );
    }
    converge(&env, "crane", REPLICAS, SHORT).await;
    assert_running(&mut operator, "after the tampering");
    assert_watch_clean(&seen, name);
    eprintln!(
        "chaos[{name}]: SUMMARY faults {faults}, pods created {created}, needed {}, overshoot {overshoot}, \
         Service edits not restored {}; operator log {}",
        ledger.needed,
        failures.len(),
        operator.log.display()
    );
    assert!(
        overshoot <= 0,
        "chaos[{name}]: {overshoot} pods created beyond replicas plus pods deleted (seed {})",
        base_seed()
    );
    assert!(
        failures.is_empty(),
        "chaos[{name}] (seed {}):\n  - {}",
        base_seed(),
        failures.join("\n  - ")
    );
    stop_gracefully(operator).await;
    env.cleanup().await;
}
