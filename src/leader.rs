//! Leader election on a coordination.k8s.io Lease, with client-go's rules, so that of
//! several operator replicas exactly one reconciles.
//!
//! A candidate takes the Lease when it is free or its holder has not renewed it for
//! `lease_duration` (measured on the candidate's own clock from when it last saw the
//! record change, so clock skew between machines does not matter). The leader renews every
//! `retry_period` and steps down by itself when it could not renew for `renew_deadline`,
//! which is shorter than `lease_duration`: it has stopped before anyone else may start.
//! Every request is bounded by that deadline, so a hung one cannot keep a leader leading
//! (client-go bounds its renewals the same way); the Lease's client makes no retries.

use std::time::Duration;
use tokio::time::Instant;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::{Health, Metrics};

/// The election's timings (client-go's defaults).
#[derive(Clone, Debug)]
pub struct Timings {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
    /// The last record seen and when it was first seen in that form.
    observed: Option<(LeaseSpec, Instant)>,
    last_renewal: Option<Instant>,
}

/// The outcome of one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Leading,
    Following(Option<String>),
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timings: Timings,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timings,
            observed: None,
            last_renewal: None,
        }
    }

    /// Campaigns until `stop` turns true; publishes whether this process leads on `leading`.
    /// Releases the Lease on the way out, so a successor need not wait for it to expire.
    pub async fn run(mut self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        info!(lease = %self.name, identity = %self.identity, "campaigning for leadership");
        while !*stop.borrow() {
            let started = Instant::now();
            // A leader must renew before its deadline; a follower's attempt is bounded too.
            let deadline = match self.last_renewal {
                Some(renewed) if *leading.borrow() => renewed + self.timings.renew_deadline,
                _ => started + self.timings.renew_deadline,
            };
            let attempt = match tokio::time::timeout_at(deadline, self.attempt()).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err("no answer before the renew deadline".to_string()),
            };
            let leader = match attempt {
                Ok(Attempt::Leading) => {
                    // The renewTime written is from when the request was sent, and others
                    // count from no earlier than that.
                    self.last_renewal = Some(started);
                    true
                }
                Ok(Attempt::Following(holder)) => {
                    if *leading.borrow() {
                        warn!(holder = ?holder, "lost the leader lease");
                    }
                    false
                }
                Err(e) => {
                    let within = self
                        .last_renewal
                        .is_some_and(|t| t.elapsed() < self.timings.renew_deadline);
                    if *leading.borrow() && !within {
                        warn!(error = %e, "could not renew the leader lease in time; stepping down");
                    } else {
                        warn!(error = %e, "leader election request failed; retrying");
                    }
                    *leading.borrow() && within
                }
            };
            if leader != *leading.borrow() {
                if leader {
                    info!(lease = %self.name, "became the leader");
                }
                let _ = leading.send(leader);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timings.retry_period) => {}
                _ = stop.changed() => {}
            }
        }
        if *leading.borrow() {
            let _ = leading.send(false);
            self.release().await;
        }
    }

    fn now() -> MicroTime {
        MicroTime(crate::clock::now())
    }

    async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
        let secs = i32::try_from(self.timings.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(Self::now()),
                    renew_time: Some(Self::now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following(None)),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if self.observed.as_ref().map(|(s, _)| s) != Some(&spec) {
            self.observed = Some((spec.clone(), Instant::now()));
        }
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let held_for =
            Duration::from_secs(spec.lease_duration_seconds.unwrap_or(secs).max(0) as u64);
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() >= held_for);
        if holder.is_some() && !ours && !expired {
            return Ok(Attempt::Following(holder));
        }
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(secs),
            acquire_time: if ours {
                spec.acquire_time
            } else {
                Some(Self::now())
            },
            renew_time: Some(Self::now()),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!ours)),
            ..spec
        });
        // The resourceVersion in `lease` makes this a compare-and-swap: of two candidates
        // that saw the same expired record, one wins and the other gets 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following(holder)),
            Err(e) => Err(e),
        }
    }

    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(Self::now());
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.name, "released the leader lease"),
            Err(e) => warn!(error = %e, "could not release the leader lease; it expires by itself"),
        }
    }
}

