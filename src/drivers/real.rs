//! The real drivers bundle: libvirt for the hypervisors, the netns host network driver for
//! hosts and routing cores, strongSwan over VICI for IPsec, configured from the landscape and
//! a few settings that are not part of the configuration (where this machine finds each
//! host's VICI socket and client PKI).
//!
//! The settings come from the environment, so `smig plan` and `smig apply` need no extra flags:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `SMIG_LIBVIRT_PKI` | client PKI directory for `qemu+tls` URIs (`cacert.pem`, `clientcert.pem`, `clientkey.pem`) | libvirt's own (`/etc/pki`) |
//! | `SMIG_VICI_SOCKET` | VICI socket path template: `{host}`, `{env}`, `{id}`, `{netns}` | none: every host needs one |
//! | `SMIG_OVERLAY_PREFIX` | overlay network of the IPsec endpoints (each host's address keeps its host bits) | none: every host needs one |
//! | `SMIG_CORE_VICI_SOCKET` | VICI socket path template of a routing core's daemon: `{env}`, `{netns}` | none: a subnet tunnel then fails |
//!
//! `SMIG_LAB=1` selects the lab's conventions for the last three (lab/README.md).
//!
//! [`SecurePath`] joins IPsec and the host network: once a secure_link's SA is up, the
//! subnet's data path between the two hosts (a VXLAN between their overlay addresses, which
//! the SA covers, guarded so it never leaves other than through the SA) is created; before the
//! SA goes, the path goes.
//!
//! [`SubnetTunnels`] does the same for a whole-subnet move's tunnel from a routing core to a
//! host: an IPsec connection of its own between the two overlay addresses, keyed with a fresh
//! random key, comes up before the VXLAN and goes after it.

use super::libvirt::{Libvirt, LibvirtOptions};
use super::netns::NetnsHostNetwork;
use super::vici::{
    self, TunnelEnd, Vici, ViciOptions, LAB_CORE_SOCKET_TEMPLATE, LAB_OVERLAY_PREFIX,
    LAB_SOCKET_TEMPLATE, TUNNEL_PREFIX,
};
use super::{DriverError, DriverResult, Drivers, HostNetwork, Ipsec, IpsecConfig, TunnelSpec};
use crate::model::{BlockRule, Connection, HostId, IpsecConnection, Landscape, Tunnel};
use crate::plan::Target;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

/// Environment variable: client PKI directory for libvirt TLS.
pub const ENV_LIBVIRT_PKI: &str = "SMIG_LIBVIRT_PKI";
/// Environment variable: VICI socket path template.
pub const ENV_VICI_SOCKET: &str = "SMIG_VICI_SOCKET";
/// Environment variable: overlay endpoint network.
pub const ENV_OVERLAY_PREFIX: &str = "SMIG_OVERLAY_PREFIX";
/// Environment variable: VICI socket path template of the routing cores' daemons.
pub const ENV_CORE_VICI_SOCKET: &str = "SMIG_CORE_VICI_SOCKET";
/// Environment variable: `1` selects the lab's socket template and overlay network.
pub const ENV_LAB: &str = "SMIG_LAB";

/// Settings of the real drivers that the configuration does not hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RealOptions {
    pub libvirt_pki: Option<PathBuf>,
    pub vici_socket: Option<String>,
    pub overlay_prefix: Option<Ipv4Net>,
    pub core_vici_socket: Option<String>,
}

impl RealOptions {
    /// The lab's conventions (lab/README.md).
    pub fn lab() -> RealOptions {
        RealOptions {
            libvirt_pki: None,
            vici_socket: Some(LAB_SOCKET_TEMPLATE.to_string()),
            overlay_prefix: LAB_OVERLAY_PREFIX.parse().ok(),
            core_vici_socket: Some(LAB_CORE_SOCKET_TEMPLATE.to_string()),
        }
    }

    /// Settings from environment variables (see the module docs), read through `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> DriverResult<RealOptions> {
        let set = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let mut o = if set(ENV_LAB).is_some_and(|v| v.trim() != "0") {
            RealOptions::lab()
        } else {
            RealOptions::default()
        };
        if let Some(p) = set(ENV_LIBVIRT_PKI) {
            o.libvirt_pki = Some(PathBuf::from(p));
        }
        if let Some(t) = set(ENV_VICI_SOCKET) {
            o.vici_socket = Some(t);
        }
        if let Some(t) = set(ENV_CORE_VICI_SOCKET) {
            o.core_vici_socket = Some(t);
        }
        if let Some(p) = set(ENV_OVERLAY_PREFIX) {
            let net = p.trim().parse::<Ipv4Net>().map_err(|e| {
                DriverError::failed(
                    "drivers.configure",
                    ENV_OVERLAY_PREFIX,
                    format!("{p:?} is not an IPv4 network ({e})"),
                )
            })?;
            o.overlay_prefix = Some(net);
        }
        Ok(o)
    }

    /// Settings from the process environment.
    pub fn from_env() -> DriverResult<RealOptions> {
        RealOptions::from_vars(|k| std::env::var(k).ok())
    }
}

