//! Objects of a list or watch decoded one by one, so that one the types cannot hold never
//! stops the others.
//!
//! kube-runtime's watcher lists into a typed `ObjectList<K>`: a single item that does not
//! deserialize (a date past year 9999, an integer beyond its Rust type, any value the API
//! server admits and the types refuse) fails the whole list, and every relist after it,
//! for every object of the watch (kube-rs/kube#774). Watching [`Decoded<K>`] instead makes
//! each item its own decode: the good ones arrive as `K`, a bad one as [`Undecodable`],
//! with its metadata and the path of the field that failed, and [`sift`] turns the stream
//! back into one of `K` for the caches, reporting what it had to leave out.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;

use crate::api::{CraneReplicaSet, CraneReplicaSetSpec};
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use tracing::{info, warn};

/// One object of a list or watch: decoded, or the reason it could not be.
#[derive(Clone, Debug)]
pub enum Decoded<K> {
    Ok(K),
    Undecodable(Box<Undecodable>),
}

/// An object whose body the Rust types refuse: what is known of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Undecodable {
    /// Its metadata, as far as it decodes (at least name, namespace, uid and
    /// resourceVersion when the API server sent them).
    pub meta: ObjectMeta,
    /// The field that failed, e.g. `spec.template.metadata.creationTimestamp`.
    pub field: String,
    /// Why, as serde says it.
    pub error: String,
    /// The object without the fields that do not decode (each removed in turn), when what
    /// remains decodes: a pod whose one condition carries a date past year 9999 is still a
    /// Running pod on its node.
    pub pruned: Option<Value>,
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Decoded<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Buffered first, so that a failure leaves something to read the metadata from.
        let value = Value::deserialize(deserializer)?;
        match serde_path_to_error::deserialize::<_, K>(&value) {
            Ok(object) => Ok(Decoded::Ok(object)),
            Err(e) => Ok(Decoded::Undecodable(Box::new(Undecodable {
                meta: lenient_meta(&value),
                field: e.path().to_string(),
                error: e.inner().to_string(),
                pruned: pruned::<K>(value, steps(e.path())),
            }))),
        }
    }
}

/// A step of the path to a field.
enum Step {
    Index(usize),
    Key(String),
}

/// The steps of a serde path, or none if a step cannot be followed in JSON.
fn steps(path: &serde_path_to_error::Path) -> Option<Vec<Step>> {
    path.iter()
        .map(|segment| match segment {
            serde_path_to_error::Segment::Seq { index } => Some(Step::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Step::Key(key.clone())),
            _ => None,
        })
        .collect()
}

/// How many fields may be removed from one object before it is given up on.
const PRUNE_STEPS: usize = 16;

/// `value` with the field at `first` removed, then each next field that fails, until it
/// decodes as K (a missing required field fails at its parent, which goes next).
fn pruned<K: DeserializeOwned>(mut value: Value, first: Option<Vec<Step>>) -> Option<Value> {
    let mut path = first?;
    for _ in 0..PRUNE_STEPS {
        if !remove_at(&mut value, &path) {
            return None;
        }
        match serde_path_to_error::deserialize::<_, K>(&value) {
            Ok(_) => return Some(value),
            Err(e) => path = steps(e.path())?,
        }
    }
    None
}

/// Removes the field (or list item) at `path`; false when there is none.
fn remove_at(value: &mut Value, path: &[Step]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut node = value;
    for step in parents {
        let next = match step {
            Step::Index(i) => node.get_mut(*i),
            Step::Key(k) => node.get_mut(k.as_str()),
        };
        match next {
            Some(next) => node = next,
            None => return false,
        }
    }
    match (last, node) {
        (Step::Index(i), Value::Array(items)) if *i < items.len() => {
            items.remove(*i);
            true
        }
        (Step::Key(k), Value::Object(fields)) => fields.remove(k).is_some(),
        _ => false,
    }
}

