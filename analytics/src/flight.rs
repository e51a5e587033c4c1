//! The read-only catalog over Arrow Flight SQL, for analysts' own tools (DBeaver/JDBC, ADBC,
//! pyarrow).
//!
//! - Statements, prepared statements with parameters (`?` or `$n`), `GetCatalogs`,
//!   `GetDbSchemas`, `GetTables` (with schemas), `GetTableTypes`, `GetSqlInfo`. Every statement
//!   goes through [`SqlEngine`]: writes are refused (`PERMISSION_DENIED`), and each query has
//!   the engine's memory and time limits (`RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`).
//! - Authentication on every call: a configured bearer token, a session token issued by the
//!   Handshake for a configured user's basic credentials, or basic credentials on the call
//!   itself ([`crate::auth`]: argon2id password hashes, verified once per login and then
//!   remembered for the session's time; failed logins throttled per client address). Each query
//!   is logged with the analyst's name.
//! - Caps, each refused with `RESOURCE_EXHAUSTED` and a message naming its setting: queries
//!   running at once (in total and per user), open sessions (in total; per user the oldest is
//!   closed), open prepared statements (per user and in total; idle ones expire), and the bytes
//!   of a statement's parameters (DoPut is read up to the limit, never collected whole).
//! - TLS when a certificate and key are configured; a loud warning when it listens beyond
//!   loopback without.
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow::array::ArrayRef;
use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
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
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

pub use crate::auth::ThrottleConfig;
use crate::auth::{check_token, check_user, random_bytes, Credential, LoginThrottle, Written};
use crate::sql::{human_bytes, stream_error, Planned, SqlEngine, SqlError};

/// Who may connect.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// Basic auth: user name and password.
    pub users: Vec<Credential>,
    /// Bearer tokens, each named for the logs.
    pub tokens: Vec<Credential>,
    /// How long a session token from the Handshake stays valid.
    pub session_ttl: Duration,
    /// Failed logins per client address.
    pub throttle: ThrottleConfig,
}

/// The endpoint's caps (the engine's own limits are in [`crate::sql::Limits`]).
#[derive(Debug, Clone, Copy)]
pub struct FlightLimits {
    /// Queries running at once, all users together.
    pub max_queries: usize,
    /// Queries running at once for one user.
    pub max_queries_per_user: usize,
    /// Open sessions (Handshake tokens), all users together.
    pub max_sessions: usize,
    /// Open sessions of one user; a new one closes the user's oldest.
    pub max_sessions_per_user: usize,
    /// Open prepared statements, all users together.
    pub max_prepared: usize,
    /// Open prepared statements of one user.
    pub max_prepared_per_user: usize,
    /// A prepared statement unused this long is closed.
    pub prepared_ttl: Duration,
    /// Bytes of the parameters bound to a prepared statement in one DoPut.
    pub max_parameter_bytes: usize,
}

impl Default for FlightLimits {
    fn default() -> Self {
        Self {
            max_queries: 4,
            max_queries_per_user: 2,
            max_sessions: 1000,
            max_sessions_per_user: 20,
            max_prepared: 1000,
            max_prepared_per_user: 50,
            prepared_ttl: Duration::from_secs(3600),
            max_parameter_bytes: 1 << 20,
        }
    }
}

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct FlightOptions {
    pub addr: SocketAddr,
    /// PEM certificate chain and private key: TLS when set.
    pub tls: Option<(String, String)>,
    pub auth: Auth,
    pub limits: FlightLimits,
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
    last_used: Instant,
}

struct Session {
    user: String,
    opened: Instant,
    expires: Instant,
}

/// How long a plan made for GetFlightInfo waits for the DoGet of its ticket.
const PLAN_KEPT: Duration = Duration::from_secs(10);

/// Plans kept at most (the oldest go first).
const PLANS_KEPT: usize = 64;

/// Plans made for GetFlightInfo, each kept for one DoGet of the same ticket by the same user, which
/// clients send right after it: that DoGet runs the plan instead of parsing and planning the
/// statement again (docs/sql.md, "Flight SQL").
struct PlanCache<T> {
    entries: VecDeque<(String, Vec<u8>, Instant, T)>,
}

