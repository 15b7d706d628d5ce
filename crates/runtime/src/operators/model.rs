//! The keyed-model operator, shared by regression and clustering: one learner state per key
//! (one global state without a key), prequential (each row is predicted with the model as it
//! was, then learnt), a prediction per row and, when due, snapshots per key.
//!
//! What differs between model kinds is a [`Learner`]: its state, what it predicts and learns
//! from a row, its snapshot columns and its summary. crates/ml holds the mathematics.
//!
//! Features are numeric columns as they are, one-hot columns as one 0/1 input per declared
//! value (`name=value`), and hashed columns as one 0/1 input per bucket (`name#bucket`, FNV-1a).
//! A row with a null or non-finite feature is neither predicted nor learnt (counted as
//! skipped). Because every row is learnt before the next is predicted, outputs do not depend
//! on micro-batch boundaries.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, MapBuilder, MapFieldNames, RecordBatch,
    StringBuilder, TimestampMillisecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{
    DataType, Float64Type, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use planner::{Feature, ModelPlan};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{RuntimeError, internal};
use crate::metrics::{Detail, ModelSummary};
use crate::operator::StateEntry;
use crate::operator::{Context, Operator};

/// One model kind, as the keyed-model operator drives it.
pub trait Learner: std::fmt::Debug + Send + 'static {
    /// One key's learnt state.
    type State: std::fmt::Debug + Serialize + DeserializeOwned + Send + Sync;
    /// Columns of a batch it reads besides the features (a regression's target).
    type Columns: Send;
    /// Builders of its prediction columns.
    type Out: Send;

    /// A fresh state for `d` inputs.
    fn fresh(&self, d: usize) -> Self::State;
    /// Reads its columns of `batch`.
    fn columns(&self, batch: &RecordBatch) -> Result<Self::Columns, RuntimeError>;
    /// Empty prediction builders for `n` rows.
    fn out(&self, n: usize) -> Self::Out;
    /// Predicts row `row` (inputs `x`, event time `ms`) with `state` (merged with `base`,
    /// the other tasks' states of a global model, when given), appends the prediction to
    /// `out`, then learns the row into `state`. Returns whether it learnt (a row without a
    /// target is predicted only).
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        state: &mut Self::State,
        base: Option<&Self::State>,
        x: &[f64],
        row: usize,
        ms: i64,
        cols: &Self::Columns,
        out: &mut Self::Out,
    ) -> bool;
    /// Whether states learnt from disjoint rows merge exactly, so that a global model can be
    /// learnt by several tasks.
    fn mergeable(&self) -> bool {
        false
    }
    /// The merge of `parts` (what other tasks learnt), when the learner merges.
    fn combine(&self, _parts: &[&Self::State]) -> Option<Self::State> {
        None
    }
    /// Told that it learns one global model with other tasks, as task `task`.
    fn share(&mut self, _task: i32) {}
    /// The other tasks' merge changed to `base` (the latest of their event times: `ms`):
    /// updates `own` where that completes it; returns whether it changed.
    fn rebase(&mut self, _own: &mut Self::State, _base: &Self::State, _ms: i64) -> bool {
        false
    }
    /// `own` with `base` merged in (what a snapshot shows), when the learner merges.
    fn with_base(&self, _own: &Self::State, _base: &Self::State) -> Option<Self::State> {
        None
    }
    /// The prediction columns, after the key, time and passthrough columns.
    fn finish(&self, out: Self::Out) -> Vec<ArrayRef>;
    /// Whether a snapshot of `state` means anything yet (a clustering is seeded).
    fn ready(&self, _state: &Self::State) -> bool {
        true
    }
    /// The snapshot columns of `keys`, after the key, time and version columns.
    fn snapshot(
        &self,
        keys: &[&KeyState<Self::State>],
        names: &[String],
        schema: &SchemaRef,
    ) -> Result<Vec<ArrayRef>, RuntimeError>;
    /// Quality over all keys (`per_key`: keys to list with their own figures).
    fn summary(
        &self,
        keys: &BTreeMap<String, KeyState<Self::State>>,
        names: &[String],
        per_key: Option<usize>,
    ) -> ModelSummary;
}

/// A builder of the snapshots' maps from input name to number (coefficients, centres), with
/// the field names the planner's snapshot schemas use.
pub fn name_to_value() -> MapBuilder<StringBuilder, Float64Builder> {
    MapBuilder::new(
        Some(MapFieldNames {
            entry: "entries".into(),
            key: "key".into(),
            value: "value".into(),
        }),
        StringBuilder::new(),
        Float64Builder::new(),
    )
}

