//! Avro binary messages to and from Arrow record batches: plain (the datum alone, written
//! with the declared schema) or in the Confluent wire format (magic byte 0, a 4-byte
//! big-endian schema id, then the datum).
//!
//! Records of primitives, logical timestamps and dates, enums and optional (`["null", T]`)
//! fields are supported, which covers every event schema; nested records, arrays, maps,
//! fixed and decimals are refused when the codec is built. Each message is first checked
//! completely (every field read, no bytes left over) and only then appended, so a bad
//! message never leaves a half-written row.
//!
//! Confluent messages can be read through their writer's schema: [`AvroCodec::resolve`]
//! makes a [`Resolution`] of a writer schema (from a registry, by the message's id) to the
//! declared one by Avro's resolution rules, and [`AvroCodec::decode_resolved`] reads each
//! message through the resolution of its id. Without resolutions, messages must be written
//! with the declared schema and ids are not checked.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder,
    Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, SchemaRef, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType,
};
use serde_json::Value;

use crate::{Decoded, FormatError, RecordError};

/// Message framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The datum alone.
    Plain,
    /// Magic byte 0, 4-byte schema id, datum.
    Confluent {
        /// The id written by encoders (decoders accept any).
        schema_id: u32,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Boolean,
    Int,
    Long,
    Float,
    Double,
    String,
    Bytes,
    Enum(Vec<String>),
    TimestampMillis,
    TimestampMicros,
    Date,
}

#[derive(Debug, Clone)]
struct FieldCodec {
    name: String,
    kind: Kind,
    /// For `["null", T]` unions: the branch index of null and of the value.
    union: Option<(u64, u64)>,
    /// Enum symbol -> index, for encoding.
    symbols: HashMap<String, u64>,
    /// The field's default (JSON), used when a writer schema lacks the field.
    default: Option<Value>,
    /// Other names a writer may give the field.
    aliases: Vec<String>,
    /// For an enum: the symbol a writer's unknown symbol becomes.
    enum_default: Option<String>,
}

/// Encodes and decodes Avro messages of one record schema.
#[derive(Debug, Clone)]
pub struct AvroCodec {
    fields: Vec<FieldCodec>,
    arrow: SchemaRef,
    framing: Framing,
    /// The record schema, as given.
    avsc: String,
}

fn bad(message: impl Into<String>) -> FormatError {
    FormatError::Unsupported(message.into())
}

fn kind_of(ty: &Value, field: &str) -> Result<Kind, FormatError> {
    let unsupported = || {
        bad(format!(
            "field `{field}`: Avro type {ty} is not supported in Avro messages yet"
        ))
    };
    match ty {
        Value::String(name) => Ok(match name.as_str() {
            "boolean" => Kind::Boolean,
            "int" => Kind::Int,
            "long" => Kind::Long,
            "float" => Kind::Float,
            "double" => Kind::Double,
            "string" => Kind::String,
            "bytes" => Kind::Bytes,
            _ => return Err(unsupported()),
        }),
        Value::Object(o) => {
            let base = o.get("type").and_then(Value::as_str).unwrap_or("");
            match (base, o.get("logicalType").and_then(Value::as_str)) {
                ("long", Some("timestamp-millis" | "local-timestamp-millis")) => {
                    Ok(Kind::TimestampMillis)
                }
                ("long", Some("timestamp-micros" | "local-timestamp-micros")) => {
                    Ok(Kind::TimestampMicros)
                }
                ("int", Some("date")) => Ok(Kind::Date),
                ("string", _) => Ok(Kind::String),
                ("enum", _) => Ok(Kind::Enum(strings(o.get("symbols")))),
                (other, None) if !other.is_empty() => kind_of(&Value::String(other.into()), field),
                _ => Err(unsupported()),
            }
        }
        _ => Err(unsupported()),
    }
}

/// The strings of a JSON array (`symbols`, `aliases`); none when absent.
fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The fields of a record schema (JSON text).
fn parse_fields(avsc: &str) -> Result<Vec<FieldCodec>, FormatError> {
    let schema: Value = serde_json::from_str(avsc).map_err(|e| bad(format!("Avro schema: {e}")))?;
    let fields = schema
        .get("fields")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("an Avro record schema needs `fields`"))?;
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ty = f.get("type").cloned().unwrap_or(Value::Null);
        let (kind, union, base) = match &ty {
            Value::Array(branches) => {
                let null = branches.iter().position(|b| b.as_str() == Some("null"));
                let value = branches.iter().position(|b| b.as_str() != Some("null"));
                match (null, value, branches.len()) {
                    (Some(n), Some(v), 2) => (
                        kind_of(&branches[v], &name)?,
                        Some((n as u64, v as u64)),
                        branches[v].clone(),
                    ),
                    _ => {
                        return Err(bad(format!(
                            "field `{name}`: only [\"null\", T] unions are supported"
                        )));
                    }
                }
            }
            other => (kind_of(other, &name)?, None, other.clone()),
        };
        let symbols = match &kind {
            Kind::Enum(s) => s
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), i as u64))
                .collect(),
            _ => HashMap::new(),
        };
        out.push(FieldCodec {
            name,
            kind,
            union,
            symbols,
            default: f.get("default").cloned(),
            aliases: strings(f.get("aliases")),
            enum_default: base
                .get("default")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
    }
    Ok(out)
}

