//! The manifest protocol: atomic commits, hash chain, compare-and-set on offsets, and recovery
//! from whatever a crashed writer left behind.
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use flowaudit_ingest::manifest::{self, CommitOutcome, Covers, Manifest, Repair};
use flowaudit_ingest::writer::{self, ParquetSettings, StagedFile};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn stage(m: &Manifest, name: &str, first: i64, last: i64) -> StagedFile {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("kafka_offset", DataType::Int64, false),
    ]));
    let ids: Vec<String> = (first..=last).map(|o| format!("ev-{o}")).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(Int64Array::from_iter_values(first..=last)),
        ],
    )
    .unwrap();
    let staging_path = m.staging_dir().join(name);
    let (sha256, bytes) = writer::write_parquet(
        &staging_path,
        &batch,
        &ParquetSettings::default(),
        vec![("k".into(), "v".into())],
    )
    .unwrap();
    StagedFile {
        staging_path,
        rel_path: format!("t/date=2026-11-21/hour=10/{name}"),
        table: "t",
        sha256,
        bytes,
        rows: (last - first + 1) as u64,
        first_offset: first,
        last_offset: last,
        min_ts_us: 1_763_719_200_000_000,
        max_ts_us: 1_763_719_200_000_000,
    }
}

fn covers(first: i64, last: i64) -> Covers {
    Covers {
        topic: "gw".into(),
        partition: 0,
        first_offset: first,
        last_offset: last,
    }
}

fn rows_of(path: &Path) -> usize {
    let f = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum()
}

#[test]
fn commits_are_chained_visible_and_resume_offsets() {
    let wh = tempfile::tempdir().unwrap();
    let mut m = Manifest::open(wh.path()).unwrap();
    assert_eq!(m.next_offset("gw", 0).unwrap(), None);
    let a = stage(&m, "a.parquet", 0, 9);
    let b = stage(&m, "b.parquet", 10, 14);
    assert!(matches!(
        m.commit(&[a], &covers(0, 9), Some("geo"), 1).unwrap(),
        CommitOutcome::Committed { last_seq: 1, .. }
    ));
    assert!(matches!(
        m.commit(&[b], &covers(10, 14), None, 1).unwrap(),
        CommitOutcome::Committed { last_seq: 2, .. }
    ));
    assert_eq!(
        rows_of(&wh.path().join("t/date=2026-11-21/hour=10/a.parquet")),
        10
    );
    let entries = manifest::read_entries(wh.path()).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].prev_hash, entries[0].hash);
    assert_eq!(entries[0].geoip_sha256.as_deref(), Some("geo"));
    assert_eq!(
        entries[0].sha256,
        writer::sha256_file(&wh.path().join(&entries[0].path)).unwrap()
    );
    // A new writer (a restart) resumes after the last recorded offset.
    drop(m);
    let mut m2 = Manifest::open(wh.path()).unwrap();
    assert_eq!(m2.next_offset("gw", 0).unwrap(), Some(15));
    assert_eq!(m2.head().0, 2);
}

#[test]
fn a_second_writer_cannot_record_the_same_offsets() {
    let wh = tempfile::tempdir().unwrap();
    let mut zombie = Manifest::open(wh.path()).unwrap();
    let mut owner = Manifest::open(wh.path()).unwrap();
    let z = stage(&zombie, "z.parquet", 0, 20);
    let o = stage(&owner, "o.parquet", 0, 9);
    assert!(matches!(
        owner.commit(&[o], &covers(0, 9), None, 1).unwrap(),
        CommitOutcome::Committed { .. }
    ));
    let staged = z.staging_path.clone();
    assert_eq!(
        zombie.commit(&[z], &covers(0, 20), None, 1).unwrap(),
        CommitOutcome::Stale { recorded_last: 9 }
    );
    assert!(
        !staged.exists(),
        "the stale commit's staged file is deleted"
    );
    assert_eq!(manifest::read_entries(wh.path()).unwrap().len(), 1);
}

