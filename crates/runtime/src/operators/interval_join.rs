//! Interval join of two streams: each side's rows are buffered; a new batch of one side is
//! joined (by the SQL, planned once) with the other side's buffer and then buffered itself,
//! so every pair meets exactly once. A side's rows are dropped once the other side's stream
//! time is more than `within` + `max_out_of_order` past them.
//!
//! Sides read back from repartitions interleave the rows of several writers (channels):
//! there a side's stream time is the smallest over its channels (each the largest of the
//! stream time its rows carry and its writer's marks; idle channels left out), so that a
//! writer running behind still finds the rows it can match.
//!
//! In a changelog the state is incremental: each buffered batch is one entry (`b`, the
//! side, its number), written once after it arrives and tombstoned once every row of it
//! has been dropped; the entry `t` holds the stream times and, per batch still held, the
//! highest eviction threshold it has been filtered by, so that a restore drops exactly the
//! rows that had been dropped (eviction is a filter by time: a batch's rows held are those
//! at or after its highest threshold).

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
use crate::operator::{Context, Operator, StateEntry};
use crate::slot::Slot;

/// A batch of one side, held for rows of the other.
#[derive(Debug, Clone)]
struct Held {
    /// Its number (per operator, increasing).
    id: u64,
    rows: RecordBatch,
    /// The highest eviction threshold it was filtered by.
    floor: Option<i64>,
    /// Written to the changelog.
    written: bool,
}

/// The changelog entry `t` of an interval join.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Clocks {
    stream_time: [Option<i64>; 2],
    channels: [Vec<(i32, Option<i64>)>; 2],
    next: u64,
    /// Per side, each held batch's number and highest threshold.
    floors: [Vec<(u64, Option<i64>)>; 2],
}

/// State of an interval join.
#[derive(Debug)]
pub struct IntervalJoin {
    slots: [Slot; 2],
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    buffers: [Vec<Held>; 2],
    /// The number of the next batch held.
    next: u64,
    /// Batches written to the changelog and since dropped: tombstones due.
    gone: Vec<(usize, u64)>,
    /// Whether `changes` has been called (the first call replaces a whole-state entry).
    tracking: bool,
    schemas: [SchemaRef; 2],
    time_cols: [usize; 2],
    stream_time: [Option<i64>; 2],
    keep: i64,
    /// Inputs read back from repartitions: per side, each channel's stream time.
    channels: Option<[BTreeMap<i32, Option<i64>>; 2]>,
    /// Per side, channels whose writer is idle.
    idle: [BTreeSet<i32>; 2],
}

