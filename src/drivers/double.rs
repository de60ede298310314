//! The landscape test double: every driver role over an in-memory [`Observed`], for unit
//! tests, fault injection and benchmarks. It is a test double, never what the demo or the
//! end-to-end tests run on.
//!
//! - It loads and saves the recorded-snapshot JSON format, so `smig apply` on the double's file
//!   followed by `smig plan --observed` on the same file shows no changes. A file-backed double
//!   saves the file atomically after every mutating call, like a real landscape that keeps
//!   what was done when smig dies.
//! - It applies each call faithfully: a migration moves the domain (persistent on the target,
//!   undefined on the source, paused when asked), an IPsec SA comes up only when both ends have
//!   the connection loaded with the same key, a routing core learns a tunnelled subnet's route
//!   after a configurable number of polls (or never), resets drop or re-secure connections.
//! - It records every call ([`Call`]), and injects faults and delays at any call and aborts the
//!   process after the k-th step or mutating call, as configured in [`DoubleConfig`]: a sidecar
//!   file `<file>.double.json`, or the `SMIG_DOUBLE` environment variable (JSON, same shape).
//!   A file-backed double appends its call log to `<file>.calls.jsonl`.

use super::{
    AbortSignal, DriverError, DriverResult, HostNetwork, Hypervisor, Ipsec, IpsecConfig,
    IpsecCredential, MigrationProgress, MigrationRequest, ProgressSink, RoutingCore, TunnelSpec,
};
use crate::discover::{Discover, DiscoverError};
use crate::model::{
    BlockRule, Connection, Domain, DomainState, HostId, IpsecConnection, Landscape, MigrationMode,
    Name, Observed, Route, Tunnel,
};
use crate::plan::Target;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

const MIGRATE: &str = "hypervisor.migrate";

/// The environment variable holding a [`DoubleConfig`] as JSON (overrides the sidecar file).
pub const CONFIG_ENV: &str = "SMIG_DOUBLE";

/// Fault, delay, crash and convergence settings of the double.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoubleConfig {
    /// Calls that fail.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Calls that take time.
    #[serde(default)]
    pub delays: Vec<Delay>,
    /// Abort the process (as a crash) once this many steps have finished
    /// (see [`LandscapeDouble::step_finished`]).
    #[serde(default)]
    pub abort_after_steps: Option<u64>,
    /// Abort the process right after the k-th mutating call took effect.
    #[serde(default)]
    pub abort_after_calls: Option<u64>,
    /// How routing cores learn routes; a tunnelled prefix not listed is learned on the first poll.
    #[serde(default)]
    pub routes: Vec<Convergence>,
    /// Whether reset connections come back over IPsec (when an SA is up on the host) instead
    /// of disappearing.
    #[serde(default)]
    pub reconnect_after_reset: bool,
    /// Bytes a migration transfers (progress reports).
    #[serde(default)]
    pub migration_bytes: Option<u64>,
    /// Poll interval the walker should use for `route.check` against this double, in ms.
    #[serde(default)]
    pub route_poll_interval_ms: Option<u64>,
}

/// A call that fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Operation name (`hypervisor.migrate`, `network.block`, ...), or `*` for any mutating call.
    pub call: String,
    /// Only the n-th matching call fails (1-based); every matching call when absent.
    #[serde(default)]
    pub nth: Option<u64>,
    /// Only calls on this target (host id, or `core:<env>`).
    #[serde(default)]
    pub target: Option<String>,
    /// Fail before the effect (default) or after it (the effect happened, the reply was lost).
    #[serde(default)]
    pub when: FaultWhen,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultWhen {
    #[default]
    Before,
    After,
}

/// A call that takes time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delay {
    /// Operation name or `*` for every call.
    pub call: String,
    pub ms: u64,
}

/// When a routing core learns a prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Convergence {
    pub core: String,
    pub prefix: Ipv4Net,
    /// Learned on this poll (1-based); never when absent.
    #[serde(default)]
    pub after_polls: Option<u32>,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub seq: u64,
    pub op: String,
    pub target: String,
    pub mutating: bool,
    pub args: serde_json::Value,
    /// `ok`, or the error message.
    pub result: String,
}

