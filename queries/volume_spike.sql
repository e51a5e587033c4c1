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
--   The hours wholly inside the seven days and the window are read from the summary
--   allowed_events_hourly (queries/summaries/allowed_events_hourly.sql); only the events of the
--   hours the edges cut are read from gateway_events.
WITH whole_hours AS (
  SELECT employee_id, dst_country, action, hour, bytes, events, first_ts, last_ts
  FROM allowed_events_hourly
  WHERE date BETWEEN '{{history_from_date}}' AND '{{to_date}}'
    AND hour >= {{history_from}} AND hour + INTERVAL '1 hour' <= {{to}}
),
cut_hours AS (
  SELECT e.employee_id, e.dst_country, e.action, date_trunc('hour', e.ts) AS hour,
         e.bytes, 1 AS events, e.ts AS first_ts, e.ts AS last_ts
  FROM gateway_events e
  WHERE e.date BETWEEN '{{history_from_date}}' AND '{{to_date}}'
    AND e.ts >= {{history_from}} AND e.ts < {{to}}
    AND (e.ts < date_trunc('hour', {{history_from}}) + INTERVAL '1 hour' OR e.ts >= date_trunc('hour', {{to}}))
    AND NOT (date_trunc('hour', e.ts) >= {{history_from}} AND date_trunc('hour', e.ts) + INTERVAL '1 hour' <= {{to}})
    AND e.decision = 'allow'
    AND e.dst_ip IS NOT NULL
),
parts AS (
  SELECT * FROM whole_hours
  UNION ALL
  SELECT * FROM cut_hours
),
hourly AS (
  SELECT 'employee' AS scope, employee_id AS subject, hour,
         sum(bytes) AS bytes, sum(events) AS events, min(first_ts) AS first_seen, max(last_ts) AS last_seen
  FROM parts
  GROUP BY employee_id, hour
  UNION ALL
  SELECT 'destination country' AS scope, dst_country AS subject, hour,
         sum(bytes) AS bytes, sum(events) AS events, min(first_ts) AS first_seen, max(last_ts) AS last_seen
  FROM parts
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
