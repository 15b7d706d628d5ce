//! Prometheus metrics of the daemon, gathered from the pipelines' live counters at each
//! scrape. Names follow Prometheus conventions (base units, `_total` for counters); the only
//! label is the pipeline name (bounded by the deployed pipelines).

use std::sync::atomic::Ordering;

use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::supervisor::{Phase, Supervisor};

/// Input messages read.
pub const EVENTS_IN: &str = "pipeline_events_in_total";
/// Records written to sinks.
pub const EVENTS_OUT: &str = "pipeline_events_out_total";
/// Records that failed to decode.
pub const ERRORS: &str = "pipeline_decode_errors_total";
/// Records written to dead-letter topics.
pub const DEAD_LETTERED: &str = "pipeline_dead_lettered_total";
/// Late events.
pub const LATE: &str = "pipeline_late_events_total";
/// Checkpoints written.
pub const CHECKPOINTS: &str = "pipeline_checkpoints_total";
/// Transient Kafka errors.
pub const KAFKA_ERRORS: &str = "pipeline_kafka_errors_total";
/// Consumer lag, messages.
pub const LAG: &str = "pipeline_consumer_lag_messages";
/// Watermark, seconds since the epoch.
pub const WATERMARK: &str = "pipeline_watermark_seconds";
/// 1 when running.
pub const UP: &str = "pipeline_up";
/// Restarts after failures.
pub const RESTARTS: &str = "pipeline_restarts_total";

/// The metrics text of every pipeline.
pub fn render(supervisor: &Supervisor) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    let counter = |name: &str, help: &str| -> Result<IntCounterVec, prometheus::Error> {
        let c = IntCounterVec::new(Opts::new(name, help), &["pipeline"])?;
        registry.register(Box::new(c.clone()))?;
        Ok(c)
    };
    let events_in = counter(EVENTS_IN, "Input messages read.")?;
    let events_out = counter(EVENTS_OUT, "Records written to sinks.")?;
    let errors = counter(ERRORS, "Input records that failed to decode.")?;
    let dead = counter(DEAD_LETTERED, "Records written to dead-letter topics.")?;
    let late = counter(LATE, "Events too late for their windows.")?;
    let checkpoints = counter(CHECKPOINTS, "Checkpoints written.")?;
    let kafka = counter(KAFKA_ERRORS, "Transient Kafka errors (retried).")?;
    let restarts = counter(RESTARTS, "Restarts after failures.")?;
    let lag = IntGaugeVec::new(
        Opts::new(LAG, "Consumer lag over all partitions."),
        &["pipeline"],
    )?;
    registry.register(Box::new(lag.clone()))?;
    let up = IntGaugeVec::new(
        Opts::new(UP, "1 when the pipeline is running."),
        &["pipeline"],
    )?;
    registry.register(Box::new(up.clone()))?;
    let watermark = GaugeVec::new(
        Opts::new(
            WATERMARK,
            "Smallest window watermark, seconds since the epoch.",
        ),
        &["pipeline"],
    )?;
    registry.register(Box::new(watermark.clone()))?;
    for (name, _, live) in supervisor.all() {
        let s = &live.stats;
        let l = [name.as_str()];
        events_in
            .with_label_values(&l)
            .inc_by(s.events_in.load(Ordering::Relaxed));
        events_out
            .with_label_values(&l)
            .inc_by(s.events_out.load(Ordering::Relaxed));
        errors
            .with_label_values(&l)
            .inc_by(s.errors.load(Ordering::Relaxed));
        dead.with_label_values(&l)
            .inc_by(s.dead_lettered.load(Ordering::Relaxed));
        late.with_label_values(&l)
            .inc_by(s.late.load(Ordering::Relaxed));
        checkpoints
            .with_label_values(&l)
            .inc_by(s.checkpoints.load(Ordering::Relaxed));
        kafka
            .with_label_values(&l)
            .inc_by(s.kafka_errors.load(Ordering::Relaxed));
        let status = live.status();
        restarts
            .with_label_values(&l)
            .inc_by(u64::from(status.restarts));
        let measured = s.lag.load(Ordering::Relaxed);
        if measured >= 0 {
            lag.with_label_values(&l).set(measured);
        }
        up.with_label_values(&l)
            .set(i64::from(status.phase == Phase::Running));
        let wm = s.watermark_ms.load(Ordering::Relaxed);
        if wm != i64::MIN && wm != i64::MAX {
            watermark.with_label_values(&l).set(wm as f64 / 1000.0);
        }
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}
