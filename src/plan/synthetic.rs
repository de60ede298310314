//! Synthetic landscapes for benchmarks and property tests: environments, hosts, subnets, VMs
//! and secure links, with a matching discovered landscape in which a share of the VMs sit
//! somewhere else than desired (so they move), some of them across the trust boundary.
//! Deterministic for a given spec.

use crate::model::*;
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// The shape of a synthetic landscape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticSpec {
    pub vms: usize,
    /// Average VMs per host (the host count is `vms / vms_per_host`, at least 3).
    pub vms_per_host: usize,
    pub vms_per_subnet: usize,
    /// Share of VMs whose desired host differs from the discovered one, in percent.
    pub moving_percent: u32,
    pub seed: u64,
}

impl SyntheticSpec {
    /// `vms` VMs, 20 per host and per subnet, 20% moving.
    pub fn new(vms: usize) -> Self {
        SyntheticSpec {
            vms,
            vms_per_host: 20,
            vms_per_subnet: 20,
            moving_percent: 20,
            seed: 0x5eed,
        }
    }
}

/// splitmix64: small, fast, good enough for shapes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn percent(&mut self, p: u32) -> bool {
        self.next() % 100 < u64::from(p)
    }
}

const ENVS: [(&str, bool); 3] = [("dc", true), ("dr", true), ("cloud", false)];

