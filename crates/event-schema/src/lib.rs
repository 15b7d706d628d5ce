//! Event schemas: Avro record schemas (`.avsc` files under `schemas/`) loaded as Arrow
//! schemas.
//!
//! The mapping (documented in docs/language.md) is the one the decoders follow:
//!
//! | Avro | Arrow |
//! |---|---|
//! | `boolean`, `int`, `long`, `float`, `double` | `Boolean`, `Int32`, `Int64`, `Float32`, `Float64` |
//! | `string`, `bytes`, `fixed` (n) | `Utf8`, `Binary`, `FixedSizeBinary(n)` |
//! | `long` + `timestamp-millis` / `timestamp-micros` | `Timestamp(ms / µs, "UTC")` |
//! | `long` + `local-timestamp-millis` / `-micros` | `Timestamp(ms / µs)` (no zone) |
//! | `int` + `date`, `int` + `time-millis` | `Date32`, `Time32(ms)` |
//! | `string` + `uuid` | `Utf8` |
//! | `bytes`/`fixed` + `decimal` | `Decimal128(precision, scale)` |
//! | `enum` | `Utf8`, symbols kept in field metadata `avro.enum.symbols` |
//! | `["null", T]` | `T`, nullable |
//! | `array`, `map`, `record` | `List`, `Map(Utf8 keys)`, `Struct` |
//!
//! Enums map to `Utf8` rather than dictionaries so that SQL string functions, JSON input and
//! one-hot model features treat them like any other string. Unions other than with `null` are
//! refused: no streaming SQL engine we measure against handles them well, and they are rare in
//! event schemas.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde_json::Value;

/// Field metadata key holding an enum's symbols, comma-separated.
pub const ENUM_SYMBOLS_KEY: &str = "avro.enum.symbols";
/// Field metadata key holding the field's `doc`.
pub const DOC_KEY: &str = "doc";

/// Why a schema could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The reference is not a plain path under the schema directory (`..`, an absolute
    /// path, odd characters): refused before any file is touched.
    #[error(
        "invalid schema reference `{0}`: write a path under `schemas/` without `.avsc`, such as `production/sensor_reading`"
    )]
    BadReference(String),
    /// The reference names no file.
    #[error(
        "no event schema `{reference}`: no file `{reference}.avsc` in the schema directory{hint}"
    )]
    NotFound {
        /// The reference as written.
        reference: String,
        /// Where it was looked for.
        path: PathBuf,
        /// A suggestion of a close name, or the list of schemas.
        hint: String,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// The JSON is not a supported Avro record schema.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the field path.
        message: String,
    },
}

/// A loaded event schema.
#[derive(Debug, Clone)]
pub struct EventSchema {
    /// The reference it was loaded by, such as `production/sensor_reading`.
    pub reference: String,
    /// The Avro schema text (the writer and reader schema for Avro formats).
    pub avro_json: String,
    /// The Arrow schema of decoded events.
    pub arrow: SchemaRef,
}

/// Finds and loads schemas under one directory.
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    root: PathBuf,
}

