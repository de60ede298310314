//! The parts of libvirt's domain XML the driver reads and edits: the domain's name and its
//! network interfaces with their link state (`<link state='down'/>`, absent means up).

use roxmltree::{Document, Node};
use std::ops::Range;

/// A network interface of a domain, as its XML describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// `<mac address=...>`, lower case, when present.
    pub mac: Option<String>,
    /// `<interface type=...>`: `bridge`, `network`, `direct`, ...
    pub kind: String,
    /// Bridge or network the interface is plugged into, when the XML names one.
    pub source: Option<String>,
    /// Link state: `<link state='down'/>` is down, anything else (or no element) is up.
    pub link_up: bool,
    /// Byte range of the whole `<interface>` element in the XML it was read from.
    range: Range<usize>,
    /// Byte range of its `<link>` element, when present.
    link: Option<Range<usize>>,
}

/// Why a domain XML could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("domain XML does not parse: {0}")]
    Parse(String),
    #[error("domain XML has no <domain> root element")]
    NotADomain,
    #[error("domain XML has no <name>")]
    NoName,
}

fn parse(xml: &str) -> Result<Document<'_>, XmlError> {
    let doc = Document::parse(xml).map_err(|e| XmlError::Parse(e.to_string()))?;
    if !doc.root_element().has_tag_name("domain") {
        return Err(XmlError::NotADomain);
    }
    Ok(doc)
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.has_tag_name(name))
}

/// The `<name>` of a domain XML.
pub fn domain_name(xml: &str) -> Result<String, XmlError> {
    let doc = parse(xml)?;
    child(doc.root_element(), "name")
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or(XmlError::NoName)
}

/// The network interfaces of a domain XML, in document order.
pub fn nics(xml: &str) -> Result<Vec<Nic>, XmlError> {
    let doc = parse(xml)?;
    let Some(devices) = child(doc.root_element(), "devices") else {
        return Ok(Vec::new());
    };
    Ok(devices
        .children()
        .filter(|c| c.is_element() && c.has_tag_name("interface"))
        .map(|i| {
            let link = child(i, "link");
            let source = child(i, "source").and_then(|s| {
                s.attribute("bridge")
                    .or_else(|| s.attribute("network"))
                    .or_else(|| s.attribute("dev"))
                    .map(str::to_string)
            });
            Nic {
                mac: child(i, "mac")
                    .and_then(|m| m.attribute("address"))
                    .map(str::to_ascii_lowercase),
                kind: i.attribute("type").unwrap_or_default().to_string(),
                source,
                link_up: link.and_then(|l| l.attribute("state")) != Some("down"),
                range: i.range(),
                link: link.map(|l| l.range()),
            }
        })
        .collect())
}

/// The link state of a domain's NICs together: `None` without a NIC, up only when every NIC is.
pub fn link_up(nics: &[Nic]) -> Option<bool> {
    if nics.is_empty() {
        None
    } else {
        Some(nics.iter().all(|n| n.link_up))
    }
}

/// The `<interface>` element of `nic`, taken from the `xml` it was read from, with its link
/// state set: what `virDomainUpdateDeviceFlags` takes (as `virsh domif-setlink` does).
pub fn interface_with_link(xml: &str, nic: &Nic, up: bool) -> Option<String> {
    let element = xml.get(nic.range.clone())?;
    let state = if up { "up" } else { "down" };
    let link = format!("<link state='{state}'/>");
    match &nic.link {
        Some(r) => {
            let start = r.start.checked_sub(nic.range.start)?;
            let end = r.end.checked_sub(nic.range.start)?;
            Some(format!(
                "{}{}{}",
                element.get(..start)?,
                link,
                element.get(end..)?
            ))
        }
        None => {
            let close = element.rfind("</interface>")?;
            Some(format!(
                "{}  {}\n    {}",
                element.get(..close)?.trim_end(),
                link,
                element.get(close..)?
            ))
        }
    }
}

