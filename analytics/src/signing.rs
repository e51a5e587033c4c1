//! Signed reports: `report.sig.json` beside a report binds the SHA-256 of each report file, the
//! window and the Delta log heads of the ingest tables to an Ed25519 signature by the auditor's key.
//!
//! The signed statement is a JSON object serialised with sorted keys and no whitespace; the
//! signature is over those bytes. Keys are PKCS#8 PEM files, as `openssl genpkey -algorithm
//! ed25519` writes them (the public half: `openssl pkey -in key.pem -pubout`).
//!
//! Signatures are checked with `verify_strict`: besides a wrong signature it refuses weak public
//! keys (points of small order, for which one signature fits every statement), signatures whose
//! `R` has small order and non-canonical `S`, so that exactly one signature by the auditor's
//! key is valid for a statement. The statement must cover every report file.
use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
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
/// The signed statement's exact bytes and the raw 64-byte signature, beside it, so that
/// `openssl pkeyutl -verify -rawin` checks a report with no JSON canonicalisation
/// (docs/evidence.md).
pub const STATEMENT_FILE: &str = "report.statement.json";
pub const RAW_SIGNATURE_FILE: &str = "report.sig";

fn sha256_hex(path: &Path) -> Result<String, String> {
    flowaudit_ingest::writer::sha256_file(path).map_err(|e| e.to_string())
}

/// The Ed25519 private key in the PKCS#8 PEM file `key`.
pub fn load_signing_key(key: &Path) -> Result<SigningKey, String> {
    let pem = std::fs::read_to_string(key).map_err(|e| format!("{}: {e}", key.display()))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        format!(
            "{}: not an Ed25519 private key in PKCS#8 PEM: {e}",
            key.display()
        )
    })
}

/// The Ed25519 public key in the PEM file `path`; a weak key (a point of small order, for which
/// one signature fits every statement) is refused.
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let vk = VerifyingKey::from_public_key_pem(&pem)
        .map_err(|e| format!("{}: not an Ed25519 public key in PEM: {e}", path.display()))?;
    if vk.is_weak() {
        return Err(format!(
            "{}: a weak public key (a point of small order, for which one signature fits every statement): refused",
            path.display()
        ));
    }
    Ok(vk)
}

/// Does the raw 64-byte `signature` verify strictly (see above) for `data` with `key`?
pub fn signed_by(key: &VerifyingKey, data: &[u8], signature: &[u8]) -> bool {
    <[u8; 64]>::try_from(signature)
        .is_ok_and(|b| key.verify_strict(data, &Signature::from_bytes(&b)).is_ok())
}

/// Sign the report in `dir` (written by `report::write`) with the PKCS#8 PEM key at `key`.
pub fn sign(dir: &Path, report: &Value, key: &Path) -> Result<std::path::PathBuf, String> {
    let sk = load_signing_key(key)?;
    let mut files = serde_json::Map::new();
    for f in SIGNED_FILES {
        files.insert(f.to_string(), json!(sha256_hex(&dir.join(f))?));
    }
    let statement = json!({
        "schema": "flowaudit.signature/1",
        "window": report["window"],
        "generated_at": report["generated_at"],
        "log_heads": report["appendix"]["log_heads"],
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
    let write = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).map_err(|e| format!("{}: {e}", p.display()))
    };
    write(STATEMENT_FILE, &bytes)?;
    write(RAW_SIGNATURE_FILE, &sig.to_bytes())?;
    let out = dir.join(SIGNATURE_FILE);
    write(
        SIGNATURE_FILE,
        (serde_json::to_string_pretty(&doc).expect("json") + "\n").as_bytes(),
    )?;
    Ok(out)
}

