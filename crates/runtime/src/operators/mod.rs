//! One file per operator, and [`build`]: the one function that maps a plan node to its
//! operator.
//!
//! | operator | file | state |
//! |---|---|---|
//! | source of a stream | [`source`] | none |
//! | source of a changelog table | [`source`] ([`table`]) | the latest row per key |
//! | stateless SQL, lookup joins with tables | [`sql`] | none (tables arrive on their ports) |
//! | tumbling, hopping and session windows | [`window`] | open windows, stream time |
//! | interval join of two streams | [`interval_join`] | both sides' buffers |
//! | regression and clustering | [`model`] over [`regression`] / [`clustering`] | per key |
//! | sink | [`sink`] | records not yet acknowledged |

pub mod clustering;
pub mod exchange;
pub mod interval_join;
pub mod model;
pub mod regression;
pub mod sink;
pub mod source;
pub mod sql;
pub mod table;
pub mod window;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use connectors::{Connect, SourceConfig, Start};
use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::Transformed;
use datafusion::datasource::provider_as_source;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::{ExecutionPlan, collect};
use planner::sql::InputTable;
use planner::{
    InputRole, ModelKind, NodeKind, OnError, PipelinePlan, PlannedNode, StartFrom, TransformKind,
};

use crate::config::RunConfig;
use crate::error::{RuntimeError, internal};
use crate::operator::Operator;
use crate::slot::{Slot, SlotTable};
use crate::source::SourceTask;
use crate::task::Node;

/// What an operator needs from the graph around it.
pub(crate) struct Surroundings<K> {
    /// Partitions of the source its rows come from (`[-1]` after a window or a model).
    pub partitions: Vec<i32>,
    /// `max_out_of_order` of that source.
    pub allowed_ms: i64,
    /// The schema of each input, in input order.
    pub inputs: Vec<datafusion::arrow::datatypes::SchemaRef>,
    /// The Kafka (or in-memory) sink of a sink node.
    pub sink: Option<K>,
    /// The schema registry, for `avro_confluent` sinks.
    pub registry: Option<Arc<connectors::registry::Registry>>,
    /// An exchange sink's: the partitions of its topic, and the channels it writes.
    pub exchange: (usize, Vec<i32>),
    /// Its inputs are read back from repartitions (`partitions` are their channels).
    pub exchanged: bool,
}

/// The operator of plan node `node`.
async fn build<K: connectors::Sink>(
    node: &PlannedNode,
    around: Surroundings<K>,
) -> Result<Box<dyn Operator>, RuntimeError> {
    Ok(match &node.kind {
        NodeKind::Source(s) => match &s.table_key {
            None if s.exchange.is_some() => Box::new(exchange::ExchangeSource::default()),
            None => Box::new(source::StreamSource),
            Some(key) => Box::new(source::TableSource::new(s.schema.clone(), key)?),
        },
        NodeKind::Transform(t) => {
            let (slots, plan, task) = physical(&t.plan, &t.inputs).await?;
            match &t.kind {
                TransformKind::Stateless => {
                    Box::new(sql::Stateless::new(slots, plan, task, t.roles.clone()))
                }
                TransformKind::Window {
                    shape,
                    time_field,
                    on_late,
                } => Box::new(window::Window::new(
                    &node.name,
                    *shape,
                    time_field,
                    *on_late,
                    around.allowed_ms,
                    t.inputs[0].arrow.clone(),
                    slots
                        .into_iter()
                        .next()
                        .ok_or_else(|| internal("no input"))?,
                    plan,
                    &around.partitions,
                    task,
                )?),
                TransformKind::IntervalJoin { within } => {
                    Box::new(interval_join::IntervalJoin::new(
                        slots,
                        plan,
                        task,
                        &t.inputs,
                        &t.roles,
                        within.as_millis() as i64 + around.allowed_ms,
                        around.exchanged.then_some(around.partitions.as_slice()),
                    )?)
                }
            }
        }
        NodeKind::Model(m) => {
            let input = around
                .inputs
                .first()
                .cloned()
                .ok_or_else(|| internal("model input schema"))?;
            match &m.kind {
                ModelKind::Regression(r) => Box::new(model::KeyedModel::new(
                    m,
                    &input,
                    regression::Regression::new(r, &input)?,
                )?),
                ModelKind::Clustering(c) => Box::new(model::KeyedModel::new(
                    m,
                    &input,
                    clustering::Clustering::new(c, &input)?,
                )?),
            }
        }
        NodeKind::Sink(s) if s.exchange.is_some() => Box::new(exchange::ExchangeSink::new(
            &node.name,
            s,
            around.sink.ok_or_else(|| internal("sink not connected"))?,
            around.exchange.0,
            &around.exchange.1,
        )?),
        NodeKind::Sink(s) => Box::new(sink::SinkOp::new(
            &node.name,
            s,
            around.sink.ok_or_else(|| internal("sink not connected"))?,
            around.registry.as_deref(),
        )?),
    })
}

