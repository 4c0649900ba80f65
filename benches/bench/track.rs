//! What the bench sees through watches: pods appearing and turning Ready (with the time
//! of each watch event), and the writes to a namespace, by writer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Debug)]
pub struct PodState {
    pub name: String,
    pub ready: bool,
    pub terminating: bool,
}

#[derive(Default)]
pub struct Pods {
    /// Pods that exist now, by UID.
    pub present: HashMap<String, PodState>,
    /// When the watch first showed each pod (UID).
    pub first_seen: HashMap<String, Instant>,
    /// Pods Ready and not terminating.
    pub ready: usize,
    /// (time of the watch event, pods Ready after it), at every change.
    pub timeline: Vec<(Instant, usize)>,
    pub synced: bool,
    relist: Option<HashSet<String>>,
}

impl Pods {
    fn apply(&mut self, pod: &Pod, now: Instant) {
        let uid = pod.uid().unwrap_or_default();
        if let Some(seen) = self.relist.as_mut() {
            seen.insert(uid.clone());
        }
        self.first_seen.entry(uid.clone()).or_insert(now);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = !terminating
            && pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        self.present.insert(
            uid,
            PodState {
                name: pod.name_any(),
                ready,
                terminating,
            },
        );
        self.recount(now);
    }

    fn recount(&mut self, now: Instant) {
        let ready = self.present.values().filter(|p| p.ready).count();
        if ready != self.ready {
            self.ready = ready;
            self.timeline.push((now, ready));
        }
    }

    /// When the ready count first reached `n`.
    pub fn ready_at(&self, n: usize) -> Option<Instant> {
        self.timeline.iter().find(|(_, c)| *c >= n).map(|(t, _)| *t)
    }

    /// When the watch had shown `n` distinct pods.
    pub fn seen_at(&self, n: usize) -> Option<Instant> {
        if n == 0 || self.first_seen.len() < n {
            return None;
        }
        let mut times: Vec<Instant> = self.first_seen.values().copied().collect();
        times.sort();
        Some(times[n - 1])
    }

    pub fn active(&self) -> usize {
        self.present.values().filter(|p| !p.terminating).count()
    }

    pub fn terminating(&self) -> usize {
        self.present.values().filter(|p| p.terminating).count()
    }
}

/// Watches the pods of one namespace in the background.
pub struct PodTracker {
    pods: Arc<Mutex<Pods>>,
    changed: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl PodTracker {
    /// Starts the watch and returns once its initial list is in.
    pub async fn start(client: &Client, ns: &str) -> Result<Self> {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let pods = Arc::new(Mutex::new(Pods::default()));
        let (tx, changed) = watch::channel(0u64);
        let state = pods.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let now = Instant::now();
                let Ok(event) = event else { continue };
                let mut s = state.lock().unwrap();
                match event {
                    watcher::Event::Init => s.relist = Some(HashSet::new()),
                    watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                        s.apply(&pod, now)
                    }
                    watcher::Event::Delete(pod) => {
                        s.present.remove(&pod.uid().unwrap_or_default());
                        s.recount(now);
                    }
                    watcher::Event::InitDone => {
                        if let Some(seen) = s.relist.take() {
                            s.present.retain(|uid, _| seen.contains(uid));
                            s.recount(now);
                        }
                        s.synced = true;
                    }
                }
                drop(s);
                tx.send_modify(|g| *g += 1);
            }
        });
        let tracker = Self {
            pods,
            changed,
            task,
        };
        tracker
            .wait("the pod watch to sync", Duration::from_secs(60), |p| {
                p.synced
            })
            .await?;
        Ok(tracker)
    }

    pub fn with<R>(&self, f: impl FnOnce(&Pods) -> R) -> R {
        f(&self.pods.lock().unwrap())
    }

    /// Waits until `done` holds for the pods, or fails after `timeout` saying what it saw.
    pub async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Pods) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changed = self.changed.clone();
        loop {
            changed.borrow_and_update();
            if self.with(&done) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                let (seen, active, ready) =
                    self.with(|p| (p.first_seen.len(), p.active(), p.ready));
                bail!(
                    "timed out after {timeout:?} waiting for {what} (pods seen {seen}, active {active}, ready {ready})"
                );
            }
        }
    }
}

