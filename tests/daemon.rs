//! The daemon (`pipelined`) as a child process, driven through `pipectl` and its HTTP API.
//!
//! The lifecycle test needs the real broker (`scripts/gate` starts it and sets
//! `KAFKA_BOOTSTRAP`); the API tests (authentication, OpenAPI, refusals) need no Kafka.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use connectors::read_all;
use serde_json::Value;

mod support;
use support::{bootstrap, epoch_ms, nanos, root, run_python, test_python, unique};
#[path = "support/daemon.rs"]
mod daemon_support;
#[path = "support/oracles.rs"]
mod oracles;
use daemon_support::{
    Daemon, TOKEN, copy_yaml, feed, free_port, gen_readings, http, json_of, ok, pipectl,
    pipectl_bin, pipelined_bin, status, wait_status,
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
    let (count, seed) = (count.to_string(), seed.to_string());
    gen_readings(
        bootstrap,
        topic,
        &["--count", &count, "--seed", &seed, "--partitions", "3"],
    );
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

/// Waits until every row of `want` is in `topic` (at least once), at most `limit`; returns
/// what the topic holds then.
fn wait_rows(
    bootstrap: &str,
    topic: &str,
    want: &BTreeMap<String, usize>,
    limit: Duration,
) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + limit;
    loop {
        let got = rows(bootstrap, topic);
        if want.keys().all(|k| got.contains_key(k)) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} rows in {topic}",
            want.keys().filter(|k| got.contains_key(*k)).count(),
            want.len()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
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

/// One raw HTTP/1.1 exchange: writes `request` and reads until the server closes or `wait`
/// passes. Returns what was read and whether the server closed the connection.
fn raw(url: &str, request: &[u8], wait: Duration) -> (String, bool) {
    use std::io::Write;
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connects");
    stream.set_read_timeout(Some(wait)).expect("timeout");
    stream.write_all(request).expect("writes");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + wait;
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

#[test]
fn slow_stalled_and_excess_connections_are_answered_and_dropped_within_bounds() {
    let state = std::env::temp_dir().join(unique("daemon-slow"));
    let mut daemon = Daemon::start_with(
        &state,
        free_port(),
        "127.0.0.1:1",
        &["--request-timeout", "2s"],
    );
    let url = daemon.url.clone();
    let addr = url.trim_start_matches("http://").to_string();
    // 300 connections that send half a request and stall (they were held 30 s each, without
    // a bound on their number). The first 256 are held until the header timeout; the rest are
    // told at once that there are too many.
    let mut stalled: Vec<std::net::TcpStream> = (0..300)
        .map(|_| {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(&addr).expect("connects");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .expect("writes");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s
        })
        .collect();
    let mut refused = 0;
    let mut dropped = 0;
    let started = Instant::now();
    for s in &mut stalled {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        if text.starts_with("HTTP/1.1 503") {
            assert!(
                text.contains(r#"{"error":"too many connections"}"#),
                "{text}"
            );
            refused += 1;
        } else if buf.is_empty() {
            dropped += 1;
        }
    }
    println!(
        "300 stalled connections: {refused} refused with 503, {dropped} dropped by the header timeout, all within {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(refused + dropped, 300);
    assert!(
        refused >= 44,
        "the connection cap did not apply: {refused} refused"
    );
    drop(stalled);
    assert_eq!(http(&url, "GET", "/healthz", None, None).0, 200);

    // A body announced as 10 GB: refused from its headers, without reading it.
    let (reply, closed) = raw(
        &url,
        format!("POST /api/v1/pipelines HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{{\"yaml\"").as_bytes(),
        Duration::from_secs(10),
    );
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains(r#""error""#) && closed, "{reply}");
    // A body that never arrives: 408 after the timeout, and the connection is closed.
    let (reply, closed) = raw(
        &url,
        format!("POST /api/v1/pipelines HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"yaml\": \"").as_bytes(),
        Duration::from_secs(10),
    );
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("did not arrive") && closed, "{reply}");
    // An idle kept-alive connection is closed too.
    let (reply, closed) = raw(
        &url,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(reply.starts_with("HTTP/1.1 200") && closed, "{reply}");
    daemon.stop();
    std::fs::remove_dir_all(&state).ok();
}

#[test]
fn every_api_error_is_json_and_the_auth_scheme_is_case_insensitive() {
    let state = std::env::temp_dir().join(unique("daemon-errors"));
    let mut daemon = Daemon::start_with(&state, free_port(), "127.0.0.1:1", &[]);
    let url = daemon.url.clone();
    let send = |request: String| raw(&url, request.as_bytes(), Duration::from_secs(10)).0;
    let json_error = |reply: &str, status: &str, needle: &str| {
        assert!(reply.starts_with(&format!("HTTP/1.1 {status}")), "{reply}");
        assert!(reply.contains("content-type: application/json"), "{reply}");
        let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {reply}"));
        let error = v["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "want `{needle}` in {error}");
    };
    let post = |path: &str, auth: &str, content_type: Option<&str>, body: &[u8]| {
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        raw(&url, &bytes, Duration::from_secs(20)).0
    };
    // RFC 7235: the scheme is case-insensitive.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let reply = send(format!(
            "GET /api/v1/pipelines HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {scheme} {TOKEN}\r\n\r\n"
        ));
        assert!(reply.starts_with("HTTP/1.1 200"), "{scheme}: {reply}");
    }
    let auth = format!("Bearer {TOKEN}");
    json_error(
        &post("/api/v1/pipelines", &auth, None, br#"{"yaml": "x"}"#),
        "415",
        "Content-Type: application/json",
    );
    json_error(
        &post(
            "/api/v1/pipelines",
            &auth,
            Some("application/json"),
            b"{\"yaml\": \"\xff\xfe\"}",
        ),
        "400",
        "line 1 column",
    );
    json_error(
        &post(
            "/api/v1/pipelines",
            &auth,
            Some("application/json"),
            br#"{"yaml": "", "extra": 1}"#,
        ),
        "400",
        "unknown field `extra`",
    );
    let reply = post(
        "/api/v1/pipelines",
        &auth,
        Some("application/json"),
        br#"{"yaml": ""}"#,
    );
    json_error(&reply, "422", "1 error");
    json_error(
        &post(
            "/api/v1/pipelines/x/rollback",
            &auth,
            Some("application/json"),
            br#"{"to": -1}"#,
        ),
        "400",
        "invalid JSON",
    );
    json_error(
        &post(
            "/api/v1/pipelines/x/rollback",
            &auth,
            Some("application/json"),
            b"[]",
        ),
        "400",
        "invalid JSON",
    );
    json_error(
        &send(format!(
            "GET /api/v1/pipelines/%FF HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {auth}\r\n\r\n"
        )),
        "400",
        "UTF-8",
    );
    json_error(
        &send(format!(
            "PUT /api/v1/pipelines HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {auth}\r\nContent-Length: 0\r\n\r\n"
        )),
        "405",
        "Method Not Allowed",
    );
    daemon.stop();
    std::fs::remove_dir_all(&state).ok();
}

#[test]
fn a_deploy_whose_check_runs_past_its_time_budget_is_refused() {
    let state = std::env::temp_dir().join(unique("daemon-budget"));
    // A budget no check can meet: the refusal path, with a daemon that stays well.
    let mut daemon =
        Daemon::start_with(&state, free_port(), "127.0.0.1:1", &["--check-time", "1ms"]);
    let yaml = pipeline_yaml("budget", "g", "in", "out", "");
    let (status, body) = http(
        &daemon.url,
        "POST",
        "/api/v1/pipelines",
        Some(TOKEN),
        Some(&serde_json::json!({ "yaml": yaml })),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string()
            .contains("took longer than its budget of 1ms"),
        "{body}"
    );
    assert_eq!(http(&daemon.url, "GET", "/healthz", None, None).0, 200);
    daemon.stop();
    std::fs::remove_dir_all(&state).ok();
}

#[test]
fn the_api_conforms_to_its_openapi_under_schemathesis() {
    let python = test_python();
    let schemathesis = Path::new(&python).with_file_name("schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: scripts/python-env installs it",
        schemathesis.display()
    );
    let state = std::env::temp_dir().join(unique("daemon-schemathesis"));
    // With the broker when there is one, so that the example pipeline it deploys really runs.
    let broker = bootstrap().unwrap_or_else(|| "127.0.0.1:1".into());
    let mut daemon = Daemon::start_with(&state, free_port(), &broker, &["--stop-timeout", "2s"]);
    let out = Command::new(&schemathesis)
        .arg("--config-file")
        .arg(root().join("tests/api/schemathesis.toml"))
        .arg("run")
        .arg(root().join("crates/daemon/openapi.json"))
        .args(["--url", &daemon.url])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--max-time", "45", "--workers", "2"])
        .env("NO_COLOR", "1")
        // It keeps a cache of what it found (`.schemathesis/`) in its working directory.
        .current_dir(&state)
        .output()
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("generated") || l.contains(" passed") || l.contains("Seed:"))
        .collect();
    println!("schemathesis: {}", summary.join(" | "));
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(http(&daemon.url, "GET", "/healthz", None, None).0, 200);
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
    let script = root().join("deploy/grafana/dashboards.py");
    run_python(&[script.as_os_str(), std::ffi::OsStr::new("--check")]);
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
    let got = wait_rows(&bootstrap, &output, &want, Duration::from_secs(120));
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

fn deploy_yaml(url: &str, yaml: &str) {
    let (status, body) = http(
        url,
        "POST",
        "/api/v1/pipelines",
        Some(TOKEN),
        Some(&serde_json::json!({ "yaml": yaml })),
    );
    assert!(status == 201 || status == 200, "{status} {body}");
}

#[test]
fn a_poison_record_under_on_error_fail_leaves_the_pipeline_failed_without_restarts() {
    let Some(bootstrap) = bootstrap() else { return };
    let input = unique("daemon.poison.in");
    gen_readings(
        &bootstrap,
        &input,
        &["--count", "200", "--malformed", "0.05", "--seed", "3"],
    );
    let state = std::env::temp_dir().join(unique("daemon-poison"));
    let mut daemon = Daemon::start(&state, free_port(), &bootstrap);
    let url = daemon.url.clone();
    deploy_yaml(
        &url,
        &copy_yaml(
            "poison",
            &format!("poison-{input}"),
            &input,
            &unique("daemon.poison.out"),
            "fail",
        ),
    );
    let s = wait_status(
        &url,
        "poison",
        "the failure",
        Duration::from_secs(60),
        |s| s["phase"] == "failed",
    );
    let error = s["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains(&format!("bad record in {input} partition")) && error.contains(" offset "),
        "{s}"
    );
    assert_eq!(s["failure"], "data", "{s}");
    // A restart would fail on the same record: none happens (with the backoff of 1, 2, 4,
    // 8 s there would be four by now).
    std::thread::sleep(Duration::from_secs(30));
    let s = status(&url, "poison");
    println!(
        "30 s after a poison record: phase {}, restarts {}",
        s["phase"], s["restarts"]
    );
    assert_eq!(s["phase"], "failed", "{s}");
    assert_eq!(s["restarts"], 0, "{s}");
    assert!(
        daemon.logs().contains("not restarted (data error"),
        "{}",
        daemon.logs()
    );
    // `start` runs it again, at the user's request (and it fails on the same record).
    let (status, body) = http(
        &url,
        "POST",
        "/api/v1/pipelines/poison/start",
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["started"], true, "{body}");
    daemon.stop();
    std::fs::remove_dir_all(&state).ok();
}

/// `scripts/kafka` on a broker of the test's own (the shared one must not stop).
fn own_broker(port: u16, dir: &Path, command: &str) {
    let out = Command::new(root().join("scripts/kafka"))
        .arg(command)
        .env("KAFKA_PORT", port.to_string())
        .env("KAFKA_RUN_DIR", dir)
        .output()
        .expect("scripts/kafka runs");
    assert!(
        out.status.success(),
        "scripts/kafka {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A broker of the test's own, stopped when dropped (also when the test fails).
struct OwnBroker {
    port: u16,
    dir: PathBuf,
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/kafka"))
            .arg("stop")
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_RUN_DIR", &self.dir)
            .output();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// A port whose next port is free too (the broker's controller listens there).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let p = free_port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two free ports in a row")
}

#[test]
fn external_failures_restart_with_backoff_and_lose_nothing() {
    // Only where the suite runs its brokers (scripts/gate): this one starts a second.
    if bootstrap().is_none() {
        return;
    }
    let port = free_port_pair();
    let dir = std::env::temp_dir().join(unique("own-kafka"));
    own_broker(port, &dir, "start");
    let _broker = OwnBroker {
        port,
        dir: dir.clone(),
    };
    let broker = format!("127.0.0.1:{port}");
    let state = std::env::temp_dir().join(unique("daemon-external"));
    let mut daemon = Daemon::start(&state, free_port(), &broker);
    let url = daemon.url.clone();

    // A topic that does not exist yet: retried with backoff until it does.
    let input = unique("daemon.external.in");
    let output = unique("daemon.external.out");
    deploy_yaml(
        &url,
        &copy_yaml(
            "external",
            &format!("external-{input}"),
            &input,
            &output,
            "skip",
        ),
    );
    let s = wait_status(
        &url,
        "external",
        "a restart",
        Duration::from_secs(60),
        |s| s["restarts"].as_u64().unwrap_or(0) >= 1,
    );
    assert_eq!(s["failure"], "external", "{s}");
    assert!(
        s["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("does not exist"),
        "{s}"
    );
    generate(&broker, &input, 3000, 1);
    wait_status(&url, "external", "reading", Duration::from_secs(90), |s| {
        s["phase"] == "running" && s["events_in"].as_u64() == Some(3000)
    });

    // The broker stops and comes back with its data; more events arrive meanwhile.
    own_broker(port, &dir, "stop");
    std::thread::sleep(Duration::from_secs(5));
    own_broker(port, &dir, "resume");
    gen_readings(&broker, &input, &["--count", "2000", "--seed", "2"]);
    let want = rows(&broker, &input);
    let got = wait_rows(&broker, &output, &want, Duration::from_secs(180));
    let s = wait_status(&url, "external", "running", Duration::from_secs(60), |s| {
        s["phase"] == "running"
    });
    let twice = got.values().filter(|n| **n > 1).count();
    println!(
        "broker restart: {} input rows all in the output ({twice} written more than once, at least once), {} restarts, phase {}",
        want.len(),
        s["restarts"],
        s["phase"]
    );
    daemon.stop();
    std::fs::remove_dir_all(&state).ok();
}

#[test]
fn a_rollback_is_checked_again_like_a_deploy() {
    let state = std::env::temp_dir().join(unique("daemon-rollback-check"));
    let port = free_port();
    let spec = |topic: &str| copy_yaml("roll", "roll-group", topic, "roll.out", "skip");
    let mut daemon = Daemon::start_env(
        &state,
        port,
        "127.0.0.1:1",
        &["--pipeline-env", "ROLL_"],
        &[("ROLL_TOPIC", "roll.in")],
    );
    deploy_yaml(&daemon.url, &spec("${ROLL_TOPIC}"));
    deploy_yaml(&daemon.url, &spec("roll.fixed"));
    daemon.stop();
    // The same registry under a daemon that no longer exposes ROLL_TOPIC: version 1 would
    // not deploy today, so it does not roll back either.
    let mut daemon = Daemon::start_with(&state, port, "127.0.0.1:1", &["--pipeline-env", "ROLL_"]);
    let (status, body) = http(
        &daemon.url,
        "POST",
        "/api/v1/pipelines/roll/rollback",
        Some(TOKEN),
        Some(&serde_json::json!({ "to": 1 })),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string().contains("`ROLL_TOPIC` is not set"),
        "{body}"
    );
    daemon.stop();
    std::fs::remove_dir_all(&state).ok();
}

/// With `--schema-registry`, a deployed pipeline reads Confluent Avro written by `pipectl
/// gen` through the registry and its Avro sink registers its schema: Confluent's
/// deserializer (tests/oracle/registry_client.py) decodes every output record.
#[test]
fn the_daemon_reads_and_writes_through_the_schema_registry() {
    let (Some(bootstrap), Some(registry)) = (bootstrap(), support::registry_url()) else {
        return;
    };
    let input = unique("daemon.registry.in").replace('.', "-");
    let output = unique("daemon.registry.out").replace('.', "-");
    gen_readings(
        &bootstrap,
        &input,
        &[
            "--count",
            "300",
            "--format",
            "avro_confluent",
            "--schema-registry",
            &registry,
        ],
    );
    let state = std::env::temp_dir().join(unique("daemon-registry"));
    let mut daemon = Daemon::start_with(
        &state,
        free_port(),
        &bootstrap,
        &["--schema-registry", &registry],
    );
    let url = daemon.url.clone();
    deploy_yaml(
        &url,
        &format!(
            r#"apiVersion: pipelines/v1
kind: Pipeline
metadata: {{ name: via-registry }}
spec:
  sources:
    - name: readings
      kafka: {{ topic: {input}, start_from: earliest }}
      format: avro_confluent
      schema: production/sensor_reading
  transforms:
    - name: hot
      sql: SELECT line_id, temperature FROM readings WHERE temperature IS NOT NULL
  sinks:
    - {{ name: out, from: hot, kafka: {{ topic: {output} }}, format: avro_confluent }}
"#
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let script = root().join("tests/oracle/registry_client.py");
        let out = run_python(&[
            script.as_os_str(),
            "decode".as_ref(),
            "--bootstrap".as_ref(),
            bootstrap.as_ref(),
            "--registry".as_ref(),
            registry.as_ref(),
            "--topic".as_ref(),
            output.as_ref(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let report: Value =
            serde_json::from_str(text.lines().last().unwrap_or("{}")).expect("JSON");
        if report["count"].as_u64().unwrap_or(0) >= 300 || Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(report["count"], 300, "{report} {}", daemon.logs());
    let ids = report["schema_ids"].as_array().expect("ids");
    assert!(
        ids.len() == 1 && ids[0].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    assert!(report["first"].get("temperature").is_some(), "{report}");
    daemon.stop();
    std::fs::remove_dir_all(&state).ok();
}

/// Daemons keep state in Kafka (`--kafka-state`): nothing of a pipeline's state is in the
/// state dir. Two daemons share a pipeline (its 8 partitions) through its consumer group;
/// both stop and their state dirs are deleted; more readings arrive; a new run with
/// nothing on disk resumes from Kafka and finishes the input. Every window DuckDB finds is
/// written, and each line's final model equals scikit-learn's least squares over every
/// reading of both phases (each learnt exactly once).
#[test]
fn daemons_keep_state_in_kafka_and_a_run_resumes_after_their_state_dirs_are_deleted() {
    let Some(bootstrap) = bootstrap() else { return };
    let input = unique("daemons.in");
    let output = unique("daemons.out");
    let snapshots = unique("daemons.snapshots");
    let group = unique("group");
    let name = format!("shared-{}", nanos() % 1_000_000_000);
    let yaml = std::fs::read_to_string(root().join("tests/pipelines/scale-out.yaml"))
        .expect("pipeline")
        .replace("scale-out-test", &name)
        .replace("${TEST_INPUT_TOPIC}", &input)
        .replace("${TEST_OUTPUT_TOPIC}", &output)
        .replace("${TEST_SNAPSHOT_TOPIC}", &snapshots)
        .replace("${TEST_GROUP}", &group);
    let dir = std::env::temp_dir().join(unique("daemons"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, &yaml).expect("write");
    let file = file.to_str().expect("utf-8").to_string();
    // Event time runs on from one phase to the next (each gen starts where the last ended).
    let phase = |count: &str, seed: &str, start: &str| {
        gen_readings(
            &bootstrap,
            &input,
            &[
                "--count",
                count,
                "--seed",
                seed,
                "--start",
                start,
                "--partitions",
                "8",
            ],
        );
    };
    phase("1000", "20", "2026-01-01T00:00:00Z");
    let states = [dir.join("state-1"), dir.join("state-2")];
    let mut daemons: Vec<Daemon> = states
        .iter()
        .map(|s| Daemon::start_with(s, free_port(), &bootstrap, &["--kafka-state"]))
        .collect();
    for d in &daemons {
        ok(pipectl(&d.url, &["deploy", &file]));
    }
    // Once the group has given both daemons partitions, the rest of the input arrives.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !daemons
        .iter()
        .all(|d| d.logs().contains(&format!("pipeline {name}: task ")))
    {
        assert!(
            Instant::now() < deadline,
            "the group did not give both daemons partitions:\n{}\n{}",
            daemons[0].logs(),
            daemons[1].logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each daemon's status shows the tasks (partitions) it owns.
    for d in &daemons {
        let s = json_of(pipectl(&d.url, &["status", &name, "-o", "json"]));
        let tasks = s["tasks"].as_array().expect("tasks");
        assert!(!tasks.is_empty(), "{s}");
        assert!(
            tasks.iter().all(|t| t.as_u64().is_some_and(|t| t < 8)),
            "{s}"
        );
        let table = ok(pipectl(&d.url, &["status", &name]));
        assert!(table.contains("tasks:"), "{table}");
    }
    phase("59000", "21", "2026-01-01T00:01:40Z");
    let deadline = Instant::now() + Duration::from_secs(180);
    while connectors::committed_total(&bootstrap, &group, &input).unwrap_or(0) < 60_000 {
        assert!(
            Instant::now() < deadline,
            "the daemons did not read the input:\n{}\n{}",
            daemons[0].logs(),
            daemons[1].logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for d in &mut daemons {
        d.stop();
    }
    for s in &states {
        std::fs::remove_dir_all(s).expect("state dir deleted");
    }
    phase("40000", "22", "2026-01-01T01:40:00Z");
    let run = Command::new(pipectl_bin())
        .args(["run", &file, "--bootstrap", &bootstrap, "--kafka-state"])
        .args(["--until-idle", "5s", "--quiet"])
        .current_dir(root())
        .output()
        .expect("pipectl runs");
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stderr}");
    let restored: u64 = stderr
        .split(" bytes restored")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        restored > 0,
        "the run restored the daemons' state: {stderr}"
    );

    let (messages, _) =
        oracles::assert_scale_out_results(&bootstrap, &input, &output, &snapshots, "resumed");
    assert_eq!(messages.len(), 100_000);
    std::fs::remove_dir_all(&dir).ok();
}
