//! IP → country (and ASN where the database has it), from a MaxMind-format MMDB file or a CSV of
//! IP ranges (`start_ip,end_ip,country[,asn]`, IPv4 and IPv6). The SHA-256 of the file is the
//! database's identity, recorded with every Parquet file written.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{io_err, Error, Result};

/// What the database says about one address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GeoInfo {
    /// ISO 3166-1 alpha-2, upper case.
    pub country: Option<[u8; 2]>,
    pub asn: Option<u32>,
}

impl GeoInfo {
    pub fn country_str(&self) -> Option<&str> {
        self.country
            .as_ref()
            .and_then(|c| std::str::from_utf8(c).ok())
    }
}

/// The identity of the database in use, recorded in the manifest and Parquet metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoIpIdentity {
    pub path: PathBuf,
    /// `csv` or `mmdb`.
    pub kind: &'static str,
    pub sha256: String,
}

enum Db {
    Ranges {
        v4: Vec<(u32, u32, GeoInfo)>,
        v6: Vec<(u128, u128, GeoInfo)>,
    },
    Mmdb(Box<maxminddb::Reader<Vec<u8>>>),
}

/// A loaded GeoIP database.
pub struct GeoIp {
    db: Db,
    identity: GeoIpIdentity,
}

#[derive(Deserialize)]
struct MmdbCountry<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

/// The fields read from an MMDB record: MaxMind's (`country.iso_code`,
/// `autonomous_system_number`) and the flat layout of ip-location-db/ipinfo (`country_code`, `asn`).
#[derive(Deserialize)]
struct MmdbRecord<'a> {
    #[serde(borrow, default)]
    country: Option<MmdbCountry<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<MmdbCountry<'a>>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
    #[serde(default)]
    autonomous_system_number: Option<u32>,
    #[serde(default)]
    asn: Option<u32>,
}

fn country_code(s: &str) -> Option<[u8; 2]> {
    let b = s.trim().as_bytes();
    (b.len() == 2 && b.iter().all(u8::is_ascii_alphabetic))
        .then(|| [b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()])
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("identity", &self.identity)
            .finish()
    }
}

impl GeoIp {
    /// Load a database; `.mmdb` files are read as MaxMind DB, anything else as CSV ranges.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(io_err("read GeoIP database", path))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let geo_err = |msg: String| Error::GeoIp {
            path: path.to_path_buf(),
            msg,
        };
        let is_mmdb = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("mmdb"));
        let (db, kind) = if is_mmdb {
            let reader = maxminddb::Reader::from_source(bytes)
                .map_err(|e| geo_err(format!("not a valid MMDB file: {e}")))?;
            (Db::Mmdb(Box::new(reader)), "mmdb")
        } else {
            let text =
                String::from_utf8(bytes).map_err(|_| geo_err("CSV is not valid UTF-8".into()))?;
            (parse_ranges(&text).map_err(geo_err)?, "csv")
        };
        Ok(Self {
            db,
            identity: GeoIpIdentity {
                path: path.to_path_buf(),
                kind,
                sha256,
            },
        })
    }

    pub fn identity(&self) -> &GeoIpIdentity {
        &self.identity
    }

    /// Look one address up; unknown addresses give an empty [`GeoInfo`].
    pub fn lookup(&self, ip: IpAddr) -> GeoInfo {
        match &self.db {
            Db::Ranges { v4, v6 } => match ip {
                IpAddr::V4(a) => find(v4, u32::from(a)),
                IpAddr::V6(a) => match a.to_ipv4_mapped() {
                    Some(m) => find(v4, u32::from(m)),
                    None => find(v6, u128::from(a)),
                },
            },
            Db::Mmdb(reader) => match reader.lookup::<MmdbRecord>(ip) {
                Ok(Some(rec)) => GeoInfo {
                    country: rec
                        .country
                        .and_then(|c| c.iso_code)
                        .or(rec.country_code)
                        .or(rec.registered_country.and_then(|c| c.iso_code))
                        .and_then(country_code),
                    asn: rec.autonomous_system_number.or(rec.asn),
                },
                _ => GeoInfo::default(),
            },
        }
    }
}

fn find<T: Ord + Copy>(ranges: &[(T, T, GeoInfo)], key: T) -> GeoInfo {
    let i = ranges.partition_point(|(start, _, _)| *start <= key);
    match i.checked_sub(1).map(|i| &ranges[i]) {
        Some((_, end, info)) if key <= *end => *info,
        _ => GeoInfo::default(),
    }
}

