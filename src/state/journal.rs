//! The journal of the apply in flight: one JSON object per line, appended and fsynced entry by
//! entry, never rewritten. Resume and rollback read it together with fresh discovery.

use super::StateError;
use crate::plan::{Plan, ResourceChange, Step};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Journal format version.
pub const JOURNAL_VERSION: u32 = 1;

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Position in the journal, from 0.
    pub seq: u64,
    /// Wall-clock time of the entry, RFC 3339 UTC.
    pub at: String,
    #[serde(flatten)]
    pub record: Record,
}

/// How an apply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every step done or already satisfied.
    Succeeded,
    /// A step failed and every completed step was undone.
    RolledBack,
    /// Stopped fail-closed: after a failure with `--on-failure halt`, at a point of no return,
    /// or when an undo failed. The journal stays for `--resume` or `rollback`.
    Halted,
    /// Stopped by Ctrl-C or a crash test hook; the journal stays.
    Interrupted,
}

impl Outcome {
    /// Whether the journal is closed (the apply needs no resume or rollback).
    pub fn is_final(self) -> bool {
        matches!(self, Outcome::Succeeded | Outcome::RolledBack)
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// The first line: the plan being applied, so resume and rollback know every step and its
    /// inverse.
    ApplyStarted {
        version: u32,
        apply_id: String,
        config_fingerprint: Option<String>,
        observed_fingerprint: Option<String>,
        plan: PlanRecord,
    },
    /// A `--resume` (or `rollback`) picked the journal up in another process.
    Reopened {
        command: String,
    },
    StepStarted {
        step: usize,
        key: String,
    },
    StepDone {
        step: usize,
        key: String,
        duration_ms: u64,
    },
    /// The step's effect already held (fresh discovery): nothing was done.
    StepSkipped {
        step: usize,
        key: String,
        reason: String,
    },
    StepFailed {
        step: usize,
        key: String,
        error: String,
    },
    RollbackStarted {
        reason: String,
    },
    UndoStarted {
        step: usize,
        key: String,
    },
    UndoDone {
        step: usize,
        key: String,
        duration_ms: u64,
    },
    /// Nothing to undo: the inverse is nothing, or its effect already held.
    UndoSkipped {
        step: usize,
        key: String,
        reason: String,
    },
    UndoFailed {
        step: usize,
        key: String,
        error: String,
    },
    /// Rollback stopped at a completed point of no return.
    PointOfNoReturn {
        step: usize,
        key: String,
        reason: String,
    },
    /// Rollback blocked a moved VM before removing the IPsec connection it was using.
    GuardBlocked {
        vm: String,
        host: String,
    },
    /// A block rule rollback created on a host the VM left again, removed.
    SweepDone {
        vm: String,
        host: String,
    },
    Interrupted {
        reason: String,
    },
    Finished {
        outcome: Outcome,
    },
}

/// A plan in journal form (the graph as a step list plus edges).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub steps: Vec<Step>,
    /// `[a, b]`: step `b` runs after step `a`.
    pub edges: Vec<[usize; 2]>,
    #[serde(default)]
    pub changes: Vec<ResourceChange>,
}

impl PlanRecord {
    pub fn from_plan(plan: &Plan) -> Self {
        PlanRecord {
            steps: plan.graph.node_weights().cloned().collect(),
            edges: plan
                .graph
                .edge_indices()
                .filter_map(|e| plan.graph.edge_endpoints(e))
                .map(|(a, b)| [a.index(), b.index()])
                .collect(),
            changes: plan.changes.clone(),
        }
    }

    /// The plan again; `None` when an edge names a step that does not exist.
    pub fn to_plan(&self) -> Option<Plan> {
        let mut plan = Plan {
            changes: self.changes.clone(),
            ..Default::default()
        };
        let nodes: Vec<_> = self
            .steps
            .iter()
            .map(|s| plan.graph.add_node(s.clone()))
            .collect();
        for [a, b] in &self.edges {
            plan.graph.add_edge(*nodes.get(*a)?, *nodes.get(*b)?, ());
        }
        Some(plan)
    }
}

/// Where journal entries go.
pub trait JournalSink: Send {
    /// Appends one entry durably (or returns why it could not).
    fn append(&mut self, record: Record) -> Result<(), StateError>;
    /// Entries written so far through this sink, including those read back on reopen.
    fn entries(&self) -> &[JournalEntry];
}

/// A journal kept in memory (benchmarks, unit tests).
#[derive(Debug, Default)]
pub struct MemoryJournal {
    entries: Vec<JournalEntry>,
}

