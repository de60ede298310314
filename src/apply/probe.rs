//! Fresh discovery scoped to one step: which driver reads a step's facts need, the partial
//! landscape they return, and whether an action's effect already holds. The walker never
//! trusts the journal alone: it asks the landscape before each step and each undo.

use crate::drivers::{DriverResult, Drivers};
use crate::model::{ipsec_connection_name, DomainState, HostId, Name, Observed};
use crate::plan::{Action, Fact, Target};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

/// One driver read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Query {
    Domain {
        host: HostId,
        domain: Name,
    },
    BlockRules(HostId),
    Ipsec(HostId),
    CoreTunnels(Name),
    CoreRoutes(Name),
    Connections {
        vm: Name,
        host: HostId,
        address: Ipv4Addr,
    },
}

/// Where each VM's connections are read (from the plan's `connections.secure` actions).
#[derive(Debug, Clone, Default)]
pub struct Locator {
    vms: HashMap<Name, (HostId, Ipv4Addr)>,
}

impl Locator {
    pub fn from_actions<'a>(actions: impl Iterator<Item = &'a Action>) -> Self {
        let mut vms = HashMap::new();
        for a in actions {
            if let Action::SecureConnections {
                vm, host, address, ..
            } = a
            {
                vms.insert(vm.clone(), (host.clone(), *address));
            }
        }
        Locator { vms }
    }
}

/// The reads that decide `fact`.
pub fn fact_queries(fact: &Fact, locator: &Locator, out: &mut BTreeSet<Query>) {
    let domain = |d: &Name, h: &HostId| Query::Domain {
        host: h.clone(),
        domain: d.clone(),
    };
    match fact {
        Fact::DomainRunning { domain: d, host }
        | Fact::DomainPaused { domain: d, host }
        | Fact::DomainShutOff { domain: d, host }
        | Fact::DomainAbsent { domain: d, host } => {
            out.insert(domain(d, host));
        }
        Fact::Blocked { host, .. } | Fact::NotBlocked { host, .. } => {
            out.insert(Query::BlockRules(host.clone()));
        }
        Fact::SaUp { host, .. } | Fact::IpsecAbsent { host, .. } | Fact::SaAbsent { host, .. } => {
            out.insert(Query::Ipsec(host.clone()));
        }
        Fact::TunnelPresent { core, .. } | Fact::TunnelAbsent { core, .. } => {
            out.insert(Query::CoreTunnels(core.clone()));
        }
        Fact::RouteLearned { core, .. } => {
            out.insert(Query::CoreRoutes(core.clone()));
        }
        Fact::ConnectionsSecured { vm, .. } => {
            if let Some((host, address)) = locator.vms.get(vm) {
                out.insert(Query::Connections {
                    vm: vm.clone(),
                    host: host.clone(),
                    address: *address,
                });
            }
        }
    }
}

/// The reads that decide whether `action`'s effect holds.
pub fn action_queries(action: &Action, out: &mut BTreeSet<Query>) {
    let domain = |d: &Name, h: &HostId| Query::Domain {
        host: h.clone(),
        domain: d.clone(),
    };
    match action {
        Action::Block { host, .. } | Action::Unblock { host, .. } => {
            out.insert(Query::BlockRules(host.clone()));
        }
        Action::Shutdown {
            domain: d, host, ..
        }
        | Action::Start {
            domain: d, host, ..
        }
        | Action::Pause {
            domain: d, host, ..
        }
        | Action::Resume {
            domain: d, host, ..
        } => {
            out.insert(domain(d, host));
        }
        Action::Migrate {
            domain: d,
            from,
            to,
            ..
        } => {
            out.insert(domain(d, from));
            out.insert(domain(d, to));
        }
        Action::TunnelAdd { core, .. } | Action::TunnelRemove { core, .. } => {
            out.insert(Query::CoreTunnels(core.clone()));
        }
        Action::IpsecInstall { local, remote, .. } | Action::IpsecRemove { local, remote, .. } => {
            out.insert(Query::Ipsec(local.clone()));
            out.insert(Query::Ipsec(remote.clone()));
        }
        Action::SecureConnections {
            vm, host, address, ..
        } => {
            out.insert(Query::Connections {
                vm: vm.clone(),
                host: host.clone(),
                address: *address,
            });
        }
        Action::RouteCheck { core, .. } => {
            out.insert(Query::CoreRoutes(core.clone()));
        }
        Action::Cleanup { host, .. } => {
            out.insert(Query::BlockRules(host.clone()));
            out.insert(Query::Ipsec(host.clone()));
        }
    }
}

