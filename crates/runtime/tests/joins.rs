//! Lookup joins (a stream with a changelog table) and interval joins (two streams), on
//! in-memory batches, against results derived by hand.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{
    Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::util::display::array_value_to_string;
use planner::{NodeKind, PipelinePlan};
use runtime::operators::table::TableState;
use runtime::{Context, Operator};

const ORDER: &str = r#"{"type":"record","name":"Order","fields":[
  {"name":"order_id","type":"string"},{"name":"sku","type":"string"},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},{"name":"qty","type":"long"}]}"#;
const PRODUCT: &str = r#"{"type":"record","name":"Product","fields":[
  {"name":"sku","type":"string"},{"name":"name","type":"string"},{"name":"price","type":"double"}]}"#;
const SHIPMENT: &str = r#"{"type":"record","name":"Shipment","fields":[
  {"name":"order_id","type":"string"},{"name":"carrier","type":"string"},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;

const MIN: i64 = 60_000;

/// Written once per process: tests run in parallel, and a file rewritten while another
/// test reads it reads empty.
fn schemas_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("joins-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("shop")).expect("dir");
        for (name, text) in [
            ("order", ORDER),
            ("product", PRODUCT),
            ("shipment", SHIPMENT),
        ] {
            std::fs::write(dir.join(format!("shop/{name}.avsc")), text).expect("schema");
        }
        dir
    })
    .clone()
}

async fn plan() -> PipelinePlan {
    let yaml = r#"
apiVersion: pipelines/v1
kind: Pipeline
metadata: { name: shop }
spec:
  sources:
    - { name: orders, kafka: { topic: o }, format: json, schema: shop/order, key: order_id, event_time: { field: ts, max_out_of_order: 1m } }
    - { name: products, kafka: { topic: p }, format: json, schema: shop/product, table: { key: sku } }
    - { name: shipments, kafka: { topic: s }, format: json, schema: shop/shipment, key: order_id, event_time: { field: ts, max_out_of_order: 1m } }
  transforms:
    - name: enriched
      sql: SELECT o.order_id, p.name, o.qty * p.price AS value FROM orders o JOIN products p ON o.sku = p.sku
    - name: shipped
      join: { within: 1h }
      sql: |
        SELECT o.order_id, s.carrier, (s.ts - o.ts) AS took
        FROM orders o JOIN shipments s
          ON o.order_id = s.order_id AND s.ts BETWEEN o.ts AND o.ts + INTERVAL '1' HOUR
"#;
    let registry = event_schema::SchemaRegistry::new(schemas_dir());
    match planner::check("shop.yaml", yaml, &registry, &|_: &str| None).await {
        (_, Some(p)) => p,
        (doc, None) => panic!("{:?}", doc.diagnostics()),
    }
}

async fn op(plan: &PipelinePlan, name: &str) -> (Box<dyn Operator>, Vec<String>) {
    let node = plan.nodes.iter().find(|n| n.name == name).expect("node");
    assert!(
        matches!(node.kind, NodeKind::Transform(_)),
        "not a transform"
    );
    let op = runtime::operators::operator(plan, name, &[0], MIN)
        .await
        .expect("builds");
    (op, node.inputs.clone())
}

/// Runs one batch through `op` on input `port`; returns the rows emitted.
async fn push(op: &mut Box<dyn Operator>, batch: RecordBatch, port: usize) -> Vec<RecordBatch> {
    let mut ctx = Context::default();
    op.process(port, 0, batch, &mut ctx).await.expect("runs");
    ctx.take(0)
}

