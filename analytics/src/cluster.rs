//! The cluster engine: the rule pack, the report and analysts' SQL on Apache DataFusion
//! Ballista when one machine is not enough (docs/scale.md).
//!
//! `flowaudit cluster scheduler` and `flowaudit cluster executor` embed Ballista's scheduler
//! and executor. A client (`rules run`, `serve`, `report`, `sql`, Flight SQL) started with
//! `--engine ballista://HOST:PORT` plans each query in its own catalog, exactly as the embedded
//! engine does, and sends the logical plan to the scheduler, which plans it physically and
//! hands its stages to the executors. The same rule files run on both, unchanged.
//!
//! What a plan carries, and what each member brings of its own:
//! - A warehouse table (a Delta table) travels by name and the URL of its directory. The
//!   scheduler opens it in its own warehouse (refusing a plan whose URL is not its own) and
//!   reads its latest version when it plans the scan; the executors read the files from the
//!   same object store.
//! - A table held in memory (the policy tables, `networks`, `gateways`, `exporters`,
//!   `ingest_gaps`, `policy_files`) travels with its rows, so every member reads exactly what
//!   the client's catalog read.
//! - `in_cidr`, `country_of` and `basis_for` travel by name with the client's **policy
//!   fingerprint**: the SHA-256 of its policy files and GeoIP database. Each member runs its
//!   own copy of the functions, loaded from its own `--policy` and `--geoip`, and refuses a plan
//!   whose fingerprint is not its own: a cluster with another policy or GeoIP database than the
//!   client fails the query, naming both, instead of answering from other data.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use ballista_core::extension::{
    ballista_aggregate_functions, ballista_scalar_functions, ballista_window_functions,
    SessionConfigExt, SessionStateExt,
};
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use flowaudit_ingest::warehouse::Location;
use sha2::{Digest, Sha256};

use crate::catalog::{Catalog, CatalogError};
use crate::site::Site;
use crate::tables::DeltaWarehouseTable;

/// The functions a plan names that only flowaudit's members have.
pub const FUNCTIONS: [&str; 3] = ["in_cidr", "country_of", "basis_for"];

/// Where queries run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Engine {
    /// In this process (the default).
    #[default]
    Embedded,
    /// On the Ballista cluster whose scheduler listens at this `http://HOST:PORT`.
    Ballista { scheduler: String },
}

impl Engine {
    /// `embedded`, or `ballista://HOST:PORT` (port 50050 when left out).
    pub fn parse(s: &str) -> Result<Self, ClusterError> {
        let s = s.trim();
        if s.is_empty() || s == "embedded" {
            return Ok(Engine::Embedded);
        }
        let bad = |why: &str| {
            ClusterError::Engine(format!(
                "engine \"{s}\": {why} (expected `embedded` or `ballista://HOST:PORT`)"
            ))
        };
        if !s.starts_with("ballista://") {
            return Err(bad("unknown engine"));
        }
        // A scheme with no default port: `:80` stays 80, and only a missing port is 50050.
        let url = url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no scheduler host"))?;
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(bad("only HOST:PORT may follow ballista://"));
        }
        Ok(Engine::Ballista {
            scheduler: format!("http://{host}:{}", url.port().unwrap_or(50050)),
        })
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Engine::Embedded => write!(f, "embedded"),
            Engine::Ballista { scheduler } => write!(
                f,
                "ballista://{}",
                scheduler.strip_prefix("http://").unwrap_or(scheduler)
            ),
        }
    }
}

/// Errors starting a cluster member or connecting to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Engine(String),
    #[error("{what} \"{addr}\": {msg}")]
    Address {
        what: &'static str,
        addr: String,
        msg: String,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("datafusion: {0}")]
    DataFusion(#[from] DataFusionError),
    #[error("ballista: {0}")]
    Ballista(String),
}

/// The policy fingerprint of `catalog`: the SHA-256 over its policy files' names and hashes and
/// its GeoIP database's hash, what every member of a cluster must share with the client.
pub fn fingerprint(catalog: &Catalog) -> String {
    let mut h = Sha256::new();
    for (file, sha) in &catalog.policy_versions {
        h.update(format!("{file}={sha}\n"));
    }
    let geoip = catalog
        .geoip
        .as_ref()
        .and_then(|g| g.get("sha256"))
        .map_or("none", String::as_str);
    h.update(format!("geoip={geoip}\n"));
    hex::encode(h.finalize())
}

