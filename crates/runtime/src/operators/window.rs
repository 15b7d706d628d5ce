//! Event-time window aggregation: tumbling, hopping and session windows.
//!
//! DataFusion plans the windowed SQL; this operator runs its aggregate incrementally. From
//! the physical plan we take the aggregate's input plan (filters and projections below the
//! `GROUP BY`), its group expressions and its aggregate functions, and the plan above it
//! (projections, `HAVING`). Each micro-batch is placed in windows, run through the input
//! plan, and folded into DataFusion accumulators kept per window and group key. When the
//! watermark passes a window's end its groups are evaluated, in window-end, window-start then
//! key order, and run through the plan above the aggregate.
//!
//! Session windows are kept per key as a list of disjoint sessions `[first event, last event
//! + gap)`; an event that falls within `gap` of a session extends it, and one that bridges two
//! sessions merges them (their accumulators merge through DataFusion's `state()` /
//! `merge_batch()`, the same path DataFusion uses to combine partial aggregates).
//!
//! Lateness is decided per row, in offset order within its partition, as Kafka Streams does
//! with stream time: a row is late for a window when the window's end is at or before the
//! largest event time this operator saw earlier in that partition, minus `max_out_of_order`
//! (for sessions, the window is the row's own `[ts, ts + gap)`). The watermark is the
//! smallest over partitions of (largest event time − max_out_of_order); partitions marked
//! idle do not hold it back. So results do not depend on batch boundaries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, filter, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::{ExecutionPlan, collect};

use async_trait::async_trait;
use planner::{OnLate, WindowShape};

use super::SavedTransform;
use crate::checkpoint::{decode, encode, read_rows, write_rows};
use crate::error::{RuntimeError, internal};
use crate::metrics::Detail;
use crate::operator::{Context, Operator};
use crate::slot::{Slot, SlotExec};

/// Window shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Fixed windows of `size` ms aligned to the epoch.
    Tumbling {
        /// Window length, ms.
        size: i64,
    },
    /// Windows of `size` ms starting every `slide` ms.
    Hopping {
        /// Window length, ms.
        size: i64,
        /// Distance between starts, ms.
        slide: i64,
    },
    /// Per-key sessions that close after `gap` ms without events.
    Session {
        /// Inactivity gap, ms.
        gap: i64,
    },
}

impl Shape {
    /// Provisional windows of an event at `ts` as (start, end), oldest first. For sessions,
    /// the event's own `[ts, ts + gap)`, which merging may later widen.
    fn windows(self, ts: i64, out: &mut Vec<(i64, i64)>) {
        out.clear();
        match self {
            Shape::Tumbling { size } => {
                let s = ts.div_euclid(size) * size;
                out.push((s, s + size));
            }
            Shape::Hopping { size, slide } => {
                let mut start = ts.div_euclid(slide) * slide;
                while start + size > ts {
                    out.push((start, start + size));
                    start -= slide;
                }
                out.reverse();
            }
            Shape::Session { gap } => out.push((ts, ts + gap)),
        }
    }
}

/// When rows belong to windows and when they are late.
#[derive(Debug, Clone)]
pub struct Timing {
    /// The window shape.
    pub shape: Shape,
    /// `max_out_of_order` of the input, ms.
    pub allowed: i64,
    /// The timestamp column that places rows.
    pub time_field: String,
}

/// What one input batch produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Rows of windows that closed, through the plan above the aggregate.
    pub emitted: Vec<RecordBatch>,
    /// Indices (in the input batch) of rows that were late for every window they fall in,
    /// or had no event time; with the reason.
    pub late: Vec<(usize, &'static str)>,
}

type Accs = Vec<Box<dyn Accumulator>>;

/// A window operator's state between two micro-batches.
#[derive(Debug, Clone)]
pub struct WindowSnapshot {
    /// Largest event time seen per partition.
    pub stream_time: Vec<(i32, Option<i64>)>,
    /// Open windows: start, end, key columns, aggregate state columns.
    pub state: RecordBatch,
}

/// One session of one key.
struct Session {
    start: i64,
    end: i64,
    accs: Accs,
}

/// Open windows.
enum State {
    /// Tumbling and hopping: window end -> (window start, key) -> accumulators.
    Fixed(BTreeMap<i64, BTreeMap<(i64, OwnedRow), Accs>>),
    /// Sessions: key -> its disjoint sessions, by start.
    Sessions(BTreeMap<OwnedRow, Vec<Session>>),
}

/// The window operator of one windowed transform.
pub struct WindowOp {
    shape: Shape,
    allowed: i64,
    time_col: usize,
    input_schema: SchemaRef,
    input_slot: Slot,
    pre: Arc<dyn ExecutionPlan>,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// Positions of `window_start` / `window_end` among the group expressions.
    start_at: Option<usize>,
    end_at: Option<usize>,
    /// Converts the other group columns (the key) to comparable rows.
    converter: RowConverter,
    aggs: Vec<Arc<AggregateFunctionExpr>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    state: State,
    agg_schema: SchemaRef,
    output_slot: Slot,
    post: Arc<dyn ExecutionPlan>,
    stream_time: BTreeMap<i32, Option<i64>>,
    idle: BTreeSet<i32>,
    ctx: Arc<TaskContext>,
    /// Set once its state goes to a changelog: the keys whose windows changed since the
    /// last [`WindowOp::changes`] are kept in `dirty`.
    tracking: bool,
    dirty: BTreeSet<OwnedRow>,
    /// Keys with an entry in the changelog (a key whose windows have all closed gets a
    /// tombstone).
    logged: BTreeSet<OwnedRow>,
}