fn orders(rows: &[(&str, &str, i64, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        event_schema::parse_avsc(ORDER).expect("schema"),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(
                TimestampMillisecondArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("batch")
}

fn products(rows: &[(&str, &str, f64)]) -> RecordBatch {
    RecordBatch::try_new(
        event_schema::parse_avsc(PRODUCT).expect("schema"),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("batch")
}

fn shipments(rows: &[(&str, &str, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        event_schema::parse_avsc(SHIPMENT).expect("schema"),
        vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(
                TimestampMillisecondArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
        ],
    )
    .expect("batch")
}

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
    out.sort();
    out
}

#[tokio::test]
async fn lookup_join_reads_the_latest_row_per_key() {
    let plan = plan().await;
    let (mut op, inputs) = op(&plan, "enriched").await;
    assert_eq!(inputs, vec!["orders", "products"]);
    let product_schema = event_schema::parse_avsc(PRODUCT).expect("schema");
    let mut table = TableState::new(product_schema, "sku").expect("table");
    table
        .upsert(&products(&[
            ("A", "anvil", 10.0),
            ("B", "bolt", 0.5),
            ("A", "anvil v2", 12.0),
        ]))
        .expect("upsert");
    assert_eq!(table.len(), 2);
    push(&mut op, table.snapshot().expect("snapshot"), 1).await;
    let out = push(
        &mut op,
        orders(&[("o1", "A", 0, 2), ("o2", "B", 0, 10), ("o3", "C", 0, 1)]),
        0,
    )
    .await;
    // A is the newer row (12.0); C has no product: an inner join drops it.
    assert_eq!(lines(&out), vec!["o1 | anvil v2 | 24.0", "o2 | bolt | 5.0"]);
    table
        .upsert(&products(&[("B", "bolt", 0.75), ("C", "clamp", 3.0)]))
        .expect("upsert");
    push(&mut op, table.snapshot().expect("snapshot"), 1).await;
    let out = push(&mut op, orders(&[("o4", "B", 1, 4), ("o5", "C", 1, 1)]), 0).await;
    assert_eq!(lines(&out), vec!["o4 | bolt | 3.0", "o5 | clamp | 3.0"]);
}

#[tokio::test]
async fn interval_join_matches_each_pair_once_and_forgets_old_rows() {
    let plan = plan().await;
    let (mut op, inputs) = op(&plan, "shipped").await;
    assert_eq!(inputs, vec!["orders", "shipments"]);
    let mut got = Vec::new();
    // Orders o1 at 0 and o2 at 10 min.
    got.extend(
        push(
            &mut op,
            orders(&[("o1", "A", 0, 1), ("o2", "A", 10 * MIN, 1)]),
            0,
        )
        .await,
    );
    // s1 ships o1 after 30 min (matches); s2 ships o2 after 3 h (outside the SQL bound).
    got.extend(
        push(
            &mut op,
            shipments(&[("o1", "DHL", 30 * MIN), ("o2", "UPS", 190 * MIN)]),
            1,
        )
        .await,
    );
    // Shipments' stream time is now 190 min: orders older than 190 - 60 - 1 = 129 min are
    // forgotten, so a shipment for o1 at 50 min, arriving now, no longer finds it.
    got.extend(push(&mut op, shipments(&[("o1", "GLS", 50 * MIN)]), 1).await);
    // A later order and its shipment, the shipment first: pairs meet whichever comes first.
    got.extend(push(&mut op, shipments(&[("o3", "DPD", 330 * MIN)]), 1).await);
    got.extend(push(&mut op, orders(&[("o3", "A", 300 * MIN, 1)]), 0).await);
    assert_eq!(
        lines(&got),
        vec!["o1 | DHL | PT1800S", "o3 | DPD | PT1800S",]
    );
}

#[tokio::test]
async fn interval_join_buffers_and_tables_survive_a_checkpoint() {
    let plan = plan().await;
    let (mut before, _) = op(&plan, "shipped").await;
    push(
        &mut before,
        orders(&[("o1", "A", 0, 1), ("o2", "A", 10 * MIN, 1)]),
        0,
    )
    .await;
    push(&mut before, shipments(&[("o9", "UPS", 20 * MIN)]), 1).await;
    let saved = before.save().expect("save").expect("a join has state");

    // A fresh operator given the saved state matches the buffered orders; and the buffered
    // shipment (o9) meets its order arriving after the restore.
    let (mut after, _) = op(&plan, "shipped").await;
    after.load(&saved).expect("load");
    let mut got = Vec::new();
    for (batch, input) in [
        (
            shipments(&[("o1", "DHL", 30 * MIN), ("o2", "GLS", 40 * MIN)]),
            1,
        ),
        (orders(&[("o9", "B", 5 * MIN, 1)]), 0),
    ] {
        got.extend(push(&mut after, batch, input).await);
    }
    assert_eq!(
        lines(&got),
        vec![
            "o1 | DHL | PT1800S",
            "o2 | GLS | PT1800S",
            "o9 | UPS | PT900S"
        ]
    );
    // Without it, nothing matches.
    let (mut empty, _) = op(&plan, "shipped").await;
    let out = push(&mut empty, shipments(&[("o1", "DHL", 30 * MIN)]), 1).await;
    assert!(out.is_empty());

    // Stateless transforms have nothing to save.
    let (mut lookup, _) = op(&plan, "enriched").await;
    assert!(lookup.save().expect("save").is_none());

    // A changelog table: the latest row per key, after a save and a load.
    let schema = event_schema::parse_avsc(PRODUCT).expect("schema");
    let mut table = TableState::new(schema.clone(), "sku").expect("table");
    table
        .upsert(&products(&[
            ("A", "anvil", 10.0),
            ("B", "bolt", 0.5),
            ("A", "anvil v2", 12.0),
        ]))
        .expect("upsert");
    let mut restored = TableState::new(schema, "sku").expect("table");
    restored
        .upsert(&products(&[("Z", "stale", 1.0)]))
        .expect("upsert");
    restored.load(&table.save().expect("save")).expect("load");
    assert_eq!(
        lines(&[restored.snapshot().expect("rows")]),
        vec!["A | anvil v2 | 12.0", "B | bolt | 0.5"]
    );
}

/// Applies changelog entries as a compacted topic keeps them: the latest value per key, a
/// tombstone removing it. Returns the keys written.
fn apply(
    log: &mut std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    entries: Vec<(Vec<u8>, Option<Vec<u8>>)>,
) -> Vec<(Vec<u8>, bool)> {
    let mut keys = Vec::new();
    for (k, v) in entries {
        keys.push((k.clone(), v.is_some()));
        match v {
            Some(v) => log.insert(k, v),
            None => log.remove(&k),
        };
    }
    keys
}

/// What an interval join writes to its changelog at each commit: a batch once, when it
/// arrives, and a tombstone once all its rows are dropped (key `b`, side, number), plus the
/// clocks (`t`); a restore from the compacted log holds exactly the rows the join held,
/// partly dropped batches included.
#[tokio::test]
async fn interval_join_changelogs_write_each_batch_once_and_restore_exactly() {
    let plan = plan().await;
    let (mut running, _) = op(&plan, "shipped").await;
    let mut log = std::collections::BTreeMap::new();
    let batch = |side: u8, id: u64| {
        let mut k = vec![b'b', side];
        k.extend_from_slice(&id.to_be_bytes());
        k
    };
    push(
        &mut running,
        orders(&[("o1", "A", 0, 1), ("o2", "A", 10 * MIN, 1)]),
        0,
    )
    .await;
    let first = apply(&mut log, running.changes().expect("changes"));
    // The whole-state entry of older changelogs is tombstoned once.
    assert_eq!(
        first,
        vec![(vec![], false), (batch(0, 0), true), (b"t".to_vec(), true)]
    );
    push(&mut running, shipments(&[("o9", "UPS", 20 * MIN)]), 1).await;
    assert_eq!(
        apply(&mut log, running.changes().expect("changes")),
        vec![(batch(1, 1), true), (b"t".to_vec(), true)],
        "only the new batch"
    );
    // Shipments' stream time 190 min drops orders before 190 - 61 = 129 min: both of
    // batch 0.
    push(&mut running, shipments(&[("o1", "DHL", 190 * MIN)]), 1).await;
    assert_eq!(
        apply(&mut log, running.changes().expect("changes")),
        vec![
            (batch(0, 0), false),
            (batch(1, 2), true),
            (b"t".to_vec(), true)
        ]
    );
    // Orders o4 at 200 and o5 at 300 min drop shipments before 300 - 61 = 239 min
    // (batches 1 and 2); a shipment at 330 min then drops orders before 269 min, o4 of a
    // batch whose o5 is still held: that batch is not written again.
    push(
        &mut running,
        orders(&[("o4", "A", 200 * MIN, 1), ("o5", "A", 300 * MIN, 1)]),
        0,
    )
    .await;
    assert_eq!(
        apply(&mut log, running.changes().expect("changes")),
        vec![
            (batch(1, 1), false),
            (batch(1, 2), false),
            (batch(0, 3), true),
            (b"t".to_vec(), true)
        ]
    );
    push(&mut running, shipments(&[("o7", "DPD", 330 * MIN)]), 1).await;
    assert_eq!(
        apply(&mut log, running.changes().expect("changes")),
        vec![(batch(1, 4), true), (b"t".to_vec(), true)]
    );
    let entries: Vec<(Vec<u8>, Vec<u8>)> = log.into_iter().collect();
    let (mut restored, _) = op(&plan, "shipped").await;
    restored.restore(entries).expect("restores");
    // It holds what the running join holds (o5, not o4, of batch 3; its whole state as a
    // checkpoint file would hold it).
    assert_eq!(
        restored.save().expect("save"),
        running.save().expect("save"),
        "the restored join holds the rows the running one holds"
    );
    // A shipment for o5 (held) finds it on both; one for o4 is late for the shipments'
    // stream time (330 min), dropped before the join.
    for (name, join) in [("running", &mut running), ("restored", &mut restored)] {
        let out = push(
            join,
            shipments(&[("o4", "GLS", 210 * MIN), ("o5", "UPS", 320 * MIN)]),
            1,
        )
        .await;
        assert_eq!(lines(&out), vec!["o5 | UPS | PT1200S"], "{name}");
    }
}