impl SchemaRegistry {
    /// A registry over `root` (the project's `schemas/`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory schemas are read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every schema reference under the root, sorted. Symbolic links are not followed and
    /// the walk stops after 10,000 entries, so a link to `/` costs nothing.
    pub fn references(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        let mut budget = 10_000usize;
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                budget = budget.saturating_sub(1);
                if budget == 0 {
                    break;
                }
                let path = entry.path();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file()
                    && path.extension().is_some_and(|e| e == "avsc")
                    && let Ok(rel) = path.with_extension("").strip_prefix(&self.root)
                    && is_reference(&rel.to_string_lossy())
                {
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        out.sort();
        out
    }

    /// Loads `reference` (a path under the root without `.avsc`).
    ///
    /// Confined to the root: the reference must be plain path segments (letters, digits,
    /// `_`, `-`), and the file, with symbolic links resolved, must lie inside the root. A file
    /// outside it is reported exactly as a missing one, so that no path's existence can be
    /// probed, and nothing of it is read.
    pub fn load(&self, reference: &str) -> Result<EventSchema, SchemaError> {
        if !is_reference(reference) {
            return Err(SchemaError::BadReference(reference.to_string()));
        }
        let not_found = |path: PathBuf| {
            let known = self.references();
            let hint = match closest(reference, &known) {
                Some(c) => format!("; did you mean `{c}`?"),
                None if known.is_empty() => String::new(),
                None => format!(" (known: {})", known.join(", ")),
            };
            SchemaError::NotFound {
                reference: reference.to_string(),
                path,
                hint,
            }
        };
        let path = self.root.join(format!("{reference}.avsc"));
        let inside = match (self.root.canonicalize(), path.canonicalize()) {
            (Ok(root), Ok(file)) => file.starts_with(&root) && file.is_file(),
            _ => false,
        };
        if !inside {
            return Err(not_found(path));
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found(path)),
            Err(source) => return Err(SchemaError::Io { path, source }),
        };
        let arrow = parse_avsc(&text).map_err(|e| match e {
            ParseError::Json(source) => SchemaError::Json {
                path: path.clone(),
                source,
            },
            ParseError::Invalid(message) => SchemaError::Invalid {
                path: path.clone(),
                message,
            },
        })?;
        Ok(EventSchema {
            reference: reference.to_string(),
            avro_json: text,
            arrow,
        })
    }
}

/// Whether `reference` is plain path segments of letters, digits, `_` and `-`.
pub fn is_reference(reference: &str) -> bool {
    !reference.is_empty()
        && reference.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        })
}

fn closest<'a>(word: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::normalized_levenshtein(word, c), c))
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.as_str())
}

/// Looks for a `schemas/` directory in `start` and its ancestors.
pub fn find_schema_dir(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join("schemas"))
        .find(|candidate| candidate.is_dir())
}

/// Why an `.avsc` text could not be converted.
#[derive(Debug)]
pub enum ParseError {
    /// Not JSON.
    Json(serde_json::Error),
    /// Not a supported Avro record schema.
    Invalid(String),
}

/// Converts the text of an Avro record schema to an Arrow schema.
pub fn parse_avsc(text: &str) -> Result<SchemaRef, ParseError> {
    let value: Value = serde_json::from_str(text).map_err(ParseError::Json)?;
    let mut named = HashMap::new();
    let record = match &value {
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("record") => o,
        _ => {
            return Err(ParseError::Invalid(
                "an event schema must be an Avro record (`\"type\": \"record\"`)".into(),
            ));
        }
    };
    let namespace = record
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let fields = record_fields(&value, namespace, "", &mut named).map_err(ParseError::Invalid)?;
    Ok(Arc::new(Schema::new(fields)))
}

/// A named Avro type defined earlier in the schema, for references by name.
#[derive(Clone)]
struct Named {
    data_type: DataType,
    metadata: HashMap<String, String>,
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}.{name}")
    }
}

fn record_fields(
    record: &Value,
    namespace: &str,
    path: &str,
    named: &mut HashMap<String, Named>,
) -> Result<Fields, String> {
    let fields = record
        .get("fields")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{}: a record needs a `fields` list", display_path(path)))?;
    let mut out = Vec::with_capacity(fields.len());
    let mut seen = std::collections::HashSet::new();
    for field in fields {
        let name = field
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{}: every field needs a `name`", display_path(path)))?;
        if !seen.insert(name) {
            return Err(format!("{}: duplicate field `{name}`", display_path(path)));
        }
        let fpath = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        let ty = field
            .get("type")
            .ok_or_else(|| format!("{fpath}: missing `type`"))?;
        let (data_type, nullable, mut metadata) = convert(ty, namespace, &fpath, named)?;
        if let Some(doc) = field.get("doc").and_then(Value::as_str) {
            metadata.insert(DOC_KEY.to_string(), doc.to_string());
        }
        out.push(Field::new(name, data_type, nullable).with_metadata(metadata));
    }
    Ok(out.into())
}

