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

/// The identity of the database in use, recorded in every commit and Parquet metadata.
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
    stats: LoadStats,
    /// Lookups that hit a corrupt part of an MMDB file.
    corrupt: std::sync::atomic::AtomicU64,
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
    autonomous_system_number: Option<Asn>,
    #[serde(default)]
    asn: Option<Asn>,
}

/// An ASN as an MMDB file stores it: writers pick the smallest unsigned type that holds the
/// number (mmdb-writer stores 64601 as a uint16), some a string (`AS64601`). maxminddb reads
/// each type strictly, so any integer or such string is taken here; one outside u32 is unknown.
struct Asn(Option<u32>);

impl<'de> Deserialize<'de> for Asn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Asn;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an AS number")
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<Asn, E> {
                Ok(Asn(u32::try_from(v).ok()))
            }
            fn visit_u128<E>(self, v: u128) -> std::result::Result<Asn, E> {
                Ok(Asn(u32::try_from(v).ok()))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<Asn, E> {
                Ok(Asn(u32::try_from(v).ok()))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Asn, E> {
                let v = v.trim();
                let digits = v
                    .strip_prefix("AS")
                    .or_else(|| v.strip_prefix("as"))
                    .unwrap_or(v);
                Ok(Asn(digits.parse().ok()))
            }
        }
        d.deserialize_any(V)
    }
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
        Self::from_bytes(path, bytes)
    }

    /// Load a database from its bytes; `path` names the source (errors, the identity) and its
    /// `.mmdb` extension selects the MaxMind reader, anything else is read as CSV ranges.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let geo_err = |msg: String| Error::GeoIp {
            path: path.to_path_buf(),
            msg,
        };
        let is_mmdb = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("mmdb"));
        let (db, kind, stats) = if is_mmdb {
            let reader = maxminddb::Reader::from_source(bytes)
                .map_err(|e| geo_err(format!("not a valid MMDB file: {e}")))?;
            // A corrupt or hostile file is refused here, whole, rather than found one lookup at
            // a time: verify walks the search tree and every record it points to, with the
            // reader's own depth and work limits.
            reader
                .verify()
                .map_err(|e| geo_err(format!("not a valid MMDB file: {e}")))?;
            (Db::Mmdb(Box::new(reader)), "mmdb", LoadStats::default())
        } else {
            let text = std::str::from_utf8(&bytes).map_err(|e| {
                geo_err(format!(
                    "CSV is not valid UTF-8 (at byte {})",
                    e.valid_up_to()
                ))
            })?;
            let (db, stats) = parse_ranges(text).map_err(geo_err)?;
            (db, "csv", stats)
        };
        if stats.conflicts > 0 {
            tracing::warn!(
                path = %path.display(),
                conflicts = stats.conflicts,
                example = stats.first_conflict.as_deref().unwrap_or(""),
                "GeoIP database lists the same range with different values; the first line wins"
            );
        }
        tracing::info!(
            path = %path.display(),
            kind,
            ranges = stats.ranges,
            nested = stats.nested,
            partial_overlaps = stats.partial_overlaps,
            duplicates = stats.duplicates,
            "GeoIP database loaded"
        );
        Ok(Self {
            db,
            identity: GeoIpIdentity {
                path: path.to_path_buf(),
                kind,
                sha256,
            },
            stats,
            corrupt: Default::default(),
        })
    }

    pub fn identity(&self) -> &GeoIpIdentity {
        &self.identity
    }

    /// What loading found in the file (zero for MMDB, which resolves nesting itself).
    pub fn stats(&self) -> &LoadStats {
        &self.stats
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
            // The file was verified at load; a record that still fails to decode (or a field of
            // another type than expected) leaves the address unknown, counted and warned once.
            Db::Mmdb(reader) => match reader.lookup(ip).and_then(|r| r.decode::<MmdbRecord>()) {
                Ok(Some(rec)) => GeoInfo {
                    country: rec
                        .country
                        .and_then(|c| c.iso_code)
                        .or(rec.country_code)
                        .or(rec.registered_country.and_then(|c| c.iso_code))
                        .and_then(country_code),
                    asn: rec
                        .autonomous_system_number
                        .and_then(|a| a.0)
                        .or(rec.asn.and_then(|a| a.0)),
                },
                Ok(None) => GeoInfo::default(),
                Err(e) => {
                    if self
                        .corrupt
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        == 0
                    {
                        tracing::warn!(
                            path = %self.identity.path.display(),
                            %ip,
                            error = %e,
                            "the MMDB record of this address cannot be read; it is unknown"
                        );
                    }
                    GeoInfo::default()
                }
            },
        }
    }
}

