//! The independent oracles of the broker tests (tests/kafka.rs and tests/daemon.rs include
//! this module): DuckDB's windows and scikit-learn's least squares over what the broker
//! holds, and the comparisons of the engine's outputs with them.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use connectors::{StoredMessage, read_all};
use serde_json::Value;

use crate::support::{epoch_ms, root, test_python, unique};

/// Writes `messages` into `dir/input.jsonl` as the oracles read them: one object per
/// message, `{"partition", "offset", "payload_b64"}`.
fn write_raw(dir: &std::path::Path, messages: &[StoredMessage]) -> std::path::PathBuf {
    let path = dir.join("input.jsonl");
    let mut raw = String::new();
    for m in messages {
        raw.push_str(
            &serde_json::json!({
                "partition": m.partition,
                "offset": m.offset,
                "payload_b64": base64::engine::general_purpose::STANDARD.encode(&m.payload),
            })
            .to_string(),
        );
        raw.push('\n');
    }
    std::fs::write(&path, raw).expect("write input");
    path
}

pub fn read(bootstrap: &str, topic: &str) -> Vec<StoredMessage> {
    read_all(bootstrap, topic, Duration::from_secs(60)).expect("topic reads")
}

pub fn close(a: f64, b: f64, rel: f64) -> bool {
    a == b || (a - b).abs() <= rel * a.abs().max(b.abs())
}

/// Equal JSON objects, except that floating-point numbers may differ in the last bits (sums
/// of doubles follow how micro-batches were cut, which varies from run to run).
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => close(
            x.as_f64().unwrap_or(f64::NAN),
            y.as_f64().unwrap_or(f64::NAN),
            1e-12,
        ),
        _ => a == b,
    }
}

