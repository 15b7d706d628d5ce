//! A YAML tree that keeps positions, built under hard limits, and a serde `Deserializer` over
//! it.
//!
//! Why not deserialize straight from a YAML crate: we want every error in one run, each with
//! line, column and field path. Deserializing each component (source, transform, model, sink)
//! from its own subtree lets one misspelt key fail only its component while the rest is still
//! checked, and a deserializer that knows the node it is reading can put a position on every
//! serde error, including "unknown field" with a did-you-mean.
//!
//! Hostile input is stopped while building the tree: a size cap on the text, a depth cap on
//! nesting, and a cap on the number of nodes the document expands to once aliases are
//! followed (a "billion laughs" bomb is a small text that expands enormously). Aliases share
//! their anchor's subtree (`Arc`), so the expansion is counted, never materialised.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use crate::diag::{Diagnostic, Pos, one_of, suggestion};
use crate::interp;

/// Caps that keep a hostile pipeline file from costing time or memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted file, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of sequences and mappings.
    pub max_depth: usize,
    /// Most nodes the document may expand to once every alias is followed.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            max_depth: 64,
            max_nodes: 100_000,
        }
    }
}

/// A node of the tree.
#[derive(Debug)]
pub struct Node {
    /// Where the node starts.
    pub pos: Pos,
    /// What it holds.
    pub kind: Kind,
    /// How many nodes this subtree expands to with aliases followed.
    size: usize,
}

/// The three kinds of YAML node.
#[derive(Debug)]
pub enum Kind {
    /// A scalar after interpolation.
    Scalar(Scalar),
    /// A sequence.
    Seq(Vec<Arc<Node>>),
    /// A mapping whose keys are scalars, in file order.
    Map(Vec<(Arc<Node>, Arc<Node>)>),
}

/// A scalar value.
#[derive(Debug)]
pub struct Scalar {
    /// The value, with `${ENV}` interpolated.
    pub value: String,
    /// How it was written.
    pub style: ScalarStyle,
    /// Whether the value came (at least in part) from `${ENV}` interpolation.
    pub interpolated: bool,
    /// The text as written, when it differs from `value` or failed to interpolate.
    pub raw: Option<String>,
    /// Names of the `${ENV}` variables the text refers to.
    pub vars: Vec<String>,
}

impl Node {
    /// A copy of this tree without the node that starts at `pos` (a mapping entry whose key or
    /// value starts there, or a list item). `None` when no such child exists. Used to recover
    /// after an error and find the next one.
    pub fn without(&self, pos: Pos) -> Option<Node> {
        match &self.kind {
            Kind::Scalar(_) => None,
            Kind::Seq(items) => {
                if let Some(i) = items.iter().position(|n| n.pos == pos) {
                    let mut items = items.clone();
                    items.remove(i);
                    return Some(Node::seq(self.pos, items));
                }
                items.iter().enumerate().find_map(|(i, item)| {
                    item.without(pos).map(|new| {
                        let mut items = items.clone();
                        items[i] = Arc::new(new);
                        Node::seq(self.pos, items)
                    })
                })
            }
            Kind::Map(entries) => {
                if let Some(i) = entries
                    .iter()
                    .position(|(k, v)| k.pos == pos || v.pos == pos)
                {
                    let mut entries = entries.clone();
                    entries.remove(i);
                    return Some(Node::map(self.pos, entries));
                }
                entries.iter().enumerate().find_map(|(i, (k, v))| {
                    v.without(pos).map(|new| {
                        let mut entries = entries.clone();
                        entries[i] = (k.clone(), Arc::new(new));
                        Node::map(self.pos, entries)
                    })
                })
            }
        }
    }

    fn seq(pos: Pos, items: Vec<Arc<Node>>) -> Node {
        let size = items.iter().fold(1usize, |a, n| a.saturating_add(n.size));
        Node {
            pos,
            kind: Kind::Seq(items),
            size,
        }
    }

