//! The graph passes, in the order `build` runs them. Each adds steps and edges for one block of
//! FIG. 3, or reshapes the graph (dedupe, reduction). Steps carry their target host,
//! precondition, effect and inverse.

use super::diff::{Diff, Move, Placement, SaInstall};
use super::draft::Draft;
use super::{Action, Fact, Inverse, PlanError, Step, StepKind, Target};
use crate::model::{DomainState, HostId, MigrationMode, Name, Strategy};

/// One transformation of the draft graph.
pub(crate) trait Pass: Sync {
    /// Short name, for errors and tracing.
    fn name(&self) -> &'static str;
    fn apply<'d>(&self, diff: &'d Diff, draft: &mut Draft<'d>) -> Result<(), PlanError>;
}

fn step(
    kind: StepKind,
    subject: Name,
    target: Target,
    action: Action,
    precondition: Vec<Fact>,
    effect: Vec<Fact>,
    inverse: Inverse,
) -> Step {
    Step {
        key: step_key(kind, &subject, &target),
        kind,
        subject,
        target,
        action,
        precondition,
        effect,
        inverse,
    }
}

/// The pieces joined in one allocation of the exact size.
fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}

/// `<kind>:<subject>@<target>`, as `Step::key` documents.
fn step_key(kind: StepKind, subject: &str, target: &Target) -> String {
    match target {
        Target::Host(h) => concat(&[kind.as_str(), ":", subject, "@", h.as_str()]),
        Target::RoutingCore(env) => {
            concat(&[kind.as_str(), ":", subject, "@", env, ".routing_core"])
        }
    }
}

fn undo(action: Action) -> Inverse {
    Inverse::action(action)
}

fn state_fact(domain: &Name, host: &HostId, state: DomainState) -> Fact {
    let (domain, host) = (domain.clone(), host.clone());
    match state {
        DomainState::Running => Fact::DomainRunning { domain, host },
        DomainState::Paused => Fact::DomainPaused { domain, host },
        DomainState::ShutOff => Fact::DomainShutOff { domain, host },
    }
}

fn sa_up_facts(m: &Move) -> Vec<Fact> {
    m.needs
        .iter()
        .flat_map(|p| {
            let other = if &p.a == m.to { &p.b } else { &p.a };
            [
                Fact::SaUp {
                    link: p.link.clone(),
                    host: m.to.clone(),
                    remote: other.clone(),
                },
                Fact::SaUp {
                    link: p.link.clone(),
                    host: other.clone(),
                    remote: m.to.clone(),
                },
            ]
        })
        .collect()
}

fn vm_subject(m: &Move) -> Name {
    m.subject.clone()
}

/// 320: fail-closed block of the VM's traffic with its peers, on the source (block-first) or
/// on the target before the VM arrives (prestaged).
pub(crate) struct BlockPass;
impl Pass for BlockPass {
    fn name(&self) -> &'static str {
        "block"
    }
    fn apply<'d>(&self, diff: &'d Diff, draft: &mut Draft<'d>) -> Result<(), PlanError> {
        for (i, m) in diff.moves.iter().enumerate() {
            let absent_on_target = || Fact::DomainAbsent {
                domain: m.vm.domain.clone(),
                host: m.to.clone(),
            };
            let first = match m.strategy {
                Strategy::BlockFirst => block_step(
                    m,
                    m.from,
                    state_fact(&m.vm.domain, m.from, m.state),
                    false,
                    diff.secure_only(i, m.from, Placement::Current),
                ),
                Strategy::Prestaged => {
                    block_step(m, m.to, absent_on_target(), m.arrives_running(), false)
                }
            };
            let ix = draft.add_for(i, first);
            draft.vm_mut(i).block = Some(ix);
            // Block-first: the block on the source does not travel with the VM, so the target
            // holds one too before the VM arrives; `enable` lifts it there.
            if m.strategy == Strategy::BlockFirst {
                let target =
                    draft.add_for(i, block_step(m, m.to, absent_on_target(), false, false));
                draft.vm_mut(i).block_target = Some(target);
            }
        }
        Ok(())
    }
}

/// A block of the moving VM's traffic with its peers on `host` (with `allow_ipsec`, the
/// pre-staged filter); undone by an unblock, `secure_only` when the guard must stay.
fn block_step(m: &Move, host: &HostId, pre: Fact, allow_ipsec: bool, secure_only: bool) -> Step {
    let vm = &m.vm.name;
    step(
        StepKind::Block,
        vm_subject(m),
        Target::Host(host.clone()),
        Action::Block {
            vm: vm.clone(),
            host: host.clone(),
            address: m.vm.address,
            peers: m.peers.clone(),
            allow_ipsec,
        },
        vec![pre],
        vec![Fact::Blocked {
            vm: vm.clone(),
            host: host.clone(),
        }],
        undo(Action::Unblock {
            vm: vm.clone(),
            host: host.clone(),
            address: m.vm.address,
            peers: m.peers.clone(),
            secure_only,
        }),
    )
}