/// Generates the desired landscape and the discovered one.
pub fn generate(spec: &SyntheticSpec) -> (Landscape, Observed) {
    let mut rng = Rng(spec.seed);
    let n_hosts = (spec.vms / spec.vms_per_host.max(1)).max(3);
    // 50% of the hosts in dc, 20% in dr, 30% in cloud, at least one each.
    let dc = (n_hosts / 2).max(1);
    let dr = (n_hosts / 5).max(1);
    let cloud = n_hosts.saturating_sub(dc + dr).max(1);
    let mut hosts_of: [Vec<HostId>; 3] = Default::default();
    let mut landscape = Landscape::default();
    let mut observed = Observed::empty();
    let mut octet = 0u32;
    for (e, ((env, trusted), count)) in ENVS.iter().zip([dc, dr, cloud]).enumerate() {
        let mut hosts = BTreeMap::new();
        for h in 0..count {
            octet += 1;
            let address = Ipv4Addr::from(0x0a00_0000 | (100 << 16) | octet);
            let id = HostId::new(env, &format!("h{h:04}"));
            hosts.insert(
                id.host().to_string(),
                Host {
                    id: id.clone(),
                    libvirt: format!("qemu+tls://{address}/system").into(),
                    address,
                    network: format!("netns:{env}-h{h:04}"),
                },
            );
            observed.hosts.insert(id.clone(), ObservedHost::default());
            hosts_of[e].push(id);
        }
        landscape.environments.insert(
            env.to_string(),
            Environment {
                name: Name::from(*env),
                trusted: *trusted,
                hosts,
                routing_core: (*env == "dc").then(|| RoutingCore {
                    network: "netns:dc-core".into(),
                }),
            },
        );
    }

    let per_subnet = spec.vms_per_subnet.max(1);
    let n_subnets = spec.vms.div_ceil(per_subnet);
    let mut core = ObservedRoutingCore::default();
    for k in 0..n_subnets {
        let name = format!("s{k:05}");
        let cidr = Ipv4Net::new(Ipv4Addr::new(10, (k >> 8) as u8 & 0x3f, k as u8, 0), 24)
            .unwrap_or_default();
        core.routes.push(Route {
            prefix: cidr,
            via: None,
            dev: None,
            via_smig_tunnel: false,
        });
        landscape.subnets.insert(
            name.clone(),
            Subnet {
                name: name.into(),
                cidr,
            },
        );
    }
    observed.routing_cores.insert("dc".into(), core);

    // Whole subnets leaving dc for the cloud make up a quarter of the moves.
    let whole_every = (100 / (spec.moving_percent / 4).max(1)) as usize;
    let whole_share = 100 / whole_every.max(1) as u32;
    let single_percent = spec.moving_percent.saturating_sub(whole_share);
    let pick = |rng: &mut Rng, e: usize| hosts_of[e][rng.below(hosts_of[e].len())].clone();
    let mut current: Vec<HostId> = Vec::with_capacity(spec.vms);
    let names: Vec<Name> = (0..spec.vms)
        .map(|i| Name::from(format!("vm{i:06}")))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let k = i / per_subnet;
        let home = match k % 10 {
            0..=5 => 0,
            6 | 7 => 1,
            _ => 2,
        };
        let here = pick(&mut rng, home);
        let whole = k.is_multiple_of(whole_every) && home == 0;
        let there = if whole {
            pick(&mut rng, 2)
        } else if rng.percent(single_percent) {
            let to_env = match (home, rng.percent(50)) {
                (0, true) => 2,
                (0, false) => rng.below(2),
                (1, _) => 0,
                (_, true) => 0,
                _ => 2,
            };
            pick(&mut rng, to_env)
        } else {
            here.clone()
        };
        let migration = Migration {
            mode: if rng.percent(10) {
                MigrationMode::Cold
            } else {
                MigrationMode::Live
            },
            strategy: if rng.percent(30) {
                Strategy::Prestaged
            } else {
                Strategy::BlockFirst
            },
            max_downtime_ms: Some(300),
            bandwidth_mibps: None,
        };
        let Some((subnet, cidr)) = landscape
            .subnets
            .get(format!("s{k:05}").as_str())
            .map(|s| (s.name.clone(), s.cidr))
        else {
            continue;
        };
        let address = Ipv4Addr::from(u32::from(cidr.network()) + 10 + (i % per_subnet) as u32);
        let state = if rng.percent(2) {
            DomainState::ShutOff
        } else {
            DomainState::Running
        };
        if let Some(h) = observed.hosts.get_mut(&here) {
            h.domains.insert(
                name.clone(),
                Domain {
                    state,
                    persistent: true,
                    nic_link_up: Some(true),
                },
            );
        }
        if here != there && rng.percent(10) {
            let peer = Ipv4Addr::from(u32::from(address) ^ 1);
            observed.connections.insert(
                name.to_string(),
                vec![
                    Connection {
                        protocol: Protocol::Tcp,
                        local: SocketAddrV4::new(address, 40_000 + (i % 1000) as u16),
                        remote: SocketAddrV4::new(peer, 5432),
                        ipsec: false,
                    },
                    Connection {
                        protocol: Protocol::Tcp,
                        local: SocketAddrV4::new(address, 41_000 + (i % 1000) as u16),
                        remote: SocketAddrV4::new(peer, 8080),
                        ipsec: false,
                    },
                ],
            );
        }
        current.push(here);
        landscape.vms.insert(
            name.to_string(),
            Vm {
                name: name.clone(),
                domain: name.clone(),
                host: there,
                subnet,
                address,
                migration,
            },
        );
    }

    // Links: neighbours within a subnet, and every tenth VM with one elsewhere.
    let add_link = |landscape: &mut Landscape, a: usize, b: usize| {
        let name = format!("l{a:06}_{b:06}");
        landscape.secure_links.insert(
            name.clone(),
            SecureLink {
                name: name.into(),
                between: vec![names[a].clone(), names[b].clone()],
                ipsec: IpsecSpec {
                    proposals: vec!["aes256gcm16-prfsha256-ecp256".into()],
                    auth: IpsecAuth::Psk(Secret::new("synthetic-key")),
                },
            },
        );
    };
    for i in 0..spec.vms {
        if i.is_multiple_of(2) && i + 1 < spec.vms && (i + 1) / per_subnet == i / per_subnet {
            add_link(&mut landscape, i, i + 1);
        }
        if i % 10 == 5 && spec.vms > 1 {
            let j = rng.below(spec.vms);
            if j != i {
                add_link(&mut landscape, i.min(j), i.max(j));
            }
        }
    }

    // The SAs that the current placement needs are up.
    let index: BTreeMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    for link in landscape.secure_links.values() {
        let (a, b) = (
            &current[index[link.between[0].as_str()]],
            &current[index[link.between[1].as_str()]],
        );
        if a != b && (!landscape.is_trusted(a) || !landscape.is_trusted(b)) {
            for (h, r) in [(a, b), (b, a)] {
                if let Some(host) = observed.hosts.get_mut(h) {
                    host.ipsec.push(IpsecConnection {
                        name: ipsec_connection_name(&link.name, h, r),
                        link: link.name.to_string(),
                        remote: r.clone(),
                        sa_up: true,
                        bytes_in: 0,
                        bytes_out: 0,
                    });
                }
            }
        }
    }

    landscape.policy = Policy {
        tls_ports: vec![443, 5432],
        ..Policy::default()
    };
    (landscape, observed)
}