    fn map(pos: Pos, entries: Vec<(Arc<Node>, Arc<Node>)>) -> Node {
        let size = entries.iter().fold(1usize, |a, (k, v)| {
            a.saturating_add(k.size).saturating_add(v.size)
        });
        Node {
            pos,
            kind: Kind::Map(entries),
            size,
        }
    }

    /// The scalar's text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(s) => Some(&s.value),
            _ => None,
        }
    }

    /// The value at `key`, if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Arc<Node>> {
        match &self.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar(s) if s.style == ScalarStyle::Plain && is_null(&s.value))
    }

    fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Scalar(_) => "a scalar",
            Kind::Seq(_) => "a sequence",
            Kind::Map(_) => "a mapping",
        }
    }
}

fn is_null(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

fn pos_of(span: &Span) -> Pos {
    Pos::new(span.start.line(), span.start.col() + 1)
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Arc<Node>>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Arc<Node>, Arc<Node>)>,
        key: Option<Arc<Node>>,
    },
}

/// A parsed document and the problems that did not stop parsing.
#[derive(Debug)]
pub struct Parsed {
    /// The root node.
    pub root: Arc<Node>,
    /// Duplicate keys and interpolation errors.
    pub problems: Vec<Diagnostic>,
    /// Positions of scalars whose `${ENV}` could not be resolved: later checks of these values
    /// would only repeat the interpolation error.
    pub unresolved: Vec<Pos>,
}

/// Parses `text` into a tree, interpolating `${ENV}` with `lookup`.
///
/// A fatal problem (syntax, a limit) returns `Err` with that one diagnostic. Problems that do
/// not stop the tree from being built (an unset variable, a duplicate key) are returned beside
/// the tree so that they are reported together with everything found later.
pub fn parse(text: &str, limits: &Limits, lookup: &dyn interp::Env) -> Result<Parsed, Diagnostic> {
    if text.len() > limits.max_bytes {
        return Err(Diagnostic {
            pos: Some(Pos::new(1, 1)),
            path: String::new(),
            message: format!(
                "file is {} bytes, over the limit of {} bytes; split the pipeline",
                text.len(),
                limits.max_bytes
            ),
        });
    }
    let mut builder = Builder {
        limits,
        lookup,
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        documents: 0,
        problems: Vec::new(),
        unresolved: Vec::new(),
        path: Vec::new(),
    };
    let mut parser = Parser::new_from_str(text);
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| Diagnostic {
            pos: Some(Pos::new(e.marker().line(), e.marker().col() + 1)),
            path: String::new(),
            message: if e.info().contains("recursion limit") {
                "YAML nesting is deeper than the parser allows (recursion limit exceeded); a pipeline never needs this much".to_string()
            } else {
                format!("YAML syntax error: {}", e.info())
            },
        })?;
        builder.on_event(event, &span)?;
    }
    match builder.root {
        Some(root) => Ok(Parsed {
            root,
            problems: builder.problems,
            unresolved: builder.unresolved,
        }),
        None => Err(Diagnostic {
            pos: Some(Pos::new(1, 1)),
            path: String::new(),
            message: "the file holds no YAML document; expected a pipeline (apiVersion, kind, metadata, spec)".into(),
        }),
    }
}

struct Builder<'a> {
    limits: &'a Limits,
    lookup: &'a dyn interp::Env,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Arc<Node>>,
    root: Option<Arc<Node>>,
    documents: usize,
    problems: Vec<Diagnostic>,
    unresolved: Vec<Pos>,
    /// Field path of the node being built, for diagnostics found while building.
    path: Vec<String>,
}

