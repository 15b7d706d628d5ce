//! How a pipeline's work divides into tasks.
//!
//! A pipeline runs as one task per input partition. An operator that keeps state per key
//! (a window's groups, an interval join's matches, a model's keys) needs all the rows of a
//! key in one partition: where its key includes the column that the source declares as
//! the message key (`key:`), followed through projections and renames, it reads its input
//! as it is; otherwise a repartition ([`crate::Exchange`]) re-keys its input through an
//! internal topic first. A pipeline runs as one task over every partition only when
//! nothing can re-key it (a self-join), with the reason in the plan.
//!
//! Tables (`table:` sources) are read whole by every task: a lookup join with one does not
//! depend on partitions.

use std::collections::{BTreeSet, HashMap};

use datafusion::arrow::datatypes::Schema;
use datafusion::logical_expr::{Expr, LogicalPlan};

use crate::{NodeKind, PlannedNode, TransformKind};

/// How the tasks of a pipeline divide its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parallelism {
    /// One task per partition (partition `i` of every stream source goes to task `i`).
    PerPartition,
    /// One task reads every partition, for the reason given.
    Single(String),
}

/// What a table carries about partitioning.
#[derive(Debug, Clone)]
enum Part {
    /// A stream; these of its columns hold the partition key (none: unknown).
    Stream(BTreeSet<String>),
    /// A table read whole by every task.
    Table,
}

/// Divides the nodes of a plan (inputs before readers) into tasks: inserts a repartition
/// (an exchange sink and source, see [`crate::Exchange`]) before every window and model
/// whose key is not the partition key of its input, and says whether the result runs as a
/// task per partition.
pub(crate) fn divide(nodes: Vec<PlannedNode>) -> (Vec<PlannedNode>, Parallelism) {
    let mut out: Vec<PlannedNode> = Vec::with_capacity(nodes.len());
    let mut parts: HashMap<String, Part> = HashMap::new();
    let mut single: Option<String> = None;
    for mut node in nodes {
        if single.is_some() {
            out.push(node);
            continue;
        }
        match &node.kind {
            NodeKind::Source(s) => {
                let part = match (&s.table_key, &s.key) {
                    (Some(_), _) => Part::Table,
                    (None, Some(k)) => Part::Stream(BTreeSet::from([k.clone()])),
                    (None, None) => Part::Stream(BTreeSet::new()),
                };
                parts.insert(node.name.clone(), part);
            }
            NodeKind::Transform(t) => {
                let inputs = input_parts(t, &node.inputs, &parts);
                let stateful = !matches!(t.kind, TransformKind::Stateless);
                match keys(&t.plan, &inputs, stateful) {
                    Ok(part) => {
                        parts.insert(node.name.clone(), part);
                    }
                    Err(why) => {
                        let why = reason(&node, t, &why, &parts);
                        let Some(sides) = repartitions(t, &node, &inputs, &out) else {
                            single = Some(why);
                            out.push(node);
                            continue;
                        };
                        for (j, feeds, by, time_field) in sides {
                            let name = exchange(
                                &mut out,
                                &feeds,
                                &node.inputs[j],
                                by,
                                why.clone(),
                                time_field,
                            );
                            node.inputs[j] = name.clone();
                            let fed = exchange_part(&out, &name);
                            parts.insert(name, fed);
                        }
                        // Keyed as it needs now; a key of several columns is not followed.
                        let inputs = input_parts(t, &node.inputs, &parts);
                        let part = keys(&t.plan, &inputs, stateful)
                            .unwrap_or(Part::Stream(BTreeSet::new()));
                        parts.insert(node.name.clone(), part);
                    }
                }
            }
            NodeKind::Model(m) => {
                let input = match parts.get(&m.input) {
                    Some(Part::Stream(keys)) => keys.clone(),
                    _ => BTreeSet::new(),
                };
                let why = match &m.key {
                    // A global model is learnt by every task and merged exactly.
                    None => None,
                    Some(key) if input.contains(key) => None,
                    Some(key) => Some(format!(
                        "model `{}` is keyed by `{key}`, but {}",
                        node.name,
                        keyed_text(&format!("`{}`'s", m.input), &input)
                    )),
                };
                if let Some(why) = why {
                    let by: Vec<String> = m.key.iter().cloned().collect();
                    let name = exchange(&mut out, &node.name, &m.input, by, why, None);
                    node.inputs = vec![name.clone()];
                    if let NodeKind::Model(m) = &mut node.kind {
                        m.input = name.clone();
                    }
                    let fed = exchange_part(&out, &name);
                    parts.insert(name, fed);
                }
                let NodeKind::Model(m) = &node.kind else {
                    unreachable!("matched as a model")
                };
                let carried = |schema: &datafusion::arrow::datatypes::SchemaRef| {
                    Part::Stream(match &m.key {
                        Some(key) if schema.field_with_name(key).is_ok() => {
                            BTreeSet::from([key.clone()])
                        }
                        _ => BTreeSet::new(),
                    })
                };
                parts.insert(
                    format!("{}.predictions", node.name),
                    carried(&m.predictions),
                );
                parts.insert(format!("{}.snapshots", node.name), carried(&m.snapshots));
            }
            NodeKind::Sink(_) => {}
        }
        out.push(node);
    }
    let parallelism = match single {
        Some(why) => Parallelism::Single(why),
        None => Parallelism::PerPartition,
    };
    (out, parallelism)
}