impl AvroCodec {
    /// A codec for the record schema `avsc` (JSON text) whose Arrow form is `arrow`.
    pub fn new(avsc: &str, arrow: SchemaRef, framing: Framing) -> Result<Self, FormatError> {
        let out = parse_fields(avsc)?;
        if out.len() != arrow.fields().len()
            || out
                .iter()
                .zip(arrow.fields())
                .any(|(c, f)| &c.name != f.name())
        {
            return Err(FormatError::Internal(
                "Avro and Arrow schemas disagree".into(),
            ));
        }
        Ok(Self {
            fields: out,
            arrow,
            framing,
            avsc: avsc.to_string(),
        })
    }

    /// A codec for writing rows of `arrow`, with an Avro schema generated from it (named
    /// `record_name`): nullable columns become `["null", T]`.
    pub fn for_arrow(
        arrow: SchemaRef,
        record_name: &str,
        framing: Framing,
    ) -> Result<Self, FormatError> {
        let avsc = avro_schema_for(&arrow, record_name)?;
        Self::new(&avsc, arrow, framing)
    }

    /// The Arrow schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.arrow
    }

    /// The record schema (JSON text).
    pub fn avro_json(&self) -> &str {
        &self.avsc
    }

    /// The same codec with another framing (such as the id a registry gave the schema).
    pub fn with_framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// Decodes `messages`; bad ones are reported, never appended.
    pub fn decode(&self, messages: &[&[u8]]) -> Result<Decoded, FormatError> {
        crate::check_enums(
            self.decode_each(messages, |m, out| self.read_record(m, out))?,
            &[],
        )
    }

    /// Reads each message with `read` into its row's values; a message `read` refuses is
    /// reported with the reason, never appended.
    fn decode_each<'a>(
        &'a self,
        messages: &[&'a [u8]],
        mut read: impl FnMut(&'a [u8], &mut Vec<Datum<'a>>) -> Result<(), String>,
    ) -> Result<Decoded, FormatError> {
        let mut builders: Vec<Builder> = self
            .arrow
            .fields()
            .iter()
            .map(|f| Builder::new(f.data_type(), messages.len()))
            .collect::<Result<_, _>>()?;
        let mut rows = Vec::with_capacity(messages.len());
        let mut errors = Vec::new();
        let mut values: Vec<Datum<'a>> = Vec::with_capacity(self.fields.len());
        for (i, m) in messages.iter().enumerate() {
            values.clear();
            match read(m, &mut values) {
                Ok(()) => {
                    for (b, v) in builders.iter_mut().zip(&values) {
                        b.append(v);
                    }
                    rows.push(i);
                }
                Err(message) => errors.push(RecordError {
                    index: i,
                    message: format!("invalid Avro record: {message}"),
                }),
            }
        }
        let columns: Vec<ArrayRef> = builders.into_iter().map(Builder::finish).collect();
        let batch = RecordBatch::try_new(self.arrow.clone(), columns)
            .map_err(|e| FormatError::Internal(e.to_string()))?;
        Ok(Decoded {
            batch,
            rows,
            errors,
        })
    }

    fn read_record<'a>(&'a self, m: &'a [u8], out: &mut Vec<Datum<'a>>) -> Result<(), String> {
        let mut r = Reader { buf: m, pos: 0 };
        if let Framing::Confluent { .. } = self.framing {
            confluent_header(&mut r)?;
        }
        for f in &self.fields {
            let d = match read_datum(&mut r, f)? {
                Read::Value(d) => d,
                Read::Enum(i, symbols) => Datum::Str(symbols[i].as_str()),
            };
            out.push(d);
        }
        if r.pos != m.len() {
            return Err(format!("{} bytes left after the record", m.len() - r.pos));
        }
        Ok(())
    }

    /// How to read messages written with `writer` (an Avro record schema, JSON text) into
    /// this codec's schema, by Avro's schema resolution: fields matched by name (or a reader
    /// alias), writer fields the reader lacks skipped, reader fields the writer lacks set to
    /// their default, promotions int → long → float → double and string ↔ bytes, enum
    /// symbols by name (an unknown one becomes the reader enum's default), a value into an
    /// optional field, and an optional value into a required field (a null then fails that
    /// record). `Err` says why the schemas cannot be resolved.
    pub fn resolve(&self, writer: &str) -> Result<Resolution, String> {
        let written = parse_fields(writer).map_err(|e| format!("the writer schema: {e}"))?;
        let mut steps = Vec::with_capacity(written.len());
        let mut covered = vec![false; self.fields.len()];
        for w in written {
            let to = self
                .fields
                .iter()
                .position(|f| f.name == w.name || f.aliases.contains(&w.name));
            let mut symbols = Vec::new();
            if let Some(j) = to {
                let r = &self.fields[j];
                covered[j] = true;
                if !promotes(&w.kind, &r.kind) {
                    return Err(format!(
                        "field `{}`: the writer's {} cannot be read as the declared {}",
                        r.name,
                        kind_name(&w.kind),
                        kind_name(&r.kind)
                    ));
                }
                if let (Kind::Enum(ws), Kind::Enum(rs)) = (&w.kind, &r.kind) {
                    symbols = ws
                        .iter()
                        .map(|s| {
                            rs.iter()
                                .find(|x| *x == s)
                                .or(r.enum_default.as_ref())
                                .cloned()
                        })
                        .collect();
                }
            }
            steps.push(Step {
                field: w,
                to,
                symbols,
            });
        }
        let mut defaults = Vec::with_capacity(self.fields.len());
        for (f, covered) in self.fields.iter().zip(covered) {
            if covered {
                defaults.push(None);
                continue;
            }
            let value = f.default.as_ref().ok_or_else(|| {
                format!(
                    "field `{}` of the declared schema is not in the writer's schema and has no default",
                    f.name
                )
            })?;
            defaults.push(Some(default_of(f, value)?));
        }
        Ok(Resolution { steps, defaults })
    }

    /// Decodes Confluent-framed messages, each through the resolution of its schema id in
    /// `resolutions` (an id missing there, or mapped to an error, fails its record with the
    /// reason). Bad messages are reported, never appended.
    pub fn decode_resolved(
        &self,
        messages: &[&[u8]],
        resolutions: &HashMap<u32, Result<Resolution, String>>,
    ) -> Result<Decoded, FormatError> {
        self.decode_each(messages, |m, out| match confluent_id(m) {
            None => Err("not in the Confluent wire format (magic byte 0, schema id)".into()),
            Some(id) => match resolutions.get(&id) {
                Some(Ok(res)) => self.read_resolved(m, res, out),
                Some(Err(reason)) => Err(format!("schema id {id}: {reason}")),
                None => Err(format!("schema id {id} is not known to the registry")),
            },
        })
    }

    fn read_resolved<'a>(
        &'a self,
        m: &'a [u8],
        res: &'a Resolution,
        out: &mut Vec<Datum<'a>>,
    ) -> Result<(), String> {
        let mut r = Reader { buf: m, pos: 0 };
        confluent_header(&mut r)?;
        out.extend(res.defaults.iter().map(|d| match d {
            Some(d) => d.datum(),
            None => Datum::Null,
        }));
        for step in &res.steps {
            let read = read_datum(&mut r, &step.field)?;
            let Some(j) = step.to else {
                continue;
            };
            let reader = &self.fields[j];
            let d = match read {
                Read::Enum(i, symbols) => match step.symbols.get(i).and_then(Option::as_ref) {
                    Some(s) => Datum::Str(s.as_str()),
                    None => {
                        return Err(format!(
                            "field `{}`: the writer's symbol `{}` is not a symbol of the declared enum, which has no default",
                            reader.name, symbols[i]
                        ));
                    }
                },
                Read::Value(d) => promote(d, &reader.kind),
            };
            if matches!(d, Datum::Null) && reader.union.is_none() {
                return Err(format!(
                    "field `{}`: the writer wrote null, and the declared field is not optional",
                    reader.name
                ));
            }
            out[j] = d;
        }
        if r.pos != m.len() {
            return Err(format!("{} bytes left after the record", m.len() - r.pos));
        }
        Ok(())
    }

    /// Encodes each row of `batch` as one message.
    pub fn encode_rows(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>, FormatError> {
        let (mut buffer, mut spans) = (Vec::new(), Vec::new());
        self.encode_rows_into(batch, &mut buffer, &mut spans)?;
        Ok(spans.into_iter().map(|r| buffer[r].to_vec()).collect())
    }

    /// As [`AvroCodec::encode_rows`], appending the rows to `out` and their ranges in it to
    /// `spans` (a caller reusing both allocates nothing per row). On an error `out` and
    /// `spans` are as they were.
    pub fn encode_rows_into(
        &self,
        batch: &RecordBatch,
        out: &mut Vec<u8>,
        spans: &mut Vec<std::ops::Range<usize>>,
    ) -> Result<(), FormatError> {
        let (start, first_span) = (out.len(), spans.len());
        let columns: Vec<&dyn Array> = batch.columns().iter().map(|c| c.as_ref()).collect();
        for row in 0..batch.num_rows() {
            let begin = out.len();
            if let Framing::Confluent { schema_id } = self.framing {
                out.push(0);
                out.extend_from_slice(&schema_id.to_be_bytes());
            }
            for (f, column) in self.fields.iter().zip(&columns) {
                let written = if let Some((null, value)) = f.union {
                    if column.is_null(row) {
                        write_long(out, null as i64);
                        continue;
                    }
                    write_long(out, value as i64);
                    write_value(out, f, *column, row)
                } else if column.is_null(row) {
                    Err(FormatError::Encode(format!(
                        "`{}` is null but not optional",
                        f.name
                    )))
                } else {
                    write_value(out, f, *column, row)
                };
                if let Err(e) = written {
                    out.truncate(start);
                    spans.truncate(first_span);
                    return Err(e);
                }
            }
            spans.push(begin..out.len());
        }
        Ok(())
    }
}

