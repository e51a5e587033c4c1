//! `flowaudit generate`: a realistic, seeded day of gateway events and network flows, with a
//! documented set of planted violations (written to `planted.json`) so that rules can be checked
//! against it. The same seed and date always give the same bytes.
//!
//! The world comes from the policy folder (`networks.toml`, `employees.csv`, `approvals.csv`) and
//! the GeoIP CSV (addresses are drawn from each country's ranges). Background traffic obeys the
//! policy; every planted violation is listed with its time window and entity.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, NaiveTime, TimeZone, Utc};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;

use crate::error::{io_err, Error, Result};
use crate::networks::Networks;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub date: NaiveDate,
    pub seed: u64,
    pub policy: PathBuf,
    /// GeoIP CSV ranges to draw external addresses from (per country).
    pub geoip_csv: PathBuf,
    /// Approximate number of gateway events.
    pub events: usize,
    /// Number of flow records (at least the egress flows the events imply).
    pub flows: usize,
    /// Malformed messages to mix in (for demos of the quarantine).
    pub malformed: usize,
    /// Encode every flow in this format (`flowaudit`, `goflow2`, `zeek`) instead of each
    /// exporter's own; goflow2 then always writes integer nanoseconds. For benchmarks whose
    /// baselines need one schema per file.
    pub flow_format: Option<String>,
}

/// Which stream a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Gateway,
    Flows,
}

/// One message, ready for Kafka or a JSONL file.
#[derive(Debug, Clone)]
pub struct Message {
    pub key: String,
    pub payload: Vec<u8>,
    pub ts_us: i64,
}

/// A planted violation: what a rule should find.
#[derive(Debug, Clone, Serialize)]
pub struct Planted {
    pub id: String,
    pub kind: &'static str,
    pub severity: &'static str,
    pub from: String,
    pub to: String,
    pub entity: BTreeMap<&'static str, String>,
    pub description: String,
}

/// The planted list, as written to `planted.json`.
#[derive(Debug, Clone, Serialize)]
pub struct PlantedFile {
    pub date: NaiveDate,
    pub seed: u64,
    pub gateway_events: usize,
    pub flows: usize,
    pub malformed_gateway: usize,
    pub malformed_flows: usize,
    pub violations: Vec<Planted>,
}

/// A generated day.
pub struct Generated {
    pub gateway: Vec<Message>,
    pub flows: Vec<Message>,
    pub planted: PlantedFile,
}

struct Employee {
    id: String,
    role: String,
    locations: Vec<String>,
    categories: Vec<String>,
    valid_from: NaiveDate,
    valid_to: NaiveDate,
}

struct Approval {
    ticket: String,
    employee: String,
    categories: Vec<String>,
    country: String,
    valid_from: NaiveDate,
    valid_to: NaiveDate,
}

fn read_csv(path: &Path) -> Result<Vec<BTreeMap<String, String>>> {
    let text = std::fs::read_to_string(path).map_err(io_err("read", path))?;
    let mut lines = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'));
    let header: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let mut out = Vec::new();
    for (n, l) in lines.enumerate() {
        let cols: Vec<&str> = l.split(',').collect();
        if cols.len() != header.len() {
            return Err(Error::Policy {
                path: path.into(),
                msg: format!(
                    "row {}: {} columns, header has {}",
                    n + 2,
                    cols.len(),
                    header.len()
                ),
            });
        }
        out.push(
            header
                .iter()
                .cloned()
                .zip(cols.iter().map(|c| c.trim().to_string()))
                .collect(),
        );
    }
    Ok(out)
}

fn date(path: &Path, s: &str) -> Result<NaiveDate> {
    s.parse().map_err(|_| Error::Policy {
        path: path.into(),
        msg: format!("\"{s}\" is not a date (YYYY-MM-DD)"),
    })
}

