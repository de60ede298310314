//! The local state backend: a directory (`.smig/` next to the configuration by default).
//!
//! ```text
//! .smig/
//!   state.json        last applied configuration fingerprint (atomic writes)
//!   state.json.bak    the previous state.json
//!   lock.json         the lock (created exclusively; removed on release)
//!   journal.jsonl     the journal of the apply in flight (append + fsync per entry)
//!   history/ID.jsonl  journals of finished applies
//! ```

use super::journal::{self, FileJournal, JournalEntry, JournalSink};
use super::{atomic, LockInfo, StateBackend, StateError, StateRecord, STATE_VERSION};
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

/// State kept in a local directory.
#[derive(Debug, Clone)]
pub struct LocalState {
    dir: PathBuf,
}

impl LocalState {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalState { dir: dir.into() }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn backup_path(&self) -> PathBuf {
        self.dir.join("state.json.bak")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock.json")
    }
    pub fn journal_path(&self) -> PathBuf {
        self.dir.join("journal.jsonl")
    }
    pub fn history_dir(&self) -> PathBuf {
        self.dir.join("history")
    }

    fn ensure_dir(&self) -> Result<(), StateError> {
        fs::create_dir_all(&self.dir).map_err(|e| StateError::io(&self.dir, e))
    }

    fn read_lock(&self) -> Result<Option<LockInfo>, StateError> {
        let path = self.lock_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::io(&path, e)),
        };
        parse_json(&text, &path).map(Some)
    }

    fn remove_lock(&self) -> Result<(), StateError> {
        let path = self.lock_path();
        fs::remove_file(&path).map_err(|e| StateError::io(&path, e))?;
        atomic::sync_dir(&self.dir).map_err(|e| StateError::io(&self.dir, e))
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, StateError> {
    serde_json::from_str(text).map_err(|e| {
        if e.is_eof() {
            StateError::Truncated {
                path: path.display().to_string(),
                line: e.line(),
            }
        } else {
            StateError::Malformed {
                path: path.display().to_string(),
                line: e.line(),
                reason: e.to_string(),
            }
        }
    })
}

impl StateBackend for LocalState {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn lock(&self, command: &str) -> Result<LockInfo, StateError> {
        self.ensure_dir()?;
        let path = self.lock_path();
        let info = LockInfo::for_this_process(command);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                let text =
                    serde_json::to_vec_pretty(&info).map_err(|e| StateError::io(&path, e))?;
                f.write_all(&text)
                    .and_then(|_| f.write_all(b"\n"))
                    .and_then(|_| f.sync_all())
                    .map_err(|e| StateError::io(&path, e))?;
                atomic::sync_dir(&self.dir).map_err(|e| StateError::io(&self.dir, e))?;
                Ok(info)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                // The holder may be writing it right now: a lock that is still empty is held.
                let held = match self.read_lock() {
                    Ok(Some(l)) => l,
                    Ok(None) => return self.lock(command),
                    Err(StateError::Truncated { .. }) => {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        self.read_lock()?.ok_or(StateError::NotLocked)?
                    }
                    Err(e) => return Err(e),
                };
                if held.is_stale() {
                    Err(StateError::StaleLock {
                        lock: Box::new(held),
                    })
                } else {
                    Err(StateError::Locked {
                        lock: Box::new(held),
                    })
                }
            }
            Err(e) => Err(StateError::io(&path, e)),
        }
    }

    fn release(&self, lock: &LockInfo) -> Result<(), StateError> {
        match self.read_lock()? {
            Some(held) if held.id == lock.id => self.remove_lock(),
            Some(held) => Err(StateError::LockIdMismatch {
                given: lock.id.clone(),
                held: held.id,
            }),
            None => Err(StateError::NotLocked),
        }
    }

    fn unlock(&self, id: &str) -> Result<LockInfo, StateError> {
        match self.read_lock()? {
            Some(held) if held.id == id => {
                self.remove_lock()?;
                Ok(held)
            }
            Some(held) => Err(StateError::LockIdMismatch {
                given: id.to_string(),
                held: held.id,
            }),
            None => Err(StateError::NotLocked),
        }
    }

    fn current_lock(&self) -> Result<Option<LockInfo>, StateError> {
        self.read_lock()
    }

    fn read_state(&self) -> Result<StateRecord, StateError> {
        let path = self.state_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(StateRecord::default()),
            Err(e) => return Err(StateError::io(&path, e)),
        };
        let state: StateRecord = parse_json(&text, &path)?;
        if state.version != STATE_VERSION {
            return Err(StateError::Malformed {
                path: path.display().to_string(),
                line: 1,
                reason: format!(
                    "state version {} is not supported (this smig writes {STATE_VERSION})",
                    state.version
                ),
            });
        }
        Ok(state)
    }

    fn write_state(&self, state: &StateRecord) -> Result<(), StateError> {
        self.ensure_dir()?;
        let path = self.state_path();
        // Never replace a state file we cannot read: the user must look at it first.
        self.read_state()?;
        if let Ok(old) = fs::read(&path) {
            atomic::write_atomic(&self.backup_path(), &old)
                .map_err(|e| StateError::io(&self.backup_path(), e))?;
        }
        let mut text = serde_json::to_vec_pretty(state).map_err(|e| StateError::io(&path, e))?;
        text.push(b'\n');
        atomic::write_atomic(&path, &text).map_err(|e| StateError::io(&path, e))
    }

    fn read_journal(&self) -> Result<Option<Vec<JournalEntry>>, StateError> {
        let path = self.journal_path();
        if !path.exists() {
            return Ok(None);
        }
        journal::read(&path).map(Some)
    }

    fn create_journal(&self) -> Result<Box<dyn JournalSink>, StateError> {
        self.ensure_dir()?;
        Ok(Box::new(FileJournal::create(&self.journal_path())?))
    }

    fn reopen_journal(&self) -> Result<Box<dyn JournalSink>, StateError> {
        Ok(Box::new(FileJournal::reopen(&self.journal_path())?))
    }

    fn archive_journal(&self, apply_id: &str) -> Result<(), StateError> {
        let history = self.history_dir();
        fs::create_dir_all(&history).map_err(|e| StateError::io(&history, e))?;
        let to = history.join(format!("{apply_id}.jsonl"));
        fs::rename(self.journal_path(), &to).map_err(|e| StateError::io(&to, e))?;
        atomic::sync_dir(&history).map_err(|e| StateError::io(&history, e))?;
        atomic::sync_dir(&self.dir).map_err(|e| StateError::io(&self.dir, e))
    }

    fn history(&self) -> Result<Vec<String>, StateError> {
        let dir = self.history_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StateError::io(&dir, e)),
        };
        let mut items: Vec<(std::time::SystemTime, String)> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let id = name.strip_suffix(".jsonl")?.to_string();
                let t = e.metadata().and_then(|m| m.modified()).ok()?;
                Some((t, id))
            })
            .collect();
        items.sort();
        Ok(items.into_iter().map(|(_, id)| id).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::journal::Record;

    #[test]
    fn second_lock_names_the_owner_and_unlock_needs_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalState::new(dir.path().join(".smig"));
        let held = s.lock("apply").unwrap();
        let err = s.lock("apply").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StateError::Locked { .. }), "{msg}");
        assert!(msg.contains(&held.id) && msg.contains(&held.owner) && msg.contains(&held.host));
        assert!(matches!(
            s.unlock("nope"),
            Err(StateError::LockIdMismatch { .. })
        ));
        s.unlock(&held.id).unwrap();
        assert!(s.current_lock().unwrap().is_none());
        let again = s.lock("apply").unwrap();
        s.release(&again).unwrap();
    }

    #[test]
    fn stale_lock_is_reported_as_stale() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalState::new(dir.path());
        let mut info = LockInfo::for_this_process("apply");
        // Pid numbers wrap below this on Linux (pid_max is at most 2^22).
        info.pid = 4_194_304 + 17;
        fs::write(s.lock_path(), serde_json::to_string(&info).unwrap()).unwrap();
        let err = s.lock("apply").unwrap_err();
        assert!(matches!(err, StateError::StaleLock { .. }), "{err}");
        assert!(err.to_string().contains("stale"));
    }

    #[test]
    fn state_write_keeps_a_backup_and_refuses_to_overwrite_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalState::new(dir.path());
        let mut st = StateRecord::default();
        s.write_state(&st).unwrap();
        st.last_applied = Some(super::super::Applied {
            apply_id: "a1".into(),
            config_fingerprint: Some("c".into()),
            observed_fingerprint: None,
            finished_at: "t".into(),
        });
        s.write_state(&st).unwrap();
        assert_eq!(s.read_state().unwrap(), st);
        let bak: StateRecord =
            serde_json::from_str(&fs::read_to_string(s.backup_path()).unwrap()).unwrap();
        assert_eq!(bak, StateRecord::default());

        fs::write(s.state_path(), "{\"version\": 1, \"last_app").unwrap();
        let err = s.read_state().unwrap_err();
        assert!(matches!(err, StateError::Truncated { .. }), "{err}");
        assert!(s.write_state(&st).is_err());
        assert_eq!(
            fs::read_to_string(s.state_path()).unwrap(),
            "{\"version\": 1, \"last_app"
        );
        fs::write(s.state_path(), "{\"version\": 1, \"bogus\": 3}").unwrap();
        let err = s.read_state().unwrap_err();
        assert!(matches!(err, StateError::Malformed { .. }), "{err}");
    }

    #[test]
    fn journal_round_trip_and_hostile_journals() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalState::new(dir.path());
        let plan = journal::PlanRecord {
            steps: vec![],
            edges: vec![],
            changes: vec![],
        };
        {
            let mut j = s.create_journal().unwrap();
            j.append(Record::ApplyStarted {
                version: journal::JOURNAL_VERSION,
                apply_id: "x".into(),
                config_fingerprint: None,
                observed_fingerprint: None,
                plan: plan.clone(),
            })
            .unwrap();
            j.append(Record::Interrupted {
                reason: "test".into(),
            })
            .unwrap();
        }
        assert!(
            s.create_journal().is_err(),
            "a second journal must not replace the first"
        );
        let entries = s.read_journal().unwrap().unwrap();
        assert_eq!(entries.len(), 2);
        let good = fs::read_to_string(s.journal_path()).unwrap();

        // Truncated last line.
        fs::write(s.journal_path(), &good[..good.len() - 5]).unwrap();
        let err = s.read_journal().unwrap_err();
        assert!(
            matches!(err, StateError::Truncated { line: 2, .. }),
            "{err}"
        );
        assert!(s.reopen_journal().is_err());
        assert_eq!(
            fs::read_to_string(s.journal_path()).unwrap(),
            &good[..good.len() - 5]
        );
        // Garbage line, out-of-order numbers, missing header, empty file.
        for bad in [
            format!("{good}not json\n"),
            good.replace("\"seq\":1", "\"seq\":7"),
            good.lines().nth(1).unwrap().to_string() + "\n",
            String::new(),
        ] {
            fs::write(s.journal_path(), &bad).unwrap();
            let err = s.read_journal().unwrap_err();
            assert!(
                matches!(err, StateError::Malformed { .. }),
                "{bad:?}: {err}"
            );
            assert_eq!(fs::read_to_string(s.journal_path()).unwrap(), bad);
        }
    }
}
