//! Chaos tests on the local control plane (`make chaos`): the operator SIGKILLed while it
//! scales, kube-apiserver and etcd restarted under it, its pods and Service tampered with,
//! two clients scaling at once, a hundred CraneReplicaSets at once. Each scenario is bounded
//! in rounds and time, seeded (`CRANE_CHAOS_SEED`, printed first), and checks after every
//! fault that the pods converge to spec.replicas, that no pod was created beyond what was
//! needed (the overshoot, whose goal is zero), that the status says so, and that the
//! operator never exits except on SIGTERM. The figures (faults, convergence times,
//! overshoot) go to stderr as `chaos[scenario]: ...` lines; run with `--nocapture`.
//!
//! Run with `--test-threads 1`: the control-plane scenarios stop kube-apiserver and etcd
//! (and afterwards restart kube-controller-manager, kube-scheduler and kwok-controller,
//! whose watches do not always recover by themselves), which every other test on the
//! cluster would notice. They fail on any cluster but this checkout's local one; leave
//! them out there with `-- --skip control_plane`.

#[allow(dead_code)]
#[path = "../e2e/harness.rs"]
mod harness;

mod concurrent_scale;
mod control_plane;
mod disruption;
mod many;
mod operator_kill;
#[allow(dead_code)]
#[path = "../e2e/placement.rs"]
mod placement;
mod support;