/// What loading a CSV range database found. Real range databases nest (a block of one country
/// with a few addresses carved out for another): the most specific (smallest) range that contains
/// an address decides it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Range lines read (IPv4 and IPv6).
    pub ranges: usize,
    /// Ranges that lie inside a larger one (resolved: the smaller wins).
    pub nested: usize,
    /// Ranges that overlap another without either containing the other (resolved: the smaller
    /// wins where they overlap; of two the same size, the one that starts later).
    pub partial_overlaps: usize,
    /// The same range twice with the same values (kept once).
    pub duplicates: usize,
    /// True conflicts: the same range twice with different values (the first line wins).
    pub conflicts: usize,
    /// The first conflict, as `line N: RANGE is XX, line M says YY`.
    pub first_conflict: Option<String>,
    /// Disjoint segments held after resolution (what lookups search).
    pub segments: usize,
}

fn find<T: Ord + Copy>(ranges: &[(T, T, GeoInfo)], key: T) -> GeoInfo {
    let i = ranges.partition_point(|(start, _, _)| *start <= key);
    match i.checked_sub(1).map(|i| &ranges[i]) {
        Some((_, end, info)) if key <= *end => *info,
        _ => GeoInfo::default(),
    }
}

/// An address as an integer: IPv4 as `u32`, IPv6 as `u128`.
trait Addr: Ord + Copy + std::fmt::Debug {
    fn succ(self) -> Option<Self>;
    fn pred(self) -> Option<Self>;
    fn span(self, end: Self) -> u128;
    fn show(self) -> String;
}

impl Addr for u32 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn pred(self) -> Option<Self> {
        self.checked_sub(1)
    }
    fn span(self, end: Self) -> u128 {
        u128::from(end - self)
    }
    fn show(self) -> String {
        std::net::Ipv4Addr::from(self).to_string()
    }
}

impl Addr for u128 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn pred(self) -> Option<Self> {
        self.checked_sub(1)
    }
    fn span(self, end: Self) -> u128 {
        end - self
    }
    fn show(self) -> String {
        std::net::Ipv6Addr::from(self).to_string()
    }
}

/// One range line as read: start, end (inclusive), values, line number.
type Line<T> = (T, T, GeoInfo, usize);

/// Turn possibly nested or overlapping ranges into sorted disjoint segments where every address
/// gets the values of the smallest range containing it.
fn resolve<T: Addr>(mut lines: Vec<Line<T>>, stats: &mut LoadStats) -> Vec<(T, T, GeoInfo)> {
    // The same range more than once: the first line wins; different values are a conflict.
    lines.sort_unstable_by_key(|&(s, e, _, n)| (s, std::cmp::Reverse(e), n));
    // (start, then the larger first: an enclosing range comes before what it encloses)
    lines.dedup_by(|later, first| {
        if (later.0, later.1) != (first.0, first.1) {
            return false;
        }
        if later.2 == first.2 {
            stats.duplicates += 1;
        } else {
            stats.conflicts += 1;
            if stats.first_conflict.is_none() {
                stats.first_conflict = Some(format!(
                    "line {}: {}-{} is {}, line {} says {}",
                    first.3,
                    first.0.show(),
                    first.1.show(),
                    describe(&first.2),
                    later.3,
                    describe(&later.2)
                ));
            }
        }
        true
    });
    // Sorted by start (then end): disjoint already is the common case, kept without a map.
    let overlapping = lines.windows(2).any(|w| w[1].0 <= w[0].1);
    if !overlapping {
        return lines.into_iter().map(|(s, e, i, _)| (s, e, i)).collect();
    }
    // Count nesting against the ranges still open in start order (a stack of enclosing ends).
    let mut open: Vec<T> = Vec::new();
    for &(s, e, _, _) in &lines {
        while open.last().is_some_and(|&end| end < s) {
            open.pop();
        }
        match open.last() {
            Some(&end) if e <= end => stats.nested += 1,
            Some(_) => stats.partial_overlaps += 1,
            None => {}
        }
        open.push(e);
    }
    // Paint the largest ranges first so that every smaller one overwrites what it covers.
    lines.sort_by(|a, b| b.0.span(b.1).cmp(&a.0.span(a.1)).then(a.0.cmp(&b.0)));
    let mut map: std::collections::BTreeMap<T, (T, GeoInfo)> = std::collections::BTreeMap::new();
    let mut hit: Vec<(T, T, GeoInfo)> = Vec::new();
    for (s, e, info, _) in lines {
        hit.clear();
        for (&a, &(b, i)) in map.range(..=e).rev() {
            if b < s {
                break;
            }
            hit.push((a, b, i));
        }
        for &(a, b, i) in &hit {
            map.remove(&a);
            if a < s {
                if let Some(p) = s.pred() {
                    map.insert(a, (p, i));
                }
            }
            if b > e {
                if let Some(n) = e.succ() {
                    map.insert(n, (b, i));
                }
            }
        }
        map.insert(s, (e, info));
    }
    // Adjacent segments with the same values become one.
    let mut out: Vec<(T, T, GeoInfo)> = Vec::with_capacity(map.len());
    for (s, (e, info)) in map {
        match out.last_mut() {
            Some(last) if last.2 == info && last.1.succ() == Some(s) => last.1 = e,
            _ => out.push((s, e, info)),
        }
    }
    out
}

