//! Parsing and structural decoding: HCL text → blocks and attributes with spans, checked
//! against the language's block schema (unknown blocks and attributes, labels, duplicates).

use super::depth;
use super::diagnostic::{Code, Loc, Sink};
use hcl_edit::expr::Expression;
use hcl_edit::structure::{Block, Body, Structure};
use hcl_edit::Span;
use std::ops::Range;

/// The shape of a block type: its labels, attributes and nested blocks.
pub(crate) struct Schema {
    pub kind: &'static str,
    /// Label names; their count is the number of labels the block takes.
    pub labels: &'static [&'static str],
    pub attrs: &'static [&'static str],
    /// Any attribute name is accepted (`locals`).
    pub any_attrs: bool,
    pub blocks: &'static [&'static Schema],
    /// Whether the block may appear more than once in its parent.
    pub repeat: bool,
}

const HOST: Schema = Schema {
    kind: "host",
    labels: &["name"],
    attrs: &["libvirt", "address", "network"],
    any_attrs: false,
    blocks: &[],
    repeat: true,
};
const ROUTING_CORE: Schema = Schema {
    kind: "routing_core",
    labels: &[],
    attrs: &["network"],
    any_attrs: false,
    blocks: &[],
    repeat: false,
};
const ENVIRONMENT: Schema = Schema {
    kind: "environment",
    labels: &["name"],
    attrs: &["trusted"],
    any_attrs: false,
    blocks: &[&HOST, &ROUTING_CORE],
    repeat: true,
};
const SUBNET: Schema = Schema {
    kind: "subnet",
    labels: &["name"],
    attrs: &["cidr"],
    any_attrs: false,
    blocks: &[],
    repeat: true,
};
const MIGRATION: Schema = Schema {
    kind: "migration",
    labels: &[],
    attrs: &["mode", "max_downtime_ms", "strategy", "bandwidth_mibps"],
    any_attrs: false,
    blocks: &[],
    repeat: false,
};
const VM: Schema = Schema {
    kind: "vm",
    labels: &["name"],
    attrs: &["count", "for_each", "host", "subnet", "address", "domain"],
    any_attrs: false,
    blocks: &[&MIGRATION],
    repeat: true,
};
const IPSEC: Schema = Schema {
    kind: "ipsec",
    labels: &[],
    attrs: &["proposals", "psk", "cert", "key", "ca"],
    any_attrs: false,
    blocks: &[],
    repeat: false,
};
const SECURE_LINK: Schema = Schema {
    kind: "secure_link",
    labels: &["name"],
    attrs: &["count", "for_each", "between"],
    any_attrs: false,
    blocks: &[&IPSEC],
    repeat: true,
};
const POLICY: Schema = Schema {
    kind: "policy",
    labels: &[],
    attrs: &[
        "tls_ports",
        "route_check_timeout_s",
        "route_check_interval_s",
        "parallelism",
        "allow_insecure_transport",
    ],
    any_attrs: false,
    blocks: &[],
    repeat: false,
};
const VALIDATION: Schema = Schema {
    kind: "validation",
    labels: &[],
    attrs: &["condition", "error_message"],
    any_attrs: false,
    blocks: &[],
    repeat: true,
};
const VARIABLE: Schema = Schema {
    kind: "variable",
    labels: &["name"],
    attrs: &["type", "default", "sensitive", "description", "nullable"],
    any_attrs: false,
    blocks: &[&VALIDATION],
    repeat: true,
};
const LOCALS: Schema = Schema {
    kind: "locals",
    labels: &[],
    attrs: &[],
    any_attrs: true,
    blocks: &[],
    repeat: true,
};
/// The top level of a configuration file.
pub(crate) const ROOT: Schema = Schema {
    kind: "",
    labels: &[],
    attrs: &[],
    any_attrs: false,
    blocks: &[
        &ENVIRONMENT,
        &SUBNET,
        &VM,
        &SECURE_LINK,
        &POLICY,
        &VARIABLE,
        &LOCALS,
    ],
    repeat: false,
};

/// An attribute with its spans.
#[derive(Debug, Clone)]
pub(crate) struct RawAttr {
    pub name: String,
    pub expr: Expression,
    pub key: Loc,
    pub value: Loc,
}

/// A block with its spans, its attributes and nested blocks, in source order.
#[derive(Debug, Clone)]
pub(crate) struct RawBlock {
    pub kind: &'static str,
    pub labels: Vec<(String, Loc)>,
    pub attrs: Vec<RawAttr>,
    pub blocks: Vec<RawBlock>,
    /// The block's header: its type and labels.
    pub head: Loc,
}

