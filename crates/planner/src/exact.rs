//! `sum` and `avg` of floating-point numbers that do not depend on the order of addition.
//!
//! A window's aggregates must not depend on how its rows were cut into micro-batches, nor
//! on how partitions and repartition writers interleave: then a run restored from its
//! state emits, bit for bit, the rows of an uninterrupted run. DataFusion's `sum` and `avg`
//! add doubles as they come (in SIMD lanes within a batch), so each cut rounds
//! differently. These replacements, registered under the same names, add every double
//! exactly into a fixed-point accumulator wide enough for any double (67 limbs of 32 bits,
//! each kept in an `i64` so that carries can wait), and round once, to nearest, when the
//! result is read: the sum is the correctly rounded sum of the exact values, whatever the
//! order. Other inputs (integers, decimals, `DISTINCT`) go to DataFusion's own functions.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, GroupsAccumulator, ReversedUDAF,
    SetMonotonicity, Signature,
};

/// Limbs of the accumulator: bit 0 of limb 0 is 2^-1074 (the smallest subnormal), and a
/// double's 53-bit mantissa shifted to its place spans at most three limbs below limb 66.
const LIMBS: usize = 67;
/// Additions before carries are propagated: each adds less than 2^32 to a limb.
const SAFE_ADDS: u32 = 1 << 30;

/// The exact sum of doubles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExactSum {
    limbs: [i64; LIMBS],
    adds: u32,
    nan: bool,
    pos_inf: bool,
    neg_inf: bool,
}

impl Default for ExactSum {
    fn default() -> Self {
        Self {
            limbs: [0; LIMBS],
            adds: 0,
            nan: false,
            pos_inf: false,
            neg_inf: false,
        }
    }
}

impl ExactSum {
    /// Adds `x` exactly.
    pub fn add(&mut self, x: f64) {
        let bits = x.to_bits();
        let exponent = ((bits >> 52) & 0x7ff) as u32;
        let fraction = bits & ((1 << 52) - 1);
        if exponent == 0x7ff {
            match (fraction != 0, x > 0.0) {
                (true, _) => self.nan = true,
                (false, true) => self.pos_inf = true,
                (false, false) => self.neg_inf = true,
            }
            return;
        }
        // x = ±mantissa * 2^(place - 1074).
        let (mantissa, place) = match exponent {
            0 => (fraction, 0),
            e => (fraction | 1 << 52, e - 1),
        };
        if mantissa == 0 {
            return;
        }
        let (limb, shift) = ((place / 32) as usize, place % 32);
        let shifted = u128::from(mantissa) << shift;
        let parts = [
            (shifted & 0xffff_ffff) as i64,
            ((shifted >> 32) & 0xffff_ffff) as i64,
            (shifted >> 64) as i64,
        ];
        let negative = bits >> 63 == 1;
        for (i, part) in parts.into_iter().enumerate() {
            if negative {
                self.limbs[limb + i] -= part;
            } else {
                self.limbs[limb + i] += part;
            }
        }
        self.adds += 1;
        if self.adds >= SAFE_ADDS {
            self.normalize();
        }
    }

    /// Adds `other` exactly.
    pub fn merge(&mut self, other: &ExactSum) {
        self.normalize();
        let mut other = other.clone();
        other.normalize();
        for (a, b) in self.limbs.iter_mut().zip(other.limbs) {
            *a += b;
        }
        self.normalize();
        self.nan |= other.nan;
        self.pos_inf |= other.pos_inf;
        self.neg_inf |= other.neg_inf;
    }

    /// Propagates carries: every limb but the top one in [0, 2^32), the top one signed.
    fn normalize(&mut self) {
        let mut carry = 0i64;
        for limb in self.limbs.iter_mut() {
            let v = *limb + carry;
            carry = v >> 32;
            *limb = v & 0xffff_ffff;
        }
        self.limbs[LIMBS - 1] += carry << 32;
        self.adds = 0;
    }

