//! The compact diff of a resource change: discovered (`before`) against desired (`after`),
//! each rendered as sorted `key = value` lines and diffed by key with `similar`, so a
//! reviewer sees only what changes, with a little context.

use crate::model::secret::REDACTED;
use serde_json::Value;
use similar::{capture_diff_slices, Algorithm, DiffOp};
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
    flatten_pairs(value)
        .into_iter()
        .map(|(k, v)| {
            if k.is_empty() {
                v
            } else {
                format!("{k} = {v}")
            }
        })
        .collect()
}

/// The `(key, value)` pairs behind [`flatten`], in key order.
fn flatten_pairs(value: &Value) -> Vec<(String, String)> {
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out.into_iter().collect()
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
        // An unset value is left out: it reads as absent, not as the word null.
        Value::Null => {}
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

fn line(key: &str, value: &str) -> String {
    if key.is_empty() {
        value.to_string()
    } else {
        format!("{key} = {value}")
    }
}

/// The diff of `before` against `after` (either may be absent: a creation or a deletion),
/// keeping [`CONTEXT`] unchanged lines around each change. The key lists are diffed with
/// `similar`; a key present on both sides with another value shows as its old line followed
/// by its new one, so each change reads as a pair.
pub fn diff(before: Option<&Value>, after: Option<&Value>) -> Vec<DiffLine> {
    let old = before.map(flatten_pairs).unwrap_or_default();
    let new = after.map(flatten_pairs).unwrap_or_default();
    let old_keys: Vec<&str> = old.iter().map(|(k, _)| k.as_str()).collect();
    let new_keys: Vec<&str> = new.iter().map(|(k, _)| k.as_str()).collect();
    let mut all = Vec::new();
    for op in capture_diff_slices(Algorithm::Myers, &old_keys, &new_keys) {
        match op {
            DiffOp::Equal {
                old_index,
                new_index,
                len,
            } => {
                for i in 0..len {
                    let (k, a) = &old[old_index + i];
                    let (_, b) = &new[new_index + i];
                    if a == b {
                        all.push(DiffLine::Same(line(k, a)));
                    } else {
                        all.push(DiffLine::Removed(line(k, a)));
                        all.push(DiffLine::Added(line(k, b)));
                    }
                }
            }
            DiffOp::Delete {
                old_index, old_len, ..
            } => {
                for (k, v) in &old[old_index..old_index + old_len] {
                    all.push(DiffLine::Removed(line(k, v)));
                }
            }
            DiffOp::Insert {
                new_index, new_len, ..
            } => {
                for (k, v) in &new[new_index..new_index + new_len] {
                    all.push(DiffLine::Added(line(k, v)));
                }
            }
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                // Different keys on each side: interleave them in key order.
                let mut run: Vec<(&str, DiffLine)> = Vec::new();
                for (k, v) in &old[old_index..old_index + old_len] {
                    run.push((k, DiffLine::Removed(line(k, v))));
                }
                for (k, v) in &new[new_index..new_index + new_len] {
                    run.push((k, DiffLine::Added(line(k, v))));
                }
                run.sort_by(|a, b| a.0.cmp(b.0));
                all.extend(run.into_iter().map(|(_, l)| l));
            }
        }
    }
    with_context(all)
}

/// Keeps the changed lines and [`CONTEXT`] unchanged lines around each; a run of dropped
/// unchanged lines between two kept ones becomes one [`DiffLine::Gap`].
fn with_context(lines: Vec<DiffLine>) -> Vec<DiffLine> {
    let changed: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !matches!(l, DiffLine::Same(_)))
        .map(|(i, _)| i)
        .collect();
    let keep = |i: usize| changed.iter().any(|&c| c.abs_diff(i) <= CONTEXT);
    let mut out = Vec::new();
    let mut dropped = false;
    for (i, l) in lines.into_iter().enumerate() {
        if keep(i) {
            if dropped && !out.is_empty() {
                out.push(DiffLine::Gap);
            }
            dropped = false;
            out.push(l);
        } else {
            dropped = true;
        }
    }
    out
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
    fn a_changed_value_reads_as_a_pair() {
        let before = json!({"environment": "dc", "host": "dc.hv2", "state": "running"});
        let after =
            json!({"environment": "cloud", "host": "cloud.c1", "migration": {"mode": "live"}});
        let d = diff(Some(&before), Some(&after));
        assert_eq!(
            d,
            vec![
                DiffLine::Removed("environment = \"dc\"".into()),
                DiffLine::Added("environment = \"cloud\"".into()),
                DiffLine::Removed("host = \"dc.hv2\"".into()),
                DiffLine::Added("host = \"cloud.c1\"".into()),
                DiffLine::Added("migration.mode = \"live\"".into()),
                DiffLine::Removed("state = \"running\"".into()),
            ]
        );
    }

    #[test]
    fn unset_values_are_left_out() {
        let d = diff(
            Some(&json!({"a": 1, "b": null})),
            Some(&json!({"a": 1, "b": null, "c": null})),
        );
        assert!(d.is_empty(), "{d:?}");
        let d = diff(Some(&json!({"b": 3})), Some(&json!({"b": null})));
        assert_eq!(d, vec![DiffLine::Removed("b = 3".into())]);
    }

    #[test]
    fn identical_values_give_no_lines() {
        let v = json!({"a": 1, "b": [1, 2]});
        assert!(diff(Some(&v), Some(&v)).is_empty());
        assert!(diff(None, None).is_empty());
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