/// Parse `start_ip,end_ip,country[,asn[,…]]` lines; a header line and `#` comments are skipped.
fn parse_ranges(text: &str) -> std::result::Result<Db, String> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut first = true;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line
            .split(',')
            .map(|c| c.trim().trim_matches('"'))
            .collect();
        let (Some(start), Some(end), Some(cc)) = (cols.first(), cols.get(1), cols.get(2)) else {
            return Err(format!("line {}: expected start_ip,end_ip,country", n + 1));
        };
        let (start, end) = match (start.parse::<IpAddr>(), end.parse::<IpAddr>()) {
            (Ok(s), Ok(e)) => (s, e),
            _ if first => {
                first = false;
                continue; // header
            }
            _ => {
                return Err(format!(
                    "line {}: \"{start}\"/\"{end}\" are not IP addresses",
                    n + 1
                ))
            }
        };
        let country = country_code(cc);
        if country.is_none() && !cc.is_empty() && *cc != "ZZ" && *cc != "-" {
            return Err(format!(
                "line {}: \"{cc}\" is not a two-letter country code",
                n + 1
            ));
        }
        let asn = match cols.get(3).map(|a| a.trim_start_matches("AS")) {
            None | Some("") => None,
            Some(a) => Some(
                a.parse::<u32>()
                    .map_err(|_| format!("line {}: \"{a}\" is not an ASN", n + 1))?,
            ),
        };
        first = false;
        let info = GeoInfo { country, asn };
        match (start, end) {
            (IpAddr::V4(s), IpAddr::V4(e)) if s <= e => v4.push((u32::from(s), u32::from(e), info)),
            (IpAddr::V6(s), IpAddr::V6(e)) if s <= e => {
                v6.push((u128::from(s), u128::from(e), info))
            }
            _ => {
                return Err(format!(
                    "line {}: range {start}-{end} is empty or mixes IPv4 and IPv6",
                    n + 1
                ))
            }
        }
    }
    v4.sort_unstable_by_key(|r| r.0);
    v6.sort_unstable_by_key(|r| r.0);
    check_overlaps(&v4).map_err(|(a, b)| {
        format!(
            "IPv4 ranges overlap at {} and {}",
            std::net::Ipv4Addr::from(a),
            std::net::Ipv4Addr::from(b)
        )
    })?;
    check_overlaps(&v6).map_err(|(a, b)| {
        format!(
            "IPv6 ranges overlap at {} and {}",
            std::net::Ipv6Addr::from(a),
            std::net::Ipv6Addr::from(b)
        )
    })?;
    Ok(Db::Ranges { v4, v6 })
}

fn check_overlaps<T: Ord + Copy>(r: &[(T, T, GeoInfo)]) -> std::result::Result<(), (T, T)> {
    match r.windows(2).find(|w| w[1].0 <= w[0].1) {
        Some(w) => Err((w[0].0, w[1].0)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(text: &str) -> GeoIp {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ranges.csv");
        std::fs::write(&p, text).unwrap();
        GeoIp::open(&p).unwrap()
    }

    #[test]
    fn csv_ranges_look_up_v4_and_v6_with_optional_asn() {
        let g = db("start_ip,end_ip,country,asn\n1.0.0.0,1.0.0.255,AU,13335\n2001:db8::,2001:db8::ffff,de,\n");
        assert_eq!(
            g.lookup("1.0.0.7".parse().unwrap()).country_str(),
            Some("AU")
        );
        assert_eq!(g.lookup("1.0.0.7".parse().unwrap()).asn, Some(13335));
        assert_eq!(g.lookup("1.0.1.0".parse().unwrap()), GeoInfo::default());
        assert_eq!(
            g.lookup("2001:db8::12".parse().unwrap()).country_str(),
            Some("DE")
        );
        assert_eq!(
            g.lookup("::ffff:1.0.0.1".parse().unwrap()).country_str(),
            Some("AU")
        );
        assert_eq!(g.identity().kind, "csv");
        assert_eq!(g.identity().sha256.len(), 64);
    }

    #[test]
    fn overlapping_or_bad_ranges_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.csv");
        std::fs::write(&p, "1.0.0.0,1.0.0.255,AU\n1.0.0.128,1.0.1.0,NZ\n").unwrap();
        assert!(GeoIp::open(&p).unwrap_err().to_string().contains("overlap"));
        std::fs::write(&p, "1.0.0.0,1.0.0.255,AU\n1.0.1.0,nope,NZ\n").unwrap();
        assert!(GeoIp::open(&p).unwrap_err().to_string().contains("line 2"));
    }
}