/// What one read returned.
#[derive(Clone)]
enum Reading {
    Domain(Option<crate::model::Domain>),
    BlockRules(Vec<crate::model::BlockRule>),
    Ipsec(Vec<crate::model::IpsecConnection>),
    CoreTunnels(Vec<crate::model::Tunnel>),
    CoreRoutes(Vec<crate::model::Route>),
    Connections(Vec<crate::model::Connection>),
}

async fn read(drivers: &Drivers, q: &Query) -> DriverResult<Reading> {
    Ok(match q {
        Query::Domain { host, domain } => {
            Reading::Domain(drivers.hypervisor.domain(host, domain).await?)
        }
        Query::BlockRules(host) => Reading::BlockRules(drivers.network.block_rules(host).await?),
        Query::Ipsec(host) => Reading::Ipsec(drivers.ipsec.connections(host).await?),
        Query::CoreTunnels(core) => Reading::CoreTunnels(
            drivers
                .network
                .tunnels(&Target::RoutingCore(core.clone()))
                .await?,
        ),
        Query::CoreRoutes(core) => Reading::CoreRoutes(drivers.routing.routes(core).await?),
        Query::Connections { host, address, .. } => {
            Reading::Connections(drivers.network.connections(host, *address).await?)
        }
    })
}

/// Runs the reads (all at once: they are independent) and assembles the partial landscape
/// they describe.
pub async fn observe(drivers: &Drivers, queries: &BTreeSet<Query>) -> DriverResult<Observed> {
    let readings =
        futures_util::future::try_join_all(queries.iter().map(|q| read(drivers, q))).await?;
    Ok(assemble(queries.iter().zip(readings)))
}

/// What a step's action may change among the walker's readings while it runs. Traffic is
/// live, so every action may change what conntrack shows: each influence covers all
/// [`Query::Connections`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Influence {
    /// Anything: a reading of any kind may change.
    Everything,
    /// These readings (and connections) only.
    Only(BTreeSet<Query>),
}

impl Influence {
    /// The influence of `action`: what its own check reads (see [`action_queries`]), narrow
    /// only where the action provably changes nothing else. A tunnel, a route check and a
    /// cleanup count as changing everything.
    pub fn of(action: &Action) -> Influence {
        let mut own = BTreeSet::new();
        action_queries(action, &mut own);
        match action {
            // A reset touches no rule, SA or domain; a block one host's rules; a migration,
            // start, stop, pause or resume the domain; an IPsec install or removal the SA on
            // both ends (its data path adds or removes the guard chains in smig's table, which
            // no block rule reading shows).
            Action::SecureConnections { .. }
            | Action::Block { .. }
            | Action::Unblock { .. }
            | Action::Shutdown { .. }
            | Action::Start { .. }
            | Action::Pause { .. }
            | Action::Resume { .. }
            | Action::Migrate { .. }
            | Action::IpsecInstall { .. }
            | Action::IpsecRemove { .. } => Influence::Only(own),
            _ => Influence::Everything,
        }
    }

    fn covers(&self, q: &Query) -> bool {
        match (self, q) {
            (Influence::Everything, _) | (_, Query::Connections { .. }) => true,
            (Influence::Only(these), q) => these.contains(q),
        }
    }
}

/// Readings the forward walk shares between its steps' checks.
///
/// A reading stays current until a step next starts acting on what it shows (its
/// [`Influence`]): smig's own actions are the changes the walker waits on, and a change from
/// elsewhere could come just after a fresh read as well. So the check after one step and the
/// check before the next read each part of the landscape once. A reading taken while an
/// action that may change it runs, starts or ends is used for that check only.
#[derive(Default)]
pub struct Readings {
    state: Mutex<ReadingsState>,
}