impl Builder<'_> {
    fn on_event(&mut self, event: Event<'_>, span: &Span) -> Result<(), Diagnostic> {
        let pos = pos_of(span);
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(fatal(
                        pos,
                        "the file holds more than one YAML document; put one pipeline per file",
                    ));
                }
            }
            Event::Scalar(value, style, anchor, _tag) => {
                let raw_has = interp::has_interpolation(&value);
                let is_key = matches!(self.stack.last(), Some(Frame::Map { key: None, .. }));
                let mut raw = None;
                let mut vars = Vec::new();
                let (value, interpolated) = if raw_has && !is_key {
                    match interp::interpolate_names(&value, self.lookup) {
                        Ok((v, names)) => {
                            vars = names;
                            raw = Some(value.into_owned());
                            (v, true)
                        }
                        Err(errors) => {
                            self.unresolved.push(pos);
                            for e in errors {
                                self.problems.push(Diagnostic {
                                    pos: Some(pos),
                                    path: self.path_string(),
                                    message: e.to_string(),
                                });
                            }
                            raw = Some(value.to_string());
                            (value.into_owned(), false)
                        }
                    }
                } else {
                    (value.into_owned(), false)
                };
                let node = Arc::new(Node {
                    pos,
                    kind: Kind::Scalar(Scalar {
                        value,
                        style,
                        interpolated,
                        raw,
                        vars,
                    }),
                    size: 1,
                });
                self.finish(node, anchor)?;
            }
            Event::Alias(id) => {
                let Some(node) = self.anchors.get(&id).cloned() else {
                    return Err(fatal(pos, "alias to an unknown anchor"));
                };
                self.finish(node, 0)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.push(
                    Frame::Seq {
                        pos,
                        anchor,
                        items: Vec::new(),
                    },
                    pos,
                )?;
            }
            Event::MappingStart(anchor, _) => {
                self.push(
                    Frame::Map {
                        pos,
                        anchor,
                        entries: Vec::new(),
                        key: None,
                    },
                    pos,
                )?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq { pos, anchor, items }) => (Node::seq(pos, items), anchor),
                    Some(Frame::Map {
                        pos,
                        anchor,
                        entries,
                        ..
                    }) => (Node::map(pos, entries), anchor),
                    None => return Err(fatal(pos, "unbalanced YAML events")),
                };
                self.finish(Arc::new(node), anchor)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn push(&mut self, frame: Frame, pos: Pos) -> Result<(), Diagnostic> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(fatal(
                pos,
                &format!(
                    "YAML nesting is deeper than {} levels; a pipeline never needs this much",
                    self.limits.max_depth
                ),
            ));
        }
        let is_seq = matches!(frame, Frame::Seq { .. });
        self.stack.push(frame);
        self.path.truncate(self.stack.len() - 1);
        if is_seq {
            self.path.push("[0]".to_string());
        }
        Ok(())
    }

    /// Attaches a finished node to its parent (or makes it the root).
    fn finish(&mut self, node: Arc<Node>, anchor: usize) -> Result<(), Diagnostic> {
        if node.size > self.limits.max_nodes {
            return Err(fatal(
                node.pos,
                &format!(
                    "the document expands to more than {} nodes once aliases are followed (an alias bomb?); write it out without nested aliases",
                    self.limits.max_nodes
                ),
            ));
        }
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                let index = items.len();
                self.path.truncate(self.stack.len() - 1);
                self.path.push(format!("[{index}]"));
            }
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    let Some(name) = node.as_str() else {
                        return Err(fatal(
                            node.pos,
                            &format!(
                                "mapping keys must be plain names, found {}",
                                node.describe()
                            ),
                        ));
                    };
                    let duplicate = entries.iter().any(|(k, _)| k.as_str() == Some(name));
                    let name = name.to_string();
                    *key = Some(node.clone());
                    self.path.truncate(self.stack.len() - 1);
                    self.path.push(name.clone());
                    if duplicate {
                        self.problems.push(Diagnostic {
                            pos: Some(node.pos),
                            path: self.path_string(),
                            message: format!("duplicate key `{name}`; each key may appear once"),
                        });
                    }
                }
                Some(k) => entries.push((k, node)),
            },
        }
        Ok(())
    }

    fn path_string(&self) -> String {
        join_path(&self.path)
    }
}

fn join_path(parts: &[String]) -> String {
    let mut out = String::new();
    for p in parts {
        if !out.is_empty() && !p.starts_with('[') {
            out.push('.');
        }
        out.push_str(p);
    }
    out
}

