//! A task: one copy of the pipeline's graph over some partitions of its sources (all of
//! them, or one per task: see [`crate::runner`]), with its operators, and its loop.
//!
//! Each turn reads a micro-batch from a source (bounded by count and time); its source task
//! decodes it and applies the error policy ([`crate::source`]); the rows enter the source's
//! operator one partition at a time and flow along the edges, each operator emitting
//! through its [`Context`] (FIFO, so nodes see batches in the order they were produced). At
//! the end of the turn comes the barrier ([`crate::barrier`]): sinks and dead letters hand
//! their records to the producer, and the task reads the next micro-batch while Kafka takes
//! them. The turn stays *in flight* until Kafka has acknowledged all of its outputs; only
//! then are its source offsets committed (asynchronously, at most every [`COMMIT_INTERVAL`];
//! at a checkpoint, once every output is acknowledged): at-least-once. At most
//! [`MAX_IN_FLIGHT`] turns are in flight; the read of the next micro-batch closes
//! `latency_target` after its first message, so at low rates a record does not wait for a
//! full batch.
//!
//! No record is in flight between operators at a barrier. With a checkpoint directory, the
//! task writes a [`checkpoint::Checkpoint`] every `checkpoint_interval` and when it stops
//! (every operator's state, with the source offsets it corresponds to), and then commits
//! those offsets to the group; on start it resumes from the checkpoint. A run that is killed
//! between checkpoints replays from the last one: its outputs since then may be written
//! twice, never lost. Checkpointed runs assign their partitions themselves (one instance
//! per pipeline).
//!
//! Without a checkpoint directory, pipelines with an operator that holds rows (windows)
//! commit offsets only when they are flushed (the end of a bounded run), so that a restart
//! replays the rows of open windows; other pipelines commit after every turn (a restart loses
//! join buffers and model state, which is what checkpoints are for).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use connectors::{Connect, Kafka, RawBatch, Source as _};
use datafusion::arrow::array::RecordBatch;
use planner::PipelinePlan;

use crate::config::{RunConfig, Stats, Summary};
use crate::error::internal;
pub use crate::error::{Blame, RuntimeError};
use crate::operator::{Context, Operator};
use crate::operators;
use crate::source::{Rows, SourceTask};
use crate::{checkpoint, metrics};

/// Bytes of exactly-once outputs a task holds before it commits early.
const PENDING_OUTPUT_BYTES: u64 = 16 << 20;

/// A node of the running graph.
pub(crate) struct Node {
    pub name: String,
    /// Fingerprint of its definition: checkpointed state is restored only into the same.
    pub fingerprint: u64,
    pub op: Box<dyn Operator>,
    /// Where each output goes: (output port, reader node, the reader's input port).
    pub readers: Vec<(u8, usize, usize)>,
    /// The source whose dead-letter topic takes its dead letters and whose idle partitions
    /// it is told.
    pub root: usize,
}

/// A batch on its way: reader node, its input port, partition, rows.
type Pending = (usize, usize, i32, RecordBatch);

/// A pipeline ready to run.
pub struct Task<C: Connect = Kafka> {
    pub(crate) pipeline: String,
    pub(crate) nodes: Vec<Node>,
    pub(crate) sources: Vec<SourceTask<C>>,
    pub(crate) connect: C,
    /// Headers of every record written (the dead-letter sinks opened later need them).
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) config: RunConfig,
    pub(crate) stats: Arc<Stats>,
    /// Some operator holds rows until the end of input (see the module's doc).
    pub(crate) holds_rows: bool,
    /// Dead letters go in the state transaction (a pipeline with an exactly-once sink).
    pub(crate) transactional_letters: bool,
    pub(crate) checkpoints: Option<checkpoint::Store>,
    /// Its changelogs, when state is kept in Kafka.
    pub(crate) state: Option<crate::state::StateLog<C>>,
    /// Measured here, published to `stats` at most once a second.
    pub(crate) detail: metrics::Detail,
    last_publish: Option<Instant>,
    pub(crate) summary: Summary,
    /// Which task of the pipeline this is.
    index: usize,
    /// The smallest watermark of its operators (`i64::MIN`: none yet).
    watermark: i64,
    /// Its consumer lag (-1 until measured).
    lag: i64,
    /// The stage of each node: how many repartitions its rows have been through. A
    /// bounded run finishes stage by stage (see [`crate::operators::exchange`]).
    levels: Vec<u32>,
    /// The first stage not yet finished.
    level: u32,
    /// Time between commits (checkpoints).
    commit_every: Duration,
    /// Turns whose outputs Kafka has not acknowledged in full yet, oldest first.
    in_flight: VecDeque<Turn>,
    /// Per source, the next offsets past every turn acknowledged so far: what a pipeline
    /// without checkpoints commits.
    acked: Vec<BTreeMap<i32, i64>>,
    /// Per source, whether `acked` moved since its last commit.
    uncommitted: Vec<bool>,
    last_commit: Instant,
    /// The last [`Task::delivery`] reading, kept to reuse its allocation.
    pub(crate) delivery_buf: Vec<(u64, u64)>,
    /// Event-time vectors of reaped turns, kept to reuse their allocations (at most
    /// [`SPARE_TIMES`]).
    spare_times: Vec<Vec<i64>>,
}

