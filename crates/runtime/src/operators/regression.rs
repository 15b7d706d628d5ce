//! Incremental linear regression as a [`Learner`] of the keyed-model operator: per key a
//! [`RegressionState`] (exponentially weighted sufficient statistics, solved with a
//! scale-free ridge), prequential errors, and optional Page-Hinkley drift detection on the
//! absolute residuals. A row with a null target is predicted but not learnt.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, RecordBatch, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, SchemaRef};
use ml::{PageHinkley, RegressionState, Welford};
use planner::{Drift, OnDrift};

use super::model::{KeyState, Learner, name_to_value};
use crate::error::{RuntimeError, internal};
use crate::metrics::{KeyQuality, ModelSummary, top_keys};

/// Predictions kept for the rolling metrics.
const ROLLING: usize = 1000;

/// A key's cached solution is solved again before a prediction once the key has learnt
/// `max(1, samples / STALE_DIVISOR)` rows since it was solved: a prediction uses
/// coefficients at most 1% of the key's samples old (exact while it has learnt fewer than
/// 200). Snapshots always solve afresh, so their coefficients are exact.
pub const STALE_DIVISOR: u64 = 100;

/// One key's regression.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct State {
    state: RegressionState,
    metrics: Metrics,
    drift: Option<PageHinkley>,
    alarms: u64,
    /// This key's half-life, shortened by a drift alarm when configured so.
    half_life_ms: Option<f64>,
    /// The solution predictions use, and the rows learnt since it was solved (see
    /// [`STALE_DIVISOR`]); not saved: a restored key solves at its first prediction.
    #[serde(skip)]
    solution: Option<ml::regression::Solution>,
    #[serde(skip)]
    learnt_since: u64,
}

/// The regression learner of one model.
#[derive(Debug)]
pub struct Regression {
    target: usize,
    half_life_ms: Option<f64>,
    ridge: f64,
    drift: Option<Drift>,
}

impl Regression {
    /// The learner of `r` over rows of `input`.
    pub fn new(r: &planner::Regression, input: &SchemaRef) -> Result<Self, RuntimeError> {
        Ok(Self {
            target: input.index_of(&r.target).map_err(internal)?,
            half_life_ms: r.half_life.map(|h| h.as_millis() as f64),
            ridge: r.ridge,
            drift: r.drift,
        })
    }
}

/// Prediction builders: prediction, actual, residual.
#[derive(Debug)]
pub struct Out {
    pred: Float64Builder,
    actual: Float64Builder,
    resid: Float64Builder,
}

impl Learner for Regression {
    type State = State;
    type Columns = Float64Array;
    type Out = Out;

    fn fresh(&self, d: usize) -> State {
        State {
            state: RegressionState::new(d),
            metrics: Metrics::default(),
            drift: self
                .drift
                .as_ref()
                .map(|c| PageHinkley::new(c.threshold, c.tolerance)),
            alarms: 0,
            half_life_ms: self.half_life_ms,
            solution: None,
            learnt_since: 0,
        }
    }

    fn columns(&self, batch: &RecordBatch) -> Result<Float64Array, RuntimeError> {
        Ok(cast(batch.column(self.target), &DataType::Float64)
            .map_err(internal)?
            .as_primitive::<Float64Type>()
            .clone())
    }

    fn out(&self, n: usize) -> Out {
        Out {
            pred: Float64Builder::with_capacity(n),
            actual: Float64Builder::with_capacity(n),
            resid: Float64Builder::with_capacity(n),
        }
    }

