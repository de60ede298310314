//! Evaluating [`Fact`]s against a discovered landscape. The walker uses this to skip steps
//! whose effect already holds (idempotent re-runs) and to verify preconditions.

use super::Fact;
use crate::model::{DomainState, Observed};

impl Fact {
    /// Whether the fact holds in `observed`.
    pub fn holds(&self, observed: &Observed) -> bool {
        let domain_state = |domain: &str, host| {
            observed
                .hosts
                .get(host)
                .and_then(|h| h.domains.get(domain))
                .map(|d| d.state)
        };
        let blocked = |vm: &str, host| {
            observed
                .hosts
                .get(host)
                .is_some_and(|h| h.block_rules.iter().any(|r| r.vm == vm))
        };
        let core = |env: &str| observed.routing_cores.get(env);
        match self {
            Fact::DomainRunning { domain, host } => {
                domain_state(domain, host) == Some(DomainState::Running)
            }
            Fact::DomainPaused { domain, host } => {
                domain_state(domain, host) == Some(DomainState::Paused)
            }
            Fact::DomainShutOff { domain, host } => {
                domain_state(domain, host) == Some(DomainState::ShutOff)
            }
            Fact::DomainAbsent { domain, host } => domain_state(domain, host).is_none(),
            Fact::Blocked { vm, host } => blocked(vm, host),
            Fact::NotBlocked { vm, host } => !blocked(vm, host),
            Fact::SaUp { link, host, remote } => observed.hosts.get(host).is_some_and(|h| {
                h.ipsec
                    .iter()
                    .any(|c| &c.link == link && &c.remote == remote && c.sa_up)
            }),
            Fact::IpsecAbsent { link, host } => observed
                .hosts
                .get(host)
                .is_none_or(|h| h.ipsec.iter().all(|c| &c.link != link)),
            Fact::SaAbsent { link, host, remote } => observed.hosts.get(host).is_none_or(|h| {
                h.ipsec
                    .iter()
                    .all(|c| &c.link != link || &c.remote != remote)
            }),
            Fact::TunnelPresent { subnet, core: env } => {
                core(env).is_some_and(|c| c.tunnels.iter().any(|t| &t.subnet == subnet))
            }
            Fact::TunnelAbsent { subnet, core: env } => {
                core(env).is_none_or(|c| c.tunnels.iter().all(|t| &t.subnet != subnet))
            }
            Fact::RouteLearned {
                core: env, cidr, ..
            } => core(env).is_some_and(|c| c.routes.iter().any(|r| r.learned_for(cidr))),
            Fact::ConnectionsSecured { vm, tls_ports } => {
                observed.connections.get(vm.as_str()).is_none_or(|conns| {
                    conns.iter().all(|c| {
                        c.ipsec
                            || tls_ports.contains(&c.remote.port())
                            || tls_ports.contains(&c.local.port())
                    })
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn observed() -> Observed {
        let mut o = Observed::empty();
        let hv2 = HostId::new("dc", "hv2");
        let mut host = ObservedHost::default();
        host.domains.insert(
            "db".into(),
            Domain {
                state: DomainState::Running,
                persistent: true,
                nic_link_up: Some(true),
            },
        );
        host.block_rules.push(BlockRule {
            vm: "db".into(),
            address: "192.168.10.12".parse().unwrap(),
            peers: vec![],
            allow_ipsec: false,
        });
        o.hosts.insert(hv2, host);
        o.connections.insert(
            "db".into(),
            vec![Connection {
                protocol: Protocol::Tcp,
                local: "192.168.10.12:5432".parse().unwrap(),
                remote: "192.168.10.11:40000".parse().unwrap(),
                ipsec: false,
            }],
        );
        o
    }

    #[test]
    fn domain_and_block_facts() {
        let o = observed();
        let hv2 = HostId::new("dc", "hv2");
        let c1 = HostId::new("cloud", "c1");
        let running = |host: &HostId| Fact::DomainRunning {
            domain: "db".into(),
            host: host.clone(),
        };
        assert!(running(&hv2).holds(&o));
        assert!(!running(&c1).holds(&o));
        assert!(Fact::DomainAbsent {
            domain: "db".into(),
            host: c1.clone()
        }
        .holds(&o));
        assert!(Fact::Blocked {
            vm: "db".into(),
            host: hv2.clone()
        }
        .holds(&o));
        assert!(Fact::NotBlocked {
            vm: "db".into(),
            host: c1
        }
        .holds(&o));
    }

    #[test]
    fn connections_on_tls_ports_count_as_secured() {
        let o = observed();
        let f = |ports: Vec<u16>| Fact::ConnectionsSecured {
            vm: "db".into(),
            tls_ports: ports,
        };
        assert!(!f(vec![443]).holds(&o));
        assert!(f(vec![5432]).holds(&o));
        assert!(Fact::ConnectionsSecured {
            vm: "web".into(),
            tls_ports: vec![]
        }
        .holds(&o));
    }

    #[test]
    fn a_route_is_learned_only_with_a_next_hop_and_a_prefix() {
        let cidr: ipnet::Ipv4Net = "192.168.20.0/24".parse().unwrap();
        let learned = Fact::RouteLearned {
            core: "dc".into(),
            subnet: "batch".into(),
            cidr,
        };
        let with = |routes: Vec<Route>| {
            let mut o = Observed::empty();
            o.routing_cores.insert(
                "dc".into(),
                ObservedRoutingCore {
                    routes,
                    tunnels: vec![],
                },
            );
            o
        };
        let route = |prefix: &str, via: Option<&str>, dev: &str, tunnel: bool| Route {
            prefix: prefix.parse().unwrap(),
            via: via.map(|v| v.parse().unwrap()),
            dev: Some(dev.into()),
            via_smig_tunnel: tunnel,
        };
        // The lab core before any routing protocol: connected and default routes only.
        let initial = vec![
            route("0.0.0.0/0", Some("10.77.254.1"), "wan0", false),
            route("192.168.20.0/24", None, "br-batch", false),
            route("10.78.0.0/24", Some("10.77.254.1"), "wan0", false),
        ];
        assert!(!learned.holds(&with(initial.clone())));
        assert!(!learned.holds(&Observed::empty()));
        // Through the tunnel does not count either.
        let mut tunnelled = initial.clone();
        tunnelled.push(route("192.168.20.0/24", Some("172.31.0.21"), "smx-1", true));
        assert!(!learned.holds(&with(tunnelled)));
        // A learned route for the subnet or a covering prefix does.
        for prefix in ["192.168.20.0/24", "192.168.0.0/16"] {
            let mut routes = initial.clone();
            routes.push(route(prefix, Some("10.77.254.1"), "wan0", false));
            assert!(learned.holds(&with(routes)), "{prefix}");
        }
        // A more specific one covers only part of the subnet.
        let mut part = initial;
        part.push(route("192.168.20.0/25", Some("10.77.254.1"), "wan0", false));
        assert!(!learned.holds(&with(part)));
    }

    #[test]
    fn sa_absent_looks_at_one_pair_only() {
        let mut o = observed();
        let (hv1, hv2, c1) = (
            HostId::new("dc", "hv1"),
            HostId::new("dc", "hv2"),
            HostId::new("cloud", "c1"),
        );
        o.hosts.get_mut(&hv2).unwrap().ipsec.push(IpsecConnection {
            name: ipsec_connection_name("l", &hv2, &c1),
            link: "l".into(),
            remote: c1.clone(),
            sa_up: true,
            bytes_in: 0,
            bytes_out: 0,
        });
        let absent = |remote: &HostId| Fact::SaAbsent {
            link: "l".into(),
            host: hv2.clone(),
            remote: remote.clone(),
        };
        assert!(!absent(&c1).holds(&o));
        assert!(absent(&hv1).holds(&o));
    }
}