/// What one process (client, scheduler or executor) brings to the plans it encodes and decodes.
#[derive(Debug)]
pub struct Member {
    /// What it is, in its errors: `client`, `scheduler HOST:PORT`, `executor HOST:PORT`.
    role: String,
    /// Its policy fingerprint.
    fingerprint: String,
    /// Its own `in_cidr`, `country_of`, `basis_for`.
    functions: HashMap<String, Arc<ScalarUDF>>,
    /// Its warehouse, where the Delta tables a plan names are opened.
    location: Location,
    /// The Delta tables opened so far, kept so each scan reads only the commits since the last.
    tables: Mutex<HashMap<String, Arc<DeltaWarehouseTable>>>,
}

impl Member {
    /// The member whose catalog is `catalog`, over the warehouse at `location`.
    pub fn of(catalog: &Catalog, location: &Location) -> Result<Self> {
        let state = catalog.ctx.state();
        let mut functions = HashMap::new();
        for name in FUNCTIONS {
            let f = state.scalar_functions().get(name).cloned().ok_or_else(|| {
                DataFusionError::Plan(format!("the catalog has no function {name}"))
            })?;
            functions.insert(name.to_string(), f);
        }
        Ok(Self {
            role: "client".into(),
            fingerprint: fingerprint(catalog),
            functions,
            location: location.clone(),
            tables: Mutex::new(HashMap::new()),
        })
    }

    /// Open the catalog (warehouse, policy, GeoIP) a scheduler or executor works from.
    pub async fn open(
        site: &Site,
        policy: &Path,
        geoip: Option<&Path>,
    ) -> Result<Self, ClusterError> {
        let embedded = Site {
            engine: Engine::Embedded,
            ..site.clone()
        };
        let catalog = Catalog::open_at(&embedded, policy, geoip).await?;
        Ok(Self::of(&catalog, &site.tables)?)
    }

    /// The same member, named `role` in its errors.
    pub fn with_role(self, role: String) -> Self {
        Self { role, ..self }
    }

    /// The fingerprint this member encodes and expects.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn encode_function(&self, f: &ScalarUDF, buf: &mut Vec<u8>) {
        if self.functions.contains_key(f.name()) {
            buf.extend_from_slice(FUNCTION_TAG);
            buf.extend_from_slice(self.fingerprint.as_bytes());
        }
    }

    fn decode_function(&self, name: &str, buf: &[u8]) -> Result<Option<Arc<ScalarUDF>>> {
        let Some(theirs) = buf.strip_prefix(FUNCTION_TAG) else {
            return Ok(None);
        };
        let theirs = String::from_utf8_lossy(theirs);
        if theirs != self.fingerprint {
            return Err(DataFusionError::Plan(format!(
                "{name}: the plan was made with policy fingerprint {theirs}, the {} has {}: start the client, the scheduler and every executor with the same --policy folder and --geoip database",
                self.role, self.fingerprint
            )));
        }
        let f = self.functions.get(name).ok_or_else(|| {
            DataFusionError::Plan(format!("{name} is not a function this member has"))
        })?;
        Ok(Some(f.clone()))
    }

    /// The Delta table `name` whose directory the client named `url`, opened in this member's
    /// warehouse.
    fn delta_table(&self, name: &str, url: &str) -> Result<Arc<DeltaWarehouseTable>> {
        let ours = self
            .location
            .table_url(name)
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        if ours.as_str() != url {
            return Err(DataFusionError::Plan(format!(
                "the plan reads the table {name} at {url}, the {}'s warehouse has it at {ours}: start the scheduler and executors with the client's --warehouse",
                self.role
            )));
        }
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tables.get(name) {
            return Ok(t.clone());
        }
        let spec = crate::tables::spec(name).ok_or_else(|| {
            DataFusionError::Plan(format!("{name} is not a table of the warehouse"))
        })?;
        let t = Arc::new(DeltaWarehouseTable::unread(&self.location, spec)?);
        tables.insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// The object stores an executor's tasks read the warehouse's tables from, under the URLs
    /// the scheduler's scans name: made once, their connections shared by every task.
    fn scan_stores(&self) -> Result<Vec<(ObjectStoreUrl, Arc<dyn object_store::ObjectStore>)>> {
        crate::tables::specs()
            .iter()
            .map(|spec| crate::tables::scan_store(&self.location, spec.name))
            .collect()
    }

    /// A scheduler's session: Ballista's functions; flowaudit's come only with a plan whose
    /// fingerprint is this member's (not by name, so a plan without one cannot reach them), and
    /// only the warehouse's tables and tables sent with their rows are read.
    fn session(&self, config: SessionConfig) -> Result<SessionState> {
        Ok(SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_runtime_env(Arc::new(RuntimeEnvBuilder::new().build()?))
            .with_optimizer_rules(ballista_core::optimizer::ballista_default_optimizer_rules())
            .with_analyzer_rule(Arc::new(OnlyFlowauditTables {
                role: self.role.clone(),
            }))
            .with_scalar_functions(ballista_scalar_functions())
            .with_aggregate_functions(ballista_aggregate_functions())
            .with_window_functions(ballista_window_functions())
            .build())
    }
}

