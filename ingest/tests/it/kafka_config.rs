//! The memory bound: refused below its least value; a fixed reserve, and the librdkafka settings
//! derived from the prefetch, an eighth of what is shared.
use flowaudit_ingest::config::{IngestSettings, FIXED_RESERVE_BYTES, MIN_BUFFER_BYTES};
use flowaudit_ingest::consumer::client_config;
use rdkafka::consumer::BaseConsumer;

fn settings(max_buffer_bytes: usize) -> IngestSettings {
    IngestSettings {
        brokers: Some("127.0.0.1:9".into()),
        warehouse: Some("/nonexistent/wh".into()),
        policy: Some("/nonexistent/policy".into()),
        max_buffer_bytes: Some(max_buffer_bytes),
        ..Default::default()
    }
}

fn get(c: &rdkafka::ClientConfig, key: &str) -> u64 {
    c.get(key)
        .unwrap_or_else(|| panic!("{key} not set"))
        .parse()
        .unwrap()
}

#[test]
fn a_bound_below_the_least_ingest_can_keep_is_refused_naming_it() {
    assert_eq!(MIN_BUFFER_BYTES, 128 << 20);
    for (bound, said) in [
        (0usize, "0 MiB"),
        (1 << 20, "1 MiB"),
        (64 << 20, "64 MiB"),
        (96 << 20, "96 MiB"),
        (MIN_BUFFER_BYTES - 1, "134217727 bytes"),
    ] {
        let err = settings(bound).resolve().unwrap_err().to_string();
        assert!(
            err.contains(&format!("max_buffer_bytes {said} is below 128 MiB, the least ingest can keep to: 48 MiB of it is reserved")),
            "{bound}: {err}"
        );
    }
    assert!(settings(MIN_BUFFER_BYTES).resolve().is_ok());
}

#[test]
fn the_prefetch_is_an_eighth_of_what_the_reserve_leaves() {
    for bound in [MIN_BUFFER_BYTES, 256 << 20, 4 << 30] {
        let cfg = settings(bound).resolve().unwrap();
        // A fixed reserve, then rows 9/16, the encoder 5/16, the prefetch 1/8 of the rest.
        let shared = bound - FIXED_RESERVE_BYTES;
        assert_eq!(cfg.shared_bytes(), shared);
        assert_eq!(cfg.prefetch_bytes(), shared / 8);
        assert_eq!(cfg.row_bytes(), shared / 16 * 9);
        assert!(cfg.row_bytes() + cfg.prefetch_bytes() + FIXED_RESERVE_BYTES < bound);
        let c = client_config(&cfg);
        let prefetch = shared as u64 / 8;
        // Queued payloads: a quarter of the prefetch (librdkafka counts payload bytes only).
        assert_eq!(get(&c, "queued.max.messages.kbytes"), prefetch / 4 / 1024);
        // One fetch response: an eighth of it, at most 8 MiB and at least librdkafka's
        // message.max.bytes (1 MB), never the 64 MiB that made the prefetch larger than the bound.
        let fetch = (prefetch / 8).clamp(1_000_000, 8 << 20);
        assert_eq!(get(&c, "fetch.max.bytes"), fetch, "{bound}");
        assert!(get(&c, "fetch.message.max.bytes") <= fetch);
        assert!(get(&c, "fetch.message.max.bytes") <= get(&c, "fetch.max.bytes"));
        // Small messages are capped by count, 1 KiB each for half the prefetch.
        assert_eq!(
            get(&c, "queued.min.messages"),
            (prefetch / 2 / 1024).max(100)
        );
        // A shallow queue must not stall: the next fetch is not postponed by a second.
        assert!(get(&c, "fetch.queue.backoff.ms") <= 50);
        // librdkafka accepts the combination (it checks fetch.max.bytes >= message.max.bytes and
        // more at creation; no broker is needed for that).
        let created: Result<BaseConsumer, _> = c.create();
        assert!(created.is_ok(), "{bound}: {:?}", created.err());
    }
}

#[test]
fn kafka_settings_override_the_derived_ones() {
    let mut s = settings(MIN_BUFFER_BYTES);
    s.kafka = Some(
        [("queued.max.messages.kbytes".to_string(), "4096".to_string())]
            .into_iter()
            .collect(),
    );
    let c = client_config(&s.resolve().unwrap());
    assert_eq!(get(&c, "queued.max.messages.kbytes"), 4096);

    // A larger message.max.bytes raises the derived fetch.max.bytes with it.
    let mut s = settings(MIN_BUFFER_BYTES);
    s.kafka = Some(
        [("message.max.bytes".to_string(), "20000000".to_string())]
            .into_iter()
            .collect(),
    );
    let c = client_config(&s.resolve().unwrap());
    assert_eq!(get(&c, "fetch.max.bytes"), 20_000_000);
    let created: Result<BaseConsumer, _> = c.create();
    assert!(created.is_ok(), "{:?}", created.err());
}
