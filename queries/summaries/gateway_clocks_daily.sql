-- gateway_clocks_daily: per day of the gateway_events table (its `date` partition), each
-- gateway's newest event time and its number of events. What the watermarks read to tell how far
-- each gateway has reported (docs/rules.md, "Watermarks and late data"): the newest over a range
-- of days is the newest of the days' newest.
--
-- flowaudit keeps it per day, rebuilt from the gateway_events table whenever that day's files
-- change (docs/rules.md, "Summaries").
SELECT e.date,
       e.gateway_id,
       max(e.ts) AS newest_ts,
       count(*) AS events
FROM gateway_events e
GROUP BY e.date, e.gateway_id
