//! Structural checks that need no schemas or SQL: names, references between components
//! declared in YAML (`model.input`, `sink.from`), parameter ranges, secrets. Checks that need
//! the event schemas or the SQL (unknown columns, transform inputs, cycles, feature types) are
//! the planner's.

use std::collections::{BTreeMap, HashSet};

use crate::diag::{Diagnostic, one_of, suggestion};
use crate::kafka::{self, Client};
use crate::load::Document;
use crate::model::{
    Clustering, Feature, Model, OnDrift, OnError, Pipeline, Regression, Sink, Source, StartFrom,
    Transform, Window,
};

/// What a name in the pipeline refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentKind {
    /// A Kafka source.
    Source,
    /// A SQL transform.
    Transform,
    /// An incremental model.
    Model,
    /// A Kafka sink.
    Sink,
}

impl ComponentKind {
    /// Lowercase name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Source => "source",
            ComponentKind::Transform => "transform",
            ComponentKind::Model => "model",
            ComponentKind::Sink => "sink",
        }
    }
}

/// Runs every structural check, appending to `out`.
pub fn check(p: &Pipeline, doc: &Document, out: &mut Vec<Diagnostic>) {
    check_interpolation(doc, out);
    check_pipeline_name(&p.metadata.name, out);
    let names = check_names(p, out);
    let known = |name: &str| names.contains_key(name) || doc.broken.contains(name);
    for s in &p.spec.sources {
        check_source(s, doc, out);
    }
    for t in &p.spec.transforms {
        if let Some(w) = &t.window {
            check_window(w, &format!("spec.transforms[{}].window", t.index), out);
        }
        if let Some(j) = &t.join {
            let path = format!("spec.transforms[{}].join", t.index);
            if j.within.is_zero() {
                out.push(Diagnostic::at_path(
                    format!("{path}.within"),
                    "`within` must be greater than zero",
                ));
            }
            if t.window.is_some() {
                out.push(Diagnostic::at_path(
                    path,
                    "a transform cannot both join two streams and window them; join first, then window in another transform",
                ));
            }
        }
    }
    for m in &p.spec.models {
        check_model(m, &names, &known, out);
    }
    for s in &p.spec.sinks {
        check_sink(s, p, &names, &known, doc, out);
    }
    check_exactly_once_properties(p, out);
    if let Some(every) = p.spec.commit_every
        && !(COMMIT_EVERY.0..=COMMIT_EVERY.1).contains(&every.0)
    {
        out.push(Diagnostic::at_path(
            "spec.commit_every",
            format!(
                "`commit_every` must be from 100ms to 1h (each commit is a transaction on the broker; a longer interval holds more exactly-once records in memory): `{every}` is not"
            ),
        ));
    }
}

/// The `exactly_once` sinks of a pipeline are written by one transactional producer per
/// task (with the state and offsets), which takes their `kafka.properties`: they must agree.
fn check_exactly_once_properties(p: &Pipeline, out: &mut Vec<Diagnostic>) {
    let mut eo = p
        .spec
        .sinks
        .iter()
        .filter(|s| s.delivery == crate::model::Delivery::ExactlyOnce);
    let Some(first) = eo.next() else { return };
    for s in eo.filter(|s| s.kafka.properties != first.kafka.properties) {
        out.push(Diagnostic::at_path(
            format!("spec.sinks[{}].kafka.properties", s.index),
            format!(
                "exactly_once sinks `{}` and `{}` have different `kafka.properties`: the records of a pipeline's exactly_once sinks are written by one transactional producer per task, in the transaction of its state and offsets, so their properties must be the same; give both the same, or make one at_least_once",
                first.name, s.name
            ),
        ));
    }
}

/// The bounds of `commit_every`.
const COMMIT_EVERY: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_millis(100),
    std::time::Duration::from_secs(3600),
);

