//! What the bench sees of a fleet too large to copy: pod counts per owner from a
//! metadata-only watch, and the owners whose status is correct, each kept as counts and a
//! few bytes per object (no objects are cached).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;

use crate::track::{Describe, Watched};

/// A pod of the fleet: its controller (an index into [`Census::owners`]) and whether it is
/// being deleted.
#[derive(Clone, Copy)]
struct PodEntry {
    owner: Option<u32>,
    terminating: bool,
}

/// The pods of one namespace, counted.
#[derive(Default)]
pub struct Census {
    /// Pods by name.
    pods: HashMap<String, PodEntry>,
    /// Controller names, interned.
    owners: Vec<String>,
    owner_index: HashMap<String, u32>,
    /// Active (not terminating) pods per controller, by index.
    per_owner: Vec<usize>,
    /// Pods not terminating.
    pub active: usize,
    /// Pods the watch saw appear since its first list (creations).
    pub created: u64,
    /// Pods the watch saw go since its first list.
    pub deleted: u64,
    relist: Relist,
}

impl Census {
    fn owner(&mut self, pod: &PartialObjectMeta<Pod>) -> Option<u32> {
        let name = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))?
            .name
            .clone();
        let next = self.owners.len() as u32;
        let i = *self.owner_index.entry(name.clone()).or_insert(next);
        if i == next {
            self.owners.push(name);
            self.per_owner.push(0);
        }
        Some(i)
    }

    fn count(&mut self, e: PodEntry, by: isize) {
        if !e.terminating {
            self.active = self.active.saturating_add_signed(by);
            if let Some(o) = e.owner {
                let n = &mut self.per_owner[o as usize];
                *n = n.saturating_add_signed(by);
            }
        }
    }

    fn apply_pod(&mut self, pod: &PartialObjectMeta<Pod>, listing: bool) {
        let name = pod.name_any();
        let entry = PodEntry {
            owner: self.owner(pod),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        };
        match self.pods.insert(name, entry) {
            Some(before) => self.count(before, -1),
            None if !listing || self.relist.synced => self.created += 1,
            None => {}
        }
        self.count(entry, 1);
    }

    fn remove_pod(&mut self, name: &str) {
        if let Some(before) = self.pods.remove(name) {
            self.count(before, -1);
            self.deleted += 1;
        }
    }

    /// Active pods of the controller `owner`.
    pub fn owned_by(&self, owner: &str) -> usize {
        self.owner_index
            .get(owner)
            .map_or(0, |&i| self.per_owner[i as usize])
    }

    /// Every `nth` active pod in name order (owners' pods are named `<owner>-<suffix>`, so
    /// with `nth` = replicas this is about one pod of each owner).
    pub fn every_nth(&self, nth: usize) -> Vec<String> {
        let mut names: Vec<&String> = self
            .pods
            .iter()
            .filter(|(_, e)| !e.terminating)
            .map(|(n, _)| n)
            .collect();
        names.sort();
        names.into_iter().step_by(nth.max(1)).cloned().collect()
    }
}

impl Describe for Census {
    fn describe(&self) -> String {
        format!(
            "pods active {}, created {}, deleted {}",
            self.active, self.created, self.deleted
        )
    }
}

impl PerName for Census {
    type Object = PartialObjectMeta<Pod>;

    fn apply(&mut self, pod: &Self::Object, listing: bool) {
        self.apply_pod(pod, listing)
    }

    fn remove(&mut self, name: &str) {
        self.remove_pod(name)
    }

