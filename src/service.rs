//! The Service that exposes a CraneReplicaSet's pods: what it should be, whether the live
//! one has drifted from it, and what its status says.
//!
//! The Service selects the selector's `matchLabels` plus [`OWNER_LABEL`], which the
//! controller puts on exactly the pods it owns (and removes when it releases one), so the
//! Service reaches the pods the CraneReplicaSet counts and no others.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as CoreServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::api::{CraneReplicaSet, ServiceStatus};

/// Label on every pod and Service a CraneReplicaSet owns; its value is the CraneReplicaSet's
/// name.
pub const OWNER_LABEL: &str = "crane.dev/replicaset";
/// Label the operator's Service watch selects on.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "crane-operator";
/// Annotation with a fingerprint of the applied Service, so that a change of the spec is
/// applied even where a comparison of live fields could not see it (a removed annotation).
pub const APPLIED_ANNOTATION: &str = "crane.dev/applied";

/// What only the controller can find wrong with the Service settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServiceError {
    #[error(
        "spec.service.targetPort is not set and the first container declares no containerPort: set one of them"
    )]
    NoTargetPort,
}

/// The Service's name.
pub fn service_name(crs: &CraneReplicaSet) -> String {
    crs.spec
        .service
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-http", crs.name_any()))
}

/// `spec.service.targetPort`, or the first containerPort of the first container.
pub fn target_port(crs: &CraneReplicaSet) -> Result<IntOrString, ServiceError> {
    if let Some(port) = &crs.spec.service.target_port {
        return Ok(port.clone());
    }
    crs.spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.ports.as_ref())
        .and_then(|ports| ports.first())
        .map(|p| IntOrString::Int(p.container_port))
        .ok_or(ServiceError::NoTargetPort)
}

/// The controller ownerReference that pods and the Service carry.
pub fn controller_ref(crs: &CraneReplicaSet) -> OwnerReference {
    let mut owner = crs
        .controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            api_version: CraneReplicaSet::api_version(&()).into_owned(),
            kind: CraneReplicaSet::kind(&()).into_owned(),
            name: crs.name_any(),
            uid: crs.uid().unwrap_or_default(),
            ..OwnerReference::default()
        });
    owner.controller = Some(true);
    owner.block_owner_deletion = Some(true);
    owner
}

/// The Service as the controller applies it: only the fields it owns.
pub fn desired_service(crs: &CraneReplicaSet) -> Result<Service, ServiceError> {
    let target = target_port(crs)?;
    let mut selector = crs.label_selector().match_labels.unwrap_or_default();
    selector.insert(OWNER_LABEL.into(), crs.name_any());
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (OWNER_LABEL.to_string(), crs.name_any()),
    ]);
    let mut svc = Service {
        metadata: ObjectMeta {
            name: Some(service_name(crs)),
            namespace: crs.namespace(),
            labels: Some(labels),
            annotations: Some(crs.spec.service.annotations.clone()),
            owner_references: Some(vec![controller_ref(crs)]),
            ..ObjectMeta::default()
        },
        spec: Some(CoreServiceSpec {
            type_: Some(crs.spec.service.type_.as_str().into()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                port: crs.spec.service.port,
                target_port: Some(target),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..CoreServiceSpec::default()
        }),
        status: None,
    };
    let fingerprint = fingerprint(&serde_json::to_vec(&svc).unwrap_or_default());
    svc.annotations_mut()
        .insert(APPLIED_ANNOTATION.into(), fingerprint);
    Ok(svc)
}

/// FNV-1a: a stable fingerprint (std's hasher may change between Rust releases).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn fingerprint(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a(bytes))
}

/// Whether a port the Service must have is gone from the live one (edited or removed).
/// Server-side apply alone cannot bring it back when the edit kept the port's name: the
/// merged list would have two ports of one name, which the API server refuses.
pub fn port_missing(live: &Service, desired: &Service) -> bool {
    let ports = |s: &Service| {
        s.spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .cloned()
            .collect::<Vec<_>>()
    };
    let have = ports(live);
    !ports(desired).iter().all(|want| {
        have.iter().any(|have| {
            have.port == want.port
                && have.protocol.as_deref().unwrap_or("TCP")
                    == want.protocol.as_deref().unwrap_or("TCP")
                && have.target_port == want.target_port
        })
    })
}