fn check_pipeline_name(name: &str, out: &mut Vec<Diagnostic>) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        out.push(Diagnostic::at_path(
            "metadata.name",
            format!(
                "invalid pipeline name `{name}`: use lowercase letters, digits and `-`, at most 63 characters, not starting or ending with `-`"
            ),
        ));
    }
}

/// Whether `name` can name a component (and so a SQL table without quoting).
pub fn is_component_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 63
        && matches!(bytes.next(), Some(b) if b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn check_names(
    p: &Pipeline,
    out: &mut Vec<Diagnostic>,
) -> BTreeMap<String, (ComponentKind, String)> {
    let mut names: BTreeMap<String, (ComponentKind, String)> = BTreeMap::new();
    let all = p
        .spec
        .sources
        .iter()
        .map(|s| {
            (
                ComponentKind::Source,
                &s.name,
                format!("spec.sources[{}]", s.index),
            )
        })
        .chain(p.spec.transforms.iter().map(|t| {
            (
                ComponentKind::Transform,
                &t.name,
                format!("spec.transforms[{}]", t.index),
            )
        }))
        .chain(p.spec.models.iter().map(|m| {
            (
                ComponentKind::Model,
                &m.name,
                format!("spec.models[{}]", m.index),
            )
        }))
        .chain(p.spec.sinks.iter().map(|s| {
            (
                ComponentKind::Sink,
                &s.name,
                format!("spec.sinks[{}]", s.index),
            )
        }));
    for (kind, name, path) in all {
        if !is_component_name(name) {
            out.push(Diagnostic::at_path(
                format!("{path}.name"),
                format!(
                    "invalid name `{name}`: use lowercase letters, digits and `_`, starting with a letter (names are SQL table names)"
                ),
            ));
        }
        if let Some((other_kind, other_path)) = names.get(name.as_str()) {
            out.push(Diagnostic::at_path(
                format!("{path}.name"),
                format!(
                    "duplicate name `{name}`: already used by the {} at `{other_path}`; names are shared by sources, transforms, models and sinks",
                    other_kind.as_str()
                ),
            ));
        } else {
            names.insert(name.clone(), (kind, path));
        }
    }
    names
}

fn check_topic(topic: &str, path: String, out: &mut Vec<Diagnostic>) {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        out.push(Diagnostic::at_path(
            path,
            format!(
                "invalid Kafka topic `{topic}`: use letters, digits, `.`, `_` and `-`, at most 249 characters"
            ),
        ));
    }
}

fn check_properties(
    properties: &BTreeMap<String, String>,
    path: &str,
    client: Client,
    doc: &Document,
    out: &mut Vec<Diagnostic>,
) {
    for (key, value) in properties {
        let field = format!("{path}.{key}");
        let raw = doc
            .source_map
            .as_ref()
            .and_then(|m| m.node(&field))
            .and_then(|n| match &n.kind {
                crate::yaml::Kind::Scalar(s) => s.raw.clone(),
                _ => None,
            })
            .unwrap_or_else(|| value.clone());
        if let Err(message) = kafka::check(key, value, &raw, client) {
            out.push(Diagnostic::at_path(field, message));
        }
    }
}

/// Where `${ENV}` may go. Names never interpolate (they become metric labels, consumer
/// groups and directory names). A secret (a variable the environment marks secret, or one
/// used in a secret property) may only be the whole value of a secret Kafka property, so it
/// can never be written to a topic, a label, a log or an error.
fn check_interpolation(doc: &Document, out: &mut Vec<Diagnostic>) {
    let Some(map) = &doc.source_map else {
        return;
    };
    let mut scalars: Vec<(&str, &crate::yaml::Scalar)> =
        map.scalars().filter(|(_, s)| !s.vars.is_empty()).collect();
    scalars.sort_by_key(|(path, _)| *path);
    let in_secret_property: HashSet<&str> = scalars
        .iter()
        .filter(|(path, _)| property_of(path).is_some_and(kafka::is_secret))
        .flat_map(|(_, s)| s.vars.iter().map(String::as_str))
        .collect();
    for (path, scalar) in scalars {
        if is_name_path(path) {
            out.push(Diagnostic::at_path(
                path,
                "names cannot use `${...}`: they become metric labels, consumer groups and directory names; write the name itself",
            ));
            continue;
        }
        if property_of(path).is_some_and(kafka::is_secret) {
            continue;
        }
        if let Some(var) = scalar
            .vars
            .iter()
            .find(|v| doc.secret_vars.contains(*v) || in_secret_property.contains(v.as_str()))
        {
            out.push(Diagnostic::at_path(
                path,
                format!(
                    "`${{{var}}}` is a secret: it can only be the whole value of a secret Kafka property such as `sasl.password`, where it is never shown or written"
                ),
            ));
        }
    }
}