fn write_value(
    buf: &mut Vec<u8>,
    f: &FieldCodec,
    column: &dyn Array,
    row: usize,
) -> Result<(), FormatError> {
    match (&f.kind, column.data_type()) {
        (Kind::Boolean, _) => buf.push(u8::from(column.as_boolean().value(row))),
        (Kind::Int, _) => write_long(buf, column.as_primitive::<Int32Type>().value(row).into()),
        (Kind::Date, _) => write_long(buf, column.as_primitive::<Date32Type>().value(row).into()),
        (Kind::Long, DataType::Int64) => {
            write_long(buf, column.as_primitive::<Int64Type>().value(row))
        }
        (Kind::TimestampMillis, _) => write_long(
            buf,
            column.as_primitive::<TimestampMillisecondType>().value(row),
        ),
        (Kind::TimestampMicros, _) => write_long(
            buf,
            column.as_primitive::<TimestampMicrosecondType>().value(row),
        ),
        (Kind::Float, _) => buf.extend_from_slice(
            &column
                .as_primitive::<Float32Type>()
                .value(row)
                .to_le_bytes(),
        ),
        (Kind::Double, _) => buf.extend_from_slice(
            &column
                .as_primitive::<Float64Type>()
                .value(row)
                .to_le_bytes(),
        ),
        (Kind::String, _) => write_bytes(buf, column.as_string::<i32>().value(row).as_bytes()),
        (Kind::Bytes, _) => write_bytes(buf, column.as_binary::<i32>().value(row)),
        (Kind::Enum(_), _) => {
            let s = column.as_string::<i32>().value(row);
            let i = f.symbols.get(s).ok_or_else(|| {
                FormatError::Encode(format!("`{}`: `{s}` is not a symbol of the enum", f.name))
            })?;
            write_long(buf, *i as i64);
        }
        (kind, dt) => {
            return Err(FormatError::Encode(format!(
                "`{}`: cannot write {dt} as Avro {kind:?}",
                f.name
            )));
        }
    }
    Ok(())
}