/// The scheduler's guard: a plan may read only the warehouse's Delta tables and tables sent
/// with their rows, never a file path of the scheduler's or executors' machines (which a plan
/// naming a listing table would).
#[derive(Debug)]
struct OnlyFlowauditTables {
    role: String,
}

impl datafusion::optimizer::AnalyzerRule for OnlyFlowauditTables {
    fn analyze(
        &self,
        plan: LogicalPlan,
        _config: &datafusion::config::ConfigOptions,
    ) -> Result<LogicalPlan> {
        use datafusion::common::tree_node::TreeNodeRecursion;
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                let provider = datafusion::datasource::source_as_provider(&scan.source)?;
                let ours = provider
                    .as_ref()
                    .downcast_ref::<DeltaWarehouseTable>()
                    .is_some()
                    || provider.as_ref().downcast_ref::<MemTable>().is_some();
                if !ours {
                    return Err(DataFusionError::Plan(format!(
                        "table {}: the {} reads only the warehouse's tables and tables sent with the plan",
                        scan.table_name, self.role
                    )));
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(plan)
    }

    fn name(&self) -> &str {
        "flowaudit_only_flowaudit_tables"
    }
}

/// The tag before a policy fingerprint in an encoded function.
const FUNCTION_TAG: &[u8] = b"flowaudit-policy:";
/// The first byte of an encoded table: a Delta table by name, or a table's rows.
const DELTA_TABLE: u8 = b'D';
const MEMORY_TABLE: u8 = b'M';

/// The logical plans a client sends: Ballista's own nodes, and flowaudit's tables and functions.
#[derive(Debug)]
pub struct LogicalCodec {
    inner: BallistaLogicalExtensionCodec,
    member: Arc<Member>,
}

impl LogicalCodec {
    pub fn new(member: Arc<Member>) -> Self {
        Self {
            inner: BallistaLogicalExtensionCodec::default(),
            member,
        }
    }
}

fn plan_err(table: &TableReference, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Plan(format!("table {table}: {e}"))
}

/// The rows of `table`, as an Arrow IPC stream.
fn encode_rows(table: &TableReference, mem: &MemTable, buf: &mut Vec<u8>) -> Result<()> {
    let schema = mem.schema();
    let err = |e| plan_err(table, format_args!("its rows as Arrow IPC: {e}"));
    let mut w = StreamWriter::try_new(&mut *buf, &schema).map_err(err)?;
    for part in &mem.batches {
        let batches = part
            .try_read()
            .map_err(|_| plan_err(table, "its rows are being written"))?;
        for b in batches.iter() {
            w.write(b).map_err(err)?;
        }
    }
    w.finish().map_err(err)?;
    Ok(())
}

fn decode_rows(
    table: &TableReference,
    schema: arrow::datatypes::SchemaRef,
    buf: &[u8],
) -> Result<MemTable> {
    let reader = StreamReader::try_new(std::io::Cursor::new(buf), None)
        .map_err(|e| plan_err(table, format_args!("its rows as Arrow IPC: {e}")))?;
    let batches = reader
        .map(|b| {
            b.and_then(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()))
                .map_err(|e| plan_err(table, e))
        })
        .collect::<Result<Vec<_>>>()?;
    MemTable::try_new(schema, vec![batches]).map_err(|e| plan_err(table, e))
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: arrow::datatypes::SchemaRef,
        _ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        match buf.split_first() {
            Some((&DELTA_TABLE, rest)) => {
                let url = std::str::from_utf8(rest).map_err(|e| plan_err(table_ref, e))?;
                let t = self.member.delta_table(table_ref.table(), url)?;
                if t.schema().fields() != schema.fields() {
                    return Err(plan_err(
                        table_ref,
                        "the client's columns are not this member's (another version of flowaudit?)",
                    ));
                }
                Ok(t)
            }
            Some((&MEMORY_TABLE, rest)) => Ok(Arc::new(decode_rows(table_ref, schema, rest)?)),
            _ => Err(plan_err(table_ref, "not a table flowaudit encoded")),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if let Some(t) = node.as_ref().downcast_ref::<DeltaWarehouseTable>() {
            buf.push(DELTA_TABLE);
            buf.extend_from_slice(t.url().as_bytes());
            return Ok(());
        }
        if let Some(m) = node.as_ref().downcast_ref::<MemTable>() {
            buf.push(MEMORY_TABLE);
            return encode_rows(table_ref, m, buf);
        }
        Err(plan_err(
            table_ref,
            "only the warehouse's tables and the policy's can be read on a cluster",
        ))
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        match self.member.decode_function(name, buf)? {
            Some(f) => Ok(f),
            None => self.inner.try_decode_udf(name, buf),
        }
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.member.encode_function(node, buf);
        Ok(())
    }
}

