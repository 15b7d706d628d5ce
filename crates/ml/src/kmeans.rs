//! Incremental k-means.
//!
//! The first `seed_sample` rows are buffered and clustered in batch: k-means++ seeding
//! followed by Lloyd iterations, `seed_tries` times, keeping the run with the least inertia.
//! From then on every mini-batch is assigned to the nearest centroids and folded in: each
//! centroid keeps its weight, the weighted mean of its points (its centre) and the weighted
//! sum of squared distances to that centre (its SSE), updated with Welford steps, so a centre
//! is exactly the mean of the points it was given. With a half-life, weights and SSEs decay
//! with event time before each mini-batch (as Spark's StreamingKMeans decays). A cluster whose
//! share of the total weight falls below `reseed_below` is moved to the mini-batch point
//! farthest from its centre. Each row also gets an outlier score: its distance to the centre
//! over the cluster's RMS radius.
//!
//! With `standardize`, features are scaled by the seed sample's means and standard deviations
//! (then fixed, so that centres keep their meaning over time); a feature constant in the
//! sample is only centred, as scikit-learn's StandardScaler does.
//!
//! With `seed_trim`, that fraction of the seed sample, the points farthest from their fifth
//! nearest neighbour (isolated points), is left out of seeding.
//!
//! Each cluster also keeps a robust spread per dimension: a winsorised mean and variance
//! (a point is clipped to the cluster's mean ± [`CLIP`] standard deviations of that dimension
//! before it is folded into them, once the cluster has weight [`ROBUST_AFTER`]), so that the
//! anomalies a cluster receives do not widen it. A row's anomaly score is its largest
//! per-dimension distance to its cluster's robust mean in robust standard deviations, over
//! the dimensions the configuration scores (numeric features: categorical inputs say which
//! kind of row it is, not how unusual it is).

use crate::Welford;

/// Settings of a k-means model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KMeansConfig {
    /// Number of clusters.
    pub k: usize,
    /// Rows buffered for seeding.
    pub seed_sample: usize,
    /// Seeding runs; the one with the least inertia wins.
    pub seed_tries: usize,
    /// Fraction of the seed sample left out of seeding as outliers: the points farthest from
    /// their nearest neighbours. k-means++ favours far points as centres, so without it an
    /// outlier in the sample can become a centre that later outliers join unnoticed.
    #[serde(default)]
    pub seed_trim: f64,
    /// Forgetting half-life in ms of event time, if any.
    pub half_life_ms: Option<f64>,
    /// Reseed clusters whose weight share falls below this.
    pub reseed_below: f64,
    /// Scale features by the seed sample's statistics.
    pub standardize: bool,
    /// Random seed.
    pub random_seed: u64,
    /// Dimensions the anomaly score looks at; empty: all.
    #[serde(default)]
    pub scored: Vec<bool>,
}

/// Robust spread: a point is clipped to this many standard deviations around the cluster's
/// robust mean of each dimension before it is folded into that dimension's robust statistics.
pub const CLIP: f64 = 3.0;
/// A cluster clips once it has at least this weight (before, its spread is too uncertain).
pub const ROBUST_AFTER: f64 = 20.0;
/// Smallest robust standard deviation (in the model's space, standard deviations of the
/// seed sample when standardised): a dimension constant in a cluster still gives a finite
/// score, and its clip range can widen if the data starts to vary.
pub const SPREAD_FLOOR: f64 = 1e-3;

/// One cluster.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Centroid {
    /// Total (decayed) weight of its points.
    pub weight: f64,
    /// Its centre, in the model's (possibly standardised) space.
    pub center: Vec<f64>,
    /// Weighted sum of squared distances of its points to the centre.
    pub sse: f64,
    /// Per dimension, the winsorised mean of its points (see the module's documentation).
    #[serde(default)]
    pub robust_mean: Vec<f64>,
    /// Per dimension, the winsorised weighted sum of squared deviations from `robust_mean`.
    #[serde(default)]
    pub robust_m2: Vec<f64>,
}

impl Clone for Centroid {
    fn clone(&self) -> Self {
        Self {
            weight: self.weight,
            center: self.center.clone(),
            sse: self.sse,
            robust_mean: self.robust_mean.clone(),
            robust_m2: self.robust_m2.clone(),
        }
    }

    /// Reuses the allocations (a merged model is rebuilt per row).
    fn clone_from(&mut self, other: &Self) {
        self.weight = other.weight;
        self.center.clone_from(&other.center);
        self.sse = other.sse;
        self.robust_mean.clone_from(&other.robust_mean);
        self.robust_m2.clone_from(&other.robust_m2);
    }
}

impl Centroid {
    /// A cluster of one point.
    pub fn point(z: Vec<f64>) -> Self {
        Self {
            weight: 1.0,
            robust_mean: z.clone(),
            robust_m2: vec![0.0; z.len()],
            center: z,
            sse: 0.0,
        }
    }

    /// A cluster with no weight yet, centred at `center`.
    pub fn empty(center: Vec<f64>) -> Self {
        Self {
            weight: 0.0,
            robust_mean: center.clone(),
            robust_m2: vec![0.0; center.len()],
            center,
            sse: 0.0,
        }
    }

    /// Forgets all its points, keeping its centre.
    fn clear(&mut self) {
        self.weight = 0.0;
        self.sse = 0.0;
        self.robust_mean.clone_from(&self.center);
        self.robust_m2.iter_mut().for_each(|m| *m = 0.0);
    }

    /// Scales its weight and spreads by `f` (forgetting).
    fn decay(&mut self, f: f64) {
        self.weight *= f;
        self.sse *= f;
        self.robust_m2.iter_mut().for_each(|m| *m *= f);
    }

    /// A state restored from before the robust spread existed starts it from the centre,
    /// with the cluster's SSE shared equally by the dimensions.
    fn ensure_spread(&mut self) {
        let d = self.center.len();
        if self.robust_mean.len() != d || self.robust_m2.len() != d {
            self.robust_mean.clone_from(&self.center);
            self.robust_m2 = vec![self.sse / d.max(1) as f64; d];
        }
    }

