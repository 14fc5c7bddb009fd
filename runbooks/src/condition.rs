//! The `when` condition language: a tiny, total expression language over the group's mode and
//! the run's parameters.
//!
//! ```text
//! expr    := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | primary
//! primary := "(" expr ")" | operand (("==" | "!=") operand)?
//! operand := variable | "string" | 'string' | integer | true | false
//! variable:= mode | group | primary | replica | epoch | param.NAME
//! ```
//! Evaluation never fails: values of different types are unequal, and a bare operand that is
//! not a boolean is false. [`Condition::check`] reports those cases before any run.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use tandem_core::config::Mode;
use tandem_core::ids::Epoch;

use crate::model::param::{ParamType, ParamValue, Parameter};

/// A parsed `when` condition, kept with its source text (which is how it serializes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    text: String,
    expr: Expr,
}

/// A syntax or type problem in a condition, at a byte offset of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionError {
    /// Byte offset in the condition text.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Compare {
        left: Operand,
        equal: bool,
        right: Operand,
    },
    Bare(Operand),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Operand {
    offset: usize,
    term: Term,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Mode,
    Group,
    Primary,
    Replica,
    Epoch,
    Param(String),
    Str(String),
    Int(i64),
    Bool(bool),
}

/// What a condition may look at.
#[derive(Debug, Clone, Copy)]
pub struct ConditionEnv<'a> {
    /// The group's replication mode.
    pub mode: Mode,
    /// The group's name.
    pub group: &'a str,
    /// The primary site.
    pub primary: &'a str,
    /// The replica site.
    pub replica: &'a str,
    /// The group's epoch when the plan is made.
    pub epoch: Epoch,
    /// Parameter values (defaults filled in).
    pub params: &'a BTreeMap<String, ParamValue>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Missing,
}

/// Static type of an operand, for [`Condition::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str,
    Int,
    Bool,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Str => "a string",
            Ty::Int => "an integer",
            Ty::Bool => "a boolean",
        }
    }
}

impl Condition {
    /// Parses condition `text`.
    ///
    /// # Errors
    /// The first syntax error, at its byte offset.
    pub fn parse(text: &str) -> Result<Condition, ConditionError> {
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            end: text.len(),
        };
        let expr = p.expr()?;
        if let Some((offset, tok)) = p.tokens.get(p.pos) {
            return Err(ConditionError {
                offset: *offset,
                message: format!("unexpected {} after the end of the condition", tok.show()),
            });
        }
        Ok(Condition {
            text: text.to_string(),
            expr,
        })
    }

    /// The source text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every parameter the condition refers to.
    pub fn parameters(&self) -> Vec<&str> {
        let mut out = Vec::new();
        fn walk<'a>(e: &'a Expr, out: &mut Vec<&'a str>) {
            let mut op = |o: &'a Operand| {
                if let Term::Param(p) = &o.term {
                    out.push(p.as_str());
                }
            };
            match e {
                Expr::Or(a, b) | Expr::And(a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                Expr::Not(a) => walk(a, out),
                Expr::Compare { left, right, .. } => {
                    op(left);
                    op(right);
                }
                Expr::Bare(o) => op(o),
            }
        }
        walk(&self.expr, &mut out);
        out
    }

    /// Checks the condition against the declared parameters: unknown parameters, comparisons
    /// of different types, bare operands that are not booleans.
    pub fn check(&self, params: &[Parameter]) -> Vec<ConditionError> {
        let mut errors = Vec::new();
        check_expr(&self.expr, params, &mut errors);
        errors
    }

    /// Evaluates the condition. Total: never fails.
    pub fn eval(&self, env: &ConditionEnv<'_>) -> bool {
        eval_expr(&self.expr, env)
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Condition, D::Error> {
        let text = String::deserialize(d)?;
        Condition::parse(&text).map_err(|e| {
            serde::de::Error::custom(format!("condition at offset {}: {}", e.offset, e.message))
        })
    }
}