fn describe(i: &GeoInfo) -> String {
    let c = i.country_str().unwrap_or("unknown");
    match i.asn {
        Some(a) => format!("{c} AS{a}"),
        None => c.to_string(),
    }
}

/// Parse `start_ip,end_ip,country[,asn[,…]]` lines; a header line and `#` comments are skipped.
/// Nested ranges are resolved (the most specific wins); only malformed lines are errors.
fn parse_ranges(text: &str) -> std::result::Result<(Db, LoadStats), String> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut first = true;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut cols = line.split(',').map(|c| c.trim().trim_matches('"'));
        let (Some(start), Some(end), Some(cc)) = (cols.next(), cols.next(), cols.next()) else {
            return Err(format!("line {}: expected start_ip,end_ip,country", n + 1));
        };
        let asn_col = cols.next();
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
        // `ZZ` (ISO's user-assigned "unknown"), `-` and an empty field mean no country.
        let unknown = cc.is_empty() || cc == "-" || cc.eq_ignore_ascii_case("ZZ");
        let country = if unknown { None } else { country_code(cc) };
        if country.is_none() && !unknown {
            return Err(format!(
                "line {}: \"{cc}\" is not a two-letter country code",
                n + 1
            ));
        }
        let asn = match asn_col.map(|a| a.trim_start_matches("AS")) {
            None | Some("") => None,
            Some(a) => Some(
                a.parse::<u32>()
                    .map_err(|_| format!("line {}: \"{a}\" is not an ASN", n + 1))?,
            ),
        };
        first = false;
        let info = GeoInfo { country, asn };
        match (start, end) {
            (IpAddr::V4(s), IpAddr::V4(e)) if s <= e => {
                v4.push((u32::from(s), u32::from(e), info, n + 1))
            }
            (IpAddr::V6(s), IpAddr::V6(e)) if s <= e => {
                v6.push((u128::from(s), u128::from(e), info, n + 1))
            }
            _ => {
                return Err(format!(
                    "line {}: range {start}-{end} is empty or mixes IPv4 and IPv6",
                    n + 1
                ))
            }
        }
    }
    let mut stats = LoadStats {
        ranges: v4.len() + v6.len(),
        ..LoadStats::default()
    };
    let v4 = resolve(v4, &mut stats);
    let v6 = resolve(v6, &mut stats);
    stats.segments = v4.len() + v6.len();
    Ok((Db::Ranges { v4, v6 }, stats))
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

    fn look(g: &GeoIp, ip: &str) -> Option<String> {
        g.lookup(ip.parse().unwrap())
            .country_str()
            .map(str::to_string)
    }

    #[test]
    fn nested_ranges_resolve_to_the_most_specific() {
        // A /23 with one address carved out, then the rest of the /24 listed again (as the
        // ip-location-db files do), and a block split into three.
        let g = db("2.58.196.0,2.58.197.255,DE\n2.58.197.15,2.58.197.15,BE\n\
                    2.58.197.16,2.58.197.255,DE\n3.2.35.0,3.2.35.63,DE\n3.2.35.40,3.2.35.47,TR\n\
                    3.2.35.48,3.2.35.55,GR\n3.2.35.56,3.2.35.63,DE\n");
        for (ip, cc) in [
            ("2.58.196.0", "DE"),
            ("2.58.197.14", "DE"),
            ("2.58.197.15", "BE"),
            ("2.58.197.16", "DE"),
            ("3.2.35.39", "DE"),
            ("3.2.35.40", "TR"),
            ("3.2.35.47", "TR"),
            ("3.2.35.50", "GR"),
            ("3.2.35.63", "DE"),
        ] {
            assert_eq!(look(&g, ip).as_deref(), Some(cc), "{ip}");
        }
        assert_eq!(look(&g, "3.2.35.64"), None);
        let st = g.stats();
        assert_eq!((st.ranges, st.nested, st.conflicts), (7, 5, 0), "{st:?}");
    }

    #[test]
    fn three_deep_ipv6_nesting_and_whole_space_edges() {
        let g = db(
            "2001:420:4000::,2001:420:7fff:ffff:ffff:ffff:ffff:ffff,JP\n\
                    2001:420:4000::,2001:420:4fff:ffff:ffff:ffff:ffff:ffff,NL\n\
                    2001:420:4000::,2001:420:40ff:ffff:ffff:ffff:ffff:ffff,GB\n\
                    0.0.0.0,255.255.255.255,ZZ\n255.255.255.255,255.255.255.255,US\n\
                    0.0.0.0,0.0.0.0,AU\n",
        );
        assert_eq!(look(&g, "2001:420:4000::1").as_deref(), Some("GB"));
        assert_eq!(look(&g, "2001:420:4100::1").as_deref(), Some("NL"));
        assert_eq!(look(&g, "2001:420:5000::1").as_deref(), Some("JP"));
        assert_eq!(look(&g, "2001:420:8000::"), None);
        assert_eq!(look(&g, "255.255.255.255").as_deref(), Some("US"));
        assert_eq!(look(&g, "0.0.0.0").as_deref(), Some("AU"));
        assert_eq!(look(&g, "9.9.9.9"), None, "ZZ is unknown");
        assert_eq!(g.stats().nested, 4);
    }

    #[test]
    fn partial_overlaps_and_conflicts_are_counted_not_refused() {
        let g = db("1.0.0.0,1.0.0.255,AU\n1.0.0.128,1.0.1.0,NZ\n\
                    5.0.0.0,5.0.0.255,FR\n5.0.0.0,5.0.0.255,IT\n5.0.0.0,5.0.0.255,FR\n");
        assert_eq!(look(&g, "1.0.0.100").as_deref(), Some("AU"));
        // Both cover 1.0.0.200; the smaller range (129 addresses) wins over the /24.
        assert_eq!(look(&g, "1.0.0.200").as_deref(), Some("NZ"));
        assert_eq!(look(&g, "1.0.1.0").as_deref(), Some("NZ"));
        // The same range with two countries: the first line wins, and it is counted.
        assert_eq!(look(&g, "5.0.0.9").as_deref(), Some("FR"));
        let st = g.stats();
        assert_eq!(
            (st.partial_overlaps, st.conflicts, st.duplicates),
            (1, 1, 1),
            "{st:?}"
        );
        let first = st.first_conflict.as_deref().unwrap();
        assert!(
            first.contains("line 3") && first.contains("FR") && first.contains("IT"),
            "{first}"
        );
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.csv");
        for (text, want) in [
            ("1.0.0.0,1.0.0.255,AU\n1.0.1.0,nope,NZ\n", "line 2"),
            (
                "1.0.0.0,1.0.0.255,AU\n1.0.1.0,1.0.0.0,NZ\n",
                "line 2: range 1.0.1.0-1.0.0.0 is empty",
            ),
            ("1.0.0.0,::1,AU\n", "mixes IPv4 and IPv6"),
            (
                "1.0.0.0,1.0.0.255,Germany\n",
                "\"Germany\" is not a two-letter",
            ),
            ("1.0.0.0,1.0.0.255,DE,ASx\n", "is not an ASN"),
            (
                "1.0.0.0,1.0.0.255\n",
                "line 1: expected start_ip,end_ip,country",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = GeoIp::open(&p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("r.csv"), "{text:?}: {e}");
        }
        std::fs::write(&p, b"1.0.0.0,1.0.0.255,\xffDE\n").unwrap();
        let e = GeoIp::open(&p).unwrap_err().to_string();
        assert!(e.contains("not valid UTF-8"), "{e}");
    }
}