    /// The robust standard deviation of dimension `j`.
    fn robust_sd(&self, j: usize) -> f64 {
        let m2 = self.robust_m2.get(j).copied().unwrap_or(0.0);
        if self.weight > 0.0 {
            (m2 / self.weight).sqrt().max(SPREAD_FLOOR)
        } else {
            SPREAD_FLOOR
        }
    }

    /// The largest distance of `z` to the robust mean, in robust standard deviations, over
    /// the dimensions `scored` says (all when empty), and that dimension.
    pub fn anomaly(&self, z: &[f64], scored: &[bool]) -> (f64, usize) {
        let mut best = (0.0, 0);
        for (j, v) in z.iter().enumerate() {
            if scored.get(j) == Some(&false) {
                continue;
            }
            let mean = self.robust_mean.get(j).copied().unwrap_or(self.center[j]);
            let score = (v - mean).abs() / self.robust_sd(j);
            if score > best.0 {
                best = (score, j);
            }
        }
        best
    }
    /// Root-mean-square distance of its points to the centre.
    pub fn rms_radius(&self) -> f64 {
        if self.weight > 0.0 {
            (self.sse / self.weight).sqrt()
        } else {
            0.0
        }
    }

    fn add(&mut self, x: &[f64], w: f64) {
        self.ensure_spread();
        let total = self.weight + w;
        let clips = self.weight >= ROBUST_AFTER;
        for (j, v) in x.iter().enumerate() {
            let mean = self.robust_mean[j];
            let v = if clips {
                let r = CLIP * self.robust_sd(j);
                v.clamp(mean - r, mean + r)
            } else {
                *v
            };
            let delta = v - mean;
            self.robust_mean[j] += delta * w / total;
            self.robust_m2[j] += w * self.weight / total * delta * delta;
        }
        let mut dist2 = 0.0;
        for (c, v) in self.center.iter_mut().zip(x) {
            let delta = v - *c;
            dist2 += delta * delta;
            *c += delta * w / total;
        }
        self.sse += w * self.weight / total * dist2;
        self.weight = total;
    }

    /// Merges `other`, the statistics of other points, its weight and SSE scaled by `f`
    /// (decay): weights and SSEs add, centres average by weight (Chan et al.).
    fn merge(&mut self, other: &Centroid, f: f64) {
        let wb = other.weight * f;
        let total = self.weight + wb;
        if wb <= 0.0 {
            return;
        }
        if self.weight <= 0.0 {
            self.clone_from(other);
            self.decay(f);
            self.ensure_spread();
            return;
        }
        self.ensure_spread();
        let d = self.robust_mean.len();
        let owned;
        let theirs = if other.robust_mean.len() == d && other.robust_m2.len() == d {
            other
        } else {
            owned = {
                let mut c = other.clone();
                c.ensure_spread();
                c
            };
            &owned
        };
        // Chan et al. per dimension, as for the centre: exact for the winsorised values
        // each side folded (each clipped by its own bounds).
        for j in 0..self.robust_mean.len() {
            let delta = theirs.robust_mean[j] - self.robust_mean[j];
            self.robust_mean[j] += delta * wb / total;
            self.robust_m2[j] += theirs.robust_m2[j] * f + self.weight * wb / total * delta * delta;
        }
        let mut dist2 = 0.0;
        for (c, v) in self.center.iter_mut().zip(&other.center) {
            let delta = v - *c;
            dist2 += delta * delta;
            *c += delta * wb / total;
        }
        self.sse += other.sse * f + self.weight * wb / total * dist2;
        self.weight = total;
    }
}

/// Where a row belongs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assignment {
    /// The nearest cluster.
    pub cluster: usize,
    /// Euclidean distance to its centre (in the model's space).
    pub distance: f64,
    /// `distance / rms_radius` of the cluster (∞ for a point away from a zero-radius cluster).
    pub outlier_score: f64,
    /// The largest per-dimension distance to the cluster's robust mean, in its robust
    /// standard deviations, over the scored dimensions.
    pub anomaly_score: f64,
    /// The dimension of `anomaly_score`.
    pub anomaly_dim: usize,
}

/// A k-means model learning from a stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KMeans {
    config: KMeansConfig,
    d: usize,
    buffer: Vec<Vec<f64>>,
    scaler: Option<Vec<(f64, f64)>>,
    centroids: Vec<Centroid>,
    rng: SplitMix64,
    clock: Option<i64>,
    samples: u64,
    reseeds: u64,
    /// Per cluster, how often it was (re)seeded: statistics of a cluster from different
    /// seedings never merge (a global model learnt by several tasks).
    #[serde(default)]
    generations: Vec<u64>,
    /// Rows not learnt: a task of a global model whose wait for the seed outlasted its
    /// buffer.
    #[serde(default)]
    unlearnt: u64,
    /// The task whose share of a global model this is (set when it first learns a row).
    #[serde(default)]
    task: Option<i32>,
    /// A merge of shares: whose kept rows `buffer` holds, in order, as (task, rows).
    #[serde(default)]
    buffer_from: Vec<(i32, usize)>,
    /// The leader's seed: how many of each task's first kept rows it was placed by and
    /// learnt (their tasks do not learn them again), as (task, rows).
    #[serde(default)]
    seeded_from: Vec<(i32, usize)>,
}

/// A small deterministic generator (SplitMix64): same seed, same clusters, on every platform.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The indices of `points` without the `fraction` of them farthest from their `m`-th nearest
/// neighbour.
fn kept(points: &[Vec<f64>], fraction: f64, m: usize) -> Vec<usize> {
    let n = points.len();
    let drop = (n as f64 * fraction).floor() as usize;
    if drop == 0 || n <= m {
        return (0..n).collect();
    }
    let mut isolation: Vec<(f64, usize)> = (0..n)
        .map(|i| {
            let mut d: Vec<f64> = (0..n)
                .filter(|j| *j != i)
                .map(|j| dist2(&points[i], &points[j]))
                .collect();
            let (_, kth, _) = d.select_nth_unstable_by(m - 1, f64::total_cmp);
            (*kth, i)
        })
        .collect();
    isolation.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut dropped = vec![false; n];
    for (_, i) in isolation.iter().take(drop) {
        dropped[*i] = true;
    }
    (0..n).filter(|i| !dropped[*i]).collect()
}