fn operand_ty(o: &Operand, params: &[Parameter]) -> Result<Ty, ConditionError> {
    Ok(match &o.term {
        Term::Mode | Term::Group | Term::Primary | Term::Replica | Term::Str(_) => Ty::Str,
        Term::Epoch | Term::Int(_) => Ty::Int,
        Term::Bool(_) => Ty::Bool,
        Term::Param(name) => match params.iter().find(|p| &p.name == name) {
            None => {
                return Err(ConditionError {
                    offset: o.offset,
                    message: format!(
                        "unknown parameter \"{name}\": declare it under [[parameters]]"
                    ),
                })
            }
            Some(p) => match p.ty {
                ParamType::String | ParamType::Duration => Ty::Str,
                ParamType::Integer => Ty::Int,
                ParamType::Bool => Ty::Bool,
            },
        },
    })
}

fn check_expr(e: &Expr, params: &[Parameter], errors: &mut Vec<ConditionError>) {
    match e {
        Expr::Or(a, b) | Expr::And(a, b) => {
            check_expr(a, params, errors);
            check_expr(b, params, errors);
        }
        Expr::Not(a) => check_expr(a, params, errors),
        Expr::Compare { left, right, .. } => {
            match (operand_ty(left, params), operand_ty(right, params)) {
                (Ok(l), Ok(r)) if l != r => errors.push(ConditionError {
                    offset: right.offset,
                    message: format!("cannot compare {} with {}", l.name(), r.name()),
                }),
                (Ok(_), Ok(_)) => {
                    if let (Term::Mode, Term::Str(s)) | (Term::Str(s), Term::Mode) =
                        (&left.term, &right.term)
                    {
                        if s != "sync" && s != "async" {
                            errors.push(ConditionError {
                                offset: if matches!(left.term, Term::Str(_)) {
                                    left.offset
                                } else {
                                    right.offset
                                },
                                message: format!("mode is \"sync\" or \"async\", never \"{s}\""),
                            });
                        }
                    }
                }
                (l, r) => errors.extend(l.err().into_iter().chain(r.err())),
            }
        }
        Expr::Bare(o) => match operand_ty(o, params) {
            Ok(Ty::Bool) => {}
            Ok(t) => errors.push(ConditionError {
                offset: o.offset,
                message: format!("{} is not a condition: compare it with == or !=", t.name()),
            }),
            Err(err) => errors.push(err),
        },
    }
}

fn value(o: &Operand, env: &ConditionEnv<'_>) -> Value {
    match &o.term {
        Term::Mode => Value::Str(env.mode.to_string()),
        Term::Group => Value::Str(env.group.to_string()),
        Term::Primary => Value::Str(env.primary.to_string()),
        Term::Replica => Value::Str(env.replica.to_string()),
        Term::Epoch => Value::Int(i64::try_from(env.epoch.0).unwrap_or(i64::MAX)),
        Term::Param(name) => match env.params.get(name) {
            None => Value::Missing,
            Some(ParamValue::Bool(b)) => Value::Bool(*b),
            Some(ParamValue::Integer(i)) => Value::Int(*i),
            Some(ParamValue::String(s)) => Value::Str(s.clone()),
            Some(ParamValue::Duration(d)) => Value::Str(d.to_string()),
        },
        Term::Str(s) => Value::Str(s.clone()),
        Term::Int(i) => Value::Int(*i),
        Term::Bool(b) => Value::Bool(*b),
    }
}

