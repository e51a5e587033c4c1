-- id: transfer_no_legal_basis
-- title: Transfer to a country with no legal basis at event time
-- severity: high
-- schedule: */15 * * * *
-- lookback: 1h
-- entity: src_ip, dst_ip, dst_country
-- policy: transfer_bases.csv, networks.toml
-- settings: datafusion.execution.parquet.pushdown_filters = true
-- summary: {src_ip} sent {bytes} bytes in {flows} flows to {dst_ip} in {destination} (first at {first_seen})
-- description: Data left the enclave for an address in a country that, on the day it was sent,
--   was neither in the EEA nor covered by an adequacy decision or another transfer basis listed
--   in the policy's transfer_bases. A destination whose country is unknown (an address the GeoIP
--   database does not know, or ingest without GeoIP) is reported too: no transfer basis can be
--   shown for it.
SELECT f.src_ip,
       f.dst_ip,
       f.dst_country,
       CASE WHEN f.dst_country IS NULL THEN 'an unknown country (not in the GeoIP database), so no transfer basis can be shown'
            ELSE f.dst_country || ', which had no transfer basis'
       END AS destination,
       min(f.ts) AS first_seen,
       max(f.ts) AS last_seen,
       count(*) AS flows,
       sum(f.bytes) AS bytes
FROM flows f
WHERE f.date BETWEEN '{{from_date}}' AND '{{to_date}}'
  AND f.ts >= {{from}} AND f.ts < {{to}}
  AND f.src_zone = 'enclave'
  AND f.dst_zone = 'external'
  AND (f.dst_country IS NULL OR basis_for(f.dst_country, f.ts) IS NULL)
GROUP BY f.src_ip, f.dst_ip, f.dst_country, CAST(f.ts AS DATE)
ORDER BY first_seen, f.dst_ip
