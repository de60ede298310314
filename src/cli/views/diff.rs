//! The compact diff of a resource change: discovered (`before`) against desired (`after`),
//! each rendered as sorted `key = value` lines and diffed line by line with `similar`, so a
//! reviewer sees only what changes, with a little context.

use crate::model::secret::REDACTED;
use serde_json::Value;
use similar::{ChangeTag, TextDiff};
use std::collections::BTreeMap;

/// Lines of context kept around each change.
pub const CONTEXT: usize = 1;

/// One line of a rendered diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffLine {
    Removed(String),
    Added(String),
    Same(String),
    /// Unchanged lines left out between two hunks.
    Gap,
}

/// Renders a JSON value as sorted `key = value` lines: nested objects become dotted keys,
/// lists and scalars are written inline, redacted secrets appear as `(sensitive)`.
pub fn flatten(value: &Value) -> Vec<String> {
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out.into_iter()
        .map(|(k, v)| {
            if k.is_empty() {
                v
            } else {
                format!("{k} = {v}")
            }
        })
        .collect()
}

fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), inline(other));
        }
    }
}

fn inline(value: &Value) -> String {
    match value {
        Value::String(s) if s == REDACTED => REDACTED.to_string(),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(inline).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Object(map) if map.is_empty() => "{}".to_string(),
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k} = {}", inline(v)))
                .collect();
            format!("{{ {} }}", parts.join(", "))
        }
        other => other.to_string(),
    }
}

/// The diff of `before` against `after` (either may be absent: a creation or a deletion),
/// keeping [`CONTEXT`] unchanged lines around each change.
pub fn diff(before: Option<&Value>, after: Option<&Value>) -> Vec<DiffLine> {
    let old = before.map(flatten).unwrap_or_default();
    let new = after.map(flatten).unwrap_or_default();
    let old_text = lines_text(&old);
    let new_text = lines_text(&new);
    let diff = TextDiff::from_lines(&old_text, &new_text);
    let mut out = Vec::new();
    for (i, group) in diff.grouped_ops(CONTEXT).iter().enumerate() {
        if i > 0 {
            out.push(DiffLine::Gap);
        }
        for op in group {
            for change in diff.iter_changes(op) {
                let text = change.value().trim_end_matches('\n').to_string();
                out.push(match change.tag() {
                    ChangeTag::Delete => DiffLine::Removed(text),
                    ChangeTag::Insert => DiffLine::Added(text),
                    ChangeTag::Equal => DiffLine::Same(text),
                });
            }
        }
    }
    out
}

fn lines_text(lines: &[String]) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flattens_nested_objects_in_key_order() {
        let v = json!({"host": "dc.hv2", "migration": {"mode": "live", "max_downtime_ms": 300},
                       "peers": ["web", "app"], "psk": "(sensitive)", "empty": {}});
        assert_eq!(
            flatten(&v),
            vec![
                "empty = {}",
                "host = \"dc.hv2\"",
                "migration.max_downtime_ms = 300",
                "migration.mode = \"live\"",
                "peers = [\"web\", \"app\"]",
                "psk = (sensitive)",
            ]
        );
    }

    #[test]
    fn keeps_only_changed_lines_and_context() {
        let before = json!({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "host": "dc.hv2"});
        let after = json!({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "host": "cloud.c1"});
        let d = diff(Some(&before), Some(&after));
        assert_eq!(
            d,
            vec![
                DiffLine::Same("f = 6".into()),
                DiffLine::Removed("host = \"dc.hv2\"".into()),
                DiffLine::Added("host = \"cloud.c1\"".into()),
            ]
        );
    }

    #[test]
    fn separates_distant_hunks() {
        let before = json!({"a": 0, "b": 2, "c": 3, "d": 4, "e": 5, "z": 0});
        let after = json!({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "z": 1});
        let d = diff(Some(&before), Some(&after));
        assert!(d.contains(&DiffLine::Gap), "{d:?}");
        assert!(!d.contains(&DiffLine::Same("c = 3".into())), "{d:?}");
    }

    #[test]
    fn creation_is_all_added() {
        let d = diff(None, Some(&json!({"between": ["web", "db"]})));
        assert_eq!(
            d,
            vec![DiffLine::Added("between = [\"web\", \"db\"]".into())]
        );
    }
}
