//! Expressions: the references an expression makes (with spans), the functions the language
//! offers, and evaluation errors turned into messages that never print a value.

use super::diagnostic::{Loc, Origin};
use hcl::eval::{Context, ErrorKind, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::{Map, Number, Value};
use hcl_edit::expr::{Expression, ObjectKey, TraversalOperator};
use hcl_edit::template::{Directive, Element, Template};
use hcl_edit::Span;
use std::net::Ipv4Addr;

/// A reference from an expression to a named thing: `var.x`, `vm.web`, `environment.dc.host.hv1`.
#[derive(Debug, Clone)]
pub(crate) struct Ref {
    /// The root name (`var`, `local`, `vm`, `each`, ...).
    pub root: String,
    /// The attribute names that follow the root statically (`["dc", "host", "hv1"]`).
    pub path: Vec<String>,
    /// From the root to the end of the static path.
    pub loc: Loc,
    /// Inside a template or a `for` expression's body: evaluated by the evaluator itself, which
    /// needs the value in its context (elsewhere [`bind`] resolves references without copying
    /// whole namespaces).
    pub in_template: bool,
}

/// Everything an expression refers to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Refs {
    pub refs: Vec<Ref>,
    pub funcs: Vec<(String, Loc)>,
    template_depth: usize,
}

impl Refs {
    /// Collects the references of `expr` (parsed from a text at `at`) into `self`.
    pub fn collect(&mut self, at: Origin, expr: &Expression) {
        let mut scope = Vec::new();
        walk(self, at, expr, &mut scope);
    }
}

fn walk(out: &mut Refs, at: Origin, expr: &Expression, scope: &mut Vec<String>) {
    match expr {
        Expression::Null(_)
        | Expression::Bool(_)
        | Expression::Number(_)
        | Expression::String(_) => {}
        Expression::Array(a) => {
            for e in a.iter() {
                walk(out, at, e, scope);
            }
        }
        Expression::Object(o) => {
            for (k, v) in o.iter() {
                if let ObjectKey::Expression(k) = k {
                    // A bare name in parentheses or a traversal used as a key is evaluated.
                    if !matches!(k, Expression::Variable(_)) {
                        walk(out, at, k, scope);
                    }
                }
                walk(out, at, v.expr(), scope);
            }
        }
        Expression::StringTemplate(t) => walk_template(out, at, t, scope),
        Expression::HeredocTemplate(h) => walk_template(out, at, &h.template, scope),
        Expression::Parenthesis(p) => walk(out, at, p.inner(), scope),
        Expression::Variable(v) => {
            let name = v.as_str();
            if !scope.iter().any(|s| s == name) {
                out.refs.push(Ref {
                    root: name.to_string(),
                    path: Vec::new(),
                    loc: at.loc(v.span()),
                    in_template: out.template_depth > 0,
                });
            }
        }
        Expression::Conditional(c) => {
            walk(out, at, &c.cond_expr, scope);
            walk(out, at, &c.true_expr, scope);
            walk(out, at, &c.false_expr, scope);
        }
        Expression::FuncCall(f) => {
            let mut name = String::new();
            for ns in &f.name.namespace {
                name.push_str(ns.as_str());
                name.push_str("::");
            }
            name.push_str(f.name.name.as_str());
            out.funcs.push((name, at.loc(f.name.name.span())));
            for a in f.args.iter() {
                walk(out, at, a, scope);
            }
        }
        Expression::Traversal(t) => {
            let mut static_ops = 0;
            if let Expression::Variable(v) = &t.expr {
                let name = v.as_str();
                if !scope.iter().any(|s| s == name) {
                    let mut path = Vec::new();
                    let start = v.span().map_or(0, |s| s.start);
                    let mut end = v.span().map_or(0, |s| s.end);
                    for op in &t.operators {
                        match op.value() {
                            TraversalOperator::GetAttr(id) => {
                                path.push(id.as_str().to_string());
                                if let Some(s) = op.span().or(id.span()) {
                                    end = s.end;
                                }
                                static_ops += 1;
                            }
                            _ => break,
                        }
                    }
                    out.refs.push(Ref {
                        root: name.to_string(),
                        path,
                        loc: at.loc(Some(start..end.max(start))),
                        in_template: out.template_depth > 0,
                    });
                }
            } else {
                walk(out, at, &t.expr, scope);
            }
            for op in t.operators.iter().skip(static_ops) {
                if let TraversalOperator::Index(e) = op.value() {
                    walk(out, at, e, scope);
                }
            }
        }
        Expression::UnaryOp(u) => walk(out, at, &u.expr, scope),
        Expression::BinaryOp(b) => {
            walk(out, at, &b.lhs_expr, scope);
            walk(out, at, &b.rhs_expr, scope);
        }
        Expression::ForExpr(f) => {
            walk(out, at, &f.intro.collection_expr, scope);
            let before = scope.len();
            if let Some(k) = &f.intro.key_var {
                scope.push(k.as_str().to_string());
            }
            scope.push(f.intro.value_var.as_str().to_string());
            out.template_depth += 1;
            if let Some(k) = &f.key_expr {
                walk(out, at, k, scope);
            }
            walk(out, at, &f.value_expr, scope);
            if let Some(c) = &f.cond {
                walk(out, at, &c.expr, scope);
            }
            out.template_depth -= 1;
            scope.truncate(before);
        }
    }
}

