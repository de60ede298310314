//! The IPsec driver: strongSwan's charon over its VICI socket, one socket per host.
//!
//! Every connection smig loads is named `smig-...` ([`crate::model::ipsec_connection_name`]);
//! its CHILD_SA has the same name. A connection is IKEv2 between the hosts' underlay addresses,
//! ESP in UDP, tunnel mode, and its CHILD_SA joins the two hosts' *overlay* addresses (a /32
//! each host owns, on `lo` in the lab): strongSwan 5.9.8's kernel-libipsec cannot install
//! per-VM /32 selectors, so VM traffic rides a tunnel between the overlay addresses. The IKE
//! identities are `<connection>@<host id>`, so every connection has its own pre-shared key
//! (a `load-shared` entry whose owners are both identities) and discovery can tell the far end
//! from the identity alone. With a certificate credential the files are read where smig runs:
//! the private key goes in with `load-key` (unloaded again by the driver that loaded it), the
//! certificate rides in the connection (`certs`), the CA is loaded with `load-cert` and
//! constrains the peer (`cacerts`); the identities are then the certificates' subjects and the
//! far end is recognised by its underlay address.
//!
//! Where things are ([`ViciOptions`]):
//! - the VICI socket of a host: an explicit path per host, else `socket_template` with
//!   `{host}` (host name, `hv1`), `{env}` (`dc`), `{id}` (`dc.hv1`) and `{netns}` (from the
//!   host's `network = "netns:NAME"`); the lab's is [`LAB_SOCKET_TEMPLATE`];
//! - the overlay address of a host: an explicit address per host, else `overlay_prefix` plus the
//!   host part of the underlay address under the prefix's mask (lab: `172.31.0.0/24`, so
//!   10.77.0.11 → 172.31.0.11, 10.78.0.21 → 172.31.0.21). Two hosts that would get the same
//!   overlay address are a configuration error.
//!
//! Subnet tunnels (a VXLAN from a routing core to a host, [`super::netns`]) are carried by a
//! connection of their own, [`tunnel_connection_name`] (`smig-tunnel.<subnet>.<env>.<host
//! id>`): the `.` after `tunnel` cannot follow a secure_link name (an identifier), so
//! discovery of secure_link connections ([`Ipsec::connections`]) leaves them out. Its key is
//! drawn fresh for each tunnel ([`fresh_psk`]) and goes to the two daemons only. A routing
//! core's daemon is reached through `core_socket_template` (`{env}`, `{netns}`).
//!
//! One request at a time per host (VICI has no request ids): each host's connection sits
//! behind a mutex held for a whole driver call. A connection that broke (charon restarted) is
//! replaced once; a daemon that cannot be reached is [`DriverError::Unreachable`] naming the
//! host and the socket, except a stopped charon (its socket refuses connections): it holds
//! nothing, so it lists no connection and an unload has nothing to do (a rollback completes). Every answer's `success`/`errmsg` is checked.

pub mod wire;

use self::wire::{Message, Packet, WireError};
use super::{DriverError, DriverResult, Ipsec, IpsecConfig, IpsecCredential};
use crate::model::{HostId, IpsecConnection, Landscape, Secret};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::sync::Mutex;

/// The lab's VICI socket per host (lab/README.md).
pub const LAB_SOCKET_TEMPLATE: &str = "/run/smig-lab/hosts/{host}/charon.vici";
/// The lab's VICI socket of the routing core's charon (lab/README.md).
pub const LAB_CORE_SOCKET_TEMPLATE: &str = "/run/smig-lab/hosts/core/charon.vici";
/// The lab's overlay endpoint network (172.31.0.x/32 on each host's `lo`).
pub const LAB_OVERLAY_PREFIX: &str = "172.31.0.0/24";
/// Prefix of every connection, CHILD_SA and shared key smig owns.
pub const OWNED_PREFIX: &str = "smig-";
/// Prefix of the connections that carry subnet tunnels (never a secure_link's).
pub const TUNNEL_PREFIX: &str = "smig-tunnel.";
/// IKE and ESP proposals of a subnet tunnel's connection (kernel-libipsec can do them).
pub const TUNNEL_PROPOSALS: [&str; 1] = ["aes256-sha256-modp2048"];

/// The name of the IPsec connection carrying `subnet`'s tunnel from the routing core of `env`
/// to `host`. Both ends use it.
pub fn tunnel_connection_name(subnet: &str, env: &str, host: &HostId) -> String {
    format!("{TUNNEL_PREFIX}{subnet}.{env}.{host}")
}

/// The host end of a tunnel connection of `subnet` at the routing core of `env`, from its name.
pub fn tunnel_host(name: &str, subnet: &str, env: &str) -> Option<HostId> {
    let host = name.strip_prefix(&format!("{TUNNEL_PREFIX}{subnet}.{env}."))?;
    (!host.is_empty()).then(|| HostId(host.into()))
}

/// The id under which the driver reaches the routing core of `env` (`core:<env>`, as a
/// tunnel's far end is written).
pub fn core_id(env: &str) -> HostId {
    HostId(format!("core:{env}").into())
}

/// A fresh random pre-shared key (256 bits, hex) from the operating system's generator.
pub fn fresh_psk() -> DriverResult<Secret> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        DriverError::failed("ipsec.key", "this machine", format!("no random bytes: {e}"))
    })?;
    Ok(Secret::new(hex::encode(bytes)))
}

/// One end of a subnet tunnel's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelEnd {
    /// A host id, or [`core_id`] for a routing core.
    pub id: HostId,
    /// The overlay endpoint address the tunnel's VXLAN uses at this end.
    pub overlay: Ipv4Addr,
}