/// The first `n` rows of runs of rows `(task, rows)`.
fn prefix(runs: &[(i32, usize)], mut n: usize) -> Vec<(i32, usize)> {
    let mut out = Vec::new();
    for (t, rows) in runs {
        if n == 0 {
            break;
        }
        let m = (*rows).min(n);
        out.push((*t, m));
        n -= m;
    }
    out
}

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

fn nearest(centers: &[Vec<f64>], x: &[f64]) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (i, c) in centers.iter().enumerate() {
        let d = dist2(c, x);
        if d < best.1 {
            best = (i, d);
        }
    }
    best
}

impl KMeans {
    /// A model for `d` features.
    pub fn new(d: usize, config: KMeansConfig) -> Self {
        Self {
            rng: SplitMix64(config.random_seed),
            buffer: Vec::with_capacity(config.seed_sample),
            config,
            d,
            scaler: None,
            centroids: Vec::new(),
            clock: None,
            samples: 0,
            reseeds: 0,
            generations: Vec::new(),
            unlearnt: 0,
            task: None,
            buffer_from: Vec::new(),
            seeded_from: Vec::new(),
        }
    }

    /// Whether seeding is done (assignments are available).
    pub fn is_seeded(&self) -> bool {
        !self.centroids.is_empty()
    }

    /// The clusters (empty until seeded).
    pub fn centroids(&self) -> &[Centroid] {
        &self.centroids
    }

    /// Number of features.
    pub fn dims(&self) -> usize {
        self.d
    }

    /// Rows learnt from.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Clusters reseeded so far.
    pub fn reseeds(&self) -> u64 {
        self.reseeds
    }

    /// Sum of the clusters' SSEs.
    pub fn inertia(&self) -> f64 {
        self.centroids.iter().map(|c| c.sse).sum()
    }

    /// A centre in the input's units (undoing standardisation).
    pub fn center_in_input_units(&self, cluster: usize) -> Vec<f64> {
        let c = &self.centroids[cluster].center;
        match &self.scaler {
            Some(s) => c.iter().zip(s).map(|(v, (m, sd))| v * sd + m).collect(),
            None => c.clone(),
        }
    }

    fn scale(&self, x: &[f64]) -> Vec<f64> {
        match &self.scaler {
            Some(s) => x.iter().zip(s).map(|(v, (m, sd))| (v - m) / sd).collect(),
            None => x.to_vec(),
        }
    }

    /// The cluster of `x` (`None` until seeded).
    pub fn assign(&self, x: &[f64]) -> Option<Assignment> {
        if self.centroids.is_empty() {
            return None;
        }
        let z = self.scale(x);
        let mut best = (0, f64::INFINITY);
        for (i, c) in self.centroids.iter().enumerate() {
            let d = dist2(&c.center, &z);
            if d < best.1 {
                best = (i, d);
            }
        }
        let distance = best.1.sqrt();
        let radius = self.centroids[best.0].rms_radius();
        let outlier_score = if radius > 0.0 {
            distance / radius
        } else if distance == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        let (anomaly_score, anomaly_dim) = self.centroids[best.0].anomaly(&z, &self.config.scored);
        Some(Assignment {
            cluster: best.0,
            distance,
            outlier_score,
            anomaly_score,
            anomaly_dim,
        })
    }

    /// Learns a mini-batch of rows observed at event time `now_ms`.
    pub fn update(&mut self, rows: &[Vec<f64>], now_ms: i64) {
        if rows.is_empty() {
            return;
        }
        self.samples += rows.len() as u64;
        if !self.is_seeded() {
            let room = self.config.seed_sample.saturating_sub(self.buffer.len());
            self.buffer.extend(rows.iter().take(room).cloned());
            if self.buffer.len() >= self.config.seed_sample.max(self.config.k) {
                self.seed(&[], &[]);
                // Rows past the seed sample in this batch are learnt as a mini-batch.
                let rest: Vec<Vec<f64>> = rows.iter().skip(room).cloned().collect();
                self.clock = Some(now_ms);
                self.fold(&rest);
            }
            return;
        }
        self.decay_to(now_ms);
        self.fold(rows);
    }

    /// Counts a reseeding of cluster `i`: a new generation of it.
    fn reseeded(&mut self, i: usize) {
        self.reseeds += 1;
        self.generations.resize(self.centroids.len(), 1);
        self.generations[i] += 1;
    }

    /// The generation of cluster `i` (1 for a model written before generations were kept).
    fn generation(&self, i: usize) -> u64 {
        self.generations.get(i).copied().unwrap_or(1)
    }

    /// Rows a task of a global model keeps while it waits for the seed: the seed sample, or
    /// about 400 kB of features if that is more (the buffer is part of its committed state).
    fn wait_cap(&self) -> usize {
        self.config
            .seed_sample
            .max(400_000 / (9 * self.d.max(1) + 2))
    }

    /// Rows not learnt because a task's wait for the seed outlasted its buffer.
    pub fn unlearnt(&self) -> u64 {
        self.unlearnt
    }