/// The object's metadata, as much of it as decodes: each field that does not is left out
/// (an owner reference or a label must not be lost to a bad timestamp beside it), except a
/// deletionTimestamp, which still says the object is going.
fn lenient_meta(value: &Value) -> ObjectMeta {
    let meta = &value["metadata"];
    if let Ok(meta) = ObjectMeta::deserialize(meta) {
        return meta;
    }
    let Some(fields) = meta.as_object() else {
        return ObjectMeta::default();
    };
    let mut kept = serde_json::Map::new();
    let mut going = false;
    for (field, v) in fields {
        let alone = Value::Object([(field.clone(), v.clone())].into_iter().collect());
        if ObjectMeta::deserialize(&alone).is_ok() {
            kept.insert(field.clone(), v.clone());
        } else if field == "deletionTimestamp" && !v.is_null() {
            going = true;
        }
    }
    let mut meta = ObjectMeta::deserialize(Value::Object(kept)).unwrap_or_default();
    if going {
        meta.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
    }
    meta
}

/// Sends the object it holds; one that did not decode is never sent back.
impl<K: Serialize> Serialize for Decoded<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Decoded::Ok(k) => k.serialize(serializer),
            Decoded::Undecodable(bad) => Err(serde::ser::Error::custom(format!(
                "an object that did not decode ({}) is not sent",
                bad.field
            ))),
        }
    }
}

impl<K: StandIn> Decoded<K> {
    /// The object as the operator can use it: decoded, or its [`StandIn`].
    pub fn readable(self) -> Option<K> {
        match self {
            Decoded::Ok(k) => Some(k),
            Decoded::Undecodable(bad) => K::stand_in(&bad),
        }
    }
}

impl<K: Resource> Resource for Decoded<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }
    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }
    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        match self {
            Decoded::Ok(k) => k.meta(),
            Decoded::Undecodable(u) => &u.meta,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Decoded::Ok(k) => k.meta_mut(),
            Decoded::Undecodable(u) => &mut u.meta,
        }
    }
}

/// What a watch does with an object it cannot decode.
pub trait StandIn: Resource + Sized {
    /// The object as the cache should hold it while its body cannot be read: `Some` keeps
    /// it (a pod must still be counted, or its owner would make another), as much of it as
    /// decodes, `None` leaves it out (a CraneReplicaSet's pass must not act on a spec with
    /// a field missing).
    fn stand_in(bad: &Undecodable) -> Option<Self>;

    /// An object that only names `meta`'s object, to remove it from a cache.
    fn tombstone(meta: ObjectMeta) -> Self;
}

/// What decodes of `bad`, else its metadata alone.
fn readable_part<K: DeserializeOwned>(
    bad: &Undecodable,
    meta_only: impl FnOnce(ObjectMeta) -> K,
) -> K {
    bad.pruned
        .as_ref()
        .and_then(|v| K::deserialize(v).ok())
        .unwrap_or_else(|| meta_only(bad.meta.clone()))
}

impl StandIn for Pod {
    fn stand_in(bad: &Undecodable) -> Option<Self> {
        Some(readable_part(bad, Self::tombstone))
    }
    fn tombstone(metadata: ObjectMeta) -> Self {
        Pod {
            metadata,
            ..Pod::default()
        }
    }
}

impl StandIn for Service {
    /// Kept, as much of it as decodes: its owner's pass then sees a Service there rather
    /// than none.
    fn stand_in(bad: &Undecodable) -> Option<Self> {
        Some(readable_part(bad, Self::tombstone))
    }
    fn tombstone(metadata: ObjectMeta) -> Self {
        Service {
            metadata,
            ..Service::default()
        }
    }
}

impl StandIn for CraneReplicaSet {
    fn stand_in(_: &Undecodable) -> Option<Self> {
        None
    }
    fn tombstone(metadata: ObjectMeta) -> Self {
        CraneReplicaSet {
            metadata,
            spec: CraneReplicaSetSpec {
                replicas: 0,
                min_ready_seconds: 0,
                selector: None,
                template: Default::default(),
                service: Default::default(),
                update_strategy: Default::default(),
            },
            status: None,
        }
    }
}

/// The objects a watch could not decode, for the metric, `/healthz` and `/readyz`.
#[derive(Default)]
pub struct Skipped {
    /// `resource namespace/name` → what is known of it.
    objects: Mutex<HashMap<String, SkippedObject>>,
    /// Per resource being relisted: the objects skipped again in this list. Those not in
    /// it when the list ends were deleted or fixed while the watch was down.
    relisting: Mutex<HashMap<String, HashSet<String>>>,
}

/// One object skipped, and whether its owner was told.
#[derive(Clone, PartialEq)]
struct SkippedObject {
    uid: Option<String>,
    /// The field and the error, as reported.
    what: String,
    /// Its Warning event was queued (it is reported again until it is).
    reported: bool,
}