impl<T> PlanCache<T> {
    fn new() -> Self {
        Self {
            entries: VecDeque::new(),
        }
    }

    /// Keep `plan` for `user`'s DoGet of `ticket`, replacing an earlier one of the same pair;
    /// plans past [`PLAN_KEPT`] and the oldest beyond [`PLANS_KEPT`] are dropped.
    fn put(&mut self, user: &str, ticket: Vec<u8>, plan: T, now: Instant) {
        self.entries.retain(|(u, t, made, _)| {
            now.saturating_duration_since(*made) < PLAN_KEPT && !(u == user && *t == ticket)
        });
        while self.entries.len() >= PLANS_KEPT {
            self.entries.pop_front();
        }
        self.entries
            .push_back((user.to_string(), ticket, now, plan));
    }

    /// The plan kept for `user`'s DoGet of `ticket`, if made less than [`PLAN_KEPT`] ago; it is
    /// used once.
    fn take(&mut self, user: &str, ticket: &[u8], now: Instant) -> Option<T> {
        let i = self
            .entries
            .iter()
            .position(|(u, t, _, _)| u == user && t == ticket)?;
        let (_, _, made, plan) = self.entries.remove(i)?;
        (now.saturating_duration_since(made) < PLAN_KEPT).then_some(plan)
    }
}

/// Queries running now: in total and per user.
#[derive(Default)]
struct Running {
    total: usize,
    per_user: HashMap<String, usize>,
}

/// One admitted query; its place is given back when dropped (with the result stream).
struct Admitted {
    running: Arc<Mutex<Running>>,
    user: String,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut r = lock(&self.running);
        r.total = r.total.saturating_sub(1);
        if let Some(n) = r.per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                r.per_user.remove(&self.user);
            }
        }
    }
}

/// A mutex's data, even if a thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a call presented: its `authorization` header and where it came from.
struct Presented {
    header: Option<Result<String, ()>>,
    peer: Option<SocketAddr>,
}

impl Presented {
    fn of<T>(req: &Request<T>) -> Self {
        Self {
            header: req
                .metadata()
                .get("authorization")
                .map(|v| v.to_str().map(str::to_string).map_err(|_| ())),
            peer: req.remote_addr(),
        }
    }

    /// The address failed logins are counted under (IPv4-mapped IPv6 as IPv4).
    fn ip(&self) -> IpAddr {
        self.peer
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip().to_canonical())
    }

    fn peer_text(&self) -> String {
        self.peer
            .map_or_else(|| "unknown".to_string(), |a| a.to_string())
    }
}

/// The service.
pub struct FlightSql {
    engine: Arc<SqlEngine>,
    auth: Auth,
    users: Arc<Vec<Credential>>,
    limits: FlightLimits,
    /// SHA-256 of a session token → its session.
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    prepared: Mutex<HashMap<Vec<u8>, Prepared>>,
    planned: Mutex<PlanCache<Planned>>,
    running: Arc<Mutex<Running>>,
    throttle: LoginThrottle,
    /// Password verifications running at once (each holds argon2's memory).
    verifying: tokio::sync::Semaphore,
    /// Keyed digests of basic credentials verified lately → (user, expiry): a client that sends
    /// them on every call pays for argon2 once per session time.
    verified: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    /// The key of those digests, random per process.
    verified_key: [u8; 32],
    info: SqlInfoData,
}

fn random_token() -> Result<String, Status> {
    random_bytes::<32>()
        .map(hex::encode)
        .map_err(|e| Status::internal(format!("reading /dev/urandom: {e}")))
}

fn status(e: SqlError) -> Status {
    let msg = e.to_string();
    match e {
        SqlError::ReadOnly { .. } => Status::permission_denied(msg),
        SqlError::Timeout(_) => Status::deadline_exceeded(msg),
        SqlError::Memory { .. }
        | SqlError::SharedMemory(_)
        | SqlError::ValueTooLarge(_)
        | SqlError::ResultTooLarge(_) => Status::resource_exhausted(msg),
        SqlError::Catalog(_) | SqlError::Internal(_) => Status::internal(msg),
        SqlError::Syntax(_) | SqlError::NotOne(_) | SqlError::Params(_) | SqlError::Query(_) => {
            Status::invalid_argument(msg)
        }
    }
}

