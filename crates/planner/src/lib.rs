//! The planner: a checked pipeline spec becomes a graph of typed nodes. Each transform's SQL
//! is planned by DataFusion against the Arrow schemas of its inputs (windowed transforms see
//! two extra columns, `window_start` and `window_end`); models and sinks are type checked; the
//! output schema of every node is known.
//!
//! It owns the checks that need schemas or SQL: transform inputs, cycles, unknown columns,
//! DDL/DML, feature types. It reports through the same located diagnostics as the spec crate,
//! so `pipectl validate` prints one list. It does not run anything.

pub mod bounded;
pub mod exact;
mod explain;
pub mod node;
pub mod outputs;
pub mod partitioning;
mod resolve;
pub mod sql;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan};
use event_schema::SchemaRegistry;
use spec::Document;
use spec::diag::{Diagnostic, one_of, suggestion};
use spec::model::{self as yaml, Model, Pipeline, Sink, Source, Transform, Window};

pub use node::*;
pub use outputs::EVENT_TIME;
pub use partitioning::Parallelism;

/// Column a windowed transform sees with the start of each row's window.
pub const WINDOW_START: &str = "window_start";
/// Column a windowed transform sees with the end (exclusive) of each row's window.
pub const WINDOW_END: &str = "window_end";
/// Column a repartition for a window adds to each row: the largest event time its writer
/// had seen before it, in the partition it read (what lateness is decided against).
pub const EXCHANGE_STREAM_TIME: &str = "__exchange_stream_time";
/// Column a repartition adds to each row: its number among the rows its writer wrote for
/// the same input partition (1, 2, ...), so that a reader drops rows a replay wrote again.
pub const EXCHANGE_SEQ: &str = "__exchange_seq";

/// A planned pipeline: every node in an order where inputs come first.
#[derive(Debug, Clone)]
pub struct PipelinePlan {
    /// The pipeline's name.
    pub name: String,
    /// Sources, transforms, models and sinks, inputs before their readers.
    pub nodes: Vec<PlannedNode>,
    /// Whether it runs as a task per partition.
    pub parallelism: Parallelism,
    /// Its `commit_every`, if it sets one.
    pub commit_every: Option<std::time::Duration>,
}

/// One planned node.
#[derive(Debug, Clone)]
pub struct PlannedNode {
    /// The component's name.
    pub name: String,
    /// Names of the tables it reads.
    pub inputs: Vec<String>,
    /// What it is, with its plan.
    pub kind: NodeKind,
    /// Fingerprint of what its state means (its definition and the rows it reads and
    /// writes): checkpointed state is restored only into a node with the same.
    pub fingerprint: u64,
}

/// How a transform reads one of its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputRole {
    /// A stream of events, with the column holding their event time when known.
    Stream {
        /// Event-time column of the input.
        time_field: Option<String>,
    },
    /// A table: the latest row per key of a compacted topic.
    Table {
        /// The key column.
        key: String,
    },
}

impl PlannedNode {
    /// The rows this node outputs (a model's predictions).
    pub fn output_schema(&self) -> Option<SchemaRef> {
        match &self.kind {
            NodeKind::Source(s) => Some(s.schema.clone()),
            NodeKind::Transform(t) => Some(t.schema.clone()),
            NodeKind::Sink(s) => Some(s.schema.clone()),
            NodeKind::Model(m) => Some(m.predictions.clone()),
        }
    }
}

impl PipelinePlan {
    /// The human-readable plan that `pipectl plan` prints.
    pub fn explain(&self) -> String {
        explain::explain(self)
    }

    /// The first `exactly_once` sink, if the pipeline has one (they all share the
    /// transactional producer, so their Kafka properties agree: validated).
    pub fn exactly_once_sink(&self) -> Option<&SinkPlan> {
        self.nodes.iter().find_map(|n| match &n.kind {
            NodeKind::Sink(s) if s.delivery == Delivery::ExactlyOnce => Some(s),
            _ => None,
        })
    }
}

/// Plans the pipeline of `doc`, adding every problem found to its diagnostics. Returns a
/// plan only when the document has no problem at all.
pub async fn plan(doc: &mut Document, registry: &SchemaRegistry) -> Option<PipelinePlan> {
    let pipeline = doc.pipeline.clone()?;
    let mut planner = Planner {
        doc,
        registry,
        p: &pipeline,
        tables: HashMap::new(),
        failed: HashSet::new(),
        nodes: Vec::new(),
    };
    planner.run().await;
    let nodes = std::mem::take(&mut planner.nodes);
    if doc.is_valid() {
        let (nodes, parallelism) = partitioning::divide(nodes);
        Some(PipelinePlan {
            name: pipeline.metadata.name.clone(),
            parallelism,
            nodes,
            commit_every: pipeline.spec.commit_every.map(|d| d.0),
        })
    } else {
        None
    }
}

