//! Loading a pipeline file: parse with limits, deserialize each top-level field and each
//! component on its own, then run the structural checks. Every problem found is kept;
//! nothing stops at the first error.
//!
//! Within one component serde stops at its first error. To find the next one we recover by
//! deletion, as compilers do: drop the offending entry from a copy of the component and try
//! again, until it deserializes or an error cannot be removed. A "missing field" caused by
//! our own deletion is not reported.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::diag::{Diagnostic, Pos, one_of, suggestion};
use crate::duration::Duration;
use crate::interp::Env;
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
    /// is not even a pipeline (syntax error, a limit, no usable `metadata`).
    pub pipeline: Option<Pipeline>,
    /// Names of components that failed to deserialize. Later checks treat them as existing,
    /// so one typo does not cascade into "unknown input" errors elsewhere.
    pub broken: BTreeSet<String>,
    /// Positions of every field.
    pub source_map: Option<SourceMap>,
    diagnostics: Vec<Diagnostic>,
    /// Values whose `${ENV}` is unset: other complaints about them are noise.
    unresolved: HashSet<Pos>,
    /// Positions of the interpolation errors themselves, which are always kept.
    env_errors: usize,
    /// Variables the environment marks as secrets.
    pub(crate) secret_vars: HashSet<String>,
    /// Resolved values of secrets: never shown (see [`Document::redact`]).
    secrets: Vec<String>,
}

impl Document {
    /// A document that could not be checked at all, with the reason.
    pub fn failed(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            pipeline: None,
            broken: BTreeSet::new(),
            source_map: None,
            diagnostics: vec![Diagnostic::at_path("", message)],
            unresolved: HashSet::new(),
            env_errors: 0,
            secret_vars: HashSet::new(),
            secrets: Vec::new(),
        }
    }

    /// Every problem, located and in file order.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut all: Vec<Diagnostic> = self
            .diagnostics
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let d = match &self.source_map {
                    Some(map) => map.place(d.clone()),
                    None => d.clone(),
                };
                (i, d)
            })
            .filter(|(i, d)| {
                *i < self.env_errors || !d.pos.is_some_and(|p| self.unresolved.contains(&p))
            })
            .map(|(_, mut d)| {
                d.message = self.redact(&d.message);
                d
            })
            .collect();
        all.sort_by(|a, b| a.pos.cmp(&b.pos).then_with(|| a.message.cmp(&b.message)));
        all.dedup();
        all
    }

    /// `text` with every resolved secret replaced by `***`: for anything derived from the
    /// pipeline that is logged, shown or returned (errors of Kafka, of the runtime).
    pub fn redact(&self, text: &str) -> String {
        redact(text, &self.secrets)
    }

    /// The resolved secret values, to redact text made later (a run's errors).
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// Adds a problem found by a later stage (the planner).
    pub fn push(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    /// Whether no problem was found.
    pub fn is_valid(&self) -> bool {
        self.pipeline.is_some() && self.diagnostics().is_empty()
    }
}

const TOP_FIELDS: [&str; 4] = ["apiVersion", "kind", "metadata", "spec"];
const SPEC_FIELDS: [&str; 5] = ["sources", "transforms", "models", "sinks", "commit_every"];
/// Most errors reported for one component; past this the rest are likely consequences.
const MAX_ERRORS_PER_COMPONENT: usize = 20;

/// Loads a pipeline from `text`. `file` names it in messages; `env` resolves `${VAR}`.
pub fn load(file: &str, text: &str, env: &dyn Env) -> Document {
    load_with_limits(file, text, env, &Limits::default())
}

