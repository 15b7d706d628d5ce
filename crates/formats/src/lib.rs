//! Message formats: Kafka message values to and from Arrow record batches, a micro-batch at a
//! time. Decoding never fails a whole batch for one bad message: it returns the rows it could
//! decode, the message each row came from, and an error per bad message, so the source can
//! apply the pipeline's `on_error` policy record by record.

pub mod avro;
pub mod json;

use std::collections::HashSet;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::SchemaRef;

/// A decoded micro-batch.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The rows that decoded.
    pub batch: RecordBatch,
    /// For each row of `batch`, the index of the message it came from.
    pub rows: Vec<usize>,
    /// The messages that did not decode, with why.
    pub errors: Vec<RecordError>,
}

impl Decoded {
    fn empty(schema: SchemaRef) -> Self {
        Self {
            batch: RecordBatch::new_empty(schema),
            rows: Vec::new(),
            errors: Vec::new(),
        }
    }
}

/// A message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// Index of the message in the micro-batch.
    pub index: usize,
    /// What is wrong with it.
    pub message: String,
}

/// Errors of the format layer itself (not of one record).
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A batch could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// The schema uses something this format cannot carry yet.
    #[error("{0}")]
    Unsupported(String),
    /// A bug.
    #[error("internal error in the format layer (please report): {0}")]
    Internal(String),
}

/// Utf8 columns that carry Avro enum symbols.
fn enum_columns(schema: &SchemaRef) -> Vec<(usize, HashSet<String>)> {
    schema
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            f.metadata()
                .get(event_schema::ENUM_SYMBOLS_KEY)
                .map(|symbols| (i, symbols.split(',').map(str::to_string).collect()))
        })
        .collect()
}

/// Moves rows whose enum value is not a declared symbol to the errors.
fn check_enums(
    decoded: Decoded,
    enums: &[(usize, HashSet<String>)],
) -> Result<Decoded, FormatError> {
    if enums.is_empty() || decoded.batch.num_rows() == 0 {
        return Ok(decoded);
    }
    let n = decoded.batch.num_rows();
    let mut keep = vec![true; n];
    let mut errors = Vec::new();
    for (col, symbols) in enums {
        let column = decoded.batch.column(*col);
        let Some(values) = json::string_values(column.as_ref()) else {
            continue;
        };
        for (row, value) in values.iter().enumerate() {
            if let Some(v) = value
                && keep[row]
                && !symbols.contains(*v)
            {
                keep[row] = false;
                let name = decoded.batch.schema().field(*col).name().clone();
                let mut allowed: Vec<&String> = symbols.iter().collect();
                allowed.sort();
                errors.push(RecordError {
                    index: decoded.rows[row],
                    message: format!(
                        "field `{name}`: `{v}` is not one of the enum's symbols ({})",
                        allowed
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
    }
    if errors.is_empty() {
        return Ok(decoded);
    }
    let mut out = json::filter_decoded(decoded, &BooleanArray::from(keep))?;
    out.errors.extend(errors);
    out.errors.sort_by_key(|e| e.index);
    Ok(out)
}
