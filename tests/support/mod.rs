//! Helpers shared by the test files in this directory (each includes this module; each uses
//! a part of it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The repository root. The package directory is read when the test runs: a build cache
/// shared by checkouts at different paths may hold a test binary compiled in another
/// checkout, so the compile-time `env!("CARGO_MANIFEST_DIR")` can name a directory that does
/// not exist here.
pub fn root() -> PathBuf {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    Path::new(&manifest)
        .ancestors()
        .nth(2)
        .expect("repository root")
        .to_path_buf()
}

/// The test broker from `KAFKA_BOOTSTRAP`; `None` (the test passes vacuously, saying so)
/// unless `REQUIRE_KAFKA` is set, as scripts/gate does.
pub fn bootstrap() -> Option<String> {
    match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(b) => Some(b),
        Err(_) if std::env::var_os("REQUIRE_KAFKA").is_some() => {
            panic!("REQUIRE_KAFKA is set but KAFKA_BOOTSTRAP is not: start scripts/kafka")
        }
        Err(_) => {
            eprintln!(
                "skipped: no KAFKA_BOOTSTRAP (run scripts/gate, or scripts/kafka start and export KAFKA_BOOTSTRAP=127.0.0.1:9092)"
            );
            None
        }
    }
}

/// The Python of the test environment (DuckDB, scikit-learn, Schemathesis): `ORACLE_PYTHON`
/// as scripts/gate sets it, else made by scripts/python-env.
pub fn test_python() -> String {
    if let Ok(p) = std::env::var("ORACLE_PYTHON") {
        return p;
    }
    let out = std::process::Command::new(root().join("scripts/python-env"))
        .output()
        .expect("scripts/python-env runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs the test environment's Python with `args` and checks it succeeded.
pub fn run_python(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let out = std::process::Command::new(test_python())
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Nanoseconds since the epoch.
pub fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// A name no other test or run uses (topics, groups, directories).
pub fn unique(name: &str) -> String {
    format!("test.{name}.{}.{}", std::process::id(), nanos())
}

/// A timestamp written as epoch milliseconds or RFC 3339, in milliseconds.
pub fn epoch_ms(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().expect("integer ms"),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .expect("RFC 3339 timestamp")
            .timestamp_millis(),
        other => panic!("not a timestamp: {other}"),
    }
}

/// The test schema registry's Confluent API from `SCHEMA_REGISTRY_URL`; `None` (the test
/// passes vacuously, saying so) unless `REQUIRE_REGISTRY` is set, as scripts/gate does.
pub fn registry_url() -> Option<String> {
    match std::env::var("SCHEMA_REGISTRY_URL") {
        Ok(u) => Some(u),
        Err(_) if std::env::var_os("REQUIRE_REGISTRY").is_some() => panic!(
            "REQUIRE_REGISTRY is set but SCHEMA_REGISTRY_URL is not: start scripts/schema-registry"
        ),
        Err(_) => {
            eprintln!(
                "skipped: no SCHEMA_REGISTRY_URL (run scripts/gate, or scripts/schema-registry start and export SCHEMA_REGISTRY_URL=$(scripts/schema-registry url))"
            );
            None
        }
    }
}

/// The arguments of a `pipectl run` of `pipeline` with state in Kafka, committing every
/// 500 ms in micro-batches of 500; `until_idle`: a bounded run (5 s).
pub fn kafka_state_run<'a>(
    pipeline: &'a str,
    bootstrap: &'a str,
    until_idle: bool,
) -> Vec<&'a str> {
    let mut a = vec![
        "run",
        pipeline,
        "--bootstrap",
        bootstrap,
        "--kafka-state",
        "--checkpoint-interval",
        "500ms",
        "--max-batch",
        "500",
        "--quiet",
    ];
    if until_idle {
        a.extend(["--until-idle", "5s"]);
    }
    a
}

/// A run of `binary` (`pipectl`) with `args` and `env` that is interrupted, reading
/// `input` as consumer group `group`.
pub struct Interrupted<'a> {
    pub binary: &'a str,
    pub bootstrap: &'a str,
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
    pub group: &'a str,
    pub input: &'a str,
}

impl Interrupted<'_> {
    /// The sum of the group's committed offsets of the input. While a killed run's
    /// transactions are settled, the committed offsets cannot be read (they are not stable
    /// yet): asked again until they can.
    pub fn committed(&self) -> i64 {
        for _ in 0..20 {
            match connectors::committed_total(self.bootstrap, self.group, self.input) {
                Ok(n) => return n,
                Err(e) => println!("committed offsets not known yet: {e}"),
            }
        }
        panic!("the committed offsets stayed unknown");
    }

    /// Starts the run and sends it `signal` (`KILL`, `TERM`), `times` times, each time once
    /// the group has committed `every` more offsets of the input (of `total`), so that it
    /// has committed state at least once; the input is not read to its end. Returns the
    /// seconds each restarted run took to commit anything past where it started.
    pub fn times(&self, times: usize, signal: &str, every: i64, total: i64) -> Vec<f64> {
        let mut last = 0;
        let mut resumed = Vec::new();
        for _ in 0..times {
            let mut child = std::process::Command::new(self.binary)
                .args(self.args)
                .envs(self.env.iter().copied())
                .current_dir(root())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("pipectl starts");
            let started = std::time::Instant::now();
            let mut first = None;
            loop {
                let now = self.committed();
                if first.is_none() && now > last {
                    first = Some(started.elapsed().as_secs_f64());
                }
                if now >= last + every || started.elapsed() > std::time::Duration::from_secs(120) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = std::process::Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while child.try_wait().expect("wait").is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let out = child.wait_with_output().expect("reaped");
            let now = self.committed();
            assert!(
                now > last,
                "the run committed nothing before it was stopped:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            println!("SIG{signal} after {now} committed input offsets");
            resumed.extend(first);
            last = now;
        }
        assert!(last < total, "the runs were stopped after the end ({last})");
        resumed
    }
}