fn list(s: &str) -> Vec<String> {
    s.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// IPv4 and IPv6 ranges per country, from a GeoIP CSV.
/// IPv4 and IPv6 ranges of one country.
type Ranges = (Vec<(u32, u32)>, Vec<(u128, u128)>);

struct Pools(BTreeMap<String, Ranges>);

impl Pools {
    fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io_err("read", path))?;
        let mut m: BTreeMap<String, Ranges> = BTreeMap::new();
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let c: Vec<&str> = l.split(',').collect();
            if c.len() < 3 {
                continue;
            }
            match (c[0].parse::<IpAddr>(), c[1].parse::<IpAddr>()) {
                (Ok(IpAddr::V4(a)), Ok(IpAddr::V4(b))) => m
                    .entry(c[2].to_string())
                    .or_default()
                    .0
                    .push((a.into(), b.into())),
                (Ok(IpAddr::V6(a)), Ok(IpAddr::V6(b))) => m
                    .entry(c[2].to_string())
                    .or_default()
                    .1
                    .push((a.into(), b.into())),
                _ => {}
            }
        }
        Ok(Self(m))
    }

    fn ip(&self, rng: &mut ChaCha8Rng, country: &str, v6: bool) -> Result<IpAddr> {
        let (v4s, v6s) = self.0.get(country).ok_or_else(|| {
            Error::Config(format!("the GeoIP CSV has no range for country {country}"))
        })?;
        if v6 && !v6s.is_empty() {
            let (a, b) = v6s[rng.gen_range(0..v6s.len())];
            return Ok(IpAddr::V6(Ipv6Addr::from(
                a + rng.gen_range(1..(b - a).min(1 << 40)),
            )));
        }
        let (a, b) = *v4s
            .choose(rng)
            .ok_or_else(|| Error::Config(format!("no IPv4 range for {country}")))?;
        Ok(IpAddr::V4(Ipv4Addr::from(
            a + rng.gen_range(1..(b - a).max(2)),
        )))
    }
}

/// A flow before it is given an exporter, a sequence number and a format.
struct RawFlow {
    ts_us: i64,
    dur_us: i64,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: &'static str,
    bytes: u64,
    packets: u64,
    /// Forced exporter (planted traffic), else chosen by time.
    exporter: Option<usize>,
}

const EEA_DESTS: &[&str] = &[
    "DE", "FR", "NL", "IE", "AT", "BE", "ES", "IT", "PL", "SE", "DK", "FI",
];

struct Gen<'a> {
    rng: ChaCha8Rng,
    date: NaiveDate,
    day_start_us: i64,
    pools: &'a Pools,
    gateway_v6: BTreeMap<String, IpAddr>,
    gateway: Vec<(i64, String, Vec<u8>)>,
    flows: Vec<RawFlow>,
    planted: Vec<Planted>,
    event_seq: u64,
    session_seq: u64,
}

fn iso(us: i64) -> String {
    crate::decode::fmt_us(us)
}

