//! The text of `pipectl plan`: every node with what it reads, its DataFusion plan and its
//! output schema. Stable, so tests can snapshot it.

use std::fmt::Write;

use datafusion::arrow::datatypes::Schema;
use spec::duration::Duration;

use crate::{Feature, Format, ModelKind, NodeKind, PipelinePlan, TransformKind, WindowShape};

pub(crate) fn explain(plan: &PipelinePlan) -> String {
    let mut out = format!("pipeline {}\n", plan.name);
    match &plan.parallelism {
        crate::Parallelism::PerPartition => {
            let global: Vec<&str> = plan
                .nodes
                .iter()
                .filter(|n| {
                    matches!(&n.kind, NodeKind::Model(m)
                        if m.key.is_none() && matches!(m.kind, ModelKind::Regression(_)))
                })
                .map(|n| n.name.as_str())
                .collect();
            if global.is_empty() {
                out.push_str("tasks: one per input partition\n");
            } else {
                let _ = writeln!(
                    out,
                    "tasks: one per input partition with state in Kafka, where the tasks of global model {} merge what they learn; otherwise one",
                    global.join(", ")
                );
            }
        }
        crate::Parallelism::Single(why) => {
            let _ = writeln!(out, "tasks: one for every partition: {why}");
        }
    }
    let exactly_once: Vec<&str> = plan
        .nodes
        .iter()
        .filter(
            |n| matches!(&n.kind, NodeKind::Sink(s) if s.delivery == crate::Delivery::ExactlyOnce),
        )
        .map(|n| n.name.as_str())
        .collect();
    let every = plan
        .commit_every
        .map(|d| format!("every {} (commit_every)", spec::duration::Duration(d)));
    match (exactly_once.is_empty(), every) {
        (true, None) => {}
        (true, Some(every)) => {
            let _ = writeln!(out, "commits: {every}");
        }
        (false, every) => {
            let every = every.unwrap_or_else(|| {
                "every 1s unless the runner's --checkpoint-interval says otherwise".into()
            });
            let _ = writeln!(
                out,
                "commits: {every}, with state in Kafka: the records of exactly_once sink {} commit in one transaction with the state and the source offsets",
                exactly_once.join(", ")
            );
        }
    }
    for node in &plan.nodes {
        let exchange = match &node.kind {
            NodeKind::Source(s) => s.exchange.as_ref(),
            NodeKind::Sink(s) => s.exchange.as_ref(),
            _ => None,
        };
        if let Some(x) = exchange {
            let by = match x.by.as_slice() {
                [] => "to partition 0 (one task)".to_string(),
                by => format!("by {}", by.join(", ")),
            };
            match &node.kind {
                NodeKind::Sink(s) => {
                    let _ = writeln!(
                        out,
                        "\nrepartition {} {by}\n  why: {}\n  writes {} to kafka topic {} ({}); {} reads it back",
                        x.feeds,
                        x.why,
                        x.carries,
                        s.topic,
                        format_text(s.format),
                        node.name.trim_end_matches(".write")
                    );
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "\nsource {}\n  reads back kafka topic {} for {}",
                        node.name,
                        match &node.kind {
                            NodeKind::Source(s) => s.topic.as_str(),
                            _ => "",
                        },
                        x.feeds
                    );
                }
            }
            continue;
        }
        out.push('\n');
        match &node.kind {
            NodeKind::Source(s) => {
                let _ = writeln!(out, "source {}", node.name);
                let _ = writeln!(
                    out,
                    "  reads kafka topic {} ({}, schema {}, on error {})",
                    s.topic,
                    format_text(s.format),
                    s.schema_name,
                    snake(format!("{:?}", s.on_error))
                );
                if let Some(key) = &s.key {
                    let _ = writeln!(out, "  message key carries {key}");
                }
                match &s.event_time {
                    Some(et) => {
                        let _ = writeln!(
                            out,
                            "  event time {}, max out of order {}",
                            et.field.as_deref().unwrap_or("<kafka timestamp>"),
                            Duration(et.max_out_of_order)
                        );
                    }
                    None => out.push_str("  event time <kafka timestamp>\n"),
                }
                write_schema(&mut out, "output", &s.schema);
            }
            NodeKind::Transform(t) => {
                let _ = writeln!(out, "transform {}", node.name);
                let _ = writeln!(out, "  reads {}", node.inputs.join(", "));
                if let TransformKind::Window {
                    shape,
                    time_field,
                    on_late,
                } = &t.kind
                {
                    let _ = writeln!(
                        out,
                        "  {} on {time_field}, late events: {}",
                        window_text(shape),
                        snake(format!("{on_late:?}"))
                    );
                }
                out.push_str("  optimized logical plan:\n");
                for line in t.plan.display_indent().to_string().lines() {
                    let _ = writeln!(out, "    {line}");
                }
                write_schema(&mut out, "output", &t.schema);
            }
            NodeKind::Model(m) => {
                let _ = writeln!(out, "model {}", node.name);
                let _ = writeln!(out, "  learns from {}", m.input);
                match &m.kind {
                    ModelKind::Regression(r) => {
                        let _ = writeln!(
                            out,
                            "  regression of {} on {}",
                            r.target,
                            features_text(&r.features)
                        );
                        let _ = writeln!(
                            out,
                            "  half life {}, ridge {}",
                            r.half_life
                                .map_or("none".to_string(), |h| Duration(h).to_string()),
                            r.ridge
                        );
                    }
                    ModelKind::Clustering(c) => {
                        let _ = writeln!(
                            out,
                            "  k-means, k = {}, on {}",
                            c.k,
                            features_text(&c.features)
                        );
                    }
                }
                match &m.key {
                    Some(key) => {
                        let _ = writeln!(out, "  one model per {key}");
                    }
                    None => out.push_str("  one global model\n"),
                }
                write_schema(&mut out, "predictions", &m.predictions);
                write_schema(&mut out, "snapshots", &m.snapshots);
            }
            NodeKind::Sink(s) => {
                let _ = writeln!(out, "sink {}", node.name);
                let _ = writeln!(
                    out,
                    "  writes {} to kafka topic {} ({}, key {}, {})",
                    s.from,
                    s.topic,
                    format_text(s.format),
                    s.key.as_deref().unwrap_or("none"),
                    snake(format!("{:?}", s.delivery))
                );
                write_schema(&mut out, "record", &s.schema);
            }
        }
    }
    out
}

fn format_text(f: Format) -> &'static str {
    match f {
        Format::Json => "json",
        Format::Avro => "avro",
        Format::AvroConfluent => "avro_confluent",
    }
}

fn window_text(shape: &WindowShape) -> String {
    match shape {
        WindowShape::Tumbling { size } => format!("tumbling window {}", Duration(*size)),
        WindowShape::Hopping { size, slide } => {
            format!(
                "hopping window {} every {}",
                Duration(*size),
                Duration(*slide)
            )
        }
        WindowShape::Session { gap } => format!("session window, gap {}", Duration(*gap)),
    }
}

fn features_text(features: &[Feature]) -> String {
    features
        .iter()
        .map(|f| match f {
            Feature::Numeric(name) => name.clone(),
            Feature::OneHot { column, values } => {
                format!("{column} (one-hot of {})", values.len())
            }
            Feature::Hashed { column, buckets } => format!("{column} (hashed into {buckets})"),
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
