//! The diff between the desired and the discovered landscape: where each VM runs now and
//! afterwards, which VMs move (FIG. 3 blocks 310/315), which IPsec SAs the landscape needs and
//! which are stale, which subnets leave whole, and the resource-level changes a reviewer reads.
//! The graph passes read this; nothing here builds steps.

use super::{
    sa_pair_ref, ChangeAction, PlanContext, PlanError, PlanOptions, ResourceChange, SaPair,
    SaPairRef,
};
use crate::model::{
    DomainState, Host, HostId, Landscape, MigrationMode, Name, Observed, SecureLink, Strategy,
    Subnet, Vm,
};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use serde_json::{json, Map, Value};
use std::collections::hash_map::Entry;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Which resources `--target` / `--exclude` leave in the plan. A target pulls in what it
/// depends on: `secure_link.L` pulls in the VMs it joins.
#[derive(Debug, Default)]
pub(crate) struct Selection {
    all: bool,
    vms: HashSet<String>,
    links: HashSet<String>,
    subnets: HashSet<String>,
    ex_vms: HashSet<String>,
    ex_links: HashSet<String>,
    ex_subnets: HashSet<String>,
}

impl Selection {
    fn new(
        desired: &Landscape,
        observed_links: &HashSet<&str>,
        opts: &PlanOptions,
    ) -> Result<Self, Vec<PlanError>> {
        let mut sel = Selection {
            all: opts.targets.is_empty(),
            ..Default::default()
        };
        let mut errors = Vec::new();
        let known = |kind: &str, name: &str| match kind {
            "vm" => desired.vms.contains_key(name),
            "secure_link" => {
                desired.secure_links.contains_key(name) || observed_links.contains(name)
            }
            "subnet" => desired.subnets.contains_key(name),
            _ => false,
        };
        for (flag, list) in [("target", &opts.targets), ("exclude", &opts.excludes)] {
            for address in list {
                let parsed = address
                    .split_once('.')
                    .filter(|(kind, name)| known(kind, name));
                let Some((kind, name)) = parsed else {
                    errors.push(PlanError::UnknownTarget {
                        flag,
                        address: address.clone(),
                    });
                    continue;
                };
                let name = name.to_string();
                match (flag, kind) {
                    ("target", "vm") => {
                        sel.vms.insert(name);
                    }
                    ("target", "secure_link") => {
                        if let Some(link) = desired.secure_links.get(&name) {
                            sel.vms.extend(link.between.iter().map(|m| m.to_string()));
                        }
                        sel.links.insert(name);
                    }
                    ("target", _) => {
                        sel.subnets.insert(name);
                    }
                    (_, "vm") => {
                        sel.ex_vms.insert(name);
                    }
                    (_, "secure_link") => {
                        sel.ex_links.insert(name);
                    }
                    _ => {
                        sel.ex_subnets.insert(name);
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(sel)
        } else {
            Err(errors)
        }
    }

    /// Whether the VM's own move is in the plan.
    pub fn vm(&self, name: &str) -> bool {
        (self.all || self.vms.contains(name)) && !self.ex_vms.contains(name)
    }

    /// Whether link-level changes (a new link, a repair, a removed link) are in the plan.
    /// Excluding a VM excludes the links that depend on it.
    pub fn link(&self, name: &str, members: &[Name]) -> bool {
        (self.all || self.links.contains(name))
            && !self.ex_links.contains(name)
            && !members.iter().any(|m| self.ex_vms.contains(m.as_str()))
    }

    /// Whether subnet-level steps (tunnels) may be planned. VM moves pull their subnet in.
    pub fn subnet(&self, name: &str, pulled_in: bool) -> bool {
        (self.all || pulled_in || self.subnets.contains(name)) && !self.ex_subnets.contains(name)
    }
}

/// Where a VM's domain is now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Current<'a> {
    pub vm: &'a Vm,
    pub host: &'a HostId,
    pub state: DomainState,
    /// The desired host (`vm.host`), as the declared host's own id: the ids of the few
    /// hosts stay in cache, the VMs' copies do not.
    pub want: &'a HostId,
}

/// A VM that changes host (310/315).
#[derive(Debug, Clone)]
pub(crate) struct Move<'a> {
    pub vm: &'a Vm,
    /// `vm.<name>`, the subject of the VM's steps.
    pub subject: Name,
    pub from: &'a HostId,
    pub to: &'a HostId,
    pub state: DomainState,
    /// Shut down (or already shut off) and moved as a definition.
    pub offline: bool,
    pub strategy: Strategy,
    /// The SAs the VM needs on its new host, given where its peers end up.
    pub needs: Vec<SaPair>,
    /// Addresses of its secure_link peers, sorted.
    pub peers: Vec<Ipv4Addr>,
}

impl Move<'_> {
    /// The host the fail-closed block goes on: the source (block-first) or the target
    /// (prestaged).
    pub fn block_host(&self) -> &HostId {
        match self.strategy {
            Strategy::BlockFirst => self.from,
            Strategy::Prestaged => self.to,
        }
    }
    /// Whether the VM runs (or is paused) before the move, and so is restarted after it.
    pub fn restarts(&self) -> bool {
        self.state != DomainState::ShutOff
    }
    /// Pre-staged live move of a running VM: its SAs are up before it moves, so it arrives
    /// running (libvirt resumes it at the switchover) behind the target's filter, which lets
    /// through only flows carried by the SA; no separate `restart`.
    pub fn arrives_running(&self) -> bool {
        self.strategy == Strategy::Prestaged && !self.offline && self.state == DomainState::Running
    }
}