fn walk_template(out: &mut Refs, at: Origin, t: &Template, scope: &mut Vec<String>) {
    out.template_depth += 1;
    walk_template_elements(out, at, t, scope);
    out.template_depth -= 1;
}

fn walk_template_elements(out: &mut Refs, at: Origin, t: &Template, scope: &mut Vec<String>) {
    for el in t.iter() {
        match el {
            Element::Literal(_) => {}
            Element::Interpolation(i) => walk(out, at, &i.expr, scope),
            Element::Directive(d) => match d.as_ref() {
                Directive::If(i) => {
                    walk(out, at, &i.if_expr.cond_expr, scope);
                    walk_template(out, at, &i.if_expr.template, scope);
                    if let Some(e) = &i.else_expr {
                        walk_template(out, at, &e.template, scope);
                    }
                }
                Directive::For(f) => {
                    let fe = &f.for_expr;
                    walk(out, at, &fe.collection_expr, scope);
                    let before = scope.len();
                    if let Some(k) = &fe.key_var {
                        scope.push(k.as_str().to_string());
                    }
                    scope.push(fe.value_var.as_str().to_string());
                    walk_template(out, at, &fe.template, scope);
                    scope.truncate(before);
                }
            },
        }
    }
}

/// The internal function compiled templates call (not part of the language).
pub(crate) const TEMPLATE_FUNC: &str = "__smig_template";

/// Rewrites quoted-string templates without directives (`"c${count.index}"`) into a call of
/// [`TEMPLATE_FUNC`]. The evaluator re-parses a template string on every evaluation; the
/// rewritten form is parsed once, and [`bind`] can resolve the references inside it.
pub(crate) fn compile(e: hcl::Expression, depth: usize) -> hcl::Expression {
    use hcl::expr::{Expression as E, Operation, TemplateExpr, TraversalOperator as Op};
    use hcl::template::{Element, Strip};
    if depth > 2 * super::depth::MAX_DEPTH {
        return e;
    }
    let d = depth + 1;
    let take = |e: &mut E| std::mem::replace(e, E::Null);
    match e {
        E::TemplateExpr(t) => {
            let TemplateExpr::QuotedString(_) = &*t else {
                return E::TemplateExpr(t);
            };
            let Ok(tpl) = hcl::Template::from_expr(&t) else {
                return E::TemplateExpr(t);
            };
            let elements = tpl.elements();
            let mut args = Vec::with_capacity(elements.len());
            for el in elements {
                match el {
                    Element::Literal(l) => args.push(E::String(l.clone())),
                    Element::Interpolation(i) if i.strip == Strip::None => {
                        args.push(compile(i.expr.clone(), d))
                    }
                    _ => return E::TemplateExpr(t),
                }
            }
            if let [E::String(_)] = args.as_slice() {
                return args.pop().unwrap_or(E::Null);
            }
            if elements.len() == 1 {
                // `"${x}"` is `x` itself, not its string form.
                return args.pop().unwrap_or(E::Null);
            }
            let mut call = hcl::expr::FuncCall::new(TEMPLATE_FUNC);
            call.args = args;
            E::FuncCall(Box::new(call))
        }
        E::Array(a) => E::Array(a.into_iter().map(|x| compile(x, d)).collect()),
        E::Object(o) => E::Object(
            o.into_iter()
                .map(|(k, v)| {
                    let k = match k {
                        hcl::ObjectKey::Expression(ke) => {
                            hcl::ObjectKey::Expression(compile(ke, d))
                        }
                        other => other,
                    };
                    (k, compile(v, d))
                })
                .collect(),
        ),
        E::Parenthesis(p) => E::Parenthesis(Box::new(compile(*p, d))),
        E::FuncCall(mut f) => {
            for a in &mut f.args {
                *a = compile(take(a), d);
            }
            E::FuncCall(f)
        }
        E::Conditional(mut c) => {
            c.cond_expr = compile(take(&mut c.cond_expr), d);
            c.true_expr = compile(take(&mut c.true_expr), d);
            c.false_expr = compile(take(&mut c.false_expr), d);
            E::Conditional(c)
        }
        E::Operation(mut op) => {
            match &mut *op {
                Operation::Unary(u) => u.expr = compile(take(&mut u.expr), d),
                Operation::Binary(b) => {
                    b.lhs_expr = compile(take(&mut b.lhs_expr), d);
                    b.rhs_expr = compile(take(&mut b.rhs_expr), d);
                }
            }
            E::Operation(op)
        }
        E::ForExpr(mut f) => {
            f.collection_expr = compile(take(&mut f.collection_expr), d);
            f.key_expr = f.key_expr.take().map(|k| compile(k, d));
            f.value_expr = compile(take(&mut f.value_expr), d);
            f.cond_expr = f.cond_expr.take().map(|c| compile(c, d));
            E::ForExpr(f)
        }
        E::Traversal(mut t) => {
            t.expr = compile(take(&mut t.expr), d);
            for op in &mut t.operators {
                if let Op::Index(ix) = op {
                    *ix = compile(take(ix), d);
                }
            }
            E::Traversal(t)
        }
        other => other,
    }
}

