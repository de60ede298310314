//! Side-by-side migration benchmark on the lab (lab/README.md; needs root): the same guest
//! (`db`), the same direction (dc.hv2 → cloud.c1), in one run, round after round:
//! - bare: `lab/baseline` (`virsh migrate --live --persistent --undefinesource --tls`, with the
//!   lab's own IPsec path so db's traffic can resume at all);
//! - `smig apply` block-first and prestaged (copies of examples/lab), each moved back after.
//!
//! Reported per variant (medians over the rounds): the wall time of the whole move; the
//! migration itself (the bare `virsh migrate` call, or smig's migrate step's libvirt call from
//! its `action_ms`); smig's own time (wall − migration), split into what lies outside the walk
//! (process start, discovery, plan, journal, exit) and the walk before and after the
//! migration; the wall-time difference to the bare migration of the same round (noisy: the
//! migration alone varies by ±0.6 s); libvirt's downtime; and the guest-observed blackout
//! (web's longest gap between answered probes to db, wall clock, from the probe logs via
//! `lab/blackout`).
//!
//! `cargo bench --bench lab_migration` (root); `SMIG_BENCH_ROUNDS` rounds (default 3).
//! Holds the lab lock for its whole run and leaves db on dc.hv2.
//!
//! Measured on the 2-core build machine (load average 1.2-1.5), 7 rounds, medians:
//!
//! | db hv2 → c1 | wall | migration | smig's own time | outside / before / after | blackout | blackout / bare |
//! |---|---:|---:|---:|---:|---:|---:|
//! | bare `virsh migrate` | 2,844 ms | 2,844 ms | — | — | 310 ms | 1.0x |
//! | smig block-first | 2,368 ms | 2,199 ms | 192 ms | 104 / 7 / 80 ms | 2,350 ms | 7.6x |
//! | smig prestaged | 2,125 ms | 1,957 ms | 158 ms | 93 / 37 / 34 ms | 310 ms | 1.0x |
//!
//! Both targets are met in the median: the pre-staged blackout (≤ 2x bare) and the overhead (≤
//! max(5%, 200 ms)), with a cleartext connection reset in every round. Three runs on the same
//! code gave 179, 218 and 192 ms (block-first) and 175, 191 and 158 ms (prestaged); over their
//! 21 rounds, 194 ms and 175 ms. README.md, "Measured", says where the time goes.

#[path = "../tests/lab_support/mod.rs"]
mod lab_support;

use lab_support::{json, lab, lab_ready, must, smig_command, variant};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

const PSK: &str = "lab-bench-psk-7c21";

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("lab_migration: {msg}");
    std::process::exit(1)
}

/// Runs `lab/CMD ARGS`, which must succeed.
fn lab_ok(cmd: &str, args: &[&str]) -> Output {
    must(lab(cmd, args), &format!("lab/{cmd} {}", args.join(" ")))
}

/// One `smig apply --json`: its wall time, each step kind's summed duration, the migration
/// itself (the migrate step's action) and where the rest of smig's time went.
struct Applied {
    wall: Duration,
    steps: BTreeMap<String, f64>,
    /// The migrate step's driver action: libvirt's migration, as `virsh migrate` runs it.
    migration_ms: f64,
    /// From the first step's start to the migration's start.
    before_ms: f64,
    /// From the migration's end to the walk's end.
    after_ms: f64,
    /// The walk (first to last event of the apply).
    walk_ms: f64,
}

