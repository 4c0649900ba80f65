//! The app as the kubelet runs it: the real binary on a free loopback port, driven over TCP
//! and stopped with signals. Every wait is a channel receive with a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// Far above what any step takes on a loaded CI machine; a hang fails here, not in CI's timeout.
const DEADLINE: Duration = Duration::from_secs(10);

/// A running `crane-app --listen 127.0.0.1:0`: its stdout lines and its exit status arrive
/// on channels fed by two threads.
struct App {
    pid: u32,
    addr: SocketAddr,
    lines: Receiver<String>,
    exit: Receiver<std::io::Result<ExitStatus>>,
    exited: bool,
}

impl App {
    fn start() -> App {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crane-app"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("crane-app starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (line_tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = child.id();
        let (exit_tx, exit) = channel();
        std::thread::spawn(move || exit_tx.send(child.wait()));
        let mut app = App {
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
            exit,
            exited: false,
        };
        let first = app.line_starting_with("crane-app listening on ");
        let addr = first["crane-app listening on ".len()..]
            .split(',')
            .next()
            .unwrap_or_default();
        app.addr = addr.parse().unwrap_or_else(|e| panic!("{first:?}: {e}"));
        app
    }

    /// The next stdout line that starts with `prefix` (earlier lines are skipped).
    fn line_starting_with(&self, prefix: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => panic!("no line {prefix:?} within {DEADLINE:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("stdout closed before {prefix:?}"),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -s {name} {}", self.pid);
    }

    /// The exit status, which must come within the deadline.
    fn exit_status(&mut self) -> ExitStatus {
        let status = self
            .exit
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("crane-app still running {DEADLINE:?} after the signal"))
            .expect("wait for crane-app");
        self.exited = true;
        status
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if !self.exited {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &self.pid.to_string()])
                .status();
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to crane-app");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("set a read timeout");
    stream
}

/// One GET on its own connection; the whole response, head and body.
fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = connect(addr);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: crane\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    response
}

#[test]
fn every_get_is_answered_with_the_hostname_and_logged() {
    let mut app = App::start();
    let greeting = crane_app::greeting(&crane_app::hostname());
    for path in ["/", "/any/path?x=1"] {
        let response = get(app.addr, path);
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(
            response.ends_with(&format!("\r\n\r\n{greeting}")),
            "{response}"
        );
        let logged = app.line_starting_with("Received request from ");
        assert!(
            logged.starts_with("Received request from 127.0.0.1:"),
            "{logged}"
        );
    }
    app.signal("TERM");
    assert!(app.exit_status().success());
}

#[test]
fn sigterm_closes_an_idle_keep_alive_connection_and_exits_zero() {
    let mut app = App::start();
    let greeting = crane_app::greeting(&crane_app::hostname());
    // A client that keeps its connection open (HTTP/1.1's default), as kube-proxy's
    // clients and load balancers do: it must not hold the pod past the SIGTERM.
    let mut stream = connect(app.addr);
    write!(stream, "GET / HTTP/1.1\r\nHost: crane\r\n\r\n").expect("send");
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    while !response.ends_with(greeting.as_bytes()) {
        let n = stream.read(&mut chunk).expect("read the response");
        assert!(n > 0, "closed before the whole answer: {response:?}");
        response.extend_from_slice(&chunk[..n]);
    }
    app.signal("TERM");
    app.line_starting_with("SIGTERM received");
    assert!(app.exit_status().success());
    assert_eq!(
        stream.read(&mut chunk).expect("read after exit"),
        0,
        "the connection is closed"
    );
}

#[test]
fn a_request_begun_before_sigterm_is_answered_then_it_exits_zero() {
    let mut app = App::start();
    let mut slow = connect(app.addr);
    write!(slow, "GET / HTTP/1.1\r\nHost: crane\r\n").expect("send the first half");
    // The server accepts in order: once a later connection is answered, the slow one has
    // been accepted too, and is in flight when the signal comes.
    assert!(get(app.addr, "/").starts_with("HTTP/1.1 200 OK\r\n"));
    app.signal("TERM");
    app.line_starting_with("SIGTERM received");
    write!(slow, "\r\n").expect("send the rest");
    let mut response = String::new();
    slow.read_to_string(&mut response)
        .expect("read the response");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{response}"
    );
    assert!(app.exit_status().success());
}

#[test]
fn sigint_stops_it_too() {
    let mut app = App::start();
    app.signal("INT");
    app.line_starting_with("SIGINT received");
    assert!(app.exit_status().success());
}

#[test]
fn unknown_arguments_print_the_usage_and_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_crane-app"))
        .arg("--port")
        .output()
        .expect("crane-app runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("usage: crane-app"));
}
