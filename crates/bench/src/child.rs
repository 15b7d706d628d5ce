//! The suite's child processes: a pipeline of the engine run to a number of events.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use planner::{NodeKind, PipelinePlan};

use crate::{BenchError, plan_of};

/// The suite's own pipelines over sensor readings: the four of issue 14's table and a
/// lookup join. `${BENCH_TOPIC}` is the input topic; outputs go to topics named after it.
const HEAD: &str = r#"
apiVersion: pipelines/v1
kind: Pipeline
metadata: { name: bench-NAME }
spec:
  sources:
    - name: readings
      kafka: { topic: "${BENCH_TOPIC}", start_from: earliest, group: "${BENCH_GROUP}" }
      format: json
      schema: production/sensor_reading
      KEY
      event_time: { field: ts, max_out_of_order: 5s }
      on_error: skip
"#;

const CLEAN: &str = r#"
    - name: clean
      sql: |
        SELECT line_id, machine_id, ts, temperature, humidity, pressure,
               speed, vibration, failure_rate
        FROM readings WHERE temperature BETWEEN -50 AND 250
"#;

const WINDOW: &str = r#"
    - name: per_minute
      window: { tumbling: 1m }
      sql: |
        SELECT line_id, window_start, window_end, count(*) AS n, avg(temperature) AS t,
               max(vibration) AS v, avg(failure_rate) AS f
        FROM clean GROUP BY line_id, window_start, window_end
"#;

const MODEL: &str = r#"
  models:
    - name: failure
      input: clean
      passthrough: [machine_id]
      regression: { target: failure_rate, features: [temperature, humidity, pressure, speed, vibration] }
"#;

const WINDOW_SINK: &str = r#"
    - { name: windows, from: per_minute, kafka: { topic: "${BENCH_TOPIC}.windows" }, format: json }
"#;

const PREDICTION_SINK: &str = r#"
    - { name: predictions, from: failure.predictions, kafka: { topic: "${BENCH_TOPIC}.predictions" }, format: json }
"#;

const LOOKUP: &str = r#"
apiVersion: pipelines/v1
kind: Pipeline
metadata: { name: bench-NAME }
spec:
  sources:
    - name: lines
      kafka: { topic: "${BENCH_TOPIC}.lines", start_from: earliest, group: "${BENCH_GROUP}" }
      format: json
      schema: production/sensor_reading
      table: { key: line_id }
    - name: readings
      kafka: { topic: "${BENCH_TOPIC}", start_from: earliest, group: "${BENCH_GROUP}" }
      format: json
      schema: production/sensor_reading
      key: line_id
      on_error: skip
  transforms:
    - name: enriched
      sql: |
        SELECT r.line_id, r.machine_id, r.ts, r.temperature, l.machine_id AS line_lead
        FROM readings r JOIN lines l ON r.line_id = l.line_id
        WHERE r.temperature BETWEEN -50 AND 250
  sinks:
    - { name: out, from: enriched, kafka: { topic: "${BENCH_TOPIC}.enriched" }, format: json }
"#;

/// The built-in pipeline `name` as YAML: `window` (filter + 1-minute window per line),
/// `regression` (filter + a global regression, a prediction per event), `both` (the two
/// with a sink each), `lookup` (a join with a table of the 8 lines).
pub fn builtin(name: &str) -> Option<String> {
    let transforms = |window: bool| {
        let mut t = String::from("  transforms:\n");
        t.push_str(CLEAN.trim_start_matches('\n'));
        if window {
            t.push_str(WINDOW.trim_start_matches('\n'));
        }
        t
    };
    let yaml = match name {
        "window" => format!("{HEAD}{}  sinks:{WINDOW_SINK}", transforms(true)),
        "regression" => format!(
            "{HEAD}{}{MODEL}  sinks:{PREDICTION_SINK}",
            transforms(false)
        ),
        "both" => format!(
            "{HEAD}{}{MODEL}  sinks:{WINDOW_SINK}{}",
            transforms(true),
            PREDICTION_SINK.trim_start_matches('\n')
        ),
        "lookup" => LOOKUP.to_string(),
        _ => return None,
    };
    let key = if std::env::var_os("BENCH_ONE_TASK").is_some() {
        ""
    } else {
        "key: line_id"
    };
    Some(
        yaml.replace("bench-NAME", &format!("bench-{name}"))
            .replace("KEY", key),
    )
}

