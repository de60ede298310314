//! The libvirt driver: [`Hypervisor`] over the `virt` crate (libvirt's C API).
//!
//! One [`Libvirt`] serves every hypervisor host of a landscape, each reached by its libvirt URI
//! (`qemu+tls://10.77.0.12/system`), optionally with a client PKI directory (`pkipath=`) and a
//! timeout. Connections open on first use and are kept per host; a connection found dead is
//! reopened once. Every libvirt call blocks, so each runs in `spawn_blocking`.
//!
//! - Discovery asks every host at once, each within its timeout: domains with their state,
//!   persistence, NICs and link state (`<link state='down'/>` in the live XML) and the job in
//!   progress ([`Libvirt::inspect_all`], [`Hypervisor::domains_of`]).
//! - A live migration is `virDomainMigrateToURI3` (peer to peer: the source libvirtd connects to
//!   the target with its own client certificate) or `virDomainMigrate3` (this process holds both
//!   connections), with `VIR_MIGRATE_LIVE | PERSIST_DEST | UNDEFINE_SOURCE`, `TLS` and `PAUSED`
//!   as asked, the bandwidth cap as a parameter and the downtime limit set before it starts.
//!   Progress comes from polling the source's job info; an abort calls `virDomainAbortJob`, which
//!   leaves the domain running on the source.
//! - A cold migration moves the persistent definition of a shut-off domain: define on the target
//!   first, then undefine on the source, so the definition is never lost.
//! - `shutdown` asks the guest (ACPI) and destroys it after the grace period. Guests without ACPI
//!   (the lab's) ignore the request, so for them destroy is what stops them: a grace of zero
//!   destroys at once.

pub mod xml;

use super::{
    AbortSignal, DriverError, DriverResult, Hypervisor, MigrationProgress, MigrationRequest,
    ProgressSink,
};
use crate::model::{Domain, DomainState, HostId, Landscape, MigrationMode, Name};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};
use virt::connect::Connect;
use virt::domain::{Domain as VirDomain, DomainState as VirState, MigrateParameters};
use virt::error::{Error as VirError, ErrorNumber};
use virt::sys;

/// How the driver reaches one host's libvirt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtHost {
    /// libvirt connection URI, e.g. `qemu+tls://10.77.0.11/system`.
    pub uri: String,
    /// Client PKI directory (`cacert.pem`, `clientcert.pem`, `clientkey.pem`), added to a TLS
    /// URI as `pkipath=` unless the URI names one already.
    pub pki_path: Option<PathBuf>,
    /// How long the host may take to accept a connection, and again to answer discovery.
    pub timeout: Duration,
}

impl LibvirtHost {
    /// A host reached by `uri` with the default timeout and libvirt's default PKI.
    pub fn new(uri: impl Into<String>) -> Self {
        LibvirtHost {
            uri: uri.into(),
            pki_path: None,
            timeout: LibvirtOptions::default().timeout,
        }
    }

    /// The URI the driver opens: with `pkipath=` for a TLS URI when a PKI directory is set.
    pub fn connect_uri(&self) -> String {
        let Some(pki) = &self.pki_path else {
            return self.uri.clone();
        };
        let scheme = self.uri.split("://").next().unwrap_or_default();
        if !scheme.ends_with("+tls") || self.uri.contains("pkipath=") {
            return self.uri.clone();
        }
        let sep = if self.uri.contains('?') { '&' } else { '?' };
        format!("{}{sep}pkipath={}", self.uri, pki.display())
    }
}

/// Settings shared by every host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtOptions {
    /// Client PKI directory for every host (see [`LibvirtHost::pki_path`]).
    pub pki_path: Option<PathBuf>,
    /// Per host: connecting, and answering discovery (see [`LibvirtHost::timeout`]).
    pub timeout: Duration,
    /// How long `shutdown` waits for the guest to power off before destroying it.
    pub shutdown_grace: Duration,
    /// Peer-to-peer migration (the source libvirtd drives it) instead of this process holding
    /// both connections.
    pub peer_to_peer: bool,
    /// How often a running migration's progress is polled.
    pub progress_interval: Duration,
}

impl Default for LibvirtOptions {
    fn default() -> Self {
        LibvirtOptions {
            pki_path: None,
            timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            peer_to_peer: true,
            progress_interval: Duration::from_millis(100),
        }
    }
}

/// What discovery sees of one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDetail {
    /// State, persistence and NIC link state, as the model records them.
    pub domain: Domain,
    /// The domain's network interfaces (from its live XML when it runs).
    pub nics: Vec<xml::Nic>,
    /// The job in progress (a migration, a save), if any.
    pub job: Option<MigrationProgress>,
}

