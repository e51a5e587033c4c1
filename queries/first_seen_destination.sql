-- id: first_seen_destination
-- title: First-seen destination country or network (ASN) for the enclave
-- severity: low
-- schedule: 10 * * * *
-- lookback: 2h
-- history: 30d
-- entity: dimension, value
-- summary: the enclave sent data to {dimension} {value} for the first time in 30 days ({flows} flows, {bytes} bytes, first to {example_dst_ip})
-- description: A destination country or autonomous system that received data from the enclave in
--   the window and in none of the 30 days before it. Nothing is reported while there is no
--   history at all (the first window of a new deployment would otherwise list everything).
--   Destinations whose country or ASN is unknown are not new countries or networks; data sent to
--   an unknown country is reported by transfer_no_legal_basis.
--   The 30 days are read from the summary egress_daily (queries/summaries/egress_daily.sql), not
--   from every flow of them.
WITH egress AS (
  SELECT f.ts, f.dst_ip, f.dst_country, f.dst_asn, f.bytes
  FROM flows f
  WHERE f.date BETWEEN '{{from_date}}' AND '{{to_date}}'
    AND f.ts >= {{from}} AND f.ts < {{to}}
    AND f.src_zone = 'enclave'
    AND f.dst_zone = 'external'
),
keyed AS (
  SELECT 'country' AS dimension, dst_country AS value, ts, dst_ip, bytes FROM egress WHERE dst_country IS NOT NULL
  UNION ALL
  SELECT 'ASN' AS dimension, CAST(dst_asn AS VARCHAR) AS value, ts, dst_ip, bytes FROM egress WHERE dst_asn IS NOT NULL
),
history AS (
  -- Exact: a day's row has a flow in [history_from, from) when its first is before `from` and
  -- its last at or after `history_from`, as the history is longer than a day.
  SELECT DISTINCT dimension, value FROM egress_daily
  WHERE date BETWEEN '{{history_from_date}}' AND '{{from_date}}'
    AND first_ts < {{from}}
    AND last_ts >= {{history_from}}
),
has_history AS (
  SELECT count(*) AS n FROM history
)
SELECT k.dimension,
       k.value,
       min(k.ts) AS first_seen,
       max(k.ts) AS last_seen,
       min(k.dst_ip) AS example_dst_ip,
       count(*) AS flows,
       sum(k.bytes) AS bytes
FROM keyed k
CROSS JOIN has_history h
WHERE h.n > 0
  AND NOT EXISTS (SELECT 1 FROM history x WHERE x.dimension = k.dimension AND x.value = k.value)
GROUP BY k.dimension, k.value
ORDER BY first_seen, k.dimension, k.value
