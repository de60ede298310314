//! The plan document: what `smig plan --json` prints, what `smig plan --out FILE` saves and
//! what `smig show` and `smig apply FILE` read back (`schemas/plan.schema.json`).
//!
//! It holds the steps with their dependencies, the resource changes, the invariant results and
//! two fingerprints: of the configuration (source files and variable inputs) and of the
//! discovered landscape, so that a later apply can refuse a stale plan. It never holds a
//! secret: steps carry none, changes are redacted by the planner, and variable values enter
//! the configuration fingerprint only through a hash.

use crate::model::{Name, Observed};
use crate::plan::{
    Action, ChangeAction, Fact, InvariantReport, InvariantResult, Inverse, Plan, PlanContext,
    ResourceChange, Step, StepKind, Target,
};
use petgraph::graph::NodeIndex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

/// The plan document format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Plan files larger than this are refused before parsing.
pub const MAX_PLAN_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// A saved or printed plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "smig plan",
    description = "A smig plan document (smig plan --json, --out)."
)]
pub struct PlanFile {
    /// Version of this document format; readers refuse versions they do not know.
    #[schemars(extend("const" = FORMAT_VERSION))]
    pub format_version: u32,
    /// Version of the smig that wrote it.
    pub smig_version: String,
    pub fingerprints: Fingerprints,
    pub summary: Summary,
    /// Resource-level changes (what a reviewer approves), in address order.
    pub changes: Vec<ResourceChange>,
    /// The step DAG in a topological order: a step depends only on steps with lower numbers.
    pub steps: Vec<PlannedStep>,
    /// Result of the security invariant checks (SPEC.md invariants 1, 2, 3 and 7).
    pub invariants: Vec<InvariantResult>,
    /// What the reviewer must see, e.g. insecure transport explicitly allowed.
    pub warnings: Vec<String>,
    /// What the invariant checker needs beyond the steps (kept so that apply can check a
    /// saved plan again).
    pub context: PlanContext,
    /// `--target` and `--exclude` addresses the plan was limited by (empty: the whole
    /// configuration).
    #[serde(default)]
    pub targeting: Targeting,
}

/// Resource targeting in effect when the plan was made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Targeting {
    pub targets: Vec<String>,
    pub excludes: Vec<String>,
}

impl Targeting {
    /// Whether the plan covers only part of the configuration.
    pub fn is_partial(&self) -> bool {
        !self.targets.is_empty() || !self.excludes.is_empty()
    }
}

/// What the plan was made from. Both are `sha256:` followed by 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fingerprints {
    /// Over the sorted configuration files (names and texts) and the variable inputs (hashed).
    #[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))]
    pub config: String,
    /// Over the canonical JSON of the discovered landscape.
    #[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))]
    pub observed: String,
}

/// Counts, for scripts that only want the headline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub delete: usize,
    #[serde(rename = "move")]
    pub moves: usize,
    pub steps: usize,
}

impl Summary {
    /// Counts the changes by action and the steps.
    pub fn of(changes: &[ResourceChange], steps: usize) -> Summary {
        let mut s = Summary {
            steps,
            ..Summary::default()
        };
        for c in changes {
            match c.action {
                ChangeAction::Create => s.create += 1,
                ChangeAction::Update => s.update += 1,
                ChangeAction::Delete => s.delete += 1,
                ChangeAction::Move => s.moves += 1,
            }
        }
        s
    }
    /// Whether the plan changes anything.
    pub fn has_changes(&self) -> bool {
        self.steps > 0 || self.create + self.update + self.delete + self.moves > 0
    }
}

/// One step of the DAG with its number and direct dependencies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlannedStep {
    /// 1-based position in the plan's topological order (graph node index + 1).
    #[schemars(range(min = 1))]
    pub number: usize,
    pub key: String,
    pub kind: StepKind,
    /// FIG. 3 block numbers of US 2010/0071025 A1 that the step implements (informative: read
    /// back as written, never checked).
    pub fig3: String,
    pub subject: Name,
    pub target: Target,
    pub action: Action,
    pub precondition: Vec<Fact>,
    pub effect: Vec<Fact>,
    pub inverse: Inverse,
    /// Numbers of the steps that must succeed before this one starts, ascending.
    pub depends_on: Vec<usize>,
}

