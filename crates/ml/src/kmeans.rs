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
}

/// One cluster.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Centroid {
    /// Total (decayed) weight of its points.
    pub weight: f64,
    /// Its centre, in the model's (possibly standardised) space.
    pub center: Vec<f64>,
    /// Weighted sum of squared distances of its points to the centre.
    pub sse: f64,
}

impl Centroid {
    /// Root-mean-square distance of its points to the centre.
    pub fn rms_radius(&self) -> f64 {
        if self.weight > 0.0 {
            (self.sse / self.weight).sqrt()
        } else {
            0.0
        }
    }

    fn add(&mut self, x: &[f64], w: f64) {
        let total = self.weight + w;
        let mut dist2 = 0.0;
        for (c, v) in self.center.iter_mut().zip(x) {
            let delta = v - *c;
            dist2 += delta * delta;
            *c += delta * w / total;
        }
        self.sse += w * self.weight / total * dist2;
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

/// `points` without the `fraction` of them farthest from their `m`-th nearest neighbour.
fn trim(points: Vec<Vec<f64>>, fraction: f64, m: usize) -> Vec<Vec<f64>> {
    let n = points.len();
    let drop = (n as f64 * fraction).floor() as usize;
    if drop == 0 || n <= m {
        return points;
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
    points
        .into_iter()
        .zip(dropped)
        .filter_map(|(p, d)| (!d).then_some(p))
        .collect()
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
        Some(Assignment {
            cluster: best.0,
            distance,
            outlier_score,
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
                self.seed();
                // Rows past the seed sample in this batch are learnt as a mini-batch.
                let rest: Vec<Vec<f64>> = rows.iter().skip(room).cloned().collect();
                self.clock = Some(now_ms);
                self.fold(&rest);
            }
            return;
        }
        if let (Some(h), Some(t)) = (self.config.half_life_ms, self.clock)
            && now_ms > t
        {
            let f = 0.5f64.powf((now_ms - t) as f64 / h);
            for c in &mut self.centroids {
                c.weight *= f;
                c.sse *= f;
            }
        }
        self.clock = Some(self.clock.map_or(now_ms, |t| t.max(now_ms)));
        self.fold(rows);
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
                    self.centroids[i] = Centroid {
                        weight: 1.0,
                        center: scaled[p].clone(),
                        sse: 0.0,
                    };
                    self.reseeds += 1;
                }
            }
        }
    }

    /// k-means++ and Lloyd on the buffered sample, best of `seed_tries`.
    fn seed(&mut self) {
        let sample = std::mem::take(&mut self.buffer);
        if self.config.standardize {
            let mut stats = vec![Welford::default(); self.d];
            for row in &sample {
                for (s, v) in stats.iter_mut().zip(row) {
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
        let points: Vec<Vec<f64>> = sample.iter().map(|r| self.scale(r)).collect();
        let points = trim(points, self.config.seed_trim, 5);
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
        self.centroids = (0..k)
            .map(|_| Centroid {
                weight: 0.0,
                center: vec![0.0; self.d],
                sse: 0.0,
            })
            .collect();
        for (p, l) in points.iter().zip(&labels) {
            self.centroids[*l].add(p, 1.0);
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
        let mut c = Centroid {
            weight: 0.0,
            center: vec![0.0, 0.0],
            sse: 0.0,
        };
        for p in [[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]] {
            c.add(&p, 1.0);
        }
        assert!((c.center[0] - 3.0).abs() < 1e-12 && (c.center[1] - 2.0).abs() < 1e-12);
        // SSE = (4+0) + (0+4) + (4+4) = 16.
        assert!((c.sse - 16.0).abs() < 1e-12);
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