fn write_long(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

fn write_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    write_long(buf, b.len() as i64);
    buf.extend_from_slice(b);
}

/// `name` as an Avro name, `[A-Za-z_][A-Za-z0-9_]*`: a sink named `out-1` writes record
/// `out_1` (the record name of [`avro_schema_for`]).
pub fn avro_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

/// An Avro schema (JSON text) for rows of `arrow`.
pub fn avro_schema_for(arrow: &SchemaRef, record_name: &str) -> Result<String, FormatError> {
    let mut fields = Vec::new();
    for f in arrow.fields() {
        let ty = match f.data_type() {
            DataType::Boolean => serde_json::json!("boolean"),
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::UInt8
            | DataType::UInt16 => {
                serde_json::json!("int")
            }
            DataType::Int64 => serde_json::json!("long"),
            DataType::Float32 => serde_json::json!("float"),
            DataType::Float64 => serde_json::json!("double"),
            DataType::Utf8 => serde_json::json!("string"),
            DataType::Binary => serde_json::json!("bytes"),
            DataType::Date32 => serde_json::json!({"type": "int", "logicalType": "date"}),
            DataType::Timestamp(TimeUnit::Millisecond, tz) => serde_json::json!({
                "type": "long",
                "logicalType": if tz.is_some() { "timestamp-millis" } else { "local-timestamp-millis" }
            }),
            DataType::Timestamp(TimeUnit::Microsecond, tz) => serde_json::json!({
                "type": "long",
                "logicalType": if tz.is_some() { "timestamp-micros" } else { "local-timestamp-micros" }
            }),
            other => {
                return Err(bad(format!(
                    "column `{}` is {other}, which Avro sinks do not write yet; use `format: json`",
                    f.name()
                )));
            }
        };
        let ty = if f.is_nullable() {
            serde_json::json!(["null", ty])
        } else {
            ty
        };
        fields.push(serde_json::json!({"name": f.name(), "type": ty}));
    }
    let name = avro_name(record_name);
    Ok(serde_json::json!({"type": "record", "name": name, "fields": fields}).to_string())
}