/// The real drivers for every host and routing core of `landscape`.
pub fn drivers(landscape: &Landscape, options: &RealOptions) -> DriverResult<Drivers> {
    let missing = |what: &str, var: &str, example: &str| {
        DriverError::failed(
            "drivers.configure",
            "this machine",
            format!("no {what}: set {var} (e.g. {var}={example}), or {ENV_LAB}=1 on the lab"),
        )
    };
    if landscape.hosts().next().is_some() {
        if options.vici_socket.is_none() {
            return Err(missing(
                "VICI socket for the hosts' IPsec daemons",
                ENV_VICI_SOCKET,
                "/run/hosts/{host}/charon.vici",
            ));
        }
        if options.overlay_prefix.is_none() {
            return Err(missing(
                "overlay network for the IPsec endpoints",
                ENV_OVERLAY_PREFIX,
                "172.31.0.0/24",
            ));
        }
    }
    let libvirt = Libvirt::from_landscape(
        landscape,
        LibvirtOptions {
            pki_path: options.libvirt_pki.clone(),
            ..LibvirtOptions::default()
        },
    );
    let vici = Arc::new(Vici::new(
        landscape,
        ViciOptions {
            socket_template: options.vici_socket.clone(),
            core_socket_template: options.core_vici_socket.clone(),
            overlay_prefix: options.overlay_prefix,
            ..ViciOptions::default()
        },
    )?);
    let network = Arc::new(NetnsHostNetwork::from_landscape(landscape));
    let ipsec = SecurePath::new(landscape, vici.clone(), network.clone());
    Ok(Drivers {
        hypervisor: Arc::new(libvirt),
        network: Arc::new(SubnetTunnels::new(network.clone(), vici)),
        ipsec: Arc::new(ipsec),
        routing: network,
    })
}

/// An [`Ipsec`] driver that also keeps each secure_link's subnet data path between its two
/// hosts: created while the SA is initiated, removed before the connection is unloaded
/// (unless another smig connection between the same hosts still needs it).
pub struct SecurePath {
    ipsec: Arc<dyn Ipsec>,
    network: Arc<dyn HostNetwork>,
    /// secure_link → the subnets of its VMs.
    subnets: BTreeMap<String, BTreeSet<String>>,
    /// (host, connection) → (secure_link, remote host) of what this process loaded: an
    /// initiate right after its load need not list the daemon's connections to learn them.
    loaded: std::sync::Mutex<BTreeMap<(HostId, String), (String, HostId)>>,
}

impl SecurePath {
    /// Wraps `ipsec`, creating data paths through `network`.
    pub fn new(
        landscape: &Landscape,
        ipsec: Arc<dyn Ipsec>,
        network: Arc<dyn HostNetwork>,
    ) -> SecurePath {
        let subnets = landscape
            .secure_links
            .iter()
            .map(|(name, link)| {
                let nets = link
                    .between
                    .iter()
                    .filter_map(|v| {
                        landscape
                            .vms
                            .get(v.as_str())
                            .map(|vm| vm.subnet.to_string())
                    })
                    .collect();
                (name.clone(), nets)
            })
            .collect();
        SecurePath {
            ipsec,
            network,
            subnets,
            loaded: Default::default(),
        }
    }

    fn subnets_of(&self, link: &str) -> impl Iterator<Item = &String> {
        self.subnets.get(link).into_iter().flatten()
    }

    async fn find(&self, host: &HostId, name: &str) -> DriverResult<Option<IpsecConnection>> {
        Ok(self
            .ipsec
            .connections(host)
            .await?
            .into_iter()
            .find(|c| c.name == name))
    }
}

#[async_trait::async_trait]
impl Ipsec for SecurePath {
    async fn connections(&self, host: &HostId) -> DriverResult<Vec<IpsecConnection>> {
        self.ipsec.connections(host).await
    }

