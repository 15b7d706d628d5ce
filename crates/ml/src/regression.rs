//! Incremental linear regression on sufficient statistics.
//!
//! The state is the total weight, the means of `[x_1 .. x_d, y]` and their co-moment matrix
//! (weighted sums of products of deviations from the means), updated per row with weighted
//! Welford steps and merged across partitions with Chan's formula, both exact in exact
//! arithmetic and numerically stable in floating point (no raw sums of squares). Solving is
//! deferred to when coefficients are needed: `S_xx β = S_xy` by Cholesky, with a scale-free
//! ridge `ρ · diag(S_xx)` added to `S_xx`, and intercept `ȳ − x̄·β`. Without forgetting and
//! without ridge this is ordinary least squares.
//!
//! Forgetting multiplies weight and co-moments by `0.5^(Δt / half_life)` as event time
//! advances, so a sample's influence halves every half-life; means are unchanged by it.

/// Why coefficients are not available.
#[derive(Debug, Clone, PartialEq)]
pub enum SolveError {
    /// Fewer samples than features + 1: the system is underdetermined.
    TooFewSamples {
        /// Samples seen.
        have: u64,
        /// Samples needed.
        need: u64,
    },
}

/// Coefficients and how they were obtained.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    /// One coefficient per feature.
    pub coefficients: Vec<f64>,
    /// The intercept.
    pub intercept: f64,
    /// The ridge factor actually used: the configured one, or larger when the system was
    /// singular (then `raised` is true).
    pub ridge: f64,
    /// Whether the ridge had to be raised to make the system solvable.
    pub raised: bool,
}

/// Up to this many variables (features + target) a row update allocates nothing.
const STACK: usize = 65;

/// The sufficient statistics of a linear regression with `d` features.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RegressionState {
    d: usize,
    samples: u64,
    weight: f64,
    /// The first row seen: statistics are kept relative to it (shifted data), so that
    /// variables far from zero keep their precision.
    shift: Vec<f64>,
    /// Means of `[x.., y] − shift`, length `d + 1`.
    mean: Vec<f64>,
    /// Co-moments, `(d + 1) × (d + 1)`, row-major, symmetric.
    comoment: Vec<f64>,
    /// Event time of the last decay, ms.
    clock: Option<i64>,
}

impl RegressionState {
    /// An empty state for `d` features.
    pub fn new(d: usize) -> Self {
        let k = d + 1;
        Self {
            d,
            samples: 0,
            weight: 0.0,
            shift: vec![0.0; k],
            mean: vec![0.0; k],
            comoment: vec![0.0; k * k],
            clock: None,
        }
    }

    /// Event time of the last decay, ms (none before the first).
    pub fn clock(&self) -> Option<i64> {
        self.clock
    }

    /// Number of features.
    pub fn features(&self) -> usize {
        self.d
    }

    /// Rows learnt from.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Total (decayed) weight.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Means of the features and, last, the target.
    pub fn means(&self) -> Vec<f64> {
        self.shift
            .iter()
            .zip(&self.mean)
            .map(|(s, m)| s + m)
            .collect()
    }

    /// The co-moment of variables `i` and `j` (the target is index `d`).
    pub fn comoment(&self, i: usize, j: usize) -> f64 {
        self.comoment[i * (self.d + 1) + j]
    }

    /// Learns one row with weight `w` (1 for plain least squares). `x` has `d` values.
    pub fn update(&mut self, x: &[f64], y: f64, w: f64) {
        debug_assert_eq!(x.len(), self.d);
        let k = self.d + 1;
        let total = self.weight + w;
        if total <= 0.0 {
            return;
        }
        let ratio = w / total;
        // delta = z − mean (old); mean += ratio · delta; C += w · delta ⊗ (z − mean new)
        //       = w · (1 − ratio) · delta ⊗ delta.
        if self.weight == 0.0 && self.samples == 0 {
            self.shift[..self.d].copy_from_slice(x);
            self.shift[self.d] = y;
        }
        if k > STACK {
            return self.update_large(x, y, w);
        }
        let shift = &self.shift;
        let value = |i: usize| if i < self.d { x[i] } else { y } - shift[i];
        let factor = w * (1.0 - ratio);
        // Deviations on the stack: no allocation per row.
        let mut buffer = [0.0f64; STACK];
        let delta = &mut buffer[..k];
        for (i, d) in delta.iter_mut().enumerate() {
            *d = value(i) - self.mean[i];
        }
        for i in 0..k {
            self.mean[i] += ratio * delta[i];
            let row = &mut self.comoment[i * k..(i + 1) * k];
            let di = factor * delta[i];
            for (c, dj) in row.iter_mut().zip(delta.iter()) {
                *c += di * dj;
            }
        }
        self.weight = total;
        self.samples += 1;
    }

