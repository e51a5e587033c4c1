#!/usr/bin/env python3
"""Second independent reader for tests: the Python `deltalake` package (delta-rs's Python
binding, as an analyst would use it) over a flowaudit warehouse, local or s3:// (the AWS_*
variables configure it). Prints JSON facts per table: rows, event ids (gateway_events),
whether (topic, partition, offset) is unique, and the application transaction (`txn`) version
of every `flowaudit:<table>:<topic>:<partition>` whose partition has rows in the table. For the
`alerts` table: rows, fingerprints and sequence numbers, and with STORE_ID the `txn` version of
`flowaudit-alerts:<STORE_ID>`.

Usage: read_delta.py WAREHOUSE [STORE_ID]
"""
import json
import os
import sys

from deltalake import DeltaTable


def storage_options(uri):
    if not uri.startswith("s3://"):
        return None
    keys = ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP"]
    return {k: os.environ[k] for k in keys if k in os.environ}


def main(wh, store_id=None):
    out = {}
    for name in ("gateway_events", "flows", "quarantine"):
        uri = f"{wh.rstrip('/')}/{name}"
        opts = storage_options(uri)
        if not DeltaTable.is_deltatable(uri, storage_options=opts):
            continue
        dt = DeltaTable(uri, storage_options=opts)
        t = dt.to_pyarrow_table()
        keys = list(zip(t.column("kafka_topic").to_pylist(), t.column("kafka_partition").to_pylist(),
                        t.column("kafka_offset").to_pylist()))
        facts = {"version": dt.version(), "rows": t.num_rows, "provenance_unique": len(keys) == len(set(keys)),
                 "files": len(dt.file_uris()), "txns": {}}
        for topic, partition in sorted({(k[0], k[1]) for k in keys}):
            app = f"flowaudit:{name}:{topic}:{partition}"
            facts["txns"][app] = dt.transaction_version(app)
        if name == "gateway_events":
            facts["event_ids"] = sorted(t.column("event_id").to_pylist())
        out[name] = facts
    uri = f"{wh.rstrip('/')}/alerts"
    opts = storage_options(uri)
    if DeltaTable.is_deltatable(uri, storage_options=opts):
        dt = DeltaTable(uri, storage_options=opts)
        t = dt.to_pyarrow_table()
        out["alerts"] = {"version": dt.version(), "rows": t.num_rows, "files": len(dt.file_uris()),
                         "fingerprints": sorted(t.column("fingerprint").to_pylist()),
                         "seqs": sorted(t.column("seq").to_pylist())}
        if store_id:
            out["alerts"]["txn"] = dt.transaction_version(f"flowaudit-alerts:{store_id}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:3])
    # Leave without the interpreter's teardown: once in a while (one make test run in many) a
    # native thread pool of the deltalake/pyarrow wheels aborts it with "terminate called
    # without an active exception", after everything was printed.
    sys.stdout.flush()
    os._exit(0)
