-- id: export_without_approval
-- title: Export or bulk read of restricted data without a valid approval
-- severity: high
-- schedule: */15 * * * *
-- lookback: 1h
-- entity: employee_id
-- policy: approvals.csv
-- settings: datafusion.execution.parquet.pushdown_filters = true
-- summary: {employee_id} did {action} of {records} records of restricted data to destination country {dst_country}: {problem}
-- description: Restricted data may leave only under an approval ticket that names the employee,
--   covers restricted data, names the destination country (for exports) and is valid on the day.
--   Reported: every allowed export of restricted data, and every read or query of 10,000 or more
--   restricted records, whose ticket is missing, unknown, someone else's, for another
--   destination, not yet valid or expired.
SELECT e.employee_id,
       CASE WHEN e.approval_ticket IS NULL THEN 'no approval ticket'
            WHEN a.ticket IS NULL THEN 'ticket ' || e.approval_ticket || ' is not in the approvals'
            WHEN a.employee_id <> e.employee_id THEN 'ticket ' || a.ticket || ' was granted to ' || a.employee_id
            WHEN ';' || a.data_categories || ';' NOT LIKE '%;restricted;%' THEN 'ticket ' || a.ticket || ' does not cover restricted data'
            WHEN CAST(e.ts AS DATE) > a.valid_to THEN 'ticket ' || a.ticket || ' expired on ' || CAST(a.valid_to AS VARCHAR)
            WHEN CAST(e.ts AS DATE) < a.valid_from THEN 'ticket ' || a.ticket || ' is valid only from ' || CAST(a.valid_from AS VARCHAR)
            ELSE 'ticket ' || a.ticket || ' is for ' || a.destination_country || ', not ' || coalesce(e.dst_country, 'an unknown country')
       END AS problem,
       e.event_id,
       e.ts AS first_seen,
       e.ts AS last_seen,
       e.action,
       e.records,
       e.dst_ip,
       e.dst_country,
       e.approval_ticket,
       CAST(a.valid_to AS VARCHAR) AS policy_ticket_valid_to,
       a.destination_country AS policy_ticket_destination
FROM gateway_events e
LEFT JOIN approvals a ON a.ticket = e.approval_ticket
WHERE e.date BETWEEN '{{from_date}}' AND '{{to_date}}'
  AND e.ts >= {{from}} AND e.ts < {{to}}
  AND e.decision = 'allow'
  AND e.data_category = 'restricted'
  AND (e.action = 'export' OR e.records >= 10000)
  AND (a.ticket IS NULL
       OR a.employee_id <> e.employee_id
       OR ';' || a.data_categories || ';' NOT LIKE '%;restricted;%'
       OR CAST(e.ts AS DATE) > a.valid_to
       OR CAST(e.ts AS DATE) < a.valid_from
       OR (e.action = 'export' AND a.destination_country <> coalesce(e.dst_country, '')))
ORDER BY first_seen, e.event_id