/// An SA the plan installs: one step per end, the responder loading first.
#[derive(Debug, Clone)]
pub(crate) struct SaInstall<'a> {
    pub pair: SaPair,
    /// `secure_link.<name>`, the subject of its steps.
    pub subject: Name,
    pub link: &'a SecureLink,
    pub initiator: HostId,
    pub responder: HostId,
    /// Moving VMs whose new host is an end of the pair.
    pub movers: Vec<&'a str>,
}

/// One end of an SA that is no longer needed.
#[derive(Debug, Clone)]
pub(crate) struct StaleEnd<'a> {
    pub link: Name,
    pub host: HostId,
    pub remote: HostId,
    /// The link as configured, or `None` when it was removed from the configuration.
    pub configured: Option<&'a SecureLink>,
    /// Moving VMs of the link: the removal waits until they are enabled.
    pub wait_for: Vec<&'a str>,
}

/// A subnet all of whose VMs end up in another environment, with at least one moving now
/// (335/340).
#[derive(Debug, Clone)]
pub(crate) struct SubnetMove<'a> {
    pub subnet: &'a Subnet,
    /// `subnet.<name>`, the subject of its steps.
    pub subject: Name,
    /// Environment whose routing core is the local end of the tunnel.
    pub core: Name,
    pub remote: HostId,
    pub remote_address: Ipv4Addr,
    /// Moving VMs of the subnet, by position in `Diff::moves`.
    pub movers: Vec<usize>,
    pub tunnel_present: bool,
}

/// A smig tunnel found on a routing core with no move that needs it.
#[derive(Debug, Clone)]
pub(crate) struct StaleTunnel<'a> {
    pub subnet: &'a Subnet,
    pub subject: Name,
    pub core: Name,
    pub remote: HostId,
    pub remote_address: Ipv4Addr,
}

/// Everything the passes need, computed once.
pub(crate) struct Diff<'a> {
    pub desired: &'a Landscape,
    pub observed: &'a Observed,
    /// Where each VM runs now, in `desired.vms` order.
    pub current: Vec<Option<Current<'a>>>,
    pub moves: Vec<Move<'a>>,
    /// Each moving VM's position in `moves`.
    move_of: HashMap<&'a str, u32>,
    /// Where each VM runs afterwards, in `desired.vms` order.
    pub final_list: Vec<&'a HostId>,
    /// The secure_link peers of each moving VM, link by link: (link, the peer's position in
    /// `desired.vms`), so asking for peers and SAs indexes the lists above instead of hashing
    /// names.
    pub vm_links: Vec<Vec<(&'a Name, u32)>>,
    /// The declared hosts by id (see [`Diff::host`]).
    hosts: HashMap<&'a HostId, &'a Host>,
    /// The SAs the landscape needs once the plan is applied, sorted (by link first).
    pub needed_sorted: Vec<SaPair>,
    pub established: BTreeSet<SaPair>,
    pub installs: Vec<SaInstall<'a>>,
    pub stale: Vec<StaleEnd<'a>>,
    /// Links whose stale IPsec on the VM's source host the VM's cleanup removes.
    pub cleanup_links: HashMap<&'a str, Vec<Name>>,
    pub subnet_moves: Vec<SubnetMove<'a>>,
    pub stale_tunnels: Vec<StaleTunnel<'a>>,
    pub warnings: Vec<String>,
    /// Observed SA ends per link: (host, remote, SA up), sorted.
    observed_sas: HashMap<&'a str, Vec<(&'a HostId, &'a HostId, bool)>>,
}