/// 325: cold mode: shut the VM down on the source, after the block.
pub(crate) struct ShutdownPass;
impl Pass for ShutdownPass {
    fn name(&self) -> &'static str {
        "shutdown"
    }
    fn apply<'d>(&self, diff: &'d Diff, draft: &mut Draft<'d>) -> Result<(), PlanError> {
        for (i, m) in diff
            .moves
            .iter()
            .enumerate()
            .filter(|(_, m)| m.offline && m.restarts())
        {
            let vm = &m.vm.name;
            let (domain, host) = (m.vm.domain.clone(), m.from.clone());
            let s = step(
                StepKind::Shutdown,
                vm_subject(m),
                Target::Host(host.clone()),
                Action::Shutdown {
                    vm: vm.clone(),
                    domain: domain.clone(),
                    host: host.clone(),
                },
                vec![
                    Fact::Blocked {
                        vm: vm.clone(),
                        host: m.block_host().clone(),
                    },
                    state_fact(&domain, &host, m.state),
                ],
                vec![Fact::DomainShutOff {
                    domain: domain.clone(),
                    host: host.clone(),
                }],
                undo(Action::Start {
                    vm: vm.clone(),
                    domain,
                    host,
                }),
            );
            let ix = draft.add_for(i, s);
            let block = draft.vm(i).block;
            draft.edge(block, ix);
            draft.vm_mut(i).shutdown = Some(ix);
        }
        Ok(())
    }
}

/// 330: the libvirt migration: live arriving paused (arriving running when pre-staged, its SAs
/// up), or the definition of a shut-off VM.
pub(crate) struct MigratePass;
impl Pass for MigratePass {
    fn name(&self) -> &'static str {
        "migrate"
    }
    fn apply<'d>(&self, diff: &'d Diff, draft: &mut Draft<'d>) -> Result<(), PlanError> {
        for (i, m) in diff.moves.iter().enumerate() {
            let vm = &m.vm.name;
            let domain = m.vm.domain.clone();
            let (Some(from_host), Some(to_host)) = (diff.host(m.from), diff.host(m.to)) else {
                continue; // unknown hosts are reported by the diff
            };
            let mode = if m.offline {
                MigrationMode::Cold
            } else {
                MigrationMode::Live
            };
            let (before, arrive) = if m.offline {
                (DomainState::ShutOff, DomainState::ShutOff)
            } else if m.arrives_running() {
                (m.state, DomainState::Running)
            } else {
                (m.state, DomainState::Paused)
            };
            let forth = Action::Migrate {
                vm: vm.clone(),
                domain: domain.clone(),
                from: m.from.clone(),
                to: m.to.clone(),
                to_uri: to_host.libvirt.clone(),
                mode,
                tls: to_host.libvirt_uses_tls(),
                paused: !m.offline && !m.arrives_running(),
                max_downtime_ms: m.vm.migration.max_downtime_ms,
                bandwidth_mibps: m.vm.migration.bandwidth_mibps,
            };
            let back = Action::Migrate {
                vm: vm.clone(),
                domain: domain.clone(),
                from: m.to.clone(),
                to: m.from.clone(),
                to_uri: from_host.libvirt.clone(),
                mode,
                tls: from_host.libvirt_uses_tls(),
                paused: false,
                max_downtime_ms: m.vm.migration.max_downtime_ms,
                bandwidth_mibps: m.vm.migration.bandwidth_mibps,
            };
            let s = step(
                StepKind::Migrate,
                vm_subject(m),
                Target::Host(m.from.clone()),
                forth,
                {
                    let mut pre = vec![
                        Fact::Blocked {
                            vm: vm.clone(),
                            host: m.block_host().clone(),
                        },
                        state_fact(&domain, m.from, before),
                        Fact::DomainAbsent {
                            domain: domain.clone(),
                            host: m.to.clone(),
                        },
                    ];
                    if m.arrives_running() {
                        pre.extend(sa_up_facts(m));
                    }
                    pre
                },
                vec![
                    state_fact(&domain, m.to, arrive),
                    Fact::DomainAbsent {
                        domain,
                        host: m.from.clone(),
                    },
                ],
                undo(back),
            );
            let ix = draft.add_for(i, s);
            let steps = draft.vm(i);
            draft.edge(steps.block, ix);
            draft.edge(steps.block_target, ix);
            draft.edge(steps.shutdown, ix);
            draft.vm_mut(i).migrate = Some(ix);
        }
        Ok(())
    }
}