/// Spare event-time vectors a task keeps: enough for the turns a source reads while the
/// previous ones are still being acknowledged, few enough that a burst of in-flight turns
/// does not pin their memory.
const SPARE_TIMES: usize = 4;

/// A turn whose outputs have been handed to the producer.
struct Turn {
    source: usize,
    /// When the first message of its micro-batch was read, and how many it had.
    received: Instant,
    rows: usize,
    /// The event times of its rows, for the end-to-end latency.
    times: Vec<i64>,
    /// Its source's next offsets after it.
    next: BTreeMap<i32, i64>,
    /// Per output ([`Task::read_delivery`]), the flushes handed over by its end.
    marks: Vec<u64>,
}

/// What ended a wait for input.
enum Step {
    Stop,
    Read(Result<(), connectors::ConnectorError>),
    /// Time to take in acknowledgements.
    Tick,
}

/// Turns in flight at most: past it the task waits for acknowledgements before it reads on.
const MAX_IN_FLIGHT: usize = 256;

/// Least time between two offset commits of a pipeline that commits as its turns are
/// acknowledged (Kafka Streams' `commit.interval.ms` in the same role): spares the group
/// coordinator a commit per micro-batch; the last commit of a run is synchronous.
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// The stage of each node of `plan`: a repartition topic's source is one past the stage of
/// its writer, every other node at the stage of its inputs.
fn levels(plan: &PipelinePlan) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::with_capacity(plan.nodes.len());
    for n in &plan.nodes {
        let of = |name: &str| {
            let base = name
                .strip_suffix(".predictions")
                .or_else(|| name.strip_suffix(".snapshots"));
            plan.nodes[..out.len()]
                .iter()
                .position(|m| m.name == name || Some(m.name.as_str()) == base)
                .map_or(0, |i| out[i])
        };
        let level = match &n.kind {
            planner::NodeKind::Source(s) if s.exchange.is_some() => plan.nodes[..out.len()]
                .iter()
                .position(|m| matches!(&m.kind, planner::NodeKind::Sink(k) if k.topic == s.topic))
                .map_or(0, |i| out[i] + 1),
            _ => n.inputs.iter().map(|i| of(i)).max().unwrap_or(0),
        };
        out.push(level);
    }
    out
}

/// What a task reads and where it keeps its state.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    /// Its number, from 0.
    pub index: usize,
    /// The partitions of every stream source it reads; `None`: all of them.
    pub only: Option<Vec<i32>>,
    /// Its checkpoints, when the run keeps them in files.
    pub store: Option<checkpoint::Store>,
    /// How many tasks the pipeline has (partitions of its changelogs).
    pub tasks: usize,
}

impl<C: Connect> std::fmt::Debug for Task<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("pipeline", &self.pipeline)
            .finish()
    }
}

