//! What the operator must be allowed to do before it starts, and a refusal that says how to
//! grant it.
//!
//! Without list and watch of its resources the operator would idle with watches retrying
//! 403s forever, Ready never, and tell nobody but its log; without `events create` it could
//! not even tell the objects. So the start asks the API server, with one
//! SelfSubjectAccessReview per verb, as cybozu-go/accurate does at its start and Argo CD's
//! cluster cache does before it watches a resource: the review names the exact verb,
//! resource, namespace and object (a Lease by name), needs no permission of its own (every
//! authenticated user may create one), and writes nothing. A SelfSubjectRulesReview is
//! documented as incomplete (webhook authorizers) and not for authorization decisions; a
//! `limit=1` list would prove `list` only, never `watch` or `create`.
//!
//! The decisions are pure ([`needs`], [`refusal`]); [`denied`] asks the API server.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

/// One permission the operator needs: `verb` on `resource` of API group `group` (`""`:
/// core), in `namespace` (`None`: every namespace), on the object `name` only when set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Need {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Need {
    fn new(verb: &'static str, group: &'static str, resource: &'static str) -> Self {
        Self {
            verb,
            group,
            resource,
            namespace: None,
            name: None,
        }
    }

    fn review(&self) -> SelfSubjectAccessReview {
        SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(self.verb.into()),
                    group: Some(self.group.into()),
                    resource: Some(self.resource.into()),
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        }
    }
}

/// The permissions without which the operator cannot work at all, for a start that watches
/// `namespace` (`None`: all) and, with leader election, campaigns for the Lease `(namespace,
/// name)`: list and watch of CraneReplicaSets, pods and Services (its caches), events
/// create (how it tells the objects), and the Lease's create, get and update. A missing
/// write verb (pods create, say) still shows on each object it concerns, as a condition
/// and an event.
pub fn needs(namespace: Option<&str>, lease: Option<(&str, &str)>) -> Vec<Need> {
    let in_watched = |mut need: Need| {
        need.namespace = namespace.map(str::to_string);
        need
    };
    let mut needs = Vec::new();
    for (group, resource) in [
        ("crane.dev", "cranereplicasets"),
        ("", "pods"),
        ("", "services"),
    ] {
        for verb in ["list", "watch"] {
            needs.push(in_watched(Need::new(verb, group, resource)));
        }
    }
    needs.push(in_watched(Need::new("create", "events.k8s.io", "events")));
    if let Some((lease_namespace, lease_name)) = lease {
        for (verb, name) in [
            ("create", None),
            ("get", Some(lease_name)),
            ("update", Some(lease_name)),
        ] {
            needs.push(Need {
                namespace: Some(lease_namespace.to_string()),
                name: name.map(str::to_string),
                ..Need::new(verb, "coordination.k8s.io", "leases")
            });
        }
    }
    needs
}

/// Where one Role rule applies: (group, resource, namespace, object name).
type RuleKey<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>);

/// A need that the API server denied, with the authorizer's reason when it gave one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub need: Need,
    pub reason: String,
}

/// Asks the API server about each need (all at once); returns the denied ones, in order.
/// An error means the answer is unknown, not that anything is denied.
pub async fn denied(client: &Client, needs: &[Need]) -> Result<Vec<Denied>, kube::Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answers = futures::future::try_join_all(
        needs
            .iter()
            .map(|need| async { api.create(&PostParams::default(), &need.review()).await }),
    )
    .await?;
    Ok(needs
        .iter()
        .zip(answers)
        .filter_map(|(need, answer)| {
            let status = answer.status.unwrap_or_default();
            (!status.allowed).then(|| Denied {
                need: need.clone(),
                reason: status
                    .reason
                    .filter(|r| !r.is_empty())
                    .or(status.evaluation_error)
                    .unwrap_or_default(),
            })
        })
        .collect())
}

/// Who the API server takes the operator for (`kubectl auth whoami`), if it says.
pub async fn whoami(client: &Client) -> Option<String> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .ok()?;
    review.status?.user_info?.username
}

