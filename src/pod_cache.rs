//! The controller's pod cache: per namespace, the [`PodFacts`] of each pod, read once when
//! its watch event arrives.
//!
//! A reconcile pass needs only the pods it may act on (its own and the orphans of its
//! namespace), not a copy of every pod watched; and a `PodFacts` is a fraction of the size
//! of even a slimmed `Pod`. It follows the watch as kube's reflector store does: a (re)list
//! is collected on the side and replaces the contents when it is complete.
//!
//! Each event returns what it changed in the contents ([`Change`]), so the controller
//! learns of pods only once a pass can read them; a relist reports its whole difference
//! when it completes, deletions missed while the watch was down included (what
//! client-go's informers deliver as `DeletedFinalStateUnknown`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::pods::{Controller, PodFacts};

type Namespaces = HashMap<String, NamespacePods>;

/// The pods of one namespace by name, indexed by controller: a pass reads its own pods and
/// the orphans without walking the pods of every other object (as kube-controller-manager's
/// `FilterPodsByOwner` reads its controller-UID and orphan indexes).
#[derive(Default)]
struct NamespacePods {
    by_name: HashMap<String, Arc<PodFacts>>,
    /// Names of the pods each controller (by UID) controls.
    by_controller: HashMap<String, HashSet<String>>,
    /// Names of the pods no controller has.
    orphans: HashSet<String>,
}

impl NamespacePods {
    fn index(&mut self, name: &str, pod: &PodFacts) {
        let names = match &pod.controller {
            Controller::None => &mut self.orphans,
            Controller::Uid(uid) => self.by_controller.entry(uid.clone()).or_default(),
        };
        names.insert(name.to_string());
    }

    fn unindex(&mut self, name: &str, pod: &PodFacts) {
        match &pod.controller {
            Controller::None => {
                self.orphans.remove(name);
            }
            Controller::Uid(uid) => {
                if let Some(names) = self.by_controller.get_mut(uid) {
                    names.remove(name);
                    if names.is_empty() {
                        self.by_controller.remove(uid);
                    }
                }
            }
        }
    }

    fn insert(&mut self, name: String, pod: Arc<PodFacts>) -> Option<Arc<PodFacts>> {
        let before = self.by_name.insert(name.clone(), pod.clone());
        if let Some(before) = &before {
            self.unindex(&name, before);
        }
        self.index(&name, &pod);
        before
    }

    fn remove(&mut self, name: &str) -> Option<Arc<PodFacts>> {
        let before = self.by_name.remove(name)?;
        self.unindex(name, &before);
        Some(before)
    }

    fn get(&self, name: &str) -> Option<&Arc<PodFacts>> {
        self.by_name.get(name)
    }
}

#[derive(Default)]
struct State {
    namespaces: Namespaces,
    /// During a (re)list: what it has returned so far.
    relist: Option<Namespaces>,
}

/// Shared by the pod watch (which writes) and every reconcile pass (which read).
pub struct PodCache {
    state: RwLock<State>,
    ready: watch::Sender<bool>,
}

impl Default for PodCache {
    fn default() -> Self {
        PodCache {
            state: RwLock::default(),
            ready: watch::Sender::new(false),
        }
    }
}

/// One pod whose cached facts changed: before and after (`None`: not cached). A pod
/// replaced by another of the same name is one change with two UIDs.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub namespace: String,
    pub before: Option<Arc<PodFacts>>,
    pub after: Option<Arc<PodFacts>>,
}

fn insert(
    namespaces: &mut Namespaces,
    pod: &Pod,
) -> (String, Option<Arc<PodFacts>>, Arc<PodFacts>) {
    let ns = pod.namespace().unwrap_or_default();
    let facts = Arc::new(PodFacts::from_pod(pod));
    let before = namespaces
        .entry(ns.clone())
        .or_default()
        .insert(pod.name_any(), facts.clone());
    (ns, before, facts)
}

