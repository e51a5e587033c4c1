"""`make bench`: loading a real IP→country database (ip-location-db, ~550k IPv4+IPv6 ranges with
nested ranges resolved), beside DuckDB reading the same CSV into a table (parse only, no range
resolution) in the same invocation.

Each RUNS times (median and spread reported): wall time of the whole process and its peak RSS.
flowaudit: `flowaudit geoip --geoip FILE ADDR` (start, load, resolve, one lookup, exit), and the
load time it reports itself. Usage: python scripts/bench_geoip.py BIN DATABASE.csv
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

RUNS = int(os.environ.get("BENCH_RUNS", "5"))

DUCKDB = """
import sys, duckdb
con = duckdb.connect()
con.execute(f"CREATE TABLE r AS SELECT * FROM read_csv('{sys.argv[1]}', header=false, columns={{'s':'VARCHAR','e':'VARCHAR','cc':'VARCHAR'}})")
print(con.execute("SELECT count(*) FROM r").fetchone()[0])
"""


# Peak RSS as bench.py measures it: a small, fresh process spawns the command (a child of this
# process would report at least this process's own peak, carried across exec).
from bench import run  # noqa: E402


def summary(name, xs, unit):
    return f"{name}: median {statistics.median(xs):.3f} {unit} (min {min(xs):.3f}, max {max(xs):.3f})"


def main(bin_, db):
    fa_wall, fa_rss, fa_load, dk_wall, dk_rss = [], [], [], [], []
    out = ""
    for _ in range(RUNS):
        secs, rss, out = run([bin_, "geoip", "--geoip", db, "2.58.197.15"])
        fa_wall.append(secs)
        fa_rss.append(rss)
        fa_load.append(float(re.search(r"loaded in ([0-9.]+) s", out).group(1)))
        secs, rss, _ = run([sys.executable, "-c", DUCKDB, db])
        dk_wall.append(secs)
        dk_rss.append(rss)
    print(f"GeoIP database: {db} ({os.path.getsize(db) / 1e6:.1f} MB)")
    print("".join(l + "\n" for l in out.splitlines() if l.startswith(("ranges", "segments"))), end="")
    print(summary("flowaudit geoip, whole process", fa_wall, "s"))
    print(summary("flowaudit load + resolve (reported)", fa_load, "s"))
    print(summary("flowaudit peak RSS", fa_rss, "MB"))
    print(summary("DuckDB read_csv into a table, whole process", dk_wall, "s"))
    print(summary("DuckDB peak RSS", dk_rss, "MB"))
    print(f"ratio flowaudit/DuckDB wall: {statistics.median(fa_wall) / statistics.median(dk_wall):.2f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
