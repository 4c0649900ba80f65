//! A restart of a CraneReplicaSet's pods, as `kubectl rollout restart` does a Deployment's:
//! the template gets a `kubectl.kubernetes.io/restartedAt` annotation, and a RollingUpdate
//! object replaces its pods a few at a time. The dashboard's restart button and `kubectl
//! crane restart` both go through [`restart`].

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::api::{CraneReplicaSet, UpdateStrategyType};

/// kubectl rollout restart's annotation, set on the pod template.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Reads of an object a restart makes before it gives up on an object that keeps changing
/// (its status is written while its pods change).
const ATTEMPTS: usize = 3;

/// Why a restart did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object is not one whose pods a template change replaces.
    #[error("{0}")]
    Refused(String),
    /// The object changed between each read and its patch, [`ATTEMPTS`] times.
    #[error("{0} kept changing while it was being restarted: try again")]
    KeptChanging(String),
    /// The API server's answer (not found, forbidden, ...).
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// Why a restart of `crs` is refused: only a RollingUpdate object replaces its pods when
/// its template changes (the dashboard disables its button with this reason).
pub fn refused(crs: &CraneReplicaSet) -> Option<String> {
    (crs.spec.update_strategy.type_ != UpdateStrategyType::RollingUpdate).then(|| {
        format!(
            "{} has updateStrategy OnDelete: a restart would replace no pod (delete its pods instead)",
            crs.name_any()
        )
    })
}

/// Restarts `name` if, as the API server has it now, it is a RollingUpdate object: a page
/// or a cache may be a moment behind a strategy just changed. The patch applies only to the
/// version that was read (its resourceVersion); when the object changed in between, it is
/// read and decided again. Returns the object as patched.
pub async fn restart(api: &Api<CraneReplicaSet>, name: &str) -> Result<CraneReplicaSet, Error> {
    for _ in 0..ATTEMPTS {
        let crs = api.get(name).await?;
        if let Some(refused) = refused(&crs) {
            return Err(Error::Refused(refused));
        }
        let now = jiff::Timestamp::now().to_string();
        let patch = Patch::Merge(json!({
            "metadata": { "resourceVersion": crs.resource_version() },
            "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT: now } } } }
        }));
        match api.patch(name, &PatchParams::default(), &patch).await {
            Ok(patched) => return Ok(patched),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::KeptChanging(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_rolling_update_object_is_restarted() {
        let object = |strategy| {
            let mut crs = crate::api::fixtures::crane(1);
            crs.spec.update_strategy.type_ = strategy;
            crs
        };
        assert_eq!(refused(&object(UpdateStrategyType::RollingUpdate)), None);
        let refused = refused(&object(UpdateStrategyType::OnDelete)).expect("refused");
        assert!(
            refused.contains("crane has updateStrategy OnDelete"),
            "{refused}"
        );
    }
}
