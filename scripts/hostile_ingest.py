"""Producers and a reader for the hostile-input ingest tests (analytics/tests/it/hostile_ingest.rs),
with confluent-kafka and pyarrow as independent clients.

  hostile_ingest.py produce-ts BROKERS TOPIC FILE          one message per JSON line
                                                           {"ts_ms": int|null, "value": str}, with that
                                                           Kafka timestamp (CreateTime) as given
  hostile_ingest.py produce-tx BROKERS TOPIC FILE PER_TX   one message per line, in committed
                                                           transactions of PER_TX messages (each
                                                           leaves a commit marker in the log);
                                                           prints the count
  hostile_ingest.py quarantine WAREHOUSE                   the quarantine table as JSON, keyed
                                                           topic/partition/offset
"""
import json
import sys
import time


def produce_ts(brokers, topic, path):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    failed = []
    n = 0
    with open(path) as f:
        for line in f:
            m = json.loads(line)
            kw = {} if m["ts_ms"] is None else {"timestamp": m["ts_ms"]}
            p.produce(topic, m["value"].encode(), on_delivery=lambda e, _m: e and failed.append(e), **kw)
            n += 1
    p.flush(60)
    if failed:
        sys.exit(f"{len(failed)} messages not delivered: {failed[0]}")
    print(f"produced {n}")


def produce_tx(brokers, topic, path, per_tx):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": brokers, "transactional.id": f"hostile-{time.time()}",
                  "enable.idempotence": True})
    p.init_transactions(30)
    lines = [l.rstrip("\n") for l in open(path)]
    committed = 0
    for i in range(0, len(lines), per_tx):
        chunk = lines[i:i + per_tx]
        p.begin_transaction()
        for v in chunk:
            p.produce(topic, v.encode())
        # No aborted transactions: Tansu 0.6 delivers aborted records even to read_committed
        # consumers (checked with confluent-kafka), so a test of them would test the broker.
        p.commit_transaction(30)
        committed += len(chunk)
    print(committed)


def quarantine(wh):
    import os
    import pyarrow.dataset as ds
    path = os.path.join(wh, "quarantine")
    out = {}
    if os.path.isdir(path):
        t = ds.dataset(path, format="parquet", partitioning="hive").to_table()
        for r in t.to_pylist():
            kt = r["kafka_timestamp"]
            out[f'{r["kafka_topic"]}/{r["kafka_partition"]}/{r["kafka_offset"]}'] = {
                "code": r["reason_code"], "field": r["field"], "reason": r["reason"],
                "kafka_timestamp_us": None if kt is None else int(kt.timestamp() * 1_000_000),
                "date": str(r["date"]), "hour": int(r["hour"]), "raw": r["raw"].decode("utf-8", "replace"),
            }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "produce-ts":
        produce_ts(*sys.argv[2:5])
    elif cmd == "produce-tx":
        produce_tx(*sys.argv[2:5], int(sys.argv[5]))
    elif cmd == "quarantine":
        quarantine(sys.argv[2])
    else:
        sys.exit(f"unknown command {cmd}")