    /// The sum, rounded to the nearest double (ties to even; a subnormal result may be
    /// rounded twice). Infinities and NaN as IEEE addition gives them.
    pub fn value(&self) -> f64 {
        if self.nan || (self.pos_inf && self.neg_inf) {
            return f64::NAN;
        }
        if self.pos_inf {
            return f64::INFINITY;
        }
        if self.neg_inf {
            return f64::NEG_INFINITY;
        }
        let mut s = self.clone();
        s.normalize();
        let negative = s.limbs[LIMBS - 1] < 0;
        if negative {
            for limb in s.limbs.iter_mut() {
                *limb = -*limb;
            }
            s.normalize();
        }
        let Some(top) = s.limbs.iter().rposition(|l| *l != 0) else {
            return 0.0;
        };
        let top = top.max(2);
        let mut head = (s.limbs[top] as u128) << 64
            | (s.limbs[top - 1] as u128) << 32
            | s.limbs[top - 2] as u128;
        // A sticky bit for what lies below: `head` then rounds as the whole would (when
        // there is anything below, `head` has 65 or more significant bits).
        if s.limbs[..top - 2].iter().any(|l| *l != 0) {
            head |= 1;
        }
        let scale = 32 * (top as i32 - 2) - 1074;
        let half = scale / 2;
        let x = head as f64 * 2f64.powi(half) * 2f64.powi(scale - half);
        if negative { -x } else { x }
    }

    /// The limbs from the lowest to the highest nonzero one, and the flags.
    fn to_bytes(&self, count: u64) -> Vec<u8> {
        let mut s = self.clone();
        s.normalize();
        let low = s.limbs.iter().position(|l| *l != 0).unwrap_or(0);
        let high = s.limbs.iter().rposition(|l| *l != 0).map_or(0, |h| h + 1);
        let mut out = Vec::with_capacity(11 + 8 * (high - low));
        out.extend_from_slice(&count.to_le_bytes());
        out.push(u8::from(s.nan) | u8::from(s.pos_inf) << 1 | u8::from(s.neg_inf) << 2);
        out.push(low as u8);
        out.push(high.saturating_sub(low) as u8);
        for limb in &s.limbs[low..high.max(low)] {
            out.extend_from_slice(&limb.to_le_bytes());
        }
        out
    }

    fn from_bytes(bytes: &[u8]) -> Result<(Self, u64)> {
        let bad = || exec_err!("a corrupt exact sum state ({} bytes)", bytes.len());
        if bytes.len() < 11 {
            return bad();
        }
        let count = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default());
        let (flags, low, n) = (bytes[8], bytes[9] as usize, bytes[10] as usize);
        if low + n > LIMBS || bytes.len() != 11 + 8 * n {
            return bad();
        }
        let mut s = Self {
            nan: flags & 1 != 0,
            pos_inf: flags & 2 != 0,
            neg_inf: flags & 4 != 0,
            ..Self::default()
        };
        for (i, chunk) in bytes[11..].chunks_exact(8).enumerate() {
            s.limbs[low + i] = i64::from_le_bytes(chunk.try_into().unwrap_or_default());
        }
        Ok((s, count))
    }
}

/// The accumulator of an exact `sum` or `avg` of doubles.
#[derive(Debug, Default)]
struct ExactAccumulator {
    sum: ExactSum,
    count: u64,
    avg: bool,
}

impl Accumulator for ExactAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(values) = values.first() else {
            return Ok(());
        };
        let Some(values) = values.as_primitive_opt::<Float64Type>() else {
            return exec_err!("exact sum of {}", values.data_type());
        };
        if values.null_count() == 0 {
            for v in values.values() {
                self.sum.add(*v);
            }
            self.count += values.len() as u64;
        } else {
            for v in values.iter().flatten() {
                self.sum.add(v);
                self.count += 1;
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(states) = states.first().and_then(|s| s.as_binary_opt::<i32>()) else {
            return exec_err!("exact sum states are not binary");
        };
        for bytes in states.iter().flatten() {
            let (sum, count) = ExactSum::from_bytes(bytes)?;
            self.sum.merge(&sum);
            self.count += count;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(
            self.sum.to_bytes(self.count),
        ))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        if self.count == 0 {
            return Ok(ScalarValue::Float64(None));
        }
        let sum = self.sum.value();
        Ok(ScalarValue::Float64(Some(if self.avg {
            sum / self.count as f64
        } else {
            sum
        })))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

/// DataFusion's `sum` or `avg`, exact for doubles.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Exact {
    inner: Arc<AggregateUDF>,
    avg: bool,
}

/// Whether the (coerced) argument is a double and the call not `DISTINCT`.
fn exact(input: Option<&FieldRef>, distinct: bool) -> bool {
    !distinct && input.is_some_and(|f| f.data_type() == &DataType::Float64)
}

impl AggregateUDFImpl for Exact {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.return_field(arg_fields)
    }
    fn is_nullable(&self) -> bool {
        self.inner.is_nullable()
    }
    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.default_value(data_type)
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        if exact(args.expr_fields.first(), args.is_distinct) {
            Ok(Box::new(ExactAccumulator {
                avg: self.avg,
                ..ExactAccumulator::default()
            }))
        } else {
            self.inner.accumulator(args)
        }
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        if exact(args.input_fields.first(), args.is_distinct) {
            Ok(vec![Arc::new(Field::new(
                format_state_name(args.name, "exact_sum"),
                DataType::Binary,
                true,
            ))])
        } else {
            self.inner.state_fields(args)
        }
    }
    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        !exact(args.expr_fields.first(), args.is_distinct)
            && self.inner.groups_accumulator_supported(args)
    }
    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        self.inner.create_groups_accumulator(args)
    }
    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.create_sliding_accumulator(args)
    }
    fn reverse_expr(&self) -> ReversedUDAF {
        ReversedUDAF::Identical
    }
    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner.inner().set_monotonicity(data_type)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// Replaces `sum` and `avg` in `ctx` by their exact versions.
