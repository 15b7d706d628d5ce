//! Incremental k-means as a [`Learner`] of the keyed-model operator: per key a [`KMeans`].
//! Each row is assigned with the model as it was (null while the model buffers its seed
//! sample), then learnt. Besides its cluster, distance and outlier score, a row gets an
//! anomaly score (its largest distance to the cluster's robust mean of one numeric feature,
//! in robust standard deviations: see crates/ml's kmeans) and that feature's name. Snapshots list the centroids (in input units), their weights and
//! radii, and the inertia.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Float64Builder, ListArray, RecordBatch, StringBuilder, StructArray,
    UInt32Array, UInt32Builder, UInt64Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Fields, SchemaRef};
use ml::{KMeans, KMeansConfig};

use super::model::{KeyState, Learner, name_to_value};
use crate::error::{RuntimeError, internal};
use crate::metrics::{KeyQuality, ModelSummary, top_keys};

/// One key's clustering.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct State {
    model: KMeans,
}

/// The clustering learner of one model.
#[derive(Debug)]
pub struct Clustering {
    config: KMeansConfig,
    /// The one-row mini-batch each row is learnt as (kept to reuse its allocation).
    one: Vec<Vec<f64>>,
    /// A global model learnt by several tasks: this task's part in it.
    shared: Option<Shared>,
    /// Per model input, the numeric feature it is (scored by the anomaly score), or `None`
    /// for the 0/1 inputs of a categorical feature.
    numeric: Vec<Option<String>>,
}

/// A task's part in a global clustering learnt by several tasks.
#[derive(Debug)]
struct Shared {
    /// The task (of the partition of that number): task 0 seeds and reseeds the clusters;
    /// the others take its seed.
    task: i32,
    /// The model that assigns, this task's share merged with the others' (rebuilt per row
    /// in the same allocation).
    merged: KMeans,
}

impl Clustering {
    /// The learner of `c`.
    pub fn new(c: &planner::Clustering, _input: &SchemaRef) -> Result<Self, RuntimeError> {
        let numeric: Vec<Option<String>> = c
            .features
            .iter()
            .flat_map(|f| match f {
                planner::Feature::Numeric(name) => vec![Some(name.clone())],
                planner::Feature::OneHot { values, .. } => vec![None; values.len()],
                planner::Feature::Hashed { buckets, .. } => vec![None; *buckets as usize],
            })
            .collect();
        Ok(Self {
            config: KMeansConfig {
                k: c.k as usize,
                seed_sample: c.seed_sample as usize,
                seed_tries: c.seed_tries as usize,
                seed_trim: c.seed_trim,
                half_life_ms: c.half_life.map(|h| h.as_millis() as f64),
                reseed_below: c.reseed_below,
                standardize: c.standardize,
                random_seed: c.random_seed,
                scored: numeric.iter().map(Option::is_some).collect(),
            },
            one: vec![Vec::new()],
            shared: None,
            numeric,
        })
    }
}

/// Appends an assignment (nulls without one) to the prediction builders.
fn append(out: &mut Out, a: Option<ml::Assignment>, numeric: &[Option<String>]) {
    out.cluster.append_option(a.map(|a| a.cluster as u32));
    out.distance.append_option(a.map(|a| a.distance));
    out.score
        .append_option(a.map(|a| a.outlier_score).filter(|s| s.is_finite()));
    // Without a numeric feature there is nothing to score.
    let feature = a.and_then(|a| numeric.get(a.anomaly_dim)?.as_deref());
    out.anomaly
        .append_option(a.filter(|_| feature.is_some()).map(|a| a.anomaly_score));
    out.anomaly_feature.append_option(feature);
}

/// Prediction builders: cluster, distance, outlier score, anomaly score and feature.
#[derive(Debug)]
pub struct Out {
    cluster: UInt32Builder,
    distance: Float64Builder,
    score: Float64Builder,
    anomaly: Float64Builder,
    anomaly_feature: StringBuilder,
}

impl Learner for Clustering {
    type State = State;
    type Columns = ();
    type Out = Out;

    fn fresh(&self, d: usize) -> State {
        State {
            model: KMeans::new(d, self.config.clone()),
        }
    }

    fn columns(&self, _batch: &RecordBatch) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn out(&self, n: usize) -> Out {
        Out {
            cluster: UInt32Builder::with_capacity(n),
            distance: Float64Builder::with_capacity(n),
            score: Float64Builder::with_capacity(n),
            anomaly: Float64Builder::with_capacity(n),
            anomaly_feature: StringBuilder::with_capacity(n, 16 * n),
        }
    }

