//! What the bench sees through watches: pods appearing and turning Ready (with the time
//! of each watch event), and the writes to a namespace, by writer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, WatchEvent, WatchParams};
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

impl Describe for Pods {
    fn describe(&self) -> String {
        format!(
            "pods seen {}, active {}, ready {}",
            self.first_seen.len(),
            self.active(),
            self.ready
        )
    }
}

/// What a watched state says about itself when a wait on it times out.
pub trait Describe {
    fn describe(&self) -> String;
}

/// State kept up to date from a watch in the background, and waits on it.
pub struct Watched<S> {
    state: Arc<Mutex<S>>,
    changed: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

/// Watches the pods of one namespace in the background.
pub type PodTracker = Watched<Pods>;

/// How a long wait shows that it moves: a line every `every`, and a failure when the
/// measure (e.g. pods created) has not changed for `stall`.
pub struct Progress<'a, S> {
    pub every: Duration,
    pub stall: Duration,
    /// (a number that grows while the wait makes progress, the line to print).
    pub measure: &'a (dyn Fn(&S) -> (u64, String) + Sync),
    pub print: &'a (dyn Fn(String) + Sync),
}

impl<S: Describe + Send + 'static> Watched<S> {
    /// Applies every item of `events` to `state` in the background (with the time it
    /// arrived), then tells the waiters.
    pub fn spawn<E: Send + 'static>(
        state: S,
        events: impl futures::Stream<Item = E> + Send + 'static,
        apply: impl Fn(&mut S, E, Instant) + Send + 'static,
    ) -> Self {
        let state = Arc::new(Mutex::new(state));
        let (tx, changed) = watch::channel(0u64);
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                apply(&mut shared.lock().unwrap(), event, Instant::now());
                tx.send_modify(|g| *g += 1);
            }
        });
        Self {
            state,
            changed,
            task,
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.state.lock().unwrap())
    }

    /// Waits until `done` holds, or fails after `timeout` saying what it saw.
    pub async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&S) -> bool,
    ) -> Result<()> {
        self.wait_reporting(what, timeout, done, None).await
    }

    /// [`Watched::wait`], printing progress and failing early when it stalls.
    pub async fn wait_reporting(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&S) -> bool,
        progress: Option<Progress<'_, S>>,
    ) -> Result<()> {
        let start = tokio::time::Instant::now();
        let deadline = start + timeout;
        let mut changed = self.changed.clone();
        let first_line = start + progress.as_ref().map_or(Duration::ZERO, |p| p.every);
        let (mut last, mut moved_at, mut next_line) = (None, start, first_line);
        loop {
            changed.borrow_and_update();
            if self.with(&done) {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            let mut wake = deadline;
            if let Some(p) = &progress {
                let (measure, line) = self.with(p.measure);
                if last != Some(measure) {
                    (last, moved_at) = (Some(measure), now);
                }
                if now >= next_line {
                    (p.print)(line);
                    next_line = now + p.every;
                }
                if now - moved_at > p.stall {
                    bail!(
                        "no progress for {:?} waiting for {what} ({})",
                        p.stall,
                        self.with(S::describe)
                    );
                }
                wake = wake.min(next_line);
            }
            match tokio::time::timeout_at(wake, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("the watch ended while waiting for {what}"),
                Err(_) if tokio::time::Instant::now() >= deadline => bail!(
                    "timed out after {timeout:?} waiting for {what} ({})",
                    self.with(S::describe)
                ),
                Err(_) => {}
            }
        }
    }
}

impl Watched<Pods> {
    /// Starts the watch and returns once its initial list is in.
    pub async fn start(client: &Client, ns: &str) -> Result<Self> {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let events = watcher(api, watcher::Config::default()).default_backoff();
        let tracker = Self::spawn(Pods::default(), events, |s, event, now| {
            let Ok(event) = event else { return };
            match event {
                watcher::Event::Init => s.relist = Some(HashSet::new()),
                watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => s.apply(&pod, now),
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
        });
        tracker
            .wait("the pod watch to sync", Duration::from_secs(60), |p| {
                p.synced
            })
            .await?;
        Ok(tracker)
    }
}

impl<S> Drop for Watched<S> {
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
    /// The resources whose watch broke off during the window (their counts are short).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<&'static str>,
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
            lost: self.lost.clone(),
        }
    }
}

/// (manager, operation, time) of each managedFields entry.
type Fields = Vec<(String, String, String)>;

