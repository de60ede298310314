//! `smig fmt [DIR|FILE] [--check] [--diff]`: rewrite configuration files in the canonical
//! format. With `--check` nothing is written and the command exits 3 (as `terraform fmt
//! -check` does) when a file would change.

use super::inputs::{config_paths, read_input, Input};
use super::{pipeline, print, CliError, Exit};
use crate::config;
use similar::TextDiff;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A directory (every *.smig.hcl in it) or a single file.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Write nothing; list the files that are not formatted and exit 3 if there are any.
    #[arg(long)]
    pub check: bool,
    /// Print the changes as a unified diff.
    #[arg(long)]
    pub diff: bool,
}

/// The unified diff between a file and its formatted text.
pub fn unified(name: &str, old: &str, new: &str) -> String {
    TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{name}"), &format!("b/{name}"))
        .to_string()
}

/// Replaces `path`'s content atomically (temporary file, then rename).
fn rewrite(path: &Path, text: &str) -> Result<(), CliError> {
    let err = |e: std::io::Error| CliError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(format!(".{}.fmt.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

pub fn run(args: Args) -> miette::Result<Exit> {
    let inputs: Vec<Input> = config_paths(&args.path)?
        .iter()
        .map(|p| read_input(p))
        .collect::<Result<_, _>>()?;
    let mut failures = Vec::new();
    let mut changed = Vec::new();
    for input in &inputs {
        match config::format(&pipeline::source_file(input)) {
            Ok(formatted) if formatted != input.text => changed.push((input, formatted)),
            Ok(_) => {}
            Err(e) => failures.push(e),
        }
    }
    let mut out = String::new();
    for (input, formatted) in &changed {
        let name = input.name();
        out.push_str(&name);
        out.push('\n');
        if args.diff {
            out.push_str(&unified(&name, &input.text, formatted));
        }
        if !args.check {
            rewrite(&input.path, formatted)?;
        }
    }
    print(&out)?;
    // Files that parsed were formatted; every file that did not is reported (each report
    // carries all of that file's errors), the last one as the command's error.
    if let Some(last) = failures.pop() {
        for e in failures {
            let _ = writeln!(std::io::stderr().lock(), "{:?}", miette::Report::new(e));
        }
        return Err(last.into());
    }
    Ok(if args.check && !changed.is_empty() {
        Exit::WouldReformat
    } else {
        Exit::Success
    })
}