impl<'a> Diff<'a> {
    /// Computes the diff, collecting every error.
    pub fn new(
        desired: &'a Landscape,
        observed: &'a Observed,
        opts: &PlanOptions,
    ) -> Result<Self, PlanError> {
        let mut observed_sas: HashMap<&str, Vec<(&HostId, &HostId, bool)>> = HashMap::new();
        for (hid, host) in &observed.hosts {
            for c in &host.ipsec {
                observed_sas
                    .entry(c.link.as_str())
                    .or_default()
                    .push((hid, &c.remote, c.sa_up));
            }
        }
        for ends in observed_sas.values_mut() {
            ends.sort();
            // One entry per (host, remote); the SA is up if any record says so.
            ends.dedup_by(|b, a| {
                let same = a.0 == b.0 && a.1 == b.1;
                if same {
                    a.2 |= b.2;
                }
                same
            });
        }
        let observed_links: HashSet<&str> = observed_sas.keys().copied().collect();
        let selection = Selection::new(desired, &observed_links, opts)
            .map_err(|e| PlanError::combine(e).unwrap_or(PlanError::Multiple { errors: vec![] }))?;

        let mut errors = Vec::new();
        let mut warnings = Vec::new();

        // Where each domain is defined: one pass over the discovered hosts. Nearly every
        // domain is defined once; the others keep all their definitions in `defined_more`.
        let domains = observed.hosts.values().map(|h| h.domains.len()).sum();
        // Keyed by the address of the interned name, so neither side reads text.
        let mut placements: HashMap<usize, (&HostId, DomainState)> =
            HashMap::with_capacity(domains);
        let mut defined_more: HashMap<usize, Vec<(&HostId, DomainState)>> = HashMap::new();
        for (hid, host) in &observed.hosts {
            for (name, d) in &host.domains {
                match placements.entry(name.addr()) {
                    Entry::Vacant(e) => {
                        e.insert((hid, d.state));
                    }
                    Entry::Occupied(e) => defined_more
                        .entry(name.addr())
                        .or_insert_with(|| vec![*e.get()])
                        .push((hid, d.state)),
                }
            }
        }

        // Hash sets of declared hosts: one lookup per VM, not two tree walks.
        let declared: HashSet<&HostId> = desired.hosts().map(|h| &h.id).collect();
        // The hosts by id, as `Landscape::host` finds them.
        let hosts: HashMap<&HostId, &Host> = desired
            .hosts()
            .filter(|h| desired.host(&h.id).is_some_and(|x| std::ptr::eq(x, *h)))
            .map(|h| (&h.id, h))
            .collect();
        let discovered: HashSet<&HostId> = observed.hosts.keys().collect();
        // Where each VM runs now, in `desired.vms` order.
        let mut current_list: Vec<Option<Current>> = Vec::with_capacity(desired.vms.len());
        for (name, vm) in &desired.vms {
            let single;
            let found: &[(&HostId, DomainState)] = match placements.get(&vm.domain.addr()) {
                None => &[],
                Some(one) => match defined_more.get(&vm.domain.addr()) {
                    Some(all) => all,
                    None => {
                        single = [*one];
                        &single
                    }
                },
            };
            // A single definition is the answer whatever its state: no list to build.
            let active: Vec<_> = match found {
                [_] => Vec::new(),
                _ => found
                    .iter()
                    .filter(|(_, s)| *s != DomainState::ShutOff)
                    .collect(),
            };
            let list = |v: &[&(&HostId, DomainState)]| {
                v.iter()
                    .map(|(h, _)| h.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let here = match (active.as_slice(), found) {
                ([one], _) => {
                    if found.len() > 1 {
                        let others: Vec<_> = found.iter().filter(|(h, _)| h != &one.0).collect();
                        warnings.push(format!(
                            "vm.{name}: domain `{}` is also defined (shut off) on {}",
                            vm.domain,
                            list(&others)
                        ));
                    }
                    Some(**one)
                }
                ([], [one]) => Some(*one),
                ([], []) => {
                    errors.push(PlanError::VmNotDiscovered {
                        vm: name.clone(),
                        domain: vm.domain.to_string(),
                    });
                    None
                }
                ([], many) => {
                    errors.push(PlanError::VmOnTwoHosts {
                        vm: name.clone(),
                        domain: vm.domain.to_string(),
                        how: "defined (shut off)",
                        hosts: list(&many.iter().collect::<Vec<_>>()),
                    });
                    None
                }
                (many, _) => {
                    errors.push(PlanError::VmOnTwoHosts {
                        vm: name.clone(),
                        domain: vm.domain.to_string(),
                        how: "running",
                        hosts: list(many),
                    });
                    None
                }
            };
            let want = hosts.get(&vm.host).map(|h| &h.id);
            if want.is_none() && !declared.contains(&vm.host) {
                errors.push(PlanError::UnknownHost {
                    what: format!("vm.{name} is placed on"),
                    host: vm.host.to_string(),
                });
            }
            if let Some((host, state)) = here {
                if !declared.contains(host) {
                    errors.push(PlanError::UnknownHost {
                        what: format!("vm.{name} runs on"),
                        host: host.to_string(),
                    });
                }
                let here = Current {
                    vm,
                    host,
                    state,
                    want: want.unwrap_or(&vm.host),
                };
                current_list.push(Some(here));
            } else {
                current_list.push(None);
            }
        }

        let unknown_vm = |link: &SecureLink, m: &Name| PlanError::UnknownVm {
            link: link.name.to_string(),
            vm: m.to_string(),
        };
        if !errors.is_empty() {
            // Report links naming something that is not a VM with these; without other errors
            // the pass over the links below finds them.
            for link in desired.secure_links.values() {
                for m in link
                    .between
                    .iter()
                    .filter(|m| !desired.vms.contains_key(m.as_str()))
                {
                    errors.push(unknown_vm(link, m));
                }
            }
            return Err(
                PlanError::combine(errors).unwrap_or(PlanError::Multiple { errors: vec![] })
            );
        }

        // 310/315: the VMs whose desired host differs from the discovered one.
        let mut missing: HashSet<HostId> = HashSet::new();
        let mut moves = Vec::new();
        // Each VM's position in `desired.vms` (= in `current_list` and `final_list`), by the
        // address of its interned name, so finding a link's members reads no text.
        let mut position_at: HashMap<usize, u32> = HashMap::with_capacity(desired.vms.len());
        // Each VM's position in `moves`, `u32::MAX` for a VM that stays.
        let mut mover_at: Vec<u32> = Vec::with_capacity(desired.vms.len());
        let mut final_list: Vec<&HostId> = Vec::with_capacity(desired.vms.len());
        for ((name, vm), cur) in desired.vms.iter().zip(&current_list) {
            let Some(cur) = *cur else {
                continue; // reported above
            };
            position_at.insert(vm.name.addr(), final_list.len() as u32);
            if cur.host != cur.want && selection.vm(name) {
                if !discovered.contains(cur.want) && missing.insert(cur.want.clone()) {
                    errors.push(PlanError::HostNotDiscovered {
                        host: cur.want.to_string(),
                        needed_by: format!("the move of vm.{name}"),
                    });
                }
                let offline =
                    vm.migration.mode == MigrationMode::Cold || cur.state == DomainState::ShutOff;
                moves.push(Move {
                    vm,
                    subject: Name::from(format!("vm.{name}")),
                    from: cur.host,
                    to: cur.want,
                    state: cur.state,
                    offline,
                    strategy: vm.migration.strategy,
                    needs: Vec::new(),
                    peers: Vec::new(),
                });
                final_list.push(cur.want);
                mover_at.push(moves.len() as u32 - 1);
            } else {
                final_list.push(cur.host);
                mover_at.push(u32::MAX);
            }
        }
        let move_of: HashMap<&str, u32> = moves
            .iter()
            .enumerate()
            .map(|(i, m)| (m.vm.name.as_str(), i as u32))
            .collect();
        // The move of a link member, if it moves.
        let member_move = |m: &Name| -> Option<&Move> {
            let &p = position_at.get(&m.addr())?;
            moves.get(mover_at[p as usize] as usize)
        };
        // One pass over the links: members that are not VMs (every VM has a final host now),
        // the links of each moving VM (only moving VMs are asked for their peers and SAs),
        // and the SAs the landscape needs once the plan is applied, by reference until sorted.
        let mut unknown = Vec::new();
        let mut vm_links: Vec<Vec<(&Name, u32)>> = vec![Vec::new(); moves.len()];
        let mut needed: HashSet<SaPairRef> = HashSet::new();
        let mut needed_refs: Vec<(SaPairRef, &SecureLink)> = Vec::new();
        let mut members: Vec<&HostId> = Vec::new();
        let mut member_pos: Vec<u32> = Vec::new();
        for link in desired.secure_links.values() {
            members.clear();
            member_pos.clear();
            for m in &link.between {
                let found = position_at.get(&m.addr()).copied();
                match found {
                    Some(i) => {
                        members.push(final_list[i as usize]);
                        member_pos.push(i);
                    }
                    None => unknown.push(unknown_vm(link, m)),
                }
            }
            if !unknown.is_empty() {
                continue;
            }
            for &i in &member_pos {
                let mover = mover_at[i as usize];
                if let Some(links) = vm_links.get_mut(mover as usize) {
                    links.extend(
                        member_pos
                            .iter()
                            .filter(|&&k| k != i)
                            .map(|&k| (&link.name, k)),
                    );
                }
            }
            for (i, &hx) in members.iter().enumerate() {
                for &hy in &members[i + 1..] {
                    if hx != hy && (!desired.is_trusted(hx) || !desired.is_trusted(hy)) {
                        let pair = sa_pair_ref(&link.name, hx, hy);
                        if needed.insert(pair) {
                            needed_refs.push((pair, link));
                        }
                    }
                }
            }
        }
        if let Some(e) = PlanError::combine(unknown) {
            return Err(e);
        }
        needed_refs.sort_unstable_by(|a, b| a.0.cmp(&b.0));

        let end_up = |link: &str, h: &HostId, r: &HostId| {
            observed_sas
                .get(link)
                .and_then(|ends| ends.iter().find(|(a, b, _)| *a == h && *b == r))
                .map(|e| e.2)
        };
        let up: Vec<bool> = needed_refs
            .iter()
            .map(|((link, a, b), _)| {
                end_up(link, a, b) == Some(true) && end_up(link, b, a) == Some(true)
            })
            .collect();
        let needed_list: Vec<SaPair> = needed_refs
            .iter()
            .map(|((_, a, b), link)| SaPair {
                link: link.name.clone(),
                a: (*a).clone(),
                b: (*b).clone(),
            })
            .collect();
        let established: BTreeSet<SaPair> = needed_list
            .iter()
            .zip(&up)
            .filter(|(_, up)| **up)
            .map(|(p, _)| p.clone())
            .collect();

        let mut installs = Vec::new();
        for ((pair, (_, link)), up) in needed_list.iter().zip(&needed_refs).zip(&up) {
            if *up {
                continue;
            }
            let link: &SecureLink = link;
            let mover_moves: Vec<&Move> = link
                .between
                .iter()
                .filter_map(&member_move)
                .filter(|m| pair.has(m.to))
                .collect();
            let movers: Vec<&str> = mover_moves.iter().map(|m| m.vm.name.as_str()).collect();
            if movers.is_empty() && !selection.link(&link.name, &link.between) {
                continue;
            }
            for h in [&pair.a, &pair.b] {
                if !discovered.contains(h) && missing.insert(h.clone()) {
                    errors.push(PlanError::HostNotDiscovered {
                        host: h.to_string(),
                        needed_by: format!("the IPsec of {pair}"),
                    });
                }
            }
            // The movers' new host when they all go to one host, else the one untrusted end,
            // else `b`.
            let mut mover_hosts = mover_moves.iter().map(|m| m.to);
            let one_mover_host = mover_hosts
                .next()
                .filter(|first| mover_hosts.all(|h| h == *first));
            let initiator = match (
                one_mover_host,
                desired.is_trusted(&pair.a),
                desired.is_trusted(&pair.b),
            ) {
                (Some(h), _, _) => h.clone(),
                (None, false, true) => pair.a.clone(),
                _ => pair.b.clone(),
            };
            let responder = if initiator == pair.a {
                pair.b.clone()
            } else {
                pair.a.clone()
            };
            installs.push(SaInstall {
                subject: Name::from(format!("secure_link.{}", link.name)),
                pair: pair.clone(),
                link,
                initiator,
                responder,
                movers,
            });
        }

        // IPsec ends discovered that the landscape no longer needs.
        let mut stale = Vec::new();
        let mut cleanup_links: HashMap<&str, Vec<Name>> = HashMap::new();
        let mut covered: HashSet<(&str, &HostId)> = HashSet::new();
        let mut stale_links: Vec<&str> = observed_sas.keys().copied().collect();
        stale_links.sort_unstable();
        // Both sorted by name: walk the configured links alongside.
        let mut configured_links = desired.secure_links.iter().peekable();
        let all_ends = stale_links.iter().flat_map(|l| {
            while configured_links.next_if(|(k, _)| k.as_str() < *l).is_some() {}
            let configured = configured_links
                .peek()
                .filter(|(k, _)| k.as_str() == *l)
                .map(|(_, link)| *link);
            observed_sas[l]
                .iter()
                .map(move |e| (*l, e.0, e.1, configured))
        });
        for (link_name, host, remote, configured) in all_ends {
            if configured.is_some() && needed.contains(&sa_pair_ref(link_name, host, remote)) {
                continue;
            }
            let members: &[Name] = configured.map_or(&[], |l| l.between.as_slice());
            let wait_moves: Vec<&Move> = members.iter().filter_map(&member_move).collect();
            let wait_for: Vec<&str> = wait_moves.iter().map(|m| m.vm.name.as_str()).collect();
            let related = wait_moves
                .iter()
                .any(|m| m.from == host || m.from == remote);
            let selected = match configured {
                Some(l) => selection.link(link_name, &l.between),
                None => selection.link(link_name, &[]),
            };
            if !related && !selected {
                continue;
            }
            // The VM leaving `host` removes the link there in its cleanup, when no other pair
            // of the link on that host stays needed.
            let whole_link_stale_here = observed_sas[link_name]
                .iter()
                .filter(|(h, _, _)| *h == host)
                .all(|(h, r, _)| {
                    configured.is_none() || !needed.contains(&sa_pair_ref(link_name, h, r))
                });
            let leaver = wait_moves
                .iter()
                .find(|m| m.from == host)
                .map(|m| m.vm.name.as_str());
            if let (Some(vm), true) = (leaver, whole_link_stale_here) {
                if covered.insert((link_name, host)) {
                    cleanup_links
                        .entry(vm)
                        .or_default()
                        .push(configured.map_or_else(|| Name::from(link_name), |l| l.name.clone()));
                }
                continue;
            }
            stale.push(StaleEnd {
                link: configured.map_or_else(|| Name::from(link_name), |l| l.name.clone()),
                host: host.clone(),
                remote: remote.clone(),
                configured,
                wait_for,
            });
        }

        // 335: subnets whose VMs all end up in another environment, one of them leaving a trusted
        // environment now.
        // The VMs of each subnet: (position, host afterwards).
        let mut by_subnet: HashMap<&str, Vec<(u32, &HostId)>> =
            HashMap::with_capacity(desired.subnets.len());
        for (i, (vm, h)) in desired.vms.values().zip(&final_list).enumerate() {
            by_subnet
                .entry(vm.subnet.as_str())
                .or_default()
                .push((i as u32, h));
        }
        let mut subnet_moves = Vec::new();
        let mut moving_subnets = HashSet::new();
        for (sname, subnet) in &desired.subnets {
            let Some(vms) = by_subnet.get(sname.as_str()) else {
                continue;
            };
            let env_new = vms[0].1.environment();
            if vms.iter().any(|(_, h)| h.environment() != env_new) {
                continue;
            }
            let movers: Vec<usize> = vms
                .iter()
                .map(|&(p, _)| mover_at[p as usize] as usize)
                .filter(|&i| {
                    moves
                        .get(i)
                        .is_some_and(|m| m.from.environment() != env_new)
                })
                .collect();
            // The tunnel starts at the trusted environment the subnet leaves (FIG. 3).
            let Some(&first) = movers.iter().find(|&&i| desired.is_trusted(moves[i].from)) else {
                continue;
            };
            if !selection.subnet(sname, true) {
                continue;
            }
            let core_env = moves[first].from.environment();
            let Some(core) = desired
                .environments
                .get(core_env)
                .filter(|e| e.routing_core.is_some())
                .map(|e| e.name.clone())
            else {
                warnings.push(format!(
                    "subnet.{sname} moves whole to environment {env_new}, but environment {core_env} has no routing_core: no tunnel is planned"
                ));
                continue;
            };
            let remote = vms[0].1;
            let Some(remote_host) = hosts.get(remote) else {
                continue;
            };
            let tunnel_present = observed
                .routing_cores
                .get(core_env)
                .is_some_and(|c| c.tunnels.iter().any(|t| &t.subnet == sname));
            moving_subnets.insert((sname.as_str(), core_env));
            subnet_moves.push(SubnetMove {
                subnet,
                subject: Name::from(format!("subnet.{sname}")),
                core,
                remote: remote.clone(),
                remote_address: remote_host.address,
                movers,
                tunnel_present,
            });
        }

        // smig tunnels left on a routing core that no move needs (an interrupted apply).
        let mut stale_tunnels = Vec::new();
        for (core, rc) in &observed.routing_cores {
            for t in &rc.tunnels {
                if moving_subnets.contains(&(t.subnet.as_str(), core.as_str())) {
                    continue;
                }
                if !selection.subnet(&t.subnet, false) {
                    continue;
                }
                let remote = HostId(Name::from(t.remote.as_str()));
                match (desired.subnets.get(&t.subnet), desired.host(&remote)) {
                    (Some(subnet), Some(h)) => stale_tunnels.push(StaleTunnel {
                        subnet,
                        subject: Name::from(format!("subnet.{}", subnet.name)),
                        core: Name::from(core.as_str()),
                        remote,
                        remote_address: h.address,
                    }),
                    _ => warnings.push(format!(
                        "a smig tunnel for subnet {} on {core}.routing_core towards {} matches nothing in the configuration; remove it by hand",
                        t.subnet, t.remote
                    )),
                }
            }
        }

        if let Some(e) = PlanError::combine(errors) {
            return Err(e);
        }
        let mut diff = Diff {
            desired,
            observed,
            current: current_list,
            moves,
            move_of,
            final_list,
            vm_links,
            hosts,
            needed_sorted: needed_list,
            established,
            installs,
            stale,
            cleanup_links,
            subnet_moves,
            stale_tunnels,
            warnings,
            observed_sas,
        };
        let mut moves = std::mem::take(&mut diff.moves);
        for (i, m) in moves.iter_mut().enumerate() {
            m.needs = diff.needs_at(i, m.to, Placement::Final);
            m.peers = diff.peers(i);
        }
        diff.moves = moves;
        Ok(diff)
    }

    /// The position in `moves` of the VM's move, if it moves.
    pub fn mover(&self, vm: &str) -> Option<usize> {
        self.move_of.get(vm).map(|&i| i as usize)
    }

    /// A declared host, like `Landscape::host` but by hash.
    pub fn host(&self, id: &HostId) -> Option<&'a Host> {
        self.hosts.get(id).copied()
    }

    /// Addresses of the secure_link peers of the move at `mover`, sorted.
    pub fn peers(&self, mover: usize) -> Vec<Ipv4Addr> {
        let mut out: Vec<Ipv4Addr> = self
            .vm_links
            .get(mover)
            .into_iter()
            .flatten()
            .filter_map(|&(_, k)| self.current[k as usize].map(|c| c.vm.address))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The SAs the VM of the move at `mover` needs at `host`, given where its peers run
    /// (`placement`).
    pub fn needs_at(&self, mover: usize, host: &HostId, placement: Placement) -> Vec<SaPair> {
        let mut out = Vec::new();
        self.each_need(mover, host, placement, |link, peer| {
            out.push(SaPair::new(link, host, peer));
            true
        });
        out.sort();
        out.dedup();
        out
    }

    /// Calls `f` with (link, peer host) for each SA the VM needs at `host`, while `f` says go on.
    fn each_need(
        &self,
        mover: usize,
        host: &HostId,
        placement: Placement,
        mut f: impl FnMut(&Name, &HostId) -> bool,
    ) {
        for &(link, k) in self.vm_links.get(mover).into_iter().flatten() {
            let p = match placement {
                Placement::Final => Some(self.final_list[k as usize]),
                Placement::Current => self.current[k as usize].map(|c| c.host),
            };
            let Some(p) = p else { continue };
            if p != host
                && (!self.desired.is_trusted(host) || !self.desired.is_trusted(p))
                && !f(link, p)
            {
                return;
            }
        }
    }

    /// Whether traffic of the VM of the move at `mover` at `host` must stay restricted to
    /// IPsec: the host is untrusted, or a peer sits across an untrusted environment.
    pub fn secure_only(&self, mover: usize, host: &HostId, placement: Placement) -> bool {
        if !self.desired.is_trusted(host) {
            return true;
        }
        let mut any = false;
        self.each_need(mover, host, placement, |_, _| {
            any = true;
            false
        });
        any
    }

    /// Whether the snapshot shows non-managed connections of the VM that are not secured
    /// (neither IPsec nor on a policy TLS port).
    pub fn has_unsecured_connections(&self, vm: &str) -> bool {
        let ports = &self.desired.policy.tls_ports;
        self.observed.connections.get(vm).is_some_and(|conns| {
            conns.iter().any(|c| {
                !(c.ipsec || ports.contains(&c.local.port()) || ports.contains(&c.remote.port()))
            })
        })
    }

    /// The facts for the invariant checker.
    pub fn context(&self) -> PlanContext {
        PlanContext {
            placements: self
                .desired
                .vms
                .values()
                .zip(&self.final_list)
                .map(|(v, h)| (v.name.clone(), (*h).clone()))
                .collect(),
            established: self.established.clone(),
            must_secure: self
                .moves
                .iter()
                .map(|m| &m.vm.name)
                .filter(|vm| self.has_unsecured_connections(vm))
                .cloned()
                .collect(),
        }
    }

    /// The resource-level changes, in address order, secrets redacted.
    pub fn changes(&self) -> Vec<ResourceChange> {
        let mut out = Vec::with_capacity(self.moves.len());
        // Each object built in place, keys in order (the maps sort them anyway).
        let host_state = |h: &HostId, key: &str, value: Value| {
            let mut o = Map::new();
            o.insert("environment".into(), Value::from(h.environment()));
            o.insert("host".into(), Value::from(h.to_string()));
            o.insert(key.into(), value);
            o.insert("trusted".into(), Value::Bool(self.desired.is_trusted(h)));
            Value::Object(o)
        };
        for m in &self.moves {
            let before = host_state(m.from, "state", to_json(&m.state));
            let mode = if m.offline {
                MigrationMode::Cold
            } else {
                MigrationMode::Live
            };
            let mut migration = Map::new();
            migration.insert(
                "max_downtime_ms".into(),
                to_json(&m.vm.migration.max_downtime_ms),
            );
            migration.insert("mode".into(), to_json(&mode));
            migration.insert("strategy".into(), to_json(&m.strategy));
            let after = host_state(m.to, "migration", Value::Object(migration));
            out.push(ResourceChange {
                address: format!("vm.{}", m.vm.name),
                action: ChangeAction::Move,
                before: Some(before),
                after: Some(after),
            });
        }

        let mut links: Vec<&str> = self.installs.iter().map(|i| i.pair.link.as_str()).collect();
        links.extend(self.stale.iter().map(|s| s.link.as_str()));
        links.extend(self.cleanup_links.values().flatten().map(Name::as_str));
        links.sort_unstable();
        links.dedup();
        // The configured links and the needed SAs are sorted by link too: walk them alongside.
        let mut configured = self.desired.secure_links.iter().peekable();
        let mut needed_from = 0;
        for name in links {
            let sas_before: Vec<String> = self
                .observed_sas
                .get(name)
                .into_iter()
                .flatten()
                .filter(|(h, r, _)| h < r)
                .map(|(h, r, up)| format!("{h} <-> {r}{}", if *up { "" } else { " (down)" }))
                .collect();
            let before = (!sas_before.is_empty()).then(|| json!({ "sas": sas_before }));
            while configured.next_if(|(k, _)| k.as_str() < name).is_some() {}
            let link = configured
                .peek()
                .filter(|(k, _)| k.as_str() == name)
                .map(|(_, l)| *l);
            let (action, after) = match link {
                None => (ChangeAction::Delete, None),
                Some(link) => {
                    while self
                        .needed_sorted
                        .get(needed_from)
                        .is_some_and(|p| p.link.as_str() < name)
                    {
                        needed_from += 1;
                    }
                    let sas: Vec<&SaPair> = self.needed_sorted[needed_from..]
                        .iter()
                        .take_while(|p| p.link == name)
                        .collect();
                    let after = json!({
                        "between": link.between,
                        "ipsec": link.ipsec,
                        "sas": sas.iter().map(|p| format!("{} <-> {}", p.a, p.b)).collect::<Vec<_>>(),
                    });
                    let action = if before.is_none() {
                        ChangeAction::Create
                    } else {
                        ChangeAction::Update
                    };
                    (action, Some(after))
                }
            };
            out.push(ResourceChange {
                address: format!("secure_link.{name}"),
                action,
                before,
                after,
            });
        }

        for sm in &self.subnet_moves {
            out.push(ResourceChange {
                address: format!("subnet.{}", sm.subnet.name),
                action: ChangeAction::Update,
                before: Some(json!({ "environment": sm.core, "cidr": sm.subnet.cidr })),
                after: Some(json!({
                    "environment": sm.remote.environment(),
                    "cidr": sm.subnet.cidr,
                    "tunnel": format!("{}.routing_core -> {} until the routing core learns the route", sm.core, sm.remote),
                })),
            });
        }
        out.sort_by(|a, b| a.address.cmp(&b.address));
        out
    }
}

/// Which placement of the peers to read: before or after the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    Current,
    Final,
}

/// A value as JSON (the planner's own types always serialize).
fn to_json<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}