impl FlightSql {
    pub fn new(engine: Arc<SqlEngine>, auth: Auth, limits: FlightLimits) -> Self {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::FlightSqlServerName, "flowaudit");
        b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        b.append(SqlInfo::FlightSqlServerArrowVersion, "59.3");
        b.append(SqlInfo::FlightSqlServerReadOnly, true);
        b.append(SqlInfo::FlightSqlServerSql, true);
        b.append(SqlInfo::FlightSqlServerSubstrait, false);
        b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        let verified_key = random_bytes::<32>()
            .unwrap_or_else(|_| Sha256::digest(format!("{:?}", Instant::now())).into());
        Self {
            engine,
            users: Arc::new(auth.users.clone()),
            throttle: LoginThrottle::new(auth.throttle),
            auth,
            limits,
            sessions: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            planned: Mutex::new(PlanCache::new()),
            running: Arc::new(Mutex::new(Running::default())),
            verifying: tokio::sync::Semaphore::new(2),
            verified: Mutex::new(HashMap::new()),
            verified_key,
            info: b.build().expect("static SqlInfo"),
        }
    }

    /// Take a place for a query of `user`, or refuse: too many running.
    #[allow(clippy::result_large_err)]
    fn admit(&self, user: &str) -> Result<Admitted, Status> {
        let mut r = lock(&self.running);
        let mine = r.per_user.get(user).copied().unwrap_or(0);
        if mine >= self.limits.max_queries_per_user {
            return Err(Status::resource_exhausted(format!(
                "too many queries running for {user}: {mine} of {} (flight.max_queries_per_user); wait for one to finish",
                self.limits.max_queries_per_user
            )));
        }
        if r.total >= self.limits.max_queries {
            return Err(Status::resource_exhausted(format!(
                "too many queries running: {} of {} (flight.max_queries); try again when one has finished",
                r.total, self.limits.max_queries
            )));
        }
        r.total += 1;
        *r.per_user.entry(user.to_string()).or_insert(0) += 1;
        Ok(Admitted {
            running: self.running.clone(),
            user: user.to_string(),
        })
    }

    /// The caller's name, from the `authorization` header; failures are logged with the peer.
    /// (The request is read before the future is made, so the future does not borrow it.)
    fn identify<T>(
        &self,
        req: &Request<T>,
    ) -> impl Future<Output = Result<String, Status>> + Send + '_ {
        let presented = Presented::of(req);
        async move {
            let r = self.authenticate(&presented).await;
            if let Err(s) = &r {
                warn!(
                    peer = presented.peer_text(),
                    reason = s.message(),
                    "flight authentication failed"
                );
            }
            r
        }
    }

    #[allow(clippy::result_large_err)]
    fn throttled(&self, p: &Presented) -> Result<(), Status> {
        self.throttle.check(p.ip()).map_err(|l| {
            Status::resource_exhausted(format!(
                "too many failed logins from {}: refused for {} s more (flight.login_max_failures, flight.login_lockout)",
                p.ip(),
                l.retry_after.as_secs().max(1)
            ))
        })
    }

    /// Count a failed login from `p`; log when it locks the address out.
    fn failed(&self, p: &Presented) {
        if let Err(l) = self.throttle.failed(p.ip()) {
            warn!(
                peer = %p.ip(),
                failures = l.failures,
                lockout_s = l.retry_after.as_secs(),
                "flight logins from this address refused for a while: too many failures"
            );
        }
    }

    async fn authenticate(&self, p: &Presented) -> Result<String, Status> {
        let header = match &p.header {
            None => return Err(Status::unauthenticated(
                "authentication required: send a bearer token, or basic credentials (Handshake)",
            )),
            Some(Err(())) => {
                return Err(Status::unauthenticated("authorization header is not text"))
            }
            Some(Ok(h)) => h.as_str(),
        };
        if let Some(token) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
        {
            let token = token.trim();
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            {
                let sessions = lock(&self.sessions);
                if let Some(s) = sessions.get(&digest) {
                    if s.expires > Instant::now() {
                        return Ok(s.user.clone());
                    }
                }
            }
            self.throttled(p)?;
            return match check_token(&self.auth.tokens, token) {
                Some(name) => Ok(name.to_string()),
                None => {
                    self.failed(p);
                    Err(Status::unauthenticated("invalid or expired bearer token"))
                }
            };
        }
        if let Some(b64) = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))
        {
            let (user, password) = decode_basic(b64)?;
            self.throttled(p)?;
            let key: [u8; 32] = Sha256::new()
                .chain_update(self.verified_key)
                .chain_update(user.as_bytes())
                .chain_update([0u8])
                .chain_update(password.as_bytes())
                .finalize()
                .into();
            if let Some((u, exp)) = lock(&self.verified).get(&key) {
                if *exp > Instant::now() {
                    return Ok(u.clone());
                }
            }
            let _permit = self
                .verifying
                .acquire()
                .await
                .map_err(|_| Status::unavailable("shutting down"))?;
            // Waiting may have taken a while: the address may be locked out by now.
            self.throttled(p)?;
            let users = self.users.clone();
            let found = tokio::task::spawn_blocking(move || {
                check_user(&users, &user, &password).map(str::to_string)
            })
            .await
            .map_err(|e| Status::internal(format!("verifying the password: {e}")))?;
            return match found {
                Some(name) => {
                    self.remember(key, &name);
                    Ok(name)
                }
                None => {
                    self.failed(p);
                    Err(Status::unauthenticated("invalid user name or password"))
                }
            };
        }
        Err(Status::unauthenticated(
            "unsupported authorization scheme (Bearer or Basic)",
        ))
    }

    /// Remember verified basic credentials for the session time (bounded like the sessions).
    fn remember(&self, key: [u8; 32], user: &str) {
        let mut v = lock(&self.verified);
        let now = Instant::now();
        if v.len() >= self.limits.max_sessions {
            v.retain(|_, (_, exp)| *exp > now);
        }
        if v.len() < self.limits.max_sessions {
            v.insert(key, (user.to_string(), now + self.auth.session_ttl));
        }
    }

    /// A new session token for `user`: a user's oldest session gives way past the per-user cap;
    /// past the total cap the login is refused.
    #[allow(clippy::result_large_err)]
    fn open_session(&self, user: &str) -> Result<String, Status> {
        let token = random_token()?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, s| s.expires > now);
        let mut mine: Vec<([u8; 32], Instant)> = sessions
            .iter()
            .filter(|(_, s)| s.user == user)
            .map(|(k, s)| (*k, s.opened))
            .collect();
        if mine.len() >= self.limits.max_sessions_per_user {
            mine.sort_by_key(|(_, opened)| *opened);
            let close = mine.len() + 1 - self.limits.max_sessions_per_user.max(1);
            for (k, _) in mine.iter().take(close) {
                sessions.remove(k);
            }
            info!(
                user,
                closed = close,
                "flight sessions closed: the user's oldest, past flight.max_sessions_per_user"
            );
        }
        if sessions.len() >= self.limits.max_sessions {
            return Err(Status::resource_exhausted(format!(
                "too many open sessions: {} (flight.max_sessions); sessions end after flight.session_ttl",
                sessions.len()
            )));
        }
        sessions.insert(
            digest,
            Session {
                user: user.to_string(),
                opened: now,
                expires: now + self.auth.session_ttl,
            },
        );
        Ok(token)
    }

    /// Start a query and encode its batches as Flight data; logs the analyst and the outcome.
    /// The plan made for this ticket's GetFlightInfo ([`PlanCache`]) runs, else `sql` is planned.
    async fn stream(
        &self,
        user: &str,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
        ticket: &[u8],
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let started = Instant::now();
        let admitted = self.admit(user).inspect_err(|s| {
            count_query(user, "refused", None);
            warn!(user, sql, error = s.message(), "flight query refused");
        })?;
        let kept = lock(&self.planned).take(user, ticket, started);
        let run = async {
            let planned = match kept {
                Some(p) => p,
                None => self.engine.plan(&SqlEngine::parse_one(sql)?).await?,
            };
            let ahead = planned.is_planning_ahead() && params.is_none();
            let stream = planned.execute(params).await?;
            if ahead {
                flowaudit_ingest::metrics::metrics()
                    .flight_plans_ahead_run
                    .inc();
            }
            Ok::<_, SqlError>(stream)
        };
        let stream = match run.await {
            Ok(s) => s,
            Err(e) => {
                count_query(user, "error", Some(started.elapsed()));
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
            _admitted: admitted,
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
                *lock(&log.failed) = Some(s.message().to_string());
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

    /// The FlightInfo of a query; its plan is kept for the DoGet of `ticket` ([`PlanCache`]).
    async fn flight_info_for(
        &self,
        user: &str,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
        ticket: Vec<u8>,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let stmt = SqlEngine::parse_one(sql).map_err(status)?;
        let mut planned = self.engine.plan(&stmt).await.map_err(status)?;
        // The physical plan is made while this answer travels and the client sends the DoGet
        // (docs/sql.md, "Flight SQL"). Parameters bound in the DoGet would change it.
        if params.is_none() {
            planned.plan_ahead();
        }
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
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket.clone())))
            .with_descriptor(descriptor)
            .with_ordered(true);
        lock(&self.planned).put(user, ticket, planned, Instant::now());
        Ok(Response::new(info))
    }

    /// The FlightInfo of a metadata command: its schema, and the command itself as the ticket.
    async fn metadata_info(
        &self,
        request: Request<FlightDescriptor>,
        schema: &Schema,
        command: Any,
    ) -> Result<Response<FlightInfo>, Status> {
        self.identify(&request).await?;
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

    /// The prepared statements, without those idle past `prepared_ttl`.
    fn prepared_map(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Prepared>> {
        let mut map = lock(&self.prepared);
        let now = Instant::now();
        let ttl = self.limits.prepared_ttl;
        map.retain(|_, p| now.duration_since(p.last_used) <= ttl);
        map
    }

    #[allow(clippy::result_large_err)]
    fn prepared_sql(
        &self,
        handle: &[u8],
        user: &str,
    ) -> Result<(String, Option<Vec<ScalarValue>>), Status> {
        let mut map = self.prepared_map();
        match map.get_mut(handle) {
            Some(p) if p.user == user => {
                p.last_used = Instant::now();
                Ok((p.sql.clone(), p.params.clone()))
            }
            _ => Err(Status::not_found(
                "no such prepared statement (closed, expired after flight.prepared_ttl unused, or another user's)",
            )),
        }
    }
}

/// `user:password` from basic credentials.
#[allow(clippy::result_large_err)]
fn decode_basic(b64: &str) -> Result<(String, String), Status> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
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
    Ok((user.to_string(), password.to_string()))
}