/// One key's model.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct KeyState<S> {
    /// The learner's state.
    #[serde(flatten)]
    pub learnt: S,
    /// Rows learnt: the version of the model.
    pub version: u64,
    snapshot: SnapshotClock,
    /// Largest event time seen.
    pub last_ms: i64,
    /// Changed since the state was last written to a changelog.
    #[serde(skip)]
    dirty: bool,
}

/// The keyed-model operator.
pub struct KeyedModel<L: Learner> {
    learner: L,
    features: Features,
    key: Option<usize>,
    time: Option<usize>,
    passthrough: Vec<usize>,
    schedule: SnapshotPolicy,
    keys: BTreeMap<String, KeyState<L::State>>,
    predictions: SchemaRef,
    snapshots: SchemaRef,
    /// Rows skipped for a null or non-finite feature.
    skipped: u64,
    /// `skipped` as last written to a changelog.
    skipped_written: u64,
    x: Vec<f64>,
    /// Keys with their own metrics (`metrics: { per_key }`), if any.
    per_key: Option<usize>,
    /// A global model learnt by several tasks: this task learns its own rows, predicts
    /// and snapshots with the merge of every task's latest committed state.
    merging: bool,
    /// The other tasks' latest states, by task.
    peers: BTreeMap<i32, KeyState<L::State>>,
    /// Their merge.
    base: Option<L::State>,
}

impl<L: Learner> std::fmt::Debug for KeyedModel<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyedModel({:?}, {} keys)",
            self.learner,
            self.keys.len()
        )
    }
}

impl<L: Learner> KeyedModel<L> {
    /// The operator of `model` over rows of `input`, learning with `learner`.
    pub fn new(model: &ModelPlan, input: &SchemaRef, learner: L) -> Result<Self, RuntimeError> {
        let col = |name: &str| input.index_of(name).map_err(internal);
        let features = Features::new(
            match &model.kind {
                planner::ModelKind::Regression(r) => &r.features,
                planner::ModelKind::Clustering(c) => &c.features,
            },
            input,
        )?;
        Ok(Self {
            learner,
            x: vec![0.0; features.names.len()],
            features,
            key: model.key.as_deref().map(col).transpose()?,
            time: model.time_field.as_deref().map(col).transpose()?,
            passthrough: model
                .passthrough
                .iter()
                .map(|p| col(p))
                .collect::<Result<_, _>>()?,
            schedule: SnapshotPolicy {
                every_events: model.snapshot_events,
                every_ms: model.snapshot_time.map(|t| t.as_millis() as i64),
            },
            keys: BTreeMap::new(),
            predictions: model.predictions.clone(),
            snapshots: model.snapshots.clone(),
            skipped: 0,
            skipped_written: 0,
            merging: false,
            peers: BTreeMap::new(),
            base: None,
            per_key: model.metrics_per_key.map(|n| n as usize),
        })
    }