impl PlannedStep {
    /// The plan step without numbering.
    pub fn step(&self) -> Step {
        Step {
            key: self.key.clone(),
            kind: self.kind,
            subject: self.subject.clone(),
            target: self.target.clone(),
            action: self.action.clone(),
            precondition: self.precondition.clone(),
            effect: self.effect.clone(),
            inverse: self.inverse.clone(),
        }
    }
    /// Whether the step cannot be undone once it completed.
    pub fn is_point_of_no_return(&self) -> bool {
        matches!(self.inverse, Inverse::PointOfNoReturn { .. })
    }
}

/// Why a plan file could not be read or written.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PlanFileError {
    /// The file could not be read or written.
    #[error("cannot {op} the plan file {path}: {reason}")]
    #[diagnostic(code(smig::planfile::io))]
    Io {
        op: &'static str,
        path: String,
        reason: String,
    },
    /// The file ends before the document does.
    #[error("the plan file {path} is truncated: {reason}")]
    #[diagnostic(
        code(smig::planfile::truncated),
        help("the file was cut short; make a new plan with `smig plan --out`")
    )]
    Truncated { path: String, reason: String },
    /// The file is not a plan document.
    #[error("the plan file {path} is malformed: {reason}")]
    #[diagnostic(
        code(smig::planfile::malformed),
        help(
            "a plan file is JSON following schemas/plan.schema.json, written by `smig plan --out`"
        )
    )]
    Malformed { path: String, reason: String },
    /// Written by a smig with another document format.
    #[error(
        "the plan file {path} has format version {found}; this smig reads version {FORMAT_VERSION}"
    )]
    #[diagnostic(
        code(smig::planfile::version),
        help("make the plan again with this smig, or use the smig that wrote it")
    )]
    UnsupportedVersion { path: String, found: String },
    /// The configuration or the discovered landscape changed since the plan was made.
    #[error("the plan {path} is stale: {what} changed since it was made")]
    #[diagnostic(
        code(smig::planfile::stale),
        help("make a new plan with `smig plan --out` and review it")
    )]
    Stale { path: String, what: String },
    /// The document parses but its steps do not form a valid plan.
    #[error("the plan file {path} is inconsistent: {reason}")]
    #[diagnostic(
        code(smig::planfile::inconsistent),
        help("the file was edited or damaged; make a new plan with `smig plan --out`")
    )]
    Inconsistent { path: String, reason: String },
}

impl PlanFile {
    /// Builds the document of `plan`, taking its steps and changes over.
    pub fn new(plan: Plan, fingerprints: Fingerprints) -> Self {
        let (nodes, edges) = plan.graph.into_nodes_edges();
        // Step numbers count from 1; a step's dependencies in ascending order.
        let mut depends_on: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for e in &edges {
            depends_on[e.target().index()].push(e.source().index() + 1);
        }
        let steps: Vec<PlannedStep> = nodes
            .into_iter()
            .zip(depends_on)
            .enumerate()
            .map(|(i, (node, mut depends_on))| {
                depends_on.sort_unstable();
                depends_on.dedup();
                let step = node.weight;
                PlannedStep {
                    number: i + 1,
                    key: step.key,
                    kind: step.kind,
                    fig3: step.kind.patent_blocks().to_string(),
                    subject: step.subject,
                    target: step.target,
                    action: step.action,
                    precondition: step.precondition,
                    effect: step.effect,
                    inverse: step.inverse,
                    depends_on,
                }
            })
            .collect();
        PlanFile {
            format_version: FORMAT_VERSION,
            smig_version: env!("CARGO_PKG_VERSION").to_string(),
            fingerprints,
            summary: Summary::of(&plan.changes, steps.len()),
            changes: plan.changes,
            steps,
            invariants: plan.invariants.results,
            warnings: plan.warnings,
            context: plan.context,
            targeting: Targeting::default(),
        }
    }

    /// Records the `--target` and `--exclude` addresses the plan was limited by.
    pub fn with_targeting(mut self, targets: &[String], excludes: &[String]) -> Self {
        self.targeting = Targeting {
            targets: targets.to_vec(),
            excludes: excludes.to_vec(),
        };
        self
    }

