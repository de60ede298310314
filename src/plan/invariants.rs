//! The security invariants of SPEC.md (1, 2, 3 and 7), checked on the DAG itself: a step's
//! requirement holds when the required step is among its ancestors, so every path and every
//! order the walker may choose is covered, not one topological order.
//!
//! Ancestor sets are collected per step by a walk over incoming edges. Branches are per VM,
//! link and subnet, so each walk stays local and the whole check is near linear in the plan.

use super::{sa_pair_ref, Action, Plan, SaPair, SaPairRef, StepKind};
use crate::model::{Host, HostId, Landscape, Name, SecureLink};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The outcome of one invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InvariantResult {
    /// Its number in SPEC.md.
    pub number: u8,
    /// The invariant, in one line.
    pub statement: String,
    pub holds: bool,
    /// What breaks it, naming the steps.
    pub violations: Vec<String>,
    /// Breaches the configuration explicitly allows (invariant 7 with
    /// `allow_insecure_transport`); renderers show them in red.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waived: Vec<String>,
}

/// One entry per checked invariant, in number order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvariantReport {
    pub results: Vec<InvariantResult>,
}

impl InvariantReport {
    /// Whether every invariant holds (an empty report holds nothing: it was not checked).
    pub fn holds(&self) -> bool {
        !self.results.is_empty() && self.results.iter().all(|r| r.holds)
    }
    /// The result of invariant `number`.
    pub fn get(&self, number: u8) -> Option<&InvariantResult> {
        self.results.iter().find(|r| r.number == number)
    }
    /// Every explicitly allowed breach.
    pub fn waivers(&self) -> impl Iterator<Item = &str> {
        self.results
            .iter()
            .flat_map(|r| r.waived.iter().map(String::as_str))
    }
    /// The violations, one per line, prefixed with their invariant.
    pub fn failures(&self) -> String {
        let mut out = String::new();
        for r in self.results.iter().filter(|r| !r.holds) {
            for v in &r.violations {
                out.push_str(&format!("  invariant {}: {v}\n", r.number));
            }
        }
        out
    }
}

impl fmt::Display for InvariantReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.results {
            let mark = if r.holds { "holds" } else { "VIOLATED" };
            writeln!(f, "{}. {} — {mark}", r.number, r.statement)?;
            for v in &r.violations {
                writeln!(f, "   - {v}")?;
            }
            for w in &r.waived {
                writeln!(f, "   ! {w}")?;
            }
        }
        Ok(())
    }
}

/// Statements as printed with every plan.
pub const STATEMENTS: [(u8, &str); 4] = [
    (1, "no traffic with a peer across an untrusted environment before the IPsec SA for that pair is up"),
    (2, "blocking precedes moving; enabling follows securing"),
    (3, "a tunnel is removed only after the routing core no longer needs it"),
    (7, "no migration stream or libvirt control connection crosses an untrusted network in cleartext"),
];

/// Collects ancestors with a reusable visit stamp (no allocation per walk), over a compact
/// copy of the incoming edges (the graph's nodes hold whole steps: walking them would read
/// one step per visit).
struct Ancestry {
    stamp: Vec<u32>,
    generation: u32,
    stack: Vec<u32>,
    /// The predecessors of node `i` are `preds[start[i]..start[i + 1]]`.
    start: Vec<u32>,
    preds: Vec<u32>,
}

