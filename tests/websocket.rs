//! WebSocket pass-through on `http_proxy` routes, with the `websockets` package
//! on both ends (tests/support/ws_echo.py): text and a 1 MiB binary message
//! echoed through two workers, across a config reload; an upstream group as the
//! target; the idle timeout; and what a plain request on the same route gets.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_until, Client, Gateway};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/ws_echo.py");

/// A child process killed on drop.
struct Proc {
    child: Child,
    out: BufReader<ChildStdout>,
    stdin: Option<ChildStdin>,
}

impl Proc {
    fn start(args: &[&str]) -> Self {
        Self::start_env(args, &[])
    }

    fn start_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with the websockets package (tests/requirements.txt)");
        let out = BufReader::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        Self { child, out, stdin }
    }

    /// The next line of output, within `within` (the child is killed otherwise).
    fn line(&mut self, within: Duration) -> String {
        let pid = self.child.id();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // A watchdog: a child that hangs is killed, so the read below returns.
        std::thread::spawn(move || {
            if rx.recv_timeout(within).is_err() {
                // SAFETY: signalling our own child process.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        });
        let mut l = String::new();
        let _ = self.out.read_line(&mut l);
        let _ = tx.send(());
        l.trim().to_owned()
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(port: &str, extra_route: &str, listener_extra: &str) -> String {
    format!(
        "workers: 2
listeners: [ {{ name: main, bind: \"127.0.0.1:0\"{listener_extra} }} ]
admin: {{ bind: \"127.0.0.1:0\" }}
upstreams:
  - {{ name: echoes, targets: [ {{ url: \"http://127.0.0.1:{port}\" }} ] }}
apis:
  - name: live
    routes:
      - {{ route: GET /ws, integration: {{ type: http_proxy, uri: \"http://127.0.0.1:{port}/\" }} }}
      - {{ route: GET /group/ws, integration: {{ type: http_proxy, upstream: echoes, uri: / }} }}
{extra_route}    stages: [ {{ name: $default }} ]
"
    )
}

#[test]
fn websockets_echo_text_and_a_mebibyte_through_two_workers_and_a_reload() {
    let mut server = Proc::start(&["serve"]);
    let port = server.line(Duration::from_secs(20));
    assert!(
        port.parse::<u16>().is_ok(),
        "echo server did not start: {port:?}"
    );
    let gw = Gateway::start(&config(&port, "", ""));
    let mut clients: Vec<Proc> = (0..4)
        .map(|i| {
            let path = if i % 2 == 0 { "/ws" } else { "/group/ws" };
            Proc::start(&["client", &format!("ws://{}{path}", gw.addr)])
        })
        .collect();
    for c in &mut clients {
        assert_eq!(
            c.line(Duration::from_secs(60)),
            "READY",
            "log:\n{}",
            gw.log()
        );
    }
    // A reload while every tunnel is open: they carry on.
    gw.rewrite(&config(
        &port,
        "      - { route: GET /new, integration: { type: mock, body: new } }\n",
        "",
    ));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(gw.pid(), libc::SIGHUP) };
    assert!(
        wait_until(Duration::from_secs(10), || common::get(gw.addr, "/new")
            .status
            == 200),
        "{}",
        gw.log()
    );
    for c in &mut clients {
        c.say("go");
    }
    for c in &mut clients {
        assert_eq!(c.line(Duration::from_secs(60)), "OK", "log:\n{}", gw.log());
    }
    // New tunnels open on the new plan too.
    let mut again = Proc::start(&["client", &format!("ws://{}/ws", gw.addr)]);
    assert_eq!(again.line(Duration::from_secs(60)), "READY");
    again.say("go");
    assert_eq!(again.line(Duration::from_secs(60)), "OK");
    // Counted in the metrics.
    let metrics = Client::connect(gw.admin.expect("admin listener"))
        .request("GET", "/metrics", "admin", &[], b"")
        .text();
    let opened: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("shardgate_websocket_connections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(opened, 5, "{metrics}");
    // A plain GET on the route is an ordinary request (the server refuses it).
    let r = Client::connect(gw.addr).get("/ws");
    assert!(r.status >= 400, "{}", r.status);
}

#[test]
fn an_idle_tunnel_is_closed_after_the_listeners_idle_timeout() {
    let mut server = Proc::start(&["serve"]);
    let port = server.line(Duration::from_secs(20));
    let gw = Gateway::start(&config(&port, "", ", limits: { idle_timeout_ms: 700 }"));
    let started = Instant::now();
    let mut c = Proc::start(&["idle", &format!("ws://{}/ws", gw.addr), "5"]);
    assert_eq!(
        c.line(Duration::from_secs(30)),
        "CLOSED",
        "log:\n{}",
        gw.log()
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn wss_on_an_https_listener_to_a_wss_upstream() {
    let dir = std::env::temp_dir().join(format!("shardgate-wss-{}", std::process::id()));
    let (ca_path, cert, key) = common::test_ca(&dir, &["localhost", "127.0.0.1"]);
    let (ca_s, cert_s, key_s) = (
        ca_path.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let mut server = Proc::start_env(&["serve"], &[("WS_CERT", cert_s), ("WS_KEY", key_s)]);
    let port = server.line(Duration::from_secs(20));
    assert!(
        port.parse::<u16>().is_ok(),
        "wss echo server did not start: {port:?}"
    );
    let yaml = format!(
        "workers: 2
listeners:
  - name: secure
    bind: \"127.0.0.1:0\"
    tls: {{ certificates: [ {{ cert: {cert_s}, key: {key_s} }} ] }}
apis:
  - name: live
    routes:
      - {{ route: GET /ws, integration: {{ type: http_proxy, uri: \"https://127.0.0.1:{port}/\", tls: {{ ca: {ca_s} }} }} }}
    stages: [ {{ name: $default }} ]
"
    );
    let gw = Gateway::start(&yaml);
    let mut clients: Vec<Proc> = (0..2)
        .map(|_| {
            Proc::start_env(
                &["client", &format!("wss://127.0.0.1:{}/ws", gw.addr.port())],
                &[("WS_CA", ca_s)],
            )
        })
        .collect();
    for c in &mut clients {
        assert_eq!(
            c.line(Duration::from_secs(60)),
            "READY",
            "log:\n{}",
            gw.log()
        );
        c.say("go");
        assert_eq!(c.line(Duration::from_secs(60)), "OK", "log:\n{}", gw.log());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
