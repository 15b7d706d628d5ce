//! One transform's SQL: parse, refuse anything but a single query, find its inputs with their
//! positions, and plan it through DataFusion against its inputs' schemas.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::TableReference;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::empty::EmptyTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{self, Spanned};

/// A 1-based line and column inside the SQL text.
pub type SqlPos = (usize, usize);

/// A problem in a transform's SQL, located inside the SQL text when DataFusion or the parser
/// tells where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    /// Where in the SQL, if known.
    pub pos: Option<SqlPos>,
    /// What is wrong.
    pub message: String,
}

impl SqlError {
    fn new(pos: Option<SqlPos>, message: impl Into<String>) -> Self {
        Self {
            pos,
            message: message.into(),
        }
    }
}

/// A table the SQL reads, with the position of its first mention.
#[derive(Debug, Clone)]
pub struct TableRef {
    /// As DataFusion resolves it (`clean`, or `failure_rate.predictions`).
    pub reference: TableReference,
    /// Where it is first named in the SQL.
    pub pos: Option<SqlPos>,
}

/// A parsed transform query.
#[derive(Debug)]
pub struct ParsedQuery {
    statement: DfStatement,
    /// Tables it reads (CTE names excluded).
    pub tables: Vec<TableRef>,
}

/// Largest SQL text of one transform, bytes.
pub const MAX_SQL_BYTES: usize = 64 * 1024;
/// Deepest nesting of expressions (`a + b + c` nests two deep).
pub const MAX_EXPR_DEPTH: usize = 256;
/// Most expression nodes in one transform.
pub const MAX_EXPR_NODES: usize = 20_000;
/// Most tables, subqueries and table functions one transform reads (each join adds one).
pub const MAX_RELATIONS: usize = 32;
/// Most SELECT blocks in one transform (UNION branches, subqueries, CTEs).
pub const MAX_SELECTS: usize = 64;

/// Parses `sql`: exactly one statement, and a query, within the size limits above. Call it
/// on a thread with a large stack (as [`crate::check`] does): the parser and the checks
/// recurse over the expression tree.
pub fn parse(sql: &str) -> Result<ParsedQuery, SqlError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(SqlError::new(
            Some((1, 1)),
            format!(
                "the SQL is {} bytes, over the limit of {MAX_SQL_BYTES}; split the transform",
                sql.len()
            ),
        ));
    }
    let mut statements = DFParserBuilder::new(sql)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| from_datafusion(&e))?;
    if statements.len() != 1 {
        let pos = statements.get(1).and_then(statement_pos);
        return Err(SqlError::new(
            pos,
            format!(
                "a transform is exactly one SQL query; found {} statements",
                statements.len()
            ),
        ));
    }
    let Some(statement) = statements.pop_front() else {
        return Err(SqlError::new(
            None,
            "the SQL is empty; write a SELECT query",
        ));
    };
    let query_ok =
        matches!(&statement, DfStatement::Statement(s) if matches!(**s, ast::Statement::Query(_)));
    if !query_ok {
        return Err(SqlError::new(
            statement_pos(&statement).or(Some((1, 1))),
            format!(
                "`{}` is not allowed: a transform is one SELECT query (no DDL, DML or session commands)",
                statement_keyword(sql)
            ),
        ));
    }
    check_size(&statement)?;
    let tables = table_refs(&statement)?;
    Ok(ParsedQuery { statement, tables })
}

/// Counts what [`parse`] bounds.
#[derive(Default)]
struct Size {
    depth: usize,
    deepest: usize,
    nodes: usize,
    relations: usize,
    selects: usize,
    first_too_deep: Option<SqlPos>,
}