/// The partitioning of each input table of transform `t` (reading the nodes `names`).
fn input_parts(
    t: &crate::TransformPlan,
    names: &[String],
    parts: &HashMap<String, Part>,
) -> HashMap<(String, String), Part> {
    t.inputs
        .iter()
        .zip(names)
        .map(|(table, name)| {
            let part = parts.get(name).cloned().unwrap_or(Part::Table);
            (
                (
                    table.schema.clone().unwrap_or_default(),
                    table.table.clone(),
                ),
                part,
            )
        })
        .collect()
}

/// Why transform `node` cannot run per partition as its inputs are keyed.
fn reason(
    node: &PlannedNode,
    t: &crate::TransformPlan,
    why: &str,
    parts: &HashMap<String, Part>,
) -> String {
    let streams: Vec<String> = node
        .inputs
        .iter()
        .filter_map(|name| match parts.get(name) {
            Some(Part::Stream(keys)) => Some(keyed_text(&format!("`{name}`'s"), keys)),
            _ => None,
        })
        .collect();
    format!(
        "{} `{}` {why}, but {}",
        match t.kind {
            TransformKind::Window { .. } => "window",
            TransformKind::IntervalJoin { .. } => "join",
            TransformKind::Stateless => "transform",
        },
        node.name,
        streams.join(" and ")
    )
}

/// One input of a transform re-keyed: its index, the name its exchange feeds, its key
/// columns and its event-time column.
type Rekey = (usize, String, Vec<String>, Option<String>);

/// The repartitions transform `t` (node `node`) needs to run per partition: per input
/// re-keyed, its index, the name its exchange feeds, its key columns and its event-time
/// column. A window re-keys its stream by its group columns; an interval join each side by
/// the columns its `ON` equates (of one type on both sides, so that equal values key
/// alike), both to partition 0 when it equates none. `None`: not repartitioned.
fn repartitions(
    t: &crate::TransformPlan,
    node: &PlannedNode,
    inputs: &HashMap<(String, String), Part>,
    nodes: &[PlannedNode],
) -> Option<Vec<Rekey>> {
    let streams: Vec<(usize, Option<String>)> = t
        .roles
        .iter()
        .enumerate()
        .filter_map(|(j, r)| match r {
            crate::InputRole::Stream { time_field } => Some((j, time_field.clone())),
            crate::InputRole::Table { .. } => None,
        })
        .collect();
    match (&t.kind, streams.as_slice()) {
        (TransformKind::Window { time_field, .. }, [(j, _), ..]) => Some(vec![(
            *j,
            node.name.clone(),
            window_keys(t, *j, inputs, &node.inputs[*j], nodes),
            Some(time_field.clone()),
        )]),
        (TransformKind::IntervalJoin { .. }, [(l, l_time), (r, r_time)])
            if node.inputs[*l] != node.inputs[*r] =>
        {
            let (lk, rk) = join_keys(t, (*l, *r), inputs, node, nodes);
            Some(vec![
                (*l, format!("{}.left", node.name), lk, l_time.clone()),
                (*r, format!("{}.right", node.name), rk, r_time.clone()),
            ])
        }
        _ => None,
    }
}

