//! The dashboard's HTML, rendered on the server from a snapshot of the watched objects:
//! pure functions, so that what a page says is tested without a browser.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use maud::{DOCTYPE, Markup, html};

use crate::api::{CraneReplicaSet, UpdateStrategyType};
use crate::decode::{Decoded, Undecodable};
use crate::diagnostics;
use crate::pods::{PodFacts, TEMPLATE_HASH_LABEL, template_hash};

/// The stylesheet and script, embedded in the binary (the page works offline).
pub const STYLE: &str = include_str!("assets/style.css");
pub const SCRIPT: &str = include_str!("assets/app.js");

/// Events shown on an object's page, newest first.
const EVENTS_SHOWN: usize = 20;

/// Which namespaces the dashboard shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    All,
}

impl Scope {
    /// The namespace watched, or None for all of them.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Scope::Namespace(ns) => Some(ns),
            Scope::All => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Scope::Namespace(ns) => format!("namespace {ns}"),
            Scope::All => "all namespaces".into(),
        }
    }
}

/// What the watches hold at one moment: each object decoded, or why it could not be.
pub struct Snapshot {
    pub scope: Scope,
    pub crs: Vec<Arc<Decoded<CraneReplicaSet>>>,
    pub pods: Vec<Arc<Decoded<Pod>>>,
    pub services: Vec<Arc<Decoded<Service>>>,
    pub events: Vec<Arc<Decoded<Event>>>,
    /// Watches that fail now, with their error: said on the page, which keeps what it had.
    pub errors: Vec<String>,
    /// Watches whose first list has not arrived yet.
    pub loading: Vec<&'static str>,
    pub now: Timestamp,
}

/// The objects of `all` that decoded.
fn readable<K>(all: &[Arc<Decoded<K>>]) -> impl Iterator<Item = &K> {
    all.iter().filter_map(|d| match d.as_ref() {
        Decoded::Ok(k) => Some(k),
        Decoded::Undecodable(_) => None,
    })
}

/// The objects of `all` that did not decode.
fn unreadable<K>(all: &[Arc<Decoded<K>>]) -> impl Iterator<Item = &Undecodable> {
    all.iter().filter_map(|d| match d.as_ref() {
        Decoded::Ok(_) => None,
        Decoded::Undecodable(u) => Some(u.as_ref()),
    })
}

/// Whether `meta` names `ns`/`name`.
fn named(meta: &ObjectMeta, ns: &str, name: &str) -> bool {
    meta.namespace.as_deref() == Some(ns) && meta.name.as_deref() == Some(name)
}