    /// `update` for more than 64 features (allocates a delta vector).
    fn update_large(&mut self, x: &[f64], y: f64, w: f64) {
        let k = self.d + 1;
        let total = self.weight + w;
        let ratio = w / total;
        let delta: Vec<f64> = (0..k)
            .map(|i| if i < self.d { x[i] } else { y } - self.shift[i] - self.mean[i])
            .collect();
        let factor = w * (1.0 - ratio);
        for i in 0..k {
            self.mean[i] += ratio * delta[i];
            for j in 0..k {
                self.comoment[i * k + j] += factor * delta[i] * delta[j];
            }
        }
        self.weight = total;
        self.samples += 1;
    }

    /// Combines `other` (statistics of other rows) into this state: the result equals one
    /// pass over both sets of rows.
    pub fn merge(&mut self, other: &RegressionState) {
        debug_assert_eq!(self.d, other.d);
        if other.weight <= 0.0 {
            self.samples += other.samples;
            return;
        }
        if self.weight <= 0.0 {
            let samples = self.samples + other.samples;
            *self = other.clone();
            self.samples = samples;
            return;
        }
        let k = self.d + 1;
        let total = self.weight + other.weight;
        let factor = self.weight * other.weight / total;
        // The other's means relative to our shift.
        let delta: Vec<f64> = (0..k)
            .map(|i| other.mean[i] + (other.shift[i] - self.shift[i]) - self.mean[i])
            .collect();
        for i in 0..k {
            for j in 0..k {
                self.comoment[i * k + j] +=
                    other.comoment[i * k + j] + factor * delta[i] * delta[j];
            }
        }
        for (m, dm) in self.mean.iter_mut().zip(&delta) {
            *m += dm * other.weight / total;
        }
        self.weight = total;
        self.samples += other.samples;
        self.clock = match (self.clock, other.clock) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Ages the state to event time `now_ms` with the given half-life: weight and
    /// co-moments are multiplied by `0.5^(Δt / half_life)`. Time never runs backwards: an
    /// older `now_ms` does nothing.
    pub fn decay_to(&mut self, now_ms: i64, half_life_ms: f64) {
        match self.clock {
            None => self.clock = Some(now_ms),
            Some(t) if now_ms > t => {
                let f = 0.5f64.powf((now_ms - t) as f64 / half_life_ms);
                self.scale(f);
                self.clock = Some(now_ms);
            }
            Some(_) => {}
        }
    }

    /// Multiplies weight and co-moments by `f`.
    pub fn scale(&mut self, f: f64) {
        self.weight *= f;
        for c in &mut self.comoment {
            *c *= f;
        }
    }

    /// Solves for the coefficients with ridge factor `ridge` (0 for least squares). A
    /// singular system gets a larger ridge, reported in the solution, rather than failing.
    pub fn solve(&self, ridge: f64) -> Result<Solution, SolveError> {
        let need = self.d as u64 + 1;
        if self.samples < need {
            return Err(SolveError::TooFewSamples {
                have: self.samples,
                need,
            });
        }
        let d = self.d;
        let k = d + 1;
        let sxy: Vec<f64> = (0..d).map(|i| self.comoment[i * k + d]).collect();
        let mut rho = ridge.max(0.0);
        let mut raised = false;
        loop {
            let mut a: Vec<f64> = (0..d * d)
                .map(|idx| {
                    let (i, j) = (idx / d, idx % d);
                    let c = self.comoment[i * k + j];
                    if i == j {
                        c + rho * c.abs().max(f64::MIN_POSITIVE)
                    } else {
                        c
                    }
                })
                .collect();
            if let Some(beta) = cholesky_solve(&mut a, &sxy, d) {
                let means = self.means();
                let intercept = means[d] - (0..d).map(|i| means[i] * beta[i]).sum::<f64>();
                return Ok(Solution {
                    coefficients: beta,
                    intercept,
                    ridge: rho,
                    raised,
                });
            }
            // Singular (a constant or collinear feature): regularise more and try again.
            rho = if rho == 0.0 { 1e-12 } else { rho * 10.0 };
            raised = true;
            if rho > 1e12 {
                // Every feature constant: predict the mean.
                return Ok(Solution {
                    coefficients: vec![0.0; d],
                    intercept: self.shift[d] + self.mean[d],
                    ridge: rho,
                    raised,
                });
            }
        }
    }
}

/// Solves `A x = b` for symmetric positive definite `A` (`n × n`, row-major, overwritten).
/// `None` when `A` is not positive definite.
fn cholesky_solve(a: &mut [f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    // A = L Lᵀ, L stored in the lower triangle of `a`.
    for j in 0..n {
        let mut diag = a[j * n + j];
        for k in 0..j {
            diag -= a[j * n + k] * a[j * n + k];
        }
        // Relative tolerance: a pivot that cancelled to (near) zero means singular.
        let floor = 1e-13 * a[j * n + j].abs().max(f64::MIN_POSITIVE);
        if diag.is_nan() || diag <= floor || diag.is_infinite() {
            return None;
        }
        let l = diag.sqrt();
        a[j * n + j] = l;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / l;
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| a[i * n + k] * y[k]).sum();
        y[i] = (b[i] - s) / a[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| a[k * n + i] * x[k]).sum();
        x[i] = (y[i] - s) / a[i * n + i];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_exact_line() {
        let mut s = RegressionState::new(2);
        for i in 0..50 {
            let (a, b) = (i as f64, ((i * 7) % 11) as f64);
            s.update(&[a, b], 3.0 + 2.0 * a - 0.5 * b, 1.0);
        }
        let sol = s.solve(0.0).expect("solves");
        assert!((sol.intercept - 3.0).abs() < 1e-9, "{sol:?}");
        assert!((sol.coefficients[0] - 2.0).abs() < 1e-12);
        assert!((sol.coefficients[1] + 0.5).abs() < 1e-12);
        assert!(!sol.raised);
    }

    #[test]
    fn too_few_samples_and_singular_systems() {
        let mut s = RegressionState::new(2);
        s.update(&[1.0, 2.0], 3.0, 1.0);
        s.update(&[2.0, 4.0], 5.0, 1.0);
        assert_eq!(
            s.solve(0.0),
            Err(SolveError::TooFewSamples { have: 2, need: 3 })
        );
        // The second feature is twice the first: collinear. The ridge is raised instead.
        s.update(&[3.0, 6.0], 7.0, 1.0);
        let sol = s.solve(0.0).expect("solves with a raised ridge");
        assert!(sol.raised && sol.ridge > 0.0, "{sol:?}");
        let prediction = sol.intercept + sol.coefficients[0] * 4.0 + sol.coefficients[1] * 8.0;
        assert!((prediction - 9.0).abs() < 1e-6, "{prediction}");
    }

    #[test]
    fn a_half_life_halves_the_weight() {
        let mut s = RegressionState::new(1);
        s.decay_to(0, 1000.0);
        s.update(&[1.0], 1.0, 1.0);
        s.decay_to(1000, 1000.0);
        assert!((s.weight() - 0.5).abs() < 1e-12);
        s.decay_to(500, 1000.0); // earlier: nothing happens
        assert!((s.weight() - 0.5).abs() < 1e-12);
        s.decay_to(3000, 1000.0);
        assert!((s.weight() - 0.125).abs() < 1e-12);
    }
}
