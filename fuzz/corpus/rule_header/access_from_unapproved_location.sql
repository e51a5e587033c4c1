-- id: access_from_unapproved_location
-- title: Access from a location not approved for the employee
-- severity: high
-- schedule: */15 * * * *
-- lookback: 1h
-- entity: employee_id, employee_country
-- policy: employees.csv
-- summary: {employee_id} reached {data_category} data ({action}, {records} records) from {employee_country}, which is not among their approved locations ({policy_allowed_locations})
-- description: The gateway allowed an employee on the roster to reach data from a country that is
--   not among the access locations approved for them in the roster (allowed_locations), whatever
--   the data category. Denied attempts are not reported here (the gateway did its job); people
--   not on the roster, or outside their valid period, are reported by unknown_employee.
SELECT e.employee_id,
       e.employee_country,
       e.event_id,
       e.ts AS first_seen,
       e.ts AS last_seen,
       e.gateway_id,
       e.data_category,
       e.action,
       e.records,
       r.allowed_locations AS policy_allowed_locations
FROM gateway_events e
JOIN employees r ON r.employee_id = e.employee_id
WHERE e.date BETWEEN '{{from_date}}' AND '{{to_date}}'
  AND e.ts >= {{from}} AND e.ts < {{to}}
  AND e.decision = 'allow'
  AND CAST(e.ts AS DATE) >= r.valid_from
  AND (r.valid_to IS NULL OR CAST(e.ts AS DATE) <= r.valid_to)
  AND ';' || r.allowed_locations || ';' NOT LIKE '%;' || e.employee_country || ';%'
ORDER BY first_seen, e.event_id