/// The column pairs that interval join `t` equates between its inputs `l` and `r` and
/// that key it alone: the left columns and the right ones, in pairs.
fn join_keys(
    t: &crate::TransformPlan,
    (l, r): (usize, usize),
    inputs: &HashMap<(String, String), Part>,
    node: &PlannedNode,
    nodes: &[PlannedNode],
) -> (Vec<String>, Vec<String>) {
    let name = |j: usize| {
        (
            t.inputs[j].schema.clone().unwrap_or_default(),
            t.inputs[j].table.clone(),
        )
    };
    let (Some(left), Some(right)) = (
        output_of(nodes, &node.inputs[l]),
        output_of(nodes, &node.inputs[r]),
    ) else {
        return (Vec::new(), Vec::new());
    };
    let mut pairs = (Vec::new(), Vec::new());
    for a in left.fields() {
        for b in right.fields() {
            if a.data_type() != b.data_type() {
                continue;
            }
            let mut probe = inputs.clone();
            probe.insert(name(l), Part::Stream(BTreeSet::from([a.name().clone()])));
            probe.insert(name(r), Part::Stream(BTreeSet::from([b.name().clone()])));
            if keys(&t.plan, &probe, true).is_ok() && !pairs.0.contains(a.name()) {
                pairs.0.push(a.name().clone());
                pairs.1.push(b.name().clone());
            }
        }
    }
    pairs
}

/// The columns of window `t`'s input `j` (node `from`) that it groups by, in the input's
/// order: each one alone would key the window.
fn window_keys(
    t: &crate::TransformPlan,
    j: usize,
    inputs: &HashMap<(String, String), Part>,
    from: &str,
    nodes: &[PlannedNode],
) -> Vec<String> {
    let table = &t.inputs[j];
    let name = (
        table.schema.clone().unwrap_or_default(),
        table.table.clone(),
    );
    let Some(schema) = output_of(nodes, from) else {
        return Vec::new();
    };
    schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|c| {
            let mut probe = inputs.clone();
            probe.insert(name.clone(), Part::Stream(BTreeSet::from([c.clone()])));
            keys(&t.plan, &probe, true).is_ok()
        })
        .collect()
}

/// The rows of table `name` (a node, or a model's port) among `nodes`.
fn output_of(nodes: &[PlannedNode], name: &str) -> Option<datafusion::arrow::datatypes::SchemaRef> {
    nodes.iter().find_map(|n| match &n.kind {
        NodeKind::Model(m) if name == format!("{}.predictions", n.name) => {
            Some(m.predictions.clone())
        }
        NodeKind::Model(m) if name == format!("{}.snapshots", n.name) => Some(m.snapshots.clone()),
        _ if n.name == name => n.output_schema(),
        _ => None,
    })
}

/// The source plan of the stream that table `name` traces back to (along first inputs).
fn root_source<'a>(nodes: &'a [PlannedNode], name: &str) -> Option<&'a crate::SourcePlan> {
    let base = name
        .strip_suffix(".predictions")
        .or_else(|| name.strip_suffix(".snapshots"))
        .unwrap_or(name);
    let node = nodes
        .iter()
        .rev()
        .find(|n| n.name == base || n.name == name)?;
    match &node.kind {
        NodeKind::Source(s) if s.table_key.is_none() => Some(s),
        NodeKind::Source(_) => None,
        NodeKind::Transform(t) => t
            .roles
            .iter()
            .zip(&node.inputs)
            .find(|(r, _)| matches!(r, crate::InputRole::Stream { .. }))
            .and_then(|(_, input)| root_source(nodes, input)),
        NodeKind::Model(m) => root_source(nodes, &m.input),
        NodeKind::Sink(_) => None,
    }
}

