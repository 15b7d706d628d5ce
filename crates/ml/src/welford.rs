//! Online mean and variance (Welford), weighted and mergeable (Chan et al.): the base of
//! online standardisation.
//!
//! Values are kept relative to a shift (the first value seen), the "shifted data" form of
//! the algorithm: for data far from zero (timestamps, values offset by 1e9) the running
//! mean's rounding would otherwise pollute every deviation.

/// Weighted running mean and variance of one variable.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Welford {
    weight: f64,
    shift: f64,
    /// Mean of `x − shift`.
    mean: f64,
    m2: f64,
}

impl Welford {
    /// Adds `x` with weight `w`.
    pub fn update(&mut self, x: f64, w: f64) {
        let total = self.weight + w;
        if total <= 0.0 {
            return;
        }
        if self.weight == 0.0 {
            self.shift = x;
        }
        let x = x - self.shift;
        let delta = x - self.mean;
        self.mean += delta * w / total;
        self.m2 += w * delta * (x - self.mean);
        self.weight = total;
    }

    /// Combines another summary: equal to one pass over both inputs.
    pub fn merge(&mut self, other: &Welford) {
        let total = self.weight + other.weight;
        if total <= 0.0 {
            return;
        }
        if self.weight == 0.0 {
            *self = *other;
            return;
        }
        // The other's mean, relative to our shift.
        let other_mean = other.mean + (other.shift - self.shift);
        let delta = other_mean - self.mean;
        self.m2 += other.m2 + delta * delta * self.weight * other.weight / total;
        self.mean += delta * other.weight / total;
        self.weight = total;
    }

    /// Total weight.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Mean (0 before any value).
    pub fn mean(&self) -> f64 {
        self.shift + self.mean
    }

    /// Population variance (divided by the weight).
    pub fn variance(&self) -> f64 {
        if self.weight > 0.0 {
            self.m2 / self.weight
        } else {
            0.0
        }
    }

    /// Sample variance (divided by weight − 1, for unit weights).
    pub fn sample_variance(&self) -> f64 {
        if self.weight > 1.0 {
            self.m2 / (self.weight - 1.0)
        } else {
            0.0
        }
    }

    /// `(x − mean) / standard deviation`, or 0 when the variance is 0.
    pub fn standardize(&self, x: f64) -> f64 {
        let sd = self.variance().sqrt();
        if sd > 0.0 {
            (x - self.shift - self.mean) / sd
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_equals_one_pass() {
        let xs: Vec<f64> = (0..1000)
            .map(|i| ((i * 37) % 101) as f64 * 0.37 - 5.0)
            .collect();
        let mut whole = Welford::default();
        xs.iter().for_each(|x| whole.update(*x, 1.0));
        let mut parts = [Welford::default(); 4];
        for (i, x) in xs.iter().enumerate() {
            parts[i % 4].update(*x, 1.0);
        }
        let mut merged = Welford::default();
        parts.iter().for_each(|p| merged.merge(p));
        assert!((merged.mean() - whole.mean()).abs() <= 1e-12 * whole.mean().abs());
        assert!((merged.variance() - whole.variance()).abs() <= 1e-12 * whole.variance());
    }
}
