//! A transform ready to run. Needs no Kafka: the runner drives it from topics, benchmarks and
//! tests from in-memory batches.
//!
//! - **Stateless** SQL (filters, projections, scalar functions, and lookup joins of one stream
//!   with tables): a DataFusion physical plan, planned once, executed per micro-batch with the
//!   stream batch in its input slot and each table's current contents in its slot.
//! - **Window** aggregations: a [`WindowOp`].
//! - **Interval joins** of two streams: each side's rows are buffered; a new batch of one side
//!   is joined (by the SQL, planned once) with the other side's buffer and then buffered
//!   itself, so every pair meets exactly once. A side's rows are dropped once the other side's
//!   stream time is more than `within` + `max_out_of_order` past them.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::catalog::TableProvider;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::{ExecutionPlan, collect};
use planner::InputRole;
use planner::sql::InputTable;
use spec::model::Transform;

use crate::checkpoint::{decode, encode, read_rows, write_rows};
use crate::error::{RuntimeError, internal};
use crate::slot::{Slot, SlotTable};
use crate::window::{Shape, Timing, WindowOp, WindowSnapshot};

/// A planned transform with its state.
pub enum TransformOp {
    /// Filters, projections, scalar functions, lookup joins.
    Stateless {
        /// One slot per input, in input order.
        slots: Vec<Slot>,
        /// The physical plan, planned once.
        plan: Arc<dyn ExecutionPlan>,
        /// Execution context.
        task: Arc<TaskContext>,
    },
    /// An event-time window aggregation.
    Window(Box<WindowOp>),
    /// An interval join of two streams.
    IntervalJoin(Box<IntervalJoin>),
}

/// State of an interval join.
#[derive(Debug)]
pub struct IntervalJoin {
    slots: [Slot; 2],
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    buffers: [Vec<RecordBatch>; 2],
    schemas: [SchemaRef; 2],
    time_cols: [usize; 2],
    stream_time: [Option<i64>; 2],
    keep: i64,
}

impl std::fmt::Debug for TransformOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransformOp::Stateless { .. } => f.write_str("Stateless"),
            TransformOp::Window(w) => w.fmt(f),
            TransformOp::IntervalJoin(j) => write!(
                f,
                "IntervalJoin({} + {} buffered rows)",
                j.buffers[0]
                    .iter()
                    .map(RecordBatch::num_rows)
                    .sum::<usize>(),
                j.buffers[1]
                    .iter()
                    .map(RecordBatch::num_rows)
                    .sum::<usize>()
            ),
        }
    }
}

