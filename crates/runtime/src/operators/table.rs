//! The current contents of a changelog table: the latest row per key.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};

use crate::error::{RuntimeError, internal};

/// Latest row per key, with a cached snapshot for lookups.
pub struct TableState {
    schema: SchemaRef,
    key: usize,
    converter: RowConverter,
    rows: BTreeMap<OwnedRow, RecordBatch>,
    snapshot: Option<RecordBatch>,
}

impl std::fmt::Debug for TableState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TableState({} rows)", self.rows.len())
    }
}

impl TableState {
    /// An empty table of `schema` keyed by column `key`.
    pub fn new(schema: SchemaRef, key: &str) -> Result<Self, RuntimeError> {
        let key = schema.index_of(key).map_err(internal)?;
        let converter =
            RowConverter::new(vec![SortField::new(schema.field(key).data_type().clone())])
                .map_err(internal)?;
        Ok(Self {
            schema,
            key,
            converter,
            rows: BTreeMap::new(),
            snapshot: None,
        })
    }

    /// Applies rows in order: each replaces the row with its key.
    pub fn upsert(&mut self, batch: &RecordBatch) -> Result<(), RuntimeError> {
        let keys = self
            .converter
            .convert_columns(&[batch.column(self.key).clone()])
            .map_err(internal)?;
        for i in 0..batch.num_rows() {
            self.rows.insert(keys.row(i).owned(), batch.slice(i, 1));
        }
        self.snapshot = None;
        Ok(())
    }

    /// Every current row, in key order.
    pub fn snapshot(&mut self) -> Result<RecordBatch, RuntimeError> {
        if let Some(s) = &self.snapshot {
            return Ok(s.clone());
        }
        let s = concat_batches(&self.schema, self.rows.values()).map_err(internal)?;
        self.snapshot = Some(s.clone());
        Ok(s)
    }

    /// Removes the row whose key, as text, is `key` (a tombstone). Returns whether it was
    /// there.
    pub fn delete(&mut self, key: &str) -> Result<bool, RuntimeError> {
        let text: datafusion::arrow::array::ArrayRef =
            std::sync::Arc::new(datafusion::arrow::array::StringArray::from(vec![key]));
        let typed =
            datafusion::arrow::compute::cast(&text, self.schema.field(self.key).data_type())
                .map_err(internal)?;
        if typed.is_null(0) {
            // Not a value of the key's type (such as `x` for an integer key): no such row.
            return Ok(false);
        }
        let rows = self.converter.convert_columns(&[typed]).map_err(internal)?;
        let removed = self.rows.remove(&rows.row(0).owned()).is_some();
        if removed {
            self.snapshot = None;
        }
        Ok(removed)
    }

    /// Every current row as Arrow IPC, for a checkpoint.
    pub fn save(&mut self) -> Result<Vec<u8>, RuntimeError> {
        let rows = self.snapshot()?;
        crate::checkpoint::write_rows(&self.schema, &[rows])
    }

    /// Replaces the contents with rows written by [`Self::save`].
    pub fn load(&mut self, bytes: &[u8]) -> Result<(), RuntimeError> {
        self.rows.clear();
        self.snapshot = None;
        for b in crate::checkpoint::read_rows(bytes)? {
            self.upsert(&b)?;
        }
        Ok(())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}