#[test]
fn a_torn_tail_is_cut_and_a_recorded_file_left_in_staging_is_rolled_forward() {
    let wh = tempfile::tempdir().unwrap();
    let mut m = Manifest::open(wh.path()).unwrap();
    let a = stage(&m, "a.parquet", 0, 4);
    m.commit(&[a], &covers(0, 4), None, 1).unwrap();
    let b = stage(&m, "b.parquet", 5, 9);
    let b_final = wh.path().join(&b.rel_path);
    m.commit(&[b], &covers(5, 9), None, 1).unwrap();
    // Simulate a crash after the manifest append but before the rename: move b back to staging.
    std::fs::rename(&b_final, m.staging_dir().join("b.parquet")).unwrap();
    // …and a second writer that died mid-append.
    let mpath = wh.path().join("_manifest/manifest.jsonl");
    let mut text = std::fs::read(&mpath).unwrap();
    text.extend_from_slice(br#"{"seq":3,"commit_id":"x","commit_fi"#);
    std::fs::write(&mpath, &text).unwrap();
    drop(m); // the writer "dies": its staging lock is released
    let mut r = Manifest::open(wh.path()).unwrap();
    let repairs = r.take_repairs();
    assert!(
        repairs
            .iter()
            .any(|x| matches!(x, Repair::TruncatedTail { .. })),
        "{repairs:?}"
    );
    assert!(
        repairs.contains(&Repair::RolledForward {
            path: "t/date=2026-11-21/hour=10/b.parquet".into()
        }),
        "{repairs:?}"
    );
    assert_eq!(rows_of(&b_final), 5);
    assert_eq!(r.next_offset("gw", 0).unwrap(), Some(10));
    assert_eq!(manifest::read_entries(wh.path()).unwrap().len(), 2);
    // The dead writer's staging directory is gone.
    let staging: Vec<_> = std::fs::read_dir(wh.path().join("_staging"))
        .unwrap()
        .collect();
    assert_eq!(
        staging.len(),
        1,
        "only the live writer's staging directory remains"
    );
}

#[test]
fn an_edited_manifest_line_breaks_the_chain() {
    let wh = tempfile::tempdir().unwrap();
    let mut m = Manifest::open(wh.path()).unwrap();
    let a = stage(&m, "a.parquet", 0, 4);
    m.commit(&[a], &covers(0, 4), None, 1).unwrap();
    let b = stage(&m, "b.parquet", 5, 9);
    m.commit(&[b], &covers(5, 9), None, 1).unwrap();
    drop(m);
    let mpath = wh.path().join("_manifest/manifest.jsonl");
    let text = std::fs::read_to_string(&mpath)
        .unwrap()
        .replacen("\"rows\":5", "\"rows\":6", 1);
    std::fs::write(&mpath, text).unwrap();
    let e = manifest::read_entries(wh.path()).unwrap_err().to_string();
    assert!(e.contains("hash chain broken at seq 1"), "{e}");
    let e = Manifest::open(wh.path())
        .err()
        .expect("a broken chain refuses new writers")
        .to_string();
    assert!(e.contains("hash chain broken"), "{e}");
}

/// Someone who can write the manifest can recompute its unkeyed hash chain, so the readers
/// (`verify`, the report) must also check what no writer produces: a commit's lines interleaved
/// with another commit's, or an incomplete commit followed by a complete one (the writer cuts a
/// crashed writer's incomplete commit off before appending). Each is refused, naming the line.
#[test]
fn a_rechained_manifest_with_interleaved_commits_is_refused() {
    let wh = tempfile::tempdir().unwrap();
    let mut m = Manifest::open(wh.path()).unwrap();
    let a = stage(&m, "a.parquet", 0, 4);
    let b = stage(&m, "b.parquet", 5, 9);
    m.commit(&[a, b], &covers(0, 9), None, 1).unwrap();
    let c = stage(&m, "c.parquet", 10, 14);
    m.commit(&[c], &covers(10, 14), None, 1).unwrap();
    drop(m);
    let entries = manifest::read_entries(wh.path()).unwrap();
    assert_eq!(entries.len(), 3);
    let mpath = wh.path().join("_manifest/manifest.jsonl");
    // Rewrite the file with `order` of the entries, chained afresh as an attacker would.
    let rechain = |order: &[usize]| {
        let mut head = manifest::GENESIS_HASH.to_string();
        let mut text = String::new();
        for (i, &k) in order.iter().enumerate() {
            let mut e = entries[k].clone();
            e.seq = i as u64 + 1;
            e.prev_hash = head.clone();
            e.hash = e.compute_hash();
            head = e.hash.clone();
            text.push_str(&serde_json::to_string(&e).unwrap());
            text.push('\n');
        }
        std::fs::write(&mpath, text).unwrap();
    };
    rechain(&[0, 2, 1]);
    let e = manifest::read_entries(wh.path()).unwrap_err().to_string();
    assert!(
        e.contains("line 2: entry seq 2 interleaves another commit"),
        "{e}"
    );
    rechain(&[0, 2]);
    let e = manifest::read_entries(wh.path()).unwrap_err().to_string();
    assert!(
        e.contains("line 2: entry seq 2 interleaves another commit"),
        "{e}"
    );
    // The honest order still reads, and an incomplete last commit is dropped (an append in
    // progress).
    rechain(&[0, 1, 2]);
    assert_eq!(manifest::read_entries(wh.path()).unwrap().len(), 3);
    rechain(&[2, 0]);
    assert_eq!(manifest::read_entries(wh.path()).unwrap().len(), 1);
}

/// A manifest that records a partition up to the last offset Kafka can have names no next
/// offset: an error, not an overflow (a panic in a debug build, a seek to a negative offset in
/// release).
#[test]
fn a_partition_recorded_up_to_i64_max_has_no_next_offset() {
    let wh = tempfile::tempdir().unwrap();
    let mut m = Manifest::open(wh.path()).unwrap();
    let a = stage(&m, "a.parquet", 0, 4);
    m.commit(&[a], &covers(0, i64::MAX), None, 1).unwrap();
    let e = m.next_offset("gw", 0).unwrap_err().to_string();
    assert!(
        e.contains("gw/0 is recorded up to offset 9223372036854775807: no offset can follow"),
        "{e}"
    );
}

#[test]
fn writers_opening_together_never_remove_each_others_staging() {
    // A writer removes the staging directories of writers that are not running (not locked).
    // A writer that is just starting must never be taken for one: many writers open at once,
    // and each must still have its staging directory afterwards.
    let dir = tempfile::tempdir().unwrap();
    let wh = Arc::new(dir.path().to_path_buf());
    for _ in 0..10 {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let wh = wh.clone();
                std::thread::spawn(move || {
                    let m = Manifest::open(&wh).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    assert!(
                        m.staging_dir().is_dir(),
                        "{} was removed",
                        m.staging_dir().display()
                    );
                    m
                })
            })
            .collect();
        let writers: Vec<Manifest> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for m in &writers {
            assert!(m.staging_dir().join(".lock").is_file());
        }
    }
}
