//! Engine tests without a broker, in the style of Arroyo's smoke tests: every folder of
//! tests/engine/ is a case, a whole pipeline run by the real runner on the in-memory broker
//! (`connectors::memory::Memory`), and every run of it must write exactly the golden output.
//!
//! A case holds:
//! - `pipeline.yaml`, the pipeline (its topics named as they are);
//! - `input.jsonl`, one message per line: `{"topic", "partition", "value"}` with the value
//!   as a JSON object, or as a string for raw bytes (a malformed record), and optional
//!   `"key"` and `"timestamp"` (ms);
//! - `expected/TOPIC.jsonl`, the records every run must leave in that topic, in any order:
//!   the JSON values of a sink, or for a dead-letter topic `{"payload", "source-partition",
//!   "source-offset"}` (the payload as JSON when it is JSON, else as a string); timestamps as epoch milliseconds, floats equal to 1e-12 relative;
//! - `case.json` (optional): `{"any_partitions": true}` when the result does not depend on
//!   how the input is spread over partitions, `{"restarts": false}` to skip the
//!   stop-and-restore runs, `{"error": TEXT}` when every run must fail with TEXT,
//!   `{"batches": [N, ...]}` to run only with these micro-batch sizes (for a result that
//!   depends on arrival timing by definition, such as a lookup join; the case says why),
//!   `{"tasks": N}` when the runner must divide the pipeline into N partition tasks;
//! - `GOLDEN.md`: how the expected output was derived (by hand or by the script beside it),
//!   never from the engine's own output.
//!
//! Runs of each case: one pass; micro-batches of 1, 7 and 10,000 messages; stopped at three
//! points and restored each time, from checkpoint files and from state in the broker's
//! changelogs; and, where the case allows, its input spread over 1 and 4 partitions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use connectors::memory::Memory;
use runtime::{RunConfig, Runner, Stats};
use serde_json::Value;

mod support;
use support::root;

#[derive(Debug, Clone)]
struct Message {
    topic: String,
    partition: i32,
    key: Option<String>,
    /// `None`: a tombstone (a key without a value).
    value: Option<Vec<u8>>,
    timestamp: i64,
}

#[derive(Debug)]
struct Case {
    name: String,
    yaml: String,
    input: Vec<Message>,
    expected: BTreeMap<String, Vec<Value>>,
    any_partitions: bool,
    restarts: bool,
    error: Option<String>,
    batches: Option<Vec<usize>>,
    /// Tasks the runner must divide the pipeline into.
    tasks: Option<usize>,
}

fn load(dir: &Path) -> Case {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let yaml = std::fs::read_to_string(dir.join("pipeline.yaml")).expect("pipeline.yaml");
    let input = std::fs::read_to_string(dir.join("input.jsonl"))
        .expect("input.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}: {l}"));
            Message {
                topic: v["topic"].as_str().expect("topic").to_string(),
                partition: v["partition"].as_i64().unwrap_or(0) as i32,
                key: v["key"].as_str().map(str::to_string),
                value: match &v["value"] {
                    Value::Null => None,
                    Value::String(s) => Some(s.as_bytes().to_vec()),
                    other => Some(other.to_string().into_bytes()),
                },
                timestamp: v["timestamp"].as_i64().unwrap_or(0),
            }
        })
        .collect();
    let mut expected = BTreeMap::new();
    // A case that must fail expects nothing: git keeps no empty `expected/`.
    let files = std::fs::read_dir(dir.join("expected"))
        .into_iter()
        .flatten();
    for entry in files {
        let path = entry.expect("entry").path();
        let topic = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rows = std::fs::read_to_string(&path)
            .expect("readable")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| normalize(serde_json::from_str(l).expect("expected JSON")))
            .collect();
        expected.insert(topic, rows);
    }
    let options: Value = std::fs::read_to_string(dir.join("case.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    Case {
        name,
        yaml,
        input,
        expected,
        any_partitions: options["any_partitions"].as_bool().unwrap_or(false),
        restarts: options["restarts"].as_bool().unwrap_or(true),
        error: options["error"].as_str().map(str::to_string),
        tasks: options["tasks"].as_u64().map(|n| n as usize),
        batches: options["batches"].as_array().map(|b| {
            b.iter()
                .filter_map(|n| n.as_u64().map(|n| n as usize))
                .collect()
        }),
    }
}

