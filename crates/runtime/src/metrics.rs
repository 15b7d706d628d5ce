//! What a running pipeline measures beyond its totals: per source and sink, per transform,
//! two latency histograms and each model's quality. The runner keeps a [`Detail`] of its
//! own (no lock per event) and publishes a copy to [`crate::Stats`] at most once a second;
//! the daemon turns it into Prometheus metrics.

use std::collections::BTreeMap;

/// Upper bounds, in seconds, of the latency histograms' buckets (`+Inf` is implied): fine
/// below 100 ms, where a micro-batch engine's latency lives (1, 2, 3, 5 and 10 ms are told
/// apart, and 20 ms, the p99 target of docs/performance.md), coarse above for event-time
/// latencies of late data.
pub const LATENCY_BUCKETS: [f64; 22] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0, 3600.0,
];

/// A histogram with [`LATENCY_BUCKETS`].
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last counts those above every bound.
    pub counts: [u64; LATENCY_BUCKETS.len() + 1],
    /// Sum of the observed values.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: [0; LATENCY_BUCKETS.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    /// Records `n` observations of `value` seconds.
    pub fn observe(&mut self, value: f64, n: u64) {
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[bucket] += n;
        self.sum += value * n as f64;
        self.count += n;
    }

    /// Cumulative counts per bound (`le`), as Prometheus exposes them, ending with `+Inf`.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts)
            .map(|(b, c)| {
                total += c;
                (b, total)
            })
            .collect()
    }
}

/// One source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceMetrics {
    /// Its topic.
    pub topic: String,
    /// Messages read.
    pub events: u64,
    /// Payload bytes read.
    pub bytes: u64,
    /// Micro-batches read.
    pub batches: u64,
    /// Messages that failed to decode.
    pub decode_errors: u64,
    /// Records written to its dead-letter topic (bad records and late rows).
    pub dead_lettered: u64,
    /// Consumer lag per partition (when measured).
    pub lag: BTreeMap<i32, i64>,
}

/// One sink.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkMetrics {
    /// Its topic.
    pub topic: String,
    /// Records written (acknowledged).
    pub records: u64,
    /// Payload bytes written.
    pub bytes: u64,
    /// Records larger than its `message.max.bytes`, dead-lettered instead.
    pub oversize: u64,
}

/// A model's quality over all its keys.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ModelSummary {
    /// `regression` or `clustering`.
    pub kind: &'static str,
    /// Keys (models) learnt.
    pub keys: u64,
    /// Rows learnt.
    pub samples: u64,
    /// Rows skipped: a null or non-finite feature, or (a task of a global clustering) past
    /// its wait for the seed.
    pub skipped: u64,
    /// Prequential mean absolute error, cumulative (regression).
    pub mae: Option<f64>,
    /// Prequential root mean squared error, cumulative (regression).
    pub rmse: Option<f64>,
    /// Prequential R² against each key's mean, cumulative (regression).
    pub r2: Option<f64>,
    /// The same over each key's last 1,000 predictions.
    pub rolling_mae: Option<f64>,
    /// The same over each key's last 1,000 predictions.
    pub rolling_rmse: Option<f64>,
    /// The same over each key's last 1,000 predictions.
    pub rolling_r2: Option<f64>,
    /// Drift alarms (regression with `drift`).
    pub drift_alarms: u64,
    /// Coefficient per declared feature (mean over keys weighted by samples).
    pub coefficients: BTreeMap<String, f64>,
    /// Intercept (mean over keys weighted by samples).
    pub intercept: Option<f64>,
    /// Total inertia of seeded keys (clustering).
    pub inertia: Option<f64>,
    /// Weight of each cluster, summed over keys (clustering).
    pub cluster_sizes: Vec<f64>,
    /// Per key, for models that opt in (`metrics: { per_key: N }`): the N keys with the
    /// most samples.
    pub per_key: BTreeMap<String, KeyQuality>,
}

/// One key's quality, for models with per-key metrics.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct KeyQuality {
    /// Rows learnt.
    pub samples: u64,
    /// Prequential MAE, cumulative (regression).
    pub mae: Option<f64>,
    /// Prequential RMSE, cumulative (regression).
    pub rmse: Option<f64>,
    /// Prequential R², cumulative (regression).
    pub r2: Option<f64>,
    /// Inertia (clustering).
    pub inertia: Option<f64>,
}