impl<C: Connect> Task<C> {
    /// Connects every source and sink of `plan` through `connect` (Kafka, or the in-memory
    /// broker) and makes its operators.
    pub(crate) async fn connect(
        plan: &PipelinePlan,
        config: RunConfig,
        stats: Arc<Stats>,
        connect: C,
        part: Part,
        member: Option<&C::Membership>,
    ) -> Result<Self, RuntimeError> {
        let checkpoints = part.store.clone();
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
        let headers = vec![
            ("pipeline".to_string(), plan.name.clone()),
            ("pipeline-version".to_string(), config.version.clone()),
        ];
        // Opened first: it fences an earlier holder of this task, whose open transaction
        // is then settled before the committed offsets and the changelogs are read.
        let mut state = match config.kafka_state {
            true => Some(
                crate::state::StateLog::open(plan, &connect, part.index, part.tasks, member)
                    .await?,
            ),
            false => None,
        };
        let resume = match (&state, &checkpoints) {
            (Some(_), _) => operators::Resume::Group,
            (None, Some(_)) => operators::Resume::Checkpoint(restored.as_ref()),
            (None, None) => operators::Resume::Fresh,
        };
        let (mut nodes, sources) = operators::graph(
            plan,
            &connect,
            &config,
            &headers,
            &resume,
            part.only.as_deref(),
        )
        .await?;
        let mut summary = Summary::default();
        if let Some(state) = &mut state {
            state.restore(&mut nodes, &mut summary.warnings, &stats)?;
            state.join_peers(&mut nodes);
            state.poll_peers(&mut nodes, false)?;
        }
        let acked = vec![BTreeMap::new(); sources.len()];
        let mut task = Self {
            levels: levels(plan),
            level: 0,
            commit_every: crate::commit_interval(plan, &config),
            pipeline: plan.name.clone(),
            holds_rows: nodes.iter().any(|n| n.op.holds_rows()),
            transactional_letters: state.is_some() && plan.exactly_once_sink().is_some(),
            nodes,
            sources,
            connect,
            headers,
            config,
            stats,
            checkpoints,
            state,
            detail: metrics::Detail::default(),
            last_publish: None,
            summary,
            index: part.index,
            watermark: i64::MIN,
            lag: -1,
            in_flight: VecDeque::new(),
            uncommitted: vec![false; acked.len()],
            acked,
            last_commit: Instant::now(),
            delivery_buf: Vec::new(),
            spare_times: Vec::new(),
        };
        if let Some(c) = restored {
            task.restore(&c)?;
        }
        let mut queue = VecDeque::new();
        for i in 0..task.nodes.len() {
            let mut ctx = Context::default();
            task.nodes[i].op.open(&mut ctx).await?;
            task.route(i, ctx, &mut queue)?;
            task.drain(&mut queue).await?;
        }
        task.publish(true);
        Ok(task)
    }

