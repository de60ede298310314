//! [`Name`]: an interned, immutable string for the names of the model (VMs, domains, subnets,
//! links, environments, hosts). Each distinct text is stored once, in a process-wide table
//! ([`ustr`]), and a `Name` is a pointer to it: cloning copies the pointer without touching
//! memory, and two names are equal exactly when their pointers are. Texts are never freed,
//! so only names go here, never secrets or text that grows with time. It serializes as a
//! plain string.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::{Borrow, Cow};
use std::cmp::Ordering;
use std::fmt;
use std::ops::Deref;
use ustr::Ustr;

/// An interned, immutable string. Orders and hashes as its text.
#[derive(Clone, PartialEq, Eq)]
pub struct Name(Ustr);

/// As the text's hash, so maps keyed by `Name` can be asked with a `&str`.
impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Self) -> Ordering {
        if self.0 == other.0 {
            Ordering::Equal
        } else {
            self.as_str().cmp(other.as_str())
        }
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Name {
    /// The text.
    pub fn as_str(&self) -> &'static str {
        self.0.as_str()
    }
    /// The address of the interned text: equal exactly for equal names, so it can key a map
    /// that finds a name without reading its text.
    pub fn addr(&self) -> usize {
        self.0.as_ptr() as usize
    }
}

impl Default for Name {
    fn default() -> Self {
        Name::from("")
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name(Ustr::from(s))
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name(Ustr::from(&s))
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Self {
        Name(Ustr::from(s.as_str()))
    }
}

impl From<Name> for String {
    fn from(n: Name) -> Self {
        n.as_str().to_string()
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Name::from)
    }
}

/// The schema of a plain string.
impl JsonSchema for Name {
    fn inline_schema() -> bool {
        String::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        String::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        String::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        String::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_reads_writes_and_compares_as_its_text() {
        let n = Name::from("dc.hv1");
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"dc.hv1\"");
        let back: Name = serde_json::from_str("\"dc.hv1\"").unwrap();
        assert_eq!(back, n);
        assert_eq!(n, "dc.hv1");
        assert_eq!(format!("{n} {n:?}"), "dc.hv1 \"dc.hv1\"");
        let (a, b) = (Name::from("a"), Name::from("b"));
        assert!(a < b);
        let m: std::collections::BTreeMap<Name, u8> = [(n.clone(), 1)].into();
        assert_eq!(m.get("dc.hv1"), Some(&1));
        // One text, one address, however the name was made.
        assert_eq!(back.addr(), n.addr());
        assert_eq!(Name::from(String::from("dc.hv1")).addr(), n.addr());
        assert_ne!(a.addr(), b.addr());
    }
}
