//! The fleet's section of report.md, its problems, and its chart (fleet-cost.png).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};

use super::{Report, f0, f1, f2, plot_err, register_font, writers};
use crate::cluster::{NO_SCHEDULER, Variant};
use crate::fleet::{FleetRun, FleetStep, thousands};
use crate::operator::Usage;
use crate::scenarios::median;

/// The chart of cost versus fleet size.
pub const CHART: &str = "fleet-cost.png";

const CONTENDERS: [Variant; 2] = [Variant::Crane, Variant::Native];

/// One line of the chart: (fleet pods, value) at each size that has one.
type Series = (String, plotters::style::RGBColor, Vec<(f64, f64)>);

fn opt(x: Option<f64>, fmt: fn(f64) -> String) -> String {
    x.map_or("–".into(), fmt)
}

fn per_thousand(cpu_s: Option<f64>, pods: usize) -> Option<f64> {
    cpu_s.map(|c| c * 1000.0 / pods as f64)
}

fn memory(u: Option<Usage>) -> String {
    u.map_or("–".into(), |u| {
        format!("{:.0} ({:.0})", u.rss_mib, u.peak_rss_mib)
    })
}

fn new_pod_ms(st: &FleetStep) -> f64 {
    median(st.probe.new_pod_ms.iter().copied())
}

fn status_ms(st: &FleetStep) -> f64 {
    median(st.probe.status_ms.iter().copied())
}

impl Report {
    fn fleet_of(&self, v: Variant) -> Option<&FleetRun> {
        self.fleet.iter().find(|r| r.variant == v)
    }

    /// The step of contender `v` at `pods` fleet pods.
    fn fleet_step(&self, v: Variant, pods: usize) -> Option<&FleetStep> {
        self.fleet_of(v)?.steps.iter().find(|s| s.pods == pods)
    }

