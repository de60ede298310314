//! From decoded blocks to a validated [`Landscape`]: declarations, the reference graph,
//! variables, evaluation in dependency order, `count`/`for_each` expansion, and the checks
//! that need the whole landscape.

use super::diagnostic::{Code, ConfigErrors, Loc, Origin, SharedSource, Sink};
use super::eval::{base_context, describe_error, type_name, Ref, Refs};
use super::syntax::{self, RawAttr, RawBlock};
use super::types::VarType;
use super::{Mode, SourceFile, VarInputs};
use crate::model::{
    Environment, Host, HostId, IpsecAuth, IpsecSpec, Landscape, Migration, MigrationMode, Name,
    Policy, RoutingCore, Secret, SecureLink, Strategy, Subnet, Vm,
};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use hcl::eval::{Context, Evaluate};
use hcl::{Map, Value};
use indexmap::IndexMap;
use ipnet::Ipv4Net;
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// The most instances one `vm` or `secure_link` block may expand to.
pub const MAX_INSTANCES_PER_BLOCK: u64 = 250_000;
/// The most instances a whole configuration may expand to.
pub const MAX_INSTANCES_TOTAL: usize = 1_000_000;

/// The namespaces a reference can start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Ns {
    Var,
    Local,
    Environment,
    Subnet,
    Vm,
    Link,
    Policy,
}

impl Ns {
    fn root(self) -> &'static str {
        match self {
            Ns::Var => "var",
            Ns::Local => "local",
            Ns::Environment => "environment",
            Ns::Subnet => "subnet",
            Ns::Vm => "vm",
            Ns::Link => "secure_link",
            Ns::Policy => "policy",
        }
    }
    fn from_root(root: &str) -> Option<Ns> {
        Some(match root {
            "var" => Ns::Var,
            "local" => Ns::Local,
            "environment" => Ns::Environment,
            "subnet" => Ns::Subnet,
            "vm" => Ns::Vm,
            "secure_link" => Ns::Link,
            _ => return None,
        })
    }
}

type Key = (Ns, String);

/// A declared variable.
struct VarDecl<'a> {
    block: &'a RawBlock,
    ty: VarType,
    sensitive: bool,
}

/// What a node of the reference graph is made of.
enum NodeBody<'a> {
    Var,
    Local(&'a RawAttr),
    Block(&'a RawBlock),
}

struct Node<'a> {
    key: Key,
    body: NodeBody<'a>,
    /// The location naming the node (its label or local name), for cycle reports.
    loc: Loc,
}

/// An attribute prepared for evaluation.
struct Prepared<'a> {
    /// The attribute, with its value and references.
    raw: &'a RawAttr,
    /// A reference in it is invalid (already reported) or unknown: it cannot be evaluated.
    unknown: bool,
    /// It refers to a sensitive value.
    sensitive: bool,
}

/// The result of evaluating an attribute.
enum Ev {
    Val(Value),
    /// Not known (a variable without a value in validate mode) or already reported broken.
    Unknown,
}

/// What is known about the values of each named thing while the graph is walked.
#[derive(Default)]
struct Scope {
    values: HashMap<Ns, HashMap<String, Value>>,
    unknown: HashSet<Key>,
    sensitive: HashSet<Key>,
}

impl Scope {
    fn set(&mut self, key: Key, value: Value) {
        self.values.entry(key.0).or_default().insert(key.1, value);
    }
    fn get(&self, key: &Key) -> Option<&Value> {
        self.values.get(&key.0).and_then(|m| m.get(&key.1))
    }
}

/// The loader's working data once the landscape is built: the decoded blocks and the
/// evaluated values. For a 10,000-VM configuration that is several hundred thousand small
/// allocations, which take tens of milliseconds to free; a command that exits right after
/// its work can leave them to the end of the process. Dropping it frees it.
#[derive(Default)]
pub struct Scratch {
    _blocks: Vec<RawBlock>,
    _scope: Scope,
    _vm_locs: HashMap<String, VmLocs>,
    _link_locs: HashMap<String, LinkLocs>,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
}

/// Loads and validates a configuration; see [`super::load_keeping_scratch`].
pub(crate) fn load(
    sources: &[SourceFile],
    inputs: &VarInputs,
    mode: Mode,
) -> (Result<Landscape, ConfigErrors>, Scratch) {
    let mut sink = Sink {
        files: sources
            .iter()
            .map(|s| SharedSource {
                name: Arc::from(s.name.as_str()),
                text: Arc::from(s.text.as_str()),
            })
            .collect(),
        ..Default::default()
    };
    // Each file parsed in parts on several threads (large files) or whole.
    enum Parsed {
        Whole(hcl_edit::structure::Body),
        InParts(syntax::Decoded),
    }
    let mut parsed = Vec::new();
    let mut unparsed = false;
    for (i, s) in sources.iter().enumerate() {
        if let Some(decoded) = syntax::parse_in_parts(i, &s.text, &sink) {
            parsed.push((i, Parsed::InParts(decoded)));
            continue;
        }
        match syntax::parse_file(i, &s.text, &mut sink) {
            Some(body) => parsed.push((i, Parsed::Whole(body))),
            None => unparsed = true,
        }
    }
    if unparsed {
        return (Err(ConfigErrors::new(sink.errors)), Scratch::default());
    }
    // Diagnostics show source lines: mask the defaults of sensitive variables first.
    for (i, p) in &parsed {
        let spans = match p {
            Parsed::Whole(body) => &syntax::sensitive_default_spans(body),
            Parsed::InParts(decoded) => &decoded.sensitive_spans,
        };
        if !spans.is_empty() {
            sink.files[*i].text = Arc::from(mask(&sources[*i].text, spans));
        }
    }
    // The decoded blocks take what they need out of the syntax trees (several times the size
    // of the text), which go before the landscape is built.
    let mut blocks = Vec::new();
    for (i, p) in parsed {
        match p {
            Parsed::Whole(body) => {
                blocks.extend(syntax::decode_root(Origin::file(i), body, &mut sink));
            }
            Parsed::InParts(decoded) => blocks.extend(decoded.blocks),
        }
    }
    let mut loader = Loader {
        sink,
        mode,
        scope: Scope::default(),
        landscape: Landscape::default(),
        locs: Locs::default(),
        instances: 0,
        declared: HashSet::new(),
        vm_locs: HashMap::new(),
        link_locs: HashMap::new(),
        referenced: HashSet::new(),
    };
    loader.run(&blocks, inputs);
    let Loader {
        sink,
        landscape,
        scope,
        vm_locs,
        link_locs,
        ..
    } = loader;
    let result = if sink.has_errors() {
        Err(ConfigErrors::new(sink.errors))
    } else {
        Ok(landscape)
    };
    let scratch = Scratch {
        _blocks: blocks,
        _scope: scope,
        _vm_locs: vm_locs,
        _link_locs: link_locs,
    };
    (result, scratch)
}

/// Where the parts of the landscape were written, for the whole-landscape checks.
#[derive(Default)]
struct Locs {
    host_libvirt: HashMap<HostId, Loc>,
}

struct Loader {
    sink: Sink,
    mode: Mode,
    scope: Scope,
    landscape: Landscape,
    locs: Locs,
    instances: usize,
    /// Every declared name.
    declared: HashSet<Key>,
    vm_locs: HashMap<String, VmLocs>,
    link_locs: HashMap<String, LinkLocs>,
    /// Names something else refers to: only those need their value built.
    referenced: HashSet<Key>,
}

