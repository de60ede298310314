//! Reading what the configuration is made of: the `*.smig.hcl` files of a directory and the
//! variable inputs (`--var`, `--var-file`, `SMIG_VAR_<name>`), and fingerprinting them.

use super::CliError;
use crate::planfile::sha256_fingerprint;
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The suffix of configuration files.
pub const CONFIG_SUFFIX: &str = ".smig.hcl";

/// The prefix of environment variables that set variables.
pub const ENV_PREFIX: &str = "SMIG_VAR_";

/// One input file as read from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The path as given (what diagnostics show).
    pub path: PathBuf,
    pub text: String,
}

impl Input {
    /// The path as text, for diagnostics.
    pub fn name(&self) -> String {
        self.path.display().to_string()
    }
    /// The file name alone (what the fingerprint covers, so that it does not depend on where
    /// smig runs from).
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Reads a file as UTF-8 text.
pub fn read_input(path: &Path) -> Result<Input, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(Input {
        path: path.to_path_buf(),
        text,
    })
}

/// The configuration files at `path`: every `*.smig.hcl` of the directory, sorted by name,
/// or the file itself when `path` is a file.
pub fn config_paths(path: &Path) -> Result<Vec<PathBuf>, CliError> {
    let meta = std::fs::metadata(path).map_err(|e| CliError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| CliError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CliError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let name = entry.file_name();
        let is_config = name.to_str().is_some_and(|n| n.ends_with(CONFIG_SUFFIX));
        if is_config && entry.path().is_file() {
            paths.push(entry.path());
        }
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if paths.is_empty() {
        return Err(CliError::NoConfiguration {
            path: path.display().to_string(),
        });
    }
    Ok(paths)
}

/// Reads every configuration file at `path` (see [`config_paths`]).
pub fn read_config(path: &Path) -> Result<Vec<Input>, CliError> {
    config_paths(path)?.iter().map(|p| read_input(p)).collect()
}

/// Variable inputs, lowest precedence first: environment, then files, then `--var`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VarArgs {
    /// `SMIG_VAR_<name>` values, sorted by name.
    pub env: Vec<(String, String)>,
    /// `--var-file` files in command-line order.
    pub files: Vec<Input>,
    /// `--var NAME=VALUE` in command-line order.
    pub cli: Vec<(String, String)>,
}

/// Parses `--var NAME=VALUE`.
pub fn parse_var(arg: &str) -> Result<(String, String), CliError> {
    match arg.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err(CliError::BadVar {
            arg: arg.to_string(),
        }),
    }
}

/// Collects the variable inputs from arguments and an environment.
pub fn read_vars(
    vars: &[String],
    var_files: &[PathBuf],
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<VarArgs, CliError> {
    let mut out = VarArgs::default();
    for (k, v) in env {
        let Some(key) = k.to_str() else { continue };
        let Some(name) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        let value = v.into_string().map_err(|_| CliError::BadEnvVar {
            name: key.to_string(),
        })?;
        out.env.push((name.to_string(), value));
    }
    out.env.sort();
    for f in var_files {
        out.files.push(read_input(f)?);
    }
    for v in vars {
        out.cli.push(parse_var(v)?);
    }
    Ok(out)
}

/// The configuration fingerprint: sha256 over the configuration files (file name and text,
/// in name order) and the variable inputs, each value hashed first. The result reveals no
/// variable value, secret or not.
pub fn config_fingerprint(sources: &[Input], vars: &VarArgs) -> String {
    let mut sorted: Vec<&Input> = sources.iter().collect();
    sorted.sort_by_key(|s| s.file_name());
    let mut h = Sha256::new();
    h.update(b"smig-config-v1\0");
    let field = |h: &mut Sha256, tag: &str, bytes: &[u8]| {
        h.update(tag.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    for s in sorted {
        field(&mut h, "file", s.file_name().as_bytes());
        field(&mut h, "text", s.text.as_bytes());
    }
    let hashed = |v: &str| Sha256::digest(v.as_bytes());
    for (name, value) in &vars.env {
        field(&mut h, "env", name.as_bytes());
        field(&mut h, "value", &hashed(value));
    }
    for f in &vars.files {
        field(&mut h, "var-file", &hashed(&f.text));
    }
    for (name, value) in &vars.cli {
        field(&mut h, "var", name.as_bytes());
        field(&mut h, "value", &hashed(value));
    }
    sha256_fingerprint(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, text: &str) -> Input {
        Input {
            path: PathBuf::from("/some/where").join(name),
            text: text.into(),
        }
    }

    #[test]
    fn var_needs_a_name_and_an_equals_sign() {
        assert_eq!(parse_var("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_var("a=").unwrap(), ("a".into(), String::new()));
        assert!(parse_var("a").is_err());
        assert!(parse_var("=x").is_err());
    }

    #[test]
    fn env_vars_are_picked_by_prefix_and_sorted() {
        let env = [
            ("SMIG_VAR_b", "2"),
            ("PATH", "/bin"),
            ("SMIG_VAR_a", "1"),
            ("SMIG_VAR_", "x"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let v = read_vars(&[], &[], env).unwrap();
        assert_eq!(
            v.env,
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
    }

    #[test]
    fn fingerprint_follows_content_not_location_or_order() {
        let a = [input("a.smig.hcl", "x = 1"), input("b.smig.hcl", "y = 2")];
        let b = [
            Input {
                path: PathBuf::from("b.smig.hcl"),
                text: "y = 2".into(),
            },
            Input {
                path: PathBuf::from("elsewhere/a.smig.hcl"),
                text: "x = 1".into(),
            },
        ];
        let none = VarArgs::default();
        let fa = config_fingerprint(&a, &none);
        assert_eq!(fa, config_fingerprint(&b, &none));
        assert!(fa.starts_with("sha256:") && fa.len() == 7 + 64);
        let edited = [input("a.smig.hcl", "x = 2"), input("b.smig.hcl", "y = 2")];
        assert_ne!(fa, config_fingerprint(&edited, &none));
        let renamed = [input("c.smig.hcl", "x = 1"), input("b.smig.hcl", "y = 2")];
        assert_ne!(fa, config_fingerprint(&renamed, &none));
    }

    #[test]
    fn fingerprint_covers_variable_values_without_revealing_them() {
        let src = [input("a.smig.hcl", "")];
        let with = |v: &str| VarArgs {
            cli: vec![("psk".into(), v.into())],
            ..VarArgs::default()
        };
        let f1 = config_fingerprint(&src, &with("canary-1f2e"));
        let f2 = config_fingerprint(&src, &with("canary-1f2f"));
        assert_ne!(f1, f2);
        assert!(!f1.contains("canary"));
        // A value moving from one variable to the next is a different input.
        let split = VarArgs {
            cli: vec![("ab".into(), "c".into())],
            ..VarArgs::default()
        };
        let joined = VarArgs {
            cli: vec![("a".into(), "bc".into())],
            ..VarArgs::default()
        };
        assert_ne!(
            config_fingerprint(&src, &split),
            config_fingerprint(&src, &joined)
        );
    }
}