fn start_of(s: &StartFrom) -> Start {
    match s {
        StartFrom::Committed => Start::Committed,
        StartFrom::Earliest => Start::Earliest,
        StartFrom::Latest => Start::Latest,
        StartFrom::Timestamp(ms) => Start::Timestamp(*ms),
    }
}

/// Whether a node's rows keep the partition of the rows it read (false once rows of every
/// partition mix: after a window or a model).
fn keeps_partitions(kind: &NodeKind) -> bool {
    match kind {
        NodeKind::Source(_) => true,
        NodeKind::Transform(t) => !matches!(t.kind, TransformKind::Window { .. }),
        NodeKind::Model(_) | NodeKind::Sink(_) => false,
    }
}

/// The output port of node `from` that input `j` of `node` reads: a lookup join reads a
/// table's contents (port 1 of its source), every other reader the rows (`port`).
fn input_port(node: &PlannedNode, j: usize, port: u8) -> u8 {
    match &node.kind {
        NodeKind::Transform(t) if matches!(t.roles.get(j), Some(InputRole::Table { .. })) => 1,
        _ => port,
    }
}

/// Where the sources of a task resume.
pub(crate) enum Resume<'a> {
    /// Where they say (no state is kept).
    Fresh,
    /// At a checkpoint's offsets, or where they say when there is none; every partition
    /// assigned by the run.
    Checkpoint(Option<&'a crate::checkpoint::Checkpoint>),
    /// Stream sources at their groups' committed offsets (committed with the state in
    /// Kafka), else where they say; tables where they say.
    Group,
}

