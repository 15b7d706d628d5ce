//! Interval join of two streams: each side's rows are buffered; a new batch of one side is
//! joined (by the SQL, planned once) with the other side's buffer and then buffered itself,
//! so every pair meets exactly once. A side's rows are dropped once the other side's stream
//! time is more than `within` + `max_out_of_order` past them.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use planner::InputRole;
use planner::sql::InputTable;

use super::SavedTransform;
use crate::checkpoint::{decode, encode, read_rows, write_rows};
use crate::error::{RuntimeError, internal};
use crate::operator::{Context, Operator};
use crate::slot::Slot;

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

pub(crate) fn times(batch: &RecordBatch, col: usize) -> Result<Vec<Option<i64>>, RuntimeError> {
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

impl IntervalJoin {
    /// Joins the two streams `inputs` by `plan` (reading `slots`), keeping each side's rows
    /// for `keep` ms of the other side's stream time.
    pub fn new(
        slots: Vec<Slot>,
        plan: Arc<dyn ExecutionPlan>,
        task: Arc<TaskContext>,
        inputs: &[InputTable],
        roles: &[InputRole],
        keep: i64,
    ) -> Result<Self, RuntimeError> {
        let time_col = |i: usize| -> Result<usize, RuntimeError> {
            match roles.get(i) {
                Some(InputRole::Stream {
                    time_field: Some(f),
                }) => inputs[i].arrow.index_of(f).map_err(internal),
                _ => Err(internal("interval join input without event time")),
            }
        };
        let [a, b] = slots.as_slice() else {
            return Err(internal("an interval join has two inputs"));
        };
        Ok(Self {
            slots: [a.clone(), b.clone()],
            plan,
            task,
            buffers: [Vec::new(), Vec::new()],
            schemas: [inputs[0].arrow.clone(), inputs[1].arrow.clone()],
            time_cols: [time_col(0)?, time_col(1)?],
            stream_time: [None, None],
            keep,
        })
    }

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

#[async_trait]
impl Operator for IntervalJoin {
    async fn process(
        &mut self,
        port: usize,
        partition: i32,
        batch: RecordBatch,
        ctx: &mut Context,
    ) -> Result<(), RuntimeError> {
        let side = port.min(1);
        let other = 1 - side;
        self.slots[side].set(vec![batch.clone()]);
        self.slots[other].set(self.buffers[other].clone());
        for rows in super::run(&self.plan, &self.task).await? {
            ctx.emit(0, partition, rows);
        }
        if let Some(max) = times(&batch, self.time_cols[side])?
            .into_iter()
            .flatten()
            .max()
        {
            self.stream_time[side] = Some(self.stream_time[side].map_or(max, |t| t.max(max)));
        }
        self.buffers[side].push(batch);
        self.evict()
    }

    fn save(&mut self) -> Result<Option<Vec<u8>>, RuntimeError> {
        encode(&SavedTransform::IntervalJoin {
            stream_time: self.stream_time,
            left: write_rows(&self.schemas[0], &self.buffers[0])?,
            right: write_rows(&self.schemas[1], &self.buffers[1])?,
        })
        .map(Some)
    }

    fn load(&mut self, state: &[u8]) -> Result<(), RuntimeError> {
        let SavedTransform::IntervalJoin {
            stream_time,
            left,
            right,
        } = decode(state)?
        else {
            return Err(internal("checkpointed state of another kind of transform"));
        };
        self.stream_time = stream_time;
        self.buffers = [read_rows(&left)?, read_rows(&right)?];
        Ok(())
    }
}
