//! Creations and deletions a controller has asked for but not yet seen in its pod cache.
//!
//! A reconcile that reads a cache from before its own last writes would create or delete
//! the same pods again. As in kube-controller-manager's `ControllerExpectations`, each
//! CraneReplicaSet records what it expects before it writes, the pod watch marks what it
//! observes, and the planner only scales while nothing is outstanding (or the record is
//! older than [`EXPECTATIONS_TIMEOUT`], in case a watch event was lost).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long unobserved expectations block scaling, as in kube-controller-manager.
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The key of a CraneReplicaSet: `namespace/name`.
pub type Key = String;

#[derive(Debug)]
struct Record {
    creations: usize,
    deletions: HashSet<String>,
    since: Instant,
}

/// Outstanding expectations per CraneReplicaSet. Cheap to share: one lock, short sections.
#[derive(Debug, Default)]
pub struct Expectations {
    records: Mutex<HashMap<Key, Record>>,
}

impl Expectations {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<Key, Record>) -> R) -> R {
        // A panic while holding the lock leaves plain counters behind: still usable.
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut records)
    }

    fn record<'a>(records: &'a mut HashMap<Key, Record>, key: &str) -> &'a mut Record {
        records.entry(key.to_string()).or_insert_with(|| Record {
            creations: 0,
            deletions: HashSet::new(),
            since: Instant::now(),
        })
    }

    /// Before creating `n` pods.
    pub fn expect_creations(&self, key: &str, n: usize) {
        self.with(|r| {
            let rec = Self::record(r, key);
            rec.creations += n;
            rec.since = Instant::now();
        });
    }

    /// Before deleting these pods.
    pub fn expect_deletions<'a>(&self, key: &str, uids: impl IntoIterator<Item = &'a str>) {
        self.with(|r| {
            let rec = Self::record(r, key);
            rec.deletions.extend(uids.into_iter().map(str::to_string));
            rec.since = Instant::now();
        });
    }

    /// The watch saw a new pod of this CraneReplicaSet, or a creation failed and will not
    /// be seen.
    pub fn creation_observed(&self, key: &str) {
        self.with(|r| {
            if let Some(rec) = r.get_mut(key) {
                rec.creations = rec.creations.saturating_sub(1);
            }
        });
    }

    /// The watch saw this pod go (or start terminating), or its deletion failed.
    pub fn deletion_observed(&self, key: &str, uid: &str) {
        self.with(|r| {
            if let Some(rec) = r.get_mut(key) {
                rec.deletions.remove(uid);
            }
        });
    }

    /// True when nothing is outstanding, or the outstanding record has timed out.
    pub fn satisfied(&self, key: &str) -> bool {
        self.satisfied_at(key, Instant::now())
    }

    fn satisfied_at(&self, key: &str, now: Instant) -> bool {
        self.with(|r| match r.get(key) {
            None => true,
            Some(rec) => {
                (rec.creations == 0 && rec.deletions.is_empty())
                    || now.duration_since(rec.since) >= EXPECTATIONS_TIMEOUT
            }
        })
    }

    /// Forget a CraneReplicaSet (deleted, or its record timed out and it re-plans).
    pub fn forget(&self, key: &str) {
        self.with(|r| r.remove(key));
    }

    /// How many CraneReplicaSets have outstanding expectations (a metric).
    pub fn unsatisfied(&self) -> usize {
        self.with(|r| {
            r.values()
                .filter(|rec| rec.creations > 0 || !rec.deletions.is_empty())
                .count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creations_are_satisfied_once_all_are_observed() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/a"));
        e.expect_creations("ns/a", 2);
        assert!(!e.satisfied("ns/a"));
        e.creation_observed("ns/a");
        assert!(!e.satisfied("ns/a"));
        e.creation_observed("ns/a");
        assert!(e.satisfied("ns/a"));
        assert!(e.satisfied("ns/b"), "keys are independent");
    }

    #[test]
    fn deletions_are_tracked_by_uid() {
        let e = Expectations::default();
        e.expect_deletions("ns/a", ["u1", "u2"]);
        e.deletion_observed("ns/a", "u3");
        assert_eq!(e.unsatisfied(), 1);
        e.deletion_observed("ns/a", "u1");
        e.deletion_observed("ns/a", "u2");
        assert!(e.satisfied("ns/a"));
        assert_eq!(e.unsatisfied(), 0);
    }

    #[test]
    fn observations_without_expectations_are_ignored() {
        let e = Expectations::default();
        e.creation_observed("ns/a");
        e.expect_creations("ns/a", 1);
        assert!(
            !e.satisfied("ns/a"),
            "an earlier observation must not pre-pay a later expectation"
        );
    }

    #[test]
    fn outstanding_expectations_time_out() {
        let e = Expectations::default();
        e.expect_creations("ns/a", 1);
        let later = Instant::now() + EXPECTATIONS_TIMEOUT;
        assert!(e.satisfied_at("ns/a", later));
        e.forget("ns/a");
        assert!(e.satisfied("ns/a"));
    }
}
