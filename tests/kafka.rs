//! End-to-end tests on a real Apache Kafka broker, through the `pipectl` binary.
//!
//! `scripts/gate` starts the broker with `scripts/kafka` and sets `KAFKA_BOOTSTRAP` and
//! `REQUIRE_KAFKA=1`. Run alone without a broker, these tests say so and pass vacuously
//! unless `REQUIRE_KAFKA` is set, in which case they fail. Every test uses its own topics.
//!
//! Expected results come from `tests/oracle/window_oracle.py` (DuckDB), which reads the raw
//! messages back from the broker and decides validity and lateness on its own.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

use connectors::{StoredMessage, read_all};
use serde_json::Value;

mod support;
use support::{bootstrap, epoch_ms, kafka_state_run, root, unique};
#[path = "support/oracles.rs"]
mod oracles;
use oracles::{
    assert_same_demand, assert_same_windows, assert_scale_out_results, demand_oracle,
    distinct_demand, join_oracle, join_pair, read, same_json, window_oracle,
};

fn pipectl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_pipectl"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .output()
        .expect("pipectl runs");
    assert!(
        out.status.success(),
        "pipectl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn header<'a>(m: &'a StoredMessage, key: &str) -> &'a str {
    m.headers
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// The late count from the run's closing line (`done in ...: ..., N late`).
fn late_from_summary(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("done in "))
        .expect("summary line");
    line.rsplit(", ")
        .next()
        .and_then(|s| s.strip_suffix(" late"))
        .and_then(|n| n.parse().ok())
        .expect("late count")
}

/// Runs `pipectl` with `args` and `env` and SIGKILLs it, twice (see
/// [`support::Interrupted`]).
fn killed_twice(
    bootstrap: &str,
    args: &[&str],
    env: &[(&str, &str)],
    group: &str,
    input: &str,
    total: i64,
) {
    let run = support::Interrupted {
        binary: env!("CARGO_BIN_EXE_pipectl"),
        bootstrap,
        args,
        env,
        group,
        input,
    };
    run.times(2, "KILL", 20_000, total);
}

#[test]
fn tumbling_windows_equal_duckdb_and_dead_letters_hold_exactly_the_malformed_records() {
    let Some(bootstrap) = bootstrap() else { return };
    let input = unique("sensor.in");
    let output = unique("sensor.out");
    let dlq = unique("sensor.dlq");
    let group = unique("group");
    pipectl(
        &[
            "gen",
            "--bootstrap",
            &bootstrap,
            "--kind",
            "production/sensor_reading",
            "--count",
            "100000",
            "--seed",
            "42",
            "--topic",
            &input,
            "--partitions",
            "4",
            "--late",
            "0.01",
            "--malformed",
            "0.01",
        ],
        &[],
    );
    let run = pipectl(
        &[
            "run",
            "tests/pipelines/sensor-window.yaml",
            "--bootstrap",
            &bootstrap,
            "--until-idle",
            "5s",
            "--quiet",
        ],
        &[
            ("TEST_INPUT_TOPIC", &input),
            ("TEST_OUTPUT_TOPIC", &output),
            ("TEST_DEAD_LETTER_TOPIC", &dlq),
            ("TEST_GROUP", &group),
        ],
    );
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();

    let (messages, expected, invalid) = window_oracle(&bootstrap, &input);
    assert_eq!(messages.len(), 100_000);

    // Window rows: same rows, in window-end then key order.
    let got: Vec<Value> = read(&bootstrap, &output)
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("output is JSON"))
        .collect();
    assert_same_windows(&got, &expected);
    let late = expected[0]["late_total"].as_u64().expect("late total");
    assert!(
        late > 500,
        "the oracle should see the injected late events, saw {late}"
    );
    assert_eq!(
        late_from_summary(&stderr),
        late,
        "late events counted\n{stderr}"
    );

    // Dead letters: exactly the malformed records, original bytes, with their origin.
    assert!(
        invalid.len() > 500,
        "the oracle should see the malformed events"
    );
    let letters = read(&bootstrap, &dlq);
    let origins: BTreeSet<(i32, i64)> = letters
        .iter()
        .map(|m| {
            (
                header(m, "source-partition")
                    .parse()
                    .expect("partition header"),
                header(m, "source-offset").parse().expect("offset header"),
            )
        })
        .collect();
    assert_eq!(
        letters.len(),
        invalid.len(),
        "one dead letter per malformed record"
    );
    assert_eq!(
        origins, invalid,
        "dead letters are exactly the malformed records"
    );
    for m in &letters {
        let (p, o) = (
            header(m, "source-partition").parse::<i32>().expect("p"),
            header(m, "source-offset").parse::<i64>().expect("o"),
        );
        let original = messages
            .iter()
            .find(|x| x.partition == p && x.offset == o)
            .expect("original message");
        assert_eq!(
            m.payload, original.payload,
            "dead letter keeps the original bytes"
        );
        assert_eq!(header(m, "source-topic"), input);
        assert!(!header(m, "error").is_empty());
        assert_eq!(header(m, "pipeline"), "sensor-window-test");
    }
}