/// Where the driver finds each host's daemon and overlay address, and how it talks to it.
#[derive(Debug, Clone)]
pub struct ViciOptions {
    /// Explicit VICI socket per host.
    pub sockets: BTreeMap<HostId, PathBuf>,
    /// Socket path for hosts without an explicit one: `{host}`, `{env}`, `{id}`, `{netns}`.
    pub socket_template: Option<String>,
    /// Explicit overlay endpoint address per host.
    pub overlays: BTreeMap<HostId, Ipv4Addr>,
    /// Socket path of a routing core's daemon: `{env}`, `{netns}` (from its `network`).
    pub core_socket_template: Option<String>,
    /// Overlay network for hosts without an explicit address (see the module docs).
    pub overlay_prefix: Option<Ipv4Net>,
    /// ESP in UDP (`encap = yes`); kernel-libipsec needs it.
    pub encap: bool,
    /// Dead peer detection interval, seconds (0 = off).
    pub dpd_delay_s: u64,
    /// Deadline of one request (connect, send, answer).
    pub request_timeout: Duration,
    /// How long charon may take to bring a CHILD_SA up.
    pub initiate_timeout: Duration,
    /// How long a terminate waits for the peer's DELETE answer before forcing.
    pub terminate_timeout: Duration,
}

impl ViciOptions {
    /// The lab's conventions: [`LAB_SOCKET_TEMPLATE`] and [`LAB_OVERLAY_PREFIX`].
    pub fn lab() -> ViciOptions {
        ViciOptions {
            socket_template: Some(LAB_SOCKET_TEMPLATE.to_string()),
            core_socket_template: Some(LAB_CORE_SOCKET_TEMPLATE.to_string()),
            overlay_prefix: LAB_OVERLAY_PREFIX.parse().ok(),
            ..ViciOptions::default()
        }
    }
}

impl Default for ViciOptions {
    fn default() -> Self {
        ViciOptions {
            sockets: BTreeMap::new(),
            socket_template: None,
            overlays: BTreeMap::new(),
            core_socket_template: None,
            overlay_prefix: None,
            encap: true,
            dpd_delay_s: 10,
            request_timeout: Duration::from_secs(10),
            initiate_timeout: Duration::from_secs(20),
            terminate_timeout: Duration::from_secs(5),
        }
    }
}

struct HostEntry {
    socket: Result<PathBuf, String>,
    /// None for a routing core (the configuration does not give its address).
    underlay: Option<Ipv4Addr>,
    overlay: Result<Ipv4Addr, String>,
    /// The open VICI connection; the mutex is held for a whole driver call.
    conn: Mutex<Option<UnixStream>>,
}

/// The strongSwan VICI driver.
pub struct Vici {
    hosts: BTreeMap<HostId, HostEntry>,
    /// Routing cores, by [`core_id`]: subnet tunnels end there.
    cores: BTreeMap<HostId, HostEntry>,
    options: ViciOptions,
    /// Private keys this driver loaded, by host and connection (`load-key` ids), so unload
    /// can remove them.
    keys: Mutex<BTreeMap<(HostId, String), String>>,
}

impl std::fmt::Debug for Vici {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vici")
            .field("hosts", &self.hosts.keys().collect::<Vec<_>>())
            .field("options", &self.options)
            .finish()
    }
}

/// The IKE identity of one end of a connection.
pub fn ike_identity(name: &str, host: &HostId) -> String {
    format!("{name}@{host}")
}

/// The id of a connection's shared key in charon's credential store.
pub fn shared_key_id(name: &str) -> String {
    format!("{name}-psk")
}

fn socket_path(host: &HostId, network: &str, template: Option<&str>) -> Result<PathBuf, String> {
    let Some(t) = template else {
        return Err(format!("no VICI socket configured for host {host}"));
    };
    let mut path = t
        .replace("{host}", host.host())
        .replace("{env}", host.environment())
        .replace("{id}", &host.0);
    if path.contains("{netns}") {
        let Some(ns) = network.strip_prefix("netns:") else {
            return Err(format!(
                "the VICI socket template needs {{netns}} but host {host} has network = \"{network}\""
            ));
        };
        path = path.replace("{netns}", ns);
    }
    Ok(PathBuf::from(path))
}

fn derived_overlay(prefix: Ipv4Net, underlay: Ipv4Addr) -> Ipv4Addr {
    let host_bits = u32::from(underlay) & u32::from(prefix.hostmask());
    Ipv4Addr::from(u32::from(prefix.network()) | host_bits)
}

impl Vici {
    /// A driver for every host of the landscape. Fails when two hosts would share an overlay
    /// address.
    pub fn new(landscape: &Landscape, options: ViciOptions) -> DriverResult<Vici> {
        let mut hosts = BTreeMap::new();
        let mut taken: BTreeMap<Ipv4Addr, HostId> = BTreeMap::new();
        for h in landscape.hosts() {
            let socket = match options.sockets.get(&h.id) {
                Some(p) => Ok(p.clone()),
                None => socket_path(&h.id, &h.network, options.socket_template.as_deref()),
            };
            let overlay = match (options.overlays.get(&h.id), options.overlay_prefix) {
                (Some(a), _) => Ok(*a),
                (None, Some(p)) => Ok(derived_overlay(p, h.address)),
                (None, None) => Err(format!("no overlay address configured for host {}", h.id)),
            };
            if let Ok(a) = overlay {
                if let Some(other) = taken.insert(a, h.id.clone()) {
                    return Err(DriverError::failed(
                        "ipsec.configure",
                        &h.id,
                        format!("overlay address {a} is also {other}'s: configure one per host"),
                    ));
                }
            }
            hosts.insert(
                h.id.clone(),
                HostEntry {
                    socket,
                    underlay: Some(h.address),
                    overlay,
                    conn: Mutex::new(None),
                },
            );
        }
        let mut cores = BTreeMap::new();
        for (env, e) in &landscape.environments {
            let Some(core) = &e.routing_core else {
                continue;
            };
            let socket = match &options.core_socket_template {
                None => Err(format!(
                    "no VICI socket configured for the routing core of {env}"
                )),
                Some(t) if t.contains("{netns}") => match core.network.strip_prefix("netns:") {
                    Some(ns) => Ok(PathBuf::from(t.replace("{env}", env).replace("{netns}", ns))),
                    None => Err(format!(
                        "the routing core VICI socket template needs {{netns}} but the routing core of {env} has network = \"{}\"",
                        core.network
                    )),
                },
                Some(t) => Ok(PathBuf::from(t.replace("{env}", env))),
            };
            cores.insert(
                core_id(env),
                HostEntry {
                    socket,
                    underlay: None,
                    overlay: Err(format!(
                        "the routing core of {env} has no configured overlay address"
                    )),
                    conn: Mutex::new(None),
                },
            );
        }
        Ok(Vici {
            hosts,
            cores,
            options,
            keys: Mutex::new(BTreeMap::new()),
        })
    }

