//! The catalog: one DataFusion session over the warehouse and the auditor's policy folder, used by
//! every reader of the data (rules, report, SQL shell).
//!
//! - Warehouse tables `gateway_events`, `flows`, `quarantine` are the warehouse's Delta tables
//!   (read at their latest version at every scan, see [`crate::tables`]), with
//!   partition columns `date` (`YYYY-MM-DD`) and `hour` (`HH`), both strings, so
//!   `WHERE date = '2026-11-21'` reads only that day's files; `alerts` is the rule runner's Delta
//!   table beside them ([`crate::alerts_table`]), with `date` only (the day of the finding).
//! - Policy tables: `countries`, `transfer_bases`, `employees`, `approvals`, `suppressions` (CSV),
//!   and `networks`, `gateways`, `exporters` (from `networks.toml`); `policy_files` lists each
//!   policy file with its SHA-256, the version recorded with every run.
//! - Summaries ([`crate::summaries`]): `egress_daily` (per day, each destination country and ASN
//!   the enclave sent data to), derived from `flows`; `allowed_events_hourly` (per hour, the
//!   allowed events with a destination by employee, country and action), from `gateway_events`;
//!   `exporter_clocks_daily` and `gateway_clocks_daily` (per day, each source's newest record),
//!   which the watermarks read.
//! - Functions: `in_cidr(ip, cidr)`, `country_of(ip)`, `basis_for(country, ts)`; DataFusion's
//!   `date_trunc` with a fast path for UTC timestamps, and `CAST(ts AS DATE)` and
//!   `ts ± INTERVAL` through fast paths in the embedded engine ([`crate::functions`]).
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
use datafusion::prelude::SessionContext;
use flowaudit_ingest::geoip::GeoIp;
use flowaudit_ingest::networks::{Cidr, Networks};
use flowaudit_ingest::warehouse::Location;

use crate::cluster::Engine;
use crate::site::Site;
use sha2::{Digest, Sha256};

/// Errors opening the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy file {path}: {msg}")]
    Policy { path: PathBuf, msg: String },
    #[error(transparent)]
    Ingest(#[from] flowaudit_ingest::Error),
    #[error("datafusion: {0}")]
    DataFusion(#[from] DataFusionError),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("DataFusion settings from the environment ({vars}): {source}")]
    Settings {
        vars: String,
        source: DataFusionError,
    },
}

/// A legal basis for transfers to a country, valid over a period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferBasis {
    pub country: String,
    pub basis: String,
    pub scope: String,
    pub valid_from: NaiveDate,
    pub valid_to: Option<NaiveDate>,
}

/// The opened catalog: the session, and the versions of the policy files it read.
pub struct Catalog {
    pub ctx: SessionContext,
    /// Policy file name → SHA-256 of its contents.
    pub policy_versions: BTreeMap<String, String>,
    pub transfer_bases: Arc<Vec<TransferBasis>>,
    /// The GeoIP database behind `country_of`: kind, path and SHA-256.
    pub geoip: Option<BTreeMap<String, String>>,
}

/// The CSV policy tables and their schemas.
fn policy_csv_tables() -> Vec<(&'static str, SchemaRef)> {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    let o = |n: &str| Field::new(n, DataType::Utf8, true);
    let d = |n: &str, null: bool| Field::new(n, DataType::Date32, null);
    vec![
        (
            "countries",
            Arc::new(Schema::new(vec![
                s("code"),
                s("name"),
                Field::new("eea", DataType::Boolean, false),
            ])),
        ),
        (
            "transfer_bases",
            Arc::new(Schema::new(vec![
                s("country"),
                s("basis"),
                s("scope"),
                d("valid_from", false),
                d("valid_to", true),
                o("reference"),
            ])),
        ),
        (
            "employees",
            Arc::new(Schema::new(vec![
                s("employee_id"),
                s("name"),
                s("role"),
                s("home_country"),
                s("allowed_locations"),
                s("allowed_categories"),
                d("valid_from", false),
                d("valid_to", true),
            ])),
        ),
        (
            "approvals",
            Arc::new(Schema::new(vec![
                s("ticket"),
                s("employee_id"),
                s("data_categories"),
                s("destination_country"),
                d("valid_from", false),
                d("valid_to", false),
                s("approver"),
            ])),
        ),
        (
            "suppressions",
            Arc::new(Schema::new(vec![
                s("rule_id"),
                s("entity"),
                s("reason"),
                s("who"),
                d("expires", false),
            ])),
        ),
    ]
}

