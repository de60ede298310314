//! Saved-plan staleness: a plan is applied only to the configuration and landscape it was
//! made from. Fingerprints are SHA-256 over canonical JSON.

use crate::model::Observed;
use sha2::{Digest, Sha256};

/// Fingerprint of a discovered landscape.
pub fn observed_fingerprint(o: &Observed) -> String {
    let bytes = serde_json::to_vec(o).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// A saved plan that no longer matches what it would be applied to.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("the saved plan is stale: {}", .reasons.join("; "))]
#[diagnostic(
    code(smig::apply::stale_plan),
    help("run `smig plan` again and review the new plan")
)]
pub struct StalePlan {
    pub reasons: Vec<String>,
}

/// What a saved plan was made from, and what is there now.
#[derive(Debug, Clone, Copy)]
pub struct Basis<'a> {
    pub config_fingerprint: &'a str,
    pub observed_fingerprint: &'a str,
    /// The landscape itself, when the plan file recorded it: lets the message say what changed.
    pub observed: Option<&'a Observed>,
}

/// Refuses a plan made from another configuration or landscape.
pub fn check(saved: Basis<'_>, now: Basis<'_>) -> Result<(), StalePlan> {
    let mut reasons = Vec::new();
    if saved.config_fingerprint != now.config_fingerprint {
        reasons.push("the configuration changed since the plan was made".to_string());
    }
    if saved.observed_fingerprint != now.observed_fingerprint {
        match (saved.observed, now.observed) {
            (Some(a), Some(b)) => {
                let d = observed_differences(a, b);
                if d.is_empty() {
                    reasons.push("the discovered landscape changed since the plan was made".into());
                } else {
                    reasons.push(format!(
                        "the discovered landscape changed since the plan was made ({})",
                        d.join(", ")
                    ));
                }
            }
            _ => reasons.push("the discovered landscape changed since the plan was made".into()),
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(StalePlan { reasons })
    }
}

/// Which parts of two landscapes differ, by name: `host dc.hv2: domain db`, `routing core dc`.
pub fn observed_differences(a: &Observed, b: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    let hosts: std::collections::BTreeSet<_> = a.hosts.keys().chain(b.hosts.keys()).collect();
    for h in hosts {
        match (a.hosts.get(h), b.hosts.get(h)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                let doms: std::collections::BTreeSet<_> =
                    x.domains.keys().chain(y.domains.keys()).collect();
                for d in doms {
                    if x.domains.get(d) != y.domains.get(d) {
                        out.push(format!("host {h}: domain {d}"));
                    }
                }
                if x.block_rules != y.block_rules {
                    out.push(format!("host {h}: block rules"));
                }
                if x.ipsec != y.ipsec {
                    out.push(format!("host {h}: IPsec connections"));
                }
                if x.tunnels != y.tunnels {
                    out.push(format!("host {h}: tunnels"));
                }
            }
            (None, _) => out.push(format!("host {h} appeared")),
            (_, None) => out.push(format!("host {h} disappeared")),
        }
    }
    let cores: std::collections::BTreeSet<_> = a
        .routing_cores
        .keys()
        .chain(b.routing_cores.keys())
        .collect();
    for c in cores {
        if a.routing_cores.get(c) != b.routing_cores.get(c) {
            out.push(format!("routing core {c}"));
        }
    }
    let vms: std::collections::BTreeSet<_> =
        a.connections.keys().chain(b.connections.keys()).collect();
    for v in vms {
        if a.connections.get(v) != b.connections.get(v) {
            out.push(format!("connections of {v}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Domain, DomainState, HostId, ObservedHost};

    #[test]
    fn stale_plan_says_what_changed() {
        let mut a = Observed::empty();
        a.hosts
            .insert(HostId::new("dc", "hv1"), ObservedHost::default());
        let mut b = a.clone();
        b.hosts
            .get_mut(&HostId::new("dc", "hv1"))
            .unwrap()
            .domains
            .insert(
                "db".into(),
                Domain {
                    state: DomainState::Running,
                    persistent: true,
                    nic_link_up: None,
                },
            );
        let (fa, fb) = (observed_fingerprint(&a), observed_fingerprint(&b));
        let basis = |fp: &'static str, ofp, o| Basis {
            config_fingerprint: fp,
            observed_fingerprint: ofp,
            observed: Some(o),
        };
        assert!(check(basis("c1", &fa, &a), basis("c1", &fa, &a)).is_ok());
        let e = check(basis("c1", &fa, &a), basis("c2", &fb, &b)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("configuration changed"), "{msg}");
        assert!(msg.contains("host dc.hv1: domain db"), "{msg}");
    }
}
