//! The crane-operator process the bench starts for a namespace, and what /proc says about
//! a process (CPU seconds, resident memory).

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Operator {
    child: Child,
    pub pid: u32,
    pub metrics_addr: SocketAddr,
    pub log: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Operator {
    /// Starts `crane-operator run` for one namespace and waits until /readyz says its
    /// caches have synced.
    pub async fn start(bin: &Path, ns: &str, concurrency: u16, log_dir: &Path) -> Result<Self> {
        Self::start_logged(bin, ns, ns, concurrency, log_dir, Duration::from_secs(60)).await
    }

    /// [`Operator::start`] with its log in `<log_dir>/<log>.log`, allowing `ready_within`
    /// for its caches to sync.
    pub async fn start_logged(
        bin: &Path,
        ns: &str,
        log: &str,
        concurrency: u16,
        log_dir: &Path,
        ready_within: Duration,
    ) -> Result<Self> {
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{log}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = Command::new(bin)
            .args(["run", "--namespace", ns, "--metrics-addr"])
            .arg(metrics_addr.to_string())
            .args(["--concurrency", &concurrency.to_string()])
            .env(
                "RUST_LOG",
                std::env::var("CRANE_BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let mut op = Self {
            pid: child.id(),
            child,
            metrics_addr,
            log,
        };
        let deadline = Instant::now() + ready_within;
        loop {
            if let Some(status) = op.child.try_wait()? {
                bail!(
                    "crane-operator exited ({status}) before it was ready; see {}",
                    op.log.display()
                );
            }
            if let Ok((200, _)) = http_get(op.metrics_addr, "/readyz").await {
                return Ok(op);
            }
            if Instant::now() > deadline {
                bail!(
                    "crane-operator not ready after {ready_within:?}; see {}",
                    op.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its Prometheus metrics.
    pub async fn metrics(&self) -> Result<Metrics> {
        let (code, body) = http_get(self.metrics_addr, "/metrics").await?;
        if code != 200 {
            bail!("GET /metrics answered {code}");
        }
        Ok(Metrics(body))
    }

    pub fn usage(&self) -> Result<Usage> {
        Usage::of(self.pid)
    }

    /// SIGTERM (it finishes the passes in flight), then SIGKILL after 10 s.
    pub async fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("crane-operator did not exit within 10 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A plain HTTP/1.0 GET on loopback: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let io = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .context("timed out")??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// The text of /metrics.
pub struct Metrics(pub String);

impl Metrics {
    /// The sum of every sample of `name` (all label sets).
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let metric = series.split('{').next()?;
                (metric == name)
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .sum()
    }

    /// How many series `name` has (e.g. one per object).
    pub fn series(&self, name: &str) -> usize {
        self.0
            .lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .count()
    }

    /// The sample of `name` whose labels contain `label` (e.g. `result="success"`).
    pub fn with_label(&self, name: &str, label: &str) -> f64 {
        self.0
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

/// CPU time and memory of a process, from /proc.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Usage {
    /// User + system CPU seconds since it started.
    pub cpu_s: f64,
    /// Resident memory now, MiB.
    pub rss_mib: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mib: f64,
}

impl Usage {
    pub fn of(pid: u32) -> Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("process {pid} is gone"))?;
        // Fields after the command name (which may contain spaces) in parentheses.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of stat: 11 and 12 after the state field.
        let cpu_s = (ticks(11) + ticks(12)) / clock_ticks();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(Self {
            cpu_s,
            rss_mib: kib("VmRSS:") / 1024.0,
            peak_rss_mib: kib("VmHWM:") / 1024.0,
        })
    }
}

/// CPU seconds of the whole machine (busy, all CPUs) and of this process with its waited-for
/// children (the operators it ran).
pub fn machine_busy_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is within user)
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    busy / clock_ticks()
}

pub fn self_with_children_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // After the state field (not a number, skipped): utime stime cutime cstime are 11..=14.
    let ticks: f64 = (10..=13).filter_map(|i| f.get(i)).sum();
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}
