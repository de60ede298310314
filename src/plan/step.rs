//! Steps: the vertices of the plan DAG. A step is pure data: what to do ([`Action`]), where
//! ([`Target`]), what must hold before ([`Step::precondition`]), what holds after
//! ([`Step::effect`]), and how to undo it ([`Inverse`]). Drivers turn actions into effects;
//! the walker checks facts against fresh discovery to skip work already done.

use crate::model::{HostId, MigrationMode, Name};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;

/// The step kinds of SPEC.md, in FIG. 3 order. The string form is what users see.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum StepKind {
    /// 320: block data communication between the VM and its peers (fail closed).
    #[serde(rename = "block")]
    Block,
    /// 325: cold mode only: shut the VM down on the source.
    #[serde(rename = "shutdown")]
    Shutdown,
    /// 330: libvirt migration.
    #[serde(rename = "migrate")]
    Migrate,
    /// 335, 340: a tunnel from the routing core to the other environment for a whole subnet.
    #[serde(rename = "tunnel.add")]
    TunnelAdd,
    /// 345: start or resume the VM on the target.
    #[serde(rename = "restart")]
    Restart,
    /// 345: configure and install the IPsec policy; the SA must be up.
    #[serde(rename = "ipsec.install")]
    IpsecInstall,
    /// 355-365: keep secured non-managed connections, reset unsecured ones.
    #[serde(rename = "connections.secure")]
    ConnectionsSecure,
    /// 370: re-enable traffic, over the secure link only.
    #[serde(rename = "enable")]
    Enable,
    /// 375-385: wait until the routing core routes the subnet without the tunnel.
    #[serde(rename = "route.check")]
    RouteCheck,
    /// 390: remove the tunnel.
    #[serde(rename = "tunnel.remove")]
    TunnelRemove,
    /// Remove smig's leftovers on the source (block rules, stale IPsec configuration).
    #[serde(rename = "cleanup")]
    Cleanup,
}

impl StepKind {
    pub const ALL: [StepKind; 11] = [
        StepKind::Block,
        StepKind::Shutdown,
        StepKind::Migrate,
        StepKind::TunnelAdd,
        StepKind::Restart,
        StepKind::IpsecInstall,
        StepKind::ConnectionsSecure,
        StepKind::Enable,
        StepKind::RouteCheck,
        StepKind::TunnelRemove,
        StepKind::Cleanup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Block => "block",
            StepKind::Shutdown => "shutdown",
            StepKind::Migrate => "migrate",
            StepKind::TunnelAdd => "tunnel.add",
            StepKind::Restart => "restart",
            StepKind::IpsecInstall => "ipsec.install",
            StepKind::ConnectionsSecure => "connections.secure",
            StepKind::Enable => "enable",
            StepKind::RouteCheck => "route.check",
            StepKind::TunnelRemove => "tunnel.remove",
            StepKind::Cleanup => "cleanup",
        }
    }

    /// The FIG. 3 block numbers this step implements.
    pub fn patent_blocks(self) -> &'static str {
        match self {
            StepKind::Block => "320",
            StepKind::Shutdown => "325",
            StepKind::Migrate => "330",
            StepKind::TunnelAdd => "335, 340",
            StepKind::Restart => "345",
            StepKind::IpsecInstall => "345",
            StepKind::ConnectionsSecure => "355-365",
            StepKind::Enable => "370",
            StepKind::RouteCheck => "375-385",
            StepKind::TunnelRemove => "390",
            StepKind::Cleanup => "-",
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a step acts.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A hypervisor host.
    Host(HostId),
    /// The routing core of an environment.
    RoutingCore(Name),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Host(h) => write!(f, "{h}"),
            Target::RoutingCore(env) => write!(f, "{env}.routing_core"),
        }
    }
}

