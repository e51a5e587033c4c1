"""Independent reader for tests: read a flowaudit warehouse with pyarrow and print JSON facts.

Usage: check_parquet.py WAREHOUSE
       check_parquet.py --columns A,B FILE.parquet   (the rows of those columns as JSON lists)
Reads each table as the Delta protocol defines it, sharing no code with delta-rs: the JSON
commits in <table>/_delta_log/ replayed in order (each `add` makes a file live, each `remove`
ends it), then exactly those Parquet files with pyarrow (Hive partition columns from their
paths). Prints row counts, ids, provenance uniqueness, quarantine reasons and each table's
application transactions (`txn`: app id -> last version).
"""
import json
import os
import sys
from collections import Counter
from urllib.parse import unquote

import pyarrow.dataset as ds
import pyarrow.fs as pafs

TXNS = {}


def filesystem(wh):
    """(filesystem, root path) of a warehouse: a local directory, or s3://bucket/prefix through
    pyarrow's own S3 client, configured from the standard AWS variables."""
    if wh.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
        scheme, _, host = endpoint.partition("://")
        fs = pafs.S3FileSystem(endpoint_override=host or None, scheme=scheme or "https",
                               access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                               secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                               region=os.environ.get("AWS_REGION", "us-east-1"))
        return fs, wh[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(wh)


def live_files(fs, path):
    """The live files of the Delta table at `path`, and its txn versions."""
    log = path + "/_delta_log"
    infos = fs.get_file_info(pafs.FileSelector(log, allow_not_found=True))
    names = [i.base_name for i in infos if i.type == pafs.FileType.File]
    versions = sorted(int(n[:-5]) for n in names if n.endswith(".json") and len(n) == 25)
    assert versions == list(range(len(versions))), f"{log}: versions {versions} have a gap"
    live, txns = {}, {}
    for v in versions:
        with fs.open_input_stream(f"{log}/{v:020}.json") as f:
            text = f.read().decode("utf-8")
        for line in text.splitlines():
            if not line.strip():
                continue
            a = json.loads(line)
            if "add" in a:
                live[unquote(a["add"]["path"])] = True
            elif "remove" in a:
                live.pop(unquote(a["remove"]["path"]), None)
            elif "txn" in a:
                txns[a["txn"]["appId"]] = a["txn"]["version"]
    return [f"{path}/{p}" for p in live], txns, bool(versions)


def table(wh, name):
    fs, root = filesystem(wh)
    path = f"{root}/{name}"
    files, txns, exists = live_files(fs, path)
    if not exists:
        return None
    TXNS[name] = txns
    if not files:
        return None
    part = ds.partitioning(flavor="hive")
    return ds.dataset(files, format="parquet", partitioning=part, partition_base_dir=path,
                      filesystem=fs).to_table()


def provenance_unique(t):
    keys = list(zip(t.column("kafka_topic").to_pylist(), t.column("kafka_partition").to_pylist(),
                    t.column("kafka_offset").to_pylist()))
    return len(keys) == len(set(keys))


def main(wh):
    out = {}
    g = table(wh, "gateway_events")
    if g is not None:
        out["gateway_events"] = {
            "rows": g.num_rows,
            "event_ids": g.column("event_id").to_pylist(),
            "provenance_unique": provenance_unique(g),
            "dst_country_by_event": {e: c for e, c in zip(g.column("event_id").to_pylist(),
                                                          g.column("dst_country").to_pylist())},
            "dates": sorted(set(str(d) for d in g.column("date").to_pylist())),
            "by_gateway": [{"gateway_id": k, "n": v} for k, v in
                           sorted(Counter(g.column("gateway_id").to_pylist()).items())],
        }
    f = table(wh, "flows")
    if f is not None:
        out["flows"] = {
            "rows": f.num_rows,
            "provenance_unique": provenance_unique(f),
            "source_formats": sorted(set(f.column("source_format").to_pylist())),
            "zones": sorted(set(zip(f.column("src_zone").to_pylist(), f.column("dst_zone").to_pylist()))),
            "exporters": sorted(set(x for x in f.column("exporter").to_pylist() if x is not None)),
        }
    q = table(wh, "quarantine")
    if q is not None:
        rows = q.to_pylist()
        out["quarantine"] = {
            "rows": q.num_rows,
            "provenance_unique": provenance_unique(q),
            "by_offset": {f'{r["kafka_topic"]}/{r["kafka_partition"]}/{r["kafka_offset"]}':
                          {"code": r["reason_code"], "field": r["field"], "reason": r["reason"],
                           "raw_bytes": r["raw_bytes"], "raw_len": len(r["raw"]),
                           "truncated": r["raw_truncated"]} for r in rows},
        }
    out["txns"] = TXNS
    json.dump(out, sys.stdout)


def columns(names, path):
    import pyarrow.parquet as pq
    t = pq.read_table(path, columns=names)
    json.dump([list(r) for r in zip(*(t.column(n).to_pylist() for n in names))], sys.stdout)


if __name__ == "__main__":
    if sys.argv[1] == "--columns":
        columns(sys.argv[2].split(","), sys.argv[3])
    else:
        main(sys.argv[1])
