//! The text of `pipectl plan`: every node with what it reads, its DataFusion plan and its
//! output schema. Stable, so tests can snapshot it.

use std::fmt::Write;

use datafusion::arrow::datatypes::Schema;
use spec::model::{Feature, Window};

use crate::{NodeKind, PipelinePlan};

pub(crate) fn explain(plan: &PipelinePlan) -> String {
    let mut out = format!("pipeline {}\n", plan.name);
    for node in &plan.nodes {
        out.push('\n');
        match &node.kind {
            NodeKind::Source { spec, schema, .. } => {
                let _ = writeln!(out, "source {}", node.name);
                let _ = writeln!(
                    out,
                    "  reads kafka topic {} ({}, schema {}, on error {})",
                    spec.kafka.topic,
                    spec.format,
                    spec.schema,
                    snake(format!("{:?}", spec.on_error))
                );
                match &spec.event_time {
                    Some(et) => {
                        let _ = writeln!(
                            out,
                            "  event time {}, max out of order {}",
                            et.field.as_deref().unwrap_or("<kafka timestamp>"),
                            et.max_out_of_order
                        );
                    }
                    None => out.push_str("  event time <kafka timestamp>\n"),
                }
                write_schema(&mut out, "output", schema);
            }
            NodeKind::Transform {
                spec,
                time_field,
                plan,
                schema,
                ..
            } => {
                let _ = writeln!(out, "transform {}", node.name);
                let _ = writeln!(out, "  reads {}", node.inputs.join(", "));
                if let (Some(w), Some(field)) = (&spec.window, time_field) {
                    let _ = writeln!(
                        out,
                        "  {} on {field}, late events: {}",
                        window_text(w),
                        snake(format!("{:?}", w.on_late))
                    );
                }
                out.push_str("  optimized logical plan:\n");
                for line in plan.display_indent().to_string().lines() {
                    let _ = writeln!(out, "    {line}");
                }
                write_schema(&mut out, "output", schema);
            }
            NodeKind::Model {
                spec,
                predictions,
                snapshots,
                ..
            } => {
                let _ = writeln!(out, "model {}", node.name);
                let _ = writeln!(out, "  learns from {}", spec.input);
                if let Some(r) = &spec.regression {
                    let _ = writeln!(
                        out,
                        "  regression of {} on {}",
                        r.target,
                        features_text(&r.features)
                    );
                    let _ = writeln!(
                        out,
                        "  half life {}, ridge {}",
                        r.half_life.map_or("none".to_string(), |h| h.to_string()),
                        r.ridge
                    );
                }
                if let Some(c) = &spec.clustering {
                    let _ = writeln!(
                        out,
                        "  k-means, k = {}, on {}",
                        c.k,
                        features_text(&c.features)
                    );
                }
                match &spec.key {
                    Some(key) => {
                        let _ = writeln!(out, "  one model per {key}");
                    }
                    None => out.push_str("  one global model\n"),
                }
                write_schema(&mut out, "predictions", predictions);
                write_schema(&mut out, "snapshots", snapshots);
            }
            NodeKind::Sink { spec, schema } => {
                let _ = writeln!(out, "sink {}", node.name);
                let _ = writeln!(
                    out,
                    "  writes {} to kafka topic {} ({}, key {}, {})",
                    spec.from,
                    spec.kafka.topic,
                    spec.format,
                    spec.key.as_deref().unwrap_or("none"),
                    snake(format!("{:?}", spec.delivery))
                );
                write_schema(&mut out, "record", schema);
            }
        }
    }
    out
}

fn window_text(w: &Window) -> String {
    if let Some(size) = w.tumbling {
        format!("tumbling window {size}")
    } else if let Some(h) = &w.hopping {
        format!("hopping window {} every {}", h.size, h.slide)
    } else if let Some(s) = &w.session {
        format!("session window, gap {}", s.gap)
    } else {
        "window".to_string()
    }
}

fn features_text(features: &[Feature]) -> String {
    features
        .iter()
        .map(|f| match f {
            Feature::Numeric(name) => name.clone(),
            Feature::Categorical(c) => match (&c.one_hot, c.hash_buckets) {
                (Some(v), _) => format!("{} (one-hot of {})", c.name, v.len()),
                (_, Some(n)) => format!("{} (hashed into {n})", c.name),
                _ => c.name.clone(),
            },
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn write_schema(out: &mut String, title: &str, schema: &Schema) {
    let _ = writeln!(out, "  {title}:");
    for f in schema.fields() {
        let nullable = if f.is_nullable() { " (nullable)" } else { "" };
        let _ = writeln!(out, "    {}: {}{nullable}", f.name(), f.data_type());
    }
}

/// `DeadLetter` -> `dead_letter`: unit variants as the YAML spells them.
fn snake(camel: String) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
