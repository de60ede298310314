//! Canonical formatting (`smig fmt`), in the manner of `terraform fmt`: two spaces per nesting
//! level, one space around `=` with the `=` of consecutive single-line attributes aligned,
//! single spaces between a block's type, labels and `{`, at most one blank line in a row and
//! none at the start or end of a body, no trailing whitespace. Comments are kept; expressions
//! are printed as written. Formatting a formatted file changes nothing.

use super::diagnostic::{ConfigErrors, SharedSource, Sink};
use super::syntax;
use super::SourceFile;
use hcl_edit::structure::{Body, Structure};
use hcl_edit::{Decorate, RawString};
use std::sync::Arc;

pub(crate) fn format(source: &SourceFile) -> Result<String, ConfigErrors> {
    let mut sink = Sink {
        files: vec![SharedSource {
            name: Arc::from(source.name.as_str()),
            text: Arc::from(source.text.as_str()),
        }],
        ..Default::default()
    };
    let Some(mut body) = syntax::parse_file(0, &source.text, &mut sink) else {
        return Err(ConfigErrors::new(sink.errors));
    };
    format_body(&mut body, 0, true);
    let mut out = body.to_string();
    // Trailing whitespace inside multi-line expressions and comments; one final newline.
    let mut lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(out)
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

/// Whether a structure prints on one line (alignment groups break at those that do not).
fn single_line(s: &Structure) -> bool {
    match s {
        Structure::Attribute(a) => !a.value.to_string().contains('\n'),
        Structure::Block(_) => false,
    }
}

fn has_blank_line(raw: &str) -> bool {
    lines_of(raw).0.iter().any(|l| matches!(l, Line::Blank))
}

fn format_body(body: &mut Body, depth: usize, root: bool) {
    let indent = "  ".repeat(depth);
    let oneline =
        !root && body.prefer_oneline() && body.len() <= 1 && body.iter().all(|s| s.is_attribute());

    // Alignment groups: runs of single-line attributes not separated by a blank line.
    let n = body.len();
    let mut width = vec![0usize; n];
    let mut start = 0;
    while start < n {
        let mut end = start;
        while end < n {
            let s = body.get(end).expect("index in range");
            if !single_line(s) || (end > start && has_blank_line(raw(s.decor().prefix()))) {
                break;
            }
            end += 1;
        }
        if end == start {
            start += 1;
            continue;
        }
        let w = (start..end)
            .filter_map(|i| body.get(i).and_then(Structure::as_attribute))
            .map(|a| a.key.as_str().chars().count())
            .max()
            .unwrap_or(0);
        for item in width.iter_mut().take(end).skip(start) {
            *item = w;
        }
        start = end;
    }

    for (i, mut s) in body.iter_mut().enumerate() {
        let (p, sfx) = if oneline {
            (" ".to_string(), " ".to_string())
        } else {
            (
                prefix(raw(s.decor().prefix()), &indent, i == 0),
                suffix(raw(s.decor().suffix())),
            )
        };
        let decor = s.decor_mut();
        decor.set_prefix(p);
        decor.set_suffix(sfx);
        if let Some(mut a) = s.as_attribute_mut() {
            let key_len = a.get().key.as_str().chars().count();
            let pad = if oneline {
                1
            } else {
                width[i].saturating_sub(key_len) + 1
            };
            a.key_decor_mut().set_prefix("");
            a.key_decor_mut().set_suffix(" ".repeat(pad));
            let value_suffix = suffix(raw(a.get().value.decor().suffix()));
            a.value_mut().decor_mut().set_prefix(" ");
            a.value_mut().decor_mut().set_suffix(value_suffix);
        } else if let Some(b) = s.as_block_mut() {
            b.ident.decor_mut().set_prefix("");
            b.ident.decor_mut().set_suffix(" ");
            for label in &mut b.labels {
                label.decor_mut().set_prefix("");
                label.decor_mut().set_suffix(" ");
            }
            format_body(&mut b.body, depth + 1, false);
        }
    }

    if root {
        // Comments after the last item of the file.
        let (lines, inline) = lines_of(raw(body.decor().suffix()));
        let mut out = String::new();
        let mut blank = false;
        for line in lines {
            match line {
                Line::Blank => blank = true,
                Line::Comment(c) => {
                    if blank && (n > 0 || !out.is_empty()) {
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
        body.decor_mut().set_suffix(out);
        return;
    }
    if oneline {
        body.decor_mut().set_prefix("");
        body.decor_mut().set_suffix("");
        return;
    }
    // After `{`: a comment on that line. Before `}`: comments of the body's end.
    let after_brace = suffix(raw(body.decor().prefix()));
    let inner = "  ".repeat(depth);
    let outer = "  ".repeat(depth.saturating_sub(1));
    let (lines, inline) = lines_of(raw(body.decor().suffix()));
    let mut end = String::new();
    for line in lines {
        if let Line::Comment(c) = line {
            end.push_str(&inner);
            end.push_str(c);
            end.push('\n');
        }
    }
    if !inline.is_empty() {
        end.push_str(&inner);
        end.push_str(inline);
        end.push('\n');
    }
    end.push_str(&outer);
    body.decor_mut().set_prefix(after_brace);
    body.decor_mut().set_suffix(end);
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
    fn reports_syntax_errors() {
        let err = format(&SourceFile::new("t.smig.hcl", "a = {")).unwrap_err();
        assert_eq!(err.codes(), vec![super::super::Code::Syntax]);
    }
}