/// 335, 340: when a whole subnet ends up in another environment, a tunnel from the old
/// environment's routing core, once the subnet's VMs have migrated.
pub(crate) struct SubnetTunnelPass;
impl Pass for SubnetTunnelPass {
    fn name(&self) -> &'static str {
        "tunnel.add"
    }
    fn apply<'d>(&self, diff: &'d Diff, draft: &mut Draft<'d>) -> Result<(), PlanError> {
        for sm in diff.subnet_moves.iter().filter(|sm| !sm.tunnel_present) {
            let name = &sm.subnet.name;
            for &mover in &sm.movers {
                let s = step(
                    StepKind::TunnelAdd,
                    sm.subject.clone(),
                    Target::RoutingCore(sm.core.clone()),
                    Action::TunnelAdd {
                        subnet: name.clone(),
                        cidr: sm.subnet.cidr,
                        core: sm.core.clone(),
                        remote: sm.remote.clone(),
                        remote_address: sm.remote_address,
                    },
                    vec![Fact::TunnelAbsent {
                        subnet: name.clone(),
                        core: sm.core.clone(),
                    }],
                    vec![Fact::TunnelPresent {
                        subnet: name.clone(),
                        core: sm.core.clone(),
                    }],
                    undo(Action::TunnelRemove {
                        subnet: name.clone(),
                        cidr: sm.subnet.cidr,
                        core: sm.core.clone(),
                        remote: sm.remote.clone(),
                        remote_address: sm.remote_address,
                    }),
                );
                let ix = draft.add(s);
                let migrate = draft.vm(mover).migrate;
                draft.edge(migrate, ix);
                draft.vm_mut(mover).tunnel_add = Some(ix);
            }
        }
        Ok(())
    }
}

/// 345: resume (live) or start (cold) the VM on the target, after its tunnel. A pre-staged
/// live move has none: the VM arrives running.
pub(crate) struct RestartPass;
impl Pass for RestartPass {
    fn name(&self) -> &'static str {
        "restart"
    }
    fn apply<'d>(&self, diff: &'d Diff, draft: &mut Draft<'d>) -> Result<(), PlanError> {
        for (i, m) in diff
            .moves
            .iter()
            .enumerate()
            .filter(|(_, m)| m.restarts() && !m.arrives_running())
        {
            let vm = &m.vm.name;
            let (domain, host) = (m.vm.domain.clone(), m.to.clone());
            let (action, arrived, inverse) = if m.offline {
                (
                    Action::Start {
                        vm: vm.clone(),
                        domain: domain.clone(),
                        host: host.clone(),
                    },
                    DomainState::ShutOff,
                    Action::Shutdown {
                        vm: vm.clone(),
                        domain: domain.clone(),
                        host: host.clone(),
                    },
                )
            } else {
                (
                    Action::Resume {
                        vm: vm.clone(),
                        domain: domain.clone(),
                        host: host.clone(),
                    },
                    DomainState::Paused,
                    Action::Pause {
                        vm: vm.clone(),
                        domain: domain.clone(),
                        host: host.clone(),
                    },
                )
            };
            let mut pre = vec![state_fact(&domain, &host, arrived)];
            pre.extend(sa_up_facts(m));
            let s = step(
                StepKind::Restart,
                vm_subject(m),
                Target::Host(host.clone()),
                action,
                pre,
                vec![Fact::DomainRunning { domain, host }],
                undo(inverse),
            );
            let ix = draft.add_for(i, s);
            let steps = draft.vm(i);
            draft.edge(steps.migrate, ix);
            draft.edge(steps.tunnel_add, ix);
            draft.vm_mut(i).restart = Some(ix);
        }
        Ok(())
    }
}

fn install_step(diff: &Diff, sa: &SaInstall, local: &HostId, initiate: bool) -> Step {
    let remote = if local == &sa.initiator {
        &sa.responder
    } else {
        &sa.initiator
    };
    let addr = |h: &HostId| {
        diff.host(h)
            .map_or(std::net::Ipv4Addr::UNSPECIFIED, |h| h.address)
    };
    let link = sa.pair.link.clone();
    let effect = if initiate {
        vec![
            Fact::SaUp {
                link: link.clone(),
                host: local.clone(),
                remote: remote.clone(),
            },
            Fact::SaUp {
                link: link.clone(),
                host: remote.clone(),
                remote: local.clone(),
            },
        ]
    } else {
        Vec::new()
    };
    let subject = sa.subject.clone();
    Step {
        key: concat(&[
            StepKind::IpsecInstall.as_str(),
            ":",
            &subject,
            "@",
            local.as_str(),
            "->",
            remote.as_str(),
        ]),
        kind: StepKind::IpsecInstall,
        subject,
        target: Target::Host(local.clone()),
        action: Action::IpsecInstall {
            link: link.clone(),
            local: local.clone(),
            local_address: addr(local),
            remote: remote.clone(),
            remote_address: addr(remote),
            proposals: sa.link.ipsec.proposals.clone(),
            initiate,
        },
        precondition: Vec::new(),
        effect,
        inverse: undo(Action::IpsecRemove {
            link,
            local: local.clone(),
            remote: remote.clone(),
        }),
    }
}

