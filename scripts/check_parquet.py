"""Independent reader for tests: read a flowaudit warehouse with pyarrow and print JSON facts.

Usage: check_parquet.py WAREHOUSE
       check_parquet.py --columns A,B FILE.parquet   (the rows of those columns as JSON lists)
Reads each table as a Hive-partitioned dataset (pyarrow skips _manifest/ and _staging/), and
prints row counts, ids, provenance uniqueness and quarantine reasons.
"""
import json
import os
import sys

import pyarrow.dataset as ds


def table(wh, name):
    path = os.path.join(wh, name)
    if not os.path.isdir(path):
        return None
    return ds.dataset(path, format="parquet", partitioning="hive").to_table()


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