    fn step(
        &mut self,
        ks: &mut State,
        base: Option<&State>,
        x: &[f64],
        row: usize,
        ms: i64,
        target: &Float64Array,
        out: &mut Out,
    ) -> bool {
        if let Some(h) = ks.half_life_ms {
            ks.state.decay_to(ms, h);
        }
        let merged;
        let solved = match base {
            // The exact merge of every task's statistics, aged to this row's time (the base
            // changes as the other tasks commit, so this is solved for every row).
            Some(b) => {
                let mut m = b.state.clone();
                if let Some(h) = ks.half_life_ms {
                    m.decay_to(ms, h);
                }
                m.merge(&ks.state);
                merged = m.solve(self.ridge).ok();
                merged.as_ref()
            }
            None => {
                let stale = (ks.state.samples() / STALE_DIVISOR).max(1);
                if ks.solution.is_none() || ks.learnt_since >= stale {
                    ks.solution = ks.state.solve(self.ridge).ok();
                    ks.learnt_since = 0;
                }
                ks.solution.as_ref()
            }
        };
        let prediction = solved.map(|s| {
            s.intercept
                + s.coefficients
                    .iter()
                    .zip(x)
                    .map(|(b, x)| b * x)
                    .sum::<f64>()
        });
        let y = (!target.is_null(row) && target.value(row).is_finite()).then(|| target.value(row));
        out.pred.append_option(prediction);
        out.actual.append_option(y);
        let residual = prediction.zip(y).map(|(p, y)| y - p);
        out.resid.append_option(residual);
        if let (Some(y), Some(r)) = (y, residual) {
            ks.metrics.add(y, r);
            if ks.drift.as_mut().is_some_and(|ph| ph.update(r.abs())) {
                ks.alarms += 1;
                match self.drift.as_ref().map(|c| &c.on_drift) {
                    Some(OnDrift::ShortenHalfLife(h)) => {
                        ks.half_life_ms = Some(h.as_millis() as f64);
                    }
                    Some(OnDrift::Reset) => {
                        ks.state = RegressionState::new(x.len());
                        ks.solution = None;
                    }
                    _ => {}
                }
            }
        }
        match y {
            Some(y) => {
                ks.state.update(x, y, 1.0);
                ks.learnt_since += 1;
                true
            }
            None => false,
        }
    }

    fn mergeable(&self) -> bool {
        true
    }

    /// Co-moments merge exactly (Chan et al.); with forgetting, each part is first aged to
    /// the latest event time of all.
    fn combine(&self, parts: &[&State]) -> Option<State> {
        let d = parts.first()?.state.features();
        let latest = parts.iter().filter_map(|p| p.state.clock()).max();
        let mut out = self.fresh(d);
        for p in parts {
            let mut s = p.state.clone();
            if let (Some(h), Some(t)) = (p.half_life_ms, latest) {
                s.decay_to(t, h);
            }
            out.state.merge(&s);
        }
        Some(out)
    }

    fn with_base(&self, own: &State, base: &State) -> Option<State> {
        let mut state = base.state.clone();
        let mut mine = own.state.clone();
        if let Some(h) = own.half_life_ms {
            let latest = state.clock().max(mine.clock());
            if let Some(t) = latest {
                state.decay_to(t, h);
                mine.decay_to(t, h);
            }
        }
        state.merge(&mine);
        Some(State {
            state,
            metrics: own.metrics.clone(),
            drift: None,
            alarms: own.alarms,
            half_life_ms: own.half_life_ms,
            solution: None,
            learnt_since: 0,
        })
    }

    fn finish(&self, mut out: Out) -> Vec<ArrayRef> {
        vec![
            Arc::new(out.pred.finish()),
            Arc::new(out.actual.finish()),
            Arc::new(out.resid.finish()),
        ]
    }

