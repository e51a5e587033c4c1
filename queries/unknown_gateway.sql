-- id: unknown_gateway
-- title: Enclave access through a gateway that is not in the policy
-- severity: high
-- schedule: */15 * * * *
-- lookback: 1h
-- entity: gateway_id
-- policy: networks.toml
-- summary: gateway {gateway_id}, which networks.toml does not list, reported {events} accesses ({allowed} allowed, {records} records) by {employees} employees
-- description: Every security gateway is listed in networks.toml. Access events from any other
--   gateway id mean enclave data was reached through a gateway the auditor has not approved (or a
--   gateway was renamed and the policy not changed with it); none of the other rules can check
--   such a gateway's traffic against its addresses, and telemetry_silent does not expect it.
SELECT e.gateway_id,
       count(*) AS events,
       count(*) FILTER (WHERE e.decision = 'allow') AS allowed,
       sum(e.records) AS records,
       count(DISTINCT e.employee_id) AS employees,
       min(e.ts) AS first_seen,
       max(e.ts) AS last_seen,
       min(e.event_id) AS event_id
FROM gateway_events e
LEFT JOIN (SELECT DISTINCT gateway_id FROM gateways) g ON g.gateway_id = e.gateway_id
WHERE e.date BETWEEN '{{from_date}}' AND '{{to_date}}'
  AND e.ts >= {{from}} AND e.ts < {{to}}
  AND g.gateway_id IS NULL
GROUP BY e.gateway_id, CAST(e.ts AS DATE)
ORDER BY first_seen, e.gateway_id