/// Renames every topic and group of `plan` with `suffix`, so that a shipped example runs
/// on topics of this run only.
pub fn rename_topics(plan: &mut PipelinePlan, suffix: &str) {
    for n in &mut plan.nodes {
        match &mut n.kind {
            NodeKind::Source(s) => {
                s.topic = format!("{}.{suffix}", s.topic);
                s.dead_letter_topic = format!("{}.{suffix}", s.dead_letter_topic);
                s.group = format!("{}.{suffix}", s.group);
            }
            NodeKind::Sink(s) => s.topic = format!("{}.{suffix}", s.topic),
            _ => {}
        }
    }
}

/// The plan of `spec` (a built-in pipeline's name, or a pipeline file with its topics
/// renamed) over `topic`.
pub async fn plan(spec: &str, topic: &str, suffix: &str) -> Result<PipelinePlan, BenchError> {
    if let Some(yaml) = builtin(spec) {
        return plan_of(
            &yaml,
            &[
                ("BENCH_TOPIC", topic.to_string()),
                ("BENCH_GROUP", format!("bench-{suffix}")),
            ],
        )
        .await;
    }
    let yaml = std::fs::read_to_string(spec).map_err(|e| format!("reading {spec}: {e}"))?;
    let mut plan = plan_of(&yaml, &[]).await?;
    rename_topics(&mut plan, suffix);
    Ok(plan)
}

/// Runs `spec` until `events` input events have been read (micro-batches closing
/// `latency_target` after their first message, else the default): prints `ready` once connected,
/// then `done EVENTS SECONDS`.
pub async fn pipeline(
    spec: &str,
    bootstrap: &str,
    topic: &str,
    suffix: &str,
    events: u64,
    latency_target: Option<std::time::Duration>,
) -> Result<(), BenchError> {
    let plan = plan(spec, topic, suffix).await?;
    let stats = Arc::new(runtime::Stats::default());
    let mut config = runtime::RunConfig::new(bootstrap);
    config.max_events = Some(events);
    if let Some(target) = latency_target {
        config.latency_target = target;
    }
    let runner = runtime::Runner::new(&plan, config, stats.clone()).await?;
    println!("ready");
    let started = Instant::now();
    runner.run(std::future::pending()).await?;
    // The engine's own measure (read -> outputs acknowledged), as bucket bounds.
    let bound = |h: &runtime::metrics::Histogram, q: f64| {
        let rank = (q * h.count as f64).ceil() as u64;
        h.cumulative()
            .into_iter()
            .find(|(_, c)| *c >= rank.max(1))
            .map_or(f64::NAN, |(b, _)| b * 1000.0)
    };
    let (p50, p99) = stats.detail.lock().map_or((f64::NAN, f64::NAN), |d| {
        (bound(&d.processing, 0.5), bound(&d.processing, 0.99))
    });
    println!(
        "done {} {:.3} processing p50<={p50}ms p99<={p99}ms",
        stats.events_in.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The pipelines of the memory benchmark: every shipped example and three built-in ones,
/// with their topics renamed with `suffix` (built-in ones read `{topic}.{name}`).
pub async fn many_plans(topic: &str, suffix: &str) -> Result<Vec<PipelinePlan>, BenchError> {
    let mut plans = Vec::new();
    for file in crate::suite::examples(&std::env::current_dir()?.join("pipelines")) {
        plans.push(plan(&file.to_string_lossy(), "", suffix).await?);
    }
    for name in ["window", "regression", "lookup"] {
        let mut p = plan(name, &format!("{topic}.{name}"), suffix).await?;
        p.name = format!("{}-many", p.name);
        plans.push(p);
    }
    Ok(plans)
}

/// Runs every pipeline of [`many_plans`] in this one process, as a daemon runs the
/// pipelines deployed on it: prints `ready` once all are connected, then runs until killed.
pub async fn many(bootstrap: &str, topic: &str, suffix: &str) -> Result<(), BenchError> {
    let mut handles = Vec::new();
    for plan in many_plans(topic, suffix).await? {
        let stats = Arc::new(runtime::Stats::default());
        let runner = runtime::Runner::new(&plan, runtime::RunConfig::new(bootstrap), stats).await?;
        handles.push(tokio::spawn(runner.run(std::future::pending())));
    }
    println!("ready {}", handles.len());
    for h in handles {
        h.await??;
    }
    Ok(())
}