/// Builds the graph of `plan`: every node's operator and edges, and a source task per
/// source, connected through `connect`, its sources starting as `resume` says; `only`:
/// the partitions of stream sources that this task reads (all when `None`).
pub(crate) async fn graph<C: Connect>(
    plan: &PipelinePlan,
    connect: &C,
    config: &RunConfig,
    headers: &[(String, String)],
    resume: &Resume<'_>,
    only: Option<&[i32]>,
) -> Result<(Vec<Node>, Vec<SourceTask<C>>), RuntimeError> {
    // Output ports by table name: a model has two.
    let ports: HashMap<String, (usize, u8)> = plan
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| match &n.kind {
            NodeKind::Model(_) => vec![
                (format!("{}.predictions", n.name), (i, 0)),
                (format!("{}.snapshots", n.name), (i, 1)),
            ],
            _ => vec![(n.name.clone(), (i, 0))],
        })
        .collect();
    let mut nodes: Vec<Node> = Vec::with_capacity(plan.nodes.len());
    let mut sources: Vec<SourceTask<C>> = Vec::new();
    // The source each node's rows come from (for partitions and dead letters), or None once
    // rows of every partition mix.
    let mut origin: Vec<Option<usize>> = Vec::with_capacity(plan.nodes.len());
    for (i, n) in plan.nodes.iter().enumerate() {
        let mut inputs = Vec::new();
        for (j, name) in n.inputs.iter().enumerate() {
            let &(from, port) = ports
                .get(name)
                .ok_or_else(|| internal(format!("input `{name}` not found")))?;
            inputs.push((from, input_port(n, j, port)));
        }
        let upstream = inputs.first().and_then(|(x, _)| origin[*x]);
        let mut around = Surroundings {
            partitions: vec![-1],
            allowed_ms: 0,
            inputs: inputs
                .iter()
                .map(|(x, _)| plan.nodes[*x].output_schema())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| internal("input schema"))?,
            sink: None,
            registry: config.registry.clone(),
            exchange: (0, Vec::new()),
            exchanged: inputs.iter().any(|(x, _)| {
                matches!(&plan.nodes[*x].kind, NodeKind::Source(s) if s.exchange.is_some())
            }),
        };
        if let Some(s) = upstream {
            around.partitions = sources[s].channels();
            around.allowed_ms = sources[s].allowed_ms;
        }
        let root = match &n.kind {
            NodeKind::Source(s) => {
                let start = match resume {
                    Resume::Fresh => start_of(&s.start),
                    Resume::Group if s.table_key.is_none() => {
                        Start::Resume(Box::new(start_of(&s.start)))
                    }
                    Resume::Group => start_of(&s.start),
                    Resume::Checkpoint(restored) => {
                        match restored.and_then(|c| {
                            c.sources
                                .get(&n.name)
                                .filter(|p| p.topic == s.topic)
                                .map(|p| p.next_offsets.clone())
                        }) {
                            Some(next) => Start::Offsets(next),
                            // A checkpointed run without a checkpoint owns every partition
                            // from its start.
                            None if s.start == StartFrom::Committed => {
                                Start::Offsets(BTreeMap::new())
                            }
                            None => start_of(&s.start),
                        }
                    }
                };
                let conn = connect.source(&SourceConfig {
                    topic: s.topic.clone(),
                    group: s.group.clone(),
                    start,
                    properties: s.properties.clone(),
                    max_batch: config.max_batch,
                    max_wait: config.max_wait,
                    linger: config.latency_target,
                    // Every task reads a whole table.
                    exchange: s.exchange.is_some(),
                    only: match s.table_key {
                        Some(_) => None,
                        None => only.map(<[i32]>::to_vec),
                    },
                })?;
                let dead_letter = match s.on_error {
                    OnError::DeadLetter => Some(connect.sink(
                        &s.dead_letter_topic,
                        &BTreeMap::new(),
                        headers.to_vec(),
                    )?),
                    _ => None,
                };
                let mut task =
                    SourceTask::new(i, &n.name, s, conn, dead_letter, config.registry.as_ref())?;
                if s.exchange.is_some() {
                    let n = connect.partitions(&s.topic, &s.properties)?.len();
                    task.progress = Some(exchange::Progress::new(n));
                }
                sources.push(task);
                sources.len() - 1
            }
            NodeKind::Sink(s) => {
                around.sink = Some(connect.sink(&s.topic, &s.properties, headers.to_vec())?);
                if s.exchange.is_some() {
                    let n = connect.partitions(&s.topic, &s.properties)?.len();
                    let channels = match (around.partitions.as_slice(), only) {
                        ([-1], Some(read)) => read.to_vec(),
                        ([-1], None) => (0..n as i32).collect(),
                        (read, _) => read.to_vec(),
                    };
                    around.exchange = (n, channels);
                }
                upstream.unwrap_or(0)
            }
            _ => upstream.unwrap_or(0),
        };
        origin.push(match &n.kind {
            NodeKind::Source(_) => Some(root),
            kind if keeps_partitions(kind) => upstream,
            _ => None,
        });
        let op = build(n, around).await?;
        for (j, (from, port)) in inputs.iter().enumerate() {
            nodes[*from].readers.push((*port, i, j));
        }
        nodes.push(Node {
            name: n.name.clone(),
            fingerprint: n.fingerprint,
            op,
            readers: Vec::new(),
            root,
        });
    }
    Ok((nodes, sources))
}

