//! Canonical formatting (`smig fmt`), in the manner of `terraform fmt`: two spaces per nesting
//! level, one space around `=` with the `=` of consecutive single-line attributes aligned,
//! single spaces between a block's type, labels and `{`, at most one blank line in a row and
//! none at the start or end of a body, no trailing whitespace. Comments are kept; expressions
//! are printed as written. Formatting a formatted file changes nothing.

use super::diagnostic::{ConfigErrors, SharedSource, Sink};
use super::syntax;
use super::SourceFile;
use hcl_edit::structure::{Body, Structure};
use hcl_edit::{Decorate, RawString, Span};
use std::sync::Arc;

pub(crate) fn format(source: &SourceFile) -> Result<String, ConfigErrors> {
    let mut sink = Sink {
        files: vec![SharedSource {
            name: Arc::from(source.name.as_str()),
            text: Arc::from(source.text.as_str()),
        }],
        ..Default::default()
    };
    let Some(body) = syntax::parse_file(0, &source.text, &mut sink) else {
        return Err(ConfigErrors::new(sink.errors));
    };
    let mut out = String::with_capacity(source.text.len());
    emit_body(&body, &source.text, 0, &mut out);
    // The file ends with exactly one newline.
    let kept = out.trim_end_matches(['\n', '\r', ' ', '\t']).len();
    out.truncate(kept);
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(out)
}

/// The text of a node as written in the source (expressions are never re-encoded: the
/// encoder does not reproduce every escape of every template byte for byte).
fn text_of<'s>(
    src: &'s str,
    span: Option<std::ops::Range<usize>>,
    fallback: impl FnOnce() -> String,
) -> std::borrow::Cow<'s, str> {
    match span.and_then(|r| src.get(r)) {
        Some(t) => std::borrow::Cow::Borrowed(t),
        None => std::borrow::Cow::Owned(fallback()),
    }
}

fn value_text<'s>(a: &hcl_edit::structure::Attribute, src: &'s str) -> std::borrow::Cow<'s, str> {
    text_of(src, a.value.span(), || a.value.to_string())
}

/// Whether a block prints on one line: `subnet "app" { cidr = "10.0.0.0/24" }`.
fn one_line_block(b: &hcl_edit::structure::Block, src: &str) -> bool {
    let body = &b.body;
    body.prefer_oneline()
        && body.len() <= 1
        && body.iter().all(|s| {
            s.as_attribute().is_some_and(|a| {
                !value_text(a, src).contains('\n')
                    && raw(a.decor().prefix()).trim().is_empty()
                    && raw(a.decor().suffix()).trim().is_empty()
            })
        })
        && raw(body.decor().prefix()).trim().is_empty()
        && raw(body.decor().suffix()).trim().is_empty()
}

fn emit_body(body: &Body, src: &str, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    // Alignment groups: runs of single-line attributes not separated by a blank line.
    let items: Vec<&Structure> = body.iter().collect();
    let single = |s: &Structure| {
        s.as_attribute()
            .is_some_and(|a| !value_text(a, src).contains('\n'))
    };
    let mut width = vec![0usize; items.len()];
    let mut start = 0;
    while start < items.len() {
        let mut end = start;
        while end < items.len()
            && single(items[end])
            && (end == start || !has_blank_line(raw(items[end].decor().prefix())))
        {
            end += 1;
        }
        if end == start {
            start += 1;
            continue;
        }
        let w = items[start..end]
            .iter()
            .filter_map(|s| s.as_attribute())
            .map(|a| a.key.as_str().chars().count())
            .max()
            .unwrap_or(0);
        for x in &mut width[start..end] {
            *x = w;
        }
        start = end;
    }
    for (i, s) in items.iter().enumerate() {
        out.push_str(&prefix(raw(s.decor().prefix()), &indent, i == 0));
        match s {
            Structure::Attribute(a) => {
                let key = a.key.as_str();
                out.push_str(key);
                let pad = width[i].saturating_sub(key.chars().count()) + 1;
                out.extend(std::iter::repeat_n(' ', pad));
                out.push_str("= ");
                out.push_str(&value_text(a, src));
                out.push_str(&suffix(raw(a.value.decor().suffix())));
            }
            Structure::Block(b) => {
                out.push_str(b.ident.as_str());
                for label in &b.labels {
                    out.push(' ');
                    match label {
                        hcl_edit::structure::BlockLabel::Ident(id) => out.push_str(id.as_str()),
                        hcl_edit::structure::BlockLabel::String(_) => {
                            out.push_str(&text_of(src, label.span(), || {
                                format!("{:?}", label.as_str())
                            }))
                        }
                    }
                }
                if one_line_block(b, src) {
                    match b.body.iter().next().and_then(Structure::as_attribute) {
                        Some(a) => {
                            out.push_str(" { ");
                            out.push_str(a.key.as_str());
                            out.push_str(" = ");
                            out.push_str(&value_text(a, src));
                            out.push_str(" }");
                        }
                        None => out.push_str(" {}"),
                    }
                } else {
                    out.push_str(" {");
                    out.push_str(&suffix(raw(b.body.decor().prefix())));
                    out.push('\n');
                    emit_body(&b.body, src, depth + 1, out);
                    // Comments before `}`.
                    let inner = "  ".repeat(depth + 1);
                    let (lines, inline) = lines_of(raw(b.body.decor().suffix()));
                    for line in lines {
                        if let Line::Comment(c) = line {
                            out.push_str(&inner);
                            out.push_str(c);
                            out.push('\n');
                        }
                    }
                    if !inline.is_empty() {
                        out.push_str(&inner);
                        out.push_str(inline);
                        out.push('\n');
                    }
                    out.push_str(&indent);
                    out.push('}');
                }
            }
        }
        out.push_str(&suffix(raw(s.decor().suffix())));
        out.push('\n');
    }
    if depth == 0 {
        // Comments after the last item of the file.
        let (lines, inline) = lines_of(raw(body.decor().suffix()));
        let mut blank = false;
        for line in lines {
            match line {
                Line::Blank => blank = true,
                Line::Comment(c) => {
                    if blank && !items.is_empty() {
                        out.push('\n');
                    }
                    blank = false;
                    out.push_str(c);
                    out.push('\n');
                }
            }
        }
        if !inline.is_empty() {
            out.push_str(inline);
            out.push('\n');
        }
    }
}