impl Gen<'_> {
    fn at(&self, h: u32, m: u32, s: u32) -> i64 {
        self.day_start_us + ((h as i64 * 3600 + m as i64 * 60 + s as i64) * 1_000_000)
    }

    fn session_id(&mut self) -> String {
        self.session_seq += 1;
        format!("s-{}-{:05}", self.date, self.session_seq)
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        ts_us: i64,
        gw: &(String, IpAddr),
        emp: &str,
        country: &str,
        role: &str,
        cat: &str,
        action: &str,
        decision: &str,
        ticket: Option<&str>,
        session: &str,
        records: u64,
        dst: Option<IpAddr>,
    ) -> String {
        self.event_seq += 1;
        let id = format!("ev-{}-{:07}", self.date, self.event_seq);
        let bytes = records * self.rng.gen_range(180..2400);
        let v = json!({
            "event_id": id, "ts": iso(ts_us), "gateway_id": gw.0, "employee_id": emp,
            "employee_country": country, "role": role, "data_category": cat, "action": action,
            "decision": decision, "approval_ticket": ticket, "session_id": session,
            "records": records, "bytes": bytes, "dst_ip": dst.map(|d| d.to_string()),
        });
        self.gateway
            .push((ts_us, gw.0.clone(), serde_json::to_vec(&v).expect("json")));
        if decision == "allow" {
            if let Some(dst) = dst {
                let n = self.rng.gen_range(1..=3u64);
                for i in 0..n {
                    let dport = if action == "export" {
                        443
                    } else {
                        *[443u16, 8443].choose(&mut self.rng).expect("non-empty")
                    };
                    let f = RawFlow {
                        ts_us: ts_us + i as i64 * 1_000_000 + self.rng.gen_range(0..500_000),
                        dur_us: self.rng.gen_range(200_000..30_000_000),
                        src: if dst.is_ipv6() {
                            self.gateway_v6.get(&gw.0).copied().unwrap_or(gw.1)
                        } else {
                            gw.1
                        },
                        dst,
                        sport: self.rng.gen_range(32768..61000),
                        dport,
                        proto: "tcp",
                        bytes: bytes / n + 1,
                        packets: bytes / n / 1200 + 1,
                        exporter: None,
                    };
                    self.flows.push(f);
                }
            }
        }
        id
    }

    fn plant(
        &mut self,
        kind: &'static str,
        severity: &'static str,
        from: i64,
        to: i64,
        entity: &[(&'static str, String)],
        description: String,
    ) {
        let entity = entity.iter().cloned().collect();
        self.planted.push(Planted {
            id: String::new(), // numbered in time order once all are planted
            kind,
            severity,
            from: iso(from),
            to: iso(to),
            entity,
            description,
        });
    }
}

/// Generate one day.
pub fn generate(opts: &GenerateOptions) -> Result<Generated> {
    let networks = Networks::load(&opts.policy)?;
    let emp_path = opts.policy.join("employees.csv");
    let mut employees = Vec::new();
    for r in read_csv(&emp_path)? {
        employees.push(Employee {
            id: r["employee_id"].clone(),
            role: r["role"].clone(),
            locations: list(&r["allowed_locations"]),
            categories: list(&r["allowed_categories"]),
            valid_from: date(&emp_path, &r["valid_from"])?,
            valid_to: date(&emp_path, &r["valid_to"])?,
        });
    }
    let appr_path = opts.policy.join("approvals.csv");
    let mut approvals = Vec::new();
    for r in read_csv(&appr_path)? {
        approvals.push(Approval {
            ticket: r["ticket"].clone(),
            employee: r["employee_id"].clone(),
            categories: list(&r["data_categories"]),
            country: r["destination_country"].clone(),
            valid_from: date(&appr_path, &r["valid_from"])?,
            valid_to: date(&appr_path, &r["valid_to"])?,
        });
    }
    let pools = Pools::load(&opts.geoip_csv)?;
    let gateways: Vec<(String, IpAddr)> = networks
        .gateways
        .iter()
        .filter_map(|g| {
            g.ips
                .iter()
                .find(|ip| ip.is_ipv4())
                .map(|ip| (g.id.clone(), *ip))
        })
        .collect();
    let gateway_v6: BTreeMap<String, IpAddr> = networks
        .gateways
        .iter()
        .filter_map(|g| {
            g.ips
                .iter()
                .find(|ip| ip.is_ipv6())
                .map(|ip| (g.id.clone(), *ip))
        })
        .collect();
    if gateways.is_empty() || networks.exporters.is_empty() {
        return Err(Error::Policy {
            path: opts.policy.join("networks.toml"),
            msg: "the generator needs at least one gateway and one exporter".into(),
        });
    }
    let day_start_us = Utc
        .from_utc_datetime(&opts.date.and_time(NaiveTime::MIN))
        .timestamp_micros();
    let seed = opts.seed
        ^ (opts
            .date
            .to_string()
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)));
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(seed),
        date: opts.date,
        day_start_us,
        pools: &pools,
        gateway_v6,
        gateway: Vec::new(),
        flows: Vec::new(),
        planted: Vec::new(),
        event_seq: 0,
        session_seq: 0,
    };

    // Background: policy-conformant sessions of employees valid on this date.
    let active: Vec<&Employee> = employees
        .iter()
        .filter(|e| e.valid_from <= opts.date && opts.date <= e.valid_to)
        .collect();
    let sessions = (opts.events as f64 / 5.5).ceil() as usize;
    for s in 0..sessions {
        let emp = active[s % active.len()];
        let role = emp.role.clone();
        let gw = gateways[g.rng.gen_range(0..gateways.len())].clone();
        let loc = if g.rng.gen_bool(0.85) {
            emp.locations[0].clone()
        } else {
            emp.locations.choose(&mut g.rng).expect("location").clone()
        };
        // IPv6 clients only through gateways that have an IPv6 address.
        let v6 = g.gateway_v6.contains_key(&gw.0) && g.rng.gen_bool(0.3);
        let client = pools.ip(&mut g.rng, &loc, v6)?;
        let session = g.session_id();
        let (h, m, sec) = (
            g.rng.gen_range(6..19),
            g.rng.gen_range(0..60),
            g.rng.gen_range(0..60),
        );
        let mut ts = g.at(h, m, sec);
        let valid_approval = approvals.iter().find(|a| {
            a.employee == emp.id
                && a.valid_from <= opts.date
                && opts.date <= a.valid_to
                && a.categories.iter().any(|c| c == "restricted")
        });
        for _ in 0..g.rng.gen_range(3..=8) {
            ts += g.rng.gen_range(20..300) * 1_000_000;
            let roll: f64 = g.rng.gen();
            let (action, cat, ticket, dst, records) = if roll < 0.08 {
                match valid_approval {
                    Some(a) if g.rng.gen_bool(0.5) => {
                        let dst = pools.ip(&mut g.rng, &a.country, false)?;
                        (
                            "export",
                            "restricted".to_string(),
                            Some(a.ticket.clone()),
                            dst,
                            g.rng.gen_range(500..20_000),
                        )
                    }
                    _ => {
                        let cats: Vec<&String> = emp
                            .categories
                            .iter()
                            .filter(|c| *c != "restricted")
                            .collect();
                        let cat =
                            (*cats.choose(&mut g.rng).expect("a non-restricted category")).clone();
                        let country = *EEA_DESTS.choose(&mut g.rng).expect("dest");
                        let dst = pools.ip(&mut g.rng, country, false)?;
                        ("export", cat, None, dst, g.rng.gen_range(200..10_000))
                    }
                }
            } else {
                let action = if roll < 0.55 { "read" } else { "query" };
                let cat = emp.categories.choose(&mut g.rng).expect("category").clone();
                (action, cat, None, client, g.rng.gen_range(1..2_000))
            };
            g.event(
                ts,
                &gw,
                &emp.id,
                &loc,
                &role,
                &cat,
                action,
                "allow",
                ticket.as_deref(),
                &session,
                records,
                Some(dst),
            );
        }
    }

    plant_violations(&mut g, &gateways, &active, &approvals)?;

    // Internal and inbound background flows up to the requested count.
    let enclave_host = |rng: &mut ChaCha8Rng| {
        IpAddr::V4(Ipv4Addr::new(
            10,
            20,
            rng.gen_range(2..200),
            rng.gen_range(1..250),
        ))
    };
    while g.flows.len() < opts.flows {
        let ts_us = g.at(0, 0, 0) + g.rng.gen_range(0..86_400_000_000i64);
        let roll: f64 = g.rng.gen();
        let (src, dst, dport) = if roll < 0.6 {
            let dst = IpAddr::V4(Ipv4Addr::new(
                10,
                g.rng.gen_range(0..20),
                g.rng.gen_range(0..255),
                g.rng.gen_range(1..255),
            ));
            (
                enclave_host(&mut g.rng),
                dst,
                *[5432u16, 9092, 443, 22, 53]
                    .choose(&mut g.rng)
                    .expect("port"),
            )
        } else if roll < 0.9 {
            (
                enclave_host(&mut g.rng),
                enclave_host(&mut g.rng),
                *[5432u16, 6379, 443, 8080].choose(&mut g.rng).expect("port"),
            )
        } else if roll < 0.95 {
            let src = IpAddr::V4(Ipv4Addr::new(
                172,
                16,
                g.rng.gen_range(0..16),
                g.rng.gen_range(1..255),
            ));
            (src, enclave_host(&mut g.rng), 443)
        } else {
            let country = *EEA_DESTS.choose(&mut g.rng).expect("dest");
            let src = pools.ip(&mut g.rng, country, false)?;
            (src, gateways[g.rng.gen_range(0..gateways.len())].1, 443)
        };
        let bytes = g.rng.gen_range(60..2_000_000u64);
        let proto = if dport == 53 { "udp" } else { "tcp" };
        g.flows.push(RawFlow {
            ts_us,
            dur_us: g.rng.gen_range(1_000..60_000_000),
            src,
            dst,
            sport: g.rng.gen_range(32768..61000),
            dport,
            proto,
            bytes,
            packets: bytes / 1200 + 1,
            exporter: None,
        });
    }

    let gateway_n = g.gateway.len();
    let flow_n = g.flows.len();
    let (flows, seq_gap) = encode_flows(&mut g, &networks, opts.flow_format.as_deref())?;
    let mut gateway: Vec<Message> = g
        .gateway
        .drain(..)
        .map(|(ts_us, key, payload)| Message {
            key,
            payload,
            ts_us,
        })
        .collect();
    gateway.sort_by_key(|m| m.ts_us);
    let mut flows = flows;
    if let Some(p) = seq_gap {
        g.planted.push(p);
    }
    let (mg, mf) = add_malformed(&mut gateway, &mut flows, opts.malformed, day_start_us);
    g.planted.sort_by(|a, b| a.from.cmp(&b.from));
    for (i, p) in g.planted.iter_mut().enumerate() {
        p.id = format!("P{:02}", i + 1);
    }
    let planted = PlantedFile {
        date: opts.date,
        seed: opts.seed,
        gateway_events: gateway_n,
        flows: flow_n,
        malformed_gateway: mg,
        malformed_flows: mf,
        violations: std::mem::take(&mut g.planted),
    };
    Ok(Generated {
        gateway,
        flows,
        planted,
    })
}