/// The rows of `batch` whose time (column `col`) is at or after `threshold`.
fn at_or_after(
    batch: &RecordBatch,
    col: usize,
    threshold: i64,
) -> Result<RecordBatch, RuntimeError> {
    let ts = times(batch, col)?;
    if ts.iter().all(|t| t.is_some_and(|t| t >= threshold)) {
        return Ok(batch.clone());
    }
    let mask: BooleanArray = ts
        .iter()
        .map(|t| Some(t.is_some_and(|t| t >= threshold)))
        .collect();
    filter_record_batch(batch, &mask).map_err(internal)
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
            next: 0,
            gone: Vec::new(),
            tracking: false,
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
            for mut b in std::mem::take(&mut self.buffers[side]) {
                b.floor = Some(b.floor.map_or(threshold, |f| f.max(threshold)));
                let rows = at_or_after(&b.rows, self.time_cols[side], threshold)?;
                if rows.num_rows() > 0 {
                    b.rows = rows;
                    kept.push(b);
                } else if b.written {
                    self.gone.push((side, b.id));
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
        self.slots[other].set(self.buffers[other].iter().map(|b| b.rows.clone()).collect());
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
        self.hold(side, batch);
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
        encode(&SavedTransform::IntervalJoin {
            stream_time: self.stream_time,
            channels: [self.channel_times(0), self.channel_times(1)],
            left: write_rows(&self.schemas[0], &self.rows(0))?,
            right: write_rows(&self.schemas[1], &self.rows(1))?,
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
        self.buffers = [Vec::new(), Vec::new()];
        for (side, bytes) in [left, right].iter().enumerate() {
            for rows in read_rows(bytes)? {
                self.hold(side, rows);
            }
        }
        Ok(())
    }

    /// Batches that arrived since the last call, batches dropped since (tombstones), and
    /// the clocks (`t`).
    fn changes(&mut self) -> Result<Vec<StateEntry>, RuntimeError> {
        let mut out = Vec::new();
        if !self.tracking {
            // The whole state under the empty key, as changelogs held it before they were
            // per batch, is replaced by the entries per batch.
            self.tracking = true;
            out.push((Vec::new(), None));
        }
        for (side, id) in std::mem::take(&mut self.gone) {
            out.push((batch_key(side, id), None));
        }
        for side in 0..2 {
            for b in &mut self.buffers[side] {
                if !b.written {
                    out.push((
                        batch_key(side, b.id),
                        Some(write_rows(
                            &self.schemas[side],
                            std::slice::from_ref(&b.rows),
                        )?),
                    ));
                    b.written = true;
                }
            }
        }
        let floors = |side: usize| self.buffers[side].iter().map(|b| (b.id, b.floor)).collect();
        let clocks = Clocks {
            stream_time: self.stream_time,
            channels: [self.channel_times(0), self.channel_times(1)],
            next: self.next,
            floors: [floors(0), floors(1)],
        };
        out.push((b"t".to_vec(), Some(encode(&clocks)?)));
        Ok(out)
    }

    fn restore(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), RuntimeError> {
        let mut clocks: Option<Clocks> = None;
        let mut held: [BTreeMap<u64, RecordBatch>; 2] = [BTreeMap::new(), BTreeMap::new()];
        for (k, v) in entries {
            match k.split_first() {
                // A changelog written before it was per batch.
                None => self.load(&v)?,
                Some((b't', [])) => clocks = Some(decode(&v)?),
                Some((b'b', rest)) if rest.len() == 9 => {
                    let side = usize::from(rest[0] == 1);
                    let id = u64::from_be_bytes(rest[1..].try_into().map_err(internal)?);
                    let rows = read_rows(&v)?.into_iter().next();
                    if let Some(rows) = rows {
                        held[side].insert(id, rows);
                    }
                }
                _ => return Err(internal("an unknown entry in an interval join's changelog")),
            }
        }
        let Some(clocks) = clocks else {
            return Ok(());
        };
        self.stream_time = clocks.stream_time;
        if let Some(mine) = &mut self.channels {
            for (side, saved) in clocks.channels.into_iter().enumerate() {
                mine[side].extend(saved);
            }
        }
        self.next = clocks.next;
        self.buffers = [Vec::new(), Vec::new()];
        for (side, floors) in clocks.floors.into_iter().enumerate() {
            for (id, floor) in floors {
                let Some(rows) = held[side].remove(&id) else {
                    return Err(internal("an interval join's changelog lacks a held batch"));
                };
                let rows = match floor {
                    Some(f) => at_or_after(&rows, self.time_cols[side], f)?,
                    None => rows,
                };
                self.buffers[side].push(Held {
                    id,
                    rows,
                    floor,
                    written: true,
                });
            }
        }
        // Batches dropped after their tombstone was due but before it was compacted away.
        for (side, rest) in held.iter().enumerate() {
            self.gone.extend(rest.keys().map(|id| (side, *id)));
        }
        Ok(())
    }
}

/// The changelog key of batch `id` of `side`.
fn batch_key(side: usize, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.push(b'b');
    k.push(side as u8);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl IntervalJoin {
    /// The rows held of `side`.
    fn rows(&self, side: usize) -> Vec<RecordBatch> {
        self.buffers[side].iter().map(|b| b.rows.clone()).collect()
    }

    /// Holds `rows` of `side` as a new batch.
    fn hold(&mut self, side: usize, rows: RecordBatch) {
        self.buffers[side].push(Held {
            id: self.next,
            rows,
            floor: None,
            written: false,
        });
        self.next += 1;
    }

    /// Each channel's stream time of `side` (inputs read back from repartitions).
    fn channel_times(&self, side: usize) -> Vec<(i32, Option<i64>)> {
        self.channels
            .as_ref()
            .map(|c| c[side].iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }
}
