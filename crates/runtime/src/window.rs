//! Event-time window aggregation.
//!
//! DataFusion plans the windowed SQL; this operator runs its aggregate incrementally. From
//! the physical plan we take the aggregate's input plan (filters and projections below the
//! `GROUP BY`), its group expressions and its aggregate functions, and the plan above it
//! (projections, `HAVING`). Each micro-batch is placed in windows, run through the input
//! plan, and folded into DataFusion accumulators kept per (window end, group key). When the
//! watermark passes a window's end its groups are evaluated, in window-end then key order,
//! and run through the plan above the aggregate.
//!
//! Lateness is decided per row, in offset order within its partition, as Kafka Streams does
//! with stream time: a row is late for a window when the window's end is at or before the
//! largest event time this operator saw earlier in that partition, minus `max_out_of_order`.
//! The watermark is the smallest over partitions of (largest event time − max_out_of_order);
//! partitions marked idle do not hold it back. So results do not depend on batch boundaries.

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

use crate::RuntimeError;
use crate::slot::{Slot, SlotExec};

/// Window shapes the operator runs.
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
}

impl Shape {
    fn size(self) -> i64 {
        match self {
            Shape::Tumbling { size } | Shape::Hopping { size, .. } => size,
        }
    }

    /// Window starts containing `ts`, oldest first.
    fn starts(self, ts: i64, out: &mut Vec<i64>) {
        out.clear();
        match self {
            Shape::Tumbling { size } => out.push(ts.div_euclid(size) * size),
            Shape::Hopping { size, slide } => {
                let last = ts.div_euclid(slide) * slide;
                let mut start = last;
                while start + size > ts {
                    out.push(start);
                    start -= slide;
                }
                out.reverse();
            }
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

/// Where a group's window end comes from.
#[derive(Debug, Clone, Copy)]
enum EndKey {
    /// The group expression at this index is `window_end`.
    End(usize),
    /// The group expression at this index is `window_start`; end = start + size.
    Start(usize),
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

type Groups = BTreeMap<OwnedRow, Vec<Box<dyn Accumulator>>>;

/// The window operator of one windowed transform.
pub struct WindowOp {
    shape: Shape,
    allowed: i64,
    time_col: usize,
    input_schema: SchemaRef,
    input_slot: Slot,
    pre: Arc<dyn ExecutionPlan>,
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    converter: RowConverter,
    aggs: Vec<Arc<AggregateFunctionExpr>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    end_key: EndKey,
    state: BTreeMap<i64, Groups>,
    agg_schema: SchemaRef,
    output_slot: Slot,
    post: Arc<dyn ExecutionPlan>,
    stream_time: BTreeMap<i32, Option<i64>>,
    idle: BTreeSet<i32>,
    ctx: Arc<TaskContext>,
}

impl std::fmt::Debug for WindowOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowOp")
            .field("shape", &self.shape)
            .field("open_windows", &self.state.len())
            .finish()
    }
}

fn internal(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Internal(message.into())
}

fn df(e: datafusion::error::DataFusionError) -> RuntimeError {
    RuntimeError::Internal(e.to_string())
}

fn arrow(e: datafusion::arrow::error::ArrowError) -> RuntimeError {
    RuntimeError::Internal(e.to_string())
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
    plan.clone().with_new_children(children).map_err(df)
}

/// The topmost aggregate of `plan`.
fn find_aggregate(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if plan.downcast_ref::<AggregateExec>().is_some() {
        return Some(plan.clone());
    }
    plan.children().into_iter().find_map(find_aggregate)
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
        let end_key = names
            .iter()
            .position(|n| *n == planner::WINDOW_END)
            .map(EndKey::End)
            .or_else(|| {
                names
                    .iter()
                    .position(|n| *n == planner::WINDOW_START)
                    .map(EndKey::Start)
            })
            .ok_or_else(|| internal("windowed aggregate does not group by the window"))?;
        let pre_schema = agg.input().schema();
        let sort_fields = group_exprs
            .iter()
            .map(|e| e.data_type(&pre_schema).map(SortField::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(df)?;
        let converter = RowConverter::new(sort_fields).map_err(arrow)?;
        let agg_schema = top.schema();
        let output_slot = Slot::default();
        let scan: Arc<dyn ExecutionPlan> =
            Arc::new(SlotExec::new(agg_schema.clone(), output_slot.clone(), None).map_err(df)?);
        let post = replace(&plan, &top, &scan)?;
        let time_col = input_schema
            .index_of(&timing.time_field)
            .map_err(|_| internal(format!("no time column `{}`", timing.time_field)))?;
        Ok(Self {
            shape: timing.shape,
            allowed: timing.allowed,
            time_col,
            input_schema,
            input_slot,
            pre: agg.input().clone(),
            group_exprs,
            converter,
            aggs: agg.aggr_expr().to_vec(),
            filters: agg.filter_expr().to_vec(),
            end_key,
            state: BTreeMap::new(),
            agg_schema,
            output_slot,
            post,
            stream_time: partitions.iter().map(|p| (*p, None)).collect(),
            idle: BTreeSet::new(),
            ctx,
        })
    }

    /// Marks partitions idle (they stop holding back the watermark) or active again.
    pub fn set_idle(&mut self, idle: BTreeSet<i32>) {
        self.idle = idle;
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

    /// Windows waiting for the watermark.
    pub fn open_windows(&self) -> usize {
        self.state.len()
    }

    /// Folds one batch of `partition`'s rows (in offset order) into the windows and emits
    /// the windows the watermark has passed.
    pub async fn process(
        &mut self,
        batch: &RecordBatch,
        partition: i32,
    ) -> Result<Output, RuntimeError> {
        let mut out = Output::default();
        let times = cast(
            batch.column(self.time_col),
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )
        .map_err(arrow)?;
        let times = times.as_primitive::<TimestampMillisecondType>();
        let mut indices: Vec<u32> = Vec::with_capacity(batch.num_rows());
        let mut starts: Vec<i64> = Vec::with_capacity(batch.num_rows());
        let mut window_starts = Vec::new();
        let size = self.shape.size();
        let stream_time = self.stream_time.entry(partition).or_insert(None);
        for row in 0..batch.num_rows() {
            if times.is_null(row) {
                out.late.push((row, "no event time"));
                continue;
            }
            let ts = times.value(row);
            let threshold = stream_time.map(|t| t - self.allowed);
            self.shape.starts(ts, &mut window_starts);
            let mut any = false;
            for start in &window_starts {
                if threshold.is_some_and(|th| start + size <= th) {
                    continue;
                }
                any = true;
                indices.push(row as u32);
                starts.push(*start);
            }
            if !any {
                out.late.push((row, "late: its windows had closed"));
            }
            *stream_time = Some(stream_time.map_or(ts, |t| t.max(ts)));
        }
        if !indices.is_empty() {
            self.fold(batch, indices, starts).await?;
        }
        out.emitted = self.emit(self.watermark()).await?;
        Ok(out)
    }

    /// Emits every open window, as at the end of a bounded input.
    pub async fn flush(&mut self) -> Result<Vec<RecordBatch>, RuntimeError> {
        self.emit(Some(i64::MAX)).await
    }

    async fn fold(
        &mut self,
        batch: &RecordBatch,
        indices: Vec<u32>,
        starts: Vec<i64>,
    ) -> Result<(), RuntimeError> {
        let size = self.shape.size();
        let take_idx = UInt32Array::from(indices);
        let mut columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| take(c, &take_idx, None))
            .collect::<Result<_, _>>()
            .map_err(arrow)?;
        let ends: Vec<i64> = starts.iter().map(|s| s + size).collect();
        columns.push(Arc::new(
            TimestampMillisecondArray::from(starts).with_timezone("UTC"),
        ));
        columns.push(Arc::new(
            TimestampMillisecondArray::from(ends).with_timezone("UTC"),
        ));
        let augmented = RecordBatch::try_new(self.input_schema.clone(), columns).map_err(arrow)?;
        self.input_slot.set(vec![augmented]);
        let rows = collect(self.pre.clone(), self.ctx.clone())
            .await
            .map_err(df)?;
        for rb in rows {
            self.fold_rows(&rb)?;
        }
        Ok(())
    }

    fn fold_rows(&mut self, rb: &RecordBatch) -> Result<(), RuntimeError> {
        if rb.num_rows() == 0 {
            return Ok(());
        }
        let keys: Vec<ArrayRef> = self
            .group_exprs
            .iter()
            .map(|e| e.evaluate(rb).and_then(|v| v.into_array(rb.num_rows())))
            .collect::<Result<_, _>>()
            .map_err(df)?;
        let rows = self.converter.convert_columns(&keys).map_err(arrow)?;
        let args: Vec<Vec<ArrayRef>> = self
            .aggs
            .iter()
            .map(|a| {
                a.expressions()
                    .iter()
                    .map(|e| e.evaluate(rb).and_then(|v| v.into_array(rb.num_rows())))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()
            .map_err(df)?;
        let filters: Vec<Option<BooleanArray>> = self
            .filters
            .iter()
            .map(|f| match f {
                Some(f) => f
                    .evaluate(rb)
                    .and_then(|v| v.into_array(rb.num_rows()))
                    .map(|a| Some(a.as_boolean().clone())),
                None => Ok(None),
            })
            .collect::<Result<_, _>>()
            .map_err(df)?;
        let mut groups: HashMap<_, Vec<u32>> = HashMap::new();
        for i in 0..rb.num_rows() {
            groups.entry(rows.row(i)).or_default().push(i as u32);
        }
        let size = self.shape.size();
        for (row, members) in groups {
            let first = members[0] as usize;
            let end = match self.end_key {
                EndKey::End(k) => timestamp_ms(&keys[k], first)?,
                EndKey::Start(k) => timestamp_ms(&keys[k], first)? + size,
            };
            let window = self.state.entry(end).or_default();
            let accs = match window.get_mut(&row.owned()) {
                Some(accs) => accs,
                None => {
                    let accs = self
                        .aggs
                        .iter()
                        .map(|a| a.create_accumulator())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(df)?;
                    window.entry(row.owned()).or_insert(accs)
                }
            };
            let idx = UInt32Array::from(members);
            for (i, acc) in accs.iter_mut().enumerate() {
                let mut values: Vec<ArrayRef> = args[i]
                    .iter()
                    .map(|a| take(a, &idx, None))
                    .collect::<Result<_, _>>()
                    .map_err(arrow)?;
                if let Some(mask) = &filters[i] {
                    let mask = take(mask, &idx, None).map_err(arrow)?;
                    let mask = mask.as_boolean();
                    values = values
                        .iter()
                        .map(|v| filter(v, mask))
                        .collect::<Result<_, _>>()
                        .map_err(arrow)?;
                }
                acc.update_batch(&values).map_err(df)?;
            }
        }
        Ok(())
    }

    /// Evaluates and removes every window ending at or before `watermark`.
    async fn emit(&mut self, watermark: Option<i64>) -> Result<Vec<RecordBatch>, RuntimeError> {
        let Some(wm) = watermark else {
            return Ok(Vec::new());
        };
        let keep = if wm == i64::MAX {
            BTreeMap::new()
        } else {
            self.state.split_off(&(wm + 1))
        };
        let closed = std::mem::replace(&mut self.state, keep);
        if closed.is_empty() {
            return Ok(Vec::new());
        }
        let mut key_rows = Vec::new();
        let mut values: Vec<Vec<ScalarValue>> = vec![Vec::new(); self.aggs.len()];
        for (_, groups) in closed {
            for (key, mut accs) in groups {
                for (i, acc) in accs.iter_mut().enumerate() {
                    values[i].push(acc.evaluate().map_err(df)?);
                }
                key_rows.push(key);
            }
        }
        let mut columns = self
            .converter
            .convert_rows(key_rows.iter().map(|r| r.row()))
            .map_err(arrow)?;
        let n_keys = columns.len();
        for (i, vals) in values.into_iter().enumerate() {
            let array = ScalarValue::iter_to_array(vals).map_err(df)?;
            let want = self.agg_schema.field(n_keys + i).data_type();
            let array = if array.data_type() == want {
                array
            } else {
                cast(&array, want).map_err(arrow)?
            };
            columns.push(array);
        }
        // Group columns may differ from the aggregate's output types only in nullability.
        let columns = columns
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let want = self.agg_schema.field(i).data_type();
                if c.data_type() == want {
                    Ok(c)
                } else {
                    cast(&c, want)
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(arrow)?;
        let batch = RecordBatch::try_new(self.agg_schema.clone(), columns).map_err(arrow)?;
        self.output_slot.set(vec![batch]);
        let out = collect(self.post.clone(), self.ctx.clone())
            .await
            .map_err(df)?;
        Ok(out.into_iter().filter(|b| b.num_rows() > 0).collect())
    }
}

fn timestamp_ms(array: &ArrayRef, row: usize) -> Result<i64, RuntimeError> {
    let ms = cast(array, &DataType::Timestamp(TimeUnit::Millisecond, None)).map_err(arrow)?;
    let ms = ms.as_primitive::<TimestampMillisecondType>();
    if ms.is_null(row) {
        return Err(internal("null window bound"));
    }
    Ok(ms.value(row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_starts() {
        let mut out = Vec::new();
        Shape::Tumbling { size: 60 }.starts(125, &mut out);
        assert_eq!(out, vec![120]);
        Shape::Tumbling { size: 60 }.starts(-1, &mut out);
        assert_eq!(out, vec![-60]);
        Shape::Hopping {
            size: 60,
            slide: 20,
        }
        .starts(125, &mut out);
        assert_eq!(out, vec![80, 100, 120]);
        Shape::Hopping {
            size: 60,
            slide: 20,
        }
        .starts(120, &mut out);
        assert_eq!(out, vec![80, 100, 120]);
        Shape::Hopping {
            size: 60,
            slide: 60,
        }
        .starts(59, &mut out);
        assert_eq!(out, vec![0]);
    }
}