/// A pipeline keyed by its partitions' key runs as a task per partition (8 here) on 1, 2
/// and 4 worker threads; every run gives DuckDB's windows and dead-letters exactly the
/// malformed records.
#[test]
fn a_window_keyed_otherwise_than_its_input_is_repartitioned_on_1_2_and_4_workers_as_duckdb() {
    let Some(bootstrap) = bootstrap() else { return };
    let input = unique("repartition.in");
    // Orders keyed by order id; demand is per SKU and region: every window reads its rows
    // through the repartition topic. 1% of the orders are 10 minutes late, and with 3 s of
    // allowed disorder some orders up to 4 s out of order near a minute's end are late too:
    // they are late only if lateness is still decided in the order of the input partitions
    // (a reader that judged them by the interleaved repartition order finds other counts).
    pipectl(
        &[
            "gen",
            "--bootstrap",
            &bootstrap,
            "--kind",
            "sales/order",
            "--count",
            "100000",
            "--seed",
            "11",
            "--topic",
            &input,
            "--partitions",
            "8",
            "--late",
            "0.01",
            "--key",
            "order_id",
        ],
        &[],
    );
    let expected = demand_oracle(&bootstrap, &input);
    let late = expected[0]["late_total"].as_u64().expect("late total");
    assert!(late > 500, "the oracle finds {late} late orders");
    for workers in ["1", "2", "4"] {
        let output = unique("repartition.out");
        let group = unique("group");
        let run = pipectl(
            &[
                "run",
                "tests/pipelines/demand-repartition.yaml",
                "--bootstrap",
                &bootstrap,
                "--until-idle",
                "5s",
                "--workers",
                workers,
                "--quiet",
            ],
            &[
                ("TEST_INPUT_TOPIC", &input),
                ("TEST_OUTPUT_TOPIC", &output),
                ("TEST_GROUP", &group),
            ],
        );
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(
            stderr.contains("running as 8 tasks, one per input partition"),
            "{stderr}"
        );
        // The rows went through the repartition topic, each to the partition of its key.
        let exchanged = read(&bootstrap, &format!("{group}.demand.repartition"));
        let rows: Vec<&StoredMessage> =
            exchanged.iter().filter(|m| !m.payload.is_empty()).collect();
        assert_eq!(rows.len(), 100_000, "rows through the repartition topic");
        let mut owner: std::collections::BTreeMap<Vec<u8>, i32> = Default::default();
        for m in &rows {
            let key = m.key.clone().expect("a repartitioned row has a key");
            let p = *owner.entry(key).or_insert(m.partition);
            assert_eq!(p, m.partition, "one key, one partition");
        }
        let got: Vec<Value> = read(&bootstrap, &output)
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).expect("output is JSON"))
            .collect();
        assert_eq!(got.len(), expected.len(), "each window row written once");
        assert_same_demand(&got, &expected);
        assert_eq!(
            late_from_summary(&stderr),
            late,
            "late orders counted on {workers} workers\n{stderr}"
        );
        println!(
            "{workers} workers: {} window rows of {} keys through 8 repartition partitions, {late} late, as DuckDB",
            got.len(),
            owner.len()
        );
    }
}

#[test]
fn partition_tasks_on_1_2_and_4_workers_give_duckdbs_windows() {
    let Some(bootstrap) = bootstrap() else { return };
    let input = unique("tasks.in");
    pipectl(
        &[
            "gen",
            "--bootstrap",
            &bootstrap,
            "--kind",
            "production/sensor_reading",
            "--count",
            "100000",
            "--seed",
            "7",
            "--topic",
            &input,
            "--partitions",
            "8",
            "--late",
            "0.01",
            "--malformed",
            "0.01",
        ],
        &[],
    );
    let (_, expected, invalid) = window_oracle(&bootstrap, &input);
    for workers in ["1", "2", "4"] {
        let output = unique("tasks.out");
        let dlq = unique("tasks.dlq");
        let group = unique("group");
        let run = pipectl(
            &[
                "run",
                "tests/pipelines/sensor-window.yaml",
                "--bootstrap",
                &bootstrap,
                "--until-idle",
                "5s",
                "--workers",
                workers,
                "--quiet",
            ],
            &[
                ("TEST_INPUT_TOPIC", &input),
                ("TEST_OUTPUT_TOPIC", &output),
                ("TEST_DEAD_LETTER_TOPIC", &dlq),
                ("TEST_GROUP", &group),
            ],
        );
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(
            stderr.contains("running as 8 tasks, one per input partition"),
            "{stderr}"
        );
        let got: Vec<Value> = read(&bootstrap, &output)
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).expect("output is JSON"))
            .collect();
        assert_same_windows(&got, &expected);
        assert_eq!(
            late_from_summary(&stderr),
            expected[0]["late_total"].as_u64().expect("late total"),
            "late events counted on {workers} workers\n{stderr}"
        );
        let letters: BTreeSet<(i32, i64)> = read(&bootstrap, &dlq)
            .iter()
            .map(|m| {
                (
                    header(m, "source-partition").parse().expect("partition"),
                    header(m, "source-offset").parse().expect("offset"),
                )
            })
            .collect();
        assert_eq!(letters, invalid, "dead letters on {workers} workers");
        println!(
            "{workers} workers: {} window rows, {} dead letters, as DuckDB",
            got.len(),
            letters.len()
        );
    }
}

#[test]
fn json_avro_and_confluent_avro_inputs_give_identical_results() {
    let Some(bootstrap) = bootstrap() else { return };
    let mut results: Vec<(String, Vec<Value>, usize)> = Vec::new();
    for format in ["json", "avro", "avro_confluent"] {
        let input = unique(&format!("formats.{format}.in"));
        let output = unique(&format!("formats.{format}.out"));
        let dlq = unique(&format!("formats.{format}.dlq"));
        let group = unique("group");
        pipectl(
            &[
                "gen",
                "--bootstrap",
                &bootstrap,
                "--kind",
                "production/sensor_reading",
                "--count",
                "20000",
                "--seed",
                "7",
                "--topic",
                &input,
                "--partitions",
                "3",
                "--late",
                "0.01",
                "--malformed",
                "0.01",
                "--format",
                format,
            ],
            &[],
        );
        pipectl(
            &[
                "run",
                "tests/pipelines/sensor-window.yaml",
                "--bootstrap",
                &bootstrap,
                "--until-idle",
                "4s",
                "--quiet",
            ],
            &[
                ("TEST_INPUT_TOPIC", &input),
                ("TEST_OUTPUT_TOPIC", &output),
                ("TEST_DEAD_LETTER_TOPIC", &dlq),
                ("TEST_GROUP", &group),
                ("TEST_FORMAT", format),
            ],
        );
        // In window-end then key order: tasks write in parallel.
        let mut rows: Vec<Value> = read(&bootstrap, &output)
            .into_iter()
            .map(|m| serde_json::from_slice(&m.payload).expect("json"))
            .collect();
        rows.sort_by_key(|v| {
            (
                epoch_ms(&v["window_end"]),
                v["line_id"].as_str().unwrap_or_default().to_string(),
            )
        });
        let letters = read(&bootstrap, &dlq).len();
        results.push((format.to_string(), rows, letters));
    }
    let (_, json_rows, json_letters) = &results[0];
    assert!(json_rows.len() > 200, "{} window rows", json_rows.len());
    assert!(*json_letters > 100, "{json_letters} dead letters");
    for (format, rows, letters) in &results[1..] {
        assert_eq!(rows.len(), json_rows.len(), "{format}: window rows");
        for (a, b) in rows.iter().zip(json_rows) {
            assert!(
                same_json(a, b),
                "{format}: results differ from JSON input:\n {a}\n {b}"
            );
        }
        assert_eq!(letters, json_letters, "{format}: dead letters");
    }
}