#[derive(Default)]
struct ReadingsState {
    /// Counts every start and end of a step's action.
    epoch: u64,
    /// Each start and end of an action, as (epoch, its influence), since the oldest read
    /// still running began.
    changes: Vec<(u64, Influence)>,
    /// The influences of the actions running now.
    running: Vec<(u64, Influence)>,
    /// The epochs at which the reads running now began.
    reading: Vec<u64>,
    kept: BTreeMap<Query, Reading>,
}

impl ReadingsState {
    /// An action starts or ends: what it may change is no longer known.
    fn change(&mut self, influence: &Influence) -> u64 {
        self.epoch += 1;
        self.kept.retain(|q, _| !influence.covers(q));
        if !self.reading.is_empty() {
            self.changes.push((self.epoch, influence.clone()));
        }
        self.epoch
    }

    /// Whether a reading of `q` begun at `since` may be kept.
    fn current(&self, q: &Query, since: u64) -> bool {
        !self.running.iter().any(|(_, i)| i.covers(q))
            && !self
                .changes
                .iter()
                .any(|(at, i)| *at > since && i.covers(q))
    }
}

/// One step's action running (see [`Readings::acting`]); dropping it ends it.
pub struct Acting<'a> {
    readings: &'a Readings,
    id: u64,
}

impl Drop for Acting<'_> {
    fn drop(&mut self) {
        let mut s = self.readings.lock();
        let Some(i) = s.running.iter().position(|(id, _)| *id == self.id) else {
            return;
        };
        let (_, influence) = s.running.remove(i);
        s.change(&influence);
    }
}

impl Readings {
    fn lock(&self) -> MutexGuard<'_, ReadingsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A step starts acting: the readings it may change are dropped, and none of them is kept
    /// until it has ended.
    pub fn acting(&self, influence: Influence) -> Acting<'_> {
        let mut s = self.lock();
        let id = s.change(&influence);
        s.running.push((id, influence));
        Acting { readings: self, id }
    }

    /// Readings kept from `observed`, a discovery taken just before the walk (while no step
    /// acted), for those of `queries` it answers the way [`read`] would: a host's domains,
    /// block rules and SAs. Connections and routing cores are read afresh.
    pub fn seeded(observed: &Observed, queries: impl IntoIterator<Item = Query>) -> Readings {
        let mut kept = BTreeMap::new();
        for q in queries {
            let reading = match &q {
                Query::Domain { host, domain } => observed
                    .hosts
                    .get(host)
                    .map(|h| Reading::Domain(h.domains.get(domain.as_str()).cloned())),
                Query::BlockRules(host) => observed
                    .hosts
                    .get(host)
                    .map(|h| Reading::BlockRules(h.block_rules.clone())),
                Query::Ipsec(host) => observed
                    .hosts
                    .get(host)
                    .map(|h| Reading::Ipsec(h.ipsec.clone())),
                _ => None,
            };
            if let Some(r) = reading {
                kept.insert(q, r);
            }
        }
        Readings {
            state: Mutex::new(ReadingsState {
                kept,
                ..ReadingsState::default()
            }),
        }
    }

    /// Like [`observe`], reading only what is not kept.
    pub async fn observe(
        &self,
        drivers: &Drivers,
        queries: &BTreeSet<Query>,
    ) -> DriverResult<Observed> {
        let (since, kept, missing) = {
            let mut s = self.lock();
            let mut kept: Vec<(&Query, Reading)> = Vec::new();
            let mut missing: Vec<&Query> = Vec::new();
            for q in queries {
                match s.kept.get(q) {
                    Some(r) => kept.push((q, r.clone())),
                    None => missing.push(q),
                }
            }
            let since = s.epoch;
            s.reading.push(since);
            (since, kept, missing)
        };
        let fresh =
            futures_util::future::try_join_all(missing.iter().map(|q| read(drivers, q))).await;
        {
            let mut s = self.lock();
            if let Some(i) = s.reading.iter().position(|e| *e == since) {
                s.reading.swap_remove(i);
            }
            if let Ok(fresh) = &fresh {
                for (q, r) in missing.iter().zip(fresh) {
                    if s.current(q, since) {
                        s.kept.insert((*q).clone(), r.clone());
                    }
                }
            }
            // Changes older than every read still running decide nothing any more.
            let oldest = s.reading.iter().min().copied();
            match oldest {
                Some(oldest) => s.changes.retain(|(at, _)| *at > oldest),
                None => s.changes.clear(),
            }
        }
        Ok(assemble(
            kept.into_iter().chain(missing.into_iter().zip(fresh?)),
        ))
    }
}