    /// What the fleet lacks or got wrong: sizes not measured, pods created beyond the ones
    /// asked for, writes on a cold start over a converged fleet.
    pub(super) fn fleet_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for v in CONTENDERS {
            let Some(run) = self.fleet_of(v) else {
                problems.push(format!("fleet {}: no result", v.name()));
                continue;
            };
            let name = v.name();
            if run.steps.len() < self.plan.fleet_steps.len() {
                problems.push(format!(
                    "fleet {name}: {} of {} sizes measured",
                    run.steps.len(),
                    self.plan.fleet_steps.len()
                ));
            }
            for st in &run.steps {
                if st.extra_pods > 0 {
                    problems.push(format!(
                        "overshoot: fleet {name} created {} pods beyond the {} its growth to {} pods asked for",
                        st.extra_pods, st.added, st.pods
                    ));
                }
            }
            match &run.recovery {
                None => problems.push(format!("fleet {name}: no 10 % deletion")),
                Some(r) if r.extra_pods > 0 => problems.push(format!(
                    "overshoot: fleet {name} created {} pods beyond the {} deleted ones",
                    r.extra_pods, r.deleted
                )),
                Some(_) => {}
            }
            if run.steady.is_none() {
                problems.push(format!("fleet {name}: no steady-state window"));
            }
        }
        if let Some(run) = self.fleet_of(Variant::Crane) {
            match &run.cold_start {
                None => problems.push("fleet crane: no cold start".into()),
                Some(cs) => {
                    if cs.writes.total > 0 || cs.operator_writes > 0.0 {
                        problems.push(format!(
                            "fleet crane: the cold start over a converged fleet wrote ({}; the operator counted {:.0} requests other than GET): it needs no write at all",
                            writers(&cs.writes.by_writer),
                            cs.operator_writes
                        ));
                    }
                    if cs.correct < cs.objects {
                        problems.push(format!(
                            "fleet crane: after the cold start {} of {} statuses were correct",
                            cs.correct, cs.objects
                        ));
                    }
                }
            }
        }
        problems
    }

    pub(super) fn write_fleet(&self, s: &mut String) -> std::fmt::Result {
        if self.fleet.is_empty() {
            return Ok(());
        }
        let p = &self.plan;
        let total = p.fleet_objects * p.fleet_replicas;
        let sizes: Vec<usize> = p.fleet_steps.iter().map(|o| o * p.fleet_replicas).collect();
        let sizes_text = sizes
            .iter()
            .map(|&n| thousands(n))
            .collect::<Vec<_>>()
            .join(" → ");
        writeln!(
            s,
            "## Fleet: {} objects × {} pods = {} pods, never scheduled\n",
            thousands(p.fleet_objects),
            p.fleet_replicas,
            thousands(total)
        )?;
        writeln!(
            s,
            "Each contender grows a fleet of its own, in a namespace of its own, through {sizes_text} pods (the bench creates the objects {} requests at a time): native first, while kube-controller-manager has cached no fleet yet, then crane; the native fleet's pods are gone before crane's start. The pods name a scheduler that does not exist (`{NO_SCHEDULER}`), so neither kube-scheduler nor kwok works on them: only their controller does. Native's memory and CPU are those of the whole kube-controller-manager (all its controllers; it caches every pod of the cluster).\n",
            p.object_parallelism
        )?;

        writeln!(s, "### Growing the fleet\n")?;
        writeln!(
            s,
            "| fleet pods | crane: new pods created, s | native, s | crane pods/s | native pods/s | crane/native | crane: every status correct, s | native, s | kube-apiserver CPU s per 1,000 pods added: crane | native | kube-apiserver RSS after, MiB: crane | native |"
        )?;
        writeln!(
            s,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )?;
        for &n in &sizes {
            let (c, na) = (
                self.fleet_step(Variant::Crane, n),
                self.fleet_step(Variant::Native, n),
            );
            let created = |st: Option<&FleetStep>| st.map(|st| st.created_s);
            let api_cpu = |st: Option<&FleetStep>| {
                st.and_then(|st| per_thousand(st.apiserver_cpu_s, st.added))
            };
            let api_rss =
                |st: Option<&FleetStep>| st.and_then(|st| st.apiserver_usage.map(|u| u.rss_mib));
            writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                thousands(n),
                opt(created(c), f1),
                opt(created(na), f1),
                opt(c.map(FleetStep::pods_per_s), f0),
                opt(na.map(FleetStep::pods_per_s), f0),
                opt(created(c).zip(created(na)).map(|(c, n)| c / n), f2),
                opt(c.map(|st| st.status_s), f1),
                opt(na.map(|st| st.status_s), f1),
                opt(api_cpu(c), f2),
                opt(api_cpu(na), f2),
                opt(api_rss(c), f0),
                opt(api_rss(na), f0),
            )?;
        }
        writeln!(
            s,
            "\n(From the step's first create request until the bench's metadata-only pod watch showed every pod of the fleet, and until every object's status had `observedGeneration` current and `replicas` = `spec.replicas`.)\n"
        )?;

        writeln!(s, "### Cost at each size\n")?;
        writeln!(
            s,
            "| fleet pods | crane-operator RSS (peak), MiB | kube-controller-manager RSS (peak), MiB | crane CPU s per 1,000 pods added | kube-controller-manager CPU s per 1,000 | crane: pass that changes nothing, ms | native: sync that changes nothing, ms | crane: scale-up → new pod, ms | native, ms | crane: scale-up → status, ms | native, ms |"
        )?;
        writeln!(
            s,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )?;
        for &n in &sizes {
            let (c, na) = (
                self.fleet_step(Variant::Crane, n),
                self.fleet_step(Variant::Native, n),
            );
            let cpu = |st: Option<&FleetStep>| st.and_then(|st| per_thousand(st.cpu_s, st.added));
            let noop = |st: Option<&FleetStep>| st.and_then(|st| st.probe.noop_pass_ms);
            writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                thousands(n),
                memory(c.and_then(|st| st.usage)),
                memory(na.and_then(|st| st.usage)),
                opt(cpu(c), f2),
                opt(cpu(na), f2),
                opt(noop(c), f2),
                opt(noop(na), f2),
                opt(c.map(new_pod_ms), f0),
                opt(na.map(new_pod_ms), f0),
                opt(c.map(status_ms), f0),
                opt(na.map(status_ms), f0),
            )?;
        }
        writeln!(
            s,
            "\nThe cost of one pass must not grow with the pods of other objects. Each size scales one object of the fleet from {r} to {} pods and back, {} times (medians: from the request until the watch shows the new pod, and until its status says so), then annotates it as many times: the mean duration of the passes that change nothing is crane-operator's `crane_operator_reconcile_duration_seconds` (its periodic resyncs of every object are such passes too) and kube-controller-manager's `workqueue_work_duration_seconds{{name=\"replicaset\"}}` (every ReplicaSet sync of the cluster, from its /metrics). CPU per 1,000 pods: the process's CPU seconds from the step's first request until every status was correct, over the pods the step added.\n",
            p.fleet_replicas + 1,
            p.fleet_probes,
            r = p.fleet_replicas
        )?;
        self.write_fleet_full(s, total)?;
        writeln!(s, "![cost versus fleet size]({CHART})\n")
    }

    /// The figures at full size: steady state, cold start, 10 % deleted.
    fn write_fleet_full(&self, s: &mut String, total: usize) -> std::fmt::Result {
        let (c, na) = (
            self.fleet_of(Variant::Crane),
            self.fleet_of(Variant::Native),
        );
        writeln!(s, "### At {} pods\n", thousands(total))?;
        writeln!(
            s,
            "| | crane (crane-operator) | native (kube-controller-manager) |\n|---|---:|---:|"
        )?;
        let row = |s: &mut String, label: &str, f: &dyn Fn(&FleetRun) -> Option<String>| {
            let cell = |r: Option<&FleetRun>| r.and_then(f).unwrap_or_else(|| "–".into());
            writeln!(s, "| {label} | {} | {} |", cell(c), cell(na))
        };
        row(
            s,
            "after converging: writes until quiet (no write for 5 s), over s",
            &|r| {
                let w = r.steady.as_ref()?;
                let more = if w.quiet { "" } else { ", not quiet yet" };
                Some(format!(
                    "{} over {}{more}",
                    w.settling.total,
                    f1(w.settle_s)
                ))
            },
        )?;
        let window = p_window(c.or(na));
        row(
            s,
            &format!("steady state: API writes/min ({window} window)"),
            &|r| Some(f1(r.steady.as_ref()?.writes.per_minute())),
        )?;
        row(s, "steady state: passes (mean ms)", &|r| {
            let w = r.steady.as_ref()?;
            Some(format!("{} ({})", opt(w.passes, f0), opt(w.pass_ms, f2)))
        })?;
        row(s, "steady state: CPU s in the window", &|r| {
            r.steady.as_ref()?.cpu_s.map(f2)
        })?;
        row(s, "resident memory (peak), MiB", &|r| {
            r.steady.as_ref()?.usage.map(|u| memory(Some(u)))
        })?;
        row(
            s,
            "cold start: process start → caches synced (/readyz), s",
            &|r| Some(f1(r.cold_start.as_ref()?.ready_s)),
        )?;
        row(s, "cold start: → every object had a pass, s", &|r| {
            Some(f1(r.cold_start.as_ref()?.passed_s))
        })?;
        row(s, "cold start: statuses correct then", &|r| {
            let cs = r.cold_start.as_ref()?;
            Some(format!(
                "{} / {}",
                thousands(cs.correct),
                thousands(cs.objects)
            ))
        })?;
        row(
            s,
            "cold start: writes seen (operator's requests other than GET)",
            &|r| {
                let cs = r.cold_start.as_ref()?;
                Some(format!("{} ({:.0})", cs.writes.total, cs.operator_writes))
            },
        )?;
        row(s, "cold start: resident memory (peak), MiB; CPU s", &|r| {
            let cs = r.cold_start.as_ref()?;
            Some(format!(
                "{}; {}",
                memory(Some(cs.usage)),
                f1(cs.usage.cpu_s)
            ))
        })?;
        row(s, "10 % deleted: pods (delete requests done, s)", &|r| {
            let d = r.recovery.as_ref()?;
            Some(format!("{} ({})", thousands(d.deleted), f1(d.deletes_s)))
        })?;
        row(s, "10 % deleted: → all replaced, s", &|r| {
            Some(f1(r.recovery.as_ref()?.replaced_s))
        })?;
        row(s, "10 % deleted: → every status correct, s", &|r| {
            Some(f1(r.recovery.as_ref()?.status_s))
        })?;
        row(s, "10 % deleted: API writes; controller CPU s", &|r| {
            let d = r.recovery.as_ref()?;
            Some(format!("{}; {}", d.writes.total, opt(d.cpu_s, f2)))
        })?;
        row(
            s,
            "pods created beyond the ones asked for (all steps, 10 %)",
            &|r| {
                let steps: u64 = r.steps.iter().map(|st| st.extra_pods).sum();
                Some((steps + r.recovery.as_ref().map_or(0, |d| d.extra_pods)).to_string())
            },
        )?;
        row(s, "namespace deleted → its pods gone, s", &|r| {
            r.teardown_s.map(f0)
        })?;
        writeln!(
            s,
            "\nThe cold start is crane-operator's only: kube-controller-manager is the cluster's, not the bench's to restart. Writes are counted by watches on the namespace's pods, owner objects and events from the moment each window starts (one watch event = one write).\n"
        )?;
        for r in [c, na].into_iter().flatten() {
            let name = r.variant.name();
            for (what, w) in [
                (
                    "settling after convergence",
                    r.steady.as_ref().map(|w| &w.settling),
                ),
                ("steady-state window", r.steady.as_ref().map(|w| &w.writes)),
                ("cold start", r.cold_start.as_ref().map(|c| &c.writes)),
                ("10 % deletion", r.recovery.as_ref().map(|d| &d.writes)),
            ] {
                if let Some(w) = w
                    && (w.total > 0 || !w.lost.is_empty())
                {
                    let lost = match w.lost.is_empty() {
                        true => String::new(),
                        false => format!(" (watch broke off: {}; counts short)", w.lost.join(", ")),
                    };
                    writeln!(
                        s,
                        "Writes in the {name} {what}: {}{lost}\n",
                        writers(&w.by_writer)
                    )?;
                }
            }
            if !r.operator_logs.is_empty() {
                writeln!(s, "Operator logs: `{}`\n", r.operator_logs.join("`, `"))?;
            }
        }
        Ok(())
    }

    /// Cost versus fleet size, log-log: the duration of one pass and the time to a new pod
    /// (left), the controllers' resident memory (right). Returns false when there is
    /// nothing to draw.
    pub(super) fn fleet_chart(&self, path: &Path) -> Result<bool> {
        use plotters::prelude::*;
        if self.fleet.iter().all(|r| r.steps.is_empty()) {
            return Ok(false);
        }
        register_font();
        let crane = RGBColor(0x1f, 0x77, 0xb4);
        let crane_light = RGBColor(0x6b, 0xae, 0xd6);
        let native = RGBColor(0xd6, 0x27, 0x28);
        let native_light = RGBColor(0xff, 0x7f, 0x0e);
        let line = |v: Variant, f: fn(&FleetStep) -> Option<f64>| -> Vec<(f64, f64)> {
            self.fleet_of(v)
                .map(|r| {
                    r.steps
                        .iter()
                        .filter_map(|st| Some((st.pods as f64, f(st)?)))
                        .filter(|(_, y)| y.is_finite() && *y > 0.0)
                        .collect()
                })
                .unwrap_or_default()
        };
        let passes: Vec<Series> = vec![
            (
                "crane: pass that changes nothing".into(),
                crane,
                line(Variant::Crane, |st| st.probe.noop_pass_ms),
            ),
            (
                "native: sync that changes nothing".into(),
                native,
                line(Variant::Native, |st| st.probe.noop_pass_ms),
            ),
            (
                "crane: scale-up → new pod".into(),
                crane_light,
                line(Variant::Crane, |st| Some(new_pod_ms(st))),
            ),
            (
                "native: scale-up → new pod".into(),
                native_light,
                line(Variant::Native, |st| Some(new_pod_ms(st))),
            ),
        ];
        let memory: Vec<Series> = vec![
            (
                "crane-operator".into(),
                crane,
                line(Variant::Crane, |st| st.usage.map(|u| u.rss_mib)),
            ),
            (
                "kube-controller-manager".into(),
                native,
                line(Variant::Native, |st| st.usage.map(|u| u.rss_mib)),
            ),
        ];
        let root = BitMapBackend::new(path, (1300, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (left, right) = root.split_horizontally(680);
        log_log_panel(&left, "One pass versus fleet size", "milliseconds", &passes)?;
        log_log_panel(
            &right,
            "Resident memory versus fleet size",
            "MiB (VmRSS)",
            &memory,
        )?;
        root.present().map_err(plot_err)?;
        drop(root);
        std::fs::metadata(path).with_context(|| format!("{} not written", path.display()))?;
        Ok(true)
    }
}

fn p_window(r: Option<&FleetRun>) -> String {
    r.and_then(|r| r.steady.as_ref())
        .map_or("–".into(), |w| format!("{:.0} s", w.writes.seconds))
}

/// One panel of the fleet chart: lines with points, both axes logarithmic.
fn log_log_panel(
    area: &plotters::drawing::DrawingArea<
        plotters::backend::BitMapBackend<'_>,
        plotters::coord::Shift,
    >,
    caption: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<()> {
    use plotters::prelude::*;
    let points = series.iter().flat_map(|(_, _, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Ok(());
    }
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        // Room above the lines for the legend.
        .build_cartesian_2d(
            (x0 / 2.0..x1 * 2.0).log_scale(),
            (y0 / 2.0..y1 * 8.0).log_scale(),
        )
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("pods in the fleet")
        .y_desc(y_desc)
        .x_labels(8)
        .y_labels(8)
        .light_line_style(WHITE)
        .x_label_formatter(&|x| thousands(x.round() as usize))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(plot_err)?;
    for (label, color, points) in series.iter().filter(|(_, _, p)| !p.is_empty()) {
        let color = *color;
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}
