//! From the checked YAML model to the resolved plan: defaults applied, names resolved,
//! durations as [`std::time::Duration`], and each node's state fingerprint.
//!
//! Fingerprints are computed from the YAML model's text as they always were, so that
//! checkpoints taken before the resolved plan existed still restore.

use datafusion::arrow::datatypes::Schema;
use spec::model as yaml;

use crate::node::{self, canonical, fnv1a};
use crate::sql::InputTable;

pub(crate) fn format(f: yaml::Format) -> node::Format {
    match f {
        yaml::Format::Json => node::Format::Json,
        yaml::Format::Avro => node::Format::Avro,
        yaml::Format::AvroConfluent => node::Format::AvroConfluent,
    }
}

/// The start position; `Err` with the reason for a timestamp that is not RFC 3339.
pub(crate) fn start(s: &yaml::StartFrom) -> Result<node::StartFrom, String> {
    Ok(match s {
        yaml::StartFrom::Committed => node::StartFrom::Committed,
        yaml::StartFrom::Earliest => node::StartFrom::Earliest,
        yaml::StartFrom::Latest => node::StartFrom::Latest,
        yaml::StartFrom::Timestamp(t) => node::StartFrom::Timestamp(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| {
                    format!("`{t}` is not an RFC 3339 time such as 2026-11-01T00:00:00Z: {e}")
                })?
                .timestamp_millis(),
        ),
    })
}

pub(crate) fn on_error(e: yaml::OnError) -> node::OnError {
    match e {
        yaml::OnError::Fail => node::OnError::Fail,
        yaml::OnError::Skip => node::OnError::Skip,
        yaml::OnError::DeadLetter => node::OnError::DeadLetter,
    }
}

pub(crate) fn on_late(l: yaml::OnLate) -> node::OnLate {
    match l {
        yaml::OnLate::Drop => node::OnLate::Drop,
        yaml::OnLate::DeadLetter => node::OnLate::DeadLetter,
    }
}

pub(crate) fn delivery(d: yaml::Delivery) -> node::Delivery {
    match d {
        yaml::Delivery::AtLeastOnce => node::Delivery::AtLeastOnce,
        yaml::Delivery::ExactlyOnce => node::Delivery::ExactlyOnce,
    }
}

/// The dead-letter topic of a source.
pub(crate) fn dead_letter_topic(pipeline: &str, source: &yaml::Source) -> String {
    source
        .dead_letter_topic
        .clone()
        .unwrap_or_else(|| format!("{pipeline}.{}.dead_letter", source.name))
}

pub(crate) fn event_time(e: &yaml::EventTime) -> node::EventTime {
    node::EventTime {
        field: e.field.clone(),
        max_out_of_order: e.max_out_of_order.0,
        idle_timeout: e.idle_timeout.map(|d| d.0),
    }
}

/// The window's shape; `None` for a window without one (refused by the spec checks).
pub(crate) fn shape(w: &yaml::Window) -> Option<node::WindowShape> {
    if let Some(size) = w.tumbling {
        Some(node::WindowShape::Tumbling { size: size.0 })
    } else if let Some(h) = &w.hopping {
        Some(node::WindowShape::Hopping {
            size: h.size.0,
            slide: h.slide.0,
        })
    } else {
        w.session
            .as_ref()
            .map(|s| node::WindowShape::Session { gap: s.gap.0 })
    }
}

pub(crate) fn features(features: &[yaml::Feature]) -> Vec<node::Feature> {
    features
        .iter()
        .map(|f| match f {
            yaml::Feature::Numeric(name) => node::Feature::Numeric(name.clone()),
            yaml::Feature::Categorical(c) => match (&c.one_hot, c.hash_buckets) {
                (Some(values), _) => node::Feature::OneHot {
                    column: c.name.clone(),
                    values: values.clone(),
                },
                (None, Some(buckets)) => node::Feature::Hashed {
                    column: c.name.clone(),
                    buckets,
                },
                // Refused by the spec checks; as a numeric column it fails type checks.
                (None, None) => node::Feature::Numeric(c.name.clone()),
            },
        })
        .collect()
}

fn drift(d: &yaml::Drift) -> node::Drift {
    node::Drift {
        threshold: d.threshold,
        tolerance: d.tolerance,
        on_drift: match &d.on_drift {
            yaml::OnDrift::Signal => node::OnDrift::Signal,
            yaml::OnDrift::ShortenHalfLife(h) => node::OnDrift::ShortenHalfLife(h.0),
            yaml::OnDrift::Reset => node::OnDrift::Reset,
        },
    }
}

/// The model's kind; `None` for a model with neither (refused by the spec checks).
pub(crate) fn model_kind(m: &yaml::Model) -> Option<node::ModelKind> {
    if let Some(r) = &m.regression {
        return Some(node::ModelKind::Regression(node::Regression {
            target: r.target.clone(),
            features: features(&r.features),
            half_life: r.half_life.map(|h| h.0),
            ridge: r.ridge,
            drift: r.drift.as_ref().map(drift),
        }));
    }
    m.clustering.as_ref().map(|c| {
        node::ModelKind::Clustering(node::Clustering {
            k: c.k,
            features: features(&c.features),
            half_life: c.half_life.map(|h| h.0),
            seed_sample: c.seed_sample,
            seed_tries: c.seed_tries,
            seed_trim: c.seed_trim,
            standardize: c.standardize,
            reseed_below: c.reseed_below,
            random_seed: c.random_seed,
        })
    })
}

pub(crate) fn source_fingerprint(s: &yaml::Source, schema: &Schema) -> u64 {
    fnv1a(format!("{:?}{}", s.table, canonical(schema)).as_bytes())
}

pub(crate) fn transform_fingerprint(
    t: &yaml::Transform,
    inputs: &[InputTable],
    schema: &Schema,
) -> u64 {
    let inputs: Vec<String> = inputs
        .iter()
        .map(|t| format!("{:?}.{}({})", t.schema, t.table, canonical(&t.arrow)))
        .collect();
    fnv1a(
        format!(
            "{:?}{:?}{:?}{inputs:?}{}",
            t.sql,
            t.window,
            t.join,
            canonical(schema)
        )
        .as_bytes(),
    )
}

pub(crate) fn model_fingerprint(m: &yaml::Model, predictions: &Schema, snapshots: &Schema) -> u64 {
    fnv1a(
        format!(
            "{:?}{:?}{:?}{:?}{}{}",
            m.key,
            m.regression,
            m.clustering,
            m.input,
            canonical(predictions),
            canonical(snapshots)
        )
        .as_bytes(),
    )
}

/// Sinks hold no state.
pub(crate) fn sink_fingerprint() -> u64 {
    fnv1a(b"")
}

/// The registry subject of sink `s`'s schema (the record is named after the sink).
pub(crate) fn subject(s: &yaml::Sink) -> String {
    let record = formats::avro::avro_name(&s.name);
    match s.subject_strategy {
        yaml::SubjectStrategy::TopicName => format!("{}-value", s.kafka.topic),
        yaml::SubjectStrategy::RecordName => record,
        yaml::SubjectStrategy::TopicRecordName => format!("{}-{record}", s.kafka.topic),
    }
}