/// A table SQL can read: a source, a transform, or a model output.
#[derive(Debug, Clone)]
struct Table {
    schema: SchemaRef,
    /// For the default window time column: the source's event-time field this table carries,
    /// if it traces back to exactly one source.
    event_time: Option<String>,
    /// The key column when this is a changelog table rather than a stream.
    table_key: Option<String>,
}

struct Planner<'a> {
    doc: &'a mut Document,
    registry: &'a SchemaRegistry,
    p: &'a Pipeline,
    tables: HashMap<String, Table>,
    /// Names that exist but could not be planned; readers skip silently (the cause is
    /// reported once, where it is).
    failed: HashSet<String>,
    nodes: Vec<PlannedNode>,
}

/// An item of the dependency graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Item {
    Transform(usize),
    Model(usize),
}

impl Planner<'_> {
    fn error(&mut self, path: String, message: String) {
        self.doc.push(Diagnostic::at_path(path, message));
    }

    fn error_in_sql(&mut self, t: &Transform, e: &sql::SqlError) {
        let path = spec::validate::sql_path(t);
        let pos = match (&self.doc.source_map, e.pos) {
            (Some(map), Some((line, col))) => Some(map.locate_in_scalar(&path, line, col)),
            (Some(map), None) => Some(map.locate(&path)),
            _ => None,
        };
        self.doc.push(Diagnostic {
            pos,
            path,
            message: e.message.clone(),
        });
    }

    async fn run(&mut self) {
        for s in &self.p.spec.sources {
            self.plan_source(s);
        }
        for name in &self.doc.broken.clone() {
            self.failed.insert(name.clone());
        }
        let parsed = self.parse_transforms();
        let deps = self.dependencies(&parsed);
        let order = self.order(&deps);
        for item in order {
            match item {
                Item::Transform(i) => {
                    let t = &self.p.spec.transforms[i];
                    match &parsed[i] {
                        Some(q) => self.plan_transform(t, q, &deps[&item]).await,
                        None => {
                            self.failed.insert(t.name.clone());
                        }
                    }
                }
                Item::Model(i) => self.plan_model(&self.p.spec.models[i]),
            }
        }
        for s in &self.p.spec.sinks {
            self.plan_sink(s);
        }
    }

    fn plan_source(&mut self, s: &Source) {
        let path = format!("spec.sources[{}]", s.index);
        let (schema, avro_json) = match self.registry.load(&s.schema) {
            Ok(schema) => (schema.arrow, schema.avro_json),
            // The spec checks reported the reference itself.
            Err(event_schema::SchemaError::BadReference(_)) => {
                self.failed.insert(s.name.clone());
                return;
            }
            Err(e) => {
                self.error(format!("{path}.schema"), e.to_string());
                self.failed.insert(s.name.clone());
                return;
            }
        };
        let mut event_time = None;
        if let Some(field) = s.event_time.as_ref().and_then(|e| e.field.as_ref()) {
            match schema.field_with_name(field) {
                Ok(f) if matches!(f.data_type(), DataType::Timestamp(_, _)) => {
                    event_time = Some(field.clone());
                }
                Ok(f) => self.error(
                    format!("{path}.event_time.field"),
                    format!(
                        "`{field}` is {}, not a timestamp; event time must be a timestamp field (Avro `timestamp-millis`)",
                        f.data_type()
                    ),
                ),
                Err(_) => {
                    let timestamps = timestamp_columns(&schema);
                    self.error(
                        format!("{path}.event_time.field"),
                        format!(
                            "no field `{field}` in schema `{}`{} (timestamp fields: {})",
                            s.schema,
                            suggestion(field, timestamps.iter().map(String::as_str)),
                            one_of(timestamps.iter().map(String::as_str))
                        ),
                    );
                }
            }
        }
        if let Some(framing) = avro_framing(s.format)
            && let Err(e) = formats::avro::AvroCodec::new(&avro_json, schema.clone(), framing)
        {
            self.error(
                format!("{path}.format"),
                format!("schema `{}` cannot be read as {}: {e}", s.schema, s.format),
            );
        }
        let table_key = s.table.as_ref().map(|t| t.key.clone());
        if let Some(key) = &table_key
            && schema.field_with_name(key).is_err()
        {
            let columns = column_names(&schema);
            self.error(
                format!("{path}.table.key"),
                format!(
                    "no field `{key}` in schema `{}`{} (fields: {})",
                    s.schema,
                    suggestion(key, columns.iter().map(String::as_str)),
                    one_of(columns.iter().map(String::as_str))
                ),
            );
        }
        if let Some(key) = &s.key {
            if table_key.is_some() {
                self.error(
                    format!("{path}.key"),
                    "a table is read whole by every task, so its partitioning does not matter: remove `key` (the table's key is `table.key`)".to_string(),
                );
            } else if schema.field_with_name(key).is_err() {
                let columns = column_names(&schema);
                self.error(
                    format!("{path}.key"),
                    format!(
                        "no field `{key}` in schema `{}`{} (fields: {})",
                        s.schema,
                        suggestion(key, columns.iter().map(String::as_str)),
                        one_of(columns.iter().map(String::as_str))
                    ),
                );
            }
        }
        self.tables.insert(
            s.name.clone(),
            Table {
                schema: schema.clone(),
                event_time,
                table_key,
            },
        );
        let start = match resolve::start(&s.kafka.start_from) {
            Ok(start) => start,
            Err(message) => {
                self.error(format!("{path}.kafka.start_from"), message);
                return;
            }
        };
        self.nodes.push(PlannedNode {
            name: s.name.clone(),
            inputs: Vec::new(),
            fingerprint: resolve::source_fingerprint(s, &schema),
            kind: NodeKind::Source(SourcePlan {
                topic: s.kafka.topic.clone(),
                group: s
                    .kafka
                    .group
                    .clone()
                    .unwrap_or_else(|| self.p.metadata.name.clone()),
                start,
                properties: s.kafka.properties.clone(),
                format: resolve::format(s.format),
                schema_name: s.schema.clone(),
                schema,
                avro_json,
                event_time: s.event_time.as_ref().map(resolve::event_time),
                on_error: resolve::on_error(s.on_error),
                dead_letter_topic: resolve::dead_letter_topic(&self.p.metadata.name, s),
                table_key: s.table.as_ref().map(|t| t.key.clone()),
                key: s.key.clone(),
                exchange: None,
            }),
        });
    }

    fn parse_transforms(&mut self) -> Vec<Option<sql::ParsedQuery>> {
        let mut out = Vec::new();
        for t in &self.p.spec.transforms {
            match sql::parse(&t.sql) {
                Ok(q) => out.push(Some(q)),
                Err(e) => {
                    self.error_in_sql(t, &e);
                    out.push(None);
                }
            }
        }
        out
    }

    /// Every name a transform may read.
    fn readable_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .p
            .spec
            .sources
            .iter()
            .map(|s| s.name.clone())
            .chain(self.p.spec.transforms.iter().map(|t| t.name.clone()))
            .chain(self.p.spec.models.iter().flat_map(|m| {
                [
                    format!("{}.predictions", m.name),
                    format!("{}.snapshots", m.name),
                ]
            }))
            .collect();
        names.sort();
        names
    }

    /// The graph: what each transform and model reads, by table name. Unknown inputs are
    /// reported here.
    fn dependencies(&mut self, parsed: &[Option<sql::ParsedQuery>]) -> BTreeMap<Item, Vec<String>> {
        let readable = self.readable_names();
        let mut deps = BTreeMap::new();
        for (i, t) in self.p.spec.transforms.iter().enumerate() {
            let mut inputs = Vec::new();
            if let Some(q) = &parsed[i] {
                for table in &q.tables {
                    let name = table.reference.to_string();
                    let known = readable.contains(&name)
                        || self.failed.contains(&name)
                        || table
                            .reference
                            .schema()
                            .is_some_and(|m| self.failed.contains(m));
                    if !known {
                        let e = sql::SqlError {
                            pos: table.pos,
                            message: format!(
                                "unknown input `{name}`{} (a transform reads sources, transforms and `<model>.predictions`; known: {})",
                                suggestion(&name, readable.iter().map(String::as_str)),
                                one_of(readable.iter().map(String::as_str))
                            ),
                        };
                        self.error_in_sql(t, &e);
                        self.failed.insert(t.name.clone());
                    }
                    inputs.push(name);
                }
            }
            deps.insert(Item::Transform(i), inputs);
        }
        for (i, m) in self.p.spec.models.iter().enumerate() {
            deps.insert(Item::Model(i), vec![m.input.clone()]);
        }
        deps
    }

    fn item_name(&self, item: Item) -> &str {
        match item {
            Item::Transform(i) => &self.p.spec.transforms[i].name,
            Item::Model(i) => &self.p.spec.models[i].name,
        }
    }

    /// The item that produces table `name`, if a transform or a model does.
    fn producer(&self, name: &str) -> Option<Item> {
        let base = name.split('.').next().unwrap_or(name);
        if let Some(i) = self.p.spec.transforms.iter().position(|t| t.name == name) {
            return Some(Item::Transform(i));
        }
        self.p
            .spec
            .models
            .iter()
            .position(|m| m.name == base && name.contains('.'))
            .map(Item::Model)
    }

    /// Topological order; items on a cycle are reported and left out.
    fn order(&mut self, deps: &BTreeMap<Item, Vec<String>>) -> Vec<Item> {
        let upstream: BTreeMap<Item, Vec<Item>> = deps
            .iter()
            .map(|(item, inputs)| {
                let mut ups: Vec<Item> = inputs.iter().filter_map(|n| self.producer(n)).collect();
                ups.sort();
                ups.dedup();
                (*item, ups)
            })
            .collect();
        let mut done: Vec<Item> = Vec::new();
        let mut remaining: Vec<Item> = upstream.keys().copied().collect();
        loop {
            let ready: Vec<Item> = remaining
                .iter()
                .copied()
                .filter(|i| upstream[i].iter().all(|u| done.contains(u)))
                .collect();
            if ready.is_empty() {
                break;
            }
            remaining.retain(|i| !ready.contains(i));
            done.extend(ready);
        }
        // What is left is on a cycle or downstream of one.
        for &start in &remaining {
            if let Some(cycle) = find_cycle(start, &upstream) {
                if cycle[0] != start {
                    continue;
                }
                let names: Vec<&str> = cycle
                    .iter()
                    .chain(std::iter::once(&cycle[0]))
                    .map(|i| self.item_name(*i))
                    .collect();
                let text = names.join(" <- ");
                let (path, what) = match start {
                    Item::Transform(i) => (
                        spec::validate::sql_path(&self.p.spec.transforms[i]),
                        "transform",
                    ),
                    Item::Model(i) => (
                        format!("spec.models[{}].input", self.p.spec.models[i].index),
                        "model",
                    ),
                };
                self.error(
                    path,
                    format!(
                        "{what} `{}` reads its own output through a cycle: {text}; pipelines must be acyclic",
                        self.item_name(start)
                    ),
                );
            }
        }
        for item in remaining {
            let name = self.item_name(item).to_string();
            self.failed.insert(name);
        }
        done
    }

    fn lookup_inputs(&self, names: &[String]) -> Option<Vec<(String, Table)>> {
        names
            .iter()
            .map(|n| self.tables.get(n).map(|t| (n.clone(), t.clone())))
            .collect()
    }

    async fn plan_transform(&mut self, t: &Transform, q: &sql::ParsedQuery, inputs: &[String]) {
        if self.failed.contains(&t.name) || inputs.iter().any(|n| self.is_failed(n)) {
            self.failed.insert(t.name.clone());
            return;
        }
        let Some(tables) = self.lookup_inputs(inputs) else {
            self.failed.insert(t.name.clone());
            return;
        };
        let wpath = format!("spec.transforms[{}].window", t.index);
        let roles: Vec<InputRole> = tables
            .iter()
            .map(|(_, table)| match &table.table_key {
                Some(key) => InputRole::Table { key: key.clone() },
                None => InputRole::Stream {
                    time_field: table.event_time.clone(),
                },
            })
            .collect();
        let streams = roles
            .iter()
            .filter(|r| matches!(r, InputRole::Stream { .. }))
            .count();
        let sql_path = spec::validate::sql_path(t);
        let shape_error = if t.window.is_some() && streams == 0 {
            Some("a table cannot be windowed: windows need a stream of events".to_string())
        } else if streams == 0 && !tables.is_empty() {
            Some(
                "this transform reads only tables; a transform needs a stream to run on"
                    .to_string(),
            )
        } else if streams == 2 && t.join.is_none() {
            Some("joining two streams needs `join: { within: DURATION }` on the transform, so the engine knows how long to keep each side (an interval join)".to_string())
        } else if streams == 2
            && roles
                .iter()
                .any(|r| matches!(r, InputRole::Stream { time_field: None }))
        {
            Some("an interval join needs the event time of both streams: give both sources `event_time.field` and keep that column".to_string())
        } else if streams > 2 {
            Some(format!(
                "this transform joins {streams} streams; join two at a time"
            ))
        } else if t.join.is_some() && streams != 2 {
            Some("`join` is for a transform that joins exactly two streams".to_string())
        } else {
            None
        };
        if let Some(message) = shape_error {
            self.error(sql_path, message);
            self.failed.insert(t.name.clone());
            return;
        }
        let mut time_field = None;
        let mut registered: Vec<sql::InputTable> = Vec::new();
        for (name, table) in &tables {
            let mut schema = table.schema.clone();
            if let Some(w) = &t.window {
                if tables.len() != 1 {
                    self.error(
                        wpath.clone(),
                        format!(
                            "a windowed transform reads one input, this one reads {}; join in a transform before the window",
                            tables.len()
                        ),
                    );
                    self.failed.insert(t.name.clone());
                    return;
                }
                match self.window_input(w, &wpath, name, table) {
                    Some((field, augmented)) => {
                        time_field = Some(field);
                        schema = augmented;
                    }
                    None => {
                        self.failed.insert(t.name.clone());
                        return;
                    }
                }
            }
            let (schema_part, table_part) = match name.split_once('.') {
                Some((m, out)) => (Some(m.to_string()), out.to_string()),
                None => (None, name.clone()),
            };
            registered.push(sql::InputTable {
                schema: schema_part,
                table: table_part,
                arrow: schema,
            });
        }
        let (logical, optimized) = match sql::plan(q, &registered).await {
            Ok(plans) => plans,
            Err(e) => {
                self.error_in_sql(t, &e);
                self.failed.insert(t.name.clone());
                return;
            }
        };
        if let Err(message) = check_streaming_shape(&logical, t.window.is_some()) {
            self.error_in_sql(t, &sql::SqlError { pos: None, message });
            self.failed.insert(t.name.clone());
            return;
        }
        let table_keys: Vec<(String, String)> = tables
            .iter()
            .filter_map(|(name, table)| table.table_key.clone().map(|k| (name.clone(), k)))
            .collect();
        if let Err(message) = check_lookup_keys(&optimized, &table_keys) {
            self.error_in_sql(t, &sql::SqlError { pos: None, message });
            self.failed.insert(t.name.clone());
            return;
        }
        let schema: SchemaRef = Arc::new(optimized.schema().as_arrow().clone());
        // The event time carries through when the output keeps the column.
        // The event time carries through from the one stream input when the output keeps it.
        let event_time = if t.window.is_some() || streams != 1 {
            None
        } else {
            tables
                .iter()
                .find(|(_, table)| table.table_key.is_none())
                .and_then(|(_, table)| table.event_time.clone())
                .filter(|f| schema.field_with_name(f).is_ok())
        };
        self.tables.insert(
            t.name.clone(),
            Table {
                schema: schema.clone(),
                event_time,
                table_key: None,
            },
        );
        let kind = match (&t.window, time_field, &t.join) {
            (Some(w), Some(time_field), _) => match resolve::shape(w) {
                Some(shape) => TransformKind::Window {
                    shape,
                    time_field,
                    on_late: resolve::on_late(w.on_late),
                },
                None => {
                    self.error(
                        wpath,
                        "a window needs one of `tumbling`, `hopping` or `session`".into(),
                    );
                    self.failed.insert(t.name.clone());
                    return;
                }
            },
            (_, _, Some(j)) => TransformKind::IntervalJoin { within: j.within.0 },
            _ => TransformKind::Stateless,
        };
        self.nodes.push(PlannedNode {
            name: t.name.clone(),
            inputs: inputs.to_vec(),
            fingerprint: resolve::transform_fingerprint(t, &registered, &schema),
            kind: NodeKind::Transform(TransformPlan {
                kind,
                roles,
                inputs: registered,
                plan: optimized,
                schema,
            }),
        });
    }

    fn is_failed(&self, table: &str) -> bool {
        self.failed.contains(table)
            || table
                .split_once('.')
                .is_some_and(|(m, _)| self.failed.contains(m))
    }

    /// The window's time column and the input schema with `window_start` / `window_end`.
    fn window_input(
        &mut self,
        w: &Window,
        wpath: &str,
        input: &str,
        table: &Table,
    ) -> Option<(String, SchemaRef)> {
        let (field, field_path) = match (&w.time_field, &table.event_time) {
            (Some(f), _) => (f.clone(), format!("{wpath}.time_field")),
            (None, Some(f)) => (f.clone(), wpath.to_string()),
            (None, None) => {
                let timestamps = timestamp_columns(&table.schema);
                self.error(
                    wpath.to_string(),
                    format!(
                        "cannot tell which column places rows of `{input}` in windows: set `time_field` (timestamp columns: {})",
                        one_of(timestamps.iter().map(String::as_str))
                    ),
                );
                return None;
            }
        };
        match table.schema.field_with_name(&field) {
            Ok(f) if matches!(f.data_type(), DataType::Timestamp(_, _)) => {}
            Ok(f) => {
                self.error(
                    field_path,
                    format!("`{field}` is {}, not a timestamp", f.data_type()),
                );
                return None;
            }
            Err(_) => {
                let timestamps = timestamp_columns(&table.schema);
                self.error(
                    field_path,
                    format!(
                        "no column `{field}` in `{input}`{} (timestamp columns: {})",
                        suggestion(&field, timestamps.iter().map(String::as_str)),
                        one_of(timestamps.iter().map(String::as_str))
                    ),
                );
                return None;
            }
        }
        for reserved in [WINDOW_START, WINDOW_END] {
            if table.schema.field_with_name(reserved).is_ok() {
                self.error(
                    wpath.to_string(),
                    format!(
                        "input `{input}` already has a column `{reserved}`, which a window adds; rename it"
                    ),
                );
                return None;
            }
        }
        let mut fields: Vec<Field> = table
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(WINDOW_START, outputs::timestamp_type(), false));
        fields.push(Field::new(WINDOW_END, outputs::timestamp_type(), false));
        Some((field, Arc::new(Schema::new(fields))))
    }

    fn plan_model(&mut self, m: &Model) {
        let path = format!("spec.models[{}]", m.index);
        if self.failed.contains(&m.name) || self.failed.contains(&m.input) {
            self.failed.insert(m.name.clone());
            return;
        }
        let Some(table) = self.tables.get(&m.input).cloned() else {
            // Unknown inputs were reported by the spec checks.
            self.failed.insert(m.name.clone());
            return;
        };
        if table.table_key.is_some() {
            self.error(
                format!("{path}.input"),
                format!(
                    "`{}` is a table; a model learns from a stream of events",
                    m.input
                ),
            );
            self.failed.insert(m.name.clone());
            return;
        }
        let schema = &table.schema;
        let before = self.doc.diagnostics().len();
        let columns = column_names(schema);
        let check_column =
            |planner: &mut Self, column: &str, at: String, want: &str| -> Option<DataType> {
                match schema.field_with_name(column) {
                    Ok(f) => Some(f.data_type().clone()),
                    Err(_) => {
                        planner.error(
                            at,
                            format!(
                                "no column `{column}` in `{}`{} (columns: {}); {want}",
                                m.input,
                                suggestion(column, columns.iter().map(String::as_str)),
                                one_of(columns.iter().map(String::as_str))
                            ),
                        );
                        None
                    }
                }
            };
        if let Some(key) = &m.key
            && let Some(dt) =
                check_column(self, key, format!("{path}.key"), "the key splits the model")
            && !is_key_type(&dt)
        {
            self.error(
                format!("{path}.key"),
                format!("key `{key}` is {dt}; a key must be a string, integer or boolean column"),
            );
        }
        let (features, fpath) = match (&m.regression, &m.clustering) {
            (Some(r), _) => {
                if let Some(dt) = check_column(
                    self,
                    &r.target,
                    format!("{path}.regression.target"),
                    "the target is what the model predicts",
                ) && !dt.is_numeric()
                {
                    self.error(
                        format!("{path}.regression.target"),
                        format!(
                            "target `{}` is {dt}; a regression target must be numeric",
                            r.target
                        ),
                    );
                }
                (&r.features, format!("{path}.regression.features"))
            }
            (None, Some(c)) => (&c.features, format!("{path}.clustering.features")),
            (None, None) => {
                self.failed.insert(m.name.clone());
                return;
            }
        };
        for (i, feature) in features.iter().enumerate() {
            let at = format!("{fpath}[{i}]");
            let Some(dt) = check_column(
                self,
                feature.column(),
                at.clone(),
                "features are input columns",
            ) else {
                continue;
            };
            match feature {
                yaml::Feature::Numeric(name) if !dt.is_numeric() => {
                    let hint = if is_categorical_type(&dt) {
                        format!(
                            "; for a categorical column write `{{name: {name}, one_hot: [...]}}` or `{{name: {name}, hash_buckets: N}}`"
                        )
                    } else {
                        String::new()
                    };
                    self.error(
                        at,
                        format!("feature `{name}` is {dt}, not numeric{hint}"),
                    );
                }
                yaml::Feature::Categorical(c) if !is_categorical_type(&dt) => self.error(
                    at,
                    format!(
                        "categorical feature `{}` is {dt}; one-hot and hashing take string, integer or boolean columns",
                        c.name
                    ),
                ),
                _ => {}
            }
        }
        let reserved = outputs::reserved_columns(m);
        for (i, column) in m.passthrough.iter().enumerate() {
            let at = format!("{path}.passthrough[{i}]");
            if check_column(
                self,
                column,
                at.clone(),
                "passthrough columns are copied from the input",
            )
            .is_some()
                && (reserved.contains(&column.as_str()) || m.key.as_deref() == Some(column))
            {
                self.error(
                    at,
                    format!(
                        "`{column}` is already an output column of the model ({}); remove it",
                        one_of(reserved.iter().copied())
                    ),
                );
            }
        }
        if let Some(key) = &m.key
            && reserved.contains(&key.as_str())
        {
            self.error(
                format!("{path}.key"),
                format!("key `{key}` clashes with an output column of the model; rename it in a transform"),
            );
        }
        if self.doc.diagnostics().len() != before {
            self.failed.insert(m.name.clone());
            return;
        }
        let predictions = outputs::predictions(m, schema);
        let snapshots = outputs::snapshots(m, schema);
        for (suffix, schema) in [("predictions", &predictions), ("snapshots", &snapshots)] {
            self.tables.insert(
                format!("{}.{suffix}", m.name),
                Table {
                    schema: schema.clone(),
                    event_time: Some(EVENT_TIME.to_string()),
                    table_key: None,
                },
            );
        }
        let Some(kind) = resolve::model_kind(m) else {
            // A model with neither kind was reported by the spec checks.
            self.failed.insert(m.name.clone());
            return;
        };
        self.nodes.push(PlannedNode {
            name: m.name.clone(),
            inputs: vec![m.input.clone()],
            fingerprint: resolve::model_fingerprint(m, &predictions, &snapshots),
            kind: NodeKind::Model(ModelPlan {
                input: m.input.clone(),
                input_schema: table.schema.clone(),
                key: m.key.clone(),
                kind,
                passthrough: m.passthrough.clone(),
                snapshot_events: match &m.snapshot_every {
                    None => Some(1000),
                    Some(e) => e.events,
                },
                snapshot_time: m.snapshot_every.as_ref().and_then(|e| e.time).map(|t| t.0),
                metrics_per_key: m.metrics.as_ref().map(|x| x.per_key),
                time_field: table.event_time.clone(),
                predictions,
                snapshots,
            }),
        });
    }

    fn plan_sink(&mut self, s: &Sink) {
        let path = format!("spec.sinks[{}]", s.index);
        if self.is_failed(&s.from) {
            return;
        }
        let Some(table) = self.tables.get(&s.from).cloned() else {
            // Unknown `from` was reported by the spec checks.
            return;
        };
        if let Some(key) = &s.key {
            match table.schema.field_with_name(key) {
                Ok(f) if is_key_type(f.data_type()) => {}
                Ok(f) => self.error(
                    format!("{path}.key"),
                    format!(
                        "key `{key}` is {}; a message key must be a string, integer or boolean column",
                        f.data_type()
                    ),
                ),
                Err(_) => {
                    let columns = column_names(&table.schema);
                    self.error(
                        format!("{path}.key"),
                        format!(
                            "no column `{key}` in `{}`{} (columns: {})",
                            s.from,
                            suggestion(key, columns.iter().map(String::as_str)),
                            one_of(columns.iter().map(String::as_str))
                        ),
                    );
                }
            }
        }
        // The runtime would refuse to encode what Avro cannot hold: say so now, located.
        if let Some(framing) = avro_framing(s.format)
            && let Err(e) =
                formats::avro::AvroCodec::for_arrow(table.schema.clone(), &s.name, framing)
        {
            self.error(
                format!("{path}.format"),
                format!("`{}` cannot be written as {}: {e}", s.from, s.format),
            );
            return;
        }
        self.nodes.push(PlannedNode {
            name: s.name.clone(),
            inputs: vec![s.from.clone()],
            fingerprint: resolve::sink_fingerprint(),
            kind: NodeKind::Sink(SinkPlan {
                from: s.from.clone(),
                topic: s.kafka.topic.clone(),
                properties: s.kafka.properties.clone(),
                format: resolve::format(s.format),
                key: s.key.clone(),
                delivery: resolve::delivery(s.delivery),
                subject: resolve::subject(s),
                schema: table.schema,
                exchange: None,
            }),
        });
    }
}

