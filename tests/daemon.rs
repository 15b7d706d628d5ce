//! The daemon (`pipelined`) as a child process, driven through `pipectl` and its HTTP API.
//!
//! The lifecycle test needs the real broker (`scripts/gate` starts it and sets
//! `KAFKA_BOOTSTRAP`); the API tests (authentication, OpenAPI, refusals) need no Kafka.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use connectors::read_all;
use serde_json::Value;

mod support;
use support::{bootstrap, epoch_ms, nanos, root, unique};
#[path = "support/daemon.rs"]
mod daemon_support;
use daemon_support::{
    Daemon, TOKEN, feed, free_port, http, json_of, ok, pipectl, pipectl_bin, pipelined_bin,
};

fn pipeline_yaml(name: &str, group: &str, input: &str, output: &str, filter: &str) -> String {
    format!(
        r#"apiVersion: pipelines/v1
kind: Pipeline
metadata:
  name: {name}
spec:
  sources:
    - name: readings
      kafka: {{ topic: "{input}", start_from: committed, group: "{group}" }}
      format: json
      schema: production/sensor_reading
      on_error: skip
  transforms:
    - name: picked
      sql: SELECT line_id, machine_id, ts, temperature FROM readings{filter}
  models:
    - name: failure
      input: readings
      regression:
        target: failure_rate
        features: [temperature, vibration]
  sinks:
    - name: out
      from: picked
      kafka: {{ topic: "{output}" }}
      format: json
    - name: predictions
      from: failure.predictions
      kafka: {{ topic: "{output}.predictions" }}
      format: json
"#
    )
}

fn generate(bootstrap: &str, topic: &str, count: u64, seed: u64) {
    let out = Command::new(pipectl_bin())
        .args([
            "gen",
            "--bootstrap",
            bootstrap,
            "--kind",
            "production/sensor_reading",
        ])
        .args(["--count", &count.to_string(), "--seed", &seed.to_string()])
        .args(["--topic", topic, "--partitions", "3"])
        .current_dir(root())
        .output()
        .expect("gen runs");
    ok(out);
}

