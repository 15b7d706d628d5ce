//! The runtime: runs a planned pipeline continuously over Kafka.
//!
//! One loop per pipeline. Each turn reads a micro-batch from a source (bounded by count and
//! time), decodes it a batch at a time, applies the source's `on_error` policy record by
//! record, splits the rows by Kafka partition (keeping offset order), and pushes each
//! partition's rows through the graph: stateless transforms run their DataFusion physical
//! plan (planned once) over the batch; windowed transforms fold rows into their window
//! operator and emit closed windows; sinks encode rows and write them. At the end of the turn
//! sinks and dead letters are flushed (acknowledged by Kafka) and only then are source
//! offsets committed: at-least-once.
//!
//! The end of a turn is the checkpoint barrier: no record is in flight between operators.
//! With a checkpoint directory, the runner writes a [`checkpoint::Checkpoint`] there every
//! `checkpoint_interval` and when it stops (the state of every window, join buffer, table and
//! model, with the source offsets it corresponds to), and then commits those offsets to the
//! group; on start it resumes from the checkpoint. A run that is killed between checkpoints
//! replays from the last one: its outputs since then may be written twice, never lost.
//! Checkpointed runs read every partition of their topics (one instance per pipeline).
//!
//! Without a checkpoint directory, pipelines with windows commit offsets only when their
//! windows are flushed (the end of a bounded run), so that a restart replays the rows of
//! open windows; other pipelines commit after every turn (a restart loses join buffers and
//! model state, which is what checkpoints are for).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use connectors::{
    Connect, Kafka, OutRecord, RawBatch, Sink as _, Source as _, SourceConfig, Start,
};
use datafusion::arrow::array::{Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::DataType;
use formats::avro::{AvroCodec, Framing};
use formats::json::{JsonDecoder, encode_rows};
use planner::{NodeKind, PipelinePlan};
use spec::model::{Delivery, Format, OnError, OnLate, StartFrom};

use crate::config::{RunConfig, Stats, Summary};
use crate::error::internal;
pub use crate::error::{Blame, RuntimeError};
use crate::table::TableState;
use crate::transform::TransformOp;
use crate::{checkpoint, cluster, metrics, model};

enum Op<K> {
    Transform {
        op: TransformOp,
        on_late: OnLate,
        /// Index of the source whose dead-letter topic takes late rows.
        root: usize,
        /// Stream or table, per input.
        roles: Vec<planner::InputRole>,
    },
    Sink {
        sink: K,
        encoder: Encoder,
        key: Option<usize>,
        buffer: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    },
    /// A source: its rows enter the graph here.
    Source,
    /// A regression model: port 0 carries predictions, port 1 snapshots.
    Model(Box<model::RegressionOp>),
    /// A clustering model, with the same ports.
    Clustering(Box<cluster::ClusteringOp>),
    Skipped,
}

/// How a source's messages are decoded.
enum Decoder {
    Json(JsonDecoder),
    Avro(AvroCodec),
}

impl Decoder {
    fn decode(&mut self, messages: &[&[u8]]) -> Result<formats::Decoded, RuntimeError> {
        match self {
            Decoder::Json(d) => d.decode(messages),
            Decoder::Avro(d) => d.decode(messages),
        }
        .map_err(internal)
    }
}

/// How a sink's rows are encoded.
enum Encoder {
    Json,
    Avro(AvroCodec),
}

impl Encoder {
    fn encode(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>, RuntimeError> {
        match self {
            Encoder::Json => encode_rows(batch),
            Encoder::Avro(c) => c.encode_rows(batch),
        }
        .map_err(internal)
    }
}

fn framing(format: Format) -> Option<Framing> {
    match format {
        Format::Json => None,
        Format::Avro => Some(Framing::Plain),
        // No schema registry yet: the id written is 0 and ids read are not checked.
        Format::AvroConfluent => Some(Framing::Confluent { schema_id: 0 }),
    }
}

struct Node<K> {
    name: String,
    /// Fingerprint of its definition: checkpointed state is restored only into the same.
    fingerprint: u64,
    op: Op<K>,
    /// Nodes this one reads, in the order of its inputs.
    inputs: Vec<usize>,
    /// Nodes reading this one, with the output port they read (models have two).
    readers: Vec<(usize, u8)>,
}

struct SourceRt<S, K> {
    node: usize,
    name: String,
    topic: String,
    /// Next offset to read per partition, over the whole run (restored ones included).
    position: BTreeMap<i32, i64>,
    /// Column of the decoded rows holding the event time, if the source declares one.
    time_col: Option<usize>,
    /// Event times (ms) of the rows of the current micro-batch, for the latency histogram.
    times: Vec<i64>,
    kafka: S,
    decoder: Decoder,
    on_error: OnError,
    dead_letter: Option<K>,
    last_seen: HashMap<i32, Instant>,
    idle_timeout: Option<Duration>,
}

/// A pending dead letter: original bytes and headers.
type DeadLetter = (Vec<u8>, connectors::RecordHeaders);

/// A pipeline ready to run.
pub struct Runner<C: Connect = Kafka> {
    pipeline: String,
    nodes: Vec<Node<C::Sink>>,
    sources: Vec<SourceRt<C::Source, C::Sink>>,
    config: RunConfig,
    stats: Arc<Stats>,
    dead_letters: Vec<Vec<DeadLetter>>,
    /// Changelog tables, by source node.
    tables: HashMap<usize, TableState>,
    windowed: bool,
    checkpoints: Option<checkpoint::Store>,
    /// Measured here, published to `stats` at most once a second.
    detail: metrics::Detail,
    last_publish: Option<Instant>,
    summary: Summary,
}

impl<C: Connect> std::fmt::Debug for Runner<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("pipeline", &self.pipeline)
            .finish()
    }
}