/// [`load`] with explicit limits.
pub fn load_with_limits(file: &str, text: &str, env: &dyn Env, limits: &Limits) -> Document {
    let mut doc = Document {
        file: file.to_string(),
        pipeline: None,
        broken: BTreeSet::new(),
        source_map: None,
        diagnostics: Vec::new(),
        unresolved: HashSet::new(),
        env_errors: 0,
        secret_vars: HashSet::new(),
        secrets: Vec::new(),
    };
    let parsed = match yaml::parse(text, limits, env) {
        Ok(parsed) => parsed,
        Err(d) => {
            doc.diagnostics.push(d);
            return doc;
        }
    };
    let root = parsed.root;
    // Interpolation errors go first so `diagnostics` can tell them from their echoes.
    let (env_problems, other_problems): (Vec<_>, Vec<_>) = parsed
        .problems
        .into_iter()
        .partition(|d| parsed.unresolved.contains(&d.pos.unwrap_or_default()));
    doc.env_errors = env_problems.len();
    doc.diagnostics.extend(env_problems);
    doc.diagnostics.extend(other_problems);
    doc.unresolved = parsed.unresolved.into_iter().collect();
    let map = SourceMap::new(text, &root);
    for (path, scalar) in map.scalars() {
        for var in &scalar.vars {
            if env.is_secret(var) {
                doc.secret_vars.insert(var.clone());
            }
        }
        let secret_property = validate::property_of(path).is_some_and(crate::kafka::is_secret);
        let secret_var = scalar.vars.iter().any(|v| env.is_secret(v));
        if (secret_property || secret_var) && scalar.interpolated && !scalar.value.is_empty() {
            doc.secrets.push(scalar.value.clone());
        }
    }
    // Longest first, so that a secret containing another is replaced whole.
    doc.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    doc.secrets.dedup();
    doc.source_map = Some(map);

    let Kind::Map(entries) = &root.kind else {
        doc.diagnostics.push(Diagnostic::at_path(
            "",
            "expected a mapping with `apiVersion`, `kind`, `metadata` and `spec`",
        ));
        return doc;
    };
    check_keys(entries, "", &TOP_FIELDS, &mut doc);
    let api_version = field::<ApiVersion>(&root, "apiVersion", "", &mut doc);
    let kind = field::<DocumentKind>(&root, "kind", "", &mut doc);
    let metadata = field::<Metadata>(&root, "metadata", "", &mut doc);
    let spec = match root.get("spec") {
        Some(node) => read_spec(node, &mut doc),
        None => {
            doc.diagnostics
                .push(Diagnostic::at_path("", "missing field `spec`"));
            PipelineSpec::default()
        }
    };
    if let Some(metadata) = metadata {
        // A wrong apiVersion or kind is reported; the body is still checked as v1.
        doc.pipeline = Some(Pipeline {
            api_version: api_version.unwrap_or(ApiVersion::V1),
            kind: kind.unwrap_or(DocumentKind::Pipeline),
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

/// Reports keys of a mapping that are not in `allowed`, with a suggestion.
fn check_keys(
    entries: &[(Arc<Node>, Arc<Node>)],
    parent: &str,
    allowed: &[&str],
    doc: &mut Document,
) {
    for (key, _) in entries {
        let name = key.as_str().unwrap_or_default();
        if !allowed.contains(&name) {
            let path = if parent.is_empty() {
                name.to_string()
            } else {
                format!("{parent}.{name}")
            };
            doc.diagnostics.push(Diagnostic {
                pos: Some(key.pos),
                path,
                message: format!(
                    "unknown field `{name}`{} (expected one of {})",
                    suggestion(name, allowed.iter().copied()),
                    one_of(allowed.iter().copied())
                ),
            });
        }
    }
}

/// Deserializes the required field `name` of `parent`, reporting what is wrong.
fn field<T: DeserializeOwned>(
    parent: &Node,
    name: &str,
    parent_path: &str,
    doc: &mut Document,
) -> Option<T> {
    let path = if parent_path.is_empty() {
        name.to_string()
    } else {
        format!("{parent_path}.{name}")
    };
    match parent.get(name) {
        Some(node) => deserialize_all(node, &path, doc),
        None => {
            doc.diagnostics.push(Diagnostic::at_path(
                parent_path,
                format!("missing field `{name}`"),
            ));
            None
        }
    }
}

/// Deserializes `node`, reporting every error found by recovering after each one.
fn deserialize_all<T: DeserializeOwned>(node: &Node, path: &str, doc: &mut Document) -> Option<T> {
    let mut current: Option<Node> = None;
    // (map position, key) pairs we deleted, so their "missing field" echoes are dropped.
    let mut deleted: Vec<(Pos, String)> = Vec::new();
    let mut seen: HashSet<Pos> = HashSet::new();
    for _ in 0..MAX_ERRORS_PER_COMPONENT {
        let target = current.as_ref().unwrap_or(node);
        let err = match yaml::from_node::<T>(target, path) {
            Ok(value) => {
                return if deleted.is_empty() {
                    Some(value)
                } else {
                    None
                };
            }
            Err(e) => e,
        };
        let Some(pos) = err.pos else {
            doc.diagnostics.push(err.into_diagnostic());
            return None;
        };
        if let Some(missing) = err
            .message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
            && deleted.iter().any(|(p, k)| *p == pos && k == missing)
        {
            return None;
        }
        if !seen.insert(pos) {
            return None;
        }
        let is_missing = err.message.starts_with("missing field");
        doc.diagnostics.push(err.into_diagnostic());
        if is_missing {
            return None;
        }
        let next = target.without(pos)?;
        if let Some((map_pos, key)) = entry_at(target, pos) {
            deleted.push((map_pos, key));
        }
        current = Some(next);
    }
    None
}

/// The mapping position and key of the entry whose key or value starts at `pos`.
fn entry_at(node: &Node, pos: Pos) -> Option<(Pos, String)> {
    match &node.kind {
        Kind::Scalar(_) => None,
        Kind::Seq(items) => items.iter().find_map(|n| entry_at(n, pos)),
        Kind::Map(entries) => entries.iter().find_map(|(k, v)| {
            if k.pos == pos || v.pos == pos {
                Some((node.pos, k.as_str().unwrap_or_default().to_string()))
            } else {
                entry_at(v, pos)
            }
        }),
    }
}

fn read_spec(node: &Arc<Node>, doc: &mut Document) -> PipelineSpec {
    let mut spec = PipelineSpec::default();
    let Kind::Map(entries) = &node.kind else {
        doc.diagnostics.push(Diagnostic::at_path(
            "spec",
            "expected a mapping with `sources`, `transforms`, `models` and `sinks`",
        ));
        return spec;
    };
    check_keys(entries, "spec", &SPEC_FIELDS, doc);
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
    spec.commit_every = node.get("commit_every").and_then(|n| {
        yaml::from_node::<Duration>(n, "spec.commit_every")
            .map_err(|mut e| {
                // A scalar's own parse error comes without a place.
                e.pos.get_or_insert(n.pos);
                e.path.get_or_insert_with(|| "spec.commit_every".into());
                doc.diagnostics.push(e.into_diagnostic());
            })
            .ok()
    });
    spec
}

fn read_list<T: DeserializeOwned>(
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
        Kind::Scalar(s) if matches!(s.value.as_str(), "" | "~" | "null") => {
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
        match deserialize_all::<T>(item, &path, doc) {
            Some(mut value) => {
                set_index(&mut value, i);
                out.push(value);
            }
            None => {
                if let Some(name) = item.get("name").and_then(|n| n.as_str()) {
                    doc.broken.insert(name.to_string());
                }
            }
        }
    }
    out
}

/// `text` with every one of `secrets` replaced by `***`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}