    fn entry(&self, op: &str, host: &HostId) -> DriverResult<&HostEntry> {
        self.hosts
            .get(host)
            .or_else(|| self.cores.get(host))
            .ok_or_else(|| DriverError::failed(op, host, "the host is not in the landscape"))
    }

    /// The VICI socket the driver uses for `host`.
    pub fn socket(&self, host: &HostId) -> DriverResult<PathBuf> {
        let e = self.entry("ipsec.socket", host)?;
        e.socket
            .clone()
            .map_err(|r| DriverError::failed("ipsec.socket", host, r))
    }

    /// The overlay endpoint address of `host`.
    pub fn overlay(&self, host: &HostId) -> DriverResult<Ipv4Addr> {
        let e = self.entry("ipsec.overlay", host)?;
        e.overlay
            .clone()
            .map_err(|r| DriverError::failed("ipsec.overlay", host, r))
    }

    /// Whether the host's VICI socket refuses connections: charon stopped there (its socket
    /// file left behind) and holds no connection or SA; smig loads its connections over VICI
    /// only, so a restarted charon starts without them. A missing socket file is not this:
    /// it stays [`DriverError::Unreachable`].
    async fn charon_stopped(&self, op: &str, host: &HostId) -> DriverResult<bool> {
        let e = self.entry(op, host)?;
        let Ok(path) = e.socket.clone() else {
            return Ok(false);
        };
        Ok(match UnixStream::connect(&path).await {
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        })
    }

    async fn session<'a>(&'a self, op: &'a str, host: &'a HostId) -> DriverResult<Session<'a>> {
        let e = self.entry(op, host)?;
        let path = e
            .socket
            .clone()
            .map_err(|r| DriverError::failed(op, host, r))?;
        Ok(Session {
            op,
            host,
            path,
            conn: e.conn.lock().await,
            timeout: self.options.request_timeout,
        })
    }

    /// The `load-conn` message for one end (no key material in it). A certificate
    /// credential needs its files' contents in `certs`.
    pub fn conn_message(
        &self,
        host: &HostId,
        config: &IpsecConfig,
        certs: Option<&CertFiles>,
    ) -> DriverResult<Message> {
        let op = "ipsec.load";
        if &config.local != host {
            return Err(DriverError::failed(
                op,
                host,
                format!(
                    "connection {} is {}'s end, not this host's",
                    config.name, config.local
                ),
            ));
        }
        let local_overlay = self.overlay(&config.local)?;
        let remote_overlay = self.overlay(&config.remote)?;
        let (local_auth, remote_auth) = match &config.credential {
            IpsecCredential::Psk(_) => (
                Message::new()
                    .kv("auth", "psk")
                    .kv("id", ike_identity(&config.name, &config.local)),
                Message::new()
                    .kv("auth", "psk")
                    .kv("id", ike_identity(&config.name, &config.remote)),
            ),
            IpsecCredential::Cert { .. } => {
                let Some(files) = certs else {
                    return Err(DriverError::failed(
                        op,
                        host,
                        format!("connection {}: certificate files not read", config.name),
                    ));
                };
                // The identities are the certificates' subjects; the peer's must chain to `ca`
                // (or to a CA charon already trusts).
                let mut remote = Message::new().kv("auth", "pubkey");
                if let Some(ca) = &files.ca {
                    remote = remote.list("cacerts", [ca]);
                }
                (
                    Message::new()
                        .kv("auth", "pubkey")
                        .list("certs", [&files.cert]),
                    remote,
                )
            }
        };
        let proposals: Vec<&str> = config.proposals.iter().map(String::as_str).collect();
        let mut child = Message::new()
            .list("local_ts", [format!("{local_overlay}/32")])
            .list("remote_ts", [format!("{remote_overlay}/32")]);
        if !proposals.is_empty() {
            child = child.list("esp_proposals", &proposals);
        }
        let child = child
            .kv("mode", "tunnel")
            .kv("start_action", "none")
            .kv("close_action", "none")
            .kv("dpd_action", "restart");
        let mut conn = Message::new()
            .kv("version", "2")
            .list("local_addrs", [config.local_address.to_string()])
            .list("remote_addrs", [config.remote_address.to_string()])
            .kv("encap", if self.options.encap { "yes" } else { "no" })
            .kv("unique", "replace")
            .kv("keyingtries", "1");
        if !proposals.is_empty() {
            conn = conn.list("proposals", &proposals);
        }
        if self.options.dpd_delay_s > 0 {
            conn = conn.kv("dpd_delay", format!("{}s", self.options.dpd_delay_s));
        }
        let conn = conn
            .section("local", local_auth)
            .section("remote", remote_auth)
            .section("children", Message::new().section(&config.name, child));
        Ok(Message::new().section(&config.name, conn))
    }
}

