-- egress_daily: per day of the flows table (its `date` partition), each destination country and
-- each destination network (ASN) the enclave sent data to, with the day's first and last flow to
-- it, the flows and the bytes. The same egress as first_seen_destination's: from an `enclave`
-- address to an `external` one, unknown countries and networks left out.
--
-- flowaudit keeps it per day, rebuilt from the flows table whenever that day's files change
-- (docs/rules.md, "Summaries"); DuckDB's differential test and benchmark read it as this view.
-- A rule reading it for "any flow between A and B" asks first_ts < B AND last_ts >= A, which is
-- exact while B - A is at least a day (no day can then hold flows before A and after B only).
SELECT f.date,
       'country' AS dimension,
       f.dst_country AS value,
       min(f.ts) AS first_ts,
       max(f.ts) AS last_ts,
       count(*) AS flows,
       sum(f.bytes) AS bytes
FROM flows f
WHERE f.src_zone = 'enclave'
  AND f.dst_zone = 'external'
  AND f.dst_country IS NOT NULL
GROUP BY f.date, f.dst_country
UNION ALL
SELECT f.date,
       'ASN' AS dimension,
       CAST(f.dst_asn AS VARCHAR) AS value,
       min(f.ts) AS first_ts,
       max(f.ts) AS last_ts,
       count(*) AS flows,
       sum(f.bytes) AS bytes
FROM flows f
WHERE f.src_zone = 'enclave'
  AND f.dst_zone = 'external'
  AND f.dst_asn IS NOT NULL
GROUP BY f.date, f.dst_asn