impl Drop for PodTracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes seen in a namespace during a window: one watch event is one write.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Writes {
    /// "resource verb by writer" -> count, e.g. "pods create by crane-operator".
    pub by_writer: BTreeMap<String, u64>,
    pub total: u64,
    pub seconds: f64,
}

impl Writes {
    pub fn per_minute(&self) -> f64 {
        if self.seconds > 0.0 {
            self.total as f64 * 60.0 / self.seconds
        } else {
            0.0
        }
    }

    /// The writes in `self` that came after `earlier` (a snapshot of the same counter).
    pub fn minus(&self, earlier: &Writes) -> Writes {
        let mut by_writer = self.by_writer.clone();
        for (k, v) in &earlier.by_writer {
            if let Some(n) = by_writer.get_mut(k) {
                *n = n.saturating_sub(*v);
            }
        }
        by_writer.retain(|_, v| *v > 0);
        Writes {
            total: by_writer.values().sum(),
            by_writer,
            seconds: self.seconds - earlier.seconds,
        }
    }
}

/// (manager, operation, time) of each managedFields entry.
type Fields = Vec<(String, String, String)>;

/// Who made a write: the managers whose managedFields entries are new or changed since
/// `prev`; when none changed (two writes by one manager within the second that the field
/// times resolve), the managers with the latest time. Several are joined with `+`.
fn writer(prev: Option<&Fields>, cur: &Fields) -> String {
    let mut who: Vec<&str> = cur
        .iter()
        .filter(|e| prev.is_none_or(|p| !p.contains(e)))
        .map(|(m, _, _)| m.as_str())
        .collect();
    if who.is_empty() {
        let latest = cur.iter().map(|(_, _, t)| t).max();
        who = cur
            .iter()
            .filter(|(_, _, t)| Some(t) == latest)
            .map(|(m, _, _)| m.as_str())
            .collect();
    }
    who.sort();
    who.dedup();
    if who.is_empty() {
        "?".into()
    } else {
        who.join("+")
    }
}

fn fields(o: &DynamicObject) -> Fields {
    let mut fields: Fields = o
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|e| {
            let manager = match e.subresource.as_deref() {
                Some(sub) if !sub.is_empty() => {
                    format!("{} ({sub})", e.manager.as_deref().unwrap_or("?"))
                }
                _ => e.manager.clone().unwrap_or_else(|| "?".into()),
            };
            let time = e.time.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
            (manager, e.operation.clone().unwrap_or_default(), time)
        })
        .collect();
    // A binding sets spec.nodeName without a managedFields entry of its own.
    if let Some(node) = o.data.pointer("/spec/nodeName").and_then(|n| n.as_str()) {
        fields.push((
            "kube-scheduler (binding)".into(),
            String::new(),
            node.into(),
        ));
    }
    fields
}

/// Counts the writes to pods, to the owner objects (`owner`) and to events in a namespace,
/// from when [`WriteCounter::start`] returns until [`WriteCounter::stop`].
pub struct WriteCounter {
    writes: Arc<Mutex<BTreeMap<String, u64>>>,
    tasks: Vec<JoinHandle<()>>,
    started: Instant,
}

