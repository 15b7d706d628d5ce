#!/usr/bin/env python3
"""Writes the Grafana dashboards in deploy/grafana/dashboards/ (the committed JSON is this
script's output; `--check` fails when they differ). Every panel queries the metrics catalog
of crates/daemon/src/metrics.rs; tests/metrics.rs evaluates every query against a real
Prometheus scraping a daemon that runs the example pipelines.

    python3 deploy/grafana/dashboards.py          # rewrite the JSON
    python3 deploy/grafana/dashboards.py --check  # exit 1 if the JSON is stale
"""
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "prometheus"}
SEL = 'pipeline=~"$pipeline"'
RATE = "$__rate_interval"


def variable(name, label, query, multi=True):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "includeAll": multi,
        "multi": multi,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,
        "sort": 1,
    }


def panel(title, targets, unit="short", kind="timeseries", description=""):
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        if kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def layout(panels, width=12, height=8):
    out = []
    for i, p in enumerate(panels):
        p["id"] = i + 1
        out.append(p)
    # Two panels per row, stats four per row.
    x = y = 0
    row_height = 0
    for p in out:
        w = 6 if p["type"] == "stat" else width
        h = 4 if p["type"] == "stat" else height
        if x + w > 24:
            x, y = 0, y + row_height
            row_height = 0
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x += w
        row_height = max(row_height, h)
    return out


def dashboard(uid, title, description, variables, panels):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["pipelines"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": layout(panels),
    }


def quantile(q, metric):
    return (
        f"histogram_quantile({q}, sum by (pipeline, le) "
        f"(rate({metric}_bucket{{{SEL}}}[{RATE}])))"
    )


PIPELINES = dashboard(
    "pipelines",
    "Pipelines",
    "Does data flow? Throughput, lag, latency, errors and dead letters per pipeline.",
    [variable("pipeline", "Pipeline", "label_values(pipeline_up, pipeline)")],
    [
        panel("Running", [(f"pipeline_up{{{SEL}}}", "{{pipeline}}")], kind="stat"),
        panel("Version", [(f"pipeline_version{{{SEL}}}", "{{pipeline}}")], kind="stat"),
        panel("Restarts (1 h)", [(f"increase(pipeline_restarts_total{{{SEL}}}[1h])", "{{pipeline}}")], kind="stat"),
        panel("Checkpoints / min", [(f"sum by (pipeline) (rate(pipeline_checkpoints_total{{{SEL}}}[{RATE}])) * 60", "{{pipeline}}")], kind="stat"),
        panel("Events in / s", [(f"sum by (pipeline, topic) (rate(pipeline_events_in_total{{{SEL}}}[{RATE}]))", "{{pipeline}} ← {{topic}}")], "ops"),
        panel("Records out / s", [(f"sum by (pipeline, topic) (rate(pipeline_events_out_total{{{SEL}}}[{RATE}]))", "{{pipeline}} → {{topic}}")], "ops"),
        panel("Bytes / s", [
            (f"sum by (pipeline) (rate(pipeline_bytes_in_total{{{SEL}}}[{RATE}]))", "{{pipeline}} in"),
            (f"sum by (pipeline) (rate(pipeline_bytes_out_total{{{SEL}}}[{RATE}]))", "{{pipeline}} out"),
        ], "Bps"),
        panel("Micro-batches / s", [(f"sum by (pipeline) (rate(pipeline_batches_total{{{SEL}}}[{RATE}]))", "{{pipeline}}")], "ops"),
        panel("Consumer lag", [(f"sum by (pipeline, topic) (pipeline_consumer_lag_messages{{{SEL}}})", "{{pipeline}} ← {{topic}}")], "short",
              description="Messages between the consumers' positions and the ends of their partitions."),
        panel("Watermark lag", [(f"pipeline_watermark_lag_seconds{{{SEL}}}", "{{pipeline}}")], "s",
              description="Wall-clock time minus the smallest window watermark (pipelines with windows)."),
        panel("Processing latency", [
            (quantile(0.5, "pipeline_processing_latency_seconds"), "{{pipeline}} p50"),
            (quantile(0.99, "pipeline_processing_latency_seconds"), "{{pipeline}} p99"),
        ], "s", description="From reading a record to Kafka acknowledging its micro-batch's outputs."),
        panel("End-to-end latency", [
            (quantile(0.5, "pipeline_end_to_end_latency_seconds"), "{{pipeline}} p50"),
            (quantile(0.99, "pipeline_end_to_end_latency_seconds"), "{{pipeline}} p99"),
        ], "s", description="From a record's event time to Kafka acknowledging its micro-batch's outputs."),
        panel("Errors / s by kind", [(f"sum by (pipeline, kind) (rate(pipeline_errors_total{{{SEL}}}[{RATE}]))", "{{pipeline}} {{kind}}")], "ops"),
        panel("Dead letters / s", [(f"sum by (pipeline, topic) (rate(pipeline_dead_lettered_total{{{SEL}}}[{RATE}]))", "{{pipeline}} ← {{topic}}")], "ops"),
        panel("Late events / s", [(f"sum by (pipeline, operator) (rate(pipeline_late_events_total{{{SEL}}}[{RATE}]))", "{{pipeline}} {{operator}}")], "ops"),
        panel("Totals", [
            (f"sum by (pipeline) (pipeline_events_in_total{{{SEL}}})", "{{pipeline}} in"),
            (f"sum by (pipeline) (pipeline_events_out_total{{{SEL}}})", "{{pipeline}} out"),
            (f"sum by (pipeline) (pipeline_dead_lettered_total{{{SEL}}})", "{{pipeline}} dead-lettered"),
        ], "short"),
        panel("Tasks per instance", [(f"pipeline_tasks{{{SEL}}}", "{{pipeline}} {{instance}}")], "short",
              description="Tasks each instance runs (one per owned input partition when the plan allows)."),
        panel("Rebalances and restores (1 h)", [
            (f"sum by (pipeline) (increase(pipeline_rebalances_total{{{SEL}}}[1h]))", "{{pipeline}} rebalances"),
            (f"sum by (pipeline) (increase(pipeline_restore_seconds_total{{{SEL}}}[1h]))", "{{pipeline}} restore s"),
        ], "short", description="Partition assignments and revocations, and time spent restoring state from changelogs."),
        panel("State written / s", [
            (f"sum by (pipeline) (rate(pipeline_state_bytes_total{{{SEL}}}[{RATE}]))", "{{pipeline}} written"),
            (f"sum by (pipeline) (rate(pipeline_restored_bytes_total{{{SEL}}}[{RATE}]))", "{{pipeline}} restored"),
        ], "Bps", description="Bytes of state committed to changelog topics, and read back from them."),
        panel("Repartitions / s", [
            (f'sum by (pipeline, topic) (rate(pipeline_events_out_total{{{SEL}, operator=~".*[.]repartition[.]write"}}[{RATE}]))', "{{pipeline}} → {{topic}}"),
            (f"sum by (pipeline, repartition) (rate(pipeline_repartition_replayed_rows_total{{{SEL}}}[{RATE}]))", "{{pipeline}} {{repartition}} sent again"),
        ], "ops", description="Rows written to repartition topics between tasks, and rows a reader dropped because a writer sent them again after a restart."),
    ],
)