/// The policy CSV file at `path` (its contents `bytes`) as a table of `schema`.
fn csv_table(path: &Path, schema: SchemaRef, bytes: &[u8]) -> Result<MemTable, CatalogError> {
    let perr = |e: arrow::error::ArrowError| CatalogError::Policy {
        path: path.into(),
        msg: e.to_string(),
    };
    let reader = arrow::csv::ReaderBuilder::new(schema.clone())
        .with_header(true)
        .build(std::io::Cursor::new(bytes))
        .map_err(perr)?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(perr)?;
    Ok(MemTable::try_new(schema, vec![batches])?)
}

fn read_policy(path: &Path) -> Result<Vec<u8>, CatalogError> {
    std::fs::read(path).map_err(|source| CatalogError::Io {
        what: "read",
        path: path.into(),
        source,
    })
}

/// The settings of the embedded engine's session: DataFusion's defaults, then its own
/// `DATAFUSION_*` environment variables (an operator's override, e.g.
/// `DATAFUSION_EXECUTION_BATCH_SIZE`; docs/operations.md), with two differences when those do
/// not say otherwise:
/// - `information_schema` on: SHOW TABLES, SHOW COLUMNS and DESCRIBE for analysts (docs/sql.md);
/// - twice as many partitions as cores. The window rules hash a day of flows by exporter into
///   `target_partitions` streams, and a handful of exporters hashed into as many streams as cores
///   leaves one core with most of them; with twice as many the cores share the work more evenly
///   (measured: docs/benchmarks.md, "DataFusion settings").
pub fn session_config() -> Result<datafusion::prelude::SessionConfig, CatalogError> {
    let mut config = datafusion::prelude::SessionConfig::from_env().map_err(|source| {
        let vars: Vec<String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("DATAFUSION_"))
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        CatalogError::Settings {
            vars: vars.join(", "),
            source,
        }
    })?;
    if std::env::var_os("DATAFUSION_EXECUTION_TARGET_PARTITIONS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        config = config.with_target_partitions(2 * cores);
    }
    Ok(config.with_information_schema(true))
}

impl Catalog {
    /// Open the catalog over the local `warehouse` and `policy`; `geoip` backs `country_of`.
    pub async fn open(
        warehouse: &Path,
        policy: &Path,
        geoip: Option<&Path>,
    ) -> Result<Self, CatalogError> {
        Self::open_at(&Site::local(warehouse), policy, geoip).await
    }

    /// Open the catalog over `site`: its Delta tables (a local directory or `s3://`), `alerts`
    /// among them.
    pub async fn open_at(
        site: &Site,
        policy: &Path,
        geoip: Option<&Path>,
    ) -> Result<Self, CatalogError> {
        Self::open_with(site, policy, geoip, Strings::Utf8).await
    }

