//! What the tests on the lab (lab/README.md) share: the lab lock, running `lab/*` and the `smig`
//! binary with the lab's driver settings, and reading `lab/check --json`.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

/// Held (flock, exclusive) while a test uses the lab: tests of other binaries that drive the lab
/// take the same lock, so they run one after the other instead of tearing each other's lab down.
pub const LAB_LOCK: &str = "/run/lock/smig-lab.lock";
/// The lab's namespaces where smig may leave links.
pub const NAMESPACES: [&str; 4] = ["dc-hv1", "dc-hv2", "cloud-c1", "dc-core"];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Takes the lab lock. A lock file replaced while waiting (removed and created again by
/// someone) would lock nothing: the lock counts only on the file the path still names.
pub fn lab_lock() -> std::fs::File {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all("/run/lock").expect("/run/lock");
    loop {
        let lock = std::fs::File::create(LAB_LOCK).unwrap_or_else(|e| panic!("{LAB_LOCK}: {e}"));
        lock.lock()
            .unwrap_or_else(|e| panic!("locking {LAB_LOCK}: {e}"));
        let held = lock.metadata().map(|m| m.ino()).ok();
        let named = std::fs::metadata(LAB_LOCK).map(|m| m.ino()).ok();
        if held.is_some() && held == named {
            return lock;
        }
    }
}

/// Fails unless run as root, takes the lab lock and brings the lab up; the lock is held
/// until the returned file drops. `command` is how to run the caller, for the message.
pub fn lab_ready(command: &str) -> std::fs::File {
    assert!(
        is_root(),
        "this drives the lab and needs root: run `sudo {command}`"
    );
    let lock = lab_lock();
    must(lab("up", &[]), "lab/up");
    lock
}

pub fn show(what: &str, out: &Output, started: Instant) {
    eprintln!(
        "{what} -> {} in {:.1} s\nstdout:\n{}\nstderr:\n{}",
        out.status,
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `lab/CMD ARGS`.
pub fn lab(cmd: &str, args: &[&str]) -> Output {
    let started = Instant::now();
    let out = Command::new(root().join("lab").join(cmd))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run lab/{cmd}: {e}"));
    show(&format!("lab/{cmd} {}", args.join(" ")), &out, started);
    out
}

pub fn must(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what} failed ({})", out.status);
    out
}

/// The smig binary with the lab's driver settings and `psk` as the web-db key.
pub fn smig_command(psk: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smig"));
    c.current_dir(root())
        .env("SMIG_LAB", "1")
        .env("SMIG_VAR_web_db_psk", psk)
        .env("NO_COLOR", "1")
        .args(args);
    c
}

/// Runs [`smig_command`] to its end.
pub fn smig(psk: &str, args: &[&str]) -> Output {
    let started = Instant::now();
    let out = smig_command(psk, args).output().expect("run smig");
    show(&format!("smig {}", args.join(" ")), &out, started);
    out
}

pub fn json(out: &Output, what: &str) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The lab's state as `lab/check --json` sees it, once every guest answers its peers or after
/// `wait_s` seconds (0: at once).
pub fn check(wait_s: u32) -> Value {
    let out = if wait_s > 0 {
        lab("check", &["--json", "--wait", &wait_s.to_string()])
    } else {
        lab("check", &["--json"])
    };
    json(&out, "lab/check --json")
}

pub fn domains_on(check: &Value, host: &str) -> Vec<String> {
    check["hosts"][host]["domains"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// A copy of examples/lab in `dir/name` with db placed on `db_host` (an HCL reference such as
/// `environment.cloud.host.c1`) and, when given, its migration strategy.
pub fn variant(dir: &Path, name: &str, db_host: &str, strategy: Option<&str>) -> PathBuf {
    let text = std::fs::read_to_string(root().join("examples/lab/main.smig.hcl")).expect("config");
    let (head, tail) = text
        .split_once("vm \"db\" {")
        .expect("vm db in examples/lab");
    let mut tail = tail.replacen("environment.cloud.host.c1", db_host, 1);
    if let Some(s) = strategy {
        tail = tail.replacen(
            "max_downtime_ms = 300",
            &format!("max_downtime_ms = 300\n    strategy        = \"{s}\""),
            1,
        );
    }
    let out = dir.join(name);
    std::fs::create_dir_all(&out).expect("variant dir");
    std::fs::write(
        out.join("main.smig.hcl"),
        format!("{head}vm \"db\" {{{tail}"),
    )
    .expect("write variant config");
    out
}