impl MemoryJournal {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn from_entries(entries: Vec<JournalEntry>) -> Self {
        MemoryJournal { entries }
    }
}

impl JournalSink for MemoryJournal {
    fn append(&mut self, record: Record) -> Result<(), StateError> {
        self.entries.push(JournalEntry {
            seq: self.entries.len() as u64,
            at: super::now_rfc3339(),
            record,
        });
        Ok(())
    }
    fn entries(&self) -> &[JournalEntry] {
        &self.entries
    }
}

/// A journal file: append + fdatasync per entry.
#[derive(Debug)]
pub struct FileJournal {
    path: PathBuf,
    file: File,
    entries: Vec<JournalEntry>,
}

impl FileJournal {
    /// Creates a new journal; fails when one exists.
    pub fn create(path: &Path) -> Result<Self, StateError> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)
            .map_err(|e| StateError::io(path, e))?;
        super::atomic::sync_dir(super::atomic::parent_dir(path))
            .map_err(|e| StateError::io(path, e))?;
        Ok(FileJournal {
            path: path.to_path_buf(),
            file,
            entries: Vec::new(),
        })
    }

    /// Opens an existing journal for appending after checking every line.
    pub fn reopen(path: &Path) -> Result<Self, StateError> {
        let entries = read(path)?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| StateError::io(path, e))?;
        Ok(FileJournal {
            path: path.to_path_buf(),
            file,
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl JournalSink for FileJournal {
    fn append(&mut self, record: Record) -> Result<(), StateError> {
        let entry = JournalEntry {
            seq: self.entries.len() as u64,
            at: super::now_rfc3339(),
            record,
        };
        let mut line = serde_json::to_vec(&entry).map_err(|e| StateError::io(&self.path, e))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| StateError::io(&self.path, e))?;
        self.entries.push(entry);
        Ok(())
    }
    fn entries(&self) -> &[JournalEntry] {
        &self.entries
    }
}

/// Reads and checks a journal file.
pub fn read(path: &Path) -> Result<Vec<JournalEntry>, StateError> {
    let text = std::fs::read_to_string(path).map_err(|e| StateError::io(path, e))?;
    parse(&text, path)
}

/// Parses journal text: every line a JSON entry, numbered in order, the first one the header.
pub fn parse(text: &str, path: &Path) -> Result<Vec<JournalEntry>, StateError> {
    let malformed = |line: usize, reason: String| StateError::Malformed {
        path: path.display().to_string(),
        line,
        reason,
    };
    if text.is_empty() {
        return Err(malformed(1, "the journal is empty (no header line)".into()));
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut entries = Vec::with_capacity(lines.len());
    for (i, raw) in lines.iter().enumerate() {
        let n = i + 1;
        let Some(line) = raw.strip_suffix('\n') else {
            return Err(StateError::Truncated {
                path: path.display().to_string(),
                line: n,
            });
        };
        let entry: JournalEntry = serde_json::from_str(line).map_err(|e| {
            if e.is_eof() {
                StateError::Truncated {
                    path: path.display().to_string(),
                    line: n,
                }
            } else {
                malformed(n, e.to_string())
            }
        })?;
        if entry.seq != i as u64 {
            return Err(malformed(
                n,
                format!("entry number {} where {} was expected", entry.seq, i),
            ));
        }
        let is_header = matches!(entry.record, Record::ApplyStarted { .. });
        if is_header != (i == 0) {
            return Err(malformed(
                n,
                if i == 0 {
                    "the first entry must be apply_started".into()
                } else {
                    "apply_started may only be the first entry".into()
                },
            ));
        }
        if let Record::ApplyStarted { version, plan, .. } = &entry.record {
            if *version != JOURNAL_VERSION {
                return Err(malformed(
                    n,
                    format!("journal version {version} is not supported (this smig writes {JOURNAL_VERSION})"),
                ));
            }
            if plan.to_plan().is_none() {
                return Err(malformed(
                    n,
                    "the plan has an edge to a step that does not exist".into(),
                ));
            }
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// The plan and apply id of a journal (its header).
pub fn header(entries: &[JournalEntry]) -> Option<(&str, &PlanRecord)> {
    match entries.first().map(|e| &e.record) {
        Some(Record::ApplyStarted { apply_id, plan, .. }) => Some((apply_id, plan)),
        _ => None,
    }
}

/// How the journal ended, if it did.
pub fn outcome(entries: &[JournalEntry]) -> Option<Outcome> {
    entries.iter().rev().find_map(|e| match e.record {
        Record::Finished { outcome } => Some(outcome),
        _ => None,
    })
}
