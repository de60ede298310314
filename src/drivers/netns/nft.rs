//! smig's nftables state, through libnftables' JSON API (`nft -j`): rendering the commands
//! that block a VM, guard the secure data path and reset flows, and reading block rules back.
//!
//! smig's tables are `inet smig` (block rules, guard), `bridge smig` (overlay ports) and,
//! for transient TCP resets, `netdev smig`. Names and comments carry what discovery needs:
//! - chain `block-<vm>` (a base chain on `forward`), set `peers-<vm>` (the peers' addresses),
//!   rules commented `smig block vm=<vm> addr=<address>`;
//! - chains `guard-output` / `guard-forward`: no smig VXLAN packet leaves except through
//!   `ipsec0`; a rule commented `smig secure vm=<vm>` per VM enabled through the SA only;
//! - table `bridge smig`, chain `overlay` (with the guard): TCP MSS clamped into overlay
//!   ports, packets crossing them marked, the mark copied to conntrack ([`IPSEC_MARK`]) by
//!   `guard-forward`.

use super::nfnetlink::RuleCount;
use crate::model::BlockRule;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The table every smig rule lives in (`lab/check` looks for tables named `smig`).
pub const TABLE: &str = "smig";
/// UDP port of smig's VXLAN links (the lab uses 4789 and 4790).
pub const VXLAN_PORT: u16 = 4791;
/// Prefix of every link smig creates.
pub const LINK_PREFIX: &str = "smx-";
/// Conntrack mark on flows that cross a smig overlay link (and so the IPsec SA).
pub const IPSEC_MARK: u32 = 0x736d_6967;
/// The TUN device of strongSwan's kernel-libipsec: the only way out for smig's VXLAN.
pub const IPSEC_DEV: &str = "ipsec0";
/// TCP MSS for flows into an overlay link (ipsec0's MTU 1400 minus ESP, UDP, VXLAN headers).
pub const OVERLAY_MSS: u16 = 1300;

fn block_chain(vm: &str) -> String {
    format!("block-{vm}")
}
fn peers_set(vm: &str) -> String {
    format!("peers-{vm}")
}
fn block_comment(vm: &str, address: Ipv4Addr, allow_ipsec: bool) -> String {
    let allow = if allow_ipsec { ALLOW_IPSEC } else { "" };
    format!("smig block vm={vm} addr={address}{allow}")
}
/// Suffix of the block comment of a filter that lets flows carried by the SA through.
const ALLOW_IPSEC: &str = " allow=ipsec";
fn secure_comment(vm: &str) -> String {
    format!("smig secure vm={vm}")
}

fn payload(proto: &str, field: &str) -> Value {
    json!({"payload": {"protocol": proto, "field": field}})
}
fn eq(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}
fn ne(left: Value, right: Value) -> Value {
    json!({"match": {"op": "!=", "left": left, "right": right}})
}
fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}
fn table_obj() -> Value {
    json!({"table": {"family": "inet", "name": TABLE}})
}
fn base_chain(name: &str, hook: &str, prio: i32) -> Value {
    json!({"chain": {"family": "inet", "table": TABLE, "name": name, "type": "filter",
        "hook": hook, "prio": prio, "policy": "accept"}})
}
fn rule(chain: &str, comment: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "inet", "table": TABLE, "chain": chain,
        "comment": comment, "expr": expr}}})
}

/// Wraps commands into one atomic `nft -j -f` transaction.
pub fn batch(commands: Vec<Value>) -> Value {
    json!({ "nftables": commands })
}

