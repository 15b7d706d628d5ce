//! Which pipelines run as a task per partition: the source's `key:` followed through
//! projections to every keyed operator; a window or a model keyed otherwise reads its rows
//! through a repartition, with the reason in the plan; an interval join keyed otherwise runs
//! as one task.

use planner::{Exchange, NodeKind, Parallelism, PipelinePlan};

async fn plan(spec: &str) -> PipelinePlan {
    let yaml =
        format!("apiVersion: pipelines/v1\nkind: Pipeline\nmetadata: {{ name: p }}\nspec:\n{spec}");
    let registry = event_schema::SchemaRegistry::new(
        // Read when the test runs: a build cache shared by checkouts at different paths may
        // hold a test binary compiled in another checkout.
        std::path::Path::new(
            &std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
        )
        .join("../../schemas"),
    );
    let (doc, plan) = planner::check("p.yaml", &yaml, &registry, &|_: &str| None).await;
    plan.unwrap_or_else(|| panic!("invalid: {:?}", doc.diagnostics()))
}

async fn parallelism(spec: &str) -> Parallelism {
    plan(spec).await.parallelism
}

/// The repartition feeding `node` (which reads it), checking that both of its ends are in
/// the plan and that the pipeline runs per partition.
async fn repartition(spec: &str, node: &str) -> Exchange {
    let plan = plan(spec).await;
    assert_eq!(plan.parallelism, Parallelism::PerPartition);
    let reader = plan
        .nodes
        .iter()
        .find(|n| n.name == node)
        .unwrap_or_else(|| panic!("no node {node}"));
    let input = &reader.inputs[0];
    let source = plan
        .nodes
        .iter()
        .find_map(|n| match &n.kind {
            NodeKind::Source(s) if &n.name == input => s.exchange.clone(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{node} reads {input}, not a repartition"));
    let sinks = plan
        .nodes
        .iter()
        .filter(|n| matches!(&n.kind, NodeKind::Sink(s) if s.exchange.as_ref() == Some(&source)))
        .count();
    assert_eq!(sinks, 1, "one writer of the repartition");
    source
}

/// Whether no node of the plan is a repartition.
async fn no_repartition(spec: &str) -> bool {
    plan(spec).await.nodes.iter().all(|n| match &n.kind {
        NodeKind::Source(s) => s.exchange.is_none(),
        NodeKind::Sink(s) => s.exchange.is_none(),
        _ => true,
    })
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
async fn without_a_declared_key_a_window_is_repartitioned_by_its_group_column() {
    let x = repartition(&format!("{READINGS}{WINDOW_BY_LINE}"), "per_minute").await;
    assert_eq!(x.by, ["line"]);
    assert_eq!(x.carries, "clean");
    assert_eq!(x.time_field.as_deref(), Some("ts"));
    assert!(x.why.contains("window `per_minute`"), "{}", x.why);
    assert!(x.why.contains("declare the source's `key:`"), "{}", x.why);
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
    // Rows of two line ids may share upper(line_id): no column alone keeps a group in one
    // partition, so every row goes to one.
    let x = repartition(&spec, "w").await;
    assert!(x.by.is_empty(), "{:?}", x.by);
    assert!(x.why.contains("window `w` groups by upper("), "{}", x.why);
}

#[tokio::test]
async fn a_window_grouped_by_other_columns_is_repartitioned_by_all_of_them() {
    let spec = format!(
        "{}  transforms:
    - name: w
      window: {{ tumbling: 1m }}
      sql: SELECT machine_id, ts, window_start, count(*) AS n FROM readings GROUP BY ts, machine_id, window_start, window_end
",
        keyed("line_id")
    );
    let x = repartition(&spec, "w").await;
    // In the input's column order.
    assert_eq!(x.by, ["machine_id", "ts"]);
    assert!(
        x.why.contains("partitions are keyed by `line_id`"),
        "{}",
        x.why
    );
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
    assert!(no_repartition(&spec).await);
}

const MODEL: &str = "  models:
    - name: m
      input: readings
      KEY
      regression: { target: failure_rate, features: [temperature] }
";

#[tokio::test]
async fn models_not_keyed_by_the_partition_key_are_repartitioned() {
    let by_line = format!(
        "{}{}",
        keyed("line_id"),
        MODEL.replace("KEY", "key: line_id")
    );
    assert_eq!(parallelism(&by_line).await, Parallelism::PerPartition);
    assert!(no_repartition(&by_line).await);
    let by_machine = format!(
        "{}{}",
        keyed("line_id"),
        MODEL.replace("KEY", "key: machine_id")
    );
    let x = repartition(&by_machine, "m").await;
    assert_eq!(x.by, ["machine_id"]);
    assert_eq!(x.time_field, None);
    assert!(
        x.why.contains("model `m` is keyed by `machine_id`"),
        "{}",
        x.why
    );
    // A global model, regression or clustering, merges across tasks.
    let global = format!("{}{}", keyed("line_id"), MODEL.replace("      KEY\n", ""));
    assert_eq!(parallelism(&global).await, Parallelism::PerPartition);
    assert!(no_repartition(&global).await);
    let clustering = format!(
        "{}  models:
    - name: c
      input: readings
      clustering: {{ k: 2, features: [temperature] }}
",
        keyed("line_id")
    );
    assert_eq!(parallelism(&clustering).await, Parallelism::PerPartition);
    assert!(no_repartition(&clustering).await);
}

#[tokio::test]
async fn operators_needing_the_same_rows_by_the_same_key_share_one_repartition() {
    let spec = format!(
        "{READINGS}  transforms:
    - name: w
      window: {{ tumbling: 1m }}
      sql: SELECT machine_id, window_start, count(*) AS n FROM readings GROUP BY machine_id, window_start, window_end
{}",
        MODEL.replace("KEY", "key: machine_id")
    );
    let window = repartition(&spec, "w").await;
    let model = repartition(&spec, "m").await;
    assert_eq!(window, model);
    assert_eq!(window.feeds, "w");
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
async fn an_interval_join_keyed_otherwise_is_repartitioned_on_both_sides() {
    let keyed = join("a.line_id = b.line_id");
    assert_eq!(parallelism(&keyed).await, Parallelism::PerPartition);
    assert!(no_repartition(&keyed).await);
    let spec = join("a.machine_id = b.machine_id");
    let left = repartition(&spec, "pairs").await;
    assert_eq!(left.feeds, "pairs.left");
    assert_eq!(left.by, ["machine_id"]);
    assert_eq!(left.time_field.as_deref(), Some("ts"));
    assert!(
        left.why
            .contains("join `pairs` joins on a.machine_id = b.machine_id"),
        "{}",
        left.why
    );
    assert!(
        left.why.contains("`a`'s partitions are keyed by `line_id`"),
        "{}",
        left.why
    );
    let plan = plan(&spec).await;
    let pairs = plan.nodes.iter().find(|n| n.name == "pairs").expect("join");
    assert_eq!(
        pairs.inputs,
        ["pairs.left.repartition", "pairs.right.repartition"]
    );
    let right = plan
        .nodes
        .iter()
        .find_map(|n| match &n.kind {
            NodeKind::Source(s) if n.name == "pairs.right.repartition" => s.exchange.clone(),
            _ => None,
        })
        .expect("the right side's repartition");
    assert_eq!(
        (right.carries.as_str(), right.by.as_slice()),
        ("b", &["machine_id".to_string()][..])
    );
}

#[tokio::test]
async fn an_interval_join_without_an_equality_is_repartitioned_to_one_partition() {
    let spec = join("a.temperature > b.temperature");
    let left = repartition(&spec, "pairs").await;
    assert!(left.by.is_empty(), "{:?}", left.by);
}