/// What checking a signed report found.
#[derive(Debug, Default)]
pub struct ReportCheck {
    /// The Delta log heads the signed report was built on.
    pub log_heads: Vec<flowaudit_ingest::warehouse::TableHead>,
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
        .verify_strict(&bytes, &Signature::from_bytes(&sig_bytes))
        .is_err()
    {
        c.problems.push(if vk.is_weak() {
            format!(
                "{}: a weak public key (a point of small order, for which one signature fits every statement): refused",
                public_key.display()
            )
        } else {
            format!(
                "{}: the signature does not match this public key and statement (wrong key, the statement was edited, or a non-canonical signature)",
                sig_path.display()
            )
        });
        return Ok(c);
    }
    for f in SIGNED_FILES {
        if statement["files"].get(f).is_none() {
            c.problems
                .push(format!("{f}: not covered by the signed statement"));
        }
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
    if let Some(heads) = statement["log_heads"].as_array() {
        for h in heads {
            match serde_json::from_value(h.clone()) {
                Ok(h) => c.log_heads.push(h),
                Err(e) => c
                    .problems
                    .push(format!("a signed log head is malformed: {e}")),
            }
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report directory with every signed file, and its signature document.
    fn signed_report(dir: &Path) -> (Value, Value) {
        for f in SIGNED_FILES {
            std::fs::write(dir.join(f), format!("{f} body\n")).unwrap();
        }
        let report = json!({"window": {"from": "2026-11-21", "to": "2026-11-21"},
            "generated_at": "2026-11-22T00:00:00Z", "appendix": {"log_heads": [{"table": "flows", "version": 3, "hash": "ab"}]}});
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let key = dir.join("auditor.pem");
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        std::fs::write(
            &key,
            sk.to_pkcs8_pem(Default::default()).unwrap().as_bytes(),
        )
        .unwrap();
        sign(dir, &report, &key).unwrap();
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(SIGNATURE_FILE)).unwrap())
                .unwrap();
        (report, doc)
    }

    fn public_pem(dir: &Path, key: [u8; 32]) -> std::path::PathBuf {
        // SubjectPublicKeyInfo of an Ed25519 key: a fixed 12-byte prefix and the 32 key bytes.
        let mut der = hex::decode("302a300506032b6570032100").unwrap();
        der.extend_from_slice(&key);
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let p = dir.join(format!("pub-{}.pem", hex::encode(&key[..4])));
        std::fs::write(
            &p,
            format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"),
        )
        .unwrap();
        p
    }

    #[test]
    fn a_good_signature_passes() {
        let dir = tempfile::tempdir().unwrap();
        let (_, doc) = signed_report(dir.path());
        let pk: [u8; 32] = hex::decode(doc["public_key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let c = check(dir.path(), &public_pem(dir.path(), pk)).unwrap();
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(
            c.log_heads,
            vec![flowaudit_ingest::warehouse::TableHead {
                table: "flows".into(),
                version: 3,
                hash: "ab".into()
            }]
        );
    }

    /// The identity point as public key, `R` = identity and `S` = 0: `[S]B = R + [k]A` holds for
    /// every statement, so plain `verify` accepts this "signature" of anything. `verify_strict`
    /// refuses small-order keys and `R`.
    #[test]
    fn a_small_order_key_and_its_universal_signature_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        signed_report(dir.path());
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let forged = [identity.to_vec(), vec![0u8; 32]].concat();
        let sig_path = dir.path().join(SIGNATURE_FILE);
        let mut doc: Value =
            serde_json::from_str(&std::fs::read_to_string(&sig_path).unwrap()).unwrap();
        doc["statement"]["window"]["to"] = json!("2026-12-31");
        doc["public_key"] = json!(hex::encode(identity));
        doc["signature"] = json!(hex::encode(&forged));
        std::fs::write(&sig_path, doc.to_string()).unwrap();
        let weak = public_pem(dir.path(), identity);
        // The forgery is one that the non-strict check lets through.
        let vk =
            VerifyingKey::from_public_key_pem(&std::fs::read_to_string(&weak).unwrap()).unwrap();
        let bytes = serde_json::to_vec(&doc["statement"]).unwrap();
        let sig = Signature::from_bytes(&forged.clone().try_into().unwrap());
        use ed25519_dalek::Verifier;
        assert!(
            vk.verify(&bytes, &sig).is_ok(),
            "the forgery is not a forgery"
        );
        let c = check(dir.path(), &weak).unwrap();
        assert!(
            c.problems.len() == 1 && c.problems[0].contains("weak public key"),
            "{:?}",
            c.problems
        );
    }

    #[test]
    fn a_non_canonical_s_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut doc) = signed_report(dir.path());
        let pk: [u8; 32] = hex::decode(doc["public_key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        // S + L, the group order added to S: the same point equation, a second encoding.
        let mut sig = hex::decode(doc["signature"].as_str().unwrap()).unwrap();
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = sig[32 + i] as u16 + L[i] as u16 + carry;
            sig[32 + i] = v as u8;
            carry = v >> 8;
        }
        assert_eq!(carry, 0);
        doc["signature"] = json!(hex::encode(&sig));
        std::fs::write(dir.path().join(SIGNATURE_FILE), doc.to_string()).unwrap();
        let c = check(dir.path(), &public_pem(dir.path(), pk)).unwrap();
        assert!(
            c.problems.len() == 1 && c.problems[0].contains("does not match"),
            "{:?}",
            c.problems
        );
    }

    #[test]
    fn a_statement_that_leaves_a_file_out_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, doc) = signed_report(dir.path());
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let mut statement = doc["statement"].clone();
        statement["files"]
            .as_object_mut()
            .unwrap()
            .remove("findings.csv");
        let sig = sk.sign(&serde_json::to_vec(&statement).unwrap());
        let mut doc = doc;
        doc["statement"] = statement;
        doc["signature"] = json!(hex::encode(sig.to_bytes()));
        std::fs::write(dir.path().join(SIGNATURE_FILE), doc.to_string()).unwrap();
        let c = check(
            dir.path(),
            &public_pem(dir.path(), sk.verifying_key().to_bytes()),
        )
        .unwrap();
        assert_eq!(
            c.problems,
            ["findings.csv: not covered by the signed statement"]
        );
    }
}