/// The property name when `path` is a Kafka property of a source or sink.
pub fn property_of(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("spec.sources[")
        .or_else(|| path.strip_prefix("spec.sinks["))?;
    let (_, rest) = rest.split_once("].kafka.properties.")?;
    Some(rest)
}

fn is_name_path(path: &str) -> bool {
    if path == "metadata.name" {
        return true;
    }
    [
        "spec.sources[",
        "spec.transforms[",
        "spec.models[",
        "spec.sinks[",
    ]
    .iter()
    .filter_map(|p| path.strip_prefix(p))
    .any(|rest| {
        rest.split_once("].name")
            .is_some_and(|(i, tail)| tail.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn check_source(s: &Source, doc: &Document, out: &mut Vec<Diagnostic>) {
    let path = format!("spec.sources[{}]", s.index);
    check_topic(&s.kafka.topic, format!("{path}.kafka.topic"), out);
    // A stream source's group names the pipeline's internal topics
    // (`<group>.<operator>.changelog`, `<group>.<operator>.repartition`).
    if let (Some(group), None) = (&s.kafka.group, &s.table) {
        let ok = !group.is_empty()
            && group.len() <= 200
            && group
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            out.push(Diagnostic::at_path(
                format!("{path}.kafka.group"),
                format!(
                    "group `{group}` cannot name the pipeline's internal topics (`<group>.<operator>.changelog`, `.repartition`): use letters, digits, `.`, `_` and `-`, at most 200 characters"
                ),
            ));
        }
    }
    check_properties(
        &s.kafka.properties,
        &format!("{path}.kafka.properties"),
        Client::Consumer,
        doc,
        out,
    );
    if let StartFrom::Timestamp(ts) = &s.kafka.start_from
        && chrono::DateTime::parse_from_rfc3339(ts).is_err()
    {
        out.push(Diagnostic::at_path(
            format!("{path}.kafka.start_from.timestamp"),
            format!("invalid timestamp `{ts}`: expected RFC 3339, such as `2026-11-01T00:00:00Z`"),
        ));
    }
    let schema_ok = !s.schema.is_empty()
        && !s.schema.starts_with('/')
        && !s.schema.ends_with(".avsc")
        && s.schema.split('/').all(|part| {
            !part.is_empty()
                && part != ".."
                && part != "."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        });
    if !schema_ok {
        out.push(Diagnostic::at_path(
            format!("{path}.schema"),
            format!(
                "invalid schema reference `{}`: write a path under `schemas/` without `.avsc`, such as `production/sensor_reading`",
                s.schema
            ),
        ));
    }
    if let Some(topic) = &s.dead_letter_topic {
        check_topic(topic, format!("{path}.dead_letter_topic"), out);
        if s.on_error != OnError::DeadLetter {
            out.push(Diagnostic::at_path(
                format!("{path}.dead_letter_topic"),
                "`dead_letter_topic` is only used with `on_error: dead_letter`; set that or remove the topic",
            ));
        }
    }
    if let Some(et) = &s.event_time
        && let Some(idle) = et.idle_timeout
        && idle.is_zero()
    {
        out.push(Diagnostic::at_path(
            format!("{path}.event_time.idle_timeout"),
            "`idle_timeout` must be greater than zero",
        ));
    }
}

fn check_window(w: &Window, path: &str, out: &mut Vec<Diagnostic>) {
    let kinds = [
        w.tumbling.is_some(),
        w.hopping.is_some(),
        w.session.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if kinds != 1 {
        out.push(Diagnostic::at_path(
            path,
            "give exactly one of `tumbling`, `hopping` or `session`",
        ));
    }
    if let Some(size) = w.tumbling
        && size.is_zero()
    {
        out.push(Diagnostic::at_path(
            format!("{path}.tumbling"),
            "window size must be greater than zero",
        ));
    }
    if let Some(h) = &w.hopping {
        if h.size.is_zero() || h.slide.is_zero() {
            out.push(Diagnostic::at_path(
                format!("{path}.hopping"),
                "`size` and `slide` must be greater than zero",
            ));
        } else if h.slide > h.size {
            out.push(Diagnostic::at_path(
                format!("{path}.hopping.slide"),
                format!(
                    "`slide` ({}) is longer than `size` ({}): events between windows would be lost; use a slide at most the size",
                    h.slide, h.size
                ),
            ));
        } else if h.size.as_millis() / h.slide.as_millis() > 1000 {
            out.push(Diagnostic::at_path(
                format!("{path}.hopping"),
                "a hopping window may overlap at most 1000 windows (`size` / `slide`); raise `slide`",
            ));
        }
    }
    if let Some(s) = &w.session
        && s.gap.is_zero()
    {
        out.push(Diagnostic::at_path(
            format!("{path}.session.gap"),
            "session gap must be greater than zero",
        ));
    }
}

fn reference_error<'a>(
    what: &str,
    name: &str,
    candidates: impl Iterator<Item = &'a str> + Clone,
) -> String {
    format!(
        "unknown {what} `{name}`{} (known: {})",
        suggestion(name, candidates.clone()),
        one_of(candidates)
    )
}

fn check_model(
    m: &Model,
    names: &BTreeMap<String, (ComponentKind, String)>,
    known: &dyn Fn(&str) -> bool,
    out: &mut Vec<Diagnostic>,
) {
    let path = format!("spec.models[{}]", m.index);
    match names.get(&m.input) {
        Some((ComponentKind::Source | ComponentKind::Transform, _)) => {}
        Some((kind, _)) => out.push(Diagnostic::at_path(
            format!("{path}.input"),
            format!(
                "`{}` is a {}; a model learns from a source or a transform",
                m.input,
                kind.as_str()
            ),
        )),
        None if known(&m.input) => {}
        None => {
            let inputs = names
                .iter()
                .filter(|(_, (k, _))| matches!(k, ComponentKind::Source | ComponentKind::Transform))
                .map(|(n, _)| n.as_str());
            out.push(Diagnostic::at_path(
                format!("{path}.input"),
                reference_error("input", &m.input, inputs),
            ));
        }
    }
    match (&m.regression, &m.clustering) {
        (Some(r), None) => check_regression(r, m, &format!("{path}.regression"), out),
        (None, Some(c)) => check_clustering(c, m, &format!("{path}.clustering"), out),
        _ => out.push(Diagnostic::at_path(
            path.clone(),
            "give exactly one of `regression` or `clustering`",
        )),
    }
    if let Some(metrics) = &m.metrics {
        if m.key.is_none() {
            out.push(Diagnostic::at_path(
                format!("{path}.metrics.per_key"),
                "per-key metrics need a keyed model: set `key`, or remove `metrics`",
            ));
        }
        if !(1..=100).contains(&metrics.per_key) {
            out.push(Diagnostic::at_path(
                format!("{path}.metrics.per_key"),
                format!(
                    "per_key is {}: give 1 to 100 (each key is a set of metric series)",
                    metrics.per_key
                ),
            ));
        }
    }
    if let Some(every) = &m.snapshot_every {
        if every.events.is_none() && every.time.is_none() {
            out.push(Diagnostic::at_path(
                format!("{path}.snapshot_every"),
                "give `events`, `time` or both",
            ));
        }
        if every.events == Some(0) || every.time.is_some_and(|t| t.is_zero()) {
            out.push(Diagnostic::at_path(
                format!("{path}.snapshot_every"),
                "snapshot intervals must be greater than zero",
            ));
        }
    }
}

fn check_features(features: &[Feature], m: &Model, path: &str, out: &mut Vec<Diagnostic>) {
    if features.is_empty() {
        out.push(Diagnostic::at_path(
            format!("{path}.features"),
            "a model needs at least one feature",
        ));
    }
    let mut seen = HashSet::new();
    for (i, f) in features.iter().enumerate() {
        let fpath = format!("{path}.features[{i}]");
        if !seen.insert(f.column()) {
            out.push(Diagnostic::at_path(
                fpath.clone(),
                format!("feature `{}` is listed twice", f.column()),
            ));
        }
        if m.key.as_deref() == Some(f.column()) {
            out.push(Diagnostic::at_path(
                fpath.clone(),
                format!(
                    "`{}` is the model's key: each keyed model sees one value of it, so it cannot be a feature",
                    f.column()
                ),
            ));
        }
        if let Feature::Categorical(c) = f {
            match (&c.one_hot, c.hash_buckets) {
                (Some(vocab), None) => {
                    let unique: HashSet<&String> = vocab.iter().collect();
                    if vocab.is_empty() || unique.len() != vocab.len() {
                        out.push(Diagnostic::at_path(
                            format!("{fpath}.one_hot"),
                            "`one_hot` needs a non-empty list of distinct values",
                        ));
                    }
                }
                (None, Some(n)) if !(1..=1 << 20).contains(&n) => {
                    out.push(Diagnostic::at_path(
                        format!("{fpath}.hash_buckets"),
                        "`hash_buckets` must be between 1 and 1048576",
                    ));
                }
                (None, Some(_)) => {}
                _ => out.push(Diagnostic::at_path(
                    fpath,
                    "a categorical feature needs exactly one of `one_hot` or `hash_buckets`",
                )),
            }
        }
    }
}

/// Most model inputs of a regression once one-hot and hashed features are expanded: the
/// co-moment matrix is quadratic in them and is solved (cubic) for predictions.
pub const MAX_REGRESSION_INPUTS: u64 = 128;
/// Most inputs of a clustering model once features are expanded.
pub const MAX_CLUSTERING_INPUTS: u64 = 256;
/// Largest estimated model state of one key, bytes (see [`regression_state_bytes`] and
/// [`clustering_state_bytes`]).
pub const MAX_STATE_PER_KEY: u64 = 4 * 1024 * 1024;
/// Largest k-means seed sample (rows buffered per key before the first assignment).
pub const MAX_SEED_SAMPLE: u32 = 100_000;
/// Most k-means++ restarts on the seed sample.
pub const MAX_SEED_TRIES: u32 = 20;

/// Model inputs after expansion: 1 per numeric feature, one per one-hot value, the buckets of
/// a hashed feature.
pub fn expanded_inputs(features: &[Feature]) -> u64 {
    features
        .iter()
        .map(|f| match f {
            Feature::Numeric(_) => 1,
            Feature::Categorical(c) => match (&c.one_hot, c.hash_buckets) {
                (Some(values), _) => values.len() as u64,
                (None, Some(n)) => u64::from(n),
                (None, None) => 1,
            },
        })
        .sum()
}

/// Estimated state of one key of a regression with `d` inputs, bytes: the co-moment matrix of
/// inputs and target, `8 (d + 1)^2`, their shift and means, `16 (d + 1)`, and the rolling
/// error window, 1,000 residuals of 16 bytes.
pub fn regression_state_bytes(d: u64) -> u64 {
    8 * (d + 1) * (d + 1) + 16 * (d + 1) + 16_000
}

/// Estimated state of one key of k-means with `d` inputs: per cluster the centre, the sum of
/// its points and the per-feature scale, `24 k d`, and the seed sample, `8 d` per row.
pub fn clustering_state_bytes(k: u64, d: u64, seed_sample: u64) -> u64 {
    24 * k * d + 8 * d * seed_sample
}

fn check_state(inputs: u64, max_inputs: u64, bytes: u64, path: &str, out: &mut Vec<Diagnostic>) {
    if inputs > max_inputs {
        out.push(Diagnostic::at_path(
            format!("{path}.features"),
            format!(
                "the features expand to {inputs} model inputs (one per numeric column, one-hot value and hash bucket), over the limit of {max_inputs}; use fewer one-hot values or hash buckets"
            ),
        ));
    } else if bytes > MAX_STATE_PER_KEY {
        out.push(Diagnostic::at_path(
            path,
            format!(
                "the model's state would take about {bytes} bytes per key, over the limit of {MAX_STATE_PER_KEY}; use fewer inputs, clusters or seed rows"
            ),
        ));
    }
}

fn check_regression(r: &Regression, m: &Model, path: &str, out: &mut Vec<Diagnostic>) {
    check_features(&r.features, m, path, out);
    let d = expanded_inputs(&r.features);
    check_state(
        d,
        MAX_REGRESSION_INPUTS,
        regression_state_bytes(d),
        path,
        out,
    );
    if r.features.iter().any(|f| f.column() == r.target) {
        out.push(Diagnostic::at_path(
            format!("{path}.target"),
            format!(
                "the target `{}` is also a feature; remove it from `features`",
                r.target
            ),
        ));
    }
    if !(r.ridge.is_finite() && r.ridge >= 0.0) {
        out.push(Diagnostic::at_path(
            format!("{path}.ridge"),
            "`ridge` must be a finite number, 0 or more",
        ));
    }
    if let Some(h) = r.half_life
        && h.is_zero()
    {
        out.push(Diagnostic::at_path(
            format!("{path}.half_life"),
            "`half_life` must be greater than zero; omit it to weigh all history equally",
        ));
    }
    if let Some(d) = &r.drift {
        if !(d.threshold.is_finite() && d.threshold > 0.0) {
            out.push(Diagnostic::at_path(
                format!("{path}.drift.threshold"),
                "`threshold` must be a positive number",
            ));
        }
        if !(d.tolerance.is_finite() && d.tolerance >= 0.0) {
            out.push(Diagnostic::at_path(
                format!("{path}.drift.tolerance"),
                "`tolerance` must be 0 or more",
            ));
        }
        if let OnDrift::ShortenHalfLife(h) = &d.on_drift
            && h.is_zero()
        {
            out.push(Diagnostic::at_path(
                format!("{path}.drift.on_drift"),
                "the shortened half-life must be greater than zero",
            ));
        }
    }
}

fn check_clustering(c: &Clustering, m: &Model, path: &str, out: &mut Vec<Diagnostic>) {
    check_features(&c.features, m, path, out);
    let d = expanded_inputs(&c.features);
    if c.seed_sample > MAX_SEED_SAMPLE {
        out.push(Diagnostic::at_path(
            format!("{path}.seed_sample"),
            format!(
                "`seed_sample` is {}: at most {MAX_SEED_SAMPLE} rows are buffered for seeding",
                c.seed_sample
            ),
        ));
    } else {
        let bytes = clustering_state_bytes(u64::from(c.k), d, u64::from(c.seed_sample));
        check_state(d, MAX_CLUSTERING_INPUTS, bytes, path, out);
    }
    if c.seed_tries > MAX_SEED_TRIES {
        out.push(Diagnostic::at_path(
            format!("{path}.seed_tries"),
            format!(
                "`seed_tries` is {}: give 1 to {MAX_SEED_TRIES}",
                c.seed_tries
            ),
        ));
    }
    if !(2..=1024).contains(&c.k) {
        out.push(Diagnostic::at_path(
            format!("{path}.k"),
            format!("`k` is {}; it must be between 2 and 1024", c.k),
        ));
    }
    if c.seed_sample < c.k {
        out.push(Diagnostic::at_path(
            format!("{path}.seed_sample"),
            format!(
                "`seed_sample` ({}) must be at least `k` ({}) to seed every cluster",
                c.seed_sample, c.k
            ),
        ));
    }
    if !(0.0..=0.25).contains(&c.seed_trim) {
        out.push(Diagnostic::at_path(
            format!("{path}.seed_trim"),
            format!(
                "`seed_trim` is {}: give a fraction from 0 to 0.25",
                c.seed_trim
            ),
        ));
    }
    if c.seed_tries == 0 {
        out.push(Diagnostic::at_path(
            format!("{path}.seed_tries"),
            "`seed_tries` must be at least 1",
        ));
    }
    if !(0.0..1.0).contains(&c.reseed_below) {
        out.push(Diagnostic::at_path(
            format!("{path}.reseed_below"),
            "`reseed_below` is a fraction of the total weight, from 0 (never reseed) to below 1",
        ));
    }
    if let Some(h) = c.half_life
        && h.is_zero()
    {
        out.push(Diagnostic::at_path(
            format!("{path}.half_life"),
            "`half_life` must be greater than zero; omit it to weigh all history equally",
        ));
    }
}

/// The names a sink's `from` may take: sources, transforms and the two outputs of each model.
pub fn sink_inputs(p: &Pipeline) -> Vec<String> {
    let mut names: Vec<String> = p
        .spec
        .sources
        .iter()
        .map(|s| s.name.clone())
        .chain(p.spec.transforms.iter().map(|t| t.name.clone()))
        .chain(p.spec.models.iter().flat_map(|m| {
            [
                format!("{}.predictions", m.name),
                format!("{}.snapshots", m.name),
            ]
        }))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn check_sink(
    s: &Sink,
    p: &Pipeline,
    names: &BTreeMap<String, (ComponentKind, String)>,
    known: &dyn Fn(&str) -> bool,
    doc: &Document,
    out: &mut Vec<Diagnostic>,
) {
    let path = format!("spec.sinks[{}]", s.index);
    check_topic(&s.kafka.topic, format!("{path}.kafka.topic"), out);
    if s.subject_strategy != crate::model::SubjectStrategy::TopicName
        && s.format != crate::model::Format::AvroConfluent
    {
        out.push(Diagnostic::at_path(
            format!("{path}.subject_strategy"),
            format!(
                "`subject_strategy` names the schema registry subject of `format: avro_confluent` sinks; this sink writes {}: remove it, or write avro_confluent",
                s.format
            ),
        ));
    }
    check_properties(
        &s.kafka.properties,
        &format!("{path}.kafka.properties"),
        Client::Producer,
        doc,
        out,
    );
    let ok = match s.from.split_once('.') {
        Some((model, output)) => match names.get(model) {
            Some((ComponentKind::Model, _)) => matches!(output, "predictions" | "snapshots"),
            None => known(model),
            _ => false,
        },
        None => match names.get(&s.from) {
            Some((ComponentKind::Source | ComponentKind::Transform, _)) => true,
            Some((ComponentKind::Model, _)) => {
                out.push(Diagnostic::at_path(
                    format!("{path}.from"),
                    format!(
                        "`{0}` is a model; write `{0}.predictions` or `{0}.snapshots`",
                        s.from
                    ),
                ));
                return;
            }
            Some((ComponentKind::Sink, _)) => false,
            None => known(&s.from),
        },
    };
    if !ok {
        let inputs = sink_inputs(p);
        out.push(Diagnostic::at_path(
            format!("{path}.from"),
            reference_error("sink input", &s.from, inputs.iter().map(String::as_str)),
        ));
    }
}

/// Path of a transform's SQL, for the planner's messages.
pub fn sql_path(t: &Transform) -> String {
    format!("spec.transforms[{}].sql", t.index)
}