/// The physical plans the scheduler sends its executors: Ballista's shuffle nodes, and
/// flowaudit's functions (the scans are DataFusion's own Parquet and memory scans).
#[derive(Debug)]
pub struct PhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
    member: Arc<Member>,
}

impl PhysicalCodec {
    pub fn new(member: Arc<Member>) -> Self {
        Self {
            inner: BallistaPhysicalExtensionCodec::default(),
            member,
        }
    }
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        self.inner.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        match self.member.decode_function(name, buf)? {
            Some(f) => Ok(f),
            None => self.inner.try_decode_udf(name, buf),
        }
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.member.encode_function(node, buf);
        Ok(())
    }
}

/// `ctx` (a catalog's session) made a client of the cluster at `scheduler`: the same tables and
/// functions, its plans executed there.
pub fn connect(
    ctx: SessionContext,
    scheduler: &str,
    member: Arc<Member>,
) -> Result<SessionContext, ClusterError> {
    let mut state = ctx.state();
    // Ballista's upgrade rebuilds the state with this config: without this, the rebuilt state
    // makes a new, empty default catalog in place of the one holding the tables.
    *state.config_mut() = state
        .config()
        .clone()
        .with_create_default_catalog_and_schema(false)
        .with_ballista_logical_extension_codec(Arc::new(LogicalCodec::new(member.clone())))
        .with_ballista_physical_extension_codec(Arc::new(PhysicalCodec::new(member.clone())));
    let state = state.upgrade_for_ballista(scheduler.to_string())?;
    let ctx = SessionContext::new_with_state(state);
    // Ballista's upgrade sets the session's functions to its own list: flowaudit's come back.
    for f in member.functions.values() {
        ctx.register_udf(f.as_ref().clone());
    }
    Ok(ctx)
}

/// An executor's object stores: its warehouse's tables, under the URLs the scheduler's scans
/// name. A scan of any other store (a client and scheduler on another warehouse than this
/// executor's) is refused naming both, instead of DataFusion's "no suitable object store".
#[derive(Debug)]
struct WarehouseStores {
    inner: datafusion::execution::object_store::DefaultObjectStoreRegistry,
    role: String,
    location: String,
}

impl WarehouseStores {
    fn new(
        stores: Vec<(ObjectStoreUrl, Arc<dyn object_store::ObjectStore>)>,
        role: &str,
        location: &Location,
    ) -> Self {
        use datafusion::execution::object_store::ObjectStoreRegistry;
        let inner = datafusion::execution::object_store::DefaultObjectStoreRegistry::new();
        for (url, store) in stores {
            let u: &url::Url = url.as_ref();
            inner.register_store(u, store);
        }
        Self {
            inner,
            role: role.to_string(),
            location: location.to_string(),
        }
    }
}

