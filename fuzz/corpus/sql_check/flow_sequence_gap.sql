-- id: flow_sequence_gap
-- title: Lost telemetry: gaps in a flow exporter's sequence numbers
-- severity: medium
-- schedule: */15 * * * *
-- lookback: 1h
-- history: 15m
-- entity: exporter
-- policy: networks.toml
-- summary: exporter {exporter} skipped sequence numbers {missing_from} to {missing_to} ({missing} records lost) at {first_seen}
-- description: Exporters marked `sequenced` in networks.toml number their flow records one by one.
--   Records are ordered by sequence number; a step of more than one means records were lost
--   between the exporter and the warehouse. A step backwards (an exporter restart) is not
--   reported.
WITH records AS (
  SELECT f.exporter, f.sequence_num, f.ts
  FROM flows f
  JOIN exporters x ON x.exporter = f.exporter AND x.sequenced
  WHERE f.date BETWEEN '{{history_from_date}}' AND '{{to_date}}'
    AND f.ts >= {{history_from}} AND f.ts < {{to}}
    AND f.sequence_num IS NOT NULL
),
steps AS (
  SELECT exporter, ts, sequence_num,
         lag(sequence_num) OVER (PARTITION BY exporter ORDER BY sequence_num) AS previous
  FROM records
)
SELECT exporter,
       previous + 1 AS missing_from,
       sequence_num - 1 AS missing_to,
       sequence_num - previous - 1 AS missing,
       ts AS first_seen,
       ts AS last_seen
FROM steps
WHERE previous IS NOT NULL
  AND sequence_num > previous + 1
  AND ts >= {{from}}
ORDER BY first_seen, exporter
