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

/// What formatting a set of files did.
#[derive(Debug)]
pub struct Formatted<E> {
    /// For stdout: the name of each file that changes (or would), with its diff if asked.
    pub listing: String,
    /// How many files change (or would, with `check`).
    pub changed: usize,
    /// Files that could not be formatted (syntax errors), in file order.
    pub failures: Vec<E>,
}

/// Formats `inputs` with `format`: lists each file whose text changes, with its diff when
/// `diff`, and rewrites it unless `check`. Files that fail to parse are collected, not
/// written.
pub fn format_files<E>(
    inputs: &[Input],
    format: impl Fn(&config::SourceFile) -> Result<String, E>,
    check: bool,
    diff: bool,
) -> Result<Formatted<E>, CliError> {
    let mut out = Formatted {
        listing: String::new(),
        changed: 0,
        failures: Vec::new(),
    };
    for input in inputs {
        let formatted = match format(&pipeline::source_file(input)) {
            Ok(f) => f,
            Err(e) => {
                out.failures.push(e);
                continue;
            }
        };
        if formatted == input.text {
            continue;
        }
        out.changed += 1;
        let name = input.name();
        out.listing.push_str(&name);
        out.listing.push('\n');
        if diff {
            out.listing
                .push_str(&unified(&name, &input.text, &formatted));
        }
        if !check {
            rewrite(&input.path, &formatted)?;
        }
    }
    Ok(out)
}

pub fn run(args: Args) -> miette::Result<Exit> {
    let inputs: Vec<Input> = config_paths(&args.path)?
        .iter()
        .map(|p| read_input(p))
        .collect::<Result<_, _>>()?;
    let mut done = format_files(&inputs, config::format, args.check, args.diff)?;
    print(&done.listing)?;
    // Files that parsed were formatted; every file that did not is reported (each report
    // carries all of that file's errors), the last one as the command's error.
    if let Some(last) = done.failures.pop() {
        for e in done.failures {
            let _ = writeln!(std::io::stderr().lock(), "{:?}", miette::Report::new(e));
        }
        return Err(last.into());
    }
    Ok(if args.check && done.changed > 0 {
        Exit::WouldReformat
    } else {
        Exit::Success
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in formatter: trims trailing spaces; `!` is a syntax error.
    fn trim(source: &config::SourceFile) -> Result<String, String> {
        if source.text.contains('!') {
            return Err(format!("{}: syntax error", source.name));
        }
        Ok(source
            .text
            .lines()
            .map(|l| l.trim_end().to_string() + "\n")
            .collect())
    }

    fn files(dir: &Path, texts: &[(&str, &str)]) -> Vec<Input> {
        texts
            .iter()
            .map(|(name, text)| {
                let path = dir.join(name);
                std::fs::write(&path, text).unwrap();
                Input {
                    path,
                    text: text.to_string(),
                }
            })
            .collect()
    }

    #[test]
    fn check_lists_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = files(
            dir.path(),
            &[("a.smig.hcl", "a = 1   \n"), ("b.smig.hcl", "b = 2\n")],
        );
        let done = format_files(&inputs, trim, true, false).unwrap();
        assert_eq!(done.changed, 1);
        assert_eq!(done.listing, format!("{}\n", inputs[0].name()));
        assert_eq!(
            std::fs::read_to_string(&inputs[0].path).unwrap(),
            "a = 1   \n"
        );
    }

    #[test]
    fn rewrites_changed_files_only_and_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = files(
            dir.path(),
            &[("a.smig.hcl", "a = 1   \n"), ("b.smig.hcl", "b = 2\n")],
        );
        let before_b = std::fs::metadata(&inputs[1].path)
            .unwrap()
            .modified()
            .unwrap();
        let done = format_files(&inputs, trim, false, true).unwrap();
        assert_eq!(done.changed, 1);
        assert!(
            done.listing.contains("-a = 1   \n+a = 1\n"),
            "{}",
            done.listing
        );
        assert!(done.listing.contains("--- a/"), "{}", done.listing);
        assert_eq!(std::fs::read_to_string(&inputs[0].path).unwrap(), "a = 1\n");
        assert_eq!(
            std::fs::metadata(&inputs[1].path)
                .unwrap()
                .modified()
                .unwrap(),
            before_b
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 2, "temporary file left behind");
        // Formatting is then a no-op.
        let again: Vec<Input> = inputs
            .iter()
            .map(|i| read_input(&i.path).unwrap())
            .collect();
        assert_eq!(format_files(&again, trim, true, false).unwrap().changed, 0);
    }

    #[test]
    fn every_unparsable_file_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = files(
            dir.path(),
            &[
                ("a.smig.hcl", "a = !\n"),
                ("b.smig.hcl", "b = 2  \n"),
                ("c.smig.hcl", "!"),
            ],
        );
        let done = format_files(&inputs, trim, false, false).unwrap();
        assert_eq!(done.failures.len(), 2);
        assert!(done.failures[0].contains("a.smig.hcl"));
        assert!(done.failures[1].contains("c.smig.hcl"));
        assert_eq!(std::fs::read_to_string(&inputs[0].path).unwrap(), "a = !\n");
        assert_eq!(std::fs::read_to_string(&inputs[1].path).unwrap(), "b = 2\n");
    }
}
