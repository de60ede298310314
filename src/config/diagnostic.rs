//! Configuration diagnostics: every problem found in one pass, each with its file, a labelled
//! span, help text and a stable code. Values are never interpolated into messages unless they
//! are known not to be sensitive.

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceSpan};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// The most diagnostics one load reports; the rest are summarised in a last entry.
pub const MAX_REPORTED: usize = 100;

impl ConfigErrors {
    /// The most diagnostics one load reports; the rest are summarised in a last entry.
    pub const MAX_REPORTED: usize = MAX_REPORTED;
}

/// A stable diagnostic code. Each renders as `smig::config::<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// The text is not valid HCL.
    Syntax,
    /// Brackets, blocks or templates nest deeper than the limit.
    TooDeep,
    /// A block type the language does not have (here).
    UnknownBlock,
    /// An attribute the block does not have.
    UnknownAttribute,
    /// A required attribute or block is absent.
    MissingAttribute,
    /// A block has the wrong number of labels or an invalid name.
    InvalidLabel,
    /// A value has the wrong type.
    WrongType,
    /// A value has the right type but is not acceptable (a malformed address, an unknown mode).
    InvalidValue,
    /// A reference names something that does not exist.
    UnknownReference,
    /// References form a cycle.
    ReferenceCycle,
    /// Two things share a name.
    DuplicateName,
    /// A VM's address is not in its subnet.
    AddressOutsideSubnet,
    /// Two VMs share an address.
    DuplicateAddress,
    /// A secure_link names a VM that does not exist.
    MissingVm,
    /// A VM is placed on a host that does not exist.
    UnknownHost,
    /// A host in an untrusted environment is reached without libvirt's TLS transport.
    InsecureTransport,
    /// A variable has no value at plan time.
    MissingVariable,
    /// A value was given for a variable that is not declared.
    UndeclaredVariable,
    /// A variable's validation condition failed.
    Validation,
    /// An expression could not be evaluated.
    Evaluation,
    /// `count` or `for_each` is out of range or of the wrong kind.
    Expansion,
    /// More diagnostics were found than are reported.
    TooManyErrors,
}

impl Code {
    /// Every code, for documentation and tests.
    pub const ALL: &'static [Code] = &[
        Code::Syntax,
        Code::TooDeep,
        Code::UnknownBlock,
        Code::UnknownAttribute,
        Code::MissingAttribute,
        Code::InvalidLabel,
        Code::WrongType,
        Code::InvalidValue,
        Code::UnknownReference,
        Code::ReferenceCycle,
        Code::DuplicateName,
        Code::AddressOutsideSubnet,
        Code::DuplicateAddress,
        Code::MissingVm,
        Code::UnknownHost,
        Code::InsecureTransport,
        Code::MissingVariable,
        Code::UndeclaredVariable,
        Code::Validation,
        Code::Evaluation,
        Code::Expansion,
        Code::TooManyErrors,
    ];

    /// The full code, e.g. `smig::config::unknown_reference`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "smig::config::syntax",
            Code::TooDeep => "smig::config::too_deep",
            Code::UnknownBlock => "smig::config::unknown_block",
            Code::UnknownAttribute => "smig::config::unknown_attribute",
            Code::MissingAttribute => "smig::config::missing_attribute",
            Code::InvalidLabel => "smig::config::invalid_label",
            Code::WrongType => "smig::config::wrong_type",
            Code::InvalidValue => "smig::config::invalid_value",
            Code::UnknownReference => "smig::config::unknown_reference",
            Code::ReferenceCycle => "smig::config::reference_cycle",
            Code::DuplicateName => "smig::config::duplicate_name",
            Code::AddressOutsideSubnet => "smig::config::address_outside_subnet",
            Code::DuplicateAddress => "smig::config::duplicate_address",
            Code::MissingVm => "smig::config::missing_vm",
            Code::UnknownHost => "smig::config::unknown_host",
            Code::InsecureTransport => "smig::config::insecure_transport",
            Code::MissingVariable => "smig::config::missing_variable",
            Code::UndeclaredVariable => "smig::config::undeclared_variable",
            Code::Validation => "smig::config::validation",
            Code::Evaluation => "smig::config::evaluation",
            Code::Expansion => "smig::config::expansion",
            Code::TooManyErrors => "smig::config::too_many_errors",
        }
    }
}