/// Timestamps (RFC 3339 strings) as epoch milliseconds, recursively.
fn normalize(v: Value) -> Value {
    match v {
        Value::String(s) => match chrono::DateTime::parse_from_rfc3339(&s) {
            Ok(t) => Value::from(t.timestamp_millis()),
            Err(_) => Value::String(s),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, normalize(v))).collect())
        }
        other => other,
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => {
                let (x, y) = (
                    x.as_f64().unwrap_or(f64::NAN),
                    y.as_f64().unwrap_or(f64::NAN),
                );
                x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
            }
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Compares two multisets of records; `None` when equal, else what differs.
fn compare(topic: &str, got: &[Value], want: &[Value]) -> Option<String> {
    let mut left: Vec<&Value> = got.iter().collect();
    let mut missing = Vec::new();
    for w in want {
        match left.iter().position(|g| same(g, w)) {
            Some(i) => {
                left.swap_remove(i);
            }
            None => missing.push(w),
        }
    }
    if missing.is_empty() && left.is_empty() {
        return None;
    }
    Some(format!(
        "{topic}: {} records, want {}; {} missing (first {}), {} unexpected (first {})",
        got.len(),
        want.len(),
        missing.len(),
        missing.first().map(|v| v.to_string()).unwrap_or_default(),
        left.len(),
        left.first().map(|v| v.to_string()).unwrap_or_default()
    ))
}

/// What a topic holds, as the expected files write it.
fn written(broker: &Memory, topic: &str) -> Vec<Value> {
    broker
        .messages(topic)
        .into_iter()
        .map(|m| {
            let header = |k: &str| {
                m.headers
                    .iter()
                    .find(|(h, _)| h == k)
                    .map(|(_, v)| v.clone())
            };
            if topic.ends_with("dead_letter") || header("source-offset").is_some() {
                let payload = serde_json::from_slice(&m.payload)
                    .map(normalize)
                    .unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&m.payload).into_owned())
                    });
                serde_json::json!({
                    "payload": payload,
                    "source-partition": header("source-partition"),
                    "source-offset": header("source-offset"),
                })
            } else {
                normalize(serde_json::from_slice(&m.payload).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&m.payload).into_owned())
                }))
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct Variant {
    max_batch: usize,
    /// Spread the input over this many partitions (`None`: as the case says).
    partitions: Option<i32>,
    /// Stop and restore at this many points.
    stops: usize,
    /// Keep state in the broker's changelogs rather than in checkpoint files.
    kafka_state: bool,
}

