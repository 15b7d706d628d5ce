//! Helpers of the tests that run the daemon (`pipelined`) as a child process: tests/daemon.rs
//! and tests/hostile.rs include this module.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::root;

/// The daemon's binary: this package's (the daemon's tests), or the one built beside
/// `pipectl` (pipectl's tests, after `cargo build -p daemon`).
pub fn pipelined_bin() -> PathBuf {
    beside("pipelined", "daemon")
}

/// `pipectl` is built beside `pipelined` by `cargo test --workspace` (scripts/gate).
pub fn pipectl_bin() -> PathBuf {
    beside("pipectl", "pipectl")
}

/// The binary `name` of package `package`: this test's own, or one built beside it.
fn beside(name: &str, package: &str) -> PathBuf {
    let own = [
        ("pipelined", option_env!("CARGO_BIN_EXE_pipelined")),
        ("pipectl", option_env!("CARGO_BIN_EXE_pipectl")),
    ];
    if let Some((_, Some(path))) = own.iter().find(|(n, _)| *n == name) {
        return PathBuf::from(path);
    }
    let other = own
        .iter()
        .find_map(|(_, p)| *p)
        .expect("a test of the daemon or of pipectl");
    let p = Path::new(other).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run the workspace's tests (scripts/gate) or `cargo build -p {package}`",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A daemon child process, stopped (SIGTERM, then waited for) when dropped.
pub struct Daemon {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: PathBuf,
}

impl Daemon {
    pub fn start(state: &Path, port: u16, bootstrap: &str) -> Self {
        Self::start_with(state, port, bootstrap, &[])
    }

    pub fn start_with(state: &Path, port: u16, bootstrap: &str, extra: &[&str]) -> Self {
        Self::start_env(state, port, bootstrap, extra, &[])
    }

    /// A daemon with extra arguments and environment variables.
    pub fn start_env(
        state: &Path,
        port: u16,
        bootstrap: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let log = state.with_extension(format!("{port}.log"));
        let child = Command::new(pipelined_bin())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(state)
            .args(["--bootstrap", bootstrap])
            .arg("--schemas")
            .arg(root().join("schemas"))
            .args(["--checkpoint-interval", "1s"])
            .args(extra)
            .envs(envs.iter().copied())
            .env("PIPELINED_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("pipelined starts");
        let d = Self {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(&d.url, "GET", "/readyz", None, None).0 != 200 {
            assert!(Instant::now() < deadline, "daemon not ready:\n{}", d.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A line of /proc/PID/status in KiB, such as `VmHWM` (peak resident memory).
    pub fn memory_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process at once (SIGKILL): a crash, no final checkpoint.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops gracefully (every pipeline writes a final checkpoint) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "daemon exit {status}:\n{}", self.logs());
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("daemon did not stop in 60 s:\n{}", self.logs());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The log stays for a failed test to be read, and goes when the test passed.
        if !std::thread::panicking() {
            std::fs::remove_file(&self.log).ok();
        }
    }
}

/// One HTTP request: (status, body as JSON or as a string).
pub fn http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if let Some(t) = token {
        request = request.header("Authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        request = request.header("Content-Type", "application/json");
    }
    let request = request
        .body(body.map(Value::to_string).unwrap_or_default())
        .expect("request");
    let result = agent.run(request);
    match result {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let mut text = String::new();
            let _ = resp.body_mut().as_reader().read_to_string(&mut text);
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
        Err(_) => (0, Value::Null),
    }
}

pub fn pipectl(url: &str, args: &[&str]) -> Output {
    Command::new(pipectl_bin())
        .args(args)
        .env("PIPECTL_SERVER", url)
        .env("PIPECTL_TOKEN", TOKEN)
        .env_remove("PIPECTL_CONFIG")
        .env(
            "XDG_CONFIG_HOME",
            std::env::temp_dir().join("no-pipectl-config"),
        )
        .current_dir(root())
        .output()
        .expect("pipectl runs")
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "pipectl failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn json_of(out: Output) -> Value {
    serde_json::from_str(&ok(out)).expect("pipectl -o json prints JSON")
}

/// `pipectl gen` in the background (events arriving while a test watches), output dropped.
pub fn feed(bootstrap: &str, args: &[&str]) -> Child {
    Command::new(pipectl_bin())
        .args(["gen", "--bootstrap", bootstrap])
        .args(args)
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gen runs")
}

/// `pipectl gen` of sensor readings to `topic`, with more arguments, waited for.
pub fn gen_readings(bootstrap: &str, topic: &str, extra: &[&str]) {
    let out = Command::new(pipectl_bin())
        .args(["gen", "--bootstrap", bootstrap])
        .args(["--kind", "production/sensor_reading", "--topic", topic])
        .args(extra)
        .current_dir(root())
        .output()
        .expect("gen runs");
    ok(out);
}

/// A pipeline copying sensor readings of `input` (from the earliest offset, in `group`) to
/// `output`, projected, with the source's `on_error` policy.
pub fn copy_yaml(name: &str, group: &str, input: &str, output: &str, on_error: &str) -> String {
    format!(
        r#"apiVersion: pipelines/v1
kind: Pipeline
metadata: {{ name: {name} }}
spec:
  sources:
    - name: readings
      kafka: {{ topic: "{input}", start_from: earliest, group: "{group}" }}
      format: json
      schema: production/sensor_reading
      on_error: {on_error}
  transforms:
    - name: picked
      sql: SELECT line_id, machine_id, ts, temperature FROM readings
  sinks:
    - {{ name: out, from: picked, kafka: {{ topic: "{output}" }}, format: json }}
"#
    )
}

/// A pipeline's status from the API.
pub fn status(url: &str, name: &str) -> Value {
    http(
        url,
        "GET",
        &format!("/api/v1/pipelines/{name}/status"),
        Some(TOKEN),
        None,
    )
    .1
}

/// Waits until `ok` holds, at most `limit`.
pub fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until a pipeline's status satisfies `ok`, at most `limit`; returns that status.
pub fn wait_status(
    url: &str,
    name: &str,
    what: &str,
    limit: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let s = status(url, name);
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: timed out waiting for {what}: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
