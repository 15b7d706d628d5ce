//! The clustering model operator: one [`KMeans`] per key. Each row is assigned with the model
//! as it was (null while the model buffers its seed sample), then the rows of the batch are
//! learnt per key as one mini-batch. Snapshots list the centroids (in input units), their
//! weights and radii, and the inertia.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Float64Builder, ListArray, MapBuilder, MapFieldNames,
    RecordBatch, StringBuilder, StructArray, TimestampMillisecondArray, UInt32Array, UInt32Builder,
    UInt64Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Fields, SchemaRef};
use ml::{KMeans, KMeansConfig};
use spec::model::Model;

use crate::error::{RuntimeError, internal};
use crate::model::{Features, RowContext, SnapshotClock, SnapshotPolicy, leading_columns};

#[derive(serde::Serialize, serde::Deserialize)]
struct KeyState {
    model: KMeans,
    version: u64,
    snapshot: SnapshotClock,
    last_ms: i64,
}

/// An incremental k-means over one input.
pub struct ClusteringOp {
    features: Features,
    config: KMeansConfig,
    key: Option<usize>,
    time: Option<usize>,
    passthrough: Vec<usize>,
    schedule: SnapshotPolicy,
    keys: BTreeMap<String, KeyState>,
    predictions: SchemaRef,
    snapshots: SchemaRef,
    /// Rows skipped for a null or non-finite feature.
    pub skipped: u64,
    /// Keys with their own metrics (`metrics: { per_key }`), if any.
    per_key: Option<usize>,
}

impl std::fmt::Debug for ClusteringOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusteringOp({} keys)", self.keys.len())
    }
}

impl ClusteringOp {
    /// Builds the operator for `model` over rows of `input`.
    pub fn new(
        model: &Model,
        input: &SchemaRef,
        time_field: Option<&str>,
        predictions: SchemaRef,
        snapshots: SchemaRef,
    ) -> Result<Self, RuntimeError> {
        let c = model
            .clustering
            .as_ref()
            .ok_or_else(|| internal("not a clustering model"))?;
        let col = |name: &str| input.index_of(name).map_err(internal);
        Ok(Self {
            features: Features::new(&c.features, input)?,
            config: KMeansConfig {
                k: c.k as usize,
                seed_sample: c.seed_sample as usize,
                seed_tries: c.seed_tries as usize,
                seed_trim: c.seed_trim,
                half_life_ms: c.half_life.map(|h| h.as_millis() as f64),
                reseed_below: c.reseed_below,
                standardize: c.standardize,
                random_seed: c.random_seed,
            },
            key: model.key.as_deref().map(col).transpose()?,
            time: time_field.map(col).transpose()?,
            passthrough: model
                .passthrough
                .iter()
                .map(|p| col(p))
                .collect::<Result<_, _>>()?,
            schedule: SnapshotPolicy::new(model),
            keys: BTreeMap::new(),
            predictions,
            snapshots,
            skipped: 0,
            per_key: model.metrics.as_ref().map(|m| m.per_key as usize),
        })
    }

