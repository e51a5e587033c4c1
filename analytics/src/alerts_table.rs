//! The `alerts` table: a Delta table at `<warehouse>/alerts/`, beside the ingest tables (local or
//! `s3://`), partitioned by `date` (the day of the finding), so analysts' SQL, Flight SQL and any
//! Delta reader see the alerts the rule runner raised, on any machine.
//!
//! It is written from an alert store's outbox (`_alerts/alerts.jsonl` in the state directory),
//! the way ingest writes Kafka ranges: each commit adds one Parquet file per day for the outbox
//! lines `first..=last` and, in the same Delta transaction, sets the application transaction
//! (`txn`) `flowaudit-alerts:<store id>` to `last`. [`sync`] reads that `txn` and writes what
//! follows it, so a crash anywhere (after the outbox append, after an upload, after the commit)
//! leaves at most files no commit lists, and the next run's sync writes each alert exactly once.
//! A second store (another state directory) has its own app id and appends its own rows.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake::kernel::{Action, Add, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, ObjectStore};
use flowaudit_ingest::warehouse::{register_s3, Location};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt as _;
use tracing::info;

use crate::alerts::{table_batch, Alert, AlertError, AlertStore};

/// The table's directory under the warehouse.
pub const TABLE: &str = "alerts";
/// The key of the commit info that says which outbox lines a commit holds.
pub const COMMIT_INFO_KEY: &str = "flowaudit_alerts";

/// The application transaction of the store `store_id`: its version is the last outbox line
/// (sequence number) the table holds.
pub fn app_id(store_id: &str) -> String {
    format!("flowaudit-alerts:{store_id}")
}

fn terr(what: impl std::fmt::Display, e: impl std::fmt::Display) -> AlertError {
    AlertError::Table(format!("{what}: {e}"))
}

/// The Delta schema: the columns of [`crate::alerts::table_schema`], then `date`.
pub fn delta_schema() -> Result<StructType, AlertError> {
    flowaudit_ingest::warehouse::delta_columns(TABLE, &crate::alerts::table_schema(), &["date"])
        .map_err(|e| terr("the alerts table's schema", e))
}

/// What a [`sync`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// Alerts written by this sync (0 when the table already held the whole outbox).
    pub written: u64,
    /// The table version that holds them (`None` when nothing was written).
    pub version: Option<i64>,
}

/// Write the alerts of `store` that the `alerts` table of the warehouse at `location` does not
/// hold yet (creating the table the first time). The caller holds the store (and its lock).
pub async fn sync(location: &Location, store: &AlertStore) -> Result<Synced, AlertError> {
    let app = app_id(store.id());
    let (objects, prefix) = location.store().map_err(|e| terr("the warehouse", e))?;
    let mut dt = open_or_create(location, &objects).await?;
    let held = recorded(&dt, &app).await?;
    let len = store.len();
    if held > len {
        return Err(AlertError::Table(format!(
            "the alerts table holds alerts 1..={held} of store {}, but its outbox ({}) holds {len}: \
             the outbox was cut or replaced",
            store.id(),
            store.dir().join("alerts.jsonl").display()
        )));
    }
    if held == len {
        return Ok(Synced {
            written: 0,
            version: None,
        });
    }
    let alerts = store.read_from(held + 1)?;
    let mut by_day: BTreeMap<&str, Vec<&Alert>> = BTreeMap::new();
    for a in &alerts {
        by_day.entry(a.day.as_str()).or_default().push(a);
    }
    let mut adds = Vec::with_capacity(by_day.len());
    for (day, list) in by_day {
        adds.push(Action::Add(
            upload_day(store, objects.as_ref(), &prefix, day, &list).await?,
        ));
    }
    let info = serde_json::json!({
        "store": store.id(),
        "first_seq": held + 1,
        "last_seq": len,
        "alerts": alerts.len(),
    });
    let props = CommitProperties::default()
        .with_application_transaction(Transaction::new_with_last_update(
            &app,
            len as i64,
            Some(chrono::Utc::now().timestamp_millis()),
        ))
        .with_metadata([(COMMIT_INFO_KEY.to_string(), info)])
        .with_cleanup_expired_logs(Some(false))
        .with_create_checkpoint(false);
    let op = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(vec!["date".into()]),
        predicate: None,
    };
    let snapshot = dt.snapshot().map_err(|e| terr("the alerts table", e))?;
    let done = CommitBuilder::from(props)
        .with_actions(adds)
        .build(Some(snapshot as &dyn TableReference), dt.log_store(), op)
        .await;
    let version = match done {
        Ok(d) => d.version() as i64,
        Err(e) => {
            // Stored with its answer lost, or refused: the table's txn says which.
            dt.update_incremental(None)
                .await
                .map_err(|e| terr("reading the alerts table", e))?;
            if recorded(&dt, &app).await? >= len {
                dt.version().map(|v| v as i64).unwrap_or(-1)
            } else {
                return Err(terr("committing to the alerts table", e));
            }
        }
    };
    info!(
        alerts = alerts.len(),
        version,
        store = store.id(),
        "alerts written to the alerts table"
    );
    Ok(Synced {
        written: alerts.len() as u64,
        version: Some(version),
    })
}

