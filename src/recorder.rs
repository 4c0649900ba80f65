//! Publishes events (events.k8s.io/v1) as client-go's `tools/events` broadcaster does:
//! the first occurrence is created, a repeat within [`SERIES_TTL`] only counts in memory,
//! and counted series are written back at most once per [`FLUSH`]. A burst of a thousand
//! alike events costs two writes, not a thousand PATCHes (which is what a PATCH per
//! occurrence, as kube's `Recorder` does, costs an API server at scale).
//!
//! Alike means the same note too, as client-go's older `tools/record` correlator reads it:
//! a pass's event names its pods in the note ("Created 3 pods: ..."), and counting the next
//! pass's event into the first would hide the pods it names (a note cannot be changed once
//! written). Past [`SIMILAR_EVENTS`] different notes of one reason about one object, the
//! rest are combined into one series; and each object gets [`SPAM_BURST`] writes at once,
//! then one per [`SPAM_REFILL`] (client-go's `EventSourceObjectSpamFilter`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Client, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use serde_json::json;
use tokio::sync::mpsc::Receiver;
use tracing::{debug, warn};

/// A repeat of an event seen within this time joins its series (client-go: 6 minutes).
pub const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);
/// client-go's event correlator: this many events of one reason about one object that
/// differ in their note or related object are kept apart...
pub const SIMILAR_EVENTS: usize = 10;
/// ...while each comes within this long of the last; the rest are combined into one
/// counted series.
pub const SIMILAR_WINDOW: SignedDuration = SignedDuration::from_mins(10);
/// client-go's spam filter: writes of events about one object that may come at once...
pub const SPAM_BURST: f64 = 25.0;
/// ...and how long it takes to earn one more. A new event past the budget is dropped, and
/// so is a series' count update (both counted), as client-go's filter drops what it
/// rejects: nothing waits minutes to be written after the news is over.
pub const SPAM_REFILL: SignedDuration = SignedDuration::from_mins(5);

/// How often the counts of growing series are written back: at most one write per second
/// per growing series, and the last count is out a second after a burst ends (client-go
/// waits up to 30 min; `kubectl describe` would show stale counts that long).
pub const FLUSH: Duration = Duration::from_secs(1);
/// Events waiting to be sent, at most (client-go's broadcaster queues 1,000 and drops the
/// rest): while the API server is slow, a backlog of news would only grow stale and cost
/// it more writes when it recovers.
pub const QUEUE: usize = 1000;

/// An object reference's kind, namespace, name and uid.
type RefKey = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// What sets one event apart from others of its reason about its object: the object it
/// relates to and its note.
type Local = (Option<RefKey>, Option<String>);

/// What makes two events the same: client-go's `tools/events` key (type, reason, action,
/// the objects) and the note; or, for events combined past [`SIMILAR_EVENTS`], no related
/// object and no note.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    type_: &'static str,
    reason: String,
    action: String,
    regarding: RefKey,
    /// `None` for a combined event.
    local: Option<Local>,
}

fn reference_key(r: &ObjectReference) -> RefKey {
    (
        r.kind.clone(),
        r.namespace.clone(),
        r.name.clone(),
        r.uid.clone(),
    )
}