    /// Assigns, then learns, every row of `batch`; returns assignments and due snapshots.
    pub fn process(
        &mut self,
        batch: &RecordBatch,
    ) -> Result<(Option<RecordBatch>, Option<RecordBatch>), RuntimeError> {
        let n = batch.num_rows();
        let cols = self.features.columns(batch)?;
        let context = RowContext::new(batch, self.key, self.time)?;
        let d = self.features.names.len();
        let mut rows: Vec<u32> = Vec::with_capacity(n);
        let (mut cluster, mut distance, mut score) = (
            UInt32Builder::with_capacity(n),
            Float64Builder::with_capacity(n),
            Float64Builder::with_capacity(n),
        );
        let (mut out_ms, mut versions) = (Vec::with_capacity(n), Vec::with_capacity(n));
        // Rows to learn, per key, in order, with the batch's latest event time.
        let mut learn: BTreeMap<String, (Vec<Vec<f64>>, i64)> = BTreeMap::new();
        let mut x = vec![0.0; d];
        for row in 0..n {
            if !self.features.row(&cols, row, &mut x) {
                self.skipped += 1;
                continue;
            }
            let key = context.key(row);
            let ms = context.ms(row);
            if !self.keys.contains_key(key) {
                self.keys.insert(
                    key.to_string(),
                    KeyState {
                        model: KMeans::new(d, self.config.clone()),
                        version: 0,
                        snapshot: SnapshotClock::default(),
                        last_ms: ms,
                    },
                );
            }
            let Some(ks) = self.keys.get_mut(key) else {
                continue;
            };
            let a = ks.model.assign(&x);
            cluster.append_option(a.map(|a| a.cluster as u32));
            distance.append_option(a.map(|a| a.distance));
            score.append_option(a.map(|a| a.outlier_score).filter(|s| s.is_finite()));
            rows.push(row as u32);
            out_ms.push(ms);
            versions.push(ks.version);
            let entry = learn
                .entry(key.to_string())
                .or_insert_with(|| (Vec::new(), ms));
            entry.0.push(x.clone());
            entry.1 = entry.1.max(ms);
        }
        let mut due = Vec::new();
        for (key, (batch_rows, ms)) in learn {
            let Some(ks) = self.keys.get_mut(&key) else {
                continue;
            };
            ks.snapshot.learnt(batch_rows.len() as u64);
            ks.version += batch_rows.len() as u64;
            ks.model.update(&batch_rows, ms);
            ks.last_ms = ks.last_ms.max(ms);
            if ks.snapshot.due(&self.schedule, ms) && ks.model.is_seeded() {
                due.push(key);
            }
        }
        let predictions = if rows.is_empty() {
            None
        } else {
            let idx = UInt32Array::from(rows);
            let mut columns = leading_columns(batch, &idx, self.key, out_ms, &self.passthrough)?;
            columns.push(Arc::new(cluster.finish()));
            columns.push(Arc::new(distance.finish()));
            columns.push(Arc::new(score.finish()));
            columns.push(Arc::new(UInt64Array::from(versions)));
            Some(RecordBatch::try_new(self.predictions.clone(), columns).map_err(internal)?)
        };
        let snapshots = if due.is_empty() {
            None
        } else {
            Some(self.snapshot_rows(&due)?)
        };
        Ok((predictions, snapshots))
    }