fn eval_expr(e: &Expr, env: &ConditionEnv<'_>) -> bool {
    match e {
        Expr::Or(a, b) => eval_expr(a, env) || eval_expr(b, env),
        Expr::And(a, b) => eval_expr(a, env) && eval_expr(b, env),
        Expr::Not(a) => !eval_expr(a, env),
        Expr::Compare { left, equal, right } => {
            let (l, r) = (value(left, env), value(right, env));
            let same = l != Value::Missing && l == r;
            same == *equal
        }
        Expr::Bare(o) => value(o, env) == Value::Bool(true),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Eq,
    Ne,
    Open,
    Close,
}

impl Tok {
    fn show(&self) -> String {
        match self {
            Tok::Ident(s) => format!("\"{s}\""),
            Tok::Str(s) => format!("string \"{s}\""),
            Tok::Int(i) => format!("number {i}"),
            Tok::Eq => "\"==\"".to_string(),
            Tok::Ne => "\"!=\"".to_string(),
            Tok::Open => "\"(\"".to_string(),
            Tok::Close => "\")\"".to_string(),
        }
    }
}

fn lex(text: &str) -> Result<Vec<(usize, Tok)>, ConditionError> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let err = |offset: usize, message: String| ConditionError { offset, message };
        match c {
            c if c.is_whitespace() => {}
            '(' => out.push((i, Tok::Open)),
            ')' => out.push((i, Tok::Close)),
            '=' | '!' => {
                if chars.peek().map(|(_, c)| *c) == Some('=') {
                    chars.next();
                    out.push((i, if c == '=' { Tok::Eq } else { Tok::Ne }));
                } else if c == '=' {
                    return Err(err(i, "use \"==\" to compare".to_string()));
                } else {
                    return Err(err(i, "use \"not\" to negate".to_string()));
                }
            }
            '"' | '\'' => {
                let mut s = String::new();
                let mut closed = false;
                for (_, d) in chars.by_ref() {
                    if d == c {
                        closed = true;
                        break;
                    }
                    s.push(d);
                }
                if !closed {
                    return Err(err(i, "unterminated string".to_string()));
                }
                out.push((i, Tok::Str(s)));
            }
            c if c.is_ascii_digit() || c == '-' => {
                let mut end = i + c.len_utf8();
                while let Some((j, d)) = chars.peek().copied() {
                    if d.is_ascii_digit() || d == '_' {
                        chars.next();
                        end = j + 1;
                    } else {
                        break;
                    }
                }
                let digits: String = text[i..end].chars().filter(|c| *c != '_').collect();
                let n = digits
                    .parse::<i64>()
                    .map_err(|_| err(i, format!("bad number \"{}\"", &text[i..end])))?;
                out.push((i, Tok::Int(n)));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = i + 1;
                while let Some((j, d)) = chars.peek().copied() {
                    if d.is_ascii_alphanumeric() || d == '_' || d == '.' || d == '-' {
                        chars.next();
                        end = j + 1;
                    } else {
                        break;
                    }
                }
                out.push((i, Tok::Ident(text[i..end].to_string())));
            }
            other => return Err(err(i, format!("unexpected character '{other}'"))),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn offset(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(o, _)| *o)
    }

    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(w)) if w == word) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<Expr, ConditionError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ConditionError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ConditionError> {
        if self.keyword("not") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Tok::Open) {
            let open = self.offset();
            self.pos += 1;
            let e = self.expr()?;
            if self.peek() != Some(&Tok::Close) {
                return Err(ConditionError {
                    offset: open,
                    message: "unclosed \"(\"".to_string(),
                });
            }
            self.pos += 1;
            return Ok(e);
        }
        let left = self.operand()?;
        let equal = match self.peek() {
            Some(Tok::Eq) => true,
            Some(Tok::Ne) => false,
            _ => return Ok(Expr::Bare(left)),
        };
        self.pos += 1;
        let right = self.operand()?;
        Ok(Expr::Compare { left, equal, right })
    }

    fn operand(&mut self) -> Result<Operand, ConditionError> {
        let offset = self.offset();
        let Some(tok) = self.tokens.get(self.pos).map(|(_, t)| t.clone()) else {
            return Err(ConditionError {
                offset,
                message: "condition ends too early: expected a value".to_string(),
            });
        };
        let term = match tok {
            Tok::Str(s) => Term::Str(s),
            Tok::Int(i) => Term::Int(i),
            Tok::Ident(word) => match word.as_str() {
                "true" => Term::Bool(true),
                "false" => Term::Bool(false),
                "mode" => Term::Mode,
                "group" => Term::Group,
                "primary" => Term::Primary,
                "replica" => Term::Replica,
                "epoch" => Term::Epoch,
                w => match w.strip_prefix("param.") {
                    Some(name) if !name.is_empty() && !name.contains('.') => {
                        Term::Param(name.to_string())
                    }
                    _ => {
                        return Err(ConditionError {
                            offset,
                            message: format!(
                                "unknown name \"{w}\": use mode, group, primary, replica, \
                                 epoch or param.NAME"
                            ),
                        })
                    }
                },
            },
            other => {
                return Err(ConditionError {
                    offset,
                    message: format!("expected a value, found {}", other.show()),
                })
            }
        };
        self.pos += 1;
        Ok(Operand { offset, term })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(mode: Mode, params: &'a BTreeMap<String, ParamValue>) -> ConditionEnv<'a> {
        ConditionEnv {
            mode,
            group: "vol",
            primary: "hanoi",
            replica: "hcm",
            epoch: Epoch(7),
            params,
        }
    }

    fn param(name: &str, ty: ParamType) -> Parameter {
        Parameter {
            name: name.to_string(),
            ty,
            default: None,
            description: String::new(),
        }
    }

    #[test]
    fn mode_comparison_follows_the_group_mode() {
        let c = Condition::parse(r#"mode == "sync""#).unwrap();
        let p = BTreeMap::new();
        assert!(c.eval(&env(Mode::Sync, &p)));
        assert!(!c.eval(&env(Mode::Async, &p)));
    }

    #[test]
    fn and_binds_tighter_than_or_and_not_negates() {
        let c = Condition::parse(r#"mode == "async" or param.force and not param.dry"#).unwrap();
        let mut p = BTreeMap::new();
        p.insert("force".to_string(), ParamValue::Bool(true));
        p.insert("dry".to_string(), ParamValue::Bool(false));
        assert!(c.eval(&env(Mode::Sync, &p)));
        p.insert("dry".to_string(), ParamValue::Bool(true));
        assert!(!c.eval(&env(Mode::Sync, &p)));
        assert!(c.eval(&env(Mode::Async, &p)));
        let c = Condition::parse(r#"(mode == "async" or param.force) and epoch != 7"#).unwrap();
        assert!(!c.eval(&env(Mode::Async, &p)));
    }

    #[test]
    fn missing_parameter_is_unequal_to_everything() {
        let c = Condition::parse("param.skip != true").unwrap();
        let p = BTreeMap::new();
        assert!(c.eval(&env(Mode::Sync, &p)));
        let c = Condition::parse("param.skip == true").unwrap();
        assert!(!c.eval(&env(Mode::Sync, &p)));
    }

    #[test]
    fn syntax_errors_point_at_the_offending_token() {
        let cases = [
            ("mode = \"sync\"", 5, "=="),
            ("mode == ", 8, "ends too early"),
            ("(mode == \"sync\"", 0, "unclosed"),
            ("mod == \"sync\"", 0, "unknown name"),
            ("mode == \"sync\" param.x", 15, "unexpected"),
            ("mode == \"sync", 8, "unterminated"),
        ];
        for (i, (text, offset, msg)) in cases.iter().enumerate() {
            let e = Condition::parse(text).unwrap_err();
            assert_eq!(e.offset, *offset, "#{i}: {text}: {e:?}");
            assert!(e.message.contains(msg), "#{i}: {text}: {e:?}");
        }
    }

    #[test]
    fn check_reports_unknown_parameters_and_type_mismatches() {
        let params = [
            param("skip", ParamType::Bool),
            param("n", ParamType::Integer),
        ];
        let c = Condition::parse(r#"param.skip == "yes" or param.other or param.n"#).unwrap();
        let errs = c.check(&params);
        let msgs: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(errs.len(), 3, "{msgs:?}");
        assert!(msgs[0].contains("cannot compare a boolean with a string"));
        assert!(msgs[1].contains("unknown parameter \"other\""));
        assert!(msgs[2].contains("not a condition"));
        let c = Condition::parse(r#"mode == "synch""#).unwrap();
        assert!(c.check(&params)[0].message.contains("never \"synch\""));
        assert!(Condition::parse("param.n == 3 and not param.skip")
            .unwrap()
            .check(&params)
            .is_empty());
    }

    #[test]
    fn condition_serializes_as_its_text() {
        let c = Condition::parse("param.skip != true").unwrap();
        let v = toml::Value::try_from(TomlWrap { c: c.clone() }).unwrap();
        assert_eq!(
            v.get("c").and_then(|v| v.as_str()),
            Some("param.skip != true")
        );
        let back: TomlWrap = v.try_into().unwrap();
        assert_eq!(back.c, c);
    }

    #[derive(Serialize, Deserialize)]
    struct TomlWrap {
        c: Condition,
    }
}
