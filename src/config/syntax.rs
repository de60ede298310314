//! Parsing and structural decoding: HCL text → blocks and attributes with spans, checked
//! against the language's block schema (unknown blocks and attributes, labels, duplicates).

use super::depth;
use super::diagnostic::{Code, Loc, Origin, Sink};
use super::eval::Refs;
use hcl_edit::expr::Expression;
use hcl_edit::structure::{Block, Body, Structure};
use hcl_edit::Span;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
    /// The value as the evaluator takes it: without the syntax tree's layout and spans, its
    /// templates compiled (see [`compile`](super::eval::compile)).
    pub expr: hcl::Expression,
    /// What the value refers to, with the places in the file.
    pub refs: Refs,
    pub key: Loc,
    pub value: Loc,
}

impl RawAttr {
    /// The attribute `name = value` of a text parsed at `at`, `key` being the span of its
    /// name. The references are read off the syntax tree (which has the spans), then the
    /// value is moved out of it.
    pub fn new(at: Origin, name: &str, key: Option<Range<usize>>, value: Expression) -> Self {
        let mut refs = Refs::default();
        refs.collect(at, &value);
        // Kept for the whole load, one per attribute: no spare capacity.
        refs.refs.shrink_to_fit();
        RawAttr {
            name: name.to_string(),
            key: at.loc(key),
            value: at.loc(value.span()),
            refs,
            expr: super::eval::compile(value.into(), 0),
        }
    }
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

/// A file's top-level blocks, decoded, and the spans of its sensitive variable defaults.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub blocks: Vec<RawBlock>,
    pub sensitive_spans: Vec<Range<usize>>,
}

/// Files from this size on are parsed in parts.
const PARTS_FROM_BYTES: usize = 256 * 1024;
/// About the size of a part: the syntax tree of a part is many times its text, and only the
/// parts being parsed have one.
const PART_BYTES: usize = 128 * 1024;

/// Parses and decodes a large file in parts, on up to four threads: the top-level blocks and
/// the spans of sensitive variable defaults, as [`parse_file`], [`sensitive_default_spans`]
/// and [`decode_root`] give them. Each part is decoded as soon as it is parsed, so the
/// syntax trees of only a few parts exist at a time. `None` when the file is small or any
/// part has a problem: the caller then parses the file whole, so every diagnostic is the one
/// a whole parse reports.
///
/// A part ends after a line holding only `}` that is followed (past empty lines) by a line
/// starting with a letter: in a usual file, the end of a top-level block. Parsed alone, a
/// part cut anywhere else (inside a block, a heredoc or a comment) is left unclosed and
/// fails, so a file whose parts all parse and decode cleanly yields the blocks of its whole
/// parse, in order.
pub(crate) fn parse_in_parts(file: usize, text: &str, sink: &Sink) -> Option<Decoded> {
    if text.len() < PARTS_FROM_BYTES || depth::too_deep_at(text).is_some() {
        return None;
    }
    let mut bounds = vec![0];
    while let Some(at) = part_boundary(text, bounds.last()? + PART_BYTES) {
        bounds.push(at);
    }
    bounds.push(text.len());
    bounds.dedup();
    let parts: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
    if parts.len() < 2 {
        return None;
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(parts.len());
    // Each thread takes the next part until none is left or one has failed.
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let work = || {
        let mut done = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(start, end)) = parts.get(i) else {
                break;
            };
            match parse_part(file, text, start..end, sink) {
                Some(d) => done.push((i, d)),
                None => failed.store(true, Ordering::Relaxed),
            }
        }
        done
    };
    let mut done: Vec<(usize, Decoded)> = std::thread::scope(|scope| {
        // The parser recurses: the helpers get as much stack as the main thread has.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .stack_size(8 << 20)
                    .spawn_scoped(scope, work)
                    .ok()
            })
            .collect();
        let mut done = work();
        for h in helpers {
            match h.join() {
                Ok(d) => done.extend(d),
                Err(_) => failed.store(true, Ordering::Relaxed),
            }
        }
        done
    });
    if failed.load(Ordering::Relaxed) || done.len() != parts.len() {
        return None;
    }
    done.sort_unstable_by_key(|(i, _)| *i);
    let mut blocks = Vec::new();
    let mut sensitive_spans = Vec::new();
    for (_, part) in done {
        blocks.extend(part.blocks);
        sensitive_spans.extend(part.sensitive_spans);
    }
    // Blocks allowed once at the top level are checked per part; across parts, a second one
    // is reported by the whole parse.
    for schema in ROOT.blocks.iter().filter(|s| !s.repeat) {
        if blocks.iter().filter(|b| b.kind == schema.kind).count() > 1 {
            return None;
        }
    }
    Some(Decoded {
        blocks,
        sensitive_spans,
    })
}

/// One part of a file, parsed and decoded; `None` if it has any problem.
fn parse_part(file: usize, text: &str, part: Range<usize>, sink: &Sink) -> Option<Decoded> {
    let start = part.start;
    let body = hcl_edit::parser::parse_body(text.get(part)?).ok()?;
    let sensitive_spans = sensitive_default_spans(&body)
        .into_iter()
        .map(|s| s.start + start..s.end + start)
        .collect();
    let mut part_sink = Sink {
        files: sink.files.clone(),
        ..Default::default()
    };
    let at = Origin {
        file,
        offset: start,
    };
    let blocks = decode_root(at, body, &mut part_sink);
    (!part_sink.has_errors()).then_some(Decoded {
        blocks,
        sensitive_spans,
    })
}