async fn run_variant(case: &Case, plan: &planner::PipelinePlan, v: Variant) -> Result<(), String> {
    let broker = Memory::new();
    let mut partitions: BTreeMap<String, i32> = BTreeMap::new();
    let place = |m: &Message| match v.partitions {
        Some(n) => m.partition.rem_euclid(n),
        None => m.partition,
    };
    for m in &case.input {
        let p = partitions.entry(m.topic.clone()).or_insert(1);
        *p = (*p).max(place(m) + 1);
    }
    if let Some(n) = v.partitions {
        for p in partitions.values_mut() {
            *p = n;
        }
    }
    for (topic, n) in &partitions {
        broker.create_topic(topic, *n as usize);
    }
    for m in &case.input {
        broker
            .produce(
                &m.topic,
                place(m),
                m.key.as_deref().map(str::as_bytes),
                m.value.as_deref(),
                m.timestamp,
            )
            .map_err(|e| e.to_string())?;
    }
    let dir = std::env::temp_dir().join(format!(
        "engine-{}-{}-{}-{:?}-{}",
        case.name,
        std::process::id(),
        v.max_batch,
        v.partitions,
        v.stops
    ));
    std::fs::remove_dir_all(&dir).ok();
    let total = case.input.len() as u64;
    let mut segments: Vec<Option<u64>> = (0..v.stops)
        .map(|_| Some((total / (v.stops as u64 + 1)).max(1)))
        .collect();
    segments.push(None);
    let outcome = run_segments(plan, v, &broker, &dir, segments, case.tasks).await;
    std::fs::remove_dir_all(&dir).ok();
    match (&case.error, outcome) {
        (Some(want), Err(e)) if e.contains(want.as_str()) => {}
        (Some(want), Err(e)) => return Err(format!("failed with `{e}`, want `{want}`")),
        (Some(want), Ok(())) => return Err(format!("ran, want a failure with `{want}`")),
        (None, Err(e)) => return Err(e),
        (None, Ok(())) => {}
    }
    let mut problems = Vec::new();
    for (topic, want) in &case.expected {
        if let Some(p) = compare(topic, &written(&broker, topic), want) {
            problems.push(p);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

async fn run_segments(
    plan: &planner::PipelinePlan,
    v: Variant,
    broker: &Memory,
    dir: &Path,
    segments: Vec<Option<u64>>,
    tasks: Option<usize>,
) -> Result<(), String> {
    for max_events in segments {
        let mut config = RunConfig::new("memory");
        config.max_batch = v.max_batch;
        config.max_wait = Duration::from_millis(1);
        config.until_idle = Some(Duration::from_millis(20));
        config.max_events = max_events;
        if v.kafka_state {
            config.kafka_state = true;
        } else {
            config.checkpoint_dir = Some(dir.to_path_buf());
        }
        let runner = Runner::connect(plan, config, Arc::new(Stats::default()), broker.clone())
            .await
            .map_err(|e| e.to_string())?;
        if let Some(want) = tasks
            && runner.tasks() != want
        {
            return Err(format!("ran as {} tasks, want {want}", runner.tasks()));
        }
        runner
            .run(std::future::pending())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn every_engine_case_writes_its_golden_output_in_every_run() {
    let dir = root().join("tests/engine");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/engine")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("pipeline.yaml").exists())
        .collect();
    dirs.sort();
    let registry = event_schema::SchemaRegistry::new(root().join("schemas"));
    let mut runs = 0;
    let mut failures = Vec::new();
    for d in &dirs {
        let case = load(d);
        assert!(
            d.join("GOLDEN.md").exists(),
            "{}: say in GOLDEN.md how the expected output was derived",
            case.name
        );
        let (doc, plan) =
            planner::check("pipeline.yaml", &case.yaml, &registry, &|_: &str| None).await;
        let Some(plan) = plan else {
            failures.push(format!("{}: invalid: {:?}", case.name, doc.diagnostics()));
            continue;
        };
        let mut variants = vec![
            Variant {
                max_batch: 10_000,
                partitions: None,
                stops: 0,
                kafka_state: false,
            },
            Variant {
                max_batch: 1,
                partitions: None,
                stops: 0,
                kafka_state: false,
            },
            Variant {
                max_batch: 7,
                partitions: None,
                stops: 0,
                kafka_state: false,
            },
        ];
        if let Some(sizes) = &case.batches {
            variants.retain(|v| sizes.contains(&v.max_batch));
        }
        if case.restarts {
            // One message a batch, so that each run stops exactly at its point.
            for kafka_state in [false, true] {
                variants.push(Variant {
                    max_batch: 1,
                    partitions: None,
                    stops: 3,
                    kafka_state,
                });
            }
        }
        if case.any_partitions {
            variants.push(Variant {
                max_batch: 7,
                partitions: Some(1),
                stops: 0,
                kafka_state: false,
            });
            variants.push(Variant {
                max_batch: 7,
                partitions: Some(4),
                stops: 0,
                kafka_state: false,
            });
        }
        for v in variants {
            runs += 1;
            if let Err(e) = run_variant(&case, &plan, v).await {
                failures.push(format!("{} {v:?}: {e}", case.name));
            }
        }
    }
    println!("engine cases: {} cases, {runs} runs", dirs.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(!dirs.is_empty(), "no cases in tests/engine");
}
