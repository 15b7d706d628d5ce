//! Incremental models: pure Rust, no I/O. Every state here updates per row, merges exactly
//! with another state of the same model (for checkpoints and for several instances sharing
//! the work), and never retrains from scratch.

pub mod drift;
pub mod kmeans;
pub mod regression;
pub mod welford;

pub use drift::PageHinkley;
pub use kmeans::{Assignment, Centroid, KMeans, KMeansConfig};
pub use regression::{RegressionState, Solution, SolveError};
pub use welford::Welford;