fn f_template(args: FuncArgs) -> Result<Value, String> {
    let mut out = String::new();
    for a in args.iter() {
        match to_plain_string(a) {
            Some(s) => out.push_str(&s),
            None if a.is_null() => return Err("a template interpolates a null value".into()),
            None => return Err(format!("a template cannot interpolate a {}", type_name(a))),
        }
    }
    Ok(Value::String(out))
}

/// A context holding only the internal template function.
pub(crate) fn template_context() -> Context<'static> {
    let mut ctx = Context::new();
    ctx.declare_func(
        TEMPLATE_FUNC,
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(f_template),
    );
    ctx
}

/// Resolves `e` when it is a plain reference into a namespace (`environment.dc.host.hv1`),
/// without evaluating: the common case, copied once.
pub(crate) fn resolve_plain<'v>(e: &hcl::Expression, lookup: &Lookup<'v>) -> Option<&'v Value> {
    use hcl::expr::{Expression as E, TraversalOperator as Op};
    let E::Traversal(t) = e else { return None };
    let E::Variable(root) = &t.expr else {
        return None;
    };
    let (Some(Op::GetAttr(name)), rest) =
        (t.operators.first(), t.operators.get(1..).unwrap_or(&[]))
    else {
        return None;
    };
    let mut cur = lookup(root.as_str(), name.as_str())?;
    for op in rest {
        cur = match op {
            Op::GetAttr(k) => cur.as_object()?.get(k.as_str())?,
            Op::LegacyIndex(i) => cur.as_array()?.get(usize::try_from(*i).ok()?)?,
            Op::Index(E::String(k)) => cur.as_object()?.get(k.as_str())?,
            _ => return None,
        };
    }
    Some(cur)
}

/// The value of `e` when it needs no evaluator: a literal, a plain reference (see
/// [`resolve_plain`]), or a list of these, as `[vm.web, vm.db]` or `["aes256-sha256"]`.
pub(crate) fn resolve_simple(e: &hcl::Expression, lookup: &Lookup<'_>) -> Option<Value> {
    use hcl::expr::Expression as E;
    fn go(e: &E, lookup: &Lookup<'_>, depth: usize) -> Option<Value> {
        match e {
            E::Null => Some(Value::Null),
            E::Bool(b) => Some(Value::Bool(*b)),
            E::Number(n) => Some(Value::Number(*n)),
            E::String(s) => Some(Value::String(s.clone())),
            E::Array(a) if depth < 4 => a
                .iter()
                .map(|x| go(x, lookup, depth + 1))
                .collect::<Option<Vec<_>>>()
                .map(Value::Array),
            _ => resolve_plain(e, lookup).cloned(),
        }
    }
    go(e, lookup, 0)
}

/// Where [`bind`] puts the values it resolves: variables of the evaluation context, so the
/// evaluator copies each once instead of converting it to an expression and back. Values are
/// held back until an evaluation needs them, so a result that is just bound values
/// (`vm.web[count.index]`, `[vm.a, vm.b]`) is taken without evaluating at all.
pub(crate) struct Binder<'c> {
    ctx: &'c mut Context<'static>,
    next: usize,
    pending: Vec<(usize, Value)>,
}

impl<'c> Binder<'c> {
    pub fn new(ctx: &'c mut Context<'static>) -> Self {
        Binder {
            ctx,
            next: 0,
            pending: Vec::new(),
        }
    }

    fn declare(&mut self, v: Value) -> hcl::Expression {
        let n = self.next;
        self.next += 1;
        self.pending.push((n, v));
        hcl::Expression::Variable(hcl::expr::Variable::unchecked(format!("{REF_PREFIX}{n}")))
    }