/// The schema id of a Confluent-framed message.
pub fn confluent_id(m: &[u8]) -> Option<u32> {
    match m {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

fn confluent_header(r: &mut Reader<'_>) -> Result<(), String> {
    let magic = r.byte()?;
    if magic != 0 {
        return Err(format!(
            "magic byte is {magic}, not 0 (not the Confluent wire format)"
        ));
    }
    r.take(4)?;
    Ok(())
}

/// What one field read: a value, or an enum's index with the writer's symbols.
enum Read<'a> {
    Value(Datum<'a>),
    Enum(usize, &'a [String]),
}

fn read_datum<'a>(r: &mut Reader<'a>, f: &'a FieldCodec) -> Result<Read<'a>, String> {
    if let Some((null, value)) = f.union {
        let branch = r.long()?;
        if branch == null as i64 {
            return Ok(Read::Value(Datum::Null));
        }
        if branch != value as i64 {
            return Err(format!(
                "field `{}`: union branch {branch} does not exist",
                f.name
            ));
        }
    }
    Ok(Read::Value(match &f.kind {
        Kind::Boolean => match r.byte()? {
            0 => Datum::Bool(false),
            1 => Datum::Bool(true),
            b => return Err(format!("field `{}`: {b} is not a boolean", f.name)),
        },
        Kind::Int | Kind::Date => {
            let v = r.long()?;
            Datum::Int(
                i32::try_from(v)
                    .map_err(|_| format!("field `{}`: {v} overflows an int", f.name))?,
            )
        }
        Kind::Long | Kind::TimestampMillis | Kind::TimestampMicros => Datum::Long(r.long()?),
        Kind::Float => Datum::Float(f32::from_le_bytes(r.array::<4>()?)),
        Kind::Double => Datum::Double(f64::from_le_bytes(r.array::<8>()?)),
        Kind::String => {
            let bytes = r.sized()?;
            Datum::Str(
                std::str::from_utf8(bytes).map_err(|_| format!("field `{}`: not UTF-8", f.name))?,
            )
        }
        Kind::Bytes => Datum::Bytes(r.sized()?),
        Kind::Enum(symbols) => {
            let i = r.long()?;
            let i = usize::try_from(i)
                .ok()
                .filter(|i| *i < symbols.len())
                .ok_or_else(|| format!("field `{}`: enum index {i} out of range", f.name))?;
            return Ok(Read::Enum(i, symbols));
        }
    }))
}

/// Whether a value written as `w` can be read as `r`: Avro's promotions, and a logical
/// type on one side only (Avro resolves by the underlying type); but two timestamps of
/// different units are refused, since reading one as the other would be off by 1,000.
fn promotes(w: &Kind, r: &Kind) -> bool {
    use Kind::*;
    w == r
        || matches!(
            (w, r),
            (Int, Long | Float | Double)
                | (Long, Float | Double)
                | (Float, Double)
                | (String, Bytes)
                | (Bytes, String)
                | (Enum(_), Enum(_))
                | (Long, TimestampMillis | TimestampMicros)
                | (TimestampMillis | TimestampMicros, Long)
                | (Int, Date)
                | (Date, Int)
        )
}

fn promote<'a>(d: Datum<'a>, to: &Kind) -> Datum<'a> {
    match (d, to) {
        (Datum::Int(v), Kind::Long) => Datum::Long(v.into()),
        (Datum::Int(v), Kind::Float) => Datum::Float(v as f32),
        (Datum::Int(v), Kind::Double) => Datum::Double(v.into()),
        (Datum::Long(v), Kind::Float) => Datum::Float(v as f32),
        (Datum::Long(v), Kind::Double) => Datum::Double(v as f64),
        (Datum::Float(v), Kind::Double) => Datum::Double(v.into()),
        (Datum::Str(v), Kind::Bytes) => Datum::Bytes(v.as_bytes()),
        (Datum::Bytes(v), Kind::String) => match std::str::from_utf8(v) {
            Ok(s) => Datum::Str(s),
            Err(_) => Datum::Null,
        },
        (d, _) => d,
    }
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Boolean => "boolean",
        Kind::Int => "int",
        Kind::Long => "long",
        Kind::Float => "float",
        Kind::Double => "double",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Enum(_) => "enum",
        Kind::TimestampMillis => "timestamp-millis",
        Kind::TimestampMicros => "timestamp-micros",
        Kind::Date => "date",
    }
}

/// How messages of one writer schema are read into a codec's schema ([`AvroCodec::resolve`]).
#[derive(Debug, Clone)]
pub struct Resolution {
    steps: Vec<Step>,
    /// Per declared field, its value when the writer lacks the field.
    defaults: Vec<Option<Owned>>,
}

#[derive(Debug, Clone)]
struct Step {
    /// The writer's field.
    field: FieldCodec,
    /// The declared field it fills; `None`: skipped.
    to: Option<usize>,
    /// For enums: the declared symbol of each of the writer's (None: none).
    symbols: Vec<Option<String>>,
}

/// A default value.
#[derive(Debug, Clone)]
enum Owned {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Str(String),
}

impl Owned {
    fn datum(&self) -> Datum<'_> {
        match self {
            Owned::Null => Datum::Null,
            Owned::Bool(v) => Datum::Bool(*v),
            Owned::Int(v) => Datum::Int(*v),
            Owned::Long(v) => Datum::Long(*v),
            Owned::Float(v) => Datum::Float(*v),
            Owned::Double(v) => Datum::Double(*v),
            Owned::Str(v) => Datum::Str(v),
        }
    }
}

/// A field's default as a value: for an optional field, the default matches the first
/// branch of its union (Avro's rule), so `null` when null comes first.
fn default_of(f: &FieldCodec, v: &Value) -> Result<Owned, String> {
    let wrong = || {
        format!(
            "field `{}`: the default {v} is not a {}",
            f.name,
            kind_name(&f.kind)
        )
    };
    if v.is_null() {
        return if f.union.is_some() {
            Ok(Owned::Null)
        } else {
            Err(wrong())
        };
    }
    Ok(match &f.kind {
        Kind::Boolean => Owned::Bool(v.as_bool().ok_or_else(wrong)?),
        Kind::Int | Kind::Date => Owned::Int(
            v.as_i64()
                .and_then(|i| i32::try_from(i).ok())
                .ok_or_else(wrong)?,
        ),
        Kind::Long | Kind::TimestampMillis | Kind::TimestampMicros => {
            Owned::Long(v.as_i64().ok_or_else(wrong)?)
        }
        Kind::Float => Owned::Float(v.as_f64().ok_or_else(wrong)? as f32),
        Kind::Double => Owned::Double(v.as_f64().ok_or_else(wrong)?),
        Kind::String | Kind::Enum(_) => Owned::Str(v.as_str().ok_or_else(wrong)?.to_string()),
        Kind::Bytes => {
            return Err(format!(
                "field `{}`: bytes defaults are not supported",
                f.name
            ));
        }
    })
}

