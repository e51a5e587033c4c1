//! `flowaudit geoip`: load a GeoIP database the way ingest and the rules do, say what it holds and
//! look addresses up — to check a new database before deploying it, or to explain a country.
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use flowaudit_ingest::geoip::GeoIp;

use crate::config::FileConfig;

#[derive(Debug, Args)]
pub struct GeoipArgs {
    /// GeoIP database: .mmdb (MaxMind DB) or CSV start_ip,end_ip,country[,asn]. [config: geoip]
    #[arg(long, env = "FLOWAUDIT_GEOIP")]
    pub geoip: Option<PathBuf>,
    /// Addresses to look up (IPv4 or IPv6).
    pub addresses: Vec<IpAddr>,
}

pub fn run(a: GeoipArgs, file: &FileConfig) -> anyhow::Result<()> {
    let path = a
        .geoip
        .or_else(|| file.geoip.clone())
        .context("no GeoIP database: give --geoip FILE (or `geoip` in the config file)")?;
    let started = Instant::now();
    let db = GeoIp::open(&path).with_context(|| format!("load {}", path.display()))?;
    let took = started.elapsed();
    let id = db.identity();
    let st = db.stats();
    println!(
        "database  {} ({}, sha256 {})",
        id.path.display(),
        id.kind,
        id.sha256
    );
    if id.kind == "csv" {
        println!(
            "ranges    {} read: {} nested, {} partly overlapping, {} duplicate, {} conflicting",
            st.ranges, st.nested, st.partial_overlaps, st.duplicates, st.conflicts
        );
        if let Some(c) = &st.first_conflict {
            println!("conflict  {c} (the first line wins)");
        }
        println!(
            "segments  {} disjoint, most specific range wins",
            st.segments
        );
    }
    println!("loaded in {:.3} s", took.as_secs_f64());
    for ip in a.addresses {
        let info = db.lookup(ip);
        let asn = info.asn.map(|n| format!(" AS{n}")).unwrap_or_default();
        println!("{ip}\t{}{asn}", info.country_str().unwrap_or("unknown"));
    }
    Ok(())
}
