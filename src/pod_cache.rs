//! The controller's pod cache: per namespace, the [`PodFacts`] of each pod, read once when
//! its watch event arrives.
//!
//! A reconcile pass needs only the pods it may act on (its own and the orphans of its
//! namespace), not a copy of every pod watched; and a `PodFacts` is a fraction of the size
//! of even a slimmed `Pod`. It follows the watch as kube's reflector store does: a (re)list
//! is collected on the side and replaces the contents when it is complete.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::pods::{Controller, PodFacts};

type Namespaces = HashMap<String, HashMap<String, Arc<PodFacts>>>;

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

fn insert(namespaces: &mut Namespaces, pod: &Pod) {
    namespaces
        .entry(pod.namespace().unwrap_or_default())
        .or_default()
        .insert(pod.name_any(), Arc::new(PodFacts::from_pod(pod)));
}

impl PodCache {
    /// Takes one event of the pod watch.
    pub fn apply(&self, event: &watcher::Event<Pod>) {
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        match event {
            watcher::Event::Init => state.relist = Some(Namespaces::new()),
            watcher::Event::InitApply(pod) => insert(state.relist.get_or_insert_default(), pod),
            watcher::Event::InitDone => {
                state.namespaces = state.relist.take().unwrap_or_default();
                self.ready.send_replace(true);
            }
            watcher::Event::Apply(pod) => insert(&mut state.namespaces, pod),
            watcher::Event::Delete(pod) => {
                let ns = pod.namespace().unwrap_or_default();
                if let Some(pods) = state.namespaces.get_mut(&ns) {
                    pods.remove(&pod.name_any());
                    if pods.is_empty() {
                        state.namespaces.remove(&ns);
                    }
                }
            }
        }
    }

    /// The UID of the cached pod of this name, if there is one.
    pub fn uid(&self, namespace: &str, name: &str) -> Option<String> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        Some(state.namespaces.get(namespace)?.get(name)?.uid.clone())
    }

    /// The pods of `namespace` that the CraneReplicaSet with `uid` may act on: those it
    /// controls and those no controller has (to adopt). Pods of other controllers are
    /// never its business.
    pub fn candidates(&self, namespace: &str, uid: &str) -> Vec<PodFacts> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state
            .namespaces
            .get(namespace)
            .into_iter()
            .flat_map(|pods| pods.values())
            .filter(|p| match &p.controller {
                Controller::None => true,
                Controller::Uid(owner) => owner == uid,
            })
            .map(|p| PodFacts::clone(p))
            .collect()
    }

    /// Pods cached, in every namespace.
    pub fn len(&self) -> usize {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        state.namespaces.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        assert_eq!(cache.uid("a", "mine").as_deref(), Some("uid-mine"));
        cache.apply(&watcher::Event::Delete(pod("a", "mine", Some("u1"))));
        assert_eq!(names(cache.candidates("a", "u1")), ["orphan"]);
        assert_eq!(cache.len(), 3);
    }

    #[tokio::test]
    async fn a_relist_replaces_the_contents_when_complete() {
        let cache = PodCache::default();
        cache.apply(&watcher::Event::Apply(pod("a", "gone", Some("u1"))));
        cache.apply(&watcher::Event::Init);
        cache.apply(&watcher::Event::InitApply(pod("a", "new", Some("u1"))));
        // Until the list is complete, the old contents serve.
        assert_eq!(names(cache.candidates("a", "u1")), ["gone"]);
        cache.apply(&watcher::Event::InitDone);
        assert_eq!(names(cache.candidates("a", "u1")), ["new"]);
        cache.wait_until_ready().await;
    }
}
