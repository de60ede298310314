//! Replays the fuzz corpus (`fuzz/corpus/config_load/`) through configuration loading and
//! formatting on stable Rust: every input gives a landscape or diagnostics, never a panic or a
//! stack overflow, within a time bound, and formatting is idempotent.

use smig::config::{self, Mode, SourceFile, VarInputs};
use std::time::{Duration, Instant};

/// Per input, generous for unoptimised builds on a shared machine.
const BOUND: Duration = Duration::from_secs(20);

fn exercise(data: &[u8]) {
    let source = SourceFile::new("fuzz.smig.hcl", String::from_utf8_lossy(data).into_owned());
    let sources = std::slice::from_ref(&source);
    let _ = config::load(sources, &VarInputs::default(), Mode::Validate);
    let _ = config::load(sources, &VarInputs::default(), Mode::Plan);
    if let Ok(formatted) = config::format(&source) {
        let again = config::format(&SourceFile::new("fuzz.smig.hcl", formatted.clone()))
            .expect("formatted output parses");
        assert_eq!(again, formatted, "formatting is idempotent");
    }
}

#[test]
fn corpus_replays_without_panics() {
    let mut paths: Vec<_> = std::fs::read_dir("fuzz/corpus/config_load")
        .expect("the corpus exists")
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    assert!(paths.len() >= 20, "the corpus is seeded");
    let mut failures = Vec::new();
    for path in paths {
        let data = std::fs::read(&path).expect("readable corpus file");
        let start = Instant::now();
        // A thread with a fixed 2 MiB stack: deep input must be refused, not overflow it.
        let outcome = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || exercise(&data))
            .expect("thread starts")
            .join();
        let took = start.elapsed();
        if outcome.is_err() {
            failures.push(format!("{}: panicked", path.display()));
        } else if took > BOUND {
            failures.push(format!("{}: took {took:?}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
