//! Plan benchmark: `build` (diff, passes, numbering and the invariant check) on synthetic
//! landscapes of 1k, 10k and 100k VMs, 20% of them moving, some across the trust boundary.
//! Each size runs in its own child process so its peak memory (VmHWM) is its own.
//!
//! `cargo bench --bench plan`; `SMIG_BENCH_SIZES=1000,10000` picks sizes, `SMIG_BENCH_REPS`
//! the number of timed builds per size (0: only generate the landscapes).
//!
//! Measured on the 2-core build machine while lab VMs (TCG) and a CI run shared the cores
//! (load average 2.1-5.3), with mimalloc as in the binary (v3 then; the binary now uses v2, which measured 10k 32.9 ms / 46 MiB, 100k 479 ms / 358 MiB, 14.5x); medians of nine runs of
//! `SMIG_BENCH_REPS=5` (1k: five runs of the default 21). "build CPU" is this thread's own
//! CPU time; "first build" is the first timed build (median of six runs), which faults in
//! the plan's memory as the one build of a `smig plan` does:
//!
//! | VMs | hosts | steps | build median | build min | build CPU median | first build | peak RSS |
//! |---:|---:|---:|---:|---:|---:|---:|---:|
//! | 1,000 | 50 | 1,539 | 3.6 ms | 2.0 ms | 3.6 ms | 4.7 ms | 17 MiB |
//! | 10,000 | 500 | 14,199 | 36.3 ms | 26.3 ms | 31.4 ms | 170 ms | 95 MiB |
//! | 100,000 | 5,000 | 141,731 | 491 ms | 419 ms | 453 ms | 1,150 ms | 379 MiB |
//!
//! The 100k/10k ratio is 13.5x (CPU: 14.4x) and still misses the 12x target. The diff now
//! resolves each moving VM's secure_link peers to positions once and answers "peers" and
//! "needed SAs" (asked several times per move by the passes) by indexing where-now and
//! where-after lists instead of hashing names, and no longer keeps a map of where all VMs run
//! now. Interleaved with the previous code on the same machine (six runs each, load 3.7-4.4):
//! 10k 35.3 -> 34.8 ms CPU, 100k 550 -> 495 ms CPU (-10%), ratio 15.6x -> 14.2x; plan RSS
//! 274 -> 270 MiB at 100k. (The table before this change, 10k 32 ms and 100k 473 ms, was
//! measured at a lighter load than the one above.)
//!
//! Where the rest goes (perf, per build, 100k vs 10k): diff 16x, invariant check 15x,
//! numbering 15x, passes 12-20x, resource changes 10x: no phase stands out; every phase
//! slows about 1.4x per step at 100k because its data no longer fits in the 32 MiB L3 (110
//! MiB of landscape, 270 MiB of plan with ~15 heap strings per step) and each lookup by name
//! and each first touch of a VM's strings goes to DRAM. Callgrind counted 10.3x the instructions
//! before this change (167 M vs 1,731 M). Closing the gap needs the steps themselves to
//! shrink: names interned or shared instead of owned by each step, facts and inverses off the
//! step, so a build touches less memory.
//!
//! The allocator is left as the binary configures it. The first build of a process pays the
//! page faults of a fresh heap (on this busy VM 1.0-1.4 s at 100k, 40-220 ms at 10k); the
//! median of the later builds does not, at either size: they reuse the freed pages. mimalloc
//! purges freed pages after 1 s, which the 100k builds outlast: with `MIMALLOC_PURGE_DELAY=-1`
//! the repeats fault 30x less, but their medians moved by less than the noise (±20 ms), so
//! the bench does not disable purging. Peak RSS varies by ~30 MiB with huge pages.

use smig::plan::synthetic::{generate, SyntheticSpec};
use smig::plan::{build, invariants, PlanOptions};
use std::process::Command;
use std::time::{Duration, Instant};

/// The same allocator as the `smig` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        match args.get(i + 1).and_then(|n| n.parse().ok()) {
            Some(n) => child(n),
            None => eprintln!("--child needs a VM count"),
        }
        return;
    }
    let sizes: Vec<usize> = std::env::var("SMIG_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000]);
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot find the bench binary: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "| VMs | hosts | moving | steps | edges | build median | build min | build CPU median | first build | invariant check alone | peak RSS | RSS of the plan |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        match Command::new(&exe)
            .arg("--child")
            .arg(n.to_string())
            .output()
        {
            Ok(out) if out.status.success() => print!("{}", String::from_utf8_lossy(&out.stdout)),
            Ok(out) => eprintln!("{n} VMs failed: {}", String::from_utf8_lossy(&out.stderr)),
            Err(e) => eprintln!("{n} VMs: cannot start the child: {e}"),
        }
    }
}

/// A `Vm*` line of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time this thread has run, from /proc/thread-self/schedstat (ns): wall time on a busy
/// machine includes waiting for a core, this does not.
fn cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn child(n: usize) {
    let spec = SyntheticSpec::new(n);
    let (desired, observed) = generate(&spec);
    let moving = desired
        .vms
        .values()
        .filter(|vm| {
            observed
                .hosts
                .get(&vm.host)
                .is_none_or(|h| !h.domains.contains_key(vm.domain.as_str()))
        })
        .count();
    let before = status_kib("VmRSS:");
    // Reset the peak so it measures planning on top of the loaded landscapes.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let reps = std::env::var("SMIG_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(match n {
            0..=2_000 => 21,
            2_001..=20_000 => 7,
            _ => 3,
        });
    if reps == 0 {
        return;
    }
    let opts = PlanOptions::default();
    let mut times = Vec::with_capacity(reps);
    let mut cpu = Vec::with_capacity(reps);
    let mut shape = (0, 0);
    let mut check = Duration::ZERO;
    for i in 0..reps {
        let t = Instant::now();
        let c = cpu_time();
        let plan = match build(&desired, &observed, &opts) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{n} VMs: {e}");
                std::process::exit(1);
            }
        };
        times.push(t.elapsed());
        cpu.push(cpu_time().saturating_sub(c));
        if i == 0 {
            shape = (plan.graph.node_count(), plan.graph.edge_count());
            let t = Instant::now();
            let report = invariants::check(&plan, &desired);
            check = t.elapsed();
            assert!(report.holds());
        }
        drop(plan);
    }
    let peak = status_kib("VmHWM:");
    // The first build faults in the plan's memory, as the one build of a `smig plan` does.
    let first = times[0];
    times.sort();
    cpu.sort();
    println!(
        "| {n} | {} | {moving} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        desired.hosts().count(),
        shape.0,
        shape.1,
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(cpu[cpu.len() / 2]),
        ms(first),
        ms(check),
        mib(peak),
        mib(peak.saturating_sub(before)),
    );
}