    /// Predicts, then learns, every row of `batch`; returns the predictions and the
    /// snapshots that became due.
    pub fn learn(
        &mut self,
        batch: &RecordBatch,
    ) -> Result<(Option<RecordBatch>, Option<RecordBatch>), RuntimeError> {
        let n = batch.num_rows();
        let cols = self.features.columns(batch)?;
        let own = self.learner.columns(batch)?;
        let context = RowContext::new(batch, self.key, self.time)?;
        let mut out = self.learner.out(n);
        let mut rows: Vec<u32> = Vec::with_capacity(n);
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
                        learnt: self.learner.fresh(d),
                        version: 0,
                        snapshot: SnapshotClock::default(),
                        last_ms: ms,
                        dirty: true,
                    },
                );
            }
            let Some(ks) = self.keys.get_mut(key) else {
                continue;
            };
            rows.push(row as u32);
            // The version of the model that made the prediction.
            versions.push(ks.version);
            out_ms.push(ms);
            let base = if self.merging {
                self.base.as_ref()
            } else {
                None
            };
            if self
                .learner
                .step(&mut ks.learnt, base, &self.x, row, ms, &own, &mut out)
            {
                ks.version += 1;
                ks.snapshot.learnt(1);
            }
            ks.last_ms = ks.last_ms.max(ms);
            ks.dirty = true;
            if ks.snapshot.due(&self.schedule, ms)
                && self.learner.ready(&ks.learnt)
                && !due.iter().any(|k| k == key)
            {
                due.push(key.to_string());
            }
        }
        let predictions = if rows.is_empty() {
            None
        } else {
            let idx = UInt32Array::from(rows);
            let mut columns = leading_columns(batch, &idx, self.key, out_ms, &self.passthrough)?;
            columns.extend(self.learner.finish(out));
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

    /// Snapshot rows for every key whose model is ready (the end of a bounded run).
    pub fn snapshot_all(&mut self) -> Result<Option<RecordBatch>, RuntimeError> {
        let keys: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, k)| self.learner.ready(&k.learnt))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return Ok(None);
        }
        self.snapshot_rows(&keys).map(Some)
    }

    /// How the model does over all its keys.
    pub fn summary(&self) -> ModelSummary {
        let mut s = self
            .learner
            .summary(&self.keys, &self.features.names, self.per_key);
        s.keys = self.keys.len() as u64;
        s.skipped += self.skipped;
        s
    }

    fn snapshot_rows(&mut self, keys: &[String]) -> Result<RecordBatch, RuntimeError> {
        let mut key_values = StringBuilder::new();
        let (mut ms, mut version) = (Vec::new(), Vec::new());
        let mut states = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(ks) = self.keys.get_mut(key) else {
                continue;
            };
            ks.snapshot.taken(ks.last_ms);
            ks.dirty = true;
        }
        // A global model learnt by several tasks shows the merge of all of them.
        let merged = match (&self.base, self.keys.get("")) {
            (Some(base), Some(own)) if self.merging => self
                .learner
                .with_base(&own.learnt, base)
                .map(|learnt| KeyState {
                    learnt,
                    version: own.version,
                    snapshot: SnapshotClock::default(),
                    last_ms: own.last_ms,
                    dirty: false,
                }),
            _ => None,
        };
        for key in keys {
            let Some(ks) = self.keys.get(key) else {
                continue;
            };
            key_values.append_value(key);
            ms.push(ks.last_ms);
            version.push(ks.version);
            states.push(match (&merged, key.is_empty()) {
                (Some(m), true) => m,
                _ => ks,
            });
        }
        let mut columns: Vec<ArrayRef> = Vec::new();
        if self.key.is_some() {
            columns.push(Arc::new(key_values.finish()));
        }
        columns.push(Arc::new(
            TimestampMillisecondArray::from(ms).with_timezone("UTC"),
        ));
        columns.push(Arc::new(UInt64Array::from(version)));
        columns.extend(
            self.learner
                .snapshot(&states, &self.features.names, &self.snapshots)?,
        );
        RecordBatch::try_new(self.snapshots.clone(), cast_to(columns, &self.snapshots)?)
            .map_err(internal)
    }
}

#[async_trait]
impl<L: Learner> Operator for KeyedModel<L> {
    async fn process(
        &mut self,
        _port: usize,
        _partition: i32,
        batch: RecordBatch,
        ctx: &mut Context,
    ) -> Result<(), RuntimeError> {
        let (predictions, snapshots) = self.learn(&batch)?;
        if let Some(b) = predictions {
            ctx.emit(0, -1, b);
        }
        if let Some(b) = snapshots {
            ctx.emit(1, -1, b);
        }
        Ok(())
    }

    async fn finish(&mut self, ctx: &mut Context) -> Result<(), RuntimeError> {
        // A merging model's last snapshot waits for the other tasks' last states
        // (`final_snapshot`, after the final commit).
        if !self.merging
            && let Some(b) = self.snapshot_all()?
        {
            ctx.emit(1, -1, b);
        }
        Ok(())
    }

    fn merges(&mut self, task: i32) -> bool {
        self.merging = self.key.is_none() && self.learner.mergeable();
        if self.merging {
            self.learner.share(task);
        }
        self.merging
    }

    fn peer(&mut self, task: i32, key: &[u8], value: &[u8]) -> Result<(), RuntimeError> {
        // The global model is the entry of the empty key.
        if !self.merging || key != b"k" {
            return Ok(());
        }
        self.peers.insert(task, crate::checkpoint::decode(value)?);
        let parts: Vec<&L::State> = self.peers.values().map(|k| &k.learnt).collect();
        self.base = self.learner.combine(&parts);
        // What the others committed may complete this task's state (a leader's seed from
        // the rows the others keep), even on a task without rows of its own.
        if let Some(base) = &self.base {
            let last_ms = self.peers.values().map(|k| k.last_ms).max().unwrap_or(0);
            let had = self.keys.remove("");
            let existed = had.is_some();
            let mut own = had.unwrap_or_else(|| KeyState {
                learnt: self.learner.fresh(self.features.names.len()),
                version: 0,
                snapshot: SnapshotClock::default(),
                last_ms,
                dirty: false,
            });
            let changed = self.learner.rebase(&mut own.learnt, base, last_ms);
            own.dirty |= changed;
            if changed || existed {
                self.keys.insert(String::new(), own);
            }
        }
        Ok(())
    }

    async fn final_snapshot(&mut self, ctx: &mut Context) -> Result<(), RuntimeError> {
        if self.merging
            && let Some(b) = self.snapshot_all()?
        {
            ctx.emit(1, -1, b);
        }
        Ok(())
    }