/// The partial landscape that `readings` describe.
fn assemble<'q>(readings: impl Iterator<Item = (&'q Query, Reading)>) -> Observed {
    let mut o = Observed::empty();
    for (q, reading) in readings {
        match (q, reading) {
            (Query::Domain { host, domain }, Reading::Domain(d)) => {
                let h = o.hosts.entry(host.clone()).or_default();
                if let Some(d) = d {
                    h.domains.insert(domain.clone(), d);
                }
            }
            (Query::BlockRules(host), Reading::BlockRules(rules)) => {
                o.hosts.entry(host.clone()).or_default().block_rules = rules;
            }
            (Query::Ipsec(host), Reading::Ipsec(conns)) => {
                o.hosts.entry(host.clone()).or_default().ipsec = conns;
            }
            (Query::CoreTunnels(core), Reading::CoreTunnels(t)) => {
                o.routing_cores.entry(core.to_string()).or_default().tunnels = t;
            }
            (Query::CoreRoutes(core), Reading::CoreRoutes(r)) => {
                o.routing_cores.entry(core.to_string()).or_default().routes = r;
            }
            (Query::Connections { vm, .. }, Reading::Connections(c)) if !c.is_empty() => {
                o.connections.insert(vm.to_string(), c);
            }
            // `read` answers each query with its own kind of reading.
            _ => {}
        }
    }
    o
}

/// Whether `action`'s effect holds in `o` (read through [`action_queries`]).
pub fn action_holds(action: &Action, o: &Observed) -> bool {
    let domain = |d: &str, h: &HostId| o.hosts.get(h).and_then(|x| x.domains.get(d));
    let blocked = |vm: &str, h: &HostId| {
        o.hosts
            .get(h)
            .is_some_and(|x| x.block_rules.iter().any(|r| r.vm == vm))
    };
    let ipsec = |h: &HostId, name: &str| {
        o.hosts
            .get(h)
            .and_then(|x| x.ipsec.iter().find(|c| c.name == name))
    };
    let core_tunnel = |core: &str, subnet: &str| {
        o.routing_cores
            .get(core)
            .is_some_and(|c| c.tunnels.iter().any(|t| t.subnet == subnet))
    };
    match action {
        Action::Block { vm, host, .. } => blocked(vm, host),
        Action::Unblock { vm, host, .. } => !blocked(vm, host),
        Action::Shutdown {
            domain: d, host, ..
        } => domain(d, host).is_none_or(|x| x.state == DomainState::ShutOff),
        Action::Start {
            domain: d, host, ..
        }
        | Action::Resume {
            domain: d, host, ..
        } => domain(d, host).is_some_and(|x| x.state == DomainState::Running),
        Action::Pause {
            domain: d, host, ..
        } => domain(d, host).is_some_and(|x| x.state == DomainState::Paused),
        Action::Migrate {
            domain: d,
            from,
            to,
            ..
        } => domain(d, from).is_none() && domain(d, to).is_some(),
        Action::TunnelAdd { subnet, core, .. } => core_tunnel(core, subnet),
        Action::TunnelRemove { subnet, core, .. } => !core_tunnel(core, subnet),
        Action::IpsecInstall {
            link,
            local,
            remote,
            initiate,
            ..
        } => {
            let name = ipsec_connection_name(link, local, remote);
            if *initiate {
                ipsec(local, &name).is_some_and(|c| c.sa_up)
                    && ipsec(remote, &name).is_some_and(|c| c.sa_up)
            } else {
                ipsec(local, &name).is_some()
            }
        }
        Action::IpsecRemove {
            link,
            local,
            remote,
        } => ipsec(local, &ipsec_connection_name(link, local, remote)).is_none(),
        Action::SecureConnections { vm, tls_ports, .. } => Fact::ConnectionsSecured {
            vm: vm.clone(),
            tls_ports: tls_ports.clone(),
        }
        .holds(o),
        Action::RouteCheck {
            core, subnet, cidr, ..
        } => Fact::RouteLearned {
            core: core.clone(),
            subnet: subnet.clone(),
            cidr: *cidr,
        }
        .holds(o),
        Action::Cleanup {
            vm,
            host,
            ipsec_links,
        } => {
            !blocked(vm, host)
                && o.hosts.get(host).is_none_or(|x| {
                    x.ipsec
                        .iter()
                        .all(|c| !ipsec_links.iter().any(|l| *l == c.link))
                })
        }
    }
}