#[derive(Default)]
struct Inner {
    observed: Observed,
    config: DoubleConfig,
    calls: Vec<Call>,
    counts: HashMap<String, u64>,
    mutations: u64,
    steps: u64,
    polls: HashMap<(String, Ipv4Net), u32>,
    /// Key fingerprints of loaded PSKs, per (host, connection); never the key itself.
    psk: HashMap<(HostId, String), [u8; 32]>,
}

/// The landscape test double. See the module documentation.
pub struct LandscapeDouble {
    inner: Mutex<Inner>,
    path: Option<PathBuf>,
}

/// Why the double's files could not be used.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum DoubleError {
    #[error("cannot use the test double file {path}: {reason}")]
    #[diagnostic(code(smig::double::file))]
    File { path: String, reason: String },
    #[error("the test double configuration in {origin} is invalid: {reason}")]
    #[diagnostic(code(smig::double::config))]
    Config { origin: String, reason: String },
}

impl LandscapeDouble {
    /// An in-memory double.
    pub fn new(observed: Observed) -> Self {
        LandscapeDouble {
            inner: Mutex::new(Inner {
                observed,
                ..Default::default()
            }),
            path: None,
        }
    }

    /// A file-backed double: reads the snapshot at `path`, its sidecar `<path>.double.json`
    /// if present and the `SMIG_DOUBLE` variable if set; saves back after every mutation.
    pub fn load(path: &Path) -> Result<Self, DoubleError> {
        let observed = crate::discover::snapshot::Snapshot::new(path)
            .read()
            .map_err(|e| DoubleError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let sidecar = sidecar_path(path, "double.json");
        let mut config = DoubleConfig::default();
        if sidecar.exists() {
            let text = std::fs::read_to_string(&sidecar).map_err(|e| DoubleError::File {
                path: sidecar.display().to_string(),
                reason: e.to_string(),
            })?;
            config = serde_json::from_str(&text).map_err(|e| DoubleError::Config {
                origin: sidecar.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        if let Ok(text) = std::env::var(CONFIG_ENV) {
            config = serde_json::from_str(&text).map_err(|e| DoubleError::Config {
                origin: format!("${CONFIG_ENV}"),
                reason: e.to_string(),
            })?;
        }
        let double = LandscapeDouble::new(observed);
        double.set_config(config);
        Ok(LandscapeDouble {
            path: Some(path.to_path_buf()),
            ..double
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock is a bug in the double itself; keep going with the data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_config(&self, config: DoubleConfig) {
        self.lock().config = config;
    }
    pub fn config(&self) -> DoubleConfig {
        self.lock().config.clone()
    }
    /// The landscape as it is now.
    pub fn observed(&self) -> Observed {
        self.lock().observed.clone()
    }
    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }
    /// The mutating calls so far.
    pub fn mutating_calls(&self) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.mutating)
            .cloned()
            .collect()
    }
    /// Forgets the recorded calls and the per-operation counters.
    pub fn clear_calls(&self) {
        let mut g = self.lock();
        g.calls.clear();
        g.counts.clear();
        g.mutations = 0;
    }

    /// Tells the double a plan step finished; aborts the process after the configured number.
    pub fn step_finished(&self) {
        let mut g = self.lock();
        g.steps += 1;
        if g.config.abort_after_steps.is_some_and(|k| g.steps >= k) {
            let _ =
                std::io::stderr().write_all(b"test double: aborting after the configured step\n");
            std::process::abort();
        }
    }

    fn save(&self, observed: &Observed) -> DriverResult<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(observed)
            .map_err(|e| DriverError::failed("double.save", path.display(), e))?;
        crate::state::atomic::write_atomic(path, format!("{text}\n").as_bytes())
            .map_err(|e| DriverError::failed("double.save", path.display(), e))
    }

    fn log_call(&self, call: &Call) {
        let Some(path) = &self.path else { return };
        let Ok(line) = serde_json::to_string(call) else {
            return;
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(sidecar_path(path, "calls.jsonl"))
        {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Runs one call: records it, applies delays and faults, runs `effect` on the landscape,
    /// saves it when it changed.
    async fn call<T>(
        &self,
        op: &str,
        target: &str,
        args: serde_json::Value,
        mutating: bool,
        effect: impl FnOnce(&mut Inner) -> DriverResult<T>,
    ) -> DriverResult<T> {
        let (delay, fault, seq) = {
            let mut g = self.lock();
            let n = {
                let c = g.counts.entry(op.to_string()).or_insert(0);
                *c += 1;
                *c
            };
            if mutating {
                g.mutations += 1;
            }
            let mutations = g.mutations;
            let delay: u64 = g
                .config
                .delays
                .iter()
                // A migration's own delay is its transfer time, spent (abortably) in migrate.
                .filter(|d| d.call == "*" || (d.call == op && op != MIGRATE))
                .map(|d| d.ms)
                .sum();
            let fault = g
                .config
                .faults
                .iter()
                .find(|f| {
                    let op_match = f.call == op || (f.call == "*" && mutating);
                    let count = if f.call == "*" { mutations } else { n };
                    op_match
                        && f.nth.is_none_or(|k| k == count)
                        && f.target.as_deref().is_none_or(|t| t == target)
                })
                .cloned();
            let seq = g.calls.len() as u64;
            g.calls.push(Call {
                seq,
                op: op.to_string(),
                target: target.to_string(),
                mutating,
                args,
                result: "pending".into(),
            });
            (delay, fault, seq)
        };
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let injected = |f: &Fault| {
            DriverError::failed(
                op,
                target,
                f.message
                    .clone()
                    .unwrap_or_else(|| "fault injected by the test double".into()),
            )
        };
        let result = {
            let mut g = self.lock();
            let result = match &fault {
                Some(f) if f.when == FaultWhen::Before => Err(injected(f)),
                _ => {
                    let r = effect(&mut g);
                    match (&fault, r) {
                        (Some(f), Ok(_)) => Err(injected(f)),
                        (_, r) => r,
                    }
                }
            };
            let text = match &result {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            };
            if let Some(c) = g.calls.get_mut(seq as usize) {
                c.result = text;
            }
            let abort = mutating && g.config.abort_after_calls.is_some_and(|k| g.mutations >= k);
            // Logged and saved under the lock: the file always holds the latest landscape.
            if let Some(call) = g.calls.get(seq as usize) {
                self.log_call(call);
            }
            if mutating {
                self.save(&g.observed)?;
            }
            drop(g);
            if abort {
                let _ = std::io::stderr()
                    .write_all(b"test double: aborting after the configured call\n");
                std::process::abort();
            }
            result
        };
        result
    }
}

fn sidecar_path(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

fn core_key(env: &str) -> String {
    format!("core:{env}")
}

fn target_name(at: &Target) -> String {
    match at {
        Target::Host(h) => h.to_string(),
        Target::RoutingCore(env) => core_key(env),
    }
}

fn host_mut<'a>(
    o: &'a mut Observed,
    op: &str,
    host: &HostId,
) -> DriverResult<&'a mut crate::model::ObservedHost> {
    o.hosts
        .get_mut(host)
        .ok_or_else(|| DriverError::Unreachable {
            op: op.into(),
            target: host.to_string(),
            reason: "no such host in the test double's landscape".into(),
        })
}

fn tunnels_mut<'a>(
    o: &'a mut Observed,
    op: &str,
    at: &Target,
) -> DriverResult<&'a mut Vec<Tunnel>> {
    match at {
        Target::Host(h) => Ok(&mut host_mut(o, op, h)?.tunnels),
        Target::RoutingCore(env) => o
            .routing_cores
            .get_mut(env.as_str())
            .map(|c| &mut c.tunnels)
            .ok_or_else(|| DriverError::Unreachable {
                op: op.into(),
                target: core_key(env),
                reason: "no such routing core in the test double's landscape".into(),
            }),
    }
}

fn domain_mut<'a>(
    o: &'a mut Observed,
    op: &str,
    host: &HostId,
    domain: &str,
) -> DriverResult<&'a mut Domain> {
    host_mut(o, op, host)?
        .domains
        .get_mut(domain)
        .ok_or_else(|| DriverError::failed(op, host, format!("domain {domain} is not defined")))
}

fn args(v: impl Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

#[async_trait::async_trait]
impl Hypervisor for LandscapeDouble {
    async fn domains(&self, host: &HostId) -> DriverResult<BTreeMap<Name, Domain>> {
        self.call("hypervisor.domains", &host.0, args(()), false, |g| {
            Ok(host_mut(&mut g.observed, "hypervisor.domains", host)?
                .domains
                .clone())
        })
        .await
    }

    async fn domain(&self, host: &HostId, domain: &str) -> DriverResult<Option<Domain>> {
        self.call("hypervisor.domain", &host.0, args(domain), false, |g| {
            Ok(host_mut(&mut g.observed, "hypervisor.domain", host)?
                .domains
                .get(domain)
                .cloned())
        })
        .await
    }

    async fn define(&self, host: &HostId, domain: &str, xml: &str) -> DriverResult<()> {
        let a = serde_json::json!({"domain": domain, "xml_bytes": xml.len()});
        self.call("hypervisor.define", &host.0, a, true, |g| {
            host_mut(&mut g.observed, "hypervisor.define", host)?
                .domains
                .entry(Name::from(domain))
                .or_insert(Domain {
                    state: DomainState::ShutOff,
                    persistent: true,
                    nic_link_up: None,
                });
            Ok(())
        })
        .await
    }

    async fn start(&self, host: &HostId, domain: &str) -> DriverResult<()> {
        self.call("hypervisor.start", &host.0, args(domain), true, |g| {
            let op = "hypervisor.start";
            let elsewhere = g.observed.placements(domain).find(|(h, d)| {
                *h != host && matches!(d.state, DomainState::Running | DomainState::Paused)
            });
            if let Some((other, _)) = elsewhere {
                return Err(DriverError::failed(
                    op,
                    host,
                    format!("domain {domain} is already active on {other}"),
                ));
            }
            let d = domain_mut(&mut g.observed, op, host, domain)?;
            match d.state {
                DomainState::ShutOff => d.state = DomainState::Running,
                DomainState::Running => {}
                DomainState::Paused => {
                    return Err(DriverError::failed(
                        op,
                        host,
                        format!("domain {domain} is paused, not shut off"),
                    ))
                }
            }
            Ok(())
        })
        .await
    }

    async fn shutdown(&self, host: &HostId, domain: &str) -> DriverResult<()> {
        self.call("hypervisor.shutdown", &host.0, args(domain), true, |g| {
            let h = host_mut(&mut g.observed, "hypervisor.shutdown", host)?;
            match h.domains.get_mut(domain) {
                None => Err(DriverError::failed(
                    "hypervisor.shutdown",
                    host,
                    format!("domain {domain} is not defined"),
                )),
                Some(d) if !d.persistent => {
                    // A transient domain disappears when it stops.
                    h.domains.remove(domain);
                    Ok(())
                }
                Some(d) => {
                    d.state = DomainState::ShutOff;
                    Ok(())
                }
            }
        })
        .await
    }

    async fn pause(&self, host: &HostId, domain: &str) -> DriverResult<()> {
        self.call("hypervisor.pause", &host.0, args(domain), true, |g| {
            let op = "hypervisor.pause";
            let d = domain_mut(&mut g.observed, op, host, domain)?;
            match d.state {
                DomainState::Running | DomainState::Paused => {
                    d.state = DomainState::Paused;
                    Ok(())
                }
                DomainState::ShutOff => Err(DriverError::failed(
                    op,
                    host,
                    format!("domain {domain} is not running"),
                )),
            }
        })
        .await
    }

    async fn resume(&self, host: &HostId, domain: &str) -> DriverResult<()> {
        self.call("hypervisor.resume", &host.0, args(domain), true, |g| {
            let op = "hypervisor.resume";
            let d = domain_mut(&mut g.observed, op, host, domain)?;
            match d.state {
                DomainState::Running | DomainState::Paused => {
                    d.state = DomainState::Running;
                    Ok(())
                }
                DomainState::ShutOff => Err(DriverError::failed(
                    op,
                    host,
                    format!("domain {domain} is not running"),
                )),
            }
        })
        .await
    }

    async fn set_link(&self, host: &HostId, domain: &str, up: bool) -> DriverResult<()> {
        let a = serde_json::json!({"domain": domain, "up": up});
        self.call("hypervisor.set_link", &host.0, a, true, |g| {
            domain_mut(&mut g.observed, "hypervisor.set_link", host, domain)?.nic_link_up =
                Some(up);
            Ok(())
        })
        .await
    }

    async fn migrate(
        &self,
        request: &MigrationRequest,
        progress: ProgressSink,
        mut abort: AbortSignal,
    ) -> DriverResult<()> {
        let op = MIGRATE;
        let (total, transfer_ms) = {
            let g = self.lock();
            let ms: u64 = g
                .config
                .delays
                .iter()
                .filter(|d| d.call == op)
                .map(|d| d.ms)
                .sum();
            (g.config.migration_bytes.unwrap_or(64 << 20), ms)
        };
        // The transfer: progress in quarters; an abort before the switchover leaves the
        // domain on the source, as libvirt's abort job does.
        for quarter in 0..4u64 {
            if abort.is_aborted() {
                self.call(op, &request.from.0, args(request), true, |_| {
                    Err::<(), _>(DriverError::Aborted {
                        op: op.into(),
                        target: request.from.to_string(),
                    })
                })
                .await?;
            }
            let done = total * quarter / 4;
            progress(MigrationProgress {
                data_processed: done,
                data_total: total,
                data_remaining: total - done,
            });
            tokio::select! {
                biased;
                _ = abort.aborted() => {}
                _ = tokio::time::sleep(Duration::from_millis(transfer_ms / 4)) => {}
            }
        }
        if abort.is_aborted() {
            return self
                .call(op, &request.from.0, args(request), true, |_| {
                    Err(DriverError::Aborted {
                        op: op.into(),
                        target: request.from.to_string(),
                    })
                })
                .await;
        }
        let result = self
            .call(op, &request.from.0, args(request), true, |g| {
                let o = &mut g.observed;
                if !o.hosts.contains_key(&request.to) {
                    return Err(DriverError::Unreachable {
                        op: op.into(),
                        target: request.to.to_string(),
                        reason: "no such host in the test double's landscape".into(),
                    });
                }
                let on_source = o
                    .hosts
                    .get(&request.from)
                    .and_then(|h| h.domains.get(request.domain.as_str()))
                    .cloned();
                let on_target = o.hosts[&request.to]
                    .domains
                    .contains_key(request.domain.as_str());
                let Some(mut d) = on_source else {
                    if on_target {
                        return Ok(()); // already migrated
                    }
                    return Err(DriverError::failed(
                        op,
                        &request.from,
                        format!("domain {} is not defined", request.domain),
                    ));
                };
                if on_target {
                    return Err(DriverError::failed(
                        op,
                        &request.to,
                        format!("domain {} already exists on the target", request.domain),
                    ));
                }
                match (request.mode, d.state) {
                    (MigrationMode::Live, DomainState::ShutOff) => {
                        return Err(DriverError::failed(
                            op,
                            &request.from,
                            format!(
                                "domain {} is not running: live migration needs it active",
                                request.domain
                            ),
                        ))
                    }
                    (MigrationMode::Cold, DomainState::Running | DomainState::Paused) => {
                        return Err(DriverError::failed(
                            op,
                            &request.from,
                            format!(
                                "domain {} is active: an offline migration needs it shut off",
                                request.domain
                            ),
                        ))
                    }
                    _ => {}
                }
                if request.paused && d.state == DomainState::Running {
                    d.state = DomainState::Paused;
                }
                d.persistent = true;
                if let Some(h) = o.hosts.get_mut(&request.from) {
                    h.domains.remove(request.domain.as_str());
                }
                if let Some(h) = o.hosts.get_mut(&request.to) {
                    h.domains.insert(Name::from(request.domain.as_str()), d);
                }
                Ok(())
            })
            .await;
        if result.is_ok() {
            progress(MigrationProgress {
                data_processed: total,
                data_total: total,
                data_remaining: 0,
            });
        }
        result
    }

    async fn job_info(
        &self,
        host: &HostId,
        domain: &str,
    ) -> DriverResult<Option<MigrationProgress>> {
        self.call("hypervisor.job_info", &host.0, args(domain), false, |g| {
            domain_mut(&mut g.observed, "hypervisor.job_info", host, domain).map(|_| None)
        })
        .await
    }
}

#[async_trait::async_trait]
impl HostNetwork for LandscapeDouble {
    async fn block_rules(&self, host: &HostId) -> DriverResult<Vec<BlockRule>> {
        self.call("network.block_rules", &host.0, args(()), false, |g| {
            Ok(host_mut(&mut g.observed, "network.block_rules", host)?
                .block_rules
                .clone())
        })
        .await
    }

    async fn block(&self, host: &HostId, rule: &BlockRule) -> DriverResult<()> {
        self.call("network.block", &host.0, args(rule), true, |g| {
            let h = host_mut(&mut g.observed, "network.block", host)?;
            h.block_rules.retain(|r| r.vm != rule.vm);
            h.block_rules.push(rule.clone());
            Ok(())
        })
        .await
    }

    async fn unblock(&self, host: &HostId, vm: &str, secure_only: bool) -> DriverResult<()> {
        let a = serde_json::json!({"vm": vm, "secure_only": secure_only});
        self.call("network.unblock", &host.0, a, true, |g| {
            host_mut(&mut g.observed, "network.unblock", host)?
                .block_rules
                .retain(|r| r.vm != vm);
            Ok(())
        })
        .await
    }

    async fn vm_route(&self, host: &HostId, address: Ipv4Addr, present: bool) -> DriverResult<()> {
        let a = serde_json::json!({"address": address, "present": present});
        self.call("network.vm_route", &host.0, a, true, |g| {
            host_mut(&mut g.observed, "network.vm_route", host).map(|_| ())
        })
        .await
    }

    async fn tunnels(&self, at: &Target) -> DriverResult<Vec<Tunnel>> {
        self.call("network.tunnels", &target_name(at), args(()), false, |g| {
            Ok(tunnels_mut(&mut g.observed, "network.tunnels", at)?.clone())
        })
        .await
    }

    async fn tunnel_add(&self, at: &Target, spec: &TunnelSpec) -> DriverResult<()> {
        self.call(
            "network.tunnel_add",
            &target_name(at),
            args(spec),
            true,
            |g| {
                let t = tunnels_mut(&mut g.observed, "network.tunnel_add", at)?;
                if !t.iter().any(|t| t.subnet == spec.subnet) {
                    t.push(Tunnel {
                        subnet: spec.subnet.clone(),
                        remote: spec.remote.clone(),
                    });
                }
                if let Target::RoutingCore(env) = at {
                    if let Some(core) = g.observed.routing_cores.get_mut(env.as_str()) {
                        let dev = format!("smig-{}", spec.subnet);
                        if !core
                            .routes
                            .iter()
                            .any(|r| r.via_smig_tunnel && r.prefix == spec.cidr)
                        {
                            core.routes.push(Route {
                                prefix: spec.cidr,
                                via: None,
                                dev: Some(dev),
                                via_smig_tunnel: true,
                            });
                        }
                    }
                }
                Ok(())
            },
        )
        .await
    }

    async fn tunnel_remove(&self, at: &Target, subnet: &str) -> DriverResult<()> {
        self.call(
            "network.tunnel_remove",
            &target_name(at),
            args(subnet),
            true,
            |g| {
                tunnels_mut(&mut g.observed, "network.tunnel_remove", at)?
                    .retain(|t| t.subnet != subnet);
                if let Target::RoutingCore(env) = at {
                    if let Some(core) = g.observed.routing_cores.get_mut(env.as_str()) {
                        let dev = format!("smig-{subnet}");
                        core.routes
                            .retain(|r| !(r.via_smig_tunnel && r.dev.as_deref() == Some(&dev)));
                    }
                }
                Ok(())
            },
        )
        .await
    }

    async fn connections(&self, host: &HostId, address: Ipv4Addr) -> DriverResult<Vec<Connection>> {
        self.call("network.connections", &host.0, args(address), false, |g| {
            host_mut(&mut g.observed, "network.connections", host)?;
            Ok(g.observed
                .connections
                .values()
                .flatten()
                .filter(|c| *c.local.ip() == address)
                .cloned()
                .collect())
        })
        .await
    }

    /// The double keeps connections per VM, not per host: one read per address, through
    /// the first host.
    async fn connections_of(
        &self,
        hosts: &[HostId],
        addresses: &[Ipv4Addr],
    ) -> DriverResult<Vec<Vec<Connection>>> {
        let Some(first) = hosts.first() else {
            return Ok(addresses.iter().map(|_| Vec::new()).collect());
        };
        futures_util::future::try_join_all(
            addresses
                .iter()
                .map(|a| HostNetwork::connections(self, first, *a)),
        )
        .await
    }

    async fn reset_connections(
        &self,
        host: &HostId,
        address: Ipv4Addr,
        connections: &[Connection],
    ) -> DriverResult<()> {
        let a = serde_json::json!({"address": address, "connections": connections});
        self.call("network.reset_connections", &host.0, a, true, |g| {
            let sa_up = host_mut(&mut g.observed, "network.reset_connections", host)?
                .ipsec
                .iter()
                .any(|c| c.sa_up);
            let reconnect = g.config.reconnect_after_reset && sa_up;
            for conns in g.observed.connections.values_mut() {
                if reconnect {
                    for c in conns.iter_mut().filter(|c| connections.contains(c)) {
                        c.ipsec = true;
                    }
                } else {
                    conns.retain(|c| !connections.contains(c));
                }
            }
            g.observed.connections.retain(|_, v| !v.is_empty());
            Ok(())
        })
        .await
    }

    async fn overlay_add(&self, a: &HostId, b: &HostId, subnet: &str) -> DriverResult<()> {
        let x = serde_json::json!({"b": b, "subnet": subnet});
        self.call("network.overlay_add", &a.0, x, true, |g| {
            host_mut(&mut g.observed, "network.overlay_add", a)?;
            host_mut(&mut g.observed, "network.overlay_add", b).map(|_| ())
        })
        .await
    }

    async fn overlay_remove(&self, a: &HostId, b: &HostId, subnet: &str) -> DriverResult<()> {
        let x = serde_json::json!({"b": b, "subnet": subnet});
        self.call("network.overlay_remove", &a.0, x, true, |g| {
            host_mut(&mut g.observed, "network.overlay_remove", a)?;
            host_mut(&mut g.observed, "network.overlay_remove", b).map(|_| ())
        })
        .await
    }
}

#[async_trait::async_trait]
impl Ipsec for LandscapeDouble {
    async fn connections(&self, host: &HostId) -> DriverResult<Vec<IpsecConnection>> {
        self.call("ipsec.connections", &host.0, args(()), false, |g| {
            Ok(host_mut(&mut g.observed, "ipsec.connections", host)?
                .ipsec
                .clone())
        })
        .await
    }

    async fn load(&self, host: &HostId, config: &IpsecConfig) -> DriverResult<()> {
        // `config` serializes its credential as "(sensitive)": the call log never holds a key.
        self.call("ipsec.load", &host.0, args(config), true, |g| {
            let h = host_mut(&mut g.observed, "ipsec.load", host)?;
            let sa_up = h
                .ipsec
                .iter()
                .find(|c| c.name == config.name)
                .is_some_and(|c| c.sa_up);
            h.ipsec.retain(|c| c.name != config.name);
            h.ipsec.push(IpsecConnection {
                name: config.name.clone(),
                link: config.link.clone(),
                remote: config.remote.clone(),
                sa_up,
                bytes_in: 0,
                bytes_out: 0,
            });
            if let IpsecCredential::Psk(s) = &config.credential {
                let digest: [u8; 32] = Sha256::digest(s.expose().as_bytes()).into();
                g.psk.insert((host.clone(), config.name.clone()), digest);
            }
            Ok(())
        })
        .await
    }

    async fn initiate(&self, host: &HostId, name: &str) -> DriverResult<()> {
        self.call("ipsec.initiate", &host.0, args(name), true, |g| {
            let op = "ipsec.initiate";
            let local = host_mut(&mut g.observed, op, host)?
                .ipsec
                .iter()
                .find(|c| c.name == name)
                .cloned()
                .ok_or_else(|| {
                    DriverError::failed(op, host, format!("no connection {name} loaded"))
                })?;
            let peer_loaded = g
                .observed
                .hosts
                .get(&local.remote)
                .is_some_and(|h| h.ipsec.iter().any(|c| c.name == name));
            if !peer_loaded {
                return Err(DriverError::failed(
                    op,
                    host,
                    format!(
                        "IKE with {} failed: the peer has no matching connection",
                        local.remote
                    ),
                ));
            }
            let a = g.psk.get(&(host.clone(), name.to_string()));
            let b = g.psk.get(&(local.remote.clone(), name.to_string()));
            if let (Some(a), Some(b)) = (a, b) {
                if a != b {
                    return Err(DriverError::failed(
                        op,
                        host,
                        format!("IKE with {} failed: authentication failed", local.remote),
                    ));
                }
            }
            for h in [host, &local.remote] {
                if let Some(hh) = g.observed.hosts.get_mut(h) {
                    for c in hh.ipsec.iter_mut().filter(|c| c.name == name) {
                        c.sa_up = true;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn unload(&self, host: &HostId, name: &str) -> DriverResult<()> {
        self.call("ipsec.unload", &host.0, args(name), true, |g| {
            let h = host_mut(&mut g.observed, "ipsec.unload", host)?;
            let removed: Vec<_> = h.ipsec.iter().filter(|c| c.name == name).cloned().collect();
            h.ipsec.retain(|c| c.name != name);
            g.psk.remove(&(host.clone(), name.to_string()));
            // Terminating the SA takes it down on the peer too.
            for c in removed {
                if let Some(peer) = g.observed.hosts.get_mut(&c.remote) {
                    for pc in peer.ipsec.iter_mut().filter(|pc| pc.name == name) {
                        pc.sa_up = false;
                    }
                }
            }
            Ok(())
        })
        .await
    }
}

#[async_trait::async_trait]
impl RoutingCore for LandscapeDouble {
    async fn routes(&self, core: &str) -> DriverResult<Vec<Route>> {
        self.call("routing.routes", &core_key(core), args(()), false, |g| {
            let Inner {
                observed,
                config,
                polls,
                ..
            } = g;
            let c =
                observed
                    .routing_cores
                    .get_mut(core)
                    .ok_or_else(|| DriverError::Unreachable {
                        op: "routing.routes".into(),
                        target: core_key(core),
                        reason: "no such routing core in the test double's landscape".into(),
                    })?;
            let tunnelled: Vec<Ipv4Net> = c
                .routes
                .iter()
                .filter(|r| r.via_smig_tunnel)
                .map(|r| r.prefix)
                .collect();
            for prefix in tunnelled {
                let learned = c.routes.iter().any(|r| r.learned_for(&prefix));
                if learned {
                    continue;
                }
                let n = polls.entry((core.to_string(), prefix)).or_insert(0);
                *n += 1;
                let after = config
                    .routes
                    .iter()
                    .find(|r| r.core == core && r.prefix == prefix)
                    .map_or(Some(1), |r| r.after_polls);
                if after.is_some_and(|k| *n >= k) {
                    c.routes.push(Route {
                        prefix,
                        // A next hop: what a routing protocol installs (RouteLearned needs one).
                        via: Some(Ipv4Addr::new(192, 0, 2, 1)),
                        dev: Some("learned".into()),
                        via_smig_tunnel: false,
                    });
                }
            }
            Ok(c.routes.clone())
        })
        .await
    }
}

#[async_trait::async_trait]
impl Discover for LandscapeDouble {
    async fn discover(&self, _landscape: &Landscape) -> Result<Observed, DiscoverError> {
        self.call("discover", "*", args(()), false, |g| Ok(g.observed.clone()))
            .await
            .map_err(|e| DiscoverError::Unreachable {
                host: "test double".into(),
                reason: e.to_string(),
            })
    }
}