    fn snapshot(
        &self,
        keys: &[&KeyState<State>],
        names: &[String],
        _schema: &SchemaRef,
    ) -> Result<Vec<ArrayRef>, RuntimeError> {
        let (mut samples, mut weight) = (Vec::new(), Vec::new());
        let mut intercept = Float64Builder::new();
        let mut coefficients = name_to_value();
        let mut metrics: Vec<Float64Builder> = (0..6).map(|_| Float64Builder::new()).collect();
        let mut alarms = Vec::new();
        for k in keys {
            let ks = &k.learnt;
            samples.push(ks.state.samples());
            weight.push(ks.state.weight());
            match ks.state.solve(self.ridge) {
                Ok(sol) => {
                    intercept.append_value(sol.intercept);
                    for (name, b) in names.iter().zip(&sol.coefficients) {
                        coefficients.keys().append_value(name);
                        coefficients.values().append_value(*b);
                    }
                    coefficients.append(true).map_err(internal)?;
                }
                Err(_) => {
                    intercept.append_null();
                    coefficients.append(false).map_err(internal)?;
                }
            }
            let (c, r) = (
                ks.metrics.cumulative().scores(),
                ks.metrics.rolling().scores(),
            );
            for (b, v) in metrics.iter_mut().zip([c.0, c.1, c.2, r.0, r.1, r.2]) {
                b.append_option(v);
            }
            alarms.push(ks.alarms);
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(samples)),
            Arc::new(Float64Array::from(weight)),
            Arc::new(intercept.finish()),
            Arc::new(coefficients.finish()),
        ];
        for mut b in metrics {
            columns.push(Arc::new(b.finish()));
        }
        columns.push(Arc::new(UInt64Array::from(alarms)));
        Ok(columns)
    }

    /// Samples, prequential MAE and RMSE over every prediction with a target, R² against
    /// each key's own mean (pooled), drift alarms. Coefficients are those of the global
    /// model, or for a keyed model the mean over keys weighted by each key's samples
    /// (per-key coefficients are in the snapshots topic).
    fn summary(
        &self,
        keys: &BTreeMap<String, KeyState<State>>,
        names: &[String],
        per_key: Option<usize>,
    ) -> ModelSummary {
        let (mut cumulative, mut rolling) = (Errors::default(), Errors::default());
        let (mut samples, mut alarms) = (0, 0);
        let d = names.len();
        let (mut coefficients, mut intercept, mut solved) = (vec![0.0; d], 0.0, 0.0);
        for k in keys.values() {
            let ks = &k.learnt;
            cumulative.add(ks.metrics.cumulative());
            rolling.add(ks.metrics.rolling());
            samples += ks.state.samples();
            alarms += ks.alarms;
            if let Ok(sol) = ks.state.solve(self.ridge) {
                let w = ks.state.samples() as f64;
                for (c, b) in coefficients.iter_mut().zip(&sol.coefficients) {
                    *c += w * b;
                }
                intercept += w * sol.intercept;
                solved += w;
            }
        }
        let (mae, rmse, r2) = cumulative.scores();
        let (rolling_mae, rolling_rmse, rolling_r2) = rolling.scores();
        let per_key = top_keys(
            match per_key {
                Some(_) => keys
                    .iter()
                    .map(|(k, ks)| {
                        let (mae, rmse, r2) = ks.learnt.metrics.cumulative().scores();
                        (
                            k.clone(),
                            KeyQuality {
                                samples: ks.learnt.state.samples(),
                                mae,
                                rmse,
                                r2,
                                inertia: None,
                            },
                        )
                    })
                    .collect(),
                None => Vec::new(),
            },
            per_key,
        );
        ModelSummary {
            kind: "regression",
            samples,
            mae,
            rmse,
            r2,
            rolling_mae,
            rolling_rmse,
            rolling_r2,
            drift_alarms: alarms,
            coefficients: if solved > 0.0 {
                names
                    .iter()
                    .cloned()
                    .zip(coefficients.iter().map(|c| c / solved))
                    .collect()
            } else {
                BTreeMap::new()
            },
            intercept: (solved > 0.0).then(|| intercept / solved),
            per_key,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Metrics {
    n: u64,
    abs: f64,
    sq: f64,
    actual: Welford,
    rolling: VecDeque<(f64, f64)>,
}

impl Metrics {
    fn add(&mut self, actual: f64, residual: f64) {
        self.n += 1;
        self.abs += residual.abs();
        self.sq += residual * residual;
        self.actual.update(actual, 1.0);
        if self.rolling.len() == ROLLING {
            self.rolling.pop_front();
        }
        self.rolling.push_back((actual, residual));
    }

    fn cumulative(&self) -> Errors {
        Errors {
            n: self.n,
            abs: self.abs,
            sq: self.sq,
            sst: self.actual.variance() * self.actual.weight(),
        }
    }

    fn rolling(&self) -> Errors {
        let mut w = Welford::default();
        let mut e = Errors::default();
        for (a, r) in &self.rolling {
            w.update(*a, 1.0);
            e.n += 1;
            e.abs += r.abs();
            e.sq += r * r;
        }
        e.sst = w.variance() * w.weight();
        e
    }
}

/// Sums of prequential errors: they pool over keys by addition.
#[derive(Debug, Default, Clone, Copy)]
struct Errors {
    n: u64,
    abs: f64,
    sq: f64,
    /// Total sum of squares of the actual values around their mean.
    sst: f64,
}

impl Errors {
    fn add(&mut self, o: Errors) {
        self.n += o.n;
        self.abs += o.abs;
        self.sq += o.sq;
        self.sst += o.sst;
    }

    /// MAE, RMSE and R².
    fn scores(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        if self.n == 0 {
            return (None, None, None);
        }
        let n = self.n as f64;
        (
            Some(self.abs / n),
            Some((self.sq / n).sqrt()),
            (self.sst > 0.0).then(|| 1.0 - self.sq / self.sst),
        )
    }
}