/// A value read from a message, borrowing its bytes.
#[derive(Debug, Clone, Copy)]
enum Datum<'a> {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.buf.get(self.pos).ok_or("the message ends early")?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or("the message ends early")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn long(&mut self) -> Result<i64, String> {
        let mut z: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err("a varint longer than 10 bytes".into())
    }

    fn sized(&mut self) -> Result<&'a [u8], String> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| format!("negative length {n}"))?;
        self.take(n)
    }
}

enum Builder {
    Bool(BooleanBuilder),
    Int(Int32Builder),
    Long(Int64Builder),
    Float(Float32Builder),
    Double(Float64Builder),
    Str(StringBuilder),
    Bytes(BinaryBuilder),
    Date(Date32Builder),
    TsMs(TimestampMillisecondBuilder, Option<Arc<str>>),
    TsUs(TimestampMicrosecondBuilder, Option<Arc<str>>),
}

impl Builder {
    fn new(dt: &DataType, n: usize) -> Result<Self, FormatError> {
        Ok(match dt {
            DataType::Boolean => Builder::Bool(BooleanBuilder::with_capacity(n)),
            DataType::Int32 => Builder::Int(Int32Builder::with_capacity(n)),
            DataType::Int64 => Builder::Long(Int64Builder::with_capacity(n)),
            DataType::Float32 => Builder::Float(Float32Builder::with_capacity(n)),
            DataType::Float64 => Builder::Double(Float64Builder::with_capacity(n)),
            DataType::Utf8 => Builder::Str(StringBuilder::with_capacity(n, n * 8)),
            DataType::Binary => Builder::Bytes(BinaryBuilder::with_capacity(n, n * 8)),
            DataType::Date32 => Builder::Date(Date32Builder::with_capacity(n)),
            DataType::Timestamp(TimeUnit::Millisecond, tz) => {
                Builder::TsMs(TimestampMillisecondBuilder::with_capacity(n), tz.clone())
            }
            DataType::Timestamp(TimeUnit::Microsecond, tz) => {
                Builder::TsUs(TimestampMicrosecondBuilder::with_capacity(n), tz.clone())
            }
            other => return Err(bad(format!("Arrow type {other} in Avro messages"))),
        })
    }