    async fn load(&self, host: &HostId, config: &IpsecConfig) -> DriverResult<()> {
        self.ipsec.load(host, config).await?;
        if let Ok(mut l) = self.loaded.lock() {
            let key = (host.clone(), config.name.clone());
            l.insert(key, (config.link.clone(), config.remote.clone()));
        }
        Ok(())
    }

    async fn initiate(&self, host: &HostId, name: &str) -> DriverResult<()> {
        let known = self
            .loaded
            .lock()
            .ok()
            .and_then(|l| l.get(&(host.clone(), name.to_string())).cloned());
        let (link, remote) = match known {
            Some(k) => k,
            None => match self.find(host, name).await? {
                Some(conn) => (conn.link, conn.remote),
                None => {
                    return Err(DriverError::failed(
                        "ipsec.initiate",
                        host,
                        format!("{name} is not loaded, so it cannot be initiated"),
                    ))
                }
            },
        };
        // The data path is laid while IKE runs: its guard drops whatever would leave other
        // than through the SA, so until the SA is up nothing of it crosses at all.
        let paths = async {
            for subnet in self.subnets_of(&link) {
                self.network.overlay_add(host, &remote, subnet).await?;
            }
            Ok(())
        };
        let (initiated, laid) = tokio::join!(self.ipsec.initiate(host, name), paths);
        initiated.and(laid)
    }

    async fn unload(&self, host: &HostId, name: &str) -> DriverResult<()> {
        if let Ok(mut l) = self.loaded.lock() {
            l.remove(&(host.clone(), name.to_string()));
        }
        if let Some(conn) = self.find(host, name).await? {
            // Subnets that another smig connection between the same two hosts still carries.
            let mut kept = BTreeSet::new();
            for other in self.ipsec.connections(host).await? {
                if other.name != name && other.remote == conn.remote {
                    kept.extend(self.subnets_of(&other.link).cloned());
                }
            }
            for subnet in self.subnets_of(&conn.link) {
                if !kept.contains(subnet) {
                    self.network
                        .overlay_remove(host, &conn.remote, subnet)
                        .await?;
                }
            }
        }
        self.ipsec.unload(host, name).await
    }
}

/// A [`HostNetwork`] whose subnet tunnels (routing core ↔ host) are carried by IPsec: before
/// the tunnel's VXLAN is created, a smig connection of its own
/// ([`vici::tunnel_connection_name`]) between the two overlay addresses is loaded on both
/// daemons with a fresh random key and initiated from the core; after the VXLAN is removed,
/// the connection and its key are unloaded from both. Everything else goes to the inner
/// network driver unchanged.
pub struct SubnetTunnels {
    network: Arc<NetnsHostNetwork>,
    vici: Arc<Vici>,
}

/// The two ends of a subnet tunnel: the routing core's environment and the host.
fn tunnel_ends(op: &str, at: &Target, remote: &str) -> DriverResult<(String, HostId)> {
    let pair = match at {
        Target::RoutingCore(env) => (Some(env.to_string()), remote.to_string()),
        Target::Host(h) => (
            remote.strip_prefix("core:").map(str::to_string),
            h.to_string(),
        ),
    };
    match pair {
        (Some(env), host) if !host.starts_with("core:") => Ok((env, HostId(host.into()))),
        _ => Err(DriverError::failed(
            op,
            remote,
            "a subnet tunnel joins a routing core and a host",
        )),
    }
}

impl SubnetTunnels {
    /// Wraps `network`; the tunnels' IPsec goes through `vici`.
    pub fn new(network: Arc<NetnsHostNetwork>, vici: Arc<Vici>) -> SubnetTunnels {
        SubnetTunnels { network, vici }
    }

    async fn end(&self, id: HostId) -> DriverResult<TunnelEnd> {
        let overlay: Ipv4Addr = self.network.overlay_of(&id.0).await?;
        Ok(TunnelEnd { id, overlay })
    }

