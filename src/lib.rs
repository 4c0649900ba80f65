//! crane-operator: the ReplicationController of "Kubernetes in Action" as a CraneReplicaSet.
//!
//! The decisions live in pure modules (`planner`, `deletion_order`, `status`, `service`,
//! `diagnostics`); `expectations` is the record, shared by the pod watch and the passes, of
//! writes not yet seen; `controller` runs them against the API server.

pub mod access;
pub mod api;
pub mod client;
pub mod controller;
pub mod dashboard;
pub mod decode;
pub mod deletion_order;
pub mod diagnostics;
pub mod expectations;
pub mod leader;
pub mod metrics;
pub mod planner;
pub mod pod_cache;
pub mod pods;
pub mod probe;
pub mod recorder;
pub mod service;
pub mod status;
pub mod telemetry;
