//! Netfilter connection tracking of the current network namespace over ctnetlink (a raw
//! `NETLINK_NETFILTER` socket, [`super::nfnetlink`]): dump IPv4 entries, delete one. Blocking;
//! the socket's namespace is where it was opened.

use super::nfnetlink::{
    attrs, message, nested, push_attr, Socket, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use std::io;
use std::net::Ipv4Addr;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_MARK: u16 = 8;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const IPPROTO_ICMP: u8 = 1;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;

/// TCP conntrack state "established" (`TCP_CONNTRACK_ESTABLISHED`).
pub const TCP_ESTABLISHED: u8 = 3;

/// One direction's 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The source port; for ICMP, the echo identifier.
    pub sport: u16,
    /// The destination port; for ICMP, `type << 8 | code`.
    pub dport: u16,
}

/// A conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Option<Tuple>,
    pub mark: u32,
    /// TCP state, for TCP entries.
    pub tcp_state: Option<u8>,
}

fn parse_tuple(b: &[u8]) -> Option<Tuple> {
    let mut t = Tuple {
        proto: 0,
        src: Ipv4Addr::UNSPECIFIED,
        dst: Ipv4Addr::UNSPECIFIED,
        sport: 0,
        dport: 0,
    };
    let mut v4 = false;
    for (ty, v) in attrs(b) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, v) in attrs(v) {
                    if v.len() == 4 {
                        let a = Ipv4Addr::new(v[0], v[1], v[2], v[3]);
                        match ty {
                            CTA_IP_V4_SRC => {
                                t.src = a;
                                v4 = true
                            }
                            CTA_IP_V4_DST => t.dst = a,
                            _ => {}
                        }
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, v) in attrs(v) {
                    match (ty, v.len()) {
                        (CTA_PROTO_NUM, 1) => t.proto = v[0],
                        (CTA_PROTO_SRC_PORT, 2) => t.sport = u16::from_be_bytes([v[0], v[1]]),
                        (CTA_PROTO_DST_PORT, 2) => t.dport = u16::from_be_bytes([v[0], v[1]]),
                        (CTA_PROTO_ICMP_ID, 2) => t.sport = u16::from_be_bytes([v[0], v[1]]),
                        (CTA_PROTO_ICMP_TYPE, 1) => {
                            t.dport = (t.dport & 0xff) | u16::from(v[0]) << 8
                        }
                        (CTA_PROTO_ICMP_CODE, 1) => t.dport = (t.dport & 0xff00) | u16::from(v[0]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    v4.then_some(t)
}

/// Parses the attributes of one ctnetlink entry (after the `nfgenmsg` header).
pub fn parse_entry(b: &[u8]) -> Option<Entry> {
    let mut orig = None;
    let mut reply = None;
    let mut mark = 0;
    let mut tcp_state = None;
    for (ty, v) in attrs(b) {
        match ty {
            CTA_TUPLE_ORIG => orig = parse_tuple(v),
            CTA_TUPLE_REPLY => reply = parse_tuple(v),
            CTA_MARK if v.len() == 4 => mark = u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
            CTA_PROTOINFO => {
                for (ty, v) in attrs(v) {
                    if ty == CTA_PROTOINFO_TCP {
                        for (ty, v) in attrs(v) {
                            if ty == CTA_PROTOINFO_TCP_STATE && v.len() == 1 {
                                tcp_state = Some(v[0]);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Some(Entry {
        orig: orig?,
        reply,
        mark,
        tcp_state,
    })
}

/// The `CTA_TUPLE_ORIG` attribute identifying an entry.
pub fn encode_tuple(t: &Tuple) -> Vec<u8> {
    let mut ip = Vec::new();
    push_attr(&mut ip, CTA_IP_V4_SRC, &t.src.octets());
    push_attr(&mut ip, CTA_IP_V4_DST, &t.dst.octets());
    let mut proto = Vec::new();
    push_attr(&mut proto, CTA_PROTO_NUM, &[t.proto]);
    if t.proto == IPPROTO_ICMP {
        let [ty, code] = t.dport.to_be_bytes();
        push_attr(&mut proto, CTA_PROTO_ICMP_ID, &t.sport.to_be_bytes());
        push_attr(&mut proto, CTA_PROTO_ICMP_TYPE, &[ty]);
        push_attr(&mut proto, CTA_PROTO_ICMP_CODE, &[code]);
    } else {
        push_attr(&mut proto, CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
        push_attr(&mut proto, CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
    }
    let mut inner = nested(CTA_TUPLE_IP, ip);
    inner.extend(nested(CTA_TUPLE_PROTO, proto));
    nested(CTA_TUPLE_ORIG, inner)
}

/// A ctnetlink message (IPv4) of type `ty`.
fn ct_message(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let family = libc::AF_INET as u8;
    message(
        NFNL_SUBSYS_CTNETLINK << 8 | ty,
        flags,
        seq,
        family,
        0,
        payload,
    )
}

/// Every IPv4 conntrack entry of the socket's namespace.
pub fn dump(s: &Socket) -> io::Result<Vec<Entry>> {
    s.send(&ct_message(
        IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        &[],
    ))?;
    let mut out = Vec::new();
    s.recv_all(|b| out.extend(parse_entry(b)))?;
    Ok(out)
}

/// Deletes the entry whose original tuple is `t`; an absent entry is fine.
pub fn delete(s: &Socket, t: &Tuple) -> io::Result<()> {
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    s.send(&ct_message(
        IPCTNL_MSG_CT_DELETE,
        flags,
        2,
        &encode_tuple(t),
    ))?;
    match s.recv_all(|_| {}) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::netns::nfnetlink::NLA_F_NESTED;

    /// A tuple from web (192.168.10.11) to db (192.168.10.12).
    fn web_to_db(proto: u8, sport: u16, dport: u16) -> Tuple {
        Tuple {
            proto,
            src: Ipv4Addr::new(192, 168, 10, 11),
            dst: Ipv4Addr::new(192, 168, 10, 12),
            sport,
            dport,
        }
    }

    #[test]
    fn an_encoded_tuple_parses_back() {
        let t = web_to_db(6, 40123, 7);
        let b = encode_tuple(&t);
        let e = parse_entry(&b).unwrap();
        assert_eq!(e.orig, t);
        assert_eq!(e.reply, None);
        assert_eq!(e.tcp_state, None);
    }

    #[test]
    fn an_icmp_tuple_carries_its_id_type_and_code() {
        let t = web_to_db(1, 113, 8 << 8);
        let b = encode_tuple(&t);
        // id (u16), type (u8) and code (u8) attributes, not ports
        let nested_in = |b: &[u8], kind: u16| -> Vec<u8> {
            attrs(b)
                .into_iter()
                .find(|(t, _)| t & !NLA_F_NESTED == kind)
                .map(|(_, v)| v.to_vec())
                .unwrap_or_default()
        };
        let proto = nested_in(&nested_in(&b, CTA_TUPLE_ORIG), CTA_TUPLE_PROTO);
        let kinds: Vec<u16> = attrs(&proto).into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            kinds,
            [
                CTA_PROTO_NUM,
                CTA_PROTO_ICMP_ID,
                CTA_PROTO_ICMP_TYPE,
                CTA_PROTO_ICMP_CODE
            ]
        );
        assert_eq!(parse_entry(&b).unwrap().orig, t);
    }

    #[test]
    fn garbage_does_not_panic() {
        for b in [
            &[][..],
            &[1, 2, 3],
            &[8, 0, 1, 0, 0xff, 0xff, 0xff],
            &[255; 40],
        ] {
            let _ = parse_entry(b);
        }
    }
}
