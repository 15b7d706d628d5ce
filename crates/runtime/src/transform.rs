//! A transform ready to run: stateless SQL (a DataFusion physical plan executed per batch) or
//! a windowed aggregation ([`WindowOp`]). Needs no Kafka: the runner drives it from topics,
//! benchmarks and tests from in-memory batches.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, collect};
use planner::sql::InputTable;
use spec::model::Transform;

use crate::RuntimeError;
use crate::slot::{Slot, SlotTable};
use crate::window::{Shape, Timing, WindowOp};

/// A planned transform with its state.
pub enum TransformOp {
    /// Filters, projections, scalar functions.
    Stateless {
        /// The input table's current contents.
        slot: Slot,
        /// The physical plan, planned once.
        plan: Arc<dyn ExecutionPlan>,
        /// Execution context.
        task: Arc<TaskContext>,
    },
    /// An event-time window aggregation.
    Window(Box<WindowOp>),
}

impl std::fmt::Debug for TransformOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransformOp::Stateless { .. } => f.write_str("Stateless"),
            TransformOp::Window(w) => w.fmt(f),
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

fn internal(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Internal(e.to_string())
}

impl TransformOp {
    /// Plans `spec` against its one input table. Windowed transforms track stream time for
    /// `partitions` with `allowed` ms of disorder.
    pub async fn build(
        spec: &Transform,
        time_field: Option<&str>,
        tables: &[InputTable],
        partitions: &[i32],
        allowed: i64,
    ) -> Result<Self, RuntimeError> {
        let [table] = tables else {
            return Err(RuntimeError::Unsupported(format!(
                "transform `{}` reads {} tables: stream joins come with interval and lookup joins",
                spec.name,
                tables.len()
            )));
        };
        let slot = Slot::default();
        let provider: Arc<dyn TableProvider> =
            Arc::new(SlotTable::new(table.arrow.clone(), slot.clone()));
        let parsed = planner::sql::parse(&spec.sql).map_err(|e| internal(e.message))?;
        let (ctx, _, optimized) =
            planner::sql::plan_with_tables(&parsed, &[(table.clone(), provider)])
                .await
                .map_err(|e| internal(e.message))?;
        let state = ctx.state();
        let plan = state
            .create_physical_plan(&optimized)
            .await
            .map_err(internal)?;
        let task = Arc::new(TaskContext::from(&state));
        let (Some(w), Some(time_field)) = (&spec.window, time_field) else {
            return Ok(TransformOp::Stateless { slot, plan, task });
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
        let op = WindowOp::new(timing, table.arrow.clone(), slot, plan, partitions, task)?;
        Ok(TransformOp::Window(Box::new(op)))
    }

    /// Runs one batch of `partition`'s rows (in offset order).
    pub async fn process(
        &mut self,
        batch: RecordBatch,
        partition: i32,
    ) -> Result<TransformOutput, RuntimeError> {
        match self {
            TransformOp::Stateless { slot, plan, task } => {
                slot.set(vec![batch]);
                let rows = collect(plan.clone(), task.clone())
                    .await
                    .map_err(internal)?
                    .into_iter()
                    .filter(|b| b.num_rows() > 0)
                    .collect();
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
        }
    }

    /// Emits all open windows (the input has ended).
    pub async fn flush(&mut self) -> Result<Vec<RecordBatch>, RuntimeError> {
        match self {
            TransformOp::Stateless { .. } => Ok(Vec::new()),
            TransformOp::Window(op) => op.flush().await,
        }
    }

    /// The window operator, for windowed transforms.
    pub fn window(&mut self) -> Option<&mut WindowOp> {
        match self {
            TransformOp::Window(op) => Some(op),
            TransformOp::Stateless { .. } => None,
        }
    }
}