/// Follows upstream edges from `start` until it comes back; the cycle in reading order.
fn find_cycle(start: Item, upstream: &BTreeMap<Item, Vec<Item>>) -> Option<Vec<Item>> {
    // Depth-first with an explicit stack of (item, next edge index).
    let mut path = vec![start];
    let mut edges = vec![0usize];
    let mut visited = HashSet::new();
    while let Some(&item) = path.last() {
        let i = edges.last().copied().unwrap_or(0);
        let ups = upstream.get(&item).map(Vec::as_slice).unwrap_or(&[]);
        if i >= ups.len() {
            path.pop();
            edges.pop();
            continue;
        }
        if let Some(last) = edges.last_mut() {
            *last += 1;
        }
        let next = ups[i];
        if next == start {
            return Some(path);
        }
        if visited.insert(next) && !path.contains(&next) {
            path.push(next);
            edges.push(0);
        }
    }
    None
}

/// A lookup join must look rows up by the table's key: `JOIN t ON s.x = t.key`. Any other
/// join with a table (a cross join, a join on other columns) pairs each stream row with
/// every table row that matches, so one micro-batch could become batch x table rows.
fn check_lookup_keys(plan: &LogicalPlan, tables: &[(String, String)]) -> Result<(), String> {
    if tables.is_empty() {
        return Ok(());
    }
    let scanned = |p: &LogicalPlan| -> Vec<String> {
        let mut names = Vec::new();
        let _ = p.apply(|n| {
            if let LogicalPlan::TableScan(scan) = n {
                names.push(scan.table_name.to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        names
    };
    let mut problem = None;
    let _ = plan.apply(|node| {
        let LogicalPlan::Join(join) = node else {
            return Ok(TreeNodeRecursion::Continue);
        };
        for (left, side) in [(true, &join.left), (false, &join.right)] {
            for name in scanned(side) {
                let Some((table, key)) = tables.iter().find(|(t, _)| *t == name) else {
                    continue;
                };
                // The equality's expression on the table's side must be the table's key.
                let keyed = join.on.iter().any(|(l, r)| {
                    let own = if left { l } else { r };
                    matches!(own, Expr::Column(c) if c.name == *key)
                });
                if !keyed {
                    problem = Some(format!(
                        "a join with the table `{table}` must look rows up by its key: `JOIN {table} ON <column> = {table}.{key}` (a cross join, or a join on other columns, pairs each event with many table rows)"
                    ));
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    problem.map_or(Ok(()), Err)
}

/// A stateless transform must not aggregate (it would never emit over an unbounded stream);
/// a windowed one must group by its window.
fn check_streaming_shape(plan: &LogicalPlan, windowed: bool) -> Result<(), String> {
    let mut aggregates = 0;
    let mut grouped_by_window = false;
    let mut window_functions = false;
    let mut sorts = false;
    let mut grouping_sets = false;
    let _ = plan.apply(|node| {
        match node {
            LogicalPlan::Aggregate(agg) => {
                aggregates += 1;
                grouping_sets |= agg
                    .group_expr
                    .iter()
                    .any(|e| matches!(e, Expr::GroupingSet(_)));
                grouped_by_window |= agg.group_expr.iter().any(|e| {
                    matches!(e, Expr::Column(c) if c.name == WINDOW_START || c.name == WINDOW_END)
                });
            }
            LogicalPlan::Window(_) => window_functions = true,
            LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => sorts = true,
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if window_functions {
        return Err(
            "window functions (OVER ...) are not supported on streams; use a `window` on the transform"
                .into(),
        );
    }
    if windowed {
        if grouping_sets {
            return Err(
                "GROUPING SETS, CUBE and ROLLUP are not supported in a windowed transform; group by the keys and aggregate further in another transform".into(),
            );
        }
        if aggregates > 1 {
            return Err(
                "a windowed transform aggregates once (its window's GROUP BY); aggregate its output again in another transform".into(),
            );
        }
        if !grouped_by_window {
            return Err(format!(
                "a windowed transform must aggregate with GROUP BY {WINDOW_START}, {WINDOW_END} (and any keys)"
            ));
        }
    } else {
        if aggregates > 0 {
            return Err(
                "an aggregate over an unbounded stream never emits; add a `window` (tumbling, hopping or session) to the transform"
                    .into(),
            );
        }
        if sorts {
            return Err(
                "ORDER BY and LIMIT need a bounded input; add a `window` to the transform".into(),
            );
        }
    }
    Ok(())
}

/// The Avro framing of a format, `None` for JSON.
fn avro_framing(format: spec::model::Format) -> Option<formats::avro::Framing> {
    match format {
        spec::model::Format::Json => None,
        spec::model::Format::Avro => Some(formats::avro::Framing::Plain),
        spec::model::Format::AvroConfluent => {
            Some(formats::avro::Framing::Confluent { schema_id: 0 })
        }
    }
}

fn column_names(schema: &Schema) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

fn timestamp_columns(schema: &Schema) -> Vec<String> {
    schema
        .fields()
        .iter()
        .filter(|f| matches!(f.data_type(), DataType::Timestamp(_, _)))
        .map(|f| f.name().clone())
        .collect()
}

fn is_key_type(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean
    ) || dt.is_integer()
        || matches!(dt, DataType::Dictionary(_, v) if is_key_type(v))
}

fn is_categorical_type(dt: &DataType) -> bool {
    is_key_type(dt)
}

/// Stack of the thread that parses and plans: SQL parsing, DataFusion's planner and the
/// drop of a parsed tree recurse over expressions. The SQL limits bound the depth; this is the
/// second guard, so that no SQL can overflow a stack. Only touched pages cost memory.
pub const PLANNER_STACK_BYTES: usize = 256 * 1024 * 1024;

/// Loads, validates and plans a pipeline file's text, on a thread of its own with a
/// [`PLANNER_STACK_BYTES`] stack (the caller's thread and runtime are not blocked). `env`
/// resolves `${NAME}`; only the names the text mentions are looked up.
pub async fn check(
    file: &str,
    text: &str,
    registry: &SchemaRegistry,
    env: &dyn spec::Env,
) -> (Document, Option<PipelinePlan>) {
    let snapshot = spec::interp::Snapshot::of(text, env);
    let (file, text, registry) = (file.to_string(), text.to_string(), registry.clone());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = file.clone();
    let spawned = std::thread::Builder::new()
        .name("planner".into())
        .stack_size(PLANNER_STACK_BYTES)
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .build()
                .map(|rt| {
                    rt.block_on(async {
                        let mut doc = spec::load(&file, &text, &snapshot);
                        let plan = plan(&mut doc, &registry).await;
                        (doc, plan)
                    })
                });
            let _ = tx.send(result);
        });
    let failure = |message: String| (Document::failed(&name, message), None);
    if let Err(e) = spawned {
        return failure(format!("cannot start the planner thread: {e}"));
    }
    match rx.await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => failure(format!("cannot start the planner runtime: {e}")),
        Err(_) => failure(
            "internal error: the planner thread ended without an answer (please report)".into(),
        ),
    }
}