impl RawBlock {
    pub fn attr(&self, name: &str) -> Option<&RawAttr> {
        self.attrs.iter().find(|a| a.name == name)
    }
    pub fn block(&self, kind: &str) -> Option<&RawBlock> {
        self.blocks.iter().find(|b| b.kind == kind)
    }
    pub fn blocks<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a RawBlock> + 'a {
        self.blocks.iter().filter(move |b| b.kind == kind)
    }
    /// The block's name (its first label); empty when it has none.
    pub fn name(&self) -> &str {
        self.labels.first().map_or("", |(n, _)| n.as_str())
    }
    /// The location of the name label, or of the header.
    pub fn name_loc(&self) -> &Loc {
        self.labels.first().map_or(&self.head, |(_, l)| l)
    }
}

fn loc(file: usize, span: Option<Range<usize>>) -> Loc {
    Loc {
        file,
        span: span.unwrap_or(0..0),
    }
}

/// Whether `s` is a valid name for a block: an identifier (letters, digits, `_`, `-`, not
/// starting with a digit or `-`).
pub(crate) fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Parses one file into its top-level blocks, reporting syntax problems to `sink`.
/// Returns `None` when the file cannot be parsed at all.
pub(crate) fn parse_file(file: usize, text: &str, sink: &mut Sink) -> Option<Body> {
    if let Some(at) = depth::too_deep_at(text) {
        sink.error(
            Code::TooDeep,
            &Loc { file, span: at..at + 1 },
            format!("nesting deeper than {} levels", depth::MAX_DEPTH),
            "too deep",
            "flatten the expression or block structure; deep nesting is refused to keep parsing bounded",
        );
        return None;
    }
    match hcl_edit::parser::parse_body(text) {
        Ok(body) => Some(body),
        Err(e) => {
            let offset = e.location().offset().min(text.len());
            let end = next_char_boundary(text, offset);
            if e.message().contains("nesting depth") {
                sink.error(
                    Code::TooDeep,
                    &Loc {
                        file,
                        span: offset..end,
                    },
                    format!("syntax error: {}", e.message()),
                    "too deep",
                    "flatten the expression or block structure",
                );
                return None;
            }
            let (span, message, label) = match depth::unclosed(text) {
                Some(depth::Unclosed::String(at)) => (
                    at..at + 1,
                    "unclosed string".to_string(),
                    "this string is not closed on its line",
                ),
                Some(depth::Unclosed::Heredoc(at)) => (
                    at..at + 2,
                    "unclosed heredoc".to_string(),
                    "this heredoc has no closing delimiter line",
                ),
                Some(depth::Unclosed::Bracket(at)) if at < offset => (
                    at..at + 1,
                    "unclosed bracket".to_string(),
                    "opened here, never closed",
                ),
                _ => (
                    offset..end,
                    format!("syntax error: {}", e.message()),
                    "here",
                ),
            };
            let help = if span.start == offset {
                "check for unclosed brackets, strings or heredocs near this point".to_string()
            } else {
                let line = text.as_bytes()[..offset]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1;
                format!("the parser stopped at line {line}: {}", e.message())
            };
            sink.error(Code::Syntax, &Loc { file, span }, message, label, help);
            None
        }
    }
}

fn next_char_boundary(text: &str, offset: usize) -> usize {
    if offset >= text.len() {
        return offset;
    }
    let mut end = offset + 1;
    while end < text.len() && !text.is_char_boundary(end) {
        end += 1;
    }
    end
}

/// Decodes a parsed body against `schema`, reporting unknown blocks and attributes.
pub(crate) fn decode_root(file: usize, body: Body, sink: &mut Sink) -> Vec<RawBlock> {
    let (attrs, blocks) = decode_body(file, body, &ROOT, sink);
    debug_assert!(attrs.is_empty());
    blocks
}

fn decode_body(
    file: usize,
    body: Body,
    schema: &Schema,
    sink: &mut Sink,
) -> (Vec<RawAttr>, Vec<RawBlock>) {
    let mut attrs: Vec<RawAttr> = Vec::new();
    let mut blocks: Vec<RawBlock> = Vec::new();
    // The blocks take the expressions out of the syntax tree: it is not needed afterwards.
    for structure in body {
        match structure {
            Structure::Attribute(attr) => {
                let name = attr.key.as_str();
                let key = loc(file, attr.key.span());
                if !schema.any_attrs && !schema.attrs.contains(&name) {
                    let what = if schema.kind.is_empty() {
                        "attributes are not allowed at the top level of a file".to_string()
                    } else {
                        format!("`{}` blocks have no attribute `{name}`", schema.kind)
                    };
                    let help = suggestion(name, schema.attrs, "attributes");
                    sink.error(
                        Code::UnknownAttribute,
                        &key,
                        format!("unknown attribute `{name}`"),
                        what,
                        help,
                    );
                    continue;
                }
                if let Some(first) = attrs.iter().find(|a| a.name == name) {
                    let first_pos = sink.position(&first.key);
                    sink.error(
                        Code::DuplicateName,
                        &key,
                        format!("attribute `{name}` is set twice"),
                        "set again here",
                        format!("it is first set at {first_pos}; keep one"),
                    );
                    continue;
                }
                let value = loc(file, attr.value.span());
                attrs.push(RawAttr {
                    name: name.to_string(),
                    expr: attr.value,
                    key,
                    value,
                });
            }
            Structure::Block(block) => {
                if let Some(b) = decode_block(file, block, schema, sink) {
                    if !b.kind.is_empty() {
                        let repeat = schema
                            .blocks
                            .iter()
                            .find(|s| s.kind == b.kind)
                            .is_none_or(|s| s.repeat);
                        if !repeat {
                            if let Some(first) = blocks.iter().find(|x| x.kind == b.kind) {
                                let first_pos = sink.position(&first.head);
                                sink.error(
                                    Code::DuplicateName,
                                    &b.head,
                                    format!("more than one `{}` block", b.kind),
                                    "second block",
                                    format!(
                                        "only one is allowed here; the first is at {first_pos}"
                                    ),
                                );
                                continue;
                            }
                        }
                    }
                    blocks.push(b);
                }
            }
        }
    }
    (attrs, blocks)
}

