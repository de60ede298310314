//! State: what smig remembers between runs. Discovery is the truth about the landscape; the
//! state holds only the last applied configuration's fingerprint, the journal of the apply in
//! flight, and the lock that keeps two changing commands apart.
//!
//! [`StateBackend`] is the storage interface; [`local::LocalState`] keeps it in a directory
//! (`.smig/` next to the configuration, or `--state DIR`). A shared backend (PostgreSQL with
//! advisory locks) implements the same trait.

pub mod atomic;
pub mod journal;
pub mod local;

use journal::{FileJournal, JournalEntry, JournalSink};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// State format version.
pub const STATE_VERSION: u32 = 1;

/// Why the state could not be used.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StateError {
    #[error("cannot use {path}: {reason}")]
    #[diagnostic(code(smig::state::io))]
    Io { path: String, reason: String },
    #[error("{path} is malformed at line {line}: {reason}")]
    #[diagnostic(
        code(smig::state::malformed),
        help("smig changed nothing and overwrote nothing; inspect the file, then restore it from its .bak or move it away")
    )]
    Malformed {
        path: String,
        line: usize,
        reason: String,
    },
    #[error("{path} is truncated at line {line}")]
    #[diagnostic(
        code(smig::state::truncated),
        help("smig changed nothing and overwrote nothing; inspect the file, then restore it from its .bak or move it away")
    )]
    Truncated { path: String, line: usize },
    #[error("the state is locked by {}", .lock.describe())]
    #[diagnostic(
        code(smig::state::locked),
        help("wait for that command to finish; if it is gone, `smig state unlock {}` removes the lock", .lock.id)
    )]
    Locked { lock: Box<LockInfo> },
    #[error("the state is locked by {}; that process is gone: the lock is stale", .lock.describe())]
    #[diagnostic(
        code(smig::state::stale_lock),
        help("check that no smig runs for this state, then remove the lock with `smig state unlock {}`", .lock.id)
    )]
    StaleLock { lock: Box<LockInfo> },
    #[error("lock id {given} does not match the lock held ({held})")]
    #[diagnostic(
        code(smig::state::lock_id),
        help("`smig state list` shows the lock id")
    )]
    LockIdMismatch { given: String, held: String },
    #[error("the state is not locked")]
    #[diagnostic(code(smig::state::not_locked))]
    NotLocked,
    #[error("an apply ({apply_id}) did not finish: its journal is {path}")]
    #[diagnostic(
        code(smig::state::unfinished),
        help("`smig apply --resume` continues it, `smig rollback` undoes what it did; both check the landscape first")
    )]
    Unfinished { apply_id: String, path: String },
    #[error("there is no unfinished apply to {action}")]
    #[diagnostic(code(smig::state::no_journal))]
    NoJournal { action: String },
}

impl StateError {
    pub(crate) fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        StateError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}

/// Who holds the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockInfo {
    pub id: String,
    pub owner: String,
    pub host: String,
    pub pid: u32,
    pub started_at: String,
    /// The command that took it (`apply`, `rollback`, ...).
    pub command: String,
}

impl LockInfo {
    /// A new lock for this process.
    pub fn for_this_process(command: &str) -> Self {
        let pid = std::process::id();
        let host = hostname();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{host}/{pid}/{nanos}/{command}"));
        LockInfo {
            id: hex::encode(&digest[..8]),
            owner: std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| "unknown".into()),
            host,
            pid,
            started_at: now_rfc3339(),
            command: command.to_string(),
        }
    }

    /// `owner@host (pid P, lock id I, `command` since T)`.
    pub fn describe(&self) -> String {
        format!(
            "{}@{} (pid {}, lock id {}, `{}` since {})",
            self.owner, self.host, self.pid, self.id, self.command, self.started_at
        )
    }

    /// Whether the lock's process is known to be gone: same host, no such pid.
    pub fn is_stale(&self) -> bool {
        self.host == hostname() && !Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// The last successful apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    pub apply_id: String,
    pub config_fingerprint: Option<String>,
    pub observed_fingerprint: Option<String>,
    pub finished_at: String,
}

/// The state file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateRecord {
    pub version: u32,
    #[serde(default)]
    pub last_applied: Option<Applied>,
}

impl Default for StateRecord {
    fn default() -> Self {
        StateRecord {
            version: STATE_VERSION,
            last_applied: None,
        }
    }
}

/// Storage for state, journal and lock.
pub trait StateBackend: Send + Sync {
    /// Where the state lives, for messages.
    fn location(&self) -> String;
    /// Takes the lock, or fails naming its holder (stale or not).
    fn lock(&self, command: &str) -> Result<LockInfo, StateError>;
    /// Releases a lock this process holds.
    fn release(&self, lock: &LockInfo) -> Result<(), StateError>;
    /// Removes the lock with this id, whoever holds it (`smig state unlock ID`).
    fn unlock(&self, id: &str) -> Result<LockInfo, StateError>;
    /// The lock held now, if any.
    fn current_lock(&self) -> Result<Option<LockInfo>, StateError>;
    /// The state record (default when none was written yet).
    fn read_state(&self) -> Result<StateRecord, StateError>;
    /// Replaces the state record atomically, keeping the previous one as a backup.
    fn write_state(&self, state: &StateRecord) -> Result<(), StateError>;
    /// The journal of the apply in flight, checked line by line; `None` when there is none.
    fn read_journal(&self) -> Result<Option<Vec<JournalEntry>>, StateError>;
    /// Starts a new journal; fails when one exists.
    fn create_journal(&self) -> Result<Box<dyn JournalSink>, StateError>;
    /// Reopens the journal in flight for appending.
    fn reopen_journal(&self) -> Result<Box<dyn JournalSink>, StateError>;
    /// Moves a finished journal out of the way into the history.
    fn archive_journal(&self, apply_id: &str) -> Result<(), StateError>;
    /// Ids of archived applies, oldest first.
    fn history(&self) -> Result<Vec<String>, StateError>;
}

impl From<FileJournal> for Box<dyn JournalSink> {
    fn from(j: FileJournal) -> Self {
        Box::new(j)
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_600_000, 5), "2026-11-25T09:46:40.005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000Z");
    }
}