/// The operator of node `name` of `plan` alone, for tests and benchmarks that drive one
/// operator: its rows come from `partitions` with `allowed_ms` of disorder. Sinks need the
/// runner (they are connected).
pub async fn operator(
    plan: &PipelinePlan,
    name: &str,
    partitions: &[i32],
    allowed_ms: i64,
) -> Result<Box<dyn Operator>, RuntimeError> {
    let node = plan
        .nodes
        .iter()
        .find(|n| n.name == name)
        .ok_or_else(|| internal(format!("no node `{name}`")))?;
    let inputs = node
        .inputs
        .iter()
        .map(|i| {
            if let Some(n) = plan.nodes.iter().find(|n| &n.name == i) {
                return n
                    .output_schema()
                    .ok_or_else(|| internal(format!("no input `{i}`")));
            }
            let (base, port) = match i.split_once('.') {
                Some((m, "snapshots")) => (m, 1),
                Some((m, _)) => (m, 0),
                None => (i.as_str(), 0),
            };
            plan.nodes
                .iter()
                .find(|n| n.name == base)
                .and_then(|n| match (&n.kind, port) {
                    (NodeKind::Model(m), 1) => Some(m.snapshots.clone()),
                    _ => n.output_schema(),
                })
                .ok_or_else(|| internal(format!("no input `{i}`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let around: Surroundings<connectors::memory::MemorySink> = Surroundings {
        partitions: partitions.to_vec(),
        allowed_ms,
        inputs,
        sink: None,
        registry: None,
        exchange: (0, Vec::new()),
        exchanged: false,
    };
    build(node, around).await
}

/// The physical plan of a transform's logical plan, with each input table read from a slot
/// the operator fills before each execution. The SQL is not parsed or planned again: the
/// scans of the planner's optimized plan are pointed at the slots.
async fn physical(
    logical: &LogicalPlan,
    inputs: &[InputTable],
) -> Result<(Vec<Slot>, Arc<dyn ExecutionPlan>, Arc<TaskContext>), RuntimeError> {
    let slots: Vec<Slot> = inputs.iter().map(|_| Slot::default()).collect();
    let rewritten = logical
        .clone()
        .transform_up_with_subqueries(|node| {
            let LogicalPlan::TableScan(mut scan) = node else {
                return Ok(Transformed::no(node));
            };
            let found = inputs.iter().position(|t| {
                scan.table_name.table() == t.table
                    && scan.table_name.schema() == t.schema.as_deref()
            });
            let Some(i) = found else {
                return Err(datafusion::error::DataFusionError::Internal(format!(
                    "the plan scans `{}`, which is not an input",
                    scan.table_name
                )));
            };
            let provider: Arc<dyn TableProvider> =
                Arc::new(SlotTable::new(inputs[i].arrow.clone(), slots[i].clone()));
            scan.source = provider_as_source(provider);
            Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
        })
        .map_err(internal)?
        .data;
    let state = planner::sql::session().state();
    let plan = state
        .create_physical_plan(&rewritten)
        .await
        .map_err(internal)?;
    Ok((slots, plan, Arc::new(TaskContext::from(&state))))
}

/// Executes `plan` once, reset first: operators such as a hash join keep state between
/// executions (its build side), and each micro-batch must run afresh.
pub(crate) async fn run(
    plan: &Arc<dyn ExecutionPlan>,
    task: &Arc<TaskContext>,
) -> Result<Vec<RecordBatch>, RuntimeError> {
    let plan = reset_plan_states(plan.clone()).map_err(internal)?;
    // The plan was checked by the planner: what fails now is the SQL on this data.
    Ok(collect(plan, task.clone())
        .await
        .map_err(RuntimeError::Sql)?
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .collect())
}

/// A stateful transform's state in a checkpoint (rows as Arrow IPC). One enum for windows
/// and joins, as checkpoints have always written it.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) enum SavedTransform {
    Window {
        stream_time: Vec<(i32, Option<i64>)>,
        #[serde(with = "serde_bytes")]
        rows: Vec<u8>,
    },
    IntervalJoin {
        stream_time: [Option<i64>; 2],
        /// Per side, each channel's stream time (inputs read back from repartitions).
        #[serde(default)]
        channels: [Vec<(i32, Option<i64>)>; 2],
        #[serde(with = "serde_bytes")]
        left: Vec<u8>,
        #[serde(with = "serde_bytes")]
        right: Vec<u8>,
    },
}