    fn save(&mut self) -> Result<Option<Vec<u8>>, RuntimeError> {
        crate::checkpoint::encode(&(&self.keys, self.skipped)).map(Some)
    }

    fn load(&mut self, state: &[u8]) -> Result<(), RuntimeError> {
        (self.keys, self.skipped) = crate::checkpoint::decode(state)?;
        Ok(())
    }

    /// Only the keys learnt (or snapshotted) since the last call, each under `k` + its key,
    /// and the skipped count under `s`.
    fn changes(&mut self) -> Result<Vec<StateEntry>, RuntimeError> {
        let mut out = Vec::new();
        for (key, ks) in &mut self.keys {
            if ks.dirty {
                let mut k = Vec::with_capacity(key.len() + 1);
                k.push(b'k');
                k.extend_from_slice(key.as_bytes());
                out.push((k, Some(crate::checkpoint::encode(&*ks)?)));
                ks.dirty = false;
            }
        }
        if self.skipped != self.skipped_written {
            out.push((
                b"s".to_vec(),
                Some(crate::checkpoint::encode(&self.skipped)?),
            ));
            self.skipped_written = self.skipped;
        }
        Ok(out)
    }

    fn restore(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), RuntimeError> {
        self.keys.clear();
        self.skipped = 0;
        for (k, v) in entries {
            match k.split_first() {
                Some((b'k', key)) => {
                    let key = String::from_utf8(key.to_vec()).map_err(internal)?;
                    self.keys.insert(key, crate::checkpoint::decode(&v)?);
                }
                Some((b's', [])) => self.skipped = crate::checkpoint::decode(&v)?,
                _ => return Err(internal("an unknown entry in a model's changelog")),
            }
        }
        self.skipped_written = self.skipped;
        Ok(())
    }

    fn report(&self, name: &str, detail: &mut Detail) {
        detail.models.insert(name.to_string(), self.summary());
    }
}

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
                Feature::OneHot { column, values } => {
                    inputs.push(Input::OneHot(col(column)?, values.clone()));
                    names.extend(values.iter().map(|v| format!("{column}={v}")));
                }
                Feature::Hashed { column, buckets } => {
                    inputs.push(Input::Hashed(col(column)?, *buckets));
                    names.extend((0..*buckets).map(|b| format!("{column}#{b}")));
                }
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
                    let hit = (!a.is_null(row)).then(|| {
                        (planner::fnv1a(a.value(row).as_bytes()) % u64::from(*buckets)) as usize
                    });
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

/// When snapshots of a key are due: after `events` learnt rows or `time` of event time,
/// whichever comes first.
#[derive(Debug, Clone, Copy)]
struct SnapshotPolicy {
    every_events: Option<u64>,
    every_ms: Option<i64>,
}

/// One key's progress towards its next snapshot.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SnapshotClock {
    since: u64,
    last_ms: Option<i64>,
}

impl SnapshotClock {
    /// Counts `n` learnt rows.
    fn learnt(&mut self, n: u64) {
        self.since += n;
    }

    /// Whether a snapshot is due at event time `ms`.
    fn due(&mut self, policy: &SnapshotPolicy, ms: i64) -> bool {
        let by_events = policy.every_events.is_some_and(|e| self.since >= e);
        let by_time = policy
            .every_ms
            .is_some_and(|t| ms - *self.last_ms.get_or_insert(ms) >= t);
        by_events || by_time
    }

    /// Records a snapshot taken at event time `ms`.
    fn taken(&mut self, ms: i64) {
        self.since = 0;
        self.last_ms = Some(ms);
    }
}

/// The key (as text) and event time (ms) of each row of a model's input batch.
struct RowContext {
    keys: Option<ArrayRef>,
    times: Option<Vec<Option<i64>>>,
    now: i64,
}

impl RowContext {
    /// Reads the key column `key` and the event-time column `time` of `batch`.
    fn new(
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
            now: now_ms(),
        })
    }

    /// The row's key; `""` for a global model or a null key.
    fn key(&self, row: usize) -> &str {
        match &self.keys {
            Some(k) => {
                let k = k.as_string::<i32>();
                if k.is_null(row) { "" } else { k.value(row) }
            }
            None => "",
        }
    }

    /// The row's event time, or the wall clock when the input has none.
    fn ms(&self, row: usize) -> i64 {
        self.times.as_ref().and_then(|t| t[row]).unwrap_or(self.now)
    }
}

/// The leading columns of a predictions batch: the key, the event time, the passthrough
/// columns, for the input rows `idx`.
fn leading_columns(
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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
