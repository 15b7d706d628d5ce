//! Window operators on in-memory batches: hand-derived session results, and results that do
//! not depend on how the input is cut into micro-batches.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::util::display::array_value_to_string;
use planner::{NodeKind, PipelinePlan};
use runtime::{Context, Operator};

const AVSC: &str = r#"{"type":"record","name":"Click","fields":[
  {"name":"user","type":"string"},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"amount","type":"double"}]}"#;

/// Written once per process: tests run in parallel, and a file rewritten while another
/// test reads it reads empty.
fn schemas_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("windows-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("web")).expect("dir");
        std::fs::write(dir.join("web/click.avsc"), AVSC).expect("schema");
        dir
    })
    .clone()
}

async fn plan(window: &str, sql: &str) -> PipelinePlan {
    let yaml = format!(
        "apiVersion: pipelines/v1\nkind: Pipeline\nmetadata: {{ name: t }}\nspec:\n  sources:\n    - name: clicks\n      kafka: {{ topic: t }}\n      format: json\n      schema: web/click\n      event_time: {{ field: ts, max_out_of_order: 10ms }}\n  transforms:\n    - name: w\n      window: {window}\n      sql: \"{sql}\"\n"
    );
    let registry = event_schema::SchemaRegistry::new(schemas_dir());
    match planner::check("t.yaml", &yaml, &registry, &|_: &str| None).await {
        (_, Some(p)) => p,
        (doc, None) => panic!("{:?}", doc.diagnostics()),
    }
}

async fn operator(plan: &PipelinePlan, partitions: &[i32]) -> Box<dyn Operator> {
    // The window (after the repartition of its unkeyed source).
    let window = plan
        .nodes
        .iter()
        .find(|n| matches!(n.kind, NodeKind::Transform(_)))
        .expect("a window");
    runtime::operators::operator(plan, &window.name, partitions, 10)
        .await
        .expect("builds")
}

/// Runs one batch of `partition` through `op`: the rows emitted and the rows late.
async fn push(
    op: &mut Box<dyn Operator>,
    batch: RecordBatch,
    partition: i32,
) -> (Vec<RecordBatch>, u64) {
    let mut ctx = Context::default();
    op.process(0, partition, batch, &mut ctx).await.expect("ok");
    (ctx.take(0), ctx.late_rows())
}

/// Emits every open window, as at the end of input.
async fn flush(op: &mut Box<dyn Operator>) -> Vec<RecordBatch> {
    let mut ctx = Context::default();
    op.finish(&mut ctx).await.expect("ok");
    ctx.take(0)
}

fn clicks(rows: &[(&str, i64, f64)]) -> RecordBatch {
    let schema = event_schema::parse_avsc(AVSC).expect("schema");
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(
                TimestampMillisecondArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("batch")
}

/// Rows as text lines, for comparing whole outputs.
fn lines(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        for row in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, row).expect("displays"))
                .collect();
            out.push(cells.join(" | "));
        }
    }
    out
}

#[tokio::test]
async fn sessions_merge_and_close_as_derived_by_hand() {
    let plan = plan(
        "{ session: { gap: 30ms } }",
        "SELECT user, window_start, window_end, count(*) AS n, sum(amount) AS total FROM clicks GROUP BY user, window_start, window_end",
    )
    .await;
    let mut op = operator(&plan, &[0]).await;
    let mut emitted = Vec::new();
    // Batch 1: a at 0, 10, 50 -> sessions [0,40) and [50,80); b at 0 and 70 -> [0,30), [70,100).
    let b1 = clicks(&[
        ("a", 0, 1.0),
        ("a", 10, 2.0),
        ("b", 0, 10.0),
        ("a", 50, 4.0),
        ("b", 70, 20.0),
    ]);
    emitted.extend(push(&mut op, b1, 0).await.0);
    // Stream time 70, watermark 60: [0,30) of b and [0,40) of a close.
    // Batch 2: b at 35 is late? Its own window [35,65) ends after 60: on time, a new session.
    // Then b at 50 bridges [35,65) and [70,100) into [35,100).
    let b2 = clicks(&[("b", 35, 30.0), ("b", 50, 40.0)]);
    emitted.extend(push(&mut op, b2, 0).await.0);
    // b at 20: its window [20,50) ended before the watermark 60: late.
    let b3 = clicks(&[("b", 20, 99.0)]);
    let (rows, late) = push(&mut op, b3, 0).await;
    assert_eq!(late, 1);
    emitted.extend(rows);
    emitted.extend(flush(&mut op).await);
    let got = lines(&emitted);
    let want = vec![
        "b | 1970-01-01T00:00:00Z | 1970-01-01T00:00:00.030Z | 1 | 10.0",
        "a | 1970-01-01T00:00:00Z | 1970-01-01T00:00:00.040Z | 2 | 3.0",
        "a | 1970-01-01T00:00:00.050Z | 1970-01-01T00:00:00.080Z | 1 | 4.0",
        "b | 1970-01-01T00:00:00.035Z | 1970-01-01T00:00:00.100Z | 3 | 90.0",
    ];
    assert_eq!(got, want);
}

