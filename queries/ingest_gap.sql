-- id: ingest_gap
-- title: Ingest gap: records Kafka no longer held when ingest read them, never audited
-- severity: high
-- schedule: */15 * * * *
-- lookback: 1d
-- entity: topic, partition, first_offset
-- summary: {topic}/{partition} offsets {first_offset}..{last_offset} ({missing_offsets} offsets) were gone from Kafka ({reason}) when ingest read them, found at {recorded_at}: no rule saw those records
-- description: Ingest reads each partition from the warehouse's recorded position. When that
--   position is below the earliest offset Kafka still holds (retention deleted the records
--   before ingest read them, the topic was recreated, an offset was reset), ingest goes on
--   from the earliest one and records the missing range in the table's Delta log (table
--   ingest_gaps). Whatever those records held was never checked by any rule: each range is
--   raised once, on the day ingest found it.
SELECT g.topic,
       g."partition",
       g.first_offset,
       g.last_offset,
       g.missing_offsets,
       g.reason,
       g.writer,
       g.table_name,
       g.version,
       g.recorded_at,
       g.recorded_at AS first_seen,
       g.recorded_at AS last_seen
FROM ingest_gaps g
WHERE g.recorded_at >= {{from}} AND g.recorded_at < {{to}}
ORDER BY first_seen, g.topic, g."partition", g.first_offset