/// What one input batch produced.
#[derive(Debug, Default)]
pub struct TransformOutput {
    /// Output rows.
    pub rows: Vec<RecordBatch>,
    /// Input rows (by index) that were late for all their windows, with the reason.
    pub late: Vec<(usize, &'static str)>,
}

fn times(batch: &RecordBatch, col: usize) -> Result<Vec<Option<i64>>, RuntimeError> {
    let ms = cast(
        batch.column(col),
        &DataType::Timestamp(TimeUnit::Millisecond, None),
    )
    .map_err(internal)?;
    Ok(ms
        .as_primitive::<TimestampMillisecondType>()
        .iter()
        .collect())
}

impl TransformOp {
    /// Plans `spec` against its input tables (`roles` says which are streams and which are
    /// tables). Windowed transforms track stream time for `partitions` with `allowed` ms of
    /// disorder.
    pub async fn build(
        spec: &Transform,
        time_field: Option<&str>,
        tables: &[InputTable],
        roles: &[InputRole],
        partitions: &[i32],
        allowed: i64,
    ) -> Result<Self, RuntimeError> {
        let slots: Vec<Slot> = tables.iter().map(|_| Slot::default()).collect();
        let providers: Vec<(InputTable, Arc<dyn TableProvider>)> = tables
            .iter()
            .zip(&slots)
            .map(|(t, s)| {
                let p: Arc<dyn TableProvider> =
                    Arc::new(SlotTable::new(t.arrow.clone(), s.clone()));
                (t.clone(), p)
            })
            .collect();
        let parsed = planner::sql::parse(&spec.sql).map_err(|e| internal(e.message))?;
        let (ctx, _, optimized) = planner::sql::plan_with_tables(&parsed, &providers)
            .await
            .map_err(|e| internal(e.message))?;
        let state = ctx.state();
        let plan = state
            .create_physical_plan(&optimized)
            .await
            .map_err(internal)?;
        let task = Arc::new(TaskContext::from(&state));
        if let Some(join) = &spec.join {
            let time_col = |i: usize| -> Result<usize, RuntimeError> {
                match roles.get(i) {
                    Some(InputRole::Stream {
                        time_field: Some(f),
                    }) => tables[i].arrow.index_of(f).map_err(internal),
                    _ => Err(internal("interval join input without event time")),
                }
            };
            let [a, b] = slots.as_slice() else {
                return Err(internal("an interval join has two inputs"));
            };
            return Ok(TransformOp::IntervalJoin(Box::new(IntervalJoin {
                slots: [a.clone(), b.clone()],
                plan,
                task,
                buffers: [Vec::new(), Vec::new()],
                schemas: [tables[0].arrow.clone(), tables[1].arrow.clone()],
                time_cols: [time_col(0)?, time_col(1)?],
                stream_time: [None, None],
                keep: join.within.as_millis() as i64 + allowed,
            })));
        }
        let (Some(w), Some(time_field)) = (&spec.window, time_field) else {
            return Ok(TransformOp::Stateless { slots, plan, task });
        };
        let shape = if let Some(size) = w.tumbling {
            Shape::Tumbling {
                size: size.as_millis() as i64,
            }
        } else if let Some(h) = &w.hopping {
            Shape::Hopping {
                size: h.size.as_millis() as i64,
                slide: h.slide.as_millis() as i64,
            }
        } else if let Some(session) = &w.session {
            Shape::Session {
                gap: session.gap.as_millis() as i64,
            }
        } else {
            return Err(internal("a window with no shape passed validation"));
        };
        let timing = Timing {
            shape,
            allowed,
            time_field: time_field.to_string(),
        };
        let slot = slots
            .into_iter()
            .next()
            .ok_or_else(|| internal("no input"))?;
        let op = WindowOp::new(
            timing,
            tables[0].arrow.clone(),
            slot,
            plan,
            partitions,
            task,
        )?;
        Ok(TransformOp::Window(Box::new(op)))
    }

    /// Sets the contents of input `input` (a table) for the next batches.
    pub fn set_table(&mut self, input: usize, rows: Vec<RecordBatch>) {
        if let TransformOp::Stateless { slots, .. } = self
            && let Some(slot) = slots.get(input)
        {
            slot.set(rows);
        }
    }

    /// Runs one batch of `partition`'s rows (in offset order) arriving on input `input`.
    pub async fn process(
        &mut self,
        batch: RecordBatch,
        partition: i32,
        input: usize,
    ) -> Result<TransformOutput, RuntimeError> {
        match self {
            TransformOp::Stateless { slots, plan, task } => {
                let slot = slots.get(input).ok_or_else(|| internal("no such input"))?;
                slot.set(vec![batch]);
                let rows = run(plan, task).await?;
                Ok(TransformOutput {
                    rows,
                    late: Vec::new(),
                })
            }
            TransformOp::Window(op) => {
                let out = op.process(&batch, partition).await?;
                Ok(TransformOutput {
                    rows: out.emitted,
                    late: out.late,
                })
            }
            TransformOp::IntervalJoin(j) => {
                let side = input.min(1);
                let other = 1 - side;
                j.slots[side].set(vec![batch.clone()]);
                j.slots[other].set(j.buffers[other].clone());
                let rows = run(&j.plan, &j.task).await?;
                if let Some(max) = times(&batch, j.time_cols[side])?
                    .into_iter()
                    .flatten()
                    .max()
                {
                    j.stream_time[side] = Some(j.stream_time[side].map_or(max, |t| t.max(max)));
                }
                j.buffers[side].push(batch);
                j.evict()?;
                Ok(TransformOutput {
                    rows,
                    late: Vec::new(),
                })
            }
        }
    }