/// Commands that (re)create the VM's block: drop everything between its address and its
/// peers in `forward` (bridged traffic included: `br_netfilter` is loaded). Replaces an
/// existing block of the same VM in the same transaction. `present`: what the table holds now.
pub fn block_commands(rule_: &BlockRule, present: &Present) -> Vec<Value> {
    let chain = block_chain(&rule_.vm);
    let set = peers_set(&rule_.vm);
    let comment = block_comment(&rule_.vm, rule_.address, rule_.allow_ipsec);
    let mut cmds = vec![json!({"add": table_obj()})];
    if rule_.allow_ipsec {
        // The marks it tests come from the guard's bridge table.
        cmds.extend(guard_commands(present));
    }
    cmds.extend([
        json!({"add": base_chain(&chain, "forward", -10)}),
        json!({"add": {"set": {"family": "inet", "table": TABLE, "name": set, "type": "ipv4_addr"}}}),
    ]);
    if present.chains.contains(&chain) {
        cmds.push(json!({"flush": {"chain": {"family": "inet", "table": TABLE, "name": chain}}}));
    }
    if present.sets.contains_key(&set) {
        cmds.push(json!({"flush": {"set": {"family": "inet", "table": TABLE, "name": set}}}));
    }
    if !rule_.peers.is_empty() {
        let elems: Vec<Value> = rule_.peers.iter().map(|p| json!(p.to_string())).collect();
        cmds.push(json!({"add": {"element": {"family": "inet", "table": TABLE, "name": set, "elem": elems}}}));
    }
    let addr = json!(rule_.address.to_string());
    let peers = json!(format!("@{set}"));
    for (from, to) in [(addr.clone(), peers.clone()), (peers, addr)] {
        let between = [
            eq(payload("ip", "saddr"), from),
            eq(payload("ip", "daddr"), to),
        ];
        let mut add = |mut expr: Vec<Value>, verdict: &str| {
            expr.splice(0..0, between.iter().cloned());
            expr.push(json!({ verdict: null }));
            cmds.push(rule(&chain, &comment, expr));
        };
        if rule_.allow_ipsec {
            for expr in allow_ipsec_exprs() {
                add(expr, "accept");
            }
        }
        add(vec![json!({"counter": null})], "drop");
    }
    cmds
}

/// The matches of a pre-staged filter's accept rules (each rule one list, the rules tried in
/// turn): a packet that crossed an overlay port (marked by the guard's bridge table) and
/// belongs to a flow that began there (conntrack mark, set by `guard-forward` from the first
/// packet: a TCP SYN, or the first of another flow). A flow picked up mid-stream, e.g. a
/// connection set up in cleartext before the move, matches none and is dropped.
fn allow_ipsec_exprs() -> Vec<Vec<Value>> {
    let through_sa = eq(meta("mark"), json!(IPSEC_MARK));
    let new_flow = eq(json!({"ct": {"key": "state"}}), json!("new"));
    vec![
        vec![
            through_sa.clone(),
            eq(json!({"ct": {"key": "mark"}}), json!(IPSEC_MARK)),
        ],
        vec![
            through_sa.clone(),
            new_flow.clone(),
            eq(meta("l4proto"), json!("tcp")),
            eq(
                json!({"&": [payload("tcp", "flags"), {"|": ["syn", "ack"]}]}),
                json!("syn"),
            ),
        ],
        vec![through_sa, new_flow, ne(meta("l4proto"), json!("tcp"))],
    ]
}

/// Commands that remove the VM's block (nothing when it has none).
pub fn unblock_commands(vm: &str, present: &Present) -> Vec<Value> {
    let mut cmds = Vec::new();
    let chain = block_chain(vm);
    let set = peers_set(vm);
    if present.chains.contains(&chain) {
        cmds.push(json!({"delete": {"chain": {"family": "inet", "table": TABLE, "name": chain}}}));
    }
    if present.sets.contains_key(&set) {
        cmds.push(json!({"delete": {"set": {"family": "inet", "table": TABLE, "name": set}}}));
    }
    cmds
}

