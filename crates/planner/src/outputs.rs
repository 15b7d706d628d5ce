//! Schemas of the tables a model produces: `<model>.predictions` and `<model>.snapshots`.
//! The runtime builds its output batches against exactly these schemas.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use spec::model::Model;

/// Column holding the event time of the row a prediction or snapshot was made at.
pub const EVENT_TIME: &str = "event_time";
/// Column holding the model version: the number of updates the state had seen when it made
/// a prediction (predictions), or has seen (snapshots).
pub const MODEL_VERSION: &str = "model_version";

/// The event-time type of every engine-made timestamp column.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// `Map<Utf8, Float64>`: coefficients or centre coordinates by feature name.
pub fn name_to_f64_map() -> DataType {
    let entries = Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Float64, true),
        ])),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

fn leading(model: &Model, input: &Schema) -> Vec<Field> {
    let mut fields = Vec::new();
    if let Some(key) = &model.key
        && let Ok(f) = input.field_with_name(key)
    {
        fields.push(f.clone().with_metadata(Default::default()));
    }
    fields.push(Field::new(EVENT_TIME, timestamp_type(), false));
    fields
}

/// Names the engine uses in a model's outputs; keys and passthrough columns may not reuse them.
pub fn reserved_columns(model: &Model) -> &'static [&'static str] {
    if model.clustering.is_some() {
        &[
            EVENT_TIME,
            "cluster_id",
            "distance",
            "outlier_score",
            "anomaly_score",
            "anomaly_feature",
            MODEL_VERSION,
        ]
    } else {
        &[
            EVENT_TIME,
            "prediction",
            "actual",
            "residual",
            MODEL_VERSION,
        ]
    }
}

/// One row per input row: the prediction (regression) or the assignment (clustering).
pub fn predictions(model: &Model, input: &Schema) -> SchemaRef {
    let mut fields = leading(model, input);
    for name in &model.passthrough {
        if let Ok(f) = input.field_with_name(name) {
            fields.push(f.clone().with_metadata(Default::default()));
        }
    }
    if model.clustering.is_some() {
        fields.extend([
            // Null while the model is still buffering its seed sample.
            Field::new("cluster_id", DataType::UInt32, true),
            Field::new("distance", DataType::Float64, true),
            Field::new("outlier_score", DataType::Float64, true),
            // The row's largest distance to its cluster's robust mean of one numeric
            // feature, in robust standard deviations, and that feature (null without a
            // numeric feature).
            Field::new("anomaly_score", DataType::Float64, true),
            Field::new("anomaly_feature", DataType::Utf8, true),
        ]);
    } else {
        fields.extend([
            // Null until the model has seen features + 1 samples.
            Field::new("prediction", DataType::Float64, true),
            Field::new("actual", DataType::Float64, true),
            Field::new("residual", DataType::Float64, true),
        ]);
    }
    fields.push(Field::new(MODEL_VERSION, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
}

/// One row per snapshot: the model's parameters and its prequential metrics.
pub fn snapshots(model: &Model, input: &Schema) -> SchemaRef {
    let mut fields = leading(model, input);
    fields.extend([
        Field::new(MODEL_VERSION, DataType::UInt64, false),
        Field::new("samples", DataType::UInt64, false),
        Field::new("weight", DataType::Float64, false),
    ]);
    if model.clustering.is_some() {
        let centroid = Field::new(
            "item",
            DataType::Struct(Fields::from(vec![
                Field::new("cluster_id", DataType::UInt32, false),
                Field::new("weight", DataType::Float64, false),
                Field::new("rms_radius", DataType::Float64, true),
                Field::new("center", name_to_f64_map(), false),
            ])),
            false,
        );
        fields.extend([
            Field::new("inertia", DataType::Float64, true),
            Field::new("centroids", DataType::List(Arc::new(centroid)), false),
        ]);
    } else {
        fields.extend([
            Field::new("intercept", DataType::Float64, true),
            Field::new("coefficients", name_to_f64_map(), true),
            Field::new("mae", DataType::Float64, true),
            Field::new("rmse", DataType::Float64, true),
            Field::new("r2", DataType::Float64, true),
            Field::new("rolling_mae", DataType::Float64, true),
            Field::new("rolling_rmse", DataType::Float64, true),
            Field::new("rolling_r2", DataType::Float64, true),
            Field::new("drift_alarms", DataType::UInt64, false),
        ]);
    }
    Arc::new(Schema::new(fields))
}