fn apply(dir: &Path, state: &Path) -> Applied {
    let t = Instant::now();
    let out = smig_command(PSK, &["apply", "--json", "--auto-approve", "--state"])
        .arg(state)
        .arg(dir)
        .output()
        .unwrap_or_else(|e| fail(format!("cannot run smig: {e}")));
    let out = must(out, &format!("smig apply {}", dir.display()));
    let wall = t.elapsed();
    let mut kinds: BTreeMap<u64, String> = BTreeMap::new();
    let mut steps: BTreeMap<String, f64> = BTreeMap::new();
    let (mut migration_ms, mut migrate_started, mut walk_ms) = (f64::NAN, f64::NAN, f64::NAN);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let at = e["elapsed_ms"].as_f64().unwrap_or(f64::NAN);
        match e["event"].as_str() {
            Some("step_started") => {
                let kind = e["kind"].as_str().unwrap_or("?").to_string();
                if kind == "migrate" {
                    migrate_started = at;
                }
                kinds.insert(e["step"].as_u64().unwrap_or(u64::MAX), kind);
            }
            Some("step_done") => {
                let kind = kinds
                    .get(&e["step"].as_u64().unwrap_or(u64::MAX))
                    .cloned()
                    .unwrap_or_default();
                if kind == "migrate" {
                    migration_ms = e["action_ms"].as_f64().unwrap_or(f64::NAN);
                }
                *steps.entry(kind).or_default() += e["duration_ms"].as_f64().unwrap_or(0.0);
            }
            Some("apply_done") => walk_ms = at,
            _ => {}
        }
    }
    // `step_started` comes after the step's check, just before its action.
    Applied {
        wall,
        steps,
        migration_ms,
        before_ms: migrate_started,
        after_ms: walk_ms - migrate_started - migration_ms,
        walk_ms,
    }
}

/// Waits until every guest answers its peers.
fn traffic_ok() {
    let c = json(&lab_ok("check", &["--json", "--wait", "60"]), "lab/check");
    if c["all_answer"] != Value::Bool(true) {
        fail("the guests do not all answer their peers");
    }
}

