//! Performing one action through the drivers. Secrets enter here only: an IPsec install takes
//! its key from the loaded configuration and hands it to the IPsec driver.

use crate::drivers::{
    AbortSignal, DriverError, Drivers, IpsecConfig, IpsecCredential, MigrationRequest,
    ProgressSink, TunnelSpec,
};
use crate::model::{ipsec_connection_name, BlockRule, IpsecAuth, Landscape, Observed};
use crate::plan::{Action, Fact, Target};
use std::time::{Duration, Instant};

/// What an action needs besides the drivers.
#[derive(Clone)]
pub struct ExecContext {
    pub drivers: Drivers,
    /// The loaded configuration: where IPsec keys come from.
    pub landscape: std::sync::Arc<Landscape>,
    /// Overrides the poll interval of `route.check` (the test double converges in polls).
    pub poll_interval: Option<Duration>,
}

/// Performs `action`. Every driver call is idempotent, so a repeated action is harmless.
/// `seen`: the landscape as read just before, through [`super::probe::action_queries`], when
/// there is such a reading.
pub async fn perform(
    ctx: &ExecContext,
    action: &Action,
    seen: Option<&Observed>,
    progress: ProgressSink,
    mut abort: AbortSignal,
) -> Result<(), DriverError> {
    let d = &ctx.drivers;
    match action {
        Action::Block {
            vm,
            host,
            address,
            peers,
            allow_ipsec,
        } => {
            let rule = BlockRule {
                vm: vm.to_string(),
                address: *address,
                peers: peers.clone(),
                allow_ipsec: *allow_ipsec,
            };
            d.network.block(host, &rule).await
        }
        Action::Unblock {
            vm,
            host,
            secure_only,
            ..
        } => d.network.unblock(host, vm, *secure_only).await,
        Action::Shutdown { domain, host, .. } => d.hypervisor.shutdown(host, domain).await,
        Action::Start { domain, host, .. } => d.hypervisor.start(host, domain).await,
        Action::Pause { domain, host, .. } => d.hypervisor.pause(host, domain).await,
        Action::Resume { domain, host, .. } => d.hypervisor.resume(host, domain).await,
        Action::Migrate {
            domain,
            from,
            to,
            to_uri,
            mode,
            tls,
            paused,
            max_downtime_ms,
            bandwidth_mibps,
            ..
        } => {
            let req = MigrationRequest {
                domain: domain.to_string(),
                from: from.clone(),
                to: to.clone(),
                to_uri: to_uri.to_string(),
                mode: *mode,
                tls: *tls,
                paused: *paused,
                max_downtime_ms: *max_downtime_ms,
                bandwidth_mibps: *bandwidth_mibps,
            };
            d.hypervisor.migrate(&req, progress, abort).await
        }
        Action::TunnelAdd {
            subnet,
            cidr,
            core,
            remote,
            remote_address,
        } => {
            let spec = TunnelSpec {
                subnet: subnet.to_string(),
                cidr: *cidr,
                remote: remote.to_string(),
                remote_address: *remote_address,
            };
            d.network
                .tunnel_add(&Target::RoutingCore(core.clone()), &spec)
                .await
        }
        Action::TunnelRemove { subnet, core, .. } => {
            d.network
                .tunnel_remove(&Target::RoutingCore(core.clone()), subnet)
                .await
        }
        Action::IpsecInstall {
            link,
            local,
            local_address,
            remote,
            remote_address,
            proposals,
            initiate,
        } => {
            let spec = ctx
                .landscape
                .secure_links
                .get(link.as_str())
                .ok_or_else(|| {
                    DriverError::failed(
                        "ipsec.install",
                        local,
                        format!("secure_link {link} is not in the loaded configuration"),
                    )
                })?;
            let credential = match &spec.ipsec.auth {
                IpsecAuth::Psk(s) => IpsecCredential::Psk(s.clone()),
                IpsecAuth::Cert { cert, key, ca } => IpsecCredential::Cert {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: ca.clone(),
                },
            };
            let name = ipsec_connection_name(link, local, remote);
            let config = IpsecConfig {
                name: name.clone(),
                link: link.to_string(),
                local: local.clone(),
                local_address: *local_address,
                remote: remote.clone(),
                remote_address: *remote_address,
                proposals: proposals.iter().map(|p| p.to_string()).collect(),
                credential,
            };
            // One end per step: the responder loads; the initiator loads and brings the SA up.
            // An initiator whose peer lost its end (a rollback re-installing a removed SA)
            // loads the peer's end as well, as the responder step would have; its own end loads
            // while the peer is asked.
            let peer_loaded = async {
                if !*initiate {
                    return Ok(true);
                }
                let peer = d.ipsec.connections(remote).await?;
                Ok::<_, DriverError>(peer.iter().any(|c| c.name == name))
            };
            let (peer_loaded, loaded) = tokio::join!(peer_loaded, d.ipsec.load(local, &config));
            if !peer_loaded? {
                let peer = IpsecConfig {
                    local: remote.clone(),
                    local_address: *remote_address,
                    remote: local.clone(),
                    remote_address: *local_address,
                    ..config.clone()
                };
                d.ipsec.load(remote, &peer).await?;
            }
            loaded?;
            if *initiate {
                d.ipsec.initiate(local, &name).await?;
            }
            Ok(())
        }
        Action::IpsecRemove {
            link,
            local,
            remote,
        } => {
            let name = ipsec_connection_name(link, local, remote);
            d.ipsec.unload(local, &name).await
        }
        Action::SecureConnections {
            vm,
            host,
            address,
            tls_ports,
        } => {
            // The check before the step read them (`probe::action_queries`).
            let conns = match seen {
                Some(o) => o.connections.get(vm.as_ref()).cloned().unwrap_or_default(),
                None => d.network.connections(host, *address).await?,
            };
            let unsecured: Vec<_> = conns
                .into_iter()
                .filter(|c| {
                    !c.ipsec
                        && !tls_ports.contains(&c.remote.port())
                        && !tls_ports.contains(&c.local.port())
                })
                .collect();
            if unsecured.is_empty() {
                return Ok(());
            }
            d.network
                .reset_connections(host, *address, &unsecured)
                .await
        }
        Action::RouteCheck {
            core,
            subnet,
            cidr,
            timeout_s,
            interval_s,
        } => {
            let learned = Fact::RouteLearned {
                core: core.clone(),
                subnet: subnet.clone(),
                cidr: *cidr,
            };
            let interval = ctx
                .poll_interval
                .unwrap_or(Duration::from_secs((*interval_s).max(1)));
            let start = Instant::now();
            let target = format!("{core}.routing_core");
            loop {
                let mut o = crate::model::Observed::empty();
                o.routing_cores.entry(core.to_string()).or_default().routes =
                    d.routing.routes(core).await?;
                if learned.holds(&o) {
                    return Ok(());
                }
                if start.elapsed() >= Duration::from_secs(*timeout_s) {
                    return Err(DriverError::Timeout {
                        op: "route.check".into(),
                        target,
                        seconds: *timeout_s,
                    });
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = abort.aborted() => {
                        return Err(DriverError::Aborted { op: "route.check".into(), target });
                    }
                }
            }
        }
        Action::Cleanup {
            vm,
            host,
            ipsec_links,
        } => {
            // The check before the step read both (`probe::action_queries`).
            let (rules, conns) = match seen.and_then(|o| o.hosts.get(host)) {
                Some(h) => (h.block_rules.clone(), h.ipsec.clone()),
                None => (
                    d.network.block_rules(host).await?,
                    d.ipsec.connections(host).await?,
                ),
            };
            if rules.iter().any(|r| &r.vm == vm) {
                d.network.unblock(host, vm, false).await?;
            }
            // This host's ends only: the other ends are steps of their own.
            for c in conns {
                if ipsec_links.iter().any(|l| *l == c.link) {
                    d.ipsec.unload(host, &c.name).await?;
                }
            }
            Ok(())
        }
    }
}
