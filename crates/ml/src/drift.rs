//! Page-Hinkley change detection on a stream of residuals.
//!
//! It accumulates `m_t = Σ (x_i − x̄_i − δ)` (x̄ the running mean, δ the tolerated change)
//! and raises an alarm when `m_t − min m` exceeds the threshold λ: the residuals have drifted
//! upwards. Run it on absolute residuals to catch a model getting worse in either direction.
//! After an alarm it starts afresh.

/// A Page-Hinkley detector.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PageHinkley {
    threshold: f64,
    tolerance: f64,
    n: u64,
    mean: f64,
    cumulative: f64,
    minimum: f64,
}

impl PageHinkley {
    /// A detector with alarm threshold λ and tolerance δ.
    pub fn new(threshold: f64, tolerance: f64) -> Self {
        Self {
            threshold,
            tolerance,
            n: 0,
            mean: 0.0,
            cumulative: 0.0,
            minimum: 0.0,
        }
    }

    /// Feeds one value; true when it raises an alarm.
    pub fn update(&mut self, x: f64) -> bool {
        self.n += 1;
        self.mean += (x - self.mean) / self.n as f64;
        self.cumulative += x - self.mean - self.tolerance;
        self.minimum = self.minimum.min(self.cumulative);
        if self.cumulative - self.minimum > self.threshold {
            *self = Self::new(self.threshold, self.tolerance);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_on_a_stable_stream_and_alarms_soon_after_a_shift() {
        let mut ph = PageHinkley::new(5.0, 0.05);
        // Stable: values alternate around 1.0.
        for i in 0..2000 {
            let x = 1.0 + if i % 2 == 0 { 0.2 } else { -0.2 };
            assert!(!ph.update(x), "false alarm at {i}");
        }
        // Shift up by 1.0: the cumulative sum grows by about (1.0 − mean drift − δ) per value,
        // so the alarm must come within a few dozen values.
        let at = (0..200).position(|i| ph.update(2.0 + if i % 2 == 0 { 0.2 } else { -0.2 }));
        assert!(matches!(at, Some(i) if i < 30), "alarm at {at:?}");
    }
}