impl Ancestry {
    fn new(plan: &Plan) -> Self {
        let n = plan.graph.node_count();
        let mut start = vec![0u32; n + 1];
        for e in plan.graph.raw_edges() {
            start[e.target().index() + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut preds = vec![0u32; plan.graph.edge_count()];
        for e in plan.graph.raw_edges() {
            let t = e.target().index();
            preds[fill[t] as usize] = e.source().index() as u32;
            fill[t] += 1;
        }
        Ancestry {
            stamp: vec![0; n],
            generation: 0,
            stack: Vec::new(),
            start,
            preds,
        }
    }

    /// Whether the graph has a cycle (Kahn's algorithm on the reversed edges).
    fn is_cyclic(&self) -> bool {
        let n = self.stamp.len();
        let mut out_degree = vec![0u32; n];
        for &p in &self.preds {
            out_degree[p as usize] += 1;
        }
        let mut ready: Vec<u32> = (0..n as u32)
            .filter(|&i| out_degree[i as usize] == 0)
            .collect();
        let mut done = 0;
        while let Some(v) = ready.pop() {
            done += 1;
            let v = v as usize;
            for &p in &self.preds[self.start[v] as usize..self.start[v + 1] as usize] {
                out_degree[p as usize] -= 1;
                if out_degree[p as usize] == 0 {
                    ready.push(p);
                }
            }
        }
        done != n
    }

    /// Every step from which `start` is reachable (excluding `start` unless on a cycle).
    fn of(&mut self, start: NodeIndex, out: &mut Vec<NodeIndex>) {
        out.clear();
        self.generation += 1;
        let g = self.generation;
        self.stack.clear();
        self.stack.push(start.index() as u32);
        while let Some(n) = self.stack.pop() {
            let n = n as usize;
            let (lo, hi) = (self.start[n] as usize, self.start[n + 1] as usize);
            for &p in &self.preds[lo..hi] {
                if self.stamp[p as usize] != g {
                    self.stamp[p as usize] = g;
                    out.push(NodeIndex::new(p as usize));
                    self.stack.push(p);
                }
            }
        }
    }
}

/// What the checks look for among a step's ancestors, one byte per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Block,
    Initiate,
    Secure,
    RouteCheck,
    Other,
}

fn tag(action: &Action) -> Tag {
    match action {
        Action::Block { .. } => Tag::Block,
        Action::IpsecInstall { initiate: true, .. } => Tag::Initiate,
        Action::SecureConnections { .. } => Tag::Secure,
        Action::RouteCheck { .. } => Tag::RouteCheck,
        _ => Tag::Other,
    }
}

fn vm_of(action: &Action) -> Option<&Name> {
    match action {
        Action::Block { vm, .. }
        | Action::Unblock { vm, .. }
        | Action::Shutdown { vm, .. }
        | Action::Start { vm, .. }
        | Action::Pause { vm, .. }
        | Action::Resume { vm, .. }
        | Action::Migrate { vm, .. }
        | Action::SecureConnections { vm, .. }
        | Action::Cleanup { vm, .. } => Some(vm),
        _ => None,
    }
}

fn step_host(plan: &Plan, n: NodeIndex) -> Option<&HostId> {
    match &plan.graph[n].target {
        super::Target::Host(h) => Some(h),
        super::Target::RoutingCore(_) => None,
    }
}

fn show(p: SaPairRef) -> String {
    SaPair::new(&Name::from(p.0), p.1, p.2).to_string()
}

/// The SA that `n` brings up, if it is an initiating install.
fn initiates(plan: &Plan, n: NodeIndex) -> Option<SaPairRef<'_>> {
    match &plan.graph[n].action {
        Action::IpsecInstall {
            link,
            local,
            remote,
            initiate: true,
            ..
        } => Some(sa_pair_ref(link, local, remote)),
        _ => None,
    }
}

/// A VM name as the index keys it: the address of its interned text, equal exactly when the
/// texts are (see [`Name::addr`]), so finding a VM reads no text.
type VmKey = usize;

/// Where VMs run after the plan, which links the VMs with restart or enable steps take part
/// in, and the declared hosts.
struct Index<'p> {
    /// Where VMs run afterwards.
    placements: HashMap<VmKey, &'p HostId>,
    links: HashMap<VmKey, Vec<&'p SecureLink>>,
    established: HashSet<SaPairRef<'p>>,
    hosts: HashMap<&'p HostId, &'p Host>,
}