/// For a rollback that cannot observe everything an undo touches: whether the undo of a
/// migration already holds as far as it matters. The undo moves the domain back to `to` (the
/// host it came from); when `from` (the failed target) cannot be reached but the domain runs
/// on `to`, the migration never completed (libvirt starts the target's copy only after the
/// source stopped), so nothing is to move back; a half-arrived copy on the target is an
/// incoming migration that its libvirt discards. Any other action: `false`.
pub async fn runs_where_it_came_from(drivers: &Drivers, action: &Action) -> bool {
    let Action::Migrate { domain, to, .. } = action else {
        return false;
    };
    matches!(
        drivers.hypervisor.domain(to, domain).await,
        Ok(Some(d)) if d.state == DomainState::Running
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::double::LandscapeDouble;
    use crate::plan::synthetic::Fixture;
    use std::sync::Arc;

    #[tokio::test]
    async fn readings_are_kept_between_actions_and_dropped_when_one_starts() {
        let double = Arc::new(LandscapeDouble::new(Fixture::reference().observed));
        let drivers = Drivers::all(double.clone());
        let host = HostId("dc.hv1".into());
        let q: BTreeSet<Query> = [Query::BlockRules(host.clone())].into();
        let both: BTreeSet<Query> = [Query::BlockRules(host.clone()), Query::Ipsec(host)].into();
        let reads = || double.calls().len();
        let readings = Readings::default();

        readings.observe(&drivers, &q).await.unwrap();
        readings.observe(&drivers, &q).await.unwrap();
        assert_eq!(reads(), 1, "read once while nothing acts");
        readings.observe(&drivers, &both).await.unwrap();
        assert_eq!(reads(), 2, "only the missing part is read");

        let acting = readings.acting(Influence::Everything);
        readings.observe(&drivers, &q).await.unwrap();
        readings.observe(&drivers, &q).await.unwrap();
        assert_eq!(reads(), 4, "while a step acts, every check reads");
        drop(acting);

        readings.observe(&drivers, &both).await.unwrap();
        assert_eq!(reads(), 6, "an action's end drops what was read before");
        readings.observe(&drivers, &both).await.unwrap();
        assert_eq!(reads(), 6);
    }

    #[tokio::test]
    async fn an_action_drops_only_the_readings_it_may_change() {
        let double = Arc::new(LandscapeDouble::new(Fixture::reference().observed));
        let drivers = Drivers::all(double.clone());
        let (hv1, hv2) = (HostId("dc.hv1".into()), HostId("dc.hv2".into()));
        let conns = Query::Connections {
            vm: "db".into(),
            host: hv2.clone(),
            address: "192.168.10.12".parse().unwrap(),
        };
        let all: BTreeSet<Query> = [
            Query::BlockRules(hv1.clone()),
            Query::BlockRules(hv2.clone()),
            Query::Ipsec(hv2.clone()),
            conns.clone(),
        ]
        .into();
        let reads = || double.calls().len();
        let readings = Readings::default();
        readings.observe(&drivers, &all).await.unwrap();
        assert_eq!(reads(), 4);

        // Resetting connections: only the connections are read again, during and after.
        let acting = readings.acting(Influence::Only(BTreeSet::new()));
        readings.observe(&drivers, &all).await.unwrap();
        assert_eq!(reads(), 5, "rules and SAs kept while connections are reset");
        drop(acting);
        readings.observe(&drivers, &all).await.unwrap();
        readings.observe(&drivers, &all).await.unwrap();
        assert_eq!(
            reads(),
            6,
            "connections read once after the reset, then kept"
        );

        // A block on hv2: hv2's rules and the connections go; hv1's rules and the SAs stay.
        let acting = readings.acting(Influence::Only([Query::BlockRules(hv2.clone())].into()));
        readings.observe(&drivers, &all).await.unwrap();
        assert_eq!(reads(), 8);
        drop(acting);
        readings.observe(&drivers, &all).await.unwrap();
        readings.observe(&drivers, &all).await.unwrap();
        assert_eq!(reads(), 10);

        // Anything else drops everything.
        drop(readings.acting(Influence::Everything));
        readings.observe(&drivers, &all).await.unwrap();
        assert_eq!(reads(), 14);
    }

    #[tokio::test]
    async fn seeded_readings_answer_like_fresh_reads_without_asking_the_drivers() {
        let observed = Fixture::reference().observed;
        let double = Arc::new(LandscapeDouble::new(observed.clone()));
        let drivers = Drivers::all(double.clone());
        let (hv2, c1) = (HostId("dc.hv2".into()), HostId("cloud.c1".into()));
        let domain = |h: &HostId| Query::Domain {
            host: h.clone(),
            domain: "db".into(),
        };
        let hosts: BTreeSet<Query> = [
            domain(&hv2),
            domain(&c1),
            Query::BlockRules(hv2.clone()),
            Query::Ipsec(c1.clone()),
        ]
        .into();
        let fresh = observe(&drivers, &hosts).await.unwrap();
        let asked = double.calls().len();
        let conns = Query::Connections {
            vm: "db".into(),
            host: hv2.clone(),
            address: "192.168.10.12".parse().unwrap(),
        };
        let readings = Readings::seeded(&observed, hosts.iter().cloned().chain([conns.clone()]));
        let seeded = readings.observe(&drivers, &hosts).await.unwrap();
        assert_eq!(double.calls().len(), asked, "nothing asked");
        assert_eq!(
            serde_json::to_value(&seeded).unwrap(),
            serde_json::to_value(&fresh).unwrap()
        );
        readings.observe(&drivers, &[conns].into()).await.unwrap();
        assert_eq!(
            double.calls().len(),
            asked + 1,
            "connections are read afresh"
        );
    }

    #[test]
    fn influences_of_the_reference_move() {
        let f = Fixture::reference();
        let plan = crate::plan::build(&f.desired, &f.observed, &Default::default()).unwrap();
        let mut seen = BTreeSet::new();
        for step in plan.graph.node_weights() {
            let i = Influence::of(&step.action);
            let mut own = BTreeSet::new();
            action_queries(&step.action, &mut own);
            // What an action's own check reads, it may change.
            assert!(own.iter().all(|q| i.covers(q)), "{:?}: {i:?}", step.kind);
            let narrow = matches!(i, Influence::Only(_));
            seen.insert((step.kind, narrow));
            if let Action::IpsecInstall { local, remote, .. } = &step.action {
                // The data path's guard chains are not in a block rule reading.
                for h in [local, remote] {
                    assert!(!i.covers(&Query::BlockRules(h.clone())), "{i:?}");
                }
            }
        }
        use crate::plan::StepKind as K;
        for (kind, narrow) in [
            (K::Block, true),
            (K::Migrate, true),
            (K::Restart, true),
            (K::IpsecInstall, true),
            (K::ConnectionsSecure, true),
            (K::Enable, true),
            (K::Cleanup, false),
        ] {
            assert!(seen.contains(&(kind, narrow)), "{kind}: {seen:?}");
        }
    }

    #[test]
    fn a_reading_spanning_the_start_or_end_of_an_action_that_may_change_it_is_not_kept() {
        let mut s = ReadingsState::default();
        let q = Query::BlockRules(HostId("dc.hv1".into()));
        let other = Query::BlockRules(HostId("dc.hv2".into()));
        let since = s.epoch;
        s.reading.push(since);
        s.change(&Influence::Only([q.clone()].into()));
        assert!(
            !s.current(&q, since),
            "an action on hv1 began during the read"
        );
        assert!(s.current(&other, since), "hv2's rules are not its business");
        s.change(&Influence::Only(BTreeSet::new()));
        assert!(s.current(&other, since));
        s.change(&Influence::Everything);
        assert!(!s.current(&other, since));
    }
}