/// True when the live Service lacks something the desired one sets: then it is applied
/// again. Fields the controller does not set (other ports, other annotations) are ignored.
pub fn has_drifted(live: &Service, desired: &Service) -> bool {
    let contains = |live: &BTreeMap<String, String>, want: &BTreeMap<String, String>| {
        want.iter().all(|(k, v)| live.get(k) == Some(v))
    };
    let (Some(ls), Some(ds)) = (live.spec.as_ref(), desired.spec.as_ref()) else {
        return true;
    };
    let port_present = !port_missing(live, desired);
    let owned = desired.owner_references().iter().all(|want| {
        live.owner_references()
            .iter()
            .any(|have| have.uid == want.uid && have.controller == Some(true))
    });
    !(contains(live.labels(), desired.labels())
        && contains(live.annotations(), desired.annotations())
        && ls.type_ == ds.type_
        && ls.selector == ds.selector
        && port_present
        && owned)
}

/// The controller ownerReference of an object, if it has one.
pub fn controller_of(obj: &Service) -> Option<&OwnerReference> {
    obj.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
}

/// What a pass does about the Service of its CraneReplicaSet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceAction {
    /// Nothing: it is ours and as it should be.
    InSync,
    /// Apply it (create it, or revert what someone changed in our fields, or re-adopt it).
    Apply,
    /// Someone edited the port: put the port list back first, then apply.
    RestorePortsThenApply,
    /// The name is taken by a Service that is not ours: never take it over.
    Conflict,
}

/// The rule for a `live` Service (or none) of the wanted name, against `desired`.
///
/// A Service controlled by another object, or one without a controller that this operator
/// did not make for this CraneReplicaSet, is a conflict. An orphan that carries the
/// operator's labels for this CraneReplicaSet's name is re-adopted, as orphaned pods are:
/// it was made for an earlier object of that name and orphaned by `kubectl delete
/// --cascade=orphan`.
pub fn service_action(live: Option<&Service>, desired: &Service) -> ServiceAction {
    let Some(live) = live else {
        return ServiceAction::Apply;
    };
    let ours = desired.owner_references().first().map(|o| &o.uid);
    match controller_of(live) {
        Some(owner) if Some(&owner.uid) == ours => {}
        Some(_) => return ServiceAction::Conflict,
        None => {
            let made_for_us = [MANAGED_BY_LABEL, OWNER_LABEL]
                .iter()
                .all(|k| live.labels().get(*k) == desired.labels().get(*k));
            if !made_for_us {
                return ServiceAction::Conflict;
            }
        }
    }
    if port_missing(live, desired) {
        ServiceAction::RestorePortsThenApply
    } else if has_drifted(live, desired) {
        ServiceAction::Apply
    } else {
        ServiceAction::InSync
    }
}