    /// Merges `other`, a share of the same global model learnt from other rows, into this
    /// one, exactly: with forgetting both are first decayed to the later clock; per cluster
    /// of the same generation, weights and SSEs add and centres average by weight (Chan et
    /// al.'s pairwise update); a newer generation of a cluster (a reseeding) replaces an
    /// older one. An unseeded share adds its rows and its buffer (up to the seed sample).
    pub fn merge(&mut self, other: &KMeans) {
        self.samples += other.samples;
        self.unlearnt += other.unlearnt;
        self.reseeds += other.reseeds;
        let room = self.config.seed_sample.saturating_sub(self.buffer.len());
        let taken = room.min(other.buffer.len());
        self.buffer.extend(other.buffer.iter().take(taken).cloned());
        let from = match (&other.buffer_from[..], other.task) {
            ([], Some(t)) => vec![(t, other.buffer.len())],
            (runs, _) => runs.to_vec(),
        };
        self.buffer_from.extend(prefix(&from, taken));
        if self.seeded_from.is_empty() {
            self.seeded_from.clone_from(&other.seeded_from);
        }
        if !other.is_seeded() {
            return;
        }
        if !self.is_seeded() {
            self.scaler.clone_from(&other.scaler);
            self.centroids.clone_from(&other.centroids);
            self.generations.clone_from(&other.generations);
            self.clock = other.clock;
            return;
        }
        let (mut f_self, mut f_other) = (1.0, 1.0);
        if let Some(h) = self.config.half_life_ms {
            let t = self.clock.max(other.clock);
            let age = |c: Option<i64>| match (t, c) {
                (Some(t), Some(c)) => 0.5f64.powf((t - c) as f64 / h),
                _ => 1.0,
            };
            (f_self, f_other) = (age(self.clock), age(other.clock));
            self.clock = t;
        }
        for i in 0..self.centroids.len().min(other.centroids.len()) {
            let (mine, theirs) = (self.generation(i), other.generation(i));
            let c = &mut self.centroids[i];
            if theirs > mine {
                c.clone_from(&other.centroids[i]);
                c.decay(f_other);
                self.generations.resize(self.centroids.len(), 1);
                self.generations[i] = theirs;
            } else {
                c.decay(f_self);
                if theirs == mine {
                    c.merge(&other.centroids[i], f_other);
                }
            }
        }
    }

    /// Makes this model `base` merged with `own` (`base` absent: `own`), reusing this
    /// model's allocations: the model a task of a global model assigns with.
    pub fn set_to_merge(&mut self, base: Option<&KMeans>, own: &KMeans) {
        let first = base.unwrap_or(own);
        self.d = first.d;
        self.config.clone_from(&first.config);
        self.buffer.clear();
        self.buffer_from.clear();
        self.seeded_from.clone_from(&first.seeded_from);
        self.task = first.task;
        self.scaler.clone_from(&first.scaler);
        self.centroids.clone_from(&first.centroids);
        self.generations.clone_from(&first.generations);
        self.clock = first.clock;
        self.samples = first.samples;
        self.unlearnt = first.unlearnt;
        self.reseeds = first.reseeds;
        if base.is_some() {
            self.merge(own);
        }
    }

    /// Learns row `x` (event time `now_ms`) as task `task`'s share of a global model learnt
    /// by several tasks. `base` is the merge of the other tasks' latest shares; `merged` is
    /// scratch space for `base` merged with this share, the model that assigns. Task 0
    /// leads: it seeds the model from its own kept rows topped up with the others' (in
    /// `base`) and learns them all, so that the seed's clusters have the weight of the rows
    /// that placed them on every task (the others then do not learn those rows again), and
    /// alone reseeds dying clusters; the other shares keep their rows (up to a cap, counted
    /// past it) until the seed reaches them in `base`, then learn those the seed did not.
    /// Returns the row's assignment by the model as it was (`None` before the seed) and
    /// whether the row was learnt.
    pub fn learn_shared(
        &mut self,
        x: &[f64],
        now_ms: i64,
        base: Option<&KMeans>,
        merged: &mut KMeans,
        task: i32,
    ) -> (Option<Assignment>, bool) {
        self.task = Some(task);
        let leads = task == 0;
        if !self.is_seeded() {
            if leads {
                self.samples += 1;
                self.buffer.push(x.to_vec());
                self.seed_with(base, now_ms);
                return (None, true);
            }
            match base.filter(|b| b.is_seeded()) {
                Some(b) => self.adopt(b, merged, now_ms),
                None if self.buffer.len() < self.wait_cap() => {
                    self.samples += 1;
                    self.buffer.push(x.to_vec());
                    return (None, true);
                }
                None => {
                    self.unlearnt += 1;
                    return (None, false);
                }
            }
        }
        // A cluster the leader reseeded starts again here too.
        if let Some(b) = base {
            for i in 0..self.centroids.len().min(b.centroids.len()) {
                if b.generation(i) > self.generation(i) {
                    self.centroids[i].clear();
                    self.generations.resize(self.centroids.len(), 1);
                    self.generations[i] = b.generation(i);
                }
            }
        }
        self.decay_to(now_ms);
        merged.set_to_merge(base, self);
        let Some(a) = merged.assign(x) else {
            return (None, false);
        };
        let z = self.scale(x);
        self.centroids[a.cluster].add(&z, 1.0);
        self.samples += 1;
        // Only once every share that has committed learns with the seed: before that, a
        // cluster placed by another task's rows has no weight yet.
        let settled = base.is_some_and(|b| b.buffer.is_empty());
        if leads && settled && self.config.reseed_below > 0.0 {
            let total: f64 = merged.centroids.iter().map(|c| c.weight).sum::<f64>() + 1.0;
            let dying = (0..merged.centroids.len()).find(|i| {
                let w = merged.centroids[*i].weight + if *i == a.cluster { 1.0 } else { 0.0 };
                w / total < self.config.reseed_below
            });
            if let Some(i) = dying {
                self.centroids[i] = Centroid::point(z);
                self.reseeded(i);
            }
        }
        (Some(a), true)
    }

    /// Seeds the leader's share of a global model once its buffered rows and the others'
    /// (in `base`) fill the seed sample; returns whether it did.
    pub fn seed_with(&mut self, base: Option<&KMeans>, now_ms: i64) -> bool {
        self.task = Some(0);
        let (extra, from) =
            base.map_or((&[][..], &[][..]), |b| (&b.buffer[..], &b.buffer_from[..]));
        if self.is_seeded()
            || self.buffer.len() + extra.len() < self.config.seed_sample.max(self.config.k)
        {
            return false;
        }
        self.seed(extra, from);
        self.clock = Some(now_ms);
        true
    }

