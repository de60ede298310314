//! Variable type constraints (`string`, `number`, `bool`, `list(T)`, `set(T)`, `map(T)`,
//! `object({...})`, `tuple([...])`, `any`) and conversion of values to them.

use super::eval::type_name;
use hcl::expr::{Expression, ObjectKey};
use hcl::{Map, Value};

/// A type constraint.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum VarType {
    Any,
    String,
    Number,
    Bool,
    List(Box<VarType>),
    Set(Box<VarType>),
    Map(Box<VarType>),
    Object(Vec<(String, VarType)>),
    Tuple(Vec<VarType>),
}

impl VarType {
    /// Reads a type expression. The error says what is wrong.
    pub fn parse(expr: &Expression) -> Result<VarType, String> {
        match expr {
            Expression::Variable(v) => match v.as_str() {
                "any" => Ok(VarType::Any),
                "string" => Ok(VarType::String),
                "number" => Ok(VarType::Number),
                "bool" => Ok(VarType::Bool),
                other => Err(format!("unknown type `{other}`")),
            },
            Expression::FuncCall(f) => {
                let name = f.name.name.as_str();
                let args: Vec<&Expression> = f.args.iter().collect();
                let one = || -> Result<Box<VarType>, String> {
                    match args.as_slice() {
                        [a] => Ok(Box::new(VarType::parse(a)?)),
                        _ => Err(format!("`{name}(...)` takes one element type")),
                    }
                };
                match name {
                    "list" => Ok(VarType::List(one()?)),
                    "set" => Ok(VarType::Set(one()?)),
                    "map" => Ok(VarType::Map(one()?)),
                    "object" => match args.as_slice() {
                        [Expression::Object(o)] => {
                            let mut fields = Vec::new();
                            for (k, v) in o.iter() {
                                let key = match k {
                                    ObjectKey::Identifier(i) => i.as_str().to_string(),
                                    ObjectKey::Expression(Expression::String(s)) => s.as_str().to_string(),
                                    ObjectKey::Expression(Expression::Variable(i)) => i.as_str().to_string(),
                                    _ => return Err("object attribute names must be names".into()),
                                };
                                fields.push((key, VarType::parse(v)?));
                            }
                            Ok(VarType::Object(fields))
                        }
                        _ => Err("`object(...)` takes `{ name = type, ... }`".into()),
                    },
                    "tuple" => match args.as_slice() {
                        [Expression::Array(a)] => Ok(VarType::Tuple(
                            a.iter().map(VarType::parse).collect::<Result<_, _>>()?,
                        )),
                        _ => Err("`tuple(...)` takes `[type, ...]`".into()),
                    },
                    other => Err(format!("unknown type constructor `{other}`")),
                }
            }
            _ => Err("a type is `string`, `number`, `bool`, `any`, or `list(T)`, `set(T)`, `map(T)`, `object({...})`, `tuple([...])`".into()),
        }
    }

    /// Whether a value given as text on the command line or in the environment is taken as
    /// a plain string (otherwise it is parsed as an HCL expression).
    pub fn takes_raw_string(&self) -> bool {
        matches!(self, VarType::String | VarType::Any)
    }

    /// Converts `v` to this type the way Terraform does (numbers and bools from strings and
    /// back). The error names types only.
    pub fn convert(&self, v: Value) -> Result<Value, String> {
        self.convert_at(v, 0)
    }

