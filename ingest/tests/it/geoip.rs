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