#[test]
fn regression_on_the_broker_recovers_the_generators_coefficients() {
    let Some(bootstrap) = bootstrap() else { return };
    let input = unique("model.in");
    let output = unique("model.out");
    let snapshots = unique("model.snapshots");
    let group = unique("group");
    let n = 60_000;
    pipectl(
        &[
            "gen",
            "--bootstrap",
            &bootstrap,
            "--kind",
            "production/sensor_reading",
            "--count",
            &n.to_string(),
            "--seed",
            "11",
            "--topic",
            &input,
            "--partitions",
            "2",
        ],
        &[],
    );
    pipectl(
        &[
            "run",
            "tests/pipelines/failure-model.yaml",
            "--bootstrap",
            &bootstrap,
            "--until-idle",
            "4s",
            "--quiet",
        ],
        &[
            ("TEST_INPUT_TOPIC", &input),
            ("TEST_OUTPUT_TOPIC", &output),
            ("TEST_SNAPSHOT_TOPIC", &snapshots),
            ("TEST_GROUP", &group),
        ],
    );
    // One prediction per reading.
    let predictions = read(&bootstrap, &output);
    assert_eq!(predictions.len(), n);
    // The last snapshot is the model after every reading.
    let last: Value = serde_json::from_slice(
        &read(&bootstrap, &snapshots)
            .last()
            .expect("a snapshot")
            .payload,
    )
    .expect("json");
    let samples = last["samples"].as_u64().expect("samples");
    assert!(
        samples > 55_000 && samples < 58_000,
        "{samples} readings with a failure rate"
    );
    // The generator: failure_rate = -2.85 + 0.08 t + 0.03 h - 0.01 p + 0.02 s + 0.5 v + N(0, 0.25²).
    // Standard error of each coefficient ≈ σ / (sd(x) √n) (features nearly independent); the
    // feature spreads follow from the generator: temperature N(66 + line, 8) over 8 lines,
    // humidity U(30, 60), pressure N(300, 20), speed U(80, 160) + line, vibration N(3, 0.8).
    let sd = [
        (64.0f64 + 5.25f64).sqrt(),
        30.0 / 12f64.sqrt(),
        20.0,
        (80.0f64.powi(2) / 12.0 + 5.25).sqrt(),
        0.8,
    ];
    let truth = [
        ("temperature", 0.08),
        ("humidity", 0.03),
        ("pressure", -0.01),
        ("speed", 0.02),
        ("vibration", 0.5),
    ];
    let coefficients = &last["coefficients"];
    for ((name, want), spread) in truth.iter().zip(sd) {
        let got = coefficients[name]
            .as_f64()
            .unwrap_or_else(|| panic!("coefficient {name} in {last}"));
        let bound = 6.0 * 0.25 / (spread * (samples as f64).sqrt());
        assert!(
            (got - want).abs() < bound,
            "{name}: {got} vs {want} (bound {bound})"
        );
    }
    let intercept = last["intercept"].as_f64().expect("intercept");
    assert!((intercept + 2.85).abs() < 0.15, "intercept {intercept}");
    // Prequential R² (each reading predicted before it is learnt): signal variance ≈ 0.92,
    // noise 0.0625, so R² ≈ 0.94.
    let r2 = last["r2"].as_f64().expect("r2");
    assert!(r2 >= 0.92, "prequential R² {r2}");
    let rmse = last["rmse"].as_f64().expect("rmse");
    assert!(
        (rmse - 0.25).abs() < 0.02,
        "prequential RMSE {rmse} vs noise 0.25"
    );
}

/// Adjusted Rand index of two labellings (Hubert and Arabie).
fn adjusted_rand_index(a: &[usize], b: &[usize]) -> f64 {
    let ka = a.iter().max().map_or(0, |m| m + 1);
    let kb = b.iter().max().map_or(0, |m| m + 1);
    let mut table = vec![vec![0f64; kb]; ka];
    for (x, y) in a.iter().zip(b) {
        table[*x][*y] += 1.0;
    }
    let c2 = |n: f64| n * (n - 1.0) / 2.0;
    let index: f64 = table.iter().flatten().map(|n| c2(*n)).sum();
    let rows: f64 = table.iter().map(|r| c2(r.iter().sum())).sum();
    let cols: f64 = (0..kb).map(|j| c2(table.iter().map(|r| r[j]).sum())).sum();
    let expected = rows * cols / c2(a.len() as f64);
    (index - expected) / ((rows + cols) / 2.0 - expected)
}

/// Writes `count` customer activity events of `seed` to `input` (`partitions` partitions).
fn gen_activity(bootstrap: &str, input: &str, count: u32, partitions: u32, seed: u64) {
    pipectl(
        &[
            "gen",
            "--bootstrap",
            bootstrap,
            "--kind",
            "customer/activity",
            "--count",
            &count.to_string(),
            "--seed",
            &seed.to_string(),
            "--topic",
            input,
            "--partitions",
            &partitions.to_string(),
        ],
        &[],
    );
}

/// The cluster of every assigned row of `assignments` (rows seen before the model was
/// seeded have none), and the generator's segment (of `seed`) of its customer.
fn segments(assignments: &[StoredMessage], seed: u64) -> (Vec<usize>, Vec<usize>) {
    let truth = generator::Generator::new(generator::Settings::new("customer/activity", seed))
        .expect("kind");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for m in assignments {
        let v: Value = serde_json::from_slice(&m.payload).expect("json");
        let Some(cluster) = v["cluster_id"].as_u64() else {
            continue;
        };
        let customer = v["customer_id"].as_str().expect("customer");
        ours.push(cluster as usize);
        theirs.push(truth.segment_of(customer).expect("a generated customer"));
    }
    (ours, theirs)
}