/// One line per skipped object: `cranereplicasets default/poison: spec.x: why`.
impl Skipped {
    /// Records `bad` under `resource`; true when this is news (a new object, or a new reason):
    /// what is reported once is not reported again at every relist.
    pub fn skip(&self, resource: &str, bad: &Undecodable) -> bool {
        let key = skip_key(resource, &bad.meta);
        let what = format!("{}: {}", bad.field, bad.error);
        if let Some(seen) = self
            .relisting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(resource)
        {
            seen.insert(key.clone());
        }
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let same = |o: &SkippedObject| o.uid == bad.meta.uid && o.what == what;
        match objects.get(&key) {
            Some(known) if same(known) => !known.reported,
            _ => {
                let uid = bad.meta.uid.clone();
                objects.insert(
                    key,
                    SkippedObject {
                        uid,
                        what,
                        reported: false,
                    },
                );
                true
            }
        }
    }

    /// The owner of `bad` was told (its event is queued).
    pub fn reported(&self, resource: &str, bad: &Undecodable) {
        let key = skip_key(resource, &bad.meta);
        if let Some(known) = self
            .objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&key)
        {
            known.reported = true;
        }
    }

    /// Whether the named object is skipped now.
    pub fn holds(&self, resource: &str, namespace: Option<&str>, name: &str) -> bool {
        let key = skip_key_of(resource, namespace, name);
        self.objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&key)
    }

    /// The object decodes again, or is gone; true when it had been skipped.
    pub fn readable(&self, resource: &str, meta: &ObjectMeta) -> bool {
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        // Called for every object a watch delivers: nothing to format while none is skipped.
        if objects.is_empty() {
            return false;
        }
        objects.remove(&skip_key(resource, meta)).is_some()
    }

    /// A relist of `resource` starts.
    pub fn relist_started(&self, resource: &str) {
        self.relisting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(resource.to_string(), HashSet::new());
    }

    /// The relist of `resource` is complete: what it did not skip again is no longer skipped.
    pub fn relist_done(&self, resource: &str) {
        let Some(seen) = self
            .relisting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(resource)
        else {
            return;
        };
        let prefix = format!("{resource} ");
        self.objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, _| !key.starts_with(&prefix) || seen.contains(key));
    }

    /// Everything skipped, with `resource` at the start of each line, sorted.
    pub fn lines(&self) -> Vec<String> {
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let mut lines: Vec<_> = objects
            .iter()
            .map(|(key, o)| format!("{key}: {}", o.what))
            .collect();
        lines.sort();
        lines
    }

    /// How many objects of `resource` are skipped now.
    pub fn count(&self, resource: &str) -> usize {
        let prefix = format!("{resource} ");
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        objects.keys().filter(|k| k.starts_with(&prefix)).count()
    }
}

/// The key of an object in [`Skipped`]: `resource namespace/name`.
fn skip_key(resource: &str, meta: &ObjectMeta) -> String {
    skip_key_of(
        resource,
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// [`skip_key`] of a named object.
fn skip_key_of(resource: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{resource} {ns}/{name}"),
        None => format!("{resource} {name}"),
    }
}

fn object_name(meta: &ObjectMeta) -> String {
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or_default()),
        None => meta.name.clone().unwrap_or_default(),
    }
}