/// Whether `meta`'s object is controlled by `crs` (by its UID, as the controller counts).
fn controlled_by(meta: &ObjectMeta, crs: &CraneReplicaSet) -> bool {
    let uid = crs.uid();
    meta.namespace == crs.namespace()
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

impl Snapshot {
    fn find(&self, ns: &str, name: &str) -> Option<&CraneReplicaSet> {
        readable(&self.crs).find(|c| named(&c.metadata, ns, name))
    }

    fn find_unreadable(&self, ns: &str, name: &str) -> Option<&Undecodable> {
        unreadable(&self.crs).find(|u| named(&u.meta, ns, name))
    }

    /// The pods `crs` controls, by name.
    fn pods_of(&self, crs: &CraneReplicaSet) -> Vec<&Pod> {
        let mut pods: Vec<&Pod> = readable(&self.pods)
            .filter(|p| controlled_by(&p.metadata, crs))
            .collect();
        pods.sort_by_key(|p| p.name_any());
        pods
    }

    /// The pods `crs` controls that cannot be read, by name.
    fn unreadable_pods_of(&self, crs: &CraneReplicaSet) -> Vec<&Undecodable> {
        let mut pods: Vec<&Undecodable> = unreadable(&self.pods)
            .filter(|p| controlled_by(&p.meta, crs))
            .collect();
        pods.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        pods
    }

    fn service_of(&self, crs: &CraneReplicaSet) -> Result<Option<&Service>, &Undecodable> {
        if let Some(bad) = unreadable(&self.services).find(|u| controlled_by(&u.meta, crs)) {
            return Err(bad);
        }
        Ok(readable(&self.services).find(|s| controlled_by(&s.metadata, crs)))
    }

    /// Events about `crs`, its pods and its Service, newest first.
    fn events_of(
        &self,
        crs: &CraneReplicaSet,
        pods: &[&Pod],
        service: Option<&Service>,
    ) -> Vec<&Event> {
        let mut uids: Vec<String> = pods.iter().filter_map(|p| p.uid()).collect();
        uids.extend(crs.uid());
        uids.extend(service.and_then(|s| s.uid()));
        let mut events: Vec<&Event> = readable(&self.events)
            .filter(|e| e.metadata.namespace == crs.namespace())
            .filter(|e| {
                e.regarding
                    .as_ref()
                    .and_then(|r| r.uid.as_ref())
                    .is_some_and(|uid| uids.contains(uid))
            })
            .collect();
        events.sort_by_key(|e| std::cmp::Reverse(event_time(e)));
        events.truncate(EVENTS_SHOWN);
        events
    }
}

/// When an event last happened: its series' last observation, its time, or its creation.
pub fn event_time(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// An age as `kubectl get` prints it (apimachinery's `duration.HumanDuration`).
pub fn age(since: Option<Timestamp>, now: Timestamp) -> String {
    let Some(since) = since else {
        return "<unknown>".into();
    };
    let secs = (now - since).get_seconds().max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 120 => format!("{s}s"),
        _ if m < 10 => match secs % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        },
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => match m % 60 {
            0 => format!("{h}h"),
            m => format!("{h}h{m}m"),
        },
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => match h % 24 {
            0 => format!("{d}d"),
            h => format!("{d}d{h}h"),
        },
        _ if d < 365 * 2 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

fn created(obj: &impl ResourceExt) -> Option<Timestamp> {
    obj.meta().creation_timestamp.as_ref().map(|t| t.0)
}

/// The page around a view: `live` is the path of its server-sent updates.
pub fn page(title: &str, scope: &Scope, live: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · crane-operator dashboard" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/app.js" defer {}
            }
            body data-live=(live) {
                header {
                    a.brand href="/" { "crane-operator" }
                    span.scope { (scope.describe()) }
                    span #connection role="status" aria-live="polite" { "connecting…" }
                    button #theme type="button" aria-label="Switch between light and dark" { "Dark" }
                }
                div #notice role="alert" hidden {}
                main #view { (body) }
                dialog #confirm {
                    form method="dialog" {
                        p #confirm-text {}
                        menu {
                            button value="cancel" type="submit" { "Cancel" }
                            button #confirm-ok value="ok" type="submit" { "Confirm" }
                        }
                    }
                }
            }
        }
    }
}

/// What the watches cannot say right now.
fn trouble(s: &Snapshot) -> Markup {
    html! {
        @for error in &s.errors {
            p.error role="alert" { "Cannot watch: " (error) " (showing what was last seen; retrying)" }
        }
        @if !s.loading.is_empty() {
            p.loading { "Loading " (s.loading.join(", ")) "…" }
        }
    }
}

/// An address as a link to the book's `curl`, other values as they are.
fn external_ip(value: &str, port: i32) -> Markup {
    html! {
        @for (i, part) in value.split(',').enumerate() {
            @if i > 0 { ", " }
            @if part.parse::<std::net::IpAddr>().is_ok() || (part.contains('.') && !part.starts_with('<')) {
                @let host = if part.contains(':') { format!("[{part}]") } else { part.to_string() };
                a href=(format!("http://{host}:{port}")) { (part) }
            } @else {
                (part)
            }
        }
    }
}

