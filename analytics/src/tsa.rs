//! RFC 3161 time-stamping: a request over a SHA-256 digest, sent to a Time-Stamping Authority
//! over HTTP (`application/timestamp-query`), and the check of the token it answers with.
//!
//! The response (`TimeStampResp`, DER) is kept whole, as `openssl ts -reply` writes it, so a
//! third party checks it with `openssl ts -verify -in X.tsr -data X -CAfile tsa-ca.pem`. The
//! check here does what that command does: the token is a CMS `SignedData` whose signature is
//! verified by OpenSSL against the TSA's CA with the time-stamping purpose (the signer's
//! certificate must carry the critical `timeStamping` extended key usage), and its `TSTInfo`
//! must hold SHA-256 of exactly the data.
use std::io::Read;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509PurposeId, X509};
use sha2::{Digest, Sha256};

/// Errors of time-stamping and of checking a token, each naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum TsaError {
    #[error("TSA {url}: {msg}")]
    Request { url: String, msg: String },
    #[error("timestamp response: {0}")]
    Malformed(String),
    #[error("timestamp refused by the TSA (status {status}{text})")]
    Refused { status: i64, text: String },
    #[error("timestamp token: {0}")]
    Invalid(String),
}

/// DER object identifier of SHA-256 (2.16.840.1.101.3.4.2.1), content bytes.
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The TSA's time (`genTime`).
    pub gen_time: DateTime<Utc>,
    /// The token's serial number, hex.
    pub serial: String,
}

/// One DER element: its tag, its content, and what follows it.
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), TsaError> {
    let bad = |m: &str| TsaError::Malformed(m.to_string());
    let (&tag, rest) = input
        .split_first()
        .ok_or_else(|| bad("truncated (no tag)"))?;
    let (&first, rest) = rest
        .split_first()
        .ok_or_else(|| bad("truncated (no length)"))?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad("bad length"));
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(bad("truncated (content shorter than its length)"));
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// `tag` and its content, DER-encoded.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER for a non-negative value given big-endian.
fn der_uint(be: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend(trimmed);
    der(0x02, &content)
}

/// A `TimeStampReq` (version 1) for SHA-256 `digest`, with `nonce`, asking for the TSA's
/// certificate in the token.
pub fn request(digest: &[u8; 32], nonce: u64) -> Vec<u8> {
    let alg = der(0x30, &[der(0x06, OID_SHA256), vec![0x05, 0x00]].concat());
    let imprint = der(0x30, &[alg, der(0x04, digest)].concat());
    der(
        0x30,
        &[
            der_uint(&[1]),
            imprint,
            der_uint(&nonce.to_be_bytes()),
            vec![0x01, 0x01, 0xff],
        ]
        .concat(),
    )
}

/// Ask the TSA at `url` for a token over `data`; returns the whole `TimeStampResp` (DER) once
/// its status grants it and it carries a token over `data` with our nonce. The token's signature
/// is not checked here (that needs the TSA's CA: [`verify`]).
pub fn stamp(url: &str, data: &[u8], timeout: Duration) -> Result<Vec<u8>, TsaError> {
    let r = stamp_once(url, data, timeout);
    if r.is_err() {
        flowaudit_ingest::metrics::metrics().tsa_failures.inc();
    }
    r
}

fn stamp_once(url: &str, data: &[u8], timeout: Duration) -> Result<Vec<u8>, TsaError> {
    let digest: [u8; 32] = Sha256::digest(data).into();
    let nonce: u64 = rand::random::<u64>() >> 1;
    let req = request(&digest, nonce);
    let err = |msg: String| TsaError::Request {
        url: url.to_string(),
        msg,
    };
    let resp = ureq::post(url)
        .timeout(timeout)
        .set("Content-Type", "application/timestamp-query")
        .send_bytes(&req)
        .map_err(|e| err(e.to_string()))?;
    let mut body = Vec::new();
    resp.into_reader()
        .take(1 << 20)
        .read_to_end(&mut body)
        .map_err(|e| err(format!("reading the response: {e}")))?;
    let token = token_of(&body)?;
    let info = tst_info_unverified(token)?;
    if info.imprint != digest {
        return Err(TsaError::Invalid(
            "the TSA answered with a token over other data".into(),
        ));
    }
    if info.nonce.as_deref() != Some(&der_uint(&nonce.to_be_bytes())[2..]) {
        return Err(TsaError::Invalid(
            "the TSA's token does not carry the request's nonce".into(),
        ));
    }
    Ok(body)
}

