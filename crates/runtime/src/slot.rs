//! A table whose contents the runtime swaps in before each execution.
//!
//! Transforms are planned once; each micro-batch is placed in the input slot and the same
//! physical plan is executed again. The slot is locked once per micro-batch, never per row.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};

/// The shared cell holding the current input.
#[derive(Debug, Clone, Default)]
pub struct Slot(Arc<Mutex<Vec<RecordBatch>>>);

impl Slot {
    /// Puts `batches` in the slot, replacing what was there.
    pub fn set(&self, batches: Vec<RecordBatch>) {
        if let Ok(mut guard) = self.0.lock() {
            *guard = batches;
        }
    }

    fn get(&self) -> Vec<RecordBatch> {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// A table provider reading its slot.
#[derive(Debug)]
pub struct SlotTable {
    schema: SchemaRef,
    slot: Slot,
}

impl SlotTable {
    /// A table of `schema` reading `slot`.
    pub fn new(schema: SchemaRef, slot: Slot) -> Self {
        Self { schema, slot }
    }
}

#[async_trait]
impl TableProvider for SlotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(SlotExec::new(
            self.schema.clone(),
            self.slot.clone(),
            projection.cloned(),
        )?))
    }
}

/// The scan of a slot.
#[derive(Debug)]
pub struct SlotExec {
    slot: Slot,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl SlotExec {
    /// A scan of `slot` (batches of `schema`), projected to `projection`.
    pub fn new(schema: SchemaRef, slot: Slot, projection: Option<Vec<usize>>) -> Result<Self> {
        let projected = match &projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => schema.clone(),
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(projected),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            slot,
            projection,
            properties,
        })
    }
}

impl DisplayAs for SlotExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotExec")
    }
}

impl ExecutionPlan for SlotExec {
    fn name(&self) -> &str {
        "SlotExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)] // required by the trait in DataFusion 55
    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        // The stream advertises the projected schema: it emits projected batches.
        Ok(Box::pin(MemoryStream::try_new(
            self.slot.get(),
            self.properties.eq_properties.schema().clone(),
            self.projection.clone(),
        )?))
    }
}
