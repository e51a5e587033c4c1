//! Signed reports: `report.sig.json` beside a report binds the SHA-256 of each report file, the
//! window and the ingest manifest head to an Ed25519 signature by the auditor's key.
//!
//! The signed statement is a JSON object serialised with sorted keys and no whitespace; the
//! signature is over those bytes. Keys are PKCS#8 PEM files, as `openssl genpkey -algorithm
//! ed25519` writes them (the public half: `openssl pkey -in key.pem -pubout`).
use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{json, Value};

/// The files of a report that the signature covers.
pub const SIGNED_FILES: &[&str] = &[
    "report.json",
    "report.html",
    "findings.csv",
    "egress.csv",
    "coverage.csv",
];

/// The signature file's name.
pub const SIGNATURE_FILE: &str = "report.sig.json";

fn sha256_hex(path: &Path) -> Result<String, String> {
    flowaudit_ingest::writer::sha256_file(path).map_err(|e| e.to_string())
}

/// Sign the report in `dir` (written by `report::write`) with the PKCS#8 PEM key at `key`.
pub fn sign(dir: &Path, report: &Value, key: &Path) -> Result<std::path::PathBuf, String> {
    let pem = std::fs::read_to_string(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let sk = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        format!(
            "{}: not an Ed25519 private key in PKCS#8 PEM: {e}",
            key.display()
        )
    })?;
    let mut files = serde_json::Map::new();
    for f in SIGNED_FILES {
        files.insert(f.to_string(), json!(sha256_hex(&dir.join(f))?));
    }
    let statement = json!({
        "schema": "flowaudit.signature/1",
        "window": report["window"],
        "generated_at": report["generated_at"],
        "manifest_head": report["appendix"]["manifest_head"],
        "files": files,
    });
    let bytes = serde_json::to_vec(&statement).expect("json");
    let sig = sk.sign(&bytes);
    let doc = json!({
        "statement": statement,
        "algorithm": "ed25519",
        "public_key": hex::encode(sk.verifying_key().to_bytes()),
        "signature": hex::encode(sig.to_bytes()),
    });
    let out = dir.join(SIGNATURE_FILE);
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&doc).expect("json") + "\n",
    )
    .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

/// What checking a signed report found.
#[derive(Debug, Default)]
pub struct ReportCheck {
    pub manifest_head: Option<(u64, String)>,
    /// Empty when the signature is valid and every covered file is unchanged.
    pub problems: Vec<String>,
}

/// Check the signature of the report in `dir` (or of the report file given) with the PEM public
/// key at `public_key`, and that the report files it covers are unchanged.
pub fn check(report: &Path, public_key: &Path) -> Result<ReportCheck, String> {
    let dir = if report.is_dir() {
        report
    } else {
        report.parent().unwrap_or(Path::new("."))
    };
    let sig_path = dir.join(SIGNATURE_FILE);
    let text = std::fs::read_to_string(&sig_path).map_err(|e| {
        format!(
            "{}: {e} (was the report signed with --sign-key?)",
            sig_path.display()
        )
    })?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", sig_path.display()))?;
    let pem = std::fs::read_to_string(public_key)
        .map_err(|e| format!("{}: {e}", public_key.display()))?;
    let vk = VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
        format!(
            "{}: not an Ed25519 public key in PEM: {e}",
            public_key.display()
        )
    })?;
    let mut c = ReportCheck::default();
    let sig_bytes: [u8; 64] = hex::decode(doc["signature"].as_str().unwrap_or_default())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            format!(
                "{}: the signature is not 64 hex-encoded bytes",
                sig_path.display()
            )
        })?;
    let statement = &doc["statement"];
    let bytes = serde_json::to_vec(statement).expect("json");
    if vk
        .verify(&bytes, &Signature::from_bytes(&sig_bytes))
        .is_err()
    {
        c.problems.push(format!(
            "{}: the signature does not match this public key and statement (wrong key, or the statement was edited)",
            sig_path.display()
        ));
        return Ok(c);
    }
    for (name, want) in statement["files"].as_object().into_iter().flatten() {
        match sha256_hex(&dir.join(name)) {
            Ok(h) if Some(h.as_str()) == want.as_str() => {}
            Ok(h) => c.problems.push(format!(
                "{name}: modified after signing (signed SHA-256 {}, now {h})",
                want.as_str().unwrap_or_default()
            )),
            Err(e) => c.problems.push(format!("{name}: {e}")),
        }
    }
    let head = &statement["manifest_head"];
    if let (Some(seq), Some(hash)) = (head["seq"].as_u64(), head["hash"].as_str()) {
        c.manifest_head = Some((seq, hash.to_string()));
    }
    Ok(c)
}
