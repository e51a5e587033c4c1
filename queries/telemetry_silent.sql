-- id: telemetry_silent
-- title: Lost telemetry: an exporter or gateway silent past its expected interval
-- severity: high
-- schedule: */15 * * * *
-- lookback: 1d
-- entity: source
-- policy: networks.toml
-- settings: datafusion.execution.parquet.pushdown_filters = true
-- summary: {kind} {source} sent nothing from {silent_from} to {silent_to} ({silent_s} s; expected at least every {expected_interval_s} s)
-- description: Every flow exporter and security gateway in networks.toml must report at least once
--   per its expected interval. A silence is the time between two consecutive records of the same
--   source, or between the window's edges and its first or last record, longer than that
--   interval. Data that leaves the enclave while its monitoring is silent cannot be audited.
WITH sources AS (
  SELECT 'exporter' AS kind, exporter AS source, expected_interval_s FROM exporters
  UNION ALL
  SELECT DISTINCT 'gateway' AS kind, gateway_id AS source, expected_interval_s FROM gateways
),
seen AS (
  SELECT f.exporter AS source, f.ts FROM flows f
  WHERE f.date BETWEEN '{{from_date}}' AND '{{to_date}}'
    AND f.ts >= {{from}} AND f.ts < {{to}} AND f.exporter IS NOT NULL
  UNION ALL
  SELECT e.gateway_id AS source, e.ts FROM gateway_events e
  WHERE e.date BETWEEN '{{from_date}}' AND '{{to_date}}'
    AND e.ts >= {{from}} AND e.ts < {{to}}
  UNION ALL
  SELECT source, {{from}} AS ts FROM sources
  UNION ALL
  SELECT source, {{to}} AS ts FROM sources
),
gaps AS (
  SELECT source, lag(ts) OVER (PARTITION BY source ORDER BY ts) AS silent_from, ts AS silent_to
  FROM seen
)
SELECT s.source,
       s.kind,
       g.silent_from,
       g.silent_to,
       CAST(floor(date_part('epoch', g.silent_to) - date_part('epoch', g.silent_from)) AS BIGINT) AS silent_s,
       s.expected_interval_s,
       g.silent_from AS first_seen,
       g.silent_to AS last_seen
FROM gaps g
JOIN sources s ON s.source = g.source
WHERE g.silent_from IS NOT NULL
  AND date_part('epoch', g.silent_to) - date_part('epoch', g.silent_from) > s.expected_interval_s
ORDER BY first_seen, s.source