/// The contents of a certificate credential's files, read on the machine smig runs on.
#[derive(Clone)]
pub struct CertFiles {
    pub cert: Vec<u8>,
    /// The private key (PEM or DER). Never shown by `Debug`.
    pub key: Vec<u8>,
    pub ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for CertFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertFiles")
            .field("cert_bytes", &self.cert.len())
            .field("key", &crate::model::secret::REDACTED)
            .field("ca_bytes", &self.ca.as_ref().map(Vec::len))
            .finish()
    }
}

impl CertFiles {
    /// Reads the files a certificate credential names.
    pub async fn read(
        op: &str,
        host: &HostId,
        cert: &str,
        key: &str,
        ca: Option<&str>,
    ) -> DriverResult<CertFiles> {
        async fn file(op: &str, host: &HostId, what: &str, path: &str) -> DriverResult<Vec<u8>> {
            if path.is_empty() {
                return Err(DriverError::failed(
                    op,
                    host,
                    format!("no {what} file given"),
                ));
            }
            tokio::fs::read(path)
                .await
                .map_err(|e| DriverError::failed(op, host, format!("{what} {path}: {e}")))
        }
        Ok(CertFiles {
            cert: file(op, host, "certificate", cert).await?,
            key: file(op, host, "private key", key).await?,
            ca: match ca {
                Some(p) => Some(file(op, host, "CA certificate", p).await?),
                None => None,
            },
        })
    }

    /// charon's `load-key` type for the key.
    fn key_type(&self) -> &'static str {
        let text = String::from_utf8_lossy(&self.key);
        if text.contains("BEGIN RSA PRIVATE KEY") {
            "rsa"
        } else if text.contains("BEGIN EC PRIVATE KEY") {
            "ecdsa"
        } else {
            "any"
        }
    }
}

/// One host's VICI connection, held for one driver call.
struct Session<'a> {
    op: &'a str,
    host: &'a HostId,
    path: PathBuf,
    conn: tokio::sync::MutexGuard<'a, Option<UnixStream>>,
    timeout: Duration,
}

enum ExchangeError {
    Wire(WireError),
    Timeout,
    Refused(String),
}

impl From<WireError> for ExchangeError {
    fn from(e: WireError) -> Self {
        ExchangeError::Wire(e)
    }
}

/// One command, with the events it streams when `event` is set: register, request, events
/// until the answer, unregister.
async fn exchange(
    stream: &mut UnixStream,
    cmd: &str,
    event: Option<&str>,
    msg: &Message,
) -> Result<(Vec<Message>, Message), ExchangeError> {
    use self::wire::{read_packet, write_packet};
    if let Some(ev) = event {
        write_packet(stream, &Packet::EventRegister(ev.to_string())).await?;
        match read_packet(stream).await? {
            Packet::EventConfirm => {}
            Packet::EventUnknown => {
                return Err(ExchangeError::Refused(format!(
                    "charon knows no event {ev}"
                )))
            }
            p => return Err(unexpected(&p)),
        }
    }
    write_packet(stream, &Packet::CmdRequest(cmd.to_string(), msg.clone())).await?;
    let mut events = Vec::new();
    let answer = loop {
        match read_packet(stream).await? {
            Packet::CmdResponse(m) => break m,
            Packet::Event(name, m) if Some(name.as_str()) == event => events.push(m),
            Packet::Event(..) => {}
            Packet::CmdUnknown => {
                return Err(ExchangeError::Refused(format!(
                    "charon knows no command {cmd}"
                )))
            }
            p => return Err(unexpected(&p)),
        }
    };
    if let Some(ev) = event {
        write_packet(stream, &Packet::EventUnregister(ev.to_string())).await?;
        loop {
            match read_packet(stream).await? {
                Packet::EventConfirm => break,
                Packet::Event(..) => {}
                p => return Err(unexpected(&p)),
            }
        }
    }
    Ok((events, answer))
}

fn unexpected(p: &Packet) -> ExchangeError {
    let kind = match p {
        Packet::CmdRequest(..) => "a command request",
        Packet::CmdResponse(_) => "a command response",
        Packet::CmdUnknown => "CMD_UNKNOWN",
        Packet::EventRegister(_) => "an event registration",
        Packet::EventUnregister(_) => "an event unregistration",
        Packet::EventConfirm => "EVENT_CONFIRM",
        Packet::EventUnknown => "EVENT_UNKNOWN",
        Packet::Event(..) => "an event",
    };
    ExchangeError::Wire(WireError::Malformed(format!("unexpected {kind}")))
}

