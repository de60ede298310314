//! Walker overhead on a 10,000-step DAG (2,000 VMs x 5 steps on 200 hosts) over the landscape
//! test double, with zero-latency calls and with 1 ms per call, at parallelism 16; and the
//! journal's append + fsync per entry.
//!
//! `cargo bench --bench walker` (add `-- quick` for a smaller run).
//!
//! Measured on the 2-core development machine while other builds ran (load average 6-12),
//! so the figures are upper bounds:
//! - zero-latency double, in-memory journal: 1.9 s for 10,000 steps, ~190 us per step
//!   (42,000 driver calls: probe, act, verify);
//! - 1 ms per call: 7.1-9.0 s, at or below the measured floor of 16 tasks doing the same
//!   number of 1 ms sleeps (10.0 s): the walker's own cost is within the timer's noise;
//! - file journal, fdatasync per entry (group commit): ~1.2-1.3 ms per step;
//! - one journal append + fdatasync: p50 0.14-0.5 ms, p90 3-5 ms, p99 ~20 ms (ext4 on a
//!   virtual disk; p50 was 4 ms in a 200-entry run under heavier load).

use smig::apply::events;
use smig::apply::{ApplyMeta, Engine, ExecContext, OnFailure, WalkOptions};
use smig::drivers::double::{Delay, DoubleConfig, LandscapeDouble};
use smig::drivers::Drivers;
use smig::model::*;
use smig::plan::{Action, Fact, Inverse, Plan, Step, StepKind, Target};
use smig::state::journal::{FileJournal, JournalSink, MemoryJournal, Outcome, Record};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOSTS: usize = 100; // per side

fn host(i: usize, side: &str) -> HostId {
    HostId::new(side, &format!("h{i}"))
}

fn landscape_and_plan(vms: usize) -> (Landscape, Observed, Plan) {
    let mut o = Observed::empty();
    for i in 0..HOSTS {
        o.hosts.insert(host(i, "dc"), ObservedHost::default());
        o.hosts.insert(host(i, "cloud"), ObservedHost::default());
    }
    let mut plan = Plan::default();
    for v in 0..vms {
        let name = smig::model::Name::from(format!("vm{v}"));
        let (src, dst) = (host(v % HOSTS, "dc"), host(v % HOSTS, "cloud"));
        let addr: std::net::Ipv4Addr = format!("10.{}.{}.{}", v / 65536, (v / 256) % 256, v % 256)
            .parse()
            .unwrap();
        o.hosts.get_mut(&src).unwrap().domains.insert(
            name.clone(),
            Domain {
                state: DomainState::Running,
                persistent: true,
                nic_link_up: None,
            },
        );
        let subject = smig::model::Name::from(format!("vm.{name}"));
        let blk = |h: &HostId| Action::Block {
            vm: name.clone(),
            host: h.clone(),
            address: addr,
            peers: vec![],
            allow_ipsec: false,
        };
        let unblk = |h: &HostId| Action::Unblock {
            vm: name.clone(),
            host: h.clone(),
            address: addr,
            peers: vec![],
            secure_only: false,
        };
        let mig = |from: &HostId, to: &HostId| Action::Migrate {
            vm: name.clone(),
            domain: name.clone(),
            from: from.clone(),
            to: to.clone(),
            to_uri: Default::default(),
            mode: MigrationMode::Live,
            tls: true,
            paused: false,
            max_downtime_ms: None,
            bandwidth_mibps: None,
        };
        let mut add =
            |kind: StepKind, target: &HostId, action: Action, effect: Fact, inverse: Inverse| {
                plan.graph.add_node(Step {
                    key: format!("{}:{subject}@{target}", kind.as_str()),
                    kind,
                    subject: subject.clone(),
                    target: Target::Host(target.clone()),
                    action,
                    precondition: vec![],
                    effect: vec![effect],
                    inverse,
                })
            };
        let blocked = |h: &HostId| Fact::Blocked {
            vm: name.clone(),
            host: h.clone(),
        };
        let not_blocked = |h: &HostId| Fact::NotBlocked {
            vm: name.clone(),
            host: h.clone(),
        };
        let a = add(
            StepKind::Block,
            &src,
            blk(&src),
            blocked(&src),
            Inverse::action(unblk(&src)),
        );
        let b = add(
            StepKind::Block,
            &dst,
            blk(&dst),
            blocked(&dst),
            Inverse::action(unblk(&dst)),
        );
        let m = add(
            StepKind::Migrate,
            &src,
            mig(&src, &dst),
            Fact::DomainAbsent {
                domain: name.clone(),
                host: src.clone(),
            },
            Inverse::action(mig(&dst, &src)),
        );
        let e = add(
            StepKind::Enable,
            &dst,
            unblk(&dst),
            not_blocked(&dst),
            Inverse::action(blk(&dst)),
        );
        let c = add(
            StepKind::Cleanup,
            &src,
            Action::Cleanup {
                vm: name.clone(),
                host: src.clone(),
                ipsec_links: vec![],
            },
            not_blocked(&src),
            Inverse::Nothing,
        );
        for (x, y) in [(a, m), (b, m), (m, e), (e, c)] {
            plan.graph.add_edge(x, y, ());
        }
    }
    (Landscape::default(), o, plan)
}