fn fatal(pos: Pos, message: &str) -> Diagnostic {
    Diagnostic {
        pos: Some(pos),
        path: String::new(),
        message: message.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Deserializer

/// A serde error that knows where it happened.
#[derive(Debug)]
pub struct DeError {
    /// Position of the offending node, filled by the innermost deserializer that saw it.
    pub pos: Option<Pos>,
    /// Path of the offending node.
    pub path: Option<String>,
    /// What went wrong.
    pub message: String,
}

impl DeError {
    /// Into a diagnostic.
    pub fn into_diagnostic(self) -> Diagnostic {
        Diagnostic {
            pos: self.pos,
            path: self.path.unwrap_or_default(),
            message: self.message,
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            pos: None,
            path: None,
            message: msg.to_string(),
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(format!(
            "unknown field `{field}`{} (expected one of {})",
            suggestion(field, expected.iter().copied()),
            one_of(expected.iter().copied())
        ))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::custom(format!(
            "unknown value `{variant}`{} (expected one of {})",
            suggestion(variant, expected.iter().copied()),
            one_of(expected.iter().copied())
        ))
    }

    fn missing_field(field: &'static str) -> Self {
        Self::custom(format!("missing field `{field}`"))
    }
}

/// Deserializes a `T` from a node; `path` is the node's field path for messages.
pub fn from_node<T: de::DeserializeOwned>(node: &Node, path: &str) -> Result<T, DeError> {
    T::deserialize(NodeDe {
        node,
        path: path.to_string(),
    })
}

struct NodeDe<'a> {
    node: &'a Node,
    path: String,
}

impl NodeDe<'_> {
    /// Puts this node's position and path on an error that has none yet.
    fn locate<T>(&self, result: Result<T, DeError>) -> Result<T, DeError> {
        result.map_err(|mut e| {
            if e.pos.is_none() {
                e.pos = Some(self.node.pos);
                e.path = Some(self.path.clone());
            }
            e
        })
    }

    fn invalid(&self, expected: &str) -> DeError {
        DeError {
            pos: Some(self.node.pos),
            path: Some(self.path.clone()),
            message: format!("expected {expected}, found {}", self.found()),
        }
    }

    fn found(&self) -> String {
        match &self.node.kind {
            Kind::Scalar(s) if s.style == ScalarStyle::Plain && is_null(&s.value) => {
                "nothing (null)".into()
            }
            Kind::Scalar(s) => format!("`{}`", truncate(&s.value)),
            other => match other {
                Kind::Seq(_) => "a list".into(),
                _ => "a mapping".into(),
            },
        }
    }

    fn child(&self, segment: &str) -> String {
        if segment.starts_with('[') || self.path.is_empty() {
            format!("{}{segment}", self.path)
        } else {
            format!("{}.{segment}", self.path)
        }
    }
}

fn truncate(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() > MAX {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}...")
    } else {
        s.to_string()
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
enum Resolved<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
}

fn resolve(s: &Scalar) -> Resolved<'_> {
    let v = s.value.as_str();
    if s.style != ScalarStyle::Plain {
        return Resolved::Str(v);
    }
    if is_null(v) {
        return Resolved::Null;
    }
    match v {
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = v.parse::<i64>() {
            return Resolved::Int(i);
        }
        if let Ok(u) = v.trim_start_matches('+').parse::<u64>() {
            return Resolved::UInt(u);
        }
    }
    if let Some(hex) = v.strip_prefix("0x")
        && let Ok(u) = u64::from_str_radix(hex, 16)
    {
        return Resolved::UInt(u);
    }
    if let Some(oct) = v.strip_prefix("0o")
        && let Ok(u) = u64::from_str_radix(oct, 8)
    {
        return Resolved::UInt(u);
    }
    let looks_numeric = digits
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if looks_numeric && let Ok(f) = v.parse::<f64>() {
        return Resolved::Float(f);
    }
    Resolved::Str(v)
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.kind {
            Kind::Scalar(s) => match resolve(s) {
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::Int(i) => visitor.visit_i64(i),
                Resolved::UInt(u) => visitor.visit_u64(u),
                Resolved::Float(f) => visitor.visit_f64(f),
                Resolved::Str(s) => visitor.visit_str(s),
            },
            Kind::Seq(items) => visitor.visit_seq(SeqAccess {
                de: &self,
                items: items.iter(),
                index: 0,
            }),
            Kind::Map(entries) => visitor.visit_map(MapAccess {
                de: &self,
                entries: entries.iter(),
                value: None,
            }),
        };
        self.locate(result)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Scalar(s) if !(s.style == ScalarStyle::Plain && is_null(&s.value)) => {
                let result = visitor.visit_str(&s.value);
                self.locate(result)
            }
            _ => Err(self.invalid("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Seq(_) => self.deserialize_any(visitor),
            _ => Err(self.invalid("a list")),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Map(_) => self.deserialize_any(visitor),
            _ => Err(self.invalid("a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let result = match &self.node.kind {
            Kind::Scalar(s) => visitor.visit_enum(s.value.as_str().into_deserializer()),
            Kind::Map(entries) if entries.len() == 1 => {
                let (k, v) = &entries[0];
                visitor.visit_enum(EnumAccess {
                    de: &self,
                    key: k,
                    value: v,
                })
            }
            _ => return Err(self.invalid("a name, or a mapping with a single key")),
        };
        self.locate(result)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct tuple tuple_struct
    }
}

struct SeqAccess<'a, 'b> {
    de: &'b NodeDe<'a>,
    items: std::slice::Iter<'b, Arc<Node>>,
    index: usize,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        let path = self.de.child(&format!("[{}]", self.index));
        self.index += 1;
        let de = NodeDe { node: item, path };
        let result = seed.deserialize(NodeDe {
            node: de.node,
            path: de.path.clone(),
        });
        de.locate(result).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'a, 'b> {
    de: &'b NodeDe<'a>,
    entries: std::slice::Iter<'b, (Arc<Node>, Arc<Node>)>,
    value: Option<(&'b Node, String)>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((k, v)) = self.entries.next() else {
            return Ok(None);
        };
        let name = k.as_str().unwrap_or_default();
        let path = self.de.child(name);
        self.value = Some((v, path.clone()));
        let key_de = NodeDe { node: k, path };
        let result = seed.deserialize(NodeDe {
            node: key_de.node,
            path: key_de.path.clone(),
        });
        key_de.locate(result).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((node, path)) = self.value.take() else {
            return Err(de::Error::custom("value requested before key"));
        };
        let de = NodeDe { node, path };
        let result = seed.deserialize(NodeDe {
            node: de.node,
            path: de.path.clone(),
        });
        de.locate(result)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct EnumAccess<'a, 'b> {
    de: &'b NodeDe<'a>,
    key: &'b Node,
    value: &'b Node,
}

impl<'de, 'a, 'b> de::EnumAccess<'de> for EnumAccess<'a, 'b> {
    type Error = DeError;
    type Variant = NodeDe<'b>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, NodeDe<'b>), DeError> {
        let name = self.key.as_str().unwrap_or_default();
        let path = self.de.child(name);
        let key_de = NodeDe {
            node: self.key,
            path: path.clone(),
        };
        let variant = key_de.locate(seed.deserialize(NodeDe {
            node: self.key,
            path: path.clone(),
        }))?;
        Ok((
            variant,
            NodeDe {
                node: self.value,
                path,
            },
        ))
    }
}

impl<'de> de::VariantAccess<'de> for NodeDe<'_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        if self.node.is_null() {
            Ok(())
        } else {
            Err(self.invalid("nothing after a unit value"))
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        let result = seed.deserialize(NodeDe {
            node: self.node,
            path: self.path.clone(),
        });
        self.locate(result)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Source map

/// Finds the position of a field path in the file, and the position of a spot inside a
/// multi-line scalar (for SQL errors).
#[derive(Debug)]
pub struct SourceMap {
    lines: Vec<String>,
    /// Path -> (key position, value node).
    index: HashMap<String, (Option<Pos>, Arc<Node>)>,
}

impl SourceMap {
    /// Indexes every path of the tree (aliases count once per place they appear; the tree's
    /// size cap bounds the walk).
    pub fn new(text: &str, root: &Arc<Node>) -> Self {
        let mut index = HashMap::new();
        let mut stack: Vec<(String, Option<Pos>, Arc<Node>)> =
            vec![(String::new(), None, root.clone())];
        while let Some((path, key_pos, node)) = stack.pop() {
            match &node.kind {
                Kind::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        stack.push((format!("{path}[{i}]"), None, item.clone()));
                    }
                }
                Kind::Map(entries) => {
                    for (k, v) in entries {
                        let name = k.as_str().unwrap_or_default();
                        let child = if path.is_empty() {
                            name.to_string()
                        } else {
                            format!("{path}.{name}")
                        };
                        stack.push((child, Some(k.pos), v.clone()));
                    }
                }
                Kind::Scalar(_) => {}
            }
            index.insert(path, (key_pos, node));
        }
        Self {
            lines: text.lines().map(str::to_string).collect(),
            index,
        }
    }

    /// Every scalar of the file with its field path, in no particular order.
    pub fn scalars(&self) -> impl Iterator<Item = (&str, &Scalar)> {
        self.index
            .iter()
            .filter_map(|(path, (_, node))| match &node.kind {
                Kind::Scalar(s) => Some((path.as_str(), s)),
                _ => None,
            })
    }

    /// The node at `path`, if the file has it.
    pub fn node(&self, path: &str) -> Option<&Arc<Node>> {
        self.index.get(path).map(|(_, n)| n)
    }

    /// Position of the value at `path`, or of its nearest ancestor the file has.
    pub fn locate(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some((_, node)) = self.index.get(p) {
                return node.pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return Pos::new(1, 1),
            }
        }
    }

    /// Position of the key of `path` (where a mapping entry starts), falling back to
    /// [`locate`](Self::locate).
    pub fn locate_key(&self, path: &str) -> Pos {
        match self.index.get(path) {
            Some((Some(k), _)) => *k,
            _ => self.locate(path),
        }
    }

    /// Position of 1-based `line`/`col` inside the scalar at `path`. Exact for literal block
    /// scalars (`|`, how SQL is written) and for single-line scalars; otherwise the start of
    /// the scalar.
    pub fn locate_in_scalar(&self, path: &str, line: usize, col: usize) -> Pos {
        let start = self.locate(path);
        let Some(Kind::Scalar(s)) = self.node(path).map(|n| &n.kind) else {
            return start;
        };
        match s.style {
            ScalarStyle::Literal if !s.interpolated => {
                // The content sits at the indentation of its first non-blank line, from the
                // line after the `|` indicator (the span may start at either).
                let at_indicator = self
                    .lines
                    .get(start.line - 1)
                    .and_then(|l| l.chars().nth(start.col - 1))
                    == Some('|');
                let first = if at_indicator {
                    start.line + 1
                } else {
                    start.line
                };
                let indent = self
                    .lines
                    .iter()
                    .skip(first - 1)
                    .find(|l| !l.trim().is_empty())
                    .map(|l| l.len() - l.trim_start().len())
                    .unwrap_or(0);
                Pos::new(first + line - 1, indent + col)
            }
            ScalarStyle::Plain | ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted
                if line == 1 && !s.interpolated && !s.value.contains('\n') =>
            {
                let quote = usize::from(s.style != ScalarStyle::Plain);
                Pos::new(start.line, start.col + quote + col - 1)
            }
            _ => start,
        }
    }

    /// Fills in the position of a diagnostic from its path, if it has none.
    pub fn place(&self, mut d: Diagnostic) -> Diagnostic {
        if d.pos.is_none() {
            d.pos = Some(self.locate(&d.path));
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn tree(text: &str) -> Arc<Node> {
        parse(text, &Limits::default(), &no_env)
            .expect("parses")
            .root
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        half_life: Option<String>,
        ridge: Option<f64>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        n: u32,
        items: Vec<Inner>,
    }

    #[test]
    fn unknown_field_is_located_with_suggestion() {
        let root = tree("name: x\nn: 3\nitems:\n  - ridge: 1.0\n  - half_lfe: 1h\n");
        let err = from_node::<Outer>(&root, "").expect_err("must fail");
        assert_eq!(err.pos, Some(Pos::new(5, 5)));
        assert_eq!(err.path.as_deref(), Some("items[1].half_lfe"));
        assert!(
            err.message
                .starts_with("unknown field `half_lfe`, did you mean `half_life`?"),
            "{}",
            err.message
        );
    }

    #[test]
    fn type_errors_are_located() {
        let root = tree("name: x\nn: lots\nitems: []\n");
        let err = from_node::<Outer>(&root, "").expect_err("must fail");
        assert_eq!(err.pos, Some(Pos::new(2, 4)));
        assert_eq!(err.path.as_deref(), Some("n"));
        assert!(err.message.contains("invalid type"), "{}", err.message);
    }

    #[test]
    fn scalars_resolve_by_core_schema() {
        let root = tree("name: '12'\nn: 0x10\nitems: [{ridge: 1.0e-6}, {ridge: ~}]\n");
        let v: Outer = from_node(&root, "").expect("valid");
        assert_eq!(v.name, "12");
        assert_eq!(v.n, 16);
        assert_eq!(v.items[0].ridge, Some(1.0e-6));
        assert_eq!(v.items[1].ridge, None);
        // A plain number is still a fine string where a string is wanted.
        let root = tree("name: 12\nn: 1\nitems: []\n");
        assert_eq!(from_node::<Outer>(&root, "").expect("valid").name, "12");
    }

    #[test]
    fn alias_bomb_is_rejected_quickly() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse(&text, &Limits::default(), &no_env).expect_err("bomb");
        assert!(
            err.message.contains("expands to more than"),
            "{}",
            err.message
        );
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let text = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let err = parse(&text, &Limits::default(), &no_env).expect_err("deep");
        assert!(
            err.message.contains("nesting is deeper than"),
            "{}",
            err.message
        );
        // Block nesting, within the size cap: 1,000 levels.
        let text = (0..1_000)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect::<String>();
        let err = parse(&text, &Limits::default(), &no_env).expect_err("deep");
        assert!(err.message.contains("deeper than 64"), "{}", err.message);
    }

    #[test]
    fn oversized_files_are_rejected() {
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        let err = parse("name: a-long-name\n", &limits, &no_env).expect_err("big");
        assert!(err.message.contains("over the limit"), "{}", err.message);
    }

    #[test]
    fn duplicate_keys_and_unset_env_are_collected() {
        let parsed = parse(
            "a: 1\na: 2\nb: ${NOT_SET_ANYWHERE}\n",
            &Limits::default(),
            &no_env,
        )
        .expect("parses");
        let problems = parsed.problems;
        assert_eq!(parsed.unresolved, vec![Pos::new(3, 4)]);
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].pos, Some(Pos::new(2, 1)));
        assert!(problems[0].message.contains("duplicate key `a`"));
        assert_eq!(problems[1].path, "b");
        assert!(
            problems[1]
                .message
                .contains("`NOT_SET_ANYWHERE` is not set")
        );
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = parse("a: [1, 2\nb: 3\n", &Limits::default(), &no_env).expect_err("bad");
        assert!(
            err.message.starts_with("YAML syntax error"),
            "{}",
            err.message
        );
        assert!(err.pos.is_some());
    }

    #[test]
    fn source_map_locates_inside_literal_sql() {
        let text = "spec:\n  sql: |\n    SELECT a\n    FROM t\n";
        let root = tree(text);
        let map = SourceMap::new(text, &root);
        assert_eq!(map.locate_key("spec.sql"), Pos::new(2, 3));
        // Line 2, column 6 of the SQL is `t`, which sits at line 4, column 10 of the file.
        assert_eq!(map.locate_in_scalar("spec.sql", 2, 6), Pos::new(4, 10));
        assert_eq!(map.locate("spec.sql.nothing"), map.locate("spec.sql"));
    }
}
