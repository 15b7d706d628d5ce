"""An independent Confluent client for the schema-registry tests (tests/registry.rs).

    produce   writes readings with two writer schemas (v1 = the pipeline's declared schema, v2
              evolved: `note` removed, `batch` added with a default, `value` narrowed to a
              float) through confluent-kafka's AvroSerializer and the registry, then two bad
              messages (an unknown schema id; a writer schema whose `value` is a string); writes
              the readings as the declared schema reads them to --events (JSON lines)
    framed    writes --count records of the schema in --schema-file, framed with schema id --id,
              without asking the registry (it may be down): values made from each field's type
    decode    reads --topic through the registry with confluent-kafka's AvroDeserializer and
              prints how many records it decoded, their schema ids and the first record
    check     the pipeline's window rows from its JSON sink and, through the registry with
              confluent-kafka's AvroDeserializer, from its Avro sink; the expected rows from
              DuckDB over --events; prints a JSON report

The events are made here from a fixed seed, never by the engine.
"""

import argparse
import faulthandler
import json
import random
import struct
import sys
import time
from datetime import datetime, timezone

import duckdb
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

V1 = {
    "type": "record", "name": "Reading", "namespace": "test",
    "fields": [
        {"name": "line", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "value", "type": "double"},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}
V2 = {
    "type": "record", "name": "Reading", "namespace": "test",
    "fields": [
        {"name": "batch", "type": "string", "default": "b0"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "line", "type": "string"},
        {"name": "value", "type": "float"},
    ],
}
BAD = {
    "type": "record", "name": "Reading", "namespace": "test",
    "fields": [
        {"name": "line", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "value", "type": "string"},
    ],
}
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
# The subject named by the topic, as our engine names it; without this the serializer asks
# the registry for "associations" on every call, and one such request that Apicurio left
# unanswered hung the test.
SERIALIZER = {"subject.name.strategy": topic_subject_name_strategy}
# Not idempotent: an idempotent producer first needs the broker's transaction coordinator,
# which on a freshly started broker can take minutes to load (the test then hung). One
# request in flight keeps the order of the partition, which the windows' lateness needs.
PRODUCER = {"acks": "all", "enable.idempotence": False,
            "max.in.flight.requests.per.connection": 1}


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def produce(a):
    registry = SchemaRegistryClient({"url": a.registry, "timeout": 10})
    producer = Producer(PRODUCER | {"bootstrap.servers": a.bootstrap})
    ser = {
        name: AvroSerializer(registry, json.dumps(schema), conf=SERIALIZER | {"auto.register.schemas": True})
        for name, schema in [("v1", V1), ("v2", V2)]
    }
    rng = random.Random(a.seed)
    ctx = SerializationContext(a.topic, MessageField.VALUE)
    with open(a.events, "w") as out:
        for i in range(a.count):
            ts = T0 + i * 200 + rng.randrange(0, 50)  # in order: 200 ms apart, jittered < 200
            line = f"L{rng.randrange(4)}"
            value = round(rng.uniform(0, 100), 3)
            if i % 2 == 0:
                note = f"n{i}" if i % 3 == 0 else None
                record = {"line": line, "ts": ts, "value": value, "note": note}
                producer.produce(a.topic, value=ser["v1"](record, ctx), partition=0)
                seen = {"line": line, "ts": ts, "value": value, "note": note}
            else:
                record = {"batch": f"b{i % 5}", "ts": ts, "line": line, "value": value}
                producer.produce(a.topic, value=ser["v2"](record, ctx), partition=0)
                # The declared schema reads the float widened to a double; `note` takes its
                # default.
                seen = {"line": line, "ts": ts, "value": f32(value), "note": None}
            out.write(json.dumps(seen) + "\n")
    # An id no registry has, and a writer schema the declared one cannot read.
    producer.produce(a.topic, value=b"\x00" + (999_999).to_bytes(4, "big") + b"\x02x", partition=0)
    bad_id = registry.register_schema(f"{a.topic}-bad-value", Schema(json.dumps(BAD), "AVRO"))
    bad = AvroSerializer(registry, json.dumps(BAD), conf=SERIALIZER | {"auto.register.schemas": False, "use.latest.version": False})
    bad_ctx = SerializationContext(f"{a.topic}-bad", MessageField.VALUE)
    payload = bad({"line": "L9", "ts": T0, "value": "high"}, bad_ctx)
    assert int.from_bytes(payload[1:5], "big") == bad_id
    producer.produce(a.topic, value=payload, partition=0)
    left = producer.flush(60)
    if left:
        raise SystemExit(f"{left} messages were not delivered")
    print(json.dumps({"produced": a.count + 2, "bad_schema_id": bad_id}))


def read(bootstrap, topic, decode):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"oracle-{topic}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    meta = c.list_topics(topic, timeout=30).topics[topic]
    rows = []
    for p in meta.partitions:
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        if high <= low:
            continue
        c.assign([TopicPartition(topic, p, low)])
        got, last_error = 0, None
        deadline = time.monotonic() + 30
        while got < high - low:
            if time.monotonic() > deadline:
                raise SystemExit(f"{topic}: {got} of {high - low} read in 30 s; last error: {last_error}")
            m = c.poll(1)
            if m is None:
                continue
            if m.error():
                last_error = m.error()
                print(f"{topic}: {last_error}", file=sys.stderr)
                continue
            got += 1
            rows.append(decode(m))
    c.close()
    return rows


def ms(v):
    if isinstance(v, datetime):
        return int(v.timestamp() * 1000)
    if isinstance(v, str):
        return int(datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000)
    return int(v)


def norm(r):
    return (r["line"], ms(r["window_start"]), int(r["n"]), round(float(r["total"]), 6), int(r["notes"]))


def check(a):
    registry = SchemaRegistryClient({"url": a.registry, "timeout": 10})
    de = AvroDeserializer(registry, conf=SERIALIZER)
    as_json = read(a.bootstrap, a.json_topic, lambda m: json.loads(m.value()))
    as_avro = read(a.bootstrap, a.avro_topic,
                   lambda m: de(m.value(), SerializationContext(m.topic(), MessageField.VALUE)))
    ids = sorted({int.from_bytes(m, "big") for m in read(a.bootstrap, a.avro_topic, lambda m: m.value()[1:5])})
    con = duckdb.connect()
    con.execute("CREATE TABLE e AS SELECT * FROM read_json(?, columns = {'line': 'VARCHAR', 'ts': 'BIGINT', 'value': 'DOUBLE', 'note': 'VARCHAR'})", [a.events])
    expected = con.execute("""
        SELECT line, (ts // 60000) * 60000 AS window_start, count(*) AS n, sum(value) AS total,
               count(note) AS notes
        FROM e GROUP BY ALL ORDER BY ALL""").fetchall()
    want = sorted((l, int(w), int(n), round(t, 6), int(k)) for l, w, n, t, k in expected)
    got_json = sorted(norm(r) for r in as_json)
    got_avro = sorted(norm(r) for r in as_avro)
    print(json.dumps({
        "expected": len(want),
        "json_rows": len(got_json),
        "avro_rows": len(got_avro),
        "json_equals_duckdb": got_json == want,
        "avro_equals_json": got_avro == got_json,
        "avro_schema_ids": ids,
        "first_difference": next(([w, g] for w, g in zip(want, got_json) if w != g), None),
    }))


def value_of(ty, i):
    if isinstance(ty, list):
        return value_of(next(t for t in ty if t != "null"), i)
    if isinstance(ty, dict):
        if ty.get("type") == "enum":
            return ty["symbols"][i % len(ty["symbols"])]
        if ty.get("logicalType", "").startswith("timestamp"):
            return T0 + i * 100
        return value_of(ty["type"], i)
    return {"string": f"s{i}", "long": i, "int": i, "double": i * 0.5, "float": i * 0.5,
            "boolean": i % 2 == 0}[ty]


def framed(a):
    import io
    import fastavro
    schema = json.load(open(a.schema_file))
    parsed = fastavro.parse_schema(schema)
    producer = Producer(PRODUCER | {"bootstrap.servers": a.bootstrap})
    for i in range(a.count):
        record = {f["name"]: value_of(f["type"], i) for f in schema["fields"]}
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, record)
        producer.produce(a.topic, value=b"\x00" + a.id.to_bytes(4, "big") + buf.getvalue())
    left = producer.flush(60)
    if left:
        raise SystemExit(f"{left} messages were not delivered")
    print(json.dumps({"produced": a.count}))


def decode(a):
    registry = SchemaRegistryClient({"url": a.registry, "timeout": 10})
    de = AvroDeserializer(registry, conf=SERIALIZER)
    records = read(a.bootstrap, a.topic,
                   lambda m: (int.from_bytes(m.value()[1:5], "big"),
                              de(m.value(), SerializationContext(m.topic(), MessageField.VALUE))))
    first = records[0][1] if records else None
    print(json.dumps({"count": len(records), "schema_ids": sorted({i for i, _ in records}),
                      "first": first}, default=str))


def main():
    # A hang prints every thread's stack and exits, well inside the Rust test's limit.
    faulthandler.dump_traceback_later(100, exit=True)
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["produce", "check", "decode", "framed"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--registry")
    ap.add_argument("--schema-file")
    ap.add_argument("--id", type=int)
    ap.add_argument("--topic")
    ap.add_argument("--events")
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--json-topic")
    ap.add_argument("--avro-topic")
    a = ap.parse_args()
    {"produce": produce, "check": check, "decode": decode, "framed": framed}[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
