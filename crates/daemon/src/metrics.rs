//! The metrics catalog: every metric the daemon exports, gathered at each scrape from the
//! pipelines' published measurements and encoded by the `prometheus` crate.
//!
//! Names follow Prometheus conventions (base units, `_total` for counters, `_seconds`).
//! Labels are bounded: `pipeline` (deployed pipelines), `operator` (source, sink or
//! transform names of the spec), `topic` (topics named in the spec), `partition` (the
//! topic's partitions), `model` and `feature` (names in the spec), `cluster` (0 to k-1),
//! `kind` and `window` (fixed sets). An event field becomes a label only where a pipeline
//! opts in with a cap: a keyed model with `metrics: { per_key: N }` (N at most 100) gets
//! `model_key_*` series labelled `key` for its N keys with the most samples. Otherwise keyed
//! models are exported in aggregate over their keys (per-key numbers are in their snapshot
//! topics).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use crate::supervisor::{Phase, Supervisor};

/// One catalog entry: name, type, help, labels.
#[derive(Debug)]
pub struct Def {
    /// Metric name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricType,
    /// What it measures.
    pub help: &'static str,
    /// Its labels.
    pub labels: &'static [&'static str],
}

const fn def(
    name: &'static str,
    kind: MetricType,
    help: &'static str,
    labels: &'static [&'static str],
) -> Def {
    Def {
        name,
        kind,
        help,
        labels,
    }
}

use MetricType::{COUNTER, GAUGE, HISTOGRAM};

const P: &[&str] = &["pipeline"];
const PIPELINE_OP_TOPIC: &[&str] = &["pipeline", "operator", "topic"];
const MODEL: &[&str] = &["pipeline", "model"];

