-- allowed_events_hourly: per day of the gateway_events table (its `date` partition) and hour of
-- `ts`, the allowed events that name a destination, by employee, destination country and
-- action: their bytes, their number, and the hour's first and last of them. What volume_spike
-- sums per employee and per destination country.
--
-- flowaudit keeps it per day, rebuilt from the table whenever that day's files change
-- (docs/rules.md, "Summaries"); DuckDB's differential test and benchmark read it as this view.
-- An hour lies wholly inside a window [A, B) when hour >= A AND hour + 1 hour <= B; a rule reads
-- those hours here and the events of the hours the window's edges cut from the table.
SELECT e.date,
       date_trunc('hour', e.ts) AS hour,
       e.employee_id,
       e.dst_country,
       e.action,
       sum(e.bytes) AS bytes,
       count(*) AS events,
       min(e.ts) AS first_ts,
       max(e.ts) AS last_ts
FROM gateway_events e
WHERE e.decision = 'allow'
  AND e.dst_ip IS NOT NULL
GROUP BY e.date, date_trunc('hour', e.ts), e.employee_id, e.dst_country, e.action