/// web's longest gap between answered probes to db since `mark`, in ms.
fn blackout_since(mark: &Path) -> f64 {
    let m = mark.to_str().unwrap_or_else(|| fail("mark path"));
    let b = json(
        &lab_ok("blackout", &["--json", "--since", m, "web", "db"]),
        "lab/blackout",
    );
    b["web"]["peers"]["192.168.10.12"]["longest_gap_s"]
        .as_f64()
        .unwrap_or_else(|| fail(format!("no blackout of db seen by web: {b}")))
        * 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[derive(Default)]
struct Series {
    wall: Vec<f64>,
    migrate: Vec<f64>,
    blackout: Vec<f64>,
    downtime: Vec<f64>,
    /// Wall time minus the bare migration of the same round.
    over_bare: Vec<f64>,
    /// Wall time minus smig's own migration: what smig adds around it.
    own: Vec<f64>,
    /// Of `own`: process start, discovery, plan, report and exit (outside the walk).
    outside: Vec<f64>,
    before: Vec<f64>,
    after: Vec<f64>,
    steps: BTreeMap<String, Vec<f64>>,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("SMIG_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let _lock = lab_ready("cargo bench --bench lab_migration");
    let dir = tempfile::tempdir().unwrap_or_else(|e| fail(e));
    let back = variant(dir.path(), "back", "environment.dc.host.hv2", None);
    let strategies = ["block-first", "prestaged"];
    let configs: Vec<PathBuf> = strategies
        .iter()
        .map(|s| variant(dir.path(), s, "environment.cloud.host.c1", Some(s)))
        .collect();
    let mut series: BTreeMap<&str, Series> = BTreeMap::new();
    for round in 1..=rounds {
        traffic_ok();
        let base = json(&lab_ok("baseline", &["--json"]), "lab/baseline");
        let leg = &base["legs"][0];
        let bare_wall = leg["wall_ms"].as_f64().unwrap_or(f64::NAN);
        let bare = series.entry("bare virsh migrate").or_default();
        bare.wall.push(bare_wall);
        bare.migrate.push(bare_wall);
        bare.downtime
            .push(leg["libvirt_downtime_ms"].as_f64().unwrap_or(f64::NAN));
        bare.blackout.push(
            leg["blackout_s"]["web_sees_db"]
                .as_f64()
                .unwrap_or(f64::NAN)
                * 1000.0,
        );
        eprintln!("round {round}: bare {bare_wall} ms");
        for (s, config) in strategies.iter().zip(&configs) {
            traffic_ok();
            let mark = dir.path().join(format!("mark-{round}-{s}"));
            lab_ok("blackout", &["--mark", mark.to_str().unwrap_or_default()]);
            std::thread::sleep(Duration::from_secs(1));
            let state = dir.path().join(format!("state-{round}-{s}"));
            let a = apply(config, &state);
            traffic_ok();
            std::thread::sleep(Duration::from_secs(2));
            let blackout = blackout_since(&mark);
            let wall = a.wall.as_secs_f64() * 1000.0;
            let own = wall - a.migration_ms;
            eprintln!(
                "round {round}: smig {s} {wall:.0} ms (migration {:.0} ms, smig's own {own:.0} ms: outside the walk {:.0}, before {:.0}, after {:.0}), blackout {blackout:.0} ms",
                a.migration_ms,
                wall - a.walk_ms,
                a.before_ms,
                a.after_ms,
            );
            let e = series.entry(s).or_default();
            e.wall.push(wall);
            e.migrate.push(a.migration_ms);
            e.blackout.push(blackout);
            e.over_bare.push(wall - bare_wall);
            e.own.push(own);
            e.outside.push(wall - a.walk_ms);
            e.before.push(a.before_ms);
            e.after.push(a.after_ms);
            for (k, v) in &a.steps {
                e.steps.entry(k.clone()).or_default().push(*v);
            }
            apply(&back, &dir.path().join(format!("state-back-{round}-{s}")));
        }
    }
    traffic_ok();
    println!(
        "| db hv2 → c1, median of {rounds} | wall | migration | smig's own time (wall − migration) | of it: start, discovery, plan, exit / before / after the migration | wall − bare wall | libvirt downtime | blackout seen by web | blackout / bare |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let bare_blackout = median(&mut series["bare virsh migrate"].blackout.clone());
    let bare_wall = median(&mut series["bare virsh migrate"].wall.clone());
    let ms = |v: &mut Vec<f64>| {
        if v.is_empty() {
            "—".to_string()
        } else {
            format!("{:.0} ms", median(v))
        }
    };
    for name in ["bare virsh migrate", "block-first", "prestaged"] {
        let Some(s) = series.get_mut(name) else {
            continue;
        };
        let own = if s.own.is_empty() {
            "—".to_string()
        } else {
            let o = median(&mut s.own);
            format!("{o:.0} ms ({:.1}% of bare)", 100.0 * o / bare_wall)
        };
        let parts = if s.own.is_empty() {
            "—".to_string()
        } else {
            format!(
                "{} / {} / {}",
                ms(&mut s.outside),
                ms(&mut s.before),
                ms(&mut s.after)
            )
        };
        let over = if s.over_bare.is_empty() {
            "—".to_string()
        } else {
            format!("{:+.0} ms", median(&mut s.over_bare))
        };
        let bo = median(&mut s.blackout);
        println!(
            "| {name} | {} | {} | {own} | {parts} | {over} | {} | {bo:.0} ms | {:.1}x |",
            ms(&mut s.wall),
            ms(&mut s.migrate),
            ms(&mut s.downtime),
            bo / bare_blackout
        );
    }
    for name in ["block-first", "prestaged"] {
        let Some(s) = series.get_mut(name) else {
            continue;
        };
        let parts: Vec<String> = s
            .steps
            .iter_mut()
            .map(|(k, v)| format!("{k} {:.0} ms", median(v)))
            .collect();
        println!(
            "\n{name}, summed step durations (median): {}",
            parts.join(", ")
        );
    }
    println!(
        "\nsmig's own time per round: {}",
        ["block-first", "prestaged"]
            .iter()
            .filter_map(|n| series.get(n).map(|s| format!(
                "{n} {:?}",
                s.own.iter().map(|v| v.round()).collect::<Vec<_>>()
            )))
            .collect::<Vec<_>>()
            .join("; ")
    );
}