    fn convert_at(&self, v: Value, depth: usize) -> Result<Value, String> {
        if depth > 32 {
            return Err("the value is nested too deeply".into());
        }
        if v.is_null() {
            return Ok(v);
        }
        match (self, v) {
            (VarType::Any, v) => Ok(v),
            (VarType::String, Value::String(s)) => Ok(Value::String(s)),
            (VarType::String, Value::Number(n)) => Ok(Value::String(n.to_string())),
            (VarType::String, Value::Bool(b)) => Ok(Value::String(b.to_string())),
            (VarType::Number, Value::Number(n)) => Ok(Value::Number(n)),
            (VarType::Number, Value::String(s)) => {
                let f: f64 = s
                    .trim()
                    .parse()
                    .map_err(|_| "expected a number, found a string that is not one".to_string())?;
                if !f.is_finite() {
                    return Err("expected a finite number".into());
                }
                Ok(if f.fract() == 0.0 && f.abs() < 9e15 {
                    Value::from(f as i64)
                } else {
                    hcl::Number::from_f64(f).map_or(Value::Null, Value::Number)
                })
            }
            (VarType::Bool, Value::Bool(b)) => Ok(Value::Bool(b)),
            (VarType::Bool, Value::String(s)) if s == "true" || s == "false" => {
                Ok(Value::Bool(s == "true"))
            }
            (VarType::List(t) | VarType::Set(t), Value::Array(a)) => {
                let mut out = Vec::with_capacity(a.len());
                for x in a {
                    let x = t.convert_at(x, depth + 1)?;
                    if matches!(self, VarType::Set(_)) && out.contains(&x) {
                        continue;
                    }
                    out.push(x);
                }
                Ok(Value::Array(out))
            }
            (VarType::Map(t), Value::Object(o)) => {
                let mut out = Map::new();
                for (k, x) in o {
                    out.insert(k, t.convert_at(x, depth + 1)?);
                }
                Ok(Value::Object(out))
            }
            (VarType::Object(fields), Value::Object(mut o)) => {
                let mut out = Map::new();
                for (name, t) in fields {
                    let x = o
                        .shift_remove(name)
                        .ok_or_else(|| format!("attribute `{name}` is required"))?;
                    out.insert(name.clone(), t.convert_at(x, depth + 1)?);
                }
                Ok(Value::Object(out))
            }
            (VarType::Tuple(types), Value::Array(a)) => {
                if a.len() != types.len() {
                    return Err(format!(
                        "expected {} elements, found {}",
                        types.len(),
                        a.len()
                    ));
                }
                let mut out = Vec::with_capacity(a.len());
                for (t, x) in types.iter().zip(a) {
                    out.push(t.convert_at(x, depth + 1)?);
                }
                Ok(Value::Array(out))
            }
            (t, v) => Err(format!(
                "expected {}, found a {}",
                t.describe(),
                type_name(&v)
            )),
        }
    }

    /// The type as written.
    pub fn describe(&self) -> String {
        match self {
            VarType::Any => "any".into(),
            VarType::String => "string".into(),
            VarType::Number => "number".into(),
            VarType::Bool => "bool".into(),
            VarType::List(t) => format!("list({})", t.describe()),
            VarType::Set(t) => format!("set({})", t.describe()),
            VarType::Map(t) => format!("map({})", t.describe()),
            VarType::Object(f) => format!(
                "object({{{}}})",
                f.iter()
                    .map(|(k, t)| format!("{k} = {}", t.describe()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            VarType::Tuple(t) => format!(
                "tuple([{}])",
                t.iter()
                    .map(VarType::describe)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(s: &str) -> VarType {
        VarType::parse(&Expression::from(hcl_edit::parser::parse_expr(s).unwrap())).unwrap()
    }

    #[test]
    fn parses_types() {
        assert_eq!(ty("string"), VarType::String);
        assert_eq!(ty("list(number)"), VarType::List(Box::new(VarType::Number)));
        assert_eq!(
            ty("map(object({a = string}))").describe(),
            "map(object({a = string}))"
        );
        assert!(VarType::parse(&Expression::from(
            hcl_edit::parser::parse_expr("strng").unwrap()
        ))
        .is_err());
    }

    #[test]
    fn converts_like_terraform() {
        assert_eq!(ty("number").convert(Value::from("42")), Ok(Value::from(42)));
        assert_eq!(
            ty("bool").convert(Value::from("true")),
            Ok(Value::Bool(true))
        );
        assert_eq!(ty("string").convert(Value::from(3)), Ok(Value::from("3")));
        assert!(ty("number")
            .convert(Value::from("secret-canary"))
            .unwrap_err()
            .find("canary")
            .is_none());
        assert_eq!(
            ty("set(string)").convert(Value::from(vec!["a", "a", "b"])),
            Ok(Value::from(vec!["a", "b"]))
        );
    }
}
