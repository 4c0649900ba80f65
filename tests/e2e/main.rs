//! End-to-end tests on a real control plane (`make cluster`, or KUBECONFIG): each test has
//! its own namespace and, unless CRANE_E2E_EXTERNAL_OPERATOR=1, its own operator process.
//! They mirror Kubernetes' own ReplicaSet integration tests.
mod aggregated;
mod corpus;
mod dashboard;
mod diagnostics;
mod failures;
mod harness;
mod kstatus;
mod operations;
mod ownership;
mod placement;
mod plugin;
mod poison;
mod rbac;
mod replicas;
mod rollout;
mod scale_up;
mod service;
mod validation;
