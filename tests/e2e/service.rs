//! The Service: its shape, recreation, reverting of owned fields, removal, external address.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::harness::*;

/// The Service as it is, or why not.
/// The Service `name` of `env`'s namespace, or that there is none yet, for `wait_for`.
pub(crate) async fn service(env: &TestEnv, name: &str) -> Result<Service, String> {
    env.services()
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no service {name}"))
}

fn target_port(svc: &Service) -> Option<IntOrString> {
    svc.spec
        .as_ref()?
        .ports
        .as_ref()?
        .first()?
        .target_port
        .clone()
}

#[tokio::test]
async fn service_has_the_books_shape() {
    let env = TestEnv::new("svc-shape").await;
    let crs = env.create(crane("crane", 2)).await;
    env.wait_ready("crane", 2, LONG).await;
    let svc = wait_for("service crane-http", SHORT, || service(&env, "crane-http")).await;
    let spec = svc.spec.clone().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let port = &spec.ports.unwrap()[0];
    assert_eq!((port.port, port.protocol.as_deref()), (8080, Some("TCP")));
    assert_eq!(port.target_port, Some(IntOrString::Int(7070)));
    assert_eq!(
        spec.selector.unwrap(),
        BTreeMap::from([
            ("app".to_string(), "crane".to_string()),
            ("crane.dev/replicaset".to_string(), "crane".to_string())
        ])
    );
    let owner = &svc.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("CraneReplicaSet", crs.uid().unwrap().as_str(), Some(true))
    );
    wait_for("status.service", SHORT, || async {
        let st = env.status("crane").await?;
        match st.service {
            Some(s)
                if s.name == "crane-http"
                    && s.type_ == "LoadBalancer"
                    && s.external_ip == "<pending>"
                    && s.cluster_ip.is_some() =>
            {
                Ok(())
            }
            other => Err(seen(other)),
        }
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn service_is_recreated_and_reverted_but_others_fields_are_kept() {
    let env = TestEnv::new("svc-revert").await;
    env.create(crane("crane", 1)).await;
    let first = wait_for("service crane-http", LONG, || service(&env, "crane-http")).await;

    env.services()
        .delete("crane-http", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the service to be recreated", SHORT, || async {
        let svc = service(&env, "crane-http").await?;
        (svc.uid() != first.uid())
            .then_some(())
            .ok_or("still the old one".to_string())
    })
    .await;

    // Someone edits an owned field (targetPort) and adds a field of their own.
    let edit = json!({
        "metadata": {"annotations": {"example.com/owner-team": "web"}},
        "spec": {"ports": [{"port": 8080, "protocol": "TCP", "targetPort": 9999}]}
    });
    env.services()
        .patch(
            "crane-http",
            &PatchParams::default(),
            &Patch::Strategic(edit),
        )
        .await
        .unwrap();
    let svc = wait_for("targetPort reverted to 7070", SHORT, || async {
        let svc = service(&env, "crane-http").await?;
        (target_port(&svc) == Some(IntOrString::Int(7070)))
            .then_some(svc.clone())
            .ok_or(seen(target_port(&svc)))
    })
    .await;
    assert_eq!(
        svc.annotations()
            .get("example.com/owner-team")
            .map(String::as_str),
        Some("web"),
        "fields the operator does not own are left alone"
    );

    let selector_edit = json!({"spec": {"selector": {"app": "other"}}});
    env.services()
        .patch(
            "crane-http",
            &PatchParams::default(),
            &Patch::Merge(selector_edit),
        )
        .await
        .unwrap();
    wait_for("selector reverted", SHORT, || async {
        let svc = service(&env, "crane-http").await?;
        let sel = svc.spec.and_then(|s| s.selector).unwrap_or_default();
        (sel.get("app").map(String::as_str) == Some("crane") && sel.len() == 2)
            .then_some(())
            .ok_or(seen(sel))
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn disabled_service_is_removed() {
    let env = TestEnv::new("svc-off").await;
    env.create(crane("crane", 1)).await;
    wait_for("service crane-http", LONG, || service(&env, "crane-http")).await;
    let patch = json!({"spec": {"service": {"enabled": false}}});
    env.crs()
        .patch("crane", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    wait_for(
        "the service to be deleted and the status to say so",
        SHORT,
        || async {
            let gone = env
                .services()
                .get_opt("crane-http")
                .await
                .map_err(|e| e.to_string())?
                .is_none();
            let st = env.status("crane").await?;
            (gone && st.service.is_none())
                .then_some(())
                .ok_or(format!("gone: {gone}, status: {:?}", st.service))
        },
    )
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn load_balancer_address_shows_in_status_and_kubectl() {
    let env = TestEnv::new("svc-lb").await;
    env.create(crane("crane", 1)).await;
    wait_for("service crane-http", LONG, || service(&env, "crane-http")).await;
    // What a cloud controller (or `minikube tunnel`) does once the load balancer exists.
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}});
    env.services()
        .patch_status("crane-http", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
    wait_for(
        "the address in the CraneReplicaSet's status",
        SHORT,
        || async {
            let st = env.status("crane").await?;
            let svc = st.service.unwrap_or_default();
            (svc.external_addresses == ["203.0.113.10"] && svc.external_ip == "203.0.113.10")
                .then_some(())
                .ok_or(seen(svc))
        },
    )
    .await;
    let table = env.kubectl(&["get", "crs", "crane", "--no-headers"]);
    assert!(table.contains("203.0.113.10"), "kubectl get crs: {table}");
    env.cleanup().await;
}