    /// The context, with every held-back value declared.
    pub fn ctx(&mut self) -> &Context<'static> {
        for (n, v) in self.pending.drain(..) {
            self.ctx.declare_var(format!("{REF_PREFIX}{n}").as_str(), v);
        }
        self.ctx
    }

    /// Evaluates a bound expression.
    pub fn evaluate(&mut self, e: &hcl::Expression) -> Result<Value, hcl::eval::Error> {
        if self.is_direct(e) {
            return Ok(self.take(e));
        }
        e.evaluate(self.ctx())
    }

    /// Whether `e` is made only of literals and held-back values.
    fn is_direct(&self, e: &hcl::Expression) -> bool {
        use hcl::expr::Expression as E;
        match e {
            E::Null | E::Bool(_) | E::Number(_) | E::String(_) => true,
            E::Variable(v) => self.pending_index(v.as_str()).is_some(),
            E::Array(a) => a.iter().all(|x| self.is_direct(x)),
            _ => false,
        }
    }

    fn pending_index(&self, name: &str) -> Option<usize> {
        let n: usize = name.strip_prefix(REF_PREFIX)?.parse().ok()?;
        self.pending.iter().position(|(m, _)| *m == n)
    }

    /// Builds the value of an expression that [`Self::is_direct`] accepted.
    fn take(&mut self, e: &hcl::Expression) -> Value {
        use hcl::expr::Expression as E;
        match e {
            E::Bool(b) => Value::Bool(*b),
            E::Number(n) => Value::Number(*n),
            E::String(s) => Value::String(s.clone()),
            E::Variable(v) => match self.pending_index(v.as_str()) {
                // Each reference is bound once, so its value can be moved out.
                Some(i) => std::mem::take(&mut self.pending[i].1),
                None => Value::Null,
            },
            E::Array(a) => Value::Array(a.iter().map(|x| self.take(x)).collect()),
            _ => Value::Null,
        }
    }
}

const REF_PREFIX: &str = "__smig_ref_";

/// The roots whose references [`bind`] resolves.
pub(crate) const NAMESPACES: &[&str] =
    &["var", "local", "environment", "subnet", "vm", "secure_link"];

/// Looks up the value of `root.name` (`vm.web`), by reference.
pub(crate) type Lookup<'v> = dyn Fn(&str, &str) -> Option<&'v Value> + 'v;

/// Returns `e` with every reference into a namespace (`vm.web[count.index * 2]`) replaced by
/// the value it denotes. The evaluator copies a variable's whole value on every lookup; bound
/// references copy only what they select, which keeps 10,000 `count` instances linear.
/// Index expressions are evaluated in `ctx`; what cannot be resolved is left for the evaluator
/// to report.
pub(crate) fn bind<'v>(
    e: &hcl::Expression,
    lookup: &Lookup<'v>,
    b: &mut Binder,
) -> Result<hcl::Expression, hcl::eval::Error> {
    use hcl::expr::{Expression as E, Operation, TraversalOperator as Op};
    Ok(match e {
        E::Null
        | E::Bool(_)
        | E::Number(_)
        | E::String(_)
        | E::TemplateExpr(_)
        | E::Variable(_) => e.clone(),
        E::Array(a) => E::Array(
            a.iter()
                .map(|x| bind(x, lookup, b))
                .collect::<Result<_, _>>()?,
        ),
        E::Object(o) => {
            let mut out = hcl::expr::Object::new();
            for (k, v) in o {
                let k = match k {
                    hcl::ObjectKey::Expression(ke) => {
                        hcl::ObjectKey::Expression(bind(ke, lookup, b)?)
                    }
                    other => other.clone(),
                };
                out.insert(k, bind(v, lookup, b)?);
            }
            E::Object(out)
        }
        E::Parenthesis(p) => E::Parenthesis(Box::new(bind(p, lookup, b)?)),
        E::FuncCall(f) => {
            let mut f = (**f).clone();
            for a in &mut f.args {
                *a = bind(a, lookup, b)?;
            }
            E::FuncCall(Box::new(f))
        }
        E::Conditional(c) => {
            // Only the branch taken is resolved (and copied).
            let cond = bind(&c.cond_expr, lookup, b)?;
            match b.evaluate(&cond)? {
                Value::Bool(true) => bind(&c.true_expr, lookup, b)?,
                Value::Bool(false) => bind(&c.false_expr, lookup, b)?,
                other => {
                    let mut c = (**c).clone();
                    c.cond_expr = E::from(other);
                    E::Conditional(Box::new(c))
                }
            }
        }
        E::Operation(op) => E::Operation(Box::new(match &**op {
            Operation::Unary(u) => {
                let mut u = u.clone();
                u.expr = bind(&u.expr, lookup, b)?;
                Operation::Unary(u)
            }
            Operation::Binary(op) => {
                let mut op = op.clone();
                op.lhs_expr = bind(&op.lhs_expr, lookup, b)?;
                op.rhs_expr = bind(&op.rhs_expr, lookup, b)?;
                Operation::Binary(op)
            }
        })),
        E::ForExpr(f) => {
            let mut f = (**f).clone();
            f.collection_expr = bind(&f.collection_expr, lookup, b)?;
            // The loop body runs in the evaluator's own scope, where index expressions may use
            // the loop variables: leave it to the evaluator.
            E::ForExpr(Box::new(f))
        }
        E::Traversal(t) => {
            let root = match &t.expr {
                E::Variable(v) if NAMESPACES.contains(&v.as_str()) => Some(v.as_str()),
                _ => None,
            };
            let (Some(root), Some(Op::GetAttr(name))) = (root, t.operators.first()) else {
                let mut t = (**t).clone();
                t.expr = bind(&t.expr, lookup, b)?;
                for op in &mut t.operators {
                    if let Op::Index(ix) = op {
                        *ix = bind(ix, lookup, b)?;
                    }
                }
                return Ok(E::Traversal(Box::new(t)));
            };
            let Some(mut cur) = lookup(root, name.as_str()) else {
                return Ok(e.clone());
            };
            let mut rest = t.operators[1..].iter().peekable();
            let mut pending: Option<Op> = None;
            while let Some(op) = rest.peek() {
                let next = match op {
                    Op::GetAttr(k) => cur.as_object().and_then(|o| o.get(k.as_str())),
                    Op::LegacyIndex(i) => cur.as_array().and_then(|a| a.get(*i as usize)),
                    Op::Index(ix) => {
                        let bound = bind(ix, lookup, b)?;
                        let idx = b.evaluate(&bound)?;
                        let found = index_ref(cur, &idx);
                        if found.is_none() {
                            pending = Some(Op::Index(hcl::Expression::from(idx)));
                        }
                        found
                    }
                    Op::AttrSplat | Op::FullSplat => None,
                };
                match next {
                    Some(v) => {
                        cur = v;
                        rest.next();
                    }
                    None => break,
                }
            }
            let mut remaining: Vec<Op> = Vec::new();
            if let Some(p) = pending {
                remaining.push(p);
                rest.next();
            }
            for op in rest {
                remaining.push(match op {
                    Op::Index(ix) => Op::Index(bind(ix, lookup, b)?),
                    other => other.clone(),
                });
            }
            let value = b.declare(cur.clone());
            if remaining.is_empty() {
                value
            } else {
                E::Traversal(Box::new(hcl::expr::Traversal::new(value, remaining)))
            }
        }
        // Variants added in later versions: left to the evaluator.
        _ => e.clone(),
    })
}