impl WriteCounter {
    pub async fn start(client: &Client, ns: &str, owner: &ApiResource) -> Result<Self> {
        let writes = Arc::new(Mutex::new(BTreeMap::new()));
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(3);
        let mut tasks = Vec::new();
        for (resource, ar) in [
            ("pods", ApiResource::erase::<Pod>(&())),
            (owner_plural(owner), owner.clone()),
        ] {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let (writes, ready) = (writes.clone(), ready_tx.clone());
            tasks.push(tokio::spawn(async move {
                // managedFields and whether deletionTimestamp was set, per object.
                let mut last: HashMap<String, (Fields, bool)> = HashMap::new();
                let mut synced = false;
                let mut events = watcher(api, watcher::Config::default())
                    .default_backoff()
                    .boxed();
                while let Some(Ok(event)) = events.next().await {
                    match event {
                        watcher::Event::InitApply(o) => {
                            let deleting = o.metadata.deletion_timestamp.is_some();
                            last.insert(o.uid().unwrap_or_default(), (fields(&o), deleting));
                        }
                        watcher::Event::InitDone => {
                            if !synced {
                                synced = true;
                                let _ = ready.send(()).await;
                            }
                        }
                        watcher::Event::Init => {}
                        watcher::Event::Apply(o) => {
                            let uid = o.uid().unwrap_or_default();
                            let f = fields(&o);
                            let deleting = o.metadata.deletion_timestamp.is_some();
                            let before = last.get(&uid);
                            let verb = if before.is_some() { "update" } else { "create" };
                            // A DELETE of a pod with a grace period is seen as an update
                            // that sets deletionTimestamp and changes no managedFields: the
                            // API server's, not a PATCH by the pod's last field manager.
                            let who = match before {
                                Some((prev, false)) if deleting && *prev == f => {
                                    "the API server (deletionTimestamp of a DELETE)".to_string()
                                }
                                _ => writer(before.map(|(f, _)| f), &f),
                            };
                            *writes
                                .lock()
                                .unwrap()
                                .entry(format!("{resource} {verb} by {who}"))
                                .or_insert(0) += 1;
                            last.insert(uid, (f, deleting));
                        }
                        watcher::Event::Delete(o) => {
                            last.remove(&o.uid().unwrap_or_default());
                            *writes
                                .lock()
                                .unwrap()
                                .entry(format!("{resource} delete"))
                                .or_insert(0) += 1;
                        }
                    }
                }
            }));
        }
        {
            let api: Api<CoreEvent> = Api::namespaced(client.clone(), ns);
            let (writes, ready) = (writes.clone(), ready_tx.clone());
            tasks.push(tokio::spawn(async move {
                let mut known: HashSet<String> = HashSet::new();
                let mut synced = false;
                let mut events = watcher(api, watcher::Config::default())
                    .default_backoff()
                    .boxed();
                while let Some(Ok(event)) = events.next().await {
                    match event {
                        watcher::Event::InitApply(e) => {
                            known.insert(e.uid().unwrap_or_default());
                        }
                        watcher::Event::InitDone => {
                            if !synced {
                                synced = true;
                                let _ = ready.send(()).await;
                            }
                        }
                        watcher::Event::Init | watcher::Event::Delete(_) => {}
                        watcher::Event::Apply(e) => {
                            let who = e
                                .reporting_component
                                .clone()
                                .filter(|c| !c.is_empty())
                                .or_else(|| e.source.as_ref().and_then(|s| s.component.clone()))
                                .unwrap_or_else(|| "?".into());
                            let verb = if known.insert(e.uid().unwrap_or_default()) {
                                "create"
                            } else {
                                "update"
                            };
                            *writes
                                .lock()
                                .unwrap()
                                .entry(format!("events {verb} by {who}"))
                                .or_insert(0) += 1;
                        }
                    }
                }
            }));
        }
        drop(ready_tx);
        let deadline = Duration::from_secs(60);
        for _ in 0..3 {
            match tokio::time::timeout(deadline, ready_rx.recv()).await {
                Ok(Some(())) => {}
                _ => bail!("the write-counting watches did not sync within {deadline:?}"),
            }
        }
        Ok(Self {
            writes,
            tasks,
            started: Instant::now(),
        })
    }

    /// The writes so far.
    pub fn snapshot(&self) -> Writes {
        let by_writer = self.writes.lock().unwrap().clone();
        Writes {
            total: by_writer.values().sum(),
            by_writer,
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }

    pub fn stop(self) -> Writes {
        let writes = self.snapshot();
        for t in &self.tasks {
            t.abort();
        }
        writes
    }
}

impl Drop for WriteCounter {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn owner_plural(ar: &ApiResource) -> &'static str {
    if ar.kind == "ReplicaSet" {
        "replicasets"
    } else {
        "cranereplicasets"
    }
}
