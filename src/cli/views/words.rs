//! Steps, facts and inverses in plain words, for the human plan and the runbook.

use crate::model::{ipsec_connection_name, MigrationMode};
use crate::plan::{Action, Fact, Inverse};
use std::fmt::Display;

fn list<T: Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What an action does, in one sentence without a final full stop.
pub fn action(a: &Action) -> String {
    match a {
        Action::Block {
            vm,
            host,
            address,
            peers,
            allow_ipsec,
        } => {
            let whom = if peers.is_empty() {
                format!("drop all traffic of VM {vm} ({address}) on {host}")
            } else {
                format!(
                    "drop traffic between VM {vm} ({address}) and its peers {} on {host}",
                    list(peers)
                )
            };
            if *allow_ipsec {
                format!("{whom} except flows carried by the IPsec SA from their first packet (fail closed)")
            } else {
                format!("{whom} (fail closed)")
            }
        }
        Action::Unblock {
            vm,
            host,
            address,
            peers,
            secure_only,
        } => {
            let whom = if peers.is_empty() {
                String::new()
            } else {
                format!(" and its peers {}", list(peers))
            };
            let how = if *secure_only {
                "; across the untrusted network only through the IPsec SA (the fail-closed guard stays)"
            } else {
                ""
            };
            format!("remove the block rule of VM {vm} on {host}: traffic between {vm} ({address}){whom} flows again{how}")
        }
        Action::Shutdown { vm, domain, host } => {
            format!("shut down domain {domain} (VM {vm}) on {host}")
        }
        Action::Start { vm, domain, host } => format!("start domain {domain} (VM {vm}) on {host}"),
        Action::Pause { vm, domain, host } => format!("pause domain {domain} (VM {vm}) on {host}"),
        Action::Resume { vm, domain, host } => {
            format!("resume domain {domain} (VM {vm}) on {host}")
        }
        Action::Migrate {
            vm,
            domain,
            from,
            to,
            to_uri,
            mode,
            tls,
            paused,
            max_downtime_ms,
            bandwidth_mibps,
        } => {
            let mode = match mode {
                MigrationMode::Live => "live-migrate",
                MigrationMode::Cold => "move (cold)",
            };
            let mut s = format!("{mode} domain {domain} (VM {vm}) from {from} to {to} via {to_uri}");
            s += if *tls {
                ", migration stream over libvirt's native TLS"
            } else {
                ", migration stream IN CLEARTEXT"
            };
            if *paused {
                s += ", arriving paused";
            }
            if let Some(ms) = max_downtime_ms {
                s += &format!(", max downtime {ms} ms");
            }
            if let Some(b) = bandwidth_mibps {
                s += &format!(", bandwidth at most {b} MiB/s");
            }
            s
        }
        Action::TunnelAdd {
            subnet,
            cidr,
            core,
            remote,
            remote_address,
        } => format!(
            "add a tunnel for subnet {subnet} ({cidr}) from the routing core of {core} to {remote} ({remote_address}) and redirect the subnet's traffic into it"
        ),
        Action::TunnelRemove {
            subnet,
            cidr,
            core,
            remote,
            remote_address,
        } => format!(
            "remove the tunnel for subnet {subnet} ({cidr}) between the routing core of {core} and {remote} ({remote_address})"
        ),
        Action::IpsecInstall {
            link,
            local,
            local_address,
            remote,
            remote_address,
            proposals,
            ..
        } => format!(
            "load the IPsec connection {} of secure_link {link} on {local} ({local_address}) towards {remote} ({remote_address}), proposals {}, with its key from the configuration, and bring the SA up",
            ipsec_connection_name(link, local, remote),
            list(proposals)
        ),
        Action::IpsecRemove {
            link,
            local,
            remote,
        } => format!(
            "unload the IPsec connection {} of secure_link {link} on {local}",
            ipsec_connection_name(link, local, remote)
        ),
        Action::SecureConnections {
            vm,
            host,
            address,
            tls_ports,
        } => {
            let tls = if tls_ports.is_empty() {
                String::new()
            } else {
                format!(" or to TLS ports {}", list(tls_ports))
            };
            format!(
                "list the non-managed connections of VM {vm} ({address}) on {host}; keep those carried by IPsec{tls}; reset the others so they re-establish over the secure link"
            )
        }
        Action::RouteCheck {
            core,
            subnet,
            cidr,
            timeout_s,
            interval_s,
        } => format!(
            "poll the routing core of {core} every {interval_s} s, for at most {timeout_s} s, until it routes subnet {subnet} ({cidr}) without smig's tunnel"
        ),
        Action::Cleanup {
            vm,
            host,
            ipsec_links,
        } => {
            if ipsec_links.is_empty() {
                format!("remove smig's leftovers for VM {vm} on {host}: its block rule")
            } else {
                format!(
                    "remove smig's leftovers for VM {vm} on {host}: its block rule and the IPsec configuration of {}",
                    list(ipsec_links)
                )
            }
        }
    }
}

