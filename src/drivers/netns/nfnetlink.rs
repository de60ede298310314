//! The netfilter netlink socket (`NETLINK_NETFILTER`) and its message framing, shared by
//! ctnetlink ([`super::conntrack`]) and the one nf_tables change smig sends without
//! libnftables: deleting a whole table ([`delete_table`]).
//!
//! A socket keeps the network namespace it was opened in. [`Socket::open`] runs on a
//! [`super::namespace::NamespaceThread`]; the blocking exchange may then run on any thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_NETFILTER: i32 = 12;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_GETRULE: u16 = 7;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_PACKETS: u16 = 2;
/// libnftnl's user data type of a rule's comment.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

/// nftables families (`NFPROTO_*`).
pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_NETDEV: u8 = 5;

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes of `b`, as (type without flags, value).
pub fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
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

pub fn push_attr(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

pub fn nested(ty: u16, inner: Vec<u8>) -> Vec<u8> {
    let mut b = Vec::new();
    push_attr(&mut b, ty | NLA_F_NESTED, &inner);
    b
}

/// One netlink message of type `ty` with an `nfgenmsg` header (`family`, version 0,
/// `res_id` in network order) followed by `payload`.
pub fn message(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + payload.len());
    let len = (16 + 4 + payload.len()) as u32;
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.push(family);
    b.push(0);
    b.extend_from_slice(&res_id.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

/// The batch deleting table `family name`: nf_tables changes travel in a batch, and only the
/// deletion asks for an acknowledgement.
pub fn delete_table_batch(family: u8, name: &str) -> Vec<u8> {
    let mut table = Vec::new();
    let mut text = name.as_bytes().to_vec();
    text.push(0);
    push_attr(&mut table, NFTA_TABLE_NAME, &text);
    let subsys = NFNL_SUBSYS_NFTABLES;
    let mut b = message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 1, 0, subsys, &[]);
    b.extend(message(
        subsys << 8 | NFT_MSG_DELTABLE,
        NLM_F_REQUEST | NLM_F_ACK,
        2,
        family,
        0,
        &table,
    ));
    b.extend(message(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        3,
        0,
        subsys,
        &[],
    ));
    b
}

/// Deletes nftables table `family name` with everything in it, through `s`; a table that is
/// not there is fine. The kernel lets a deletion wait for an RCU grace period (milliseconds),
/// so this runs off the namespace thread and without libnftables' one-call-at-a-time lock.
pub fn delete_table(s: &Socket, family: u8, name: &str) -> io::Result<()> {
    s.send(&delete_table_batch(family, name))?;
    match s.recv_all(|_| {}) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// One rule of a table, as its counters saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCount {
    /// The rule's comment, if it has one.
    pub comment: Option<String>,
    /// Packets matched by the rule's counters.
    pub packets: u64,
}

/// The request for every rule of table `family name`.
pub fn get_rules_message(family: u8, name: &str) -> Vec<u8> {
    let mut text = name.as_bytes().to_vec();
    text.push(0);
    let mut attrs = Vec::new();
    push_attr(&mut attrs, NFTA_RULE_TABLE, &text);
    message(
        NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETRULE,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        family,
        0,
        &attrs,
    )
}

/// A rule of a GETRULE reply (the payload after its `nfgenmsg` header).
pub fn parse_rule_count(b: &[u8]) -> RuleCount {
    let mut rule = RuleCount {
        comment: None,
        packets: 0,
    };
    for (ty, v) in attrs(b) {
        match ty {
            NFTA_RULE_USERDATA => rule.comment = udata_comment(v),
            NFTA_RULE_EXPRESSIONS => {
                for (_, expr) in attrs(v).into_iter().filter(|(t, _)| *t == NFTA_LIST_ELEM) {
                    let parts = attrs(expr);
                    let named = |n: &[u8]| {
                        parts.iter().any(|(t, v)| {
                            *t == NFTA_EXPR_NAME && v.split(|c| *c == 0).next() == Some(n)
                        })
                    };
                    if !named(b"counter") {
                        continue;
                    }
                    for (_, data) in parts.iter().filter(|(t, _)| *t == NFTA_EXPR_DATA) {
                        for (t, v) in attrs(data) {
                            if let (NFTA_COUNTER_PACKETS, Ok(n)) = (t, <[u8; 8]>::try_from(v)) {
                                rule.packets += u64::from_be_bytes(n);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    rule
}

/// The comment in a rule's user data (type-length-value records, as libnftnl writes them).
fn udata_comment(mut b: &[u8]) -> Option<String> {
    while let [ty, len, rest @ ..] = b {
        let len = usize::from(*len);
        let value = rest.get(..len)?;
        if *ty == NFTNL_UDATA_RULE_COMMENT {
            let text = value.split(|c| *c == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        b = &rest[len..];
    }
    None
}

/// Every rule of table `family name` with what its counters matched, through `s`; an absent
/// table has none. A dump reads the counters without libnftables (no cache, no JSON).
pub fn rule_counts(s: &Socket, family: u8, name: &str) -> io::Result<Vec<RuleCount>> {
    s.send(&get_rules_message(family, name))?;
    let mut out = Vec::new();
    match s.recv_all(|b| out.push(parse_rule_count(b))) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Vec::new()),
        r => r.map(|()| out),
    }
}

/// A `NETLINK_NETFILTER` socket; receiving gives up after 5 s.
#[derive(Debug)]
pub struct Socket(OwnedFd);

impl Socket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Socket> {
        // SAFETY: plain syscall; the descriptor is owned by the returned value at once.
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
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let s = Socket(unsafe { OwnedFd::from_raw_fd(fd) });
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

    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_nl addressed to the kernel (pid 0).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: the buffer and the address outlive the call.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
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

    /// Reads replies until DONE (dump) or the ACK/error; hands each message's payload after
    /// its `nfgenmsg` header to `f`.
    pub fn recv_all(&self, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf, 0)?;
            match each_message(&buf[..n], &mut |_, body| f(body))? {
                Some(0) => return Ok(()),
                Some(code) => return Err(io::Error::from_raw_os_error(-code)),
                None => {}
            }
        }
    }

    /// Opens a socket in the calling thread's network namespace that receives the multicast
    /// `groups` (a bit mask), with a receive buffer of `buffer` bytes.
    pub fn open_subscribed(groups: u32, buffer: usize) -> io::Result<Socket> {
        let s = Socket::open()?;
        // SAFETY: zeroed sockaddr_nl with our group mask; the kernel picks the port id.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = groups;
        let size = buffer as libc::c_int;
        // SAFETY: valid descriptor, address and option buffers.
        unsafe {
            // Only root may go past rmem_max; otherwise the plain option is the best we get.
            if libc::setsockopt(
                s.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            ) != 0
            {
                libc::setsockopt(
                    s.0.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    &size as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as u32,
                );
            }
            if libc::bind(
                s.0.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(s)
    }

    /// Hands every message already queued on the socket to `f` as (message type, payload
    /// after the `nfgenmsg` header), without waiting for more. `ENOBUFS` means the queue
    /// overflowed and messages were lost.
    pub fn recv_pending(&self, mut f: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(n) => {
                    each_message(&buf[..n], &mut f)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    fn recv(&self, buf: &mut [u8], flags: i32) -> io::Result<usize> {
        // SAFETY: reading into an owned buffer of the given length.
        let n = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                flags,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Hands each netfilter message of one received buffer to `f` as (type, payload after the
/// `nfgenmsg` header). Returns the error code of an ACK/error message (0 for an ACK, `-errno`
/// otherwise) or 0 at DONE, which end a reply; `None` when the buffer ends first.
fn each_message(mut b: &[u8], f: &mut impl FnMut(u16, &[u8])) -> io::Result<Option<i32>> {
    while b.len() >= 16 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        if len < 16 || len > b.len() {
            return Err(io::Error::other("truncated netlink message"));
        }
        let body = &b[16..len];
        match ty {
            NLMSG_DONE => return Ok(Some(0)),
            NLMSG_ERROR => {
                let code = match body {
                    [a, b, c, d, ..] => i32::from_ne_bytes([*a, *b, *c, *d]),
                    _ => 0,
                };
                return Ok(Some(code));
            }
            _ if body.len() >= 4 => f(ty, &body[4..]),
            _ => {}
        }
        b = &b[align4(len).min(b.len())..];
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages of a buffer, as (type, flags, nfgenmsg family, res_id, payload).
    fn messages(mut b: &[u8]) -> Vec<(u16, u16, u8, u16, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= 20 {
            let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let ty = u16::from_ne_bytes([b[4], b[5]]);
            let flags = u16::from_ne_bytes([b[6], b[7]]);
            let res_id = u16::from_be_bytes([b[18], b[19]]);
            out.push((ty, flags, b[16], res_id, b[20..len].to_vec()));
            b = &b[align4(len)..];
        }
        out
    }

    #[test]
    fn a_table_deletion_is_one_acknowledged_message_inside_a_batch() {
        let m = messages(&delete_table_batch(NFPROTO_NETDEV, "smig"));
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[0].0, m[0].3),
            (NFNL_MSG_BATCH_BEGIN, NFNL_SUBSYS_NFTABLES)
        );
        assert_eq!((m[2].0, m[2].3), (NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES));
        let (ty, flags, family, _, payload) = &m[1];
        assert_eq!(*ty, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_DELTABLE);
        assert_eq!(*flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(*family, NFPROTO_NETDEV);
        assert_eq!(attrs(payload), vec![(NFTA_TABLE_NAME, &b"smig\0"[..])]);
        // Only the deletion is acknowledged: the batch markers are not.
        assert!(m[0].1 & NLM_F_ACK == 0 && m[2].1 & NLM_F_ACK == 0);
    }

    #[test]
    fn a_rule_reads_back_with_its_comment_and_counted_packets() {
        let expr = |name: &str, data: Vec<u8>| {
            let mut e = Vec::new();
            push_attr(&mut e, NFTA_EXPR_NAME, format!("{name}\0").as_bytes());
            e.extend(nested(NFTA_EXPR_DATA, data));
            nested(NFTA_LIST_ELEM, e)
        };
        let mut counter = Vec::new();
        push_attr(&mut counter, 1, &52u64.to_be_bytes()); // bytes
        push_attr(&mut counter, NFTA_COUNTER_PACKETS, &2u64.to_be_bytes());
        let mut payload = get_rules_message(NFPROTO_NETDEV, "smig")[20..].to_vec();
        let mut exprs = expr("payload", vec![0; 8]);
        exprs.extend(expr("counter", counter));
        exprs.extend(expr("reject", Vec::new()));
        payload.extend(nested(NFTA_RULE_EXPRESSIONS, exprs));
        let comment = b"smig reset 3\0";
        let mut udata = vec![9, 1, 0, NFTNL_UDATA_RULE_COMMENT, comment.len() as u8];
        udata.extend_from_slice(comment);
        push_attr(&mut payload, NFTA_RULE_USERDATA, &udata);
        let rule = parse_rule_count(&payload);
        assert_eq!(rule.comment.as_deref(), Some("smig reset 3"));
        assert_eq!(rule.packets, 2);
        let bare = parse_rule_count(&get_rules_message(NFPROTO_NETDEV, "smig")[20..]);
        assert_eq!((bare.comment, bare.packets), (None, 0));
        // The request names the table and asks for a dump.
        let m = messages(&get_rules_message(NFPROTO_NETDEV, "smig"));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETRULE);
        assert_eq!(m[0].1, NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(m[0].2, NFPROTO_NETDEV);
    }

    #[test]
    fn attributes_are_padded_to_four_bytes_and_parse_back() {
        let mut b = Vec::new();
        push_attr(&mut b, 3, b"abcde");
        push_attr(&mut b, 4, &[7]);
        assert_eq!(b.len(), 12 + 8);
        assert_eq!(attrs(&b), vec![(3, &b"abcde"[..]), (4, &[7u8][..])]);
        assert!(attrs(&[255, 255, 1, 0]).is_empty(), "a length past the end");
    }
}
