//! Functions whose output size is chosen by an argument, wrapped with a bound.
//!
//! `repeat('x', 100000000)`, `lpad(s, 1e9)` or `range(1000000000)` cost as much memory as their
//! argument says. DataFusion folds constant calls while it plans, so such a call in a
//! pipeline's SQL would take the planning process's memory before anything runs; with a
//! column argument it would do the same to the running pipeline on one bad row. Every such
//! function is registered in the planning and running session as a wrapper that computes the
//! size of the result from its arguments first and refuses it, with an error naming the
//! function and the bound, before the inner function allocates anything.
//!
//! The bounds, per call: at most [`MAX_VALUE_BYTES`] for one string, [`MAX_LIST_ITEMS`] items
//! in one list, and [`MAX_CALL_BYTES`] over every row of one batch.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::{cast, kernels::length::length};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// Largest string one call may make for one row, bytes.
pub const MAX_VALUE_BYTES: i64 = 1024 * 1024;
/// Most items one call may put in one list.
pub const MAX_LIST_ITEMS: i64 = 100_000;
/// Largest output of one call over all rows of a batch, bytes (lists count 8 bytes an item).
pub const MAX_CALL_BYTES: i64 = 64 * 1024 * 1024;

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: length of the text times n.
    Repeat,
    /// `lpad(text, n, ...)`, `rpad`: n characters (up to 4 bytes each).
    Pad,
    /// `range(stop)`, `range(start, stop[, step])`, `generate_series`: integers only.
    Series,
    /// `array_repeat(item, n)`: n items.
    ArrayRepeat,
    /// `array_resize(list, n[, item])`: n items.
    ArrayResize,
}

const BOUNDED: [(&str, Growth); 7] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("range", Growth::Series),
    ("generate_series", Growth::Series),
    ("array_repeat", Growth::ArrayRepeat),
    ("array_resize", Growth::ArrayResize),
];

/// Replaces every size-expanding function of `ctx` by its bounded form.
pub fn register(ctx: &SessionContext) {
    for (name, growth) in BOUNDED {
        if let Some(inner) = ctx.state().scalar_functions().get(name).cloned() {
            let inner = inner.as_ref().clone();
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded { inner, growth }));
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    growth: Growth,
}

/// Argument `i` as one Int64 value per row (nulls as 0).
fn ints(args: &ScalarFunctionArgs, i: usize) -> Result<Vec<i64>> {
    let Some(arg) = args.args.get(i) else {
        return Ok(vec![0; args.number_rows.max(1)]);
    };
    let array = as_array(arg, args.number_rows)?;
    let array = cast(&array, &DataType::Int64)?;
    let ints = array.as_primitive::<Int64Type>();
    Ok((0..ints.len())
        .map(|r| if ints.is_null(r) { 0 } else { ints.value(r) })
        .collect())
}

fn as_array(arg: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    match arg {
        ColumnarValue::Array(a) => Ok(a.clone()),
        ColumnarValue::Scalar(s) => s.to_array_of_size(rows.max(1)),
    }
}

fn is_integer(arg: &ColumnarValue) -> bool {
    let dt = arg.data_type();
    dt.is_integer() || dt == DataType::Null
}

impl Bounded {
    /// The size of each row's output, bytes, or why it is refused.
    fn sizes(&self, args: &ScalarFunctionArgs) -> Result<Vec<i64>> {
        let name = self.inner.name();
        let rows = args.number_rows.max(1);
        Ok(match self.growth {
            Growth::Repeat => {
                let text = as_array(&args.args[0], rows)?;
                let lens = cast(&length(&text)?, &DataType::Int64)?;
                let lens = lens.as_primitive::<Int64Type>();
                let n = ints(args, 1)?;
                (0..lens.len())
                    .map(|r| lens.value(r).saturating_mul(n[r].max(0)))
                    .collect()
            }
            Growth::Pad => ints(args, 1)?
                .into_iter()
                .map(|n| n.max(0).saturating_mul(4))
                .collect(),
            Growth::Series => {
                if !args.args.iter().all(is_integer) {
                    return exec_err!(
                        "{name} over dates or timestamps is not available in pipelines; use integers"
                    );
                }
                let (start, stop, step) = match args.args.len() {
                    1 => (vec![0; rows], ints(args, 0)?, vec![1; rows]),
                    2 => (ints(args, 0)?, ints(args, 1)?, vec![1; rows]),
                    _ => (ints(args, 0)?, ints(args, 1)?, ints(args, 2)?),
                };
                (0..rows.min(start.len()))
                    .map(|r| {
                        let span = (i128::from(stop[r]) - i128::from(start[r])).abs();
                        let step = i128::from(step[r]).abs().max(1);
                        let items = (span / step + 1).min(i128::from(i64::MAX));
                        (items as i64).saturating_mul(8)
                    })
                    .collect()
            }
            Growth::ArrayRepeat | Growth::ArrayResize => {
                // The item repeated: the first argument of array_repeat, the optional third
                // (the fill value) of array_resize.
                let item = match self.growth {
                    Growth::ArrayRepeat => Some(&args.args[0]),
                    _ => args.args.get(2),
                };
                let per_item = match item {
                    Some(item) => {
                        let item = as_array(item, rows)?;
                        (item.get_array_memory_size() / item.len().max(1)).max(8) as i64
                    }
                    None => 8,
                };
                ints(args, 1)?
                    .into_iter()
                    .map(|n| {
                        if n > MAX_LIST_ITEMS {
                            i64::MAX
                        } else {
                            n.max(0).saturating_mul(per_item)
                        }
                    })
                    .collect()
            }
        })
    }

