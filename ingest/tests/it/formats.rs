//! The goflow2 and Zeek formats decode from samples written after their public documentation.
use flowaudit_ingest::flow::{self, FlowFormat};

fn samples(name: &str) -> Vec<String> {
    std::fs::read_to_string(crate::repo(&format!("fixtures/samples/{name}")))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn goflow2_samples_decode_and_normalise() {
    let lines = samples("goflow2.jsonl");
    let f: Vec<_> = lines
        .iter()
        .map(|l| flow::decode(l.as_bytes()).unwrap_or_else(|r| panic!("{r}: {l}")))
        .collect();
    assert!(f.iter().all(|f| f.format == FlowFormat::Goflow2));
    // NetFlow v9, IPv6, integer ns times, proto as text
    assert_eq!(f[0].src_ip.to_string(), "fd01::1");
    assert_eq!(f[0].protocol, "tcp");
    assert_eq!(f[0].exporter.as_deref(), Some("192.168.0.1"));
    assert_eq!(f[0].sequence_num, Some(2999));
    assert_eq!(f[0].ts_us, 1_763_719_230_000_000);
    assert_eq!(f[0].ts_end_us, Some(1_763_719_235_000_000));
    assert_eq!(f[0].flow_type.as_deref(), Some("NETFLOW_V9"));
    // IPFIX with time_received_ns as RFC 3339 and the exporter's dst_as
    assert_eq!(f[1].protocol, "udp");
    assert_eq!(f[1].exporter_dst_asn, Some(13335));
    assert_eq!(f[1].sequence_num, Some(2_259_237_964));
    // NetFlow v5 without flow times: falls back to time_received_ns; proto as a number
    assert_eq!(f[2].ts_us, 1_763_719_155_565_530);
    assert_eq!(f[2].protocol, "tcp");
    assert_eq!(f[2].packets, Some(12));
    assert_eq!(f[3].protocol, "icmp");
}

#[test]
fn zeek_conn_samples_decode_and_normalise() {
    let lines = samples("zeek_conn.jsonl");
    let f: Vec<_> = lines
        .iter()
        .map(|l| flow::decode(l.as_bytes()).unwrap_or_else(|r| panic!("{r}: {l}")))
        .collect();
    assert!(f.iter().all(|f| f.format == FlowFormat::Zeek));
    assert_eq!(f[0].ts_us, 1_763_719_199_305_988);
    assert_eq!(f[0].flow_id.as_deref(), Some("CMdzit1AMNsmfAIiQc"));
    assert_eq!((f[0].src_port, f[0].dst_port), (Some(36844), Some(53)));
    assert_eq!(f[0].bytes, 62, "bytes are the originator's bytes");
    assert_eq!(f[0].exporter, None);
    assert_eq!(f[1].exporter.as_deref(), Some("zeek-enclave-1"));
    assert_eq!(f[1].ts_end_us, Some(1_763_719_201_100_000 + 12_500_000));
    // ISO 8601 ts, IPv6, no orig_bytes (S0), _node_name as the exporter
    assert_eq!(f[2].ts_us, 1_795_254_002_123_456);
    assert_eq!(f[2].bytes, 0);
    assert_eq!(f[2].conn_state.as_deref(), Some("S0"));
    assert_eq!(f[2].exporter.as_deref(), Some("worker-1"));
}

/// A Zeek duration that ends the flow past the accepted time range is quarantined with its
/// reason, not saturated into a flow that ends in the year 292277.
#[test]
fn a_zeek_duration_past_the_time_range_is_rejected() {
    let line = |d: &str| {
        format!(
            r#"{{"ts":1763719201.1,"uid":"C1","id.orig_h":"10.20.0.10","id.orig_p":1,"id.resp_h":"31.10.0.1","id.resp_p":443,"proto":"tcp","duration":{d}}}"#
        )
    };
    for d in ["9223372036854775807", "9000000000", "4000000000"] {
        let l = line(d);
        let r = flow::decode(l.as_bytes()).unwrap_err();
        assert_eq!(
            (r.code.as_str(), r.field),
            ("timestamp_out_of_range", Some("duration")),
            "{d}: {r}"
        );
        assert!(r.to_string().contains("past 2100-01-01"), "{d}: {r}");
    }
    let l = line("86400");
    let f = flow::decode(l.as_bytes()).unwrap();
    assert_eq!(f.ts_end_us, Some(1_763_719_201_100_000 + 86_400_000_000));
}

#[test]
fn flowaudit_format_and_unknown_format() {
    let ok = br#"{"ts":"2026-11-21T10:00:00Z","src_ip":"10.20.0.10","dst_ip":"31.10.0.1","src_port":40000,"dst_port":443,"protocol":"TCP","bytes":100,"packets":2,"exporter":"flowmeter-1","sequence_num":7,"flow_id":"fl-1"}"#;
    let f = flow::decode(ok).unwrap();
    assert_eq!(
        (f.format, f.protocol.as_ref(), f.sequence_num),
        (FlowFormat::Flowaudit, "tcp", Some(7))
    );
    let r = flow::decode(br#"{"a":1}"#).unwrap_err();
    assert_eq!(r.code.as_str(), "unknown_format");
}
