//! The discovered landscape: what actually runs, as discovery reports it. This is also the
//! format of a recorded snapshot (`smig plan --observed FILE`, `schemas/observed.schema.json`)
//! and of the landscape test double's file.

use super::{HostId, Name};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// The snapshot format version this build reads and writes.
pub const OBSERVED_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Observed {
    pub version: u32,
    /// Per hypervisor host, keyed by host id (`env.host`). A host missing here was not
    /// discovered (smig treats that as an error when the plan needs it).
    #[serde(default)]
    pub hosts: BTreeMap<HostId, ObservedHost>,
    /// Per environment with a routing core, keyed by environment name.
    #[serde(default)]
    pub routing_cores: BTreeMap<String, ObservedRoutingCore>,
    /// Non-managed connections seen per VM name (both directions, as seen from the VM's host).
    #[serde(default)]
    pub connections: BTreeMap<String, Vec<Connection>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObservedHost {
    /// libvirt domains by domain name. A domain not listed is absent from the host.
    #[serde(default)]
    pub domains: BTreeMap<Name, Domain>,
    /// smig-owned block rules (nftables table `smig`), one per blocked VM.
    #[serde(default)]
    pub block_rules: Vec<BlockRule>,
    /// smig-owned IPsec connections loaded in the host's IPsec daemon.
    #[serde(default)]
    pub ipsec: Vec<IpsecConnection>,
    /// smig-owned tunnels ending on this host.
    #[serde(default)]
    pub tunnels: Vec<Tunnel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    pub state: DomainState,
    /// Whether the domain has a persistent definition on this host.
    pub persistent: bool,
    /// Link state of the domain's NIC, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_link_up: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DomainState {
    Running,
    Paused,
    ShutOff,
}

/// Traffic between `vm` and `peers` is dropped on this host (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockRule {
    pub vm: String,
    pub address: Ipv4Addr,
    #[serde(default)]
    pub peers: Vec<Ipv4Addr>,
    /// Flows carried by smig's IPsec data path from their first packet pass; everything else
    /// between `vm` and `peers` is dropped (the pre-staged target filter).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_ipsec: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IpsecConnection {
    /// smig-owned connection name, see [`ipsec_connection_name`].
    pub name: String,
    /// The secure_link it implements.
    pub link: String,
    /// The host at the other end.
    pub remote: HostId,
    /// Whether the CHILD_SA is installed (not merely loaded).
    pub sa_up: bool,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
}

/// The name smig gives the IPsec connection for `link` between two hosts. Both ends use the
/// same name, so either side can find and unload it.
pub fn ipsec_connection_name(link: &str, a: &HostId, b: &HostId) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("smig-{link}-{x}-{y}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    /// The subnet whose traffic the tunnel redirects.
    pub subnet: String,
    /// The other end: a host id, or `core:<env>` for a routing core.
    pub remote: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObservedRoutingCore {
    #[serde(default)]
    pub routes: Vec<Route>,
    /// smig-owned tunnels ending on the routing core.
    #[serde(default)]
    pub tunnels: Vec<Tunnel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub prefix: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// Whether the route goes through a smig tunnel (and so does not count as learned).
    #[serde(default)]
    pub via_smig_tunnel: bool,
}

impl Route {
    /// Whether this is a route the routing core learned for `cidr`: one with a next hop
    /// (`via`), a prefix longer than 0 that contains `cidr`, and not through a smig tunnel. A
    /// connected route (no next hop, such as the subnet's own bridge) and the default route
    /// do not count: they say nothing about where the subnet lives now.
    pub fn learned_for(&self, cidr: &Ipv4Net) -> bool {
        !self.via_smig_tunnel
            && self.via.is_some()
            && self.prefix.prefix_len() > 0
            && self.prefix.contains(cidr)
    }
}

/// A connection that smig does not manage, seen on a VM's host (conntrack / sock_diag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    pub protocol: Protocol,
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    /// Whether the connection is carried by an IPsec SA.
    #[serde(default)]
    pub ipsec: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Observed {
    pub fn empty() -> Self {
        Observed {
            version: OBSERVED_VERSION,
            ..Default::default()
        }
    }
    /// The hosts on which a domain is defined, with its state there.
    pub fn placements<'a>(
        &'a self,
        domain: &'a str,
    ) -> impl Iterator<Item = (&'a HostId, &'a Domain)> + 'a {
        self.hosts
            .iter()
            .filter_map(move |(id, h)| h.domains.get(domain).map(|d| (id, d)))
    }
}