/// What libvirt reported about a finished migration job (`virsh domjobinfo --completed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompletedJob {
    pub elapsed_ms: u64,
    pub downtime_ms: Option<u64>,
    pub data_processed: u64,
    pub data_total: u64,
}

/// The libvirt driver. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Libvirt {
    inner: Arc<Inner>,
}

struct Inner {
    hosts: Mutex<BTreeMap<HostId, LibvirtHost>>,
    options: LibvirtOptions,
    connections: Mutex<HashMap<HostId, Connect>>,
}

/// The operation and host a blocking libvirt call works for, to name them in errors.
#[derive(Debug, Clone)]
struct Ctx {
    op: &'static str,
    host: HostId,
}

impl Ctx {
    fn fail(&self, reason: impl ToString) -> DriverError {
        DriverError::failed(self.op, &self.host, reason)
    }
    fn lv(&self, what: &str, e: VirError) -> DriverError {
        self.fail(format!("{what}: {}", e.message()))
    }
}

fn is_no_domain(e: &VirError) -> bool {
    e.code().is(ErrorNumber::NoDomain)
}

fn lookup(conn: &Connect, name: &str) -> Result<Option<VirDomain>, VirError> {
    match conn.lookup_domain_by_name(name) {
        Ok(d) => Ok(Some(d)),
        Err(e) if is_no_domain(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn lookup_some(ctx: &Ctx, conn: &Connect, name: &str) -> DriverResult<VirDomain> {
    lookup(conn, name)
        .map_err(|e| ctx.lv(&format!("looking up domain {name}"), e))?
        .ok_or_else(|| ctx.fail(format!("domain {name} is not defined")))
}

fn model_state(d: &VirDomain) -> Result<DomainState, VirError> {
    if !d.is_active()? {
        return Ok(DomainState::ShutOff);
    }
    Ok(match d.state()?.0.known() {
        Some(VirState::Paused | VirState::PMSuspended) => DomainState::Paused,
        Some(VirState::Shutoff) => DomainState::ShutOff,
        _ => DomainState::Running,
    })
}

fn progress_of(j: &virt::domain::JobStats) -> MigrationProgress {
    MigrationProgress {
        data_processed: j.data_processed.unwrap_or(0),
        data_total: j.data_total.unwrap_or(0),
        data_remaining: j.data_remaining.unwrap_or(0),
    }
}

/// The running job of an active domain, `None` when there is none (or libvirt cannot say).
fn running_job(d: &VirDomain) -> Option<MigrationProgress> {
    let j = d.job_info().ok()?;
    (j.r#type != sys::VIR_DOMAIN_JOB_NONE as i32).then(|| progress_of(&j))
}

/// A domain's name and details; its running job only when `with_job` (one more call).
fn read_domain(d: &VirDomain, with_job: bool) -> Result<(String, DomainDetail), VirError> {
    let name = d.name()?;
    let state = model_state(d)?;
    let persistent = d.is_persistent()?;
    let text = d.xml_desc(0)?;
    // A domain whose XML libvirt gave us but we cannot read is still listed, without NICs.
    let nics = xml::nics(&text).unwrap_or_default();
    let job = if !with_job || state == DomainState::ShutOff {
        None
    } else {
        running_job(d)
    };
    Ok((
        name,
        DomainDetail {
            domain: Domain {
                state,
                persistent,
                nic_link_up: xml::link_up(&nics),
            },
            nics,
            job,
        },
    ))
}

fn list_domains(ctx: &Ctx, conn: &Connect) -> DriverResult<BTreeMap<String, DomainDetail>> {
    let all = conn
        .list_all_domains(0)
        .map_err(|e| ctx.lv("listing domains", e))?;
    let mut out = BTreeMap::new();
    for d in all {
        match read_domain(&d, true) {
            Ok((name, detail)) => {
                out.insert(name, detail);
            }
            // Gone between the listing and the reading (a transient domain that stopped).
            Err(e) if is_no_domain(&e) => {}
            Err(e) => return Err(ctx.lv("reading a domain", e)),
        }
    }
    Ok(out)
}

/// Whether and how a domain exists on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Presence {
    active: bool,
    uuid: String,
}

fn presence(ctx: &Ctx, conn: &Connect, name: &str) -> DriverResult<Option<Presence>> {
    let what = format!("looking up domain {name}");
    let Some(d) = lookup(conn, name).map_err(|e| ctx.lv(&what, e))? else {
        return Ok(None);
    };
    Ok(Some(Presence {
        active: d.is_active().map_err(|e| ctx.lv(&what, e))?,
        uuid: d.uuid_string().map_err(|e| ctx.lv(&what, e))?,
    }))
}

/// Sets the link of every NIC in `text` (the domain's XML) that differs, with `flags`
/// (`VIR_DOMAIN_AFFECT_LIVE` or `_CONFIG`).
fn update_links(ctx: &Ctx, d: &VirDomain, text: &str, up: bool, flags: u32) -> DriverResult<usize> {
    let nics = xml::nics(text).map_err(|e| ctx.fail(e))?;
    let mut changed = 0;
    for nic in nics.iter().filter(|n| n.link_up != up) {
        let device = xml::interface_with_link(text, nic, up)
            .ok_or_else(|| ctx.fail("cannot edit the interface element of the domain XML"))?;
        d.update_device_flags(&device, flags).map_err(|e| {
            ctx.lv(
                &format!(
                    "setting the link of NIC {} {}",
                    nic.mac.as_deref().unwrap_or("?"),
                    if up { "up" } else { "down" }
                ),
                e,
            )
        })?;
        changed += 1;
    }
    Ok(changed)
}

/// Sets the link of every NIC in the persistent definition `config`: in place where the driver
/// can (`VIR_DOMAIN_AFFECT_CONFIG`), else by redefining the domain with the edited definition.
fn set_config_links(
    ctx: &Ctx,
    conn: &Connect,
    d: &VirDomain,
    config: &str,
    up: bool,
) -> DriverResult<()> {
    let nics = xml::nics(config).map_err(|e| ctx.fail(e))?;
    let Some(first) = nics.iter().find(|n| n.link_up != up) else {
        return Ok(());
    };
    let device = xml::interface_with_link(config, first, up)
        .ok_or_else(|| ctx.fail("cannot edit the interface element of the domain XML"))?;
    match d.update_device_flags(&device, sys::VIR_DOMAIN_AFFECT_CONFIG) {
        Ok(()) => {
            let again = d
                .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE | sys::VIR_DOMAIN_XML_SECURE)
                .map_err(|e| ctx.lv("reading the persistent definition", e))?;
            update_links(ctx, d, &again, up, sys::VIR_DOMAIN_AFFECT_CONFIG).map(|_| ())
        }
        Err(e) if e.code().is(ErrorNumber::NoSupport) => {
            let edited = xml::with_links(config, up).map_err(|e| ctx.fail(e))?;
            conn.define_domain_xml(&edited)
                .map(|_| ())
                .map_err(|e| ctx.lv("redefining the domain with the new link state", e))
        }
        Err(e) => Err(ctx.lv("setting the link in the persistent definition", e)),
    }
}

fn silence_libvirt_stderr() {
    static ONCE: Once = Once::new();
    // libvirt's default error handler prints every error to stderr; errors reach us as values.
    ONCE.call_once(virt::error::clear_error_callback);
}

enum Outcome<T> {
    Done(DriverResult<T>),
    /// The cached connection was dead before the call started: reopen and retry.
    Dead,
}

impl Libvirt {
    /// A driver for the given hosts.
    pub fn new(hosts: BTreeMap<HostId, LibvirtHost>, options: LibvirtOptions) -> Self {
        silence_libvirt_stderr();
        Libvirt {
            inner: Arc::new(Inner {
                hosts: Mutex::new(hosts),
                options,
                connections: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A driver for every host of the landscape, each with the options' PKI and timeout.
    pub fn from_landscape(landscape: &Landscape, options: LibvirtOptions) -> Self {
        let hosts = landscape
            .hosts()
            .map(|h| {
                (
                    h.id.clone(),
                    LibvirtHost {
                        uri: h.libvirt.to_string(),
                        pki_path: options.pki_path.clone(),
                        timeout: options.timeout,
                    },
                )
            })
            .collect();
        Libvirt::new(hosts, options)
    }

    /// The configured hosts.
    pub fn hosts(&self) -> Vec<HostId> {
        lock(&self.inner.hosts).keys().cloned().collect()
    }

    fn host_config(
        &self,
        op: &'static str,
        host: &HostId,
        fallback_uri: Option<&str>,
    ) -> DriverResult<LibvirtHost> {
        let mut hosts = lock(&self.inner.hosts);
        if let Some(h) = hosts.get(host) {
            return Ok(h.clone());
        }
        let Some(uri) = fallback_uri else {
            return Err(DriverError::failed(
                op,
                host,
                "no libvirt URI is configured for this host",
            ));
        };
        let h = LibvirtHost {
            uri: uri.to_string(),
            pki_path: self.inner.options.pki_path.clone(),
            timeout: self.inner.options.timeout,
        };
        hosts.insert(host.clone(), h.clone());
        Ok(h)
    }

    /// Drops the host's cached connection; closing it (an RPC) happens in a blocking thread.
    fn forget(&self, host: &HostId) {
        let gone = lock(&self.inner.connections).remove(host);
        if let Some(conn) = gone {
            drop(tokio::task::spawn_blocking(move || drop(conn)));
        }
    }

    /// The host's connection: the cached one, or a new one opened within the host's timeout.
    async fn connect(
        &self,
        op: &'static str,
        host: &HostId,
        fallback_uri: Option<&str>,
    ) -> DriverResult<Connect> {
        if let Some(c) = lock(&self.inner.connections).get(host) {
            return Ok(c.clone());
        }
        let cfg = self.host_config(op, host, fallback_uri)?;
        let uri = cfg.connect_uri();
        let opening = tokio::task::spawn_blocking(move || Connect::open(Some(&uri)));
        let unreachable = |reason: String| DriverError::Unreachable {
            op: op.to_string(),
            target: host.to_string(),
            reason: format!("libvirt at {}: {reason}", cfg.uri),
        };
        let conn = match tokio::time::timeout(cfg.timeout, opening).await {
            Err(_) => {
                return Err(unreachable(format!(
                    "no connection within {:.1} s",
                    cfg.timeout.as_secs_f64()
                )))
            }
            Ok(Err(join)) => return Err(DriverError::failed(op, host, join)),
            Ok(Ok(Err(e))) => return Err(unreachable(e.message().to_string())),
            Ok(Ok(Ok(c))) => c,
        };
        lock(&self.inner.connections).insert(host.clone(), conn.clone());
        Ok(conn)
    }

    /// Runs `f` on the host's connection in a blocking thread. A connection found dead before
    /// the call is reopened once; a call that fails because the connection died is
    /// `Unreachable` and the connection is dropped, so the next call reconnects.
    async fn run<T, F>(&self, op: &'static str, host: &HostId, f: F) -> DriverResult<T>
    where
        T: Send + 'static,
        F: Fn(&Ctx, &Connect) -> DriverResult<T> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        for _ in 0..2 {
            let conn = self.connect(op, host, None).await?;
            let ctx = Ctx {
                op,
                host: host.clone(),
            };
            let f = f.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                if !conn.is_alive().unwrap_or(false) {
                    return Outcome::Dead;
                }
                match f(&ctx, &conn) {
                    Err(DriverError::Failed { op, target, reason })
                        if !conn.is_alive().unwrap_or(false) =>
                    {
                        Outcome::Done(Err(DriverError::Unreachable { op, target, reason }))
                    }
                    r => Outcome::Done(r),
                }
            })
            .await
            .map_err(|e| DriverError::failed(op, host, e))?;
            match outcome {
                Outcome::Dead => self.forget(host),
                Outcome::Done(r) => {
                    if matches!(r, Err(DriverError::Unreachable { .. })) {
                        self.forget(host);
                    }
                    return r;
                }
            }
        }
        Err(DriverError::Unreachable {
            op: op.to_string(),
            target: host.to_string(),
            reason: "the libvirt connection died on reopening".into(),
        })
    }

    /// Everything discovery reads on one host, within its timeout.
    pub async fn inspect(&self, host: &HostId) -> DriverResult<BTreeMap<String, DomainDetail>> {
        let op = "hypervisor.domains";
        let timeout = self.host_config(op, host, None)?.timeout;
        // Connecting has its own timeout; the listing gets the same again.
        self.connect(op, host, None).await?;
        match tokio::time::timeout(timeout, self.run(op, host, list_domains)).await {
            Ok(r) => r,
            Err(_) => {
                self.forget(host);
                Err(DriverError::Unreachable {
                    op: op.into(),
                    target: host.to_string(),
                    reason: format!(
                        "libvirt did not list its domains within {:.1} s",
                        timeout.as_secs_f64()
                    ),
                })
            }
        }
    }

    /// [`Libvirt::inspect`] on every configured host at once; each host answers on its own.
    pub async fn inspect_all(
        &self,
    ) -> BTreeMap<HostId, DriverResult<BTreeMap<String, DomainDetail>>> {
        self.inspect_hosts(&self.hosts()).await
    }

    async fn inspect_hosts(
        &self,
        hosts: &[HostId],
    ) -> BTreeMap<HostId, DriverResult<BTreeMap<String, DomainDetail>>> {
        let mut tasks = tokio::task::JoinSet::new();
        for h in hosts {
            let me = self.clone();
            let h = h.clone();
            tasks.spawn(async move {
                let r = me.inspect(&h).await;
                (h, r)
            });
        }
        let mut out = BTreeMap::new();
        while let Some(done) = tasks.join_next().await {
            if let Ok((h, r)) = done {
                out.insert(h, r);
            }
        }
        // A task that panicked leaves its host out: name it rather than drop it silently.
        for h in hosts {
            out.entry(h.clone()).or_insert_with(|| {
                Err(DriverError::failed(
                    "hypervisor.domains",
                    h,
                    "discovery task failed",
                ))
            });
        }
        out
    }

    /// The last completed job of a domain (a migration, read on its target), as
    /// `virsh domjobinfo --completed` shows it.
    pub async fn completed_job(
        &self,
        host: &HostId,
        domain: &str,
    ) -> DriverResult<Option<CompletedJob>> {
        let name = domain.to_string();
        self.run("hypervisor.job_info", host, move |ctx, conn| {
            let d = lookup_some(ctx, conn, &name)?;
            let Ok(j) = d.job_stats(sys::VIR_DOMAIN_JOB_STATS_COMPLETED) else {
                return Ok(None);
            };
            if j.r#type == sys::VIR_DOMAIN_JOB_NONE as i32 {
                return Ok(None);
            }
            Ok(Some(CompletedJob {
                elapsed_ms: j.time_elapsed.unwrap_or(0),
                downtime_ms: j.downtime,
                data_processed: j.data_processed.unwrap_or(0),
                data_total: j.data_total.unwrap_or(0),
            }))
        })
        .await
    }

    async fn presence(
        &self,
        op: &'static str,
        host: &HostId,
        fallback_uri: Option<&str>,
        domain: &str,
    ) -> DriverResult<Option<Presence>> {
        // Registers a host known only by the request's URI.
        self.connect(op, host, fallback_uri).await?;
        let name = domain.to_string();
        self.run(op, host, move |ctx, conn| presence(ctx, conn, &name))
            .await
    }

    async fn migrate_live(
        &self,
        request: &MigrationRequest,
        progress: ProgressSink,
        mut abort: AbortSignal,
    ) -> DriverResult<()> {
        let op = "hypervisor.migrate";
        let from = Ctx {
            op,
            host: request.from.clone(),
        };
        let name = request.domain.clone();
        let downtime = request.max_downtime_ms;
        let dom = self
            .run(op, &request.from, move |ctx, conn| {
                let d = lookup_some(ctx, conn, &name)?;
                if let Some(ms) = downtime {
                    d.migrate_set_max_downtime(ms, 0)
                        .map_err(|e| ctx.lv("setting the maximum downtime", e))?;
                }
                Ok(d)
            })
            .await?;
        let p2p = self.inner.options.peer_to_peer;
        let target = if p2p {
            None
        } else {
            Some(self.connect(op, &request.to, Some(&request.to_uri)).await?)
        };
        let mut flags = sys::VIR_MIGRATE_LIVE
            | sys::VIR_MIGRATE_PERSIST_DEST
            | sys::VIR_MIGRATE_UNDEFINE_SOURCE
            | sys::VIR_MIGRATE_ABORT_ON_ERROR;
        if p2p {
            flags |= sys::VIR_MIGRATE_PEER2PEER;
        }
        if request.tls {
            flags |= sys::VIR_MIGRATE_TLS;
        }
        if request.paused {
            flags |= sys::VIR_MIGRATE_PAUSED;
        }
        let params = MigrateParameters {
            bandwidth: request.bandwidth_mibps,
            ..Default::default()
        };
        let mut job = {
            let d = dom.clone();
            let uri = request.to_uri.clone();
            tokio::task::spawn_blocking(move || match target {
                None => d.migrate_to_uri3(Some(&uri), params, flags),
                Some(dconn) => d.migrate3(&dconn, params, flags).map(|_| ()),
            })
        };
        let mut ticker = tokio::time::interval(self.inner.options.progress_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut aborted = false;
        let mut last = MigrationProgress::default();
        let result = loop {
            tokio::select! {
                r = &mut job => break r,
                _ = abort.aborted(), if !aborted => {
                    aborted = true;
                    let d = dom.clone();
                    // SAFETY: `d` holds a reference on the domain for the whole call;
                    // virDomainAbortJob is meant to be called while another thread runs the job.
                    let _ = tokio::task::spawn_blocking(move || unsafe {
                        sys::virDomainAbortJob(d.as_ptr())
                    })
                    .await;
                }
                _ = ticker.tick() => {
                    let d = dom.clone();
                    if let Ok(Some(p)) = tokio::task::spawn_blocking(move || running_job(&d)).await {
                        if p.data_total > 0 && p != last {
                            last = p;
                            progress(p);
                        }
                    }
                }
            }
        };
        match result {
            Err(join) => Err(from.fail(join)),
            Ok(Err(_)) if aborted => Err(DriverError::Aborted {
                op: op.into(),
                target: request.from.to_string(),
            }),
            Ok(Err(e)) => {
                // A dead source connection is an unreachable source.
                let alive = dom.connect().and_then(|c| c.is_alive()).unwrap_or(false);
                if !alive {
                    self.forget(&request.from);
                    return Err(DriverError::Unreachable {
                        op: op.into(),
                        target: request.from.to_string(),
                        reason: e.message().to_string(),
                    });
                }
                Err(from.fail(format!(
                    "migrating {} to {}: {}",
                    request.domain,
                    request.to,
                    e.message()
                )))
            }
            // Done; also when an abort came too late (after the switchover): the domain moved,
            // and that is what we report.
            Ok(Ok(())) => {
                let total = if last.data_total > 0 {
                    last.data_total
                } else {
                    self.completed_job(&request.to, &request.domain)
                        .await
                        .ok()
                        .flatten()
                        .map_or(0, |j| j.data_total.max(j.data_processed))
                };
                progress(MigrationProgress {
                    data_processed: total,
                    data_total: total,
                    data_remaining: 0,
                });
                Ok(())
            }
        }
    }

    /// Moves a shut-off domain's persistent definition: define on the target, then undefine on
    /// the source (never the other way round).
    async fn migrate_cold(
        &self,
        request: &MigrationRequest,
        progress: ProgressSink,
        abort: AbortSignal,
    ) -> DriverResult<()> {
        let op = "hypervisor.migrate";
        let aborted = || DriverError::Aborted {
            op: op.into(),
            target: request.from.to_string(),
        };
        let name = request.domain.clone();
        let (text, uuid) = self
            .run(op, &request.from, move |ctx, conn| {
                let d = lookup_some(ctx, conn, &name)?;
                let what = "reading the persistent definition";
                let text = d
                    .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE | sys::VIR_DOMAIN_XML_SECURE)
                    .map_err(|e| ctx.lv(what, e))?;
                let uuid = d.uuid_string().map_err(|e| ctx.lv(what, e))?;
                Ok((text, uuid))
            })
            .await?;
        let total = text.len() as u64;
        progress(MigrationProgress {
            data_processed: 0,
            data_total: total,
            data_remaining: total,
        });
        if abort.is_aborted() {
            return Err(aborted());
        }
        let name = request.domain.clone();
        let defined = text.clone();
        self.run(op, &request.to, move |ctx, conn| {
            let d = conn
                .define_domain_xml(&defined)
                .map_err(|e| ctx.lv(&format!("defining {name}"), e))?;
            match d.uuid_string() {
                Ok(u) if u == uuid => Ok(()),
                Ok(u) => Err(ctx.fail(format!(
                    "defined {name} with UUID {u}, not the source's {uuid}"
                ))),
                Err(e) => Err(ctx.lv(&format!("checking the definition of {name}"), e)),
            }
        })
        .await?;
        if abort.is_aborted() {
            // The source keeps the domain: take back what this call defined.
            let name = request.domain.clone();
            self.run(op, &request.to, move |ctx, conn| {
                lookup_some(ctx, conn, &name)?
                    .undefine()
                    .map_err(|e| ctx.lv(&format!("undefining {name}"), e))
            })
            .await?;
            return Err(aborted());
        }
        self.undefine_source(request).await?;
        progress(MigrationProgress {
            data_processed: total,
            data_total: total,
            data_remaining: 0,
        });
        Ok(())
    }

    async fn undefine_source(&self, request: &MigrationRequest) -> DriverResult<()> {
        let name = request.domain.clone();
        self.run("hypervisor.migrate", &request.from, move |ctx, conn| {
            let Some(d) = lookup(conn, &name).map_err(|e| ctx.lv("looking up", e))? else {
                return Ok(());
            };
            if d.is_active().map_err(|e| ctx.lv("reading state", e))? {
                return Err(ctx.fail(format!(
                    "domain {name} became active on the source during an offline migration"
                )));
            }
            d.undefine()
                .map_err(|e| ctx.lv(&format!("undefining {name} on the source"), e))
        })
        .await
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait::async_trait]
impl Hypervisor for Libvirt {
    async fn domains(&self, host: &HostId) -> DriverResult<BTreeMap<Name, Domain>> {
        Ok(self
            .inspect(host)
            .await?
            .into_iter()
            .map(|(n, d)| (Name::from(n), d.domain))
            .collect())
    }

    async fn domains_of(
        &self,
        hosts: &[HostId],
    ) -> Vec<(HostId, DriverResult<BTreeMap<Name, Domain>>)> {
        let mut all = self.inspect_hosts(hosts).await;
        hosts
            .iter()
            .map(|h| {
                let r = all.remove(h).unwrap_or_else(|| {
                    Err(DriverError::failed("hypervisor.domains", h, "not asked"))
                });
                let r = r.map(|m| {
                    m.into_iter()
                        .map(|(n, d)| (Name::from(n), d.domain))
                        .collect()
                });
                (h.clone(), r)
            })
            .collect()
    }

    async fn domain(&self, host: &HostId, domain: &str) -> DriverResult<Option<Domain>> {
        let name = domain.to_string();
        self.run("hypervisor.domain", host, move |ctx, conn| {
            let Some(d) = lookup(conn, &name).map_err(|e| ctx.lv("looking up", e))? else {
                return Ok(None);
            };
            match read_domain(&d, false) {
                Ok((_, detail)) => Ok(Some(detail.domain)),
                Err(e) if is_no_domain(&e) => Ok(None),
                Err(e) => Err(ctx.lv(&format!("reading domain {name}"), e)),
            }
        })
        .await
    }

    async fn define(&self, host: &HostId, domain: &str, text: &str) -> DriverResult<()> {
        let op = "hypervisor.define";
        let named = xml::domain_name(text).map_err(|e| DriverError::failed(op, host, e))?;
        if named != domain {
            return Err(DriverError::failed(
                op,
                host,
                format!("the XML defines domain {named}, not {domain}"),
            ));
        }
        let text = text.to_string();
        self.run(op, host, move |ctx, conn| {
            conn.define_domain_xml(&text)
                .map(|_| ())
                .map_err(|e| ctx.lv(&format!("defining {named}"), e))
        })
        .await
    }

    async fn start(&self, host: &HostId, domain: &str) -> DriverResult<()> {
        let name = domain.to_string();
        self.run("hypervisor.start", host, move |ctx, conn| {
            let d = lookup_some(ctx, conn, &name)?;
            match model_state(&d).map_err(|e| ctx.lv("reading state", e))? {
                DomainState::Running => Ok(()),
                DomainState::Paused => {
                    Err(ctx.fail(format!("domain {name} is paused, not shut off")))
                }
                DomainState::ShutOff => d
                    .create()
                    .map_err(|e| ctx.lv(&format!("starting {name}"), e)),
            }
        })
        .await
    }

    async fn shutdown(&self, host: &HostId, domain: &str) -> DriverResult<()> {
        let name = domain.to_string();
        let grace = self.inner.options.shutdown_grace;
        self.run("hypervisor.shutdown", host, move |ctx, conn| {
            let Some(d) = lookup(conn, &name).map_err(|e| ctx.lv("looking up", e))? else {
                return Err(ctx.fail(format!("domain {name} is not defined")));
            };
            let active = |d: &VirDomain| match d.is_active() {
                Ok(a) => Ok(a),
                // A transient domain disappears when it stops.
                Err(e) if is_no_domain(&e) => Ok(false),
                Err(e) => Err(ctx.lv("reading state", e)),
            };
            if !active(&d)? {
                return Ok(());
            }
            if !grace.is_zero() && d.shutdown().is_ok() {
                let until = Instant::now() + grace;
                while Instant::now() < until {
                    if !active(&d)? {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            match d.destroy() {
                Ok(()) => Ok(()),
                Err(_) if !active(&d)? => Ok(()),
                Err(e) => Err(ctx.lv(&format!("destroying {name}"), e)),
            }
        })
        .await
    }

    async fn pause(&self, host: &HostId, domain: &str) -> DriverResult<()> {
        let name = domain.to_string();
        self.run("hypervisor.pause", host, move |ctx, conn| {
            let d = lookup_some(ctx, conn, &name)?;
            match model_state(&d).map_err(|e| ctx.lv("reading state", e))? {
                DomainState::Paused => Ok(()),
                DomainState::ShutOff => Err(ctx.fail(format!("domain {name} is not running"))),
                DomainState::Running => d
                    .suspend()
                    .map_err(|e| ctx.lv(&format!("pausing {name}"), e)),
            }
        })
        .await
    }

    async fn resume(&self, host: &HostId, domain: &str) -> DriverResult<()> {
        let name = domain.to_string();
        self.run("hypervisor.resume", host, move |ctx, conn| {
            let d = lookup_some(ctx, conn, &name)?;
            match model_state(&d).map_err(|e| ctx.lv("reading state", e))? {
                DomainState::Running => Ok(()),
                DomainState::ShutOff => Err(ctx.fail(format!("domain {name} is not running"))),
                DomainState::Paused => d
                    .resume()
                    .map_err(|e| ctx.lv(&format!("resuming {name}"), e)),
            }
        })
        .await
    }

    async fn set_link(&self, host: &HostId, domain: &str, up: bool) -> DriverResult<()> {
        let name = domain.to_string();
        self.run("hypervisor.set_link", host, move |ctx, conn| {
            let d = lookup_some(ctx, conn, &name)?;
            let what = format!("reading the XML of {name}");
            let active = d.is_active().map_err(|e| ctx.lv(&what, e))?;
            let persistent = d.is_persistent().map_err(|e| ctx.lv(&what, e))?;
            let live = d.xml_desc(0).map_err(|e| ctx.lv(&what, e))?;
            if xml::nics(&live).map_err(|e| ctx.fail(e))?.is_empty() {
                return Err(ctx.fail(format!("domain {name} has no network interface")));
            }
            if active {
                update_links(ctx, &d, &live, up, sys::VIR_DOMAIN_AFFECT_LIVE)?;
            }
            if persistent {
                let config = d
                    .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE | sys::VIR_DOMAIN_XML_SECURE)
                    .map_err(|e| ctx.lv(&what, e))?;
                set_config_links(ctx, conn, &d, &config, up)?;
            }
            Ok(())
        })
        .await
    }

    async fn migrate(
        &self,
        request: &MigrationRequest,
        progress: ProgressSink,
        abort: AbortSignal,
    ) -> DriverResult<()> {
        let op = "hypervisor.migrate";
        if abort.is_aborted() {
            return Err(DriverError::Aborted {
                op: op.into(),
                target: request.from.to_string(),
            });
        }
        // The target first: an unreachable target is named before anything changes.
        let on_target = self
            .presence(op, &request.to, Some(&request.to_uri), &request.domain)
            .await?;
        let on_source = self
            .presence(op, &request.from, None, &request.domain)
            .await?;
        let dom = &request.domain;
        match (request.mode, on_source, on_target) {
            (_, None, Some(_)) => Ok(()), // already migrated
            (_, None, None) => Err(DriverError::failed(
                op,
                &request.from,
                format!("domain {dom} is not defined"),
            )),
            // An offline move interrupted after defining on the target: finish it.
            (MigrationMode::Cold, Some(s), Some(t))
                if !s.active && !t.active && s.uuid == t.uuid =>
            {
                self.undefine_source(request).await
            }
            (_, Some(_), Some(_)) => Err(DriverError::failed(
                op,
                &request.to,
                format!("domain {dom} already exists on the target"),
            )),
            (MigrationMode::Live, Some(s), None) if !s.active => Err(DriverError::failed(
                op,
                &request.from,
                format!("domain {dom} is not running: live migration needs it active"),
            )),
            (MigrationMode::Cold, Some(s), None) if s.active => Err(DriverError::failed(
                op,
                &request.from,
                format!("domain {dom} is active: an offline migration needs it shut off"),
            )),
            (MigrationMode::Live, Some(_), None) => {
                self.migrate_live(request, progress, abort).await
            }
            (MigrationMode::Cold, Some(_), None) => {
                self.migrate_cold(request, progress, abort).await
            }
        }
    }

    async fn job_info(
        &self,
        host: &HostId,
        domain: &str,
    ) -> DriverResult<Option<MigrationProgress>> {
        let name = domain.to_string();
        self.run("hypervisor.job_info", host, move |ctx, conn| {
            let d = lookup_some(ctx, conn, &name)?;
            if !d.is_active().map_err(|e| ctx.lv("reading state", e))? {
                return Ok(None);
            }
            Ok(running_job(&d))
        })
        .await
    }
}

#[cfg(test)]
mod tests;