/// Plant one of each violation. Each planted event breaks exactly the rule it is planted for:
/// employees are picked from the roster by the property the violation needs, and act from their
/// home country with their own role unless the violation is about those.
fn plant_violations(
    g: &mut Gen<'_>,
    gateways: &[(String, IpAddr)],
    active: &[&Employee],
    approvals: &[Approval],
) -> Result<()> {
    let gw = gateways[0].clone();
    let date = g.date;
    let mut used: Vec<String> = Vec::new();
    let mut pick = |what: &str,
                    ok: &dyn Fn(&Employee) -> bool|
     -> Result<(String, String, String, Vec<String>)> {
        let e = active
            .iter()
            .find(|e| !used.contains(&e.id) && ok(e))
            .ok_or_else(|| Error::Config(format!("the employee roster has no active employee {what}: cannot plant that violation")))?;
        used.push(e.id.clone());
        Ok((
            e.id.clone(),
            e.role.clone(),
            e.locations[0].clone(),
            e.locations.clone(),
        ))
    };
    let has = |e: &Employee, c: &str| e.categories.iter().any(|x| x == c);
    let valid_restricted_approval = |e: &Employee| {
        approvals.iter().any(|a| {
            a.employee == e.id
                && a.valid_from <= date
                && date <= a.valid_to
                && a.categories.iter().any(|c| c == "restricted")
        })
    };

    // 1. Transfer to a country with no legal basis (RU), through the gateway.
    let (emp, role, home, _) = pick("allowed allowable data", &|e| has(e, "allowable"))?;
    let t = g.at(9, 12, 5);
    let dst = g.pools.ip(&mut g.rng, "RU", false)?;
    let s = g.session_id();
    let ev = g.event(
        t,
        &gw,
        &emp,
        &home,
        &role,
        "allowable",
        "export",
        "allow",
        None,
        &s,
        4200,
        Some(dst),
    );
    g.plant("transfer_no_legal_basis", "high", t, t + 60_000_000,
        &[("employee_id", emp.clone()), ("dst_ip", dst.to_string()), ("dst_country", "RU".into()), ("event_id", ev)],
        format!("{emp} exported allowable data through {} to {dst} in Russia, a country with no adequacy decision or other transfer basis", gw.0));

    // 2. Restricted data read from a location not approved for the employee (CH).
    let (emp, role, _, locations) = pick("allowed restricted data and not approved in CH", &|e| {
        has(e, "restricted") && !e.locations.iter().any(|l| l == "CH")
    })?;
    let t = g.at(10, 40, 0);
    let client = g.pools.ip(&mut g.rng, "CH", false)?;
    let s = g.session_id();
    let ev = g.event(
        t,
        &gw,
        &emp,
        "CH",
        &role,
        "restricted",
        "read",
        "allow",
        None,
        &s,
        350,
        Some(client),
    );
    g.plant(
        "access_from_unapproved_location",
        "high",
        t,
        t + 1_000_000,
        &[
            ("employee_id", emp.clone()),
            ("employee_country", "CH".into()),
            ("event_id", ev),
        ],
        format!(
            "{emp} (approved locations {}) read restricted data from Switzerland",
            locations.join(", ")
        ),
    );

    // 3. Gateway bypass: an enclave host talks straight to an external address, no gateway session.
    let t = g.at(11, 5, 30);
    let host: IpAddr = "10.20.5.77".parse().expect("ip");
    let dst = g.pools.ip(&mut g.rng, "NL", false)?;
    for i in 0..6 {
        g.flows.push(RawFlow {
            ts_us: t + i * 30_000_000,
            dur_us: 20_000_000,
            src: host,
            dst,
            sport: 40000 + i as u16,
            dport: 443,
            proto: "tcp",
            bytes: 3_500_000,
            packets: 2900,
            exporter: Some(0),
        });
    }
    g.plant("gateway_bypass", "high", t, t + 200_000_000,
        &[("src_ip", host.to_string()), ("dst_ip", dst.to_string()), ("dst_country", "NL".into())],
        format!("enclave host {host} sent 21 MB to {dst} in the Netherlands directly, not through a security gateway"));

    // 4. Export of restricted data without an approval ticket.
    let (emp, role, home, _) = pick("allowed restricted data", &|e| has(e, "restricted"))?;
    let t = g.at(12, 20, 0);
    let dst = g.pools.ip(&mut g.rng, &home, false)?;
    let s = g.session_id();
    let ev = g.event(
        t,
        &gw,
        &emp,
        &home,
        &role,
        "restricted",
        "export",
        "allow",
        None,
        &s,
        9000,
        Some(dst),
    );
    g.plant(
        "export_without_approval",
        "high",
        t,
        t + 60_000_000,
        &[("employee_id", emp.clone()), ("event_id", ev)],
        format!("{emp} exported restricted data to {home} with no approval ticket"),
    );

    // 5. Export of restricted data under an expired approval ticket.
    let expired = approvals.iter().find(|a| {
        a.valid_to < date
            && a.categories.iter().any(|c| c == "restricted")
            && active.iter().any(|e| {
                e.id == a.employee && has(e, "restricted") && !valid_restricted_approval(e)
            })
    });
    if let Some(a) = expired {
        let e = active
            .iter()
            .find(|e| e.id == a.employee)
            .expect("checked above");
        let (emp, role, home) = (e.id.clone(), e.role.clone(), e.locations[0].clone());
        let t = g.at(14, 2, 0);
        let dst = g.pools.ip(&mut g.rng, &a.country, false)?;
        let s = g.session_id();
        let (ticket, to) = (a.ticket.clone(), a.valid_to);
        let ev = g.event(
            t,
            &gw,
            &emp,
            &home,
            &role,
            "restricted",
            "export",
            "allow",
            Some(&ticket),
            &s,
            2500,
            Some(dst),
        );
        g.plant(
            "export_with_expired_approval",
            "high",
            t,
            t + 60_000_000,
            &[
                ("employee_id", emp.clone()),
                ("approval_ticket", ticket.clone()),
                ("event_id", ev),
            ],
            format!("{emp} exported restricted data under ticket {ticket}, which expired on {to}"),
        );
    }

    // 6. Access by someone absent from the roster.
    if !active.iter().any(|e| e.id == "e9999") {
        let t = g.at(15, 45, 0);
        let client = g.pools.ip(&mut g.rng, "DE", false)?;
        let s = g.session_id();
        let ev = g.event(
            t,
            &gw,
            "e9999",
            "DE",
            "contractor",
            "public",
            "query",
            "allow",
            None,
            &s,
            120,
            Some(client),
        );
        g.plant(
            "unknown_employee",
            "high",
            t,
            t + 1_000_000,
            &[("employee_id", "e9999".into()), ("event_id", ev)],
            "e9999, who is not on the employee roster, queried public data".into(),
        );
    }

    // 7. Volume spike: one employee's egress in a few minutes far above their own baseline.
    let (emp, role, home, _) = pick("allowed pseudonymised data", &|e| has(e, "pseudonymised"))?;
    let t = g.at(16, 10, 0);
    let dst = g.pools.ip(&mut g.rng, &home, false)?;
    let s = g.session_id();
    for i in 0..4 {
        g.event(
            t + i * 120_000_000,
            &gw,
            &emp,
            &home,
            &role,
            "pseudonymised",
            "export",
            "allow",
            None,
            &s,
            4_000_000,
            Some(dst),
        );
    }
    g.plant("volume_spike", "medium", t, t + 480_000_000,
        &[("scope", "employee".into()), ("subject", emp.clone()), ("employee_id", emp.clone()), ("dst_ip", dst.to_string())],
        format!("{emp} exported 16 million records of pseudonymised data in 8 minutes, far above their usual volume"));

    // 8. The gateway allowed a data category the employee is not entitled to.
    let (emp, role, home, _) = pick("not allowed restricted data", &|e| !has(e, "restricted"))?;
    let t = g.at(8, 47, 10);
    let client = g.pools.ip(&mut g.rng, &home, false)?;
    let s = g.session_id();
    let ev = g.event(
        t,
        &gw,
        &emp,
        &home,
        &role,
        "restricted",
        "read",
        "allow",
        None,
        &s,
        800,
        Some(client),
    );
    g.plant(
        "gateway_allowed_forbidden",
        "high",
        t,
        t + 1_000_000,
        &[
            ("employee_id", emp.clone()),
            ("data_category", "restricted".into()),
            ("event_id", ev),
        ],
        format!(
            "{} let {emp} read restricted data, a category the roster does not allow them",
            gw.0
        ),
    );

    // 9. Repeated denials: probing restricted data without the right to it.
    let (emp, role, home, _) = pick("not allowed restricted data", &|e| !has(e, "restricted"))?;
    let t = g.at(17, 30, 0);
    let client = g.pools.ip(&mut g.rng, &home, false)?;
    let s = g.session_id();
    for i in 0..14 {
        g.event(
            t + i * 15_000_000,
            &gw,
            &emp,
            &home,
            &role,
            "restricted",
            "query",
            "deny",
            None,
            &s,
            0,
            Some(client),
        );
    }
    g.plant(
        "repeated_denials",
        "medium",
        t,
        t + 14 * 15_000_000,
        &[("employee_id", emp.clone())],
        format!("{emp} was denied 14 times in 3.5 minutes querying restricted data"),
    );

    // 10. Access through a gateway that networks.toml does not list (an employee entitled to the
    // data, at home, no destination: nothing else about it is wrong).
    let (emp, role, home, _) = pick("allowed public data", &|e| has(e, "public"))?;
    let t = g.at(19, 5, 0);
    let rogue = ("gw-unlisted-9".to_string(), gw.1);
    let s = g.session_id();
    let ev = g.event(
        t, &rogue, &emp, &home, &role, "public", "query", "allow", None, &s, 40, None,
    );
    g.plant(
        "unknown_gateway",
        "high",
        t,
        t + 1_000_000,
        &[("gateway_id", rogue.0.clone()), ("event_id", ev)],
        format!(
            "{emp} queried public data through {}, a gateway networks.toml does not list",
            rogue.0
        ),
    );
    Ok(())
}

