//! strongSwan's VICI wire format: packets framed by a 32-bit big-endian length, each a type
//! byte, an optional name and a message of sections, key-values and lists
//! (strongSwan `src/libcharon/plugins/vici/README.md`, "Packet layer" and "Message format").

use std::fmt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest packet charon accepts or sends (its `VICI_MESSAGE_SIZE_MAX`, 512 KiB).
pub const MAX_PACKET: usize = 512 * 1024;

/// Keys whose values are never shown by `Debug` (key material in `load-shared`/`load-key`).
const SENSITIVE_KEYS: [&str; 1] = ["data"];

const SECTION_START: u8 = 1;
const SECTION_END: u8 = 2;
const KEY_VALUE: u8 = 3;
const LIST_START: u8 = 4;
const LIST_ITEM: u8 = 5;
const LIST_END: u8 = 6;

/// A VICI message: an ordered list of named elements.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Message(pub Vec<(String, Element)>);

/// One element of a message.
#[derive(Clone, PartialEq, Eq)]
pub enum Element {
    Value(Vec<u8>),
    Section(Message),
    List(Vec<Vec<u8>>),
}

/// What can go wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed VICI data: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> WireError {
    WireError::Malformed(what.into())
}

impl Message {
    pub fn new() -> Message {
        Message(Vec::new())
    }
    /// Adds a key-value (builder style).
    pub fn kv(mut self, key: &str, value: impl AsRef<[u8]>) -> Message {
        self.0
            .push((key.to_string(), Element::Value(value.as_ref().to_vec())));
        self
    }
    /// Adds a list (builder style).
    pub fn list<I, V>(mut self, key: &str, items: I) -> Message
    where
        I: IntoIterator<Item = V>,
        V: AsRef<[u8]>,
    {
        let items = items.into_iter().map(|v| v.as_ref().to_vec()).collect();
        self.0.push((key.to_string(), Element::List(items)));
        self
    }
    /// Adds a sub-section (builder style).
    pub fn section(mut self, key: &str, section: Message) -> Message {
        self.0.push((key.to_string(), Element::Section(section)));
        self
    }

    /// The first element named `key`.
    pub fn get(&self, key: &str) -> Option<&Element> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, e)| e)
    }
    /// A key-value as text (lossy UTF-8).
    pub fn str(&self, key: &str) -> Option<String> {
        match self.get(key) {
            Some(Element::Value(v)) => Some(String::from_utf8_lossy(v).into_owned()),
            _ => None,
        }
    }
    /// A key-value holding a decimal number (VICI sends numbers as text).
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.str(key).and_then(|s| s.trim().parse().ok())
    }
    /// A sub-section.
    pub fn sub(&self, key: &str) -> Option<&Message> {
        match self.get(key) {
            Some(Element::Section(m)) => Some(m),
            _ => None,
        }
    }
    /// A list's items as text; a single key-value counts as a one-item list.
    pub fn strs(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            Some(Element::List(items)) => items
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect(),
            Some(Element::Value(v)) => vec![String::from_utf8_lossy(v).into_owned()],
            _ => Vec::new(),
        }
    }
    /// Every sub-section, with its name.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Message)> {
        self.0.iter().filter_map(|(k, e)| match e {
            Element::Section(m) => Some((k.as_str(), m)),
            _ => None,
        })
    }

    /// The message's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        for (key, element) in &self.0 {
            match element {
                Element::Value(v) => {
                    out.push(KEY_VALUE);
                    put_name(out, key)?;
                    put_value(out, v)?;
                }
                Element::Section(m) => {
                    out.push(SECTION_START);
                    put_name(out, key)?;
                    m.encode_into(out)?;
                    out.push(SECTION_END);
                }
                Element::List(items) => {
                    out.push(LIST_START);
                    put_name(out, key)?;
                    for v in items {
                        out.push(LIST_ITEM);
                        put_value(out, v)?;
                    }
                    out.push(LIST_END);
                }
            }
        }
        Ok(())
    }

    /// Parses a message from its bytes.
    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader { bytes, at: 0 };
        let m = decode_section(&mut r, 0)?;
        if r.at != bytes.len() {
            return Err(malformed("unbalanced section end"));
        }
        Ok(m)
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), WireError> {
    let len = u8::try_from(name.len())
        .map_err(|_| malformed(format!("name longer than 255 bytes: {name}")))?;
    out.push(len);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

fn put_value(out: &mut Vec<u8>, v: &[u8]) -> Result<(), WireError> {
    let len = u16::try_from(v.len()).map_err(|_| malformed("value longer than 65535 bytes"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(v);
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| malformed("truncated message"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn name(&mut self) -> Result<String, WireError> {
        let n = self.byte()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self) -> Result<Vec<u8>, WireError> {
        let b = self.take(2)?;
        let n = u16::from_be_bytes([b[0], b[1]]) as usize;
        Ok(self.take(n)?.to_vec())
    }
}

/// Sections nest; charon never sends deep trees, so a depth limit guards the stack.
const MAX_DEPTH: usize = 32;

fn decode_section(r: &mut Reader<'_>, depth: usize) -> Result<Message, WireError> {
    if depth > MAX_DEPTH {
        return Err(malformed("sections nested too deep"));
    }
    let mut m = Message::new();
    while r.at < r.bytes.len() {
        match r.byte()? {
            SECTION_START => {
                let name = r.name()?;
                let sub = decode_section(r, depth + 1)?;
                m.0.push((name, Element::Section(sub)));
            }
            SECTION_END => {
                if depth == 0 {
                    return Err(malformed("section end outside a section"));
                }
                return Ok(m);
            }
            KEY_VALUE => {
                let name = r.name()?;
                let v = r.value()?;
                m.0.push((name, Element::Value(v)));
            }
            LIST_START => {
                let name = r.name()?;
                let mut items = Vec::new();
                loop {
                    match r.byte()? {
                        LIST_ITEM => items.push(r.value()?),
                        LIST_END => break,
                        t => return Err(malformed(format!("element type {t} inside a list"))),
                    }
                }
                m.0.push((name, Element::List(items)));
            }
            t => return Err(malformed(format!("unknown element type {t}"))),
        }
    }
    if depth > 0 {
        return Err(malformed("section not closed"));
    }
    Ok(m)
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, e) in &self.0 {
            if SENSITIVE_KEYS.contains(&k.as_str()) {
                map.entry(k, &crate::model::secret::REDACTED);
            } else {
                map.entry(k, e);
            }
        }
        map.finish()
    }
}

impl fmt::Debug for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Element::Value(v) => write!(f, "{:?}", String::from_utf8_lossy(v)),
            Element::Section(m) => m.fmt(f),
            Element::List(items) => f
                .debug_list()
                .entries(items.iter().map(|v| String::from_utf8_lossy(v)))
                .finish(),
        }
    }
}

