//! JSON messages (one object per Kafka message) to and from Arrow record batches.
//!
//! Decoding takes a whole micro-batch of messages. The fast path hands them all to one
//! arrow-json decoder; if anything is wrong with any message (bad JSON, a wrong type, a missing
//! required field, not exactly one object) we decode message by message to find the bad ones,
//! so that one malformed record is reported with its error and never costs its neighbours.

use std::collections::HashSet;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow_json::reader::Decoder;
use arrow_json::{ReaderBuilder, WriterBuilder};

use crate::{Decoded, FormatError, RecordError};

/// Decodes JSON messages of one schema.
pub struct JsonDecoder {
    schema: SchemaRef,
    decoder: Decoder,
    /// Enum columns (Utf8 with declared symbols): index and allowed values.
    enums: Vec<(usize, HashSet<String>)>,
}

impl std::fmt::Debug for JsonDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonDecoder")
            .field("schema", &self.schema)
            .finish()
    }
}

fn new_decoder(schema: &SchemaRef, batch_size: usize) -> Result<Decoder, FormatError> {
    ReaderBuilder::new(schema.clone())
        .with_batch_size(batch_size.max(1))
        .build_decoder()
        .map_err(|e| FormatError::Internal(format!("cannot build a JSON decoder: {e}")))
}

impl JsonDecoder {
    /// A decoder for messages of `schema`. Fields not in the schema are ignored (so producers
    /// can add fields without breaking pipelines); a field the schema requires is an error.
    pub fn new(schema: SchemaRef) -> Result<Self, FormatError> {
        let enums = crate::enum_columns(&schema);
        let decoder = new_decoder(&schema, 8192)?;
        Ok(Self {
            schema,
            decoder,
            enums,
        })
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes `messages`. Each message must be exactly one JSON object.
    pub fn decode(&mut self, messages: &[&[u8]]) -> Result<Decoded, FormatError> {
        if messages.is_empty() {
            return Ok(Decoded::empty(self.schema.clone()));
        }
        let decoded = match self.decode_all(messages) {
            Some(batch) => Decoded {
                rows: (0..messages.len()).collect(),
                batch,
                errors: Vec::new(),
            },
            None => self.decode_each(messages)?,
        };
        crate::check_enums(decoded, &self.enums)
    }

    /// The fast path: all messages in one decoder call; `None` if any message is not right.
    fn decode_all(&mut self, messages: &[&[u8]]) -> Option<RecordBatch> {
        if messages.iter().any(|m| !looks_like_one_object(m)) {
            return None;
        }
        let mut decoder = std::mem::replace(
            &mut self.decoder,
            new_decoder(&self.schema, messages.len()).ok()?,
        );
        let mut ok = true;
        for m in messages {
            if decoder.decode(m).is_err() {
                ok = false;
                break;
            }
        }
        let result = if ok && !decoder.has_partial_record() {
            match decoder.flush() {
                Ok(Some(batch)) if batch.num_rows() == messages.len() => Some(batch),
                _ => None,
            }
        } else {
            None
        };
        // A decoder that failed part-way may hold half a record: never reuse it.
        if result.is_some() {
            self.decoder = decoder;
        }
        result
    }

    /// The slow path: one message at a time, collecting errors.
    fn decode_each(&mut self, messages: &[&[u8]]) -> Result<Decoded, FormatError> {
        let mut batches = Vec::with_capacity(messages.len());
        let mut rows = Vec::with_capacity(messages.len());
        let mut errors = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let mut decoder = new_decoder(&self.schema, 2)?;
            let result = decoder.decode(m).and_then(|consumed| {
                if consumed != m.len() {
                    return Err(arrow::error::ArrowError::JsonError(
                        "the decoder stopped before the end of the message".into(),
                    ));
                }
                if decoder.has_partial_record() {
                    return Err(arrow::error::ArrowError::JsonError(
                        "the message ends inside a JSON value (truncated?)".into(),
                    ));
                }
                decoder.flush()
            });
            match result {
                Ok(Some(batch)) if batch.num_rows() == 1 => {
                    batches.push(batch);
                    rows.push(i);
                }
                Ok(Some(batch)) => errors.push(RecordError {
                    index: i,
                    message: format!(
                        "expected one JSON object per message, found {} values",
                        batch.num_rows()
                    ),
                }),
                Ok(None) => errors.push(RecordError {
                    index: i,
                    message: "empty message: expected one JSON object".into(),
                }),
                Err(e) => errors.push(RecordError {
                    index: i,
                    message: format!("invalid JSON record: {}", clean(&e.to_string())),
                }),
            }
        }
        let batch = if batches.is_empty() {
            RecordBatch::new_empty(self.schema.clone())
        } else {
            concat_batches(&self.schema, &batches)
                .map_err(|e| FormatError::Internal(e.to_string()))?
        };
        Ok(Decoded {
            batch,
            rows,
            errors,
        })
    }
}