fn display_path(path: &str) -> &str {
    if path.is_empty() { "record" } else { path }
}

fn primitive(name: &str) -> Option<DataType> {
    Some(match name {
        "boolean" => DataType::Boolean,
        "int" => DataType::Int32,
        "long" => DataType::Int64,
        "float" => DataType::Float32,
        "double" => DataType::Float64,
        "string" => DataType::Utf8,
        "bytes" => DataType::Binary,
        _ => return None,
    })
}

type Converted = (DataType, bool, HashMap<String, String>);

fn convert(
    ty: &Value,
    namespace: &str,
    path: &str,
    named: &mut HashMap<String, Named>,
) -> Result<Converted, String> {
    match ty {
        Value::String(name) => {
            if name == "null" {
                return Err(format!(
                    "{path}: a field of type `null` holds nothing; remove it"
                ));
            }
            if let Some(dt) = primitive(name) {
                return Ok((dt, false, HashMap::new()));
            }
            let found = named
                .get(&full_name(name, namespace))
                .or_else(|| named.get(name.as_str()))
                .ok_or_else(|| format!("{path}: unknown type `{name}`"))?;
            Ok((found.data_type.clone(), false, found.metadata.clone()))
        }
        Value::Array(branches) => {
            let non_null: Vec<&Value> = branches
                .iter()
                .filter(|b| b.as_str() != Some("null"))
                .collect();
            let has_null = non_null.len() < branches.len();
            match (has_null, non_null.as_slice()) {
                (true, [only]) => {
                    let (dt, _, md) = convert(only, namespace, path, named)?;
                    Ok((dt, true, md))
                }
                _ => Err(format!(
                    "{path}: only unions of `null` and one type (optional fields) are supported"
                )),
            }
        }
        Value::Object(o) => {
            let kind = o
                .get("type")
                .ok_or_else(|| format!("{path}: missing `type`"))?;
            let logical = o.get("logicalType").and_then(Value::as_str);
            let kind_str = kind.as_str().unwrap_or("");
            let utc = || Some(Arc::<str>::from("UTC"));
            let simple = match (kind_str, logical) {
                ("long", Some("timestamp-millis")) => {
                    Some(DataType::Timestamp(TimeUnit::Millisecond, utc()))
                }
                ("long", Some("timestamp-micros")) => {
                    Some(DataType::Timestamp(TimeUnit::Microsecond, utc()))
                }
                ("long", Some("local-timestamp-millis")) => {
                    Some(DataType::Timestamp(TimeUnit::Millisecond, None))
                }
                ("long", Some("local-timestamp-micros")) => {
                    Some(DataType::Timestamp(TimeUnit::Microsecond, None))
                }
                ("int", Some("date")) => Some(DataType::Date32),
                ("int", Some("time-millis")) => Some(DataType::Time32(TimeUnit::Millisecond)),
                ("long", Some("time-micros")) => Some(DataType::Time64(TimeUnit::Microsecond)),
                ("bytes" | "fixed", Some("decimal")) => {
                    let precision = o.get("precision").and_then(Value::as_u64).unwrap_or(0);
                    let scale = o.get("scale").and_then(Value::as_u64).unwrap_or(0);
                    if !(1..=38).contains(&precision) || scale > precision {
                        return Err(format!(
                            "{path}: decimal needs 1 <= precision <= 38 and scale <= precision"
                        ));
                    }
                    // Both bounded above by 38.
                    Some(DataType::Decimal128(precision as u8, scale as i8))
                }
                (other, _) => primitive(other),
            };
            if let Some(dt) = simple {
                return Ok((dt, false, HashMap::new()));
            }
            let name = o.get("name").and_then(Value::as_str);
            let ns = o
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or(namespace);
            let converted = match kind_str {
                "enum" => {
                    let symbols: Vec<&str> = o
                        .get("symbols")
                        .and_then(Value::as_array)
                        .map(|s| s.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    if symbols.is_empty() {
                        return Err(format!("{path}: an enum needs a non-empty `symbols` list"));
                    }
                    let md = HashMap::from([(ENUM_SYMBOLS_KEY.to_string(), symbols.join(","))]);
                    (DataType::Utf8, false, md)
                }
                "fixed" => {
                    let size = o
                        .get("size")
                        .and_then(Value::as_i64)
                        .and_then(|s| i32::try_from(s).ok())
                        .ok_or_else(|| format!("{path}: fixed needs a `size`"))?;
                    (DataType::FixedSizeBinary(size), false, HashMap::new())
                }
                "array" => {
                    let items = o
                        .get("items")
                        .ok_or_else(|| format!("{path}: array needs `items`"))?;
                    let (dt, nullable, md) = convert(items, ns, &format!("{path}[]"), named)?;
                    let item = Field::new("item", dt, nullable).with_metadata(md);
                    (DataType::List(Arc::new(item)), false, HashMap::new())
                }
                "map" => {
                    let values = o
                        .get("values")
                        .ok_or_else(|| format!("{path}: map needs `values`"))?;
                    let (dt, nullable, md) = convert(values, ns, &format!("{path}{{}}"), named)?;
                    let entries = Field::new(
                        "entries",
                        DataType::Struct(
                            vec![
                                Field::new("key", DataType::Utf8, false),
                                Field::new("value", dt, nullable).with_metadata(md),
                            ]
                            .into(),
                        ),
                        false,
                    );
                    (
                        DataType::Map(Arc::new(entries), false),
                        false,
                        HashMap::new(),
                    )
                }
                "record" => {
                    let fields = record_fields(ty, ns, path, named)?;
                    (DataType::Struct(fields), false, HashMap::new())
                }
                other => return Err(format!("{path}: unsupported Avro type `{other}`")),
            };
            if let Some(name) = name {
                named.insert(
                    full_name(name, ns),
                    Named {
                        data_type: converted.0.clone(),
                        metadata: converted.2.clone(),
                    },
                );
            }
            Ok(converted)
        }
        _ => Err(format!(
            "{path}: `type` must be a name, a union list or a schema object"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> SchemaRef {
        parse_avsc(text).expect("valid schema")
    }

    #[test]
    fn maps_primitives_logical_types_and_optionals() {
        let s = schema(
            r#"{"type":"record","name":"R","fields":[
                {"name":"a","type":"int"},
                {"name":"b","type":["null","double"]},
                {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"u","type":{"type":"long","logicalType":"local-timestamp-micros"}},
                {"name":"d","type":{"type":"int","logicalType":"date"}},
                {"name":"m","type":{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}},
                {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]},"doc":"an enum"},
                {"name":"e2","type":["null","E"]},
                {"name":"l","type":{"type":"array","items":"string"}}
            ]}"#,
        );
        let f = |n: &str| s.field_with_name(n).expect("field").clone();
        assert_eq!(f("a").data_type(), &DataType::Int32);
        assert!(!f("a").is_nullable());
        assert_eq!(f("b").data_type(), &DataType::Float64);
        assert!(f("b").is_nullable());
        assert_eq!(
            f("t").data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
        );
        assert_eq!(
            f("u").data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        assert_eq!(f("d").data_type(), &DataType::Date32);
        assert_eq!(f("m").data_type(), &DataType::Decimal128(10, 2));
        assert_eq!(f("e").data_type(), &DataType::Utf8);
        assert_eq!(f("e").metadata()[ENUM_SYMBOLS_KEY], "X,Y");
        assert_eq!(f("e").metadata()[DOC_KEY], "an enum");
        assert_eq!(f("e2").metadata()[ENUM_SYMBOLS_KEY], "X,Y");
        assert!(f("e2").is_nullable());
        assert!(matches!(f("l").data_type(), DataType::List(_)));
    }

    #[test]
    fn refuses_unsupported_shapes() {
        for (text, needle) in [
            (
                r#"{"type":"enum","name":"E","symbols":["A"]}"#,
                "must be an Avro record",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"a","type":["int","string"]}]}"#,
                "only unions of `null`",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"a","type":"Nope"}]}"#,
                "unknown type `Nope`",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"a","type":"int"}]}"#,
                "duplicate field `a`",
            ),
        ] {
            match parse_avsc(text) {
                Err(ParseError::Invalid(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("expected invalid, got {other:?}"),
            }
        }
    }

    fn manifest_dir() -> String {
        // Read when the test runs: a build cache shared by checkouts at different paths
        // may hold a test binary compiled elsewhere.
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())
    }

    #[test]
    fn every_shipped_schema_loads() {
        let dir = find_schema_dir(Path::new(&manifest_dir())).expect("schemas/");
        let registry = SchemaRegistry::new(dir);
        let refs = registry.references();
        for expected in [
            "customer/activity",
            "production/output_count",
            "production/sensor_reading",
            "sales/order",
            "supply_chain/inventory_move",
            "supply_chain/shipment",
        ] {
            assert!(refs.iter().any(|r| r == expected), "missing {expected}");
        }
        for r in &refs {
            let s = registry.load(r).unwrap_or_else(|e| panic!("{r}: {e}"));
            assert!(s.arrow.fields().len() >= 5, "{r}");
            // Every field is documented.
            for f in s.arrow.fields() {
                assert!(
                    f.metadata().contains_key(DOC_KEY),
                    "{r}.{} has no doc",
                    f.name()
                );
            }
            // Every event schema has its event time.
            assert!(
                matches!(
                    s.arrow.field_with_name("ts").map(|f| f.data_type().clone()),
                    Ok(DataType::Timestamp(TimeUnit::Millisecond, Some(_)))
                ),
                "{r} has no ts"
            );
        }
    }

    #[test]
    fn missing_schema_suggests_a_close_name() {
        let dir = find_schema_dir(Path::new(&manifest_dir())).expect("schemas/");
        let err = SchemaRegistry::new(dir)
            .load("production/sensor_readings")
            .expect_err("missing");
        assert!(
            err.to_string()
                .contains("did you mean `production/sensor_reading`?"),
            "{err}"
        );
    }

    #[test]
    fn schemas_are_confined_to_their_directory() {
        let base = std::env::temp_dir().join(format!("schema-confine-{}", std::process::id()));
        let root = base.join("schemas");
        std::fs::create_dir_all(root.join("ok")).expect("dirs");
        // A valid schema outside the root, reachable through `..` and through a link.
        let outside = base.join("outside.avsc");
        let secret = r#"{"type": "record", "name": "SecretRecord", "fields": [{"name": "topsecret", "type": "int"}]}"#;
        std::fs::write(&outside, secret).expect("outside");
        std::os::unix::fs::symlink(&outside, root.join("ok/link.avsc")).expect("link");
        std::os::unix::fs::symlink(&base, root.join("up")).expect("dir link");
        let registry = SchemaRegistry::new(&root);
        for reference in [
            "../outside",
            "/etc/passwd",
            "ok/../../outside",
            "ok/link",
            "up/outside",
        ] {
            let err = registry.load(reference).expect_err(reference).to_string();
            assert!(
                !err.contains("topsecret") && !err.contains("SecretRecord"),
                "{reference}: {err}"
            );
        }
        // Outside through a link reads exactly as missing: nothing to probe.
        let linked = registry.load("ok/link").expect_err("link").to_string();
        let missing = registry
            .load("ok/nothing")
            .expect_err("missing")
            .to_string();
        assert_eq!(
            linked.replace("ok/link", "X"),
            missing.replace("ok/nothing", "X")
        );
        assert!(
            registry.references().is_empty(),
            "{:?}",
            registry.references()
        );
        std::fs::remove_dir_all(&base).ok();
    }
}