impl datafusion::execution::object_store::ObjectStoreRegistry for WarehouseStores {
    fn register_store(
        &self,
        url: &url::Url,
        store: Arc<dyn object_store::ObjectStore>,
    ) -> Option<Arc<dyn object_store::ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn get_store(&self, url: &url::Url) -> Result<Arc<dyn object_store::ObjectStore>> {
        // Refused when read, not here: a plan that cannot even be prepared fails its job with
        // Ballista's "task could not be prepared", which the client would see without why.
        Ok(self.inner.get_store(url).unwrap_or_else(|_| {
            Arc::new(RefusingStore(format!(
                "{}: the plan reads {url}, which is not a table of this executor's warehouse \
                 ({}): start the executor with the --warehouse its scheduler and clients use",
                self.role, self.location
            )))
        }))
    }
}

/// A store that refuses every operation with its message (see [`WarehouseStores`]).
#[derive(Debug)]
struct RefusingStore(String);

impl std::fmt::Display for RefusingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RefusingStore")
    }
}

impl RefusingStore {
    fn refuse(&self) -> object_store::Error {
        object_store::Error::Generic {
            store: "flowaudit",
            source: self.0.clone().into(),
        }
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for RefusingStore {
    async fn put_opts(
        &self,
        _: &object_store::path::Path,
        _: object_store::PutPayload,
        _: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        Err(self.refuse())
    }

    async fn put_multipart_opts(
        &self,
        _: &object_store::path::Path,
        _: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        Err(self.refuse())
    }

    async fn get_opts(
        &self,
        _: &object_store::path::Path,
        _: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        Err(self.refuse())
    }

    fn delete_stream(
        &self,
        _: futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        Box::pin(futures::stream::once(futures::future::ready(Err(
            self.refuse()
        ))))
    }

    fn list(
        &self,
        _: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        Box::pin(futures::stream::once(futures::future::ready(Err(
            self.refuse()
        ))))
    }

    async fn list_with_delimiter(
        &self,
        _: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        Err(self.refuse())
    }

    async fn copy_opts(
        &self,
        _: &object_store::path::Path,
        _: &object_store::path::Path,
        _: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        Err(self.refuse())
    }
}

/// How long a client waits for the scheduler to have a live executor before it refuses to plan
/// there (executors register within a heartbeat of starting).
pub const EXECUTOR_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Wait until the scheduler at `scheduler` (`http://HOST:PORT`) has a live executor, at most
/// `wait`: Ballista queues a job for an executor that may never come, and its client waits with
/// it. The scheduler's own `/readyz` (same port, HTTP/1) answers 503 until one is alive.
pub async fn require_executors(
    scheduler: &str,
    wait: std::time::Duration,
) -> Result<(), ClusterError> {
    let url = format!("{}/readyz", scheduler.trim_end_matches('/'));
    tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(10))
            .build();
        let start = std::time::Instant::now();
        loop {
            let why = match agent.get(&url).call() {
                Ok(_) => return Ok(()),
                Err(ureq::Error::Status(503, r)) => format!(
                    "it has no live executor ({}); start `flowaudit cluster executor --scheduler HOST:PORT`",
                    r.into_string().unwrap_or_default().trim()
                ),
                Err(ureq::Error::Status(code, _)) => {
                    format!("its /readyz answered HTTP {code}")
                }
                Err(e) => format!("it does not answer: {e}"),
            };
            if start.elapsed() >= wait {
                return Err(ClusterError::Ballista(format!(
                    "the scheduler at {url} cannot run queries after {} s: {why}",
                    wait.as_secs()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    })
    .await
    .map_err(|e| ClusterError::Ballista(format!("the executor check: {e}")))?
}

/// `HOST:PORT` as a socket address.
fn socket(what: &'static str, addr: &str) -> Result<SocketAddr, ClusterError> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| ClusterError::Address {
            what,
            addr: addr.into(),
            msg: e.to_string(),
        })?
        .next()
        .ok_or_else(|| ClusterError::Address {
            what,
            addr: addr.into(),
            msg: "resolves to no address".into(),
        })
}

/// How a scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Where it listens (gRPC for clients and executors).
    pub bind: String,
    /// Seconds without a heartbeat after which an executor counts as lost and its tasks run
    /// elsewhere.
    pub executor_timeout_s: u64,
}

/// Run a scheduler for `member` until the process is stopped.
pub async fn run_scheduler(member: Member, opts: SchedulerOptions) -> Result<(), ClusterError> {
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;
    let addr = socket("--bind", &opts.bind)?;
    let member = Arc::new(member.with_role(format!("scheduler {addr}")));
    let logical: Arc<dyn LogicalExtensionCodec> = Arc::new(LogicalCodec::new(member.clone()));
    let physical: Arc<dyn PhysicalExtensionCodec> = Arc::new(PhysicalCodec::new(member.clone()));
    let (l, p) = (logical.clone(), physical.clone());
    let m = member.clone();
    let mut config = SchedulerConfig::default()
        .with_hostname(addr.ip().to_string())
        .with_port(addr.port())
        .with_override_config_producer(Arc::new(move || {
            SessionConfig::new_with_ballista()
                .with_ballista_logical_extension_codec(l.clone())
                .with_ballista_physical_extension_codec(p.clone())
        }))
        .with_override_session_builder(Arc::new(move |config| m.session(config)));
    config.bind_host = addr.ip().to_string();
    config.override_logical_codec = Some(logical);
    config.override_physical_codec = Some(physical);
    config.executor_timeout_seconds = opts.executor_timeout_s.max(2);
    config.no_executors_grace_period_seconds = opts.executor_timeout_s.max(2);
    config.expire_dead_executor_interval_seconds = (opts.executor_timeout_s / 3).clamp(1, 15);
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| ClusterError::Ballista(e.to_string()))?;
    tracing::info!(
        bind = %addr,
        policy = %member.fingerprint(),
        "cluster scheduler listening"
    );
    ballista_scheduler::scheduler_process::start_server(cluster, addr, Arc::new(config))
        .await
        .map_err(|e| ClusterError::Ballista(e.to_string()))
}

