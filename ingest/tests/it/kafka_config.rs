//! The librdkafka settings derived from `max_buffer_bytes`: the prefetch is an eighth of it.
use flowaudit_ingest::config::IngestSettings;
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
fn the_prefetch_is_an_eighth_of_the_memory_bound() {
    for bound in [1usize << 20, 64 << 20, 256 << 20, 4 << 30] {
        let cfg = settings(bound).resolve().unwrap();
        // Rows 9/16, the encoder 5/16, the prefetch 1/8.
        assert_eq!(cfg.prefetch_bytes(), bound / 8);
        assert_eq!(cfg.row_bytes(), bound / 16 * 9);
        assert!(cfg.row_bytes() + cfg.prefetch_bytes() < bound);
        let c = client_config(&cfg);
        let prefetch = bound as u64 / 8;
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
    let mut s = settings(64 << 20);
    s.kafka = Some(
        [("queued.max.messages.kbytes".to_string(), "4096".to_string())]
            .into_iter()
            .collect(),
    );
    let c = client_config(&s.resolve().unwrap());
    assert_eq!(get(&c, "queued.max.messages.kbytes"), 4096);

    // A larger message.max.bytes raises the derived fetch.max.bytes with it.
    let mut s = settings(64 << 20);
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