fn index_ref<'a>(v: &'a Value, idx: &Value) -> Option<&'a Value> {
    match (v, idx) {
        (Value::Array(a), Value::Number(n)) => {
            n.as_u64().and_then(|i| a.get(usize::try_from(i).ok()?))
        }
        (Value::Array(a), Value::String(s)) => s.parse::<usize>().ok().and_then(|i| a.get(i)),
        (Value::Object(o), Value::String(s)) => o.get(s.as_str()),
        (Value::Object(o), Value::Number(n)) => o.get(n.to_string().as_str()),
        _ => None,
    }
}

/// The type name of a value, for messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// An evaluation error as a message that names types, never values.
pub(crate) fn describe_error(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::UndefinedVar(v) => format!("unknown name `{v}`"),
        ErrorKind::UndefinedFunc(f) => format!("unknown function `{f}`"),
        ErrorKind::Unexpected(v, expected) => {
            format!("expected {expected}, found a {}", type_name(v))
        }
        ErrorKind::Index(i) => format!("index {i} is out of range"),
        ErrorKind::UnaryOp(op, v) => {
            format!("operator `{op}` cannot be applied to a {}", type_name(v))
        }
        ErrorKind::BinaryOp(l, op, r) => format!(
            "operator `{op}` cannot be applied to a {} and a {}",
            type_name(l),
            type_name(r)
        ),
        ErrorKind::NoSuchKey(k) => format!("no key or attribute `{k}`"),
        ErrorKind::KeyExists(k) => format!("the key `{k}` is produced twice"),
        ErrorKind::FuncCall(f, msg) => format!("`{f}`: {msg}"),
        ErrorKind::Message(m) => m.clone(),
        _ => "the expression cannot be evaluated".to_string(),
    }
}

/// The largest list a function may build (`range`), to keep hostile input bounded.
pub(crate) const MAX_COLLECTION: usize = 1_000_000;

/// A context holding the language's functions.
pub(crate) fn base_context() -> Context<'static> {
    let mut ctx = template_context();
    let funcs: &[(&str, usize, bool, hcl::eval::Func)] = &[
        ("format", 1, true, f_format),
        ("cidrhost", 2, false, f_cidrhost),
        ("cidrsubnet", 3, false, f_cidrsubnet),
        ("length", 1, false, f_length),
        ("concat", 0, true, f_concat),
        ("flatten", 1, false, f_flatten),
        ("keys", 1, false, f_keys),
        ("values", 1, false, f_values),
        ("merge", 0, true, f_merge),
        ("lookup", 3, false, f_lookup),
        ("range", 1, true, f_range),
        ("tostring", 1, false, f_tostring),
        ("tonumber", 1, false, f_tonumber),
        ("lower", 1, false, f_lower),
        ("upper", 1, false, f_upper),
        ("join", 2, false, f_join),
        ("split", 2, false, f_split),
        ("min", 1, true, f_min),
        ("max", 1, true, f_max),
        ("element", 2, false, f_element),
        ("contains", 2, false, f_contains),
        ("toset", 1, false, f_distinct),
        ("distinct", 1, false, f_distinct),
        ("tolist", 1, false, f_tolist),
        ("replace", 3, false, f_replace),
        ("zipmap", 2, false, f_zipmap),
    ];
    for (name, params, variadic, f) in funcs {
        let mut b = FuncDef::builder();
        for _ in 0..*params {
            b = b.param(ParamType::Any);
        }
        if *variadic {
            b = b.variadic_param(ParamType::Any);
        }
        ctx.declare_func(*name, b.build(*f));
    }
    ctx
}

