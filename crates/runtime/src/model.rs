//! The regression model operator: one [`RegressionState`] per key, prequential (each row is
//! predicted with the model as it was, then learnt), with predictions per row and periodic
//! snapshots of coefficients and metrics.
//!
//! Features are numeric columns as they are, one-hot columns as one 0/1 input per declared
//! value (`name=value`), and hashed columns as one 0/1 input per bucket (`name#bucket`, FNV-1a).
//! A row with a null or non-finite feature is neither predicted nor learnt (counted as
//! skipped); a row with a null target is predicted but not learnt.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, MapBuilder, MapFieldNames, RecordBatch,
    StringBuilder, TimestampMillisecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{
    DataType, Float64Type, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use ml::{PageHinkley, RegressionState, Welford};
use spec::model::{Drift, Feature, Model, OnDrift};

use crate::error::{RuntimeError, internal};

/// Predictions kept for the rolling metrics.
const ROLLING: usize = 1000;

#[derive(Debug)]
enum Input {
    Numeric(usize),
    OneHot(usize, Vec<String>),
    Hashed(usize, u32),
}

/// A model's input columns, expanded to numbers.
#[derive(Debug)]
pub struct Features {
    inputs: Vec<Input>,
    /// Names of the expanded inputs (`temperature`, `carrier=DHL`, `sku#3`).
    pub names: Vec<String>,
}

/// The feature columns of one batch, cast once.
#[derive(Debug)]
pub struct FeatureColumns {
    numeric: Vec<Float64Array>,
    text: Vec<ArrayRef>,
}

impl Features {
    /// The features of `features` read from rows of `input`.
    pub fn new(features: &[Feature], input: &SchemaRef) -> Result<Self, RuntimeError> {
        let col = |name: &str| input.index_of(name).map_err(internal);
        let mut inputs = Vec::new();
        let mut names = Vec::new();
        for f in features {
            match f {
                Feature::Numeric(name) => {
                    inputs.push(Input::Numeric(col(name)?));
                    names.push(name.clone());
                }
                Feature::Categorical(c) => match (&c.one_hot, c.hash_buckets) {
                    (Some(vocab), _) => {
                        inputs.push(Input::OneHot(col(&c.name)?, vocab.clone()));
                        names.extend(vocab.iter().map(|v| format!("{}={v}", c.name)));
                    }
                    (None, Some(n)) => {
                        inputs.push(Input::Hashed(col(&c.name)?, n));
                        names.extend((0..n).map(|b| format!("{}#{b}", c.name)));
                    }
                    _ => return Err(internal("categorical feature without encoding")),
                },
            }
        }
        Ok(Self { inputs, names })
    }

    /// Casts the feature columns of `batch`.
    pub fn columns(&self, batch: &RecordBatch) -> Result<FeatureColumns, RuntimeError> {
        let mut numeric = Vec::new();
        let mut text = Vec::new();
        for input in &self.inputs {
            match input {
                Input::Numeric(c) => numeric.push(
                    cast(batch.column(*c), &DataType::Float64)
                        .map_err(internal)?
                        .as_primitive::<Float64Type>()
                        .clone(),
                ),
                Input::OneHot(c, _) | Input::Hashed(c, _) => {
                    text.push(cast(batch.column(*c), &DataType::Utf8).map_err(internal)?)
                }
            }
        }
        Ok(FeatureColumns { numeric, text })
    }

    /// Writes row `row`'s features into `out`; false when a numeric feature is null or not
    /// finite (the row is then skipped).
    pub fn row(&self, cols: &FeatureColumns, row: usize, out: &mut [f64]) -> bool {
        let (mut ni, mut ti, mut at) = (0, 0, 0);
        for input in &self.inputs {
            match input {
                Input::Numeric(_) => {
                    let a = &cols.numeric[ni];
                    ni += 1;
                    if a.is_null(row) || !a.value(row).is_finite() {
                        return false;
                    }
                    out[at] = a.value(row);
                    at += 1;
                }
                Input::OneHot(_, vocab) => {
                    let a = cols.text[ti].as_string::<i32>();
                    ti += 1;
                    let v = (!a.is_null(row)).then(|| a.value(row));
                    for word in vocab {
                        out[at] = if v == Some(word.as_str()) { 1.0 } else { 0.0 };
                        at += 1;
                    }
                }
                Input::Hashed(_, buckets) => {
                    let a = cols.text[ti].as_string::<i32>();
                    ti += 1;
                    let hit = (!a.is_null(row))
                        .then(|| (fnv1a(a.value(row).as_bytes()) % u64::from(*buckets)) as usize);
                    for b in 0..*buckets as usize {
                        out[at] = if hit == Some(b) { 1.0 } else { 0.0 };
                        at += 1;
                    }
                }
            }
        }
        true
    }
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
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

#[derive(serde::Serialize, serde::Deserialize)]
struct KeyState {
    state: RegressionState,
    metrics: Metrics,
    drift: Option<PageHinkley>,
    alarms: u64,
    /// This key's half-life, shortened by a drift alarm when configured so.
    half_life_ms: Option<f64>,
    version: u64,
    snapshot: SnapshotClock,
    last_ms: i64,
}

/// An incremental regression over one input.
pub struct RegressionOp {
    features: Features,
    target: usize,
    key: Option<usize>,
    time: Option<usize>,
    passthrough: Vec<usize>,
    half_life_ms: Option<f64>,
    ridge: f64,
    drift: Option<Drift>,
    schedule: SnapshotPolicy,
    keys: BTreeMap<String, KeyState>,
    predictions: SchemaRef,
    snapshots: SchemaRef,
    /// Rows skipped for a null or non-finite feature.
    pub skipped: u64,
    x: Vec<f64>,
    /// Keys with their own metrics (`metrics: { per_key }`), if any.
    per_key: Option<usize>,
}

impl std::fmt::Debug for RegressionOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegressionOp({} keys)", self.keys.len())
    }
}