    /// Loads each operator's checkpointed state into the operator of the same name and
    /// definition; operators that changed start empty, with a warning.
    fn restore(&mut self, c: &checkpoint::Checkpoint) -> Result<(), RuntimeError> {
        for node in &mut self.nodes {
            let Some(saved) = c.operators.get(&node.name) else {
                continue;
            };
            if saved.fingerprint != node.fingerprint {
                self.summary.warnings.push(format!(
                    "`{}` starts with empty state: its definition changed since the checkpoint",
                    node.name
                ));
                continue;
            }
            node.op.load(&saved.state)?;
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
        // Input from outside the pipeline (not from its repartition topics).
        let mut last_outside = Instant::now();
        let exchanges = self.sources.iter().any(|s| s.progress.is_some());
        let mut last_lag = Instant::now();
        let mut last_checkpoint = Instant::now();
        // The first commit comes right after the first input: a task that restarted (or
        // took partitions over) shows its outputs again without waiting a whole interval.
        let mut committed_once = false;
        let started = Instant::now();
        // Whether some source had input in the previous pass over the sources.
        let mut busy = false;
        loop {
            let mut got_any = false;
            for s in 0..self.sources.len() {
                raw.clear();
                // While outputs are in flight the read is interrupted every millisecond to
                // take in acknowledgements (the read loses nothing: see `next_batch`). A
                // source that has nothing while another source of the task has had input
                // (a table beside its stream, the two sides of a join, a repartition topic
                // beside the input) is left after a millisecond rather than waited for up to
                // `max_wait`: the busy source is not held back by the idle one.
                let others_busy = self.sources.len() > 1 && (busy || got_any);
                loop {
                    let waiting = !self.in_flight.is_empty();
                    let leave = others_busy && raw.is_empty();
                    let read = self.sources[s].conn.next_batch(&mut raw);
                    let step = tokio::select! {
                        biased;
                        () = &mut stop => Step::Stop,
                        r = read => Step::Read(r),
                        () = tokio::time::sleep(Duration::from_millis(1)), if waiting || leave => Step::Tick,
                    };
                    match step {
                        Step::Stop => return self.finish(false).await,
                        Step::Read(r) => {
                            r?;
                            break;
                        }
                        Step::Tick => {
                            self.reap()?;
                            if leave && raw.is_empty() {
                                break;
                            }
                        }
                    }
                }
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
                if self.sources[s].progress.is_none() {
                    last_outside = Instant::now();
                }
                let received = raw.first_at.unwrap_or_else(Instant::now);
                self.process_raw(s, &raw).await?;
                let next = raw.next_offsets();
                self.sources[s]
                    .position
                    .extend(next.iter().map(|(p, o)| (*p, *o)));
                self.flush_outputs().await?;
                self.read_delivery()?;
                let marks = self.delivery_buf.iter().map(|(h, _)| *h).collect();
                let spare = self.spare_times.pop().unwrap_or_default();
                let times = std::mem::replace(&mut self.sources[s].times, spare);
                self.in_flight.push_back(Turn {
                    source: s,
                    received,
                    rows: raw.len(),
                    times,
                    next,
                    marks,
                });
                self.reap()?;
                if self.in_flight.len() >= MAX_IN_FLIGHT {
                    self.settle_outputs().await?;
                }
            }
            busy = got_any;
            if got_any {
                last_input = Instant::now();
            } else {
                // Offsets acknowledged but not yet committed (the commit interval had not
                // passed) commit while the input is quiet.
                self.reap()?;
            }
            if let Some(state) = &self.state {
                state.poll_peers(&mut self.nodes, false)?;
            }
            self.publish(false);
            // Exactly-once sinks hold their records until the commit: a commit comes early
            // rather than let them grow past a bound.
            let held = self.pending_bytes();
            if self.keeps_state()
                && ((got_any && !committed_once)
                    || last_checkpoint.elapsed() >= self.commit_every
                    || held > PENDING_OUTPUT_BYTES)
            {
                self.checkpoint().await?;
                last_checkpoint = Instant::now();
                committed_once = true;
            }
            self.advance(started);
            if exchanges {
                // Writers' marks go out even when no row has.
                self.flush_outputs().await?;
            }
            if last_lag.elapsed() > Duration::from_secs(1) {
                let mut total = 0;
                for s in &mut self.sources {
                    let lag = s.conn.cached_lag(&s.position);
                    total += lag.values().filter(|l| **l >= 0).sum::<i64>();
                    s.metrics.lag = lag;
                }
                self.lag = total;
                last_lag = Instant::now();
            }
            if let Some(max) = self.config.max_events
                && self.stats.events_in.load(Ordering::Relaxed) >= max
            {
                return self.finish(false).await;
            }
            if let Some(idle) = self.config.until_idle
                && self.input_ended(idle, last_outside, last_input)
                && self.finish_level().await?
            {
                return self.finish(true).await;
            }
        }
    }

    /// Whether the input of the first unfinished stage has ended (a bounded run, idle for
    /// `idle`). The pipeline's own input has ended when nothing arrives and every partition
    /// has been read to its end; a consumer that is merely stalled (a slow broker) is waited
    /// for, up to six times the idle time. A repartition topic has ended when every writer
    /// has said so.
    fn input_ended(&mut self, idle: Duration, outside: Instant, any: Instant) -> bool {
        let level = self.level;
        let (ended, since) = if level == 0 {
            if outside.elapsed() < idle {
                return false;
            }
            let caught_up = self
                .sources
                .iter()
                .filter(|s| s.progress.is_none())
                .all(|s| s.conn.lag(&s.position).values().all(|l| *l == 0));
            (caught_up, outside)
        } else {
            let ended = self
                .sources
                .iter()
                .filter(|s| s.progress.is_some() && self.levels[s.node] == level)
                .all(|s| s.writers_ended());
            (ended, any)
        };
        if ended {
            return true;
        }
        if since.elapsed() >= idle * 6 {
            self.summary.warnings.push(match level {
                0 => format!(
                    "stopped after {:?} without input, before reading every partition to its end",
                    idle * 6
                ),
                _ => format!(
                    "stopped after {:?} without input, before every writer of a repartition topic had ended",
                    idle * 6
                ),
            });
            return true;
        }
        false
    }

    /// Finishes the first unfinished stage (its input has ended): its operators emit what
    /// they hold (in topological order, so downstream operators see what upstream ones
    /// flushed), and its outputs are flushed. Returns whether every stage has finished.
    async fn finish_level(&mut self) -> Result<bool, RuntimeError> {
        let mut queue = VecDeque::new();
        for i in 0..self.nodes.len() {
            if self.levels[i] != self.level {
                continue;
            }
            let mut ctx = Context::default();
            self.nodes[i].op.finish(&mut ctx).await?;
            self.route(i, ctx, &mut queue)?;
            self.drain(&mut queue).await?;
        }
        self.flush_outputs().await?;
        self.level += 1;
        Ok(self.levels.iter().all(|l| *l < self.level))
    }

    /// Ends the run; `input_finished` flushes what operators hold (a bounded input has
    /// ended).
    async fn finish(mut self, input_finished: bool) -> Result<Summary, RuntimeError> {
        if input_finished {
            while self.levels.iter().any(|l| *l >= self.level) {
                self.finish_level().await?;
            }
        }
        if self.keeps_state() {
            self.checkpoint().await?;
        } else {
            self.settle_outputs().await?;
            if input_finished || !self.holds_rows {
                for (s, offsets) in self.acked.iter().enumerate() {
                    self.sources[s].conn.commit(offsets)?;
                }
            }
        }
        if input_finished && let Some(state) = self.state.take() {
            // A global model learnt by several tasks: its last snapshot is their merge once
            // every task has committed its state for the whole input.
            if state.merges() {
                if !state
                    .settle(&mut self.nodes, std::time::Duration::from_secs(120))
                    .await?
                {
                    self.summary.warnings.push(
                        "the other tasks had not all committed their last state within 120 s: the last snapshot of a global model merges what they had".to_string(),
                    );
                }
                let mut queue = VecDeque::new();
                for i in 0..self.nodes.len() {
                    let mut ctx = Context::default();
                    self.nodes[i].op.final_snapshot(&mut ctx).await?;
                    self.route(i, ctx, &mut queue)?;
                    self.drain(&mut queue).await?;
                }
                self.flush_outputs().await?;
            }
            self.state = Some(state);
            // Exactly-once records of the last snapshots go in one more transaction.
            if self.pending_bytes() > 0 {
                self.checkpoint().await?;
            }
        }
        // The last outputs are in Kafka before the run reports its end.
        self.settle_outputs().await?;
        self.publish(true);
        Ok(self.summary)
    }

    /// Whether the task keeps its state (in files or in Kafka), committing offsets only
    /// with it.
    fn keeps_state(&self) -> bool {
        self.checkpoints.is_some() || self.state.is_some()
    }

    /// Takes in Kafka's acknowledgements: every turn, oldest first, whose outputs are all
    /// acknowledged leaves the in-flight turns and its latencies are recorded; in a pipeline
    /// that commits as turns are acknowledged, the offsets acknowledged so far are committed
    /// once [`COMMIT_INTERVAL`] has passed since the last commit (asynchronously: a later
    /// commit covers a lost one, and the last of a run is synchronous).
    pub(crate) fn reap(&mut self) -> Result<(), RuntimeError> {
        if !self.in_flight.is_empty() {
            self.read_delivery()?;
        }
        while let Some(turn) = self.in_flight.front() {
            let done = turn
                .marks
                .iter()
                .zip(&self.delivery_buf)
                .all(|(mark, (_, acked))| acked >= mark);
            if !done {
                break;
            }
            let Some(mut turn) = self.in_flight.pop_front() else {
                break;
            };
            self.detail
                .processing
                .observe(turn.received.elapsed().as_secs_f64(), turn.rows as u64);
            let now_ms = chrono::Utc::now().timestamp_millis();
            for t in &turn.times {
                self.detail
                    .end_to_end
                    .observe((now_ms - t).max(0) as f64 / 1000.0, 1);
            }
            if self.spare_times.len() < SPARE_TIMES {
                turn.times.clear();
                self.spare_times.push(turn.times);
            }
            self.acked[turn.source].extend(turn.next);
            self.uncommitted[turn.source] = true;
        }
        if !self.holds_rows
            && !self.keeps_state()
            && self.last_commit.elapsed() >= COMMIT_INTERVAL
            && self.uncommitted.contains(&true)
        {
            for (s, offsets) in self.acked.iter().enumerate() {
                if std::mem::take(&mut self.uncommitted[s]) {
                    self.sources[s].conn.commit_async(offsets)?;
                }
            }
            self.last_commit = Instant::now();
        }
        Ok(())
    }

    /// Copies the measurements, with fresh operator reports, to the stats: at most once a
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
        for s in &self.sources {
            self.detail
                .sources
                .insert(s.name.clone(), s.metrics.clone());
        }
        for n in &self.nodes {
            n.op.report(&n.name, &mut self.detail);
        }
        self.stats.publish(
            self.index,
            crate::config::TaskView {
                partitions: self
                    .sources
                    .iter()
                    .map(|s| (s.name.clone(), s.conn.partitions().to_vec()))
                    .collect(),
                watermark_ms: self.watermark,
                lag: self.lag,
                detail: self.detail.clone(),
            },
        );
    }