    fn step(
        &mut self,
        ks: &mut State,
        base: Option<&State>,
        x: &[f64],
        _row: usize,
        ms: i64,
        _cols: &(),
        out: &mut Out,
    ) -> bool {
        if let Some(sh) = &mut self.shared {
            let (a, learnt) =
                ks.model
                    .learn_shared(x, ms, base.map(|b| &b.model), &mut sh.merged, sh.task);
            append(out, a, &self.numeric);
            return learnt;
        }
        let a = ks.model.assign(x);
        append(out, a, &self.numeric);
        self.one[0].clear();
        self.one[0].extend_from_slice(x);
        ks.model.update(&self.one, ms);
        true
    }

    fn mergeable(&self) -> bool {
        true
    }

    fn share(&mut self, task: i32) {
        self.shared = Some(Shared {
            task,
            merged: KMeans::new(0, self.config.clone()),
        });
    }

    /// Cluster statistics merge exactly (weights and SSEs add, centres average by weight;
    /// with forgetting, aged to the latest clock first), cluster by cluster of the same
    /// seeding.
    fn combine(&self, parts: &[&State]) -> Option<State> {
        let mut model = KMeans::new(parts.first()?.model.dims(), self.config.clone());
        for p in parts {
            model.merge(&p.model);
        }
        Some(State { model })
    }

    fn with_base(&self, own: &State, base: &State) -> Option<State> {
        let mut model = KMeans::new(0, self.config.clone());
        model.set_to_merge(Some(&base.model), &own.model);
        Some(State { model })
    }

    /// The leader seeds once the others' kept rows fill its seed sample.
    fn rebase(&mut self, own: &mut State, base: &State, ms: i64) -> bool {
        self.shared.as_ref().is_some_and(|s| s.task == 0)
            && own.model.seed_with(Some(&base.model), ms)
    }

    fn finish(&self, mut out: Out) -> Vec<ArrayRef> {
        vec![
            Arc::new(out.cluster.finish()),
            Arc::new(out.distance.finish()),
            Arc::new(out.score.finish()),
            Arc::new(out.anomaly.finish()),
            Arc::new(out.anomaly_feature.finish()),
        ]
    }

    fn ready(&self, state: &State) -> bool {
        state.model.is_seeded()
    }

    fn snapshot(
        &self,
        keys: &[&KeyState<State>],
        names: &[String],
        schema: &SchemaRef,
    ) -> Result<Vec<ArrayRef>, RuntimeError> {
        let (mut samples, mut weight, mut inertia) = (Vec::new(), Vec::new(), Vec::new());
        let mut offsets = vec![0i32];
        let (mut ids, mut weights, mut radii) = (Vec::new(), Vec::new(), Vec::new());
        let mut centers = name_to_value();
        for k in keys {
            let model = &k.learnt.model;
            samples.push(model.samples());
            let cs = model.centroids();
            weight.push(cs.iter().map(|c| c.weight).sum::<f64>());
            inertia.push(model.inertia());
            for (i, c) in cs.iter().enumerate() {
                ids.push(i as u32);
                weights.push(c.weight);
                radii.push(c.rms_radius());
                for (name, v) in names.iter().zip(model.center_in_input_units(i)) {
                    centers.keys().append_value(name);
                    centers.values().append_value(v);
                }
                centers.append(true).map_err(internal)?;
            }
            offsets.push(ids.len() as i32);
        }
        let centroid_type = schema
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
        Ok(vec![
            Arc::new(UInt64Array::from(samples)),
            Arc::new(Float64Array::from(weight)),
            Arc::new(Float64Array::from(inertia)),
            Arc::new(list),
        ])
    }

    /// Samples and total inertia of seeded keys.
    fn summary(
        &self,
        keys: &BTreeMap<String, KeyState<State>>,
        _names: &[String],
        per_key: Option<usize>,
    ) -> ModelSummary {
        let seeded: Vec<&KMeans> = keys
            .values()
            .map(|k| &k.learnt.model)
            .filter(|m| m.is_seeded())
            .collect();
        // Cluster sizes by cluster index, summed over keys.
        let mut sizes = vec![0.0; self.config.k];
        for m in &seeded {
            for (s, c) in sizes.iter_mut().zip(m.centroids()) {
                *s += c.weight;
            }
        }
        ModelSummary {
            kind: "clustering",
            skipped: keys.values().map(|k| k.learnt.model.unlearnt()).sum(),
            samples: keys.values().map(|k| k.learnt.model.samples()).sum(),
            inertia: (!seeded.is_empty()).then(|| seeded.iter().map(|m| m.inertia()).sum()),
            cluster_sizes: if seeded.is_empty() { Vec::new() } else { sizes },
            per_key: top_keys(
                match per_key {
                    Some(_) => keys
                        .iter()
                        .map(|(k, ks)| {
                            let m = &ks.learnt.model;
                            (
                                k.clone(),
                                KeyQuality {
                                    samples: m.samples(),
                                    inertia: m.is_seeded().then(|| m.inertia()),
                                    ..Default::default()
                                },
                            )
                        })
                        .collect(),
                    None => Vec::new(),
                },
                per_key,
            ),
            ..Default::default()
        }
    }
}