impl<'p> Index<'p> {
    fn new(plan: &'p Plan, desired: &'p Landscape) -> Self {
        let mut placements = HashMap::with_capacity(plan.context.placements.len());
        for (vm, h) in &plan.context.placements {
            placements.insert(vm.addr(), h);
        }
        let hosts = desired
            .hosts()
            .filter(|h| desired.host(&h.id).is_some_and(|x| std::ptr::eq(x, *h)))
            .map(|h| (&h.id, h))
            .collect();
        let established = plan
            .context
            .established
            .iter()
            .map(|p| sa_pair_ref(&p.link, &p.a, &p.b))
            .collect();
        let mut links: HashMap<VmKey, Vec<&SecureLink>> = HashMap::new();
        for s in plan.graph.node_weights() {
            if let (StepKind::Restart | StepKind::Enable, Some(vm)) = (s.kind, vm_of(&s.action)) {
                links.entry(vm.addr()).or_default();
            }
            if let Some((vm, _)) = s.action.arrives_running() {
                links.entry(vm.addr()).or_default();
            }
        }
        for link in desired.secure_links.values() {
            for m in &link.between {
                if let Some(l) = links.get_mut(&m.addr()) {
                    l.push(link);
                }
            }
        }
        Index {
            placements,
            links,
            established,
            hosts,
        }
    }