/// 1 when the pipeline is processing, 0 otherwise.
pub const UP: Def = def(
    "pipeline_up",
    GAUGE,
    "1 when the pipeline is processing.",
    P,
);
/// Deployed version.
pub const VERSION: Def = def("pipeline_version", GAUGE, "Deployed version number.", P);
/// Restarts after failures.
pub const RESTARTS: Def = def(
    "pipeline_restarts_total",
    COUNTER,
    "Restarts after failures.",
    P,
);
/// Checkpoints written.
pub const CHECKPOINTS: Def = def(
    "pipeline_checkpoints_total",
    COUNTER,
    "Checkpoints written.",
    P,
);
/// Tasks running in this instance.
pub const TASKS: Def = def(
    "pipeline_tasks",
    GAUGE,
    "Tasks this instance runs (one per owned input partition when the plan allows).",
    P,
);
/// Rebalances seen.
pub const REBALANCES: Def = def(
    "pipeline_rebalances_total",
    COUNTER,
    "Partition assignments and revocations by the consumer group.",
    P,
);
/// Bytes of state written to changelogs.
pub const STATE_BYTES: Def = def(
    "pipeline_state_bytes_total",
    COUNTER,
    "Bytes of state written to changelog topics.",
    P,
);
/// Bytes of state restored.
pub const RESTORED_BYTES: Def = def(
    "pipeline_restored_bytes_total",
    COUNTER,
    "Bytes of state read back from changelog topics.",
    P,
);
/// Time spent restoring.
pub const RESTORE_SECONDS: Def = def(
    "pipeline_restore_seconds_total",
    COUNTER,
    "Time spent restoring state from changelog topics.",
    P,
);
/// Messages read per source.
pub const EVENTS_IN: Def = def(
    "pipeline_events_in_total",
    COUNTER,
    "Messages read, per source.",
    PIPELINE_OP_TOPIC,
);
/// Bytes read per source.
pub const BYTES_IN: Def = def(
    "pipeline_bytes_in_total",
    COUNTER,
    "Message payload bytes read, per source.",
    PIPELINE_OP_TOPIC,
);
/// Micro-batches per source.
pub const BATCHES: Def = def(
    "pipeline_batches_total",
    COUNTER,
    "Micro-batches read, per source.",
    PIPELINE_OP_TOPIC,
);
/// Records written per sink.
pub const EVENTS_OUT: Def = def(
    "pipeline_events_out_total",
    COUNTER,
    "Records written and acknowledged, per sink.",
    PIPELINE_OP_TOPIC,
);
/// Bytes written per sink.
pub const BYTES_OUT: Def = def(
    "pipeline_bytes_out_total",
    COUNTER,
    "Record payload bytes written, per sink.",
    PIPELINE_OP_TOPIC,
);
/// Errors by kind.
pub const ERRORS: Def = def(
    "pipeline_errors_total",
    COUNTER,
    "Errors by kind: decode (bad records), kafka (transient, retried), failure (the pipeline stopped and restarts).",
    &["pipeline", "kind"],
);
/// Dead letters per source.
pub const DEAD_LETTERED: Def = def(
    "pipeline_dead_lettered_total",
    COUNTER,
    "Records written to the dead-letter topic, per source.",
    PIPELINE_OP_TOPIC,
);
/// Rows a repartition's reader dropped as sent again.
pub const REPLAYED: Def = def(
    "pipeline_repartition_replayed_rows_total",
    COUNTER,
    "Rows a repartition's reader dropped because a writer sent them again after a restart (each row is counted once), per repartition.",
    &["pipeline", "repartition"],
);
/// Late events per windowed transform.
pub const LATE: Def = def(
    "pipeline_late_events_total",
    COUNTER,
    "Events too late for their windows, per windowed transform.",
    &["pipeline", "operator"],
);
/// Processing latency.
pub const PROCESSING: Def = def(
    "pipeline_processing_latency_seconds",
    HISTOGRAM,
    "Seconds from reading a record to Kafka acknowledging the outputs of its micro-batch.",
    P,
);
/// End-to-end latency.
pub const END_TO_END: Def = def(
    "pipeline_end_to_end_latency_seconds",
    HISTOGRAM,
    "Seconds from a record's event time to Kafka acknowledging the outputs of its micro-batch.",
    P,
);
/// Watermark lag.
pub const WATERMARK_LAG: Def = def(
    "pipeline_watermark_lag_seconds",
    GAUGE,
    "Wall-clock time minus the smallest window watermark.",
    P,
);
/// Consumer lag.
pub const CONSUMER_LAG: Def = def(
    "pipeline_consumer_lag_messages",
    GAUGE,
    "Messages between the consumer's position and the end of the partition.",
    &["pipeline", "operator", "topic", "partition"],
);
/// Model keys.
pub const MODEL_KEYS: Def = def(
    "model_keys",
    GAUGE,
    "Keys with their own model state.",
    MODEL,
);
/// Model samples.
pub const MODEL_SAMPLES: Def = def(
    "model_samples",
    GAUGE,
    "Rows learnt by the model's current state (over all keys; drops on a drift reset).",
    MODEL,
);
/// Skipped rows.
pub const MODEL_SKIPPED: Def = def(
    "model_skipped_rows_total",
    COUNTER,
    "Rows skipped: a null or non-finite feature, or past a global clustering task's wait for the seed.",
    MODEL,
);
/// MAE.
pub const MODEL_MAE: Def = def(
    "model_mae",
    GAUGE,
    "Prequential mean absolute error, cumulative or over each key's last 1,000 predictions.",
    &["pipeline", "model", "window"],
);
/// RMSE.
pub const MODEL_RMSE: Def = def(
    "model_rmse",
    GAUGE,
    "Prequential root mean squared error, cumulative or rolling.",
    &["pipeline", "model", "window"],
);
/// R².
pub const MODEL_R2: Def = def(
    "model_r2",
    GAUGE,
    "Prequential R² against each key's mean, cumulative or rolling.",
    &["pipeline", "model", "window"],
);
/// Coefficients.
pub const MODEL_COEFFICIENT: Def = def(
    "model_coefficient",
    GAUGE,
    "Regression coefficient of a declared feature (keyed models: mean over keys weighted by samples).",
    &["pipeline", "model", "feature"],
);
/// Intercept.
pub const MODEL_INTERCEPT: Def = def(
    "model_intercept",
    GAUGE,
    "Regression intercept (keyed models: mean over keys weighted by samples).",
    MODEL,
);
/// Drift alarms.
pub const MODEL_DRIFT: Def = def(
    "model_drift_alarms_total",
    COUNTER,
    "Page-Hinkley drift alarms on the residuals.",
    MODEL,
);
/// Cluster sizes.
pub const MODEL_CLUSTER_SIZE: Def = def(
    "model_cluster_size",
    GAUGE,
    "Decayed weight of each cluster, summed over keys.",
    &["pipeline", "model", "cluster"],
);
/// Inertia.
pub const MODEL_INERTIA: Def = def(
    "model_inertia",
    GAUGE,
    "Sum of squared distances of the clusters' points to their centres, over keys.",
    MODEL,
);