/// Every CraneReplicaSet, as `kubectl get crs` lists them.
pub fn overview(s: &Snapshot) -> Markup {
    let mut crs: Vec<&Decoded<CraneReplicaSet>> = s.crs.iter().map(AsRef::as_ref).collect();
    crs.sort_by_key(|c| (c.namespace(), c.name_any()));
    let all = s.scope == Scope::All;
    html! {
        h1 { "CraneReplicaSets" }
        (trouble(s))
        @if crs.is_empty() && s.loading.is_empty() {
            p.empty {
                "No CraneReplicaSets in " (s.scope.describe()) ". Create one with "
                code { "kubectl apply -f manifests/examples/crane.yaml" } "."
            }
        } @else {
            table #crs {
                thead { tr {
                    @if all { th { "NAMESPACE" } }
                    th { "NAME" } th.num { "DESIRED" } th.num { "CURRENT" } th.num { "READY" }
                    th.num { "AVAILABLE" } th { "EXTERNAL-IP" } th { "STATUS" } th { "ISSUE" } th { "AGE" }
                } }
                tbody {
                    @for d in crs {
                        @match d {
                            Decoded::Ok(c) => { (crs_row(c, all, s.now)) }
                            Decoded::Undecodable(bad) => { (unreadable_row(bad, all, s.now)) }
                        }
                    }
                }
            }
        }
    }
}

/// One CraneReplicaSet's row of the overview.
fn crs_row(c: &CraneReplicaSet, all: bool, now: Timestamp) -> Markup {
    let ns = c.namespace().unwrap_or_default();
    html! {
        @let st = c.status.clone().unwrap_or_default();
        @let issue = st.pod_issues.first();
        tr data-name=(c.name_any()) data-namespace=(ns) {
            @if all { td { (ns) } }
            td { a id=(format!("open-{ns}-{}", c.name_any())) href=(format!("/crs/{ns}/{}", c.name_any())) { (c.name_any()) } }
            td.num.desired { (c.spec.replicas) }
            td.num.current { (st.replicas) }
            td.num.ready { (st.ready_replicas) }
            td.num.available { (st.available_replicas) }
            td.external-ip { (external_ip(st.service.as_ref().map_or("<none>", |x| x.external_ip.as_str()), c.spec.service.port)) }
            td.status { (summary(c)) }
            td.issue {
                @if let Some(i) = issue {
                    strong.reason { (i.reason) } " (" (i.count) ") "
                    span.hint { (i.hint) }
                }
            }
            td { (age(created(c), now)) }
        }
    }
}

/// A CraneReplicaSet the dashboard cannot read, as a row that says why.
fn unreadable_row(bad: &Undecodable, all: bool, now: Timestamp) -> Markup {
    let ns = bad.meta.namespace.clone().unwrap_or_default();
    let name = bad.meta.name.clone().unwrap_or_default();
    html! {
        tr.unreadable data-name=(name) data-namespace=(ns) {
            @if all { td { (ns) } }
            td { a id=(format!("open-{ns}-{name}")) href=(format!("/crs/{ns}/{name}")) { (name) } }
            td colspan="5" {}
            td.status { "Unreadable" }
            td.issue { (cannot_read(bad)) }
            td { (age(bad.meta.creation_timestamp.as_ref().map(|t| t.0), now)) }
        }
    }
}

/// Why an object cannot be read: the field that failed and serde's reason.
fn cannot_read(bad: &Undecodable) -> Markup {
    html! {
        strong.reason { "cannot be read" } ": " code.field { (bad.field) } ": " span.hint { (bad.error) }
    }
}

/// One word for the object's state, from its kstatus conditions.
pub fn summary(c: &CraneReplicaSet) -> &'static str {
    let st = c.status.as_ref();
    let current = st.and_then(|s| s.observed_generation) == c.metadata.generation;
    let is = |t: &str| {
        st.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|x| x.type_ == t && x.status == "True")
        })
    };
    if c.metadata.deletion_timestamp.is_some() {
        "Deleting"
    } else if !current {
        "Progressing"
    } else if is("Stalled") {
        "Stalled"
    } else if is("Ready") {
        "Ready"
    } else {
        "Progressing"
    }
}

