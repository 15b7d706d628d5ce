//! Sources: where decoded rows enter the graph. The runner's source task reads, decodes and
//! applies the error policy ([`crate::source`]); the source operator hands the rows on.
//!
//! A changelog table's source keeps the latest row per key: input port 0 carries upserts,
//! port 1 the keys of tombstones (one `Utf8` column). It emits the changed rows on port 0
//! (for readers of the topic as a stream) and the whole table on port 1 after every change
//! (for lookup joins, which read it as a table).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::{RuntimeError, internal};
use crate::operator::{Context, Operator};
use crate::operators::table::TableState;

/// The source of a stream: rows pass through.
#[derive(Debug)]
pub struct StreamSource;

#[async_trait]
impl Operator for StreamSource {
    async fn process(
        &mut self,
        _port: usize,
        partition: i32,
        batch: RecordBatch,
        ctx: &mut Context,
    ) -> Result<(), RuntimeError> {
        ctx.emit(0, partition, batch);
        Ok(())
    }
}

/// The source of a changelog table.
#[derive(Debug)]
pub struct TableSource {
    table: TableState,
}

impl TableSource {
    /// An empty table of `schema` keyed by `key`.
    pub fn new(schema: SchemaRef, key: &str) -> Result<Self, RuntimeError> {
        Ok(Self {
            table: TableState::new(schema, key)?,
        })
    }
}

/// A batch of tombstone keys, for input port 1 of a table source.
pub fn tombstones(keys: Vec<String>) -> Result<RecordBatch, RuntimeError> {
    let schema = Arc::new(Schema::new(vec![Field::new("key", DataType::Utf8, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(keys))]).map_err(internal)
}

#[async_trait]
impl Operator for TableSource {
    async fn open(&mut self, ctx: &mut Context) -> Result<(), RuntimeError> {
        if !self.table.is_empty() {
            ctx.emit(1, -1, self.table.snapshot()?);
        }
        Ok(())
    }

    async fn process(
        &mut self,
        port: usize,
        partition: i32,
        batch: RecordBatch,
        ctx: &mut Context,
    ) -> Result<(), RuntimeError> {
        if port == 1 {
            for key in batch.column(0).as_string::<i32>().iter().flatten() {
                self.table.delete(key)?;
            }
        } else {
            self.table.upsert(&batch)?;
            ctx.emit(0, partition, batch);
        }
        // An empty table still replaces what lookups had.
        let contents = self.table.snapshot()?;
        ctx.emitted.push((1, -1, contents));
        Ok(())
    }

    fn save(&mut self) -> Result<Option<Vec<u8>>, RuntimeError> {
        self.table.save().map(Some)
    }

    fn load(&mut self, state: &[u8]) -> Result<(), RuntimeError> {
        self.table.load(state)
    }
}