/// The token (`ContentInfo`, DER) of a granted `TimeStampResp`.
fn token_of(resp: &[u8]) -> Result<&[u8], TsaError> {
    let (tag, body, _) = tlv(resp)?;
    if tag != 0x30 {
        return Err(TsaError::Malformed("not a TimeStampResp".into()));
    }
    let (tag, status, rest) = tlv(body)?;
    if tag != 0x30 {
        return Err(TsaError::Malformed("no PKIStatusInfo".into()));
    }
    let (tag, code, more) = tlv(status)?;
    if tag != 0x02 || code.is_empty() || code.len() > 4 {
        return Err(TsaError::Malformed("bad PKIStatus".into()));
    }
    let code = code.iter().fold(0i64, |a, b| (a << 8) | *b as i64);
    if code != 0 && code != 1 {
        let text = match tlv(more) {
            Ok((0x30, strings, _)) => match tlv(strings) {
                Ok((0x0c, s, _)) => format!(": {}", String::from_utf8_lossy(s)),
                _ => String::new(),
            },
            _ => String::new(),
        };
        return Err(TsaError::Refused { status: code, text });
    }
    if rest.is_empty() {
        return Err(TsaError::Malformed("granted, but no token".into()));
    }
    let (_, _, after) = tlv(rest)?;
    Ok(&rest[..rest.len() - after.len()])
}

/// The fields of a `TSTInfo` that are checked.
struct TstInfo {
    imprint: Vec<u8>,
    serial: Vec<u8>,
    gen_time: DateTime<Utc>,
    nonce: Option<Vec<u8>>,
}

/// Parse `TSTInfo` (DER).
fn parse_tst_info(der: &[u8]) -> Result<TstInfo, TsaError> {
    let bad = |m: &str| TsaError::Malformed(format!("TSTInfo: {m}"));
    let (tag, body, _) = tlv(der)?;
    if tag != 0x30 {
        return Err(bad("not a sequence"));
    }
    let (_version, _, rest) = tlv(body)?;
    let (_policy, _, rest) = tlv(rest)?;
    let (tag, imprint, rest) = tlv(rest)?;
    if tag != 0x30 {
        return Err(bad("no messageImprint"));
    }
    let (_, alg, hashed) = tlv(imprint)?;
    let (_, oid, _) = tlv(alg)?;
    if oid != OID_SHA256 {
        return Err(bad("the imprint is not SHA-256"));
    }
    let (tag, hashed, _) = tlv(hashed)?;
    if tag != 0x04 {
        return Err(bad("no hashedMessage"));
    }
    let (tag, serial, rest) = tlv(rest)?;
    if tag != 0x02 {
        return Err(bad("no serialNumber"));
    }
    let (tag, time, mut rest) = tlv(rest)?;
    if tag != 0x18 {
        return Err(bad("no genTime"));
    }
    let text = std::str::from_utf8(time).map_err(|_| bad("genTime is not text"))?;
    let whole = text.trim_end_matches('Z');
    let whole = whole.split('.').next().unwrap_or(whole);
    let gen_time = NaiveDateTime::parse_from_str(whole, "%Y%m%d%H%M%S")
        .map_err(|_| bad("genTime is not a time"))?
        .and_utc();
    let mut nonce = None;
    while !rest.is_empty() {
        let (tag, content, more) = tlv(rest)?;
        if tag == 0x02 {
            nonce = Some(content.to_vec());
        }
        rest = more;
    }
    Ok(TstInfo {
        imprint: hashed.to_vec(),
        serial: serial.to_vec(),
        gen_time,
        nonce,
    })
}

