//! The landscape language: HCL text → a validated [`Landscape`].
//!
//! The caller (the CLI) reads the files and the environment and hands the text over; nothing
//! here does I/O. [`load`] parses every file, checks the structure against the language,
//! resolves variables (`--var` over `--var-file` over `SMIG_VAR_<name>` over defaults), locals
//! and references in dependency order, expands `count` and `for_each`, and checks the whole
//! landscape. Every problem is reported at once as a [`ConfigErrors`] diagnostic, each with a
//! stable [`Code`]; values of sensitive variables never appear in one (a variables file and
//! sensitive defaults are shown masked).
//!
//! The language (`schemas/landscape.schema.json` has it as a JSON Schema):
//!
//! - `variable "NAME" { type, default, sensitive, description, nullable, validation { condition, error_message } }`
//! - `locals { NAME = expr ... }`
//! - `environment "NAME" { trusted, host "NAME" { libvirt, address, network }, routing_core { network } }`
//! - `subnet "NAME" { cidr }`
//! - `vm "NAME" { count | for_each, host, subnet, address, domain, migration { mode, strategy, max_downtime_ms, bandwidth_mibps } }`
//! - `secure_link "NAME" { count | for_each, between, ipsec { proposals, psk | cert + key [+ ca] } }`
//! - `policy { tls_ports, route_check_timeout_s, route_check_interval_s, parallelism, allow_insecure_transport }` (at most one)
//!
//! References: `var.X`, `local.X`, `environment.E` (with `.trusted`, `.host.H` — a host, with
//! `.id`, `.address`, ...), `subnet.S` (`.name`, `.cidr`), `vm.V` (`.id`, `.address`, `.host`,
//! ...; a list for `count`, a map for `for_each`), `secure_link.L`, and inside expanded blocks
//! `count.index`, `each.key`, `each.value`. A `host` may also be written `"ENV.HOST"` and a
//! `subnet` by name. Functions: see [`FUNCTIONS`].
//!
//! Instances of a block with `count` are named `web[0]`, `web[1]`, ...; with `for_each`,
//! `web["key"]` (Terraform's convention). Their libvirt domain name defaults to `web-0` or
//! `web-key` (a single VM's to its name).
//!
//! Limits keep hostile input bounded: nesting deeper than [`MAX_DEPTH`], more than
//! [`MAX_INSTANCES_PER_BLOCK`] instances of a block or [`MAX_INSTANCES_TOTAL`] in all are
//! refused with a diagnostic.

mod depth;
mod diagnostic;
mod eval;
mod fmt;
mod load;
mod syntax;
mod types;

pub use depth::MAX_DEPTH;
pub use diagnostic::{Code, ConfigError, ConfigErrors};
pub use load::{Scratch, FUNCTIONS, MAX_INSTANCES_PER_BLOCK, MAX_INSTANCES_TOTAL};

use crate::model::Landscape;

/// One configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The path as shown in diagnostics.
    pub name: String,
    pub text: String,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        SourceFile {
            name: name.into(),
            text: text.into(),
        }
    }
}

/// Values for the configuration's variables from outside it.
#[derive(Debug, Clone, Default)]
pub struct VarInputs {
    /// `--var name=value`, in command-line order (later wins).
    pub cli: Vec<(String, String)>,
    /// `--var-file` contents (HCL `name = value` attributes), in order (later wins).
    pub files: Vec<SourceFile>,
    /// `SMIG_VAR_<name>` values from the environment, keyed by `<name>`.
    pub env: Vec<(String, String)>,
}

/// What the configuration is loaded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `smig validate`: a variable without a value is fine; what depends on it is not checked.
    Validate,
    /// `smig plan` and `apply`: a variable without a value is an error.
    Plan,
}

/// Loads, resolves and validates a configuration made of `sources` (all `*.smig.hcl` files
/// of a directory, sorted by name).
///
/// In [`Mode::Validate`], a value that depends on a variable without a value is left empty
/// (a pre-shared key from such a variable is an empty [`crate::model::Secret`]).
/// Loads and checks a configuration: the desired landscape, or every problem found.
pub fn load(
    sources: &[SourceFile],
    vars: &VarInputs,
    mode: Mode,
) -> Result<Landscape, ConfigErrors> {
    load_keeping_scratch(sources, vars, mode).0
}

/// [`load`], also handing back the loader's working data instead of freeing it.
pub fn load_keeping_scratch(
    sources: &[SourceFile],
    vars: &VarInputs,
    mode: Mode,
) -> (Result<Landscape, ConfigErrors>, Scratch) {
    load::load(sources, vars, mode)
}

/// Formats a configuration file canonically (`smig fmt`): two-space indentation, aligned `=`
/// in runs of single-line attributes, one blank line at most between items, comments kept.
/// Idempotent.
pub fn format(source: &SourceFile) -> Result<String, ConfigErrors> {
    fmt::format(source)
}
