//! The wire scenario's section of report.md (JSON versus protobuf) and its problems.

use std::fmt::Write as _;

use super::{Report, f2};
use crate::scenarios::median;
use crate::wire::{ARMS, WireRun};

/// Median and range of `f` over the arm's rounds.
fn spread(runs: &[&WireRun], f: impl Fn(&WireRun) -> f64) -> (f64, f64, f64) {
    let values: Vec<f64> = runs.iter().map(|r| f(r)).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(values), lo, hi)
}

fn cell((m, lo, hi): (f64, f64, f64)) -> String {
    if lo == hi {
        f2(m)
    } else {
        format!("{} ({}–{})", f2(m), f2(lo), f2(hi))
    }
}

impl Report {
    fn wire_arm(&self, arm: &str) -> Vec<&WireRun> {
        self.wire.iter().filter(|r| r.arm == arm).collect()
    }

    /// One line per arm, then what a watch event itself costs (its arm minus `watch none`,
    /// round by round).
    pub(super) fn write_wire(&self, s: &mut String) -> std::fmt::Result {
        if self.wire.is_empty() {
            return Ok(());
        }
        let rounds = self.wire.iter().map(|r| r.round).max().unwrap_or(0);
        writeln!(
            s,
            "## Wire format: kube-apiserver CPU per request, JSON versus protobuf (median of {rounds} rounds, range)\n"
        )?;
        writeln!(
            s,
            "| arm | items | kube-apiserver CPU ms per item | items/s |"
        )?;
        writeln!(s, "|---|---:|---:|---:|")?;
        for arm in ARMS {
            let runs = self.wire_arm(arm);
            if runs.is_empty() {
                continue;
            }
            writeln!(
                s,
                "| {arm} | {} | {} | {} |",
                median(runs.iter().map(|r| r.items as f64)),
                cell(spread(&runs, WireRun::cpu_ms_per_item)),
                f2(median(runs.iter().map(|r| r.items as f64 / r.seconds)))
            )?;
        }
        let marginal = |arm: &str| -> Option<(f64, f64, f64)> {
            let with: Vec<WireRun> = self
                .wire_arm(arm)
                .into_iter()
                .filter_map(|w| {
                    let none = self
                        .wire
                        .iter()
                        .find(|n| n.arm == "watch none" && n.round == w.round)?;
                    Some(WireRun {
                        apiserver_cpu_s: w.apiserver_cpu_s
                            - none.apiserver_cpu_s * w.items as f64 / none.items.max(1) as f64,
                        ..w.clone()
                    })
                })
                .collect();
            let refs: Vec<&WireRun> = with.iter().collect();
            (!refs.is_empty()).then(|| spread(&refs, WireRun::cpu_ms_per_item))
        };
        writeln!(s)?;
        for arm in ["watch json", "watch protobuf"] {
            if let Some(m) = marginal(arm) {
                writeln!(
                    s,
                    "- one event of a {} pod watch costs kube-apiserver **{} CPU ms** (the arm minus `watch none`, round by round){}",
                    arm.trim_start_matches("watch "),
                    cell(m),
                    if m.0 < 0.0 {
                        ": below zero, so what an arm inherits from the one before it (the API server's garbage collection, its caches) outweighs a watch's cost in this run"
                    } else {
                        ""
                    }
                )?;
            }
        }
        writeln!(
            s,
            "\nEach arm: kube-apiserver's CPU over the arm, less its idle rate (measured for 1 s right before the arm, once every earlier namespace is gone) over the same time. `create`: the same bare pod (never scheduled), body and answer in that format, 32 requests in flight. `watch`: a JSON merge patch of one label on each pod, with no extra watch, or with one watch of the namespace's pods in that format that sees every change (kube-controller-manager and kube-scheduler watch every pod in protobuf already, so a protobuf watch's events are encoded anyway, a JSON watch's are not). `list`: a kube-runtime watcher's initial list of the namespace's pods (every pod of the create arms so far), pages of 500 or one streaming list (`sendInitialEvents`).\n"
        )
    }

    pub(super) fn wire_problems(&self) -> Vec<String> {
        ARMS.iter()
            .filter(|arm| self.wire_arm(arm).is_empty())
            .map(|arm| format!("wire: no result for {arm}"))
            .collect()
    }
}