/// Commands that create the guard chains when missing: smig's VXLAN leaves only through
/// `ipsec0` (with charon or the SA gone it is dropped, never sent in cleartext), SYNs into
/// overlay links get their MSS clamped, and flows across overlay links are marked.
pub fn guard_commands(present: &Present) -> Vec<Value> {
    let mut cmds = vec![json!({"add": table_obj()})];
    if !present.chains.contains("guard-output") {
        cmds.push(json!({"add": base_chain("guard-output", "output", -5)}));
        cmds.push(rule(
            "guard-output",
            "smig guard vxlan only through ipsec0",
            vec![
                eq(meta("l4proto"), json!("udp")),
                eq(payload("udp", "dport"), json!(VXLAN_PORT)),
                ne(meta("oifname"), json!(IPSEC_DEV)),
                json!({"counter": null}),
                json!({"drop": null}),
            ],
        ));
    }
    if !present.chains.contains("guard-forward") {
        cmds.push(json!({"add": base_chain("guard-forward", "forward", -5)}));
        cmds.push(rule(
            "guard-forward",
            "smig guard forwarded vxlan only through ipsec0",
            vec![
                eq(meta("l4proto"), json!("udp")),
                eq(payload("udp", "dport"), json!(VXLAN_PORT)),
                ne(meta("oifname"), json!(IPSEC_DEV)),
                json!({"counter": null}),
                json!({"drop": null}),
            ],
        ));
        // Bridged packets show the bridge, not the port, here (br_netfilter): the bridge
        // table below marks packets that cross an overlay port. A flow counts as carried by
        // the SA only when it began there: its first packet (a TCP SYN, or the first of a UDP
        // flow) crossed an overlay port; a flow picked up mid-stream was set up in cleartext.
        let set_ct_mark = json!({"mangle": {"key": {"ct": {"key": "mark"}}, "value": IPSEC_MARK}});
        let new_flow = eq(json!({"ct": {"key": "state"}}), json!("new"));
        cmds.push(rule(
            "guard-forward",
            "smig guard mark ipsec flows (tcp)",
            vec![
                eq(meta("mark"), json!(IPSEC_MARK)),
                new_flow.clone(),
                eq(meta("l4proto"), json!("tcp")),
                eq(
                    json!({"&": [payload("tcp", "flags"), {"|": ["syn", "ack"]}]}),
                    json!("syn"),
                ),
                set_ct_mark.clone(),
            ],
        ));
        cmds.push(rule(
            "guard-forward",
            "smig guard mark ipsec flows (other)",
            vec![
                eq(meta("mark"), json!(IPSEC_MARK)),
                new_flow,
                ne(meta("l4proto"), json!("tcp")),
                set_ct_mark,
            ],
        ));
        cmds.push(rule(
            "guard-forward",
            "smig guard clear packet mark",
            vec![
                eq(meta("mark"), json!(IPSEC_MARK)),
                json!({"mangle": {"key": {"meta": {"key": "mark"}}, "value": 0}}),
            ],
        ));
    }
    cmds.extend(bridge_guard_commands());
    cmds
}

/// Table `bridge smig`, chain `overlay` (rebuilt each time: idempotent): packets that enter
/// or leave by an overlay port get [`IPSEC_MARK`] as packet mark, TCP SYNs into an overlay
/// port get their MSS clamped.
fn bridge_guard_commands() -> Vec<Value> {
    let overlay = json!(format!("{LINK_PREFIX}*"));
    let brule = |comment: &str, expr: Vec<Value>| {
        json!({"add": {"rule": {"family": "bridge", "table": TABLE, "chain": "overlay",
            "comment": comment, "expr": expr}}})
    };
    let mut cmds = vec![
        json!({"add": {"table": {"family": "bridge", "name": TABLE}}}),
        json!({"add": {"chain": {"family": "bridge", "table": TABLE, "name": "overlay",
            "type": "filter", "hook": "forward", "prio": -5, "policy": "accept"}}}),
        json!({"flush": {"chain": {"family": "bridge", "table": TABLE, "name": "overlay"}}}),
    ];
    for dir in ["iifname", "oifname"] {
        cmds.push(brule(
            "smig guard mark ipsec flows",
            vec![
                eq(meta(dir), overlay.clone()),
                json!({"mangle": {"key": {"meta": {"key": "mark"}}, "value": IPSEC_MARK}}),
            ],
        ));
    }
    cmds.push(brule(
        "smig guard clamp mss",
        vec![
            eq(meta("oifname"), overlay),
            eq(meta("l4proto"), json!("tcp")),
            eq(json!({"&": [payload("tcp", "flags"), "syn"]}), json!("syn")),
            json!({"mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}},
                "value": OVERLAY_MSS}}),
        ],
    ));
    cmds
}

/// Removes table `bridge smig` whether or not it exists.
fn bridge_unguard_commands() -> Vec<Value> {
    vec![
        json!({"add": {"table": {"family": "bridge", "name": TABLE}}}),
        json!({"delete": {"table": {"family": "bridge", "name": TABLE}}}),
    ]
}

/// Marks the VM as enabled through the SA only (a no-op rule carrying its name).
pub fn secure_mark_commands(vm: &str, present: &Present) -> Vec<Value> {
    let mut cmds = guard_commands(present);
    if !present.secure.contains_key(vm) {
        cmds.push(rule(
            "guard-forward",
            &secure_comment(vm),
            vec![json!({"counter": null})],
        ));
    }
    cmds
}

/// Removes the VM's secure-only mark, if any.
pub fn secure_unmark_commands(vm: &str, present: &Present) -> Vec<Value> {
    match present.secure.get(vm) {
        Some(handle) => vec![json!({"delete": {"rule": {"family": "inet", "table": TABLE,
            "chain": "guard-forward", "handle": handle}}})],
        None => Vec::new(),
    }
}

