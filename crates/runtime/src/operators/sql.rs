//! Stateless SQL: filters, projections, scalar functions, and lookup joins of one stream
//! with changelog tables. A DataFusion physical plan, made once from the planner's logical
//! plan, executed per micro-batch with the stream batch in its input slot and each table's
//! current contents (emitted by the table's source on every change) in its slot.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use planner::InputRole;

use crate::error::{RuntimeError, internal};
use crate::operator::{Context, Operator};
use crate::slot::Slot;

/// A stateless transform.
#[derive(Debug)]
pub struct Stateless {
    /// One slot per input, in input order.
    slots: Vec<Slot>,
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    /// Stream or table, per input.
    roles: Vec<InputRole>,
}

impl Stateless {
    /// Runs `plan`, which reads `slots` (one per input, `roles` saying which are tables).
    pub fn new(
        slots: Vec<Slot>,
        plan: Arc<dyn ExecutionPlan>,
        task: Arc<TaskContext>,
        roles: Vec<InputRole>,
    ) -> Self {
        Self {
            slots,
            plan,
            task,
            roles,
        }
    }
}

#[async_trait]
impl Operator for Stateless {
    async fn process(
        &mut self,
        port: usize,
        partition: i32,
        batch: RecordBatch,
        ctx: &mut Context,
    ) -> Result<(), RuntimeError> {
        let slot = self
            .slots
            .get(port)
            .ok_or_else(|| internal("no such input"))?;
        slot.set(vec![batch]);
        // A table's new contents only replace what lookups read.
        if matches!(self.roles.get(port), Some(InputRole::Table { .. })) {
            return Ok(());
        }
        for rows in super::run(&self.plan, &self.task).await? {
            ctx.emit(0, partition, rows);
        }
        Ok(())
    }
}