fn start_of(s: &StartFrom) -> Result<Start, RuntimeError> {
    Ok(match s {
        StartFrom::Committed => Start::Committed,
        StartFrom::Earliest => Start::Earliest,
        StartFrom::Latest => Start::Latest,
        StartFrom::Timestamp(t) => {
            let ms = chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| RuntimeError::Unsupported(format!("start timestamp `{t}`: {e}")))?
                .timestamp_millis();
            Start::Timestamp(ms)
        }
    })
}

impl Runner<Kafka> {
    /// Connects every source and sink of `plan` to Kafka (`config.bootstrap`) and plans its
    /// transforms for execution.
    pub async fn new(
        plan: &PipelinePlan,
        config: RunConfig,
        stats: Arc<Stats>,
    ) -> Result<Self, RuntimeError> {
        let kafka = Kafka {
            bootstrap: config.bootstrap.clone(),
        };
        Self::connect(plan, config, stats, kafka).await
    }
}

impl<C: Connect> Runner<C> {
    /// Connects every source and sink of `plan` through `connect` (Kafka, or the in-memory
    /// broker) and plans its transforms for execution.
    pub async fn connect(
        plan: &PipelinePlan,
        config: RunConfig,
        stats: Arc<Stats>,
        connect: C,
    ) -> Result<Self, RuntimeError> {
        for n in &plan.nodes {
            if let NodeKind::Sink { spec, .. } = &n.kind
                && spec.delivery == Delivery::ExactlyOnce
            {
                return Err(RuntimeError::Unsupported(format!(
                    "sink `{}`: `delivery: exactly_once` needs transactional sinks, which are not built yet; use `at_least_once`",
                    spec.name
                )));
            }
        }
        let mut summary = Summary::default();
        let checkpoints = config.checkpoint_dir.as_ref().map(checkpoint::Store::new);
        let restored = match &checkpoints {
            Some(store) => store.load()?,
            None => None,
        };
        if let Some(c) = &restored
            && c.pipeline != plan.name
        {
            return Err(RuntimeError::Checkpoint(format!(
                "the checkpoint in {} belongs to pipeline `{}`, not `{}`",
                config
                    .checkpoint_dir
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
                c.pipeline,
                plan.name
            )));
        }
        let index: HashMap<String, (usize, u8)> = plan
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| match &n.kind {
                NodeKind::Model { .. } => vec![
                    (format!("{}.predictions", n.name), (i, 0)),
                    (format!("{}.snapshots", n.name), (i, 1)),
                ],
                _ => vec![(n.name.clone(), (i, 0))],
            })
            .collect();
        let headers = vec![
            ("pipeline".to_string(), plan.name.clone()),
            ("pipeline-version".to_string(), config.version.clone()),
        ];
        let mut nodes: Vec<Node<C::Sink>> = Vec::with_capacity(plan.nodes.len());
        let mut sources = Vec::new();
        // The source each node's rows come from (for partitions and late dead letters), or
        // None after a window (rows then come from all partitions together).
        let mut origin: Vec<Option<usize>> = Vec::with_capacity(plan.nodes.len());
        let mut source_of_node: HashMap<usize, usize> = HashMap::new();
        for (i, n) in plan.nodes.iter().enumerate() {
            let ports: Vec<(usize, u8)> = n
                .inputs
                .iter()
                .filter_map(|x| index.get(x).copied())
                .collect();
            let inputs: Vec<usize> = ports.iter().map(|(x, _)| *x).collect();
            let skipped_input = inputs.iter().any(|x| matches!(nodes[*x].op, Op::Skipped));
            let op = match &n.kind {
                NodeKind::Source {
                    spec,
                    schema,
                    avro_json,
                } => {
                    let decoder = match framing(spec.format) {
                        None => Decoder::Json(JsonDecoder::new(schema.clone()).map_err(internal)?),
                        Some(f) => Decoder::Avro(
                            AvroCodec::new(avro_json, schema.clone(), f).map_err(|e| {
                                RuntimeError::Unsupported(format!("source `{}`: {e}", spec.name))
                            })?,
                        ),
                    };
                    // A checkpointed run resumes where its checkpoint says, and owns every
                    // partition (its state covers them all).
                    let resume = restored.as_ref().and_then(|c| {
                        c.sources
                            .get(&spec.name)
                            .filter(|p| p.topic == spec.kafka.topic)
                            .map(|p| p.next_offsets.clone())
                    });
                    let start = match (&resume, &checkpoints, &spec.kafka.start_from) {
                        (Some(next), _, _) => Start::Offsets(next.clone()),
                        (None, Some(_), StartFrom::Committed) => Start::Offsets(BTreeMap::new()),
                        (None, _, s) => start_of(s)?,
                    };
                    let kafka = connect.source(&SourceConfig {
                        topic: spec.kafka.topic.clone(),
                        group: spec
                            .kafka
                            .group
                            .clone()
                            .unwrap_or_else(|| plan.name.clone()),
                        start,
                        properties: spec.kafka.properties.clone(),
                        max_batch: config.max_batch,
                        max_wait: config.max_wait,
                    })?;
                    let dead_letter = match spec.on_error {
                        OnError::DeadLetter => Some(connect.sink(
                            &dead_letter_topic(&plan.name, spec),
                            &BTreeMap::new(),
                            headers.clone(),
                        )?),
                        _ => None,
                    };
                    source_of_node.insert(i, sources.len());
                    sources.push(SourceRt {
                        node: i,
                        name: spec.name.clone(),
                        topic: spec.kafka.topic.clone(),
                        // Where every partition starts, even one that stays empty.
                        position: kafka.start_offsets().clone(),
                        time_col: spec
                            .event_time
                            .as_ref()
                            .and_then(|e| e.field.as_deref())
                            .and_then(|f| schema.index_of(f).ok()),
                        times: Vec::new(),
                        kafka,
                        decoder,
                        on_error: spec.on_error,
                        dead_letter,
                        last_seen: HashMap::new(),
                        idle_timeout: spec
                            .event_time
                            .as_ref()
                            .and_then(|e| e.idle_timeout)
                            .map(|d| d.0),
                    });
                    origin.push(Some(sources.len() - 1));
                    Op::Source
                }
                _ if skipped_input => {
                    summary.warnings.push(format!(
                        "`{}` is skipped: it reads the output of a skipped node",
                        n.name
                    ));
                    origin.push(None);
                    Op::Skipped
                }
                NodeKind::Transform {
                    spec,
                    time_field,
                    inputs: tables,
                    roles,
                    ..
                } => {
                    let from = inputs
                        .first()
                        .copied()
                        .ok_or_else(|| internal("input not found"))?;
                    let upstream = origin[from];
                    origin.push(if spec.window.is_some() {
                        None
                    } else {
                        upstream
                    });
                    // Windows track stream time per partition of the source their rows come
                    // from; after another window, rows come from all partitions together.
                    let (partitions, allowed, root) = match upstream {
                        Some(s) => {
                            let src = &sources[s];
                            let allowed = plan
                                .nodes
                                .get(src.node)
                                .and_then(|n| match &n.kind {
                                    NodeKind::Source { spec, .. } => spec
                                        .event_time
                                        .as_ref()
                                        .map(|e| e.max_out_of_order.as_millis() as i64),
                                    _ => None,
                                })
                                .unwrap_or(0);
                            (src.kafka.partitions().to_vec(), allowed, s)
                        }
                        None => (vec![-1], 0, 0),
                    };
                    // Late rows asked to be dead-lettered need the source's dead-letter
                    // topic even when its own bad records are failed or skipped.
                    if spec
                        .window
                        .as_ref()
                        .is_some_and(|w| w.on_late == OnLate::DeadLetter)
                        && let Some(src) = sources.get_mut(root)
                        && src.dead_letter.is_none()
                        && let NodeKind::Source { spec: source, .. } = &plan.nodes[src.node].kind
                    {
                        src.dead_letter = Some(connect.sink(
                            &dead_letter_topic(&plan.name, source),
                            &BTreeMap::new(),
                            headers.clone(),
                        )?);
                    }
                    let op = TransformOp::build(
                        spec,
                        time_field.as_deref(),
                        tables,
                        roles,
                        &partitions,
                        allowed,
                    )
                    .await?;
                    Op::Transform {
                        op,
                        on_late: spec.window.as_ref().map(|w| w.on_late).unwrap_or_default(),
                        root,
                        roles: roles.clone(),
                    }
                }
                NodeKind::Model {
                    spec,
                    time_field,
                    predictions,
                    snapshots,
                } => {
                    let from = inputs
                        .first()
                        .copied()
                        .ok_or_else(|| internal("input not found"))?;
                    let input = plan.nodes[from]
                        .output_schema()
                        .ok_or_else(|| internal("model input schema"))?;
                    let (time, p, s) = (
                        time_field.as_deref(),
                        predictions.clone(),
                        snapshots.clone(),
                    );
                    origin.push(None);
                    if spec.regression.is_some() {
                        Op::Model(Box::new(model::RegressionOp::new(
                            spec, &input, time, p, s,
                        )?))
                    } else {
                        Op::Clustering(Box::new(cluster::ClusteringOp::new(
                            spec, &input, time, p, s,
                        )?))
                    }
                }
                NodeKind::Sink { spec, schema } => {
                    let encoder = match framing(spec.format) {
                        None => Encoder::Json,
                        Some(f) => Encoder::Avro(
                            AvroCodec::for_arrow(schema.clone(), &spec.name, f).map_err(|e| {
                                RuntimeError::Unsupported(format!("sink `{}`: {e}", spec.name))
                            })?,
                        ),
                    };
                    origin.push(None);
                    Op::Sink {
                        encoder,
                        sink: connect.sink(
                            &spec.kafka.topic,
                            &spec.kafka.properties,
                            headers.clone(),
                        )?,
                        key: spec.key.as_ref().and_then(|k| schema.index_of(k).ok()),
                        buffer: Vec::new(),
                    }
                }
            };
            for (x, port) in &ports {
                nodes[*x].readers.push((i, *port));
            }
            nodes.push(Node {
                name: n.name.clone(),
                fingerprint: fingerprint_of(n),
                op,
                inputs: inputs.clone(),
                readers: Vec::new(),
            });
        }
        let windowed = nodes.iter_mut().any(|n| match &mut n.op {
            Op::Transform { op, .. } => op.window().is_some(),
            _ => false,
        });
        stats.watermark_ms.store(i64::MIN, Ordering::Relaxed);
        let dead_letters = sources.iter().map(|_| Vec::new()).collect();
        let mut tables = HashMap::new();
        for n in plan.nodes.iter().enumerate() {
            if let (
                i,
                planner::PlannedNode {
                    kind: NodeKind::Source { spec, schema, .. },
                    ..
                },
            ) = n
                && let Some(t) = &spec.table
            {
                tables.insert(i, TableState::new(schema.clone(), &t.key)?);
            }
        }
        let mut detail = metrics::Detail::default();
        for n in &plan.nodes {
            match &n.kind {
                NodeKind::Source { spec, .. } => {
                    detail.sources.insert(
                        n.name.clone(),
                        metrics::SourceMetrics {
                            topic: spec.kafka.topic.clone(),
                            ..Default::default()
                        },
                    );
                }
                NodeKind::Sink { spec, .. } => {
                    detail.sinks.insert(
                        n.name.clone(),
                        metrics::SinkMetrics {
                            topic: spec.kafka.topic.clone(),
                            ..Default::default()
                        },
                    );
                }
                NodeKind::Transform { spec, .. } if spec.window.is_some() => {
                    detail.late.insert(n.name.clone(), 0);
                }
                _ => {}
            }
        }
        let mut runner = Self {
            pipeline: plan.name.clone(),
            nodes,
            sources,
            config,
            stats,
            dead_letters,
            tables,
            windowed,
            checkpoints,
            detail,
            last_publish: None,
            summary,
        };
        if let Some(c) = restored {
            runner.restore(&c)?;
        }
        runner.publish(true);
        Ok(runner)
    }

    /// Loads each operator's checkpointed state into the operator of the same name and
    /// definition; operators that changed start empty, with a warning.
    fn restore(&mut self, c: &checkpoint::Checkpoint) -> Result<(), RuntimeError> {
        for i in 0..self.nodes.len() {
            let Some(saved) = c.operators.get(&self.nodes[i].name) else {
                continue;
            };
            if saved.fingerprint != self.nodes[i].fingerprint {
                self.summary.warnings.push(format!(
                    "`{}` starts with empty state: its definition changed since the checkpoint",
                    self.nodes[i].name
                ));
                continue;
            }
            if let Some(table) = self.tables.get_mut(&i) {
                table.load(&saved.state)?;
                continue;
            }
            match &mut self.nodes[i].op {
                Op::Transform { op, .. } => op.load(&saved.state)?,
                Op::Model(op) => op.load(&saved.state)?,
                Op::Clustering(op) => op.load(&saved.state)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Writes a checkpoint (at a barrier: call only with every output flushed), then commits
    /// its offsets to the consumer groups (for lag monitoring and for runs without it).
    fn checkpoint(&mut self) -> Result<(), RuntimeError> {
        let Some(store) = self.checkpoints.clone() else {
            return Ok(());
        };
        if self.config.discard.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut operators = BTreeMap::new();
        for i in 0..self.nodes.len() {
            let state = if let Some(table) = self.tables.get_mut(&i) {
                Some(table.save()?)
            } else {
                match &mut self.nodes[i].op {
                    Op::Transform { op, .. } => op.save()?,
                    Op::Model(op) => Some(op.save()?),
                    Op::Clustering(op) => Some(op.save()?),
                    _ => None,
                }
            };
            if let Some(state) = state {
                operators.insert(
                    self.nodes[i].name.clone(),
                    checkpoint::OperatorState {
                        fingerprint: self.nodes[i].fingerprint,
                        state,
                    },
                );
            }
        }
        let sources = self
            .sources
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    checkpoint::SourcePosition {
                        topic: s.topic.clone(),
                        next_offsets: s.position.clone(),
                    },
                )
            })
            .collect();
        store.save(&checkpoint::Checkpoint {
            format: checkpoint::FORMAT,
            pipeline: self.pipeline.clone(),
            version: self.config.version.clone(),
            taken_at_ms: chrono::Utc::now().timestamp_millis(),
            sources,
            operators,
        })?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        for s in &self.sources {
            s.kafka.commit(&s.position)?;
        }
        Ok(())
    }

    /// Runs until a stop condition of the config, or until `stop` resolves.
    pub async fn run(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<Summary, RuntimeError> {
        tokio::pin!(stop);
        let mut raw = RawBatch::default();
        let mut last_input = Instant::now();
        let mut pending_commits: Vec<BTreeMap<i32, i64>> =
            vec![BTreeMap::new(); self.sources.len()];
        let mut last_lag = Instant::now();
        let mut last_checkpoint = Instant::now();
        let started = Instant::now();
        loop {
            let mut got_any = false;
            for s in 0..self.sources.len() {
                let read = self.sources[s].kafka.next_batch(&mut raw);
                let result = tokio::select! {
                    r = read => r,
                    () = &mut stop => return self.finish(false, &pending_commits).await,
                };
                result?;
                if raw.transient_errors > 0 {
                    self.stats
                        .kafka_errors
                        .fetch_add(raw.transient_errors, Ordering::Relaxed);
                    if let Ok(mut last) = self.stats.last_kafka_error.lock() {
                        last.clone_from(&raw.last_transient_error);
                    }
                }
                if raw.is_empty() {
                    continue;
                }
                got_any = true;
                let received = Instant::now();
                self.process_raw(s, &raw).await?;
                let next = raw.next_offsets();
                self.sources[s]
                    .position
                    .extend(next.iter().map(|(p, o)| (*p, *o)));
                pending_commits[s].extend(next);
                self.flush_outputs().await?;
                self.observe_latency(s, received, raw.len());
                if !self.windowed && self.checkpoints.is_none() {
                    self.sources[s].kafka.commit(&pending_commits[s])?;
                    pending_commits[s].clear();
                }
            }
            if got_any {
                last_input = Instant::now();
            }
            self.publish(false);
            if self.checkpoints.is_some()
                && last_checkpoint.elapsed() >= self.config.checkpoint_interval
            {
                self.checkpoint()?;
                last_checkpoint = Instant::now();
            }
            self.update_idle(started);
            if last_lag.elapsed() > Duration::from_secs(1) {
                let mut total = 0;
                for s in &self.sources {
                    let lag = s.kafka.lag(&s.position);
                    total += lag.values().filter(|l| **l >= 0).sum::<i64>();
                    if let Some(m) = self.detail.sources.get_mut(&s.name) {
                        m.lag = lag;
                    }
                }
                self.stats.lag.store(total, Ordering::Relaxed);
                last_lag = Instant::now();
            }
            if let Some(max) = self.config.max_events
                && self.stats.events_in.load(Ordering::Relaxed) >= max
            {
                return self.finish(false, &pending_commits).await;
            }
            if let Some(idle) = self.config.until_idle
                && last_input.elapsed() >= idle
            {
                // The input has ended when nothing arrives and every partition has been read
                // to its end; a consumer that is merely stalled (a slow broker) is waited for,
                // up to six times the idle time.
                let caught_up = self
                    .sources
                    .iter()
                    .all(|s| s.kafka.lag(&s.position).values().all(|l| *l == 0));
                if caught_up || last_input.elapsed() >= idle * 6 {
                    if !caught_up {
                        self.summary.warnings.push(format!(
                            "stopped after {:?} without input, before reading every partition to its end",
                            idle * 6
                        ));
                    }
                    return self.finish(true, &pending_commits).await;
                }
            }
        }
    }

    /// Ends the run; `input_finished` flushes windows (a bounded input has ended).
    async fn finish(
        mut self,
        input_finished: bool,
        pending: &[BTreeMap<i32, i64>],
    ) -> Result<Summary, RuntimeError> {
        if input_finished {
            let mut queue = VecDeque::new();
            for i in 0..self.nodes.len() {
                if let Op::Transform { op, .. } = &mut self.nodes[i].op {
                    for b in op.flush().await? {
                        for (r, _) in self.nodes[i].readers.clone() {
                            queue.push_back((r, b.clone(), -1, i));
                        }
                    }
                }
                let last = match &mut self.nodes[i].op {
                    Op::Model(op) => op.snapshot_all()?,
                    Op::Clustering(op) => op.snapshot_all()?,
                    _ => None,
                };
                if let Some(b) = last {
                    for (r, port) in self.nodes[i].readers.clone() {
                        if port == 1 {
                            queue.push_back((r, b.clone(), -1, i));
                        }
                    }
                }
                // Windows downstream see the flushed rows before being flushed themselves,
                // because nodes are in topological order.
                self.drain(&mut queue).await?;
            }
            self.flush_outputs().await?;
        }
        if self.checkpoints.is_some() {
            self.checkpoint()?;
        } else if input_finished || !self.windowed {
            for (s, offsets) in pending.iter().enumerate() {
                self.sources[s].kafka.commit(offsets)?;
            }
        }
        self.publish(true);
        Ok(self.summary)
    }

    /// Records the latencies of a micro-batch of `n` records read at `received`, once Kafka
    /// has acknowledged its outputs.
    fn observe_latency(&mut self, s: usize, received: Instant, n: usize) {
        self.detail
            .processing
            .observe(received.elapsed().as_secs_f64(), n as u64);
        let now_ms = chrono::Utc::now().timestamp_millis();
        for t in self.sources[s].times.drain(..) {
            self.detail
                .end_to_end
                .observe((now_ms - t).max(0) as f64 / 1000.0, 1);
        }
    }

    /// Copies the measurements, with fresh model summaries, to the stats: at most once a
    /// second unless `now` (no lock per event or per batch).
    fn publish(&mut self, now: bool) {
        if !now
            && self
                .last_publish
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_publish = Some(Instant::now());
        for n in &self.nodes {
            let summary = match &n.op {
                Op::Model(op) => op.summary(),
                Op::Clustering(op) => op.summary(),
                _ => continue,
            };
            self.detail.models.insert(n.name.clone(), summary);
        }
        if let Ok(mut d) = self.stats.detail.lock() {
            d.clone_from(&self.detail);
        }
    }

    fn update_idle(&mut self, started: Instant) {
        let now = Instant::now();
        let mut idle_by_source: Vec<BTreeSet<i32>> = Vec::new();
        for s in &self.sources {
            let mut idle = BTreeSet::new();
            if let Some(timeout) = s.idle_timeout {
                for p in s.kafka.partitions() {
                    // A partition that has sent nothing yet is measured from the start of
                    // the run: its backlog may simply not have been fetched yet.
                    let since = s.last_seen.get(p).copied().unwrap_or(started);
                    let quiet = now.duration_since(since) >= timeout;
                    if quiet {
                        idle.insert(*p);
                    }
                }
            }
            idle_by_source.push(idle);
        }
        let mut wm = i64::MAX;
        for n in &mut self.nodes {
            if let Op::Transform { op, root, .. } = &mut n.op
                && let Some(w) = op.window()
            {
                w.set_idle(idle_by_source.get(*root).cloned().unwrap_or_default());
                wm = wm.min(w.watermark().unwrap_or(i64::MIN));
            }
        }
        // No window: no watermark.
        let wm = if wm == i64::MAX { i64::MIN } else { wm };
        self.stats.watermark_ms.store(wm, Ordering::Relaxed);
    }

    async fn process_raw(&mut self, s: usize, raw: &RawBatch) -> Result<(), RuntimeError> {
        let n = raw.len();
        self.stats.events_in.fetch_add(n as u64, Ordering::Relaxed);
        let now = Instant::now();
        for p in raw.next_offsets().keys() {
            self.sources[s].last_seen.insert(*p, now);
        }
        let mut decoded = self.sources[s]
            .decoder
            .decode(&raw.payloads())
            .map_err(internal)?;
        // In a changelog table, a message without a value deletes its key (a tombstone): not
        // a bad record. The deletes are applied in offset order with the upserts below.
        let node = self.sources[s].node;
        let mut tombstones: Vec<(usize, String)> = Vec::new();
        if self.tables.contains_key(&node) {
            // Without a key a tombstone names nothing: it stays a bad record.
            decoded.errors.retain(|e| match raw.key(e.index) {
                Some(k) if raw.null_value[e.index] => {
                    tombstones.push((e.index, String::from_utf8_lossy(k).into_owned()));
                    false
                }
                _ => true,
            });
        }
        let src = &mut self.sources[s];
        if let Some(m) = self.detail.sources.get_mut(&src.name) {
            m.events += n as u64;
            m.bytes += raw.bytes.len() as u64;
            m.batches += 1;
            m.decode_errors += decoded.errors.len() as u64;
        }
        if let Some(c) = src.time_col {
            let ms = cast(
                decoded.batch.column(c),
                &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
            )
            .map_err(internal)?;
            let ms = ms
                .as_any()
                .downcast_ref::<datafusion::arrow::array::TimestampMillisecondArray>()
                .ok_or_else(|| internal("event time cast"))?;
            src.times.extend(ms.iter().flatten());
        }
        if !decoded.errors.is_empty() {
            self.stats
                .errors
                .fetch_add(decoded.errors.len() as u64, Ordering::Relaxed);
            let src = &self.sources[s];
            match src.on_error {
                OnError::Fail => {
                    let e = &decoded.errors[0];
                    return Err(RuntimeError::BadRecord {
                        topic: src.topic.clone(),
                        partition: raw.partitions[e.index],
                        offset: raw.offsets[e.index],
                        error: e.message.clone(),
                    });
                }
                OnError::Skip => {}
                OnError::DeadLetter => {
                    for e in &decoded.errors {
                        let headers = vec![
                            ("source-topic".to_string(), src.topic.clone().into_bytes()),
                            (
                                "source-partition".to_string(),
                                raw.partitions[e.index].to_string().into_bytes(),
                            ),
                            (
                                "source-offset".to_string(),
                                raw.offsets[e.index].to_string().into_bytes(),
                            ),
                            ("error".to_string(), e.message.clone().into_bytes()),
                        ];
                        self.dead_letters[s].push((raw.payload(e.index).to_vec(), headers));
                    }
                }
            }
        }
        if let Some(table) = self.tables.get_mut(&node) {
            // Rows are in message order: upsert the rows before each tombstone, then delete.
            let mut next = 0;
            for (message, key) in &tombstones {
                let upto = decoded.rows.partition_point(|m| m < message);
                if upto > next {
                    table.upsert(&decoded.batch.slice(next, upto - next))?;
                    next = upto;
                }
                table.delete(key)?;
            }
            if decoded.batch.num_rows() > next {
                table.upsert(&decoded.batch.slice(next, decoded.batch.num_rows() - next))?;
            }
        }
        if decoded.batch.num_rows() == 0 {
            return Ok(());
        }
        // Split by partition, keeping offset order within each.
        let mut by_partition: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
        for (row, message) in decoded.rows.iter().enumerate() {
            by_partition
                .entry(raw.partitions[*message])
                .or_default()
                .push(row as u32);
        }
        let mut queue = VecDeque::new();
        for (p, rows) in by_partition {
            let batch = if rows.len() == decoded.batch.num_rows() {
                decoded.batch.clone()
            } else {
                take_rows(&decoded.batch, rows)?
            };
            for (r, _) in self.nodes[node].readers.clone() {
                queue.push_back((r, batch.clone(), p, node));
            }
        }
        self.drain(&mut queue).await
    }

    /// Pushes batches through the graph until no work is left.
    async fn drain(
        &mut self,
        queue: &mut VecDeque<(usize, RecordBatch, i32, usize)>,
    ) -> Result<(), RuntimeError> {
        while let Some((i, batch, partition, from)) = queue.pop_front() {
            let readers = self.nodes[i].readers.clone();
            let input = self.nodes[i]
                .inputs
                .iter()
                .position(|x| *x == from)
                .unwrap_or(0);
            let node_inputs = self.nodes[i].inputs.clone();
            let mut late = 0u64;
            let mut outputs: Vec<(RecordBatch, i32, u8)> = Vec::new();
            match &mut self.nodes[i].op {
                Op::Skipped | Op::Source => {}
                Op::Model(_) | Op::Clustering(_) => {
                    let (predictions, snapshots) = match &mut self.nodes[i].op {
                        Op::Model(op) => op.process(&batch)?,
                        Op::Clustering(op) => op.process(&batch)?,
                        _ => (None, None),
                    };
                    if let Some(b) = predictions {
                        outputs.push((b, -1, 0));
                    }
                    if let Some(b) = snapshots {
                        outputs.push((b, -1, 1));
                    }
                }
                Op::Transform {
                    op,
                    on_late,
                    root,
                    roles,
                } => {
                    // Table rows only update the table; lookups read it with each stream batch.
                    if matches!(roles.get(input), Some(planner::InputRole::Table { .. })) {
                        continue;
                    }
                    for (j, role) in roles.iter().enumerate() {
                        if matches!(role, planner::InputRole::Table { .. })
                            && let Some(table) =
                                node_inputs.get(j).and_then(|n| self.tables.get_mut(n))
                        {
                            op.set_table(j, vec![table.snapshot()?]);
                        }
                    }
                    let windowed = op.window().is_some();
                    let out = op.process(batch.clone(), partition, input).await?;
                    if !out.late.is_empty() {
                        self.stats
                            .late
                            .fetch_add(out.late.len() as u64, Ordering::Relaxed);
                        late = out.late.len() as u64;
                        if *on_late == OnLate::DeadLetter {
                            let rows: Vec<u32> = out.late.iter().map(|(r, _)| *r as u32).collect();
                            let late = take_rows(&batch, rows)?;
                            let encoded = encode_rows(&late).map_err(internal)?;
                            let root = *root;
                            for (bytes, (_, reason)) in encoded.into_iter().zip(&out.late) {
                                let headers = vec![
                                    (
                                        "transform".to_string(),
                                        self.nodes[i].name.clone().into_bytes(),
                                    ),
                                    (
                                        "source-partition".to_string(),
                                        partition.to_string().into_bytes(),
                                    ),
                                    ("error".to_string(), reason.as_bytes().to_vec()),
                                ];
                                self.dead_letters[root].push((bytes, headers));
                            }
                        }
                    }
                    let p = if windowed { -1 } else { partition };
                    outputs.extend(out.rows.into_iter().map(|b| (b, p, 0)));
                }
                Op::Sink {
                    key,
                    buffer,
                    encoder,
                    ..
                } => {
                    let values = encoder.encode(&batch)?;
                    let keys = match key {
                        Some(k) => Some(key_bytes(batch.column(*k).as_ref())?),
                        None => None,
                    };
                    for (row, value) in values.into_iter().enumerate() {
                        let k = keys.as_ref().and_then(|ks| ks[row].clone());
                        buffer.push((k, value));
                    }
                }
            }
            // Only windows have late rows; their counters exist from the start.
            if late > 0
                && let Some(n) = self.detail.late.get_mut(&self.nodes[i].name)
            {
                *n += late;
            }
            for (b, p, port) in outputs {
                for (r, wants) in &readers {
                    if *wants == port {
                        queue.push_back((*r, b.clone(), p, i));
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes buffered sink records and dead letters and waits for Kafka to acknowledge them.
    async fn flush_outputs(&mut self) -> Result<(), RuntimeError> {
        for n in &mut self.nodes {
            if let Op::Sink { sink, buffer, .. } = &mut n.op {
                if buffer.is_empty() {
                    continue;
                }
                let records: Vec<OutRecord<'_>> = buffer
                    .iter()
                    .map(|(k, v)| OutRecord {
                        key: k.as_deref(),
                        value: v,
                        timestamp: None,
                    })
                    .collect();
                sink.send_all(&records, &[]).await?;
                self.stats
                    .events_out
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                if let Some(m) = self.detail.sinks.get_mut(&n.name) {
                    m.records += records.len() as u64;
                    m.bytes += records.iter().map(|r| r.value.len() as u64).sum::<u64>();
                }
                buffer.clear();
            }
        }
        for (s, letters) in self.dead_letters.iter_mut().enumerate() {
            if letters.is_empty() {
                continue;
            }
            let sink = match &self.sources[s].dead_letter {
                Some(sink) => sink,
                None => {
                    // Cannot happen: a dead-letter topic exists for every source that
                    // produces dead letters (set up in `Runner::new`).
                    return Err(internal(
                        "dead letters for a source without a dead-letter topic",
                    ));
                }
            };
            let records: Vec<(OutRecord<'_>, connectors::RecordHeaders)> = letters
                .iter()
                .map(|(v, h)| {
                    (
                        OutRecord {
                            key: None,
                            value: v,
                            timestamp: None,
                        },
                        h.clone(),
                    )
                })
                .collect();
            sink.send_with_headers(&records).await?;
            self.stats
                .dead_lettered
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            if let Some(m) = self.detail.sources.get_mut(&self.sources[s].name) {
                m.dead_lettered += records.len() as u64;
            }
            letters.clear();
        }
        Ok(())
    }

    /// Parts of the pipeline this runtime skips, with why (print them before running).
    pub fn warnings(&self) -> &[String] {
        &self.summary.warnings
    }
}

/// Fingerprint of what a node's state means: its definition and the rows it reads and
/// writes. Sources hold state only as changelog tables (their schema and key).
///
/// It must be the same in every process: schemas are written by [`canonical`] (the `Debug`
/// text of a schema shows field metadata in hash-map order, which differs between maps).
fn fingerprint_of(n: &planner::PlannedNode) -> u64 {
    let text = match &n.kind {
        NodeKind::Source { spec, schema, .. } => {
            format!("{:?}{}", spec.table, canonical(schema))
        }
        NodeKind::Transform {
            spec,
            inputs,
            schema,
            ..
        } => {
            let inputs: Vec<String> = inputs
                .iter()
                .map(|t| format!("{:?}.{}({})", t.schema, t.table, canonical(&t.arrow)))
                .collect();
            format!(
                "{:?}{:?}{:?}{inputs:?}{}",
                spec.sql,
                spec.window,
                spec.join,
                canonical(schema)
            )
        }
        NodeKind::Model {
            spec,
            predictions,
            snapshots,
            ..
        } => format!(
            "{:?}{:?}{:?}{:?}{}{}",
            spec.key,
            spec.regression,
            spec.clustering,
            spec.input,
            canonical(predictions),
            canonical(snapshots)
        ),
        NodeKind::Sink { .. } => String::new(),
    };
    checkpoint::fingerprint(&text)
}

/// A schema as text that does not depend on hash-map order: each field's name, nullability
/// and type (`DataType`'s `Display` sorts nested fields' metadata); fields' own metadata
/// does not change what state means and is left out.
fn canonical(schema: &datafusion::arrow::datatypes::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}:{}:{}", f.name(), f.is_nullable(), f.data_type()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM: what `pipectl run` and the daemon stop on (a
/// run then stops cleanly, with a final checkpoint).
pub async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The dead-letter topic of a source.
pub fn dead_letter_topic(pipeline: &str, source: &spec::model::Source) -> String {
    source
        .dead_letter_topic
        .clone()
        .unwrap_or_else(|| format!("{pipeline}.{}.dead_letter", source.name))
}

fn take_rows(batch: &RecordBatch, rows: Vec<u32>) -> Result<RecordBatch, RuntimeError> {
    let idx = UInt32Array::from(rows);
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c, &idx, None))
        .collect::<Result<Vec<_>, _>>()
        .map_err(internal)?;
    RecordBatch::try_new(batch.schema(), columns).map_err(internal)
}

fn key_bytes(column: &dyn Array) -> Result<Vec<Option<Vec<u8>>>, RuntimeError> {
    let strings = cast(&column.slice(0, column.len()), &DataType::Utf8).map_err(internal)?;
    let strings = strings
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()
        .ok_or_else(|| internal("key cast"))?;
    Ok(strings
        .iter()
        .map(|v| v.map(|s| s.as_bytes().to_vec()))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema};

    use super::canonical;

    /// The same schema built twice, with metadata in hash maps of their own (whose
    /// iteration orders differ), must read the same: checkpoints are restored by it.
    #[test]
    fn canonical_schema_text_does_not_depend_on_hash_map_order() {
        let build = || {
            let metadata: HashMap<String, String> = (0..16)
                .map(|i| (format!("key{i}"), format!("value{i}")))
                .collect();
            let inner = Field::new("kind", DataType::Utf8, false).with_metadata(metadata.clone());
            Schema::new(vec![
                Field::new("status", DataType::Utf8, true).with_metadata(metadata.clone()),
                Field::new("nested", DataType::Struct(Fields::from(vec![inner])), true),
            ])
        };
        let texts: std::collections::BTreeSet<String> =
            (0..20).map(|_| canonical(&build())).collect();
        assert_eq!(texts.len(), 1, "{texts:?}");
        // The Debug text, which fingerprints used before, is not stable.
        let debug: std::collections::BTreeSet<String> =
            (0..20).map(|_| format!("{:?}", build())).collect();
        assert!(debug.len() > 1, "hash-map order did vary in this process");
    }
}
