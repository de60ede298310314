//! The desired landscape: the configuration after variables, locals, references, `for_each`
//! and `count` are resolved and every check has passed. Everything here is plain data; the
//! planner reads it, never the HCL.

use super::{HostId, Name, Secret};
use ipnet::Ipv4Net;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The whole desired landscape. Maps are keyed by name so lookups and iteration order are
/// deterministic (plans must be byte-for-byte reproducible).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Landscape {
    pub environments: BTreeMap<String, Environment>,
    pub subnets: BTreeMap<String, Subnet>,
    pub vms: BTreeMap<String, Vm>,
    pub secure_links: BTreeMap<String, SecureLink>,
    pub policy: Policy,
}

impl Landscape {
    /// Looks a host up by its id (`env.host`).
    pub fn host(&self, id: &HostId) -> Option<&Host> {
        self.environments
            .get(id.environment())
            .and_then(|e| e.hosts.get(id.host()))
    }
    /// The environment a host belongs to.
    pub fn environment_of(&self, id: &HostId) -> Option<&Environment> {
        self.environments.get(id.environment())
    }
    /// Whether the host is in a trusted environment (unknown hosts count as untrusted).
    pub fn is_trusted(&self, id: &HostId) -> bool {
        self.environment_of(id).is_some_and(|e| e.trusted)
    }
    /// Every host of every environment, in id order.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.environments.values().flat_map(|e| e.hosts.values())
    }
    /// The secure links a VM takes part in.
    pub fn links_of<'a>(&'a self, vm: &'a str) -> impl Iterator<Item = &'a SecureLink> + 'a {
        self.secure_links
            .values()
            .filter(move |l| l.between.iter().any(|m| m == vm))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub name: Name,
    pub trusted: bool,
    pub hosts: BTreeMap<String, Host>,
    pub routing_core: Option<RoutingCore>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub id: HostId,
    /// libvirt connection URI, e.g. `qemu+tls://10.77.0.11/system`.
    pub libvirt: Name,
    /// Underlay address: IKE and tunnel endpoint.
    pub address: Ipv4Addr,
    /// Where smig reaches the host's network stack: `netns:NAME` (lab) or `ssh://...` (later).
    pub network: String,
}

impl Host {
    /// Whether the libvirt URI uses libvirt's native TLS transport (invariant 7).
    pub fn libvirt_uses_tls(&self) -> bool {
        self.libvirt.starts_with("qemu+tls://")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RoutingCore {
    pub network: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Subnet {
    pub name: Name,
    pub cidr: Ipv4Net,
}

#[derive(Debug, Clone, Serialize)]
pub struct Vm {
    pub name: Name,
    /// libvirt domain name (defaults to the VM name).
    pub domain: Name,
    pub host: HostId,
    pub subnet: Name,
    pub address: Ipv4Addr,
    pub migration: Migration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Migration {
    pub mode: MigrationMode,
    pub strategy: Strategy,
    /// Maximum tolerated switchover downtime for live migration.
    pub max_downtime_ms: Option<u64>,
    /// Bandwidth cap for the migration stream, MiB/s.
    pub bandwidth_mibps: Option<u64>,
}

impl Default for Migration {
    fn default() -> Self {
        Migration {
            mode: MigrationMode::Live,
            strategy: Strategy::BlockFirst,
            max_downtime_ms: None,
            bandwidth_mibps: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationMode {
    Live,
    Cold,
}

/// How a move is ordered. `BlockFirst` is the patent's FIG. 3 order: block on the source, move,
/// restart, secure, enable. `Prestaged` filters on the target and installs IPsec before the
/// move; the VM arrives running (its SAs already up) behind that filter, which admits only
/// flows carried by the SA: the blackout shrinks to the switchover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    BlockFirst,
    Prestaged,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecureLink {
    pub name: Name,
    /// VM names, two or more.
    pub between: Vec<Name>,
    pub ipsec: IpsecSpec,
}

#[derive(Debug, Clone, Serialize)]
pub struct IpsecSpec {
    /// IKE/ESP proposals in strongSwan syntax, e.g. `aes256-sha256-modp2048`.
    pub proposals: Vec<Name>,
    pub auth: IpsecAuth,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IpsecAuth {
    Psk(Secret),
    Cert {
        cert: String,
        key: String,
        ca: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    /// Destination ports whose non-managed connections count as already secured (TLS).
    pub tls_ports: Vec<u16>,
    pub route_check_timeout_s: u64,
    pub route_check_interval_s: u64,
    pub parallelism: usize,
    /// Allows migrations and libvirt control connections in cleartext across untrusted
    /// networks (invariant 7). Plans made with it say so in red.
    pub allow_insecure_transport: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            tls_ports: Vec::new(),
            route_check_timeout_s: 300,
            route_check_interval_s: 5,
            parallelism: 4,
            allow_insecure_transport: false,
        }
    }
}
