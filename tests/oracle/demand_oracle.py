"""Independent oracle for the repartition test: per-minute demand per SKU and region over
orders keyed by order id, computed with DuckDB.

Input: a JSON-lines file of the raw Kafka messages of the input topic, one object per message:
{"partition": P, "offset": O, "payload_b64": "..."} (exactly what the broker holds; every
message is a valid order: the test generates none malformed).

Lateness follows the engine's documented rule, applied where the rows were read, before any
repartition: a row is late for its window when the window's end is at or before the largest
event time seen earlier in the same input partition (in offset order) minus max_out_of_order.

Output: --out gets one JSON object per window row; the first also has late_total.
"""

import argparse
import base64
import json
import os
import tempfile

import duckdb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--size-ms", type=int, required=True)
    ap.add_argument("--allowed-ms", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as tmp:
        with open(args.input) as f:
            for line in f:
                m = json.loads(line)
                order = json.loads(base64.b64decode(m["payload_b64"]))
                tmp.write(json.dumps({
                    "partition": m["partition"], "offset": m["offset"],
                    "sku": order["sku"], "region": order["region"], "ts": order["ts"],
                    "quantity": order["quantity"], "unit_price": order["unit_price"],
                }) + "\n")
    con = duckdb.connect()
    con.execute(
        """CREATE TABLE ev AS SELECT * FROM read_json(?, format = 'newline_delimited', columns = {
             'partition': 'INTEGER', 'offset': 'BIGINT', 'sku': 'VARCHAR', 'region': 'VARCHAR',
             'ts': 'BIGINT', 'quantity': 'INTEGER', 'unit_price': 'DOUBLE'})""",
        [tmp.name],
    )
    os.unlink(tmp.name)
    result = con.execute(
        """
        WITH ordered AS (
            SELECT *, max(ts) OVER (PARTITION BY partition ORDER BY "offset"
                                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS stream_time,
                   (ts // $size) * $size AS ws
            FROM ev
        ),
        kept AS (
            SELECT * FROM ordered
            WHERE stream_time IS NULL OR ws + $size > stream_time - $allowed
        )
        SELECT sku, region, ws AS window_start, ws + $size AS window_end,
               count(*) AS order_lines, sum(quantity) AS units,
               sum(quantity * unit_price) AS revenue,
               (SELECT count(*) FROM ordered) - (SELECT count(*) FROM kept) AS late_total
        FROM kept
        GROUP BY sku, region, ws
        ORDER BY window_end, sku, region
        """,
        {"size": args.size_ms, "allowed": args.allowed_ms},
    )
    names = [d[0] for d in result.description]
    with open(args.out, "w") as out:
        for row in result.fetchall():
            out.write(json.dumps(dict(zip(names, row))) + "\n")


if __name__ == "__main__":
    main()