impl Loader {
    fn run(&mut self, blocks: &[RawBlock], inputs: &VarInputs) {
        // Declarations, with duplicate names reported.
        let mut decls: IndexMap<Key, Loc> = IndexMap::new();
        let mut nodes: Vec<Node> = Vec::new();
        let mut vars: IndexMap<String, VarDecl> = IndexMap::new();
        let mut policy: Option<&RawBlock> = None;
        for b in blocks {
            let ns = match b.kind {
                "variable" => Ns::Var,
                "environment" => Ns::Environment,
                "subnet" => Ns::Subnet,
                "vm" => Ns::Vm,
                "secure_link" => Ns::Link,
                "policy" => {
                    if let Some(first) = policy {
                        let at = self.sink.position(&first.head);
                        self.sink.error(
                            Code::DuplicateName,
                            &b.head,
                            "more than one `policy` block",
                            "second policy",
                            format!("a configuration has at most one policy; the first is at {at}"),
                        );
                    } else {
                        policy = Some(b);
                    }
                    continue;
                }
                "locals" => {
                    for a in &b.attrs {
                        if !syntax::is_name(&a.name) {
                            continue;
                        }
                        let key = (Ns::Local, a.name.clone());
                        if self.declare(&mut decls, &key, &a.key, "local value") {
                            nodes.push(Node {
                                key,
                                body: NodeBody::Local(a),
                                loc: a.key.clone(),
                            });
                        }
                    }
                    continue;
                }
                _ => continue,
            };
            let key = (ns, b.name().to_string());
            if !self.declare(&mut decls, &key, b.name_loc(), b.kind) {
                continue;
            }
            if ns == Ns::Var {
                if let Some(decl) = self.declare_variable(b) {
                    vars.insert(b.name().to_string(), decl);
                }
                nodes.push(Node {
                    key,
                    body: NodeBody::Var,
                    loc: b.name_loc().clone(),
                });
            } else {
                nodes.push(Node {
                    key,
                    body: NodeBody::Block(b),
                    loc: b.name_loc().clone(),
                });
            }
        }
        if let Some(p) = policy {
            nodes.push(Node {
                key: (Ns::Policy, String::new()),
                body: NodeBody::Block(p),
                loc: p.head.clone(),
            });
        }

        self.declared = decls.keys().cloned().collect();
        self.assign_variables(&vars, inputs);

        // The reference graph: an edge from each node to what it refers to.
        let index: HashMap<Key, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.key.clone(), i))
            .collect();
        let mut graph: DiGraph<usize, Loc> = DiGraph::with_capacity(nodes.len(), nodes.len());
        for i in 0..nodes.len() {
            graph.add_node(i);
        }
        for (i, n) in nodes.iter().enumerate() {
            for r in self.node_refs(n) {
                let Some(ns) = Ns::from_root(&r.root) else {
                    continue;
                };
                let Some(name) = r.path.first() else { continue };
                let key = (ns, name.clone());
                if key == n.key && ns == Ns::Var {
                    continue; // a variable's validation refers to itself
                }
                if let Some(&j) = index.get(&key) {
                    graph.add_edge(NodeIndex::new(i), NodeIndex::new(j), r.loc.clone());
                    self.referenced.insert(key);
                }
            }
        }
        // Strongly connected components come dependencies first.
        let sccs = petgraph::algo::tarjan_scc(&graph);
        let mut order = Vec::with_capacity(nodes.len());
        for scc in sccs {
            let cyclic = scc.len() > 1 || graph.contains_edge(scc[0], scc[0]);
            if cyclic {
                self.report_cycle(&nodes, &graph, &scc);
                for ix in &scc {
                    self.scope.unknown.insert(nodes[graph[*ix]].key.clone());
                }
            } else {
                order.push(graph[scc[0]]);
            }
        }
        for i in order {
            let node = &nodes[i];
            match node.body {
                NodeBody::Var => {}
                NodeBody::Local(a) => self.eval_local(node, a, &vars),
                NodeBody::Block(b) => match node.key.0 {
                    Ns::Environment => self.eval_environment(node, b, &vars),
                    Ns::Subnet => self.eval_subnet(node, b, &vars),
                    Ns::Vm => self.eval_vm(node, b, &vars),
                    Ns::Link => self.eval_link(node, b, &vars),
                    Ns::Policy => self.eval_policy(node, b, &vars),
                    Ns::Var | Ns::Local => {}
                },
            }
        }
        self.check_landscape();
    }

    /// Records a declaration; reports a duplicate and returns false if the name is taken.
    fn declare(
        &mut self,
        decls: &mut IndexMap<Key, Loc>,
        key: &Key,
        loc: &Loc,
        what: &str,
    ) -> bool {
        if let Some(first) = decls.get(key) {
            let at = self.sink.position(first);
            self.sink.error(
                Code::DuplicateName,
                loc,
                format!("{what} `{}` is declared twice", key.1),
                "declared again here",
                format!("the first declaration is at {at}; names must be unique"),
            );
            return false;
        }
        decls.insert(key.clone(), loc.clone());
        true
    }

    fn report_cycle(&mut self, nodes: &[Node], graph: &DiGraph<usize, Loc>, scc: &[NodeIndex]) {
        let members: HashSet<NodeIndex> = scc.iter().copied().collect();
        // Walk the cycle from its first member, following edges inside the component.
        let start = scc
            .iter()
            .copied()
            .min_by_key(|ix| (nodes[graph[*ix]].loc.file, nodes[graph[*ix]].loc.span.start))
            .unwrap_or(scc[0]);
        let mut path = vec![start];
        let mut first_edge: Option<Loc> = None;
        let mut cur = start;
        for _ in 0..scc.len() {
            let next = graph
                .edges(cur)
                .filter(|e| members.contains(&petgraph::visit::EdgeRef::target(e)))
                .min_by_key(petgraph::visit::EdgeRef::target);
            let Some(e) = next else { break };
            if first_edge.is_none() {
                first_edge = Some(petgraph::visit::EdgeRef::weight(&e).clone());
            }
            cur = petgraph::visit::EdgeRef::target(&e);
            path.push(cur);
            if cur == start {
                break;
            }
        }
        let names: Vec<String> = path
            .iter()
            .map(|ix| {
                let k = &nodes[graph[*ix]].key;
                format!("{}.{}", k.0.root(), k.1)
            })
            .collect();
        let loc = first_edge.unwrap_or_else(|| nodes[graph[start]].loc.clone());
        self.sink.error(
            Code::ReferenceCycle,
            &loc,
            format!("reference cycle: {}", names.join(" -> ")),
            "this reference closes the cycle",
            "break the cycle: one of these values must not depend on the others",
        );
    }

    /// Every reference a node's expressions make.
    fn node_refs<'n>(&self, n: &Node<'n>) -> Vec<&'n Ref> {
        let mut refs = Vec::new();
        match n.body {
            NodeBody::Var => {}
            NodeBody::Local(a) => refs.extend(&a.refs.refs),
            NodeBody::Block(b) => collect_block(&mut refs, b),
        }
        refs
    }

    // ---- variables -------------------------------------------------------------------------

    fn declare_variable<'a>(&mut self, b: &'a RawBlock) -> Option<VarDecl<'a>> {
        let mut ok = true;
        let ty = match b.attr("type") {
            None => VarType::Any,
            Some(a) => match VarType::parse(&a.expr) {
                Ok(t) => t,
                Err(msg) => {
                    self.sink.error(
                        Code::WrongType,
                        &a.value,
                        format!("invalid type: {msg}"),
                        "not a type",
                        "write e.g. `type = string` or `type = map(string)`",
                    );
                    ok = false;
                    VarType::Any
                }
            },
        };
        let sensitive = match b.attr("sensitive") {
            None => false,
            Some(a) => match self.eval_const(a) {
                Some(Value::Bool(s)) => s,
                Some(v) => {
                    self.sink.error(
                        Code::WrongType,
                        &a.value,
                        format!("`sensitive` must be a bool, found a {}", type_name(&v)),
                        "not a bool",
                        "write `sensitive = true`",
                    );
                    true
                }
                None => true,
            },
        };
        if let Some(a) = b.attr("description") {
            if let Some(v) = self.eval_const(a) {
                if !v.is_string() {
                    self.sink.error(
                        Code::WrongType,
                        &a.value,
                        format!("`description` must be a string, found a {}", type_name(&v)),
                        "not a string",
                        "",
                    );
                }
            }
        }
        if let Some(a) = b.attr("nullable") {
            if let Some(v) = self.eval_const(a) {
                if !matches!(v, Value::Bool(_)) {
                    self.sink.error(
                        Code::WrongType,
                        &a.value,
                        format!("`nullable` must be a bool, found a {}", type_name(&v)),
                        "not a bool",
                        "",
                    );
                }
            }
        }
        ok.then_some(VarDecl {
            block: b,
            ty,
            sensitive,
        })
    }

    /// Evaluates an attribute that may not refer to anything (variable settings, var files).
    fn eval_const(&mut self, a: &RawAttr) -> Option<Value> {
        if let Some(r) = a.refs.refs.first() {
            self.sink.error(
                Code::UnknownReference,
                &r.loc,
                format!("`{}` cannot refer to other values", a.name),
                "reference not allowed here",
                "use a literal value here",
            );
            return None;
        }
        match a.expr.evaluate(&base_context()) {
            Ok(v) => Some(v),
            Err(e) => {
                let code = match e.kind() {
                    hcl::eval::ErrorKind::UndefinedFunc(_) => Code::UnknownReference,
                    _ => Code::Evaluation,
                };
                self.sink.error(
                    code,
                    &a.value,
                    describe_error(e.kind()),
                    "cannot evaluate",
                    "",
                );
                None
            }
        }
    }

    /// Gives each declared variable its value: command line over var files over environment
    /// over default. Reports undeclared inputs, type errors, failed validations and (at plan
    /// time) missing values.
    fn assign_variables(&mut self, vars: &IndexMap<String, VarDecl>, inputs: &VarInputs) {
        let mut given: HashMap<String, (Value, String)> = HashMap::new();
        for (name, raw) in &inputs.env {
            let Some(decl) = vars.get(name) else { continue };
            let origin = format!("the environment variable SMIG_VAR_{name}");
            if let Some(v) = self.parse_raw_input(name, raw, decl, &origin) {
                given.insert(name.clone(), (v, origin));
            }
        }
        for file in &inputs.files {
            let idx = self.sink.files.len();
            // Variables files hold secrets: a syntax error names the place but shows no text.
            self.sink.files.push(SharedSource {
                name: Arc::from(file.name.as_str()),
                text: Arc::from(mask(
                    &file.text,
                    std::slice::from_ref(&(0..file.text.len())),
                )),
            });
            let Some(body) = syntax::parse_file(idx, &file.text, &mut self.sink) else {
                continue;
            };
            // Show the file with the values of sensitive variables masked.
            let spans: Vec<std::ops::Range<usize>> = body
                .attributes()
                .filter(|a| vars.get(a.key.as_str()).is_none_or(|d| d.sensitive))
                .filter_map(|a| hcl_edit::Span::span(&a.value))
                .collect();
            self.sink.files[idx].text = Arc::from(mask(&file.text, &spans));
            for s in body.iter() {
                use hcl_edit::Span;
                match s {
                    hcl_edit::structure::Structure::Block(b) => {
                        let loc = Loc {
                            file: idx,
                            span: b.ident.span().unwrap_or(0..0),
                        };
                        self.sink.error(
                            Code::UnknownBlock,
                            &loc,
                            "a variables file holds only `name = value` attributes",
                            "block not allowed",
                            "",
                        );
                    }
                    hcl_edit::structure::Structure::Attribute(attr) => {
                        let raw = RawAttr::new(
                            Origin::file(idx),
                            attr.key.as_str(),
                            attr.key.span(),
                            attr.value.clone(),
                        );
                        let Some(decl) = vars.get(&raw.name) else {
                            let known: Vec<&str> = vars.keys().map(String::as_str).collect();
                            let help = syntax::suggestion(&raw.name, &known, "variables");
                            self.sink.error(
                                Code::UndeclaredVariable,
                                &raw.key,
                                format!("variable `{}` is not declared", raw.name),
                                "no such variable",
                                help,
                            );
                            continue;
                        };
                        let Some(v) = self.eval_const(&raw) else {
                            continue;
                        };
                        match decl.ty.convert(v) {
                            Ok(v) => {
                                given.insert(
                                    raw.name.clone(),
                                    (v, format!("the variables file {}", file.name)),
                                );
                            }
                            Err(msg) => self.sink.error(
                                Code::WrongType,
                                &raw.value,
                                format!("wrong type for variable `{}`: {msg}", raw.name),
                                format!("not a {}", decl.ty.describe()),
                                "",
                            ),
                        }
                    }
                }
            }
        }
        for (name, raw) in &inputs.cli {
            let Some(decl) = vars.get(name) else {
                let known: Vec<&str> = vars.keys().map(String::as_str).collect();
                let help = syntax::suggestion(name, &known, "variables");
                self.sink.error_plain(
                    Code::UndeclaredVariable,
                    format!("--var {name}: variable `{name}` is not declared"),
                    help,
                );
                continue;
            };
            let origin = format!("--var {name}=...");
            if let Some(v) = self.parse_raw_input(name, raw, decl, &origin) {
                given.insert(name.clone(), (v, origin));
            }
        }

        for (name, decl) in vars {
            let key = (Ns::Var, name.clone());
            if decl.sensitive {
                self.scope.sensitive.insert(key.clone());
            }
            let value = match given.remove(name) {
                Some((v, origin)) => Some((v, origin)),
                None => match decl.block.attr("default") {
                    Some(a) => self.eval_const(a).and_then(|v| match decl.ty.convert(v) {
                        Ok(v) => Some((v, "the variable's default".to_string())),
                        Err(msg) => {
                            self.sink.error(
                                Code::WrongType,
                                &a.value,
                                format!("the default of `{name}` has the wrong type: {msg}"),
                                format!("not a {}", decl.ty.describe()),
                                "",
                            );
                            None
                        }
                    }),
                    None => {
                        if self.mode == Mode::Plan {
                            self.sink.error(
                                Code::MissingVariable,
                                decl.block.name_loc(),
                                format!("variable `{name}` has no value"),
                                "declared without a default",
                                format!("give it a value with --var {name}=..., a --var-file, or the environment variable SMIG_VAR_{name}"),
                            );
                        }
                        None
                    }
                },
            };
            match value {
                Some((v, origin)) if self.validate_variable(name, decl, &v, &origin) => {
                    self.scope.set(key, v);
                }
                Some(_) => {
                    self.scope.unknown.insert(key);
                }
                None => {
                    self.scope.unknown.insert(key);
                }
            }
        }
    }

    fn parse_raw_input(
        &mut self,
        name: &str,
        raw: &str,
        decl: &VarDecl,
        origin: &str,
    ) -> Option<Value> {
        let value = if decl.ty.takes_raw_string() {
            Value::String(raw.to_string())
        } else {
            let parsed = if super::depth::too_deep_at(raw).is_some() {
                None
            } else {
                hcl_edit::parser::parse_expr(raw).ok()
            };
            let evaluated = parsed.and_then(|e| {
                let mut refs = Refs::default();
                refs.collect(Origin::file(0), &e);
                if !refs.refs.is_empty() {
                    return None;
                }
                let e: hcl::Expression = e.into();
                e.evaluate(&base_context()).ok()
            });
            match evaluated {
                Some(v) => v,
                // A bare word for a number or bool is converted (or refused) below.
                None => Value::String(raw.to_string()),
            }
        };
        match decl.ty.convert(value) {
            Ok(v) => Some(v),
            Err(msg) => {
                self.sink.error_plain(
                    Code::WrongType,
                    format!(
                        "the value of variable `{name}` from {origin} is not a {}: {msg}",
                        decl.ty.describe()
                    ),
                    format!("give a value of type {}", decl.ty.describe()),
                );
                None
            }
        }
    }

    fn validate_variable(
        &mut self,
        name: &str,
        decl: &VarDecl,
        value: &Value,
        origin: &str,
    ) -> bool {
        let mut ok = true;
        for v in decl.block.blocks("validation") {
            let (Some(cond), Some(msg)) = (v.attr("condition"), v.attr("error_message")) else {
                self.sink.error(
                    Code::MissingAttribute,
                    &v.head,
                    "a validation needs `condition` and `error_message`",
                    "incomplete validation",
                    "",
                );
                ok = false;
                continue;
            };
            if let Some(r) =
                cond.refs.refs.iter().chain(&msg.refs.refs).find(|r| {
                    !(r.root == "var" && r.path.first().map(String::as_str) == Some(name))
                })
            {
                self.sink.error(
                    Code::UnknownReference,
                    &r.loc,
                    format!("a validation of `{name}` may refer only to `var.{name}`"),
                    "not allowed here",
                    "",
                );
                ok = false;
                continue;
            }
            let mut ctx = base_context();
            let mut obj = Map::new();
            obj.insert(name.to_string(), value.clone());
            ctx.declare_var("var", Value::Object(obj));
            match cond.expr.evaluate(&ctx) {
                Ok(Value::Bool(true)) => {}
                Ok(Value::Bool(false)) => {
                    let mut shown = Map::new();
                    shown.insert(
                        name.to_string(),
                        if decl.sensitive {
                            Value::from(crate::model::secret::REDACTED)
                        } else {
                            value.clone()
                        },
                    );
                    let mut mctx = base_context();
                    mctx.declare_var("var", Value::Object(shown));
                    let text = match msg.expr.evaluate(&mctx) {
                        Ok(Value::String(s)) => s,
                        _ => format!("invalid value for variable `{name}`"),
                    };
                    let text = if decl.sensitive {
                        match value.as_str() {
                            Some(secret) if !secret.is_empty() => {
                                text.replace(secret, crate::model::secret::REDACTED)
                            }
                            _ => text,
                        }
                    } else {
                        text
                    };
                    self.sink.error(
                        Code::Validation,
                        &cond.value,
                        text,
                        "this condition is false",
                        format!("the value comes from {origin}"),
                    );
                    ok = false;
                }
                Ok(other) => {
                    self.sink.error(
                        Code::WrongType,
                        &cond.value,
                        format!(
                            "a validation condition must be a bool, found a {}",
                            type_name(&other)
                        ),
                        "not a bool",
                        "",
                    );
                    ok = false;
                }
                Err(e) => {
                    let detail = if decl.sensitive {
                        "the condition cannot be evaluated".to_string()
                    } else {
                        describe_error(e.kind())
                    };
                    self.sink
                        .error(Code::Evaluation, &cond.value, detail, "cannot evaluate", "");
                    ok = false;
                }
            }
        }
        ok
    }

    // ---- evaluation ------------------------------------------------------------------------

    /// Checks a node's references and prepares its attributes.
    fn prepare<'a>(
        &mut self,
        node: &Node,
        a: &'a RawAttr,
        count: bool,
        each: bool,
        vars: &IndexMap<String, VarDecl>,
    ) -> Prepared<'a> {
        let refs = &a.refs;
        let mut unknown = false;
        let mut sensitive = false;
        let in_link = node.key.0 == Ns::Link;
        for r in &refs.refs {
            if !self.check_ref(r, count, each, in_link, &a.name, vars) {
                unknown = true;
                continue;
            }
            if let (Some(ns), Some(name)) = (Ns::from_root(&r.root), r.path.first()) {
                let key = (ns, name.clone());
                if self.scope.unknown.contains(&key) {
                    unknown = true;
                }
                if self.scope.sensitive.contains(&key) {
                    sensitive = true;
                }
            }
        }
        for (f, loc) in &refs.funcs {
            if base_context_has(f) {
                continue;
            }
            self.sink.error(
                Code::UnknownReference,
                loc,
                format!("unknown function `{f}`"),
                "no such function",
                format!("available functions: {}", FUNCTIONS.join(", ")),
            );
            unknown = true;
        }
        Prepared {
            raw: a,
            unknown,
            sensitive,
        }
    }

    /// Reports an invalid reference; returns whether it is valid.
    fn check_ref(
        &mut self,
        r: &Ref,
        count: bool,
        each: bool,
        in_link: bool,
        attr: &str,
        vars: &IndexMap<String, VarDecl>,
    ) -> bool {
        let first = r.path.first().map(String::as_str);
        match r.root.as_str() {
            "count" => {
                if !count || attr == "count" {
                    self.sink.error(
                        Code::UnknownReference,
                        &r.loc,
                        "`count.index` is only available in a block with `count`",
                        "no count here",
                        "add `count = N` to the block, or remove the reference",
                    );
                    return false;
                }
                if first != Some("index") {
                    self.sink.error(
                        Code::UnknownReference,
                        &r.loc,
                        "`count` has only the attribute `index`",
                        "write `count.index`",
                        "",
                    );
                    return false;
                }
                true
            }
            "each" => {
                if !each || attr == "for_each" {
                    self.sink.error(
                        Code::UnknownReference,
                        &r.loc,
                        "`each` is only available in a block with `for_each`",
                        "no for_each here",
                        "add `for_each = ...` to the block, or remove the reference",
                    );
                    return false;
                }
                if !matches!(first, Some("key" | "value")) {
                    self.sink.error(
                        Code::UnknownReference,
                        &r.loc,
                        "`each` has only the attributes `key` and `value`",
                        "write `each.key` or `each.value`",
                        "",
                    );
                    return false;
                }
                true
            }
            root => {
                let Some(ns) = Ns::from_root(root) else {
                    self.sink.error(
                        Code::UnknownReference,
                        &r.loc,
                        format!("unknown name `{root}`"),
                        "not defined",
                        "references start with var., local., environment., subnet., vm. or secure_link.",
                    );
                    return false;
                };
                let Some(name) = first else {
                    self.sink.error(
                        Code::UnknownReference,
                        &r.loc,
                        format!("`{root}` must be followed by a name, like `{root}.NAME`"),
                        "incomplete reference",
                        "",
                    );
                    return false;
                };
                let key = (ns, name.to_string());
                let exists = match ns {
                    Ns::Var => {
                        vars.contains_key(name)
                            || self.scope.unknown.contains(&key)
                            || self.scope.get(&key).is_some()
                    }
                    _ => self.declared(&key),
                };
                if !exists {
                    let (code, what) = match ns {
                        Ns::Vm if in_link => (Code::MissingVm, "no such VM"),
                        Ns::Var => (Code::UnknownReference, "no such variable"),
                        Ns::Local => (Code::UnknownReference, "no such local value"),
                        Ns::Environment => (Code::UnknownReference, "no such environment"),
                        Ns::Subnet => (Code::UnknownReference, "no such subnet"),
                        Ns::Vm => (Code::UnknownReference, "no such VM"),
                        Ns::Link | Ns::Policy => (Code::UnknownReference, "no such secure_link"),
                    };
                    let known = self.declared_names(ns);
                    let known: Vec<&str> = known.iter().map(String::as_str).collect();
                    let kind = match ns {
                        Ns::Var => "variable",
                        Ns::Local => "local value",
                        Ns::Environment => "environment",
                        Ns::Subnet => "subnet",
                        Ns::Vm => "vm",
                        _ => "secure_link",
                    };
                    self.sink.error(
                        code,
                        &r.loc,
                        format!("{kind} `{name}` is not declared"),
                        what,
                        syntax::suggestion(name, &known, &format!("{kind}s")),
                    );
                    return false;
                }
                if ns == Ns::Environment && !self.scope.unknown.contains(&key) {
                    return self.check_env_path(r);
                }
                if ns == Ns::Subnet {
                    if let Some(attr) = r.path.get(1) {
                        if !["name", "cidr"].contains(&attr.as_str()) {
                            self.sink.error(
                                Code::UnknownReference,
                                &r.loc,
                                format!("a subnet has no attribute `{attr}`"),
                                "no such attribute",
                                "a subnet has `name` and `cidr`",
                            );
                            return false;
                        }
                    }
                }
                true
            }
        }
    }

    fn check_env_path(&mut self, r: &Ref) -> bool {
        let env = &r.path[0];
        match r.path.get(1).map(String::as_str) {
            None | Some("name" | "trusted" | "routing_core") => true,
            Some("host") => {
                let Some(host) = r.path.get(2) else {
                    return true;
                };
                let exists = self
                    .landscape
                    .environments
                    .get(env)
                    .is_some_and(|e| e.hosts.contains_key(host));
                if !exists {
                    let known: Vec<String> = self
                        .landscape
                        .environments
                        .get(env)
                        .map(|e| e.hosts.keys().cloned().collect())
                        .unwrap_or_default();
                    let known: Vec<&str> = known.iter().map(String::as_str).collect();
                    self.sink.error(
                        Code::UnknownHost,
                        &r.loc,
                        format!("environment `{env}` has no host `{host}`"),
                        "no such host",
                        syntax::suggestion(host, &known, "hosts"),
                    );
                    return false;
                }
                true
            }
            Some(other) => {
                self.sink.error(
                    Code::UnknownReference,
                    &r.loc,
                    format!("an environment has no attribute `{other}`"),
                    "no such attribute",
                    "an environment has `name`, `trusted`, `host` and `routing_core`",
                );
                false
            }
        }
    }

    fn declared(&self, key: &Key) -> bool {
        self.declared.contains(key)
    }

    fn declared_names(&self, ns: Ns) -> Vec<String> {
        let mut v: Vec<String> = self
            .declared
            .iter()
            .filter(|k| k.0 == ns)
            .map(|k| k.1.clone())
            .collect();
        v.sort();
        v
    }
}

