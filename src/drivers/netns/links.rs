//! Links, addresses and routes of the current network namespace over rtnetlink. Called on a
//! [`super::namespace::NamespaceThread`], inside its runtime.

use super::nft::{LINK_PREFIX, VXLAN_PORT};
use futures_util::stream::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkExtentMask, LinkInfo,
};
use rtnetlink::packet_route::neighbour::{NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// A link as smig needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEntry {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    pub controller: Option<u32>,
    pub vxlan: Option<VxlanInfo>,
    /// A tun/tap device: on a bridge, a guest's NIC.
    pub tap: bool,
}

/// VXLAN parameters of a link.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanInfo {
    pub vni: u32,
    pub local: Option<Ipv4Addr>,
    pub remote: Option<Ipv4Addr>,
    pub port: Option<u16>,
}

/// A main-table IPv4 route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub prefix: Ipv4Net,
    pub via: Option<Ipv4Addr>,
    pub dev: Option<String>,
    pub kind: String,
}

fn nl_err(what: &str, e: rtnetlink::Error) -> String {
    format!("{what}: {e}")
}

/// Opens an rtnetlink connection in the current namespace (spawned on the current runtime).
pub fn connect() -> Result<Handle, String> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| format!("rtnetlink: {e}"))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Every link.
pub async fn links(h: &Handle) -> Result<Vec<LinkEntry>, String> {
    let mut out = Vec::new();
    let mut request = h.link().get();
    // No statistics: smig reads none, and decoding them is much of a dump's cost.
    request
        .message_mut()
        .attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let mut s = request.execute();
    while let Some(m) = s.try_next().await.map_err(|e| nl_err("link dump", e))? {
        let mut l = LinkEntry {
            index: m.header.index,
            name: String::new(),
            alias: None,
            controller: None,
            vxlan: None,
            tap: false,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::IfAlias(n) => l.alias = Some(n.clone()),
                LinkAttribute::Controller(c) => l.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    l.tap = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Tun)));
                    let is_vxlan = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
                    if is_vxlan {
                        let mut v = VxlanInfo::default();
                        for i in infos {
                            if let LinkInfo::Data(InfoData::Vxlan(attrs)) = i {
                                for x in attrs {
                                    match x {
                                        InfoVxlan::Id(id) => v.vni = *id,
                                        InfoVxlan::Local(a) => v.local = Some(*a),
                                        InfoVxlan::Group(a) => v.remote = Some(*a),
                                        InfoVxlan::Port(p) => v.port = Some(*p),
                                        _ => {}
                                    }
                                }
                            }
                        }
                        l.vxlan = Some(v);
                    }
                }
                _ => {}
            }
        }
        out.push(l);
    }
    Ok(out)
}