MSEL = 'pipeline=~"$pipeline", model=~"$model"'
MODELS = dashboard(
    "model-quality",
    "Model quality",
    "Are the models any good? Prequential errors and R² over time, coefficients, drift, clusters.",
    [
        variable("pipeline", "Pipeline", "label_values(model_samples, pipeline)"),
        variable("model", "Model", 'label_values(model_samples{pipeline=~"$pipeline"}, model)'),
    ],
    [
        panel("Samples learnt", [(f"model_samples{{{MSEL}}}", "{{pipeline}}/{{model}}")], kind="stat"),
        panel("Keys", [(f"model_keys{{{MSEL}}}", "{{pipeline}}/{{model}}")], kind="stat"),
        panel("Drift alarms", [(f"model_drift_alarms_total{{{MSEL}}}", "{{pipeline}}/{{model}}")], kind="stat"),
        panel("Skipped rows", [(f"model_skipped_rows_total{{{MSEL}}}", "{{pipeline}}/{{model}}")], kind="stat"),
        panel("R² (prequential)", [(f"model_r2{{{MSEL}}}", "{{pipeline}}/{{model}} {{window}}")], "short",
              description="Each prediction is made before its row is learnt; against each key's mean."),
        panel("RMSE (prequential)", [(f"model_rmse{{{MSEL}}}", "{{pipeline}}/{{model}} {{window}}")], "short"),
        panel("MAE (prequential)", [(f"model_mae{{{MSEL}}}", "{{pipeline}}/{{model}} {{window}}")], "short"),
        panel("Rows learnt / s", [(f"deriv(model_samples{{{MSEL}}}[{RATE}])", "{{pipeline}}/{{model}}")], "ops"),
        panel("Coefficients", [
            (f"model_coefficient{{{MSEL}}}", "{{pipeline}}/{{model}} {{feature}}"),
            (f"model_intercept{{{MSEL}}}", "{{pipeline}}/{{model}} intercept"),
        ], "short"),
        panel("Drift alarms over time", [(f"increase(model_drift_alarms_total{{{MSEL}}}[{RATE}])", "{{pipeline}}/{{model}}")], "short"),
        panel("Cluster sizes", [(f"model_cluster_size{{{MSEL}}}", "{{pipeline}}/{{model}} cluster {{cluster}}")], "short"),
        panel("Inertia", [(f"model_inertia{{{MSEL}}}", "{{pipeline}}/{{model}}")], "short"),
        panel("R² per key", [(f"model_key_r2{{{MSEL}}}", "{{pipeline}}/{{model}} {{key}}")], "short",
              description="Models with `metrics: { per_key: N }`: their N keys with the most samples."),
        panel("Inertia per key", [(f"model_key_inertia{{{MSEL}}}", "{{pipeline}}/{{model}} {{key}}")], "short",
              description="Clustering models with `metrics: { per_key: N }`."),
    ],
)


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, board in [("pipelines.json", PIPELINES), ("model-quality.json", MODELS)]:
        path = HERE / "dashboards" / name
        text = json.dumps(board, indent=2, ensure_ascii=False) + "\n"
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("stale (run python3 deploy/grafana/dashboards.py):", *stale, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
