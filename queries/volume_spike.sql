-- id: volume_spike
-- title: Egress far above its own trailing baseline
-- severity: medium
-- schedule: 5 * * * *
-- lookback: 2h
-- history: 7d
-- entity: scope, subject
-- summary: {scope} {subject} moved {bytes} bytes in the hour from {hour}, against a trailing hourly average of {baseline_bytes} bytes over {baseline_hours} active hours
-- description: Per employee (every allowed event with a destination) and per destination country
--   (allowed exports), the bytes of each hour are compared with the average of that employee's or
--   country's active hours over the previous seven days. An hour is reported when it moved more
--   than ten times that average and more than 1 GB (so that a first, small hour is not a spike).
--   Exports to destinations whose country is unknown are one more country, `unknown`.
WITH events AS (
  SELECT e.employee_id, e.dst_country, e.action, e.bytes, e.ts, date_trunc('hour', e.ts) AS hour
  FROM gateway_events e
  WHERE e.date BETWEEN '{{history_from_date}}' AND '{{to_date}}'
    AND e.ts >= {{history_from}} AND e.ts < {{to}}
    AND e.decision = 'allow'
    AND e.dst_ip IS NOT NULL
),
hourly AS (
  SELECT 'employee' AS scope, employee_id AS subject, hour,
         sum(bytes) AS bytes, count(*) AS events, min(ts) AS first_seen, max(ts) AS last_seen
  FROM events
  GROUP BY employee_id, hour
  UNION ALL
  SELECT 'destination country' AS scope, dst_country AS subject, hour,
         sum(bytes) AS bytes, count(*) AS events, min(ts) AS first_seen, max(ts) AS last_seen
  FROM events
  WHERE action = 'export'
  GROUP BY dst_country, hour
),
scored AS (
  SELECT c.scope, c.subject, c.hour, c.bytes, c.events, c.first_seen, c.last_seen,
         avg(p.bytes) AS baseline_bytes,
         count(p.hour) AS baseline_hours
  FROM hourly c
  LEFT JOIN hourly p
    ON p.scope = c.scope AND (p.subject IS NOT DISTINCT FROM c.subject)
   AND p.hour < c.hour AND p.hour >= c.hour - INTERVAL '7 days'
  WHERE c.last_seen >= {{from}}
  GROUP BY c.scope, c.subject, c.hour, c.bytes, c.events, c.first_seen, c.last_seen
)
SELECT scope,
       subject,
       hour,
       bytes,
       events,
       CAST(round(coalesce(baseline_bytes, 0)) AS BIGINT) AS baseline_bytes,
       baseline_hours,
       first_seen,
       last_seen
FROM scored
WHERE bytes > 1000000000
  AND bytes > 10 * coalesce(baseline_bytes, 0)
ORDER BY first_seen, scope, subject