impl ast::Visitor for Size {
    type Break = ();
    fn pre_visit_expr(&mut self, expr: &ast::Expr) -> std::ops::ControlFlow<()> {
        self.depth += 1;
        self.nodes += 1;
        if self.depth > self.deepest {
            self.deepest = self.depth;
            if self.depth > MAX_EXPR_DEPTH && self.first_too_deep.is_none() {
                let start = expr.span().start;
                self.first_too_deep =
                    (start.line > 0).then_some((start.line as usize, start.column as usize));
            }
        }
        if self.nodes > MAX_EXPR_NODES || self.depth > MAX_EXPR_DEPTH {
            return std::ops::ControlFlow::Break(());
        }
        std::ops::ControlFlow::Continue(())
    }
    fn post_visit_expr(&mut self, _: &ast::Expr) -> std::ops::ControlFlow<()> {
        self.depth -= 1;
        std::ops::ControlFlow::Continue(())
    }
    fn pre_visit_table_factor(&mut self, _: &ast::TableFactor) -> std::ops::ControlFlow<()> {
        self.relations += 1;
        std::ops::ControlFlow::Continue(())
    }
    fn pre_visit_select(&mut self, _: &ast::Select) -> std::ops::ControlFlow<()> {
        self.selects += 1;
        std::ops::ControlFlow::Continue(())
    }
}

fn check_size(statement: &DfStatement) -> Result<(), SqlError> {
    let DfStatement::Statement(s) = statement else {
        return Ok(());
    };
    let mut size = Size::default();
    let _ = ast::Visit::visit(&**s, &mut size);
    if size.deepest > MAX_EXPR_DEPTH {
        return Err(SqlError::new(
            size.first_too_deep.or(Some((1, 1))),
            format!(
                "an expression nests more than {MAX_EXPR_DEPTH} deep; write long chains of OR as `IN (...)`, or split the transform"
            ),
        ));
    }
    if size.nodes > MAX_EXPR_NODES {
        return Err(SqlError::new(
            Some((1, 1)),
            format!("the SQL has more than {MAX_EXPR_NODES} expressions; split the transform"),
        ));
    }
    if size.selects > MAX_SELECTS {
        return Err(SqlError::new(
            Some((1, 1)),
            format!(
                "the SQL has more than {MAX_SELECTS} SELECT blocks (UNION branches, subqueries); split the transform"
            ),
        ));
    }
    if size.relations > MAX_RELATIONS {
        return Err(SqlError::new(
            Some((1, 1)),
            format!(
                "the SQL reads more than {MAX_RELATIONS} tables and subqueries; join in several transforms"
            ),
        ));
    }
    Ok(())
}

fn statement_pos(statement: &DfStatement) -> Option<SqlPos> {
    match statement {
        DfStatement::Statement(s) => {
            let start = s.span().start;
            (start.line > 0).then_some((start.line as usize, start.column as usize))
        }
        _ => None,
    }
}

fn statement_keyword(sql: &str) -> String {
    let words: Vec<&str> = sql.split_whitespace().take(2).collect();
    match words.as_slice() {
        [first, second, ..]
            if matches!(
                first.to_ascii_uppercase().as_str(),
                "CREATE" | "DROP" | "ALTER" | "INSERT" | "DELETE" | "TRUNCATE"
            ) =>
        {
            format!(
                "{} {}",
                first.to_ascii_uppercase(),
                second.to_ascii_uppercase()
            )
        }
        [first, ..] => first.to_ascii_uppercase(),
        [] => String::new(),
    }
}