/// Who made a write: the managers whose managedFields entries are new or changed since
/// `prev`; when none changed (two writes by one manager within the second that the field
/// times resolve) or nothing was known before, the managers with the latest time. Several
/// are joined with `+`.
fn writer(prev: Option<&Fields>, cur: &Fields) -> String {
    let mut who: Vec<&str> = match prev {
        Some(prev) => cur
            .iter()
            .filter(|e| !prev.contains(e))
            .map(|(m, _, _)| m.as_str())
            .collect(),
        None => Vec::new(),
    };
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

/// The managedFields of an object, plus its binding (`node_name`).
fn fields(meta: &ObjectMeta, node_name: Option<&str>) -> Fields {
    let mut fields: Fields = meta
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
    if let Some(node) = node_name {
        fields.push((
            "kube-scheduler (binding)".into(),
            String::new(),
            node.into(),
        ));
    }
    fields
}

type Tally = Arc<Mutex<BTreeMap<String, u64>>>;
/// The resources whose watch broke off, so that their writes were not all counted.
type Lost = Arc<Mutex<Vec<&'static str>>>;

fn count(tally: &Tally, key: String) {
    *tally.lock().unwrap().entry(key).or_insert(0) += 1;
}

/// The writes to the objects of one resource, by writer: what each object looked like
/// last (its managedFields, whether deletionTimestamp was set), by UID.
struct Authors {
    resource: &'static str,
    last: HashMap<String, (Fields, bool)>,
    tally: Tally,
}

impl Authors {
    /// An object as it was before the count started.
    fn known(&mut self, meta: &ObjectMeta, node_name: Option<&str>) {
        let uid = meta.uid.clone().unwrap_or_default();
        let deleting = meta.deletion_timestamp.is_some();
        self.last.insert(uid, (fields(meta, node_name), deleting));
    }

    /// A write: a create when `created`, otherwise an update.
    fn wrote(&mut self, meta: &ObjectMeta, node_name: Option<&str>, created: bool) {
        let uid = meta.uid.clone().unwrap_or_default();
        let f = fields(meta, node_name);
        let deleting = meta.deletion_timestamp.is_some();
        let before = self.last.get(&uid);
        let verb = if created { "create" } else { "update" };
        // A DELETE of a pod with a grace period is seen as an update that sets
        // deletionTimestamp and changes no managedFields: the API server's, not a PATCH by
        // the pod's last field manager. (An object not seen before that is being deleted is
        // taken for one too: watched from now on, the first sign of a DELETE.)
        let who = match before {
            Some((prev, false)) if deleting && *prev == f => {
                "the API server (deletionTimestamp of a DELETE)".to_string()
            }
            None if deleting && !created => {
                "the API server (deletionTimestamp of a DELETE)".to_string()
            }
            _ => writer(before.map(|(f, _)| f), &f),
        };
        count(&self.tally, format!("{} {verb} by {who}", self.resource));
        self.last.insert(uid, (f, deleting));
    }

    fn deleted(&mut self, meta: &ObjectMeta) {
        self.last.remove(meta.uid.as_deref().unwrap_or_default());
        count(&self.tally, format!("{} delete", self.resource));
    }
}

/// The component that wrote an event.
fn reporter(e: &CoreEvent) -> String {
    e.reporting_component
        .clone()
        .filter(|c| !c.is_empty())
        .or_else(|| e.source.as_ref().and_then(|s| s.component.clone()))
        .unwrap_or_else(|| "?".into())
}

/// Counts the writes to pods, to the owner objects (`owner`) and to events in a namespace,
/// from when [`WriteCounter::start`] (or [`WriteCounter::start_now`]) returns until
/// [`WriteCounter::stop`].
pub struct WriteCounter {
    writes: Tally,
    lost: Lost,
    tasks: Vec<JoinHandle<()>>,
    started: Instant,
}

impl WriteCounter {
    /// Lists the namespace's objects first, so that each later write is told apart from
    /// the state before it.
    pub async fn start(client: &Client, ns: &str, owner: &ApiResource) -> Result<Self> {
        let (writes, lost) = (Tally::default(), Lost::default());
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(3);
        let mut tasks = Vec::new();
        for (resource, ar) in [
            ("pods", ApiResource::erase::<Pod>(&())),
            (owner_plural(owner), owner.clone()),
        ] {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let ready = ready_tx.clone();
            let mut authors = Authors {
                resource,
                last: HashMap::new(),
                tally: writes.clone(),
            };
            tasks.push(tokio::spawn(async move {
                let mut synced = false;
                let mut events = watcher(api, watcher::Config::default())
                    .default_backoff()
                    .boxed();
                let node = |o: &DynamicObject| {
                    o.data
                        .pointer("/spec/nodeName")
                        .and_then(|n| n.as_str())
                        .map(str::to_string)
                };
                while let Some(Ok(event)) = events.next().await {
                    match event {
                        watcher::Event::InitApply(o) => {
                            authors.known(&o.metadata, node(&o).as_deref())
                        }
                        watcher::Event::InitDone => {
                            if !synced {
                                synced = true;
                                let _ = ready.send(()).await;
                            }
                        }
                        watcher::Event::Init => {}
                        watcher::Event::Apply(o) => {
                            let created = !authors
                                .last
                                .contains_key(o.metadata.uid.as_deref().unwrap_or_default());
                            authors.wrote(&o.metadata, node(&o).as_deref(), created)
                        }
                        watcher::Event::Delete(o) => authors.deleted(&o.metadata),
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
                            let verb = if known.insert(e.uid().unwrap_or_default()) {
                                "create"
                            } else {
                                "update"
                            };
                            count(&writes, format!("events {verb} by {}", reporter(&e)));
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
            lost,
            tasks,
            started: Instant::now(),
        })
    }

    /// Watches from the namespace's current resourceVersion, without listing first: for a
    /// namespace too large to list for every window (a fleet). Pods and owners are watched
    /// as metadata; an update of an object not written since the start is credited to the
    /// managers of its latest managedFields entries, and bindings are not seen.
    pub async fn start_now(client: &Client, ns: &str, owner: &ApiResource) -> Result<Self> {
        let (writes, lost) = (Tally::default(), Lost::default());
        let mut tasks = Vec::new();
        for (resource, ar) in [
            ("pods", ApiResource::erase::<Pod>(&())),
            (owner_plural(owner), owner.clone()),
        ] {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let mut authors = Authors {
                resource,
                last: HashMap::new(),
                tally: writes.clone(),
            };
            let version = current_version(&api).await?;
            let lost = lost.clone();
            tasks.push(tokio::spawn(async move {
                watch_from(
                    version,
                    &lost,
                    resource,
                    |wp, v| {
                        let api = api.clone();
                        async move { api.watch_metadata(&wp, &v).await.map(StreamExt::boxed) }
                    },
                    |event| match event {
                        WatchEvent::Added(o) => {
                            authors.wrote(&o.metadata, None, true);
                            o.metadata.resource_version
                        }
                        WatchEvent::Modified(o) => {
                            authors.wrote(&o.metadata, None, false);
                            o.metadata.resource_version
                        }
                        WatchEvent::Deleted(o) => {
                            authors.deleted(&o.metadata);
                            o.metadata.resource_version
                        }
                        WatchEvent::Bookmark(b) => Some(b.metadata.resource_version),
                        WatchEvent::Error(_) => None,
                    },
                )
                .await
            }));
        }
        let api: Api<CoreEvent> = Api::namespaced(client.clone(), ns);
        let version = current_version(&api).await?;
        let (tally, lost_events) = (writes.clone(), lost.clone());
        tasks.push(tokio::spawn(async move {
            watch_from(
                version,
                &lost_events,
                "events",
                |wp, v| {
                    let api = api.clone();
                    async move { api.watch(&wp, &v).await.map(StreamExt::boxed) }
                },
                |event| {
                    let (verb, e) = match event {
                        WatchEvent::Added(e) => ("create", e),
                        WatchEvent::Modified(e) => ("update", e),
                        WatchEvent::Deleted(e) => return e.metadata.resource_version,
                        WatchEvent::Bookmark(b) => return Some(b.metadata.resource_version),
                        WatchEvent::Error(_) => return None,
                    };
                    count(&tally, format!("events {verb} by {}", reporter(&e)));
                    e.metadata.resource_version
                },
            )
            .await
        }));
        Ok(Self {
            writes,
            lost,
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
            lost: self.lost.lock().unwrap().clone(),
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

/// The resourceVersion of a list of the collection now: a watch from it sees every later
/// write.
async fn current_version<K>(api: &Api<K>) -> Result<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list_metadata(&ListParams::default().limit(1)).await?;
    list.metadata
        .resource_version
        .ok_or_else(|| anyhow::anyhow!("a list without a resourceVersion"))
}

/// Watches from `version` on, resuming from the last version seen whenever the API server
/// ends the watch; `on` handles an event and returns its resourceVersion. A watch that
/// cannot resume (its version compacted away) is noted in `lost`.
async fn watch_from<T, S, F>(
    mut version: String,
    lost: &Lost,
    resource: &'static str,
    open: impl Fn(WatchParams, String) -> F,
    mut on: impl FnMut(WatchEvent<T>) -> Option<String>,
) where
    S: futures::Stream<Item = kube::Result<WatchEvent<T>>> + Unpin,
    F: std::future::Future<Output = kube::Result<S>>,
{
    loop {
        let params = WatchParams::default().timeout(290);
        let Ok(mut events) = open(params, version.clone()).await else {
            lost.lock().unwrap().push(resource);
            return;
        };
        while let Some(event) = events.next().await {
            match event {
                Ok(WatchEvent::Error(_)) | Err(_) => {
                    lost.lock().unwrap().push(resource);
                    return;
                }
                Ok(event) => {
                    if let Some(v) = on(event) {
                        version = v;
                    }
                }
            }
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

/// kube-apiserver's requests by "VERB resource[/subresource]": (count, seconds spent), from
/// its `apiserver_request_duration_seconds` histogram (every client, WATCH left out: a watch
/// lasts as long as its client keeps it).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ApiRequests(pub BTreeMap<String, (f64, f64)>);

impl ApiRequests {
    /// kube-apiserver's `apiserver_request_duration_seconds`, by verb and resource.
    pub fn parse(metrics: &str) -> Self {
        Self::histogram(metrics, "apiserver_request_duration_seconds", |label| {
            let (verb, resource, sub) = (label("verb"), label("resource"), label("subresource"));
            if verb == "WATCH" || resource.is_empty() {
                return None;
            }
            Some(match sub.as_str() {
                "" => format!("{verb} {resource}"),
                sub => format!("{verb} {resource}/{sub}"),
            })
        })
    }

    /// A client's request latency histogram by verb: crane-operator's
    /// `crane_operator_api_request_duration_seconds`, client-go's
    /// `rest_client_request_duration_seconds`.
    pub fn client(metrics: &str, name: &str) -> Self {
        Self::histogram(metrics, name, |label| {
            Some(label("verb")).filter(|v| !v.is_empty())
        })
    }

    /// The sums and counts of histogram `name`, added up by `key` of their labels.
    fn histogram(
        metrics: &str,
        name: &str,
        key: impl Fn(&dyn Fn(&str) -> String) -> Option<String>,
    ) -> Self {
        let mut by = BTreeMap::new();
        for line in metrics.lines() {
            let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('_')) else {
                continue;
            };
            let (count, rest) = match rest.split_once('{') {
                Some(("sum", r)) => (false, r),
                Some(("count", r)) => (true, r),
                _ => continue,
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches('"').to_string())
                    .unwrap_or_default()
            };
            let Some(key) = key(&label) else {
                continue;
            };
            let v: f64 = value.trim().parse().unwrap_or(0.0);
            let entry: &mut (f64, f64) = by.entry(key).or_default();
            if count { entry.0 += v } else { entry.1 += v }
        }
        Self(by)
    }

    /// The requests since `before`.
    pub fn since(&self, before: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(k, (n, t))| {
                    let (n0, t0) = before.0.get(k).copied().unwrap_or_default();
                    (k.clone(), (n - n0, t - t0))
                })
                .filter(|(_, (n, _))| *n > 0.0)
                .collect(),
        )
    }

    /// "POST pods 1000 (26.0 ms), ..." for the resources of a run (all when empty), the
    /// most frequent first.
    pub fn summary(&self, resources: &[&str]) -> String {
        let mut rows: Vec<(&String, &(f64, f64))> = self
            .0
            .iter()
            .filter(|(k, _)| {
                let resource = k.split(' ').nth(1).unwrap_or("");
                resources.is_empty()
                    || resources
                        .iter()
                        .any(|r| resource.split('/').next() == Some(*r))
            })
            .collect();
        rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
        rows.iter()
            .map(|(k, (n, t))| format!("{k} {n:.0} ({:.1} ms)", 1000.0 * t / n.max(1.0)))
            .collect::<Vec<_>>()
            .join("; ")
    }
}
