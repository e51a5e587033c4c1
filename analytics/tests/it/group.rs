//! Two ingest processes in one group over 4-partition topics: all data, no duplicates.
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flowaudit_ingest::generate::{self, GenerateOptions};

use crate::support::*;

#[test]
fn two_processes_split_the_partitions_and_write_everything_once() {
    let s = Setup::new(4);
    let gen = generate::generate(&GenerateOptions {
        date: "2026-11-22".parse().unwrap(),
        seed: 3,
        policy: repo("fixtures/policy"),
        geoip_csv: repo("fixtures/geoip/ranges.csv"),
        events: 2000,
        flows: 8000,
        malformed: 0,
        flow_format: None,
    })
    .unwrap();
    // Spread the events over all partitions (the generator keys by gateway).
    let gw: Vec<_> = gen
        .gateway
        .iter()
        .enumerate()
        .map(|(i, m)| generate::Message {
            key: format!("k{i}"),
            ..m.clone()
        })
        .collect();
    s.produce_gateway(&gw);
    flowaudit_ingest::produce::produce(&brokers(), &s.flow_topic, &gen.flows).unwrap();

    let start = |_: u8| {
        let mut c = s.ingest();
        c.args(["--flush-interval-ms", "500", "--max-file-rows", "700"]);
        Running::spawn(c)
    };
    let mut a = start(0);
    let mut b = start(1);
    let t = Instant::now();
    let want = (gw.len() + gen.flows.len()) as u64;
    while table_rows(&s.warehouse(), "gateway_events") + table_rows(&s.warehouse(), "flows") < want
    {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "not everything recorded in 90 s:\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for p in [&a, &b] {
        p.signal(libc::SIGTERM);
    }
    assert!(a.wait(Duration::from_secs(30)).success(), "{}", a.log());
    assert!(b.wait(Duration::from_secs(30)).success(), "{}", b.log());
    assert!(
        a.log().contains("partition assigned") && b.log().contains("partition assigned"),
        "both processes got partitions"
    );

    let entries = crate::support::log(&s.warehouse()).files;
    let writers: BTreeSet<_> = entries.iter().map(|e| e.writer.clone()).collect();
    assert_eq!(writers.len(), 2, "both processes recorded files");
    let facts = pyarrow(&s.warehouse());
    let ids: Vec<String> =
        serde_json::from_value(facts["gateway_events"]["event_ids"].clone()).unwrap();
    assert_eq!(ids.len(), gw.len());
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        gw.len(),
        "no duplicates"
    );
    assert_eq!(facts["flows"]["rows"], gen.flows.len() as u64);
    assert_eq!(facts["flows"]["provenance_unique"], true);
    assert_log_matches_files(&s.warehouse());
}