    /// Emits all open windows (the input has ended).
    pub async fn flush(&mut self) -> Result<Vec<RecordBatch>, RuntimeError> {
        match self {
            TransformOp::Window(op) => op.flush().await,
            _ => Ok(Vec::new()),
        }
    }

    /// The operator's state for a checkpoint; `None` for stateless transforms.
    pub fn save(&mut self) -> Result<Option<Vec<u8>>, RuntimeError> {
        let saved = match self {
            TransformOp::Stateless { .. } => return Ok(None),
            TransformOp::Window(op) => {
                let snapshot = op.snapshot()?;
                let rows = write_rows(&snapshot.state.schema(), &[snapshot.state])?;
                SavedState::Window {
                    stream_time: snapshot.stream_time,
                    rows,
                }
            }
            TransformOp::IntervalJoin(j) => SavedState::IntervalJoin {
                stream_time: j.stream_time,
                left: write_rows(&j.schemas[0], &j.buffers[0])?,
                right: write_rows(&j.schemas[1], &j.buffers[1])?,
            },
        };
        Ok(Some(encode(&saved)?))
    }

    /// Replaces the state with one written by [`Self::save`] of the same transform.
    pub fn load(&mut self, bytes: &[u8]) -> Result<(), RuntimeError> {
        match (self, decode(bytes)?) {
            (TransformOp::Window(op), SavedState::Window { stream_time, rows }) => {
                let state = read_rows(&rows)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| internal("window checkpoint without rows"))?;
                op.restore(&WindowSnapshot { stream_time, state })
            }
            (
                TransformOp::IntervalJoin(j),
                SavedState::IntervalJoin {
                    stream_time,
                    left,
                    right,
                },
            ) => {
                j.stream_time = stream_time;
                j.buffers = [read_rows(&left)?, read_rows(&right)?];
                Ok(())
            }
            _ => Err(internal("checkpointed state of another kind of transform")),
        }
    }

    /// The window operator, for windowed transforms.
    pub fn window(&mut self) -> Option<&mut WindowOp> {
        match self {
            TransformOp::Window(op) => Some(op),
            _ => None,
        }
    }
}

/// Executes `plan` once, reset first: operators such as a hash join keep state between
/// executions (its build side), and each micro-batch must run afresh.
async fn run(
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

/// A stateful transform's state in a checkpoint (rows as Arrow IPC).
#[derive(serde::Serialize, serde::Deserialize)]
enum SavedState {
    Window {
        stream_time: Vec<(i32, Option<i64>)>,
        #[serde(with = "serde_bytes")]
        rows: Vec<u8>,
    },
    IntervalJoin {
        stream_time: [Option<i64>; 2],
        #[serde(with = "serde_bytes")]
        left: Vec<u8>,
        #[serde(with = "serde_bytes")]
        right: Vec<u8>,
    },
}

impl IntervalJoin {
    /// Drops rows no future row of the other side can match.
    fn evict(&mut self) -> Result<(), RuntimeError> {
        for side in 0..2 {
            let Some(other_time) = self.stream_time[1 - side] else {
                continue;
            };
            let threshold = other_time - self.keep;
            let mut kept = Vec::with_capacity(self.buffers[side].len());
            for b in self.buffers[side].drain(..) {
                let ts = times(&b, self.time_cols[side])?;
                if ts.iter().all(|t| t.is_some_and(|t| t >= threshold)) {
                    kept.push(b);
                    continue;
                }
                let mask: BooleanArray = ts
                    .iter()
                    .map(|t| Some(t.is_some_and(|t| t >= threshold)))
                    .collect();
                let b = filter_record_batch(&b, &mask).map_err(internal)?;
                if b.num_rows() > 0 {
                    kept.push(b);
                }
            }
            self.buffers[side] = kept;
        }
        Ok(())
    }
}