/// The one row of parameter values in a DoPut, read up to `max_bytes` (a larger or longer
/// stream is refused as soon as it passes the limit).
async fn read_parameters(
    stream: PeekableFlightDataStream,
    max_bytes: usize,
) -> Result<RecordBatch, Status> {
    let mut seen = 0usize;
    let limited = stream.map(move |m| {
        let m = m?;
        seen += m.data_header.len() + m.data_body.len() + m.app_metadata.len();
        if seen > max_bytes {
            return Err(Status::resource_exhausted(format!(
                "parameters: more than the limit of {} (flight.max_parameter_bytes)",
                human_bytes(max_bytes)
            )));
        }
        Ok(m)
    });
    let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
        limited.map_err(FlightError::from),
    );
    let mut row: Option<RecordBatch> = None;
    let mut rows = 0usize;
    while let Some(b) = batches.try_next().await.map_err(|e| match e {
        FlightError::Tonic(s) => *s,
        other => Status::invalid_argument(format!("parameters: {other}")),
    })? {
        rows += b.num_rows();
        if rows > 1 {
            break;
        }
        if b.num_rows() == 1 {
            row = Some(b);
        }
    }
    match row {
        Some(b) if rows == 1 => Ok(b),
        _ => Err(Status::invalid_argument(format!(
            "parameters: bind exactly one row of values to a query, got {}",
            if rows > 1 {
                "more than one".to_string()
            } else {
                rows.to_string()
            }
        ))),
    }
}