fn arg_str<'a>(v: &'a Value, what: &str) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{what} must be a string, found a {}", type_name(v)))
}

fn arg_list<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>, String> {
    v.as_array()
        .ok_or_else(|| format!("{what} must be a list, found a {}", type_name(v)))
}

fn arg_i64(v: &Value, what: &str) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| format!("{what} must be a whole number")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{what} must be a whole number")),
        other => Err(format!(
            "{what} must be a number, found a {}",
            type_name(other)
        )),
    }
}

fn arg_f64(v: &Value, what: &str) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("{what} must be a number")),
        other => Err(format!(
            "{what} must be a number, found a {}",
            type_name(other)
        )),
    }
}

fn num_value(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9e15 {
        Value::from(f as i64)
    } else {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

/// Renders a primitive as a string the way templates do.
pub(crate) fn to_plain_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn f_format(args: FuncArgs) -> Result<Value, String> {
    let fmt = arg_str(&args[0], "the format")?.to_string();
    let mut rest = args.iter().skip(1);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(v @ ('s' | 'd' | 'v')) => {
                let arg = rest.next().ok_or("too few arguments for the format")?;
                if v == 'd' {
                    out.push_str(&arg_i64(arg, "a %d argument")?.to_string());
                } else {
                    out.push_str(
                        &to_plain_string(arg)
                            .ok_or("a %s argument must be a string, number or bool")?,
                    );
                }
            }
            _ => return Err("unsupported format verb (use %s, %d, %v or %%)".into()),
        }
        if out.len() > 1 << 20 {
            return Err("the result is too long".into());
        }
    }
    Ok(Value::String(out))
}

fn parse_net(v: &Value) -> Result<ipnet::Ipv4Net, String> {
    arg_str(v, "the prefix")?
        .parse::<ipnet::Ipv4Net>()
        .map_err(|_| "the prefix must be an IPv4 CIDR like 10.0.0.0/24".to_string())
}

fn f_cidrhost(args: FuncArgs) -> Result<Value, String> {
    let net = parse_net(&args[0])?;
    let n = arg_i64(&args[1], "the host number")?;
    let size: i64 = 1i64 << (32 - u32::from(net.prefix_len()));
    let idx = if n < 0 { size + n } else { n };
    if idx < 0 || idx >= size {
        return Err("the host number does not fit in the prefix".into());
    }
    let base = u32::from(net.network()) as i64;
    let addr = Ipv4Addr::from((base + idx) as u32);
    Ok(Value::String(addr.to_string()))
}

fn f_cidrsubnet(args: FuncArgs) -> Result<Value, String> {
    let net = parse_net(&args[0])?;
    let newbits = arg_i64(&args[1], "newbits")?;
    let num = arg_i64(&args[2], "netnum")?;
    let len = i64::from(net.prefix_len()) + newbits;
    if !(0..=32).contains(&len) || newbits < 0 || num < 0 || num >= (1i64 << newbits.min(32)) {
        return Err("the subnet does not fit in the prefix".into());
    }
    let base = u32::from(net.network()) as i64;
    let addr = (base + (num << (32 - len))) as u32;
    let sub = ipnet::Ipv4Net::new(Ipv4Addr::from(addr), len as u8).map_err(|_| "invalid subnet")?;
    Ok(Value::String(sub.to_string()))
}

fn f_length(args: FuncArgs) -> Result<Value, String> {
    Ok(Value::from(match &args[0] {
        Value::Array(a) => a.len(),
        Value::Object(o) => o.len(),
        Value::String(s) => s.chars().count(),
        other => return Err(format!("cannot take the length of a {}", type_name(other))),
    }))
}

fn f_concat(args: FuncArgs) -> Result<Value, String> {
    let mut out = Vec::new();
    for a in args.iter() {
        out.extend(arg_list(a, "each argument")?.iter().cloned());
    }
    Ok(Value::Array(out))
}