/// 345: install each needed SA, one step per end (the responder loads, then the initiator
/// loads and brings the SA up). Block-first installs after the migration, prestaged before it;
/// the VM restarts only once the SA is up. A new link between VMs that stay is installed alone.
pub(crate) struct IpsecPass;
impl Pass for IpsecPass {
    fn name(&self) -> &'static str {
        "ipsec.install"
    }
    fn apply<'d>(&self, diff: &'d Diff, draft: &mut Draft<'d>) -> Result<(), PlanError> {
        for sa in &diff.installs {
            // One copy per VM that needs it; the dedupe pass merges them.
            let owners: Vec<Option<&str>> = if sa.movers.is_empty() {
                vec![None]
            } else {
                sa.movers.iter().map(|m| Some(*m)).collect()
            };
            for owner in owners {
                let responder = draft.add(install_step(diff, sa, &sa.responder, false));
                let initiator = draft.add(install_step(diff, sa, &sa.initiator, true));
                draft.edge(Some(responder), initiator);
                draft.sa_up.insert(&sa.pair, initiator);
                let Some(mover) = owner.and_then(|vm| diff.mover(vm)) else {
                    continue;
                };
                let steps = draft.vm(mover);
                match (diff.moves[mover].strategy, steps.migrate) {
                    (Strategy::Prestaged, Some(migrate)) => draft.edge(Some(initiator), migrate),
                    _ => draft.edge(steps.migrate, responder),
                }
                if let Some(restart) = steps.restart {
                    draft.edge(Some(initiator), restart);
                }
            }
        }
        Ok(())
    }
}

/// 355-365: for a moving VM that talks to peers through an SA on its new host, or whose
/// discovered non-managed connections are not secured: once it runs on the target and its SAs
/// are up, find the connections that persist and reset the unsecured ones.
pub(crate) struct ConnectionsPass;
impl Pass for ConnectionsPass {
    fn name(&self) -> &'static str {
        "connections.secure"
    }
    fn apply<'d>(&self, diff: &'d Diff, draft: &mut Draft<'d>) -> Result<(), PlanError> {
        let tls_ports = diff.desired.policy.tls_ports.clone();
        for (i, m) in diff.moves.iter().enumerate() {
            let vm = &m.vm.name;
            // A VM that talks to peers through an SA after the move gets the step even when
            // discovery saw nothing to reset: a connection set up after discovery (or while
            // a pre-staged VM still runs at its source) would otherwise stay cut, never reset.
            // When there is nothing to reset at run time, the walker finds the effect holding
            // and skips it.
            if m.needs.is_empty() && !diff.has_unsecured_connections(vm) {
                continue;
            }
            let mut pre = Vec::new();
            if m.restarts() {
                pre.push(Fact::DomainRunning {
                    domain: m.vm.domain.clone(),
                    host: m.to.clone(),
                });
            }
            pre.extend(sa_up_facts(m));
            let s = step(
                StepKind::ConnectionsSecure,
                vm_subject(m),
                Target::Host(m.to.clone()),
                Action::SecureConnections {
                    vm: vm.clone(),
                    host: m.to.clone(),
                    address: m.vm.address,
                    tls_ports: tls_ports.clone(),
                },
                pre,
                vec![Fact::ConnectionsSecured {
                    vm: vm.clone(),
                    tls_ports: tls_ports.clone(),
                }],
                Inverse::Nothing,
            );
            let ix = draft.add_for(i, s);
            let steps = draft.vm(i);
            draft.edge(steps.restart.or(steps.migrate), ix);
            for pair in &m.needs {
                let init = draft.sa_up.get(pair).copied();
                draft.edge(init, ix);
            }
            draft.vm_mut(i).secure = Some(ix);
        }
        Ok(())
    }
}

/// 370: re-enable the VM's traffic on the target: over the secure link only when it now sits
/// in an untrusted environment or talks to peers across one. Rolling back blocks again.
pub(crate) struct EnablePass;
impl Pass for EnablePass {
    fn name(&self) -> &'static str {
        "enable"
    }
    fn apply<'d>(&self, diff: &'d Diff, draft: &mut Draft<'d>) -> Result<(), PlanError> {
        for (i, m) in diff.moves.iter().enumerate() {
            let vm = &m.vm.name;
            let host = m.to.clone();
            let peers = m.peers.clone();
            let mut pre = Vec::new();
            if m.restarts() {
                pre.push(Fact::DomainRunning {
                    domain: m.vm.domain.clone(),
                    host: host.clone(),
                });
            }
            pre.extend(sa_up_facts(m));
            let steps = draft.vm(i);
            if steps.secure.is_some() {
                pre.push(Fact::ConnectionsSecured {
                    vm: vm.clone(),
                    tls_ports: diff.desired.policy.tls_ports.clone(),
                });
            }
            let s = step(
                StepKind::Enable,
                vm_subject(m),
                Target::Host(host.clone()),
                Action::Unblock {
                    vm: vm.clone(),
                    host: host.clone(),
                    address: m.vm.address,
                    peers: peers.clone(),
                    secure_only: !diff.desired.is_trusted(&host) || !m.needs.is_empty(),
                },
                pre,
                vec![Fact::NotBlocked {
                    vm: vm.clone(),
                    host: host.clone(),
                }],
                undo(Action::Block {
                    vm: vm.clone(),
                    host,
                    address: m.vm.address,
                    peers,
                    allow_ipsec: false,
                }),
            );
            let ix = draft.add_for(i, s);
            draft.edge(steps.restart.or(steps.migrate), ix);
            draft.edge(steps.secure, ix);
            for pair in &m.needs {
                let init = draft.sa_up.get(pair).copied();
                draft.edge(init, ix);
            }
            draft.vm_mut(i).enable = Some(ix);
        }
        Ok(())
    }
}