/// `TSTInfo` read out of a token without checking its signature (for the request's own checks).
fn tst_info_unverified(token: &[u8]) -> Result<TstInfo, TsaError> {
    let mut cms = CmsContentInfo::from_der(token)
        .map_err(|e| TsaError::Malformed(format!("not a CMS token: {e}")))?;
    let mut out = Vec::new();
    cms.verify(
        None,
        None,
        None,
        Some(&mut out),
        CMSOptions::NO_SIGNER_CERT_VERIFY | CMSOptions::NO_ATTR_VERIFY | CMSOptions::NOSIGS,
    )
    .map_err(|e| TsaError::Malformed(format!("token content: {e}")))?;
    parse_tst_info(&out)
}

/// Check the `TimeStampResp` `resp` as a token over `data`: its CMS signature, the signer's chain
/// to one of the CA certificates in `ca_pem` with the time-stamping purpose, and that its imprint
/// is SHA-256 of `data`.
pub fn verify(resp: &[u8], data: &[u8], ca_pem: &[u8]) -> Result<TokenInfo, TsaError> {
    let token = token_of(resp)?;
    let mut cms = CmsContentInfo::from_der(token)
        .map_err(|e| TsaError::Malformed(format!("not a CMS token: {e}")))?;
    let cas = X509::stack_from_pem(ca_pem)
        .map_err(|e| TsaError::Invalid(format!("the TSA CA file holds no certificate: {e}")))?;
    if cas.is_empty() {
        return Err(TsaError::Invalid(
            "the TSA CA file holds no certificate".into(),
        ));
    }
    let mut store = X509StoreBuilder::new().map_err(|e| TsaError::Invalid(e.to_string()))?;
    for ca in cas {
        store
            .add_cert(ca)
            .map_err(|e| TsaError::Invalid(e.to_string()))?;
    }
    store
        .set_purpose(X509PurposeId::TIMESTAMP_SIGN)
        .map_err(|e| TsaError::Invalid(e.to_string()))?;
    let store = store.build();
    let untrusted: Stack<X509> = Stack::new().map_err(|e| TsaError::Invalid(e.to_string()))?;
    let mut out = Vec::new();
    cms.verify(
        Some(&untrusted),
        Some(&store),
        None,
        Some(&mut out),
        CMSOptions::empty(),
    )
    .map_err(|e| {
        TsaError::Invalid(format!(
            "its signature or the TSA's certificate does not verify against the TSA CA: {e}"
        ))
    })?;
    let info = parse_tst_info(&out)?;
    if info.imprint != Sha256::digest(data).as_slice() {
        return Err(TsaError::Invalid(
            "it is a valid token over other data (its SHA-256 imprint does not match)".into(),
        ));
    }
    Ok(TokenInfo {
        gen_time: info.gen_time,
        serial: hex::encode(info.serial),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_the_der_openssl_writes() {
        // `openssl ts -query -digest <32 zero bytes> -sha256 -cert` with the nonce fixed: the
        // same fields, in the same order (version, imprint, nonce, certReq).
        let req = request(&[0u8; 32], 0x0102);
        let mut want = vec![
            0x30, 0x3d, 0x02, 0x01, 0x01, 0x30, 0x31, 0x30, 0x0d, 0x06, 0x09,
        ];
        want.extend_from_slice(OID_SHA256);
        want.extend_from_slice(&[0x05, 0x00, 0x04, 0x20]);
        want.extend_from_slice(&[0u8; 32]);
        want.extend_from_slice(&[0x02, 0x02, 0x01, 0x02, 0x01, 0x01, 0xff]);
        assert_eq!(req, want);
        // A nonce with its top bit set gets a leading zero: DER integers are signed.
        let req = request(&[0u8; 32], 0x80);
        assert!(req.ends_with(&[0x02, 0x02, 0x00, 0x80, 0x01, 0x01, 0xff]));
    }

    #[test]
    fn malformed_responses_are_named_not_panics() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x05, 0x30],
        ] {
            assert!(
                matches!(token_of(bad), Err(TsaError::Malformed(_))),
                "{bad:?}"
            );
        }
        // Status 2 (rejection) with its text.
        let status = der(
            0x30,
            &[der_uint(&[2]), der(0x30, &der(0x0c, b"bad alg"))].concat(),
        );
        let resp = der(0x30, &status);
        match token_of(&resp) {
            Err(TsaError::Refused { status: 2, text }) => assert!(text.contains("bad alg")),
            other => panic!("{other:?}"),
        }
    }
}