    /// Tells each operator which partitions of its source are idle, and publishes the
    /// pipeline's watermark: the smallest of its operators' (none without a window).
    fn advance(&mut self, started: Instant) {
        let now = Instant::now();
        let idle_by_source: Vec<BTreeSet<i32>> = self
            .sources
            .iter()
            .map(|s| match s.idle_timeout {
                _ if s.progress.is_some() => s
                    .progress
                    .as_ref()
                    .map(|p| p.idle.clone())
                    .unwrap_or_default(),
                // A partition that has sent nothing yet is measured from the start of the
                // run: its backlog may simply not have been fetched yet. One known to hold
                // unread messages (its last measured lag) is behind, not idle, however long
                // its fetch takes (a loaded machine).
                Some(timeout) => s
                    .conn
                    .partitions()
                    .iter()
                    .filter(|p| {
                        let since = s.last_seen.get(p).copied().unwrap_or(started);
                        let behind = s.metrics.lag.get(p).is_some_and(|l| *l > 0);
                        now.duration_since(since) >= timeout && !behind
                    })
                    .copied()
                    .collect(),
                None => BTreeSet::new(),
            })
            .collect();
        let none = BTreeSet::new();
        self.watermark = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.op.advance(idle_by_source.get(n.root).unwrap_or(&none)))
            .min()
            .unwrap_or(i64::MIN);
    }

    async fn process_raw(&mut self, s: usize, raw: &RawBatch) -> Result<(), RuntimeError> {
        if self.sources[s].progress.is_none() {
            // Rows read back from a repartition topic were counted when they came in.
            self.stats
                .events_in
                .fetch_add(raw.len() as u64, Ordering::Relaxed);
        }
        let decoded = self.sources[s].decode(raw);
        let (rows, bad) = match decoded {
            Ok(r) => r,
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        self.stats.errors.fetch_add(bad, Ordering::Relaxed);
        let node = self.sources[s].node;
        let mut queue = VecDeque::new();
        for r in rows {
            let (port, partition, batch) = match r {
                Rows::Upserts(p, batch) => (0, p, batch),
                Rows::Deletes(p, keys) => (1, p, operators::source::tombstones(keys)?),
            };
            queue.push_back((node, port, partition, batch));
            self.drain(&mut queue).await?;
        }
        // Writers' marks, after the rows they followed.
        let marks = std::mem::take(&mut self.sources[s].marks);
        for (channel, mark) in marks {
            let readers: Vec<(usize, usize)> = self.nodes[node]
                .readers
                .iter()
                .map(|r| (r.1, r.2))
                .collect();
            for (r, port) in readers {
                let mut ctx = Context::default();
                self.nodes[r]
                    .op
                    .progress(port, channel, mark, &mut ctx)
                    .await?;
                self.route(r, ctx, &mut queue)?;
                self.drain(&mut queue).await?;
            }
        }
        Ok(())
    }

    /// Pushes batches through the graph until no work is left.
    async fn drain(&mut self, queue: &mut VecDeque<Pending>) -> Result<(), RuntimeError> {
        while let Some((i, port, partition, batch)) = queue.pop_front() {
            let mut ctx = Context::default();
            self.nodes[i]
                .op
                .process(port, partition, batch, &mut ctx)
                .await?;
            self.route(i, ctx, queue)?;
        }
        Ok(())
    }

    /// Sends what node `i` emitted to its readers, and its dead letters to its source's.
    fn route(
        &mut self,
        i: usize,
        ctx: Context,
        queue: &mut VecDeque<Pending>,
    ) -> Result<(), RuntimeError> {
        if ctx.late > 0 {
            self.stats.late.fetch_add(ctx.late, Ordering::Relaxed);
            *self
                .detail
                .late
                .entry(self.nodes[i].name.clone())
                .or_insert(0) += ctx.late;
        }
        if !ctx.dead_letters.is_empty() {
            let root = self.nodes[i].root;
            self.sources
                .get_mut(root)
                .ok_or_else(|| internal("dead letters without a source"))?
                .letters
                .extend(ctx.dead_letters);
        }
        let node = &self.nodes[i];
        for (out_port, partition, batch) in ctx.emitted {
            for (port, reader, in_port) in &node.readers {
                if *port == out_port {
                    queue.push_back((*reader, *in_port, partition, batch.clone()));
                }
            }
        }
        Ok(())
    }

    /// Parts of the pipeline this runtime skips, with why.
    pub fn warnings(&self) -> &[String] {
        &self.summary.warnings
    }
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