/// 375-390: once the subnet's VMs are enabled, wait until the routing core routes the subnet
/// without the tunnel, then remove the tunnel. Stale tunnels get the same two steps.
pub(crate) struct RouteCheckPass;
impl Pass for RouteCheckPass {
    fn name(&self) -> &'static str {
        "route.check"
    }
    fn apply<'d>(&self, diff: &'d Diff, draft: &mut Draft<'d>) -> Result<(), PlanError> {
        let policy = &diff.desired.policy;
        let mut pairs = Vec::new();
        for sm in &diff.subnet_moves {
            let waits: Vec<Option<usize>> = sm
                .movers
                .iter()
                .flat_map(|&i| {
                    let s = draft.vm(i);
                    [s.enable, s.tunnel_add]
                })
                .collect();
            pairs.push((
                sm.subnet,
                &sm.subject,
                sm.core.clone(),
                sm.remote.clone(),
                sm.remote_address,
                waits,
            ));
        }
        for st in &diff.stale_tunnels {
            pairs.push((
                st.subnet,
                &st.subject,
                st.core.clone(),
                st.remote.clone(),
                st.remote_address,
                Vec::new(),
            ));
        }
        for (subnet, subject, core, remote, remote_address, waits) in pairs {
            let name = &subnet.name;
            let check = draft.add(step(
                StepKind::RouteCheck,
                subject.clone(),
                Target::RoutingCore(core.clone()),
                Action::RouteCheck {
                    core: core.clone(),
                    subnet: name.clone(),
                    cidr: subnet.cidr,
                    timeout_s: policy.route_check_timeout_s,
                    interval_s: policy.route_check_interval_s,
                },
                vec![Fact::TunnelPresent {
                    subnet: name.clone(),
                    core: core.clone(),
                }],
                vec![Fact::RouteLearned {
                    core: core.clone(),
                    subnet: name.clone(),
                    cidr: subnet.cidr,
                }],
                Inverse::Nothing,
            ));
            for w in waits {
                draft.edge(w, check);
            }
            let remove = draft.add(step(
                StepKind::TunnelRemove,
                subject.clone(),
                Target::RoutingCore(core.clone()),
                Action::TunnelRemove {
                    subnet: name.clone(),
                    cidr: subnet.cidr,
                    core: core.clone(),
                    remote: remote.clone(),
                    remote_address,
                },
                vec![
                    Fact::RouteLearned {
                        core: core.clone(),
                        subnet: name.clone(),
                        cidr: subnet.cidr,
                    },
                    Fact::TunnelPresent {
                        subnet: name.clone(),
                        core: core.clone(),
                    },
                ],
                vec![Fact::TunnelAbsent {
                    subnet: name.clone(),
                    core: core.clone(),
                }],
                undo(Action::TunnelAdd {
                    subnet: name.clone(),
                    cidr: subnet.cidr,
                    core,
                    remote,
                    remote_address,
                }),
            ));
            draft.edge(Some(check), remove);
        }
        Ok(())
    }
}