    fn append(&mut self, d: &Datum<'_>) {
        match (self, d) {
            (Builder::Bool(b), Datum::Bool(v)) => b.append_value(*v),
            (Builder::Int(b), Datum::Int(v)) => b.append_value(*v),
            (Builder::Date(b), Datum::Int(v)) => b.append_value(*v),
            (Builder::Long(b), Datum::Long(v)) => b.append_value(*v),
            (Builder::TsMs(b, _), Datum::Long(v)) => b.append_value(*v),
            (Builder::TsUs(b, _), Datum::Long(v)) => b.append_value(*v),
            (Builder::Float(b), Datum::Float(v)) => b.append_value(*v),
            (Builder::Double(b), Datum::Double(v)) => b.append_value(*v),
            (Builder::Str(b), Datum::Str(v)) => b.append_value(v),
            (Builder::Bytes(b), Datum::Bytes(v)) => b.append_value(v),
            (b, _) => b.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Bool(b) => b.append_null(),
            Builder::Int(b) => b.append_null(),
            Builder::Long(b) => b.append_null(),
            Builder::Float(b) => b.append_null(),
            Builder::Double(b) => b.append_null(),
            Builder::Str(b) => b.append_null(),
            Builder::Bytes(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::TsMs(b, _) => b.append_null(),
            Builder::TsUs(b, _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Bool(mut b) => Arc::new(b.finish()),
            Builder::Int(mut b) => Arc::new(b.finish()),
            Builder::Long(mut b) => Arc::new(b.finish()),
            Builder::Float(mut b) => Arc::new(b.finish()),
            Builder::Double(mut b) => Arc::new(b.finish()),
            Builder::Str(mut b) => Arc::new(b.finish()),
            Builder::Bytes(mut b) => Arc::new(b.finish()),
            Builder::Date(mut b) => Arc::new(b.finish()),
            Builder::TsMs(mut b, tz) => Arc::new(b.finish().with_timezone_opt(tz)),
            Builder::TsUs(mut b, tz) => Arc::new(b.finish().with_timezone_opt(tz)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value as AvroValue;

    const AVSC: &str = r#"{"type":"record","name":"R","fields":[
        {"name":"id","type":"string"},
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"n","type":"int"},
        {"name":"x","type":["null","double"]},
        {"name":"y","type":["float","null"]},
        {"name":"ok","type":"boolean"},
        {"name":"region","type":{"type":"enum","name":"Region","symbols":["NORTH","SOUTH"]}}
    ]}"#;

    fn codec(framing: Framing) -> AvroCodec {
        let arrow = event_schema::parse_avsc(AVSC).expect("schema");
        AvroCodec::new(AVSC, arrow, framing).expect("codec")
    }

    fn reference(id: &str, ts: i64, x: Option<f64>, region: u32) -> Vec<u8> {
        let schema = apache_avro::Schema::parse_str(AVSC).expect("schema");
        let record = AvroValue::Record(vec![
            ("id".into(), AvroValue::String(id.into())),
            ("ts".into(), AvroValue::TimestampMillis(ts)),
            ("n".into(), AvroValue::Int(-7)),
            (
                "x".into(),
                match x {
                    Some(v) => AvroValue::Union(1, Box::new(AvroValue::Double(v))),
                    None => AvroValue::Union(0, Box::new(AvroValue::Null)),
                },
            ),
            ("y".into(), AvroValue::Union(1, Box::new(AvroValue::Null))),
            ("ok".into(), AvroValue::Boolean(true)),
            (
                "region".into(),
                AvroValue::Enum(region, ["NORTH", "SOUTH"][region as usize].into()),
            ),
        ]);
        apache_avro::to_avro_datum(&schema, record).expect("reference encoder")
    }

    #[test]
    fn decodes_what_the_reference_implementation_writes() {
        let a = reference("a", 1_767_225_600_123, Some(2.5), 1);
        let b = reference("bé", -1, None, 0);
        let out = codec(Framing::Plain).decode(&[&a, &b]).expect("decodes");
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let batch = &out.batch;
        assert_eq!(batch.column(0).as_string::<i32>().value(1), "bé");
        assert_eq!(
            batch
                .column(1)
                .as_primitive::<TimestampMillisecondType>()
                .value(0),
            1_767_225_600_123
        );
        assert_eq!(
            batch
                .column(1)
                .as_primitive::<TimestampMillisecondType>()
                .value(1),
            -1
        );
        assert_eq!(batch.column(2).as_primitive::<Int32Type>().value(0), -7);
        assert_eq!(batch.column(3).as_primitive::<Float64Type>().value(0), 2.5);
        assert!(batch.column(3).is_null(1));
        assert!(batch.column(4).is_null(0));
        assert_eq!(batch.column(6).as_string::<i32>().value(0), "SOUTH");
    }

    #[test]
    fn writes_what_the_reference_implementation_reads() {
        let a = reference("a", 42, Some(-0.5), 0);
        let c = codec(Framing::Plain);
        let batch = c.decode(&[&a]).expect("decodes").batch;
        let encoded = c.encode_rows(&batch).expect("encodes");
        assert_eq!(encoded[0], a, "byte-identical to the reference encoder");
        let schema = apache_avro::Schema::parse_str(AVSC).expect("schema");
        let back =
            apache_avro::from_avro_datum(&schema, &mut encoded[0].as_slice(), None).expect("reads");
        assert!(matches!(back, AvroValue::Record(_)));
    }

    #[test]
    fn confluent_framing_and_bad_messages() {
        let c = codec(Framing::Confluent { schema_id: 7 });
        let datum = reference("a", 1, None, 0);
        let mut framed = vec![0, 0, 0, 0, 7];
        framed.extend_from_slice(&datum);
        let truncated = &framed[..framed.len() - 3];
        let mut trailing = framed.clone();
        trailing.push(1);
        let bad_magic = [&[1u8, 0, 0, 0, 7][..], &datum].concat();
        let mut bad_enum = vec![0, 0, 0, 0, 7];
        bad_enum.extend_from_slice(&datum[..datum.len() - 1]);
        bad_enum.push(4); // enum index 2 (zigzag 4): out of range
        let out = c
            .decode(&[&framed, truncated, &trailing, &bad_magic, &bad_enum, b""])
            .expect("decodes");
        assert_eq!(out.rows, vec![0]);
        let errors: Vec<(usize, &str)> = out
            .errors
            .iter()
            .map(|e| (e.index, e.message.as_str()))
            .collect();
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].1.contains("ends early"));
        assert!(errors[1].1.contains("left after the record"));
        assert!(errors[2].1.contains("magic byte is 1"));
        assert!(errors[3].1.contains("enum index 2 out of range"));
        // The writer frames with its schema id.
        let again = c.encode_rows(&out.batch).expect("encodes");
        assert_eq!(again[0], framed);
    }

    #[test]
    fn generated_schema_round_trips_nullable_columns() {
        let arrow = event_schema::parse_avsc(AVSC).expect("schema");
        let c = AvroCodec::for_arrow(arrow, "Out", Framing::Plain).expect("codec");
        let batch = codec(Framing::Plain)
            .decode(&[&reference("a", 5, Some(1.0), 1)])
            .expect("decodes")
            .batch;
        let encoded = c.encode_rows(&batch).expect("encodes");
        let back = c.decode(&[&encoded[0]]).expect("decodes").batch;
        // The enum became a string, so compare values column by column.
        assert_eq!(back.column(0).as_string::<i32>().value(0), "a");
        assert_eq!(back.column(3).as_primitive::<Float64Type>().value(0), 1.0);
        assert_eq!(back.column(6).as_string::<i32>().value(0), "SOUTH");
    }

