//! Leader election on a coordination.k8s.io Lease, with client-go's rules, so that of
//! several operator replicas exactly one reconciles.
//!
//! A candidate takes the Lease when it is free or its holder has not renewed it for
//! `lease_duration` (measured on the candidate's own clock from when it last saw the
//! record change, so clock skew between machines does not matter). The leader renews every
//! `retry_period` and steps down by itself when it could not renew for `renew_deadline`,
//! which is shorter than `lease_duration`: it has stopped before anyone else may start.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

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
            let leader = match self.attempt().await {
                Ok(Attempt::Leading) => {
                    self.last_renewal = Some(Instant::now());
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
        MicroTime(Timestamp::now())
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
