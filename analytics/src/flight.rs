//! The read-only catalog over Arrow Flight SQL, for analysts' own tools (DBeaver/JDBC, ADBC,
//! pyarrow).
//!
//! - Statements, prepared statements with parameters (`?` or `$n`), `GetCatalogs`,
//!   `GetDbSchemas`, `GetTables` (with schemas), `GetTableTypes`, `GetSqlInfo`. Every statement
//!   goes through [`SqlEngine`]: writes are refused (`PERMISSION_DENIED`), and each query has
//!   the engine's memory and time limits (`RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`).
//! - Authentication on every call: a configured bearer token, a session token issued by the
//!   Handshake for a configured user's basic credentials, or basic credentials on the call
//!   itself. Secrets are compared as SHA-256 digests in constant time, against every
//!   configured entry. Each query is logged with the analyst's name.
//! - TLS when a certificate and key are configured.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::ArrayRef;
use arrow::datatypes::Schema;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use base64::Engine as _;
use datafusion::scalar::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::sql::{stream_error, SqlEngine, SqlError};

/// A credential from the configuration: its owner and the SHA-256 of the secret.
#[derive(Debug, Clone)]
pub struct Credential {
    pub name: String,
    pub secret_sha256: [u8; 32],
}

impl Credential {
    /// From a plain secret (kept only as its digest).
    pub fn from_secret(name: &str, secret: &str) -> Self {
        Self {
            name: name.into(),
            secret_sha256: Sha256::digest(secret.as_bytes()).into(),
        }
    }

    /// From the hex SHA-256 of the secret, as `printf %s SECRET | sha256sum` prints it.
    pub fn from_sha256_hex(name: &str, hex_digest: &str) -> Result<Self, String> {
        let bytes = hex::decode(hex_digest.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| format!("{name}: sha256 must be 64 hex digits"))?;
        let mut secret_sha256 = [0u8; 32];
        secret_sha256.copy_from_slice(&bytes);
        Ok(Self {
            name: name.into(),
            secret_sha256,
        })
    }
}

/// Who may connect.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// Basic auth: user name and password.
    pub users: Vec<Credential>,
    /// Bearer tokens, each named for the logs.
    pub tokens: Vec<Credential>,
    /// How long a session token from the Handshake stays valid.
    pub session_ttl: Duration,
}

/// Compare `secret` with every credential (each in constant time, all of them every time) and
/// return the matching one's name.
fn find_match<'a>(creds: &'a [Credential], secret: &str, name: Option<&str>) -> Option<&'a str> {
    let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    let mut found = None;
    for c in creds {
        let name_ok = name.is_none_or(|n| n == c.name);
        let secret_ok: bool = c.secret_sha256.ct_eq(&digest).into();
        if name_ok && secret_ok {
            found = Some(c.name.as_str());
        }
    }
    found
}

/// Where and how to listen.
pub struct FlightOptions {
    pub addr: SocketAddr,
    /// PEM certificate chain and private key: TLS when set.
    pub tls: Option<(String, String)>,
    pub auth: Auth,
}

#[derive(Debug, thiserror::Error)]
pub enum FlightServerError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(tonic::transport::Error),
    #[error("serving Flight SQL: {0}")]
    Serve(tonic::transport::Error),
    #[error("no credentials configured: add [[flight.users]] or [[flight.tokens]] to the configuration (the endpoint never runs without authentication)")]
    NoCredentials,
}

struct Prepared {
    sql: String,
    user: String,
    params: Option<Vec<ScalarValue>>,
}

/// The service.
pub struct FlightSql {
    engine: Arc<SqlEngine>,
    auth: Auth,
    /// SHA-256 of a session token → (user, expiry).
    sessions: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    prepared: Mutex<HashMap<Vec<u8>, Prepared>>,
    info: SqlInfoData,
}

fn random_token() -> String {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("reading /dev/urandom");
    hex::encode(b)
}

fn status(e: SqlError) -> Status {
    let msg = e.to_string();
    match e {
        SqlError::ReadOnly { .. } => Status::permission_denied(msg),
        SqlError::Timeout(_) => Status::deadline_exceeded(msg),
        SqlError::Memory { .. } => Status::resource_exhausted(msg),
        SqlError::Catalog(_) => Status::internal(msg),
        SqlError::Syntax(_) | SqlError::NotOne(_) | SqlError::Params(_) | SqlError::Query(_) => {
            Status::invalid_argument(msg)
        }
    }
}

