//! The fault matrix of delivery (issue 13), on a real Apache Kafka broker with the engine as
//! child processes: per-minute windows of 100,000 sensor readings (1% malformed, 1% late)
//! over 4 partitions with state in Kafka, interrupted at arbitrary points, then run to the
//! end of its input. Every window row is checked by (line, window) against DuckDB
//! (`tests/oracle/window_oracle.py`), every dead letter by the partition and offset of the
//! record it carries against the records DuckDB finds malformed. Readers are
//! `read_committed`. The test prints a table (test, events, missing, duplicated,
//! dead-lettered) and then checks it: exactly-once runs lose and double nothing,
//! at-least-once runs lose nothing (their duplicates show what exactly-once buys).
//!
//! Run by `scripts/gate` with the broker it starts (`KAFKA_BOOTSTRAP`, `REQUIRE_KAFKA=1`).

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

mod support;
use support::{Interrupted, bootstrap, epoch_ms, root, unique};
#[path = "support/oracles.rs"]
mod oracles;
use oracles::{assert_same_windows, distinct_windows, read, window_oracle};

const EVENTS: i64 = 100_000;

/// One row of the matrix.
struct Row {
    test: &'static str,
    exactly_once: bool,
    events: usize,
    missing: usize,
    duplicated: usize,
    dead_lettered: usize,
    /// Dead letters of records that are not malformed, or malformed records without one.
    wrong_letters: usize,
    malformed: usize,
    /// Seconds each restarted run took to commit past where it started.
    resumed: Vec<f64>,
    /// The distinct window rows and DuckDB's.
    windows: (Vec<Value>, Vec<Value>),
}

/// 100,000 readings through `tests/pipelines/sensor-window.yaml` with `delivery`, sent
/// `signal` three times, then run to the end.
fn scenario(bootstrap: &str, test: &'static str, delivery: &str, signal: &str, seed: u64) -> Row {
    let input = unique("faults.in");
    let output = unique("faults.out");
    let dlq = unique("faults.dlq");
    let group = unique("group");
    // Fed at 5,000 events/s while the engine runs, so that each interruption lands in the
    // middle of the input.
    let mut feed = Command::new(env!("CARGO_BIN_EXE_pipectl"))
        .args([
            "gen",
            "--bootstrap",
            bootstrap,
            "--kind",
            "production/sensor_reading",
        ])
        .args(["--count", &EVENTS.to_string(), "--seed", &seed.to_string()])
        .args(["--topic", &input, "--partitions", "4", "--rate", "5000"])
        .args(["--malformed", "0.01", "--late", "0.01"])
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("gen starts");
    // The topic exists before the engine starts.
    while connectors::committed_total(bootstrap, "none", &input).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let env = [
        ("TEST_INPUT_TOPIC", input.as_str()),
        ("TEST_OUTPUT_TOPIC", output.as_str()),
        ("TEST_DEAD_LETTER_TOPIC", dlq.as_str()),
        ("TEST_GROUP", group.as_str()),
        ("TEST_DELIVERY", delivery),
    ];
    let mut args = vec![
        "run",
        "tests/pipelines/sensor-window.yaml",
        "--bootstrap",
        bootstrap,
        "--kafka-state",
        "--checkpoint-interval",
        "500ms",
        "--max-batch",
        "500",
        "--quiet",
    ];
    let run = Interrupted {
        binary: env!("CARGO_BIN_EXE_pipectl"),
        bootstrap,
        args: &args,
        env: &env,
        group: &group,
        input: &input,
    };
    let resumed = run.times(3, signal, 12_000, EVENTS);
    assert!(feed.wait().expect("gen ends").success(), "gen failed");
    args.extend(["--until-idle", "5s"]);
    let last = Command::new(env!("CARGO_BIN_EXE_pipectl"))
        .args(&args)
        .envs(env.iter().copied())
        .current_dir(root())
        .output()
        .expect("pipectl runs");
    assert!(
        last.status.success(),
        "{test}: the last run failed:\n{}",
        String::from_utf8_lossy(&last.stderr)
    );

    let (messages, expected, malformed) = window_oracle(bootstrap, &input);
    let written: Vec<Value> = read(bootstrap, &output)
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("output is JSON"))
        .collect();
    let distinct = distinct_windows(&written);
    let key = |v: &Value| {
        (
            v["line_id"].as_str().unwrap_or_default().to_string(),
            epoch_ms(&v["window_start"]),
            epoch_ms(&v["window_end"]),
        )
    };
    let got: BTreeSet<_> = distinct.iter().map(key).collect();
    let missing = expected.iter().filter(|e| !got.contains(&key(e))).count();
    let letters = read(bootstrap, &dlq);
    let origins: BTreeSet<(i32, i64)> = letters
        .iter()
        .map(|m| {
            let h = |k: &str| {
                m.headers
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            (
                h("source-partition").parse().expect("partition header"),
                h("source-offset").parse().expect("offset header"),
            )
        })
        .collect();
    Row {
        test,
        exactly_once: delivery == "exactly_once",
        events: messages.len(),
        missing,
        duplicated: written.len() - distinct.len(),
        dead_lettered: letters.len(),
        wrong_letters: origins.symmetric_difference(&malformed).count(),
        malformed: malformed.len(),
        resumed,
        windows: (distinct, expected),
    }
}

#[test]
fn the_fault_matrix_loses_nothing_and_exactly_once_doubles_nothing() {
    let Some(bootstrap) = bootstrap() else { return };
    let rows = [
        scenario(
            &bootstrap,
            "engine SIGKILLed 3 times",
            "exactly_once",
            "KILL",
            31,
        ),
        scenario(
            &bootstrap,
            "engine SIGTERMed 3 times",
            "exactly_once",
            "TERM",
            32,
        ),
        scenario(
            &bootstrap,
            "engine SIGKILLed 3 times",
            "at_least_once",
            "KILL",
            33,
        ),
    ];
    println!(
        "\n{:<28} {:<14} {:>7} {:>7} {:>10} {:>13} {:>9}  resumed (s)",
        "test", "delivery", "events", "missing", "duplicated", "dead-lettered", "malformed"
    );
    for r in &rows {
        let resumed: Vec<String> = r.resumed.iter().map(|s| format!("{s:.1}")).collect();
        println!(
            "{:<28} {:<14} {:>7} {:>7} {:>10} {:>13} {:>9}  {}",
            r.test,
            if r.exactly_once {
                "exactly_once"
            } else {
                "at_least_once"
            },
            r.events,
            r.missing,
            r.duplicated,
            r.dead_lettered,
            r.malformed,
            resumed.join(", ")
        );
    }
    for r in &rows {
        let what = format!(
            "{} ({})",
            r.test,
            if r.exactly_once {
                "exactly once"
            } else {
                "at least once"
            }
        );
        assert_eq!(r.events, EVENTS as usize, "{what}: events in the input");
        assert_eq!(r.missing, 0, "{what}: window rows missing");
        assert!(
            r.malformed > 500,
            "{what}: the oracle sees the malformed records"
        );
        assert_eq!(
            r.wrong_letters, 0,
            "{what}: dead letters are the malformed records"
        );
        if r.exactly_once {
            assert_eq!(r.duplicated, 0, "{what}: window rows written twice");
            assert_eq!(
                r.dead_lettered, r.malformed,
                "{what}: one dead letter per malformed record"
            );
        }
        assert_same_windows(&r.windows.0, &r.windows.1);
    }
}