    /// Takes the leader's seed (`seed`: its scaler and clusters), with no weight of its own
    /// yet, and learns the rows kept while waiting for it.
    fn adopt(&mut self, seed: &KMeans, merged: &mut KMeans, now_ms: i64) {
        self.scaler.clone_from(&seed.scaler);
        self.centroids = seed
            .centroids
            .iter()
            .map(|c| Centroid::empty(c.center.clone()))
            .collect();
        self.generations = (0..seed.centroids.len())
            .map(|i| seed.generation(i))
            .collect();
        self.clock = Some(now_ms);
        // The rows the leader's seed took from this task were learnt by it.
        let skip: usize = seed
            .seeded_from
            .iter()
            .filter(|(t, _)| Some(*t) == self.task)
            .map(|(_, n)| n)
            .sum();
        for row in std::mem::take(&mut self.buffer).into_iter().skip(skip) {
            merged.set_to_merge(Some(seed), self);
            if let Some(a) = merged.assign(&row) {
                let z = self.scale(&row);
                self.centroids[a.cluster].add(&z, 1.0);
            }
        }
    }

    /// Decays the clusters to event time `now_ms` (with a half-life).
    fn decay_to(&mut self, now_ms: i64) {
        if let (Some(h), Some(t)) = (self.config.half_life_ms, self.clock)
            && now_ms > t
        {
            let f = 0.5f64.powf((now_ms - t) as f64 / h);
            for c in &mut self.centroids {
                c.decay(f);
            }
        }
        self.clock = Some(self.clock.map_or(now_ms, |t| t.max(now_ms)));
    }

    fn fold(&mut self, rows: &[Vec<f64>]) {
        if rows.is_empty() {
            return;
        }
        let scaled: Vec<Vec<f64>> = rows.iter().map(|r| self.scale(r)).collect();
        // Mini-batch: assign every row with the centres as they were, then fold.
        let centers: Vec<Vec<f64>> = self.centroids.iter().map(|c| c.center.clone()).collect();
        let assigned: Vec<(usize, f64)> = scaled.iter().map(|z| nearest(&centers, z)).collect();
        for (z, (c, _)) in scaled.iter().zip(&assigned) {
            self.centroids[*c].add(z, 1.0);
        }
        // Reseed dying clusters on the farthest points of this batch.
        let total: f64 = self.centroids.iter().map(|c| c.weight).sum();
        if self.config.reseed_below > 0.0 && total > 0.0 {
            let mut order: Vec<usize> = (0..scaled.len()).collect();
            order.sort_by(|a, b| assigned[*b].1.total_cmp(&assigned[*a].1));
            let mut far = order.into_iter();
            for i in 0..self.centroids.len() {
                if self.centroids[i].weight / total < self.config.reseed_below
                    && let Some(p) = far.next()
                {
                    self.centroids[i] = Centroid::point(scaled[p].clone());
                    self.reseeded(i);
                }
            }
        }
    }

    /// k-means++ and Lloyd on the buffered sample, topped up to `seed_sample` rows from
    /// `extra` (rows other tasks of a global model buffered, `extra_from` saying whose),
    /// best of `seed_tries`; the buffered rows and the others' rows of a known task are
    /// folded in by their labels (recorded in `seeded_from`, so that their tasks skip them).
    fn seed(&mut self, extra: &[Vec<f64>], extra_from: &[(i32, usize)]) {
        let own = std::mem::take(&mut self.buffer);
        let room = self.config.seed_sample.saturating_sub(own.len());
        let sample: Vec<&Vec<f64>> = own.iter().chain(extra.iter().take(room)).collect();
        // The others' rows of a known task are learnt here (and skipped by their task).
        self.seeded_from = prefix(extra_from, room.min(extra.len()));
        let learnt = own.len() + self.seeded_from.iter().map(|(_, n)| n).sum::<usize>();
        if self.config.standardize {
            let mut stats = vec![Welford::default(); self.d];
            for row in &sample {
                for (s, v) in stats.iter_mut().zip(row.iter()) {
                    s.update(*v, 1.0);
                }
            }
            // A feature constant in the sample keeps its unit (scale 1), so that later values
            // away from the constant still count.
            self.scaler = Some(
                stats
                    .iter()
                    .map(|s| {
                        let sd = s.variance().sqrt();
                        (s.mean(), if sd > 0.0 { sd } else { 1.0 })
                    })
                    .collect(),
            );
        }
        let scaled: Vec<Vec<f64>> = sample.iter().map(|r| self.scale(r)).collect();
        let keep = kept(&scaled, self.config.seed_trim, 5);
        let points: Vec<Vec<f64>> = keep.iter().map(|i| scaled[*i].clone()).collect();
        let k = self.config.k.min(points.len());
        let mut best: Option<(f64, Vec<usize>)> = None;
        for _ in 0..self.config.seed_tries.max(1) {
            let centers = self.plus_plus(&points, k);
            let (labels, inertia) = lloyd(&points, centers, 100);
            if best.as_ref().is_none_or(|(b, _)| inertia < *b) {
                best = Some((inertia, labels));
            }
        }
        let labels = best.map(|(_, l)| l).unwrap_or_default();
        self.centroids = (0..k).map(|_| Centroid::empty(vec![0.0; self.d])).collect();
        self.generations = vec![1; k];
        for ((p, l), i) in points.iter().zip(&labels).zip(&keep) {
            if *i < learnt {
                self.centroids[*l].add(p, 1.0);
            }
        }
    }

    fn plus_plus(&mut self, points: &[Vec<f64>], k: usize) -> Vec<Vec<f64>> {
        let first = (self.rng.next_u64() % points.len() as u64) as usize;
        let mut centers = vec![points[first].clone()];
        let mut d2: Vec<f64> = points.iter().map(|p| dist2(p, &centers[0])).collect();
        while centers.len() < k {
            let total: f64 = d2.iter().sum();
            let pick = if total > 0.0 {
                let mut r = self.rng.next_f64() * total;
                let mut chosen = points.len() - 1;
                for (i, d) in d2.iter().enumerate() {
                    if r < *d {
                        chosen = i;
                        break;
                    }
                    r -= d;
                }
                chosen
            } else {
                (self.rng.next_u64() % points.len() as u64) as usize
            };
            centers.push(points[pick].clone());
            for (d, p) in d2.iter_mut().zip(points) {
                *d = d.min(dist2(p, &points[pick]));
            }
        }
        centers
    }
}