impl FlightSql {
    pub fn new(engine: Arc<SqlEngine>, auth: Auth) -> Self {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::FlightSqlServerName, "flowaudit");
        b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        b.append(SqlInfo::FlightSqlServerArrowVersion, "59.3");
        b.append(SqlInfo::FlightSqlServerReadOnly, true);
        b.append(SqlInfo::FlightSqlServerSql, true);
        b.append(SqlInfo::FlightSqlServerSubstrait, false);
        b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        Self {
            engine,
            auth,
            sessions: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            info: b.build().expect("static SqlInfo"),
        }
    }

    /// The caller's name, from the `authorization` header; failures are logged with the peer.
    #[allow(clippy::result_large_err)]
    fn identify<T>(&self, req: &Request<T>) -> Result<String, Status> {
        self.authenticate(req).inspect_err(|s| {
            let peer = req
                .remote_addr()
                .map_or_else(|| "unknown".to_string(), |a| a.to_string());
            warn!(peer, reason = s.message(), "flight authentication failed");
        })
    }

    #[allow(clippy::result_large_err)]
    fn authenticate<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| {
                Status::unauthenticated(
                    "authentication required: send a bearer token, or basic credentials (Handshake)",
                )
            })?
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization header is not text"))?;
        if let Some(token) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
        {
            let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
            {
                let mut sessions = self.sessions.lock().expect("sessions lock");
                let now = Instant::now();
                sessions.retain(|_, (_, exp)| *exp > now);
                if let Some((user, _)) = sessions.get(&digest) {
                    return Ok(user.clone());
                }
            }
            return find_match(&self.auth.tokens, token.trim(), None)
                .map(str::to_string)
                .ok_or_else(|| Status::unauthenticated("invalid or expired bearer token"));
        }
        if let Some(b64) = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))
        {
            return self.check_basic(b64);
        }
        Err(Status::unauthenticated(
            "unsupported authorization scheme (Bearer or Basic)",
        ))
    }

    #[allow(clippy::result_large_err)]
    fn check_basic(&self, b64: &str) -> Result<String, Status> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        // Clients differ in padding and alphabet (the Go Flight client sends no padding).
        let b64 = b64.trim();
        let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(b64).ok())
            .ok_or_else(|| Status::unauthenticated("basic credentials are not base64"))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| Status::unauthenticated("basic credentials are not UTF-8"))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| Status::unauthenticated("basic credentials are not user:password"))?;
        find_match(&self.auth.users, password, Some(user))
            .map(str::to_string)
            .ok_or_else(|| Status::unauthenticated("invalid user name or password"))
    }

    /// Start a query and encode its batches as Flight data; logs the analyst and the outcome.
    async fn stream(
        &self,
        user: &str,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let started = Instant::now();
        let run = async {
            let stmt = SqlEngine::parse_one(sql)?;
            self.engine.plan(&stmt).await?.execute(params).await
        };
        let stream = match run.await {
            Ok(s) => s,
            Err(e) => {
                warn!(user, sql, error = %e, "flight query refused or failed");
                return Err(status(e));
            }
        };
        info!(user, sql, "flight query started");
        let schema = stream.schema();
        let limits = self.engine.limits;
        let log = Arc::new(QueryLog {
            user: user.to_string(),
            rows: AtomicUsize::new(0),
            started,
            failed: Mutex::new(None),
        });
        // The closure owns the log entry: it is written when the stream is dropped, after the
        // client has read everything or gone away.
        let batches = stream.map(move |b| match b {
            Ok(b) => {
                log.rows.fetch_add(b.num_rows(), Ordering::Relaxed);
                Ok(b)
            }
            Err(e) => {
                let s = status(stream_error(e, &limits));
                *log.failed.lock().expect("log lock") = Some(s.message().to_string());
                Err(FlightError::Tonic(Box::new(s)))
            }
        });
        let out = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(|e| match e {
                FlightError::Tonic(s) => *s,
                other => Status::internal(other.to_string()),
            });
        Ok(Response::new(Box::pin(out)))
    }

    async fn flight_info_for(
        &self,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
        ticket: Vec<u8>,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let stmt = SqlEngine::parse_one(sql).map_err(status)?;
        let planned = self.engine.plan(&stmt).await.map_err(status)?;
        let schema = match params {
            Some(p) => {
                let plan = planned
                    .plan()
                    .clone()
                    .with_param_values(p)
                    .map_err(|e| status(SqlError::Params(e.find_root().to_string())))?;
                Arc::new(plan.schema().as_arrow().clone())
            }
            None => planned.schema(),
        };
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
            .with_descriptor(descriptor)
            .with_ordered(true);
        Ok(Response::new(info))
    }

    /// The FlightInfo of a metadata command: its schema, and the command itself as the ticket.
    #[allow(clippy::result_large_err)]
    fn metadata_info(
        &self,
        request: Request<FlightDescriptor>,
        schema: &Schema,
        command: Any,
    ) -> Result<Response<FlightInfo>, Status> {
        self.identify(&request)?;
        let (ticket, descriptor) = (command.encode_to_vec(), request.into_inner());
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }

    fn one_batch(
        schema: arrow::datatypes::SchemaRef,
        batch: Result<arrow::record_batch::RecordBatch, impl Into<FlightError> + Send + 'static>,
    ) -> Response<<Self as FlightService>::DoGetStream> {
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(
                async move { batch.map_err(Into::into) },
            ))
            .map_err(|e| Status::internal(e.to_string()));
        Response::new(Box::pin(stream))
    }

    #[allow(clippy::result_large_err)]
    fn prepared_sql(
        &self,
        handle: &[u8],
        user: &str,
    ) -> Result<(String, Option<Vec<ScalarValue>>), Status> {
        let map = self.prepared.lock().expect("prepared lock");
        match map.get(handle) {
            Some(p) if p.user == user => Ok((p.sql.clone(), p.params.clone())),
            _ => Err(Status::not_found(
                "no such prepared statement (closed, or another user's)",
            )),
        }
    }
}