    /// Unloads every tunnel connection of `subnet` at the core of `env`, on the core and on
    /// the host its name gives (absent is fine).
    async fn ipsec_down(&self, subnet: &str, env: &str) -> DriverResult<()> {
        let core = vici::core_id(env);
        let prefix = format!("{TUNNEL_PREFIX}{subnet}.{env}.");
        for name in self.vici.names_with_prefix(&core, &prefix).await? {
            self.vici.unload(&core, &name).await?;
            if let Some(host) = vici::tunnel_host(&name, subnet, env) {
                self.vici.unload(&host, &name).await?;
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl HostNetwork for SubnetTunnels {
    async fn block_rules(&self, host: &HostId) -> DriverResult<Vec<BlockRule>> {
        self.network.block_rules(host).await
    }
    async fn block(&self, host: &HostId, rule: &BlockRule) -> DriverResult<()> {
        self.network.block(host, rule).await
    }
    async fn unblock(&self, host: &HostId, vm: &str, secure_only: bool) -> DriverResult<()> {
        self.network.unblock(host, vm, secure_only).await
    }
    async fn vm_route(&self, host: &HostId, address: Ipv4Addr, present: bool) -> DriverResult<()> {
        self.network.vm_route(host, address, present).await
    }
    async fn tunnels(&self, at: &Target) -> DriverResult<Vec<Tunnel>> {
        self.network.tunnels(at).await
    }

    async fn tunnel_add(&self, at: &Target, spec: &TunnelSpec) -> DriverResult<()> {
        let op = "network.tunnel_add";
        let (env, host) = tunnel_ends(op, at, &spec.remote)?;
        let name = vici::tunnel_connection_name(&spec.subnet, &env, &host);
        let core = self.end(vici::core_id(&env)).await?;
        let far = self.end(host).await?;
        // The SA first: the VXLAN never exists without the SA that carries it.
        self.vici.tunnel_up(&name, &core, &far).await?;
        if let Err(e) = self.network.tunnel_add(at, spec).await {
            // A failed step is not undone by rollback: leave no SA without its tunnel.
            if let Err(down) = self.ipsec_down(&spec.subnet, &env).await {
                return Err(DriverError::failed(
                    op,
                    &spec.remote,
                    format!("{e}; taking {name} down again failed too: {down}"),
                ));
            }
            return Err(e);
        }
        Ok(())
    }

    async fn tunnel_remove(&self, at: &Target, subnet: &str) -> DriverResult<()> {
        let op = "network.tunnel_remove";
        let env = match at {
            Target::RoutingCore(env) => env.clone(),
            Target::Host(_) => {
                let remotes: Vec<String> = self
                    .network
                    .tunnels(at)
                    .await?
                    .into_iter()
                    .filter(|t| t.subnet == subnet)
                    .map(|t| t.remote)
                    .collect();
                self.network.tunnel_remove(at, subnet).await?;
                for r in remotes {
                    let (env, _) = tunnel_ends(op, at, &r)?;
                    self.ipsec_down(subnet, &env).await?;
                }
                return Ok(());
            }
        };
        // The VXLAN first, then the SA that carried it.
        self.network.tunnel_remove(at, subnet).await?;
        self.ipsec_down(subnet, &env).await
    }

    async fn connections(&self, host: &HostId, address: Ipv4Addr) -> DriverResult<Vec<Connection>> {
        self.network.connections(host, address).await
    }
    async fn connections_of(
        &self,
        hosts: &[HostId],
        addresses: &[Ipv4Addr],
    ) -> DriverResult<Vec<Vec<Connection>>> {
        self.network.connections_of(hosts, addresses).await
    }
    async fn reset_connections(
        &self,
        host: &HostId,
        address: Ipv4Addr,
        connections: &[Connection],
    ) -> DriverResult<()> {
        self.network
            .reset_connections(host, address, connections)
            .await
    }
    async fn overlay_add(&self, a: &HostId, b: &HostId, subnet: &str) -> DriverResult<()> {
        self.network.overlay_add(a, b, subnet).await
    }
    async fn overlay_remove(&self, a: &HostId, b: &HostId, subnet: &str) -> DriverResult<()> {
        self.network.overlay_remove(a, b, subnet).await
    }
    async fn settle(&self) -> DriverResult<()> {
        self.network.settle().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn nothing_set_means_no_socket_and_no_overlay() {
        assert_eq!(
            RealOptions::from_vars(vars(&[])).unwrap(),
            RealOptions::default()
        );
    }

    #[test]
    fn lab_preset_and_explicit_values_over_it() {
        let o = RealOptions::from_vars(vars(&[
            ("SMIG_LAB", "1"),
            ("SMIG_VICI_SOCKET", "/run/{netns}/charon.vici"),
        ]))
        .unwrap();
        assert_eq!(o.vici_socket.as_deref(), Some("/run/{netns}/charon.vici"));
        assert_eq!(o.overlay_prefix, "172.31.0.0/24".parse().ok());
        assert_eq!(
            o.core_vici_socket.as_deref(),
            Some("/run/smig-lab/hosts/core/charon.vici")
        );
        assert_eq!(o.libvirt_pki, None);
    }

    #[test]
    fn a_tunnel_joins_a_core_and_a_host() {
        let core = Target::RoutingCore("dc".into());
        let host = Target::Host(HostId::new("cloud", "c1"));
        let op = "network.tunnel_add";
        assert_eq!(
            tunnel_ends(op, &core, "cloud.c1").unwrap(),
            ("dc".to_string(), HostId::new("cloud", "c1"))
        );
        assert_eq!(
            tunnel_ends(op, &host, "core:dc").unwrap(),
            ("dc".to_string(), HostId::new("cloud", "c1"))
        );
        assert!(tunnel_ends(op, &core, "core:cloud").is_err());
        assert!(tunnel_ends(op, &host, "dc.hv1").is_err());
    }

    use crate::drivers::netns::{conntrack, links, nft, HostOps};
    use crate::drivers::vici::tests::{conn_event, fake_charon, ok, sa_event, Answer, Log};
    use crate::drivers::vici::wire::Message;
    use crate::model::{Environment, Host, RoutingCore, Subnet};
    use serde_json::Value;
    use std::sync::Mutex;

    type Steps = Arc<Mutex<Vec<String>>>;

    /// One endpoint's network stack in memory: links only, every call written to `steps`.
    struct FakeOps {
        who: &'static str,
        overlay: Ipv4Addr,
        links: Mutex<Vec<links::LinkEntry>>,
        steps: Steps,
    }

    #[async_trait::async_trait]
    impl HostOps for FakeOps {
        fn describe(&self) -> String {
            self.who.into()
        }
        async fn nft_table(&self) -> Result<nft::Present, String> {
            Ok(nft::Present::default())
        }
        async fn nft_apply(&self, _: Vec<Value>) -> Result<(), String> {
            Ok(())
        }
        async fn nft_rule_counts(
            &self,
            _: &str,
        ) -> Result<Vec<crate::drivers::netns::nfnetlink::RuleCount>, String> {
            Ok(Vec::new())
        }
        async fn nft_delete_table(&self, _: &str) -> Result<(), String> {
            Ok(())
        }
        async fn links(&self) -> Result<Vec<links::LinkEntry>, String> {
            Ok(self.links.lock().unwrap().clone())
        }
        async fn routes(&self) -> Result<Vec<links::RouteEntry>, String> {
            Ok(vec![])
        }
        async fn nudge(
            &self,
            _: Vec<u32>,
            _: Vec<(std::net::SocketAddrV4, std::net::SocketAddrV4)>,
        ) -> Result<usize, String> {
            Ok(0)
        }
        async fn overlay_address(&self) -> Result<Option<Ipv4Addr>, String> {
            Ok(Some(self.overlay))
        }
        async fn ensure_vxlan(&self, spec: links::VxlanSpec) -> Result<(), String> {
            let mut l = self.links.lock().unwrap();
            if l.iter().any(|x| x.name == spec.name) {
                return Ok(());
            }
            self.steps
                .lock()
                .unwrap()
                .push(format!("{} vxlan add", self.who));
            l.push(links::LinkEntry {
                index: 100,
                name: spec.name,
                alias: Some(spec.alias),
                controller: Some(1),
                vxlan: None,
                tap: false,
            });
            Ok(())
        }
        async fn delete_link(&self, name: String) -> Result<(), String> {
            let mut l = self.links.lock().unwrap();
            if l.iter().any(|x| x.name == name) {
                self.steps
                    .lock()
                    .unwrap()
                    .push(format!("{} vxlan del", self.who));
            }
            l.retain(|x| x.name != name);
            Ok(())
        }
        async fn conntrack(&self, _: Vec<ipnet::Ipv4Net>) -> Result<Vec<conntrack::Entry>, String> {
            Ok(vec![])
        }
        async fn conntrack_delete(&self, _: conntrack::Tuple) -> Result<(), String> {
            Ok(())
        }
    }

    /// A charon that keeps one connection (loaded or not) of an SA it shares with its peer
    /// (`up`); what changes goes to `steps`.
    fn charon(who: &'static str, name: &'static str, up: Arc<Mutex<bool>>, steps: Steps) -> Answer {
        let loaded = Arc::new(Mutex::new(false));
        Arc::new(move |cmd, _: &Message| {
            let (mut loaded, mut up) = (loaded.lock().unwrap(), up.lock().unwrap());
            let step = |s: &str| steps.lock().unwrap().push(format!("{who} {s}"));
            match cmd {
                "load-conn" => {
                    *loaded = true;
                    step("load");
                }
                "initiate" => {
                    *up = true;
                    step("initiate");
                }
                "terminate" => {
                    *up = false;
                    step("terminate");
                }
                "unload-conn" => {
                    *loaded = false;
                    step("unload");
                }
                "list-sas" if *up => {
                    return (
                        vec![sa_event(name, "ESTABLISHED", "INSTALLED", "1")],
                        Message::new(),
                    )
                }
                "list-conns" if *loaded => return (vec![conn_event(name)], Message::new()),
                _ => {}
            }
            (vec![], ok())
        })
    }

    #[tokio::test]
    async fn tunnel_ipsec_comes_up_before_the_vxlan_and_goes_after_it() {
        const NAME: &str = "smig-tunnel.batch.dc.cloud.c1";
        let mut l = Landscape::default();
        for (env, trusted, host) in [("dc", true, None), ("cloud", false, Some("c1"))] {
            let hosts = host
                .map(|h| {
                    let id = HostId::new(env, h);
                    let host = Host {
                        id: id.clone(),
                        libvirt: "test:///default".into(),
                        address: Ipv4Addr::new(10, 78, 0, 21),
                        network: "netns:cloud-c1".into(),
                    };
                    (h.to_string(), host)
                })
                .into_iter()
                .collect();
            let routing_core = trusted.then(|| RoutingCore {
                network: "netns:dc-core".into(),
            });
            l.environments.insert(
                env.into(),
                Environment {
                    name: env.into(),
                    trusted,
                    hosts,
                    routing_core,
                },
            );
        }
        l.subnets.insert(
            "batch".into(),
            Subnet {
                name: "batch".into(),
                cidr: "192.168.20.0/24".parse().unwrap(),
            },
        );
        let steps: Steps = Arc::default();
        let dir = tempfile::tempdir().unwrap();
        let (core_sock, c1_sock) = (dir.path().join("core.vici"), dir.path().join("c1.vici"));
        let (log, up): (Log, Arc<Mutex<bool>>) = (Arc::default(), Arc::default());
        let core_charon = charon("core", NAME, up.clone(), steps.clone());
        fake_charon(core_sock.clone(), core_charon, log.clone(), None).await;
        fake_charon(
            c1_sock.clone(),
            charon("c1", NAME, up, steps.clone()),
            log,
            None,
        )
        .await;
        let mut o = ViciOptions::lab();
        o.core_socket_template = Some(core_sock.display().to_string());
        o.sockets.insert(HostId::new("cloud", "c1"), c1_sock);
        let vici = Arc::new(Vici::new(&l, o).unwrap());
        let network = Arc::new(NetnsHostNetwork::from_landscape(&l));
        for (net, who, last) in [("netns:dc-core", "core", 1), ("netns:cloud-c1", "c1", 21)] {
            network.with_ops(
                net,
                Arc::new(FakeOps {
                    who,
                    overlay: Ipv4Addr::new(172, 31, 0, last),
                    links: Mutex::default(),
                    steps: steps.clone(),
                }),
            );
        }
        let tunnels = SubnetTunnels::new(network, vici);
        let core = Target::RoutingCore("dc".into());
        let spec = TunnelSpec {
            subnet: "batch".into(),
            cidr: "192.168.20.0/24".parse().unwrap(),
            remote: "cloud.c1".into(),
            remote_address: Ipv4Addr::new(10, 78, 0, 21),
        };
        tunnels.tunnel_add(&core, &spec).await.unwrap();
        // Again (a resumed apply): the SA is up, nothing is loaded or initiated twice.
        tunnels.tunnel_add(&core, &spec).await.unwrap();
        assert_eq!(tunnels.tunnels(&core).await.unwrap().len(), 1);
        tunnels.tunnel_remove(&core, "batch").await.unwrap();
        tunnels.tunnel_remove(&core, "batch").await.unwrap();
        let steps = steps.lock().unwrap().clone();
        assert_eq!(
            steps,
            [
                "c1 load",
                "core load",
                "core initiate",
                "core vxlan add",
                "c1 vxlan add",
                "core vxlan del",
                "c1 vxlan del",
                "core terminate",
                "core unload",
                "c1 unload",
            ]
        );
    }

    #[test]
    fn bad_overlay_prefix_is_an_error_naming_the_variable() {
        let e = RealOptions::from_vars(vars(&[("SMIG_OVERLAY_PREFIX", "172.31.0/24")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("SMIG_OVERLAY_PREFIX"), "{e}");
    }
}