/// Remove leftovers once the VM is enabled on the target: its block rule and stale IPsec on
/// the source, and the other ends of SAs no longer needed (also of links removed from the
/// configuration), each only after every moving VM of the link is inside.
pub(crate) struct CleanupPass;
impl Pass for CleanupPass {
    fn name(&self) -> &'static str {
        "cleanup"
    }
    fn apply<'d>(&self, diff: &'d Diff, draft: &mut Draft<'d>) -> Result<(), PlanError> {
        let link_waits = |draft: &Draft, link: &str| -> Vec<Option<usize>> {
            diff.desired
                .secure_links
                .get(link)
                .into_iter()
                .flat_map(|l| l.between.iter())
                .filter_map(|m| diff.mover(m))
                .map(|i| draft.vm(i).enable)
                .collect()
        };
        for (i, m) in diff.moves.iter().enumerate() {
            let vm = &m.vm.name;
            let links = diff
                .cleanup_links
                .get(vm.as_str())
                .cloned()
                .unwrap_or_default();
            let mut effect = vec![Fact::NotBlocked {
                vm: vm.clone(),
                host: m.from.clone(),
            }];
            effect.extend(links.iter().map(|l| Fact::IpsecAbsent {
                link: l.clone(),
                host: m.from.clone(),
            }));
            let ix = draft.add_for(
                i,
                step(
                    StepKind::Cleanup,
                    vm_subject(m),
                    Target::Host(m.from.clone()),
                    Action::Cleanup {
                        vm: vm.clone(),
                        host: m.from.clone(),
                        ipsec_links: links.clone(),
                    },
                    vec![Fact::DomainAbsent {
                        domain: m.vm.domain.clone(),
                        host: m.from.clone(),
                    }],
                    effect,
                    Inverse::Nothing,
                ),
            );
            let enable = draft.vm(i).enable;
            draft.edge(enable, ix);
            for l in &links {
                for w in link_waits(draft, l) {
                    draft.edge(w, ix);
                }
            }
        }
        for end in &diff.stale {
            let inverse = match (end.configured, diff.host(&end.host), diff.host(&end.remote)) {
                (Some(link), Some(h), Some(r)) => undo(Action::IpsecInstall {
                    link: link.name.clone(),
                    local: end.host.clone(),
                    local_address: h.address,
                    remote: end.remote.clone(),
                    remote_address: r.address,
                    proposals: link.ipsec.proposals.clone(),
                    initiate: true,
                }),
                (Some(_), _, _) => Inverse::PointOfNoReturn {
                    reason: format!("host {} or {} is no longer declared", end.host, end.remote),
                },
                (None, _, _) => Inverse::PointOfNoReturn {
                    reason: format!(
                        "secure_link.{} is no longer in the configuration, so its key cannot be loaded again",
                        end.link
                    ),
                },
            };
            let subject = Name::from(format!("secure_link.{}", end.link));
            let ix = draft.add(Step {
                key: format!(
                    "{}:{subject}@{}->{}",
                    StepKind::Cleanup,
                    end.host,
                    end.remote
                ),
                kind: StepKind::Cleanup,
                subject,
                target: Target::Host(end.host.clone()),
                action: Action::IpsecRemove {
                    link: end.link.clone(),
                    local: end.host.clone(),
                    remote: end.remote.clone(),
                },
                precondition: Vec::new(),
                effect: vec![Fact::SaAbsent {
                    link: end.link.clone(),
                    host: end.host.clone(),
                    remote: end.remote.clone(),
                }],
                inverse,
            });
            for i in end.wait_for.iter().filter_map(|vm| diff.mover(vm)) {
                let enable = draft.vm(i).enable;
                draft.edge(enable, ix);
            }
        }
        Ok(())
    }
}

/// Merge steps with the same key: a tunnel or an SA shared by several moving VMs runs once.
pub(crate) struct DedupePass;
impl Pass for DedupePass {
    fn name(&self) -> &'static str {
        "dedupe"
    }
    fn apply<'d>(&self, _diff: &'d Diff, draft: &mut Draft<'d>) -> Result<(), PlanError> {
        draft.dedupe();
        Ok(())
    }
}

