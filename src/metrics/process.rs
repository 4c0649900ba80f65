//! The standard `process_*` metrics (as every Prometheus client library exports them),
//! read from `/proc/self` at scrape time. Elsewhere than Linux there are none.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, 100 in the kernel's ABI
/// for userspace on every architecture the operator is built for.
const USER_HZ: f64 = 100.0;

/// One scrape's reading of the process.
#[derive(Debug, Default, PartialEq)]
pub struct Sample {
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub resident_memory_bytes: Option<i64>,
    pub open_fds: Option<i64>,
}

/// CPU time (user and system) and start time (seconds since boot) from `/proc/self/stat`.
fn parse_stat(stat: &str) -> Option<(f64, f64)> {
    // The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15, starttime 22.
    let tick = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let cpu = (tick(14)? + tick(15)?) as f64 / USER_HZ;
    let start = tick(22)? as f64 / USER_HZ;
    Some((cpu, start))
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the epoch.
fn parse_boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn parse_rss(status: &str) -> Option<i64> {
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim();
    Some(kb.parse::<i64>().ok()? * 1024)
}

impl Sample {
    /// Reads `/proc`; what cannot be read is left out.
    pub fn read() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let stat = read("/proc/self/stat").as_deref().and_then(parse_stat);
        let boot = read("/proc/stat").as_deref().and_then(parse_boot_time);
        Sample {
            cpu_seconds: stat.map(|(cpu, _)| cpu),
            start_time_seconds: stat
                .zip(boot)
                .map(|((_, since_boot), boot)| boot + since_boot),
            resident_memory_bytes: read("/proc/self/status").as_deref().and_then(parse_rss),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as i64),
        }
    }
}

/// Registers nothing of its own: each scrape reads a fresh [`Sample`].
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = Sample::read();
        if let Some(v) = s.cpu_seconds {
            let m = ConstCounter::new(v);
            let help = "Total user and system CPU time spent in seconds";
            m.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                help,
                None,
                m.metric_type(),
            )?)?;
        }
        if let Some(v) = s.start_time_seconds {
            let m = ConstGauge::new(v);
            let help = "Start time of the process since unix epoch in seconds";
            m.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                help,
                None,
                m.metric_type(),
            )?)?;
        }
        if let Some(v) = s.resident_memory_bytes {
            let m = ConstGauge::new(v);
            let help = "Resident memory size in bytes";
            m.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                help,
                None,
                m.metric_type(),
            )?)?;
        }
        if let Some(v) = s.open_fds {
            let m = ConstGauge::new(v);
            let help = "Number of open file descriptors";
            m.encode(encoder.encode_descriptor(
                "process_open_fds",
                help,
                None,
                m.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_and_start_time_past_a_command_name_with_spaces_and_parentheses() {
        // Fields 3.. of a real line; utime 250, stime 50, starttime 12345 ticks.
        let stat = "4242 (crane (op) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 8 0 12345 100000 500 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((3.0, 123.45)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_boot_time_and_resident_memory() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            parse_rss("Name:\tcrane\nVmRSS:\t   2048 kB\nThreads: 8\n"),
            Some(2048 * 1024)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process_on_linux() {
        let s = Sample::read();
        assert!(s.resident_memory_bytes.is_some_and(|b| b > 0), "{s:?}");
        assert!(s.open_fds.is_some_and(|n| n > 0), "{s:?}");
        assert!(s.start_time_seconds.is_some_and(|t| t > 1e9), "{s:?}");
        assert!(s.cpu_seconds.is_some(), "{s:?}");
    }
}