    /// [`Catalog::open_at`] with the warehouse's strings as `strings` says; on a cluster they
    /// stay `Utf8`, the type its members read.
    pub async fn open_with(
        site: &Site,
        policy: &Path,
        geoip: Option<&Path>,
        strings: Strings,
    ) -> Result<Self, CatalogError> {
        let strings = if matches!(site.engine, Engine::Embedded) {
            strings
        } else {
            Strings::Utf8
        };
        let ctx = crate::optimizer::session(session_config()?);
        register_warehouse(&ctx, site, strings).await?;
        let mut policy_versions = BTreeMap::new();
        let mut transfer_bases = Vec::new();
        for (name, schema) in policy_csv_tables() {
            // Read once, at open: the table holds exactly the bytes whose hash the run records
            // (and a cluster's plan carries them, crate::cluster).
            let path = policy.join(format!("{name}.csv"));
            let bytes = read_policy(&path)?;
            policy_versions.insert(format!("{name}.csv"), hex::encode(Sha256::digest(&bytes)));
            let table = csv_table(&path, schema, &bytes)?;
            ctx.register_table(name, Arc::new(table))?;
            if name == "transfer_bases" {
                transfer_bases = parse_transfer_bases(&path, &String::from_utf8_lossy(&bytes))?;
            }
        }
        // Each policy file is read once: what its hash names is what the tables and functions use.
        let networks_path = policy.join("networks.toml");
        let text = read_policy(&networks_path)?;
        policy_versions.insert("networks.toml".into(), hex::encode(Sha256::digest(&text)));
        let networks = Networks::parse(&networks_path, &String::from_utf8_lossy(&text))?;
        register_networks(&ctx, &networks)?;
        let files: Vec<(&String, &String)> = policy_versions.iter().collect();
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("file", DataType::Utf8, false),
                Field::new("sha256", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(StringArray::from_iter_values(
                    files.iter().map(|f| f.0.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    files.iter().map(|f| f.1.as_str()),
                )),
            ],
        )
        .map_err(DataFusionError::from)?;
        ctx.register_table(
            "policy_files",
            Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?),
        )?;

        let transfer_bases = Arc::new(transfer_bases);
        let geoip = geoip.map(GeoIp::open).transpose()?.map(Arc::new);
        let geoip_identity = geoip.as_ref().map(|g| {
            let id = g.identity();
            BTreeMap::from([
                ("kind".to_string(), id.kind.to_string()),
                ("path".to_string(), id.path.display().to_string()),
                ("sha256".to_string(), id.sha256.clone()),
            ])
        });
        register_udfs(&ctx, Arc::new(networks), geoip, transfer_bases.clone());
        crate::functions::register(&ctx);
        let mut catalog = Self {
            ctx,
            policy_versions,
            transfer_bases,
            geoip: geoip_identity,
        };
        if let Engine::Embedded = &site.engine {
            crate::functions::register_rewrites(&catalog.ctx);
        }
        if let Engine::Ballista { scheduler } = &site.engine {
            crate::cluster::require_executors(scheduler, crate::cluster::EXECUTOR_WAIT)
                .await
                .map_err(|e| CatalogError::Cluster(format!("{}: {e}", site.engine)))?;
            let member = Arc::new(crate::cluster::Member::of(&catalog, &site.tables)?);
            let ctx = std::mem::take(&mut catalog.ctx);
            catalog.ctx = crate::cluster::connect(ctx, scheduler, member)
                .map_err(|e| CatalogError::Cluster(format!("{}: {e}", site.engine)))?;
        }
        Ok(catalog)
    }
}