fn clean(message: &str) -> String {
    message
        .trim_start_matches("Json error: ")
        .trim_start_matches("Parser error: ")
        .to_string()
}

/// Cheap pre-check: starts with `{` and ends with `}` after white space. A message that is not
/// an object, or is truncated, takes the slow path where it gets a precise error.
fn looks_like_one_object(m: &[u8]) -> bool {
    let trimmed = m.trim_ascii();
    trimmed.first() == Some(&b'{') && trimmed.last() == Some(&b'}')
}

/// Encodes each row of `batch` as one JSON object (without a trailing newline). Timestamps are
/// RFC 3339 strings; null fields are written as `null` so every message has every field.
pub fn encode_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>, FormatError> {
    let (mut buffer, mut spans) = (Vec::new(), Vec::new());
    encode_rows_into(batch, &mut buffer, &mut spans)?;
    Ok(spans.into_iter().map(|r| buffer[r].to_vec()).collect())
}

/// As [`encode_rows`], appending the rows to `out` and their ranges in it to `spans`, so
/// that a caller reusing both allocates nothing per row. On an error `out` and `spans` are
/// as they were.
pub fn encode_rows_into(
    batch: &RecordBatch,
    out: &mut Vec<u8>,
    spans: &mut Vec<std::ops::Range<usize>>,
) -> Result<(), FormatError> {
    if batch.num_rows() == 0 {
        return Ok(());
    }
    let (start, first_span) = (out.len(), spans.len());
    let written = (|| {
        let mut writer = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow_json::writer::LineDelimited>(&mut *out);
        writer.write(batch)?;
        writer.finish()
    })();
    if let Err(e) = written {
        out.truncate(start);
        return Err(FormatError::Encode(e.to_string()));
    }
    // JSON strings never hold a raw newline, so lines are records.
    let mut begin = start;
    for (i, b) in out.iter().enumerate().skip(start) {
        if *b == b'\n' {
            if i > begin {
                spans.push(begin..i);
            }
            begin = i + 1;
        }
    }
    if begin < out.len() {
        spans.push(begin..out.len());
    }
    if spans.len() - first_span != batch.num_rows() {
        let lines = spans.len() - first_span;
        out.truncate(start);
        spans.truncate(first_span);
        return Err(FormatError::Internal(format!(
            "encoded {} rows into {lines} lines",
            batch.num_rows(),
        )));
    }
    Ok(())
}

/// Keeps the rows of `decoded` where `keep` is true (dropping the message index of others).
pub(crate) fn filter_decoded(
    decoded: Decoded,
    keep: &BooleanArray,
) -> Result<Decoded, FormatError> {
    let batch = filter_record_batch(&decoded.batch, keep)
        .map_err(|e| FormatError::Internal(e.to_string()))?;
    let rows = decoded
        .rows
        .iter()
        .zip(keep.iter())
        .filter(|(_, k)| k.unwrap_or(false))
        .map(|(r, _)| *r)
        .collect();
    Ok(Decoded {
        batch,
        rows,
        errors: decoded.errors,
    })
}

