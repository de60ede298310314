//! Running work inside a named network namespace: one dedicated OS thread per namespace enters
//! it once (`setns(CLONE_NEWNET)` on `/run/netns/NAME`) and stays there, so no tokio worker
//! thread ever changes namespace. Jobs sent to the thread run one at a time; netlink sockets
//! and libnftables calls made there act on the namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use tokio::runtime::Runtime;

type Job = Box<dyn FnOnce(&Runtime) + Send>;

/// A thread living in one network namespace.
#[derive(Debug)]
pub struct NamespaceThread {
    name: String,
    jobs: mpsc::Sender<Job>,
}

/// Where named network namespaces are bound (`ip netns add`).
pub const NETNS_DIR: &str = "/run/netns";

impl NamespaceThread {
    /// Enters `/run/netns/NAME` on a new thread. Fails when the namespace does not exist or
    /// cannot be entered (not root).
    pub fn enter(name: &str) -> io::Result<NamespaceThread> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid network namespace name {name:?}"),
            ));
        }
        let path = format!("{NETNS_DIR}/{name}");
        let file = File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open {path}: {e}")))?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                // SAFETY: plain syscall on a valid descriptor; CLONE_NEWNET only changes the
                // calling thread's namespace, which is this dedicated thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                drop(file);
                if rc != 0 {
                    let _ = ready_tx.send(Err(io::Error::last_os_error()));
                    return;
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while let Ok(job) = rx.recv() {
                    job(&rt);
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("namespace thread exited"))?
            .map_err(|e| io::Error::new(e.kind(), format!("setns into {path}: {e}")))?;
        Ok(NamespaceThread {
            name: name.to_string(),
            jobs,
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on the namespace's thread (with its own current-thread runtime for async
    /// netlink work) and returns its result.
    pub async fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Runtime) -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |rt| {
                let _ = tx.send(f(rt));
            }))
            .map_err(|_| io::Error::other(format!("thread of namespace {} is gone", self.name)))?;
        rx.await.map_err(|_| {
            io::Error::other(format!(
                "a job in namespace {} ended without a result",
                self.name
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_names_that_are_paths() {
        for bad in ["", "a/b", "..", "."] {
            assert!(NamespaceThread::enter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_namespace_is_an_error_naming_it() {
        let e = NamespaceThread::enter("smig-no-such-namespace").unwrap_err();
        assert!(e.to_string().contains("smig-no-such-namespace"), "{e}");
    }
}