/// Assign exporters and sequence numbers in time order and encode each flow in its exporter's
/// format. Plants a silent exporter and a sequence gap; returns the gap's planted entry.
fn encode_flows(
    g: &mut Gen<'_>,
    networks: &Networks,
    force: Option<&str>,
) -> Result<(Vec<Message>, Option<Planted>)> {
    if let Some(f) = force {
        if !["flowaudit", "goflow2", "zeek"].contains(&f) {
            return Err(Error::Config(format!(
                "flow format \"{f}\" is not one of flowaudit, goflow2, zeek"
            )));
        }
    }
    let exporters = &networks.exporters;
    let mut flows = std::mem::take(&mut g.flows);
    flows.sort_by_key(|f| f.ts_us);
    // The last exporter goes silent 13:00–15:30; the sequenced exporter #1 (if any) skips numbers at 10:00.
    let silent = exporters.len() - 1;
    let (silent_from, silent_to) = (g.at(13, 0, 0), g.at(15, 30, 0));
    let gap_exporter = exporters
        .iter()
        .position(|e| e.sequenced && e.format == "goflow2")
        .map(|i| (i + 1).min(exporters.len() - 1))
        .filter(|i| exporters[*i].sequenced);
    let gap_at = g.at(10, 0, 0);
    let mut gap_done = None;
    let mut seq = vec![1000u64; exporters.len()];
    let mut out = Vec::with_capacity(flows.len());
    let mut uid = 0u64;
    for f in &flows {
        let mut e = f
            .exporter
            .unwrap_or_else(|| g.rng.gen_range(0..exporters.len()));
        if e == silent && (silent_from..silent_to).contains(&f.ts_us) {
            e = 0;
        }
        if Some(e) == gap_exporter && gap_done.is_none() && f.ts_us >= gap_at {
            gap_done = Some((seq[e], f.ts_us));
            seq[e] += 120;
        }
        seq[e] += 1;
        let ex = &exporters[e];
        let etype = if f.src.is_ipv6() { "IPv6" } else { "IPv4" };
        let payload = match force.unwrap_or(ex.format.as_str()) {
            "goflow2" => {
                let recv_ns = (f.ts_us + f.dur_us) * 1000 + 1_200_000_000;
                let recv = if e % 2 == 1 && force.is_none() {
                    json!(iso(recv_ns / 1000))
                } else {
                    json!(recv_ns)
                };
                json!({"type": if e % 2 == 0 { "NETFLOW_V9" } else { "IPFIX" }, "time_received_ns": recv,
                    "sequence_num": seq[e], "sampling_rate": 0, "sampler_address": ex.id,
                    "time_flow_start_ns": f.ts_us * 1000, "time_flow_end_ns": (f.ts_us + f.dur_us) * 1000,
                    "bytes": f.bytes, "packets": f.packets, "src_addr": f.src.to_string(), "dst_addr": f.dst.to_string(),
                    "etype": etype, "proto": f.proto.to_ascii_uppercase(), "src_port": f.sport, "dst_port": f.dport,
                    "in_if": 1, "out_if": 2, "src_as": 0, "dst_as": 0})
            }
            "zeek" => {
                uid += 1;
                let mut u = String::from("C");
                let _ = write!(
                    u,
                    "{:016x}",
                    (uid.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ g.rng.gen::<u64>()
                );
                json!({"ts": f.ts_us as f64 / 1e6, "uid": u, "id.orig_h": f.src.to_string(), "id.orig_p": f.sport,
                    "id.resp_h": f.dst.to_string(), "id.resp_p": f.dport, "proto": f.proto,
                    "service": if f.dport == 443 { "ssl" } else { "-" }, "duration": f.dur_us as f64 / 1e6,
                    "orig_bytes": f.bytes, "resp_bytes": f.bytes / 10, "conn_state": "SF", "missed_bytes": 0,
                    "history": "ShADadFf", "orig_pkts": f.packets, "resp_pkts": f.packets / 2 + 1, "_system_name": ex.id})
            }
            _ => {
                json!({"ts": iso(f.ts_us), "ts_end": iso(f.ts_us + f.dur_us), "src_ip": f.src.to_string(),
                "dst_ip": f.dst.to_string(), "src_port": f.sport, "dst_port": f.dport, "protocol": f.proto,
                "bytes": f.bytes, "packets": f.packets, "exporter": ex.id, "sequence_num": seq[e],
                "flow_id": format!("fl-{}-{:08}", g.date, out.len() + 1)})
            }
        };
        out.push(Message {
            key: ex.id.clone(),
            payload: serde_json::to_vec(&payload).expect("json"),
            ts_us: f.ts_us,
        });
    }
    g.plant(
        "exporter_silent",
        "high",
        silent_from,
        silent_to,
        &[("source", exporters[silent].id.clone())],
        format!(
            "exporter {} sent nothing from 13:00 to 15:30 UTC (expected every {} s)",
            exporters[silent].id, exporters[silent].expected_interval_s
        ),
    );
    let gap = gap_done.map(|(last, ts)| {
        let e = gap_exporter.expect("gap exporter");
        Planted {
            id: String::new(),
            kind: "sequence_gap",
            severity: "medium",
            from: iso(ts),
            to: iso(ts),
            entity: [
                ("exporter", exporters[e].id.clone()),
                ("missing_from", (last + 1).to_string()),
                ("missing_to", (last + 120).to_string()),
            ]
            .into_iter()
            .collect(),
            description: format!(
                "exporter {} skipped sequence numbers {} to {} (120 records lost)",
                exporters[e].id,
                last + 1,
                last + 120
            ),
        }
    });
    Ok((out, gap))
}

/// Bad messages for the quarantine, mixed into the streams at fixed positions.
fn add_malformed(
    gateway: &mut Vec<Message>,
    flows: &mut Vec<Message>,
    n: usize,
    day_start_us: i64,
) -> (usize, usize) {
    let bad_gw: [&[u8]; 8] = [
        br#"{"event_id":"bad-truncated","ts":"2026-"#,
        b"this is not json",
        br#"{"event_id":"bad-type","ts":"2026-11-21T10:00:00Z","gateway_id":"gw-fra-1","employee_id":"e1001","employee_country":"DE","role":"analyst","data_category":"public","action":"read","decision":"allow","session_id":"s","records":"ten","bytes":1}"#,
        br#"{"event_id":"bad-year","ts":"9999-12-31T23:59:59Z","gateway_id":"gw-fra-1","employee_id":"e1001","employee_country":"DE","role":"analyst","data_category":"public","action":"read","decision":"allow","session_id":"s","records":1,"bytes":1}"#,
        br#"{"event_id":"bad-country","ts":"2026-11-21T10:00:00Z","gateway_id":"gw-fra-1","employee_id":"e1001","employee_country":"Germany","role":"analyst","data_category":"public","action":"read","decision":"allow","session_id":"s","records":1,"bytes":1}"#,
        b"{\"event_id\":\"bad-utf8\",\"role\":\"\xff\xfe\"}",
        b"",
        br#"[1,2,3]"#,
    ];
    let bad_flow: [&[u8]; 4] = [
        br#"{"ts":"2026-11-21T10:00:00Z","src_ip":"10.20.0.10","dst_ip":"999.1.2.3","protocol":"tcp","bytes":10,"exporter":"flowmeter-1"}"#,
        br#"{"hello":"world"}"#,
        br#"{"type":"IPFIX","time_received_ns":1,"sampler_address":"10.20.255.1","src_addr":"10.20.0.1","dst_addr":"31.10.0.1","proto":"TCP","bytes":-5}"#,
        br#"{"ts":1e400,"uid":"Cbad","id.orig_h":"10.20.0.1","id.resp_h":"31.10.0.1","proto":"tcp"}"#,
    ];
    let (mut ng, mut nf) = (0, 0);
    for i in 0..n {
        if i % 3 == 2 {
            let at = (nf * 7919 + 13) % (flows.len() + 1);
            let ts = flows.get(at).map_or(day_start_us, |m| m.ts_us);
            flows.insert(
                at,
                Message {
                    key: "malformed".into(),
                    payload: bad_flow[nf % bad_flow.len()].to_vec(),
                    ts_us: ts,
                },
            );
            nf += 1;
        } else {
            let at = (ng * 7919 + 13) % (gateway.len() + 1);
            let ts = gateway.get(at).map_or(day_start_us, |m| m.ts_us);
            gateway.insert(
                at,
                Message {
                    key: "malformed".into(),
                    payload: bad_gw[ng % bad_gw.len()].to_vec(),
                    ts_us: ts,
                },
            );
            ng += 1;
        }
    }
    (ng, nf)
}

/// Write `gateway.jsonl`, `flows.jsonl` and `planted.json` into `dir`.
pub fn write_jsonl(gen: &Generated, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    for (name, msgs) in [("gateway.jsonl", &gen.gateway), ("flows.jsonl", &gen.flows)] {
        let path = dir.join(name);
        let mut buf = Vec::with_capacity(msgs.len() * 360);
        for m in msgs {
            buf.extend_from_slice(&m.payload);
            buf.push(b'\n');
        }
        std::fs::write(&path, buf).map_err(io_err("write", &path))?;
    }
    let path = dir.join("planted.json");
    let text = serde_json::to_string_pretty(&gen.planted).expect("json");
    std::fs::write(&path, text + "\n").map_err(io_err("write", &path))
}
