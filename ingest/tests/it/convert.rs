//! `convert` records each row's line number as its offset, blank lines included, for any number
//! of threads.
use arrow::array::{AsArray, Int64Array};
use flowaudit_ingest::batch::Enricher;
use flowaudit_ingest::networks::Networks;
use flowaudit_ingest::schema::Table;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

#[test]
fn offsets_are_line_numbers_and_rejects_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let ev = |id: &str| {
        format!(
            r#"{{"event_id":"{id}","ts":"2026-11-21T10:00:00Z","gateway_id":"g","employee_id":"e","employee_country":"DE","role":"r","data_category":"public","action":"read","decision":"allow","session_id":"s","records":1,"bytes":1}}"#
        )
    };
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        format!("{}\n\n{}\nnot json\n{}", ev("a"), ev("b"), ev("c")),
    )
    .unwrap();
    let enricher = Enricher {
        geoip: None,
        networks: Networks::load(&crate::repo("fixtures/policy")).unwrap(),
    };
    for threads in [1, 2] {
        let out = dir.path().join(format!("out-{threads}.parquet"));
        let s = flowaudit_ingest::convert::convert_jsonl(
            &input,
            Table::GatewayEvents,
            &enricher,
            &out,
            &Default::default(),
            threads,
        )
        .unwrap();
        assert_eq!(
            (s.lines, s.rows, s.rejected.get("not_json").copied()),
            (4, 3, Some(1))
        );
        let batches: Vec<_> =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&out).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let offsets: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column_by_name("kafka_offset")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        let ids: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                b.column_by_name("event_id")
                    .unwrap()
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(offsets, [0, 2, 4], "line numbers, counting the blank line");
    }
}
