//! Which pipelines run as a task per partition: the source's `key:` followed through
//! projections to every keyed operator; anything keyed otherwise runs as one task, with the
//! reason in the plan.

use planner::Parallelism;

async fn parallelism(spec: &str) -> Parallelism {
    let yaml =
        format!("apiVersion: pipelines/v1\nkind: Pipeline\nmetadata: {{ name: p }}\nspec:\n{spec}");
    let registry = event_schema::SchemaRegistry::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas"),
    );
    let (doc, plan) = planner::check("p.yaml", &yaml, &registry, &|_: &str| None).await;
    let plan = plan.unwrap_or_else(|| panic!("invalid: {:?}", doc.diagnostics()));
    plan.parallelism
}

const READINGS: &str = "  sources:
    - name: readings
      kafka: { topic: in }
      format: json
      schema: production/sensor_reading
      event_time: { field: ts }
";

fn keyed(key: &str) -> String {
    READINGS.replace(
        "      event_time",
        &format!("      key: {key}\n      event_time"),
    )
}

fn single(p: Parallelism) -> String {
    match p {
        Parallelism::Single(why) => why,
        Parallelism::PerPartition => panic!("runs per partition, want one task"),
    }
}

const WINDOW_BY_LINE: &str = "  transforms:
    - name: clean
      sql: SELECT line_id AS line, ts, temperature FROM readings WHERE temperature > 0
    - name: per_minute
      window: { tumbling: 1m }
      sql: SELECT line, window_start, count(*) AS n FROM clean GROUP BY line, window_start, window_end
";

#[tokio::test]
async fn a_key_followed_through_a_rename_keys_the_window() {
    let p = parallelism(&format!("{}{WINDOW_BY_LINE}", keyed("line_id"))).await;
    assert_eq!(p, Parallelism::PerPartition);
}

#[tokio::test]
async fn without_a_declared_key_a_window_runs_as_one_task() {
    let why = single(parallelism(&format!("{READINGS}{WINDOW_BY_LINE}")).await);
    assert!(why.contains("window `per_minute`"), "{why}");
    assert!(why.contains("declare the source's `key:`"), "{why}");
}

#[tokio::test]
async fn a_computed_key_is_not_the_partition_key() {
    let spec = format!(
        "{}  transforms:
    - name: w
      window: {{ tumbling: 1m }}
      sql: SELECT upper(line_id) AS line, window_start, count(*) AS n FROM readings GROUP BY upper(line_id), window_start, window_end
",
        keyed("line_id")
    );
    let why = single(parallelism(&spec).await);
    assert!(why.contains("window `w` groups by upper("), "{why}");
}

#[tokio::test]
async fn a_window_grouped_by_another_column_runs_as_one_task() {
    let spec = format!(
        "{}  transforms:
    - name: w
      window: {{ tumbling: 1m }}
      sql: SELECT machine_id, window_start, count(*) AS n FROM readings GROUP BY machine_id, window_start, window_end
",
        keyed("line_id")
    );
    let why = single(parallelism(&spec).await);
    assert!(why.contains("partitions are keyed by `line_id`"), "{why}");
}

#[tokio::test]
async fn grouping_by_more_than_the_key_keeps_each_group_in_one_partition() {
    let spec = format!(
        "{}  transforms:
    - name: w
      window: {{ tumbling: 1m }}
      sql: SELECT line_id, machine_id, window_start, count(*) AS n FROM readings GROUP BY line_id, machine_id, window_start, window_end
",
        keyed("line_id")
    );
    assert_eq!(parallelism(&spec).await, Parallelism::PerPartition);
}

const MODEL: &str = "  models:
    - name: m
      input: readings
      KEY
      regression: { target: failure_rate, features: [temperature] }
";

#[tokio::test]
async fn models_run_per_partition_only_when_keyed_by_the_partition_key() {
    let by_line = format!(
        "{}{}",
        keyed("line_id"),
        MODEL.replace("KEY", "key: line_id")
    );
    assert_eq!(parallelism(&by_line).await, Parallelism::PerPartition);
    let by_machine = format!(
        "{}{}",
        keyed("line_id"),
        MODEL.replace("KEY", "key: machine_id")
    );
    let why = single(parallelism(&by_machine).await);
    assert!(why.contains("model `m` is keyed by `machine_id`"), "{why}");
    // A global regression merges across tasks.
    let global = format!("{}{}", keyed("line_id"), MODEL.replace("      KEY\n", ""));
    assert_eq!(parallelism(&global).await, Parallelism::PerPartition);
    let clustering = format!(
        "{}  models:
    - name: c
      input: readings
      clustering: {{ k: 2, features: [temperature] }}
",
        keyed("line_id")
    );
    let why = single(parallelism(&clustering).await);
    assert!(why.contains("model `c` is one global clustering"), "{why}");
}

#[tokio::test]
async fn stateless_pipelines_run_per_partition_without_a_key() {
    let spec = format!(
        "{READINGS}  transforms:
    - name: hot
      sql: SELECT line_id, temperature FROM readings WHERE temperature > 70
"
    );
    assert_eq!(parallelism(&spec).await, Parallelism::PerPartition);
}

fn join(on: &str) -> String {
    let source = |name: &str| {
        format!(
            "    - name: {name}
      kafka: {{ topic: {name} }}
      format: json
      schema: production/sensor_reading
      key: line_id
      event_time: {{ field: ts }}
"
        )
    };
    format!(
        "  sources:
{}{}  transforms:
    - name: pairs
      join: {{ within: 1m }}
      sql: |
        SELECT a.line_id, a.ts AS a_ts, b.ts AS b_ts FROM a JOIN b
        ON {on} AND b.ts BETWEEN a.ts - INTERVAL '1' MINUTE AND a.ts + INTERVAL '1' MINUTE
",
        source("a"),
        source("b")
    )
}

#[tokio::test]
async fn an_interval_join_runs_per_partition_when_it_joins_on_both_keys() {
    assert_eq!(
        parallelism(&join("a.line_id = b.line_id")).await,
        Parallelism::PerPartition
    );
    let why = single(parallelism(&join("a.machine_id = b.machine_id")).await);
    assert!(
        why.contains("join `pairs` joins on a.machine_id = b.machine_id"),
        "{why}"
    );
    assert!(
        why.contains("`a`'s partitions are keyed by `line_id`"),
        "{why}"
    );
}
