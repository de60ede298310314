//! Netfilter connection tracking of the current network namespace over ctnetlink (a raw
//! `NETLINK_NETFILTER` socket): dump IPv4 entries, delete one. Blocking: called on a
//! [`super::namespace::NamespaceThread`].

use std::io;
use std::net::Ipv4Addr;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

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

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        b = &b[align4(len).min(b.len())..];
    }
    out
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

fn push_attr(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

fn nested(ty: u16, inner: Vec<u8>) -> Vec<u8> {
    let mut b = Vec::new();
    push_attr(&mut b, ty | NLA_F_NESTED, &inner);
    b
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

fn message(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + payload.len());
    let len = (16 + 4 + payload.len()) as u32;
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&(((NFNL_SUBSYS_CTNETLINK) << 8) | ty).to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family AF_INET, version 0, res_id 0
    b.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    b.extend_from_slice(payload);
    b
}

struct Socket(i32);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor this struct owns.
        unsafe { libc::close(self.0) };
    }
}

impl Socket {
    fn open() -> io::Result<Socket> {
        // SAFETY: plain syscalls; the descriptor is owned by the returned value.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let s = Socket(fd);
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: valid descriptor and option buffer.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(s)
    }
    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_nl addressed to the kernel (pid 0).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let n = unsafe {
            libc::sendto(
                self.0,
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    /// Reads replies until DONE (dump) or the ACK/error; hands each entry payload to `f`.
    fn recv_all(&self, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reading into an owned buffer of the given length.
            let n =
                unsafe { libc::recv(self.0, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut b = &buf[..n as usize];
            while b.len() >= 16 {
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                if len < 16 || len > b.len() {
                    return Err(io::Error::other("truncated netlink message"));
                }
                let body = &b[16..len];
                match ty {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = if body.len() >= 4 {
                            i32::from_ne_bytes([body[0], body[1], body[2], body[3]])
                        } else {
                            0
                        };
                        return if code == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    _ if body.len() >= 4 => f(&body[4..]),
                    _ => {}
                }
                b = &b[align4(len).min(b.len())..];
            }
        }
    }
}

/// Every IPv4 conntrack entry of the current namespace.
pub fn dump() -> io::Result<Vec<Entry>> {
    let s = Socket::open()?;
    s.send(&message(
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
pub fn delete(t: &Tuple) -> io::Result<()> {
    let s = Socket::open()?;
    s.send(&message(
        IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
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
