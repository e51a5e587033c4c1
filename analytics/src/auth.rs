//! Who may use the Flight SQL endpoint: credentials from the configuration, password hashing,
//! and the throttle on failed logins.
//!
//! - **Passwords** are stored as argon2id hashes in PHC string format (`$argon2id$v=19$…`, made
//!   by `flowaudit flight hash-password`). A login costs one argon2 verification; the Handshake
//!   then hands out a session token, and the calls after it cost a hash-map look-up. Older
//!   entries holding the unsalted SHA-256 of a password, and passwords written in clear, are
//!   still accepted, each with a warning at startup to rehash.
//! - **Tokens** (`[[flight.tokens]]`) are random strings chosen by the operator: their SHA-256
//!   is enough (there is nothing to guess from it) and it keeps every call cheap.
//! - **Throttle.** After `max_failures` failed logins from one address within `window`, that
//!   address is refused (even with a correct password) for `lockout`. The table of addresses is
//!   bounded: when it is full, entries that hold nothing are dropped first, then the oldest.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A credential that could not be read, or a hash that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{name}: sha256 must be 64 hex digits")]
    BadSha256 { name: String },
    #[error("{name}: not an argon2id hash in PHC format ($argon2id$v=19$m=…,t=…,p=…$SALT$HASH): {reason}")]
    BadHash { name: String, reason: String },
    #[error("hashing the password: {0}")]
    Hashing(String),
    #[error("reading random bytes from /dev/urandom: {0}")]
    Random(#[from] std::io::Error),
}

/// How a secret is kept in memory.
#[derive(Clone)]
pub enum Stored {
    /// An argon2id PHC string, checked when the configuration was read.
    Argon2id(String),
    /// The SHA-256 of the secret.
    Sha256([u8; 32]),
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stored::Argon2id(_) => "Argon2id(…)",
            Stored::Sha256(_) => "Sha256(…)",
        })
    }
}

/// How the secret was written in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Argon2id,
    /// `sha256 = "…"`: unsalted, to be rehashed (for a password).
    Sha256,
    /// `password = "…"` or `token = "…"`.
    Clear,
}

/// A credential from the configuration: its owner and the stored secret.
#[derive(Debug, Clone)]
pub struct Credential {
    pub name: String,
    pub stored: Stored,
    pub written: Written,
}

impl Credential {
    /// From a secret written in clear (kept only as its SHA-256).
    pub fn from_secret(name: &str, secret: &str) -> Self {
        Self {
            name: name.into(),
            stored: Stored::Sha256(Sha256::digest(secret.as_bytes()).into()),
            written: Written::Clear,
        }
    }

    /// From the hex SHA-256 of the secret, as `printf %s SECRET | sha256sum` prints it.
    pub fn from_sha256_hex(name: &str, hex_digest: &str) -> Result<Self, AuthError> {
        let bytes = hex::decode(hex_digest.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| AuthError::BadSha256 { name: name.into() })?;
        let mut d = [0u8; 32];
        d.copy_from_slice(&bytes);
        Ok(Self {
            name: name.into(),
            stored: Stored::Sha256(d),
            written: Written::Sha256,
        })
    }

    /// From an argon2id PHC string; its parameters are checked now, not at the first login.
    pub fn from_phc(name: &str, phc: &str) -> Result<Self, AuthError> {
        let bad = |reason: String| AuthError::BadHash {
            name: name.into(),
            reason,
        };
        let phc = phc.trim();
        let parsed = PasswordHash::new(phc).map_err(|e| bad(e.to_string()))?;
        if parsed.algorithm.as_str() != "argon2id" {
            return Err(bad(format!(
                "the algorithm is {}, not argon2id",
                parsed.algorithm
            )));
        }
        if parsed.hash.is_none() || parsed.salt.is_none() {
            return Err(bad("no salt or no hash".into()));
        }
        argon2::Params::try_from(&parsed).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            name: name.into(),
            stored: Stored::Argon2id(phc.to_string()),
            written: Written::Argon2id,
        })
    }

    /// Whether `secret` is this credential's (argon2 for a hash: tens of milliseconds).
    pub fn verify(&self, secret: &str) -> bool {
        match &self.stored {
            Stored::Sha256(d) => {
                let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
                d.ct_eq(&digest).into()
            }
            Stored::Argon2id(phc) => verify_phc(phc, secret),
        }
    }
}

