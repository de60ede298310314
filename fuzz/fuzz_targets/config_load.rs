//! Fuzzes configuration loading and formatting: any input gives a landscape or diagnostics,
//! never a panic or a stack overflow, and formatting is idempotent.
//!
//! Run with `cargo fuzz run config_load` (nightly); `tests/config_fuzz_corpus.rs` replays the
//! corpus on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smig::config::{self, Mode, SourceFile, VarInputs};

fuzz_target!(|data: &[u8]| {
    let source = SourceFile::new("fuzz.smig.hcl", String::from_utf8_lossy(data).into_owned());
    let sources = std::slice::from_ref(&source);
    let _ = config::load(sources, &VarInputs::default(), Mode::Validate);
    let _ = config::load(sources, &VarInputs::default(), Mode::Plan);
    if let Ok(formatted) = config::format(&source) {
        let again = config::format(&SourceFile::new("fuzz.smig.hcl", formatted.clone()))
            .expect("formatted output parses");
        assert_eq!(again, formatted, "formatting is idempotent");
    }
});
