-- id: gateway_allowed_forbidden
-- title: The gateway allowed a data category the employee is not entitled to
-- severity: high
-- schedule: */15 * * * *
-- lookback: 1h
-- entity: employee_id, data_category
-- policy: employees.csv
-- summary: {gateway_id} allowed {employee_id} to {action} {data_category} data ({records} records); the roster allows them {policy_allowed_categories}
-- description: The auditor re-evaluates every gateway decision against the roster. This rule
--   reports allowed events whose data category is not among the employee's allowed categories.
--   The other parts of a decision are re-evaluated by their own rules: location
--   (access_from_unapproved_location), approval tickets (export_without_approval), the roster
--   itself (unknown_employee) and the destination's legal basis (transfer_no_legal_basis).
SELECT e.employee_id,
       e.data_category,
       e.event_id,
       e.ts AS first_seen,
       e.ts AS last_seen,
       e.gateway_id,
       e.action,
       e.records,
       r.allowed_categories AS policy_allowed_categories
FROM gateway_events e
JOIN employees r ON r.employee_id = e.employee_id
WHERE e.date BETWEEN '{{from_date}}' AND '{{to_date}}'
  AND e.ts >= {{from}} AND e.ts < {{to}}
  AND e.decision = 'allow'
  AND CAST(e.ts AS DATE) >= r.valid_from
  AND (r.valid_to IS NULL OR CAST(e.ts AS DATE) <= r.valid_to)
  AND ';' || r.allowed_categories || ';' NOT LIKE '%;' || e.data_category || ';%'
ORDER BY first_seen, e.event_id