/// The error a start refused for `denied` ends with: what is missing, for whom, and the
/// Role rules that grant it.
pub fn refusal(denied: &[Denied], user: Option<&str>) -> String {
    // One rule per (group, resource, namespace, name), its verbs in the order needed.
    let mut rules: BTreeMap<RuleKey, Vec<&str>> = BTreeMap::new();
    for d in denied {
        let n = &d.need;
        rules
            .entry((
                n.group,
                n.resource,
                n.namespace.as_deref(),
                n.name.as_deref(),
            ))
            .or_default()
            .push(n.verb);
    }
    let who = user.map_or_else(|| "the operator's identity".to_string(), str::to_string);
    let mut text = format!(
        "{who} may not {}; the operator cannot work without it. Grant it (the Helm chart's \
         rbac.create and manifests/rbac.yaml do) and start again; the rules:",
        denied
            .iter()
            .map(|d| {
                let n = &d.need;
                let what = match &n.name {
                    Some(name) => format!("{} {name}", n.resource.trim_end_matches('s')),
                    None => n.resource.to_string(),
                };
                let group = if n.group.is_empty() { "core" } else { n.group };
                let where_ = match &n.namespace {
                    Some(ns) => format!("in namespace {ns}"),
                    None => "in all namespaces".to_string(),
                };
                let why = if d.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", d.reason)
                };
                format!("{} {what} ({group}) {where_}{why}", n.verb)
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    for ((group, resource, namespace, name), verbs) in rules {
        let kind = if namespace.is_some() && name.is_some() {
            "a Role in namespace"
        } else if namespace.is_some() {
            "a Role (or a ClusterRole bound there) in namespace"
        } else {
            "a ClusterRole with a ClusterRoleBinding"
        };
        let _ = write!(
            text,
            "\n  {kind}{}: {{apiGroups: [\"{group}\"], resources: [\"{resource}\"], {}verbs: [{}]}}",
            namespace.map(|ns| format!(" {ns}")).unwrap_or_default(),
            name.map(|n| format!("resourceNames: [\"{n}\"], "))
                .unwrap_or_default(),
            verbs
                .iter()
                .map(|v| format!("\"{v}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verbs_on(needs: &[Need], resource: &str) -> Vec<&'static str> {
        needs
            .iter()
            .filter(|n| n.resource == resource)
            .map(|n| n.verb)
            .collect()
    }

    #[test]
    fn a_start_needs_its_caches_its_events_and_with_election_its_lease() {
        let needs = needs(Some("shop"), None);
        for resource in ["cranereplicasets", "pods", "services"] {
            assert_eq!(verbs_on(&needs, resource), ["list", "watch"], "{resource}");
        }
        assert_eq!(verbs_on(&needs, "events"), ["create"]);
        assert!(
            verbs_on(&needs, "leases").is_empty(),
            "no election, no Lease"
        );
        assert!(
            needs
                .iter()
                .all(|n| n.namespace.as_deref() == Some("shop") && n.name.is_none())
        );

        let needs = super::needs(None, Some(("crane-system", "crane-operator-leader")));
        assert!(
            needs
                .iter()
                .filter(|n| n.resource != "leases")
                .all(|n| n.namespace.is_none()),
            "all namespaces: the review asks cluster-wide"
        );
        let lease: Vec<_> = needs
            .iter()
            .filter(|n| n.resource == "leases")
            .map(|n| (n.verb, n.namespace.as_deref(), n.name.as_deref()))
            .collect();
        assert_eq!(
            lease,
            [
                ("create", Some("crane-system"), None),
                ("get", Some("crane-system"), Some("crane-operator-leader")),
                (
                    "update",
                    Some("crane-system"),
                    Some("crane-operator-leader")
                ),
            ]
        );
    }

    #[test]
    fn a_refusal_names_each_denied_verb_and_the_rule_that_grants_it() {
        let needs = needs(Some("shop"), Some(("ops", "crane-operator-leader")));
        let deny = |verb: &str, resource: &str, reason: &str| Denied {
            need: needs
                .iter()
                .find(|n| n.verb == verb && n.resource == resource)
                .cloned()
                .expect("a need"),
            reason: reason.into(),
        };
        let denied = [
            deny("list", "pods", ""),
            deny("watch", "pods", ""),
            deny("update", "leases", "no RBAC policy matched"),
        ];
        let text = refusal(&denied, Some("system:serviceaccount:ops:crane"));
        assert!(
            text.starts_with(
                "system:serviceaccount:ops:crane may not list pods (core) in namespace shop, \
                 watch pods (core) in namespace shop, update lease crane-operator-leader \
                 (coordination.k8s.io) in namespace ops (no RBAC policy matched)"
            ),
            "{text}"
        );
        assert!(text.contains("rbac.create"), "{text}");
        assert!(
            text.contains(
                "a Role (or a ClusterRole bound there) in namespace shop: {apiGroups: [\"\"], \
                 resources: [\"pods\"], verbs: [\"list\", \"watch\"]}"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "a Role in namespace ops: {apiGroups: [\"coordination.k8s.io\"], resources: \
                 [\"leases\"], resourceNames: [\"crane-operator-leader\"], verbs: [\"update\"]}"
            ),
            "{text}"
        );

        let all = super::needs(None, None);
        let denied = [Denied {
            need: all[0].clone(),
            reason: String::new(),
        }];
        let text = refusal(&denied, None);
        assert!(
            text.starts_with(
                "the operator's identity may not list cranereplicasets (crane.dev) in all namespaces"
            ),
            "{text}"
        );
        assert!(
            text.contains("a ClusterRole with a ClusterRoleBinding: {apiGroups: [\"crane.dev\"]"),
            "{text}"
        );
    }
}