/// A fact as a statement.
pub fn fact(f: &Fact) -> String {
    match f {
        Fact::DomainRunning { domain, host } => format!("domain {domain} runs on {host}"),
        Fact::DomainPaused { domain, host } => format!("domain {domain} is paused on {host}"),
        Fact::DomainShutOff { domain, host } => {
            format!("domain {domain} is defined and shut off on {host}")
        }
        Fact::DomainAbsent { domain, host } => format!("domain {domain} is not defined on {host}"),
        Fact::Blocked { vm, host } => {
            format!("a smig block rule for VM {vm} is in place on {host}")
        }
        Fact::NotBlocked { vm, host } => format!("no smig block rule for VM {vm} on {host}"),
        Fact::SaUp { link, host, remote } => format!(
            "the IPsec SA of secure_link {link} ({}) is up on {host} towards {remote}",
            ipsec_connection_name(link, host, remote)
        ),
        Fact::IpsecAbsent { link, host } => {
            format!("no IPsec connection of secure_link {link} on {host}")
        }
        Fact::SaAbsent { link, host, remote } => format!(
            "no IPsec connection of secure_link {link} ({}) on {host} towards {remote}",
            ipsec_connection_name(link, host, remote)
        ),
        Fact::TunnelPresent { subnet, core } => {
            format!("the smig tunnel for subnet {subnet} exists on the routing core of {core}")
        }
        Fact::TunnelAbsent { subnet, core } => {
            format!("no smig tunnel for subnet {subnet} on the routing core of {core}")
        }
        Fact::RouteLearned { core, subnet, cidr } => format!(
            "the routing core of {core} routes subnet {subnet} ({cidr}) without smig's tunnel"
        ),
        Fact::ConnectionsSecured { vm, tls_ports } => {
            if tls_ports.is_empty() {
                format!("every non-managed connection of VM {vm} is carried by IPsec")
            } else {
                format!(
                    "every non-managed connection of VM {vm} is carried by IPsec or uses one of the TLS ports {}",
                    list(tls_ports)
                )
            }
        }
    }
}

/// A command an operator can run to check a fact by hand, when there is one.
pub fn check_by_hand(f: &Fact) -> Option<String> {
    match f {
        Fact::DomainRunning { domain, host }
        | Fact::DomainPaused { domain, host }
        | Fact::DomainShutOff { domain, host } => {
            Some(format!("on {host}: `virsh domstate {domain}`"))
        }
        Fact::DomainAbsent { domain, host } => Some(format!(
            "on {host}: `virsh list --all --name` does not list {domain}"
        )),
        Fact::Blocked { host, .. } | Fact::NotBlocked { host, .. } => Some(format!(
            "on {host}: `nft list ruleset`, smig's table `smig`"
        )),
        Fact::SaUp { link, host, remote } => Some(format!(
            "on {host}: `swanctl --list-sas --ike {}`",
            ipsec_connection_name(link, host, remote)
        )),
        Fact::IpsecAbsent { host, .. } | Fact::SaAbsent { host, .. } => {
            Some(format!("on {host}: `swanctl --list-conns`"))
        }
        Fact::RouteLearned { core, cidr, .. } => Some(format!(
            "on the routing core of {core}: `ip route show {cidr}`"
        )),
        Fact::TunnelPresent { .. } | Fact::TunnelAbsent { .. } => None,
        Fact::ConnectionsSecured { .. } => None,
    }
}

/// How a step is undone.
pub fn inverse(i: &Inverse) -> String {
    match i {
        Inverse::Action { action: a } => action(a),
        Inverse::Nothing => "nothing to undo".to_string(),
        Inverse::PointOfNoReturn { reason } => format!("cannot be undone: {reason}"),
    }
}

/// Capitalises the first letter (sentences in the runbook).
pub fn sentence(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