    fn check(&self, args: &ScalarFunctionArgs) -> Result<()> {
        let name = self.inner.name();
        let sizes = self.sizes(args)?;
        let (limit, what) = match self.growth {
            Growth::Series => (MAX_LIST_ITEMS * 8, format!("{MAX_LIST_ITEMS} items")),
            Growth::ArrayRepeat | Growth::ArrayResize => {
                (MAX_CALL_BYTES, format!("{MAX_LIST_ITEMS} items"))
            }
            _ => (MAX_VALUE_BYTES, format!("{MAX_VALUE_BYTES} bytes")),
        };
        if sizes.iter().any(|s| *s > limit) {
            return exec_err!(
                "{name} would make a value larger than the limit of {what} per row; pipelines bound what one function call may allocate"
            );
        }
        let total = sizes.iter().fold(0i64, |a, s| a.saturating_add(*s));
        if total > MAX_CALL_BYTES {
            return exec_err!(
                "{name} would make {total} bytes for one batch, over the limit of {MAX_CALL_BYTES}"
            );
        }
        Ok(())
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        // The inner function's rewrite could bypass the bound; keep the call as it is.
        let _ = info;
        Ok(ExprSimplifyResult::Original(args))
    }
    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args)?;
        self.inner.invoke_with_args(args)
    }
}

/// Refuses, while planning, a bounded function whose size arguments are constants over the
/// bound (DataFusion may otherwise leave a failing constant call for run time).
pub fn check_constants(expr: &Expr) -> Result<()> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut found = Ok(());
    let _ = expr.apply(|e| {
        if let Expr::ScalarFunction(f) = e
            && let Some((_, growth)) = BOUNDED.iter().find(|(n, _)| *n == f.name())
        {
            let literal = |i: usize| match f.args.get(i) {
                Some(Expr::Literal(ScalarValue::Int64(Some(n)), _)) => Some(*n),
                Some(Expr::Literal(ScalarValue::Int32(Some(n)), _)) => Some(i64::from(*n)),
                _ => None,
            };
            let text_len = match f.args.first() {
                Some(Expr::Literal(ScalarValue::Utf8(Some(t)), _)) => t.len() as i64,
                _ => 1,
            };
            let (big, what) = match growth {
                Growth::Series => (
                    (0..f.args.len())
                        .filter_map(literal)
                        .any(|n| n.abs() > MAX_LIST_ITEMS),
                    format!("a list of more than {MAX_LIST_ITEMS} items"),
                ),
                Growth::Pad => (
                    literal(1).is_some_and(|n| n.saturating_mul(4) > MAX_VALUE_BYTES),
                    format!("a string over {MAX_VALUE_BYTES} bytes"),
                ),
                Growth::Repeat => (
                    literal(1).is_some_and(|n| n.saturating_mul(text_len) > MAX_VALUE_BYTES),
                    format!("a string over {MAX_VALUE_BYTES} bytes"),
                ),
                Growth::ArrayRepeat | Growth::ArrayResize => (
                    literal(1).is_some_and(|n| n > MAX_LIST_ITEMS),
                    format!("a list of more than {MAX_LIST_ITEMS} items"),
                ),
            };
            if big {
                found = plan_err!(
                    "{}(...) with these constants would make {what}, over what one function call may allocate in a pipeline",
                    f.name()
                );
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}