/// How an exchange source's partitions are keyed: by its one column (several are not
/// followed further).
fn exchange_part(nodes: &[PlannedNode], name: &str) -> Part {
    let by = nodes.iter().find_map(|n| match &n.kind {
        NodeKind::Source(s) if n.name == name => s.exchange.as_ref().map(|x| x.by.as_slice()),
        _ => None,
    });
    match by {
        Some([one]) => Part::Stream(BTreeSet::from([one.clone()])),
        _ => Part::Stream(BTreeSet::new()),
    }
}

/// Appends to `nodes` the exchange that re-keys table `from` by `by` for operator
/// `feeds`: a sink writing `<group>.<feeds>.repartition` and the source reading it back.
/// Returns the source's name.
fn exchange(
    nodes: &mut Vec<PlannedNode>,
    feeds: &str,
    from: &str,
    by: Vec<String>,
    why: String,
    time_field: Option<String>,
) -> String {
    // One repartition of the same rows by the same key serves every operator that needs it.
    let shared = nodes.iter().find(|n| match &n.kind {
        NodeKind::Source(s) => s.exchange.as_ref().is_some_and(|x| {
            x.carries == from && x.by == by && (time_field.is_none() || x.time_field == time_field)
        }),
        _ => false,
    });
    if let Some(n) = shared {
        return n.name.clone();
    }
    let mut schema = output_of(nodes, from).unwrap_or_else(|| std::sync::Arc::new(Schema::empty()));
    {
        use datafusion::arrow::datatypes::{DataType, Field};
        let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
        if time_field.is_some() {
            fields.push(std::sync::Arc::new(Field::new(
                crate::EXCHANGE_STREAM_TIME,
                DataType::Int64,
                true,
            )));
        }
        fields.push(std::sync::Arc::new(Field::new(
            crate::EXCHANGE_SEQ,
            DataType::Int64,
            false,
        )));
        schema = std::sync::Arc::new(Schema::new(fields));
    }
    let root = root_source(nodes, from).cloned();
    let group = root.as_ref().map(|r| r.group.clone()).unwrap_or_default();
    let topic = format!("{group}.{feeds}.repartition");
    let name = format!("{feeds}.repartition");
    let spec = crate::Exchange {
        feeds: feeds.to_string(),
        carries: from.to_string(),
        by,
        why,
        time_field: time_field.clone(),
    };
    let (format, avro_json) = match formats::avro::avro_schema_for(&schema, &name) {
        Ok(avsc) => (crate::Format::Avro, avsc),
        Err(_) => (crate::Format::Json, String::new()),
    };
    let properties = root
        .as_ref()
        .map(|r| r.properties.clone())
        .unwrap_or_default();
    let fingerprint =
        crate::fnv1a(format!("exchange {topic} {spec:?} {}", crate::canonical(&schema)).as_bytes());
    nodes.push(PlannedNode {
        name: format!("{name}.write"),
        inputs: vec![from.to_string()],
        fingerprint,
        kind: NodeKind::Sink(crate::SinkPlan {
            from: from.to_string(),
            topic: topic.clone(),
            properties: properties.clone(),
            format,
            key: None,
            delivery: crate::Delivery::AtLeastOnce,
            subject: String::new(),
            schema: schema.clone(),
            exchange: Some(spec.clone()),
        }),
    });
    nodes.push(PlannedNode {
        name: name.clone(),
        inputs: Vec::new(),
        fingerprint,
        kind: NodeKind::Source(crate::SourcePlan {
            topic,
            group,
            start: crate::StartFrom::Earliest,
            properties,
            format,
            schema_name: format!("rows of {from}"),
            schema,
            avro_json,
            event_time: time_field.map(|field| crate::EventTime {
                field: Some(field),
                max_out_of_order: root
                    .as_ref()
                    .and_then(|r| r.event_time.as_ref())
                    .map(|e| e.max_out_of_order)
                    .unwrap_or_default(),
                // The writers say which of their partitions are idle.
                idle_timeout: None,
            }),
            on_error: crate::OnError::Fail,
            dead_letter_topic: root
                .as_ref()
                .map(|r| r.dead_letter_topic.clone())
                .unwrap_or_default(),
            table_key: None,
            key: match spec.by.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            },
            exchange: Some(spec),
        }),
    });
    name
}