#[test]
fn clustering_on_the_broker_finds_the_generators_customer_segments() {
    let Some(bootstrap) = bootstrap() else { return };
    let input = unique("segments.in");
    let output = unique("segments.out");
    let group = unique("group");
    let seed = 21;
    gen_activity(&bootstrap, &input, 400000, 2, seed);
    pipectl(
        &[
            "run",
            "tests/pipelines/segments.yaml",
            "--bootstrap",
            &bootstrap,
            "--until-idle",
            "4s",
            "--quiet",
        ],
        &[
            ("TEST_INPUT_TOPIC", &input),
            ("TEST_OUTPUT_TOPIC", &output),
            ("TEST_GROUP", &group),
        ],
    );
    let assignments = read(&bootstrap, &output);
    let (ours, theirs) = segments(&assignments, seed);
    assert!(
        ours.len() > 5000,
        "{} assigned customer-hours of {}",
        ours.len(),
        assignments.len()
    );
    // Two-hour profiles hold about 36 events each, so their activity shares are noisy and the
    // browser and bargain-hunter segments overlap a little; the pipeline and generator are
    // deterministic and this measured 0.91.
    let ari = adjusted_rand_index(&ours, &theirs);
    eprintln!("ARI {ari} over {} customer-hours", ours.len());
    assert!(
        ari >= 0.9,
        "ARI {ari} between clusters and the generator's segments"
    );
}

/// A global clustering learnt by 4 tasks with state in Kafka, each from its own customers,
/// merged: the clusters line up across tasks (one numbering: the assignments of every task
/// together still find the generator's segments), and the merged model learnt every row
/// once. Its final snapshot's weights add up to the rows the model was given, and its
/// centres weighted by their clusters' weights add up to the sums of the features over
/// those rows (summed here from the predictions, which carry the features): k-means
/// statistics merged exactly.
#[test]
fn a_global_clustering_learnt_by_four_tasks_merges_into_one_model_of_every_row() {
    let Some(bootstrap) = bootstrap() else { return };
    let input = unique("shared-segments.in");
    let output = unique("shared-segments.out");
    let snapshots = unique("shared-segments.snapshots");
    let group = unique("group");
    let seed = 21;
    gen_activity(&bootstrap, &input, 200000, 4, seed);
    let mut args = kafka_state_run("tests/pipelines/segments-shared.yaml", &bootstrap, true);
    args.extend(["--workers", "4"]);
    let run = pipectl(
        &args,
        &[
            ("TEST_INPUT_TOPIC", &input),
            ("TEST_OUTPUT_TOPIC", &output),
            ("TEST_SNAPSHOT_TOPIC", &snapshots),
            ("TEST_GROUP", &group),
        ],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("running as 4 tasks"),
        "the model runs in every task:\n{stderr}"
    );
    let features = [
        "page_view_share",
        "search_share",
        "purchase_share",
        "support_share",
        "avg_duration_s",
    ];
    let mut sums = [0.0f64; 5];
    let rows = read(&bootstrap, &output);
    for m in &rows {
        let v: Value = serde_json::from_slice(&m.payload).expect("json");
        for (s, f) in sums.iter_mut().zip(features) {
            *s += v[f].as_f64().expect("a feature");
        }
    }
    let (ours, theirs) = segments(&rows, seed);
    let ari = adjusted_rand_index(&ours, &theirs);
    println!(
        "ARI {ari} over {} assigned customer-hours of {} (4 tasks)",
        ours.len(),
        rows.len()
    );
    assert!(ours.len() > 2000, "{} assigned", ours.len());
    assert!(
        ari >= 0.85,
        "ARI {ari} between clusters and the generator's segments"
    );
    // Each task writes the merge it ends with: the one with the most samples has every
    // task's last share.
    let last = read(&bootstrap, &snapshots)
        .iter()
        .map(|m| serde_json::from_slice::<Value>(&m.payload).expect("json"))
        .max_by_key(|v| v["samples"].as_u64().unwrap_or(0))
        .expect("a snapshot");
    assert_eq!(
        last["samples"].as_u64(),
        Some(rows.len() as u64),
        "every row learnt once"
    );
    let centroids = last["centroids"].as_array().expect("centroids");
    let weight: f64 = centroids
        .iter()
        .map(|c| c["weight"].as_f64().expect("weight"))
        .sum();
    assert!(
        (weight - rows.len() as f64).abs() < 1e-6,
        "cluster weights {weight} for {} rows",
        rows.len()
    );
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-300);
    for (j, f) in features.iter().enumerate() {
        let merged: f64 = centroids
            .iter()
            .map(|c| c["weight"].as_f64().expect("weight") * centre(&c["center"], f))
            .sum();
        assert!(
            rel(merged, sums[j]) < 1e-9,
            "{f}: Σ weight·centre {merged} vs Σ over the rows {}",
            sums[j]
        );
    }
    println!(
        "the merged model holds {} rows once each: weights and weighted centres equal the rows' counts and sums",
        rows.len()
    );
}

/// Feature `name` of a snapshot's centre (a JSON map, written as an object or as entries).
fn centre(center: &Value, name: &str) -> f64 {
    if let Some(v) = center.get(name) {
        return v.as_f64().expect("a number");
    }
    center
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e["key"] == name))
        .and_then(|e| e["value"].as_f64())
        .unwrap_or_else(|| panic!("{name} in {center}"))
}