    fn names(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    fn relist(&mut self) -> &mut Relist {
        &mut self.relist
    }

    fn synced(&self) -> bool {
        self.relist.synced
    }
}

pub type PodCensus = Watched<Census>;

impl Watched<Census> {
    /// Counts the pods of `ns` from a metadata-only watch; returns once its list is in.
    pub async fn start(client: &Client, ns: &str) -> Result<Self> {
        follow(
            Api::namespaced(client.clone(), ns),
            "the pod census to sync",
        )
        .await
    }
}

/// The owner objects (CraneReplicaSets or ReplicaSets) of one namespace, and which of them
/// have a correct status: `observedGeneration` current and `replicas` == `spec.replicas`.
#[derive(Default)]
pub struct Owners {
    /// By name: (spec.replicas, status.replicas, status correct).
    objects: HashMap<String, (i64, i64, bool)>,
    pub correct: usize,
    relist: Relist,
}

impl Owners {
    fn apply_object(&mut self, o: &DynamicObject) {
        let name = o.name_any();
        let int = |path: &str| o.data.pointer(path).and_then(|v| v.as_i64());
        let (spec, status) = (
            int("/spec/replicas").unwrap_or(1),
            int("/status/replicas").unwrap_or(0),
        );
        let correct = int("/status/observedGeneration") == o.metadata.generation && spec == status;
        if let Some((_, _, was)) = self.objects.insert(name, (spec, status, correct)) {
            self.correct -= usize::from(was);
        }
        self.correct += usize::from(correct);
    }

    fn remove_object(&mut self, name: &str) {
        if let Some((_, _, was)) = self.objects.remove(name) {
            self.correct -= usize::from(was);
        }
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// The status of `name` is correct and says `replicas`.
    pub fn settled_at(&self, name: &str, replicas: i64) -> bool {
        self.objects
            .get(name)
            .is_some_and(|&(spec, _, ok)| ok && spec == replicas)
    }
}

impl Describe for Owners {
    fn describe(&self) -> String {
        format!(
            "objects {}, with a correct status {}",
            self.objects.len(),
            self.correct
        )
    }
}

impl PerName for Owners {
    type Object = DynamicObject;

    fn apply(&mut self, o: &Self::Object, _listing: bool) {
        self.apply_object(o)
    }

    fn remove(&mut self, name: &str) {
        self.remove_object(name)
    }

    fn names(&self) -> Vec<String> {
        self.objects.keys().cloned().collect()
    }

    fn relist(&mut self) -> &mut Relist {
        &mut self.relist
    }

    fn synced(&self) -> bool {
        self.relist.synced
    }
}

pub type OwnerCensus = Watched<Owners>;

impl Watched<Owners> {
    /// Watches the owner objects (`ar`) of `ns`; returns once its list is in.
    pub async fn start(client: &Client, ns: &str, ar: &ApiResource) -> Result<Self> {
        let api = Api::namespaced_with(client.clone(), ns, ar);
        follow(api, "the owner census to sync").await
    }
}

/// Where a (re)list stands: the names it has shown so far, and whether one completed.
#[derive(Default)]
struct Relist {
    seen: Option<HashSet<String>>,
    synced: bool,
}

/// A tally kept per object name from a watch; a relist replaces it as a whole, as kube's
/// reflector store does (objects it no longer shows are removed).
trait PerName: Describe + Default + Send + 'static {
    type Object: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static;

    /// An object listed (`listing`) or changed.
    fn apply(&mut self, o: &Self::Object, listing: bool);
    fn remove(&mut self, name: &str);
    fn names(&self) -> Vec<String>;
    fn relist(&mut self) -> &mut Relist;
    /// A first list completed.
    fn synced(&self) -> bool;
}

/// Keeps a [`PerName`] tally from a watch on `api`; returns once its first list is in.
async fn follow<S: PerName>(api: Api<S::Object>, what: &str) -> Result<Watched<S>> {
    let events = watcher(api, watcher::Config::default()).default_backoff();
    let tally = Watched::spawn(S::default(), events, |s: &mut S, event, _| {
        let Ok(event) = event else { return };
        match event {
            watcher::Event::Init => s.relist().seen = Some(HashSet::new()),
            watcher::Event::InitApply(o) => {
                if let Some(seen) = s.relist().seen.as_mut() {
                    seen.insert(o.name_any());
                }
                s.apply(&o, true)
            }
            watcher::Event::Apply(o) => s.apply(&o, false),
            watcher::Event::Delete(o) => s.remove(&o.name_any()),
            watcher::Event::InitDone => {
                if let Some(seen) = s.relist().seen.take() {
                    for name in s.names().into_iter().filter(|n| !seen.contains(n)) {
                        s.remove(&name);
                    }
                }
                s.relist().synced = true;
            }
        }
    });
    tally
        .wait(what, Duration::from_secs(300), |s: &S| s.synced())
        .await?;
    Ok(tally)
}