fn f_flatten(args: FuncArgs) -> Result<Value, String> {
    fn go(v: &[Value], out: &mut Vec<Value>, depth: usize) -> Result<(), String> {
        if depth > 32 {
            return Err("the list is nested too deeply".into());
        }
        for x in v {
            match x {
                Value::Array(inner) => go(inner, out, depth + 1)?,
                other => out.push(other.clone()),
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(arg_list(&args[0], "the argument")?, &mut out, 0)?;
    Ok(Value::Array(out))
}

fn arg_obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} must be a map or object, found a {}", type_name(v)))
}

fn f_keys(args: FuncArgs) -> Result<Value, String> {
    let o = arg_obj(&args[0], "the argument")?;
    let mut keys: Vec<&String> = o.keys().collect();
    keys.sort();
    Ok(Value::Array(
        keys.into_iter().map(|k| Value::String(k.clone())).collect(),
    ))
}

fn f_values(args: FuncArgs) -> Result<Value, String> {
    let o = arg_obj(&args[0], "the argument")?;
    let mut entries: Vec<(&String, &Value)> = o.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    Ok(Value::Array(
        entries.into_iter().map(|(_, v)| v.clone()).collect(),
    ))
}

fn f_merge(args: FuncArgs) -> Result<Value, String> {
    let mut out = Map::new();
    for a in args.iter() {
        if a.is_null() {
            continue;
        }
        for (k, v) in arg_obj(a, "each argument")? {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(Value::Object(out))
}

fn f_lookup(args: FuncArgs) -> Result<Value, String> {
    let o = arg_obj(&args[0], "the map")?;
    let k = arg_str(&args[1], "the key")?;
    Ok(o.get(k).cloned().unwrap_or_else(|| args[2].clone()))
}

fn f_range(args: FuncArgs) -> Result<Value, String> {
    let nums: Vec<f64> = args
        .iter()
        .map(|a| arg_f64(a, "each argument"))
        .collect::<Result<_, _>>()?;
    let (start, end, step) = match nums.as_slice() {
        [end] => (0.0, *end, 1.0),
        [start, end] => (*start, *end, if end >= start { 1.0 } else { -1.0 }),
        [start, end, step] => (*start, *end, *step),
        _ => return Err("expects one to three numbers".into()),
    };
    if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
        return Err("the step must be a non-zero number".into());
    }
    let count = ((end - start) / step).ceil();
    if count > MAX_COLLECTION as f64 {
        return Err(format!("would produce more than {MAX_COLLECTION} elements"));
    }
    let count = count.max(0.0) as usize;
    Ok(Value::Array(
        (0..count)
            .map(|i| num_value(start + step * i as f64))
            .collect(),
    ))
}

fn f_tostring(args: FuncArgs) -> Result<Value, String> {
    to_plain_string(&args[0])
        .map(Value::String)
        .ok_or_else(|| format!("cannot convert a {} to a string", type_name(&args[0])))
}

fn f_tonumber(args: FuncArgs) -> Result<Value, String> {
    match &args[0] {
        Value::Number(n) => Ok(Value::Number(*n)),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(num_value)
            .ok_or_else(|| "the string is not a number".to_string()),
        other => Err(format!("cannot convert a {} to a number", type_name(other))),
    }
}

fn f_lower(args: FuncArgs) -> Result<Value, String> {
    Ok(Value::String(
        arg_str(&args[0], "the argument")?.to_lowercase(),
    ))
}

fn f_upper(args: FuncArgs) -> Result<Value, String> {
    Ok(Value::String(
        arg_str(&args[0], "the argument")?.to_uppercase(),
    ))
}

fn f_join(args: FuncArgs) -> Result<Value, String> {
    let sep = arg_str(&args[0], "the separator")?;
    let parts: Vec<String> = arg_list(&args[1], "the list")?
        .iter()
        .map(|v| to_plain_string(v).ok_or_else(|| "the list must hold strings".to_string()))
        .collect::<Result<_, _>>()?;
    Ok(Value::String(parts.join(sep)))
}

fn f_split(args: FuncArgs) -> Result<Value, String> {
    let sep = arg_str(&args[0], "the separator")?;
    let s = arg_str(&args[1], "the string")?;
    if sep.is_empty() {
        return Err("the separator must not be empty".into());
    }
    Ok(Value::Array(
        s.split(sep).map(|p| Value::String(p.to_string())).collect(),
    ))
}

fn f_min(args: FuncArgs) -> Result<Value, String> {
    let nums: Vec<f64> = args
        .iter()
        .map(|a| arg_f64(a, "each argument"))
        .collect::<Result<_, _>>()?;
    Ok(num_value(nums.into_iter().fold(f64::INFINITY, f64::min)))
}

fn f_max(args: FuncArgs) -> Result<Value, String> {
    let nums: Vec<f64> = args
        .iter()
        .map(|a| arg_f64(a, "each argument"))
        .collect::<Result<_, _>>()?;
    Ok(num_value(
        nums.into_iter().fold(f64::NEG_INFINITY, f64::max),
    ))
}

fn f_element(args: FuncArgs) -> Result<Value, String> {
    let list = arg_list(&args[0], "the list")?;
    let i = arg_i64(&args[1], "the index")?;
    if list.is_empty() || i < 0 {
        return Err("the index is out of range".into());
    }
    Ok(list[(i as usize) % list.len()].clone())
}

fn f_contains(args: FuncArgs) -> Result<Value, String> {
    Ok(Value::Bool(
        arg_list(&args[0], "the list")?.contains(&args[1]),
    ))
}

fn f_distinct(args: FuncArgs) -> Result<Value, String> {
    let mut out: Vec<Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for v in arg_list(&args[0], "the argument")? {
        let key = serde_json::to_string(v).map_err(|_| "the list holds an unsupported value")?;
        if seen.insert(key) {
            out.push(v.clone());
        }
    }
    Ok(Value::Array(out))
}

fn f_tolist(args: FuncArgs) -> Result<Value, String> {
    Ok(Value::Array(arg_list(&args[0], "the argument")?.clone()))
}

fn f_replace(args: FuncArgs) -> Result<Value, String> {
    let s = arg_str(&args[0], "the string")?;
    let from = arg_str(&args[1], "the substring")?;
    let to = arg_str(&args[2], "the replacement")?;
    if from.is_empty() {
        return Err("the substring must not be empty".into());
    }
    let out = s.replace(from, to);
    if out.len() > 1 << 20 {
        return Err("the result is too long".into());
    }
    Ok(Value::String(out))
}

fn f_zipmap(args: FuncArgs) -> Result<Value, String> {
    let keys = arg_list(&args[0], "the keys")?;
    let vals = arg_list(&args[1], "the values")?;
    if keys.len() != vals.len() {
        return Err("the keys and values differ in length".into());
    }
    let mut out = Map::new();
    for (k, v) in keys.iter().zip(vals) {
        out.insert(
            to_plain_string(k).ok_or("the keys must be strings")?,
            v.clone(),
        );
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(src: &str) -> Result<Value, String> {
        let e: hcl::Expression = hcl_edit::parser::parse_expr(src)
            .map_err(|e| e.to_string())?
            .into();
        e.evaluate(&base_context())
            .map_err(|e| describe_error(e.kind()))
    }

    #[test]
    fn functions() {
        assert_eq!(
            eval(r#"cidrhost("192.168.10.0/24", 11)"#),
            Ok(Value::from("192.168.10.11"))
        );
        assert_eq!(
            eval(r#"cidrhost("10.0.0.0/16", 300)"#),
            Ok(Value::from("10.0.1.44"))
        );
        assert!(eval(r#"cidrhost("10.0.0.0/30", 4)"#).is_err());
        assert_eq!(
            eval(r#"cidrsubnet("10.0.0.0/16", 8, 3)"#),
            Ok(Value::from("10.0.3.0/24"))
        );
        assert_eq!(
            eval(r#"format("web-%d-%s", 3, "x")"#),
            Ok(Value::from("web-3-x"))
        );
        assert_eq!(eval("length(range(5))"), Ok(Value::from(5)));
        assert!(eval("range(1e12)").is_err());
        assert_eq!(
            eval(r#"join(",", concat(["a"], ["b"]))"#),
            Ok(Value::from("a,b"))
        );
        assert_eq!(
            eval(r#"keys({b = 1, a = 2})"#),
            Ok(Value::from(vec!["a", "b"]))
        );
    }

    #[test]
    fn errors_name_types_not_values() {
        let err = eval(r#""canary-1" + 1"#).unwrap_err();
        assert!(!err.contains("canary"), "{err}");
        let err = eval(r#"length(true)"#).unwrap_err();
        assert!(err.contains("bool"), "{err}");
    }

    #[test]
    fn simple_values_resolve_as_the_evaluator_gives_them() {
        let mut vm = Map::new();
        vm.insert("id".to_string(), Value::from("web"));
        let vms: Map<String, Value> = [("web".to_string(), Value::Object(vm))]
            .into_iter()
            .collect();
        let lookup = |root: &str, name: &str| (root == "vm").then(|| vms.get(name)).flatten();
        let mut ctx = base_context();
        ctx.declare_var("vm", Value::Object(vms.clone()));
        for src in [
            r#"["aes256-sha256", 2, true, null]"#,
            "[vm.web, [vm.web.id]]",
            "vm.web.id",
            "1.5",
        ] {
            let e = compile(hcl_edit::parser::parse_expr(src).unwrap().into(), 0);
            let want = e.evaluate(&ctx).unwrap();
            assert_eq!(resolve_simple(&e, &lookup), Some(want), "{src}");
        }
        // Anything else is left to the evaluator.
        for src in [
            "[vm.web, 1 + 1]",
            "vm.db",
            r#""${vm.web.id}-x""#,
            "length([])",
        ] {
            let e = compile(hcl_edit::parser::parse_expr(src).unwrap().into(), 0);
            assert_eq!(resolve_simple(&e, &lookup), None, "{src}");
        }
    }

    #[test]
    fn references_with_spans() {
        let e = hcl_edit::parser::parse_expr(r#"[for v in var.list: "${v}-${local.x}"]"#).unwrap();
        let mut r = Refs::default();
        r.collect(Origin::file(0), &e);
        let roots: Vec<_> = r
            .refs
            .iter()
            .map(|r| (r.root.as_str(), r.path.join(".")))
            .collect();
        assert_eq!(
            roots,
            vec![("var", "list".to_string()), ("local", "x".to_string())]
        );
    }
}