fn decode_block(file: usize, block: Block, parent: &Schema, sink: &mut Sink) -> Option<RawBlock> {
    let kind = block.ident.as_str();
    let ident_loc = loc(file, block.ident.span());
    let Some(schema) = parent.blocks.iter().find(|s| s.kind == kind) else {
        let kinds: Vec<&str> = parent.blocks.iter().map(|s| s.kind).collect();
        let label = if parent.kind.is_empty() {
            "not a block type of the language".to_string()
        } else {
            format!("`{}` blocks have no `{kind}` block", parent.kind)
        };
        let help = if parent.attrs.contains(&kind) {
            format!("`{kind}` is an attribute here: write `{kind} = ...`")
        } else {
            suggestion(kind, &kinds, "blocks")
        };
        sink.error(
            Code::UnknownBlock,
            &ident_loc,
            format!("unknown block type `{kind}`"),
            label,
            help,
        );
        return None;
    };
    let head_end = block
        .labels
        .last()
        .and_then(|l| l.span())
        .map_or(ident_loc.span.end, |s| s.end);
    let head = Loc {
        file,
        span: ident_loc.span.start..head_end.max(ident_loc.span.start),
    };
    let mut labels = Vec::new();
    for label in &block.labels {
        labels.push((label.as_str().to_string(), loc(file, label.span())));
    }
    if labels.len() != schema.labels.len() {
        let want = match schema.labels.len() {
            0 => "no labels".to_string(),
            1 => format!("one label, its {}", schema.labels[0]),
            n => format!("{n} labels"),
        };
        let example = if schema.labels.is_empty() {
            format!("{kind} {{ ... }}")
        } else {
            format!("{kind} \"name\" {{ ... }}")
        };
        sink.error(
            Code::InvalidLabel,
            &head,
            format!("`{kind}` takes {want}, found {}", labels.len()),
            "wrong labels",
            format!("write `{example}`"),
        );
        return None;
    }
    if let Some((name, l)) = labels.first() {
        if !is_name(name) {
            sink.error(
                Code::InvalidLabel,
                l,
                format!("`{name}` is not a valid {kind} name"),
                "invalid name",
                "names start with a letter or `_` and hold only letters, digits, `_` and `-`",
            );
            return None;
        }
    }
    let (attrs, blocks) = decode_body(file, block.body, schema, sink);
    Some(RawBlock {
        kind: schema.kind,
        labels,
        attrs,
        blocks,
        head,
    })
}

/// The spans of the `default` values of variables declared `sensitive = true`.
pub(crate) fn sensitive_default_spans(body: &Body) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    for b in body.blocks() {
        if b.ident.as_str() != "variable" {
            continue;
        }
        let sensitive = b
            .body
            .get_attribute("sensitive")
            .is_some_and(|a| !matches!(a.value, Expression::Bool(ref v) if !*v.value()));
        if sensitive {
            if let Some(span) = b.body.get_attribute("default").and_then(|a| a.value.span()) {
                out.push(span);
            }
        }
    }
    out
}

/// A "did you mean" help for `name` among `known`.
pub(crate) fn suggestion(name: &str, known: &[&str], what: &str) -> String {
    let best = known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 1.max(k.len() / 3))
        .min();
    match best {
        Some((_, k)) => format!("did you mean `{k}`?"),
        None if known.is_empty() => format!("there are no {what} here"),
        None => format!("known {what}: {}", known.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(64).collect();
    let b: Vec<char> = b.chars().take(64).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_name("web"));
        assert!(is_name("web_db-2"));
        assert!(!is_name("2web"));
        assert!(!is_name("web[0]"));
        assert!(!is_name("a.b"));
        assert!(!is_name(""));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggestion("adress", &["address", "host"], "attributes"),
            "did you mean `address`?"
        );
        assert!(suggestion("zzz", &["address"], "attributes").starts_with("known"));
    }
}