impl std::fmt::Debug for WindowOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowOp")
            .field("shape", &self.shape)
            .field("open", &self.open_windows())
            .finish()
    }
}

/// Replaces `target` in `plan` with `new`.
fn replace(
    plan: &Arc<dyn ExecutionPlan>,
    target: &Arc<dyn ExecutionPlan>,
    new: &Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>, RuntimeError> {
    if Arc::ptr_eq(plan, target) {
        return Ok(new.clone());
    }
    let children: Vec<Arc<dyn ExecutionPlan>> = plan
        .children()
        .into_iter()
        .map(|c| replace(c, target, new))
        .collect::<Result<_, _>>()?;
    if children.is_empty() {
        return Ok(plan.clone());
    }
    #[allow(deprecated)] // the replacement API needs options we do not use
    plan.clone().with_new_children(children).map_err(internal)
}

/// The topmost aggregate of `plan`.
fn find_aggregate(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if plan.downcast_ref::<AggregateExec>().is_some() {
        return Some(plan.clone());
    }
    plan.children().into_iter().find_map(find_aggregate)
}

fn ms_values(array: &ArrayRef) -> Result<Vec<Option<i64>>, RuntimeError> {
    let ms = cast(array, &DataType::Timestamp(TimeUnit::Millisecond, None)).map_err(internal)?;
    Ok(ms
        .as_primitive::<TimestampMillisecondType>()
        .iter()
        .collect())
}

/// Merges accumulators `from` into `into` (both of the same aggregates).
fn merge_into(into: &mut Accs, from: Accs) -> Result<(), RuntimeError> {
    for (a, mut b) in into.iter_mut().zip(from) {
        let state: Vec<ArrayRef> = b
            .state()
            .map_err(internal)?
            .into_iter()
            .map(|s| s.to_array())
            .collect::<Result<_, _>>()
            .map_err(internal)?;
        a.merge_batch(&state).map_err(internal)?;
    }
    Ok(())
}

/// How many key columns a snapshot batch has (after its start and end).
fn key_columns(batch: &RecordBatch) -> usize {
    batch
        .schema()
        .fields()
        .iter()
        .filter(|f| f.name().starts_with("__key"))
        .count()
}

/// The changelog key of a window key's entry.
fn entry_key(key: &OwnedRow) -> Vec<u8> {
    let mut k = b"k".to_vec();
    k.extend_from_slice(key.row().as_ref());
    k
}

/// Encodes the rows of a snapshot batch (of `schema`) as bytes and back.
fn row_converter(schema: &SchemaRef) -> Result<RowConverter, RuntimeError> {
    RowConverter::new(
        schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )
    .map_err(internal)
}

impl WindowOp {
    /// Builds the operator from the windowed transform's physical plan, which reads
    /// `input_slot` (rows of `input_schema`, with `window_start`/`window_end` last).
    pub fn new(
        timing: Timing,
        input_schema: SchemaRef,
        input_slot: Slot,
        plan: Arc<dyn ExecutionPlan>,
        partitions: &[i32],
        ctx: Arc<TaskContext>,
    ) -> Result<Self, RuntimeError> {
        let top = find_aggregate(&plan)
            .ok_or_else(|| internal("a windowed transform has no aggregate"))?;
        let top_agg = top
            .downcast_ref::<AggregateExec>()
            .ok_or_else(|| internal("not an aggregate"))?;
        // With a Final/Partial pair, the Partial one holds the input-side expressions.
        let partial = match top_agg.mode() {
            AggregateMode::Final | AggregateMode::FinalPartitioned => {
                find_aggregate(top_agg.input()).ok_or_else(|| internal("final without partial"))?
            }
            _ => top.clone(),
        };
        let agg = partial
            .downcast_ref::<AggregateExec>()
            .ok_or_else(|| internal("not an aggregate"))?;
        if !agg.group_expr().is_single() {
            return Err(RuntimeError::Unsupported(
                "GROUPING SETS, CUBE and ROLLUP in windowed transforms".into(),
            ));
        }
        let group_exprs: Vec<Arc<dyn PhysicalExpr>> = agg
            .group_expr()
            .expr()
            .iter()
            .map(|(e, _)| e.clone())
            .collect();
        let names: Vec<&str> = agg
            .group_expr()
            .expr()
            .iter()
            .map(|(_, n)| n.as_str())
            .collect();
        let start_at = names.iter().position(|n| *n == planner::WINDOW_START);
        let end_at = names.iter().position(|n| *n == planner::WINDOW_END);
        if start_at.is_none() && end_at.is_none() {
            return Err(internal("windowed aggregate does not group by the window"));
        }
        let pre_schema = agg.input().schema();
        let mut key_fields = group_exprs
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != start_at && Some(*i) != end_at)
            .map(|(_, e)| e.data_type(&pre_schema).map(SortField::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(internal)?;
        if key_fields.is_empty() {
            // A global window: one constant key column.
            key_fields.push(SortField::new(DataType::Boolean));
        }
        let converter = RowConverter::new(key_fields).map_err(internal)?;
        let agg_schema = top.schema();
        let output_slot = Slot::default();
        let scan: Arc<dyn ExecutionPlan> = Arc::new(
            SlotExec::new(agg_schema.clone(), output_slot.clone(), None).map_err(internal)?,
        );
        let post = replace(&plan, &top, &scan)?;
        let time_col = input_schema
            .index_of(&timing.time_field)
            .map_err(|_| internal(format!("no time column `{}`", timing.time_field)))?;
        let state = match timing.shape {
            Shape::Session { .. } => State::Sessions(BTreeMap::new()),
            _ => State::Fixed(BTreeMap::new()),
        };
        Ok(Self {
            shape: timing.shape,
            allowed: timing.allowed,
            time_col,
            input_schema,
            input_slot,
            pre: agg.input().clone(),
            group_exprs,
            start_at,
            end_at,
            converter,
            aggs: agg.aggr_expr().to_vec(),
            filters: agg.filter_expr().to_vec(),
            state,
            agg_schema,
            output_slot,
            post,
            stream_time: partitions.iter().map(|p| (*p, None)).collect(),
            idle: BTreeSet::new(),
            ctx,
            tracking: false,
            dirty: BTreeSet::new(),
            logged: BTreeSet::new(),
        })
    }

    /// Marks partitions idle (they stop holding back the watermark) or active again.
    pub fn set_idle(&mut self, idle: BTreeSet<i32>) {
        self.idle = idle;
    }

    /// What the writer of channel `partition` of a repartition says: its largest event
    /// time so far and whether it is idle. Emits the windows the watermark has passed.
    pub async fn progress(
        &mut self,
        partition: i32,
        time: Option<i64>,
        idle: bool,
    ) -> Result<Vec<RecordBatch>, RuntimeError> {
        let stream_time = self.stream_time.entry(partition).or_insert(None);
        if let Some(t) = time {
            *stream_time = Some(stream_time.map_or(t, |s| s.max(t)));
        }
        if idle {
            self.idle.insert(partition);
        } else {
            self.idle.remove(&partition);
        }
        self.emit(self.watermark()).await
    }

    /// The current watermark: `None` while a partition has seen nothing and is not idle.
    pub fn watermark(&self) -> Option<i64> {
        let mut wm: Option<i64> = None;
        for (p, t) in &self.stream_time {
            if self.idle.contains(p) {
                continue;
            }
            let t = (*t)? - self.allowed;
            wm = Some(wm.map_or(t, |w: i64| w.min(t)));
        }
        wm
    }

    /// Windows (for sessions: sessions) waiting for the watermark.
    pub fn open_windows(&self) -> usize {
        match &self.state {
            State::Fixed(m) => m.values().map(BTreeMap::len).sum(),
            State::Sessions(m) => m.values().map(Vec::len).sum(),
        }
    }

    /// Folds one batch of `partition`'s rows (in offset order) into the windows and emits
    /// the windows the watermark has passed.
    pub async fn process(
        &mut self,
        batch: &RecordBatch,
        partition: i32,
    ) -> Result<Output, RuntimeError> {
        self.process_carried(batch, partition, None).await
    }

    /// [`Self::process`], for rows read back from a repartition: `carried` holds each row's
    /// stream time in the partition it was first read from (see
    /// [`crate::operators::exchange`]), which lateness is decided against.
    pub async fn process_carried(
        &mut self,
        batch: &RecordBatch,
        partition: i32,
        carried: Option<&datafusion::arrow::array::Int64Array>,
    ) -> Result<Output, RuntimeError> {
        let mut out = Output::default();
        let times = cast(
            batch.column(self.time_col),
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )
        .map_err(internal)?;
        let times = times.as_primitive::<TimestampMillisecondType>();
        let mut indices: Vec<u32> = Vec::with_capacity(batch.num_rows());
        let mut starts: Vec<i64> = Vec::with_capacity(batch.num_rows());
        let mut ends: Vec<i64> = Vec::with_capacity(batch.num_rows());
        let mut windows = Vec::new();
        let stream_time = self.stream_time.entry(partition).or_insert(None);
        for row in 0..batch.num_rows() {
            if times.is_null(row) {
                out.late.push((row, "no event time"));
                continue;
            }
            let ts = times.value(row);
            if let Some(c) = carried.filter(|c| c.is_valid(row)) {
                let before = c.value(row);
                *stream_time = Some(stream_time.map_or(before, |t| t.max(before)));
            }
            let threshold = stream_time.map(|t| t - self.allowed);
            self.shape.windows(ts, &mut windows);
            let mut any = false;
            for (start, end) in &windows {
                if threshold.is_some_and(|th| *end <= th) {
                    continue;
                }
                any = true;
                indices.push(row as u32);
                starts.push(*start);
                ends.push(*end);
            }
            if !any {
                out.late.push((row, "late: its windows had closed"));
            }
            *stream_time = Some(stream_time.map_or(ts, |t| t.max(ts)));
        }
        if !indices.is_empty() {
            let take_idx = UInt32Array::from(indices);
            let mut columns: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .map(|c| take(c, &take_idx, None))
                .collect::<Result<_, _>>()
                .map_err(internal)?;
            columns.push(Arc::new(
                TimestampMillisecondArray::from(starts).with_timezone("UTC"),
            ));
            columns.push(Arc::new(
                TimestampMillisecondArray::from(ends).with_timezone("UTC"),
            ));
            let augmented =
                RecordBatch::try_new(self.input_schema.clone(), columns).map_err(internal)?;
            self.input_slot.set(vec![augmented]);
            let rows = collect(self.pre.clone(), self.ctx.clone())
                .await
                .map_err(internal)?;
            for rb in rows {
                self.fold_rows(&rb)?;
            }
        }
        out.emitted = self.emit(self.watermark()).await?;
        Ok(out)
    }

    /// The operator's state: stream time per partition, and every open window as one row of
    /// an Arrow batch (window start, window end, key columns, then each aggregate's state
    /// columns, as DataFusion's partial aggregates have them). Restoring merges those states
    /// into fresh accumulators, so a snapshot taken between two micro-batches and restored
    /// into a new operator continues exactly.
    pub fn snapshot(&mut self) -> Result<WindowSnapshot, RuntimeError> {
        self.snapshot_where(|_| true)
    }

    /// [`Self::snapshot`] of the windows of the keys `wanted` accepts.
    fn snapshot_where(
        &mut self,
        wanted: impl Fn(&OwnedRow) -> bool,
    ) -> Result<WindowSnapshot, RuntimeError> {
        let mut rows: Vec<(i64, i64, OwnedRow)> = Vec::new();
        let mut states: Vec<Vec<Vec<ScalarValue>>> = vec![Vec::new(); self.aggs.len()];
        let aggs = self.aggs.clone();
        let mut take_state = |accs: &mut Accs| -> Result<(), RuntimeError> {
            for (i, acc) in accs.iter_mut().enumerate() {
                let state = acc.state().map_err(internal)?;
                // `state()` may consume: rebuild the accumulator from its own state.
                let mut fresh = aggs[i].create_accumulator().map_err(internal)?;
                let arrays: Vec<ArrayRef> = state
                    .iter()
                    .map(|v| v.to_array())
                    .collect::<Result<_, _>>()
                    .map_err(internal)?;
                fresh.merge_batch(&arrays).map_err(internal)?;
                *acc = fresh;
                states[i].push(state);
            }
            Ok(())
        };
        match &mut self.state {
            State::Fixed(m) => {
                for (end, groups) in m.iter_mut() {
                    for ((start, key), accs) in groups.iter_mut() {
                        if !wanted(key) {
                            continue;
                        }
                        take_state(accs)?;
                        rows.push((*start, *end, key.clone()));
                    }
                }
            }
            State::Sessions(m) => {
                for (key, sessions) in m.iter_mut() {
                    if !wanted(key) {
                        continue;
                    }
                    for session in sessions.iter_mut() {
                        take_state(&mut session.accs)?;
                        rows.push((session.start, session.end, key.clone()));
                    }
                }
            }
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMillisecondArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ];
        columns.extend(
            self.converter
                .convert_rows(rows.iter().map(|r| r.2.row()))
                .map_err(internal)?,
        );
        let mut fields: Vec<datafusion::arrow::datatypes::Field> = vec![
            datafusion::arrow::datatypes::Field::new(
                "__start",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            datafusion::arrow::datatypes::Field::new(
                "__end",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ];
        for (i, c) in columns[2..].iter().enumerate() {
            fields.push(datafusion::arrow::datatypes::Field::new(
                format!("__key{i}"),
                c.data_type().clone(),
                true,
            ));
        }
        for (i, agg) in self.aggs.iter().enumerate() {
            let state_fields = agg.state_fields().map_err(internal)?;
            for (j, f) in state_fields.iter().enumerate() {
                let values: Vec<ScalarValue> = states[i].iter().map(|s| s[j].clone()).collect();
                let array = if values.is_empty() {
                    datafusion::arrow::array::new_empty_array(f.data_type())
                } else {
                    ScalarValue::iter_to_array(values).map_err(internal)?
                };
                fields.push(datafusion::arrow::datatypes::Field::new(
                    format!("__agg{i}_{j}"),
                    array.data_type().clone(),
                    true,
                ));
                columns.push(array);
            }
        }
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        let state = RecordBatch::try_new(schema, columns).map_err(internal)?;
        Ok(WindowSnapshot {
            stream_time: self.stream_time.iter().map(|(p, t)| (*p, *t)).collect(),
            state,
        })
    }

    /// Replaces the operator's state with `snapshot` (taken from an operator of the same
    /// transform).
    pub fn restore(&mut self, snapshot: &WindowSnapshot) -> Result<(), RuntimeError> {
        // Partitions added since the snapshot keep their place (nothing seen yet).
        for (p, t) in &snapshot.stream_time {
            self.stream_time.insert(*p, *t);
        }
        let batch = &snapshot.state;
        let key_count = key_columns(batch);
        let starts = ms_values(batch.column(0))?;
        let ends = ms_values(batch.column(1))?;
        let keys = self
            .converter
            .convert_columns(&batch.columns()[2..2 + key_count])
            .map_err(internal)?;
        let state_columns = &batch.columns()[2 + key_count..];
        self.state = match self.shape {
            Shape::Session { .. } => State::Sessions(BTreeMap::new()),
            _ => State::Fixed(BTreeMap::new()),
        };
        for row in 0..batch.num_rows() {
            let mut accs = self.new_accs()?;
            let mut col = 0;
            for (i, acc) in accs.iter_mut().enumerate() {
                let width = self.aggs[i].state_fields().map_err(internal)?.len();
                let slice: Vec<ArrayRef> = state_columns[col..col + width]
                    .iter()
                    .map(|c| c.slice(row, 1))
                    .collect();
                acc.merge_batch(&slice).map_err(internal)?;
                col += width;
            }
            let (start, end) = (
                starts[row].ok_or_else(|| internal("null start in snapshot"))?,
                ends[row].ok_or_else(|| internal("null end in snapshot"))?,
            );
            let key = keys.row(row).owned();
            match &mut self.state {
                State::Fixed(m) => {
                    m.entry(end).or_default().insert((start, key), accs);
                }
                State::Sessions(m) => m.entry(key).or_default().push(Session { start, end, accs }),
            }
        }
        Ok(())
    }

    /// The changelog entries of what changed since the last call (the first call: of
    /// everything): `t` with the stream times, and per key whose windows changed, `k` +
    /// the key's row bytes with the rows of its open windows (each as a row of
    /// [`Self::snapshot`]'s batch, length-prefixed), or a tombstone once they have all
    /// closed.
    pub fn changes(&mut self) -> Result<Vec<crate::operator::StateEntry>, RuntimeError> {
        let first = !self.tracking;
        self.tracking = true;
        let dirty = std::mem::take(&mut self.dirty);
        let snapshot = if first {
            self.snapshot()?
        } else {
            self.snapshot_where(|k| dirty.contains(k))?
        };
        let mut out = vec![(b"t".to_vec(), Some(encode(&snapshot.stream_time)?))];
        if first {
            // The whole state under the empty key, as changelogs held it before they were
            // per key, is replaced by the entries per key.
            out.push((Vec::new(), None));
        }
        let batch = &snapshot.state;
        let keys = self
            .converter
            .convert_columns(&batch.columns()[2..2 + key_columns(batch)])
            .map_err(internal)?;
        let rows = row_converter(&batch.schema())?
            .convert_columns(batch.columns())
            .map_err(internal)?;
        let mut values: BTreeMap<OwnedRow, Vec<u8>> = BTreeMap::new();
        for i in 0..batch.num_rows() {
            let row = rows.row(i);
            let value = values.entry(keys.row(i).owned()).or_default();
            value.extend_from_slice(&(row.as_ref().len() as u32).to_le_bytes());
            value.extend_from_slice(row.as_ref());
        }
        let mut gone: Vec<OwnedRow> = Vec::new();
        for key in &dirty {
            if !values.contains_key(key) && self.logged.contains(key) {
                gone.push(key.clone());
            }
        }
        for key in gone {
            self.logged.remove(&key);
            out.push((entry_key(&key), None));
        }
        for (key, value) in values {
            out.push((entry_key(&key), Some(value)));
            self.logged.insert(key);
        }
        Ok(out)
    }

    /// Replaces the state with the latest entries [`Self::changes`] wrote.
    pub fn restore_entries(
        &mut self,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), RuntimeError> {
        let empty = self.snapshot_where(|_| false)?;
        let schema = empty.state.schema();
        let converter = row_converter(&schema)?;
        let parser = converter.parser();
        let mut stream_time = Vec::new();
        let mut rows: Vec<Vec<u8>> = Vec::new();
        for (k, v) in &entries {
            match k.first() {
                Some(b't') => stream_time = decode(v)?,
                Some(b'k') => {
                    let mut at = 0;
                    while at + 4 <= v.len() {
                        let len =
                            u32::from_le_bytes([v[at], v[at + 1], v[at + 2], v[at + 3]]) as usize;
                        at += 4;
                        let row = v
                            .get(at..at + len)
                            .ok_or_else(|| internal("a window changelog entry ends early"))?;
                        rows.push(row.to_vec());
                        at += len;
                    }
                }
                _ => {}
            }
        }
        let columns = converter
            .convert_rows(rows.iter().map(|r| parser.parse(r)))
            .map_err(internal)?;
        let state = match columns.is_empty() {
            true => empty.state.clone(),
            false => RecordBatch::try_new(schema, columns).map_err(internal)?,
        };
        self.restore(&WindowSnapshot { stream_time, state })?;
        // What the changelog holds now.
        self.tracking = true;
        self.dirty.clear();
        self.logged.clear();
        let keys: Vec<OwnedRow> = match &self.state {
            State::Fixed(m) => m
                .values()
                .flat_map(|g| g.keys().map(|(_, k)| k.clone()))
                .collect(),
            State::Sessions(m) => m.keys().cloned().collect(),
        };
        self.logged.extend(keys);
        Ok(())
    }

    /// Emits every open window, as at the end of a bounded input.
    pub async fn flush(&mut self) -> Result<Vec<RecordBatch>, RuntimeError> {
        self.emit(Some(i64::MAX)).await
    }

    fn new_accs(&self) -> Result<Accs, RuntimeError> {
        self.aggs
            .iter()
            .map(|a| a.create_accumulator())
            .collect::<Result<Vec<_>, _>>()
            .map_err(internal)
    }

    /// Feeds the rows `members` of the evaluated arguments into `accs`.
    fn update(
        accs: &mut Accs,
        args: &[Vec<ArrayRef>],
        filters: &[Option<BooleanArray>],
        members: &[u32],
    ) -> Result<(), RuntimeError> {
        let idx = UInt32Array::from(members.to_vec());
        for (i, acc) in accs.iter_mut().enumerate() {
            let mut values: Vec<ArrayRef> = args[i]
                .iter()
                .map(|a| take(a, &idx, None))
                .collect::<Result<_, _>>()
                .map_err(internal)?;
            if let Some(mask) = &filters[i] {
                let mask = take(mask, &idx, None).map_err(internal)?;
                let mask = mask.as_boolean();
                values = values
                    .iter()
                    .map(|v| filter(v, mask))
                    .collect::<Result<_, _>>()
                    .map_err(internal)?;
            }
            acc.update_batch(&values).map_err(internal)?;
        }
        Ok(())
    }

    fn fold_rows(&mut self, rb: &RecordBatch) -> Result<(), RuntimeError> {
        let n = rb.num_rows();
        if n == 0 {
            return Ok(());
        }
        let groups: Vec<ArrayRef> = self
            .group_exprs
            .iter()
            .map(|e| e.evaluate(rb).and_then(|v| v.into_array(n)))
            .collect::<Result<_, _>>()
            .map_err(internal)?;
        let mut key_columns: Vec<ArrayRef> = groups
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != self.start_at && Some(*i) != self.end_at)
            .map(|(_, a)| a.clone())
            .collect();
        if key_columns.is_empty() {
            key_columns.push(Arc::new(BooleanArray::from(vec![true; n])));
        }
        let keys = self
            .converter
            .convert_columns(&key_columns)
            .map_err(internal)?;
        let starts = self.start_at.map(|i| ms_values(&groups[i])).transpose()?;
        let ends = self.end_at.map(|i| ms_values(&groups[i])).transpose()?;
        let shape = self.shape;
        let bounds = |row: usize| -> Result<(i64, i64), RuntimeError> {
            let s = starts.as_ref().and_then(|s| s[row]);
            let e = ends.as_ref().and_then(|e| e[row]);
            match (s, e, shape) {
                (Some(s), Some(e), _) => Ok((s, e)),
                (Some(s), None, Shape::Tumbling { size } | Shape::Hopping { size, .. }) => {
                    Ok((s, s + size))
                }
                (None, Some(e), Shape::Tumbling { size } | Shape::Hopping { size, .. }) => {
                    Ok((e - size, e))
                }
                (None, Some(e), Shape::Session { gap }) => Ok((e - gap, e)),
                _ => Err(internal("null or missing window bound")),
            }
        };
        let args: Vec<Vec<ArrayRef>> = self
            .aggs
            .iter()
            .map(|a| {
                a.expressions()
                    .iter()
                    .map(|e| e.evaluate(rb).and_then(|v| v.into_array(n)))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()
            .map_err(internal)?;
        let filters: Vec<Option<BooleanArray>> = self
            .filters
            .iter()
            .map(|f| match f {
                Some(f) => f
                    .evaluate(rb)
                    .and_then(|v| v.into_array(n))
                    .map(|a| Some(a.as_boolean().clone())),
                None => Ok(None),
            })
            .collect::<Result<_, _>>()
            .map_err(internal)?;
        // Group the rows by (window, key) for fixed windows, by key for sessions.
        let mut by_group: HashMap<(i64, i64, _), Vec<u32>> = HashMap::new();
        for row in 0..n {
            let (s, e) = bounds(row)?;
            let window = if matches!(self.shape, Shape::Session { .. }) {
                (0, 0)
            } else {
                (s, e)
            };
            by_group
                .entry((window.0, window.1, keys.row(row)))
                .or_default()
                .push(row as u32);
        }
        for ((s, e, key), members) in by_group {
            if self.tracking {
                self.dirty.insert(key.owned());
            }
            match self.shape {
                Shape::Session { gap } => {
                    // Local sessions of this batch: rows sorted by time, split at gaps.
                    let mut rows: Vec<(i64, u32)> = members
                        .iter()
                        .map(|r| bounds(*r as usize).map(|(s, _)| (s, *r)))
                        .collect::<Result<_, _>>()?;
                    rows.sort_unstable();
                    let mut run: Vec<u32> = Vec::new();
                    let mut run_start = rows[0].0;
                    let mut run_last = rows[0].0;
                    for (i, (ts, r)) in rows.iter().enumerate() {
                        if i > 0 && *ts >= run_last + gap {
                            let mut accs = self.new_accs()?;
                            Self::update(&mut accs, &args, &filters, &run)?;
                            self.add_session(key.owned(), run_start, run_last + gap, accs)?;
                            run.clear();
                            run_start = *ts;
                        }
                        run.push(*r);
                        run_last = *ts;
                    }
                    let mut accs = self.new_accs()?;
                    Self::update(&mut accs, &args, &filters, &run)?;
                    self.add_session(key.owned(), run_start, run_last + gap, accs)?;
                }
                _ => {
                    let accs = match &mut self.state {
                        State::Fixed(m) => m.entry(e).or_default().get_mut(&(s, key.owned())),
                        State::Sessions(_) => None,
                    };
                    match accs {
                        Some(accs) => Self::update(accs, &args, &filters, &members)?,
                        None => {
                            let mut accs = self.new_accs()?;
                            Self::update(&mut accs, &args, &filters, &members)?;
                            if let State::Fixed(m) = &mut self.state {
                                m.entry(e).or_default().insert((s, key.owned()), accs);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds session `[start, end)` of `key`, merging every session it overlaps or touches.
    fn add_session(
        &mut self,
        key: OwnedRow,
        start: i64,
        end: i64,
        accs: Accs,
    ) -> Result<(), RuntimeError> {
        let State::Sessions(map) = &mut self.state else {
            return Err(internal("not a session window"));
        };
        let sessions = map.entry(key).or_default();
        let mut merged = Session { start, end, accs };
        let mut kept = Vec::with_capacity(sessions.len() + 1);
        for s in sessions.drain(..) {
            // Sessions are [first, last + gap): they merge when one starts before the other ends.
            if s.start < merged.end && merged.start < s.end {
                merged.start = merged.start.min(s.start);
                merged.end = merged.end.max(s.end);
                merge_into(&mut merged.accs, s.accs)?;
            } else {
                kept.push(s);
            }
        }
        kept.push(merged);
        kept.sort_by_key(|s| s.start);
        *sessions = kept;
        Ok(())
    }

    /// Evaluates and removes every window ending at or before `watermark`.
    async fn emit(&mut self, watermark: Option<i64>) -> Result<Vec<RecordBatch>, RuntimeError> {
        let Some(wm) = watermark else {
            return Ok(Vec::new());
        };
        // (end, start, key, accumulators) of every closed window, in output order.
        let mut closed: Vec<(i64, i64, OwnedRow, Accs)> = Vec::new();
        match &mut self.state {
            State::Fixed(m) => {
                let keep = if wm == i64::MAX {
                    BTreeMap::new()
                } else {
                    m.split_off(&(wm + 1))
                };
                for (end, groups) in std::mem::replace(m, keep) {
                    for ((start, key), accs) in groups {
                        closed.push((end, start, key, accs));
                    }
                }
            }
            State::Sessions(m) => {
                for (key, sessions) in m.iter_mut() {
                    let (done, open): (Vec<Session>, Vec<Session>) =
                        sessions.drain(..).partition(|s| s.end <= wm);
                    *sessions = open;
                    closed.extend(
                        done.into_iter()
                            .map(|s| (s.end, s.start, key.clone(), s.accs)),
                    );
                }
                m.retain(|_, s| !s.is_empty());
                closed.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
            }
        }
        if closed.is_empty() {
            return Ok(Vec::new());
        }
        if self.tracking {
            for (_, _, key, _) in &closed {
                if !self.dirty.contains(key) {
                    self.dirty.insert(key.clone());
                }
            }
        }
        let mut values: Vec<Vec<ScalarValue>> =
            vec![Vec::with_capacity(closed.len()); self.aggs.len()];
        let mut starts = Vec::with_capacity(closed.len());
        let mut ends = Vec::with_capacity(closed.len());
        let mut keys = Vec::with_capacity(closed.len());
        for (end, start, key, mut accs) in closed {
            for (i, acc) in accs.iter_mut().enumerate() {
                values[i].push(acc.evaluate().map_err(internal)?);
            }
            starts.push(start);
            ends.push(end);
            keys.push(key);
        }
        let mut key_columns = self
            .converter
            .convert_rows(keys.iter().map(|r| r.row()))
            .map_err(internal)?
            .into_iter();
        let starts: ArrayRef =
            Arc::new(TimestampMillisecondArray::from(starts).with_timezone("UTC"));
        let ends: ArrayRef = Arc::new(TimestampMillisecondArray::from(ends).with_timezone("UTC"));
        let mut columns = Vec::with_capacity(self.agg_schema.fields().len());
        for i in 0..self.group_exprs.len() {
            let column = if Some(i) == self.start_at {
                starts.clone()
            } else if Some(i) == self.end_at {
                ends.clone()
            } else {
                key_columns.next().ok_or_else(|| internal("key columns"))?
            };
            columns.push(column);
        }
        for vals in values {
            columns.push(ScalarValue::iter_to_array(vals).map_err(internal)?);
        }
        // Match the aggregate's output types exactly (time zones, nullability of casts).
        let columns = columns
            .into_iter()
            .zip(self.agg_schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    cast(&c, f.data_type())
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(internal)?;
        let batch = RecordBatch::try_new(self.agg_schema.clone(), columns).map_err(internal)?;
        self.output_slot.set(vec![batch]);
        let out = collect(self.post.clone(), self.ctx.clone())
            .await
            .map_err(internal)?;
        Ok(out.into_iter().filter(|b| b.num_rows() > 0).collect())
    }
}

/// The operator of a windowed transform: a [`WindowOp`], with what late rows do.
#[derive(Debug)]
pub struct Window {
    name: String,
    op: WindowOp,
    on_late: OnLate,
}

impl Window {
    /// The window operator of transform `name`, from its physical plan, which reads
    /// `input_slot` (rows of `input_schema`, with `window_start`/`window_end` last).
    #[allow(clippy::too_many_arguments)] // one call site: the registry
    pub fn new(
        name: &str,
        shape: WindowShape,
        time_field: &str,
        on_late: OnLate,
        allowed: i64,
        input_schema: SchemaRef,
        input_slot: Slot,
        plan: Arc<dyn ExecutionPlan>,
        partitions: &[i32],
        ctx: Arc<TaskContext>,
    ) -> Result<Self, RuntimeError> {
        let ms = |d: std::time::Duration| d.as_millis() as i64;
        let shape = match shape {
            WindowShape::Tumbling { size } => Shape::Tumbling { size: ms(size) },
            WindowShape::Hopping { size, slide } => Shape::Hopping {
                size: ms(size),
                slide: ms(slide),
            },
            WindowShape::Session { gap } => Shape::Session { gap: ms(gap) },
        };
        let timing = Timing {
            shape,
            allowed,
            time_field: time_field.to_string(),
        };
        Ok(Self {
            name: name.to_string(),
            op: WindowOp::new(timing, input_schema, input_slot, plan, partitions, ctx)?,
            on_late,
        })
    }
}

#[async_trait]
impl Operator for Window {
    async fn process(
        &mut self,
        _port: usize,
        partition: i32,
        batch: RecordBatch,
        ctx: &mut Context,
    ) -> Result<(), RuntimeError> {
        // Rows read back from a repartition carry their stream time: used, then dropped.
        let (batch, carried) = match batch.schema().index_of(planner::EXCHANGE_STREAM_TIME) {
            Ok(i) => {
                let mut batch = batch;
                let column = batch.remove_column(i);
                let carried = column
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Int64Array>()
                    .cloned()
                    .ok_or_else(|| internal("the stream-time column of a repartition"))?;
                (batch, Some(carried))
            }
            Err(_) => (batch, None),
        };
        let out = self
            .op
            .process_carried(&batch, partition, carried.as_ref())
            .await?;
        if !out.late.is_empty() {
            ctx.late(out.late.len() as u64);
            if self.on_late == OnLate::DeadLetter {
                let idx = UInt32Array::from_iter_values(out.late.iter().map(|(r, _)| *r as u32));
                let columns = batch
                    .columns()
                    .iter()
                    .map(|c| take(c, &idx, None))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(internal)?;
                let late = RecordBatch::try_new(batch.schema(), columns).map_err(internal)?;
                let encoded = formats::json::encode_rows(&late).map_err(internal)?;
                for (bytes, (_, reason)) in encoded.into_iter().zip(&out.late) {
                    let headers = vec![
                        ("transform".to_string(), self.name.clone().into_bytes()),
                        (
                            "source-partition".to_string(),
                            partition.to_string().into_bytes(),
                        ),
                        ("error".to_string(), reason.as_bytes().to_vec()),
                    ];
                    ctx.dead_letter(bytes, headers);
                }
            }
        }
        for rows in out.emitted {
            ctx.emit(0, -1, rows);
        }
        Ok(())
    }

    async fn progress(
        &mut self,
        _port: usize,
        partition: i32,
        mark: connectors::Mark,
        ctx: &mut Context,
    ) -> Result<(), RuntimeError> {
        for rows in self.op.progress(partition, mark.time, mark.idle).await? {
            ctx.emit(0, -1, rows);
        }
        Ok(())
    }

    fn advance(&mut self, idle: &BTreeSet<i32>) -> Option<i64> {
        self.op.set_idle(idle.clone());
        // A window that has seen nothing holds the watermark at its minimum.
        Some(self.op.watermark().unwrap_or(i64::MIN))
    }

    async fn finish(&mut self, ctx: &mut Context) -> Result<(), RuntimeError> {
        for rows in self.op.flush().await? {
            ctx.emit(0, -1, rows);
        }
        Ok(())
    }

    fn holds_rows(&self) -> bool {
        true
    }

    fn save(&mut self) -> Result<Option<Vec<u8>>, RuntimeError> {
        let snapshot = self.op.snapshot()?;
        let rows = write_rows(&snapshot.state.schema(), &[snapshot.state])?;
        encode(&SavedTransform::Window {
            stream_time: snapshot.stream_time,
            rows,
        })
        .map(Some)
    }

    fn changes(&mut self) -> Result<Vec<crate::operator::StateEntry>, RuntimeError> {
        self.op.changes()
    }

    fn restore(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), RuntimeError> {
        // The whole state under the empty key: written before changelogs were per key.
        if let Some((_, whole)) = entries.iter().find(|(k, _)| k.is_empty()) {
            return self.load(whole);
        }
        self.op.restore_entries(entries)
    }

    fn load(&mut self, state: &[u8]) -> Result<(), RuntimeError> {
        let SavedTransform::Window { stream_time, rows } = decode(state)? else {
            return Err(internal("checkpointed state of another kind of transform"));
        };
        let state = read_rows(&rows)?
            .into_iter()
            .next()
            .ok_or_else(|| internal("window checkpoint without rows"))?;
        self.op.restore(&WindowSnapshot { stream_time, state })
    }

    fn report(&self, name: &str, detail: &mut Detail) {
        detail.late.entry(name.to_string()).or_insert(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds() {
        let mut out = Vec::new();
        Shape::Tumbling { size: 60 }.windows(125, &mut out);
        assert_eq!(out, vec![(120, 180)]);
        Shape::Tumbling { size: 60 }.windows(-1, &mut out);
        assert_eq!(out, vec![(-60, 0)]);
        Shape::Hopping {
            size: 60,
            slide: 20,
        }
        .windows(125, &mut out);
        assert_eq!(out, vec![(80, 140), (100, 160), (120, 180)]);
        Shape::Hopping {
            size: 60,
            slide: 20,
        }
        .windows(120, &mut out);
        assert_eq!(out, vec![(80, 140), (100, 160), (120, 180)]);
        Shape::Session { gap: 30 }.windows(100, &mut out);
        assert_eq!(out, vec![(100, 130)]);
    }
}
