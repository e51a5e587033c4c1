-- id: repeated_denials
-- title: Repeated denials of one employee in a short time (probing)
-- severity: medium
-- schedule: */15 * * * *
-- lookback: 1h
-- history: 10m
-- entity: employee_id
-- summary: {employee_id} was denied {denials} times between {first_seen} and {last_seen} (up to {most_in_10_minutes} within ten minutes), mostly for {data_category} data
-- description: Ten or more denied gateway requests by the same employee within any ten minutes.
--   Denials are the gateway doing its job; many in a row suggest someone probing for data they
--   may not reach.
WITH denials AS (
  SELECT e.employee_id, e.ts, e.data_category,
         count(*) OVER (PARTITION BY e.employee_id ORDER BY e.ts
                        RANGE BETWEEN INTERVAL '10 minutes' PRECEDING AND CURRENT ROW) AS in_10_minutes
  FROM gateway_events e
  WHERE e.date BETWEEN '{{history_from_date}}' AND '{{to_date}}'
    AND e.ts >= {{history_from}} AND e.ts < {{to}}
    AND e.decision = 'deny'
)
SELECT employee_id,
       count(*) AS denials,
       max(in_10_minutes) AS most_in_10_minutes,
       min(ts) AS first_seen,
       max(ts) AS last_seen,
       min(data_category) AS data_category
FROM denials
WHERE ts >= {{from}}
GROUP BY employee_id, CAST(ts AS DATE)
HAVING max(in_10_minutes) >= 10
ORDER BY first_seen, employee_id
