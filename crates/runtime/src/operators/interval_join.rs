//! Interval join of two streams: each side's rows are buffered; a new batch of one side is
//! joined (by the SQL, planned once) with the other side's buffer and then buffered itself,
//! so every pair meets exactly once. A side's rows are dropped once the other side's stream
//! time is more than `within` + `max_out_of_order` past them.
//!
//! Sides read back from repartitions interleave the rows of several writers (channels):
//! there a side's stream time is the smallest over its channels (each the largest of the
//! stream time its rows carry and its writer's marks; idle channels left out), so that a
//! writer running behind still finds the rows it can match.

use std::collections::{BTreeMap, BTreeSet};
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
    /// Inputs read back from repartitions: per side, each channel's stream time.
    channels: Option<[BTreeMap<i32, Option<i64>>; 2]>,
    /// Per side, channels whose writer is idle.
    idle: [BTreeSet<i32>; 2],
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
    /// for `keep` ms of the other side's stream time; `channels`: both inputs are read back
    /// from repartitions, with these channels.
    pub fn new(
        slots: Vec<Slot>,
        plan: Arc<dyn ExecutionPlan>,
        task: Arc<TaskContext>,
        inputs: &[InputTable],
        roles: &[InputRole],
        keep: i64,
        channels: Option<&[i32]>,
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
            channels: channels.map(|cs| {
                let side: BTreeMap<i32, Option<i64>> = cs.iter().map(|c| (*c, None)).collect();
                [side.clone(), side]
            }),
            idle: [BTreeSet::new(), BTreeSet::new()],
        })
    }

    /// The stream time of `side` that eviction goes by.
    fn side_time(&self, side: usize) -> Option<i64> {
        let Some(channels) = &self.channels else {
            return self.stream_time[side];
        };
        let mut least: Option<i64> = None;
        for (c, t) in &channels[side] {
            if self.idle[side].contains(c) {
                continue;
            }
            let t = (*t)?;
            least = Some(least.map_or(t, |l| l.min(t)));
        }
        least
    }

    /// Raises channel `channel`'s stream time of `side` to `time`.
    fn advance_channel(&mut self, side: usize, channel: i32, time: Option<i64>) {
        let (Some(channels), Some(time)) = (&mut self.channels, time) else {
            return;
        };
        let t = channels[side].entry(channel).or_insert(None);
        *t = Some(t.map_or(time, |t| t.max(time)));
    }

    /// Drops rows no future row of the other side can match.
    fn evict(&mut self) -> Result<(), RuntimeError> {
        for side in 0..2 {
            let Some(other_time) = self.side_time(1 - side) else {
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
        // Rows read back from a repartition carry their writer's stream time: taken in,
        // then dropped.
        let batch = match batch.schema().index_of(planner::EXCHANGE_STREAM_TIME) {
            Ok(i) => {
                let mut batch = batch;
                let carried = batch.remove_column(i);
                let carried = carried
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Int64Array>()
                    .and_then(|c| c.iter().flatten().max());
                self.advance_channel(side, partition, carried);
                batch
            }
            Err(_) => batch,
        };
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
            self.advance_channel(side, partition, Some(max));
        }
        self.buffers[side].push(batch);
        self.evict()
    }

    async fn progress(
        &mut self,
        port: usize,
        channel: i32,
        mark: connectors::Mark,
        _ctx: &mut Context,
    ) -> Result<(), RuntimeError> {
        let side = port.min(1);
        self.advance_channel(side, channel, mark.time);
        if mark.idle {
            self.idle[side].insert(channel);
        } else {
            self.idle[side].remove(&channel);
        }
        self.evict()
    }

    fn save(&mut self) -> Result<Option<Vec<u8>>, RuntimeError> {
        let channels = |side: usize| {
            self.channels
                .as_ref()
                .map(|c| c[side].iter().map(|(k, v)| (*k, *v)).collect())
                .unwrap_or_default()
        };
        encode(&SavedTransform::IntervalJoin {
            stream_time: self.stream_time,
            channels: [channels(0), channels(1)],
            left: write_rows(&self.schemas[0], &self.buffers[0])?,
            right: write_rows(&self.schemas[1], &self.buffers[1])?,
        })
        .map(Some)
    }

    fn load(&mut self, state: &[u8]) -> Result<(), RuntimeError> {
        let SavedTransform::IntervalJoin {
            stream_time,
            channels,
            left,
            right,
        } = decode(state)?
        else {
            return Err(internal("checkpointed state of another kind of transform"));
        };
        self.stream_time = stream_time;
        if let Some(mine) = &mut self.channels {
            for (side, saved) in channels.into_iter().enumerate() {
                mine[side].extend(saved);
            }
        }
        self.buffers = [read_rows(&left)?, read_rows(&right)?];
        Ok(())
    }
}