    /// How the model does over all its keys: samples and total inertia of seeded keys.
    pub fn summary(&self) -> crate::ModelSummary {
        let seeded: Vec<&KeyState> = self.keys.values().filter(|k| k.model.is_seeded()).collect();
        // Cluster sizes by cluster index, summed over keys.
        let mut sizes = vec![0.0; self.config.k];
        for k in &seeded {
            for (s, c) in sizes.iter_mut().zip(k.model.centroids()) {
                *s += c.weight;
            }
        }
        crate::ModelSummary {
            kind: "clustering",
            keys: self.keys.len() as u64,
            samples: self.keys.values().map(|k| k.model.samples()).sum(),
            skipped: self.skipped,
            inertia: (!seeded.is_empty()).then(|| seeded.iter().map(|k| k.model.inertia()).sum()),
            cluster_sizes: if seeded.is_empty() { Vec::new() } else { sizes },
            per_key: crate::metrics::top_keys(
                match self.per_key {
                    Some(_) => self
                        .keys
                        .iter()
                        .map(|(k, ks)| {
                            (
                                k.clone(),
                                crate::metrics::KeyQuality {
                                    samples: ks.model.samples(),
                                    inertia: ks.model.is_seeded().then(|| ks.model.inertia()),
                                    ..Default::default()
                                },
                            )
                        })
                        .collect(),
                    None => Vec::new(),
                },
                self.per_key,
            ),
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

    /// Snapshot rows for every seeded key (the end of a bounded run).
    pub fn snapshot_all(&mut self) -> Result<Option<RecordBatch>, RuntimeError> {
        let keys: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, k)| k.model.is_seeded())
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return Ok(None);
        }
        self.snapshot_rows(&keys).map(Some)
    }

    fn snapshot_rows(&mut self, keys: &[String]) -> Result<RecordBatch, RuntimeError> {
        let mut key_values = StringBuilder::new();
        let (mut ms, mut version, mut samples, mut weight, mut inertia) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut offsets = vec![0i32];
        let (mut ids, mut weights, mut radii) = (Vec::new(), Vec::new(), Vec::new());
        let mut centers = MapBuilder::new(
            Some(MapFieldNames {
                entry: "entries".into(),
                key: "key".into(),
                value: "value".into(),
            }),
            StringBuilder::new(),
            Float64Builder::new(),
        );
        for key in keys {
            let Some(ks) = self.keys.get_mut(key) else {
                continue;
            };
            key_values.append_value(key);
            ms.push(ks.last_ms);
            version.push(ks.version);
            samples.push(ks.model.samples());
            let cs = ks.model.centroids();
            weight.push(cs.iter().map(|c| c.weight).sum::<f64>());
            inertia.push(ks.model.inertia());
            for (i, c) in cs.iter().enumerate() {
                ids.push(i as u32);
                weights.push(c.weight);
                radii.push(c.rms_radius());
                for (name, v) in self
                    .features
                    .names
                    .iter()
                    .zip(ks.model.center_in_input_units(i))
                {
                    centers.keys().append_value(name);
                    centers.values().append_value(v);
                }
                centers.append(true).map_err(internal)?;
            }
            offsets.push(ids.len() as i32);
            ks.snapshot.taken(ks.last_ms);
        }
        let centroid_type = self
            .snapshots
            .field_with_name("centroids")
            .map_err(internal)?
            .data_type()
            .clone();
        let DataType::List(item) = &centroid_type else {
            return Err(internal("centroids is not a list"));
        };
        let DataType::Struct(fields) = item.data_type() else {
            return Err(internal("centroid is not a struct"));
        };
        let fields: Fields = fields.clone();
        let map_type = fields[3].data_type().clone();
        let center_array: ArrayRef = Arc::new(centers.finish());
        let center_array = if center_array.data_type() == &map_type {
            center_array
        } else {
            cast(&center_array, &map_type).map_err(internal)?
        };
        let structs = StructArray::try_new(
            fields,
            vec![
                Arc::new(UInt32Array::from(ids)),
                Arc::new(Float64Array::from(weights)),
                Arc::new(Float64Array::from(radii)),
                center_array,
            ],
            None,
        )
        .map_err(internal)?;
        let list = ListArray::try_new(
            item.clone(),
            OffsetBuffer::new(offsets.into()),
            Arc::new(structs),
            None,
        )
        .map_err(internal)?;
        let mut columns: Vec<ArrayRef> = Vec::new();
        if let Some(k) = self.key {
            let want = self.snapshots.field(0).data_type();
            let keys: ArrayRef = Arc::new(key_values.finish());
            let _ = k;
            columns.push(if keys.data_type() == want {
                keys
            } else {
                cast(&keys, want).map_err(internal)?
            });
        }
        columns.push(Arc::new(
            TimestampMillisecondArray::from(ms).with_timezone("UTC"),
        ));
        columns.push(Arc::new(UInt64Array::from(version)));
        columns.push(Arc::new(UInt64Array::from(samples)));
        columns.push(Arc::new(Float64Array::from(weight)));
        columns.push(Arc::new(Float64Array::from(inertia)));
        columns.push(Arc::new(list));
        RecordBatch::try_new(self.snapshots.clone(), columns).map_err(internal)
    }
}