fn verify_phc(phc: &str, secret: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(secret.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of nothing anyone knows, verified for an unknown user name so that a login takes
/// as long whether the name exists or not.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_password("flowaudit: no such user").unwrap_or_else(|_| {
            // Deterministic fallback (the salt only has to be valid): same cost, no randomness.
            let salt = SaltString::encode_b64(b"flowaudit-dummy-salt").expect("valid salt");
            Argon2::default()
                .hash_password(b"flowaudit: no such user", &salt)
                .map(|h| h.to_string())
                .unwrap_or_default()
        })
    })
}

/// Check a user name and password against the configured users: the user's name selects the
/// entry, and an unknown name costs one argon2 verification too.
pub fn check_user<'a>(users: &'a [Credential], name: &str, password: &str) -> Option<&'a str> {
    match users.iter().find(|c| c.name == name) {
        Some(c) => c.verify(password).then_some(c.name.as_str()),
        None => {
            verify_phc(dummy_hash(), password);
            None
        }
    }
}

/// Compare a presented token with every configured token digest (each in constant time, all of
/// them every time) and return the matching one's name.
pub fn check_token<'a>(tokens: &'a [Credential], token: &str) -> Option<&'a str> {
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut found = None;
    for c in tokens {
        let ok = match &c.stored {
            Stored::Sha256(d) => d.ct_eq(&digest).into(),
            Stored::Argon2id(phc) => verify_phc(phc, token),
        };
        if ok {
            found = Some(c.name.as_str());
        }
    }
    found
}

/// `n` random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], std::io::Error> {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// The argon2id hash of `password` (default parameters: 19 MiB, 2 passes, 1 lane; a random
/// 16-byte salt) in PHC string format, for `[[flight.users]] hash = "…"`.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| AuthError::Hashing(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hashing(e.to_string()))
}

/// Limits of the failed-login throttle.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleConfig {
    /// Failed logins from one address within `window` that lock it out.
    pub max_failures: u32,
    pub window: Duration,
    /// How long a locked-out address is refused.
    pub lockout: Duration,
    /// Addresses tracked at most (bounds the table's memory).
    pub max_peers: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window: Duration::from_secs(300),
            lockout: Duration::from_secs(300),
            max_peers: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    window_start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

/// Failed logins per client address.
#[derive(Debug)]
pub struct LoginThrottle {
    cfg: ThrottleConfig,
    peers: Mutex<HashMap<IpAddr, Peer>>,
}

/// A refused attempt: the address is locked out for `retry_after` more.
#[derive(Debug, Clone, Copy)]
pub struct LockedOut {
    pub retry_after: Duration,
    pub failures: u32,
}

