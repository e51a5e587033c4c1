//! A generated day goes through Kafka into the Delta tables exactly once, enriched, with the
//! offsets in the tables' logs and Kafka's committed offsets agreeing.
use std::collections::BTreeSet;
use std::time::Duration;

use flowaudit_ingest::generate::{self, GenerateOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::support::*;

#[test]
fn a_generated_day_lands_exactly_once_enriched_and_reconciled() {
    let s = Setup::new(3);
    let gen = generate::generate(&GenerateOptions {
        date: "2026-11-21".parse().unwrap(),
        seed: 42,
        policy: repo("fixtures/policy"),
        geoip_csv: repo("fixtures/geoip/ranges.csv"),
        events: 1500,
        flows: 6000,
        malformed: 9,
        flow_format: None,
    })
    .unwrap();
    s.produce_gateway(&gen.gateway);
    // The flows arrive from an independent client, as a collector would send them.
    generate::write_jsonl(&gen, s.dir.path()).unwrap();
    produce_with_python(&s.flow_topic, &s.dir.path().join("flows.jsonl"));

    let mut c = s.ingest();
    c.arg("--until-caught-up");
    let (stdout, _) = run_ok(c);
    let produced = gen.gateway.len() + gen.flows.len();
    let malformed = gen.planted.malformed_gateway + gen.planted.malformed_flows;
    let valid_gw = gen.gateway.len() - gen.planted.malformed_gateway;
    let valid_fl = gen.flows.len() - gen.planted.malformed_flows;
    assert!(
        stdout.contains(&format!("consumed {produced} = gateway_events {valid_gw} + flows {valid_fl} + quarantined {malformed}")),
        "{stdout}"
    );

    // The independent reader sees every event exactly once, and nothing else.
    let facts = pyarrow(&s.warehouse());
    let ids: Vec<String> =
        serde_json::from_value(facts["gateway_events"]["event_ids"].clone()).unwrap();
    let expected: BTreeSet<String> = gen
        .gateway
        .iter()
        .filter(|m| m.key != "malformed")
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), expected.len(), "duplicates or losses");
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(facts["gateway_events"]["provenance_unique"], true);
    assert_eq!(
        facts["gateway_events"]["dates"],
        serde_json::json!(["2026-11-21"])
    );
    assert_eq!(facts["flows"]["rows"], valid_fl as u64);
    assert_eq!(facts["flows"]["provenance_unique"], true);
    assert_eq!(
        facts["flows"]["source_formats"],
        serde_json::json!(["flowaudit", "goflow2", "zeek"])
    );
    assert_eq!(facts["quarantine"]["rows"], malformed as u64);

    // Enrichment: the planted transfer to Russia carries its destination country.
    let p01 = gen
        .planted
        .violations
        .iter()
        .find(|p| p.kind == "transfer_no_legal_basis")
        .unwrap();
    let ev = &p01.entity["event_id"];
    assert_eq!(facts["gateway_events"]["dst_country_by_event"][ev], "RU");
    let zones = facts["flows"]["zones"].as_array().unwrap();
    assert!(
        zones.contains(&serde_json::json!(["enclave", "external"]))
            && zones.contains(&serde_json::json!(["enclave", "internal"])),
        "{zones:?}"
    );

    // The catalog reads the same warehouse: partition columns, pruning, policy functions.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let p01_dst = p01.entity["dst_ip"].clone();
    let (day, other_day, quarantined, basis, transfers) = rt.block_on(async {
        let c = flowaudit_analytics::catalog::Catalog::open(&s.warehouse(), &repo("fixtures/policy"), Some(&repo("fixtures/geoip/ranges.csv"))).await.unwrap();
        let one = |sql: String| {
            let ctx = c.ctx.clone();
            async move {
                let b = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
                arrow::util::display::array_value_to_string(b[0].column(0), 0).unwrap()
            }
        };
        (
            one("SELECT count(*) FROM gateway_events WHERE date = '2026-11-21'".into()).await,
            one("SELECT count(*) FROM flows WHERE date = '2026-11-22'".into()).await,
            one("SELECT count(*) FROM quarantine".into()).await,
            one(format!("SELECT coalesce(basis_for(dst_country, ts), 'none') FROM gateway_events WHERE event_id = '{ev}'")).await,
            {
                // The rule file finds the planted transfer, and nothing else (the background obeys the policy).
                let rules = flowaudit_analytics::rules::load_rules(&repo("queries")).unwrap();
                let rule = rules.iter().find(|r| r.id == "transfer_no_legal_basis").unwrap();
                let sql = flowaudit_analytics::rules::render(rule, "2026-11-21T00:00:00Z".parse().unwrap(), "2026-11-22T00:00:00Z".parse().unwrap());
                let b = c.ctx.sql(&sql).await.unwrap().collect().await.unwrap();
                let mut found = Vec::new();
                for batch in &b {
                    for i in 0..batch.num_rows() {
                        let col = |n: &str| arrow::util::display::array_value_to_string(batch.column_by_name(n).unwrap(), i).unwrap();
                        found.push((col("dst_ip"), col("dst_country")));
                    }
                }
                found
            },
        )
    });
    assert_eq!(
        transfers,
        vec![(p01_dst, "RU".to_string())],
        "exactly the planted transfer"
    );
    assert_eq!(day, valid_gw.to_string());
    assert_eq!(other_day, "0");
    assert_eq!(quarantined, malformed.to_string());
    assert_eq!(
        basis, "none",
        "no legal basis for the planted transfer to Russia"
    );

    // The logs match the files, and record the GeoIP database's identity.
    assert_log_matches_files(&s.warehouse());
    let entries = crate::support::log(&s.warehouse()).files;
    let geo = flowaudit_ingest::writer::sha256_file(&repo("fixtures/geoip/ranges.csv")).unwrap();
    assert!(entries
        .iter()
        .all(|e| e.geoip_sha256.as_deref() == Some(geo.as_str())));

    // Kafka's committed offsets follow the logs.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", &s.group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition(&s.gateway_topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let mut checked = 0;
    for e in committed.elements() {
        let last = entries
            .iter()
            .filter(|m| m.topic == e.topic() && m.partition == e.partition())
            .map(|m| m.covers_last_offset)
            .max();
        if let Some(last) = last {
            assert_eq!(
                e.offset(),
                Offset::Offset(last + 1),
                "{}/{}",
                e.topic(),
                e.partition()
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
    drop(committed);

    // A second run finds nothing new: no file, no duplicate.
    let before = entries.len();
    let mut c = s.ingest();
    c.arg("--until-caught-up");
    let (stdout, _) = run_ok(c);
    assert!(stdout.contains("consumed 0 ="), "{stdout}");
    assert_eq!(crate::support::log(&s.warehouse()).files.len(), before);
}