impl Session<'_> {
    fn unreachable(&self, reason: impl std::fmt::Display) -> DriverError {
        DriverError::Unreachable {
            op: self.op.to_string(),
            target: self.host.to_string(),
            reason: format!("charon's VICI socket {}: {reason}", self.path.display()),
        }
    }

    async fn connect(&self) -> DriverResult<UnixStream> {
        match tokio::time::timeout(self.timeout, UnixStream::connect(&self.path)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(self.unreachable(e)),
            Err(_) => Err(self.unreachable("connect timed out")),
        }
    }

    /// Sends a command and returns its events and answer, without judging the answer. A cached
    /// connection that turns out broken is replaced once.
    async fn raw(
        &mut self,
        cmd: &str,
        event: Option<&str>,
        msg: &Message,
        timeout: Duration,
    ) -> DriverResult<(Vec<Message>, Message)> {
        let mut fresh = false;
        loop {
            let mut stream = match self.conn.take() {
                Some(s) => s,
                None => {
                    fresh = true;
                    self.connect().await?
                }
            };
            let r = tokio::time::timeout(timeout, exchange(&mut stream, cmd, event, msg))
                .await
                .unwrap_or(Err(ExchangeError::Timeout));
            match r {
                Ok(v) => {
                    *self.conn = Some(stream);
                    return Ok(v);
                }
                Err(ExchangeError::Wire(WireError::Io(e))) => {
                    if fresh {
                        return Err(self.unreachable(format!("{cmd}: {e}")));
                    }
                    // Stale connection (charon restarted): try once more on a new one.
                }
                Err(ExchangeError::Wire(e)) => {
                    return Err(DriverError::failed(
                        self.op,
                        self.host,
                        format!("{cmd}: {e}"),
                    ))
                }
                Err(ExchangeError::Refused(r)) => {
                    // The exchange stopped half-way (an event may stay registered): start the
                    // next request on a new connection.
                    return Err(DriverError::failed(self.op, self.host, r));
                }
                Err(ExchangeError::Timeout) => {
                    return Err(DriverError::Timeout {
                        op: format!("{} ({cmd})", self.op),
                        target: self.host.to_string(),
                        seconds: timeout.as_secs().max(1),
                    })
                }
            }
        }
    }

    /// A command whose answer must say `success = yes`.
    async fn command(&mut self, cmd: &str, msg: &Message) -> DriverResult<Message> {
        let (_, answer) = self.raw(cmd, None, msg, self.timeout).await?;
        check(self.op, self.host, cmd, &answer)?;
        Ok(answer)
    }

    /// A query whose answer carries data and `success` only when it failed (`get-shared`).
    async fn query(&mut self, cmd: &str, msg: &Message) -> DriverResult<Message> {
        let (_, answer) = self.raw(cmd, None, msg, self.timeout).await?;
        if answer.get("success").is_some() {
            check(self.op, self.host, cmd, &answer)?;
        }
        Ok(answer)
    }

    /// A listing command (`list-sas`, `list-conns`): the streamed events.
    async fn list(&mut self, cmd: &str, event: &str, msg: &Message) -> DriverResult<Vec<Message>> {
        let (events, answer) = self.raw(cmd, Some(event), msg, self.timeout).await?;
        // list-* answer with an empty message; a `success = no` is still a failure.
        if answer.str("success").as_deref() == Some("no") {
            check(self.op, self.host, cmd, &answer)?;
        }
        Ok(events)
    }

    async fn sas(&mut self, name: Option<&str>) -> DriverResult<Vec<IkeSa>> {
        let mut msg = Message::new().kv("noblock", "yes");
        if let Some(n) = name {
            msg = msg.kv("ike", n);
        }
        let events = self.list("list-sas", "list-sa", &msg).await?;
        Ok(events.iter().flat_map(parse_sas).collect())
    }

    async fn conns(&mut self, name: Option<&str>) -> DriverResult<Vec<LoadedConn>> {
        let mut msg = Message::new();
        if let Some(n) = name {
            msg = msg.kv("ike", n);
        }
        let events = self.list("list-conns", "list-conn", &msg).await?;
        Ok(events.iter().flat_map(parse_conns).collect())
    }
}

fn check(op: &str, host: &HostId, cmd: &str, answer: &Message) -> DriverResult<()> {
    match answer.str("success").as_deref() {
        Some("yes") => Ok(()),
        _ => {
            let why = answer
                .str("errmsg")
                .unwrap_or_else(|| "charon gave no reason".to_string());
            Err(DriverError::failed(op, host, format!("{cmd}: {why}")))
        }
    }
}

/// An IKE SA as `list-sas` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeSa {
    /// The connection (config) name.
    pub name: String,
    pub uniqueid: String,
    pub state: String,
    pub remote_id: Option<String>,
    pub remote_host: Option<String>,
    pub children: Vec<ChildSa>,
}

/// A CHILD_SA of an [`IkeSa`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSa {
    pub name: String,
    pub state: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl IkeSa {
    /// The child named `name` in state INSTALLED, if any.
    pub fn installed(&self, name: &str) -> Option<&ChildSa> {
        self.children
            .iter()
            .find(|c| c.name == name && c.state == "INSTALLED")
    }
}