#[test]
fn a_run_stopped_and_resumed_from_checkpoints_equals_one_uninterrupted_run() {
    let Some(bootstrap) = bootstrap() else { return };
    let input = unique("resume.in");
    let output = unique("resume.out");
    let predictions = unique("resume.predictions");
    let snapshots = unique("resume.snapshots");
    let group = unique("group");
    let checkpoints = std::env::temp_dir().join(unique("checkpoints"));
    pipectl(
        &[
            "gen",
            "--bootstrap",
            &bootstrap,
            "--kind",
            "production/sensor_reading",
            "--count",
            "100000",
            "--seed",
            "43",
            "--topic",
            &input,
            "--partitions",
            "4",
            "--late",
            "0.01",
            "--malformed",
            "0.01",
        ],
        &[],
    );
    let env = [
        ("TEST_INPUT_TOPIC", input.as_str()),
        ("TEST_OUTPUT_TOPIC", output.as_str()),
        ("TEST_PREDICTION_TOPIC", predictions.as_str()),
        ("TEST_SNAPSHOT_TOPIC", snapshots.as_str()),
        ("TEST_GROUP", group.as_str()),
    ];
    let dir = checkpoints.to_str().expect("utf-8");
    let common = [
        "run",
        "tests/pipelines/checkpointed.yaml",
        "--bootstrap",
        &bootstrap,
        "--checkpoint-dir",
        dir,
        "--quiet",
        "--max-batch",
        "3000",
    ];
    // Two parts that stop in the middle of the input (open windows, a learning model), then
    // one to the end.
    let mut late = 0;
    for stop in [
        ["--max-events", "30000"],
        ["--max-events", "30000"],
        ["--until-idle", "5s"],
    ] {
        let run = pipectl(&[&common[..], &stop[..]].concat(), &env);
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(
            !stderr.contains("warning"),
            "every operator resumes its state:\n{stderr}"
        );
        late += late_from_summary(&stderr);
        // The window is repartitioned by line_id: one task per input partition, each with
        // its own checkpoint.
        assert!(
            (0..4).all(|i| checkpoints.join(format!("task-{i}.cbor")).exists()),
            "a checkpoint of each task after each part"
        );
    }
    std::fs::remove_dir_all(&checkpoints).ok();

    // Windows: exactly the oracle's rows, none twice, none missing.
    let (_, expected, _) = window_oracle(&bootstrap, &input);
    let got: Vec<Value> = read(&bootstrap, &output)
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("output is JSON"))
        .collect();
    assert_same_windows(&got, &expected);
    assert_eq!(
        late,
        expected[0]["late_total"].as_u64().expect("late total"),
        "late events over the three parts"
    );

    // The model saw every window row once, across the parts: one prediction per window row,
    // and its final state counts every row with a target (state lost at a restart would
    // count only the last part's).
    assert_eq!(read(&bootstrap, &predictions).len(), got.len());
    let learnt = got
        .iter()
        .filter(|w| w["avg_failure_rate"].as_f64().is_some())
        .count() as u64;
    let last: Vec<Value> = read(&bootstrap, &snapshots)
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("json"))
        .collect();
    let lines: BTreeSet<&str> = got
        .iter()
        .map(|w| w["line_id"].as_str().expect("line"))
        .collect();
    assert_eq!(last.len(), lines.len(), "one final snapshot per line");
    let samples: u64 = last
        .iter()
        .map(|s| s["samples"].as_u64().expect("samples"))
        .sum();
    assert_eq!(samples, learnt, "rows learnt over the three parts");
}

#[test]
fn a_checkpointed_run_from_latest_resumes_where_it_started_even_on_partitions_it_never_read() {
    let Some(bootstrap) = bootstrap() else { return };
    let input = unique("latest.in");
    let output = unique("latest.out");
    let group = unique("group");
    let checkpoints = std::env::temp_dir().join(unique("checkpoints"));
    let generate = |count: &str, seed: &str| {
        pipectl(
            &[
                "gen",
                "--bootstrap",
                &bootstrap,
                "--kind",
                "production/sensor_reading",
                "--count",
                count,
                "--seed",
                seed,
                "--topic",
                &input,
                "--partitions",
                "4",
            ],
            &[],
        )
    };
    let env = [
        ("TEST_INPUT_TOPIC", input.as_str()),
        ("TEST_OUTPUT_TOPIC", output.as_str()),
        ("TEST_GROUP", group.as_str()),
    ];
    let run = || {
        pipectl(
            &[
                "run",
                "tests/pipelines/from-latest.yaml",
                "--bootstrap",
                &bootstrap,
                "--checkpoint-dir",
                checkpoints.to_str().expect("utf-8"),
                "--until-idle",
                "2s",
                "--quiet",
            ],
            &env,
        )
    };
    // Old events; a first run starts at the end, reads nothing and checkpoints where it
    // stands on every partition.
    generate("5000", "1");
    run();
    match read_all(&bootstrap, &output, Duration::from_secs(10)) {
        // Nothing was written, so the sink never created its topic.
        Err(e) if e.to_string().contains("does not exist") => {}
        other => assert_eq!(
            other.expect("readable").len(),
            0,
            "the first run reads nothing"
        ),
    }
    // New events; the second run reads exactly those.
    generate("3000", "2");
    run();
    assert_eq!(read(&bootstrap, &output).len(), 3000);
    std::fs::remove_dir_all(&checkpoints).ok();
}