/// The whole domain XML with the link of every NIC set: a definition to redefine the domain
/// with where libvirt cannot update a device in place.
pub fn with_links(xml: &str, up: bool) -> Result<String, XmlError> {
    let nics = nics(xml)?;
    let mut out = xml.to_string();
    // From the last NIC back, so earlier ranges stay valid.
    for nic in nics.iter().rev() {
        let edited = interface_with_link(xml, nic, up)
            .ok_or_else(|| XmlError::Parse("cannot edit an <interface> element".into()))?;
        out.replace_range(nic.range.clone(), &edited);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = r#"<domain type='qemu'>
  <name>db</name>
  <memory unit='KiB'>131072</memory>
  <devices>
    <interface type='bridge'>
      <mac address='52:54:00:0A:00:0C'/>
      <source bridge='br-app'/>
      <model type='virtio'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:0a:00:0d'/>
      <source network='default'/>
      <link state='down'/>
    </interface>
  </devices>
</domain>"#;

    #[test]
    fn reads_name_and_nics() {
        assert_eq!(domain_name(DOMAIN).unwrap(), "db");
        let n = nics(DOMAIN).unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].mac.as_deref(), Some("52:54:00:0a:00:0c"));
        assert_eq!(n[0].kind, "bridge");
        assert_eq!(n[0].source.as_deref(), Some("br-app"));
        assert!(n[0].link_up);
        assert_eq!(n[1].source.as_deref(), Some("default"));
        assert!(!n[1].link_up);
        assert_eq!(link_up(&n), Some(false));
        assert_eq!(link_up(&n[..1]), Some(true));
        assert_eq!(link_up(&[]), None);
    }

    #[test]
    fn sets_link_without_and_with_a_link_element() {
        let n = nics(DOMAIN).unwrap();
        let down = interface_with_link(DOMAIN, &n[0], false).unwrap();
        assert!(down.starts_with("<interface type='bridge'>"));
        assert!(down.ends_with("</interface>"));
        let wrapped = format!("<domain><name>x</name><devices>{down}</devices></domain>");
        let again = nics(&wrapped).unwrap();
        assert_eq!(again.len(), 1);
        assert!(!again[0].link_up);
        assert_eq!(again[0].mac.as_deref(), Some("52:54:00:0a:00:0c"));

        let up = interface_with_link(DOMAIN, &n[1], true).unwrap();
        assert!(up.contains("<link state='up'/>"));
        assert!(!up.contains("down"));
        let wrapped = format!("<domain><name>x</name><devices>{up}</devices></domain>");
        assert!(nics(&wrapped).unwrap()[0].link_up);
    }

    #[test]
    fn sets_every_link_in_a_whole_definition() {
        let down = with_links(DOMAIN, false).unwrap();
        assert_eq!(domain_name(&down).unwrap(), "db");
        let n = nics(&down).unwrap();
        assert_eq!(n.len(), 2);
        assert!(n.iter().all(|n| !n.link_up));
        let up = with_links(&down, true).unwrap();
        assert!(nics(&up).unwrap().iter().all(|n| n.link_up));
        assert!(up.contains("<memory unit='KiB'>131072</memory>"));
    }

    #[test]
    fn a_domain_without_devices_has_no_nic() {
        let n = nics("<domain><name>x</name></domain>").unwrap();
        assert!(n.is_empty());
    }

    #[test]
    fn hostile_inputs_are_errors() {
        assert!(matches!(domain_name(""), Err(XmlError::Parse(_))));
        assert!(matches!(domain_name("<domain>"), Err(XmlError::Parse(_))));
        assert_eq!(
            domain_name("<network><name>x</name></network>"),
            Err(XmlError::NotADomain)
        );
        assert_eq!(domain_name("<domain/>"), Err(XmlError::NoName));
        assert_eq!(
            domain_name("<domain><name>  </name></domain>"),
            Err(XmlError::NoName)
        );
    }
}