fn type_name(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// A published event and whether its series has counts not yet written.
struct Published {
    event: K8sEvent,
    last_seen: Timestamp,
    dirty: bool,
}

/// The different events of one reason about one object seen lately.
struct Similar {
    last_seen: Timestamp,
    locals: HashSet<Local>,
}

/// A token bucket: the writes one object's events may still make now.
struct Budget {
    tokens: f64,
    at: Timestamp,
}

impl Budget {
    fn full(now: Timestamp) -> Self {
        Budget {
            tokens: SPAM_BURST,
            at: now,
        }
    }

    fn refill(&mut self, now: Timestamp) {
        // A wall clock stepped back earns nothing.
        let earned = now.duration_since(self.at).as_secs_f64().max(0.0) / SPAM_REFILL.as_secs_f64();
        self.tokens = (self.tokens + earned).min(SPAM_BURST);
        self.at = self.at.max(now);
    }

    fn take(&mut self, now: Timestamp) -> bool {
        self.refill(now);
        let ok = self.tokens >= 1.0;
        if ok {
            self.tokens -= 1.0;
        }
        ok
    }
}

/// What to do with one occurrence.
#[derive(Debug, PartialEq)]
pub enum Write {
    /// A new event: create it.
    Create(Box<K8sEvent>),
    /// Counted in memory; written at the next flush.
    Counted,
    /// A new event about an object that spent its budget ([`SPAM_BURST`]): dropped.
    Dropped,
}

/// The series bookkeeping, apart from the API calls.
pub struct Series {
    controller: String,
    instance: String,
    published: HashMap<Key, Published>,
    /// Per regarding object, event type and reason.
    similar: HashMap<(RefKey, &'static str, String), Similar>,
    /// Per regarding object, while not full.
    budgets: HashMap<RefKey, Budget>,
    /// Count updates dropped for their object's budget since [`Series::take_dropped`].
    dropped: u64,
}

impl Series {
    pub fn new(controller: &str, instance: Option<String>) -> Self {
        Series {
            controller: controller.into(),
            instance: instance.unwrap_or_else(|| controller.into()),
            published: HashMap::new(),
            similar: HashMap::new(),
            budgets: HashMap::new(),
            dropped: 0,
        }
    }

    /// Past [`SIMILAR_EVENTS`] different events of one reason about one object, drops the
    /// related object so that the rest count in one series, and says so in the note.
    /// Returns what sets the event apart (`None` once combined).
    fn correlate(
        &mut self,
        ev: &mut Event,
        regarding: &ObjectReference,
        now: Timestamp,
    ) -> Option<Local> {
        let local = (ev.secondary.as_ref().map(reference_key), ev.note.clone());
        let similar = self
            .similar
            .entry((
                reference_key(regarding),
                type_name(ev.type_),
                ev.reason.clone(),
            ))
            .or_insert_with(|| Similar {
                last_seen: now,
                locals: HashSet::new(),
            });
        if similar.last_seen + SIMILAR_WINDOW < now {
            similar.locals.clear();
        }
        similar.last_seen = now;
        if similar.locals.contains(&local) {
            return Some(local);
        }
        if similar.locals.len() < SIMILAR_EVENTS {
            similar.locals.insert(local.clone());
            return Some(local);
        }
        ev.secondary = None;
        ev.note = ev
            .note
            .take()
            .map(|n| format!("(combined from similar events): {n}"));
        None
    }

    /// Spends one write of the budget of the object `regarding` is about, if it has one.
    fn spend(&mut self, regarding: &RefKey, now: Timestamp) -> bool {
        self.budgets
            .entry(regarding.clone())
            .or_insert_with(|| Budget::full(now))
            .take(now)
    }

    /// Takes one occurrence at `now`.
    pub fn observe(&mut self, mut ev: Event, regarding: &ObjectReference, now: Timestamp) -> Write {
        let local = self.correlate(&mut ev, regarding, now);
        let ev = &ev;
        let key = Key {
            type_: type_name(ev.type_),
            reason: ev.reason.clone(),
            action: ev.action.clone(),
            regarding: reference_key(regarding),
            local,
        };
        if let Some(p) = self.published.get_mut(&key)
            && p.last_seen + SERIES_TTL > now
        {
            let series = p.event.series.get_or_insert(EventSeries {
                count: 1,
                last_observed_time: MicroTime(now),
            });
            series.count += 1;
            series.last_observed_time = MicroTime(now);
            p.last_seen = now;
            p.dirty = true;
            return Write::Counted;
        }
        if !self.spend(&key.regarding, now) {
            return Write::Dropped;
        }
        let event = K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone().map(truncate_note),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(type_name(ev.type_).into()),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            ..K8sEvent::default()
        };
        self.published.insert(
            key,
            Published {
                event: event.clone(),
                last_seen: now,
                dirty: false,
            },
        );
        Write::Create(Box::new(event))
    }

    /// Count updates dropped for their object's budget since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// The series whose counts grew since the last flush and whose object has the budget
    /// to write them (now marked written; the others' updates are dropped), and forgets the
    /// series that ended.
    pub fn flush(&mut self, now: Timestamp) -> Vec<K8sEvent> {
        self.published
            .retain(|_, p| p.dirty || p.last_seen + SERIES_TTL > now);
        self.similar
            .retain(|_, s| s.last_seen + SIMILAR_WINDOW > now);
        let mut written = Vec::new();
        for (key, p) in &mut self.published {
            if p.dirty {
                let budget = self
                    .budgets
                    .entry(key.regarding.clone())
                    .or_insert_with(|| Budget::full(now));
                p.dirty = false;
                if budget.take(now) {
                    written.push(p.event.clone());
                } else {
                    self.dropped += 1;
                }
            }
        }
        // A full budget is what an object without one gets.
        self.budgets.retain(|_, b| {
            b.refill(now);
            b.tokens < SPAM_BURST
        });
        written
    }
}

/// Publishes events one at a time, in order, until the channel closes; then writes what
/// is still counted. Events dropped for their object's budget are counted in `dropped`.
pub async fn publish(
    client: Client,
    mut series: Series,
    mut events: Receiver<(Event, ObjectReference)>,
    dropped: Counter,
) {
    let mut tick = tokio::time::interval(FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = events.recv() => match next {
                Some((ev, regarding)) => {
                    let reason = ev.reason.clone();
                    match series.observe(ev, &regarding, crate::clock::now()) {
                        Write::Create(event) => {
                            let api: Api<K8sEvent> = Api::namespaced(client.clone(), &event.namespace().unwrap_or_default());
                            if let Err(e) = api.create(&PostParams::default(), &event).await {
                                warn!(object = regarding_name(&regarding), reason, error = %e, "could not publish event");
                            }
                        }
                        Write::Dropped => {
                            dropped.inc();
                            debug!(object = regarding_name(&regarding), reason, "event dropped: its object spent its event budget");
                        }
                        Write::Counted => {}
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                let flushed = series.flush(crate::clock::now());
                dropped.inc_by(series.take_dropped());
                write_series(&client, flushed).await;
            }
        }
    }
    write_series(&client, series.flush(crate::clock::now())).await;
}

async fn write_series(client: &Client, events: Vec<K8sEvent>) {
    for event in events {
        let api: Api<K8sEvent> =
            Api::namespaced(client.clone(), &event.namespace().unwrap_or_default());
        let patch = json!({"series": event.series});
        let written = match api
            .patch(
                &event.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            // Its first create failed (or it expired): create it now, with its count, as
            // client-go's recorder does.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                api.create(&PostParams::default(), &event).await.map(|_| ())
            }
            other => other.map(|_| ()),
        };
        if let Err(e) = written {
            let regarding = event.regarding.clone().unwrap_or_default();
            warn!(object = regarding_name(&regarding), reason = ?event.reason, error = %e, "could not update event series");
        }
    }
}

/// Event notes may be at most 1 kB; a longer one would make the event itself fail.
fn truncate_note(mut note: String) -> String {
    const MAX: usize = 1024;
    if note.len() > MAX {
        let mut end = MAX - '…'.len_utf8();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

fn regarding_name(r: &ObjectReference) -> String {
    format!(
        "{}/{}",
        r.namespace.as_deref().unwrap_or_default(),
        r.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use tower_test::mock;

    /// The first create of an event fails; its series write finds no event (404) and
    /// creates it, count included: the occurrences are not lost.
    #[tokio::test(start_paused = true)]
    async fn an_event_whose_create_failed_is_created_by_its_series_write() {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let publisher = tokio::spawn(publish(
            Client::new(service, "ns"),
            Series::new("crane-operator", None),
            rx,
            Counter::default(),
        ));
        let status = |code: u16| {
            let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "code": code, "message": "m"});
            Response::builder()
                .status(code)
                .body(Body::from(body.to_string().into_bytes()))
                .unwrap()
        };
        tx.send((ev("SuccessfulCreate"), crs())).await.unwrap();
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), Method::POST);
        send.send_response(status(500));
        tx.send((ev("SuccessfulCreate"), crs())).await.unwrap();
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), Method::PATCH, "the repeat is a series write");
        send.send_response(status(404));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), Method::POST, "then a create");
        let body = req.into_body().collect_bytes().await.unwrap();
        let created: K8sEvent = serde_json::from_slice(&body).unwrap();
        assert_eq!(created.series.map(|s| s.count), Some(2));
        send.send_response(
            Response::builder()
                .status(201)
                .body(Body::from(body.to_vec()))
                .unwrap(),
        );
        drop(tx);
        publisher.await.unwrap();
    }

    fn ev(reason: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some("n".into()),
            action: "Create".into(),
            secondary: None,
        }
    }

    fn crs() -> ObjectReference {
        ObjectReference {
            kind: Some("CraneReplicaSet".into()),
            namespace: Some("ns".into()),
            name: Some("crane".into()),
            uid: Some("u".into()),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn a_thousand_alike_events_are_one_create_and_one_series_write() {
        let mut s = Series::new("crane-operator", None);
        let t0 = Timestamp::now();
        assert!(matches!(
            s.observe(ev("SuccessfulCreate"), &crs(), t0),
            Write::Create(_)
        ));
        for _ in 1..1000 {
            assert_eq!(
                s.observe(ev("SuccessfulCreate"), &crs(), t0),
                Write::Counted
            );
        }
        let flushed = s.flush(t0);
        assert_eq!(flushed.len(), 1);
        assert_eq!(flushed[0].series.as_ref().unwrap().count, 1000);
        assert!(s.flush(t0).is_empty(), "nothing new, nothing written");
    }

    #[test]
    fn a_different_reason_or_an_ended_series_is_a_new_event() {
        let mut s = Series::new("crane-operator", None);
        let t0 = Timestamp::now();
        s.observe(ev("SuccessfulCreate"), &crs(), t0);
        assert!(matches!(
            s.observe(ev("FailedCreate"), &crs(), t0),
            Write::Create(_)
        ));
        let later = t0 + SERIES_TTL + SignedDuration::from_secs(1);
        assert!(s.flush(later).is_empty());
        assert!(matches!(
            s.observe(ev("SuccessfulCreate"), &crs(), later),
            Write::Create(_)
        ));
    }

    #[test]
    fn after_ten_alike_events_about_other_pods_the_rest_join_one_series() {
        let mut s = Series::new("crane-operator", None);
        let t0 = Timestamp::now();
        let created = |i: usize| Event {
            secondary: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(format!("p{i}")),
                ..ObjectReference::default()
            }),
            ..ev("SuccessfulCreate")
        };
        let creates = (0..200)
            .filter(|i| matches!(s.observe(created(*i), &crs(), t0), Write::Create(_)))
            .count();
        assert_eq!(creates, SIMILAR_EVENTS + 1);
        let flushed = s.flush(t0);
        assert_eq!(flushed[0].series.as_ref().unwrap().count, 190);
        assert!(
            flushed[0]
                .note
                .as_deref()
                .unwrap()
                .starts_with("(combined from similar events)")
        );
        assert!(flushed[0].related.is_none());
    }

    fn noted(reason: &str, note: &str) -> Event {
        Event {
            note: Some(note.into()),
            ..ev(reason)
        }
    }

    fn creates(writes: impl IntoIterator<Item = Write>) -> usize {
        writes
            .into_iter()
            .filter(|w| matches!(w, Write::Create(_)))
            .count()
    }

    /// A pass's event names its pods in the note: the next pass's, naming others, is news
    /// of its own, not a count of the first (whose note cannot be changed).
    #[test]
    fn an_event_with_another_note_is_an_event_of_its_own_and_the_same_note_a_count() {
        let mut s = Series::new("crane-operator", None);
        let t0 = Timestamp::now();
        let first = || noted("SuccessfulCreate", "Created 3 pods: a, b, c");
        assert!(matches!(s.observe(first(), &crs(), t0), Write::Create(_)));
        let next = noted("SuccessfulCreate", "Created 2 pods: d, e");
        let Write::Create(event) = s.observe(next, &crs(), t0) else {
            panic!("the second pass's event was counted into the first");
        };
        assert_eq!(event.note.as_deref(), Some("Created 2 pods: d, e"));
        assert_eq!(s.observe(first(), &crs(), t0), Write::Counted);
    }

    #[test]
    fn past_ten_notes_of_one_reason_the_rest_join_one_combined_series() {
        let mut s = Series::new("crane-operator", None);
        let t0 = Timestamp::now();
        let writes: Vec<Write> = (0..15)
            .map(|i| s.observe(noted("FailedCreate", &format!("pod {i}")), &crs(), t0))
            .collect();
        assert_eq!(creates(writes), SIMILAR_EVENTS + 1);
        let flushed = s.flush(t0);
        assert_eq!(flushed.len(), 1, "{flushed:#?}");
        assert_eq!(flushed[0].series.as_ref().map(|s| s.count), Some(5));
        assert_eq!(
            flushed[0].note.as_deref(),
            Some("(combined from similar events): pod 10")
        );
        // Ten minutes without one: the next ones are apart again.
        let later = t0 + SIMILAR_WINDOW + SignedDuration::from_secs(1);
        s.flush(later);
        assert!(matches!(
            s.observe(noted("FailedCreate", "pod 99"), &crs(), later),
            Write::Create(_)
        ));
    }

    fn other() -> ObjectReference {
        ObjectReference {
            name: Some("other".into()),
            uid: Some("u2".into()),
            ..crs()
        }
    }

    /// client-go's spam filter: 25 event writes about one object at once, then one per
    /// five minutes; other objects keep their own.
    #[test]
    fn an_object_gets_25_event_writes_at_once_then_one_per_five_minutes() {
        let mut s = Series::new("crane-operator", None);
        let t0 = Timestamp::now();
        let burst: Vec<Write> = (0..40)
            .map(|i| s.observe(ev(&format!("Reason{i}")), &crs(), t0))
            .collect();
        assert_eq!(creates(burst), 25);
        assert!(matches!(
            s.observe(ev("Reason0"), &other(), t0),
            Write::Create(_)
        ));
        let refilled = t0 + SPAM_REFILL;
        let later: Vec<Write> = (40..43)
            .map(|i| s.observe(ev(&format!("Reason{i}")), &crs(), refilled))
            .collect();
        assert_eq!(creates(later), 1, "one more per five minutes");
    }

    #[test]
    fn a_series_past_its_objects_budget_is_dropped_not_held_back() {
        let mut s = Series::new("crane-operator", None);
        let t0 = Timestamp::now();
        for i in 0..25 {
            s.observe(ev(&format!("Reason{i}")), &crs(), t0);
        }
        assert_eq!(s.observe(ev("Reason0"), &crs(), t0), Write::Counted);
        assert!(s.flush(t0).is_empty(), "no budget left");
        assert_eq!(s.take_dropped(), 1, "the update is dropped and counted");
        assert!(
            s.flush(t0 + SPAM_REFILL).is_empty(),
            "nothing is written minutes after the news is over"
        );
    }

    /// What the budget drops is counted, for the `events_dropped` metric.
    #[tokio::test(start_paused = true)]
    async fn events_dropped_for_their_objects_budget_are_counted() {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let dropped = Counter::default();
        let publisher = tokio::spawn(publish(
            Client::new(service, "ns"),
            Series::new("crane-operator", None),
            rx,
            dropped.clone(),
        ));
        for i in 0..30 {
            tx.send((ev(&format!("Reason{i}")), crs())).await.unwrap();
        }
        drop(tx);
        let mut posts = 0;
        while let Some((req, send)) = handle.next_request().await {
            assert_eq!(req.method(), Method::POST);
            posts += 1;
            let body = req.into_body().collect_bytes().await.unwrap();
            send.send_response(
                Response::builder()
                    .status(201)
                    .body(Body::from(body.to_vec()))
                    .unwrap(),
            );
        }
        publisher.await.unwrap();
        assert_eq!((posts, dropped.get()), (25, 5));
    }

    #[test]
    fn event_notes_fit_in_one_kilobyte() {
        let long = "é".repeat(800);
        let note = truncate_note(long);
        assert!(note.len() <= 1024 && note.ends_with('…'));
        assert_eq!(truncate_note("short".into()), "short");
    }
}
