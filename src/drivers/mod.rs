//! Effects: the interfaces through which smig reads and changes the landscape, grouped by what
//! they act on. [`Hypervisor`] (libvirt), [`HostNetwork`] (netlink + nftables + conntrack on a
//! host or routing core, locally through a network namespace or remotely through a host agent),
//! [`Ipsec`] (strongSwan over VICI) and [`RoutingCore`] (routes). Discovery uses the same
//! drivers ([`Drivers`] implements [`Discover`]).
//!
//! Every method is async; implementations over blocking libraries (libvirt) run their calls in
//! `spawn_blocking`. Every mutating method is idempotent where the thing it makes already exists
//! or the thing it removes is already gone, so a resumed apply can repeat a call safely.
//!
//! [`double`] holds the landscape test double, which implements all of them over an in-memory
//! landscape.
//!
//! [`vici`] holds the real [`Ipsec`] driver (strongSwan's charon over its VICI socket).
//!
//! [`real`] builds the bundle of real drivers from a landscape and the machine's settings.

pub mod double;
pub mod libvirt;
pub mod netns;
pub mod real;
pub mod vici;

use crate::discover::{Discover, DiscoverError};
use crate::model::{
    BlockRule, Connection, Domain, HostId, IpsecConnection, Landscape, MigrationMode, Name,
    Observed, ObservedHost, ObservedRoutingCore, Route, Secret, Tunnel,
};
use crate::plan::Target;
use ipnet::Ipv4Net;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use tokio::sync::watch;

/// Why a driver call failed.
#[derive(Debug, Clone, thiserror::Error, miette::Diagnostic)]
pub enum DriverError {
    /// The component refused or failed the operation.
    #[error("{op} on {target} failed: {reason}")]
    #[diagnostic(code(smig::driver::failed))]
    Failed {
        op: String,
        target: String,
        reason: String,
    },
    /// The component could not be reached.
    #[error("{op}: {target} is unreachable: {reason}")]
    #[diagnostic(code(smig::driver::unreachable))]
    Unreachable {
        op: String,
        target: String,
        reason: String,
    },
    /// The operation was aborted on request (Ctrl-C, or a failure elsewhere in the plan).
    #[error("{op} on {target} was aborted")]
    #[diagnostic(code(smig::driver::aborted))]
    Aborted { op: String, target: String },
    /// A wait ran out of time.
    #[error("{op} on {target} timed out after {seconds} s")]
    #[diagnostic(code(smig::driver::timeout))]
    Timeout {
        op: String,
        target: String,
        seconds: u64,
    },
}