/// Replaces every character in `spans` by `*` (one per byte, newlines kept), so byte offsets
/// stay valid while the masked text never shows.
pub(crate) fn mask(text: &str, spans: &[std::ops::Range<usize>]) -> String {
    let mut spans: Vec<&std::ops::Range<usize>> = spans.iter().collect();
    spans.sort_by_key(|r| r.start);
    let mut next = spans.into_iter().peekable();
    let mut current: Option<&std::ops::Range<usize>> = None;
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        while current.is_none_or(|r| r.end <= i) && next.peek().is_some_and(|r| r.start <= i) {
            current = next.next();
        }
        if c != '\n' && current.is_some_and(|r| r.contains(&i)) {
            for _ in 0..c.len_utf8() {
                out.push('*');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The names of the functions the language offers.
pub const FUNCTIONS: &[&str] = &[
    "cidrhost",
    "cidrsubnet",
    "concat",
    "contains",
    "distinct",
    "element",
    "flatten",
    "format",
    "join",
    "keys",
    "length",
    "lookup",
    "lower",
    "max",
    "merge",
    "min",
    "range",
    "replace",
    "split",
    "tolist",
    "tonumber",
    "toset",
    "tostring",
    "upper",
    "values",
    "zipmap",
];

fn base_context_has(name: &str) -> bool {
    FUNCTIONS.contains(&name)
}

/// Collects the references of every attribute of a block and its nested blocks.
fn collect_block<'b>(refs: &mut Vec<&'b Ref>, b: &'b RawBlock) {
    for a in &b.attrs {
        refs.extend(&a.refs.refs);
    }
    for nb in &b.blocks {
        collect_block(refs, nb);
    }
}

/// How a `vm` or `secure_link` block expands into instances.
enum Expansion {
    Single,
    Count(u64),
    Each(Vec<(String, Value)>),
}

/// One instance of a block: its name, default domain name, and `count` / `each` values.
struct Instance {
    name: String,
    domain: String,
    count: Option<u64>,
    each: Option<(String, Value)>,
}

/// Where a VM's parts were written and whether they are known, for the landscape checks.
struct VmLocs {
    host: Option<Loc>,
    subnet: Option<Loc>,
    address: Option<(Loc, bool)>,
    domain: Loc,
}

struct LinkLocs {
    between: Option<Loc>,
}

impl Loader {
    /// A context holding the functions and the values a set of attributes refers to.
    fn context_for(&self, prepared: &[&Prepared]) -> Context<'static> {
        let mut ctx = super::eval::template_context();
        let mut funcs: Vec<&str> = Vec::new();
        let mut spaces: BTreeMap<Ns, Map<String, Value>> = BTreeMap::new();
        for p in prepared {
            for (f, _) in &p.raw.refs.funcs {
                if !funcs.contains(&f.as_str()) {
                    funcs.push(f);
                }
            }
            for r in p.raw.refs.refs.iter().filter(|r| r.in_template) {
                let (Some(ns), Some(name)) = (Ns::from_root(&r.root), r.path.first()) else {
                    continue;
                };
                let space = spaces.entry(ns).or_default();
                if space.contains_key(name) {
                    continue;
                }
                if let Some(v) = self.scope.values.get(&ns).and_then(|m| m.get(name)) {
                    space.insert(name.clone(), v.clone());
                }
            }
        }
        if !funcs.is_empty() {
            ctx = base_context();
        }
        for (ns, m) in spaces {
            ctx.declare_var(ns.root(), Value::Object(m));
        }
        ctx
    }

    /// Evaluates a prepared attribute; evaluation errors are reported at its value.
    fn eval(&mut self, p: &Prepared, ctx: &mut Context<'static>, in_link: bool) -> Ev {
        if p.unknown {
            return Ev::Unknown;
        }
        let values = &self.scope.values;
        let lookup = |root: &str, name: &str| {
            Ns::from_root(root)
                .and_then(|ns| values.get(&ns))
                .and_then(|m| m.get(name))
        };
        let result = match super::eval::resolve_simple(&p.raw.expr, &lookup) {
            Some(v) => Ok(v),
            None => {
                let mut binder = super::eval::Binder::new(ctx);
                super::eval::bind(&p.raw.expr, &lookup, &mut binder)
                    .and_then(|e| binder.evaluate(&e))
            }
        };
        match result {
            Ok(v) => Ev::Val(v),
            Err(e) => {
                let (code, loc) = match e.kind() {
                    hcl::eval::ErrorKind::UndefinedVar(v) => (
                        Code::UnknownReference,
                        p.raw
                            .refs
                            .refs
                            .iter()
                            .find(|r| r.root == v.as_str())
                            .map_or(&p.raw.value, |r| &r.loc),
                    ),
                    hcl::eval::ErrorKind::NoSuchKey(_) | hcl::eval::ErrorKind::Index(_)
                        if in_link && p.raw.refs.refs.iter().any(|r| r.root == "vm") =>
                    {
                        (Code::MissingVm, &p.raw.value)
                    }
                    _ => (Code::Evaluation, &p.raw.value),
                };
                let msg = if p.sensitive {
                    format!(
                        "`{}` cannot be evaluated (it involves a sensitive value)",
                        p.raw.name
                    )
                } else {
                    format!(
                        "`{}` cannot be evaluated: {}",
                        p.raw.name,
                        describe_error(e.kind())
                    )
                };
                let loc = loc.clone();
                self.sink.error(code, &loc, msg, "here", "");
                Ev::Unknown
            }
        }
    }

    fn wrong_type(&mut self, p: &Prepared, want: &str, v: &Value) {
        self.sink.error(
            Code::WrongType,
            &p.raw.value,
            format!("`{}` must be {want}, found a {}", p.raw.name, type_name(v)),
            format!("expected {want}"),
            "",
        );
    }

    fn invalid(&mut self, p: &Prepared, msg: impl Into<String>, help: impl Into<String>) {
        self.sink
            .error(Code::InvalidValue, &p.raw.value, msg, "invalid value", help);
    }

    fn want_string(&mut self, p: &Prepared, ev: Ev) -> Option<String> {
        match ev {
            Ev::Val(Value::String(s)) => Some(s),
            Ev::Val(v @ (Value::Number(_) | Value::Bool(_))) => super::eval::to_plain_string(&v),
            Ev::Val(v) => {
                self.wrong_type(p, "a string", &v);
                None
            }
            Ev::Unknown => None,
        }
    }

    fn want_bool(&mut self, p: &Prepared, ev: Ev) -> Option<bool> {
        match ev {
            Ev::Val(Value::Bool(b)) => Some(b),
            Ev::Val(Value::String(s)) if s == "true" || s == "false" => Some(s == "true"),
            Ev::Val(v) => {
                self.wrong_type(p, "a bool", &v);
                None
            }
            Ev::Unknown => None,
        }
    }

    fn want_u64(&mut self, p: &Prepared, ev: Ev, min: u64, max: u64) -> Option<u64> {
        let n = match ev {
            Ev::Val(Value::Number(n)) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1.8e19)
                    .map(|f| f as u64)
            }),
            Ev::Val(Value::String(s)) => match s.trim().parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    self.wrong_type(p, "a whole number", &Value::String(String::new()));
                    return None;
                }
            },
            Ev::Val(v) => {
                self.wrong_type(p, "a whole number", &v);
                return None;
            }
            Ev::Unknown => return None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.sink.error(
                    Code::InvalidValue,
                    &p.raw.value,
                    format!(
                        "`{}` must be a whole number from {min} to {max}",
                        p.raw.name
                    ),
                    "out of range",
                    "",
                );
                None
            }
        }
    }

    fn want_ipv4(&mut self, p: &Prepared, ev: Ev) -> Option<Ipv4Addr> {
        let s = self.want_string(p, ev)?;
        match s.parse::<Ipv4Addr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.invalid(
                    p,
                    format!("`{}` is not an IPv4 address", p.raw.name),
                    "write a dotted-quad address like \"192.168.10.11\"",
                );
                None
            }
        }
    }

    fn want_strings(&mut self, p: &Prepared, ev: Ev) -> Option<Vec<String>> {
        match ev {
            Ev::Val(Value::Array(a)) => {
                let mut out = Vec::with_capacity(a.len());
                for v in a {
                    match v {
                        Value::String(s) => out.push(s),
                        other => {
                            self.wrong_type(p, "a list of strings", &other);
                            return None;
                        }
                    }
                }
                Some(out)
            }
            Ev::Val(v) => {
                self.wrong_type(p, "a list of strings", &v);
                None
            }
            Ev::Unknown => None,
        }
    }

    fn missing(&mut self, b: &RawBlock, what: &str, help: &str) {
        let name = if b.name().is_empty() {
            String::new()
        } else {
            format!(" `{}`", b.name())
        };
        self.sink.error(
            Code::MissingAttribute,
            &b.head,
            format!("{}{name} needs `{what}`", b.kind),
            format!("`{what}` missing"),
            help.to_string(),
        );
    }

    /// Marks a node's value: known, or unknown when any of its attributes is.
    fn settle(&mut self, key: Key, value: Value, prepared: &[&Prepared]) {
        if prepared.iter().any(|p| p.sensitive) {
            self.scope.sensitive.insert(key.clone());
        }
        if prepared.iter().any(|p| p.unknown) {
            self.scope.unknown.insert(key);
        } else {
            self.scope.set(key, value);
        }
    }

    fn eval_local(&mut self, node: &Node, a: &RawAttr, vars: &IndexMap<String, VarDecl>) {
        let p = self.prepare(node, a, false, false, vars);
        let mut ctx = self.context_for(&[&p]);
        let ev = self.eval(&p, &mut ctx, false);
        match ev {
            Ev::Val(v) => self.settle(node.key.clone(), v, &[&p]),
            Ev::Unknown => {
                if p.sensitive {
                    self.scope.sensitive.insert(node.key.clone());
                }
                self.scope.unknown.insert(node.key.clone());
            }
        }
    }

    fn prepare_all<'a>(
        &mut self,
        node: &Node,
        b: &'a RawBlock,
        count: bool,
        each: bool,
        vars: &IndexMap<String, VarDecl>,
    ) -> HashMap<&'static str, Vec<Prepared<'a>>> {
        // Keyed by the nested block kind ("" for the block's own attributes); one entry per
        // attribute in source order, nested blocks of one kind concatenated.
        let mut out: HashMap<&'static str, Vec<Prepared<'a>>> = HashMap::new();
        for a in &b.attrs {
            let p = self.prepare(node, a, count, each, vars);
            out.entry("").or_default().push(p);
        }
        for nb in &b.blocks {
            for a in &nb.attrs {
                let p = self.prepare(node, a, count, each, vars);
                out.entry(nb.kind).or_default().push(p);
            }
        }
        out
    }

    fn eval_environment(&mut self, node: &Node, b: &RawBlock, vars: &IndexMap<String, VarDecl>) {
        let name = b.name().to_string();
        let mut all: Vec<Prepared> = Vec::new();
        for a in &b.attrs {
            all.push(self.prepare(node, a, false, false, vars));
        }
        let mut host_attrs: Vec<(&RawBlock, Vec<Prepared>)> = Vec::new();
        let mut seen_hosts: HashMap<String, Loc> = HashMap::new();
        for h in b.blocks("host") {
            if let Some(first) = seen_hosts.get(h.name()) {
                let at = self.sink.position(first);
                self.sink.error(
                    Code::DuplicateName,
                    h.name_loc(),
                    format!(
                        "host `{}` is declared twice in environment `{name}`",
                        h.name()
                    ),
                    "declared again here",
                    format!("the first declaration is at {at}"),
                );
                continue;
            }
            seen_hosts.insert(h.name().to_string(), h.name_loc().clone());
            let ps = h
                .attrs
                .iter()
                .map(|a| self.prepare(node, a, false, false, vars))
                .collect();
            host_attrs.push((h, ps));
        }
        let core = b.block("routing_core");
        let core_attrs: Vec<Prepared> = core
            .map(|c| {
                c.attrs
                    .iter()
                    .map(|a| self.prepare(node, a, false, false, vars))
                    .collect()
            })
            .unwrap_or_default();
        let refs: Vec<&Prepared> = all
            .iter()
            .chain(host_attrs.iter().flat_map(|(_, ps)| ps.iter()))
            .chain(core_attrs.iter())
            .collect();
        let mut ctx = self.context_for(&refs);

        let mut trusted = false;
        match all.iter().find(|p| p.raw.name == "trusted") {
            None => self.missing(
                b,
                "trusted",
                "say whether the environment is trusted: `trusted = true` or `trusted = false`",
            ),
            Some(p) => {
                let ev = self.eval(p, &mut ctx, false);
                trusted = self.want_bool(p, ev).unwrap_or(false);
            }
        }
        let mut hosts = BTreeMap::new();
        let mut host_values = Map::new();
        for (h, ps) in &host_attrs {
            let id = HostId::new(&name, h.name());
            let mut libvirt = None;
            let mut address = None;
            let mut network = None;
            for p in ps {
                let ev = self.eval(p, &mut ctx, false);
                match p.raw.name.as_str() {
                    "libvirt" => {
                        libvirt = self.want_string(p, ev);
                        if libvirt.is_some() {
                            self.locs
                                .host_libvirt
                                .insert(id.clone(), p.raw.value.clone());
                        }
                    }
                    "address" => address = self.want_ipv4(p, ev),
                    "network" => network = self.want_string(p, ev),
                    _ => {}
                }
            }
            for (attr, set, help) in [
                (
                    "libvirt",
                    h.attr("libvirt").is_some(),
                    "the libvirt URI, e.g. \"qemu+tls://10.77.0.11/system\"",
                ),
                (
                    "address",
                    h.attr("address").is_some(),
                    "the host's underlay address (IKE and tunnel endpoint)",
                ),
                (
                    "network",
                    h.attr("network").is_some(),
                    "where smig reaches the host's network stack, e.g. \"netns:dc-hv1\"",
                ),
            ] {
                if !set {
                    self.missing(h, attr, help);
                }
            }
            let host = Host {
                id: id.clone(),
                libvirt: libvirt.unwrap_or_default().into(),
                address: address.unwrap_or(Ipv4Addr::UNSPECIFIED),
                network: network.unwrap_or_default(),
            };
            let mut hv = Map::new();
            hv.insert("id".into(), Value::from(id.as_str()));
            hv.insert("name".into(), Value::from(h.name()));
            hv.insert("environment".into(), Value::from(name.clone()));
            hv.insert("libvirt".into(), Value::from(host.libvirt.as_str()));
            hv.insert("address".into(), Value::from(host.address.to_string()));
            hv.insert("network".into(), Value::from(host.network.clone()));
            host_values.insert(h.name().to_string(), Value::Object(hv));
            hosts.insert(h.name().to_string(), host);
        }
        let mut routing_core = None;
        let mut core_value = Value::Null;
        if let Some(c) = core {
            let mut network = None;
            for p in &core_attrs {
                let ev = self.eval(p, &mut ctx, false);
                network = self.want_string(p, ev);
            }
            if c.attr("network").is_none() {
                self.missing(
                    c,
                    "network",
                    "where smig reaches the routing core, e.g. \"netns:dc-core\"",
                );
            }
            let network = network.unwrap_or_default();
            let mut cv = Map::new();
            cv.insert("network".into(), Value::from(network.clone()));
            core_value = Value::Object(cv);
            routing_core = Some(RoutingCore { network });
        }
        let mut ev = Map::new();
        ev.insert("name".into(), Value::from(name.clone()));
        ev.insert("trusted".into(), Value::Bool(trusted));
        ev.insert("host".into(), Value::Object(host_values));
        ev.insert("routing_core".into(), core_value);
        self.landscape.environments.insert(
            name.clone(),
            Environment {
                name: name.as_str().into(),
                trusted,
                hosts,
                routing_core,
            },
        );
        self.settle(node.key.clone(), Value::Object(ev), &refs);
    }

    fn eval_subnet(&mut self, node: &Node, b: &RawBlock, vars: &IndexMap<String, VarDecl>) {
        let name = b.name().to_string();
        let ps: Vec<Prepared> = b
            .attrs
            .iter()
            .map(|a| self.prepare(node, a, false, false, vars))
            .collect();
        let refs: Vec<&Prepared> = ps.iter().collect();
        let mut ctx = self.context_for(&refs);
        let mut cidr: Option<Ipv4Net> = None;
        match ps.iter().find(|p| p.raw.name == "cidr") {
            None => self.missing(b, "cidr", "the subnet's prefix, e.g. \"192.168.10.0/24\""),
            Some(p) => {
                let ev = self.eval(p, &mut ctx, false);
                if let Some(s) = self.want_string(p, ev) {
                    match s.parse::<Ipv4Net>() {
                        Ok(net) if net.trunc() == net => cidr = Some(net),
                        Ok(net) => {
                            let help = if p.sensitive {
                                String::new()
                            } else {
                                format!("did you mean \"{}\"?", net.trunc())
                            };
                            self.invalid(p, "`cidr` has host bits set", help);
                        }
                        Err(_) => self.invalid(
                            p,
                            "`cidr` is not an IPv4 prefix",
                            "write a prefix like \"192.168.10.0/24\"",
                        ),
                    }
                }
            }
        }
        let net =
            cidr.unwrap_or_else(|| Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).unwrap_or_default());
        let mut v = Map::new();
        v.insert("name".into(), Value::from(name.clone()));
        v.insert("cidr".into(), Value::from(net.to_string()));
        if cidr.is_some() {
            self.landscape.subnets.insert(
                name.clone(),
                Subnet {
                    name: name.as_str().into(),
                    cidr: net,
                },
            );
        }
        self.settle(node.key.clone(), Value::Object(v), &refs);
        if cidr.is_none() {
            self.scope.unknown.insert(node.key.clone());
        }
    }

    /// Evaluates `count` or `for_each`. `None` when unknown or invalid.
    fn expansion(
        &mut self,
        b: &RawBlock,
        ps: &[Prepared],
        ctx: &mut Context<'static>,
        in_link: bool,
    ) -> Option<Expansion> {
        let count = ps.iter().find(|p| p.raw.name == "count");
        let each = ps.iter().find(|p| p.raw.name == "for_each");
        match (count, each) {
            (None, None) => Some(Expansion::Single),
            (Some(c), Some(_)) => {
                self.sink.error(
                    Code::Expansion,
                    &c.raw.key,
                    format!("`{}` sets both `count` and `for_each`", b.name()),
                    "count here",
                    "use one of them",
                );
                None
            }
            (Some(c), None) => {
                let ev = self.eval(c, ctx, in_link);
                let n = self.want_count(c, ev)?;
                Some(Expansion::Count(n))
            }
            (None, Some(e)) => match self.eval(e, ctx, in_link) {
                Ev::Unknown => None,
                Ev::Val(Value::Object(o)) => {
                    if o.len() as u64 > MAX_INSTANCES_PER_BLOCK {
                        self.sink.error(
                            Code::Expansion,
                            &e.raw.value,
                            format!("`for_each` has more than {MAX_INSTANCES_PER_BLOCK} elements"),
                            "too many instances",
                            "",
                        );
                        return None;
                    }
                    Some(Expansion::Each(o.into_iter().collect()))
                }
                Ev::Val(Value::Array(a)) => {
                    if a.len() as u64 > MAX_INSTANCES_PER_BLOCK {
                        self.sink.error(
                            Code::Expansion,
                            &e.raw.value,
                            format!("`for_each` has more than {MAX_INSTANCES_PER_BLOCK} elements"),
                            "too many instances",
                            "",
                        );
                        return None;
                    }
                    let mut out = Vec::with_capacity(a.len());
                    let mut seen = HashSet::new();
                    for v in a {
                        match v {
                            Value::String(s) => {
                                if seen.insert(s.clone()) {
                                    out.push((s.clone(), Value::String(s)));
                                }
                            }
                            other => {
                                self.sink.error(
                                    Code::Expansion,
                                    &e.raw.value,
                                    format!(
                                        "`for_each` over a list needs strings, found a {}",
                                        type_name(&other)
                                    ),
                                    "not a set of strings",
                                    "use a map, or a list of strings",
                                );
                                return None;
                            }
                        }
                    }
                    Some(Expansion::Each(out))
                }
                Ev::Val(v) => {
                    self.sink.error(
                        Code::Expansion,
                        &e.raw.value,
                        format!(
                            "`for_each` must be a map or a set of strings, found a {}",
                            type_name(&v)
                        ),
                        "not a map or set",
                        "",
                    );
                    None
                }
            },
        }
    }

    fn want_count(&mut self, p: &Prepared, ev: Ev) -> Option<u64> {
        let n = match ev {
            Ev::Unknown => return None,
            Ev::Val(Value::Number(n)) => n.as_f64(),
            Ev::Val(v) => {
                self.sink.error(
                    Code::Expansion,
                    &p.raw.value,
                    format!("`count` must be a whole number, found a {}", type_name(&v)),
                    "not a number",
                    "",
                );
                return None;
            }
        };
        match n {
            Some(f) if f.fract() == 0.0 && f >= 0.0 && f <= MAX_INSTANCES_PER_BLOCK as f64 => {
                Some(f as u64)
            }
            _ => {
                self.sink.error(
                    Code::Expansion,
                    &p.raw.value,
                    format!("`count` must be a whole number from 0 to {MAX_INSTANCES_PER_BLOCK}"),
                    "out of range",
                    "",
                );
                None
            }
        }
    }

    fn instances(&mut self, b: &RawBlock, exp: &Expansion) -> Option<Vec<Instance>> {
        let name = b.name();
        let n = match exp {
            Expansion::Single => 1,
            Expansion::Count(n) => *n as usize,
            Expansion::Each(e) => e.len(),
        };
        if self.instances + n > MAX_INSTANCES_TOTAL {
            self.sink.error(
                Code::Expansion,
                &b.head,
                format!("the configuration expands to more than {MAX_INSTANCES_TOTAL} instances"),
                "too many",
                "",
            );
            return None;
        }
        self.instances += n;
        Some(match exp {
            Expansion::Single => vec![Instance {
                name: name.to_string(),
                domain: name.to_string(),
                count: None,
                each: None,
            }],
            Expansion::Count(n) => (0..*n)
                .map(|i| Instance {
                    name: format!("{name}[{i}]"),
                    domain: format!("{name}-{i}"),
                    count: Some(i),
                    each: None,
                })
                .collect(),
            Expansion::Each(entries) => entries
                .iter()
                .map(|(k, v)| Instance {
                    name: format!("{name}[{}]", serde_json::to_string(k).unwrap_or_default()),
                    domain: format!("{name}-{k}"),
                    count: None,
                    each: Some((k.clone(), v.clone())),
                })
                .collect(),
        })
    }

    fn set_instance(ctx: &mut Context, inst: &Instance) {
        if let Some(i) = inst.count {
            let mut m = Map::new();
            m.insert("index".into(), Value::from(i));
            ctx.declare_var("count", Value::Object(m));
        }
        if let Some((k, v)) = &inst.each {
            let mut m = Map::new();
            m.insert("key".into(), Value::from(k.clone()));
            m.insert("value".into(), v.clone());
            ctx.declare_var("each", Value::Object(m));
        }
    }

    /// Collects the instance values of a block into the value its name refers to.
    fn collect_values(exp: &Expansion, values: Vec<Value>, instances: &[Instance]) -> Value {
        match exp {
            Expansion::Single => values.into_iter().next().unwrap_or(Value::Null),
            Expansion::Count(_) => Value::Array(values),
            Expansion::Each(_) => Value::Object(
                instances
                    .iter()
                    .zip(values)
                    .filter_map(|(i, v)| i.each.as_ref().map(|(k, _)| (k.clone(), v)))
                    .collect(),
            ),
        }
    }

    fn eval_vm(&mut self, node: &Node, b: &RawBlock, vars: &IndexMap<String, VarDecl>) {
        let has_count = b.attr("count").is_some();
        let has_each = b.attr("for_each").is_some();
        let mut groups = self.prepare_all(node, b, has_count, has_each, vars);
        let own = groups.remove("").unwrap_or_default();
        let migration = groups.remove("migration").unwrap_or_default();
        let refs: Vec<&Prepared> = own.iter().chain(migration.iter()).collect();
        let mut ctx = self.context_for(&refs);
        for (attr, help) in [
            (
                "host",
                "the host the VM should run on, e.g. `host = environment.dc.host.hv1`",
            ),
            ("subnet", "the VM's subnet, e.g. `subnet = subnet.app`"),
            ("address", "the VM's address in its subnet"),
        ] {
            if b.attr(attr).is_none() {
                self.missing(b, attr, help);
            }
        }
        let Some(exp) = self.expansion(b, &own, &mut ctx, false) else {
            self.scope.unknown.insert(node.key.clone());
            return;
        };
        let Some(instances) = self.instances(b, &exp) else {
            self.scope.unknown.insert(node.key.clone());
            return;
        };
        let find = |ps: &[Prepared], n: &str| ps.iter().position(|p| p.raw.name == n);
        let (i_host, i_subnet, i_address, i_domain) = (
            find(&own, "host"),
            find(&own, "subnet"),
            find(&own, "address"),
            find(&own, "domain"),
        );
        let mut values = Vec::with_capacity(instances.len());
        for inst in &instances {
            Self::set_instance(&mut ctx, inst);
            let mut host = None;
            let mut subnet = None;
            let mut address = None;
            let mut domain = inst.domain.clone();
            let mut locs = VmLocs {
                host: None,
                subnet: None,
                address: None,
                domain: b.name_loc().clone(),
            };
            if let Some(i) = i_host {
                let p = &own[i];
                let ev = self.eval(p, &mut ctx, false);
                host = self.want_host(p, ev);
                if host.is_some() {
                    locs.host = Some(p.raw.value.clone());
                }
            }
            if let Some(i) = i_subnet {
                let p = &own[i];
                let ev = self.eval(p, &mut ctx, false);
                subnet = self.want_named(p, ev, "a subnet reference like `subnet.app`");
                if subnet.is_some() {
                    locs.subnet = Some(p.raw.value.clone());
                }
            }
            if let Some(i) = i_address {
                let p = &own[i];
                let ev = self.eval(p, &mut ctx, false);
                address = self.want_ipv4(p, ev);
                if address.is_some() {
                    locs.address = Some((p.raw.value.clone(), p.sensitive));
                }
            }
            if let Some(i) = i_domain {
                let p = &own[i];
                let ev = self.eval(p, &mut ctx, false);
                if let Some(d) = self.want_string(p, ev) {
                    if d.is_empty() {
                        self.invalid(p, "`domain` must not be empty", "");
                    }
                    domain = d;
                    locs.domain = p.raw.value.clone();
                }
            }
            let mut mig = Migration::default();
            for p in &migration {
                let ev = self.eval(p, &mut ctx, false);
                match p.raw.name.as_str() {
                    "mode" => match self.want_string(p, ev).as_deref() {
                        None => {}
                        Some("live") => mig.mode = MigrationMode::Live,
                        Some("cold") => mig.mode = MigrationMode::Cold,
                        Some(_) => self.invalid(p, "`mode` must be \"live\" or \"cold\"", ""),
                    },
                    "strategy" => match self.want_string(p, ev).as_deref() {
                        None => {}
                        Some("block-first") => mig.strategy = Strategy::BlockFirst,
                        Some("prestaged") => mig.strategy = Strategy::Prestaged,
                        Some(_) => self.invalid(
                            p,
                            "`strategy` must be \"block-first\" or \"prestaged\"",
                            "",
                        ),
                    },
                    "max_downtime_ms" => mig.max_downtime_ms = self.want_u64(p, ev, 1, 3_600_000),
                    "bandwidth_mibps" => mig.bandwidth_mibps = self.want_u64(p, ev, 1, 1_000_000),
                    _ => {}
                }
            }
            let host = host.unwrap_or_else(|| HostId(Name::default()));
            let subnet = subnet.unwrap_or_default();
            let address = address.unwrap_or(Ipv4Addr::UNSPECIFIED);
            if self.referenced.contains(&node.key) {
                let mut v = Map::new();
                v.insert("id".into(), Value::from(inst.name.clone()));
                v.insert("name".into(), Value::from(inst.name.clone()));
                v.insert("domain".into(), Value::from(domain.clone()));
                v.insert("host".into(), Value::from(host.as_str()));
                v.insert("subnet".into(), Value::from(subnet.clone()));
                v.insert("address".into(), Value::from(address.to_string()));
                values.push(Value::Object(v));
            }
            self.vm_locs.insert(inst.name.clone(), locs);
            self.landscape.vms.insert(
                inst.name.clone(),
                Vm {
                    name: inst.name.as_str().into(),
                    domain: domain.into(),
                    host,
                    subnet: subnet.into(),
                    address,
                    migration: mig,
                },
            );
        }
        let value = Self::collect_values(&exp, values, &instances);
        self.settle(node.key.clone(), value, &refs);
    }

    /// A host from a host reference (an object with `id`) or an id string `env.host`.
    fn want_host(&mut self, p: &Prepared, ev: Ev) -> Option<HostId> {
        let v = match ev {
            Ev::Val(v) => v,
            Ev::Unknown => return None,
        };
        let id = match &v {
            Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_string),
            Value::String(s) => Some(s.clone()),
            _ => None,
        };
        match id {
            Some(id) if id.contains('.') => Some(HostId(id.into())),
            Some(_) => {
                self.invalid(
                    p,
                    "`host` must name a host as `environment.ENV.host.NAME` (or \"ENV.NAME\")",
                    "",
                );
                None
            }
            None => {
                self.wrong_type(p, "a host reference like `environment.dc.host.hv1`", &v);
                None
            }
        }
    }

    /// A name from a reference (an object with `name`) or a name string.
    fn want_named(&mut self, p: &Prepared, ev: Ev, want: &str) -> Option<String> {
        let v = match ev {
            Ev::Val(v) => v,
            Ev::Unknown => return None,
        };
        let name = match &v {
            Value::Object(o) => o.get("name").and_then(Value::as_str).map(str::to_string),
            Value::String(s) => Some(s.clone()),
            _ => None,
        };
        if name.is_none() {
            self.wrong_type(p, want, &v);
        }
        name
    }

    /// VM names from a `between` value: references (objects with `id`), names, or lists and
    /// maps of them (`vm.web` of a `count` or `for_each` block).
    fn want_vms(&mut self, p: &Prepared, ev: Ev) -> Option<Vec<String>> {
        fn go(v: &Value, out: &mut Vec<String>, depth: usize) -> Result<(), &'static str> {
            if depth > 3 {
                return Err("nested too deeply");
            }
            match v {
                Value::String(s) => out.push(s.clone()),
                Value::Object(o) => match o.get("id").and_then(Value::as_str) {
                    Some(id) => out.push(id.to_string()),
                    None => {
                        for x in o.values() {
                            go(x, out, depth + 1)?;
                        }
                    }
                },
                Value::Array(a) => {
                    for x in a {
                        go(x, out, depth + 1)?;
                    }
                }
                _ => return Err("not a VM"),
            }
            Ok(())
        }
        let v = match ev {
            Ev::Val(v) => v,
            Ev::Unknown => return None,
        };
        if !matches!(v, Value::Array(_)) {
            self.wrong_type(p, "a list of VMs like `[vm.web, vm.db]`", &v);
            return None;
        }
        let mut out = Vec::new();
        if go(&v, &mut out, 0).is_err() {
            self.wrong_type(p, "a list of VMs like `[vm.web, vm.db]`", &v);
            return None;
        }
        Some(out)
    }

    fn eval_link(&mut self, node: &Node, b: &RawBlock, vars: &IndexMap<String, VarDecl>) {
        let has_count = b.attr("count").is_some();
        let has_each = b.attr("for_each").is_some();
        let mut groups = self.prepare_all(node, b, has_count, has_each, vars);
        let own = groups.remove("").unwrap_or_default();
        let ipsec = groups.remove("ipsec").unwrap_or_default();
        let refs: Vec<&Prepared> = own.iter().chain(ipsec.iter()).collect();
        let mut ctx = self.context_for(&refs);
        if b.attr("between").is_none() {
            self.missing(
                b,
                "between",
                "the VMs the link secures, e.g. `between = [vm.web, vm.db]`",
            );
        }
        let ipsec_block = b.block("ipsec");
        match ipsec_block {
            None => self.missing(
                b,
                "ipsec",
                "an `ipsec { proposals = [...], psk = var.NAME }` block",
            ),
            Some(ib) => {
                if ib.attr("proposals").is_none() {
                    self.missing(
                        ib,
                        "proposals",
                        "IKE/ESP proposals, e.g. `proposals = [\"aes256-sha256-modp2048\"]`",
                    );
                }
                let psk = ib.attr("psk").is_some();
                let cert = ib.attr("cert").is_some()
                    || ib.attr("key").is_some()
                    || ib.attr("ca").is_some();
                if psk && cert {
                    self.sink.error(
                        Code::InvalidValue,
                        &ib.head,
                        "`ipsec` sets both `psk` and certificate attributes",
                        "two kinds of authentication",
                        "use either `psk` or `cert` and `key` (and optionally `ca`)",
                    );
                } else if !psk && !cert {
                    self.missing(ib, "psk", "authenticate with `psk = var.NAME`, or with `cert` and `key` (and optionally `ca`)");
                } else if cert && (ib.attr("cert").is_none() || ib.attr("key").is_none()) {
                    self.missing(
                        ib,
                        if ib.attr("cert").is_none() {
                            "cert"
                        } else {
                            "key"
                        },
                        "certificate authentication needs both `cert` and `key`",
                    );
                }
            }
        }
        let Some(exp) = self.expansion(b, &own, &mut ctx, true) else {
            self.scope.unknown.insert(node.key.clone());
            return;
        };
        let Some(instances) = self.instances(b, &exp) else {
            self.scope.unknown.insert(node.key.clone());
            return;
        };
        let i_between = own.iter().position(|p| p.raw.name == "between");
        let mut values = Vec::with_capacity(instances.len());
        for inst in &instances {
            Self::set_instance(&mut ctx, inst);
            let mut between = Vec::new();
            let mut locs = LinkLocs { between: None };
            if let Some(i) = i_between {
                let p = &own[i];
                let ev = self.eval(p, &mut ctx, true);
                if let Some(vms) = self.want_vms(p, ev) {
                    between = vms;
                    locs.between = Some(p.raw.value.clone());
                }
            }
            let mut proposals = Vec::new();
            let mut psk: Option<Secret> = None;
            let (mut cert, mut key, mut ca) = (None, None, None);
            for p in &ipsec {
                let ev = self.eval(p, &mut ctx, true);
                match p.raw.name.as_str() {
                    "proposals" => {
                        if let Some(list) = self.want_strings(p, ev) {
                            if list.is_empty() {
                                self.invalid(
                                    p,
                                    "`proposals` must not be empty",
                                    "e.g. [\"aes256-sha256-modp2048\"]",
                                );
                            }
                            proposals = list;
                        }
                    }
                    "psk" => {
                        psk = Some(match ev {
                            Ev::Val(Value::String(s)) => {
                                if s.is_empty() {
                                    self.invalid(p, "`psk` must not be empty", "");
                                }
                                Secret::new(s)
                            }
                            Ev::Val(v) => {
                                self.wrong_type(p, "a string", &v);
                                Secret::new(String::new())
                            }
                            // Unknown in validate mode: the value arrives at plan time.
                            Ev::Unknown => Secret::new(String::new()),
                        })
                    }
                    "cert" => cert = self.want_string(p, ev),
                    "key" => key = self.want_string(p, ev),
                    "ca" => ca = self.want_string(p, ev),
                    _ => {}
                }
            }
            let auth = match psk {
                Some(s) => IpsecAuth::Psk(s),
                None => IpsecAuth::Cert {
                    cert: cert.unwrap_or_default(),
                    key: key.unwrap_or_default(),
                    ca,
                },
            };
            if self.referenced.contains(&node.key) {
                let mut v = Map::new();
                v.insert("id".into(), Value::from(inst.name.clone()));
                v.insert("name".into(), Value::from(inst.name.clone()));
                v.insert(
                    "between".into(),
                    Value::Array(between.iter().map(|s| Value::from(s.clone())).collect()),
                );
                values.push(Value::Object(v));
            }
            self.link_locs.insert(inst.name.clone(), locs);
            self.landscape.secure_links.insert(
                inst.name.clone(),
                SecureLink {
                    name: inst.name.as_str().into(),
                    // The members share the VMs' names (the planner finds a VM by its
                    // name's address before reading the text).
                    between: between
                        .into_iter()
                        .map(|n| {
                            self.landscape
                                .vms
                                .get(&n)
                                .map_or_else(|| Name::from(n), |vm| vm.name.clone())
                        })
                        .collect(),
                    ipsec: IpsecSpec {
                        proposals: proposals.into_iter().map(Name::from).collect(),
                        auth,
                    },
                },
            );
        }
        let value = Self::collect_values(&exp, values, &instances);
        self.settle(node.key.clone(), value, &refs);
    }

    fn eval_policy(&mut self, node: &Node, b: &RawBlock, vars: &IndexMap<String, VarDecl>) {
        let ps: Vec<Prepared> = b
            .attrs
            .iter()
            .map(|a| self.prepare(node, a, false, false, vars))
            .collect();
        let refs: Vec<&Prepared> = ps.iter().collect();
        let mut ctx = self.context_for(&refs);
        let mut policy = Policy::default();
        for p in &ps {
            let ev = self.eval(p, &mut ctx, false);
            match p.raw.name.as_str() {
                "tls_ports" => match ev {
                    Ev::Val(Value::Array(a)) => {
                        let mut ports = Vec::with_capacity(a.len());
                        for v in a {
                            match v.as_u64() {
                                Some(n) if (1..=65535).contains(&n) => ports.push(n as u16),
                                _ => {
                                    self.invalid(
                                        p,
                                        "`tls_ports` must hold port numbers from 1 to 65535",
                                        "",
                                    );
                                    break;
                                }
                            }
                        }
                        ports.sort_unstable();
                        ports.dedup();
                        policy.tls_ports = ports;
                    }
                    Ev::Val(v) => self.wrong_type(p, "a list of port numbers", &v),
                    Ev::Unknown => {}
                },
                "route_check_timeout_s" => {
                    if let Some(n) = self.want_u64(p, ev, 1, 86_400) {
                        policy.route_check_timeout_s = n;
                    }
                }
                "route_check_interval_s" => {
                    if let Some(n) = self.want_u64(p, ev, 1, 3_600) {
                        policy.route_check_interval_s = n;
                    }
                }
                "parallelism" => {
                    if let Some(n) = self.want_u64(p, ev, 1, 1_024) {
                        policy.parallelism = n as usize;
                    }
                }
                "allow_insecure_transport" => {
                    if let Some(x) = self.want_bool(p, ev) {
                        policy.allow_insecure_transport = x;
                    }
                }
                _ => {}
            }
        }
        if policy.route_check_interval_s > policy.route_check_timeout_s {
            if let Some(p) = ps.iter().find(|p| p.raw.name == "route_check_interval_s") {
                self.invalid(
                    p,
                    "`route_check_interval_s` is longer than `route_check_timeout_s`",
                    "the route check polls at this interval until the timeout",
                );
            }
        }
        self.landscape.policy = policy;
        self.settle(node.key.clone(), Value::Null, &refs);
    }

    // ---- whole-landscape checks ------------------------------------------------------------

    fn check_landscape(&mut self) {
        let mut by_address: HashMap<Ipv4Addr, &str> = HashMap::new();
        let mut by_domain: HashMap<&str, &str> = HashMap::new();
        let l = &self.landscape;
        let mut errors: Vec<(Code, Loc, String, String, String)> = Vec::new();
        for (name, vm) in &l.vms {
            let Some(locs) = self.vm_locs.get(name) else {
                continue;
            };
            if let Some(loc) = &locs.host {
                if l.host(&vm.host).is_none() {
                    let known: Vec<String> = l
                        .environments
                        .values()
                        .flat_map(|e| e.hosts.values().map(|h| h.id.to_string()))
                        .collect();
                    let known: Vec<&str> = known.iter().map(String::as_str).collect();
                    errors.push((
                        Code::UnknownHost,
                        loc.clone(),
                        format!(
                            "vm `{name}` is placed on host `{}`, which does not exist",
                            vm.host
                        ),
                        "no such host".into(),
                        syntax::suggestion(&vm.host.0, &known, "hosts"),
                    ));
                }
            }
            let subnet = match &locs.subnet {
                Some(loc) => match l.subnets.get(vm.subnet.as_str()) {
                    Some(s) => Some(s),
                    None => {
                        errors.push((
                            Code::UnknownReference,
                            loc.clone(),
                            format!(
                                "vm `{name}` is in subnet `{}`, which is not declared",
                                vm.subnet
                            ),
                            "no such subnet".into(),
                            String::new(),
                        ));
                        None
                    }
                },
                None => None,
            };
            if let (Some(s), Some((loc, sensitive))) = (subnet, &locs.address) {
                if !s.cidr.contains(&vm.address) {
                    let msg = if *sensitive {
                        format!(
                            "the address of vm `{name}` is outside its subnet `{}`",
                            s.name
                        )
                    } else {
                        format!(
                            "address {} of vm `{name}` is outside its subnet `{}` ({})",
                            vm.address, s.name, s.cidr
                        )
                    };
                    errors.push((
                        Code::AddressOutsideSubnet,
                        loc.clone(),
                        msg,
                        "not in the subnet".into(),
                        format!(
                            "choose an address in {}, or move the VM to the subnet that holds it",
                            s.cidr
                        ),
                    ));
                } else if vm.address == s.cidr.network()
                    || (s.cidr.prefix_len() < 31 && vm.address == s.cidr.broadcast())
                {
                    errors.push((
                        Code::AddressOutsideSubnet,
                        loc.clone(),
                        format!(
                            "vm `{name}` uses the network or broadcast address of subnet `{}`",
                            s.name
                        ),
                        "not a host address".into(),
                        String::new(),
                    ));
                }
            }
            if let Some((loc, sensitive)) = &locs.address {
                if let Some(first) = by_address.insert(vm.address, name) {
                    let msg = if *sensitive {
                        format!("vm `{name}` has the same address as vm `{first}`")
                    } else {
                        format!(
                            "vm `{name}` has address {}, already used by vm `{first}`",
                            vm.address
                        )
                    };
                    let first_at = self
                        .vm_locs
                        .get(first)
                        .and_then(|x| x.address.as_ref())
                        .map(|(l, _)| self.sink.position(l))
                        .unwrap_or_default();
                    errors.push((
                        Code::DuplicateAddress,
                        loc.clone(),
                        msg,
                        "duplicate address".into(),
                        format!("every VM needs its own address; `{first}` sets it at {first_at}"),
                    ));
                }
            }
            if let Some(first) = by_domain.insert(vm.domain.as_str(), name) {
                errors.push((
                    Code::DuplicateName,
                    locs.domain.clone(),
                    format!("vm `{name}` has the same libvirt domain name as vm `{first}`"),
                    "duplicate domain".into(),
                    "set `domain` so each VM has its own libvirt domain".into(),
                ));
            }
        }
        for (name, link) in &l.secure_links {
            let Some(loc) = self.link_locs.get(name).and_then(|x| x.between.clone()) else {
                continue;
            };
            for vm in &link.between {
                if !l.vms.contains_key(vm.as_str()) {
                    errors.push((
                        Code::MissingVm,
                        loc.clone(),
                        format!("secure_link `{name}` names vm `{vm}`, which does not exist"),
                        "no such VM".into(),
                        String::new(),
                    ));
                }
            }
            let distinct: HashSet<&Name> = link.between.iter().collect();
            if distinct.len() < 2 {
                errors.push((
                    Code::InvalidValue,
                    loc.clone(),
                    format!("secure_link `{name}` needs at least two different VMs"),
                    "fewer than two VMs".into(),
                    String::new(),
                ));
            } else if distinct.len() != link.between.len() {
                errors.push((
                    Code::InvalidValue,
                    loc.clone(),
                    format!("secure_link `{name}` names a VM twice"),
                    "duplicate VM".into(),
                    String::new(),
                ));
            }
        }
        if !l.policy.allow_insecure_transport {
            for env in l.environments.values().filter(|e| !e.trusted) {
                for host in env.hosts.values() {
                    let Some(loc) = self.locs.host_libvirt.get(&host.id) else {
                        continue;
                    };
                    if !host.libvirt_uses_tls() {
                        errors.push((
                            Code::InsecureTransport,
                            loc.clone(),
                            format!("host `{}` is in the untrusted environment `{}` but its libvirt URI does not use TLS", host.id, env.name),
                            "not qemu+tls://".into(),
                            "use \"qemu+tls://...\" so the control connection and the migration stream are encrypted, or set `policy { allow_insecure_transport = true }` to accept cleartext".into(),
                        ));
                    }
                }
            }
        }
        for (code, loc, msg, label, help) in errors {
            self.sink.error(code, &loc, msg, label, help);
        }
    }
}