/// Lloyd's iterations from `centers`; returns labels and inertia.
fn lloyd(points: &[Vec<f64>], mut centers: Vec<Vec<f64>>, max_iter: usize) -> (Vec<usize>, f64) {
    let d = points.first().map_or(0, Vec::len);
    let mut labels = vec![usize::MAX; points.len()];
    for _ in 0..max_iter {
        let mut changed = false;
        for (p, l) in points.iter().zip(labels.iter_mut()) {
            let (c, _) = nearest(&centers, p);
            if *l != c {
                *l = c;
                changed = true;
            }
        }
        let mut sums = vec![vec![0.0; d]; centers.len()];
        let mut counts = vec![0usize; centers.len()];
        for (p, l) in points.iter().zip(&labels) {
            counts[*l] += 1;
            for (s, v) in sums[*l].iter_mut().zip(p) {
                *s += v;
            }
        }
        for (c, (s, n)) in centers.iter_mut().zip(sums.into_iter().zip(counts)) {
            if n > 0 {
                *c = s.into_iter().map(|v| v / n as f64).collect();
            }
        }
        if !changed {
            break;
        }
    }
    let inertia = points
        .iter()
        .zip(&labels)
        .map(|(p, l)| dist2(p, &centers[*l]))
        .sum();
    (labels, inertia)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_centre_is_the_mean_of_its_points() {
        let mut c = Centroid::empty(vec![0.0, 0.0]);
        for p in [[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]] {
            c.add(&p, 1.0);
        }
        assert!((c.center[0] - 3.0).abs() < 1e-12 && (c.center[1] - 2.0).abs() < 1e-12);
        // SSE = (4+0) + (0+4) + (4+4) = 16.
        assert!((c.sse - 16.0).abs() < 1e-12);
    }

    /// The robust spread ignores what it clips: inliers spread evenly over -5..5 (sd √10 =
    /// 3.16) with one point in 100 at 1,000 (a plain sd of about 100). Clipped at 3 sds, the
    /// outliers add about 0.01 · 9.5² to the variance: a robust sd of about 3.3, by hand.
    #[test]
    fn the_robust_spread_is_not_widened_by_the_outliers_it_receives() {
        let mut c = Centroid::empty(vec![0.0]);
        for i in 0..10_000 {
            let x = if i % 100 == 99 {
                1000.0
            } else {
                (i % 11) as f64 - 5.0
            };
            c.add(&[x], 1.0);
        }
        let sd = c.robust_sd(0);
        assert!((3.0..3.6).contains(&sd), "robust sd {sd}");
        assert!(c.rms_radius() > 50.0, "the plain radius {}", c.rms_radius());
        let (outlier, _) = c.anomaly(&[1000.0], &[]);
        let (inlier, _) = c.anomaly(&[5.0], &[]);
        assert!(outlier > 200.0 && inlier < 2.0, "{outlier} {inlier}");
        // Unscored dimensions are skipped.
        let mut d = Centroid::empty(vec![0.0, 0.0]);
        for i in 0..100 {
            d.add(&[(i % 3) as f64, 0.0], 1.0);
        }
        assert_eq!(d.anomaly(&[1.0, 50.0], &[true, false]).1, 0);
        assert_eq!(d.anomaly(&[1.0, 50.0], &[]).1, 1);
    }

    #[test]
    fn merged_centroids_equal_the_centroid_of_all_their_points() {
        let (a_pts, b_pts) = (
            [[1.0, 2.0], [3.0, 4.0]],
            [[5.0, 0.0], [7.0, 2.0], [9.0, 4.0]],
        );
        let fresh = || Centroid::empty(vec![0.0, 0.0]);
        let (mut a, mut b) = (fresh(), fresh());
        a_pts.iter().for_each(|p| a.add(p, 1.0));
        b_pts.iter().for_each(|p| b.add(p, 1.0));
        a.merge(&b, 1.0);
        // All five points: mean (5, 2.4); SSE = Σ|p - mean|² = (16+0.16) + (4+2.56) + (0+5.76)
        // + (4+0.16) + (16+2.56) = 51.2.
        assert_eq!(a.weight, 5.0);
        assert!((a.center[0] - 5.0).abs() < 1e-12 && (a.center[1] - 2.4).abs() < 1e-12);
        assert!((a.sse - 51.2).abs() < 1e-9, "{}", a.sse);
        // Decayed by a half: the other's weight and SSE count half.
        let (mut c, mut d) = (fresh(), fresh());
        c.add(&[0.0, 0.0], 1.0);
        d.add(&[3.0, 0.0], 1.0);
        d.add(&[3.0, 0.0], 1.0);
        c.merge(&d, 0.5);
        // weights 1 and 1: mean 1.5, SSE 0 + 0 + 1·1/2·9 = 4.5.
        assert_eq!(c.weight, 2.0);
        assert!((c.center[0] - 1.5).abs() < 1e-12 && (c.sse - 4.5).abs() < 1e-12);
    }

    /// Three tasks learn one global model of three far-apart groups, each from its own
    /// third of the rows, seeing the others' shares only as of their last "commit" (every
    /// 25 rows): the leader seeds from its rows topped up with the others' buffered ones,
    /// all three assign with the same cluster numbers, and the merged model has, per group,
    /// exactly its points' count and mean (computed here from the points), every row learnt
    /// once.
    #[test]
    fn tasks_sharing_a_global_model_learn_every_row_once_with_the_same_clusters() {
        let config = KMeansConfig {
            k: 3,
            seed_sample: 30,
            seed_tries: 3,
            seed_trim: 0.0,
            half_life_ms: None,
            reseed_below: 0.001,
            standardize: true,
            random_seed: 5,
            scored: Vec::new(),
        };
        let groups = [[0.0, 0.0], [50.0, 0.0], [0.0, 80.0]];
        let rows = grouped_rows(&groups, |i| (i * 7 + i / 5) % 3, 4.0, 3);
        let mut shares: Vec<KMeans> = (0..3).map(|_| KMeans::new(2, config.clone())).collect();
        let mut committed: Vec<Option<KMeans>> = vec![None; 3];
        let mut scratch = KMeans::new(2, config.clone());
        // (group, cluster) of every assigned row.
        let mut pairs = std::collections::BTreeSet::new();
        let mut learnt = 0;
        for (i, (g, x)) in rows.iter().enumerate() {
            let task = i % 3;
            let base = base_of(&committed, task, &config);
            let (a, ok) =
                shares[task].learn_shared(x, i as i64, base.as_ref(), &mut scratch, task as i32);
            learnt += usize::from(ok);
            if let Some(a) = a {
                pairs.insert((*g, a.cluster));
            }
            if i % 25 == 24 {
                committed = shares.iter().cloned().map(Some).collect();
            }
        }
        assert_eq!(learnt, rows.len());
        assert_eq!(
            pairs.len(),
            3,
            "each group in one cluster, the same on every task: {pairs:?}"
        );
        let mut all = KMeans::new(2, config.clone());
        for s in &shares {
            all.merge(s);
        }
        assert_eq!(all.samples(), 3000);
        assert_eq!(all.reseeds(), 0);
        assert_exact_means(&all, &pairs, &rows);
    }

    /// The start the test on the broker raced into: task 1 keeps rows before the leader has
    /// any, the leader seeds from them alone (it learns them, so the seed's clusters weigh
    /// what placed them, on every task), task 2 adopts the seed at once and task 1 only much
    /// later. Every row is still learnt once, and every task numbers the groups alike.
    #[test]
    fn a_leader_seeded_from_another_tasks_rows_gives_its_seed_their_weight() {
        let config = KMeansConfig {
            k: 3,
            seed_sample: 100,
            seed_tries: 3,
            seed_trim: 0.0,
            half_life_ms: None,
            reseed_below: 0.001,
            standardize: true,
            random_seed: 5,
            scored: Vec::new(),
        };
        let groups = [[0.0, 0.0], [30.0, 0.0], [0.0, 40.0]];
        let rows = grouped_rows(&groups, |i| (i * 7 + i / 3) % 3, 6.0, 11);
        let mut shares: Vec<KMeans> = (0..3).map(|_| KMeans::new(2, config.clone())).collect();
        let mut committed: Vec<Option<KMeans>> = vec![None; 3];
        let mut scratch = KMeans::new(2, config.clone());
        let mut pairs = std::collections::BTreeSet::new();
        let mut learnt = 0;
        for (i, (g, x)) in rows.iter().enumerate() {
            // Rows 0..300 reach task 1 only; then tasks 0 and 2 alone, task 1 stalled
            // (reading and committing nothing) until row 2400; then all three.
            let task = match i {
                0..300 => 1,
                300..2400 => [0, 2][i % 2],
                _ => i % 3,
            };
            if i == 300 {
                // The others' commit reaches the leader before a row of its own does.
                let base = base_of(&committed, 0, &config).expect("task 1 committed");
                assert!(shares[0].seed_with(Some(&base), i as i64), "seeded");
                let weight: f64 = shares[0].centroids().iter().map(|c| c.weight).sum();
                assert_eq!(
                    weight, 100.0,
                    "the seed holds the 100 rows it was placed by"
                );
                assert_eq!(shares[0].samples(), 0, "they are task 1's samples");
            }
            let base = base_of(&committed, task, &config);
            let (a, ok) =
                shares[task].learn_shared(x, i as i64, base.as_ref(), &mut scratch, task as i32);
            learnt += usize::from(ok);
            if let Some(a) = a {
                pairs.insert((*g, a.cluster));
            }
            if i % 25 == 24 {
                for t in 0..3 {
                    if t != 1 || !(300..2400).contains(&i) {
                        committed[t] = Some(shares[t].clone());
                    }
                }
            }
        }
        assert_eq!(learnt, rows.len());
        assert_eq!(pairs.len(), 3, "one numbering on every task: {pairs:?}");
        let mut all = KMeans::new(2, config.clone());
        for s in &shares {
            all.merge(s);
        }
        assert_eq!(all.samples(), 3000);
        assert_exact_means(&all, &pairs, &rows);
    }

    /// 3,000 rows `(group, point)`: row i of group `group(i)`, uniform within `spread` of
    /// its group's corner (generator seeded `seed`).
    fn grouped_rows(
        groups: &[[f64; 2]],
        group: impl Fn(usize) -> usize,
        spread: f64,
        seed: u64,
    ) -> Vec<(usize, Vec<f64>)> {
        let mut rng = SplitMix64(seed);
        (0..3000)
            .map(|i| {
                let g = group(i);
                let p = groups[g];
                (
                    g,
                    vec![
                        p[0] + rng.next_f64() * spread,
                        p[1] + rng.next_f64() * spread,
                    ],
                )
            })
            .collect()
    }

    /// The merge of the shares the other tasks than `task` last committed.
    fn base_of(committed: &[Option<KMeans>], task: usize, config: &KMeansConfig) -> Option<KMeans> {
        let mut base: Option<KMeans> = None;
        for (_, c) in committed.iter().enumerate().filter(|(t, _)| *t != task) {
            if let Some(c) = c {
                base.get_or_insert_with(|| KMeans::new(2, config.clone()))
                    .merge(c);
            }
        }
        base
    }

    /// Per (group, cluster) of `pairs`, the merged model `all` has exactly the group's
    /// count of points and their mean (computed here from the points).
    fn assert_exact_means(
        all: &KMeans,
        pairs: &std::collections::BTreeSet<(usize, usize)>,
        rows: &[(usize, Vec<f64>)],
    ) {
        for (g, c) in pairs {
            let points: Vec<&Vec<f64>> = rows
                .iter()
                .filter(|(h, _)| h == g)
                .map(|(_, x)| x)
                .collect();
            let n = points.len() as f64;
            assert!(
                (all.centroids()[*c].weight - n).abs() < 1e-9,
                "group {g}: weight {} for {n} rows",
                all.centroids()[*c].weight
            );
            for (j, v) in all.center_in_input_units(*c).iter().enumerate() {
                let mean = points.iter().map(|p| p[j]).sum::<f64>() / n;
                assert!((v - mean).abs() < 1e-9, "group {g}: {v} vs {mean}");
            }
        }
    }

    /// A cluster the leader reseeds starts again on every task: the others' statistics of
    /// its old generation no longer count.
    #[test]
    fn a_newer_generation_of_a_cluster_replaces_the_older() {
        let config = KMeansConfig {
            k: 2,
            seed_sample: 4,
            seed_tries: 1,
            seed_trim: 0.0,
            half_life_ms: None,
            reseed_below: 0.0,
            standardize: false,
            random_seed: 1,
            scored: Vec::new(),
        };
        let mut leader = KMeans::new(1, config.clone());
        leader.update(&[vec![0.0], vec![0.0], vec![10.0], vec![10.0]], 0);
        let mut other = KMeans::new(1, config.clone());
        let mut scratch = KMeans::new(1, config.clone());
        other.learn_shared(&[0.0], 1, Some(&leader), &mut scratch, 1);
        other.learn_shared(&[10.0], 1, Some(&leader), &mut scratch, 1);
        let low = leader.assign(&[0.0]).expect("seeded").cluster;
        leader.centroids[low] = Centroid::point(vec![5.0]);
        leader.reseeded(low);
        let mut merged = leader.clone();
        merged.merge(&other);
        assert_eq!(
            merged.centroids()[low].weight,
            1.0,
            "the old generation left out"
        );
        assert_eq!(merged.centroids()[1 - low].weight, 3.0);
        other.learn_shared(&[5.0], 2, Some(&leader), &mut scratch, 1);
        assert_eq!(
            other.centroids()[low].weight,
            1.0,
            "restarted, then learnt 5"
        );
    }

    #[test]
    fn unseeded_models_assign_nothing() {
        let config = KMeansConfig {
            k: 2,
            seed_sample: 10,
            seed_tries: 2,
            seed_trim: 0.0,
            half_life_ms: None,
            reseed_below: 0.0,
            standardize: false,
            random_seed: 1,
            scored: Vec::new(),
        };
        let mut m = KMeans::new(1, config);
        m.update(&[vec![1.0], vec![2.0]], 0);
        assert!(m.assign(&[1.0]).is_none());
        m.update(
            &(0..10)
                .map(|i| vec![if i % 2 == 0 { 0.0 } else { 100.0 }])
                .collect::<Vec<_>>(),
            0,
        );
        assert!(m.is_seeded());
        let a = m.assign(&[99.0]).expect("seeded");
        let b = m.assign(&[1.0]).expect("seeded");
        assert_ne!(a.cluster, b.cluster);
    }

    /// Three tight groups of 98 points and 6 isolated points (2%), far away: with
    /// `seed_trim: 0.03` every centre lands on a group and the isolated points score as
    /// outliers; without trimming, k-means++ makes isolated points centres (for these seeds).
    #[test]
    fn trimmed_seeding_keeps_isolated_points_from_becoming_centres() {
        let mut sample = Vec::new();
        let mut rng = SplitMix64(99);
        for g in [0.0, 10.0, 20.0] {
            for _ in 0..98 {
                sample.push(vec![g + rng.next_f64() - 0.5, rng.next_f64() - 0.5]);
            }
        }
        let isolated: Vec<Vec<f64>> = (0..6)
            .map(|i| vec![10.0 * i as f64, 60.0 + 15.0 * i as f64])
            .collect();
        // Isolated points spread through the sample, as a stream delivers them.
        for (i, p) in isolated.iter().enumerate() {
            sample.insert(i * 49, p.clone());
        }
        let model = |trim: f64, seed: u64| {
            let mut m = KMeans::new(
                2,
                KMeansConfig {
                    k: 3,
                    seed_sample: sample.len(),
                    seed_tries: 1,
                    seed_trim: trim,
                    half_life_ms: None,
                    reseed_below: 0.0,
                    standardize: false,
                    random_seed: seed,
                    scored: Vec::new(),
                },
            );
            m.update(&sample, 0);
            m
        };
        let on_a_group = |m: &KMeans| {
            m.centroids().iter().all(|c| {
                c.center[1].abs() < 1.0
                    && [0.0, 10.0, 20.0]
                        .iter()
                        .any(|g| (c.center[0] - g).abs() < 1.0)
            })
        };
        let mut untrimmed_failures = 0;
        for seed in 0..10 {
            let trimmed = model(0.03, seed);
            assert!(
                on_a_group(&trimmed),
                "seed {seed}: {:?}",
                trimmed.centroids()
            );
            for p in &isolated {
                let a = trimmed.assign(p).expect("seeded");
                assert!(
                    a.outlier_score > 10.0,
                    "seed {seed}: {p:?} scores {}",
                    a.outlier_score
                );
            }
            if !on_a_group(&model(0.0, seed)) {
                untrimmed_failures += 1;
            }
        }
        assert!(
            untrimmed_failures > 0,
            "the failure trimming prevents did not occur"
        );
    }

    /// A feature constant in the seed sample is centred, not zeroed: a later value away from
    /// the constant moves the row away from its centre (as with scikit-learn's
    /// StandardScaler, which keeps such a feature with scale 1).
    #[test]
    fn standardising_keeps_a_feature_that_was_constant_in_the_seed_sample() {
        let mut m = KMeans::new(
            2,
            KMeansConfig {
                k: 2,
                seed_sample: 40,
                seed_tries: 1,
                seed_trim: 0.0,
                half_life_ms: None,
                reseed_below: 0.0,
                standardize: true,
                random_seed: 3,
                scored: Vec::new(),
            },
        );
        let sample: Vec<Vec<f64>> = (0..40)
            .map(|i| {
                vec![
                    if i % 2 == 0 { 0.0 } else { 10.0 } + (i % 5) as f64 * 0.1,
                    7.0,
                ]
            })
            .collect();
        m.update(&sample, 0);
        let usual = m.assign(&[0.2, 7.0]).expect("seeded");
        let odd = m.assign(&[0.2, 10.0]).expect("seeded");
        assert_eq!(usual.cluster, odd.cluster);
        assert!(
            odd.distance > usual.distance + 2.9,
            "{} vs {}",
            odd.distance,
            usual.distance
        );
        assert_eq!(m.center_in_input_units(odd.cluster)[1], 7.0);
    }
}