/// A candidate's part in the election: a standby until `leading` turns true (or `stop`
/// does), then the leader running `work` until it ends; a lost lease ends it with an error.
pub async fn stand_by_then_lead<F: std::future::Future<Output = ()>>(
    health: &Health,
    metrics: &Metrics,
    mut leading: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    work: impl FnOnce() -> F,
) -> anyhow::Result<()> {
    // A standby serves nothing but is ready to: it must not hold up a rollout.
    health.set_standby(true);
    let elected = tokio::select! {
        _ = stop.wait_for(|s| *s) => false,
        won = leading.wait_for(|l| *l) => won.is_ok(),
    };
    if elected {
        metrics.leader.set(1);
        health.set_standby(false);
        // SIGTERM lets the passes in flight finish (while the lease is still renewed);
        // a lost lease stops every write at once, as kube-controller-manager exits:
        // another leader may start as soon as the lease expires.
        tokio::select! {
            () = work() => {}
            _ = leading.wait_for(|l| !*l) => {
                metrics.leader.set(0);
                anyhow::bail!("lost the leader lease: stopped all work and exiting (a restart campaigns again)");
            }
        }
        metrics.leader.set(0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::json;
    use std::sync::Arc;
    use tower_test::mock;

    type Handle = mock::Handle<Request<Body>, Response<Body>>;

    fn timings() -> Timings {
        Timings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn lease(holder: &str) -> serde_json::Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "l", "namespace": "ns", "resourceVersion": "1"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                "renewTime": "2026-01-01T00:00:00.000000Z"}})
    }

    fn reply(status: u16, body: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .body(Body::from(body.to_string().into_bytes()))
            .unwrap()
    }

    /// Fails the test, rather than hanging it, when `what` does not happen within a lease
    /// duration (of the paused clock, which moves on while every task waits).
    async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(timings().lease_duration, f)
            .await
            .unwrap_or_else(|_| panic!("{what}: not within {:?}", timings().lease_duration))
    }

    /// Answers the next request, which must be `method`.
    async fn expect(handle: &mut Handle, method: Method, status: u16, body: serde_json::Value) {
        let (req, send) = within(&format!("a {method} request"), handle.next_request())
            .await
            .expect("a request");
        assert_eq!(req.method(), method, "{}", req.uri());
        send.send_response(reply(status, body));
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_renewal_hangs_steps_down_before_the_lease_expires_for_others() {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let elector = Elector::new(Client::new(service, "ns"), "ns", "l", "me", timings());
        let (leading_tx, mut leading) = watch::channel(false);
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(elector.run(leading_tx, stop));

        let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "not found"});
        expect(&mut handle, Method::GET, 404, not_found).await;
        let sent = Instant::now();
        expect(&mut handle, Method::POST, 201, lease("me")).await;
        within("leading", leading.wait_for(|l| *l)).await.unwrap();

        // The next renewal reads the Lease, then its write never gets an answer.
        expect(&mut handle, Method::GET, 200, lease("me")).await;
        let (_req, _never_answered) = within("the renewal", handle.next_request())
            .await
            .expect("the renewal");
        within(
            "stepping down while the renewal hangs",
            leading.wait_for(|l| !*l),
        )
        .await
        .unwrap();
        let stepped_down = sent.elapsed();
        assert!(
            stepped_down <= timings().renew_deadline,
            "still leading {stepped_down:?} after the last renewal was sent"
        );
        assert!(stepped_down < timings().lease_duration);
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_takes_over_only_after_the_lease_expired_on_its_own_clock() {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let elector = Elector::new(Client::new(service, "ns"), "ns", "l", "me", timings());
        let (leading_tx, leading) = watch::channel(false);
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(elector.run(leading_tx, stop));
        let first_seen = Instant::now();
        loop {
            // The other holder never renews: the record stays the same.
            expect(&mut handle, Method::GET, 200, lease("other")).await;
            if first_seen.elapsed() >= timings().lease_duration {
                break;
            }
            assert!(!*leading.borrow(), "took a Lease that had not expired");
        }
        expect(&mut handle, Method::PUT, 200, lease("me")).await;
        let mut leading = leading;
        within("taking the expired Lease", leading.wait_for(|l| *l))
            .await
            .unwrap();
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let polled = tokio::time::timeout(Duration::from_secs(1), async {
            while !check() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        polled.await.unwrap_or_else(|_| panic!("{what}"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_candidate_is_a_ready_standby_until_elected_then_a_leader_that_syncs_first() {
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::default());
        let (leading_tx, leading) = watch::channel(false);
        let (_stop_tx, stop) = watch::channel(false);
        let (seen_tx, seen) = tokio::sync::oneshot::channel();
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        let candidate = {
            let (health, metrics) = (health.clone(), metrics.clone());
            tokio::spawn(async move {
                let (h, m) = (health.clone(), metrics.clone());
                let work = move || async move {
                    let _ = seen_tx.send((h.is_ready(), m.leader.get()));
                    let _ = done.await;
                };
                stand_by_then_lead(&health, &metrics, leading, stop, work).await
            })
        };
        eventually(
            "a standby is ready although its caches never synced",
            || health.is_ready(),
        )
        .await;
        assert_eq!(metrics.leader.get(), 0, "a standby does not lead");

        leading_tx.send(true).unwrap();
        let (ready, leader) = seen.await.expect("the leader runs its work");
        assert!(!ready, "a new leader is not ready until its caches sync");
        assert_eq!(leader, 1);
        done_tx.send(()).unwrap();
        candidate
            .await
            .unwrap()
            .expect("work that ends is a clean end");
        assert_eq!(metrics.leader.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_loses_the_lease_stops_its_work_and_fails() {
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::default());
        let (leading_tx, leading) = watch::channel(false);
        let (_stop_tx, stop) = watch::channel(false);
        let candidate = {
            let (health, metrics) = (health.clone(), metrics.clone());
            tokio::spawn(async move {
                let work = std::future::pending::<()>;
                stand_by_then_lead(&health, &metrics, leading, stop, work).await
            })
        };
        leading_tx.send(true).unwrap();
        eventually("the candidate leads", || metrics.leader.get() == 1).await;
        leading_tx.send(false).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(1), candidate)
            .await
            .expect("a lost lease ends the work at once")
            .unwrap();
        let err = ended.expect_err("a lost lease is an error (the process exits)");
        assert!(err.to_string().contains("lost the leader lease"), "{err}");
        assert_eq!(metrics.leader.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_stopped_before_its_election_never_runs_the_work() {
        let (health, metrics) = (Health::default(), Metrics::default());
        let (_leading_tx, leading) = watch::channel(false);
        let (stop_tx, stop) = watch::channel(false);
        stop_tx.send(true).unwrap();
        let work = || async { panic!("a standby never reconciles") };
        stand_by_then_lead(&health, &metrics, leading, stop, work)
            .await
            .expect("a stop is a clean end");
        assert_eq!(metrics.leader.get(), 0);
    }
}
