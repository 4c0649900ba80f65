//! Creations and deletions a controller has asked for but not yet seen in its pod cache.
//!
//! A reconcile that reads a cache from before its own last writes would create or delete
//! the same pods again. As in kube-controller-manager's `ControllerExpectations`, each
//! CraneReplicaSet records what it expects before it writes, the pod watch marks what it
//! observes, and the planner only scales while nothing is outstanding (or the record is
//! older than [`EXPECTATIONS_TIMEOUT`], in case a watch event was lost).
//!
//! Two rules keep one lost observation from blocking an object for good:
//! - [`Expectations::expect`] replaces the record (`SetExpectations`), never adds to it: an
//!   expired record's leftovers do not carry into the next write;
//! - a record belongs to one incarnation of the object (its UID): a CraneReplicaSet deleted
//!   and created again under the same name starts clean, and its predecessor's pods,
//!   still being removed, do not count as its observations.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::Instant;

/// How long unobserved expectations block scaling, as in kube-controller-manager.
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// How long a creation whose outcome is unknown (its answer was lost) is waited for:
/// kube-apiserver ends every request within its request timeout (`--request-timeout`,
/// 60 s by default), so after that the pod was stored or never will be, and a healthy pod
/// watch has shown it if it was. A few seconds more for the watch to deliver it.
pub const UNKNOWN_OUTCOME_TIMEOUT: Duration = Duration::from_secs(65);

/// The key of a CraneReplicaSet: `namespace/name`.
pub type Key = String;

/// A creation of unknown outcome that failed at `failed` is taken as never stored at `now`.
fn given_up(failed: Instant, now: Instant) -> bool {
    now.duration_since(failed) >= UNKNOWN_OUTCOME_TIMEOUT
}

#[derive(Debug)]
struct Record {
    /// The UID of the CraneReplicaSet the record is for.
    owner: String,
    creations: usize,
    /// When each creation among `creations` whose outcome is unknown failed.
    unknown: Vec<Instant>,
    deletions: HashSet<String>,
    since: Instant,
    /// Pods whose creation was answered (stored) but not yet seen by the watch.
    answered: Vec<Answered>,
    /// Pods of this record the watch has shown (an answer that comes after is not waited for).
    seen: HashSet<String>,
}

/// A pod whose creation was answered, not yet seen by the watch.
#[derive(Debug)]
struct Answered {
    uid: String,
    /// The count of pod watch relists begun before the answer came.
    relists: u64,
    at: Instant,
}

impl Record {
    /// Answered creations the watch has not shown for [`UNKNOWN_OUTCOME_TIMEOUT`]: a
    /// working watch shows a pod within moments, so each was deleted before it could, or
    /// the watch lags (a consistent read tells which).
    fn answered_overdue(&self, now: Instant) -> impl Iterator<Item = &Answered> {
        self.answered.iter().filter(move |a| given_up(a.at, now))
    }

    /// `gone` creations will never be seen: no longer expected.
    fn settle_gone(&mut self, gone: usize) {
        self.creations = self.creations.saturating_sub(gone);
        let excess = self.unknown.len().saturating_sub(self.creations);
        self.unknown.drain(..excess);
    }

    fn fulfilled(&self) -> bool {
        self.creations == 0 && self.deletions.is_empty()
    }

    /// Fulfilled once the creations of unknown outcome that are past
    /// [`UNKNOWN_OUTCOME_TIMEOUT`] are taken as never stored (while the pod watch works: a
    /// broken one may not have shown them yet).
    fn settled_at(&self, now: Instant, watch_works: bool) -> bool {
        let given_up = if watch_works {
            self.unknown
                .iter()
                .filter(|failed| given_up(**failed, now))
                .count()
        } else {
            0
        };
        // A creation answered is stored: never given up on time alone (its pod may be
        // among those the lookup found unseen), whatever the count says.
        self.creations.saturating_sub(given_up) == 0
            && self.answered.is_empty()
            && self.deletions.is_empty()
    }
}