pub fn register(ctx: &SessionContext) {
    for (inner, avg) in [
        (datafusion::functions_aggregate::sum::sum_udaf(), false),
        (datafusion::functions_aggregate::average::avg_udaf(), true),
    ] {
        ctx.register_udaf(AggregateUDF::new_from_impl(Exact { inner, avg }));
    }
}

#[cfg(test)]
mod tests {
    use super::ExactSum;

    fn sum(values: &[f64]) -> f64 {
        let mut s = ExactSum::default();
        for v in values {
            s.add(*v);
        }
        s.value()
    }

    #[test]
    fn sums_are_exact_then_rounded_once() {
        // Each by hand: the exact sums are 1, 1, 2^-1073, 0.3 rounded once, -2.5.
        assert_eq!(sum(&[1e100, 1.0, -1e100]), 1.0);
        assert_eq!(
            sum(&[0.1; 10]),
            1.0,
            "0.1 is a little over 1/10, ten of them round to 1"
        );
        assert_eq!(sum(&[5e-324, 5e-324]), 1e-323);
        assert_eq!(sum(&[0.1, 0.2]), 0.30000000000000004);
        assert_eq!(sum(&[-1.25, -1.25]), -2.5);
        assert_eq!(sum(&[]), 0.0);
        assert_eq!(sum(&[f64::MAX, f64::MAX, -f64::MAX]), f64::MAX);
        assert_eq!(sum(&[f64::MAX, f64::MAX]), f64::INFINITY);
        assert!(sum(&[f64::INFINITY, f64::NEG_INFINITY]).is_nan());
        assert_eq!(sum(&[1.0, f64::NEG_INFINITY]), f64::NEG_INFINITY);
        assert!(sum(&[f64::NAN, 1.0]).is_nan());
        // 2^53 + 1 is not a double: the tie rounds to even, 2^53.
        assert_eq!(sum(&[9007199254740992.0, 1.0]), 9007199254740992.0);
        assert_eq!(sum(&[9007199254740992.0, 1.0, 1e-300]), 9007199254740994.0);
    }

    #[test]
    fn the_order_and_the_cut_into_parts_do_not_change_a_bit() {
        // Doubles of every magnitude and sign, from a fixed linear congruential sequence.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let values: Vec<f64> = (0..20_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let mantissa = (state >> 11) as f64 / (1u64 << 53) as f64;
                let exponent = ((state >> 3) % 200) as i32 - 100;
                let sign = if state & 1 == 0 { 1.0 } else { -1.0 };
                sign * mantissa * 2f64.powi(exponent)
            })
            .collect();
        let forward = sum(&values);
        let mut reversed = values.clone();
        reversed.reverse();
        assert_eq!(sum(&reversed).to_bits(), forward.to_bits());
        // Cut into parts of uneven sizes, each summed on its own, merged through bytes.
        let mut merged = ExactSum::default();
        let mut count = 0;
        for part in values.chunks(777) {
            let mut s = ExactSum::default();
            for v in part {
                s.add(*v);
            }
            let (back, n) = ExactSum::from_bytes(&s.to_bytes(part.len() as u64)).expect("state");
            merged.merge(&back);
            count += n;
        }
        assert_eq!(count, values.len() as u64);
        assert_eq!(merged.value().to_bits(), forward.to_bits());
        // Naive addition in the two orders differs (which is what this is for).
        let naive: f64 = values.iter().sum();
        let naive_reversed: f64 = reversed.iter().sum();
        assert_ne!(naive.to_bits(), naive_reversed.to_bits());
    }

    #[test]
    fn a_corrupt_state_is_an_error() {
        assert!(ExactSum::from_bytes(&[0; 10]).is_err());
        let mut bytes = ExactSum::default().to_bytes(0);
        bytes[10] = 60;
        assert!(ExactSum::from_bytes(&bytes).is_err());
    }
}