impl Code {
    /// Help for a diagnostic whose site gives none more specific.
    pub fn default_help(self) -> &'static str {
        match self {
            Code::Syntax => "check for unclosed brackets, strings or heredocs near this point",
            Code::TooDeep => "flatten the expression or block structure",
            Code::UnknownBlock => {
                "see schemas/landscape.schema.json for the blocks of the language"
            }
            Code::UnknownAttribute => {
                "see schemas/landscape.schema.json for the attributes of each block"
            }
            Code::MissingAttribute => "add the missing attribute or block",
            Code::InvalidLabel => {
                "names start with a letter or `_` and hold only letters, digits, `_` and `-`"
            }
            Code::WrongType => "change the value to the expected type",
            Code::InvalidValue => "change the value to one the attribute accepts",
            Code::UnknownReference => "declare it, or fix the spelling of the reference",
            Code::ReferenceCycle => {
                "break the cycle: one of these values must not depend on the others"
            }
            Code::DuplicateName => "rename or remove one of them",
            Code::AddressOutsideSubnet => "choose an address inside the VM's subnet",
            Code::DuplicateAddress => "every VM needs its own address",
            Code::MissingVm => "declare the VM, or remove it from the secure_link",
            Code::UnknownHost => {
                "declare the host in its environment, or place the VM on an existing host"
            }
            Code::InsecureTransport => {
                "use \"qemu+tls://...\", or set `policy { allow_insecure_transport = true }`"
            }
            Code::MissingVariable => {
                "give the variable a value with --var, --var-file or SMIG_VAR_<name>"
            }
            Code::UndeclaredVariable => "declare it with a `variable` block, or remove the value",
            Code::Validation => "give the variable a value that meets its validation",
            Code::Evaluation => "check the types of the values the expression combines",
            Code::Expansion => "`count` takes a whole number; `for_each` a map or a set of strings",
            Code::TooManyErrors => "fix the errors above and run again",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A source file shared by the diagnostics that point into it.
#[derive(Debug, Clone)]
pub(crate) struct SharedSource {
    pub name: Arc<str>,
    pub text: Arc<str>,
}

/// Where something is: a file and a byte range in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loc {
    pub file: usize,
    pub span: Range<usize>,
}

/// Where a parsed text lies: its file, and the byte offset in that file where the text
/// starts. Spans the parser reports are relative to the text; [`Origin::loc`] makes them
/// file positions. A file parsed whole has offset 0; a large file parsed in parts has parts
/// that start further in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    pub file: usize,
    pub offset: usize,
}

impl Origin {
    /// The start of a whole file.
    pub fn file(file: usize) -> Self {
        Origin { file, offset: 0 }
    }
    /// The file position of a span of the parsed text (an empty span at its start if the
    /// parser gave none).
    pub fn loc(self, span: Option<Range<usize>>) -> Loc {
        let span = span.unwrap_or(0..0);
        Loc {
            file: self.file,
            span: span.start + self.offset..span.end + self.offset,
        }
    }
}

/// One configuration problem.
#[derive(Debug, Clone)]
pub struct ConfigError {
    code: Code,
    message: String,
    help: Option<String>,
    source: Option<NamedSource<Arc<str>>>,
    labels: Vec<LabeledSpan>,
}