fn walk(vms: usize, delay_ms: u64, journal: Box<dyn JournalSink>) -> (Duration, usize) {
    let (landscape, observed, plan) = landscape_and_plan(vms);
    let double = Arc::new(LandscapeDouble::new(observed));
    if delay_ms > 0 {
        double.set_config(DoubleConfig {
            delays: vec![Delay {
                call: "*".into(),
                ms: delay_ms,
            }],
            ..Default::default()
        });
    }
    let engine = Engine {
        ctx: ExecContext {
            drivers: Drivers::all(double.clone()),
            landscape: Arc::new(landscape),
            poll_interval: None,
        },
        events: events::discard(),
        options: WalkOptions {
            parallelism: 16,
            on_failure: OnFailure::Halt,
            ..Default::default()
        },
        discovered: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let meta = ApplyMeta {
        apply_id: "bench".into(),
        ..Default::default()
    };
    let t = Instant::now();
    let run = rt.block_on(engine.apply(&plan, journal, &meta)).unwrap();
    let took = t.elapsed();
    assert_eq!(run.report.outcome, Outcome::Succeeded);
    (took, double.calls().len())
}

/// The same number of 1 ms sleeps, `lanes` at a time, with nothing else: the timer's floor.
fn sleep_floor(calls: usize, lanes: usize) -> Duration {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for lane in 0..lanes {
            let n = calls / lanes + usize::from(lane < calls % lanes);
            set.spawn(async move {
                for _ in 0..n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
        }
        while set.join_next().await.is_some() {}
    });
    t.elapsed()
}

fn journal_fsync(n: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let mut j = FileJournal::create(&dir.path().join("journal.jsonl")).unwrap();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        j.append(Record::StepDone {
            step: i,
            key: format!("migrate:vm.vm{i}@dc.h{}", i % 100),
            duration_ms: 12,
        })
        .unwrap();
        out.push(t.elapsed());
    }
    out
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let vms = if quick { 200 } else { 2000 };
    let steps = vms * 5;
    let (t0, calls0) = walk(vms, 0, Box::new(MemoryJournal::new()));
    println!(
        "walker, {steps} steps, zero-latency double, in-memory journal, parallelism 16: {:.1} ms total, {:.1} us/step ({calls0} driver calls)",
        t0.as_secs_f64() * 1e3,
        t0.as_secs_f64() * 1e6 / steps as f64
    );
    let (t1, calls1) = walk(vms, 1, Box::new(MemoryJournal::new()));
    let ideal = Duration::from_millis((calls1 as u64).div_ceil(16));
    let floor = sleep_floor(calls1, 16);
    println!(
        "walker, {steps} steps, 1 ms per call, in-memory journal, parallelism 16: {:.1} ms total; {calls1} calls / 16 = {:.1} ms nominal, {:.1} ms measured floor (16 tasks sleeping 1 ms per call on the same timer); overhead over the floor {:.1}%",
        t1.as_secs_f64() * 1e3,
        ideal.as_secs_f64() * 1e3,
        floor.as_secs_f64() * 1e3,
        (t1.as_secs_f64() / floor.as_secs_f64() - 1.0) * 100.0
    );
    let dir = tempfile::tempdir().unwrap();
    let file = FileJournal::create(&dir.path().join("journal.jsonl")).unwrap();
    let (t2, _) = walk(vms, 0, Box::new(file));
    println!(
        "walker, {steps} steps, zero-latency double, file journal (fsync per entry): {:.1} ms total, {:.1} us/step",
        t2.as_secs_f64() * 1e3,
        t2.as_secs_f64() * 1e6 / steps as f64
    );
    let mut lat = journal_fsync(if quick { 200 } else { 2000 });
    println!(
        "journal append + fdatasync per entry: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms (n={})",
        pct(&mut lat, 0.5).as_secs_f64() * 1e3,
        pct(&mut lat, 0.9).as_secs_f64() * 1e3,
        pct(&mut lat, 0.99).as_secs_f64() * 1e3,
        lat.len()
    );
}