/// One query's log line, written when its stream is dropped.
struct QueryLog {
    user: String,
    rows: AtomicUsize,
    started: Instant,
    failed: Mutex<Option<String>>,
    /// The query's place among those running, given back with this entry.
    _admitted: Admitted,
}

/// Count a query in the metrics by user and outcome (`ok`, `error`, `refused`).
fn count_query(user: &str, outcome: &str, took: Option<std::time::Duration>) {
    let m = flowaudit_ingest::metrics::metrics();
    let l = flowaudit_ingest::metrics::FlightLabels {
        user: user.into(),
        outcome: outcome.into(),
    };
    m.flight_queries.get_or_create(&l).inc();
    if let Some(t) = took {
        m.flight_query_seconds
            .get_or_create(&l)
            .observe(t.as_secs_f64());
    }
}

impl Drop for QueryLog {
    fn drop(&mut self) {
        let rows = self.rows.load(Ordering::Relaxed);
        let ms = self.started.elapsed().as_millis() as u64;
        let outcome = match lock(&self.failed).take() {
            Some(error) => {
                warn!(user = %self.user, rows, ms, error, "flight query failed");
                "error"
            }
            None => {
                info!(user = %self.user, rows, ms, "flight query done");
                "ok"
            }
        };
        count_query(&self.user, outcome, Some(self.started.elapsed()));
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
        let user = self.identify(&request).await?;
        let token = self.open_session(&user)?;
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
        let user = self.identify(&request).await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.clone().into(),
        }
        .as_any()
        .encode_to_vec();
        let r = self
            .flight_info_for(&user, &query.query, None, ticket, request.into_inner())
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
        let user = self.identify(&request).await?;
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("statement ticket is not UTF-8"))?;
        let key = ticket.as_any().encode_to_vec();
        self.stream(&user, &sql, None, &key).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let user = self.identify(&request).await?;
        let (sql, params) = self.prepared_sql(&cmd.prepared_statement_handle, &user)?;
        let ticket = cmd.as_any().encode_to_vec();
        self.flight_info_for(&user, &sql, params, ticket, request.into_inner())
            .await
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let user = self.identify(&request).await?;
        let (sql, params) = self.prepared_sql(&cmd.prepared_statement_handle, &user)?;
        let key = cmd.as_any().encode_to_vec();
        self.stream(&user, &sql, params, &key).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let user = self.identify(&request).await?;
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
        let handle = random_token()?.into_bytes();
        {
            let mut map = self.prepared_map();
            let mine = map.values().filter(|p| p.user == user).count();
            if mine >= self.limits.max_prepared_per_user {
                return Err(Status::resource_exhausted(format!(
                    "too many open prepared statements for {user}: {mine} (flight.max_prepared_per_user); close those no longer used"
                )));
            }
            if map.len() >= self.limits.max_prepared {
                return Err(Status::resource_exhausted(format!(
                    "too many open prepared statements: {} (flight.max_prepared); unused ones close after flight.prepared_ttl",
                    map.len()
                )));
            }
            map.insert(
                handle.clone(),
                Prepared {
                    sql: query.query,
                    user,
                    params: None,
                    last_used: Instant::now(),
                },
            );
        }
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
        let user = self.identify(&request).await?;
        let handle = query.prepared_statement_handle.to_vec();
        self.prepared_sql(&handle, &user)?;
        let batch = read_parameters(request.into_inner(), self.limits.max_parameter_bytes)
            .await
            .inspect_err(|s| warn!(user, error = s.message(), "flight parameters refused"))?;
        let params = batch
            .columns()
            .iter()
            .map(|c: &ArrayRef| ScalarValue::try_from_array(c, 0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("parameters: {e}")))?;
        if let Some(p) = self.prepared_map().get_mut(&handle) {
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
        let user = self.identify(&request).await?;
        let mut map = self.prepared_map();
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
        let user = self.identify(&request).await?;
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
        self.identify(&request).await?;
        Err(Status::permission_denied(
            "updates are not allowed: this endpoint is read-only",
        ))
    }

    async fn do_put_statement_ingest(
        &self,
        _cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        self.identify(&request).await?;
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
        self.metadata_info(request, &schema, query.as_any()).await
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.identify(&request).await?;
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
        self.metadata_info(request, &schema, query.as_any()).await
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.identify(&request).await?;
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
        self.metadata_info(request, &schema, query.as_any()).await
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.identify(&request).await?;
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
        self.metadata_info(request, &schema, query.as_any()).await
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.identify(&request).await?;
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
        self.metadata_info(request, &schema, query.as_any()).await
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.identify(&request).await?;
        let b = query.into_builder(&self.info);
        let schema = b.schema();
        Ok(Self::one_batch(schema, b.build()))
    }

    async fn do_get_fallback(
        &self,
        request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.identify(&request).await?;
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
    warn_about_secrets(&opts.auth);
    let message_limit = (2 << 20).max(opts.limits.max_parameter_bytes + (64 << 10));
    let svc = FlightServiceServer::new(FlightSql::new(engine, opts.auth, opts.limits))
        .max_decoding_message_size(message_limit);
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(64))
        .http2_keepalive_interval(Some(Duration::from_secs(60)));
    let tls = opts.tls.is_some();
    if let Some((cert, key)) = opts.tls {
        builder = builder
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .map_err(FlightServerError::Tls)?;
    }
    if !tls && !local.ip().is_loopback() {
        warn!(
            addr = %local,
            "Flight SQL listens beyond loopback WITHOUT TLS: passwords, tokens and results cross the network in clear; set flight.tls_cert and flight.tls_key"
        );
    }
    info!(addr = %local, tls, "Flight SQL listening");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    builder
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(FlightServerError::Serve)
}