const KEYED: &[&str] = &["pipeline", "model", "key"];
/// Per-key samples (opt-in).
pub const KEY_SAMPLES: Def = def(
    "model_key_samples",
    GAUGE,
    "Rows learnt by one key's model (models with metrics.per_key; its top keys by samples).",
    KEYED,
);
/// Per-key MAE (opt-in).
pub const KEY_MAE: Def = def(
    "model_key_mae",
    GAUGE,
    "Prequential mean absolute error of one key's model, cumulative (opt-in, top keys).",
    KEYED,
);
/// Per-key RMSE (opt-in).
pub const KEY_RMSE: Def = def(
    "model_key_rmse",
    GAUGE,
    "Prequential root mean squared error of one key's model, cumulative (opt-in, top keys).",
    KEYED,
);
/// Per-key R² (opt-in).
pub const KEY_R2: Def = def(
    "model_key_r2",
    GAUGE,
    "Prequential R² of one key's model, cumulative (opt-in, top keys).",
    KEYED,
);
/// Per-key inertia (opt-in).
pub const KEY_INERTIA: Def = def(
    "model_key_inertia",
    GAUGE,
    "Inertia of one key's clusters (opt-in, top keys).",
    KEYED,
);

/// The whole catalog, in exposition order.
pub const CATALOG: &[&Def] = &[
    &UP,
    &VERSION,
    &RESTARTS,
    &CHECKPOINTS,
    &TASKS,
    &REBALANCES,
    &STATE_BYTES,
    &RESTORED_BYTES,
    &RESTORE_SECONDS,
    &EVENTS_IN,
    &BYTES_IN,
    &BATCHES,
    &EVENTS_OUT,
    &BYTES_OUT,
    &ERRORS,
    &DEAD_LETTERED,
    &LATE,
    &REPLAYED,
    &PROCESSING,
    &END_TO_END,
    &WATERMARK_LAG,
    &CONSUMER_LAG,
    &MODEL_KEYS,
    &MODEL_SAMPLES,
    &MODEL_SKIPPED,
    &MODEL_MAE,
    &MODEL_RMSE,
    &MODEL_R2,
    &MODEL_COEFFICIENT,
    &MODEL_INTERCEPT,
    &MODEL_DRIFT,
    &MODEL_CLUSTER_SIZE,
    &MODEL_INERTIA,
    &KEY_SAMPLES,
    &KEY_MAE,
    &KEY_RMSE,
    &KEY_R2,
    &KEY_INERTIA,
];