/// Parses one `list-sa` event: `{ <conn> = { uniqueid, state, remote-id, child-sas = { ... } } }`.
pub fn parse_sas(event: &Message) -> Vec<IkeSa> {
    event
        .sections()
        .map(|(name, ike)| IkeSa {
            name: name.to_string(),
            uniqueid: ike.str("uniqueid").unwrap_or_default(),
            state: ike.str("state").unwrap_or_default(),
            remote_id: ike.str("remote-id"),
            remote_host: ike.str("remote-host"),
            children: ike
                .sub("child-sas")
                .map(|cs| {
                    cs.sections()
                        .map(|(key, c)| ChildSa {
                            name: c.str("name").unwrap_or_else(|| key.to_string()),
                            state: c.str("state").unwrap_or_default(),
                            bytes_in: c.u64("bytes-in").unwrap_or(0),
                            bytes_out: c.u64("bytes-out").unwrap_or(0),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// A loaded connection as `list-conns` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedConn {
    pub name: String,
    pub remote_addrs: Vec<String>,
    pub remote_ids: Vec<String>,
    pub children: Vec<String>,
}

/// Parses one `list-conn` event: `{ <conn> = { remote_addrs, remote-N = { id }, children } }`.
pub fn parse_conns(event: &Message) -> Vec<LoadedConn> {
    event
        .sections()
        .map(|(name, c)| LoadedConn {
            name: name.to_string(),
            remote_addrs: c.strs("remote_addrs"),
            remote_ids: c
                .sections()
                .filter(|(k, _)| k.starts_with("remote"))
                .filter_map(|(_, a)| a.str("id"))
                .collect(),
            children: c
                .sub("children")
                .map(|ch| ch.sections().map(|(k, _)| k.to_string()).collect())
                .unwrap_or_default(),
        })
        .collect()
}

/// Whether `name` is a subnet tunnel's connection ([`tunnel_connection_name`]).
pub fn is_tunnel(name: &str) -> bool {
    name.starts_with(TUNNEL_PREFIX)
}

/// The far end's host id from an IKE identity `<connection>@<host id>`.
pub fn remote_host(name: &str, identity: &str) -> Option<HostId> {
    let (conn, host) = identity.rsplit_once('@')?;
    (conn == name && !host.is_empty()).then(|| HostId(host.into()))
}

/// Whether `name` is smig's name for a connection between `a` and `b`.
pub fn names_pair(name: &str, a: &HostId, b: &HostId) -> bool {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    name.starts_with(OWNED_PREFIX) && name.ends_with(&format!("-{x}-{y}"))
}

/// The secure_link a connection implements: its name without `smig-` and the `-<a>-<b>`
/// host suffix ([`crate::model::ipsec_connection_name`]).
pub fn link_of(name: &str, local: &HostId, remote: &HostId) -> String {
    let (x, y) = if local <= remote {
        (local, remote)
    } else {
        (remote, local)
    };
    let bare = name.strip_prefix(OWNED_PREFIX).unwrap_or(name);
    bare.strip_suffix(&format!("-{x}-{y}"))
        .unwrap_or(bare)
        .to_string()
}

impl Vici {
    /// The host whose underlay address is one of `addrs`.
    fn host_by_address(&self, addrs: &[String]) -> Option<HostId> {
        let addrs: Vec<Ipv4Addr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
        self.hosts
            .iter()
            .find(|(_, e)| e.underlay.is_some_and(|u| addrs.contains(&u)))
            .map(|(id, _)| id.clone())
    }
}

impl Vici {
    /// The `load-conn` message for `local`'s end of a subnet tunnel's connection (no key in
    /// it): IKEv2 with a pre-shared key, identities `<name>@<end id>`, CHILD_SA between the two
    /// overlay addresses. An end without a configured address (a routing core) is `%any` to
    /// its peer and lets its own daemon pick the source address.
    pub fn tunnel_conn_message(
        &self,
        name: &str,
        local: &TunnelEnd,
        remote: &TunnelEnd,
    ) -> DriverResult<Message> {
        let op = "ipsec.tunnel";
        let local_addr = self.entry(op, &local.id)?.underlay;
        let remote_addr = self.entry(op, &remote.id)?.underlay;
        let child = Message::new()
            .list("local_ts", [format!("{}/32", local.overlay)])
            .list("remote_ts", [format!("{}/32", remote.overlay)])
            .list("esp_proposals", TUNNEL_PROPOSALS)
            .kv("mode", "tunnel")
            .kv("start_action", "none")
            .kv("close_action", "none")
            // Only the end that knows where its peer is can bring the SA back.
            .kv(
                "dpd_action",
                if remote_addr.is_some() {
                    "restart"
                } else {
                    "clear"
                },
            );
        let mut conn = Message::new().kv("version", "2");
        if let Some(a) = local_addr {
            conn = conn.list("local_addrs", [a.to_string()]);
        }
        let conn = conn
            .list(
                "remote_addrs",
                [remote_addr.map_or_else(|| "%any".to_string(), |a| a.to_string())],
            )
            .kv("encap", if self.options.encap { "yes" } else { "no" })
            .kv("unique", "replace")
            .kv("keyingtries", "1")
            .list("proposals", TUNNEL_PROPOSALS);
        let conn = if self.options.dpd_delay_s > 0 {
            conn.kv("dpd_delay", format!("{}s", self.options.dpd_delay_s))
        } else {
            conn
        };
        let conn = conn
            .section(
                "local",
                Message::new()
                    .kv("auth", "psk")
                    .kv("id", ike_identity(name, &local.id)),
            )
            .section(
                "remote",
                Message::new()
                    .kv("auth", "psk")
                    .kv("id", ike_identity(name, &remote.id)),
            )
            .section("children", Message::new().section(name, child));
        Ok(Message::new().section(name, conn))
    }

    /// Brings up the IPsec connection `name` of a subnet tunnel: loads both ends with a key
    /// drawn for it now ([`fresh_psk`]), then initiates it from `initiator` and waits until
    /// its CHILD_SA is installed. An SA already installed on both ends is kept as it is.
    pub async fn tunnel_up(
        &self,
        name: &str,
        initiator: &TunnelEnd,
        responder: &TunnelEnd,
    ) -> DriverResult<()> {
        let op = "ipsec.tunnel_up";
        if !is_tunnel(name) {
            return Err(DriverError::failed(
                op,
                &initiator.id,
                format!("{name} is not a tunnel connection ({TUNNEL_PREFIX}...)"),
            ));
        }
        if self.sa_installed(&initiator.id, name).await?
            && self.sa_installed(&responder.id, name).await?
        {
            return Ok(());
        }
        let psk = fresh_psk()?;
        // The responder first: the initiator's IKE_AUTH finds its end ready.
        for (me, peer) in [(responder, initiator), (initiator, responder)] {
            let conn = self.tunnel_conn_message(name, me, peer)?;
            let shared = Message::new()
                .kv("id", shared_key_id(name))
                .kv("type", "IKE")
                .kv("data", psk.expose())
                .list(
                    "owners",
                    [ike_identity(name, &me.id), ike_identity(name, &peer.id)],
                );
            let mut s = self.session(op, &me.id).await?;
            s.command("load-shared", &shared).await?;
            s.command("load-conn", &conn).await?;
        }
        self.initiate(&initiator.id, name).await
    }

    /// Whether the CHILD_SA of connection `name` is installed on `host` (a host or a core).
    pub async fn sa_installed(&self, host: &HostId, name: &str) -> DriverResult<bool> {
        let mut s = self.session("ipsec.sas", host).await?;
        Ok(s.sas(Some(name))
            .await?
            .iter()
            .any(|sa| sa.installed(name).is_some()))
    }

    /// Names of the connections and SAs on `host` (a host or a core) that start with `prefix`.
    pub async fn names_with_prefix(
        &self,
        host: &HostId,
        prefix: &str,
    ) -> DriverResult<Vec<String>> {
        let mut s = self.session("ipsec.connections", host).await?;
        let mut names: Vec<String> = s.conns(None).await?.into_iter().map(|c| c.name).collect();
        names.extend(s.sas(None).await?.into_iter().map(|sa| sa.name));
        names.retain(|n| n.starts_with(prefix));
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Ids of the shared keys loaded over VICI on `host` (`get-shared`): smig's are
    /// [`shared_key_id`]s. Only ids, never the keys.
    pub async fn shared_key_ids(&self, host: &HostId) -> DriverResult<Vec<String>> {
        let mut s = self.session("ipsec.shared_keys", host).await?;
        Ok(s.query("get-shared", &Message::new()).await?.strs("keys"))
    }
}

#[async_trait::async_trait]
impl Ipsec for Vici {
    async fn connections(&self, host: &HostId) -> DriverResult<Vec<IpsecConnection>> {
        if self.charon_stopped("ipsec.connections", host).await? {
            return Ok(Vec::new());
        }
        let mut s = self.session("ipsec.connections", host).await?;
        let conns = s.conns(None).await?;
        let sas = s.sas(None).await?;
        drop(s);
        let mut out: BTreeMap<String, IpsecConnection> = BTreeMap::new();
        // The far end: from the IKE identity, else the underlay address, else the name's
        // host suffix. A smig connection matching none is not reported (its remote would be
        // no host of the landscape).
        let remote_of = |name: &str, ids: &[String], addrs: &[String]| {
            ids.iter()
                .find_map(|id| remote_host(name, id))
                .or_else(|| self.host_by_address(addrs))
                .or_else(|| {
                    self.hosts
                        .keys()
                        .find(|h| *h != host && names_pair(name, host, h))
                        .cloned()
                })
        };
        // Tunnel connections are no secure_link's: not reported here.
        let link_conn = |name: &str| name.starts_with(OWNED_PREFIX) && !is_tunnel(name);
        for c in conns.iter().filter(|c| link_conn(&c.name)) {
            let Some(remote) = remote_of(&c.name, &c.remote_ids, &c.remote_addrs) else {
                continue;
            };
            out.insert(
                c.name.clone(),
                IpsecConnection {
                    name: c.name.clone(),
                    link: link_of(&c.name, host, &remote),
                    remote,
                    sa_up: false,
                    bytes_in: 0,
                    bytes_out: 0,
                },
            );
        }
        for sa in sas.iter().filter(|s| link_conn(&s.name)) {
            // An SA whose connection was unloaded still counts: it is smig's to clean up.
            if !out.contains_key(&sa.name) {
                let ids: Vec<String> = sa.remote_id.iter().cloned().collect();
                let addrs: Vec<String> = sa.remote_host.iter().cloned().collect();
                let Some(remote) = remote_of(&sa.name, &ids, &addrs) else {
                    continue;
                };
                out.insert(
                    sa.name.clone(),
                    IpsecConnection {
                        name: sa.name.clone(),
                        link: link_of(&sa.name, host, &remote),
                        remote,
                        sa_up: false,
                        bytes_in: 0,
                        bytes_out: 0,
                    },
                );
            }
            if let Some(c) = out.get_mut(&sa.name) {
                for child in sa
                    .children
                    .iter()
                    .filter(|ch| ch.name == sa.name && ch.state == "INSTALLED")
                {
                    c.sa_up = true;
                    c.bytes_in += child.bytes_in;
                    c.bytes_out += child.bytes_out;
                }
            }
        }
        Ok(out.into_values().collect())
    }

    async fn load(&self, host: &HostId, config: &IpsecConfig) -> DriverResult<()> {
        let op = "ipsec.load";
        let certs = match &config.credential {
            IpsecCredential::Cert { cert, key, ca } => {
                Some(CertFiles::read(op, host, cert, key, ca.as_deref()).await?)
            }
            IpsecCredential::Psk(_) => None,
        };
        let conn = self.conn_message(host, config, certs.as_ref())?;
        let mut s = self.session(op, host).await?;
        match &config.credential {
            IpsecCredential::Psk(secret) => {
                let shared = Message::new()
                    .kv("id", shared_key_id(&config.name))
                    .kv("type", "IKE")
                    .kv("data", secret.expose())
                    .list(
                        "owners",
                        [
                            ike_identity(&config.name, &config.local),
                            ike_identity(&config.name, &config.remote),
                        ],
                    );
                s.command("load-shared", &shared).await?;
            }
            IpsecCredential::Cert { .. } => {
                if let Some(files) = &certs {
                    let key = Message::new()
                        .kv("type", files.key_type())
                        .kv("data", &files.key);
                    let answer = s.command("load-key", &key).await?;
                    if let Some(id) = answer.str("id") {
                        self.keys
                            .lock()
                            .await
                            .insert((host.clone(), config.name.clone()), id);
                    }
                    if let Some(ca) = &files.ca {
                        let ca = Message::new()
                            .kv("type", "X509")
                            .kv("flag", "CA")
                            .kv("data", ca);
                        s.command("load-cert", &ca).await?;
                    }
                }
            }
        }
        s.command("load-conn", &conn).await?;
        Ok(())
    }

    async fn initiate(&self, host: &HostId, name: &str) -> DriverResult<()> {
        let op = "ipsec.initiate";
        let mut s = self.session(op, host).await?;
        let up = |sas: &[IkeSa]| sas.iter().any(|sa| sa.installed(name).is_some());
        let busy = |sas: &[IkeSa]| {
            sas.iter().any(|sa| {
                sa.state == "CONNECTING"
                    || sa.children.iter().any(|c| {
                        c.name == name && (c.state == "INSTALLING" || c.state == "REKEYING")
                    })
            })
        };
        // An SA on its way up (the peer initiating) is waited for, not initiated twice.
        let mut sas = s.sas(Some(name)).await?;
        let settle = tokio::time::Instant::now() + Duration::from_secs(3);
        while !up(&sas) && busy(&sas) && tokio::time::Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(50)).await;
            sas = s.sas(Some(name)).await?;
        }
        if up(&sas) {
            return Ok(());
        }
        let limit = self.options.initiate_timeout;
        let req = Message::new()
            .kv("child", name)
            .kv("ike", name)
            .kv("timeout", limit.as_millis().to_string())
            .kv("init-limits", "no")
            .kv("loglevel", "1");
        let (logs, answer) = s
            .raw(
                "initiate",
                Some("control-log"),
                &req,
                limit + self.options.request_timeout,
            )
            .await?;
        if let Err(e) = check(op, host, "initiate", &answer) {
            // The peer may have brought it up at the same moment.
            if up(&s.sas(Some(name)).await?) {
                return Ok(());
            }
            return Err(with_log(e, &logs));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let sas = s.sas(Some(name)).await?;
            if up(&sas) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let states: Vec<String> = sas
                    .iter()
                    .map(|sa| {
                        let ch: Vec<String> = sa
                            .children
                            .iter()
                            .map(|c| format!("{} {}", c.name, c.state))
                            .collect();
                        format!("IKE {} [{}]", sa.state, ch.join(", "))
                    })
                    .collect();
                return Err(DriverError::failed(
                    op,
                    host,
                    format!(
                        "initiate of {name} succeeded but its CHILD_SA is not installed ({})",
                        if states.is_empty() {
                            "no SA".to_string()
                        } else {
                            states.join("; ")
                        }
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn unload(&self, host: &HostId, name: &str) -> DriverResult<()> {
        let op = "ipsec.unload";
        if !name.starts_with(OWNED_PREFIX) {
            return Err(DriverError::failed(
                op,
                host,
                format!("{name} is not a smig connection (no {OWNED_PREFIX} prefix)"),
            ));
        }
        if self.charon_stopped(op, host).await? {
            return Ok(());
        }
        let mut s = self.session(op, host).await?;
        // unload-conn leaves running SAs alone: terminate them first.
        for attempt in 0..3 {
            let sas = s.sas(Some(name)).await?;
            if sas.is_empty() {
                break;
            }
            if attempt == 2 {
                return Err(DriverError::failed(
                    op,
                    host,
                    format!("{} SA(s) of {name} survive terminate", sas.len()),
                ));
            }
            for sa in &sas {
                let t = self.options.terminate_timeout;
                let req = Message::new()
                    .kv("ike-id", &sa.uniqueid)
                    .kv("force", "yes")
                    .kv("timeout", t.as_millis().to_string())
                    .kv("loglevel", "0");
                let (_, answer) = s
                    .raw(
                        "terminate",
                        Some("control-log"),
                        &req,
                        t + self.options.request_timeout,
                    )
                    .await?;
                // Gone meanwhile (the peer deleted it) is fine; the next listing decides.
                let _ = check(op, host, "terminate", &answer);
            }
        }
        if !s.conns(Some(name)).await?.is_empty() {
            s.command("unload-conn", &Message::new().kv("name", name))
                .await?;
        }
        let keys = s.query("get-shared", &Message::new()).await?;
        let id = shared_key_id(name);
        if keys.strs("keys").contains(&id) {
            s.command("unload-shared", &Message::new().kv("id", &id))
                .await?;
        }
        let key = self
            .keys
            .lock()
            .await
            .remove(&(host.clone(), name.to_string()));
        if let Some(key) = key {
            // Another connection may share the key; charon keeps it per id, so only a key
            // no other loaded smig connection of this host uses is unloaded.
            let shared = self
                .keys
                .lock()
                .await
                .iter()
                .any(|((h, _), k)| h == host && *k == key);
            if !shared {
                let answer = s
                    .raw(
                        "unload-key",
                        None,
                        &Message::new().kv("id", &key),
                        self.options.request_timeout,
                    )
                    .await?
                    .1;
                // Already gone (charon restarted) is fine.
                let _ = check(op, host, "unload-key", &answer);
            }
        }
        Ok(())
    }
}

/// Adds the daemon's own words about a failed initiate (the last log lines) to the error.
fn with_log(e: DriverError, logs: &[Message]) -> DriverError {
    let lines: Vec<String> = logs.iter().filter_map(|m| m.str("msg")).collect();
    if lines.is_empty() {
        return e;
    }
    let tail = lines[lines.len().saturating_sub(4)..].join(" | ");
    match e {
        DriverError::Failed { op, target, reason } => DriverError::Failed {
            op,
            target,
            reason: format!("{reason} (charon: {tail})"),
        },
        other => other,
    }
}

#[cfg(test)]
pub(crate) mod tests;