    /// The SAs the VM keyed `vm` needs when it runs on `host`, given where its peers end up.
    fn needs(
        &self,
        desired: &Landscape,
        vm: VmKey,
        host: &'p HostId,
        out: &mut Vec<SaPairRef<'p>>,
    ) {
        out.clear();
        for link in self.links.get(&vm).into_iter().flatten() {
            for peer in &link.between {
                let key = peer.addr();
                if key == vm {
                    continue;
                }
                let found = self.placements.get(&key).copied();
                let Some(p) = found else {
                    continue;
                };
                if p != host && (!desired.is_trusted(host) || !desired.is_trusted(p)) {
                    out.push(sa_pair_ref(&link.name, host, p));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

/// Checks invariants 1, 2, 3 and 7 on the plan's DAG.
pub fn check(plan: &Plan, desired: &Landscape) -> InvariantReport {
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    let mut v3 = Vec::new();
    let mut v7 = Vec::new();
    let mut waived = Vec::new();

    let mut walk = Ancestry::new(plan);
    if walk.is_cyclic() {
        let msg = "the step graph has a cycle, so no order satisfies it".to_string();
        for v in [&mut v1, &mut v2, &mut v3, &mut v7] {
            v.push(msg.clone());
        }
    }

    let index = Index::new(plan, desired);
    let mut secured_vms: HashSet<VmKey> = HashSet::new();
    let mut responders: HashMap<SaPairRef, Vec<NodeIndex>> = HashMap::new();
    for n in plan.graph.node_indices() {
        let s = &plan.graph[n];
        match &s.action {
            Action::SecureConnections { vm, .. } => {
                secured_vms.insert(vm.addr());
            }
            Action::IpsecInstall {
                link,
                local,
                remote,
                initiate: false,
                ..
            } => responders
                .entry(sa_pair_ref(link, local, remote))
                .or_default()
                .push(n),
            _ => {}
        }
    }

    let tags: Vec<Tag> = plan.graph.node_weights().map(|s| tag(&s.action)).collect();
    let mut anc = Vec::new();
    let mut installed: Vec<SaPairRef> = Vec::new();
    let mut needed: Vec<SaPairRef> = Vec::new();
    for n in plan.graph.node_indices() {
        let s = &plan.graph[n];
        // The steps after which the VM runs (and talks) on its new host: restart, enable and
        // a live migration arriving unpaused.
        let starts = match s.kind {
            StepKind::Restart | StepKind::Enable => vm_of(&s.action).zip(step_host(plan, n)),
            StepKind::Migrate => s.action.arrives_running(),
            _ => None,
        };
        if let Some((vm, host)) = starts {
            walk.of(n, &mut anc);
            installed.clear();
            installed.extend(
                anc.iter()
                    .filter(|a| tags[a.index()] == Tag::Initiate)
                    .filter_map(|&a| initiates(plan, a)),
            );
            let key = vm.addr();
            index.needs(desired, key, host, &mut needed);
            for &p in &needed {
                if index.established.contains(&p) || installed.contains(&p) {
                    continue;
                }
                let sa = show(p);
                let msg = format!(
                    "{} can run before the SA of {sa} is up: no ipsec.install of that pair precedes it",
                    plan.label(n)
                );
                if s.kind == StepKind::Enable {
                    v2.push(format!(
                        "{} is not preceded by the ipsec.install of {sa}",
                        plan.label(n)
                    ));
                }
                v1.push(msg);
            }
            let must = secured_vms.contains(&key) || plan.context.must_secure.contains(vm.as_str());
            if s.kind == StepKind::Enable && must {
                let secured = anc.iter().any(|&a| {
                    tags[a.index()] == Tag::Secure && matches!(&plan.graph[a].action, Action::SecureConnections { vm: w, .. } if w == vm)
                });
                if !secured {
                    v2.push(format!(
                        "{} is not preceded by connections.secure of vm.{vm}, which has unsecured non-managed connections",
                        plan.label(n)
                    ));
                }
            }
        }
        match s.kind {
            StepKind::Migrate => {
                let Action::Migrate {
                    vm, from, to, tls, ..
                } = &s.action
                else {
                    continue;
                };
                walk.of(n, &mut anc);
                let blocked = anc.iter().any(|&a| {
                    tags[a.index()] == Tag::Block
                        && matches!(&plan.graph[a].action, Action::Block { vm: w, .. } if w == vm)
                });
                if !blocked {
                    v2.push(format!(
                        "{} is not preceded by a block of vm.{vm}",
                        plan.label(n)
                    ));
                }
                let crosses = !desired.is_trusted(from) || !desired.is_trusted(to);
                if crosses {
                    let uri_tls =
                        |h: &HostId| index.hosts.get(h).is_some_and(|h| h.libvirt_uses_tls());
                    let mut why = Vec::new();
                    if !tls {
                        why.push("the migration stream is not TLS".to_string());
                    }
                    for h in [from, to] {
                        if !uri_tls(h) {
                            why.push(format!("the libvirt URI of {h} is not qemu+tls://"));
                        }
                    }
                    if !why.is_empty() {
                        let msg = format!(
                            "{} crosses an untrusted environment in cleartext: {}",
                            plan.label(n),
                            why.join("; ")
                        );
                        if desired.policy.allow_insecure_transport {
                            waived.push(format!(
                                "{msg} (allowed by policy.allow_insecure_transport)"
                            ));
                        } else {
                            v7.push(msg);
                        }
                    }
                }
            }
            StepKind::IpsecInstall => {
                let Some(p) = initiates(plan, n) else {
                    continue;
                };
                let Some(resp) = responders.get(&p) else {
                    continue;
                };
                walk.of(n, &mut anc);
                if !resp.iter().any(|r| anc.contains(r)) {
                    v1.push(format!(
                        "{} brings the SA of {} up before the other end has loaded it",
                        plan.label(n),
                        show(p)
                    ));
                }
            }
            StepKind::TunnelRemove => {
                let Action::TunnelRemove { subnet, core, .. } = &s.action else {
                    continue;
                };
                walk.of(n, &mut anc);
                let checked = anc.iter().any(|&a| {
                    tags[a.index()] == Tag::RouteCheck && matches!(&plan.graph[a].action,
                        Action::RouteCheck { subnet: s2, core: c2, .. } if s2 == subnet && c2 == core)
                });
                if !checked {
                    v3.push(format!(
                        "{} is not preceded by a route.check of subnet.{subnet} on {core}.routing_core",
                        plan.label(n)
                    ));
                }
            }
            _ => {}
        }
    }

    let results = STATEMENTS
        .iter()
        .zip([v1, v2, v3, v7])
        .map(|(&(number, statement), violations)| InvariantResult {
            number,
            statement: statement.to_string(),
            holds: violations.is_empty(),
            violations,
            waived: if number == 7 {
                std::mem::take(&mut waived)
            } else {
                Vec::new()
            },
        })
        .collect();
    InvariantReport { results }
}
