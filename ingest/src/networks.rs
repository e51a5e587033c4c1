//! The enclave's network policy (`networks.toml` in the policy folder): enclave and internal
//! CIDRs, the security gateways and the flow exporters. Ingest uses it to give every flow a zone
//! (`enclave` / `internal` / `external`) and the site country of private addresses.
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use crate::error::{io_err, Error, Result};

/// An IP network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("\"{s}\" is not CIDR notation (addr/prefix)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("\"{a}\" is not an IP address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("\"{p}\" is not a prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than {max}"));
        }
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A network of the enclave or the organisation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub cidr: Cidr,
    /// Country where the network is hosted (ISO alpha-2): the country of its private addresses.
    pub country: String,
    #[serde(default)]
    pub description: String,
}

/// A security gateway: the only approved way out of the enclave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    pub id: String,
    /// Addresses the gateway's egress traffic leaves from.
    pub ips: Vec<IpAddr>,
    pub country: String,
    /// Longest expected silence in seconds before the gateway counts as lost telemetry.
    pub expected_interval_s: u64,
}

/// A flow exporter (NetFlow/IPFIX sampler, Zeek sensor, flowaudit agent).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exporter {
    /// The identity flows carry: goflow2 `sampler_address`, Zeek `_system_name`, flowaudit `exporter`.
    pub id: String,
    /// `flowaudit`, `goflow2` or `zeek`.
    pub format: String,
    pub expected_interval_s: u64,
    /// Whether the exporter numbers its records (`sequence_num`) so gaps can be detected.
    #[serde(default)]
    pub sequenced: bool,
}

/// The parsed `networks.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Networks {
    pub enclave: Vec<Network>,
    #[serde(default)]
    pub internal: Vec<Network>,
    #[serde(default)]
    pub gateways: Vec<Gateway>,
    #[serde(default)]
    pub exporters: Vec<Exporter>,
}

/// The zone of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Enclave,
    Internal,
    External,
}

impl Zone {
    pub fn as_str(self) -> &'static str {
        match self {
            Zone::Enclave => "enclave",
            Zone::Internal => "internal",
            Zone::External => "external",
        }
    }
}

impl Networks {
    /// Load `<policy>/networks.toml`.
    pub fn load(policy_dir: &Path) -> Result<Self> {
        let path = policy_dir.join("networks.toml");
        let text = std::fs::read_to_string(&path).map_err(io_err("read", &path))?;
        Self::parse(&path, &text)
    }

    /// The networks of `text`, the contents of the `networks.toml` at `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let path = path.to_path_buf();
        let n: Networks = toml::from_str(text).map_err(|e| Error::Policy {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        if n.enclave.is_empty() {
            return Err(Error::Policy {
                path,
                msg: "no [[enclave]] network: at least one is required".into(),
            });
        }
        Ok(n)
    }

    /// The zone of `ip` and, for enclave and internal networks, the country they are hosted in.
    pub fn classify(&self, ip: IpAddr) -> (Zone, Option<&str>) {
        if let Some(n) = self.enclave.iter().find(|n| n.cidr.contains(ip)) {
            return (Zone::Enclave, Some(&n.country));
        }
        if let Some(n) = self.internal.iter().find(|n| n.cidr.contains(ip)) {
            return (Zone::Internal, Some(&n.country));
        }
        (Zone::External, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains_v4_and_v6() {
        let c: Cidr = "10.20.0.0/16".parse().unwrap();
        assert!(c.contains("10.20.255.1".parse().unwrap()));
        assert!(!c.contains("10.21.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let c: Cidr = "fd00:e::/32".parse().unwrap();
        assert!(c.contains("fd00:e:1::5".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }
}