/// The status block for a live Service, with the EXTERNAL-IP text of `kubectl get services`.
pub fn service_status(svc: &Service) -> ServiceStatus {
    let spec = svc.spec.clone().unwrap_or_default();
    let type_ = spec.type_.unwrap_or_else(|| "ClusterIP".into());
    let ingress: Vec<String> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
        .collect();
    let mut shown: Vec<String> = ingress.clone();
    shown.extend(spec.external_ips.unwrap_or_default());
    let external_ip = match (shown.is_empty(), type_.as_str()) {
        (false, _) => shown.join(","),
        (true, "LoadBalancer") => "<pending>".into(),
        (true, _) => "<none>".into(),
    };
    ServiceStatus {
        name: svc.name_any(),
        type_,
        cluster_ip: spec.cluster_ip,
        external_addresses: ingress,
        external_ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fixtures::crane;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServiceStatus as CoreServiceStatus,
    };

    #[test]
    fn renders_the_books_service() {
        let svc = desired_service(&crane(3)).unwrap();
        assert_eq!(svc.name_any(), "crane-http");
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (8080, Some(IntOrString::Int(7070)))
        );
        assert_eq!(
            spec.selector.as_ref().unwrap(),
            &BTreeMap::from([
                ("app".into(), "crane".into()),
                (OWNER_LABEL.into(), "crane".into())
            ])
        );
        assert_eq!(svc.owner_references()[0].kind, "CraneReplicaSet");
        assert_eq!(svc.owner_references()[0].controller, Some(true));
    }

    #[test]
    fn explicit_name_type_and_target_port_win() {
        let mut crs = crane(1);
        crs.spec.service.name = Some("web".into());
        crs.spec.service.type_ = crate::api::ServiceType::NodePort;
        crs.spec.service.target_port = Some(IntOrString::String("http".into()));
        let svc = desired_service(&crs).unwrap();
        assert_eq!(svc.name_any(), "web");
        assert_eq!(
            svc.spec.as_ref().unwrap().type_.as_deref(),
            Some("NodePort")
        );
        assert_eq!(
            svc.spec.unwrap().ports.unwrap()[0].target_port,
            Some(IntOrString::String("http".into()))
        );
    }

    #[test]
    fn no_container_port_is_an_error_naming_the_field() {
        let mut crs = crane(1);
        crs.spec.template.spec.as_mut().unwrap().containers[0].ports = None;
        let err = desired_service(&crs).unwrap_err();
        assert!(err.to_string().contains("spec.service.targetPort"));
    }

    #[test]
    fn drift_is_seen_in_owned_fields_only() {
        let desired = desired_service(&crane(1)).unwrap();
        let mut live = desired.clone();
        live.annotations_mut()
            .insert("someone.else/note".into(), "x".into());
        live.spec
            .as_mut()
            .unwrap()
            .ports
            .as_mut()
            .unwrap()
            .push(ServicePort {
                port: 9090,
                ..ServicePort::default()
            });
        live.spec.as_mut().unwrap().cluster_ip = Some("10.0.0.1".into());
        assert!(
            !has_drifted(&live, &desired),
            "additions by others are not drift"
        );

        let mut edited = live.clone();
        edited.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        assert!(has_drifted(&edited, &desired));
        let mut edited = live.clone();
        edited.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port =
            Some(IntOrString::Int(1));
        assert!(has_drifted(&edited, &desired));
        let mut edited = live;
        edited
            .spec
            .as_mut()
            .unwrap()
            .selector
            .as_mut()
            .unwrap()
            .insert("extra".into(), "x".into());
        assert!(has_drifted(&edited, &desired));
    }

    #[test]
    fn a_changed_spec_changes_the_fingerprint() {
        let mut crs = crane(1);
        let before = desired_service(&crs).unwrap();
        crs.spec
            .service
            .annotations
            .insert("lb/type".into(), "nlb".into());
        let after = desired_service(&crs).unwrap();
        assert_ne!(
            before.annotations()[APPLIED_ANNOTATION],
            after.annotations()[APPLIED_ANNOTATION]
        );
        // The old annotation set is a subset of the new one, but the fingerprint differs.
        assert!(has_drifted(&before, &after));
    }

    #[test]
    fn the_service_action_of_each_situation() {
        let desired = desired_service(&crane(1)).unwrap();
        let with = |f: &dyn Fn(&mut Service)| {
            let mut s = desired.clone();
            f(&mut s);
            s
        };
        let orphaned = with(&|s| s.metadata.owner_references = None);
        let strangers = with(&|s| {
            s.metadata.owner_references = None;
            s.metadata.labels = None;
        });
        let other_owner = with(&|s| {
            s.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
        });
        let other_name = with(&|s| {
            s.metadata.owner_references = None;
            s.labels_mut().insert(OWNER_LABEL.into(), "another".into());
        });
        let retyped = with(&|s| s.spec.as_mut().unwrap().type_ = Some("NodePort".into()));
        let reported = with(&|s| s.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 9090);
        let cases: [(&str, Option<&Service>, ServiceAction); 8] = [
            ("missing: created", None, ServiceAction::Apply),
            ("ours and unchanged", Some(&desired), ServiceAction::InSync),
            ("ours, type edited", Some(&retyped), ServiceAction::Apply),
            (
                "ours, port edited",
                Some(&reported),
                ServiceAction::RestorePortsThenApply,
            ),
            (
                "orphaned with our labels: re-adopted",
                Some(&orphaned),
                ServiceAction::Apply,
            ),
            (
                "someone else's, no labels",
                Some(&strangers),
                ServiceAction::Conflict,
            ),
            (
                "controlled by another object",
                Some(&other_owner),
                ServiceAction::Conflict,
            ),
            (
                "ours once, for another name",
                Some(&other_name),
                ServiceAction::Conflict,
            ),
        ];
        for (situation, live, want) in cases {
            assert_eq!(service_action(live, &desired), want, "{situation}");
        }
    }

    #[test]
    fn external_ip_reads_like_kubectl_get_services() {
        let mut svc = desired_service(&crane(1)).unwrap();
        assert_eq!(service_status(&svc).external_ip, "<pending>");
        svc.status = Some(CoreServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("203.0.113.7".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        });
        let st = service_status(&svc);
        assert_eq!(
            (st.external_ip.as_str(), st.external_addresses.len()),
            ("203.0.113.7", 1)
        );
        svc.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        svc.status = None;
        assert_eq!(service_status(&svc).external_ip, "<none>");
    }
}