/// The last outbox line of `app` the table holds (0 for none).
async fn recorded(dt: &DeltaTable, app: &str) -> Result<u64, AlertError> {
    let snapshot = dt
        .snapshot()
        .map_err(|e| terr("reading the alerts table", e))?;
    let v = snapshot
        .transaction_version(dt.log_store().as_ref(), app)
        .await
        .map_err(|e| terr("reading the alerts table", e))?;
    Ok(v.map(|v| v.max(0) as u64).unwrap_or(0))
}

/// Write `list` (one day's alerts) as a Parquet file, upload it to its unique path in the table,
/// and return its `add` action (SHA-256 and sequence range in its tags).
async fn upload_day(
    store: &AlertStore,
    objects: &dyn ObjectStore,
    prefix: &ObjectPath,
    day: &str,
    list: &[&Alert],
) -> Result<Add, AlertError> {
    let first = list.first().expect("a day has alerts").seq;
    let last = list.last().expect("a day has alerts").seq;
    let batch = table_batch(list)?;
    let tmp = store
        .dir()
        .join(format!(".alerts-{}-{first}-{last}.parquet.tmp", store.id()));
    let (sha256, size) = flowaudit_ingest::writer::write_parquet(
        &tmp,
        &batch,
        &Default::default(),
        vec![("flowaudit.table".into(), TABLE.into())],
    )
    .map_err(|e| terr("writing an alerts file", e))?;
    let bytes = std::fs::read(&tmp).map_err(|e| terr(tmp.display(), e))?;
    let _ = std::fs::remove_file(&tmp);
    let name = format!("alerts-{}-{first:08}-{last:08}.parquet", store.id());
    let rel = format!("date={day}/{name}");
    let path = prefix
        .clone()
        .join(TABLE)
        .join(format!("date={day}"))
        .join(name);
    objects
        .put(&path, bytes.into())
        .await
        .map_err(|e| terr(format!("uploading {path}"), e))?;
    let tags: HashMap<String, Option<String>> = [
        ("sha256", sha256),
        ("rows", list.len().to_string()),
        ("first_seq", first.to_string()),
        ("last_seq", last.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("flowaudit.{k}"), Some(v)))
    .collect();
    Ok(Add {
        path: rel,
        partition_values: HashMap::from([("date".to_string(), Some(day.to_string()))]),
        size: size as i64,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change: true,
        stats: Some(serde_json::json!({ "numRecords": list.len() }).to_string()),
        tags: Some(tags),
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    })
}

/// Open the `alerts` table of the warehouse, creating it (empty, append-only, partitioned by
/// `date`) if it has no log yet.
async fn open_or_create(
    location: &Location,
    objects: &Arc<dyn ObjectStore>,
) -> Result<DeltaTable, AlertError> {
    register_s3();
    flowaudit_ingest::warehouse::open_or_create(
        location,
        objects,
        TABLE,
        delta_schema()?,
        &["date"],
    )
    .await
    .map_err(|e| terr("the alerts table", e))
}