impl LoginThrottle {
    pub fn new(cfg: ThrottleConfig) -> Self {
        Self {
            cfg,
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Peer>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuse `peer` while it is locked out.
    pub fn check(&self, peer: IpAddr) -> Result<(), LockedOut> {
        let now = Instant::now();
        match self.lock().get(&peer).and_then(|p| p.locked_until) {
            Some(until) if until > now => Err(LockedOut {
                retry_after: until - now,
                failures: self.cfg.max_failures,
            }),
            _ => Ok(()),
        }
    }

    /// Record a failed login; `Err` when this failure locked the address out.
    pub fn failed(&self, peer: IpAddr) -> Result<(), LockedOut> {
        let now = Instant::now();
        let mut peers = self.lock();
        if !peers.contains_key(&peer) && peers.len() >= self.cfg.max_peers {
            self.make_room(&mut peers, now);
        }
        let p = peers.entry(peer).or_insert(Peer {
            window_start: now,
            failures: 0,
            locked_until: None,
            last: now,
        });
        if now.duration_since(p.window_start) > self.cfg.window {
            p.window_start = now;
            p.failures = 0;
        }
        p.failures += 1;
        p.last = now;
        if p.failures >= self.cfg.max_failures {
            p.locked_until = Some(now + self.cfg.lockout);
            p.failures = 0;
            p.window_start = now;
            return Err(LockedOut {
                retry_after: self.cfg.lockout,
                failures: self.cfg.max_failures,
            });
        }
        Ok(())
    }

    /// Drop entries that hold nothing any more; if none, the one least recently seen.
    fn make_room(&self, peers: &mut HashMap<IpAddr, Peer>, now: Instant) {
        let cfg = self.cfg;
        peers.retain(|_, p| {
            p.locked_until.is_some_and(|u| u > now)
                || now.duration_since(p.window_start) <= cfg.window
        });
        if peers.len() >= cfg.max_peers {
            if let Some(oldest) = peers.iter().min_by_key(|(_, p)| p.last).map(|(k, _)| *k) {
                peers.remove(&oldest);
            }
        }
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }
}

/// `flowaudit flight …`: tools for the Flight SQL endpoint's configuration.
#[derive(Debug, clap::Args)]
pub struct FlightArgs {
    #[command(subcommand)]
    pub command: FlightCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum FlightCommand {
    /// Read a password from stdin (without echo at a terminal) and print its argon2id hash for
    /// `[[flight.users]] hash = "…"`.
    HashPassword,
}

/// Run `flowaudit flight …`.
pub fn run_flight(a: FlightArgs) -> anyhow::Result<()> {
    match a.command {
        FlightCommand::HashPassword => {
            let password = read_password()?;
            if password.is_empty() {
                anyhow::bail!("empty password: type one (or pipe it in) followed by Enter");
            }
            println!("{}", hash_password(&password)?);
            Ok(())
        }
    }
}

/// One line from stdin, without its line end; at a terminal, prompted and not echoed.
fn read_password() -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let mut line = String::new();
    if tty {
        eprint!("Password: ");
        let _echo = EchoOff::new();
        stdin.lock().read_line(&mut line)?;
        eprintln!();
    } else {
        stdin.lock().read_line(&mut line)?;
    }
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string())
}

/// Terminal echo off on stdin until dropped.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> Self {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return Self(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return Self(None);
            }
            Self(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restoring the settings read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_hashes_verify_and_other_entries_still_work() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        let alice = Credential::from_phc("alice", &phc).unwrap();
        assert_eq!(alice.written, Written::Argon2id);
        let bob = Credential::from_sha256_hex(
            "bob",
            // printf %s hunter2 | sha256sum
            "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7",
        )
        .unwrap();
        let carol = Credential::from_secret("carol", "s3cret");
        let users = vec![alice, bob, carol];
        assert_eq!(check_user(&users, "alice", "correct horse"), Some("alice"));
        assert_eq!(check_user(&users, "alice", "correct horsE"), None);
        assert_eq!(check_user(&users, "bob", "hunter2"), Some("bob"));
        assert_eq!(check_user(&users, "carol", "s3cret"), Some("carol"));
        assert_eq!(check_user(&users, "carol", "hunter2"), None);
        assert_eq!(check_user(&users, "mallory", "hunter2"), None);
        // Two hashes of one password differ (salted).
        assert_ne!(hash_password("x").unwrap(), hash_password("x").unwrap());
    }

    #[test]
    fn bad_entries_are_refused_when_read() {
        assert!(Credential::from_sha256_hex("x", "abcd").is_err());
        let e = Credential::from_phc(
            "x",
            "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not argon2id"), "{e}");
        assert!(Credential::from_phc("x", "not a hash").is_err());
    }

    #[test]
    fn tokens_match_by_digest() {
        let tokens = vec![
            Credential::from_secret("ci", "tok-1"),
            Credential::from_secret("bi", "tok-2"),
        ];
        assert_eq!(check_token(&tokens, "tok-2"), Some("bi"));
        assert_eq!(check_token(&tokens, "tok-3"), None);
    }

    #[test]
    fn the_throttle_locks_an_address_out_and_lets_it_back_in() {
        let t = LoginThrottle::new(ThrottleConfig {
            max_failures: 3,
            window: Duration::from_secs(60),
            lockout: Duration::from_millis(200),
            max_peers: 2,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(t.failed(a).is_ok());
        assert!(t.failed(a).is_ok());
        assert!(t.check(a).is_ok());
        assert!(t.failed(a).is_err());
        let locked = t.check(a).unwrap_err();
        assert!(locked.retry_after <= Duration::from_millis(200));
        assert!(t.check(b).is_ok(), "another address is not locked");
        std::thread::sleep(Duration::from_millis(250));
        assert!(t.check(a).is_ok(), "the lockout ends");
        // The table never holds more than max_peers addresses.
        for i in 0..100u8 {
            let _ = t.failed(IpAddr::from([10, 1, 0, i]));
        }
        assert!(t.tracked() <= 2, "{}", t.tracked());
    }
}