/// How an executor runs.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler's HOST:PORT.
    pub scheduler: String,
    /// Where its Flight service (shuffle data) listens; its gRPC service takes the next port.
    pub bind: String,
    /// Task slots (default: the cores).
    pub slots: usize,
    /// Directory for shuffle files (default: a temporary directory).
    pub work_dir: Option<String>,
    /// Seconds between heartbeats to the scheduler.
    pub heartbeat_s: u64,
}

/// Run an executor for `member` until the process is stopped.
pub async fn run_executor(member: Member, opts: ExecutorOptions) -> Result<(), ClusterError> {
    use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
    let bind = socket("--bind", &opts.bind)?;
    let sched = socket("--scheduler", &opts.scheduler)?;
    let member = Arc::new(member.with_role(format!("executor {bind}")));
    let work_dir = match &opts.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir()
            .join(format!("flowaudit-executor-{}", bind.port()))
            .to_string_lossy()
            .into_owned(),
    };
    std::fs::create_dir_all(&work_dir).map_err(|e| ClusterError::Address {
        what: "--work-dir",
        addr: work_dir.clone(),
        msg: e.to_string(),
    })?;
    // flowaudit's functions only through the codec, with the plan's fingerprint checked.
    let registry = BallistaFunctionRegistry::default();
    let stores = Arc::new(WarehouseStores::new(
        member.scan_stores()?,
        &member.role,
        &member.location,
    ));
    let wd = work_dir.clone();
    let runtime = move |_: &SessionConfig| -> Result<Arc<RuntimeEnv>> {
        let env = RuntimeEnvBuilder::new()
            .with_temp_file_path(&wd)
            .with_object_store_registry(stores.clone())
            .build()?;
        Ok(Arc::new(env))
    };
    let config = ExecutorProcessConfig {
        bind_host: bind.ip().to_string(),
        external_host: Some(bind.ip().to_string()),
        port: bind.port(),
        grpc_port: bind
            .port()
            .checked_add(1)
            .ok_or_else(|| ClusterError::Address {
                what: "--bind",
                addr: opts.bind.clone(),
                msg: "the gRPC service takes the next port".into(),
            })?,
        scheduler_host: sched.ip().to_string(),
        scheduler_port: sched.port(),
        scheduler_connect_timeout_seconds: 30,
        vcores: opts.slots,
        work_dir: Some(work_dir),
        print_thread_info: false,
        executor_heartbeat_interval_seconds: opts.heartbeat_s.max(1),
        override_function_registry: Some(Arc::new(registry)),
        override_runtime_producer: Some(Arc::new(runtime)),
        override_logical_codec: Some(Arc::new(LogicalCodec::new(member.clone()))),
        override_physical_codec: Some(Arc::new(PhysicalCodec::new(member.clone()))),
        ..Default::default()
    };
    tracing::info!(
        bind = %bind,
        scheduler = %sched,
        policy = %member.fingerprint(),
        "cluster executor starting"
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| ClusterError::Ballista(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_parse_and_print() {
        assert_eq!(Engine::parse("embedded").unwrap(), Engine::Embedded);
        assert_eq!(Engine::parse("").unwrap(), Engine::Embedded);
        let e = Engine::parse("ballista://127.0.0.1:50070").unwrap();
        assert_eq!(
            e,
            Engine::Ballista {
                scheduler: "http://127.0.0.1:50070".into()
            }
        );
        assert_eq!(e.to_string(), "ballista://127.0.0.1:50070");
        assert_eq!(
            Engine::parse("ballista://sched").unwrap().to_string(),
            "ballista://sched:50050"
        );
        assert_eq!(
            Engine::parse("ballista://sched:80").unwrap().to_string(),
            "ballista://sched:80"
        );
        for bad in ["spark://x:1", "ballista://", "ballista://h:1/path", "h:1"] {
            let err = Engine::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains(bad) && err.contains("ballista://HOST:PORT"),
                "{err}"
            );
        }
    }

    fn repo(rel: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(rel)
    }

    async fn catalog(wh: &Path, policy: &Path, geoip: Option<&str>) -> Catalog {
        let g = geoip.map(repo);
        Catalog::open(wh, policy, g.as_deref()).await.unwrap()
    }

    /// A member of the warehouse `wh` with `catalog`'s policy.
    fn member(catalog: &Catalog, wh: &Path) -> Arc<Member> {
        Arc::new(
            Member::of(catalog, &Location::Local(wh.into()))
                .unwrap()
                .with_role("scheduler test".into()),
        )
    }

    /// The session a scheduler of `m` decodes and plans in.
    fn scheduler_ctx(m: &Member) -> SessionContext {
        SessionContext::new_with_state(m.session(SessionConfig::new()).unwrap())
    }

    /// A plan made by the client's catalog, as a scheduler of `to` decodes it.
    async fn round_trip(
        from: &Catalog,
        from_wh: &Path,
        to: &Arc<Member>,
        sql: &str,
    ) -> Result<LogicalPlan> {
        let plan = from.ctx.sql(sql).await?.into_optimized_plan()?;
        let enc = LogicalCodec::new(member(from, from_wh));
        let bytes =
            datafusion_proto::bytes::logical_plan_to_bytes_with_extension_codec(&plan, &enc)?;
        datafusion_proto::bytes::logical_plan_from_bytes_with_extension_codec(
            &bytes,
            &scheduler_ctx(to).task_ctx(),
            &LogicalCodec::new(to.clone()),
        )
    }

    #[test]
    fn a_member_with_another_policy_or_warehouse_refuses_the_plan() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // The Delta tables in each warehouse, so the plans name them by URL.
        for wh in [a.path(), b.path()] {
            flowaudit_ingest::warehouse::Warehouse::open(&Location::Local(wh.into())).unwrap();
        }
        // Another policy folder: the fixtures with one transfer basis changed.
        let other = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(repo("fixtures/policy")).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() {
                std::fs::copy(&f, other.path().join(f.file_name().unwrap())).unwrap();
            }
        }
        let bases = other.path().join("transfer_bases.csv");
        let text = std::fs::read_to_string(&bases).unwrap();
        std::fs::write(&bases, text.replacen("adequacy", "scc", 1)).unwrap();
        tokio::runtime::Runtime::new().unwrap().block_on(refusals(
            a.path(),
            b.path(),
            other.path(),
        ));
    }

    async fn refusals(a: &Path, b: &Path, other_policy: &Path) {
        let (policy, geo) = (repo("fixtures/policy"), Some("fixtures/geoip/ranges.csv"));
        let client = catalog(a, &policy, geo).await;
        let same = member(&catalog(a, &policy, geo).await, a);
        let no_geoip = member(&catalog(a, &policy, None).await, a);
        let other = member(&catalog(a, other_policy, geo).await, a);
        let elsewhere = member(&catalog(b, &policy, geo).await, b);
        assert_eq!(fingerprint(&client), same.fingerprint());

        let uses = "SELECT country_of(dst_ip) AS c, in_cidr(dst_ip, '10.0.0.0/8') AS i, \
                    basis_for(dst_country, ts) AS b, (SELECT count(*) FROM countries) AS n FROM flows";
        // The same policy and GeoIP: the plan comes back with the policy table's rows and the
        // member's own functions.
        let plan = round_trip(&client, a, &same, uses).await.unwrap();
        let text = format!("{}", plan.display_indent());
        assert!(
            text.contains("country_of") && text.contains("flows"),
            "{text}"
        );
        // Another GeoIP database, another policy file: refused, naming both fingerprints.
        for (m, flag) in [(&no_geoip, "--geoip"), (&other, "--policy")] {
            assert_ne!(fingerprint(&client), m.fingerprint());
            let e = round_trip(&client, a, m, uses)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&fingerprint(&client))
                    && e.contains(m.fingerprint())
                    && e.contains(flag)
                    && e.contains("scheduler test"),
                "{e}"
            );
        }
        // Another warehouse: refused, naming both URLs.
        let e = round_trip(&client, a, &elsewhere, "SELECT count(*) FROM flows")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("--warehouse") && e.contains("flows"), "{e}");
        // A plan without flowaudit's codec cannot reach the functions by name.
        let plan = client
            .ctx
            .sql("SELECT country_of(code) FROM (VALUES ('1.2.3.4')) AS t(code)")
            .await
            .unwrap()
            .into_unoptimized_plan();
        let bytes = datafusion_proto::bytes::logical_plan_to_bytes(&plan).unwrap();
        let e = datafusion_proto::bytes::logical_plan_from_bytes_with_extension_codec(
            &bytes,
            &scheduler_ctx(&same).task_ctx(),
            &LogicalCodec::new(same.clone()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("country_of"), "{e}");
        // Nor can it read a file of the scheduler's machine through a listing table.
        let sched = scheduler_ctx(&same);
        sched
            .register_csv(
                "secrets",
                policy.join("employees.csv").to_str().unwrap(),
                datafusion::prelude::CsvReadOptions::new(),
            )
            .await
            .unwrap();
        let e = sched
            .sql("SELECT * FROM secrets")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("secrets") && e.contains("reads only"), "{e}");
        // The executors: the scheduler's physical plan carries its fingerprint, checked again.
        let physical = client
            .ctx
            .sql("SELECT country_of(code) AS c FROM countries")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let bytes = datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(
            physical,
            &PhysicalCodec::new(same.clone()),
        )
        .unwrap();
        let decode = |m: &Arc<Member>| {
            datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(
                &bytes,
                &SessionContext::new().task_ctx(),
                &PhysicalCodec::new(m.clone()),
            )
        };
        let ran = decode(&same).unwrap();
        let rows = datafusion::physical_plan::collect(ran, SessionContext::new().task_ctx())
            .await
            .unwrap();
        assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 50);
        let e = decode(&other).unwrap_err().to_string();
        assert!(e.contains(other.fingerprint()), "{e}");
        // A policy table travels with its rows: the member's answer is the client's rows.
        let plan = round_trip(
            &client,
            a,
            &same,
            "SELECT code FROM countries WHERE eea ORDER BY code LIMIT 3",
        )
        .await
        .unwrap();
        let rows = SessionContext::new()
            .execute_logical_plan(plan)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let got = arrow::util::pretty::pretty_format_batches(&rows)
            .unwrap()
            .to_string();
        assert!(
            got.contains("AT") && got.contains("BE") && got.contains("BG"),
            "{got}"
        );
    }
}