/// A VICI packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    CmdRequest(String, Message),
    CmdResponse(Message),
    CmdUnknown,
    EventRegister(String),
    EventUnregister(String),
    EventConfirm,
    EventUnknown,
    Event(String, Message),
}

impl Packet {
    /// The packet's bytes, without the length prefix.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        match self {
            Packet::CmdRequest(name, m) => {
                out.push(0);
                put_name(&mut out, name)?;
                m.encode_into(&mut out)?;
            }
            Packet::CmdResponse(m) => {
                out.push(1);
                m.encode_into(&mut out)?;
            }
            Packet::CmdUnknown => out.push(2),
            Packet::EventRegister(name) => {
                out.push(3);
                put_name(&mut out, name)?;
            }
            Packet::EventUnregister(name) => {
                out.push(4);
                put_name(&mut out, name)?;
            }
            Packet::EventConfirm => out.push(5),
            Packet::EventUnknown => out.push(6),
            Packet::Event(name, m) => {
                out.push(7);
                put_name(&mut out, name)?;
                m.encode_into(&mut out)?;
            }
        }
        if out.len() > MAX_PACKET {
            return Err(malformed(format!(
                "packet of {} bytes exceeds the {MAX_PACKET}-byte limit",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Parses a packet (without its length prefix).
    pub fn decode(bytes: &[u8]) -> Result<Packet, WireError> {
        let mut r = Reader { bytes, at: 0 };
        let t = r.byte()?;
        let rest = |r: &Reader<'_>| Message::decode(&r.bytes[r.at..]);
        Ok(match t {
            0 => {
                let name = r.name()?;
                Packet::CmdRequest(name, rest(&r)?)
            }
            1 => Packet::CmdResponse(rest(&r)?),
            2 => Packet::CmdUnknown,
            3 => Packet::EventRegister(r.name()?),
            4 => Packet::EventUnregister(r.name()?),
            5 => Packet::EventConfirm,
            6 => Packet::EventUnknown,
            7 => {
                let name = r.name()?;
                Packet::Event(name, rest(&r)?)
            }
            t => return Err(malformed(format!("unknown packet type {t}"))),
        })
    }
}

/// Writes one length-prefixed packet.
pub async fn write_packet<W: AsyncWrite + Unpin>(w: &mut W, p: &Packet) -> Result<(), WireError> {
    let body = p.encode()?;
    let mut framed = Vec::with_capacity(body.len() + 4);
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    w.write_all(&framed).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one length-prefixed packet.
pub async fn read_packet<R: AsyncRead + Unpin>(r: &mut R) -> Result<Packet, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_PACKET {
        return Err(malformed(format!("packet length {len}")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Packet::decode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_documented_example() {
        // The README's example message: key1 = value1, section1 { sub-section { key2 = value2 },
        // list1 = [item1, item2] }.
        let m = Message::new().kv("key1", "value1").section(
            "section1",
            Message::new()
                .section("sub-section", Message::new().kv("key2", "value2"))
                .list("list1", ["item1", "item2"]),
        );
        let expected: &[u8] = b"\x03\x04key1\x00\x06value1\
            \x01\x08section1\
            \x01\x0bsub-section\x03\x04key2\x00\x06value2\x02\
            \x04\x05list1\x05\x00\x05item1\x05\x00\x05item2\x06\
            \x02";
        assert_eq!(m.encode().unwrap(), expected);
        assert_eq!(Message::decode(expected).unwrap(), m);
    }

    #[test]
    fn packets_round_trip() {
        let m = Message::new().kv("ike", "smig-x").list("l", ["a"]);
        for p in [
            Packet::CmdRequest("list-sas".into(), m.clone()),
            Packet::CmdResponse(m.clone()),
            Packet::CmdUnknown,
            Packet::EventRegister("list-sa".into()),
            Packet::EventUnregister("list-sa".into()),
            Packet::EventConfirm,
            Packet::EventUnknown,
            Packet::Event("list-sa".into(), m.clone()),
        ] {
            assert_eq!(Packet::decode(&p.encode().unwrap()).unwrap(), p);
        }
        assert_eq!(
            Packet::CmdRequest("version".into(), Message::new())
                .encode()
                .unwrap(),
            b"\x00\x07version"
        );
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            &b"\x03\x04key1\x00\x09value1"[..], // value runs past the end
            b"\x01\x01s\x03\x01k\x00\x01v",     // section never closed
            b"\x02",                            // end outside a section
            b"\x04\x01l\x03",                   // key-value inside a list
            b"\x09",                            // unknown element
        ] {
            assert!(Message::decode(bad).is_err(), "{bad:?}");
        }
        assert!(Packet::decode(b"\x08").is_err());
        assert!(Packet::decode(b"").is_err());
        let deep = [SECTION_START, 1, b's'].repeat(MAX_DEPTH + 2);
        assert!(Message::decode(&deep).is_err());
    }

    #[test]
    fn limits_are_enforced_when_encoding() {
        let long_name = "n".repeat(256);
        assert!(Message::new().kv(&long_name, "v").encode().is_err());
        let long_value = vec![0u8; 70_000];
        assert!(Message::new().kv("k", long_value).encode().is_err());
    }

    #[test]
    fn accessors_read_numbers_lists_and_sections() {
        let m = Message::new()
            .kv("bytes-in", "1234")
            .kv("one", "x")
            .list("many", ["a", "b"])
            .section("s", Message::new().kv("k", "v"));
        assert_eq!(m.u64("bytes-in"), Some(1234));
        assert_eq!(m.u64("one"), None);
        assert_eq!(m.strs("one"), vec!["x"]);
        assert_eq!(m.strs("many"), vec!["a", "b"]);
        assert_eq!(m.sub("s").and_then(|s| s.str("k")).as_deref(), Some("v"));
        assert_eq!(m.sections().count(), 1);
    }

    #[test]
    fn debug_never_shows_key_material() {
        let m = Message::new()
            .kv("id", "smig-x")
            .kv("type", "IKE")
            .kv("data", "canary-2b7e");
        let shown = format!("{m:?}");
        assert!(!shown.contains("canary"), "{shown}");
        assert!(shown.contains("smig-x"), "{shown}");
    }

    #[tokio::test]
    async fn frames_packets_on_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let p = Packet::CmdRequest("version".into(), Message::new().kv("k", "v"));
        write_packet(&mut a, &p).await.unwrap();
        assert_eq!(read_packet(&mut b).await.unwrap(), p);
        // A length beyond the limit is refused before reading the body.
        a.write_all(&(MAX_PACKET as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        assert!(read_packet(&mut b).await.is_err());
    }
}