impl ConfigError {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        ConfigError {
            code,
            message: message.into(),
            help: None,
            source: None,
            labels: Vec::new(),
        }
    }

    /// Points the diagnostic at `loc` with a label. The first call fixes the file; labels in
    /// other files are dropped (the message names them instead).
    pub(crate) fn at(
        mut self,
        files: &[SharedSource],
        loc: &Loc,
        label: impl Into<String>,
    ) -> Self {
        let Some(file) = files.get(loc.file) else {
            return self;
        };
        match &self.source {
            None => {
                self.source = Some(NamedSource::new(&*file.name, file.text.clone()));
            }
            Some(s) if s.name() != &*file.name => return self,
            Some(_) => {}
        }
        // Spans on character boundaries, inside the text.
        let text = &*file.text;
        let len = text.len();
        let mut start = loc.span.start.min(len);
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = loc.span.end.clamp(start, len);
        while !text.is_char_boundary(end) {
            end += 1;
        }
        let label: String = label.into();
        let label = if label.is_empty() { None } else { Some(label) };
        self.labels
            .push(LabeledSpan::new(label, start, end - start));
        self
    }

    pub(crate) fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// The stable code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The one-line message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The file the diagnostic points into, if any.
    pub fn file(&self) -> Option<&str> {
        self.source.as_ref().map(|s| s.name())
    }

    /// The byte span of the primary label, if any.
    pub fn span(&self) -> Option<SourceSpan> {
        self.labels.first().map(|l| *l.inner())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Diagnostic for ConfigError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code.as_str()))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h.as_str()) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }
}

/// Every problem found while loading a configuration.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub(crate) fn new(mut errors: Vec<ConfigError>) -> Self {
        if errors.len() > MAX_REPORTED {
            let more = errors.len() - MAX_REPORTED;
            errors.truncate(MAX_REPORTED);
            errors.push(
                ConfigError::new(Code::TooManyErrors, format!("{more} more errors not shown"))
                    .help("fix the errors above and run again"),
            );
        }
        ConfigErrors { errors }
    }

    /// The individual diagnostics, in the order found.
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    /// The codes of the individual diagnostics.
    pub fn codes(&self) -> Vec<Code> {
        self.errors.iter().map(|e| e.code).collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.len() {
            1 => f.write_str("the configuration has 1 error"),
            n => write!(f, "the configuration has {n} errors"),
        }
    }
}

impl std::error::Error for ConfigErrors {}

impl Diagnostic for ConfigErrors {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new("smig::config"))
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(self.errors.iter().map(|e| e as &dyn Diagnostic)))
    }
}

/// Collects diagnostics during a load.
#[derive(Default)]
pub(crate) struct Sink {
    pub files: Vec<SharedSource>,
    pub errors: Vec<ConfigError>,
    /// Errors already reported, so the instances of a `count` block report a problem once.
    pub seen: std::collections::HashSet<(Code, usize, usize, usize, String)>,
}

impl Sink {
    /// Records an error pointing at `loc`.
    pub fn error(
        &mut self,
        code: Code,
        loc: &Loc,
        message: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) {
        let message: String = message.into();
        if !self.seen.insert((
            code,
            loc.file,
            loc.span.start,
            loc.span.end,
            message.clone(),
        )) {
            return;
        }
        let help: String = help.into();
        let help = if help.is_empty() {
            code.default_help().to_string()
        } else {
            help
        };
        let e = ConfigError::new(code, message)
            .at(&self.files, loc, label)
            .help(help);
        self.errors.push(e);
    }

    /// Records an error that points nowhere in a file (a command-line value).
    pub fn error_plain(&mut self, code: Code, message: impl Into<String>, help: impl Into<String>) {
        let help: String = help.into();
        let help = if help.is_empty() {
            code.default_help().to_string()
        } else {
            help
        };
        self.errors.push(ConfigError::new(code, message).help(help));
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// `file:line:column` of `loc`, for messages that mention a second place.
    pub fn position(&self, loc: &Loc) -> String {
        let Some(f) = self.files.get(loc.file) else {
            return "?".into();
        };
        let upto = &f.text.as_bytes()[..loc.span.start.min(f.text.len())];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        let col = upto.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        format!("{}:{line}:{col}", f.name)
    }
}