/// Removes the guard chains (when no overlay link and no secure-only VM needs them).
pub fn unguard_commands(present: &Present) -> Vec<Value> {
    let mut cmds: Vec<Value> = ["guard-output", "guard-forward"]
        .iter()
        .filter(|c| present.chains.contains(**c))
        .map(|c| json!({"delete": {"chain": {"family": "inet", "table": TABLE, "name": c}}}))
        .collect();
    cmds.extend(bridge_unguard_commands());
    cmds
}

/// What smig's table holds, read from `nft -j list table inet smig`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Present {
    pub exists: bool,
    pub chains: std::collections::BTreeSet<String>,
    /// Set name → elements.
    pub sets: BTreeMap<String, Vec<Ipv4Addr>>,
    /// VM → (address, whether flows carried by the SA pass), from block rule comments.
    pub blocks: BTreeMap<String, (Ipv4Addr, bool)>,
    /// VM → handle of its secure-only mark rule.
    pub secure: BTreeMap<String, u64>,
}

impl Present {
    /// Whether anything besides the (possibly empty) table is left.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.sets.is_empty()
    }
    /// What remains once the VM's block and secure-only mark are gone.
    pub fn without_vm(&self, vm: &str) -> Present {
        let mut p = self.clone();
        p.chains.remove(&block_chain(vm));
        p.sets.remove(&peers_set(vm));
        p.blocks.remove(vm);
        p.secure.remove(vm);
        p
    }
    /// Whether only the guard chains (or nothing) are left.
    pub fn only_guard(&self) -> bool {
        self.sets.is_empty()
            && self.secure.is_empty()
            && self
                .chains
                .iter()
                .all(|c| c == "guard-output" || c == "guard-forward")
    }
    /// The block rules, as discovery reports them.
    pub fn block_rules(&self) -> Vec<BlockRule> {
        self.blocks
            .iter()
            .map(|(vm, &(address, allow_ipsec))| BlockRule {
                vm: vm.clone(),
                address,
                peers: self.sets.get(&peers_set(vm)).cloned().unwrap_or_default(),
                allow_ipsec,
            })
            .collect()
    }
}

fn parse_elem(v: &Value, out: &mut Vec<Ipv4Addr>) {
    match v {
        Value::String(s) => {
            if let Ok(a) = s.parse() {
                out.push(a);
            }
        }
        Value::Object(o) => {
            if let Some(inner) = o.get("elem").and_then(|e| e.get("val")) {
                parse_elem(inner, out);
            }
        }
        _ => {}
    }
}

/// Parses the output of `nft -j list table inet smig`.
pub fn parse_table(json: &Value) -> Result<Present, String> {
    let items = json
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("nft JSON output has no \"nftables\" array")?;
    let mut p = Present::default();
    for item in items {
        if let Some(t) = item.get("table") {
            if t.get("name").and_then(Value::as_str) == Some(TABLE) {
                p.exists = true;
            }
        }
        if let Some(c) = item.get("chain") {
            if let Some(name) = c.get("name").and_then(Value::as_str) {
                p.chains.insert(name.to_string());
            }
        }
        if let Some(s) = item.get("set") {
            if let Some(name) = s.get("name").and_then(Value::as_str) {
                let mut elems = Vec::new();
                match s.get("elem") {
                    Some(Value::Array(a)) => a.iter().for_each(|e| parse_elem(e, &mut elems)),
                    Some(e) => parse_elem(e, &mut elems),
                    None => {}
                }
                elems.sort();
                p.sets.insert(name.to_string(), elems);
            }
        }
        if let Some(r) = item.get("rule") {
            let comment = r.get("comment").and_then(Value::as_str).unwrap_or("");
            if let Some((vm, addr, allow_ipsec)) = parse_block_comment(comment) {
                p.blocks.insert(vm, (addr, allow_ipsec));
            } else if let Some(vm) = comment.strip_prefix("smig secure vm=") {
                let handle = r.get("handle").and_then(Value::as_u64).unwrap_or(0);
                p.secure.insert(vm.to_string(), handle);
            }
        }
    }
    Ok(p)
}

fn parse_block_comment(c: &str) -> Option<(String, Ipv4Addr, bool)> {
    let rest = c.strip_prefix("smig block vm=")?;
    let (rest, allow_ipsec) = match rest.strip_suffix(ALLOW_IPSEC) {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let (vm, addr) = rest.rsplit_once(" addr=")?;
    Some((vm.to_string(), addr.parse().ok()?, allow_ipsec))
}

/// One TCP flow to reset, as both directions' 4-tuples see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
}