/// What differs between two contents, pod by pod.
fn difference(old: &Namespaces, new: &Namespaces) -> Vec<Change> {
    let mut changes = Vec::new();
    for (ns, pods) in new {
        let old_pods = old.get(ns);
        for (name, after) in &pods.by_name {
            let before = old_pods.and_then(|p| p.get(name));
            if before.is_none_or(|b| b != after) {
                changes.push(Change {
                    namespace: ns.clone(),
                    before: before.cloned(),
                    after: Some(after.clone()),
                });
            }
        }
    }
    for (ns, pods) in old {
        let new_pods = new.get(ns);
        for (name, before) in &pods.by_name {
            if new_pods.is_none_or(|p| p.get(name).is_none()) {
                changes.push(Change {
                    namespace: ns.clone(),
                    before: Some(before.clone()),
                    after: None,
                });
            }
        }
    }
    changes
}

impl PodCache {
    /// Takes one event of the pod watch; returns what it changed in the contents that
    /// passes read (nothing until a relist completes, then all it changed).
    pub fn apply(&self, event: &watcher::Event<Pod>) -> Vec<Change> {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Init => {
                state.relist = Some(Namespaces::new());
                Vec::new()
            }
            watcher::Event::InitApply(pod) => {
                insert(state.relist.get_or_insert_default(), pod);
                Vec::new()
            }
            watcher::Event::InitDone => {
                let new = state.relist.take().unwrap_or_default();
                let changes = difference(&state.namespaces, &new);
                state.namespaces = new;
                self.ready.send_replace(true);
                changes
            }
            watcher::Event::Apply(pod) => {
                let (namespace, before, after) = insert(&mut state.namespaces, pod);
                if before.as_ref() == Some(&after) {
                    return Vec::new();
                }
                vec![Change {
                    namespace,
                    before,
                    after: Some(after),
                }]
            }
            watcher::Event::Delete(pod) => {
                let ns = pod.namespace().unwrap_or_default();
                let Some(pods) = state.namespaces.get_mut(&ns) else {
                    return Vec::new();
                };
                let before = pods.remove(&pod.name_any());
                if pods.by_name.is_empty() {
                    state.namespaces.remove(&ns);
                }
                before
                    .map(|before| Change {
                        namespace: ns,
                        before: Some(before),
                        after: None,
                    })
                    .into_iter()
                    .collect()
            }
        }
    }

    /// The pods of `namespace` that the CraneReplicaSet with `uid` may act on: those it
    /// controls and those no controller has (to adopt). Pods of other controllers are
    /// never its business.
    pub fn candidates(&self, namespace: &str, uid: &str) -> Vec<PodFacts> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        let Some(pods) = state.namespaces.get(namespace) else {
            return Vec::new();
        };
        pods.by_controller
            .get(uid)
            .into_iter()
            .flatten()
            .chain(&pods.orphans)
            .filter_map(|name| pods.by_name.get(name))
            .map(|p| PodFacts::clone(p))
            .collect()
    }

    /// Pods cached, in every namespace.
    pub fn len(&self) -> usize {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state.namespaces.values().map(|p| p.by_name.len()).sum()
    }

    /// Entries of the indexes, in every namespace: controllers with pods, and orphans.
    pub fn index_len(&self) -> usize {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state
            .namespaces
            .values()
            .map(|p| p.by_controller.len() + p.orphans.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first list is complete (later ones are relists).
    pub fn is_synced(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once the first list is complete.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, owner: Option<&str>) -> Pod {
        let owners: Vec<_> = owner
            .map(|uid| {
                json!({"apiVersion": "crane.dev/v1", "kind": "CraneReplicaSet",
                "name": "crane", "uid": uid, "controller": true})
            })
            .into_iter()
            .collect();
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns,
            "uid": format!("uid-{name}"), "ownerReferences": owners}}))
        .unwrap()
    }

    fn names(mut pods: Vec<PodFacts>) -> Vec<String> {
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        pods.into_iter().map(|p| p.name).collect()
    }

    #[test]
    fn candidates_are_own_pods_and_orphans_of_the_namespace() {
        let cache = PodCache::default();
        cache.apply(&watcher::Event::Apply(pod("a", "mine", Some("u1"))));
        cache.apply(&watcher::Event::Apply(pod("a", "orphan", None)));
        cache.apply(&watcher::Event::Apply(pod("a", "theirs", Some("u2"))));
        cache.apply(&watcher::Event::Apply(pod("b", "elsewhere", Some("u1"))));
        assert_eq!(names(cache.candidates("a", "u1")), ["mine", "orphan"]);
        cache.apply(&watcher::Event::Delete(pod("a", "mine", Some("u1"))));
        assert_eq!(names(cache.candidates("a", "u1")), ["orphan"]);
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn the_controller_index_follows_adoption_release_relists_and_replacement() {
        let cache = PodCache::default();
        cache.apply(&watcher::Event::Apply(pod("a", "p", None)));
        assert_eq!(names(cache.candidates("a", "u1")), ["p"]);
        // Adopted by u2: not u1's business any more.
        cache.apply(&watcher::Event::Apply(pod("a", "p", Some("u2"))));
        assert!(cache.candidates("a", "u1").is_empty());
        assert_eq!(names(cache.candidates("a", "u2")), ["p"]);
        // Released, then adopted by u1.
        cache.apply(&watcher::Event::Apply(pod("a", "p", None)));
        cache.apply(&watcher::Event::Apply(pod("a", "p", Some("u1"))));
        assert!(cache.candidates("a", "u2").is_empty());
        assert_eq!(names(cache.candidates("a", "u1")), ["p"]);
        // A relist in which the pod belongs to u2 again and u1 has another.
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(pod("a", "p", Some("u2"))),
            watcher::Event::InitApply(pod("a", "q", Some("u1"))),
            watcher::Event::InitDone,
        ] {
            cache.apply(&event);
        }
        assert_eq!(names(cache.candidates("a", "u1")), ["q"]);
        assert_eq!(names(cache.candidates("a", "u2")), ["p"]);
        cache.apply(&watcher::Event::Delete(pod("a", "q", Some("u1"))));
        assert!(cache.candidates("a", "u1").is_empty());
        assert_eq!(cache.len(), 1);
    }

    /// (name, UID before, UID after) of each change, sorted.
    fn summary(changes: Vec<Change>) -> Vec<(String, Option<String>, Option<String>)> {
        let name = |c: &Change| {
            c.after
                .as_ref()
                .or(c.before.as_ref())
                .map(|p| p.name.clone())
        };
        let mut rows: Vec<_> = changes
            .iter()
            .map(|c| {
                let uid = |p: &Option<Arc<PodFacts>>| p.as_ref().map(|p| p.uid.clone());
                (name(c).unwrap_or_default(), uid(&c.before), uid(&c.after))
            })
            .collect();
        rows.sort();
        rows
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn events_report_what_they_changed() {
        let cache = PodCache::default();
        let add = watcher::Event::Apply(pod("a", "p", Some("u1")));
        assert_eq!(
            summary(cache.apply(&add)),
            [("p".into(), None, some("uid-p"))]
        );
        assert_eq!(
            summary(cache.apply(&add)),
            [],
            "the same facts again change nothing"
        );
        let del = watcher::Event::Delete(pod("a", "p", Some("u1")));
        assert_eq!(
            summary(cache.apply(&del)),
            [("p".into(), some("uid-p"), None)]
        );
        assert_eq!(
            summary(cache.apply(&del)),
            [],
            "a pod not cached is no change"
        );
    }

    #[tokio::test]
    async fn a_relist_replaces_the_contents_when_complete_and_reports_the_difference() {
        let cache = PodCache::default();
        for name in ["kept", "gone"] {
            cache.apply(&watcher::Event::Apply(pod("a", name, Some("u1"))));
        }
        assert_eq!(cache.apply(&watcher::Event::Init), []);
        for name in ["kept", "new"] {
            let listed = watcher::Event::InitApply(pod("a", name, Some("u1")));
            assert_eq!(
                cache.apply(&listed),
                [],
                "reported once the list is complete"
            );
        }
        // Until the list is complete, the old contents serve.
        assert_eq!(names(cache.candidates("a", "u1")), ["gone", "kept"]);
        let changes = cache.apply(&watcher::Event::InitDone);
        assert_eq!(names(cache.candidates("a", "u1")), ["kept", "new"]);
        assert_eq!(
            summary(changes),
            [
                ("gone".into(), some("uid-gone"), None),
                ("new".into(), None, some("uid-new")),
            ],
            "a pod deleted while the watch was down is reported gone"
        );
        cache.wait_until_ready().await;
    }
}
