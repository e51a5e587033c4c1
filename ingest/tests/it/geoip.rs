//! The MMDB fixture (written by the independent mmdb-writer package) reads back through maxminddb.
use flowaudit_ingest::geoip::GeoIp;

#[test]
fn mmdb_lookup_gives_country_and_asn_for_v4_and_v6() {
    let g = GeoIp::open(&crate::repo("fixtures/geoip/test.mmdb")).unwrap();
    let de = g.lookup("31.10.4.5".parse().unwrap());
    assert_eq!((de.country_str(), de.asn), (Some("DE"), Some(64601)));
    assert_eq!(
        g.lookup("45.36.0.9".parse().unwrap()).country_str(),
        Some("RU")
    );
    assert_eq!(
        g.lookup("2a02:2001::8".parse().unwrap()).country_str(),
        Some("CN")
    );
    assert_eq!(g.lookup("8.8.8.8".parse().unwrap()).country, None);
    assert_eq!(g.identity().kind, "mmdb");
    assert_eq!(g.identity().sha256.len(), 64);
}

#[test]
fn a_corrupt_mmdb_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.mmdb");
    std::fs::write(&p, b"not an mmdb").unwrap();
    let e = GeoIp::open(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad.mmdb") && e.contains("not a valid MMDB"),
        "{e}"
    );
}

/// The corrupt files fuzzing found (out-of-bounds offsets, a pointer cycle that overflowed
/// maxminddb 0.26's stack) are refused whole at load, each with a reason, not found one lookup
/// at a time. (A return of the stack overflow would abort this whole test binary: loud enough.)
#[test]
fn the_corrupt_mmdb_files_fuzzing_found_are_refused_at_load() {
    let dir = crate::repo("fuzz/regressions/geoip_mmdb");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let tmp = tempfile::tempdir().unwrap();
    for f in files {
        let p = tmp.path().join("corrupt.mmdb");
        std::fs::copy(&f, &p).unwrap();
        let e = GeoIp::open(&p)
            .map(|_| ())
            .expect_err(&format!("{} loaded", f.display()))
            .to_string();
        assert!(
            e.contains("corrupt.mmdb") && e.contains("not a valid MMDB file: "),
            "{}: {e}",
            f.display()
        );
    }
}

/// The real ip-location-db database (`make test` fetches it, pinned, into ~/.cache): ~550k IPv4
/// and IPv6 ranges, hundreds of them nested inside others. It loads, and nested addresses get the
/// most specific range's country.
#[test]
fn the_real_database_loads_and_nested_ranges_resolve() {
    let path = std::env::var_os("FLOWAUDIT_REAL_GEOIP").expect(
        "FLOWAUDIT_REAL_GEOIP is not set: run the tests with `make test`, which fetches the database",
    );
    let g = GeoIp::open(std::path::Path::new(&path)).unwrap();
    for (ip, cc) in [
        ("2.58.196.7", "DE"),  // a /23 of Germany …
        ("2.58.197.15", "BE"), // … with one address carved out for Belgium
        ("2.58.197.16", "DE"),
        ("3.2.35.10", "DE"), // a /26 of Germany split around Turkey and Greece
        ("3.2.35.41", "TR"),
        ("3.2.35.50", "GR"),
        ("2001:420:4000::1", "GB"), // three deep: Japan ⊃ the Netherlands ⊃ Great Britain
        ("2001:420:4200::1", "US"),
        ("2001:420:4480::1", "IL"),
        ("2001:420:4488::1", "US"),
        // Japan's 4000–7fff and a larger US range from 6000 overlap without nesting: the
        // smaller range wins where they overlap, the larger has the rest.
        ("2001:420:6000::1", "JP"),
        ("2001:420:8000::1", "US"),
        ("1.0.0.1", "AU"),
    ] {
        assert_eq!(
            g.lookup(ip.parse().unwrap()).country_str(),
            Some(cc),
            "{ip}"
        );
    }
    let st = g.stats();
    assert!(st.ranges > 500_000, "{st:?}");
    assert!(
        st.nested > 500,
        "nested ranges are the norm in real data: {st:?}"
    );
    assert!(
        st.segments >= st.ranges - st.duplicates - st.conflicts - st.nested,
        "{st:?}"
    );
}