/// The family of smig's transient reset table (`netdev smig`), which goes as a whole.
pub const RESET_FAMILY: &str = "netdev";

/// Name of the transient reset chain in table `netdev smig`.
pub const RESET_CHAIN: &str = "reset";

/// Commands that answer the next packet of each flow (either direction) entering one of
/// `devices` (the ports of the VM's bridge) with a TCP reset sent back out of that port: the
/// guests' own stacks see the RST and reconnect. (The kernel here has no bridge-family
/// reject; netdev-family ingress reject works on bridge ports.)
pub fn reset_commands(flows: &[Flow], devices: &[String]) -> Vec<Value> {
    let mut cmds = vec![json!({"add": {"table": {"family": RESET_FAMILY, "name": TABLE}}})];
    for (i, dev) in devices.iter().enumerate() {
        let chain = format!("{RESET_CHAIN}-{i}");
        cmds.push(
            json!({"add": {"chain": {"family": RESET_FAMILY, "table": TABLE, "name": chain,
            "type": "filter", "hook": "ingress", "dev": dev, "prio": -10,
            "policy": "accept"}}}),
        );
        for (n, f) in flows.iter().enumerate() {
            for (s, sp, d, dp) in [
                (f.src, f.sport, f.dst, f.dport),
                (f.dst, f.dport, f.src, f.sport),
            ] {
                cmds.push(
                    json!({"add": {"rule": {"family": RESET_FAMILY, "table": TABLE,
                    "chain": chain, "comment": format!("smig reset {n}"),
                    "expr": [
                        eq(payload("ip", "saddr"), json!(s.to_string())),
                        eq(payload("ip", "daddr"), json!(d.to_string())),
                        eq(payload("tcp", "sport"), json!(sp)),
                        eq(payload("tcp", "dport"), json!(dp)),
                        json!({"counter": null}),
                        json!({"reject": {"type": "tcp reset"}}),
                    ]}}}),
                );
            }
        }
    }
    cmds
}

/// Deletes table `inet smig` with whatever is left in it.
pub fn delete_table_commands() -> Vec<Value> {
    let mut cmds = vec![json!({"delete": {"table": {"family": "inet", "name": TABLE}}})];
    cmds.extend(bridge_unguard_commands());
    cmds
}