/// Warn at startup about passwords kept the old way.
fn warn_about_secrets(auth: &Auth) {
    for u in &auth.users {
        match u.written {
            Written::Sha256 => warn!(
                user = %u.name,
                "flight user's password is stored as unsalted SHA-256: rehash it (`flowaudit flight hash-password`) and put the result in `hash` instead of `sha256`"
            ),
            Written::Clear => warn!(
                user = %u.name,
                "flight user's password is written in clear in the configuration: rehash it (`flowaudit flight hash-password`) and put the result in `hash`"
            ),
            Written::Argon2id => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_kept_for_get_flight_info_serves_one_do_get_of_the_same_ticket_and_user() {
        let t0 = Instant::now();
        let mut c: PlanCache<&str> = PlanCache::new();
        c.put("alice", b"q1".to_vec(), "plan 1", t0);
        // Another user's DoGet of the same ticket, or another ticket: not this plan.
        assert_eq!(c.take("mallory", b"q1", t0), None);
        assert_eq!(c.take("alice", b"q2", t0), None);
        // Used once.
        assert_eq!(c.take("alice", b"q1", t0), Some("plan 1"));
        assert_eq!(c.take("alice", b"q1", t0), None);
        // A later GetFlightInfo of the same ticket replaces the earlier plan.
        c.put("alice", b"q1".to_vec(), "old", t0);
        c.put("alice", b"q1".to_vec(), "new", t0);
        assert_eq!(c.entries.len(), 1);
        assert_eq!(c.take("alice", b"q1", t0), Some("new"));
        // Too old: planned again.
        c.put("alice", b"q1".to_vec(), "stale", t0);
        assert_eq!(c.take("alice", b"q1", t0 + PLAN_KEPT), None);
        // Bounded: GetFlightInfo without DoGet keeps at most PLANS_KEPT, the newest.
        for i in 0..PLANS_KEPT + 10 {
            c.put("bob", format!("q{i}").into_bytes(), "p", t0);
        }
        assert_eq!(c.entries.len(), PLANS_KEPT);
        assert_eq!(c.take("bob", b"q0", t0), None);
        assert_eq!(
            c.take("bob", format!("q{}", PLANS_KEPT + 9).as_bytes(), t0),
            Some("p")
        );
        // Expired plans are dropped when another is kept.
        c.put("carol", b"q".to_vec(), "p", t0 + PLAN_KEPT);
        assert_eq!(c.entries.len(), 1);
    }

    #[test]
    fn basic_credentials_decode_in_every_alphabet() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        for e in [STANDARD, URL_SAFE_NO_PAD] {
            let (u, p) = decode_basic(&e.encode("alice:correct horse?>")).unwrap();
            assert_eq!((u.as_str(), p.as_str()), ("alice", "correct horse?>"));
        }
        assert!(decode_basic("%%%").is_err());
        assert!(decode_basic(&STANDARD.encode("no colon")).is_err());
    }
}