/// Runs the DuckDB oracle over what the broker holds in `input` (per-minute windows with 5 s
/// of allowed disorder): the messages, the expected window rows (in window-end then key
/// order) and the (partition, offset) of every malformed message.
pub fn window_oracle(
    bootstrap: &str,
    input: &str,
) -> (Vec<StoredMessage>, Vec<Value>, BTreeSet<(i32, i64)>) {
    // What the broker holds, for the oracle.
    let messages = read(bootstrap, input);
    let dir = std::env::temp_dir().join(unique("oracle"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let raw_path = write_raw(&dir, &messages);
    let windows_path = dir.join("windows.jsonl");
    let invalid_path = dir.join("invalid.json");
    let out = Command::new(test_python())
        .arg(root().join("tests/oracle/window_oracle.py"))
        .args(["--input", raw_path.to_str().expect("utf-8")])
        .args(["--size-ms", "60000", "--allowed-ms", "5000"])
        .args(["--windows", windows_path.to_str().expect("utf-8")])
        .args(["--invalid", invalid_path.to_str().expect("utf-8")])
        .output()
        .expect("oracle runs");
    assert!(
        out.status.success(),
        "oracle: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Vec<Value> = std::fs::read_to_string(&windows_path)
        .expect("windows")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let invalid: BTreeSet<(i32, i64)> = serde_json::from_str::<Vec<(i32, i64)>>(
        &std::fs::read_to_string(&invalid_path).expect("invalid"),
    )
    .expect("json")
    .into_iter()
    .collect();
    std::fs::remove_dir_all(&dir).ok();
    (messages, expected, invalid)
}

/// Window rows of the sink equal the oracle's: counts, minima and maxima exactly, sums and
/// averages of doubles to 1e-12 (their order of addition differs between engines). Rows are
/// compared in window-end then key order (tasks and output partitions write in parallel).
pub fn assert_same_windows(got: &[Value], expected: &[Value]) {
    assert!(
        expected.len() > 1000,
        "oracle found {} windows",
        expected.len()
    );
    assert_eq!(got.len(), expected.len(), "number of window rows");
    let order = |v: &Value| {
        (
            epoch_ms(&v["window_end"]),
            v["line_id"].as_str().unwrap_or_default().to_string(),
        )
    };
    let mut got = got.to_vec();
    got.sort_by_key(order);
    let mut expected = expected.to_vec();
    expected.sort_by_key(order);
    for (g, e) in got.iter().zip(&expected) {
        let what = format!("\n got {g}\nwant {e}");
        assert_eq!(g["line_id"], e["line_id"], "{what}");
        assert_eq!(
            epoch_ms(&g["window_start"]),
            epoch_ms(&e["window_start"]),
            "{what}"
        );
        assert_eq!(
            epoch_ms(&g["window_end"]),
            epoch_ms(&e["window_end"]),
            "{what}"
        );
        for exact in ["readings", "rated"] {
            assert_eq!(g[exact].as_i64(), e[exact].as_i64(), "{exact}{what}");
        }
        for exact in ["min_pressure", "max_vibration"] {
            assert_eq!(g[exact].as_f64(), e[exact].as_f64(), "{exact}{what}");
        }
        // Sums of doubles depend on the order of addition, which two engines need not share.
        for float in ["sum_temperature", "avg_temperature"] {
            let (a, b) = (
                g[float].as_f64().expect("number"),
                e[float].as_f64().expect("number"),
            );
            assert!(close(a, b, 1e-12), "{float}: {a} vs {b}{what}");
        }
        match (
            g["avg_failure_rate"].as_f64(),
            e["avg_failure_rate"].as_f64(),
        ) {
            (Some(a), Some(b)) => assert!(close(a, b, 1e-12), "avg_failure_rate{what}"),
            (a, b) => assert_eq!(a, b, "avg_failure_rate{what}"),
        }
    }
}

/// Runs `tests/oracle/ols_oracle.py` over `messages`: per line, scikit-learn's least squares
/// of the failure rate on the five sensors over every valid reading.
pub fn ols_oracle(messages: &[StoredMessage], key: Option<&str>) -> Value {
    let dir = std::env::temp_dir().join(unique("ols"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let raw_path = write_raw(&dir, messages);
    let out_path = dir.join("ols.json");
    let out = Command::new(test_python())
        .arg(root().join("tests/oracle/ols_oracle.py"))
        .args(["--input", raw_path.to_str().expect("utf-8")])
        .args(key.map(|k| vec!["--key", k]).unwrap_or_default())
        .args(["--target", "failure_rate"])
        .args([
            "--features",
            "temperature,humidity,pressure,speed,vibration",
        ])
        .args(["--out", out_path.to_str().expect("utf-8")])
        .output()
        .expect("oracle runs");
    assert!(
        out.status.success(),
        "oracle: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result =
        serde_json::from_str(&std::fs::read_to_string(&out_path).expect("ols")).expect("json");
    std::fs::remove_dir_all(&dir).ok();
    result
}

/// The last snapshot of each line in `snapshots` equals scikit-learn's least squares over
/// every valid reading of `messages` of that line, to 1e-8 relative.
pub fn assert_models_are_least_squares(
    bootstrap: &str,
    snapshots: &str,
    messages: &[StoredMessage],
) {
    let truth = ols_oracle(messages, Some("line_id"));
    let mut last_snapshot: std::collections::BTreeMap<String, Value> = Default::default();
    for m in read(bootstrap, snapshots) {
        let v: Value = serde_json::from_slice(&m.payload).expect("json");
        last_snapshot.insert(v["line_id"].as_str().expect("line").to_string(), v);
    }
    let lines = truth.as_object().expect("object");
    assert_eq!(last_snapshot.len(), lines.len(), "one model per line");
    for (line, want) in lines {
        assert_same_model(line, &last_snapshot[line], want);
    }
    println!(
        "{} lines: final models equal scikit-learn's least squares to 1e-8",
        lines.len()
    );
    // The global model, learnt by every task and merged: the snapshot with the most
    // samples (each task writes the merge it ends with) is the fit over every reading.
    let global = format!("{snapshots}.global");
    let best = read(bootstrap, &global)
        .iter()
        .map(|m| serde_json::from_slice::<Value>(&m.payload).expect("json"))
        .max_by_key(|v| v["samples"].as_u64().unwrap_or(0))
        .expect("a snapshot of the global model");
    let truth = ols_oracle(messages, None);
    assert_same_model("the global model", &best, &truth[""]);
    println!(
        "the global model, merged over every task, equals scikit-learn's least squares over {} readings",
        truth[""]["samples"]
    );
}

/// A model's snapshot equals scikit-learn's fit: the same samples (each reading learnt
/// once), and coefficients and intercept to 1e-8 relative.
fn assert_same_model(what: &str, got: &Value, want: &Value) {
    assert_eq!(
        got["samples"], want["samples"],
        "{what}: readings learnt (each once)"
    );
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-300);
    let (a, b) = (
        got["intercept"].as_f64().expect("intercept"),
        want["intercept"].as_f64().expect("intercept"),
    );
    assert!(rel(a, b) < 1e-8, "{what}: intercept {a} vs {b}");
    for (name, b) in want["coefficients"].as_object().expect("coefficients") {
        let a = got["coefficients"][name].as_f64().expect("coefficient");
        let b = b.as_f64().expect("number");
        assert!(rel(a, b) < 1e-8, "{what}: {name} {a} vs {b}");
    }
}

/// The window rows of `written` once each, by (line, window): a row written again after a
/// replay must equal the first (floating-point sums to 1e-12: a replay may cut micro-batches
/// elsewhere).
pub fn distinct_windows(written: &[Value]) -> Vec<Value> {
    let mut first: std::collections::BTreeMap<(String, i64, i64), Value> = Default::default();
    for row in written {
        let key = (
            row["line_id"].as_str().unwrap_or_default().to_string(),
            epoch_ms(&row["window_start"]),
            epoch_ms(&row["window_end"]),
        );
        match first.get(&key) {
            Some(earlier) => assert!(
                same_json(earlier, row),
                "a window written twice differs:\n {earlier}\n {row}"
            ),
            None => {
                first.insert(key, row.clone());
            }
        }
    }
    first.into_values().collect()
}

/// The outputs of `tests/pipelines/scale-out.yaml` over `input` equal the oracles': every
/// window DuckDB finds is in `output` (once or more: outputs are at least once; a repeat
/// equals the first), and the models' last snapshots in `snapshots` (per line) and
/// `snapshots.global` equal scikit-learn's least squares. Prints the counts after `what`.
pub fn assert_scale_out_results(
    bootstrap: &str,
    input: &str,
    output: &str,
    snapshots: &str,
    what: &str,
) -> (Vec<StoredMessage>, usize) {
    let (messages, expected, _) = window_oracle(bootstrap, input);
    let written: Vec<Value> = read(bootstrap, output)
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("output is JSON"))
        .collect();
    let distinct = distinct_windows(&written);
    println!(
        "{what}: {} window rows written, {} distinct, {} duplicated; DuckDB: {}",
        written.len(),
        distinct.len(),
        written.len() - distinct.len(),
        expected.len()
    );
    assert_same_windows(&distinct, &expected);
    assert_models_are_least_squares(bootstrap, snapshots, &messages);
    (messages, written.len() - distinct.len())
}

/// Runs oracle `script` (under tests/oracle) on the messages of each input (its flag and
/// messages, written as raw JSON lines) with `args`; returns the JSON lines it writes to
/// the file of flag `--out`.
fn run_oracle(script: &str, inputs: &[(&str, Vec<StoredMessage>)], args: &[&str]) -> Vec<Value> {
    let dir = std::env::temp_dir().join(unique("oracle"));
    let mut command = Command::new(test_python());
    command.arg(root().join("tests/oracle").join(script));
    for (i, (flag, messages)) in inputs.iter().enumerate() {
        let input_dir = dir.join(i.to_string());
        std::fs::create_dir_all(&input_dir).expect("temp dir");
        let path = write_raw(&input_dir, messages);
        command.args([*flag, path.to_str().expect("utf-8")]);
    }
    let out_path = dir.join("out.jsonl");
    let out = command
        .args(args)
        .args(["--out", out_path.to_str().expect("utf-8")])
        .output()
        .expect("oracle runs");
    assert!(
        out.status.success(),
        "oracle {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = std::fs::read_to_string(&out_path)
        .expect("oracle output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    std::fs::remove_dir_all(&dir).ok();
    rows
}

/// Runs the DuckDB oracle of demand per SKU and region (per-minute windows, 3 s of allowed
/// disorder, lateness decided in the input partitions) over what the broker holds in
/// `input`: the expected window rows, the first with `late_total`.
pub fn demand_oracle(bootstrap: &str, input: &str) -> Vec<Value> {
    run_oracle(
        "demand_oracle.py",
        &[("--input", read(bootstrap, input))],
        &["--size-ms", "60000", "--allowed-ms", "3000"],
    )
}

/// The distinct demand rows of `written` (at least once: a row written again after a restore
/// must equal the first).
pub fn distinct_demand(written: &[Value]) -> Vec<Value> {
    let mut first: std::collections::BTreeMap<(String, String, i64), Value> = Default::default();
    for row in written {
        let key = (
            row["sku"].as_str().unwrap_or_default().to_string(),
            row["region"].as_str().unwrap_or_default().to_string(),
            epoch_ms(&row["window_start"]),
        );
        match first.get(&key) {
            Some(earlier) => assert!(
                same_json(earlier, row),
                "a window written twice differs:\n {earlier}\n {row}"
            ),
            None => {
                first.insert(key, row.clone());
            }
        }
    }
    first.into_values().collect()
}

/// Demand rows of the sink equal the oracle's, each once: counts and units exactly, revenue
/// to 1e-12 (sums of doubles in another order).
pub fn assert_same_demand(got: &[Value], expected: &[Value]) {
    assert!(
        expected.len() > 1000,
        "oracle found {} windows",
        expected.len()
    );
    let key = |v: &Value| {
        (
            epoch_ms(&v["window_end"]),
            v["sku"].as_str().unwrap_or_default().to_string(),
            v["region"].as_str().unwrap_or_default().to_string(),
        )
    };
    let got: std::collections::BTreeMap<_, _> = got.iter().map(|v| (key(v), v)).collect();
    assert_eq!(got.len(), expected.len(), "distinct window rows");
    for e in expected {
        let g = got
            .get(&key(e))
            .unwrap_or_else(|| panic!("no window row for {e}"));
        let what = format!("\n got {g}\nwant {e}");
        assert_eq!(
            epoch_ms(&g["window_start"]),
            epoch_ms(&e["window_start"]),
            "{what}"
        );
        assert_eq!(g["order_lines"], e["order_lines"], "{what}");
        assert_eq!(g["units"], e["units"], "{what}");
        assert!(
            close(
                g["revenue"].as_f64().unwrap_or(f64::NAN),
                e["revenue"].as_f64().unwrap_or(f64::NAN),
                1e-12
            ),
            "{what}"
        );
    }
}

/// Runs the DuckDB oracle of the repartitioned interval join over what the broker holds in
/// topics `a` and `b` (pairs of one machine at most 10 s apart): the expected pairs as
/// (machine, a_ts, b_ts, a_temperature bits, b_temperature bits), sorted.
pub fn join_oracle(bootstrap: &str, a: &str, b: &str) -> Vec<(String, i64, i64, u64, u64)> {
    run_oracle(
        "join_oracle.py",
        &[("--a", read(bootstrap, a)), ("--b", read(bootstrap, b))],
        &["--within-ms", "10000"],
    )
    .iter()
    .map(join_pair)
    .collect()
}

/// A pair of the join (engine output or oracle row) as comparable values.
pub fn join_pair(v: &Value) -> (String, i64, i64, u64, u64) {
    (
        v["machine_id"].as_str().unwrap_or_default().to_string(),
        epoch_ms(&v["a_ts"]),
        epoch_ms(&v["b_ts"]),
        v["a_temperature"].as_f64().unwrap_or(f64::NAN).to_bits(),
        v["b_temperature"].as_f64().unwrap_or(f64::NAN).to_bits(),
    )
}