#[tokio::test]
async fn window_sums_of_doubles_are_exact_then_rounded_once() {
    // Added as they come, 1e100 + 1 - 1e100 is 0 and ten 0.1 are 0.9999999999999999.
    let plan = plan(
        "{ tumbling: 100ms }",
        "SELECT user, window_start, window_end, sum(amount) AS s, avg(amount) AS a FROM clicks GROUP BY user, window_start, window_end",
    )
    .await;
    let mut op = operator(&plan, &[0]).await;
    let mut rows = vec![("big", 1, 1e100), ("big", 2, 1.0), ("big", 3, -1e100)];
    rows.extend((0..10).map(|i| ("tenth", i, 0.1)));
    // One micro-batch per row: an accumulator adding doubles as they come adds in order.
    for row in rows {
        push(&mut op, clicks(&[row]), 0).await;
    }
    let out = lines(&flush(&mut op).await);
    assert_eq!(
        out,
        [
            "big | 1970-01-01T00:00:00Z | 1970-01-01T00:00:00.100Z | 1.0 | 0.3333333333333333",
            "tenth | 1970-01-01T00:00:00Z | 1970-01-01T00:00:00.100Z | 1.0 | 0.1",
        ]
    );
}

#[tokio::test]
async fn results_do_not_depend_on_batch_boundaries() {
    // 3,000 clicks over 3 partitions, somewhat out of order, a few late.
    let mut rows: Vec<(String, i64, f64, i32)> = Vec::new();
    let mut seed: u64 = 7;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as i64
    };
    for i in 0..3000i64 {
        let jitter = next() % 8; // within max_out_of_order (10ms)
        let late = if next() % 100 == 0 { 500 } else { 0 };
        let user = format!("u{}", next() % 5);
        rows.push((
            user,
            i * 3 - jitter - late,
            (next() % 1000) as f64 / 10.0,
            (next() % 3) as i32,
        ));
    }
    for (window, group) in [
        ("{ tumbling: 100ms }", "window_start, window_end"),
        (
            "{ hopping: { size: 100ms, slide: 25ms } }",
            "window_start, window_end",
        ),
        ("{ session: { gap: 20ms } }", "window_start, window_end"),
        ("{ tumbling: 100ms }", "window_end"),
    ] {
        let sql = format!(
            "SELECT user, {group}, count(*) AS n, sum(amount) AS s, min(ts) AS first, avg(amount * 1.1) AS a FROM clicks GROUP BY user, {group}"
        );
        let plan = plan(window, &sql).await;
        let mut outputs = Vec::new();
        for chunk in [1usize, 7, 64, 3000] {
            let mut op = operator(&plan, &[0, 1, 2]).await;
            let mut emitted = Vec::new();
            // Each partition's rows keep their order; partitions interleave chunk by chunk.
            let mut cursors = [0usize; 3];
            let per: Vec<Vec<&(String, i64, f64, i32)>> = (0..3)
                .map(|p| rows.iter().filter(|r| r.3 == p).collect())
                .collect();
            loop {
                let mut progressed = false;
                for p in 0..3 {
                    let part = &per[p];
                    if cursors[p] >= part.len() {
                        continue;
                    }
                    let end = (cursors[p] + chunk).min(part.len());
                    let slice: Vec<(&str, i64, f64)> = part[cursors[p]..end]
                        .iter()
                        .map(|r| (r.0.as_str(), r.1, r.2))
                        .collect();
                    cursors[p] = end;
                    progressed = true;
                    emitted.extend(push(&mut op, clicks(&slice), p as i32).await.0);
                }
                if !progressed {
                    break;
                }
            }
            emitted.extend(flush(&mut op).await);
            outputs.push((chunk, lines(&emitted)));
        }
        let (_, first) = &outputs[0];
        assert!(first.len() > 50, "{window}: {} rows", first.len());
        for (chunk, out) in &outputs[1..] {
            // Byte for byte: sums of doubles are exact, then rounded once (planner::exact).
            if out != first {
                let at = out.iter().zip(first.iter()).position(|(a, b)| a != b);
                panic!(
                    "{window} by {group}: chunks of {chunk} differ from chunks of 1 ({} vs {} rows); first difference at {at:?}: {:?} vs {:?}",
                    out.len(),
                    first.len(),
                    at.map(|i| &out[i]),
                    at.map(|i| &first[i])
                );
            }
        }
        // The counts add up to the rows that were not late.
        let total: i64 = outputs[0]
            .1
            .iter()
            .map(|l| {
                l.split(" | ")
                    .nth(if group.contains(',') { 3 } else { 2 })
                    .expect("n")
                    .parse::<i64>()
                    .expect("int")
            })
            .sum();
        if window.contains("tumbling") || window.contains("session") {
            assert!(
                total > 2900 && total <= 3000,
                "{window}: {total} rows counted"
            );
        }
    }
}