/// The `cap` entries with the most samples (ties by key), as a map by key.
pub fn top_keys(
    mut all: Vec<(String, KeyQuality)>,
    cap: Option<usize>,
) -> BTreeMap<String, KeyQuality> {
    let Some(cap) = cap else {
        return BTreeMap::new();
    };
    all.sort_by(|a, b| b.1.samples.cmp(&a.1.samples).then_with(|| a.0.cmp(&b.0)));
    all.truncate(cap);
    all.into_iter().collect()
}

/// Everything measured per part of a pipeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detail {
    /// By source name.
    pub sources: BTreeMap<String, SourceMetrics>,
    /// By sink name.
    pub sinks: BTreeMap<String, SinkMetrics>,
    /// Late rows by transform name.
    pub late: BTreeMap<String, u64>,
    /// Rows a repartition's reader dropped as sent again (a writer replayed after a
    /// restart), by the reader's name.
    pub replayed: BTreeMap<String, u64>,
    /// Seconds from reading a micro-batch to Kafka acknowledging its outputs, per record.
    pub processing: Histogram,
    /// Seconds from a record's event time to Kafka acknowledging the outputs of its
    /// micro-batch, per record with an event time.
    pub end_to_end: Histogram,
    /// By model name.
    pub models: BTreeMap<String, ModelSummary>,
}