/// Drop edges implied by longer paths, so the plan shows only direct dependencies.
pub(crate) struct TransitiveReductionPass;
impl Pass for TransitiveReductionPass {
    fn name(&self) -> &'static str {
        "transitive reduction"
    }
    fn apply<'d>(&self, _diff: &'d Diff, draft: &mut Draft<'d>) -> Result<(), PlanError> {
        draft.reduce()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MigrationMode;
    use crate::plan::synthetic::Fixture;
    use crate::plan::PlanOptions;

    /// Runs `passes` in order on the fixture; returns the draft's steps and edges.
    fn run(f: &Fixture, passes: &[&dyn Pass]) -> Draft<'static> {
        let diff = match Diff::new(&f.desired, &f.observed, &PlanOptions::default()) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let mut d = Draft::default();
        for p in passes {
            p.apply(&diff, &mut d).unwrap();
        }
        Draft {
            steps: d.steps,
            edges: d.edges,
            ..Draft::default()
        }
    }

    fn keys<'a>(d: &'a Draft<'_>) -> Vec<&'a str> {
        d.steps.iter().map(|s| s.key.as_str()).collect()
    }

    fn has_edge(d: &Draft, from: &str, to: &str) -> bool {
        let ix = |k: &str| d.steps.iter().position(|s| s.key == k).unwrap();
        d.edges.contains(&(ix(from), ix(to)))
    }

    const MOVE: [&dyn Pass; 6] = [
        &BlockPass,
        &ShutdownPass,
        &MigratePass,
        &SubnetTunnelPass,
        &RestartPass,
        &IpsecPass,
    ];

    fn prestaged() -> Fixture {
        Fixture::reference().migration("db", MigrationMode::Live, Strategy::Prestaged)
    }

    fn cold() -> Fixture {
        Fixture::reference().migration("db", MigrationMode::Cold, Strategy::BlockFirst)
    }

    fn whole_subnet() -> Fixture {
        Fixture::new()
            .environment("dc", true, &["hv1", "hv2"], true)
            .environment("cloud", false, &["c1"], false)
            .subnet("app", "192.168.10.0/24")
            .subnet("data", "192.168.20.0/24")
            .vm("web", "app", "192.168.10.11", "dc.hv1", "dc.hv1")
            .vm("db1", "data", "192.168.20.11", "dc.hv2", "cloud.c1")
            .vm("db2", "data", "192.168.20.12", "dc.hv2", "cloud.c1")
            .link("web_db1", &["web", "db1"])
    }

    #[test]
    fn block_goes_on_the_source_or_on_the_target_when_prestaged() {
        let d = run(&Fixture::reference(), &[&BlockPass]);
        assert_eq!(keys(&d), ["block:vm.db@dc.hv2", "block:vm.db@cloud.c1"]);
        assert!(matches!(
            d.steps[0].precondition[0],
            Fact::DomainRunning { .. }
        ));
        // Block-first also blocks on the target before the VM arrives, for enable to lift.
        assert!(matches!(
            d.steps[1].precondition[0],
            Fact::DomainAbsent { .. }
        ));
        let d = run(&prestaged(), &[&BlockPass]);
        assert_eq!(keys(&d), ["block:vm.db@cloud.c1"]);
        assert!(matches!(
            d.steps[0].precondition[0],
            Fact::DomainAbsent { .. }
        ));
    }

    #[test]
    fn shutdown_only_in_cold_mode() {
        assert_eq!(
            run(&Fixture::reference(), &[&BlockPass, &ShutdownPass])
                .steps
                .len(),
            2
        );
        let d = run(&cold(), &[&BlockPass, &ShutdownPass]);
        assert_eq!(
            keys(&d),
            [
                "block:vm.db@dc.hv2",
                "block:vm.db@cloud.c1",
                "shutdown:vm.db@dc.hv2"
            ]
        );
        assert!(has_edge(&d, "block:vm.db@dc.hv2", "shutdown:vm.db@dc.hv2"));
    }

    #[test]
    fn migrate_follows_block_and_shutdown() {
        let d = run(&cold(), &[&BlockPass, &ShutdownPass, &MigratePass]);
        assert!(has_edge(
            &d,
            "shutdown:vm.db@dc.hv2",
            "migrate:vm.db@dc.hv2"
        ));
        assert!(has_edge(&d, "block:vm.db@dc.hv2", "migrate:vm.db@dc.hv2"));
        assert!(has_edge(&d, "block:vm.db@cloud.c1", "migrate:vm.db@dc.hv2"));
        let m = &d.steps[3];
        assert!(m.effect.contains(&Fact::DomainShutOff {
            domain: "db".into(),
            host: HostId::new("cloud", "c1"),
        }));
    }

    #[test]
    fn tunnel_copies_per_vm_merge_into_one_after_dedupe() {
        let f = whole_subnet();
        let d = run(
            &f,
            &[&BlockPass, &ShutdownPass, &MigratePass, &SubnetTunnelPass],
        );
        let tunnel = "tunnel.add:subnet.data@dc.routing_core";
        assert_eq!(keys(&d).iter().filter(|k| **k == tunnel).count(), 2);
        let d = run(
            &f,
            &[
                &BlockPass,
                &ShutdownPass,
                &MigratePass,
                &SubnetTunnelPass,
                &DedupePass,
            ],
        );
        assert_eq!(keys(&d).iter().filter(|k| **k == tunnel).count(), 1);
        assert!(has_edge(&d, "migrate:vm.db1@dc.hv2", tunnel));
        assert!(has_edge(&d, "migrate:vm.db2@dc.hv2", tunnel));
    }

    #[test]
    fn restart_resumes_live_and_starts_cold_after_the_tunnel() {
        let d = run(&whole_subnet(), &MOVE);
        assert!(has_edge(
            &d,
            "tunnel.add:subnet.data@dc.routing_core",
            "restart:vm.db1@cloud.c1"
        ));
        let r = d
            .steps
            .iter()
            .find(|s| s.kind == StepKind::Restart)
            .unwrap();
        assert!(matches!(r.action, Action::Resume { .. }));
        let d = run(&cold(), &MOVE);
        let r = d
            .steps
            .iter()
            .find(|s| s.kind == StepKind::Restart)
            .unwrap();
        assert!(matches!(r.action, Action::Start { .. }));
    }

    #[test]
    fn ipsec_ends_are_ordered_and_placed_by_strategy() {
        let resp = "ipsec.install:secure_link.web_db@dc.hv1->cloud.c1";
        let init = "ipsec.install:secure_link.web_db@cloud.c1->dc.hv1";
        let d = run(&Fixture::reference(), &MOVE);
        assert!(has_edge(&d, resp, init));
        assert!(has_edge(&d, "migrate:vm.db@dc.hv2", resp));
        assert!(has_edge(&d, init, "restart:vm.db@cloud.c1"));
        let d = run(&prestaged(), &MOVE);
        assert!(has_edge(&d, init, "migrate:vm.db@dc.hv2"));
        assert!(!has_edge(&d, "migrate:vm.db@dc.hv2", resp));
        // A new link between VMs that stay: two steps, no VM edges.
        let f = Fixture::reference().vm("db", "app", "192.168.10.12", "cloud.c1", "cloud.c1");
        let d = run(&f, &MOVE);
        assert_eq!(keys(&d), [resp, init]);
        assert_eq!(d.edges, [(0, 1)]);
    }

    #[test]
    fn connections_are_secured_behind_ipsec_or_when_some_are_not() {
        let all = [&ConnectionsPass as &dyn Pass];
        let passes: Vec<&dyn Pass> = MOVE.iter().copied().chain(all).collect();
        let secures = |f: &Fixture, vm: &str| {
            run(f, &passes)
                .steps
                .iter()
                .any(|s| s.kind == StepKind::ConnectionsSecure && s.subject == format!("vm.{vm}"))
        };
        // db talks to web through an SA after its move: always, even with nothing seen now.
        let f = Fixture::reference();
        assert!(secures(&f, "db"));
        // A move inside the trusted site: only when something unsecured persists (5432 is a
        // TLS port of the policy, 22 is not).
        let f = f
            .vm("app", "app", "192.168.10.20", "dc.hv2", "dc.hv1")
            .connection("app", "192.168.10.20:5432", "192.168.10.11:1", false);
        assert!(!secures(&f, "app"));
        let f = f.connection("app", "192.168.10.20:22", "192.168.10.11:2", false);
        assert!(secures(&f, "app"));
        let d = run(&f, &passes);
        assert!(has_edge(
            &d,
            "restart:vm.app@dc.hv1",
            "connections.secure:vm.app@dc.hv1"
        ));
    }

    #[test]
    fn enable_waits_for_restart_securing_and_the_sa() {
        let f = Fixture::reference().connection("db", "192.168.10.12:22", "192.168.10.11:2", false);
        let passes: Vec<&dyn Pass> = MOVE
            .iter()
            .copied()
            .chain([&ConnectionsPass as &dyn Pass, &EnablePass])
            .collect();
        let d = run(&f, &passes);
        let enable = "enable:vm.db@cloud.c1";
        assert!(has_edge(&d, "restart:vm.db@cloud.c1", enable));
        assert!(has_edge(&d, "connections.secure:vm.db@cloud.c1", enable));
        assert!(has_edge(
            &d,
            "ipsec.install:secure_link.web_db@cloud.c1->dc.hv1",
            enable
        ));
        let e = d.steps.iter().find(|s| s.key == enable).unwrap();
        assert!(matches!(
            e.action,
            Action::Unblock {
                secure_only: true,
                ..
            }
        ));
    }

    #[test]
    fn route_check_waits_for_every_enable_then_the_tunnel_goes() {
        let passes: Vec<&dyn Pass> = MOVE
            .iter()
            .copied()
            .chain([&ConnectionsPass as &dyn Pass, &EnablePass, &RouteCheckPass])
            .collect();
        let d = run(&whole_subnet(), &passes);
        let check = "route.check:subnet.data@dc.routing_core";
        assert!(has_edge(&d, "enable:vm.db1@cloud.c1", check));
        assert!(has_edge(&d, "enable:vm.db2@cloud.c1", check));
        assert!(has_edge(
            &d,
            check,
            "tunnel.remove:subnet.data@dc.routing_core"
        ));
    }

    #[test]
    fn cleanup_follows_enable_and_stale_ipsec_waits_for_the_link() {
        let f = Fixture::reference()
            .vm("db", "app", "192.168.10.12", "cloud.c1", "dc.hv2")
            .sa_up("web_db", "dc.hv1", "cloud.c1");
        let passes: Vec<&dyn Pass> = MOVE
            .iter()
            .copied()
            .chain([&ConnectionsPass as &dyn Pass, &EnablePass, &CleanupPass])
            .collect();
        let d = run(&f, &passes);
        assert!(has_edge(
            &d,
            "enable:vm.db@dc.hv2",
            "cleanup:vm.db@cloud.c1"
        ));
        assert!(has_edge(
            &d,
            "enable:vm.db@dc.hv2",
            "cleanup:secure_link.web_db@dc.hv1->cloud.c1"
        ));
        assert!(d.steps.iter().all(|s| s.kind != StepKind::IpsecInstall));
    }

    #[test]
    fn reduction_keeps_only_direct_dependencies() {
        let passes: Vec<&dyn Pass> = MOVE
            .iter()
            .copied()
            .chain([
                &ConnectionsPass as &dyn Pass,
                &EnablePass,
                &RouteCheckPass,
                &CleanupPass,
                &DedupePass,
            ])
            .collect();
        let f = Fixture::reference();
        let d = run(&f, &passes);
        let init = "ipsec.install:secure_link.web_db@cloud.c1->dc.hv1";
        assert!(has_edge(&d, init, "enable:vm.db@cloud.c1"));
        let diff = Diff::new(&f.desired, &f.observed, &PlanOptions::default()).unwrap();
        let mut d = Draft {
            steps: d.steps,
            edges: d.edges,
            ..Draft::default()
        };
        TransitiveReductionPass.apply(&diff, &mut d).unwrap();
        assert!(!has_edge(&d, init, "enable:vm.db@cloud.c1"));
        assert!(has_edge(&d, init, "restart:vm.db@cloud.c1"));
    }
}