    /// Rebuilds the plan (graph, changes, warnings, invariants, context) for apply.
    pub fn to_plan(&self) -> Plan {
        Plan::from(self)
    }

    /// Refuses a plan made from another configuration or landscape than `current` (what
    /// `smig apply PLANFILE` checks before it changes anything); `origin` names the plan.
    pub fn check_fresh(&self, current: &Fingerprints, origin: &str) -> Result<(), PlanFileError> {
        let mut changed = Vec::new();
        if self.fingerprints.config != current.config {
            changed.push("the configuration (files or variable values)");
        }
        if self.fingerprints.observed != current.observed {
            changed.push("the discovered landscape");
        }
        if changed.is_empty() {
            Ok(())
        } else {
            Err(PlanFileError::Stale {
                path: origin.to_string(),
                what: changed.join(" and "),
            })
        }
    }

    /// Whether every invariant check passed.
    pub fn invariants_hold(&self) -> bool {
        self.invariants.iter().all(|i| i.holds)
    }

    /// The document as pretty JSON (what `--json` prints and `--out` saves).
    pub fn to_json(&self) -> String {
        // A PlanFile holds only strings, numbers, lists and string-keyed maps: serializing
        // it cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Writes [`PlanFile::to_json`]'s text to `out` as it is serialized.
    pub fn write_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        out.write_all(b"\n")
    }

    /// Parses and checks a plan document; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<PlanFile, PlanFileError> {
        let path = origin.to_string();
        let classify = |e: serde_json::Error| {
            let reason = format!("{e}");
            if e.classify() == serde_json::error::Category::Eof {
                PlanFileError::Truncated {
                    path: path.clone(),
                    reason,
                }
            } else {
                PlanFileError::Malformed {
                    path: path.clone(),
                    reason,
                }
            }
        };
        // The version is checked before the shape, so that a newer format gets the right
        // message rather than a complaint about an unknown field. The probe skips everything
        // else without building it.
        #[derive(Deserialize)]
        struct Probe {
            // Present (even as null) gives Some; absent gives None.
            #[serde(default, deserialize_with = "present")]
            format_version: Option<serde_json::Value>,
        }
        fn present<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Option<serde_json::Value>, D::Error> {
            serde_json::Value::deserialize(d).map(Some)
        }
        let probe: Probe = serde_json::from_str(text).map_err(|e| {
            if e.classify() == serde_json::error::Category::Data {
                PlanFileError::Malformed {
                    path: path.clone(),
                    reason: format!("the document is not a JSON object ({e})"),
                }
            } else {
                classify(e)
            }
        })?;
        match probe.format_version {
            None => {
                return Err(PlanFileError::Malformed {
                    path,
                    reason: "no `format_version`: this is not a smig plan".into(),
                })
            }
            Some(v) if v.as_u64() == Some(u64::from(FORMAT_VERSION)) => {}
            Some(v) => {
                return Err(PlanFileError::UnsupportedVersion {
                    path,
                    found: v.to_string(),
                })
            }
        }
        let doc: PlanFile = serde_json::from_str(text).map_err(classify)?;
        doc.check()
            .map_err(|reason| PlanFileError::Inconsistent { path, reason })?;
        Ok(doc)
    }

    /// Checks what the types cannot: numbering, dependencies, keys and fingerprints.
    fn check(&self) -> Result<(), String> {
        let mut keys = BTreeSet::new();
        for (i, s) in self.steps.iter().enumerate() {
            if s.number != i + 1 {
                return Err(format!(
                    "step {} is at position {}; steps must be numbered 1, 2, 3, ... in order",
                    s.number,
                    i + 1
                ));
            }
            if !keys.insert(s.key.as_str()) {
                return Err(format!("step key `{}` appears twice", s.key));
            }
            let mut previous = 0;
            for &d in &s.depends_on {
                if d == 0 || d >= s.number {
                    return Err(format!(
                        "step #{} depends on #{d}, which is not an earlier step",
                        s.number
                    ));
                }
                if d <= previous {
                    return Err(format!(
                        "step #{} lists its dependencies out of order or twice",
                        s.number
                    ));
                }
                previous = d;
            }
        }
        for (name, fp) in [
            ("config", &self.fingerprints.config),
            ("observed", &self.fingerprints.observed),
        ] {
            if !is_fingerprint(fp) {
                return Err(format!(
                    "the {name} fingerprint `{fp}` is not `sha256:` and 64 hex digits"
                ));
            }
        }
        let expected = Summary::of(&self.changes, self.steps.len());
        if self.summary != expected {
            return Err("the summary does not match the changes and steps".into());
        }
        Ok(())
    }
}