impl Histogram {
    fn add(&mut self, other: &Histogram) {
        for (c, o) in self.counts.iter_mut().zip(other.counts) {
            *c += o;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

impl Detail {
    /// The measurements of a pipeline from those of its tasks. Counts, sizes and histograms
    /// add up; lags are per partition. A model's quality over several tasks (which learn
    /// disjoint keys) is the mean of theirs weighted by rows learnt, its RMSE the root of
    /// the weighted mean square: exact for MAE and RMSE, close for R². One task's
    /// measurements are returned as they are.
    pub fn merged<'a>(mut details: impl Iterator<Item = &'a Detail>) -> Detail {
        let Some(first) = details.next() else {
            return Detail::default();
        };
        let rest: Vec<&Detail> = details.collect();
        if rest.is_empty() {
            return first.clone();
        }
        let mut out = first.clone();
        let mut models: BTreeMap<String, Vec<&ModelSummary>> = BTreeMap::new();
        for (name, m) in &first.models {
            models.entry(name.clone()).or_default().push(m);
        }
        for d in rest {
            for (name, s) in &d.sources {
                let o = out.sources.entry(name.clone()).or_default();
                o.topic.clone_from(&s.topic);
                o.events += s.events;
                o.bytes += s.bytes;
                o.batches += s.batches;
                o.decode_errors += s.decode_errors;
                o.dead_lettered += s.dead_lettered;
                o.lag.extend(s.lag.iter().map(|(p, l)| (*p, *l)));
            }
            for (name, s) in &d.sinks {
                let o = out.sinks.entry(name.clone()).or_default();
                o.topic.clone_from(&s.topic);
                o.records += s.records;
                o.bytes += s.bytes;
            }
            for (name, n) in &d.late {
                *out.late.entry(name.clone()).or_default() += n;
            }
            for (name, n) in &d.replayed {
                *out.replayed.entry(name.clone()).or_default() += n;
            }
            out.processing.add(&d.processing);
            out.end_to_end.add(&d.end_to_end);
            for (name, m) in &d.models {
                models.entry(name.clone()).or_default().push(m);
            }
        }
        out.models = models
            .into_iter()
            .map(|(name, parts)| (name, ModelSummary::merged(&parts)))
            .collect();
        out
    }
}

impl ModelSummary {
    /// The quality of one model learnt by several tasks (see [`Detail::merged`]).
    fn merged(parts: &[&ModelSummary]) -> ModelSummary {
        let mut out = ModelSummary {
            kind: parts.first().map_or("", |p| p.kind),
            ..ModelSummary::default()
        };
        let total: f64 = parts.iter().map(|p| p.samples as f64).sum();
        let mean = |f: &dyn Fn(&ModelSummary) -> Option<f64>| -> Option<f64> {
            let (mut sum, mut weight) = (0.0, 0.0);
            for p in parts {
                if let Some(v) = f(p) {
                    sum += v * p.samples as f64;
                    weight += p.samples as f64;
                }
            }
            (weight > 0.0).then(|| sum / weight)
        };
        let root_mean_square = |f: &dyn Fn(&ModelSummary) -> Option<f64>| {
            mean(&|p| f(p).map(|v| v * v)).map(f64::sqrt)
        };
        out.mae = mean(&|p| p.mae);
        out.rmse = root_mean_square(&|p| p.rmse);
        out.r2 = mean(&|p| p.r2);
        out.rolling_mae = mean(&|p| p.rolling_mae);
        out.rolling_rmse = root_mean_square(&|p| p.rolling_rmse);
        out.rolling_r2 = mean(&|p| p.rolling_r2);
        out.intercept = mean(&|p| p.intercept);
        let mut cap = 0;
        let mut per_key = Vec::new();
        for p in parts {
            out.keys += p.keys;
            out.samples += p.samples;
            out.skipped += p.skipped;
            out.drift_alarms += p.drift_alarms;
            if let Some(i) = p.inertia {
                *out.inertia.get_or_insert(0.0) += i;
            }
            if out.cluster_sizes.len() < p.cluster_sizes.len() {
                out.cluster_sizes.resize(p.cluster_sizes.len(), 0.0);
            }
            for (o, s) in out.cluster_sizes.iter_mut().zip(&p.cluster_sizes) {
                *o += s;
            }
            for (name, c) in &p.coefficients {
                *out.coefficients.entry(name.clone()).or_default() +=
                    c * p.samples as f64 / total.max(1.0);
            }
            cap = cap.max(p.per_key.len());
            per_key.extend(p.per_key.iter().map(|(k, q)| (k.clone(), q.clone())));
        }
        out.per_key = top_keys(per_key, (cap > 0).then_some(cap));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_keys_keeps_those_with_most_samples() {
        let q = |samples| KeyQuality {
            samples,
            ..Default::default()
        };
        let all = vec![
            ("a".to_string(), q(5)),
            ("b".to_string(), q(9)),
            ("c".to_string(), q(9)),
            ("d".to_string(), q(1)),
        ];
        let top = top_keys(all.clone(), Some(2));
        assert_eq!(top.keys().collect::<Vec<_>>(), vec!["b", "c"]);
        assert!(top_keys(all, None).is_empty());
    }

    #[test]
    fn tasks_measurements_add_up_and_model_errors_weigh_by_rows() {
        let model = |samples, mae: f64, rmse: f64| ModelSummary {
            kind: "regression",
            keys: 2,
            samples,
            mae: Some(mae),
            rmse: Some(rmse),
            ..Default::default()
        };
        let task = |events, samples, mae, rmse| {
            let mut d = Detail::default();
            d.sources.insert(
                "readings".into(),
                SourceMetrics {
                    events,
                    ..Default::default()
                },
            );
            d.processing.observe(0.002, events);
            d.models.insert("m".into(), model(samples, mae, rmse));
            d
        };
        let a = task(10, 100, 1.0, 2.0);
        let b = task(30, 300, 3.0, 4.0);
        let merged = Detail::merged([&a, &b].into_iter());
        assert_eq!(merged.sources["readings"].events, 40);
        assert_eq!(merged.processing.count, 40);
        let m = &merged.models["m"];
        assert_eq!((m.keys, m.samples), (4, 400));
        // MAE: (100 * 1 + 300 * 3) / 400; RMSE: sqrt((100 * 4 + 300 * 16) / 400).
        assert!((m.mae.expect("mae") - 2.5).abs() < 1e-12);
        assert!((m.rmse.expect("rmse") - 13.0_f64.sqrt()).abs() < 1e-12);
        // One task's measurements are its own, bit for bit.
        assert_eq!(Detail::merged([&a].into_iter()), a);
    }

    #[test]
    fn histogram_buckets_are_upper_bounds_and_cumulate() {
        let mut h = Histogram::default();
        h.observe(0.001, 2); // on a bound: that bucket
        h.observe(0.3, 1);
        h.observe(1e9, 1); // above every bound
        let c = h.cumulative();
        assert_eq!(c[0], (0.0005, 0));
        assert_eq!(c[1], (0.001, 2));
        assert_eq!(c[13], (0.25, 2));
        assert_eq!(c[14], (0.5, 3));
        assert_eq!(c[LATENCY_BUCKETS.len() - 1].1, 3);
        assert_eq!(c[LATENCY_BUCKETS.len()], (f64::INFINITY, 4));
        assert_eq!(h.count, 4);
        assert!((h.sum - (0.002 + 0.3 + 1e9)).abs() < 1e-3);
    }
}
