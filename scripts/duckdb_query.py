"""Run one SQL query with DuckDB over a flowaudit warehouse and policy folder (the same views as
duckdb_rules.py) and print its rows as a JSON array: the independent side of the SQL tests and
of the ad hoc query benchmark.

  duckdb_query.py WAREHOUSE POLICY SQL
"""
import json
import sys

import duckdb

from duckdb_rules import setup


def main(wh, policy, sql):
    con = duckdb.connect()
    setup(con, wh, policy)
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    json.dump(rows, sys.stdout, default=str)


if __name__ == "__main__":
    main(*sys.argv[1:4])