/// Outstanding expectations per CraneReplicaSet. Cheap to share: one lock, short sections.
#[derive(Debug, Default)]
pub struct Expectations {
    records: Mutex<HashMap<Key, Record>>,
    /// The pod watch failed and has not relisted since (see [`Expectations::pod_watch`]).
    pod_watch_broken: std::sync::atomic::AtomicBool,
    /// Relists of the pod watch begun so far (see [`Expectations::relist_done`]).
    relists: std::sync::atomic::AtomicU64,
    /// Pods whose creation a lookup settled as gone ([`Expectations::settle_overdue`]),
    /// with when: a watch that lags may still show them, and that sighting must not count
    /// as one of a later record's creations (whose own pod would then be made again).
    settled_gone: Mutex<HashMap<String, Instant>>,
}

impl Expectations {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<Key, Record>) -> R) -> R {
        // A panic while holding the lock leaves plain counters behind: still usable.
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut records)
    }

    /// Before a pass writes: it will create `creations` pods and delete the pods with
    /// these UIDs, for the CraneReplicaSet `owner` (its UID). Replaces whatever was
    /// recorded before.
    pub fn expect<'a>(
        &self,
        key: &str,
        owner: &str,
        creations: usize,
        deletions: impl IntoIterator<Item = &'a str>,
    ) {
        let record = Record {
            owner: owner.to_string(),
            creations,
            unknown: Vec::new(),
            deletions: deletions.into_iter().map(str::to_string).collect(),
            since: Instant::now(),
            answered: Vec::new(),
            seen: HashSet::new(),
        };
        self.with(|r| r.insert(key.to_string(), record));
    }

    /// The watch saw a new pod of the CraneReplicaSet `owner`, or a creation failed and
    /// will not be seen.
    pub fn creation_observed(&self, key: &str, owner: &str) {
        self.with(|r| {
            if let Some(rec) = r.get_mut(key).filter(|rec| rec.owner == owner) {
                rec.creations = rec.creations.saturating_sub(1);
                // A pod seen may be one of unknown outcome: the oldest such is settled.
                if rec.unknown.len() > rec.creations {
                    rec.unknown.remove(0);
                }
            }
        });
    }

    /// The watch saw the new pod `pod` of the CraneReplicaSet `owner`.
    pub fn pod_observed(&self, key: &str, owner: &str, pod: &str) {
        let settled = self
            .settled_gone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pod)
            .is_some();
        if settled {
            return;
        }
        self.creation_observed(key, owner);
        self.with(|r| {
            if let Some(rec) = r.get_mut(key).filter(|rec| rec.owner == owner) {
                rec.answered.retain(|a| a.uid != pod);
                rec.seen.insert(pod.to_string());
            }
        });
    }

    /// The creation of pod `pod` was answered: it is stored. Should it be deleted before
    /// the watch shows it, while the watch relists, the relist will not show it either
    /// ([`Expectations::relist_done`]).
    pub fn creation_answered(&self, key: &str, owner: &str, pod: &str) {
        let relists = self.relists.load(std::sync::atomic::Ordering::SeqCst);
        self.with(|r| {
            if let Some(rec) = r.get_mut(key).filter(|rec| rec.owner == owner)
                && !rec.seen.contains(pod)
            {
                rec.answered.push(Answered {
                    uid: pod.to_string(),
                    relists,
                    at: Instant::now(),
                });
            }
        });
    }

    /// The pod watch begins a relist (its list request goes out after this).
    pub fn relist_started(&self) {
        self.relists
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The pod watch completed a relist, whose pods of each record are `present(key,
    /// owner)`: a pod whose creation was answered before the relist began and that the
    /// consistent list does not hold came and went unseen (deleted before the watch showed
    /// it). It is no longer waited for, instead of for the whole timeout. Returns the keys
    /// of the records that changed.
    pub fn relist_done(&self, present: impl Fn(&str, &str) -> HashSet<String>) -> Vec<Key> {
        let epoch = self.relists.load(std::sync::atomic::Ordering::SeqCst);
        self.with(|r| {
            let mut changed = Vec::new();
            for (key, rec) in r.iter_mut() {
                if !rec.answered.iter().any(|a| a.relists < epoch) {
                    continue;
                }
                let listed = present(key, &rec.owner);
                let before = rec.answered.len();
                rec.answered
                    .retain(|a| a.relists >= epoch || listed.contains(&a.uid));
                let gone = before - rec.answered.len();
                if gone > 0 {
                    rec.settle_gone(gone);
                    changed.push(key.clone());
                }
            }
            changed
        })
    }

    /// A creation's answer was lost: it may have been stored. It stays expected until the
    /// watch shows it, or for [`UNKNOWN_OUTCOME_TIMEOUT`] while the pod watch works.
    pub fn creation_unknown(&self, key: &str, owner: &str) {
        self.with(|r| {
            if let Some(rec) = r.get_mut(key).filter(|rec| rec.owner == owner)
                && rec.unknown.len() < rec.creations
            {
                rec.unknown.push(Instant::now());
            }
        });
    }

    /// The pod watch failed (`false`), or completed a list (`true`).
    pub fn pod_watch(&self, works: bool) {
        self.pod_watch_broken
            .store(!works, std::sync::atomic::Ordering::SeqCst);
    }

    /// How long until a creation of `key` is waited for no more, if one waits (one of
    /// unknown outcome is given up on, an answered one unseen is looked up
    /// ([`Expectations::overdue`])): a pass blocked by it looks again then.
    pub fn wait_ends_in(&self, key: &str, owner: &str) -> Option<Duration> {
        let now = Instant::now();
        self.with(|r| {
            let rec = r.get(key).filter(|rec| rec.owner == owner)?;
            rec.unknown
                .iter()
                .chain(rec.answered.iter().map(|a| &a.at))
                .map(|since| UNKNOWN_OUTCOME_TIMEOUT.saturating_sub(now.duration_since(*since)))
                .filter(|left| !left.is_zero())
                .min()
        })
    }

    /// The pod `uid` went, and its last state in the cache named no owner: each
    /// CraneReplicaSet that expected its deletion (it adopted and deleted it before the
    /// watch showed either) has seen it. Returns their keys.
    pub fn deletion_observed_anywhere(&self, uid: &str) -> Vec<Key> {
        self.with(|r| {
            r.iter_mut()
                .filter_map(|(key, rec)| rec.deletions.remove(uid).then(|| key.clone()))
                .collect()
        })
    }

    /// Whether the record of `key` waits for what the cache cannot tell, so that the pass
    /// should ask the API server ([`Expectations::settle_overdue`]):
    /// - only creations of unknown outcome past [`UNKNOWN_OUTCOME_TIMEOUT`] keep it open,
    ///   and only because the pod watch has not relisted since it failed (a watch that
    ///   resumed where it broke never relists);
    /// - or a creation answered that long ago is still unseen: the pod was deleted before
    ///   the watch showed it, and no relist that began before the answer came can tell
    ///   (one answered while the watch relisted, say, and gone before the list was read).
    pub fn overdue(&self, key: &str, owner: &str) -> bool {
        let now = Instant::now();
        let broken = self
            .pod_watch_broken
            .load(std::sync::atomic::Ordering::SeqCst);
        self.with(|r| {
            r.get(key)
                .filter(|rec| rec.owner == owner)
                .is_some_and(|rec| {
                    (broken && !rec.settled_at(now, false) && rec.settled_at(now, true))
                        || rec.answered_overdue(now).next().is_some()
                })
        })
    }

    /// A consistent list of the API server, begun after the call to
    /// [`Expectations::overdue`], holds the pods `listed` of `key`; `unseen` when one of
    /// them that is its own is missing from the cache. An answered creation overdue and
    /// not listed was deleted: no longer expected. If no pod of its own is unseen, the
    /// creations of unknown outcome past [`UNKNOWN_OUTCOME_TIMEOUT`] were not stored
    /// (kube-apiserver ends every request within its timeout): no longer expected either.
    pub fn settle_overdue(&self, key: &str, owner: &str, listed: &HashSet<String>, unseen: bool) {
        let now = Instant::now();
        self.with(|r| {
            if let Some(rec) = r.get_mut(key).filter(|rec| rec.owner == owner) {
                let gone: HashSet<String> = rec
                    .answered_overdue(now)
                    .filter(|a| !listed.contains(&a.uid))
                    .map(|a| a.uid.clone())
                    .collect();
                rec.answered.retain(|a| !gone.contains(&a.uid));
                rec.settle_gone(gone.len());
                if unseen {
                    // One of them may be among the pods the watch has yet to show: not
                    // given up on time alone for another while.
                    rec.unknown.iter_mut().for_each(|failed| *failed = now);
                } else {
                    let before = rec.unknown.len();
                    rec.unknown.retain(|failed| !given_up(*failed, now));
                    rec.creations = rec.creations.saturating_sub(before - rec.unknown.len());
                }
                if !gone.is_empty() {
                    let mut settled = self.settled_gone.lock().unwrap_or_else(|p| p.into_inner());
                    settled.retain(|_, at| now.duration_since(*at) < EXPECTATIONS_TIMEOUT);
                    settled.extend(gone.into_iter().map(|uid| (uid, now)));
                }
            }
        });
    }

    /// The watch saw the pod `uid` go (or start terminating), or its deletion failed.
    /// (A pod UID names one pod of one owner, so this needs no owner.)
    pub fn deletion_observed(&self, key: &str, uid: &str) {
        self.with(|r| {
            if let Some(rec) = r.get_mut(key) {
                rec.deletions.remove(uid);
            }
        });
    }

    /// True when nothing is outstanding for the CraneReplicaSet `owner`, or the
    /// outstanding record has timed out (a lost watch event must not block it for good).
    pub fn satisfied(&self, key: &str, owner: &str) -> bool {
        self.satisfied_at(key, owner, Instant::now())
    }

    fn satisfied_at(&self, key: &str, owner: &str, now: Instant) -> bool {
        self.with(|r| match r.get(key) {
            Some(rec) if rec.owner == owner => {
                let watch_works = !self
                    .pod_watch_broken
                    .load(std::sync::atomic::Ordering::SeqCst);
                rec.settled_at(now, watch_works)
                    || now.duration_since(rec.since) >= EXPECTATIONS_TIMEOUT
            }
            // None recorded, or recorded for an earlier object of the same name.
            _ => true,
        })
    }

    /// The record of `key`, for a debug log.
    pub fn debug_record(&self, key: &str) -> Option<String> {
        self.with(|r| r.get(key).map(|rec| format!("{rec:?}")))
    }

    /// Forget a CraneReplicaSet (deleted).
    pub fn forget(&self, key: &str) {
        self.with(|r| r.remove(key));
    }

    /// The keys of the CraneReplicaSets a record is kept for.
    pub fn keys(&self) -> Vec<Key> {
        self.with(|r| r.keys().cloned().collect())
    }

    /// How many CraneReplicaSets have outstanding expectations (a metric).
    pub fn unsatisfied(&self) -> usize {
        self.with(|r| r.values().filter(|rec| !rec.fulfilled()).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: [&str; 0] = [];

    #[tokio::test(start_paused = true)]
    async fn unknown_creations_overdue_behind_a_broken_watch_are_given_up_only_when_asked() {
        let e = Expectations::default();
        e.expect("ns/a", "u", 2, NONE);
        e.creation_unknown("ns/a", "u");
        e.pod_watch(false);
        assert!(!e.overdue("ns/a", "u"), "not before its timeout");
        tokio::time::sleep(UNKNOWN_OUTCOME_TIMEOUT).await;
        assert!(
            !e.overdue("ns/a", "u"),
            "a creation of known outcome still waits"
        );
        e.creation_observed("ns/a", "u");
        assert!(
            !e.satisfied("ns/a", "u"),
            "a broken watch may not have shown it yet"
        );
        assert!(e.overdue("ns/a", "u"));
        e.settle_overdue("ns/a", "u", &HashSet::new(), false);
        assert!(e.satisfied("ns/a", "u"));
        assert!(!e.overdue("ns/a", "u"));
    }

    /// A pod created, answered, and deleted before the watch showed it, where no relist
    /// can tell (the answer came while the watch relisted, after the pod was already gone
    /// from the list): the answer is looked up after the bound, not waited for 5 minutes.
    #[tokio::test(start_paused = true)]
    async fn an_answered_creation_never_seen_is_looked_up_and_settled_when_not_listed() {
        let e = Expectations::default();
        e.expect("ns/a", "u", 2, NONE);
        e.creation_answered("ns/a", "u", "gone");
        e.creation_answered("ns/a", "u", "lagging");
        assert!(!e.overdue("ns/a", "u"), "the watch shows it any moment");
        let left = e.wait_ends_in("ns/a", "u").expect("the pass looks again");
        assert!(left <= UNKNOWN_OUTCOME_TIMEOUT, "{left:?}");
        tokio::time::sleep(UNKNOWN_OUTCOME_TIMEOUT).await;
        assert!(e.overdue("ns/a", "u"));
        let listed = HashSet::from(["lagging".to_string()]);
        e.settle_overdue("ns/a", "u", &listed, true);
        assert!(
            !e.satisfied("ns/a", "u"),
            "a listed pod the watch has not shown yet is still expected"
        );
        e.pod_observed("ns/a", "u", "lagging");
        assert!(e.satisfied("ns/a", "u"));
        assert!(!e.overdue("ns/a", "u"));
    }

    /// A lookup settled a pod as gone; a watch that lags then shows it: that sighting is
    /// not one of the next record's creations, whose own pod would be made again.
    #[tokio::test(start_paused = true)]
    async fn a_pod_settled_as_gone_and_shown_late_does_not_count_for_the_next_record() {
        let e = Expectations::default();
        e.expect("ns/a", "u", 1, NONE);
        e.creation_answered("ns/a", "u", "gone");
        tokio::time::sleep(UNKNOWN_OUTCOME_TIMEOUT).await;
        e.settle_overdue("ns/a", "u", &HashSet::new(), false);
        assert!(e.satisfied("ns/a", "u"));
        e.expect("ns/a", "u", 1, NONE);
        e.pod_observed("ns/a", "u", "gone");
        assert!(
            !e.satisfied("ns/a", "u"),
            "the late sighting of the gone pod is not the new creation"
        );
        e.pod_observed("ns/a", "u", "new");
        assert!(e.satisfied("ns/a", "u"));
    }

    /// Two creations: one answered, one whose answer was lost but that was stored and has
    /// been seen. The count says one creation is left, of unknown outcome; but the one
    /// left is the answered pod, stored for sure: it is not given up on time alone.
    #[tokio::test(start_paused = true)]
    async fn an_answered_creation_is_not_given_up_in_place_of_an_unknown_one_seen() {
        let e = Expectations::default();
        e.expect("ns/a", "u", 2, NONE);
        e.creation_answered("ns/a", "u", "answered");
        e.creation_unknown("ns/a", "u");
        e.pod_observed("ns/a", "u", "lost-answer");
        tokio::time::sleep(UNKNOWN_OUTCOME_TIMEOUT).await;
        assert!(
            !e.satisfied("ns/a", "u"),
            "the answered pod is still to be seen"
        );
        e.pod_observed("ns/a", "u", "answered");
        assert!(e.satisfied("ns/a", "u"));
    }

    #[test]
    fn creations_are_satisfied_once_all_are_observed() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/a", "u"));
        e.expect("ns/a", "u", 2, NONE);
        assert!(!e.satisfied("ns/a", "u"));
        e.creation_observed("ns/a", "u");
        assert!(!e.satisfied("ns/a", "u"));
        e.creation_observed("ns/a", "u");
        assert!(e.satisfied("ns/a", "u"));
        assert!(e.satisfied("ns/b", "u"), "keys are independent");
    }

    #[test]
    fn deletions_are_tracked_by_uid() {
        let e = Expectations::default();
        e.expect("ns/a", "u", 0, ["p1", "p2"]);
        e.deletion_observed("ns/a", "p3");
        assert_eq!(e.unsatisfied(), 1);
        e.deletion_observed("ns/a", "p1");
        e.deletion_observed("ns/a", "p2");
        assert!(e.satisfied("ns/a", "u"));
        assert_eq!(e.unsatisfied(), 0);
    }

    #[test]
    fn observations_without_expectations_are_ignored() {
        let e = Expectations::default();
        e.creation_observed("ns/a", "u");
        e.expect("ns/a", "u", 1, NONE);
        assert!(
            !e.satisfied("ns/a", "u"),
            "an earlier observation must not pre-pay a later expectation"
        );
    }

    #[test]
    fn outstanding_expectations_time_out() {
        let e = Expectations::default();
        // The record's clock starts between these two instants.
        let before = Instant::now();
        e.expect("ns/a", "u", 1, NONE);
        let later = Instant::now() + EXPECTATIONS_TIMEOUT;
        let just_before = before + EXPECTATIONS_TIMEOUT - Duration::from_millis(1);
        assert!(
            !e.satisfied_at("ns/a", "u", just_before),
            "an unobserved creation blocks the object until the very end of its timeout"
        );
        assert!(e.satisfied_at("ns/a", "u", later));
        e.forget("ns/a");
        assert!(e.satisfied("ns/a", "u"));
    }

    #[test]
    fn a_lost_observation_does_not_block_the_writes_after_its_timeout() {
        let e = Expectations::default();
        e.expect("ns/a", "u", 3, NONE);
        e.creation_observed("ns/a", "u");
        e.creation_observed("ns/a", "u");
        // The third creation is never seen; after the timeout the object plans again
        // and writes anew. The new record is about the new writes alone.
        e.expect("ns/a", "u", 2, ["p1"]);
        e.creation_observed("ns/a", "u");
        e.creation_observed("ns/a", "u");
        e.deletion_observed("ns/a", "p1");
        assert!(
            e.satisfied("ns/a", "u"),
            "the lost creation of the earlier write must not count"
        );
    }

    #[test]
    fn a_recreated_object_of_the_same_name_starts_clean() {
        let e = Expectations::default();
        e.expect("ns/a", "old", 5, NONE);
        assert!(
            e.satisfied("ns/a", "new"),
            "the old object's record is not the new one's"
        );
        e.expect("ns/a", "new", 1, NONE);
        // The old object's pods, still seen by the watch, are not the new one's creations.
        e.creation_observed("ns/a", "old");
        assert!(!e.satisfied("ns/a", "new"));
        e.creation_observed("ns/a", "new");
        assert!(e.satisfied("ns/a", "new"));
    }

    #[test]
    fn a_creation_of_unknown_outcome_is_given_up_on_after_its_bound_while_the_watch_works() {
        let e = Expectations::default();
        let t0 = Instant::now();
        e.expect("ns/a", "u", 1, NONE);
        e.creation_unknown("ns/a", "u");
        let at = |secs: u64| e.satisfied_at("ns/a", "u", t0 + Duration::from_secs(secs));
        assert!(!at(0), "it may have been stored");
        assert!(
            !at(UNKNOWN_OUTCOME_TIMEOUT.as_secs() - 2),
            "the API server may still store it"
        );
        assert!(
            at(UNKNOWN_OUTCOME_TIMEOUT.as_secs() + 1),
            "no request outlives the bound"
        );
        e.pod_watch(false);
        assert!(
            !at(UNKNOWN_OUTCOME_TIMEOUT.as_secs() + 1),
            "a broken pod watch may not have shown it yet"
        );
        e.pod_watch(true);
        assert!(at(UNKNOWN_OUTCOME_TIMEOUT.as_secs() + 1));
        let left = e.wait_ends_in("ns/a", "u").expect("one waits");
        assert!(left <= UNKNOWN_OUTCOME_TIMEOUT, "{left:?}");

        // Seen: settled at once.
        e.creation_observed("ns/a", "u");
        assert!(e.satisfied("ns/a", "u"));
        assert_eq!(e.wait_ends_in("ns/a", "u"), None);
    }
}
