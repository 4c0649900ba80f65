//! crane-operator: the ReplicationController of "Kubernetes in Action" as a CraneReplicaSet.
//!
//! The decisions live in pure modules (`planner`, `deletion_order`, `status`, `service`,
//! `diagnostics`); `expectations` is the record, shared by the pod watch and the passes, of
//! writes not yet seen; `controller` runs them against the API server.

/// The git commit this binary was built from (build.rs), or "unknown".
pub const GIT_COMMIT: &str = env!("CRANE_GIT_COMMIT");
/// What `--version` prints after the binary's name: the package version and the commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CRANE_GIT_COMMIT"),
    ")"
);

pub mod access;
pub mod api;
pub mod cli;
pub mod client;
pub mod clock;
pub mod controller;
pub mod dashboard;
pub mod decode;
pub mod deletion_order;
pub mod diagnostics;
pub mod expectations;
pub mod leader;
pub mod metrics;
pub mod planner;
pub mod plugin;
pub mod pod_cache;
pub mod pods;
pub mod probe;
pub mod recorder;
pub mod restart;
pub mod service;
pub mod status;
pub mod telemetry;