/// The columns of `ingest_gaps`.
pub fn ingest_gaps_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("first_offset", DataType::Int64, false),
        Field::new("last_offset", DataType::Int64, false),
        Field::new("missing_offsets", DataType::Int64, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("writer", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new(
            "recorded_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]))
}

/// Every range ingest recorded as missing (offsets no longer in Kafka when it read the
/// partition), from the tables' Delta logs as the catalog opened.
async fn ingest_gaps(location: &Location) -> Result<MemTable, CatalogError> {
    let gaps = match location.local() {
        Some(d) if !d.is_dir() => Vec::new(),
        _ => flowaudit_ingest::warehouse::read_log(location)
            .await?
            .gaps(),
    };
    let recorded: Vec<Option<i64>> = gaps
        .iter()
        .map(|g| {
            chrono::DateTime::parse_from_rfc3339(&g.recorded_at)
                .ok()
                .map(|d| d.timestamp_micros())
        })
        .collect();
    let batch = RecordBatch::try_new(
        ingest_gaps_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                gaps.iter().map(|g| g.topic.as_str()),
            )),
            Arc::new(Int32Array::from_iter_values(
                gaps.iter().map(|g| g.partition),
            )),
            Arc::new(Int64Array::from_iter_values(
                gaps.iter().map(|g| g.first_offset),
            )),
            Arc::new(Int64Array::from_iter_values(
                gaps.iter().map(|g| g.last_offset),
            )),
            Arc::new(Int64Array::from_iter_values(gaps.iter().map(|g| {
                g.last_offset
                    .saturating_sub(g.first_offset)
                    .saturating_add(1)
            }))),
            Arc::new(StringArray::from_iter_values(
                gaps.iter().map(|g| g.reason.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                gaps.iter().map(|g| g.writer.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                gaps.iter().map(|g| g.table.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(gaps.iter().map(|g| g.version))),
            Arc::new(TimestampMicrosecondArray::from(recorded).with_timezone("UTC")),
        ],
    )
    .map_err(DataFusionError::from)?;
    Ok(MemTable::try_new(ingest_gaps_schema(), vec![vec![batch]])?)
}

/// The types the warehouse tables' string columns have in a catalog's SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strings {
    /// `Utf8`, as the rules, the report and the summaries were written against.
    Utf8,
    /// `Utf8View` (not the partition columns), for the analysts' sessions: faster to read from
    /// Parquet and to compare (crate::tables::DeltaWarehouseTable::with_view_strings). The
    /// summaries still read the tables as `Utf8`.
    View,
}

async fn register_warehouse(
    ctx: &SessionContext,
    site: &Site,
    strings: Strings,
) -> Result<(), CatalogError> {
    let location = &site.tables;
    // The ingest tables and `alerts` (the rule runner's, crate::alerts_table).
    let mut opened = BTreeMap::new();
    for spec in crate::tables::specs() {
        let (name, schema) = (spec.name, spec.schema.clone());
        match crate::tables::DeltaWarehouseTable::open_spec(location, spec).await? {
            Some(table) => {
                let table = Arc::new(table);
                match strings {
                    Strings::Utf8 => ctx.register_table(name, table.clone())?,
                    Strings::View => {
                        ctx.register_table(name, Arc::new(table.with_view_strings()))?
                    }
                };
                opened.insert(name, table);
            }
            // Nothing written yet: an empty table with the same columns.
            None => {
                ctx.register_table(name, Arc::new(MemTable::try_new(schema, vec![vec![]])?))?;
            }
        }
    }
    ctx.register_table("ingest_gaps", Arc::new(ingest_gaps(location).await?))?;
    // Summaries: served from their per-day cache where this process plans the scans of a Delta
    // table; a view of the same SQL on a cluster, or over a table not written yet.
    for summary in crate::summaries::SUMMARIES {
        match opened.get(summary.source) {
            Some(source) if matches!(site.engine, Engine::Embedded) => {
                let table =
                    crate::summaries::SummaryTable::new(ctx, *summary, source.clone()).await?;
                ctx.register_table(summary.name, Arc::new(table))?
            }
            _ => ctx.register_table(
                summary.name,
                Arc::new(crate::summaries::view(ctx, summary).await?),
            )?,
        };
    }
    Ok(())
}

fn register_networks(ctx: &SessionContext, n: &Networks) -> Result<(), CatalogError> {
    let utf8 = |v: Vec<String>| -> ArrayRef { Arc::new(StringArray::from(v)) };
    let mut zone = Vec::new();
    let mut cidr = Vec::new();
    let mut country = Vec::new();
    let mut desc = Vec::new();
    for (z, list) in [("enclave", &n.enclave), ("internal", &n.internal)] {
        for net in list {
            zone.push(z.to_string());
            cidr.push(net.cidr.to_string());
            country.push(net.country.clone());
            desc.push(net.description.clone());
        }
    }
    let networks = RecordBatch::try_from_iter(vec![
        ("zone", utf8(zone)),
        ("cidr", utf8(cidr)),
        ("country", utf8(country)),
        ("description", utf8(desc)),
    ])
    .map_err(DataFusionError::from)?;
    let (mut gid, mut gip, mut gc, mut gi) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for g in &n.gateways {
        for ip in &g.ips {
            gid.push(g.id.clone());
            gip.push(ip.to_string());
            gc.push(g.country.clone());
            gi.push(g.expected_interval_s as i64);
        }
    }
    let gateways = RecordBatch::try_from_iter(vec![
        ("gateway_id", utf8(gid)),
        ("ip", utf8(gip)),
        ("country", utf8(gc)),
        (
            "expected_interval_s",
            Arc::new(Int64Array::from(gi)) as ArrayRef,
        ),
    ])
    .map_err(DataFusionError::from)?;
    let exporters = RecordBatch::try_from_iter(vec![
        (
            "exporter",
            utf8(n.exporters.iter().map(|e| e.id.clone()).collect()),
        ),
        (
            "format",
            utf8(n.exporters.iter().map(|e| e.format.clone()).collect()),
        ),
        (
            "expected_interval_s",
            Arc::new(Int64Array::from_iter_values(
                n.exporters.iter().map(|e| e.expected_interval_s as i64),
            )) as ArrayRef,
        ),
        (
            "sequenced",
            Arc::new(BooleanArray::from(
                n.exporters.iter().map(|e| e.sequenced).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
    ])
    .map_err(DataFusionError::from)?;
    for (name, batch) in [
        ("networks", networks),
        ("gateways", gateways),
        ("exporters", exporters),
    ] {
        ctx.register_table(
            name,
            Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?),
        )?;
    }
    Ok(())
}

/// Read `transfer_bases.csv` for `basis_for` (the catalog parses the bytes it hashed).
#[cfg(test)]
fn load_transfer_bases(path: &Path) -> Result<Vec<TransferBasis>, CatalogError> {
    parse_transfer_bases(path, &String::from_utf8_lossy(&read_policy(path)?))
}

/// The legal bases of `text`, the contents of the `transfer_bases.csv` at `path` (the same rows
/// the `transfer_bases` table shows), for `basis_for`.
fn parse_transfer_bases(path: &Path, text: &str) -> Result<Vec<TransferBasis>, CatalogError> {
    let perr = |line: usize, msg: String| CatalogError::Policy {
        path: path.into(),
        msg: format!("line {line}: {msg}"),
    };
    let date = |line: usize, s: &str| {
        s.parse::<NaiveDate>()
            .map_err(|_| perr(line, format!("\"{s}\" is not a date (YYYY-MM-DD)")))
    };
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate().skip(1) {
        if l.trim().is_empty() {
            continue;
        }
        let c: Vec<&str> = l.splitn(6, ',').collect();
        if c.len() < 5 {
            return Err(perr(
                i + 1,
                "expected country,basis,scope,valid_from,valid_to,reference".into(),
            ));
        }
        out.push(TransferBasis {
            country: c[0].to_string(),
            basis: c[1].to_string(),
            scope: c[2].to_string(),
            valid_from: date(i + 1, c[3])?,
            valid_to: if c[4].is_empty() {
                None
            } else {
                Some(date(i + 1, c[4])?)
            },
        });
    }
    Ok(out)
}

/// The legal basis for sending data to `country` on `day`, if any (the first match in file order).
pub fn basis_for<'a>(
    bases: &'a [TransferBasis],
    country: &str,
    day: NaiveDate,
) -> Option<&'a TransferBasis> {
    bases.iter().find(|b| {
        b.country == country && b.valid_from <= day && b.valid_to.is_none_or(|t| day <= t)
    })
}

fn register_udfs(
    ctx: &SessionContext,
    networks: Arc<Networks>,
    geoip: Option<Arc<GeoIp>>,
    bases: Arc<Vec<TransferBasis>>,
) {
    // in_cidr(ip, cidr) -> boolean; null when either is null or unparseable.
    let in_cidr = Arc::new(
        |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let ips = string_array(&arrays[0], "in_cidr")?;
            let cidrs = string_array(&arrays[1], "in_cidr")?;
            let mut last: Option<(String, Option<Cidr>)> = None;
            let out: BooleanArray = (0..ips.len())
                .map(|i| {
                    if ips.is_null(i) || cidrs.is_null(i) {
                        return None;
                    }
                    let c = cidrs.value(i);
                    if last.as_ref().is_none_or(|(s, _)| s != c) {
                        last = Some((c.to_string(), c.parse::<Cidr>().ok()));
                    }
                    let cidr = last.as_ref().and_then(|(_, p)| *p)?;
                    let ip: IpAddr = ips.value(i).parse().ok()?;
                    Some(cidr.contains(ip))
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        },
    );
    ctx.register_udf(create_udf(
        "in_cidr",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Boolean,
        Volatility::Immutable,
        in_cidr,
    ));

    // country_of(ip) -> string: the site country of enclave/internal addresses, else GeoIP.
    let country_of = Arc::new(
        move |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let ips = string_array(&arrays[0], "country_of")?;
            let out: StringArray = (0..ips.len())
                .map(|i| {
                    let ip: IpAddr = ips.value(i).parse().ok().filter(|_| !ips.is_null(i))?;
                    match networks.classify(ip) {
                        (_, Some(site)) => Some(site.to_string()),
                        _ => geoip
                            .as_ref()
                            .and_then(|g| g.lookup(ip).country_str().map(str::to_string)),
                    }
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        },
    );
    ctx.register_udf(create_udf(
        "country_of",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        country_of,
    ));

    // basis_for(country, ts) -> string: eea / adequacy / scc / bcr / derogation, or null.
    let basis = Arc::new(
        move |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let countries = string_array(&arrays[0], "basis_for")?;
            let ts = arrays[1]
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .ok_or_else(|| {
                    DataFusionError::Execution(
                        "basis_for: the second argument must be a timestamp".into(),
                    )
                })?;
            let out: StringArray = (0..countries.len())
                .map(|i| {
                    if countries.is_null(i) || ts.is_null(i) {
                        return None;
                    }
                    let day = chrono::DateTime::from_timestamp_micros(ts.value(i))?.date_naive();
                    basis_for(&bases, countries.value(i), day).map(|b| b.basis.clone())
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        },
    );
    ctx.register_udf(create_udf(
        "basis_for",
        vec![
            DataType::Utf8,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ],
        DataType::Utf8,
        Volatility::Immutable,
        basis,
    ));
}

fn string_array<'a>(a: &'a ArrayRef, f: &str) -> datafusion::error::Result<&'a StringArray> {
    a.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
        DataFusionError::Execution(format!(
            "{f}: expected a string argument, found {}",
            a.data_type()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    fn repo(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(rel)
    }

    async fn query(c: &Catalog, sql: &str) -> Vec<RecordBatch> {
        c.ctx
            .sql(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .collect()
            .await
            .unwrap()
    }

    #[test]
    fn the_session_runs_twice_as_many_partitions_as_cores_and_answers_show_tables() {
        let c = session_config().unwrap();
        if std::env::var_os("DATAFUSION_EXECUTION_TARGET_PARTITIONS").is_none() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            assert_eq!(c.target_partitions(), 2 * cores);
        }
        assert!(c.information_schema());
    }

    #[tokio::test]
    async fn policy_tables_functions_and_an_empty_warehouse() {
        let wh = tempfile::tempdir().unwrap();
        let c = Catalog::open(
            wh.path(),
            &repo("fixtures/policy"),
            Some(&repo("fixtures/geoip/ranges.csv")),
        )
        .await
        .unwrap();
        let b = query(
            &c,
            "SELECT count(*) AS n, sum(CASE WHEN eea THEN 1 ELSE 0 END) AS eea FROM countries",
        )
        .await;
        assert_eq!(
            b[0].column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            50
        );
        assert_eq!(
            b[0].column(1)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            30,
            "EU27 + IS, LI, NO"
        );
        let b = query(
            &c,
            "SELECT in_cidr('10.20.3.4', cidr) AS inside, country_of('45.36.1.2') AS ru, country_of('10.20.0.10') AS site, \
             basis_for('US', TIMESTAMP '2026-11-21T10:00:00Z') AS us, basis_for('US', TIMESTAMP '2018-01-01T00:00:00Z') AS us2018, \
             basis_for('RU', TIMESTAMP '2026-11-21T10:00:00Z') AS ru_basis FROM networks WHERE zone = 'enclave' AND cidr LIKE '10.%'",
        )
        .await;
        let r = &b[0];
        assert!(r.column(0).as_boolean().value(0));
        assert_eq!(r.column(1).as_string::<i32>().value(0), "RU");
        assert_eq!(r.column(2).as_string::<i32>().value(0), "DE");
        assert_eq!(r.column(3).as_string::<i32>().value(0), "adequacy");
        assert_eq!(
            r.column(4).as_string::<i32>().value(0),
            "adequacy",
            "Privacy Shield, 2016-2020"
        );
        assert!(r.column(5).is_null(0), "no basis for Russia");
        let b = query(
            &c,
            "SELECT (SELECT count(*) FROM flows WHERE date = '2026-11-21') + (SELECT count(*) FROM alerts)",
        )
        .await;
        assert_eq!(
            b[0].column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            0
        );
        assert_eq!(c.policy_versions.len(), 6);
        assert!(c.policy_versions.values().all(|h| h.len() == 64));
    }

    #[tokio::test]
    async fn every_rule_file_parses_and_plans_against_the_catalog() {
        let wh = tempfile::tempdir().unwrap();
        let c = Catalog::open(wh.path(), &repo("fixtures/policy"), None)
            .await
            .unwrap();
        let rules = crate::rules::load_rules(&repo("queries")).unwrap();
        assert!(!rules.is_empty());
        let (from, to) = (
            "2026-11-21T00:00:00Z".parse().unwrap(),
            "2026-11-22T00:00:00Z".parse().unwrap(),
        );
        for r in rules {
            let sql = crate::rules::render(&r, from, to);
            let df = c
                .ctx
                .sql(&sql)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", r.path.display()));
            let cols: Vec<String> = df
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            for e in &r.entity {
                assert!(
                    cols.contains(e),
                    "{}: entity column {e} is not in the result {cols:?}",
                    r.id
                );
            }
            df.collect().await.unwrap();
        }
    }

    #[test]
    fn basis_follows_validity_periods() {
        let bases = load_transfer_bases(&repo("fixtures/policy/transfer_bases.csv")).unwrap();
        let d = |s: &str| s.parse::<NaiveDate>().unwrap();
        assert_eq!(
            basis_for(&bases, "US", d("2015-01-01")).unwrap().scope,
            "organisations certified under Safe Harbor"
        );
        assert!(
            basis_for(&bases, "US", d("2021-01-01")).is_none(),
            "between Privacy Shield and the DPF"
        );
        assert_eq!(
            basis_for(&bases, "DE", d("2026-11-21")).unwrap().basis,
            "eea"
        );
        assert!(basis_for(&bases, "CN", d("2026-11-21")).is_none());
    }
}