/// The MAC addresses a bridge learned on each of `ports` (link indices), from the bridge
/// forwarding database; the ports' own (permanent) entries are left out.
pub async fn learned_macs(h: &Handle, ports: &[u32]) -> Result<Vec<(u32, [u8; 6])>, String> {
    let mut out = Vec::new();
    let mut s = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute();
    while let Some(m) = s.try_next().await.map_err(|e| nl_err("fdb dump", e))? {
        if !ports.contains(&m.header.ifindex) || m.header.state == NeighbourState::Permanent {
            continue;
        }
        for a in &m.attributes {
            if let NeighbourAttribute::LinkLayerAddress(mac) = a {
                if let Ok(mac) = <[u8; 6]>::try_from(mac.as_slice()) {
                    out.push((m.header.ifindex, mac));
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The host's overlay endpoint address: the /32 on `lo` other than loopback.
pub async fn overlay_address(h: &Handle) -> Result<Option<Ipv4Addr>, String> {
    let lo = links(h)
        .await?
        .into_iter()
        .find(|l| l.name == "lo")
        .map(|l| l.index);
    let Some(lo) = lo else { return Ok(None) };
    let mut s = h.address().get().set_link_index_filter(lo).execute();
    while let Some(m) = s.try_next().await.map_err(|e| nl_err("address dump", e))? {
        if m.header.prefix_len != 32 {
            continue;
        }
        for a in &m.attributes {
            if let AddressAttribute::Local(IpAddr::V4(a))
            | AddressAttribute::Address(IpAddr::V4(a)) = a
            {
                if !a.is_loopback() {
                    return Ok(Some(*a));
                }
            }
        }
    }
    Ok(None)
}

/// The main table's IPv4 routes, with device names.
pub async fn routes(h: &Handle) -> Result<Vec<RouteEntry>, String> {
    let names: BTreeMap<u32, String> = links(h)
        .await?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    let mut out = Vec::new();
    let mut s = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(m) = s.try_next().await.map_err(|e| nl_err("route dump", e))? {
        let mut table = u32::from(m.header.table);
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut via = None;
        let mut dev = None;
        for a in &m.attributes {
            match a {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => via = Some(*g),
                RouteAttribute::Oif(i) => dev = names.get(i).cloned(),
                _ => {}
            }
        }
        if table != 254 {
            continue;
        }
        let Ok(prefix) = Ipv4Net::new(dst, m.header.destination_prefix_length) else {
            continue;
        };
        let kind = match m.header.kind {
            RouteType::Unicast => "unicast".to_string(),
            other => format!("{other:?}").to_lowercase(),
        };
        out.push(RouteEntry {
            prefix,
            via,
            dev,
            kind,
        });
    }
    Ok(out)
}

/// A smig link's name: `smx-` and 10 hex digits of a hash of what it is for (Linux allows 15
/// characters).
pub fn link_name(purpose: &str) -> String {
    let d = Sha256::digest(purpose.as_bytes());
    format!("{LINK_PREFIX}{}", &hex::encode(d)[..10])
}

/// The VNI both ends derive for the same purpose (24 bits, away from the lab's 10-102).
pub fn vni(purpose: &str) -> u32 {
    let d = Sha256::digest(purpose.as_bytes());
    let v = u32::from_be_bytes([0, d[0], d[1], d[2]]);
    v.max(4096)
}

/// The MAC address of a smig link: locally administered, unicast, `fe:ff:` and 4 bytes of a
/// hash of its name and local address (both ends of a path share the name; their MACs must
/// differ, or each bridge would take the other end's frames for its own). A Linux bridge whose address was never set takes the lowest MAC of its
/// ports, so a port with a lower MAC would change the bridge's own address when smig adds it
/// — and with it the subnet gateway's MAC on a routing core, which its guests keep in their
/// ARP caches. Above every ordinary port MAC (libvirt's taps are `fe:54:..`), smig's link
/// leaves the bridge's address alone.
pub fn high_mac(name: &str, local: Ipv4Addr) -> [u8; 6] {
    let d = Sha256::digest(format!("{name} {local}").as_bytes());
    [0xfe, 0xff, d[0], d[1], d[2], d[3]]
}

/// What a VXLAN link smig makes looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub alias: String,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub remote: Ipv4Addr,
    pub bridge: String,
}

/// Creates the VXLAN link enslaved to its bridge and up; an identical link is left alone, a
/// different one with the same name is replaced.
pub async fn ensure_vxlan(h: &Handle, spec: &VxlanSpec) -> Result<(), String> {
    let all = links(h).await?;
    let bridge = all
        .iter()
        .find(|l| l.name == spec.bridge)
        .ok_or_else(|| format!("bridge {} does not exist", spec.bridge))?
        .index;
    if let Some(l) = all.iter().find(|l| l.name == spec.name) {
        let same = l.vxlan.as_ref().is_some_and(|v| {
            v.vni == spec.vni && v.local == Some(spec.local) && v.remote == Some(spec.remote)
        }) && l.controller == Some(bridge)
            && l.alias.as_deref() == Some(spec.alias.as_str());
        if same {
            return Ok(());
        }
        h.link()
            .del(l.index)
            .execute()
            .await
            .map_err(|e| nl_err("delete stale link", e))?;
    }
    let msg = LinkVxlan::new(&spec.name, spec.vni)
        .address(high_mac(&spec.name, spec.local).to_vec())
        .local(spec.local)
        .remote(spec.remote)
        .port(VXLAN_PORT)
        .learning(true)
        .mtu(1500)
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| nl_err(&format!("add vxlan {}", spec.name), e))?;
    // Alias, bridge and state in a second message: the kernel ignores IFLA_IFALIAS on create.
    let index = links(h)
        .await?
        .into_iter()
        .find(|l| l.name == spec.name)
        .ok_or_else(|| format!("vxlan {} vanished after creation", spec.name))?
        .index;
    let set = LinkUnspec::new_with_index(index)
        .alias(spec.alias.clone())
        .controller(bridge)
        .up()
        .build();
    h.link()
        .set(set)
        .execute()
        .await
        .map_err(|e| nl_err(&format!("set up vxlan {}", spec.name), e))
}

/// Deletes the link if it exists.
pub async fn delete_link(h: &Handle, name: &str) -> Result<(), String> {
    if let Some(l) = links(h).await?.into_iter().find(|l| l.name == name) {
        h.link()
            .del(l.index)
            .execute()
            .await
            .map_err(|e| nl_err(&format!("delete link {name}"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_fit_linux_and_are_stable() {
        let a = link_name("tunnel app core:dc cloud.c1");
        assert_eq!(a.len(), 14);
        assert!(a.len() <= 15);
        assert!(a.starts_with("smx-"));
        assert_eq!(a, link_name("tunnel app core:dc cloud.c1"));
        assert_ne!(a, link_name("tunnel batch core:dc cloud.c1"));
    }

    #[test]
    fn link_macs_are_unicast_local_and_above_ordinary_ports() {
        let (a, b) = (Ipv4Addr::new(172, 31, 0, 1), Ipv4Addr::new(172, 31, 0, 21));
        let m = high_mac("smx-0123456789", a);
        assert_eq!(m[0] & 1, 0, "unicast");
        assert_eq!(m[0] & 2, 2, "locally administered");
        assert!(m > [0xfe, 0x54, 0, 0, 0, 0], "above libvirt's taps");
        assert_eq!(m, high_mac("smx-0123456789", a));
        assert_ne!(m, high_mac("smx-0123456789", b), "the two ends differ");
    }

    #[test]
    fn vnis_are_24_bit_and_clear_of_the_lab() {
        for p in ["a", "b", "tunnel app", "overlay x"] {
            let v = vni(p);
            assert!((4096..1 << 24).contains(&v), "{v}");
        }
    }
}