/// A small landscape pair built by hand, for tests and golden cases: the desired landscape,
/// the discovered one, and the configuration text in the reference syntax
/// ([`Fixture::to_hcl`]). Host `h` of the `e`-th environment gets the address
/// `10.(77+e).0.(11+10e+h)`, so [`Fixture::reference`] matches SPEC.md's example.
///
/// The builder methods panic on malformed literals (addresses, CIDRs): they take code, not
/// user input.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub desired: Landscape,
    pub observed: Observed,
    env_order: Vec<String>,
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture {
            desired: Landscape::default(),
            observed: Observed::empty(),
            env_order: Vec::new(),
        }
    }
}

fn host_id(id: &str) -> HostId {
    let (e, h) = id.split_once('.').unwrap_or((id, id));
    HostId::new(e, h)
}

impl Fixture {
    /// An empty landscape.
    pub fn new() -> Self {
        Self::default()
    }

    /// A fixture around landscapes built elsewhere (e.g. by [`generate`]).
    pub fn from_parts(desired: Landscape, observed: Observed) -> Self {
        let env_order = desired.environments.keys().cloned().collect();
        Fixture {
            desired,
            observed,
            env_order,
        }
    }

    /// SPEC.md's reference landscape: `web` on dc.hv1, `db` discovered on dc.hv2 and desired
    /// on cloud.c1 (live, block-first), linked by `web_db`; TLS ports 443, 636, 5432.
    pub fn reference() -> Self {
        Fixture::new()
            .environment("dc", true, &["hv1", "hv2"], true)
            .environment("cloud", false, &["c1"], false)
            .subnet("app", "192.168.10.0/24")
            .vm("web", "app", "192.168.10.11", "dc.hv1", "dc.hv1")
            .vm("db", "app", "192.168.10.12", "dc.hv2", "cloud.c1")
            .max_downtime("db", 300)
            .link("web_db", &["web", "db"])
            .tls_ports(&[443, 636, 5432])
    }

    /// An environment with its hosts (all discovered, libvirt over TLS) and optionally a
    /// routing core (discovered too).
    pub fn environment(
        mut self,
        name: &str,
        trusted: bool,
        hosts: &[&str],
        routing_core: bool,
    ) -> Self {
        let e = self.env_order.len() as u32;
        self.env_order.push(name.to_string());
        let mut map = BTreeMap::new();
        for (h, host) in hosts.iter().enumerate() {
            let address = Ipv4Addr::new(10, 77 + e as u8, 0, (11 + 10 * e + h as u32) as u8);
            let id = HostId::new(name, host);
            map.insert(
                host.to_string(),
                Host {
                    id: id.clone(),
                    libvirt: format!("qemu+tls://{address}/system").into(),
                    address,
                    network: format!("netns:{name}-{host}"),
                },
            );
            self.observed.hosts.insert(id, ObservedHost::default());
        }
        if routing_core {
            self.observed
                .routing_cores
                .insert(name.to_string(), ObservedRoutingCore::default());
        }
        self.desired.environments.insert(
            name.to_string(),
            Environment {
                name: name.into(),
                trusted,
                hosts: map,
                routing_core: routing_core.then(|| RoutingCore {
                    network: format!("netns:{name}-core"),
                }),
            },
        );
        self
    }

    /// Switches a host (`env.host`) to a cleartext libvirt URI (`qemu+tcp://`).
    pub fn cleartext_libvirt(mut self, host: &str) -> Self {
        let id = host_id(host);
        if let Some(h) = self
            .desired
            .environments
            .get_mut(id.environment())
            .and_then(|e| e.hosts.get_mut(id.host()))
        {
            h.libvirt = format!("qemu+tcp://{}/system", h.address).into();
        }
        self
    }

    /// A subnet; the routing cores route it (not through a tunnel).
    pub fn subnet(mut self, name: &str, cidr: &str) -> Self {
        let cidr: Ipv4Net = cidr.parse().expect("fixture CIDR");
        for core in self.observed.routing_cores.values_mut() {
            core.routes.push(Route {
                prefix: cidr,
                via: None,
                dev: None,
                via_smig_tunnel: false,
            });
        }
        self.desired.subnets.insert(
            name.to_string(),
            Subnet {
                name: name.into(),
                cidr,
            },
        );
        self
    }