/// The picked fields of each message, counted (a multiset).
fn rows(bootstrap: &str, topic: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in read_all(bootstrap, topic, Duration::from_secs(60)).expect("topic reads") {
        let v: Value = serde_json::from_slice(&m.payload).expect("JSON");
        let key = format!(
            "{}|{}|{}|{}",
            v["line_id"],
            v["machine_id"],
            epoch_ms(&v["ts"]),
            v["temperature"]
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

/// Equal multisets, or a short account of the difference.
fn assert_same_rows(name: &str, got: &BTreeMap<String, usize>, want: &BTreeMap<String, usize>) {
    if got == want {
        return;
    }
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let twice: Vec<(&String, &usize)> = got.iter().filter(|(_, n)| **n > 1).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    panic!(
        "{name}: {} rows written for {} events; {} missing (first {:?}), {} written more than once (first {:?}), {} unknown (first {:?})",
        got.values().sum::<usize>(),
        want.values().sum::<usize>(),
        missing.len(),
        missing.first(),
        twice.len(),
        twice.first(),
        extra.len(),
        extra.first()
    );
}

/// Messages of `topic` with a failure rate: what the model learns from.
fn rated(bootstrap: &str, topic: &str) -> u64 {
    read_all(bootstrap, topic, Duration::from_secs(60))
        .expect("topic reads")
        .iter()
        .filter(|m| {
            serde_json::from_slice::<Value>(&m.payload).is_ok_and(|v| v["failure_rate"].is_f64())
        })
        .count() as u64
}

/// Waits until the pipeline's model has learnt `n` rows (bounded); the model's summary is
/// published after the turn's outputs are acknowledged, so the sinks hold those rows too.
fn wait_learnt(url: &str, name: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = json_of(pipectl(url, &["status", name, "-o", "json"]));
        if s["models"]["failure"]["samples"].as_u64() == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not learn {n} rows: {s}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn two_pipelines_run_resume_after_a_restart_and_roll_back() {
    let Some(bootstrap) = bootstrap() else { return };
    let state = std::env::temp_dir().join(unique("daemon-state"));
    let dir = std::env::temp_dir().join(unique("daemon-pipelines"));
    std::fs::create_dir_all(&dir).expect("dir");
    let suffix = (nanos() % 1_000_000_000).to_string();
    let names = [format!("a-{suffix}"), format!("b-{suffix}")];
    let inputs = [unique("daemon.a.in"), unique("daemon.b.in")];
    let outputs = [unique("daemon.a.out"), unique("daemon.b.out")];
    let mut files = Vec::new();
    for i in 0..2 {
        let path = dir.join(format!("{}.yaml", names[i]));
        let yaml = pipeline_yaml(&names[i], &unique("group"), &inputs[i], &outputs[i], "");
        std::fs::write(&path, yaml).expect("write");
        files.push(path);
        generate(&bootstrap, &inputs[i], 20_000, 1 + i as u64);
    }
    let port = free_port();
    let mut daemon = Daemon::start(&state, port, &bootstrap);
    let url = daemon.url.clone();

    // Deploy both; both run and process.
    let file_args: Vec<&str> = files.iter().map(|f| f.to_str().expect("utf-8")).collect();
    let out = ok(pipectl(&url, &[&["deploy"], file_args.as_slice()].concat()));
    assert!(
        out.contains(&format!("{}: deployed version 1", names[0])),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}: deployed version 1", names[1])),
        "{out}"
    );
    let list = ok(pipectl(&url, &["list"]));
    for n in &names {
        assert!(list.contains(n.as_str()), "{list}");
    }
    for (n, input) in names.iter().zip(&inputs) {
        wait_learnt(&url, n, rated(&bootstrap, input));
    }
    let listed = json_of(pipectl(&url, &["list", "-o", "json"]));
    for p in listed["pipelines"].as_array().expect("pipelines") {
        assert_eq!(p["phase"], "running", "{p}");
    }

    // Restart the daemon; more events arrive while it is down; both resume where they were.
    daemon.stop();
    for (seed, input) in (10..).zip(&inputs) {
        generate(&bootstrap, input, 10_000, seed);
    }
    let mut daemon = Daemon::start(&state, port, &bootstrap);
    // The models' state came back too: they count every rated event of both runs.
    for (n, input) in names.iter().zip(&inputs) {
        wait_learnt(&url, n, rated(&bootstrap, input));
    }
    let status = ok(pipectl(&url, &["status", &names[0]]));
    assert!(status.contains("model failure: 1 keys"), "{status}");
    for i in 0..2 {
        let got = rows(&bootstrap, &outputs[i]);
        let want = rows(&bootstrap, &inputs[i]);
        assert_eq!(want.values().sum::<usize>(), 30_000);
        assert_same_rows(&names[i], &got, &want);
    }

    // Version 2, then back to version 1.
    let v1 = std::fs::read_to_string(&files[0]).expect("read");
    let v2 = pipeline_yaml(
        &names[0],
        &unique("group"),
        &inputs[0],
        &outputs[0],
        " WHERE temperature > 70",
    );
    std::fs::write(&files[0], &v2).expect("write");
    let out = ok(pipectl(&url, &["deploy", "--dry-run", file_args[0]]));
    assert!(out.contains("WHERE temperature > 70"), "the diff: {out}");
    assert!(out.contains("would deploy version 2"), "{out}");
    let out = ok(pipectl(&url, &["deploy", file_args[0]]));
    assert!(out.contains("deployed version 2"), "{out}");
    let got = json_of(pipectl(&url, &["get", &names[0], "-o", "json"]));
    assert_eq!(got["spec"].as_str(), Some(v2.as_str()));
    let out = ok(pipectl(&url, &["rollback", &names[0]]));
    assert!(
        out.contains("version 3 runs the spec of version 1"),
        "{out}"
    );
    let got = json_of(pipectl(&url, &["get", &names[0], "-o", "json"]));
    assert_eq!(got["version"], 3);
    assert_eq!(got["spec"].as_str(), Some(v1.as_str()));
    let versions = json_of(pipectl(&url, &["versions", &names[0], "-o", "json"]));
    let listed: Vec<(u64, Option<u64>)> = versions["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| (v["version"].as_u64().expect("n"), v["rollback_of"].as_u64()))
        .collect();
    assert_eq!(listed, vec![(1, None), (2, None), (3, Some(1))]);

    // An invalid deploy is refused with located errors, by pipectl and by the daemon itself.
    let bad = v1.replace(
        "schema: production/sensor_reading",
        "schema: production/sensor_readng",
    );
    let bad_path = dir.join("bad.yaml");
    std::fs::write(&bad_path, &bad).expect("write");
    let out = pipectl(&url, &["deploy", bad_path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml:10:15: error: spec.sources[0].schema"),
        "{stderr}"
    );
    let (status, body) = http(
        &url,
        "POST",
        "/api/v1/pipelines",
        Some(TOKEN),
        Some(&serde_json::json!({ "file": "bad.yaml", "yaml": bad })),
    );
    assert_eq!(status, 422, "{body}");
    let d = &body["diagnostics"][0];
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(10), Some(15)),
        "{body}"
    );
    assert_eq!(d["path"], "spec.sources[0].schema");

    // Stop, start, delete.
    ok(pipectl(&url, &["stop", &names[1]]));
    let s = json_of(pipectl(&url, &["status", &names[1], "-o", "json"]));
    assert_eq!(
        (s["phase"].as_str(), s["desired"].as_str()),
        (Some("stopped"), Some("stopped"))
    );
    ok(pipectl(&url, &["start", &names[1]]));
    ok(pipectl(&url, &["delete", &names[1]]));
    let out = pipectl(&url, &["get", &names[1]]);
    assert_eq!(out.status.code(), Some(5), "a deleted pipeline is gone");

    daemon.stop();
    std::fs::remove_dir_all(&state).ok();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_api_needs_the_token_and_matches_its_openapi_description() {
    let state = std::env::temp_dir().join(unique("daemon-api"));
    let port = free_port();
    // No broker needed: nothing is deployed.
    let mut daemon = Daemon::start_with(&state, port, "127.0.0.1:1", &["--max-body", "4096"]);
    let url = daemon.url.clone();

    // Without the token, with a wrong one: 401; probes and metrics are open.
    assert_eq!(http(&url, "GET", "/api/v1/pipelines", None, None).0, 401);
    assert_eq!(
        http(
            &url,
            "GET",
            "/api/v1/pipelines",
            Some("wrong-token-0123456789"),
            None
        )
        .0,
        401
    );
    assert_eq!(
        http(&url, "GET", "/api/v1/pipelines", Some(TOKEN), None).0,
        200
    );
    assert_eq!(http(&url, "GET", "/healthz", None, None).0, 200);
    assert_eq!(http(&url, "GET", "/metrics", None, None).0, 200);
    let out = Command::new(pipectl_bin())
        .args(["list"])
        .env("PIPECTL_SERVER", &url)
        .env("PIPECTL_TOKEN", "wrong-token-0123456789")
        .env(
            "XDG_CONFIG_HOME",
            std::env::temp_dir().join("no-pipectl-config"),
        )
        .output()
        .expect("pipectl runs");
    assert_eq!(out.status.code(), Some(4), "exit code for a wrong token");

    // The served description is the committed one, and every operation in it exists.
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("crates/daemon/openapi.json")).expect("openapi.json"),
    )
    .expect("JSON");
    let (status, served) = http(&url, "GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    assert_eq!(served, committed);
    let mut operations = 0;
    for (path, item) in committed["paths"].as_object().expect("paths") {
        for method in ["get", "post", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            operations += 1;
            let concrete = path.replace("{name}", "no-such-pipeline");
            let (status, body) = http(&url, &method.to_uppercase(), &concrete, Some(TOKEN), None);
            let routed =
                status != 405 && body.get("error") != Some(&Value::from("no such endpoint"));
            assert!(routed, "{method} {path}: {status} {body}");
        }
    }
    assert_eq!(operations, 13);
    assert_eq!(
        http(&url, "GET", "/api/v1/nothing", Some(TOKEN), None).0,
        404
    );

    // Bodies are limited.
    let big = "x".repeat(8 * 1024);
    let (status, _) = http(
        &url,
        "POST",
        "/api/v1/pipelines",
        Some(TOKEN),
        Some(&serde_json::json!({ "yaml": big })),
    );
    assert_eq!(status, 413);
    daemon.stop();
    std::fs::remove_dir_all(&state).ok();
}

#[test]
fn the_daemon_refuses_to_start_without_a_token_unless_insecure_on_loopback() {
    let state = std::env::temp_dir().join(unique("daemon-refuse"));
    let run = |args: &[&str]| {
        Command::new(pipelined_bin())
            .args(args)
            .arg("--state-dir")
            .arg(&state)
            .env_remove("PIPELINED_TOKEN")
            .output()
            .expect("pipelined runs")
    };
    let out = run(&["--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API token"));
    let out = run(&["--listen", "0.0.0.0:0", "--insecure"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
    std::fs::remove_dir_all(&state).ok();
}

/// Whether Prometheus can run here (scripts/gate installs it and sets REQUIRE_PROMETHEUS).
fn prometheus_available() -> bool {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var_os("REQUIRE_PROMETHEUS").is_some() {
        panic!("REQUIRE_PROMETHEUS is set but promtool is missing: run scripts/prometheus install");
    }
    if !found {
        eprintln!("skipped: no Prometheus (run scripts/gate, or scripts/prometheus install)");
    }
    found
}

/// A Prometheus server started by scripts/prometheus, stopped when dropped.
struct Prometheus {
    dir: PathBuf,
    url: String,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("prometheus"));
        let port = free_port();
        let out = Command::new(root().join("scripts/prometheus"))
            .args(["start", target, &port.to_string()])
            .arg(&dir)
            .output()
            .expect("scripts/prometheus runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Series returned by an instant query.
    fn query(&self, expr: &str) -> Vec<Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .get(&format!("{}/api/v1/query", self.url))
            .query("query", expr)
            .call()
            .expect("prometheus answers");
        let body: Value = resp.body_mut().read_json().expect("JSON");
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/prometheus"))
            .arg("stop")
            .arg(&self.dir)
            .output();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Grafana's built-in variables as Grafana would expand them for "All" and a short range.
fn expand(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$pipeline", ".+")
        .replace("$model", ".+")
}

fn run_promtool(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("promtool ends")
}

#[test]
fn every_dashboard_panel_has_data_from_the_example_pipelines() {
    let Some(bootstrap) = bootstrap() else { return };
    if !prometheus_available() {
        return;
    }
    // Static checks first: the shipped Prometheus config, the dashboards' structure and
    // that the committed dashboards are their generator's output.
    let out = run_promtool(
        &[
            "check",
            "config",
            root()
                .join("deploy/prometheus/prometheus.yml")
                .to_str()
                .expect("utf-8"),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let python = std::env::var("ORACLE_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg(root().join("deploy/grafana/dashboards.py"))
        .arg("--check")
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let datasources = std::fs::read_to_string(
        root().join("deploy/grafana/provisioning/datasources/prometheus.yml"),
    )
    .expect("datasource provisioning");
    let mut queries: Vec<(String, String, String)> = Vec::new();
    for file in ["pipelines.json", "model-quality.json"] {
        let path = root().join("deploy/grafana/dashboards").join(file);
        let board: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard"))
                .expect("dashboard JSON");
        let variables = board["templating"]["list"].as_array().expect("variables");
        assert!(
            variables.iter().any(|v| v["name"] == "pipeline"),
            "{file}: a pipeline selector"
        );
        let mut ids = std::collections::BTreeSet::new();
        for p in board["panels"].as_array().expect("panels") {
            let id = p["id"].as_u64().expect("panel id");
            assert!(ids.insert(id), "{file}: panel id {id} twice");
            let uid = p["datasource"]["uid"].as_str().expect("datasource uid");
            assert!(
                datasources.contains(&format!("uid: {uid}")),
                "{file}: datasource {uid} is provisioned"
            );
            assert!(p["gridPos"]["w"].as_u64().is_some(), "{file}: layout");
            for t in p["targets"].as_array().expect("targets") {
                let expr = t["expr"].as_str().expect("expr");
                assert!(
                    expr.contains("$pipeline"),
                    "{file}: {expr} follows the selector"
                );
                queries.push((
                    file.to_string(),
                    p["title"].as_str().unwrap_or_default().to_string(),
                    expr.to_string(),
                ));
            }
        }
        for v in variables {
            queries.push((
                file.to_string(),
                format!("variable {}", v["name"]),
                v["definition"]
                    .as_str()
                    .and_then(|d| d.strip_prefix("label_values("))
                    .and_then(|d| d.rsplit_once(','))
                    .map(|(metric, _)| metric.to_string())
                    .expect("label_values(METRIC, LABEL)"),
            ));
        }
    }

    // The example pipelines on the broker, fed by every event family.
    let state = std::env::temp_dir().join(unique("daemon-metrics"));
    let port = free_port();
    let mut daemon = Daemon::start(&state, port, &bootstrap);
    let url = daemon.url.clone();
    let out = Command::new(pipectl_bin())
        .args([
            "gen",
            "--bootstrap",
            &bootstrap,
            "--kind",
            "all",
            "--count",
            "5000",
        ])
        .args(["--late", "0.01", "--malformed", "0.01", "--seed", "3"])
        .current_dir(root())
        .output()
        .expect("gen runs");
    ok(out);
    let examples: Vec<String> = std::fs::read_dir(root().join("pipelines"))
        .expect("pipelines/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.to_str().expect("utf-8").to_string())
        .collect();
    assert!(examples.len() >= 7);
    let args: Vec<&str> = std::iter::once("deploy")
        .chain(examples.iter().map(String::as_str))
        .collect();
    ok(pipectl(&url, &args));
    let prometheus = Prometheus::start(&format!("127.0.0.1:{port}"));
    // Fresh events while Prometheus watches, so that rates and latency quantiles move.
    let mut feed = feed(
        &bootstrap,
        &[
            "--kind", "all", "--count", "400", "--rate", "40", "--start", "now", "--seed", "4",
        ],
    );

    // Every pipeline runs (issue 5's acceptance: every example running under the daemon).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let listed = json_of(pipectl(&url, &["list", "-o", "json"]));
        let pipelines = listed["pipelines"].as_array().cloned().unwrap_or_default();
        let running = pipelines
            .iter()
            .filter(|p| p["phase"] == "running" && p["events_in"].as_u64() > Some(0))
            .count();
        if running == examples.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every example runs and reads: {listed}\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The metrics text passes promtool's checks.
    let (status, text) = http(&url, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let text = text.as_str().expect("metrics text").to_string();
    let out = run_promtool(&["check", "metrics"], Some(&text));
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every query of every panel returns series, once Prometheus has a few scrapes.
    let deadline = Instant::now() + Duration::from_secs(90);
    let missing = loop {
        let missing: Vec<&(String, String, String)> = queries
            .iter()
            .filter(|(_, _, expr)| prometheus.query(&expand(expr)).is_empty())
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let panels: std::collections::BTreeSet<(&str, &str)> = queries
        .iter()
        .map(|(f, t, _)| (f.as_str(), t.as_str()))
        .collect();
    let empty: std::collections::BTreeSet<(&str, &str)> = missing
        .iter()
        .map(|(f, t, _)| (f.as_str(), t.as_str()))
        .collect();
    eprintln!(
        "{} panels and variables, {} with data ({} queries)",
        panels.len(),
        panels.len() - empty.len(),
        queries.len()
    );
    assert!(missing.is_empty(), "queries without data: {missing:#?}");
    // Keys become labels only where a model opts in, and no more keys than its cap.
    let keyed = prometheus.query(r#"model_key_samples{pipeline="line-failure-forecast"}"#);
    assert!(!keyed.is_empty() && keyed.len() <= 8, "{keyed:?}");
    assert!(
        prometheus
            .query(r#"model_key_samples{pipeline="shipment-delay"}"#)
            .is_empty(),
        "a model without metrics.per_key has no per-key series"
    );
    let _ = feed.kill();
    let _ = feed.wait();
    drop(prometheus);
    daemon.stop();
    std::fs::remove_dir_all(&state).ok();
}

#[test]
fn the_compose_stack_is_complete_and_local() {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).expect("compose file");
    let compose: Value = serde_norway::from_str(&text).expect("compose YAML");
    // Apply YAML merge keys (`<<: *engine`) as Compose does.
    let services: serde_json::Map<String, Value> = compose["services"]
        .as_object()
        .expect("services")
        .iter()
        .map(|(name, s)| {
            let mut merged = s
                .get("<<")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({}));
            for (k, v) in s
                .as_object()
                .expect("service")
                .iter()
                .filter(|(k, _)| *k != "<<")
            {
                merged[k] = v.clone();
            }
            (name.clone(), merged)
        })
        .collect();
    for name in [
        "kafka",
        "pipelined",
        "generator",
        "deploy",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "service {name}");
    }
    assert!(root().join("Dockerfile").exists());
    // The engine is built from the repository, and the API token is never a literal.
    assert_eq!(services["pipelined"]["build"], ".");
    assert!(
        text.contains("PIPELINED_TOKEN: ${PIPELINED_TOKEN:?"),
        "the token comes from the environment"
    );
    for (name, s) in &services {
        for port in s["ports"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let port = port.as_str().expect("port mapping");
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} beyond loopback"
            );
        }
        for volume in s["volumes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let volume = volume.as_str().expect("volume");
            if let Some(path) = volume.strip_prefix("./") {
                let local = path.split(':').next().expect("path");
                assert!(root().join(local).exists(), "{name} mounts missing {local}");
            }
        }
    }
    // The deploy service deploys the examples; the generator feeds every family.
    assert!(
        services["deploy"]["command"][0]
            .as_str()
            .is_some_and(|c| c.contains("pipectl deploy pipelines/*.yaml"))
    );
    let generator: Vec<&str> = services["generator"]["command"]
        .as_array()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(generator.windows(2).any(|w| w == ["--kind", "all"]));
}

#[test]
fn a_crashed_daemon_loses_nothing_on_restart() {
    let Some(bootstrap) = bootstrap() else { return };
    let state = std::env::temp_dir().join(unique("daemon-crash"));
    let dir = std::env::temp_dir().join(unique("daemon-crash-pipelines"));
    std::fs::create_dir_all(&dir).expect("dir");
    let name = format!("crash-{}", nanos() % 1_000_000_000);
    let (input, output) = (unique("crash.in"), unique("crash.out"));
    let file = dir.join("crash.yaml");
    std::fs::write(
        &file,
        pipeline_yaml(&name, &unique("group"), &input, &output, ""),
    )
    .expect("write");
    generate(&bootstrap, &input, 2_000, 1);
    let port = free_port();
    let mut daemon = Daemon::start(&state, port, &bootstrap);
    let url = daemon.url.clone();
    ok(pipectl(&url, &["deploy", file.to_str().expect("utf-8")]));
    // Events keep arriving while the daemon is killed in the middle of processing them.
    let mut feed = feed(
        &bootstrap,
        &[
            "--kind",
            "production/sensor_reading",
            "--count",
            "6000",
            "--rate",
            "1500",
            "--seed",
            "2",
            "--topic",
            &input,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = json_of(pipectl(&url, &["status", &name, "-o", "json"]));
        if s["events_out"].as_u64().unwrap_or(0) >= 3_000 {
            break;
        }
        assert!(Instant::now() < deadline, "not processing: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.crash();
    let mut daemon = Daemon::start(&state, port, &bootstrap);
    assert!(feed.wait().expect("gen ends").success());
    // At least once: after the restart every event is in the output, some perhaps twice
    // (those processed after the last checkpoint, before the crash).
    let want = rows(&bootstrap, &input);
    assert_eq!(want.values().sum::<usize>(), 8_000);
    let deadline = Instant::now() + Duration::from_secs(120);
    let got = loop {
        let got = rows(&bootstrap, &output);
        if want.keys().all(|k| got.contains_key(k)) {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events in the output",
            want.keys().filter(|k| got.contains_key(*k)).count(),
            want.len()
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(got.keys().all(|k| want.contains_key(k)), "nothing invented");
    eprintln!(
        "{} events, {} rows written ({} again after the crash)",
        want.values().sum::<usize>(),
        got.values().sum::<usize>(),
        got.values().sum::<usize>() - want.values().sum::<usize>()
    );
    daemon.stop();
    std::fs::remove_dir_all(&state).ok();
    std::fs::remove_dir_all(&dir).ok();
}