/// A pod's STATUS as `kubectl get pods` shows it: Terminating, the reason it is not
/// ready, or its phase.
pub fn pod_status(p: &Pod, facts: &PodFacts) -> String {
    if facts.terminating {
        return "Terminating".into();
    }
    if let Some(issue) = &facts.issue {
        return issue.reason.clone();
    }
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into())
}

/// A pod's READY as `kubectl get pods` shows it: ready containers of all.
pub fn ready_count(p: &Pod) -> String {
    let containers = p.spec.as_ref().map_or(0, |s| s.containers.len());
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| cs.iter().filter(|c| c.ready).count());
    format!("{ready}/{containers}")
}

/// One CraneReplicaSet: counts, actions, pods, Service, conditions, rollout and events.
pub fn detail(s: &Snapshot, ns: &str, name: &str) -> Markup {
    let Some(c) = s.find(ns, name) else {
        return html! {
            h1 { "CraneReplicaSet " (ns) "/" (name) }
            (trouble(s))
            @if let Some(bad) = s.find_unreadable(ns, name) {
                p.error #unreadable {
                    "This CraneReplicaSet " (cannot_read(bad)) ". Fix it with "
                    code { "kubectl edit cranereplicaset " (name) " -n " (ns) }
                    "; until then crane-operator leaves it alone."
                }
            } @else if s.loading.is_empty() {
                p.empty { "There is no CraneReplicaSet " (name) " in namespace " (ns) " (any more). "
                    a href="/" { "All CraneReplicaSets" } }
            }
        };
    };
    let st = c.status.clone().unwrap_or_default();
    let pods = s.pods_of(c);
    let unreadable_pods = s.unreadable_pods_of(c);
    let service = s.service_of(c);
    let events = s.events_of(c, &pods, service.ok().flatten());
    let hash = template_hash(c);
    let active: Vec<&&Pod> = pods
        .iter()
        .filter(|p| PodFacts::from_pod(p).is_active())
        .collect();
    let updated = active
        .iter()
        .filter(|p| p.labels().get(TEMPLATE_HASH_LABEL) == Some(&hash))
        .count();
    let rolling = c.spec.update_strategy.type_ == UpdateStrategyType::RollingUpdate;
    html! {
        h1 { "CraneReplicaSet " span.name { (name) } }
        (trouble(s))
        dl.counts {
            dt { "Status" } dd #summary { (summary(c)) }
            dt { "Desired" } dd #desired { (c.spec.replicas) }
            dt { "Current" } dd #current { (st.replicas) }
            dt { "Ready" } dd #ready { (st.ready_replicas) }
            dt { "Available" } dd #available { (st.available_replicas) }
            dt { "Rollout" } dd #rollout {
                (updated) " of " (active.len()) " pods updated"
                @if active.len() > updated { ", " (active.len() - updated) " outdated" }
                " (" (if rolling { "RollingUpdate" } else { "OnDelete" }) ")"
            }
            dt { "Age" } dd { (age(created(c), s.now)) }
        }
        @if let Some(i) = st.pod_issues.first() {
            p.issue #top-issue { strong.reason { (i.reason) } " on " (i.count) " pod(s): " span.hint { (i.hint) } }
        }
        section #actions aria-label="Actions" {
            form #scale data-namespace=(ns) data-name=(name) {
                label for="replicas" { "Replicas" }
                input #replicas type="number" min="0" name="replicas" value=(c.spec.replicas) required;
                button #scale-submit type="submit" { "Scale" }
            }
            @let refused = crate::restart::refused(c);
            button #restart type="button" data-namespace=(ns) data-name=(name) disabled[refused.is_some()]
                title=(refused.as_deref().unwrap_or("Replace every pod, a few at a time")) { "Restart" }
        }
        h2 { "Pods" }
        @if pods.is_empty() && unreadable_pods.is_empty() {
            p.empty { "No pods." }
        } @else {
            table #pods {
                thead { tr {
                    th { "NAME" } th { "STATUS" } th { "READY" } th.num { "RESTARTS" } th { "NODE" }
                    th { "IP" } th { "REVISION" } th { "AGE" } th { "ISSUE" } th { span.visually-hidden { "ACTIONS" } }
                } }
                tbody {
                    @for p in &pods {
                        @let facts = PodFacts::from_pod(p);
                        @let current = p.labels().get(TEMPLATE_HASH_LABEL) == Some(&hash);
                        tr data-pod=(facts.name) data-status=(pod_status(p, &facts)) {
                            td { (facts.name) }
                            td.status { (pod_status(p, &facts)) }
                            td { (ready_count(p)) }
                            td.num { (facts.restarts) }
                            td { (facts.node_name.clone().unwrap_or_else(|| "<none>".into())) }
                            td { (p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_else(|| "<none>".into())) }
                            td { (if current { "updated" } else { "outdated" }) }
                            td { (age(facts.created, s.now)) }
                            td.issue {
                                @if let Some(i) = &facts.issue {
                                    strong.reason { (i.reason) } " " span.hint { (diagnostics::hint(&i.reason, &facts.name)) }
                                }
                            }
                            td {
                                @if !facts.terminating {
                                    button.delete-pod type="button" id=(format!("delete-{}", facts.name))
                                        data-namespace=(ns) data-pod=(facts.name) data-uid=(facts.uid) { "Delete" }
                                }
                            }
                        }
                    }
                    @for bad in &unreadable_pods {
                        @let pod = bad.meta.name.clone().unwrap_or_default();
                        // Deleting it is one way out: its CraneReplicaSet makes a readable one.
                        tr.unreadable data-pod=(pod) data-status="Unreadable" {
                            td { (pod) }
                            td.status { "Unreadable" }
                            td colspan="5" {}
                            td { (age(bad.meta.creation_timestamp.as_ref().map(|t| t.0), s.now)) }
                            td.issue { (cannot_read(bad)) }
                            td {
                                @if bad.meta.deletion_timestamp.is_none() {
                                    button.delete-pod type="button" id=(format!("delete-{pod}"))
                                        data-namespace=(ns) data-pod=(pod) data-uid=[bad.meta.uid.as_deref()] { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Service" }
        (service_view(c, service, &st))
        h2 { "Conditions" }
        table #conditions {
            thead { tr { th { "TYPE" } th { "STATUS" } th { "REASON" } th { "MESSAGE" } th { "SINCE" } } }
            tbody {
                @for cond in &st.conditions {
                    tr data-type=(cond.type_) {
                        td { (cond.type_) } td { (cond.status) } td { (cond.reason) } td { (cond.message) }
                        td { (age(Some(cond.last_transition_time.0), s.now)) }
                    }
                }
            }
        }
        h2 { "Events" }
        @if events.is_empty() {
            p.empty { "No events." }
        } @else {
            table #events {
                thead { tr { th { "LAST SEEN" } th { "TYPE" } th { "REASON" } th { "OBJECT" } th { "MESSAGE" } } }
                tbody {
                    @for e in &events {
                        tr {
                            td { (age(event_time(e), s.now)) }
                            td { (e.type_.clone().unwrap_or_default()) }
                            td { (e.reason.clone().unwrap_or_default()) }
                            td { (e.regarding.as_ref().map(|r| format!("{}/{}", r.kind.clone().unwrap_or_default().to_lowercase(), r.name.clone().unwrap_or_default())).unwrap_or_default()) }
                            td { (e.note.clone().unwrap_or_default())
                                @if let Some(series) = &e.series { " (×" (series.count) ")" } }
                        }
                    }
                }
            }
        }
    }
}

fn service_view(
    c: &CraneReplicaSet,
    service: Result<Option<&Service>, &Undecodable>,
    st: &crate::api::CraneReplicaSetStatus,
) -> Markup {
    if !c.spec.service.enabled {
        return html! { p.empty { "No Service (spec.service.enabled is false)." } };
    }
    let service = match service {
        Ok(service) => service,
        Err(bad) => {
            return html! {
                p.error #service { "The Service " (bad.meta.name.clone().unwrap_or_default()) " " (cannot_read(bad)) }
            };
        }
    };
    let failure = st
        .conditions
        .iter()
        .find(|x| x.type_ == crate::status::SERVICE_FAILURE && x.status == "True");
    let Some(svc) = service else {
        return html! {
            @if let Some(f) = failure {
                p.error { strong.reason { (f.reason) } ": " (f.message) }
            } @else {
                p.empty { "The Service is not there yet." }
            }
        };
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let external = st
        .service
        .as_ref()
        .map_or("<pending>", |x| x.external_ip.as_str());
    html! {
        dl.service #service {
            dt { "Name" } dd { (svc.name_any()) }
            dt { "Type" } dd { (spec.type_.clone().unwrap_or_default()) }
            dt { "Ports" } dd {
                @for (i, port) in spec.ports.iter().flatten().enumerate() {
                    @if i > 0 { ", " }
                    (port.port) " → "
                    (port.target_port.as_ref().map(|t| match t {
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n.to_string(),
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
                    }).unwrap_or_else(|| port.port.to_string()))
                    "/" (port.protocol.clone().unwrap_or_else(|| "TCP".into()))
                }
            }
            dt { "Cluster IP" } dd { (spec.cluster_ip.clone().unwrap_or_else(|| "<none>".into())) }
            dt { "External IP" } dd { (external_ip(external, c.spec.service.port)) }
        }
        @if let Some(f) = failure {
            p.error { strong.reason { (f.reason) } ": " (f.message) }
        }
    }
}

/// For tests: markup as a string.
pub fn text(m: Markup) -> String {
    m.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-11-30T12:00:00Z".parse().unwrap()
    }

    fn crs(name: &str, replicas: i32) -> CraneReplicaSet {
        serde_json::from_value(json!({
            "apiVersion": "crane.dev/v1", "kind": "CraneReplicaSet",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "generation": 1,
                         "creationTimestamp": "2026-11-30T11:55:00Z"},
            "spec": {"replicas": replicas, "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"containers": [{"name": "app", "image": "localhost/crane-app:dev"}]}}},
            "status": {"observedGeneration": 1, "replicas": 2, "readyReplicas": 1, "availableReplicas": 1,
                       "service": {"name": name, "type": "LoadBalancer", "externalIP": "172.31.250.193"},
                       "podIssues": [{"reason": "ImagePullBackOff", "count": 1, "examplePod": format!("{name}-abcde"),
                                      "message": "Back-off", "hint": "the nodes cannot pull the image"}]}
        }))
        .unwrap()
    }

    fn pod(name: &str, owner: &CraneReplicaSet) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "creationTimestamp": "2026-11-30T11:59:00Z"},
            "spec": {"containers": [{"name": "app", "image": "x"}], "nodeName": "crane-node-0"},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "app", "image": "x", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}
        }))
        .unwrap();
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "crane.dev/v1".into(),
            kind: "CraneReplicaSet".into(),
            name: owner.name_any(),
            uid: owner.uid().unwrap(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        p
    }

    fn snapshot(crs: Vec<CraneReplicaSet>, pods: Vec<Pod>) -> Snapshot {
        Snapshot {
            scope: Scope::Namespace("default".into()),
            crs: crs.into_iter().map(|c| Arc::new(Decoded::Ok(c))).collect(),
            pods: pods.into_iter().map(|p| Arc::new(Decoded::Ok(p))).collect(),
            services: vec![],
            events: vec![],
            errors: vec![],
            loading: vec![],
            now: now(),
        }
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let ago = |secs: i64| age(Some(now() - jiff::SignedDuration::from_secs(secs)), now());
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(119), "119s");
        assert_eq!(ago(150), "2m30s");
        assert_eq!(ago(600), "10m");
        assert_eq!(ago(3 * 3600 + 120), "3h2m");
        assert_eq!(ago(9 * 3600), "9h");
        assert_eq!(ago(3 * 86400 + 3600), "3d1h");
        assert_eq!(ago(30 * 86400), "30d");
        assert_eq!(age(None, now()), "<unknown>");
    }

    #[test]
    fn the_overview_lists_counts_address_link_and_top_issue() {
        let html = text(overview(&snapshot(vec![crs("crane", 3)], vec![])));
        assert!(
            html.contains(r#"<a id="open-default-crane" href="/crs/default/crane">crane</a>"#),
            "{html}"
        );
        assert!(html.contains(r#"<td class="num desired">3</td>"#), "{html}");
        assert!(html.contains(r#"<td class="num ready">1</td>"#), "{html}");
        assert!(
            html.contains(r#"<a href="http://172.31.250.193:8080">172.31.250.193</a>"#),
            "{html}"
        );
        assert!(html.contains("ImagePullBackOff"), "{html}");
        assert!(html.contains("the nodes cannot pull the image"), "{html}");
        assert!(html.contains("<td>5m</td>"), "{html}");
        assert!(
            !html.contains("NAMESPACE"),
            "one namespace: no NAMESPACE column: {html}"
        );
    }

    #[test]
    fn an_empty_namespace_says_how_to_start() {
        let html = text(overview(&snapshot(vec![], vec![])));
        assert!(
            html.contains("No CraneReplicaSets in namespace default"),
            "{html}"
        );
    }

    #[test]
    fn pending_addresses_and_names_are_not_links() {
        assert_eq!(text(external_ip("<pending>", 8080)), "&lt;pending&gt;");
        assert_eq!(
            text(external_ip("fd00::1", 8080)),
            r#"<a href="http://[fd00::1]:8080">fd00::1</a>"#
        );
    }

    #[test]
    fn the_detail_shows_the_pods_it_controls_with_their_issue_and_hint() {
        let c = crs("crane", 1);
        let mine = pod("crane-abcde", &c);
        let other = pod("other-fghij", &crs("other", 1));
        let html = text(detail(
            &snapshot(vec![c], vec![mine, other]),
            "default",
            "crane",
        ));
        assert!(html.contains(r#"data-pod="crane-abcde""#), "{html}");
        assert!(
            !html.contains("other-fghij"),
            "another object's pod: {html}"
        );
        assert!(html.contains("ImagePullBackOff"), "{html}");
        assert!(html.contains("crane-node-0"), "{html}");
        assert!(html.contains("0 of 1 pods updated, 1 outdated"), "{html}");
        assert!(
            html.contains(r#"id="restart""#) && html.contains("disabled"),
            "OnDelete: restart disabled: {html}"
        );
    }

    /// `name`, which did not decode at `field`, controlled by `owner` if given.
    fn bad<K>(name: &str, field: &str, owner: Option<&CraneReplicaSet>) -> Arc<Decoded<K>> {
        let meta: ObjectMeta = serde_json::from_value(json!({
            "name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "creationTimestamp": "2026-11-30T11:58:00Z",
            "ownerReferences": owner.map(|o| vec![json!({"apiVersion": "crane.dev/v1",
                "kind": "CraneReplicaSet", "name": o.name_any(), "uid": o.uid(), "controller": true})]),
        }))
        .unwrap();
        Arc::new(Decoded::Undecodable(Box::new(Undecodable {
            meta,
            field: field.into(),
            error: "converting datetime to timestamp overflowed".into(),
            pruned: None,
        })))
    }

    #[test]
    fn an_unreadable_object_is_a_row_that_says_why_and_its_page_too() {
        let mut s = snapshot(vec![crs("crane", 3)], vec![]);
        s.crs.push(bad(
            "poison",
            "spec.template.metadata.creationTimestamp",
            None,
        ));
        let html = text(overview(&s));
        assert!(html.contains(r#"<tr data-name="crane""#), "{html}");
        let row = &html[html
            .find(r#"<tr class="unreadable" data-name="poison""#)
            .expect(&html)..];
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(
            row.contains(r#"<td class="status">Unreadable</td>"#),
            "{row}"
        );
        assert!(
            row.contains("cannot be read")
                && row.contains("spec.template.metadata.creationTimestamp")
                && row.contains("overflowed"),
            "{row}"
        );
        assert!(row.contains(r#"href="/crs/default/poison""#), "{row}");
        assert!(
            row.contains("<td>2m</td>"),
            "its age, from its metadata: {row}"
        );

        let page = text(detail(&s, "default", "poison"));
        assert!(
            page.contains("This CraneReplicaSet <strong class=\"reason\">cannot be read</strong>"),
            "{page}"
        );
        assert!(
            page.contains("kubectl edit cranereplicaset poison -n default"),
            "{page}"
        );
        assert!(!page.contains("There is no CraneReplicaSet"), "{page}");
    }

    #[test]
    fn an_unreadable_pod_or_service_is_shown_with_why_and_the_pod_can_be_deleted() {
        let c = crs("crane", 2);
        let mut s = snapshot(vec![c.clone()], vec![pod("crane-abcde", &c)]);
        s.pods
            .push(bad("crane-fghij", "status.startTime", Some(&c)));
        s.pods.push(bad("other-klmno", "status.startTime", None));
        s.services
            .push(bad("crane", "metadata.creationTimestamp", Some(&c)));
        let html = text(detail(&s, "default", "crane"));
        assert!(html.contains(r#"data-pod="crane-abcde""#), "{html}");
        let row = &html[html
            .find(r#"<tr class="unreadable" data-pod="crane-fghij" data-status="Unreadable""#)
            .expect(&html)..];
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(row.contains("status.startTime"), "{row}");
        assert!(
            row.contains(r#"data-pod="crane-fghij" data-uid="uid-crane-fghij""#),
            "its Delete button: {row}"
        );
        assert!(
            !html.contains("other-klmno"),
            "another object's pod: {html}"
        );
        assert!(
            html.contains("The Service crane <strong class=\"reason\">cannot be read</strong>"),
            "{html}"
        );
    }

    #[test]
    fn a_missing_object_says_so() {
        let html = text(detail(&snapshot(vec![], vec![]), "default", "gone"));
        assert!(
            html.contains("There is no CraneReplicaSet gone in namespace default"),
            "{html}"
        );
    }

    #[test]
    fn watch_failures_are_said_and_the_last_view_kept() {
        let mut s = snapshot(vec![crs("crane", 3)], vec![]);
        s.errors = vec!["pods: forbidden".into()];
        let html = text(overview(&s));
        assert!(html.contains("Cannot watch: pods: forbidden"), "{html}");
        assert!(html.contains("/crs/default/crane"), "{html}");
    }

    #[test]
    fn events_are_newest_first() {
        let c = crs("crane", 1);
        let event = |reason: &str, at: &str| -> Arc<Decoded<Event>> {
            Arc::new(Decoded::Ok(Event {
                metadata: kube::api::ObjectMeta {
                    namespace: Some("default".into()),
                    ..Default::default()
                },
                reason: Some(reason.into()),
                event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                    at.parse().unwrap(),
                )),
                regarding: Some(k8s_openapi::api::core::v1::ObjectReference {
                    uid: c.uid(),
                    kind: Some("CraneReplicaSet".into()),
                    name: Some("crane".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }))
        };
        let mut s = snapshot(vec![c.clone()], vec![]);
        s.events = vec![
            event("Older", "2026-11-30T11:56:00Z"),
            event("Newer", "2026-11-30T11:58:00Z"),
        ];
        let html = text(detail(&s, "default", "crane"));
        let (newer, older) = (html.find("Newer").unwrap(), html.find("Older").unwrap());
        assert!(newer < older, "{html}");
    }
}