#[tokio::test]
async fn a_snapshot_restored_into_a_new_operator_continues_exactly() {
    let mut rows: Vec<(String, i64, f64)> = Vec::new();
    for i in 0..2000i64 {
        rows.push((
            format!("u{}", i % 7),
            i * 5 - (i * 13 % 9),
            (i % 17) as f64 * 1.5,
        ));
    }
    for window in [
        "{ tumbling: 100ms }",
        "{ session: { gap: 30ms } }",
        "{ hopping: { size: 60ms, slide: 20ms } }",
    ] {
        let plan = plan(
            window,
            "SELECT user, window_start, window_end, count(*) AS n, sum(amount) AS s, avg(amount) AS a, max(ts) AS last FROM clicks GROUP BY user, window_start, window_end",
        )
        .await;
        let batches: Vec<RecordBatch> = rows
            .chunks(50)
            .map(|c| {
                clicks(
                    &c.iter()
                        .map(|r| (r.0.as_str(), r.1, r.2))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        // Uninterrupted.
        let mut whole = operator(&plan, &[0]).await;
        let mut want = Vec::new();
        for b in &batches {
            want.extend(push(&mut whole, b.clone(), 0).await.0);
        }
        want.extend(flush(&mut whole).await);
        // Interrupted half way: snapshot, a new operator restores it, then the rest.
        let mut first = operator(&plan, &[0]).await;
        let mut got = Vec::new();
        let half = batches.len() / 2;
        for b in &batches[..half] {
            got.extend(push(&mut first, b.clone(), 0).await.0);
        }
        let snapshot = first.save().expect("save").expect("a window has state");
        // Open windows at the snapshot: flushing the first operator emits them.
        assert!(
            !flush(&mut first).await.is_empty(),
            "{window}: open windows at the snapshot"
        );
        drop(first);
        let mut second = operator(&plan, &[0]).await;
        second.load(&snapshot).expect("restore");
        for b in &batches[half..] {
            got.extend(push(&mut second, b.clone(), 0).await.0);
        }
        got.extend(flush(&mut second).await);
        let (want, got) = (lines(&want), lines(&got));
        assert!(want.len() > 20, "{window}");
        assert!(
            got == want,
            "{window}: restored run differs\n got {:?}\nwant {:?}",
            &got[..3.min(got.len())],
            &want[..3]
        );
    }
}

/// `count(DISTINCT ..)` counts each value once per window, also when its repeats arrive in
/// different micro-batches (DataFusion rewrites a single distinct aggregate into two
/// nested aggregates, which a window must not run per micro-batch).
#[tokio::test]
async fn count_distinct_counts_values_once_per_window_across_batches() {
    let plan = plan(
        "{ tumbling: 100ms }",
        "SELECT user, window_start, count(DISTINCT amount) AS n FROM clicks GROUP BY user, window_start, window_end",
    )
    .await;
    let mut op = operator(&plan, &[0]).await;
    let mut emitted = Vec::new();
    // By hand: user a has amounts 1, 2, 1, 2, 3 in [0, 100): 3 distinct values.
    for b in [
        clicks(&[("a", 0, 1.0), ("a", 10, 2.0)]),
        clicks(&[("a", 20, 1.0), ("a", 30, 2.0)]),
        clicks(&[("a", 40, 3.0)]),
    ] {
        emitted.extend(push(&mut op, b, 0).await.0);
    }
    emitted.extend(flush(&mut op).await);
    assert_eq!(lines(&emitted), vec!["a | 1970-01-01T00:00:00Z | 3"]);
}
