//! A corpus of malformed messages: each is quarantined with its precise reason, the good messages
//! around them all land, ingest keeps running and the counts reconcile.
use flowaudit_ingest::generate::Message;

use crate::support::*;

const GOOD: &str = r#"{"event_id":"ID","ts":"2026-11-21T10:00:00Z","gateway_id":"gw-fra-1","employee_id":"e1001","employee_country":"DE","role":"analyst","data_category":"allowable","action":"read","decision":"allow","approval_ticket":null,"session_id":"s-1","records":10,"bytes":100,"dst_ip":"31.10.0.1"}"#;

fn good(id: &str) -> Vec<u8> {
    GOOD.replace("ID", id).into_bytes()
}

/// Replace `from` in a good event (which must contain it).
fn bad(from: &str, to: &str) -> Vec<u8> {
    let g = good("bad");
    let s = String::from_utf8(g).unwrap();
    assert!(s.contains(from), "{from}");
    s.replacen(from, to, 1).into_bytes()
}

/// (topic: 'g' gateway / 'f' flows, payload, expected reason code, expected field)
fn corpus() -> Vec<(char, Vec<u8>, &'static str, Option<&'static str>)> {
    let mut invalid_utf8 = good("utf8");
    let at = invalid_utf8
        .windows(7)
        .position(|w| w == b"analyst")
        .unwrap();
    invalid_utf8[at] = 0xff;
    let big_pad = "x".repeat(10 * 1024 * 1024);
    let ten_mb = GOOD
        .replace(
            r#""records":10"#,
            &format!(r#""records":10,"pad":"{big_pad}""#),
        )
        .into_bytes();
    let gf = r#"{"type":"IPFIX","time_received_ns":1795255200000000000,"sequence_num":1,"sampler_address":"10.20.255.1","time_flow_start_ns":1795255200000000000,"time_flow_end_ns":1795255201000000000,"bytes":10,"packets":1,"src_addr":"10.20.0.1","dst_addr":"31.10.0.1","proto":"TCP","src_port":1,"dst_port":443}"#;
    let zk = r#"{"ts":1795255200.5,"uid":"Cx","id.orig_h":"10.20.0.1","id.orig_p":1,"id.resp_h":"31.10.0.1","id.resp_p":443,"proto":"tcp","orig_bytes":5}"#;
    vec![
        ('g', br#"{"event_id":"x","ts":"2026-"#.to_vec(), "truncated_json", None),
        ('g', b"hello, not json".to_vec(), "not_json", None),
        ('g', invalid_utf8, "invalid_utf8", None),
        ('g', Vec::new(), "empty", None),
        ('g', b"[1,2,3]".to_vec(), "not_object", None),
        ('g', br#""just a string""#.to_vec(), "not_object", None),
        ('g', b"42".to_vec(), "not_object", None),
        ('g', b"null".to_vec(), "not_object", None),
        ('g', bad(r#""event_id":"bad","#, ""), "missing_field", Some("event_id")),
        ('g', bad(r#""event_id":"bad""#, r#""event_id":null"#), "missing_field", Some("event_id")),
        ('g', bad(r#""records":10"#, r#""records":"10""#), "wrong_type", Some("records")),
        ('g', bad(r#""records":10"#, r#""records":1.5"#), "wrong_type", Some("records")),
        ('g', bad(r#""records":10"#, r#""records":-1"#), "invalid_value", Some("records")),
        ('g', bad(r#""bytes":100"#, r#""bytes":1e400"#), "not_json", None),
        ('g', bad(r#""bytes":100"#, r#""bytes":99999999999999999999"#), "wrong_type", Some("bytes")),
        ('g', bad(r#""bytes":100"#, r#""bytes":18446744073709551615"#), "invalid_value", Some("bytes")),
        ('g', bad(r#""records":10"#, r#""records":NaN"#), "not_json", None),
        ('g', bad("2026-11-21T10:00:00Z", "9999-12-31T23:59:59Z"), "timestamp_out_of_range", Some("ts")),
        ('g', bad("2026-11-21T10:00:00Z", "0000-01-01T00:00:00Z"), "timestamp_out_of_range", Some("ts")),
        ('g', bad("2026-11-21T10:00:00Z", "yesterday"), "bad_timestamp", Some("ts")),
        ('g', bad(r#""ts":"2026-11-21T10:00:00Z""#, r#""ts":1795255200"#), "wrong_type", Some("ts")),
        ('g', bad("2026-11-21T10:00:00Z", "2026-11-21T10:00:00"), "bad_timestamp", Some("ts")),
        ('g', bad(r#""employee_country":"DE""#, r#""employee_country":"Germany""#), "invalid_value", Some("employee_country")),
        ('g', bad(r#""data_category":"allowable""#, r#""data_category":"secret""#), "invalid_value", Some("data_category")),
        ('g', bad(r#""decision":"allow""#, r#""decision":"maybe""#), "invalid_value", Some("decision")),
        ('g', bad("31.10.0.1", "999.1.1.1"), "bad_ip", Some("dst_ip")),
        ('g', bad("31.10.0.1", "10.0.0.1:443"), "bad_ip", Some("dst_ip")),
        ('g', bad(r#""event_id":"bad""#, r#""event_id":"""#), "invalid_value", Some("event_id")),
        ('g', bad(r#""role":"analyst""#, r#""role":{"name":"analyst"}"#), "wrong_type", Some("role")),
        ('g', bad(r#""session_id":"s-1""#, r#""session_id":["s-1"]"#), "wrong_type", Some("session_id")),
        ('g', bad(r#""records":10"#, r#""records":10,"ts":"2026-11-21T11:00:00Z""#), "invalid_value", None),
        ('g', bad(r#""event_id":"bad""#, &format!(r#""event_id":"{}""#, "e".repeat(2000))), "invalid_value", Some("event_id")),
        ('g', ten_mb, "oversize", None),
        ('f', br#"{"ts":"2026-11-21T10:00:00Z","src_ip":"not-an-ip","dst_ip":"31.10.0.1","protocol":"tcp","bytes":1,"exporter":"x"}"#.to_vec(), "bad_ip", Some("src_ip")),
        ('f', br#"{"foo":1,"bar":2}"#.to_vec(), "unknown_format", None),
        ('f', gf.replace(r#""proto":"TCP""#, r#""proto":300"#).into_bytes(), "invalid_value", Some("proto")),
        ('f', gf.replace(r#""sampler_address":"10.20.255.1","#, "").into_bytes(), "missing_field", Some("sampler_address")),
        ('f', gf.replace(r#""time_flow_start_ns":1795255200000000000"#, r#""time_flow_start_ns":"9999-01-01T00:00:00Z""#).into_bytes(), "timestamp_out_of_range", Some("time_flow_start_ns")),
        ('f', zk.replace("1795255200.5", "1e300").into_bytes(), "timestamp_out_of_range", Some("ts")),
        ('f', zk.replace(r#""id.resp_p":443"#, r#""id.resp_p":70000"#).into_bytes(), "invalid_value", Some("id.resp_p")),
    ]
}

#[test]
fn every_bad_message_is_quarantined_with_its_reason_and_counts_reconcile() {
    malformed_corpus(Setup::new(1));
}

#[test]
fn the_malformed_corpus_on_an_s3_warehouse_is_quarantined_the_same_way() {
    malformed_corpus(Setup::on_s3(1));
}

fn malformed_corpus(s: Setup) {
    let corpus = corpus();
    assert!(corpus.len() >= 30);
    let (mut g, mut f) = (Vec::new(), Vec::new());
    let mut expect_g = Vec::new();
    let mut expect_f = Vec::new();
    for (i, (topic, payload, code, field)) in corpus.iter().enumerate() {
        let m = Message {
            key: "k".into(),
            payload: payload.clone(),
            ts_us: 1_795_255_200_000_000,
        };
        let ok = Message {
            key: "k".into(),
            payload: good(&format!("good-{i}")),
            ts_us: 1_795_255_200_000_000,
        };
        if *topic == 'g' {
            expect_g.push((g.len(), *code, *field));
            g.push(m);
            g.push(ok);
        } else {
            expect_f.push((f.len(), *code, *field));
            f.push(m);
        }
    }
    s.produce_gateway(&g);
    flowaudit_ingest::produce::produce(&brokers(), &s.flow_topic, &f).unwrap();

    let mut c = s.ingest();
    c.arg("--until-caught-up");
    let (stdout, _) = run_ok(c);
    let bad = corpus.len();
    let good_n = g.len() - expect_g.len();
    assert!(
        stdout.contains(&format!(
            "consumed {} = gateway_events {good_n} + flows 0 + quarantined {bad}",
            g.len() + f.len()
        )),
        "{stdout}"
    );

    let facts = s.facts();
    let q = &facts["quarantine"]["by_offset"];
    for (topic, expect) in [(&s.gateway_topic, &expect_g), (&s.flow_topic, &expect_f)] {
        for (offset, code, field) in expect {
            let row = &q[format!("{topic}/0/{offset}")];
            assert_eq!(row["code"], *code, "offset {offset} of {topic}: {row}");
            assert_eq!(
                row["field"].as_str(),
                *field,
                "offset {offset} of {topic}: {row}"
            );
            let reason = row["reason"].as_str().unwrap();
            assert!(
                reason.starts_with(code) && reason.len() > code.len() + 5,
                "a precise reason: {reason}"
            );
        }
    }
    // The oversize message is kept (first MiB), with its real size.
    let (oversize_offset, _, _) = expect_g.iter().find(|e| e.1 == "oversize").unwrap();
    let row = &q[format!("{}/0/{oversize_offset}", s.gateway_topic)];
    assert!(
        row["raw_bytes"].as_u64().unwrap() > 10 * 1024 * 1024
            && row["truncated"] == true
            && row["raw_len"] == 1 << 20,
        "{row}"
    );
    let ids: Vec<String> =
        serde_json::from_value(facts["gateway_events"]["event_ids"].clone()).unwrap();
    assert_eq!(ids.len(), good_n);
    assert!(ids.iter().all(|i| i.starts_with("good-")));
    let v = flowaudit_analytics::verify::verify(&s.location());
    assert!(v.problems.is_empty(), "{:?}", v.problems);
}