/// Whether a column holds strings we can check against an enum's symbols.
pub(crate) fn string_values(array: &dyn Array) -> Option<Vec<Option<&str>>> {
    match array.data_type() {
        DataType::Utf8 => Some(array.as_string::<i32>().iter().collect()),
        DataType::LargeUtf8 => Some(array.as_string::<i64>().iter().collect()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use std::collections::HashMap;
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        let region = Field::new("region", DataType::Utf8, false).with_metadata(HashMap::from([(
            event_schema::ENUM_SYMBOLS_KEY.to_string(),
            "NORTH,SOUTH".to_string(),
        )]));
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("x", DataType::Float64, true),
            region,
        ]))
    }

    #[test]
    fn decodes_a_clean_batch_in_one_pass() {
        let mut d = JsonDecoder::new(schema()).expect("decoder");
        let msgs: Vec<&[u8]> = vec![
            br#"{"id":"a","ts":1000,"x":1.5,"region":"NORTH","extra":true}"#,
            br#"{"id":"b","ts":"1970-01-01T00:00:02Z","region":"SOUTH"}"#,
        ];
        let out = d.decode(&msgs).expect("decodes");
        assert!(out.errors.is_empty());
        assert_eq!(out.rows, vec![0, 1]);
        let ts = out
            .batch
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("ts");
        assert_eq!(ts.values(), &[1000, 2000]);
        let x = out
            .batch
            .column(2)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("x");
        assert_eq!(x.value(0), 1.5);
        assert!(x.is_null(1));
    }

    #[test]
    fn isolates_every_kind_of_bad_record() {
        let mut d = JsonDecoder::new(schema()).expect("decoder");
        let msgs: Vec<&[u8]> = vec![
            br#"{"id":"ok1","ts":1,"region":"NORTH"}"#,
            br#"{"id":"trunc","ts":1,"region":"NO"#,
            br#"{"id":"wrongtype","ts":1,"x":"hot","region":"NORTH"}"#,
            br#"{"ts":1,"region":"NORTH"}"#,
            br#"{"id":"two","ts":1,"region":"NORTH"}{"id":"three","ts":1,"region":"NORTH"}"#,
            br#"not json"#,
            b"",
            br#"{"id":"badenum","ts":1,"region":"MOON"}"#,
            br#"{"id":"ok2","ts":2,"region":"SOUTH"}"#,
        ];
        let out = d.decode(&msgs).expect("decodes");
        assert_eq!(out.rows, vec![0, 8]);
        let ids = out
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("ids");
        assert_eq!(ids.value(0), "ok1");
        assert_eq!(ids.value(1), "ok2");
        let bad: Vec<usize> = out.errors.iter().map(|e| e.index).collect();
        assert_eq!(bad, vec![1, 2, 3, 4, 5, 6, 7]);
        let message = |i: usize| {
            out.errors
                .iter()
                .find(|e| e.index == i)
                .map(|e| e.message.clone())
                .unwrap_or_default()
        };
        assert!(message(4).contains("one JSON object"), "{}", message(4));
        assert!(
            message(7).contains("`MOON` is not one of"),
            "{}",
            message(7)
        );
        // The decoder is still good afterwards.
        let out = d
            .decode(&[br#"{"id":"c","ts":3,"region":"NORTH"}"#])
            .expect("decodes");
        assert_eq!(out.batch.num_rows(), 1);
    }

    #[test]
    fn a_truncated_message_never_merges_with_the_next() {
        let mut d = JsonDecoder::new(schema()).expect("decoder");
        // Together these two would form one valid object.
        let msgs: Vec<&[u8]> = vec![br#"{"id":"a","#, br#""ts":1,"region":"NORTH"}"#];
        let out = d.decode(&msgs).expect("decodes");
        assert_eq!(out.batch.num_rows(), 0);
        assert_eq!(out.errors.len(), 2);
    }

    #[test]
    fn encodes_one_object_per_row_and_round_trips() {
        let mut d = JsonDecoder::new(schema()).expect("decoder");
        let msgs: Vec<&[u8]> = vec![
            br#"{"id":"a\nb","ts":1500,"x":2.25,"region":"NORTH"}"#,
            br#"{"id":"c","ts":0,"region":"SOUTH"}"#,
        ];
        let batch = d.decode(&msgs).expect("decodes").batch;
        let encoded = encode_rows(&batch).expect("encodes");
        assert_eq!(encoded.len(), 2);
        assert_eq!(
            String::from_utf8_lossy(&encoded[1]),
            r#"{"id":"c","ts":"1970-01-01T00:00:00Z","x":null,"region":"SOUTH"}"#
        );
        let again: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        let round = d.decode(&again).expect("decodes");
        assert_eq!(round.batch, batch);
    }
}
