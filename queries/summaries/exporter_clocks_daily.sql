-- exporter_clocks_daily: per day of the flows table (its `date` partition), each exporter's
-- newest flow start and its number of flows. What the watermarks read to tell how far each
-- exporter has reported (docs/rules.md, "Watermarks and late data"): the newest over a range of
-- days is the newest of the days' newest.
--
-- flowaudit keeps it per day, rebuilt from the flows table whenever that day's files change
-- (docs/rules.md, "Summaries").
SELECT f.date,
       f.exporter,
       max(f.ts) AS newest_ts,
       count(*) AS flows
FROM flows f
WHERE f.exporter IS NOT NULL
GROUP BY f.date, f.exporter