impl From<&PlanFile> for Plan {
    /// Rebuilds the DAG: node `i` is step number `i + 1`, an edge `a -> b` for each entry of
    /// `b`'s `depends_on`. Dependencies that name no earlier step (possible only in a document
    /// that did not go through [`read`]) are left out.
    fn from(doc: &PlanFile) -> Plan {
        let mut plan = Plan {
            changes: doc.changes.clone(),
            warnings: doc.warnings.clone(),
            invariants: InvariantReport {
                results: doc.invariants.clone(),
            },
            context: doc.context.clone(),
            ..Plan::default()
        };
        let nodes: Vec<NodeIndex> = doc
            .steps
            .iter()
            .map(|s| plan.graph.add_node(s.step()))
            .collect();
        for (i, s) in doc.steps.iter().enumerate() {
            for &d in &s.depends_on {
                if d >= 1 && d - 1 < i {
                    plan.graph.add_edge(nodes[d - 1], nodes[i], ());
                }
            }
        }
        plan
    }
}

fn is_fingerprint(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// `sha256:` and the hex digest of `bytes`.
pub fn sha256_fingerprint(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// The fingerprint of a discovered landscape: sha256 of its canonical JSON. Canonical means
/// object keys sorted and every list sorted too: discovery reports rules, SAs, routes and
/// connections in whatever order the host lists them, and that order means nothing, so equal
/// landscapes give equal fingerprints. IPsec byte counters do not count.
pub fn observed_fingerprint(observed: &Observed) -> String {
    let mut h = Sha256::new();
    // SA byte counters rise with every packet: they describe traffic, not the landscape a plan
    // was made for, so they are left out (a running SA would otherwise never match its plan).
    let mut observed = observed.clone();
    for host in observed.hosts.values_mut() {
        for sa in &mut host.ipsec {
            sa.bytes_in = 0;
            sa.bytes_out = 0;
        }
    }
    // Observed holds only strings, numbers, booleans, lists and string-keyed maps.
    let value = serde_json::to_value(&observed).unwrap_or_default();
    h.update(canonical_json(&value).as_bytes());
    sha256_fingerprint(h)
}

/// JSON text with object keys and list items in sorted order.
fn canonical_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, String)> = map
                .iter()
                .map(|(k, v)| (Value::String(k.clone()).to_string(), canonical_json(v)))
                .collect();
            entries.sort();
            let inner: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => {
            let mut inner: Vec<String> = items.iter().map(canonical_json).collect();
            inner.sort();
            format!("[{}]", inner.join(","))
        }
        other => other.to_string(),
    }
}

/// Reads and checks a plan file.
pub fn read(path: &Path) -> Result<PlanFile, PlanFileError> {
    let origin = path.display().to_string();
    let io = |e: std::io::Error| PlanFileError::Io {
        op: "read",
        path: origin.clone(),
        reason: e.to_string(),
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_PLAN_FILE_BYTES {
        return Err(PlanFileError::Malformed {
            path: origin,
            reason: format!("{len} bytes is larger than any plan smig writes"),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|e| PlanFileError::Malformed {
        path: origin.clone(),
        reason: format!("not UTF-8 text ({e})"),
    })?;
    PlanFile::parse(&text, &origin)
}

/// Writes a plan file atomically: a temporary file in the same directory, flushed to disk,
/// then renamed over `path`. A reader never sees a half-written plan.
pub fn write(path: &Path, doc: &PlanFile) -> Result<(), PlanFileError> {
    let origin = path.display().to_string();
    let io = |e: std::io::Error| PlanFileError::Io {
        op: "write",
        path: origin.clone(),
        reason: e.to_string(),
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| PlanFileError::Io {
        op: "write",
        path: origin.clone(),
        reason: "the path names no file".into(),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        // Written as it is serialized: the text of a 10,000-VM plan is ~19 MB.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        doc.write_json(&mut f)?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable; not every platform lets a directory be opened.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}
