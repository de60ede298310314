//! A nesting-depth check that runs before the parser. The HCL parser is recursive and not every
//! construct is guarded (nested `for` expressions overflow a 2 MiB stack near 64 levels), so
//! input nesting deeper than [`MAX_DEPTH`] is rejected here, in a loop with no recursion.

/// The deepest nesting of brackets, braces, parentheses and template interpolations accepted.
pub const MAX_DEPTH: usize = 32;

enum Mode {
    /// Inside `(`, `[`, `{` or a template interpolation `${` / `%{`.
    Open,
    /// Inside a quoted string.
    Quoted,
    /// Inside a heredoc body ending at a line holding only this delimiter.
    Heredoc(Vec<u8>),
}

/// Something left open by the end of a line or of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unclosed {
    /// A quoted string not closed on its line, starting at this offset.
    String(usize),
    /// A heredoc never ended, its `<<` at this offset.
    Heredoc(usize),
    /// A bracket, brace or parenthesis never closed, at this offset.
    Bracket(usize),
}

/// Returns the byte offset where nesting first exceeds [`MAX_DEPTH`], if it does.
///
/// The scan knows strings, comments and heredocs well enough that brackets inside them do not
/// count; on malformed input it may over- or under-count, which the parser then reports.
pub fn too_deep_at(text: &str) -> Option<usize> {
    scan(text).0
}

/// The first thing left open in `text`, for a clearer syntax error than the parser's.
pub fn unclosed(text: &str) -> Option<Unclosed> {
    scan(text).1
}

fn scan(text: &str) -> (Option<usize>, Option<Unclosed>) {
    let b = text.as_bytes();
    let mut stack: Vec<Mode> = Vec::new();
    // Where each open frame started (parallel to `stack`).
    let mut starts: Vec<usize> = Vec::new();
    let mut first_unclosed_string: Option<usize> = None;
    let mut depth = 0usize;
    let mut i = 0usize;
    while i < b.len() {
        let c = b[i];
        match stack.last() {
            None | Some(Mode::Open) => match c {
                b'#' => i = skip_line(b, i),
                b'/' if b.get(i + 1) == Some(&b'/') => i = skip_line(b, i),
                b'/' if b.get(i + 1) == Some(&b'*') => {
                    i += 2;
                    while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                        i += 1;
                    }
                    i += 2;
                }
                b'"' => {
                    stack.push(Mode::Quoted);
                    starts.push(i);
                    i += 1;
                }
                b'<' if b.get(i + 1) == Some(&b'<') => {
                    let mut j = i + 2;
                    if b.get(j) == Some(&b'-') {
                        j += 1;
                    }
                    let start = j;
                    while j < b.len()
                        && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'-')
                    {
                        j += 1;
                    }
                    if j > start && (b.get(j) == Some(&b'\n') || b.get(j) == Some(&b'\r')) {
                        stack.push(Mode::Heredoc(b[start..j].to_vec()));
                        starts.push(i);
                        i = skip_line(b, j) + 1;
                    } else {
                        i += 2;
                    }
                }
                b'(' | b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return (Some(i), None);
                    }
                    stack.push(Mode::Open);
                    starts.push(i);
                    i += 1;
                }
                b')' | b']' | b'}' => {
                    if matches!(stack.last(), Some(Mode::Open)) {
                        stack.pop();
                        starts.pop();
                        depth -= 1;
                    }
                    i += 1;
                }
                _ => i += 1,
            },
            Some(Mode::Quoted) => match c {
                b'\\' => i += 2,
                b'"' | b'\n' => {
                    stack.pop();
                    let start = starts.pop();
                    if c == b'\n' && first_unclosed_string.is_none() {
                        first_unclosed_string = start;
                    }
                    i += 1;
                }
                b'$' | b'%' if b.get(i + 1) == Some(&c) => i += 2,
                b'$' | b'%' if b.get(i + 1) == Some(&b'{') => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return (Some(i), None);
                    }
                    stack.push(Mode::Open);
                    starts.push(i);
                    i += 2;
                }
                _ => i += 1,
            },
            Some(Mode::Heredoc(delim)) => {
                let at_line_start = i == 0 || b[i - 1] == b'\n';
                if at_line_start {
                    let end = skip_line(b, i);
                    let line = trim_ascii(&b[i..end]);
                    if line == delim.as_slice() {
                        stack.pop();
                        starts.pop();
                        i = end;
                        continue;
                    }
                }
                match c {
                    b'$' | b'%' if b.get(i + 1) == Some(&c) => i += 2,
                    b'$' | b'%' if b.get(i + 1) == Some(&b'{') => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return (Some(i), None);
                        }
                        stack.push(Mode::Open);
                        starts.push(i);
                        i += 2;
                    }
                    _ => i += 1,
                }
            }
        }
    }
    let unclosed = if let Some(at) = first_unclosed_string {
        Some(Unclosed::String(at))
    } else {
        match (stack.first(), starts.first()) {
            (Some(Mode::Heredoc(_)), Some(&at)) => Some(Unclosed::Heredoc(at)),
            (Some(Mode::Quoted), Some(&at)) => Some(Unclosed::String(at)),
            (Some(Mode::Open), Some(&at)) => {
                // The innermost heredoc or string left open explains more than its brackets.
                match stack
                    .iter()
                    .zip(&starts)
                    .rev()
                    .find(|(m, _)| !matches!(m, Mode::Open))
                {
                    Some((Mode::Heredoc(_), &h)) => Some(Unclosed::Heredoc(h)),
                    Some((Mode::Quoted, &q)) => Some(Unclosed::String(q)),
                    _ => Some(Unclosed::Bracket(at)),
                }
            }
            _ => None,
        }
    };
    (None, unclosed)
}

/// The index of the next `\n` at or after `i` (or the end).
fn skip_line(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i] != b'\n' {
        i += 1;
    }
    i
}

fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shallow_input_passes() {
        assert_eq!(too_deep_at("a = [[1], {b = (2)}]\n"), None);
        assert_eq!(
            too_deep_at(&format!("a = {}1{}", "(".repeat(32), ")".repeat(32))),
            None
        );
    }

    #[test]
    fn deep_parentheses_are_caught_at_the_first_excess() {
        let text = format!("a = {}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(too_deep_at(&text), Some(4 + MAX_DEPTH));
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        let deep = "(".repeat(100);
        assert_eq!(
            too_deep_at(&format!(
                "a = \"{deep}\"\n# {deep}\n// {deep}\n/* {deep} */"
            )),
            None
        );
        assert_eq!(
            too_deep_at(&format!("a = <<EOT\n{deep}\nEOT\nb = 1\n")),
            None
        );
    }

    #[test]
    fn interpolations_count() {
        let text = format!("a = {}", "\"${".repeat(100));
        assert!(too_deep_at(&text).is_some());
        let text = format!("a = <<EOT\n{}\nEOT\n", "${".repeat(100));
        assert!(too_deep_at(&text).is_some());
    }

    #[test]
    fn finds_what_is_left_open() {
        assert_eq!(unclosed("a {\n  b = \"x\n}\n"), Some(Unclosed::String(10)));
        assert_eq!(unclosed("a {\n  b = 1\n"), Some(Unclosed::Bracket(2)));
        assert_eq!(unclosed("a = <<EOT\nxx\n"), Some(Unclosed::Heredoc(4)));
        assert_eq!(unclosed("a = <<EOT\nxx\nEOT\nb = [1]\n"), None);
    }

    #[test]
    fn escaped_interpolation_does_not_count() {
        assert_eq!(too_deep_at(&format!("a = \"{}\"", "$${".repeat(100))), None);
    }
}