    const READER: &str = r#"{"type":"record","name":"R","fields":[
        {"name":"id","type":"string"},
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"n","type":"long"},
        {"name":"x","type":["null","double"],"default":null},
        {"name":"region","type":{"type":"enum","name":"Region","symbols":["NORTH","SOUTH"],"default":"NORTH"}},
        {"name":"added","type":"string","default":"none"},
        {"name":"qty","type":"double","aliases":["quantity"]}
    ]}"#;

    fn confluent(id: u32, datum: Vec<u8>) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&id.to_be_bytes());
        m.extend(datum);
        m
    }

    /// Reading data that apache-avro wrote with an evolved schema: fields added and
    /// removed, an int promoted, an alias, an unknown enum symbol; values by hand.
    #[test]
    fn resolves_writer_schemas_as_avro_specifies() {
        let writer = r#"{"type":"record","name":"R","fields":[
            {"name":"region","type":{"type":"enum","name":"Region","symbols":["NORTH","SOUTH","EAST"]}},
            {"name":"id","type":["null","string"]},
            {"name":"extra","type":"string"},
            {"name":"n","type":"int"},
            {"name":"quantity","type":"float"},
            {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}}
        ]}"#;
        let schema = apache_avro::Schema::parse_str(writer).expect("writer");
        let record = |region: u32, id: Option<&str>| {
            AvroValue::Record(vec![
                (
                    "region".into(),
                    AvroValue::Enum(region, ["NORTH", "SOUTH", "EAST"][region as usize].into()),
                ),
                (
                    "id".into(),
                    match id {
                        Some(v) => AvroValue::Union(1, Box::new(AvroValue::String(v.into()))),
                        None => AvroValue::Union(0, Box::new(AvroValue::Null)),
                    },
                ),
                ("extra".into(), AvroValue::String("skipped".into())),
                ("n".into(), AvroValue::Int(-3)),
                ("quantity".into(), AvroValue::Float(1.5)),
                ("ts".into(), AvroValue::TimestampMillis(77)),
            ])
        };
        let datum = |v| apache_avro::to_avro_datum(&schema, v).expect("writes");
        let arrow = event_schema::parse_avsc(READER).expect("reader");
        let reader =
            AvroCodec::new(READER, arrow, Framing::Confluent { schema_id: 0 }).expect("codec");
        let resolution = reader.resolve(writer).expect("resolves");
        let resolutions: HashMap<u32, Result<Resolution, String>> = [
            (5, Ok(resolution)),
            (6, Err("the subject's schema cannot be read".to_string())),
        ]
        .into();
        let a = confluent(5, datum(record(1, Some("a"))));
        let b = confluent(5, datum(record(2, Some("b"))));
        let null_id = confluent(5, datum(record(0, None)));
        let unknown = confluent(9, datum(record(0, Some("c"))));
        let refused = confluent(6, datum(record(0, Some("d"))));
        let out = reader
            .decode_resolved(&[&a, &b, &null_id, &unknown, &refused], &resolutions)
            .expect("decodes");
        assert_eq!(out.rows, vec![0, 1]);
        let batch = &out.batch;
        assert_eq!(batch.column(0).as_string::<i32>().value(1), "b");
        assert_eq!(
            batch
                .column(1)
                .as_primitive::<TimestampMillisecondType>()
                .value(0),
            77
        );
        assert_eq!(batch.column(2).as_primitive::<Int64Type>().value(0), -3);
        assert!(batch.column(3).is_null(0), "x takes its default, null");
        assert_eq!(batch.column(4).as_string::<i32>().value(0), "SOUTH");
        assert_eq!(
            batch.column(4).as_string::<i32>().value(1),
            "NORTH",
            "EAST becomes the default"
        );
        assert_eq!(batch.column(5).as_string::<i32>().value(0), "none");
        assert_eq!(batch.column(6).as_primitive::<Float64Type>().value(0), 1.5);
        let errors: Vec<&str> = out.errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].contains("`id`: the writer wrote null"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].contains("schema id 9 is not known"),
            "{}",
            errors[1]
        );
        assert!(
            errors[2].contains("schema id 6: the subject's"),
            "{}",
            errors[2]
        );
    }

    #[test]
    fn unresolvable_writer_schemas_say_why() {
        let arrow = event_schema::parse_avsc(READER).expect("reader");
        let reader =
            AvroCodec::new(READER, arrow, Framing::Confluent { schema_id: 0 }).expect("codec");
        let no_id = r#"{"type":"record","name":"R","fields":[
            {"name":"ts","type":"long"},{"name":"n","type":"long"},{"name":"qty","type":"double"}]}"#;
        let e = reader.resolve(no_id).expect_err("id has no default");
        assert!(
            e.contains(
                "field `id` of the declared schema is not in the writer's schema and has no default"
            ),
            "{e}"
        );
        let narrowing = r#"{"type":"record","name":"R","fields":[
            {"name":"id","type":"string"},{"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"n","type":"double"},{"name":"qty","type":"double"}]}"#;
        let e = reader
            .resolve(narrowing)
            .expect_err("double does not narrow to long");
        assert!(
            e.contains("field `n`: the writer's double cannot be read as the declared long"),
            "{e}"
        );
        let micros = r#"{"type":"record","name":"R","fields":[
            {"name":"id","type":"string"},{"name":"ts","type":{"type":"long","logicalType":"timestamp-micros"}},
            {"name":"n","type":"long"},{"name":"qty","type":"double"}]}"#;
        let e = reader.resolve(micros).expect_err("units differ");
        assert!(
            e.contains("timestamp-micros cannot be read as the declared timestamp-millis"),
            "{e}"
        );
    }
}
