-- id: unknown_employee
-- title: Access by someone absent from the roster or outside their valid period
-- severity: high
-- schedule: */15 * * * *
-- lookback: 1h
-- entity: employee_id
-- policy: employees.csv
-- summary: {employee_id} was allowed to {action} {data_category} data through {gateway_id}: {problem}
-- description: The gateway allowed access by an employee id that is not in the roster, or whose
--   roster entry was not valid on the day (not yet started, or ended).
SELECT e.employee_id,
       CASE WHEN r.employee_id IS NULL THEN 'not on the employee roster'
            WHEN CAST(e.ts AS DATE) < r.valid_from THEN 'roster entry starts on ' || CAST(r.valid_from AS VARCHAR)
            ELSE 'roster entry ended on ' || CAST(r.valid_to AS VARCHAR)
       END AS problem,
       e.event_id,
       e.ts AS first_seen,
       e.ts AS last_seen,
       e.gateway_id,
       e.data_category,
       e.action,
       e.records,
       CAST(r.valid_to AS VARCHAR) AS policy_roster_valid_to
FROM gateway_events e
LEFT JOIN employees r ON r.employee_id = e.employee_id
WHERE e.date BETWEEN '{{from_date}}' AND '{{to_date}}'
  AND e.ts >= {{from}} AND e.ts < {{to}}
  AND e.decision = 'allow'
  AND (r.employee_id IS NULL
       OR CAST(e.ts AS DATE) < r.valid_from
       OR (r.valid_to IS NOT NULL AND CAST(e.ts AS DATE) > r.valid_to))
ORDER BY first_seen, e.event_id