/// One query's log line, written when its stream is dropped.
struct QueryLog {
    user: String,
    rows: AtomicUsize,
    started: Instant,
    failed: Mutex<Option<String>>,
}

impl Drop for QueryLog {
    fn drop(&mut self) {
        let rows = self.rows.load(Ordering::Relaxed);
        let ms = self.started.elapsed().as_millis() as u64;
        match self.failed.lock().expect("log lock").take() {
            Some(error) => warn!(user = %self.user, rows, ms, error, "flight query failed"),
            None => info!(user = %self.user, rows, ms, "flight query done"),
        }
    }
}

const CATALOG: &str = "datafusion";
const SCHEMA: &str = "public";

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let user = self.identify(&request)?;
        let token = random_token();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.sessions.lock().expect("sessions lock").insert(
            digest,
            (user.clone(), Instant::now() + self.auth.session_ttl),
        );
        info!(user, "flight session opened");
        let out = futures::stream::iter(vec![Ok(HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        })]);
        let mut resp: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(out));
        resp.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|e| Status::internal(e.to_string()))?,
        );
        Ok(resp)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let user = self.identify(&request)?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.clone().into(),
        }
        .as_any()
        .encode_to_vec();
        let r = self
            .flight_info_for(&query.query, None, ticket, request.into_inner())
            .await;
        if let Err(s) = &r {
            warn!(
                user,
                sql = query.query,
                error = s.message(),
                "flight statement refused"
            );
        }
        r
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let user = self.identify(&request)?;
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("statement ticket is not UTF-8"))?;
        self.stream(&user, &sql, None).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let user = self.identify(&request)?;
        let (sql, params) = self.prepared_sql(&cmd.prepared_statement_handle, &user)?;
        let ticket = cmd.as_any().encode_to_vec();
        self.flight_info_for(&sql, params, ticket, request.into_inner())
            .await
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let user = self.identify(&request)?;
        let (sql, params) = self.prepared_sql(&cmd.prepared_statement_handle, &user)?;
        self.stream(&user, &sql, params).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let user = self.identify(&request)?;
        let stmt = SqlEngine::parse_one(&query.query).map_err(|e| {
            warn!(user, sql = query.query, error = %e, "flight prepare refused");
            status(e)
        })?;
        let planned = self.engine.plan(&stmt).await.map_err(status)?;
        let opts = arrow::ipc::writer::IpcWriteOptions::default();
        let encode = |s: &Schema| -> Result<bytes::Bytes, Status> {
            let IpcMessage(b) = SchemaAsIpc::new(s, &opts)
                .try_into()
                .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
            Ok(b)
        };
        let dataset_schema = encode(&planned.schema())?;
        let parameter_schema = encode(&planned.parameter_schema().map_err(status)?)?;
        let handle = random_token().into_bytes();
        self.prepared.lock().expect("prepared lock").insert(
            handle.clone(),
            Prepared {
                sql: query.query,
                user,
                params: None,
            },
        );
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into(),
            dataset_schema,
            parameter_schema,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let user = self.identify(&request)?;
        let handle = query.prepared_statement_handle.to_vec();
        self.prepared_sql(&handle, &user)?;
        let batches: Vec<_> = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            request.into_inner().map_err(FlightError::from),
        )
        .try_collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows != 1 {
            return Err(Status::invalid_argument(format!(
                "parameters: bind exactly one row of values to a query, got {rows}"
            )));
        }
        let batch = batches.iter().find(|b| b.num_rows() == 1).expect("one row");
        let params = batch
            .columns()
            .iter()
            .map(|c: &ArrayRef| ScalarValue::try_from_array(c, 0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
        if let Some(p) = self
            .prepared
            .lock()
            .expect("prepared lock")
            .get_mut(&handle)
        {
            p.params = Some(params);
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle.into()),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let user = self.identify(&request)?;
        let mut map = self.prepared.lock().expect("prepared lock");
        if map
            .get(query.prepared_statement_handle.as_ref())
            .is_some_and(|p| p.user == user)
        {
            map.remove(query.prepared_statement_handle.as_ref());
        }
        Ok(())
    }

    async fn do_put_statement_update(
        &self,
        cmd: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let user = self.identify(&request)?;
        let what = match SqlEngine::parse(&cmd.query) {
            Err(e) => e.to_string(),
            Ok(_) => "an update".to_string(),
        };
        warn!(user, sql = cmd.query, "flight update refused");
        Err(Status::permission_denied(format!(
            "{what}: this endpoint is read-only"
        )))
    }

    async fn do_put_prepared_statement_update(
        &self,
        _cmd: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.identify(&request)?;
        Err(Status::permission_denied(
            "updates are not allowed: this endpoint is read-only",
        ))
    }

    async fn do_put_statement_ingest(
        &self,
        _cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.identify(&request)?;
        Err(Status::permission_denied(
            "bulk ingest is not allowed: this endpoint is read-only",
        ))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(request, &schema, query.as_any())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.identify(&request)?;
        let mut b = query.into_builder();
        b.append(CATALOG);
        let schema = b.schema();
        Ok(Self::one_batch(schema, b.build()))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(request, &schema, query.as_any())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.identify(&request)?;
        let mut b = query.into_builder();
        b.append(CATALOG, SCHEMA);
        let schema = b.schema();
        Ok(Self::one_batch(schema, b.build()))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        self.metadata_info(request, &schema, query.as_any())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.identify(&request)?;
        let tables = self.engine.tables().await.map_err(status)?;
        let mut b = query.into_builder();
        for t in &tables {
            b.append(CATALOG, SCHEMA, &t.name, "TABLE", &t.schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let schema = b.schema();
        Ok(Self::one_batch(schema, b.build()))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        self.metadata_info(request, &schema, query.as_any())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.identify(&request)?;
        let mut b = query.into_builder();
        b.append("TABLE");
        let schema = b.schema();
        Ok(Self::one_batch(schema, b.build()))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.info).schema();
        self.metadata_info(request, &schema, query.as_any())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.identify(&request)?;
        let b = query.into_builder(&self.info);
        let schema = b.schema();
        Ok(Self::one_batch(schema, b.build()))
    }

    async fn do_get_fallback(
        &self,
        request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.identify(&request)?;
        Err(Status::unimplemented(format!(
            "{} is not supported",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Serve until `shutdown` completes. Logs the address it listens on (useful with port 0).
pub async fn serve(
    engine: Arc<SqlEngine>,
    opts: FlightOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), FlightServerError> {
    if opts.auth.users.is_empty() && opts.auth.tokens.is_empty() {
        return Err(FlightServerError::NoCredentials);
    }
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|source| FlightServerError::Bind {
            addr: opts.addr,
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| FlightServerError::Bind {
            addr: opts.addr,
            source,
        })?;
    let svc = FlightServiceServer::new(FlightSql::new(engine, opts.auth));
    let mut builder = tonic::transport::Server::builder();
    let tls = opts.tls.is_some();
    if let Some((cert, key)) = opts.tls {
        builder = builder
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .map_err(FlightServerError::Tls)?;
    }
    info!(addr = %local, tls, "Flight SQL listening");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    builder
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(FlightServerError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_match_by_digest_and_name() {
        let users = vec![
            Credential::from_secret("alice", "s3cret"),
            Credential::from_sha256_hex(
                "bob",
                // printf %s hunter2 | sha256sum
                "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7",
            )
            .unwrap(),
        ];
        assert_eq!(find_match(&users, "s3cret", Some("alice")), Some("alice"));
        assert_eq!(find_match(&users, "hunter2", Some("bob")), Some("bob"));
        assert_eq!(find_match(&users, "s3cret", Some("bob")), None);
        assert_eq!(find_match(&users, "s3cre", Some("alice")), None);
        assert_eq!(find_match(&users, "hunter2", None), Some("bob"));
        assert!(Credential::from_sha256_hex("x", "abcd").is_err());
    }
}
