-- id: gateway_bypass
-- title: Data left the enclave without a security gateway session
-- severity: high
-- schedule: */15 * * * *
-- lookback: 1h
-- history: 10m
-- entity: src_ip, dst_ip, dst_country
-- policy: networks.toml
-- settings: datafusion.execution.parquet.pushdown_filters = true
-- summary: {src_ip} sent {bytes} bytes in {flows} flows to {dst_ip} (country {dst_country}) {how}
-- description: A flow went from an enclave address to an external one, and no security gateway
--   allowed it: either the source is not a gateway address at all, or it is a gateway but no
--   gateway event allowed a session to that destination within five minutes before the flow
--   (or one minute after it, for clock skew between the gateway and the flow exporter).
WITH egress AS (
  SELECT f.ts, f.src_ip, f.dst_ip, f.dst_country, f.bytes, g.gateway_id
  FROM flows f
  LEFT JOIN gateways g ON g.ip = f.src_ip
  WHERE f.date BETWEEN '{{from_date}}' AND '{{to_date}}'
    AND f.ts >= {{from}} AND f.ts < {{to}}
    AND f.src_zone = 'enclave'
    AND f.dst_zone = 'external'
),
sessions AS (
  SELECT e.gateway_id, e.dst_ip, e.ts
  FROM gateway_events e
  WHERE e.date BETWEEN '{{history_from_date}}' AND '{{to_date}}'
    AND e.ts >= {{history_from}} AND e.ts < {{to}} + INTERVAL '10 minutes'
    AND e.decision = 'allow'
    AND e.dst_ip IS NOT NULL
),
uncovered AS (
  SELECT x.*
  FROM egress x
  WHERE x.gateway_id IS NULL
     OR NOT EXISTS (
       SELECT 1 FROM sessions s
       WHERE s.gateway_id = x.gateway_id
         AND s.dst_ip = x.dst_ip
         AND s.ts >= x.ts - INTERVAL '5 minutes'
         AND s.ts <= x.ts + INTERVAL '1 minute')
)
SELECT src_ip,
       dst_ip,
       dst_country,
       CASE WHEN max(gateway_id) IS NULL THEN 'directly, not through a security gateway'
            ELSE 'through gateway ' || max(gateway_id) || ' with no allowed session to that destination'
       END AS how,
       min(ts) AS first_seen,
       max(ts) AS last_seen,
       count(*) AS flows,
       sum(bytes) AS bytes
FROM uncovered
GROUP BY src_ip, dst_ip, dst_country, CAST(ts AS DATE)
ORDER BY first_seen, dst_ip