/// Metric families being filled, one per catalog entry.
struct Families(BTreeMap<&'static str, MetricFamily>);

fn labels(def: &Def, values: &[&str]) -> Vec<LabelPair> {
    def.labels
        .iter()
        .zip(values)
        .map(|(n, v)| {
            let mut l = LabelPair::default();
            l.set_name((*n).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

impl Families {
    fn new() -> Self {
        Self(
            CATALOG
                .iter()
                .map(|d| {
                    let mut f = MetricFamily::default();
                    f.set_name(d.name.to_string());
                    f.set_help(d.help.to_string());
                    f.set_field_type(d.kind);
                    (d.name, f)
                })
                .collect(),
        )
    }

    fn push(&mut self, def: &Def, values: &[&str], metric: Metric) {
        let mut m = metric;
        m.set_label(labels(def, values));
        if let Some(f) = self.0.get_mut(def.name) {
            f.mut_metric().push(m);
        }
    }

    fn value(&mut self, def: &Def, values: &[&str], v: f64) {
        let mut m = Metric::default();
        if def.kind == COUNTER {
            let mut c = Counter::default();
            c.set_value(v);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(v);
            m.set_gauge(g);
        }
        self.push(def, values, m);
    }

    fn histogram(&mut self, def: &Def, values: &[&str], h: &runtime::metrics::Histogram) {
        let mut p = Histogram::default();
        p.set_sample_count(h.count);
        p.set_sample_sum(h.sum);
        p.set_bucket(
            h.cumulative()
                .into_iter()
                .filter(|(b, _)| b.is_finite())
                .map(|(b, c)| {
                    let mut bucket = Bucket::default();
                    bucket.set_upper_bound(b);
                    bucket.set_cumulative_count(c);
                    bucket
                })
                .collect(),
        );
        let mut m = Metric::default();
        m.set_histogram(p);
        self.push(def, values, m);
    }
}

/// The metrics text of every pipeline.
pub fn render(supervisor: &Supervisor) -> Result<String, prometheus::Error> {
    let mut f = Families::new();
    for (name, version, live) in supervisor.all() {
        let p = name.as_str();
        let s = &live.stats;
        let status = live.status();
        f.value(
            &UP,
            &[p],
            f64::from(u8::from(status.phase == Phase::Running)),
        );
        f.value(&VERSION, &[p], f64::from(version));
        f.value(&RESTARTS, &[p], f64::from(status.restarts));
        f.value(
            &CHECKPOINTS,
            &[p],
            s.checkpoints.load(Ordering::Relaxed) as f64,
        );
        f.value(&TASKS, &[p], s.running_tasks() as f64);
        f.value(
            &REBALANCES,
            &[p],
            s.rebalances.load(Ordering::Relaxed) as f64,
        );
        f.value(
            &STATE_BYTES,
            &[p],
            s.state_bytes.load(Ordering::Relaxed) as f64,
        );
        f.value(
            &RESTORED_BYTES,
            &[p],
            s.restored_bytes.load(Ordering::Relaxed) as f64,
        );
        f.value(
            &RESTORE_SECONDS,
            &[p],
            s.restore_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
        f.value(
            &ERRORS,
            &[p, "decode"],
            s.errors.load(Ordering::Relaxed) as f64,
        );
        f.value(
            &ERRORS,
            &[p, "kafka"],
            s.kafka_errors.load(Ordering::Relaxed) as f64,
        );
        f.value(&ERRORS, &[p, "failure"], f64::from(status.restarts));
        let wm = s.watermark_ms.load(Ordering::Relaxed);
        if wm != i64::MIN && wm != i64::MAX {
            let now = chrono::Utc::now().timestamp_millis();
            f.value(&WATERMARK_LAG, &[p], (now - wm) as f64 / 1000.0);
        }
        let Ok(d) = s.detail.lock().map(|d| d.clone()) else {
            continue;
        };
        for (op, m) in &d.sources {
            let l = [p, op.as_str(), m.topic.as_str()];
            f.value(&EVENTS_IN, &l, m.events as f64);
            f.value(&BYTES_IN, &l, m.bytes as f64);
            f.value(&BATCHES, &l, m.batches as f64);
            f.value(&DEAD_LETTERED, &l, m.dead_lettered as f64);
            for (partition, lag) in &m.lag {
                if *lag >= 0 {
                    let part = partition.to_string();
                    f.value(
                        &CONSUMER_LAG,
                        &[p, op.as_str(), m.topic.as_str(), part.as_str()],
                        *lag as f64,
                    );
                }
            }
        }
        for (op, m) in &d.sinks {
            let l = [p, op.as_str(), m.topic.as_str()];
            f.value(&EVENTS_OUT, &l, m.records as f64);
            f.value(&BYTES_OUT, &l, m.bytes as f64);
        }
        for (op, n) in &d.late {
            f.value(&LATE, &[p, op.as_str()], *n as f64);
        }
        for (op, n) in &d.replayed {
            f.value(&REPLAYED, &[p, op.as_str()], *n as f64);
        }
        f.histogram(&PROCESSING, &[p], &d.processing);
        f.histogram(&END_TO_END, &[p], &d.end_to_end);
        for (model, m) in &d.models {
            let l = [p, model.as_str()];
            f.value(&MODEL_KEYS, &l, m.keys as f64);
            f.value(&MODEL_SAMPLES, &l, m.samples as f64);
            f.value(&MODEL_SKIPPED, &l, m.skipped as f64);
            if m.kind == "regression" {
                f.value(&MODEL_DRIFT, &l, m.drift_alarms as f64);
            }
            for (def, window, v) in [
                (&MODEL_MAE, "cumulative", m.mae),
                (&MODEL_RMSE, "cumulative", m.rmse),
                (&MODEL_R2, "cumulative", m.r2),
                (&MODEL_MAE, "rolling", m.rolling_mae),
                (&MODEL_RMSE, "rolling", m.rolling_rmse),
                (&MODEL_R2, "rolling", m.rolling_r2),
            ] {
                if let Some(v) = v {
                    f.value(def, &[p, model.as_str(), window], v);
                }
            }
            for (feature, b) in &m.coefficients {
                f.value(
                    &MODEL_COEFFICIENT,
                    &[p, model.as_str(), feature.as_str()],
                    *b,
                );
            }
            if let Some(i) = m.intercept {
                f.value(&MODEL_INTERCEPT, &l, i);
            }
            for (cluster, size) in m.cluster_sizes.iter().enumerate() {
                let c = cluster.to_string();
                f.value(&MODEL_CLUSTER_SIZE, &[p, model.as_str(), c.as_str()], *size);
            }
            if let Some(i) = m.inertia {
                f.value(&MODEL_INERTIA, &l, i);
            }
            for (key, q) in &m.per_key {
                let k = [p, model.as_str(), key.as_str()];
                f.value(&KEY_SAMPLES, &k, q.samples as f64);
                for (def, v) in [
                    (&KEY_MAE, q.mae),
                    (&KEY_RMSE, q.rmse),
                    (&KEY_R2, q.r2),
                    (&KEY_INERTIA, q.inertia),
                ] {
                    if let Some(v) = v {
                        f.value(def, &k, v);
                    }
                }
            }
        }
    }
    // Families without a series are left out (the text format has no empty families).
    let families: Vec<MetricFamily> =
        f.0.into_values()
            .filter(|fam| !fam.get_metric().is_empty())
            .collect();
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}