/// FNV-1a, for feature hashing (stable across runs and platforms).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl RegressionOp {
    /// Builds the operator for `model` over rows of `input`.
    pub fn new(
        model: &Model,
        input: &SchemaRef,
        time_field: Option<&str>,
        predictions: SchemaRef,
        snapshots: SchemaRef,
    ) -> Result<Self, RuntimeError> {
        let r = model
            .regression
            .as_ref()
            .ok_or_else(|| internal("not a regression model"))?;
        let col = |name: &str| input.index_of(name).map_err(internal);
        let features = Features::new(&r.features, input)?;
        Ok(Self {
            x: vec![0.0; features.names.len()],
            features,
            target: col(&r.target)?,
            key: model.key.as_deref().map(col).transpose()?,
            time: time_field.map(col).transpose()?,
            passthrough: model
                .passthrough
                .iter()
                .map(|p| col(p))
                .collect::<Result<_, _>>()?,
            half_life_ms: r.half_life.map(|h| h.as_millis() as f64),
            ridge: r.ridge,
            drift: r.drift.clone(),
            schedule: SnapshotPolicy::new(model),
            keys: BTreeMap::new(),
            predictions,
            snapshots,
            skipped: 0,
            per_key: model.metrics.as_ref().map(|m| m.per_key as usize),
        })
    }

    /// Predicts, then learns, every row of `batch`. Returns the predictions and any snapshots
    /// that became due.
    pub fn process(
        &mut self,
        batch: &RecordBatch,
    ) -> Result<(Option<RecordBatch>, Option<RecordBatch>), RuntimeError> {
        let n = batch.num_rows();
        let numeric = |c: usize| -> Result<Float64Array, RuntimeError> {
            Ok(cast(batch.column(c), &DataType::Float64)
                .map_err(internal)?
                .as_primitive::<Float64Type>()
                .clone())
        };
        let cols = self.features.columns(batch)?;
        let target = numeric(self.target)?;
        let context = RowContext::new(batch, self.key, self.time)?;
        let mut rows: Vec<u32> = Vec::with_capacity(n);
        let (mut pred, mut actual, mut resid) = (
            Float64Builder::with_capacity(n),
            Float64Builder::with_capacity(n),
            Float64Builder::with_capacity(n),
        );
        let (mut out_ms, mut versions) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut due: Vec<String> = Vec::new();
        let d = self.features.names.len();
        for row in 0..n {
            if !self.features.row(&cols, row, &mut self.x) {
                self.skipped += 1;
                continue;
            }
            let key = context.key(row);
            let ms = context.ms(row);
            if !self.keys.contains_key(key) {
                self.keys.insert(
                    key.to_string(),
                    KeyState {
                        state: RegressionState::new(d),
                        metrics: Metrics::default(),
                        drift: self
                            .drift
                            .as_ref()
                            .map(|c| PageHinkley::new(c.threshold, c.tolerance)),
                        alarms: 0,
                        half_life_ms: self.half_life_ms,
                        version: 0,
                        snapshot: SnapshotClock::default(),
                        last_ms: ms,
                    },
                );
            }
            let Some(ks) = self.keys.get_mut(key) else {
                continue;
            };
            if let Some(h) = ks.half_life_ms {
                ks.state.decay_to(ms, h);
            }
            let prediction = ks.state.solve(self.ridge).ok().map(|s| {
                s.intercept
                    + s.coefficients
                        .iter()
                        .zip(&self.x)
                        .map(|(b, x)| b * x)
                        .sum::<f64>()
            });
            let y =
                (!target.is_null(row) && target.value(row).is_finite()).then(|| target.value(row));
            rows.push(row as u32);
            pred.append_option(prediction);
            actual.append_option(y);
            let residual = prediction.zip(y).map(|(p, y)| y - p);
            resid.append_option(residual);
            if let (Some(y), Some(r)) = (y, residual) {
                ks.metrics.add(y, r);
                if ks.drift.as_mut().is_some_and(|ph| ph.update(r.abs())) {
                    ks.alarms += 1;
                    match self.drift.as_ref().map(|c| &c.on_drift) {
                        Some(OnDrift::ShortenHalfLife(h)) => {
                            ks.half_life_ms = Some(h.as_millis() as f64);
                        }
                        Some(OnDrift::Reset) => ks.state = RegressionState::new(d),
                        _ => {}
                    }
                }
            }
            // The version of the model that made the prediction, as clustering reports it.
            versions.push(ks.version);
            if let Some(y) = y {
                ks.state.update(&self.x, y, 1.0);
                ks.version += 1;
                ks.snapshot.learnt(1);
            }
            ks.last_ms = ks.last_ms.max(ms);
            out_ms.push(ms);
            if ks.snapshot.due(&self.schedule, ms) && !due.iter().any(|k| k == key) {
                due.push(key.to_string());
            }
        }
        let predictions = if rows.is_empty() {
            None
        } else {
            let idx = UInt32Array::from(rows);
            let mut columns = leading_columns(batch, &idx, self.key, out_ms, &self.passthrough)?;
            columns.push(Arc::new(pred.finish()));
            columns.push(Arc::new(actual.finish()));
            columns.push(Arc::new(resid.finish()));
            columns.push(Arc::new(UInt64Array::from(versions)));
            Some(
                RecordBatch::try_new(
                    self.predictions.clone(),
                    cast_to(columns, &self.predictions)?,
                )
                .map_err(internal)?,
            )
        };
        let snapshots = if due.is_empty() {
            None
        } else {
            Some(self.snapshot_rows(&due)?)
        };
        Ok((predictions, snapshots))
    }

    /// How the model does over all its keys: samples, prequential MAE and RMSE over every
    /// prediction with a target, R² against each key's own mean (pooled), drift alarms.
    ///
    /// Coefficients are those of the global model, or for a keyed model the mean over keys
    /// weighted by each key's samples (per-key coefficients are in the snapshots topic).
    pub fn summary(&self) -> crate::ModelSummary {
        let (mut cumulative, mut rolling) = (Errors::default(), Errors::default());
        let (mut samples, mut alarms) = (0, 0);
        let d = self.features.names.len();
        let (mut coefficients, mut intercept, mut solved) = (vec![0.0; d], 0.0, 0.0);
        for ks in self.keys.values() {
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
        let per_key = crate::metrics::top_keys(
            match self.per_key {
                Some(_) => self
                    .keys
                    .iter()
                    .map(|(k, ks)| {
                        let (mae, rmse, r2) = ks.metrics.cumulative().scores();
                        (
                            k.clone(),
                            crate::metrics::KeyQuality {
                                samples: ks.state.samples(),
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
            self.per_key,
        );
        crate::ModelSummary {
            kind: "regression",
            keys: self.keys.len() as u64,
            samples,
            skipped: self.skipped,
            mae,
            rmse,
            r2,
            rolling_mae,
            rolling_rmse,
            rolling_r2,
            drift_alarms: alarms,
            coefficients: if solved > 0.0 {
                self.features
                    .names
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

    /// The learnt state of every key, for a checkpoint.
    pub fn save(&self) -> Result<Vec<u8>, RuntimeError> {
        crate::checkpoint::encode(&(&self.keys, self.skipped))
    }

    /// Replaces the state with one written by [`Self::save`] of the same model.
    pub fn load(&mut self, bytes: &[u8]) -> Result<(), RuntimeError> {
        (self.keys, self.skipped) = crate::checkpoint::decode(bytes)?;
        Ok(())
    }

    /// Snapshot rows for every key (the end of a bounded run).
    pub fn snapshot_all(&mut self) -> Result<Option<RecordBatch>, RuntimeError> {
        let keys: Vec<String> = self.keys.keys().cloned().collect();
        if keys.is_empty() {
            return Ok(None);
        }
        self.snapshot_rows(&keys).map(Some)
    }

    fn snapshot_rows(&mut self, keys: &[String]) -> Result<RecordBatch, RuntimeError> {
        let mut key_values = StringBuilder::new();
        let (mut ms, mut version, mut samples, mut weight) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut intercept = Float64Builder::new();
        let mut coefficients = MapBuilder::new(
            Some(MapFieldNames {
                entry: "entries".into(),
                key: "key".into(),
                value: "value".into(),
            }),
            StringBuilder::new(),
            Float64Builder::new(),
        );
        let mut metrics: Vec<Float64Builder> = (0..6).map(|_| Float64Builder::new()).collect();
        let mut alarms = Vec::new();
        for key in keys {
            let Some(ks) = self.keys.get_mut(key) else {
                continue;
            };
            key_values.append_value(key);
            ms.push(ks.last_ms);
            version.push(ks.version);
            samples.push(ks.state.samples());
            weight.push(ks.state.weight());
            match ks.state.solve(self.ridge) {
                Ok(sol) => {
                    intercept.append_value(sol.intercept);
                    for (name, b) in self.features.names.iter().zip(&sol.coefficients) {
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
            ks.snapshot.taken(ks.last_ms);
        }
        let mut columns: Vec<ArrayRef> = Vec::new();
        if self.key.is_some() {
            columns.push(Arc::new(key_values.finish()));
        }
        columns.push(Arc::new(
            TimestampMillisecondArray::from(ms).with_timezone("UTC"),
        ));
        columns.push(Arc::new(UInt64Array::from(version)));
        columns.push(Arc::new(UInt64Array::from(samples)));
        columns.push(Arc::new(Float64Array::from(weight)));
        columns.push(Arc::new(intercept.finish()));
        columns.push(Arc::new(coefficients.finish()));
        for mut b in metrics {
            columns.push(Arc::new(b.finish()));
        }
        columns.push(Arc::new(UInt64Array::from(alarms)));
        RecordBatch::try_new(self.snapshots.clone(), cast_to(columns, &self.snapshots)?)
            .map_err(internal)
    }
}

/// When snapshots of a key are due: after `events` learnt rows or `time` of event time,
/// whichever comes first (every 1,000 rows when the model sets neither).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SnapshotPolicy {
    every_events: Option<u64>,
    every_ms: Option<i64>,
}

impl SnapshotPolicy {
    pub(crate) fn new(model: &Model) -> Self {
        match &model.snapshot_every {
            None => Self {
                every_events: Some(1000),
                every_ms: None,
            },
            Some(e) => Self {
                every_events: e.events,
                every_ms: e.time.map(|t| t.as_millis() as i64),
            },
        }
    }
}

/// One key's progress towards its next snapshot.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct SnapshotClock {
    since: u64,
    last_ms: Option<i64>,
}

impl SnapshotClock {
    /// Counts `n` learnt rows.
    pub(crate) fn learnt(&mut self, n: u64) {
        self.since += n;
    }

    /// Whether a snapshot is due at event time `ms`.
    pub(crate) fn due(&mut self, policy: &SnapshotPolicy, ms: i64) -> bool {
        let by_events = policy.every_events.is_some_and(|e| self.since >= e);
        let by_time = policy
            .every_ms
            .is_some_and(|t| ms - *self.last_ms.get_or_insert(ms) >= t);
        by_events || by_time
    }

    /// Records a snapshot taken at event time `ms`.
    pub(crate) fn taken(&mut self, ms: i64) {
        self.since = 0;
        self.last_ms = Some(ms);
    }
}

/// The key (as text) and event time (ms) of each row of a model's input batch.
pub(crate) struct RowContext {
    keys: Option<ArrayRef>,
    times: Option<Vec<Option<i64>>>,
    now: i64,
}

impl RowContext {
    /// Reads the key column `key` and the event-time column `time` of `batch`.
    pub(crate) fn new(
        batch: &RecordBatch,
        key: Option<usize>,
        time: Option<usize>,
    ) -> Result<Self, RuntimeError> {
        let keys = key
            .map(|k| cast(batch.column(k), &DataType::Utf8).map_err(internal))
            .transpose()?;
        let times = match time {
            Some(c) => Some(
                cast(
                    batch.column(c),
                    &DataType::Timestamp(TimeUnit::Millisecond, None),
                )
                .map_err(internal)?
                .as_primitive::<TimestampMillisecondType>()
                .iter()
                .collect(),
            ),
            None => None,
        };
        Ok(Self {
            keys,
            times,
            now: chrono_now_ms(),
        })
    }

    /// The row's key; `""` for a global model or a null key.
    pub(crate) fn key(&self, row: usize) -> &str {
        match &self.keys {
            Some(k) => {
                let k = k.as_string::<i32>();
                if k.is_null(row) { "" } else { k.value(row) }
            }
            None => "",
        }
    }

    /// The row's event time, or the wall clock when the input has none.
    pub(crate) fn ms(&self, row: usize) -> i64 {
        self.times.as_ref().and_then(|t| t[row]).unwrap_or(self.now)
    }
}

/// The leading columns of a predictions batch: the key, the event time, the passthrough
/// columns, for the input rows `idx`.
pub(crate) fn leading_columns(
    batch: &RecordBatch,
    idx: &UInt32Array,
    key: Option<usize>,
    ms: Vec<i64>,
    passthrough: &[usize],
) -> Result<Vec<ArrayRef>, RuntimeError> {
    let mut columns: Vec<ArrayRef> = Vec::new();
    if let Some(k) = key {
        columns.push(take(batch.column(k), idx, None).map_err(internal)?);
    }
    columns.push(Arc::new(
        TimestampMillisecondArray::from(ms).with_timezone("UTC"),
    ));
    for p in passthrough {
        columns.push(take(batch.column(*p), idx, None).map_err(internal)?);
    }
    Ok(columns)
}

/// Casts columns to the schema's types (key columns were read as text).
fn cast_to(columns: Vec<ArrayRef>, schema: &SchemaRef) -> Result<Vec<ArrayRef>, RuntimeError> {
    columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() || matches!(f.data_type(), DataType::Map(_, _)) {
                Ok(c)
            } else {
                cast(&c, f.data_type()).map_err(internal)
            }
        })
        .collect()
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
