//! Netfilter connection tracking of the current network namespace over ctnetlink (a raw
//! `NETLINK_NETFILTER` socket, [`super::nfnetlink`]): dump IPv4 entries, look one up, delete
//! one, and follow the table through its events ([`Watch`]). Blocking; a socket's namespace is
//! where it was opened.

use super::nfnetlink::{
    attrs, message, nested, push_attr, Socket, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
/// ctnetlink's multicast groups: new, updated and destroyed entries.
const NF_NETLINK_CONNTRACK_EVENTS: u32 = 0b111;
/// Room for the events queued between two reads (overflowing it costs a new dump, no more).
const EVENT_BUFFER: usize = 4 << 20;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// The entry whose original tuple is `t`, if there is one.
pub fn get(s: &Socket, t: &Tuple) -> io::Result<Option<Entry>> {
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    s.send(&ct_message(IPCTNL_MSG_CT_GET, flags, 3, &encode_tuple(t)))?;
    let mut found = None;
    match s.recv_all(|b| found = found.or(parse_entry(b))) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
        Ok(()) => Ok(found),
    }
}

/// A namespace's conntrack table, kept current from ctnetlink's events instead of a full
/// dump per read: a dump walks the kernel's whole conntrack hash (every bucket, milliseconds
/// even when nearly empty), an event costs nothing until it is read.
///
/// The socket subscribes before the one dump, so every change after the dump is queued as an
/// event. One gap remains: with `nf_conntrack_events = 2` (the kernel's default) an entry
/// created while nothing listened carries no event cache, and its changes and its end are
/// never reported. Entries known only from the dump are therefore asked for again, one lookup
/// each, whenever a read covers them. If the event queue overflows, the table is dumped anew.
#[derive(Debug)]
pub struct Watch {
    events: Socket,
    query: Socket,
    entries: HashMap<Tuple, Known>,
    dumped: bool,
}

#[derive(Debug, Clone, Copy)]
struct Known {
    entry: Entry,
    /// An event told of this entry: the kernel reports its changes.
    reported: bool,
}

impl Watch {
    /// Subscribes in the calling thread's network namespace. The first read dumps.
    pub fn open() -> io::Result<Watch> {
        Ok(Watch {
            events: Socket::open_subscribed(NF_NETLINK_CONNTRACK_EVENTS, EVENT_BUFFER)?,
            query: Socket::open()?,
            entries: HashMap::new(),
            dumped: false,
        })
    }

    /// The current entries for which `wanted` holds.
    pub fn read(&mut self, wanted: impl Fn(&Entry) -> bool) -> io::Result<Vec<Entry>> {
        if !self.dumped || !self.drain()? {
            // Just dumped: as current as a dump gets, nothing to ask for again.
            self.resync()?;
            return Ok(self.matching(&wanted));
        }
        let unreported: Vec<Tuple> = self
            .entries
            .values()
            .filter(|k| !k.reported && wanted(&k.entry))
            .map(|k| k.entry.orig)
            .collect();
        for t in unreported {
            match get(&self.query, &t)? {
                Some(entry) => {
                    self.entries.insert(
                        t,
                        Known {
                            entry,
                            reported: false,
                        },
                    );
                }
                None => {
                    self.entries.remove(&t);
                }
            }
        }
        Ok(self.matching(&wanted))
    }

    fn matching(&self, wanted: impl Fn(&Entry) -> bool) -> Vec<Entry> {
        self.entries
            .values()
            .map(|k| k.entry)
            .filter(|e| wanted(e))
            .collect()
    }

    /// Forgets an entry just deleted: one created before the watch would never report it.
    pub fn forget(&mut self, t: &Tuple) {
        self.entries.remove(t);
    }

    /// Applies the queued events; false when some were lost.
    fn drain(&mut self) -> io::Result<bool> {
        let entries = &mut self.entries;
        match self
            .events
            .recv_pending(|ty, body| apply_event(entries, ty, body))
        {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Dumps the table afresh, then applies what happened meanwhile.
    fn resync(&mut self) -> io::Result<()> {
        // What is queued now predates the dump, which shows its outcome.
        let _ = self.drain();
        self.entries = dump(&self.query)?
            .into_iter()
            .map(|entry| {
                let known = Known {
                    entry,
                    reported: false,
                };
                (entry.orig, known)
            })
            .collect();
        self.dumped = true;
        if !self.drain()? {
            // Lost again while dumping: entries the events would have changed are asked for
            // one by one on every read until they report, so the table stays right.
            self.entries.values_mut().for_each(|k| k.reported = false);
        }
        Ok(())
    }
}

/// Applies one ctnetlink event (`ty`: the netlink message type) to `entries`.
fn apply_event(entries: &mut HashMap<Tuple, Known>, ty: u16, body: &[u8]) {
    let Some(entry) = parse_entry(body) else {
        return;
    };
    match ty & 0xff {
        IPCTNL_MSG_CT_NEW => {
            let known = entries.entry(entry.orig).or_insert(Known {
                entry,
                reported: true,
            });
            // An update carries the TCP state only when it changed.
            let tcp_state = entry.tcp_state.or(known.entry.tcp_state);
            known.entry = Entry { tcp_state, ..entry };
            known.reported = true;
        }
        IPCTNL_MSG_CT_DELETE => {
            entries.remove(&entry.orig);
        }
        _ => {}
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
    fn events_add_update_and_remove_entries_keeping_a_state_they_do_not_repeat() {
        let t = web_to_db(6, 40123, 7);
        let mut entries = HashMap::new();
        let mut with_state = encode_tuple(&t);
        let mut tcp = Vec::new();
        push_attr(&mut tcp, CTA_PROTOINFO_TCP_STATE, &[TCP_ESTABLISHED]);
        with_state.extend(nested(CTA_PROTOINFO, nested(CTA_PROTOINFO_TCP, tcp)));
        apply_event(&mut entries, NFNL_SUBSYS_CTNETLINK << 8, &with_state);
        assert_eq!(entries[&t].entry.tcp_state, Some(TCP_ESTABLISHED));
        assert!(entries[&t].reported);
        // An update without the TCP state (a new mark, say) keeps the state known.
        let mut marked = encode_tuple(&t);
        push_attr(&mut marked, CTA_MARK, &7u32.to_be_bytes());
        apply_event(&mut entries, NFNL_SUBSYS_CTNETLINK << 8, &marked);
        assert_eq!(entries[&t].entry.tcp_state, Some(TCP_ESTABLISHED));
        assert_eq!(entries[&t].entry.mark, 7);
        apply_event(
            &mut entries,
            NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE,
            &encode_tuple(&t),
        );
        assert!(entries.is_empty());
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