/// One line of the text between two items: a blank line or a comment.
enum Line<'a> {
    Blank,
    Comment(&'a str),
}

/// Splits decoration text into its lines and the partial line before the item.
fn lines_of(raw: &str) -> (Vec<Line<'_>>, &str) {
    let mut parts: Vec<&str> = raw.split('\n').collect();
    let last = parts.pop().unwrap_or("").trim();
    let lines = parts
        .into_iter()
        .map(|l| {
            let t = l.trim();
            if t.is_empty() {
                Line::Blank
            } else {
                Line::Comment(t)
            }
        })
        .collect();
    (lines, last)
}

/// The canonical text before an item at `indent`: its comments, at most one blank line.
fn prefix(raw: &str, indent: &str, first: bool) -> String {
    let (lines, inline) = lines_of(raw);
    let mut out = String::new();
    let mut blank = false;
    let mut any = false;
    for line in lines {
        match line {
            Line::Blank => blank = true,
            Line::Comment(c) => {
                if blank && (any || !first) {
                    out.push('\n');
                }
                blank = false;
                any = true;
                out.push_str(indent);
                out.push_str(c);
                out.push('\n');
            }
        }
    }
    if blank && (any || !first) {
        out.push('\n');
    }
    out.push_str(indent);
    if !inline.is_empty() {
        out.push_str(inline);
        out.push(' ');
    }
    out
}

/// The canonical text after an item on its line: nothing, or a comment after the spacing
/// its author chose (comments aligned in a column stay aligned), at least one space.
fn suffix(raw: &str) -> String {
    let t = raw.trim_end();
    if t.trim_start().is_empty() {
        String::new()
    } else if t.starts_with([' ', '\t']) {
        t.to_string()
    } else {
        format!(" {t}")
    }
}

fn raw(decor_part: Option<&RawString>) -> &str {
    decor_part.map_or("", |r| &**r)
}

fn has_blank_line(raw: &str) -> bool {
    lines_of(raw).0.iter().any(|l| matches!(l, Line::Blank))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(s: &str) -> String {
        format(&SourceFile::new("t.smig.hcl", s)).unwrap()
    }

    #[test]
    fn indents_aligns_and_keeps_comments() {
        let input = "# head\n\n\nvm   \"web\"   { # the web VM\n      host = environment.dc.host.hv1\n  address =    \"10.0.0.1\" # fixed\n\n\n\n    # migration settings\n migration {\n mode = \"live\"\n   }\n   # end of vm\n}\n# end of file\n";
        let want = "# head\n\nvm \"web\" { # the web VM\n  host    = environment.dc.host.hv1\n  address = \"10.0.0.1\" # fixed\n\n  # migration settings\n  migration {\n    mode = \"live\"\n  }\n  # end of vm\n}\n# end of file\n";
        assert_eq!(fmt(input), want);
    }

    #[test]
    fn is_idempotent() {
        let input = "subnet \"app\" { cidr = \"10.0.0.0/24\" }\nlocals {\n  a = [1,\n    2]\n  bb = { x = 1 }\n\n  ccc = 3\n}\n";
        let once = fmt(input);
        assert_eq!(fmt(&once), once);
        assert!(
            once.contains("subnet \"app\" { cidr = \"10.0.0.0/24\" }"),
            "{once}"
        );
        assert!(
            once.contains("  a = [1,\n    2]\n  bb = { x = 1 }\n\n  ccc = 3\n"),
            "{once}"
        );
    }

    #[test]
    fn heredoc_text_is_kept_byte_for_byte() {
        let input =
            "locals {\n  motd = <<EOT\nline with trailing spaces   \n\n\n  indented\nEOT\n}\n";
        assert_eq!(fmt(input), input);
    }

    #[test]
    fn reports_syntax_errors() {
        let err = format(&SourceFile::new("t.smig.hcl", "a = {")).unwrap_err();
        assert_eq!(err.codes(), vec![super::super::Code::Syntax]);
    }
}