#[test]
fn tombstones_delete_rows_of_a_changelog_table() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let Some(bootstrap) = bootstrap() else { return };
    let dir = std::env::temp_dir().join(unique("tombstones"));
    std::fs::create_dir_all(dir.join("schemas/shop")).expect("dir");
    std::fs::write(
        dir.join("schemas/shop/product.avsc"),
        r#"{"type":"record","name":"Product","fields":[
  {"name":"sku","type":"string"},{"name":"name","type":"string"},{"name":"price","type":"double"}]}"#,
    )
    .expect("schema");
    std::fs::write(
        dir.join("schemas/shop/order.avsc"),
        r#"{"type":"record","name":"Order","fields":[
  {"name":"order_id","type":"string"},{"name":"sku","type":"string"}]}"#,
    )
    .expect("schema");
    let (products, orders, output) = (unique("products"), unique("orders"), unique("enriched"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for t in [&products, &orders] {
        rt.block_on(connectors::create_topic(&bootstrap, t, 1))
            .expect("topic");
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    let send = |topic: &str, key: &str, value: Option<&str>| {
        let mut record = BaseRecord::<str, str>::to(topic).key(key).partition(0);
        if let Some(v) = value {
            record = record.payload(v);
        }
        producer.send(record).map_err(|(e, _)| e).expect("send");
        producer.flush(Duration::from_secs(10)).expect("flush");
    };
    // B is deleted by a tombstone; C is updated after it.
    send(
        &products,
        "A",
        Some(r#"{"sku":"A","name":"anvil","price":10.0}"#),
    );
    send(
        &products,
        "B",
        Some(r#"{"sku":"B","name":"bolt","price":0.5}"#),
    );
    send(
        &products,
        "C",
        Some(r#"{"sku":"C","name":"clamp","price":3.0}"#),
    );
    send(&products, "B", None);
    send(
        &products,
        "C",
        Some(r#"{"sku":"C","name":"clamp v2","price":4.0}"#),
    );
    let pipeline = dir.join("enrich.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"apiVersion: pipelines/v1
kind: Pipeline
metadata: {{ name: tombstone-test }}
spec:
  sources:
    - {{ name: products, kafka: {{ topic: "{products}", start_from: earliest }}, format: json, schema: shop/product, table: {{ key: sku }} }}
    - {{ name: orders, kafka: {{ topic: "{orders}", start_from: earliest }}, format: json, schema: shop/order }}
  transforms:
    - name: enriched
      sql: SELECT o.order_id, p.name FROM orders o JOIN products p ON o.sku = p.sku
  sinks:
    - {{ name: out, from: enriched, kafka: {{ topic: "{output}" }}, format: json }}
"#
        ),
    )
    .expect("pipeline");
    let run = || {
        pipectl(
            &[
                "run",
                pipeline.to_str().expect("utf-8"),
                "--bootstrap",
                &bootstrap,
                "--schemas",
                dir.join("schemas").to_str().expect("utf-8"),
                "--checkpoint-dir",
                dir.join("checkpoints").to_str().expect("utf-8"),
                "--until-idle",
                "2s",
                "--quiet",
            ],
            &[],
        )
    };
    // The table first (its state is checkpointed), then the orders against it.
    let first = run();
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("0 errors"),
        "a tombstone is not a bad record: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    send(&orders, "o1", Some(r#"{"order_id":"o1","sku":"A"}"#));
    send(&orders, "o2", Some(r#"{"order_id":"o2","sku":"B"}"#));
    send(&orders, "o3", Some(r#"{"order_id":"o3","sku":"C"}"#));
    run();
    let mut got: Vec<String> = read(&bootstrap, &output)
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_slice(&m.payload).expect("JSON");
            format!(
                "{} {}",
                v["order_id"].as_str().expect("id"),
                v["name"].as_str().expect("name")
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, vec!["o1 anvil", "o3 clamp v2"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// State in Kafka survives SIGKILL: 200,000 readings on 8 partitions through per-line
/// windows and a per-line regression (8 tasks), the engine killed twice mid-run and
/// restarted each time with nothing on disk. Every window row DuckDB finds is written
/// (duplicates, from replays after a kill, are counted: outputs are at least once), and
/// each line's final model equals scikit-learn's least squares over all its readings:
/// each reading was learnt exactly once.
#[test]
fn an_interval_join_keyed_otherwise_is_repartitioned_on_both_sides_as_duckdb() {
    let Some(bootstrap) = bootstrap() else { return };
    let (a, b) = (unique("join.a"), unique("join.b"));
    // Two topics of 8 partitions keyed by event time (spread evenly: every writer has rows),
    // joined on the machine: both sides go through repartitions by machine_id. Readings
    // 1 s apart, none late.
    for (topic, seed) in [(&a, "21"), (&b, "22")] {
        pipectl(
            &[
                "gen",
                "--bootstrap",
                &bootstrap,
                "--kind",
                "production/sensor_reading",
                "--count",
                "20000",
                "--seed",
                seed,
                "--topic",
                topic,
                "--partitions",
                "8",
                "--interval-ms",
                "1000",
                "--key",
                "ts",
            ],
            &[],
        );
    }
    let expected = join_oracle(&bootstrap, &a, &b);
    assert!(
        expected.len() > 10_000,
        "the oracle finds {} pairs",
        expected.len()
    );
    for workers in ["1", "4"] {
        let output = unique("join.out");
        let group = unique("group");
        let run = pipectl(
            &[
                "run",
                "tests/pipelines/join-repartition.yaml",
                "--bootstrap",
                &bootstrap,
                "--until-idle",
                "5s",
                // Small batches: the writers of a repartition partition run far apart in
                // event time, which a side's buffer must outlast.
                "--max-batch",
                "200",
                "--workers",
                workers,
                "--quiet",
            ],
            &[
                ("TEST_A_TOPIC", &a),
                ("TEST_B_TOPIC", &b),
                ("TEST_OUTPUT_TOPIC", &output),
                ("TEST_GROUP", &group),
            ],
        );
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(
            stderr.contains("running as 8 tasks, one per input partition"),
            "{stderr}"
        );
        let mut got: Vec<_> = read(&bootstrap, &output)
            .iter()
            .map(|m| join_pair(&serde_json::from_slice(&m.payload).expect("output is JSON")))
            .collect();
        got.sort();
        assert_eq!(got.len(), expected.len(), "pairs on {workers} workers");
        assert!(
            got == expected,
            "the pairs differ from DuckDB's on {workers} workers"
        );
        println!(
            "{workers} workers: {} pairs through two 8-partition repartitions, as DuckDB",
            got.len()
        );
    }
}

#[test]
fn a_repartitioned_window_with_state_in_kafka_counts_each_order_once_through_sigkills() {
    let Some(bootstrap) = bootstrap() else { return };
    let input = unique("restate.in");
    let output = unique("restate.out");
    let group = unique("group");
    pipectl(
        &[
            "gen",
            "--bootstrap",
            &bootstrap,
            "--kind",
            "sales/order",
            "--count",
            "100000",
            "--seed",
            "13",
            "--topic",
            &input,
            "--partitions",
            "8",
            "--late",
            "0.01",
            "--key",
            "order_id",
        ],
        &[],
    );
    let env = [
        ("TEST_INPUT_TOPIC", input.as_str()),
        ("TEST_OUTPUT_TOPIC", output.as_str()),
        ("TEST_GROUP", group.as_str()),
    ];
    let args = |until_idle| {
        kafka_state_run(
            "tests/pipelines/demand-repartition.yaml",
            &bootstrap,
            until_idle,
        )
    };
    // Killed twice, each time once it has committed state at least once and read part of
    // the input; what was written since the last commit is done again on restart.
    killed_twice(&bootstrap, &args(false), &env, &group, &input, 100_000);
    let run = pipectl(&args(true), &env);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{stderr}");
    let rows = read(&bootstrap, &format!("{group}.demand.repartition"))
        .iter()
        .filter(|m| !m.payload.is_empty())
        .count();
    assert!(
        rows > 100_000,
        "the kills made writers send rows again ({rows} rows for 100000 orders)"
    );
    let written: Vec<Value> = read(&bootstrap, &output)
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("output is JSON"))
        .collect();
    let got = distinct_demand(&written);
    let expected = demand_oracle(&bootstrap, &input);
    assert_same_demand(&got, &expected);
    let said = stderr
        .lines()
        .find(|l| l.starts_with("repartitions: "))
        .unwrap_or_else(|| panic!("the run says what went through its repartitions:\n{stderr}"));
    println!(
        "2 kills: {rows} rows through the repartition for 100000 orders, {} window rows written for {} distinct, as DuckDB; the last run: {said}",
        written.len(),
        got.len()
    );
}

/// The scale-out pipeline (per-line windows, a per-line and a global regression) over
/// 200,000 readings on 8 partitions with state in Kafka and its sinks' `delivery`, SIGKILLed
/// twice (each time once it has committed state at least once and read part of the input),
/// then run to the end: the windows equal DuckDB's and the models scikit-learn's. Returns
/// the window rows written twice.
fn scale_out_through_two_kills(delivery: &str, seed: u64, what: &str) -> Option<usize> {
    let bootstrap = bootstrap()?;
    let input = unique("state.in");
    let output = unique("state.out");
    let snapshots = unique("state.snapshots");
    let group = unique("group");
    pipectl(
        &[
            "gen",
            "--bootstrap",
            &bootstrap,
            "--kind",
            "production/sensor_reading",
            "--count",
            "200000",
            "--seed",
            &seed.to_string(),
            "--topic",
            &input,
            "--partitions",
            "8",
            "--late",
            "0.01",
        ],
        &[],
    );
    let env = [
        ("TEST_INPUT_TOPIC", input.as_str()),
        ("TEST_OUTPUT_TOPIC", output.as_str()),
        ("TEST_SNAPSHOT_TOPIC", snapshots.as_str()),
        ("TEST_GROUP", group.as_str()),
        ("TEST_DELIVERY", delivery),
    ];
    let args =
        |until_idle| kafka_state_run("tests/pipelines/scale-out.yaml", &bootstrap, until_idle);
    // What was written since the last commit is done again on restart.
    killed_twice(&bootstrap, &args(false), &env, &group, &input, 200_000);
    let run = pipectl(&args(true), &env);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(
        stderr.contains("running as 8 tasks, one per input partition"),
        "{stderr}"
    );
    let (_, duplicated) = assert_scale_out_results(&bootstrap, &input, &output, &snapshots, what);
    Some(duplicated)
}

#[test]
fn state_in_kafka_survives_sigkill_and_every_event_is_learnt_once() {
    scale_out_through_two_kills("at_least_once", 12, "2 kills");
}

/// The same with `delivery: exactly_once` sinks: their records go in the transaction that
/// commits the state and the offsets, so a `read_committed` reader sees every window row
/// once through the kills (the at-least-once run above writes some twice).
#[test]
fn exactly_once_sinks_write_every_window_once_through_sigkills() {
    if let Some(duplicated) =
        scale_out_through_two_kills("exactly_once", 14, "exactly once, 2 kills")
    {
        assert_eq!(duplicated, 0, "window rows written twice");
    }
}

/// Several instances share a pipeline through its consumer group. 200,000 readings fed at
/// 5,000/s to 8 partitions, read by per-line windows and a per-line regression with state
/// in Kafka, on three instances; one is SIGKILLed twice and restarted, a fourth joins
/// midway and another leaves (SIGTERM). Every window row DuckDB finds is written (the
/// duplicates of replays are counted and printed), and each line's final model equals
/// scikit-learn's least squares over all its readings: each learnt exactly once, across
/// rebalances and crashes.
#[test]
fn instances_share_a_pipeline_through_kills_joins_and_leaves() {
    let Some(bootstrap) = bootstrap() else { return };
    let input = unique("instances.in");
    let output = unique("instances.out");
    let snapshots = unique("instances.snapshots");
    let group = unique("group");
    connectors_topic(&bootstrap, &input, 8);
    let logs = std::env::temp_dir().join(unique("instances"));
    std::fs::create_dir_all(&logs).expect("log dir");
    let env = [
        ("TEST_INPUT_TOPIC", input.as_str()),
        ("TEST_OUTPUT_TOPIC", output.as_str()),
        ("TEST_SNAPSHOT_TOPIC", snapshots.as_str()),
        ("TEST_GROUP", group.as_str()),
    ];
    let mut started = 0;
    let mut instance = || {
        started += 1;
        let log =
            std::fs::File::create(logs.join(format!("instance-{started}.log"))).expect("log file");
        Command::new(env!("CARGO_BIN_EXE_pipectl"))
            .args([
                "run",
                "tests/pipelines/scale-out.yaml",
                "--bootstrap",
                bootstrap.as_str(),
                "--kafka-state",
                "--checkpoint-interval",
                "500ms",
                "--until-idle",
                "10s",
                "--workers",
                "2",
                "--quiet",
            ])
            .envs(env.iter().copied())
            .current_dir(root())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("pipectl starts")
    };
    let mut feed = Command::new(env!("CARGO_BIN_EXE_pipectl"))
        .args([
            "gen",
            "--bootstrap",
            bootstrap.as_str(),
            "--kind",
            "production/sensor_reading",
            "--count",
            "200000",
            "--rate",
            "5000",
            "--seed",
            "13",
            "--topic",
            input.as_str(),
            "--late",
            "0.01",
        ])
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("gen starts");
    let sleep = |s: u64| std::thread::sleep(Duration::from_secs(s));
    let (a, mut b, c) = (instance(), instance(), instance());
    sleep(8);
    b.kill().expect("SIGKILL");
    b.wait().expect("reaped");
    println!("killed instance 2");
    sleep(4);
    b = instance();
    sleep(6);
    let d = instance();
    println!("instance 5 joined");
    sleep(4);
    b.kill().expect("SIGKILL");
    b.wait().expect("reaped");
    println!("killed instance 4");
    sleep(4);
    b = instance();
    sleep(4);
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    println!("instance 3 left (SIGTERM)");
    assert!(feed.wait().expect("gen ends").success(), "gen failed");
    let mut sharing = 0;
    for (name, mut child) in [("1", a), ("3", c), ("5", d), ("6", b)] {
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("instance {name} did not end");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let log =
            std::fs::read_to_string(logs.join(format!("instance-{name}.log"))).unwrap_or_default();
        assert!(status.success(), "instance {name} failed:\n{log}");
        let ran = log
            .lines()
            .find(|l| l.starts_with("tasks run here: "))
            .unwrap_or_else(|| panic!("instance {name} says what it ran:\n{log}"));
        println!("instance {name}: {ran}");
        if !ran.starts_with("tasks run here: none") {
            sharing += 1;
        }
    }
    assert!(
        sharing >= 3,
        "the group gave partitions to {sharing} of the 4 instances that ran to the end"
    );

    let (messages, _) =
        assert_scale_out_results(&bootstrap, &input, &output, &snapshots, "instances");
    assert_eq!(messages.len(), 200_000);
    std::fs::remove_dir_all(&logs).ok();
}

fn connectors_topic(bootstrap: &str, topic: &str, partitions: i32) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(connectors::create_topic(bootstrap, topic, partitions))
        .expect("topic");
}

/// A source's consumer lag, as the task's loop reads it once a second, comes from watermarks
/// a thread of its own fetched (the loop never waits for the broker), and agrees with a
/// lag asked of the broker directly.
#[test]
fn a_sources_cached_lag_agrees_with_the_brokers_watermarks() {
    let Some(bootstrap) = bootstrap() else { return };
    let topic = unique("lag");
    connectors_topic(&bootstrap, &topic, 2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use connectors::Sink as _;
        let sink = connectors::KafkaSink::new(&bootstrap, &topic, &Default::default(), Vec::new())
            .expect("sink");
        let values: Vec<Vec<u8>> = (0..10)
            .map(|i| format!("{{\"i\":{i}}}").into_bytes())
            .collect();
        let records: Vec<connectors::OutRecord<'_>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| connectors::OutRecord {
                key: None,
                value: v,
                timestamp: None,
                partition: Some((i % 2) as i32),
            })
            .collect();
        sink.send_all(&records, &[]).await.expect("produce");
        let source = connectors::KafkaSource::connect(
            &bootstrap,
            &connectors::SourceConfig {
                topic: topic.clone(),
                group: topic.clone(),
                start: connectors::Start::Earliest,
                properties: Default::default(),
                max_batch: 4,
                max_wait: Duration::from_secs(5),
                linger: Duration::from_secs(5),
                only: None,
                exchange: false,
            },
        )
        .expect("source");
        let mut raw = connectors::RawBatch::default();
        source.next_batch(&mut raw).await.expect("read");
        assert_eq!(raw.len(), 4);
        let next = raw.next_offsets();
        let asked = source.lag(&next);
        assert_eq!(asked.values().sum::<i64>(), 6, "{asked:?}");
        // The probe fetches at once and then every second.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let cached = source.cached_lag(&next);
            if cached == asked {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cached {cached:?}, asked {asked:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// The shipped inventory-anomaly example finds the generator's injected anomalies: 40,000
/// moves over 4 partitions (0.5% anomalies: a hundredfold quantity, a fiftyfold unit cost, a
/// booking at 3 a.m.), the example run as shipped but for its topic names, and its alerts
/// compared with the truth the generator wrote in each move's `x-truth` header (which the
/// pipeline does not read). Precision and recall must both reach 0.9. Measured on this
/// input: 1.00 and 0.97 (the misses are moves of each warehouse's seed sample, which are not
/// scored); the example as it was before (distance over cluster radius > 4, the hour as a
/// number): 0.99 and 0.31.
#[test]
fn the_inventory_anomaly_example_finds_the_injected_anomalies() {
    let Some(bootstrap) = bootstrap() else { return };
    let input = unique("moves.in");
    let output = unique("moves.alerts");
    pipectl(
        &[
            "gen",
            "--bootstrap",
            &bootstrap,
            "--kind",
            "supply_chain/inventory_move",
            "--count",
            "40000",
            "--seed",
            "1",
            "--topic",
            &input,
            "--partitions",
            "4",
            "--interval-ms",
            "2000",
        ],
        &[],
    );
    let example =
        std::fs::read_to_string(root().join("pipelines/inventory-anomaly.yaml")).expect("example");
    let yaml = example
        .replace(
            "topic: logistics.inventory_moves",
            &format!("topic: {input}"),
        )
        .replace(
            "topic: logistics.inventory_anomalies",
            &format!("topic: {output}"),
        )
        .replace(
            "name: inventory-anomaly",
            &format!("name: ia-{}", support::nanos()),
        );
    assert_ne!(
        yaml, example,
        "the example's topics are where the test expects them"
    );
    let file = std::env::temp_dir().join(format!("{}.yaml", unique("inventory-anomaly")));
    std::fs::write(&file, yaml).expect("write");
    let schemas = root().join("schemas").display().to_string();
    pipectl(
        &[
            "run",
            &file.display().to_string(),
            "--bootstrap",
            &bootstrap,
            "--schemas",
            &schemas,
            "--until-idle",
            "3s",
            "--quiet",
        ],
        &[],
    );
    let moves = read(&bootstrap, &input);
    assert_eq!(moves.len(), 40_000);
    let mut truth = std::collections::BTreeMap::new();
    for m in &moves {
        let v: Value = serde_json::from_slice(&m.payload).expect("json");
        let id = v["move_id"].as_str().expect("move id").to_string();
        truth.insert(id, header(m, "x-truth").to_string());
    }
    let anomalies: std::collections::BTreeSet<&String> = truth
        .iter()
        .filter(|(_, t)| t.as_str() != "normal")
        .map(|(id, _)| id)
        .collect();
    assert!(
        truth.values().all(|t| !t.is_empty()),
        "every move has a truth"
    );
    let flagged: std::collections::BTreeSet<String> = read(&bootstrap, &output)
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_slice(&m.payload).expect("json");
            v["move_id"].as_str().expect("move id").to_string()
        })
        .collect();
    let hits = flagged.iter().filter(|id| anomalies.contains(id)).count();
    let precision = hits as f64 / flagged.len().max(1) as f64;
    let recall = hits as f64 / anomalies.len().max(1) as f64;
    let mut missed = std::collections::BTreeMap::new();
    for id in anomalies.iter().filter(|id| !flagged.contains(id.as_str())) {
        *missed.entry(truth[id.as_str()].as_str()).or_insert(0) += 1;
    }
    eprintln!(
        "inventory-anomaly: {} anomalies, {} flagged, precision {precision:.3}, recall {recall:.3}, missed by kind {missed:?}",
        anomalies.len(),
        flagged.len()
    );
    assert!(anomalies.len() > 150, "{} anomalies", anomalies.len());
    assert!(precision >= 0.9, "precision {precision:.3}");
    assert!(recall >= 0.9, "recall {recall:.3}, missed {missed:?}");
}