/// How the partitioning of an input (`whose`: "`readings`'", "its input's") reads in a
/// reason.
fn keyed_text(whose: &str, keys: &BTreeSet<String>) -> String {
    if keys.is_empty() {
        format!(
            "{whose} partitions have no known key (declare the source's `key:` and pass that column on unchanged)"
        )
    } else {
        format!(
            "{whose} partitions are keyed by {}",
            keys.iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(" = ")
        )
    }
}

/// The columns of `plan`'s output that hold the partition key; `Err` with why when a
/// grouping or a join of two streams is not keyed by it (`stateful`: the transform keeps
/// state, so its groups and matches must each be within one partition).
fn keys(
    plan: &LogicalPlan,
    inputs: &HashMap<(String, String), Part>,
    stateful: bool,
) -> Result<Part, String> {
    let names = |plan: &LogicalPlan| -> Vec<String> {
        plan.schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    };
    let keyed_column = |e: &Expr, keys: &BTreeSet<String>| match e.clone().unalias() {
        Expr::Column(c) => keys.contains(&c.name),
        _ => false,
    };
    Ok(match plan {
        LogicalPlan::TableScan(scan) => {
            let name = (
                scan.table_name.schema().unwrap_or_default().to_string(),
                scan.table_name.table().to_string(),
            );
            match inputs.get(&name) {
                Some(Part::Stream(keys)) => {
                    let out = names(plan);
                    Part::Stream(keys.iter().filter(|k| out.contains(k)).cloned().collect())
                }
                _ => Part::Table,
            }
        }
        LogicalPlan::Projection(p) => match keys(&p.input, inputs, stateful)? {
            Part::Stream(input) => {
                let out = names(plan);
                Part::Stream(
                    p.expr
                        .iter()
                        .zip(out)
                        .filter(|(e, _)| keyed_column(e, &input))
                        .map(|(_, name)| name)
                        .collect(),
                )
            }
            Part::Table => Part::Table,
        },
        LogicalPlan::Aggregate(a) => {
            let input = match keys(&a.input, inputs, stateful)? {
                Part::Stream(k) => k,
                Part::Table => BTreeSet::new(),
            };
            let out = names(plan);
            let grouped: BTreeSet<String> = a
                .group_expr
                .iter()
                .zip(out)
                .filter(|(e, _)| keyed_column(e, &input))
                .map(|(_, name)| name)
                .collect();
            if grouped.is_empty() {
                let by: Vec<String> = a.group_expr.iter().map(|e| format!("{e}")).collect();
                return Err(format!(
                    "groups by {}",
                    if by.is_empty() {
                        "nothing".to_string()
                    } else {
                        by.join(", ")
                    }
                ));
            }
            Part::Stream(grouped)
        }
        LogicalPlan::Join(j) => {
            let left = keys(&j.left, inputs, stateful)?;
            let right = keys(&j.right, inputs, stateful)?;
            match (left, right) {
                (Part::Stream(l), Part::Stream(r)) => {
                    let matched =
                        j.on.iter()
                            .any(|(a, b)| keyed_column(a, &l) && keyed_column(b, &r));
                    if stateful && !matched {
                        return Err(format!(
                            "joins on {}",
                            if j.on.is_empty() {
                                "no equality".to_string()
                            } else {
                                j.on.iter()
                                    .map(|(a, b)| format!("{a} = {b}"))
                                    .collect::<Vec<_>>()
                                    .join(" AND ")
                            }
                        ));
                    }
                    Part::Stream(l.union(&r).cloned().collect())
                }
                (Part::Stream(k), Part::Table) | (Part::Table, Part::Stream(k)) => Part::Stream(k),
                (Part::Table, Part::Table) => Part::Table,
            }
        }
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Repartition(_) => {
            let inputs_of = plan.inputs();
            match inputs_of.first() {
                Some(input) => keys(input, inputs, stateful)?,
                None => Part::Stream(BTreeSet::new()),
            }
        }
        other => {
            // Anything else (a union, values): the key is not followed through it.
            let mut stream = false;
            for input in other.inputs() {
                if let Part::Stream(_) = keys(input, inputs, stateful)? {
                    stream = true;
                }
            }
            if stream {
                Part::Stream(BTreeSet::new())
            } else {
                Part::Table
            }
        }
    })
}