    /// A VM running on `discovered_on` and desired on `desired_on` (host ids `env.host`).
    /// Declaring it again replaces it.
    pub fn vm(
        mut self,
        name: &str,
        subnet: &str,
        address: &str,
        discovered_on: &str,
        desired_on: &str,
    ) -> Self {
        for h in self.observed.hosts.values_mut() {
            h.domains.remove(name);
        }
        if let Some(h) = self.observed.hosts.get_mut(&host_id(discovered_on)) {
            h.domains.insert(
                Name::from(name),
                Domain {
                    state: DomainState::Running,
                    persistent: true,
                    nic_link_up: Some(true),
                },
            );
        }
        self.desired.vms.insert(
            name.to_string(),
            Vm {
                name: name.into(),
                domain: name.into(),
                host: host_id(desired_on),
                subnet: subnet.into(),
                address: address.parse().expect("fixture address"),
                migration: Migration::default(),
            },
        );
        self
    }

    /// Sets the discovered state of a VM's domain.
    pub fn vm_state(mut self, name: &str, state: DomainState) -> Self {
        for h in self.observed.hosts.values_mut() {
            if let Some(d) = h.domains.get_mut(name) {
                d.state = state;
            }
        }
        self
    }

    /// Sets a VM's migration mode and strategy.
    pub fn migration(mut self, vm: &str, mode: MigrationMode, strategy: Strategy) -> Self {
        if let Some(v) = self.desired.vms.get_mut(vm) {
            v.migration.mode = mode;
            v.migration.strategy = strategy;
        }
        self
    }

    /// Sets a VM's maximum switchover downtime.
    pub fn max_downtime(mut self, vm: &str, ms: u64) -> Self {
        if let Some(v) = self.desired.vms.get_mut(vm) {
            v.migration.max_downtime_ms = Some(ms);
        }
        self
    }

    /// A secure_link with a pre-shared key `fixture-psk-<name>`.
    pub fn link(mut self, name: &str, between: &[&str]) -> Self {
        self.desired.secure_links.insert(
            name.to_string(),
            SecureLink {
                name: name.into(),
                between: between.iter().map(|s| Name::from(*s)).collect(),
                ipsec: IpsecSpec {
                    proposals: vec!["aes256-sha256-modp2048".into()],
                    auth: IpsecAuth::Psk(Secret::new(format!("fixture-psk-{name}"))),
                },
            },
        );
        self
    }

    /// Removes a secure_link from the configuration (its IPsec may stay discovered).
    pub fn without_link(mut self, name: &str) -> Self {
        self.desired.secure_links.remove(name);
        self
    }

    /// The link's IPsec connection discovered on both hosts with its SA up.
    pub fn sa_up(mut self, link: &str, a: &str, b: &str) -> Self {
        let (a, b) = (host_id(a), host_id(b));
        for (h, r) in [(&a, &b), (&b, &a)] {
            if let Some(host) = self.observed.hosts.get_mut(h) {
                host.ipsec.push(IpsecConnection {
                    name: ipsec_connection_name(link, h, r),
                    link: link.to_string(),
                    remote: r.clone(),
                    sa_up: true,
                    bytes_in: 0,
                    bytes_out: 0,
                });
            }
        }
        self
    }

    /// A non-managed TCP connection seen for the VM.
    pub fn connection(mut self, vm: &str, local: &str, remote: &str, ipsec: bool) -> Self {
        self.observed
            .connections
            .entry(vm.to_string())
            .or_default()
            .push(Connection {
                protocol: Protocol::Tcp,
                local: local.parse().expect("fixture socket address"),
                remote: remote.parse().expect("fixture socket address"),
                ipsec,
            });
        self
    }

    /// Ports whose non-managed connections count as secured.
    pub fn tls_ports(mut self, ports: &[u16]) -> Self {
        self.desired.policy.tls_ports = ports.to_vec();
        self
    }

    /// Allows cleartext migration across untrusted networks (invariant 7 waived).
    pub fn allow_insecure_transport(mut self) -> Self {
        self.desired.policy.allow_insecure_transport = true;
        self
    }