impl DriverError {
    pub fn failed(op: &str, target: impl ToString, reason: impl ToString) -> Self {
        DriverError::Failed {
            op: op.to_string(),
            target: target.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Result of a driver call.
pub type DriverResult<T> = Result<T, DriverError>;

/// Progress of a running migration, as libvirt's job info reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MigrationProgress {
    pub data_processed: u64,
    pub data_total: u64,
    pub data_remaining: u64,
}

impl MigrationProgress {
    /// Completion in percent (0-100).
    pub fn percent(&self) -> u8 {
        if self.data_total == 0 {
            return 0;
        }
        ((self.data_processed.min(self.data_total) * 100) / self.data_total) as u8
    }
}

/// Where a migration reports its progress.
pub type ProgressSink = Arc<dyn Fn(MigrationProgress) + Send + Sync>;

/// Tells a long-running driver call (a migration, a wait) to stop. Cloneable; cheap to check.
#[derive(Debug, Clone)]
pub struct AbortSignal(watch::Receiver<bool>);

/// The sending side of an [`AbortSignal`].
#[derive(Debug)]
pub struct AbortHandle(watch::Sender<bool>);

impl AbortSignal {
    /// A signal and the handle that raises it.
    pub fn new() -> (AbortHandle, AbortSignal) {
        let (tx, rx) = watch::channel(false);
        (AbortHandle(tx), AbortSignal(rx))
    }
    /// A signal that is never raised.
    pub fn never() -> AbortSignal {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive for the life of the process so `aborted()` pends forever.
        std::mem::forget(tx);
        AbortSignal(rx)
    }
    pub fn is_aborted(&self) -> bool {
        *self.0.borrow()
    }
    /// Completes once the signal is raised.
    pub async fn aborted(&mut self) {
        while !*self.0.borrow_and_update() {
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl AbortHandle {
    pub fn abort(&self) {
        let _ = self.0.send(true);
    }
}

/// Everything a migration needs, derived from `Action::Migrate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationRequest {
    pub domain: String,
    pub from: HostId,
    pub to: HostId,
    /// libvirt URI of the destination.
    pub to_uri: String,
    pub mode: MigrationMode,
    /// libvirt native TLS for the migration stream (VIR_MIGRATE_TLS).
    pub tls: bool,
    /// Arrive paused on the target (VIR_MIGRATE_PAUSED).
    pub paused: bool,
    pub max_downtime_ms: Option<u64>,
    pub bandwidth_mibps: Option<u64>,
}

/// A tunnel to create: on a routing core towards a host, or on a host towards a routing core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TunnelSpec {
    pub subnet: String,
    pub cidr: Ipv4Net,
    /// The other end: a host id, or `core:<env>` for a routing core.
    pub remote: String,
    /// Underlay address of the other end.
    pub remote_address: Ipv4Addr,
}

/// How an IPsec connection authenticates. The key material is a [`Secret`]: drivers call
/// `expose()` only when handing it to the IPsec daemon.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IpsecCredential {
    Psk(Secret),
    Cert {
        cert: String,
        key: String,
        ca: Option<String>,
    },
}

/// One end of a secure_link's IPsec connection, as loaded into one host's daemon.
#[derive(Debug, Clone, Serialize)]
pub struct IpsecConfig {
    /// smig-owned connection name (`ipsec_connection_name`), the same on both ends.
    pub name: String,
    pub link: String,
    pub local: HostId,
    pub local_address: Ipv4Addr,
    pub remote: HostId,
    pub remote_address: Ipv4Addr,
    pub proposals: Vec<String>,
    pub credential: IpsecCredential,
}

/// A hypervisor host's VMs (libvirt).
#[async_trait::async_trait]
pub trait Hypervisor: Send + Sync {
    /// Every domain defined on the host (`virsh list --all`).
    async fn domains(&self, host: &HostId) -> DriverResult<BTreeMap<Name, Domain>>;
    /// Every domain on each of `hosts`, one answer per host in the order given: an unreachable
    /// host does not hide the others. Drivers that can ask hosts in parallel do (libvirt).
    async fn domains_of(
        &self,
        hosts: &[HostId],
    ) -> Vec<(HostId, DriverResult<BTreeMap<Name, Domain>>)> {
        let mut out = Vec::with_capacity(hosts.len());
        for h in hosts {
            out.push((h.clone(), self.domains(h).await));
        }
        out
    }
    /// One domain, `None` when it is not defined there.
    async fn domain(&self, host: &HostId, domain: &str) -> DriverResult<Option<Domain>>;
    /// Defines a persistent domain from its XML (`virsh define`).
    async fn define(&self, host: &HostId, domain: &str, xml: &str) -> DriverResult<()>;
    /// Starts a shut-off domain (`virsh start`); a running domain is left as it is.
    async fn start(&self, host: &HostId, domain: &str) -> DriverResult<()>;
    /// Shuts a domain down (`virsh shutdown`, then `destroy` after a grace period).
    async fn shutdown(&self, host: &HostId, domain: &str) -> DriverResult<()>;
    /// Pauses a running domain (`virsh suspend`).
    async fn pause(&self, host: &HostId, domain: &str) -> DriverResult<()>;
    /// Resumes a paused domain (`virsh resume`).
    async fn resume(&self, host: &HostId, domain: &str) -> DriverResult<()>;
    /// Sets the link of the domain's NIC (`virsh domif-setlink DOM MAC up|down`).
    async fn set_link(&self, host: &HostId, domain: &str, up: bool) -> DriverResult<()>;
    /// Migrates a domain: persistent on the target, undefined on the source. Reports progress
    /// through `progress` and stops (aborting the libvirt job) when `abort` is raised; an
    /// aborted migration leaves the domain on the source.
    async fn migrate(
        &self,
        request: &MigrationRequest,
        progress: ProgressSink,
        abort: AbortSignal,
    ) -> DriverResult<()>;
    /// Progress of the domain's running job, if any (`virsh domjobinfo`).
    async fn job_info(
        &self,
        host: &HostId,
        domain: &str,
    ) -> DriverResult<Option<MigrationProgress>>;
}

/// The network stack of a host or a routing core (netlink, nftables, conntrack / sock_diag).
/// `Target::Host` for a hypervisor host, `Target::RoutingCore` for a routing core.
#[async_trait::async_trait]
pub trait HostNetwork: Send + Sync {
    /// smig's block rules on a host (nftables table `smig`).
    async fn block_rules(&self, host: &HostId) -> DriverResult<Vec<BlockRule>>;
    /// Drops traffic between the VM and its peers on the host; replaces the VM's rule if present.
    async fn block(&self, host: &HostId, rule: &BlockRule) -> DriverResult<()>;
    /// Removes the VM's block rule. With `secure_only` a guard stays that lets the VM reach
    /// its peers through the IPsec SA only (the forward/output guard of LAB-NOTES).
    async fn unblock(&self, host: &HostId, vm: &str, secure_only: bool) -> DriverResult<()>;
    /// Adds or removes a host route and proxy-ARP entry for a moved VM's address.
    async fn vm_route(&self, host: &HostId, address: Ipv4Addr, present: bool) -> DriverResult<()>;
    /// smig's tunnels ending at `at`.
    async fn tunnels(&self, at: &Target) -> DriverResult<Vec<Tunnel>>;
    /// Creates a tunnel at `at` (idempotent).
    async fn tunnel_add(&self, at: &Target, spec: &TunnelSpec) -> DriverResult<()>;
    /// Removes smig's tunnel for `subnet` at `at` (absent is fine).
    async fn tunnel_remove(&self, at: &Target, subnet: &str) -> DriverResult<()>;
    /// Non-managed connections of the VM at `address`, as seen on its host.
    async fn connections(&self, host: &HostId, address: Ipv4Addr) -> DriverResult<Vec<Connection>>;
    /// Non-managed connections of the VMs at `addresses`, in the same order, as any of `hosts`
    /// sees them: discovery reads them while it learns where each VM runs. A driver that
    /// reads a whole table per host overrides it to read each table once.
    async fn connections_of(
        &self,
        hosts: &[HostId],
        addresses: &[Ipv4Addr],
    ) -> DriverResult<Vec<Vec<Connection>>> {
        let each = addresses.iter().map(|a| async move {
            let mut all: Vec<Connection> = Vec::new();
            for h in hosts {
                for c in self.connections(h, *a).await? {
                    if !all.contains(&c) {
                        all.push(c);
                    }
                }
            }
            Ok::<_, DriverError>(all)
        });
        futures_util::future::try_join_all(each).await
    }
    /// Resets connections (conntrack delete / SOCK_DESTROY) so they re-establish.
    async fn reset_connections(
        &self,
        host: &HostId,
        address: Ipv4Addr,
        connections: &[Connection],
    ) -> DriverResult<()>;
    /// Creates the secure data path that keeps `subnet` one L2 segment between hosts `a` and
    /// `b` (a VXLAN between their overlay addresses, which the IPsec CHILD_SA covers, in the
    /// subnet's bridge on both), with the guard that drops it whenever it would leave other
    /// than through the SA. Idempotent. Drivers without such a path refuse.
    async fn overlay_add(&self, a: &HostId, b: &HostId, subnet: &str) -> DriverResult<()> {
        let _ = (b, subnet);
        Err(DriverError::failed(
            "network.overlay_add",
            a,
            "this driver has no overlay data path",
        ))
    }
    /// Removes the data path of [`HostNetwork::overlay_add`] (absent is fine).
    async fn overlay_remove(&self, a: &HostId, b: &HostId, subnet: &str) -> DriverResult<()> {
        let _ = (b, subnet);
        Err(DriverError::failed(
            "network.overlay_remove",
            a,
            "this driver has no overlay data path",
        ))
    }
    /// Waits for what earlier calls left running in the background (a reset's transient
    /// rules stay armed until each flow met its reset) and reports the first failure. An
    /// apply calls it before it ends.
    async fn settle(&self) -> DriverResult<()> {
        Ok(())
    }
}

/// A host's IPsec daemon (strongSwan over VICI).
#[async_trait::async_trait]
pub trait Ipsec: Send + Sync {
    /// smig-owned connections loaded on the host, with SA state and byte counters.
    async fn connections(&self, host: &HostId) -> DriverResult<Vec<IpsecConnection>>;
    /// Loads (or replaces) a connection and its credential (`load-shared` + `load-conn`).
    async fn load(&self, host: &HostId, config: &IpsecConfig) -> DriverResult<()>;
    /// Brings the connection's CHILD_SA up (`initiate`); up already is fine.
    async fn initiate(&self, host: &HostId, name: &str) -> DriverResult<()>;
    /// Terminates the SA and unloads the connection and its credential (absent is fine).
    async fn unload(&self, host: &HostId, name: &str) -> DriverResult<()>;
}

/// An environment's routing core.
#[async_trait::async_trait]
pub trait RoutingCore: Send + Sync {
    /// The routes the core currently has.
    async fn routes(&self, core: &str) -> DriverResult<Vec<Route>>;
}

/// The drivers an apply works through.
#[derive(Clone)]
pub struct Drivers {
    pub hypervisor: Arc<dyn Hypervisor>,
    pub network: Arc<dyn HostNetwork>,
    pub ipsec: Arc<dyn Ipsec>,
    pub routing: Arc<dyn RoutingCore>,
}

impl Drivers {
    /// All four roles played by one implementation (the test double, a host agent).
    pub fn all<T>(driver: Arc<T>) -> Drivers
    where
        T: Hypervisor + HostNetwork + Ipsec + RoutingCore + 'static,
    {
        Drivers {
            hypervisor: driver.clone(),
            network: driver.clone(),
            ipsec: driver.clone(),
            routing: driver,
        }
    }
}

fn unreachable(e: DriverError) -> DiscoverError {
    let host = match &e {
        DriverError::Failed { target, .. }
        | DriverError::Unreachable { target, .. }
        | DriverError::Aborted { target, .. }
        | DriverError::Timeout { target, .. } => target.clone(),
    };
    DiscoverError::Unreachable {
        host,
        reason: e.to_string(),
    }
}

#[async_trait::async_trait]
impl Discover for Drivers {
    async fn discover(&self, landscape: &Landscape) -> Result<Observed, DiscoverError> {
        let mut observed = Observed::empty();
        let ids: Vec<HostId> = landscape.hosts().map(|h| h.id.clone()).collect();
        // Every host and routing core at once: the reads are independent.
        let hosts = landscape.hosts().map(|host| async move {
            let id = &host.id;
            let at = Target::Host(id.clone());
            let (block_rules, ipsec, tunnels) = futures_util::try_join!(
                self.network.block_rules(id),
                self.ipsec.connections(id),
                self.network.tunnels(&at),
            )
            .map_err(unreachable)?;
            Ok::<_, DiscoverError>((id.clone(), block_rules, ipsec, tunnels))
        });
        let cores = landscape
            .environments
            .iter()
            .filter(|(_, env)| env.routing_core.is_some())
            .map(|(name, _)| async move {
                let at = Target::RoutingCore(name.as_str().into());
                let (routes, tunnels) =
                    futures_util::try_join!(self.routing.routes(name), self.network.tunnels(&at),)
                        .map_err(unreachable)?;
                Ok::<_, DiscoverError>((name.clone(), ObservedRoutingCore { routes, tunnels }))
            });
        // Connections are read at the same time, for every VM of the configuration: a VM's
        // flows are tracked on its own host and on its peers', wherever it runs.
        let addresses: Vec<Ipv4Addr> = landscape.vms.values().map(|vm| vm.address).collect();
        let (all_domains, hosts, cores, seen) = futures_util::join!(
            self.hypervisor.domains_of(&ids),
            futures_util::future::try_join_all(hosts),
            futures_util::future::try_join_all(cores),
            self.network.connections_of(&ids, &addresses),
        );
        let mut all_domains: BTreeMap<HostId, _> = all_domains.into_iter().collect();
        for (id, block_rules, ipsec, tunnels) in hosts? {
            let domains = all_domains
                .remove(&id)
                .unwrap_or_else(|| Err(DriverError::failed("hypervisor.domains", &id, "not asked")))
                .map_err(unreachable)?;
            observed.hosts.insert(
                id,
                ObservedHost {
                    domains,
                    block_rules,
                    ipsec,
                    tunnels,
                },
            );
        }
        observed.routing_cores.extend(cores?);
        // Kept for the VMs that run somewhere.
        for (vm, conns) in landscape.vms.values().zip(seen.map_err(unreachable)?) {
            let runs = observed
                .hosts
                .values()
                .any(|h| h.domains.contains_key(vm.domain.as_str()));
            if runs && !conns.is_empty() {
                observed.connections.insert(vm.name.to_string(), conns);
            }
        }
        Ok(observed)
    }
}