/// The first offset after `from` that starts a line beginning with a letter, after a line
/// holding only `}` and any empty lines.
fn part_boundary(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut at = from;
    while at < text.len() && !text.is_char_boundary(at) {
        at += 1;
    }
    loop {
        let found = text.get(at..)?.find("\n}\n")?;
        let mut next = at + found + 3;
        while bytes.get(next) == Some(&b'\n') {
            next += 1;
        }
        if bytes.get(next).is_some_and(u8::is_ascii_alphabetic) {
            return Some(next);
        }
        at = at + found + 1;
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
pub(crate) fn decode_root(at: Origin, body: Body, sink: &mut Sink) -> Vec<RawBlock> {
    let (attrs, blocks) = decode_body(at, body, &ROOT, sink);
    debug_assert!(attrs.is_empty());
    blocks
}

fn decode_body(
    at: Origin,
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
                let key = at.loc(attr.key.span());
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
                attrs.push(RawAttr::new(at, name, attr.key.span(), attr.value));
            }
            Structure::Block(block) => {
                if let Some(b) = decode_block(at, block, schema, sink) {
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
    attrs.shrink_to_fit();
    blocks.shrink_to_fit();
    (attrs, blocks)
}

fn decode_block(at: Origin, block: Block, parent: &Schema, sink: &mut Sink) -> Option<RawBlock> {
    let kind = block.ident.as_str();
    let ident_loc = at.loc(block.ident.span());
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
        .map_or(ident_loc.span.end, |s| s.end + at.offset);
    let head = Loc {
        file: at.file,
        span: ident_loc.span.start..head_end.max(ident_loc.span.start),
    };
    let mut labels = Vec::new();
    for label in &block.labels {
        labels.push((label.as_str().to_string(), at.loc(label.span())));
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
    let (attrs, blocks) = decode_body(at, block.body, schema, sink);
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

    /// A file of `n` VM blocks (about 200 bytes each, with a non-ASCII comment), numbered from 0.
    fn vms(n: usize) -> String {
        (0..n)
            .map(|i| {
                format!(
                    "vm \"vm{i}\" {{\n  host    = environment.dc.host.hv{}\n  subnet  = subnet.app # Ωmega\n  address = \"10.0.{}.{}\"\n  migration {{\n    mode = \"live\"\n  }}\n}}\n\n",
                    i % 7,
                    i / 250,
                    i % 250
                )
            })
            .collect()
    }

    fn whole(text: &str) -> Option<Decoded> {
        let mut sink = Sink::default();
        let body = parse_file(0, text, &mut sink)?;
        let sensitive_spans = sensitive_default_spans(&body);
        let blocks = decode_root(Origin::file(0), body, &mut sink);
        (!sink.has_errors()).then_some(Decoded {
            blocks,
            sensitive_spans,
        })
    }

    fn in_parts(text: &str) -> Option<Decoded> {
        parse_in_parts(0, text, &Sink::default())
    }

    #[test]
    fn a_large_file_parsed_in_parts_gives_the_blocks_of_a_whole_parse() {
        let sensitive = "variable \"key\" {\n  sensitive = true\n  default   = \"k\"\n}\n\n";
        let text = format!("{sensitive}{}{sensitive}", vms(3000)).replacen("key", "key2", 1);
        assert!(text.len() >= PARTS_FROM_BYTES);
        let Some(Decoded {
            blocks,
            sensitive_spans: spans,
        }) = in_parts(&text)
        else {
            // One core: nothing to compare.
            assert_eq!(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
                1
            );
            return;
        };
        let want = whole(&text).unwrap();
        let (want_blocks, want_spans) = (want.blocks, want.sensitive_spans);
        assert_eq!(blocks.len(), 3002);
        assert_eq!(spans, want_spans);
        assert_eq!(spans.len(), 2);
        // Spans, labels, attributes, references and expressions alike.
        assert_eq!(format!("{blocks:?}"), format!("{want_blocks:?}"));
        let last = &blocks[3000];
        assert_eq!(&text[last.name_loc().span.clone()], "\"vm2999\"");
        let host = &last.attr("host").unwrap().refs.refs[0];
        assert_eq!(&text[host.loc.span.clone()], "environment.dc.host.hv3");
        // A cut searched from inside a character.
        let inside = text.find('Ω').unwrap() + 1;
        assert!(part_boundary(&text, inside).is_some_and(|at| text.is_char_boundary(at)));
    }

    #[test]
    fn a_file_whose_parts_do_not_stand_alone_is_left_to_a_whole_parse() {
        let head = vms(1500);
        let tail = vms(1500);
        // A heredoc and a comment that run across any cut between the two halves.
        let heredoc = format!("locals {{\n  doc = <<EOT\n{head}EOT\n}}\n\n{tail}");
        let comment = format!("/*\n{head}*/\n{tail}");
        // Blocks written without indentation: a `}` line inside a block.
        let flat = format!("{}{tail}", head.replace("  ", ""));
        for text in [&heredoc, &comment, &flat] {
            assert!(text.len() >= PARTS_FROM_BYTES);
            match in_parts(text) {
                None => {}
                Some(parts) => {
                    let want = whole(text).unwrap();
                    assert_eq!(format!("{:?}", parts.blocks), format!("{:?}", want.blocks));
                    assert_eq!(parts.sensitive_spans, want.sensitive_spans);
                }
            }
        }
        // A problem in a part, or a block allowed once written in two parts.
        let policy = "policy {\n  parallelism = 2\n}\n\n";
        let bad = format!("{head}vm \"x\" {{\n  colour = 1\n}}\n\n{tail}");
        let twice = format!("{policy}{head}{tail}{policy}");
        for text in [&bad, &twice] {
            assert!(in_parts(text).is_none());
        }
        assert!(in_parts(&vms(10)).is_none(), "small files are parsed whole");
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