/// Told about each object a watch had to leave out or stand in for (once per object and
/// reason), to count it and say so where its owner looks (a Warning event); returns whether
/// that was said (it is tried again with the object's next event otherwise).
pub type OnUndecodable = Arc<dyn Fn(&'static str, &Undecodable) -> bool + Send + Sync>;

/// The watch of `Decoded<K>` as a watch of `K`: every object that decodes passes as it is;
/// one that does not is logged and handed to `report` (once per object and reason), and is
/// replaced by its [`StandIn`] or, without one, left out (a change to it becomes its
/// removal from the cache). Errors of the watch pass through.
pub fn sift<K, S>(
    stream: S,
    resource: &'static str,
    skipped: Arc<Skipped>,
    report: OnUndecodable,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: StandIn + Clone + Send + 'static,
    S: Stream<Item = Result<watcher::Event<Decoded<K>>, watcher::Error>> + Send,
{
    let skipped_here = skipped.clone();
    // The object to hand on, or the metadata of one to leave out.
    let one = move |decoded: Decoded<K>| -> Result<K, Box<Undecodable>> {
        match decoded {
            Decoded::Ok(k) => {
                if skipped.readable(resource, k.meta()) {
                    info!(resource, object = %object_name(k.meta()), "the object can be read again");
                }
                Ok(k)
            }
            Decoded::Undecodable(bad) => {
                if skipped.skip(resource, &bad) {
                    warn!(
                        resource,
                        object = %object_name(&bad.meta),
                        field = %bad.field,
                        error = %bad.error,
                        "cannot decode the object; skipping it until it is fixed"
                    );
                    if report(resource, &bad) {
                        skipped.reported(resource, &bad);
                    }
                }
                K::stand_in(&bad).ok_or(bad)
            }
        }
    };
    stream.filter_map(move |event| {
        // Without a name it can be neither kept nor removed by name: left alone.
        let nameless =
            |d: &Decoded<K>| matches!(d, Decoded::Undecodable(bad) if bad.meta.name.is_none());
        if let Ok(
            watcher::Event::Apply(d) | watcher::Event::InitApply(d) | watcher::Event::Delete(d),
        ) = &event
            && nameless(d)
        {
            warn!(
                resource,
                "an object without a name that cannot be decoded; ignored"
            );
            return futures::future::ready(None);
        }
        let event = event.map(|event| match event {
            watcher::Event::Init => {
                skipped_here.relist_started(resource);
                Some(watcher::Event::Init)
            }
            watcher::Event::InitDone => {
                skipped_here.relist_done(resource);
                Some(watcher::Event::InitDone)
            }
            watcher::Event::InitApply(d) => one(d).ok().map(watcher::Event::InitApply),
            // Without a stand-in, the cache must not go on acting on an older body.
            watcher::Event::Apply(d) => Some(match one(d) {
                Ok(k) => watcher::Event::Apply(k),
                Err(bad) => watcher::Event::Delete(K::tombstone(bad.meta)),
            }),
            watcher::Event::Delete(d) => {
                let meta = d.meta().clone();
                skipped_here.readable(resource, &meta);
                Some(watcher::Event::Delete(match d {
                    Decoded::Ok(k) => k,
                    Decoded::Undecodable(_) => K::tombstone(meta),
                }))
            }
        });
        futures::future::ready(event.transpose())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::fixtures::crane;
    use kube::core::ObjectList;
    use serde_json::json;

    /// The book's object with `field` of its template set to `value`.
    fn crane_with(name: &str, path: &[&str], value: Value) -> Value {
        let mut obj = serde_json::to_value(crane(1)).unwrap();
        obj["metadata"]["name"] = json!(name);
        obj["metadata"]["uid"] = json!(format!("uid-{name}"));
        let mut node = &mut obj;
        for step in path {
            node = &mut node[*step];
        }
        *node = value;
        obj
    }

    fn poison(name: &str) -> Value {
        crane_with(
            name,
            &["spec", "template", "metadata", "creationTimestamp"],
            json!("9999-12-31T23:59:59Z"),
        )
    }

    fn list(items: Vec<Value>) -> Value {
        json!({"apiVersion": "crane.dev/v1", "kind": "CraneReplicaSetList",
            "metadata": {"resourceVersion": "7"}, "items": items})
    }

    #[test]
    fn one_undecodable_item_fails_a_typed_list_but_not_a_decoded_one() {
        let body = list(vec![
            poison("poison"),
            crane_with("alive", &["spec", "replicas"], json!(3)),
        ]);
        // What kube-runtime's watcher does with a typed list: the whole list fails.
        let typed = serde_json::from_value::<ObjectList<CraneReplicaSet>>(body.clone());
        assert!(
            typed.is_err(),
            "the poison pill no longer poisons a typed list"
        );

        let decoded: ObjectList<Decoded<CraneReplicaSet>> = serde_json::from_value(body).unwrap();
        let [Decoded::Undecodable(bad), Decoded::Ok(alive)] = decoded.items.as_slice() else {
            panic!(
                "expected the poison undecodable and the other decoded: {:?}",
                decoded.items
            );
        };
        assert_eq!(alive.spec.replicas, 3);
        assert_eq!(bad.meta.name.as_deref(), Some("poison"));
        assert_eq!(bad.meta.uid.as_deref(), Some("uid-poison"));
        assert_eq!(bad.field, "spec.template.metadata.creationTimestamp");
        assert!(!bad.error.is_empty());
    }

    #[test]
    fn metadata_that_does_not_decode_keeps_what_does() {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "p", "namespace": "default", "uid": "uid-p",
            "labels": {"app": "crane"},
            "ownerReferences": [{"apiVersion": "crane.dev/v1", "kind": "CraneReplicaSet",
                "name": "crane", "uid": "crs-uid", "controller": true}],
            "creationTimestamp": "9999-12-31T23:59:59Z",
            "deletionTimestamp": "9999-12-31T23:59:59Z"}});
        let Decoded::Undecodable(bad) =
            serde_json::from_value::<Decoded<Pod>>(pod.clone()).unwrap()
        else {
            panic!("a year-9999 timestamp decoded");
        };
        assert_eq!(bad.meta.labels.as_ref().unwrap()["app"], "crane");
        assert_eq!(
            bad.meta.owner_references.as_ref().unwrap()[0].uid,
            "crs-uid"
        );
        assert!(
            bad.meta.deletion_timestamp.is_some(),
            "a pod going away must still read as going"
        );
        pod["metadata"]["deletionTimestamp"] = Value::Null;
        let Decoded::Undecodable(bad) = serde_json::from_value::<Decoded<Pod>>(pod).unwrap() else {
            panic!("a year-9999 timestamp decoded");
        };
        assert!(bad.meta.deletion_timestamp.is_none());
    }

    type Events<K> = Vec<Result<watcher::Event<K>, watcher::Error>>;

    /// Runs `events` through [`sift`]; returns what came out and what was reported.
    fn sifted<K: StandIn + Clone + Send + DeserializeOwned + 'static>(
        skipped: &Arc<Skipped>,
        events: Vec<watcher::Event<Value>>,
    ) -> (Vec<watcher::Event<K>>, Vec<String>) {
        let reports: Arc<Mutex<Vec<String>>> = Arc::default();
        let report: OnUndecodable = {
            let reports = reports.clone();
            Arc::new(move |resource, bad| {
                reports.lock().unwrap().push(format!(
                    "{resource} {}: {}",
                    bad.meta.name.as_deref().unwrap_or_default(),
                    bad.field
                ));
                true
            })
        };
        let decode = |v: Value| serde_json::from_value::<Decoded<K>>(v).unwrap();
        let input: Events<Decoded<K>> = events
            .into_iter()
            .map(|e| {
                Ok(match e {
                    watcher::Event::Init => watcher::Event::Init,
                    watcher::Event::InitDone => watcher::Event::InitDone,
                    watcher::Event::InitApply(v) => watcher::Event::InitApply(decode(v)),
                    watcher::Event::Apply(v) => watcher::Event::Apply(decode(v)),
                    watcher::Event::Delete(v) => watcher::Event::Delete(decode(v)),
                })
            })
            .collect();
        let out = futures::executor::block_on(
            sift(futures::stream::iter(input), "res", skipped.clone(), report)
                .map(|e| e.expect("no watch errors here"))
                .collect::<Vec<_>>(),
        );
        let reports = reports.lock().unwrap().clone();
        (out, reports)
    }

    fn names<K: Resource>(events: &[watcher::Event<K>]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                watcher::Event::Init => "Init".into(),
                watcher::Event::InitDone => "InitDone".into(),
                watcher::Event::InitApply(k) => {
                    format!("InitApply {}", k.meta().name.as_deref().unwrap_or_default())
                }
                watcher::Event::Apply(k) => {
                    format!("Apply {}", k.meta().name.as_deref().unwrap_or_default())
                }
                watcher::Event::Delete(k) => {
                    format!("Delete {}", k.meta().name.as_deref().unwrap_or_default())
                }
            })
            .collect()
    }

    #[test]
    fn an_undecodable_crane_replica_set_is_left_out_reported_once_and_back_when_fixed() {
        let skipped = Arc::new(Skipped::default());
        let good = |name| crane_with(name, &["spec", "replicas"], json!(2));
        let (out, reports) = sifted::<CraneReplicaSet>(
            &skipped,
            vec![
                watcher::Event::Init,
                watcher::Event::InitApply(poison("poison")),
                watcher::Event::InitApply(good("alive")),
                watcher::Event::InitDone,
                // Edited, still bad: no second report.
                watcher::Event::Apply(poison("poison")),
                // A good object turning bad leaves the cache.
                watcher::Event::Apply(poison("alive")),
            ],
        );
        assert_eq!(
            names(&out),
            [
                "Init",
                "InitApply alive",
                "InitDone",
                "Delete poison",
                "Delete alive"
            ]
        );
        assert_eq!(
            reports,
            [
                "res poison: spec.template.metadata.creationTimestamp",
                "res alive: spec.template.metadata.creationTimestamp"
            ]
        );
        assert_eq!(skipped.count("res"), 2);
        assert!(
            skipped.lines()[0]
                .starts_with("res default/alive: spec.template.metadata.creationTimestamp: ")
        );

        // Fixed: it comes back, and is no longer skipped; deleted: forgotten.
        let (out, reports) = sifted::<CraneReplicaSet>(
            &skipped,
            vec![
                watcher::Event::Apply(good("alive")),
                watcher::Event::Delete(poison("poison")),
            ],
        );
        assert_eq!(names(&out), ["Apply alive", "Delete poison"]);
        assert!(reports.is_empty());
        assert_eq!(skipped.count("res"), 0);
    }

    #[test]
    fn a_relist_forgets_undecodable_objects_deleted_meanwhile() {
        let skipped = Arc::new(Skipped::default());
        sifted::<CraneReplicaSet>(&skipped, vec![watcher::Event::Apply(poison("poison"))]);
        assert_eq!(skipped.count("res"), 1);
        let (_, reports) = sifted::<CraneReplicaSet>(
            &skipped,
            vec![
                watcher::Event::Init,
                watcher::Event::InitApply(poison("other")),
                watcher::Event::InitDone,
            ],
        );
        assert_eq!(
            reports,
            ["res other: spec.template.metadata.creationTimestamp"]
        );
        assert_eq!(skipped.lines().len(), 1);
        assert!(skipped.lines()[0].starts_with("res default/other: "));
    }

    #[test]
    fn an_undecodable_pod_is_kept_with_all_that_decodes() {
        let skipped = Arc::new(Skipped::default());
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "p", "namespace": "default", "uid": "uid-p", "labels": {"app": "crane"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": "9999-12-31T23:59:59Z"}]}});
        let (out, reports) = sifted::<Pod>(
            &skipped,
            vec![
                watcher::Event::Init,
                watcher::Event::InitApply(pod),
                watcher::Event::InitDone,
            ],
        );
        assert_eq!(names(&out), ["Init", "InitApply p", "InitDone"]);
        assert_eq!(reports, ["res p: status.conditions[0].lastTransitionTime"]);
        let watcher::Event::InitApply(p) = &out[1] else {
            unreachable!()
        };
        assert_eq!(p.metadata.labels.as_ref().unwrap()["app"], "crane");
        // Still a Ready pod, Running on its node: only the date is gone.
        let facts = crate::pods::PodFacts::from_pod(p);
        assert!(facts.is_active() && facts.is_ready(), "{facts:?}");
        assert_eq!(facts.node_name.as_deref(), Some("node-1"));
        let condition = &p.status.as_ref().unwrap().conditions.as_ref().unwrap()[0];
        assert_eq!(condition.last_transition_time, None);
    }

    #[test]
    fn a_pod_with_nothing_readable_but_its_metadata_stands_in_by_its_metadata() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "p", "namespace": "default", "uid": "uid-p"},
            "spec": "not an object"});
        let Decoded::Undecodable(bad) = serde_json::from_value::<Decoded<Pod>>(pod).unwrap() else {
            panic!("decoded");
        };
        let p = Pod::stand_in(&bad).expect("a pod is always kept");
        assert_eq!(p.metadata.name.as_deref(), Some("p"));
    }

    #[test]
    fn a_warning_that_could_not_be_queued_is_tried_again() {
        let skipped = Skipped::default();
        let Decoded::Undecodable(bad) =
            serde_json::from_value::<Decoded<CraneReplicaSet>>(poison("poison")).unwrap()
        else {
            panic!("decoded");
        };
        assert!(skipped.skip("res", &bad), "news");
        assert!(skipped.skip("res", &bad), "not reported yet: said again");
        skipped.reported("res", &bad);
        assert!(!skipped.skip("res", &bad), "reported: not said again");
        assert!(skipped.holds("res", Some("default"), "poison"));
    }
}
