//! How a pipeline's work divides into tasks.
//!
//! A pipeline runs as one task per input partition when every operator that keeps state per
//! key (a window's groups, an interval join's matches, a model's keys) sees all the rows of a
//! key in one partition: its key includes the column that the source declares as the message
//! key (`key:`), followed through projections and renames. Stateless pipelines always run per
//! partition. Otherwise the pipeline runs as one task over every partition, and the plan says
//! which operator needs the single task and why (until repartitioning is built).
//!
//! Tables (`table:` sources) are read whole by every task: a lookup join with one does not
//! depend on partitions.

use std::collections::{BTreeSet, HashMap};

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

/// The parallelism of the nodes of a plan (inputs before readers).
pub(crate) fn parallelism(nodes: &[PlannedNode]) -> Parallelism {
    match divide(nodes) {
        Ok(()) => Parallelism::PerPartition,
        Err(reason) => Parallelism::Single(reason),
    }
}

fn divide(nodes: &[PlannedNode]) -> Result<(), String> {
    let mut parts: HashMap<String, Part> = HashMap::new();
    for node in nodes {
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
                let inputs: HashMap<(String, String), Part> = t
                    .inputs
                    .iter()
                    .zip(&node.inputs)
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
                    .collect();
                let stateful = !matches!(t.kind, TransformKind::Stateless);
                let out = keys(&t.plan, &inputs, stateful).map_err(|why| {
                    let streams: Vec<String> = node
                        .inputs
                        .iter()
                        .filter_map(|name| match parts.get(name) {
                            Some(Part::Stream(keys)) => {
                                Some(keyed_text(&format!("`{name}`'s"), keys))
                            }
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
                })?;
                parts.insert(node.name.clone(), out);
            }
            NodeKind::Model(m) => {
                let input = match parts.get(&m.input) {
                    Some(Part::Stream(keys)) => keys.clone(),
                    _ => BTreeSet::new(),
                };
                let Some(key) = &m.key else {
                    // A global regression is learnt by every task and merged exactly; a
                    // clustering's clusters do not line up across tasks.
                    if let crate::ModelKind::Clustering(_) = m.kind {
                        return Err(format!(
                            "model `{}` is one global clustering: its clusters would not line up across tasks",
                            node.name
                        ));
                    }
                    parts.insert(
                        format!("{}.predictions", node.name),
                        Part::Stream(BTreeSet::new()),
                    );
                    parts.insert(
                        format!("{}.snapshots", node.name),
                        Part::Stream(BTreeSet::new()),
                    );
                    continue;
                };
                if !input.contains(key) {
                    return Err(format!(
                        "model `{}` is keyed by `{key}`, but {}",
                        node.name,
                        keyed_text(&format!("`{}`'s", m.input), &input)
                    ));
                }
                let carried = |schema: &datafusion::arrow::datatypes::SchemaRef| {
                    Part::Stream(
                        schema
                            .field_with_name(key)
                            .map(|_| BTreeSet::from([key.clone()]))
                            .unwrap_or_default(),
                    )
                };
                parts.insert(
                    format!("{}.predictions", node.name),
                    carried(&m.predictions),
                );
                parts.insert(format!("{}.snapshots", node.name), carried(&m.snapshots));
            }
            NodeKind::Sink(_) => {}
        }
    }
    Ok(())
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