/// Which flows (by index in [`reset_commands`]) have been answered with a reset, from the
/// counters of table `netdev smig`'s rules.
pub fn resets_sent(rules: &[RuleCount]) -> std::collections::BTreeSet<usize> {
    rules
        .iter()
        .filter(|r| r.packets > 0)
        .filter_map(|r| {
            r.comment
                .as_deref()?
                .strip_prefix("smig reset ")?
                .parse()
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_db() -> BlockRule {
        BlockRule {
            vm: "db".into(),
            address: "192.168.10.12".parse().unwrap(),
            peers: vec!["192.168.10.11".parse().unwrap()],
            allow_ipsec: false,
        }
    }

    #[test]
    fn block_renders_a_chain_a_set_and_two_commented_rules() {
        let cmds = block_commands(&rule_db(), &Present::default());
        let s = serde_json::to_string(&batch(cmds)).unwrap();
        assert!(s.contains(r#""name":"block-db""#), "{s}");
        assert!(s.contains(r#""hook":"forward""#), "{s}");
        assert!(s.contains(r#""elem":["192.168.10.11"]"#), "{s}");
        assert_eq!(s.matches("smig block vm=db addr=192.168.10.12").count(), 2);
        assert!(
            !s.contains("flush"),
            "nothing to flush in an empty table: {s}"
        );
    }

    #[test]
    fn block_replaces_an_existing_block() {
        let mut p = Present::default();
        p.chains.insert("block-db".into());
        p.sets.insert("peers-db".into(), vec![]);
        let s = serde_json::to_string(&block_commands(&rule_db(), &p)).unwrap();
        assert_eq!(s.matches("flush").count(), 2, "{s}");
    }

    #[test]
    fn a_prestaged_filter_lets_only_flows_begun_through_the_sa_pass() {
        let rule = BlockRule {
            allow_ipsec: true,
            ..rule_db()
        };
        let cmds = block_commands(&rule, &Present::default());
        let rules: Vec<&Value> = cmds
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .filter(|r| r["chain"] == "block-db")
            .collect();
        // Per direction: three accepts for flows through the SA, then the drop.
        assert_eq!(rules.len(), 8);
        let verdicts: Vec<bool> = rules
            .iter()
            .map(|r| {
                r["expr"]
                    .as_array()
                    .unwrap()
                    .last()
                    .unwrap()
                    .get("drop")
                    .is_some()
            })
            .collect();
        assert_eq!(
            verdicts,
            [false, false, false, true, false, false, false, true]
        );
        let comment = rules[0]["comment"].as_str().unwrap();
        assert_eq!(
            parse_block_comment(comment),
            Some(("db".into(), rule.address, true))
        );
        // Every accept needs the packet to have crossed an overlay port.
        for r in rules
            .iter()
            .filter(|r| r["expr"].to_string().contains(r#"{"accept":null}"#))
        {
            assert!(
                r["expr"].to_string().contains(&IPSEC_MARK.to_string()),
                "{r}"
            );
        }
        // The guard that marks those packets comes with it.
        assert!(cmds
            .iter()
            .any(|c| c["add"]["chain"]["name"] == "guard-forward"));
        let plain =
            serde_json::to_string(&block_commands(&rule_db(), &Present::default())).unwrap();
        assert!(
            !plain.contains(r#"{"accept":null}"#) && !plain.contains("guard"),
            "{plain}"
        );
    }

    #[test]
    fn unblock_of_an_absent_vm_does_nothing() {
        assert!(unblock_commands("db", &Present::default()).is_empty());
    }

    #[test]
    fn parses_block_rules_back_from_nft_json() {
        let out = json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "smig", "handle": 3}},
            {"chain": {"family": "inet", "table": "smig", "name": "block-db", "handle": 1,
                "type": "filter", "hook": "forward", "prio": -10, "policy": "accept"}},
            {"set": {"family": "inet", "name": "peers-db", "table": "smig", "type": "ipv4_addr",
                "handle": 2, "elem": ["192.168.10.11", "192.168.10.1"]}},
            {"rule": {"family": "inet", "table": "smig", "chain": "block-db", "handle": 4,
                "comment": "smig block vm=db addr=192.168.10.12", "expr": []}},
            {"rule": {"family": "inet", "table": "smig", "chain": "guard-forward", "handle": 9,
                "comment": "smig secure vm=web", "expr": []}}
        ]});
        let p = parse_table(&out).unwrap();
        assert!(p.exists);
        let rules = p.block_rules();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].vm, "db");
        assert_eq!(
            rules[0].address,
            "192.168.10.12".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(rules[0].peers.len(), 2);
        assert_eq!(p.secure.get("web"), Some(&9));
    }

    #[test]
    fn vm_names_with_spaces_survive_the_comment() {
        assert_eq!(
            parse_block_comment("smig block vm=a b addr=10.0.0.1"),
            Some(("a b".into(), "10.0.0.1".parse().unwrap(), false))
        );
        assert_eq!(
            parse_block_comment("smig block vm=a b addr=10.0.0.1 allow=ipsec"),
            Some(("a b".into(), "10.0.0.1".parse().unwrap(), true))
        );
        assert_eq!(parse_block_comment("lab rule"), None);
    }

    #[test]
    fn malformed_output_is_an_error() {
        assert!(parse_table(&json!({"x": 1})).is_err());
    }

    #[test]
    fn guard_is_created_once() {
        let fresh = guard_commands(&Present::default());
        assert!(fresh.len() > 3);
        let mut p = Present::default();
        p.chains.insert("guard-output".into());
        p.chains.insert("guard-forward".into());
        let again = serde_json::to_string(&guard_commands(&p)).unwrap();
        assert!(!again.contains("guard-output"), "{again}");
        assert!(
            again.contains(r#""flush""#),
            "bridge chain rebuilt: {again}"
        );
    }

    #[test]
    fn resets_are_counted_per_flow() {
        let rule = |comment: Option<&str>, packets| RuleCount {
            comment: comment.map(str::to_string),
            packets,
        };
        let listed = [
            rule(Some("smig reset 0"), 0),
            rule(Some("smig reset 1"), 1),
            rule(Some("smig reset 0"), 0),
            rule(Some("other"), 9),
            rule(None, 3),
        ];
        assert_eq!(
            resets_sent(&listed).into_iter().collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn reset_rules_cover_both_directions() {
        let f = Flow {
            src: "192.168.10.11".parse().unwrap(),
            sport: 40000,
            dst: "192.168.10.12".parse().unwrap(),
            dport: 7,
        };
        let s = serde_json::to_string(&reset_commands(&[f], &["vx-app".into()])).unwrap();
        assert_eq!(s.matches("tcp reset").count(), 2, "{s}");
    }
}