fn table_refs(statement: &DfStatement) -> Result<Vec<TableRef>, SqlError> {
    let (references, _ctes) = datafusion::sql::resolve::resolve_table_references(statement, true)
        .map_err(|e| from_datafusion(&e))?;
    // Positions: the first relation in the AST whose name resolves to the reference.
    let mut spans: Vec<(String, SqlPos)> = Vec::new();
    if let DfStatement::Statement(s) = statement {
        let _ = ast::visit_relations(&**s, |name: &ast::ObjectName| {
            let start = name.span().start;
            if start.line > 0 {
                let text = name
                    .0
                    .iter()
                    .filter_map(|part| part.as_ident().map(|i| i.value.to_lowercase()))
                    .collect::<Vec<_>>()
                    .join(".");
                spans.push((text, (start.line as usize, start.column as usize)));
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    }
    Ok(references
        .into_iter()
        .map(|reference| {
            let key = reference.to_string().to_lowercase();
            let pos = spans.iter().find(|(t, _)| *t == key).map(|(_, p)| *p);
            TableRef { reference, pos }
        })
        .collect())
}

/// A table to register for planning: a bare name (`clean`) or a model output
/// (`failure_rate`.`predictions`).
#[derive(Debug, Clone)]
pub struct InputTable {
    /// Schema part of the name, for model outputs.
    pub schema: Option<String>,
    /// Table name.
    pub table: String,
    /// Its columns.
    pub arrow: SchemaRef,
}

/// Session settings for planning pipeline SQL.
pub fn session() -> SessionContext {
    let mut config = SessionConfig::new()
        .with_information_schema(false)
        .with_target_partitions(1);
    let options = config.options_mut();
    options.sql_parser.collect_spans = true;
    // Keep string columns as the decoders produce them (Utf8), so plans and schemas agree.
    options.sql_parser.map_string_types_to_utf8view = false;
    let ctx = SessionContext::new_with_config(config);
    // This rule turns `count(DISTINCT x)` into two nested aggregates; a window folds only
    // the outer one across micro-batches, so the inner one would deduplicate within each
    // micro-batch only. DataFusion's distinct accumulators are exact without it.
    ctx.remove_optimizer_rule("single_distinct_aggregation_to_group_by");
    crate::bounded::register(&ctx);
    crate::exact::register(&ctx);
    ctx
}

/// Plans the query against `inputs`; returns the logical plan and its optimized form.
pub async fn plan(
    parsed: &ParsedQuery,
    inputs: &[InputTable],
) -> Result<(LogicalPlan, LogicalPlan), SqlError> {
    let tables: Vec<(InputTable, Arc<dyn TableProvider>)> = inputs
        .iter()
        .map(|i| {
            let t: Arc<dyn TableProvider> = Arc::new(EmptyTable::new(i.arrow.clone()));
            (i.clone(), t)
        })
        .collect();
    let (_, logical, optimized) = plan_with_tables(parsed, &tables).await?;
    Ok((logical, optimized))
}

/// Plans the query against the given table providers (the runtime's live tables). Returns
/// the session, so the caller can make the physical plan with the same settings.
pub async fn plan_with_tables(
    parsed: &ParsedQuery,
    inputs: &[(InputTable, Arc<dyn TableProvider>)],
) -> Result<(SessionContext, LogicalPlan, LogicalPlan), SqlError> {
    let ctx = session();
    for (input, table) in inputs {
        let table = table.clone();
        match &input.schema {
            None => {
                ctx.register_table(input.table.as_str(), table)
                    .map_err(|e| from_datafusion(&e))?;
            }
            Some(schema) => {
                let catalog = ctx
                    .catalog("datafusion")
                    .ok_or_else(|| SqlError::new(None, "internal error: no default catalog"))?;
                let provider = match catalog.schema(schema) {
                    Some(p) => p,
                    None => {
                        let p: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
                        catalog
                            .register_schema(schema, p.clone())
                            .map_err(|e| from_datafusion(&e))?;
                        p
                    }
                };
                provider
                    .register_table(input.table.clone(), table)
                    .map_err(|e| from_datafusion(&e))?;
            }
        }
    }
    let state = ctx.state();
    let logical = state
        .statement_to_plan(parsed.statement.clone())
        .await
        .map_err(|e| from_datafusion(&e))?;
    if let Some(kind) = forbidden_node(&logical) {
        return Err(SqlError::new(
            Some((1, 1)),
            format!("{kind} is not allowed in a transform: it is one SELECT query"),
        ));
    }
    // Before optimizing: DataFusion folds constant calls while it optimizes.
    check_bounded(&logical)?;
    let optimized = state.optimize(&logical).map_err(|e| from_datafusion(&e))?;
    // Constant folding may have turned arguments into literals (`repeat(repeat('x', 1000),
    // 100000)`): check again what the optimizer left, and the size of the constants it made
    // (each is copied into every row of every batch).
    check_bounded(&optimized)?;
    check_literals(&optimized)?;
    Ok((ctx, logical, optimized))
}

/// Refuses calls of size-expanding functions whose constant arguments are over the bounds.
fn check_bounded(plan: &LogicalPlan) -> Result<(), SqlError> {
    let mut bounded = Ok(());
    let _ = plan.apply(|node| {
        for e in node.expressions() {
            if let Err(err) = crate::bounded::check_constants(&e) {
                bounded = Err(err);
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    bounded.map_err(|e| from_datafusion(&e))
}

/// Largest constant in a planned transform, bytes (after constant folding).
pub const MAX_LITERAL_BYTES: usize = 16 * 1024;
/// Largest sum of the constants of a planned transform, bytes.
pub const MAX_LITERALS_BYTES: usize = 1024 * 1024;

fn check_literals(plan: &LogicalPlan) -> Result<(), SqlError> {
    let mut total = 0usize;
    let mut largest = 0usize;
    let _ = plan.apply(|node| {
        for e in node.expressions() {
            let _ = e.apply(|e| {
                if let datafusion::logical_expr::Expr::Literal(v, _) = e {
                    let size = v.size();
                    total = total.saturating_add(size);
                    largest = largest.max(size);
                }
                Ok(TreeNodeRecursion::Continue)
            });
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if largest > MAX_LITERAL_BYTES || total > MAX_LITERALS_BYTES {
        return Err(SqlError::new(
            Some((1, 1)),
            format!(
                "the constants of this SQL fold to a value of {largest} bytes ({total} in all), over the limit of {MAX_LITERAL_BYTES} per value and {MAX_LITERALS_BYTES} in all: each is copied into every row"
            ),
        ));
    }
    Ok(())
}

/// Plan nodes that write or change state; a `SELECT ... INTO` plans to one of these.
fn forbidden_node(plan: &LogicalPlan) -> Option<&'static str> {
    let mut found = None;
    let _ = plan.apply(|node| {
        let kind = match node {
            LogicalPlan::Dml(_) => Some("DML (INSERT, UPDATE, DELETE)"),
            LogicalPlan::Ddl(_) => Some("DDL (CREATE, DROP, SELECT INTO)"),
            LogicalPlan::Copy(_) => Some("COPY"),
            LogicalPlan::Statement(_) => Some("a session statement"),
            LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => Some("EXPLAIN"),
            _ => None,
        };
        if kind.is_some() {
            found = kind;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// A DataFusion error as a located SQL error: the diagnostic's span when DataFusion attaches
/// one, else a `Line: L, Column: C` the parser puts in its message.
pub fn from_datafusion(e: &DataFusionError) -> SqlError {
    let pos = e
        .diagnostic()
        .and_then(|d| d.span)
        .filter(|s| s.start.line > 0)
        .map(|s| (s.start.line as usize, s.start.column as usize));
    let root = e.find_root();
    let mut message = root.strip_backtrace();
    let pos = pos.or_else(|| parser_pos(&message));
    for prefix in [
        "Schema error: ",
        "Error during planning: ",
        "SQL error: ",
        "This feature is not implemented: ",
        "Optimizer rule",
    ] {
        if let Some(rest) = message.strip_prefix(prefix) {
            message = rest.to_string();
        }
    }
    if let Some(cut) = message.find(" at Line: ") {
        message.truncate(cut);
    }
    for wrapper in ["ParserError(\"", "TokenizerError(\""] {
        if let Some(rest) = message.strip_prefix(wrapper) {
            message = rest.trim_end_matches("\")").to_string();
        }
    }
    // One line per error, as compilers print them.
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    SqlError::new(pos, message)
}

fn parser_pos(message: &str) -> Option<SqlPos> {
    let rest = &message[message.find("Line: ")? + 6..];
    let line: usize = rest.split(',').next()?.trim().parse().ok()?;
    let col_text = &rest[rest.find("Column: ")? + 8..];
    let col: usize = col_text
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    Some((line, col))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_one_query_and_finds_tables() {
        let q = parse("SELECT a FROM t JOIN m.predictions p ON t.a = p.a").expect("valid");
        let mut names: Vec<String> = q.tables.iter().map(|t| t.reference.to_string()).collect();
        names.sort();
        assert_eq!(names, vec!["m.predictions", "t"]);
        let t = q
            .tables
            .iter()
            .find(|t| t.reference.table() == "t")
            .expect("t");
        assert_eq!(t.pos, Some((1, 15)));
        // CTEs are not inputs.
        let q = parse("WITH x AS (SELECT a FROM t) SELECT a FROM x").expect("valid");
        assert_eq!(q.tables.len(), 1);
    }

    #[test]
    fn refuses_ddl_dml_and_several_statements() {
        for (sql, needle) in [
            ("DROP TABLE t", "`DROP TABLE` is not allowed"),
            ("INSERT INTO t VALUES (1)", "`INSERT INTO` is not allowed"),
            (
                "CREATE TABLE x AS SELECT 1",
                "`CREATE TABLE` is not allowed",
            ),
            (
                "SET datafusion.execution.batch_size = 1",
                "`SET` is not allowed",
            ),
            ("SELECT 1; SELECT 2", "found 2 statements"),
            ("", "found 0 statements"),
            ("SELEC a FROM t", "Expected"),
        ] {
            let err = parse(sql).expect_err(sql);
            assert!(err.message.contains(needle), "{sql}: {}", err.message);
        }
    }

    /// Runs `f` on a thread with the planner's stack, as `crate::check` does.
    fn on_planner_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(crate::PLANNER_STACK_BYTES)
            .spawn(f)
            .expect("thread")
            .join()
            .expect("no panic");
    }

    #[test]
    fn deep_wide_and_long_sql_is_refused_with_its_limit() {
        on_planner_stack(|| {
            let terms = |n: usize, sep: &str, term: &str| vec![term; n].join(sep);
            for (sql, needle) in [
                (
                    format!("SELECT {} FROM t", terms(300, " + ", "a")),
                    "nests more than 256 deep",
                ),
                (
                    format!("SELECT a FROM t WHERE {}", terms(3000, " OR ", "a = 1")),
                    "nests more than 256 deep",
                ),
                (
                    terms(100, " UNION ALL ", "SELECT a FROM t"),
                    "SELECT blocks",
                ),
                (
                    format!(
                        "SELECT t0.a FROM t t0 {}",
                        (1..40)
                            .map(|i| format!("JOIN t t{i} ON t0.a = t{i}.a"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    "more than 32 tables",
                ),
                (
                    format!("SELECT {} AS x FROM t", "a".repeat(70_000)),
                    "over the limit of 65536",
                ),
            ] {
                let err = parse(&sql).expect_err(needle);
                assert!(err.message.contains(needle), "{needle}: {}", err.message);
            }
            // A long IN list is flat, and fine.
            let list = (0..3000)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            parse(&format!("SELECT a FROM t WHERE a IN ({list})")).expect("flat IN list");
        });
    }

    #[tokio::test]
    async fn expanding_functions_over_constants_are_refused_while_planning() {
        let table = InputTable {
            schema: None,
            table: "t".into(),
            arrow: std::sync::Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
                datafusion::arrow::datatypes::Field::new(
                    "a",
                    datafusion::arrow::datatypes::DataType::Utf8,
                    true,
                ),
            ])),
        };
        for sql in [
            "SELECT unnest(range(1000000000)) AS x FROM t",
            "SELECT repeat('x', 100000000) AS x FROM t",
            "SELECT repeat(repeat('x', 1000), 100000) AS x FROM t",
            "SELECT lpad(a, 1000000000) AS x FROM t",
            "SELECT array_repeat(a, 1000000000) AS x FROM t",
            "SELECT generate_series(1, 10 * 100000) AS x FROM t",
        ] {
            let q = parse(sql).expect(sql);
            let err = plan(&q, std::slice::from_ref(&table)).await.expect_err(sql);
            assert!(err.message.contains("would make"), "{sql}: {}", err.message);
        }
        let many = (0..20)
            .map(|i| format!("repeat('x', 1000000) AS a{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let q = parse(&format!("SELECT {many} FROM t")).expect("parses");
        let err = plan(&q, std::slice::from_ref(&table))
            .await
            .expect_err("folded");
        assert!(err.message.contains("fold to a value"), "{}", err.message);
        let q = parse("SELECT repeat(a, 3) AS x, range(1, 10) AS r FROM t").expect("ok");
        plan(&q, std::slice::from_ref(&table))
            .await
            .expect("small calls are fine");
    }

    #[tokio::test]
    async fn select_into_is_refused_at_planning() {
        let q = parse("SELECT 1 AS a INTO other").expect("parses as a query");
        let err = plan(&q, &[]).await.expect_err("refused");
        assert!(err.message.contains("not allowed"), "{}", err.message);
    }
}