/// What a step does, with every parameter a driver needs. Secrets are not here: an
/// `IpsecInstall` names its secure_link and the driver takes the key from the loaded
/// configuration, so plans and journals never hold one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Action {
    /// Drop traffic between `vm` (at `address`) and `peers` on `host`. With `allow_ipsec`,
    /// flows that cross smig's IPsec data path from their first packet pass (pre-staged: the
    /// VM arrives running behind this filter once its SAs are up).
    Block {
        vm: Name,
        host: HostId,
        address: Ipv4Addr,
        peers: Vec<Ipv4Addr>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_ipsec: bool,
    },
    /// Remove the block rule of `vm` on `host`. With `secure_only`, traffic to peers across an
    /// untrusted network stays allowed through the IPsec SA only (the fail-closed guard stays).
    Unblock {
        vm: Name,
        host: HostId,
        address: Ipv4Addr,
        peers: Vec<Ipv4Addr>,
        secure_only: bool,
    },
    Shutdown {
        vm: Name,
        domain: Name,
        host: HostId,
    },
    Start {
        vm: Name,
        domain: Name,
        host: HostId,
    },
    Pause {
        vm: Name,
        domain: Name,
        host: HostId,
    },
    Resume {
        vm: Name,
        domain: Name,
        host: HostId,
    },
    Migrate {
        vm: Name,
        domain: Name,
        from: HostId,
        to: HostId,
        /// libvirt URI of the destination.
        to_uri: Name,
        mode: MigrationMode,
        /// Use libvirt's native TLS for the migration stream (VIR_MIGRATE_TLS).
        tls: bool,
        /// Arrive paused on the target (to be resumed by `restart`); unpaused, libvirt resumes
        /// the VM on the target at the switchover.
        paused: bool,
        max_downtime_ms: Option<u64>,
        bandwidth_mibps: Option<u64>,
    },
    TunnelAdd {
        subnet: Name,
        cidr: Ipv4Net,
        /// Environment whose routing core is the local end.
        core: Name,
        remote: HostId,
        remote_address: Ipv4Addr,
    },
    TunnelRemove {
        subnet: Name,
        cidr: Ipv4Net,
        core: Name,
        remote: HostId,
        remote_address: Ipv4Addr,
    },
    /// Load the secure_link's connection and secret on `local` and bring the SA up to `remote`.
    IpsecInstall {
        link: Name,
        local: HostId,
        local_address: Ipv4Addr,
        remote: HostId,
        remote_address: Ipv4Addr,
        proposals: Vec<Name>,
        /// Bring the SA up from this end once loaded. The other end of a pair only loads
        /// (it is installed first), so the initiating end finds its peer ready.
        #[serde(default)]
        initiate: bool,
    },
    IpsecRemove {
        link: Name,
        local: HostId,
        remote: HostId,
    },
    /// List the VM's non-managed connections, keep those secured by IPsec or on a TLS port,
    /// reset the rest so they re-establish over the secure link.
    SecureConnections {
        vm: Name,
        host: HostId,
        address: Ipv4Addr,
        tls_ports: Vec<u16>,
    },
    /// Poll the routing core until it routes `cidr` without smig's tunnel.
    RouteCheck {
        core: Name,
        subnet: Name,
        cidr: Ipv4Net,
        timeout_s: u64,
        interval_s: u64,
    },
    /// Remove smig's leftovers for `vm` on `host`: its block rule and the given IPsec links.
    Cleanup {
        vm: Name,
        host: HostId,
        ipsec_links: Vec<Name>,
    },
}

impl Action {
    /// For a live migration whose VM arrives running (not paused): the VM and the host it
    /// starts on, as a `restart` would start it.
    pub fn arrives_running(&self) -> Option<(&Name, &HostId)> {
        match self {
            Action::Migrate {
                vm,
                to,
                mode: MigrationMode::Live,
                paused: false,
                ..
            } => Some((vm, to)),
            _ => None,
        }
    }
}

/// How a step is undone during rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Inverse {
    // Boxed: most steps have an inverse action, and a step holding two actions inline
    // would be twice as large (the schema and the JSON are those of the action).
    /// Run this action.
    Action { action: Box<Action> },
    /// Nothing to undo (a check, or an effect rollback does not need to reverse).
    Nothing,
    /// Cannot be undone: once it completed, rollback stops here and the apply halts fail-closed.
    PointOfNoReturn { reason: String },
}

impl Inverse {
    /// The inverse that runs `action`.
    pub fn action(action: Action) -> Self {
        Inverse::Action {
            action: Box::new(action),
        }
    }
    /// The action rollback runs, if any.
    pub fn as_action(&self) -> Option<&Action> {
        match self {
            Inverse::Action { action } => Some(action),
            _ => None,
        }
    }
}

/// A checkable statement about the discovered landscape. Preconditions and effects are lists
/// of facts; the walker evaluates them against fresh discovery (see `plan::facts`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Fact {
    /// The domain is defined on the host and running.
    DomainRunning { domain: Name, host: HostId },
    /// The domain is defined on the host and paused.
    DomainPaused { domain: Name, host: HostId },
    /// The domain is defined on the host and shut off.
    DomainShutOff { domain: Name, host: HostId },
    /// The domain is not defined on the host.
    DomainAbsent { domain: Name, host: HostId },
    /// smig's block rule for the VM is present on the host.
    Blocked { vm: Name, host: HostId },
    /// No smig block rule for the VM on the host.
    NotBlocked { vm: Name, host: HostId },
    /// The link's IPsec connection on `host` towards `remote` has its SA up.
    SaUp {
        link: Name,
        host: HostId,
        remote: HostId,
    },
    /// No IPsec connection for the link on the host.
    IpsecAbsent { link: Name, host: HostId },
    /// No IPsec connection for the link on `host` towards `remote` (other pairs may remain).
    SaAbsent {
        link: Name,
        host: HostId,
        remote: HostId,
    },
    /// smig's tunnel for the subnet exists on the environment's routing core.
    TunnelPresent { subnet: Name, core: Name },
    /// No smig tunnel for the subnet on the routing core.
    TunnelAbsent { subnet: Name, core: Name },
    /// The routing core routes the subnet's prefix without the tunnel.
    RouteLearned {
        core: Name,
        subnet: Name,
        cidr: Ipv4Net,
    },
    /// None of the VM's non-managed connections is unsecured.
    ConnectionsSecured { vm: Name, tls_ports: Vec<u16> },
}

/// One vertex of the plan DAG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Step {
    /// Stable, unique key (`<kind>:<subject>@<target>`), used to deduplicate shared steps and
    /// to match journal entries to steps.
    pub key: String,
    pub kind: StepKind,
    /// The resource the step is about: `vm.db`, `secure_link.web_db`, `subnet.app`.
    pub subject: Name,
    pub target: Target,
    pub action: Action,
    pub precondition: Vec<Fact>,
    pub effect: Vec<Fact>,
    pub inverse: Inverse,
}
