//! Loading a pipeline file: parse with limits, deserialize each component on its own, then run
//! the structural checks. Every problem found is kept; nothing stops at the first error.

use std::collections::BTreeSet;
use std::rc::Rc;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::diag::{Diagnostic, one_of, suggestion};
use crate::model::{
    ApiVersion, DocumentKind, Metadata, Model, Pipeline, PipelineSpec, Sink, Source, Transform,
};
use crate::validate;
use crate::yaml::{self, Kind, Limits, Node, SourceMap};

/// A loaded pipeline file: the pipeline (when the document's frame could be read), where
/// everything is in the file, and every problem found.
#[derive(Debug)]
pub struct Document {
    /// The file name used in messages.
    pub file: String,
    /// The pipeline, holding only the components that deserialized; `None` when the document
    /// is not even a pipeline (syntax error, a limit, no `metadata`).
    pub pipeline: Option<Pipeline>,
    /// Names of components that failed to deserialize. Later checks treat them as existing,
    /// so one typo does not cascade into "unknown input" errors elsewhere.
    pub broken: BTreeSet<String>,
    /// Positions of every field.
    pub source_map: Option<SourceMap>,
    diagnostics: Vec<Diagnostic>,
}

impl Document {
    /// Every problem, located and in file order.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut all: Vec<Diagnostic> = self
            .diagnostics
            .iter()
            .cloned()
            .map(|d| match &self.source_map {
                Some(map) => map.place(d),
                None => d,
            })
            .collect();
        all.sort_by(|a, b| a.pos.cmp(&b.pos).then_with(|| a.message.cmp(&b.message)));
        all.dedup();
        all
    }

    /// Adds a problem found by a later stage (the planner).
    pub fn push(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    /// Whether no problem was found.
    pub fn is_valid(&self) -> bool {
        self.diagnostics.is_empty() && self.pipeline.is_some()
    }
}

/// The top of the document; `spec` is read component by component.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Envelope {
    api_version: ApiVersion,
    kind: DocumentKind,
    metadata: Metadata,
    spec: IgnoredAny,
}

const SPEC_FIELDS: [&str; 4] = ["sources", "transforms", "models", "sinks"];

/// Loads a pipeline from `text`. `file` names it in messages; `env` resolves `${VAR}`.
pub fn load(file: &str, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Document {
    load_with_limits(file, text, env, &Limits::default())
}

/// [`load`] with explicit limits.
pub fn load_with_limits(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    limits: &Limits,
) -> Document {
    let mut doc = Document {
        file: file.to_string(),
        pipeline: None,
        broken: BTreeSet::new(),
        source_map: None,
        diagnostics: Vec::new(),
    };
    let (root, problems) = match yaml::parse(text, limits, env) {
        Ok(parsed) => parsed,
        Err(d) => {
            doc.diagnostics.push(d);
            return doc;
        }
    };
    doc.diagnostics.extend(problems);
    doc.source_map = Some(SourceMap::new(text, &root));

    if !matches!(root.kind, Kind::Map(_)) {
        doc.diagnostics.push(Diagnostic::at_path(
            "",
            "expected a mapping with `apiVersion`, `kind`, `metadata` and `spec`",
        ));
        return doc;
    }
    let envelope = match yaml::from_node::<Envelope>(&root, "") {
        Ok(e) => Some(e),
        Err(e) => {
            doc.diagnostics.push(e.into_diagnostic());
            None
        }
    };
    let spec = match root.get("spec") {
        Some(node) => read_spec(node, &mut doc),
        None => PipelineSpec::default(),
    };
    if let Some(envelope) = envelope {
        doc.pipeline = Some(Pipeline {
            api_version: envelope.api_version,
            kind: envelope.kind,
            metadata: envelope.metadata,
            spec,
        });
    } else if let Some(meta) = root.get("metadata")
        && let Ok(metadata) = yaml::from_node::<Metadata>(meta, "metadata")
    {
        // The frame had a problem elsewhere (say, a bad apiVersion): still check the body.
        doc.pipeline = Some(Pipeline {
            api_version: ApiVersion::V1,
            kind: DocumentKind::Pipeline,
            metadata,
            spec,
        });
    }
    if let Some(pipeline) = &doc.pipeline {
        let mut found = Vec::new();
        validate::check(pipeline, &doc, &mut found);
        doc.diagnostics.extend(found);
    }
    doc
}

fn read_spec(node: &Rc<Node>, doc: &mut Document) -> PipelineSpec {
    let mut spec = PipelineSpec::default();
    let Kind::Map(entries) = &node.kind else {
        doc.diagnostics.push(Diagnostic::at_path(
            "spec",
            "expected a mapping with `sources`, `transforms`, `models` and `sinks`",
        ));
        return spec;
    };
    for (key, _) in entries {
        let name = key.as_str().unwrap_or_default();
        if !SPEC_FIELDS.contains(&name) {
            doc.diagnostics.push(Diagnostic {
                pos: Some(key.pos),
                path: format!("spec.{name}"),
                message: format!(
                    "unknown field `{name}`{} (expected one of {})",
                    suggestion(name, SPEC_FIELDS),
                    one_of(SPEC_FIELDS)
                ),
            });
        }
    }
    if node.get("sources").is_none() {
        doc.diagnostics.push(Diagnostic::at_path(
            "spec",
            "missing field `sources`: a pipeline reads at least one Kafka topic",
        ));
    }
    spec.sources = read_list::<Source>(node, "sources", doc, |s, i| s.index = i);
    spec.transforms = read_list::<Transform>(node, "transforms", doc, |t, i| t.index = i);
    spec.models = read_list::<Model>(node, "models", doc, |m, i| m.index = i);
    spec.sinks = read_list::<Sink>(node, "sinks", doc, |s, i| s.index = i);
    spec
}

fn read_list<T: serde::de::DeserializeOwned>(
    spec: &Node,
    field: &str,
    doc: &mut Document,
    set_index: impl Fn(&mut T, usize),
) -> Vec<T> {
    let Some(list) = spec.get(field) else {
        return Vec::new();
    };
    let items = match &list.kind {
        Kind::Seq(items) => items,
        Kind::Scalar(s) if s.value.is_empty() || s.value == "~" || s.value == "null" => {
            return Vec::new();
        }
        _ => {
            doc.diagnostics.push(Diagnostic::at_path(
                format!("spec.{field}"),
                format!("expected a list of {field}"),
            ));
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("spec.{field}[{i}]");
        match yaml::from_node::<T>(item, &path) {
            Ok(mut value) => {
                set_index(&mut value, i);
                out.push(value);
            }
            Err(e) => {
                doc.diagnostics.push(e.into_diagnostic());
                if let Some(name) = item.get("name").and_then(|n| n.as_str()) {
                    doc.broken.insert(name.to_string());
                }
            }
        }
    }
    out
}