    /// The configuration in the reference syntax (`main.smig.hcl` of a golden case).
    pub fn to_hcl(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let d = &self.desired;
        let list = |v: &mut dyn Iterator<Item = String>| v.collect::<Vec<_>>().join(", ");
        for name in &self.env_order {
            let Some(env) = d.environments.get(name) else {
                continue;
            };
            let _ = writeln!(s, "environment \"{name}\" {{\n  trusted = {}", env.trusted);
            for (hname, h) in &env.hosts {
                let _ = writeln!(
                    s,
                    "  host \"{hname}\" {{\n    libvirt = \"{}\"\n    address = \"{}\"\n    network = \"{}\"\n  }}",
                    h.libvirt, h.address, h.network
                );
            }
            if let Some(core) = &env.routing_core {
                let _ = writeln!(
                    s,
                    "  routing_core {{\n    network = \"{}\"\n  }}",
                    core.network
                );
            }
            let _ = writeln!(s, "}}\n");
        }
        for (name, sn) in &d.subnets {
            let _ = writeln!(s, "subnet \"{name}\" {{\n  cidr = \"{}\"\n}}\n", sn.cidr);
        }
        for (name, vm) in &d.vms {
            let _ = writeln!(
                s,
                "vm \"{name}\" {{\n  host    = environment.{}.host.{}\n  subnet  = subnet.{}\n  address = \"{}\"",
                vm.host.environment(),
                vm.host.host(),
                vm.subnet,
                vm.address
            );
            if vm.domain != vm.name {
                let _ = writeln!(s, "  domain  = \"{}\"", vm.domain);
            }
            let m = &vm.migration;
            if m != &Migration::default() {
                let _ = writeln!(s, "  migration {{");
                let mode = match m.mode {
                    MigrationMode::Live => "live",
                    MigrationMode::Cold => "cold",
                };
                let strategy = match m.strategy {
                    Strategy::BlockFirst => "block-first",
                    Strategy::Prestaged => "prestaged",
                };
                let _ = writeln!(s, "    mode            = \"{mode}\"");
                let _ = writeln!(s, "    strategy        = \"{strategy}\"");
                if let Some(ms) = m.max_downtime_ms {
                    let _ = writeln!(s, "    max_downtime_ms = {ms}");
                }
                let _ = writeln!(s, "  }}");
            }
            let _ = writeln!(s, "}}\n");
        }
        for (name, link) in &d.secure_links {
            let between = list(&mut link.between.iter().map(|v| format!("vm.{v}")));
            let proposals = list(&mut link.ipsec.proposals.iter().map(|p| format!("\"{p}\"")));
            let _ = writeln!(
                s,
                "secure_link \"{name}\" {{\n  between = [{between}]\n  ipsec {{\n    proposals = [{proposals}]"
            );
            match &link.ipsec.auth {
                IpsecAuth::Psk(k) => {
                    let _ = writeln!(s, "    psk       = \"{}\"", k.expose());
                }
                IpsecAuth::Cert { cert, key, ca } => {
                    let _ = writeln!(s, "    cert      = \"{cert}\"\n    key       = \"{key}\"");
                    if let Some(ca) = ca {
                        let _ = writeln!(s, "    ca        = \"{ca}\"");
                    }
                }
            }
            let _ = writeln!(s, "  }}\n}}\n");
        }
        let p = &d.policy;
        let ports = list(&mut p.tls_ports.iter().map(|p| p.to_string()));
        if p.allow_insecure_transport {
            let _ = writeln!(
                s,
                "policy {{\n  tls_ports                = [{ports}]\n  allow_insecure_transport = true"
            );
        } else {
            let _ = writeln!(s, "policy {{\n  tls_ports = [{ports}]");
        }
        s.push_str("}\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_follows_the_spec() {
        let (l, o) = generate(&SyntheticSpec::new(10_000));
        assert_eq!(l.vms.len(), 10_000);
        assert_eq!(l.hosts().count(), 500);
        assert_eq!(l.subnets.len(), 500);
        let moving = l
            .vms
            .values()
            .filter(|vm| {
                o.hosts
                    .get(&vm.host)
                    .is_none_or(|h| !h.domains.contains_key(vm.domain.as_str()))
            })
            .count();
        assert!((1_500..=2_500).contains(&moving), "{moving} moving");
        let crossing = l.vms.values().filter(|vm| !l.is_trusted(&vm.host)).count();
        assert!(crossing > 0);
        assert_eq!(generate(&SyntheticSpec::new(10_000)).0.vms.len(), 10_000);
    }
}
