//! The `[[parameters]]` tables: name, type, default and description of each declared
//! parameter, with duplicate and type-mismatch diagnostics.
//!
//! Pure: reads spanned TOML values through [`Ctx`].

use std::collections::BTreeMap;
use tandem_core::config::line_col;
use toml::de::{DeTable, DeValue};

use super::reader::{get, join, Ctx, Value};
use crate::model::{ParamType, ParamValue, Parameter};

const PARAM_FIELDS: [&str; 4] = ["name", "type", "default", "description"];

/// Reads the `parameters` list; a parameter with a problem is reported and left out.
pub(super) fn parse_parameters(cx: &mut Ctx<'_>, v: &Value<'_>) -> Vec<Parameter> {
    let DeValue::Array(items) = v.get_ref() else {
        cx.wrong_type("parameters", v, "a list of tables: write [[parameters]]");
        return Vec::new();
    };
    let mut out: Vec<Parameter> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("parameters[{i}]");
        cx.note(&path, &item.span());
        let DeValue::Table(t) = item.get_ref() else {
            cx.wrong_type(&path, item, "a table");
            continue;
        };
        cx.unknown_keys(&path, t, &PARAM_FIELDS, "a parameter");
        for (k, val) in t.iter() {
            cx.note(&join(&path, k.get_ref()), &val.span());
        }
        let name = param_name(cx, &path, item, t, &mut seen);
        let ty = param_type(cx, &path, item, t);
        let description = get(t, "description")
            .and_then(|v| cx.string(&format!("{path}.description"), v))
            .unwrap_or_default();
        let default = match (get(t, "default"), ty) {
            (Some(v), Some(ty)) => {
                let value = param_default(cx, &format!("{path}.default"), v, ty);
                if value.is_none() {
                    continue;
                }
                value
            }
            _ => None,
        };
        if let (Some(name), Some(ty)) = (name, ty) {
            out.push(Parameter {
                name,
                ty,
                default,
                description,
            });
        }
    }
    out
}

/// The parameter's `name`: valid, and not declared before (`seen` maps names to lines).
fn param_name(
    cx: &mut Ctx<'_>,
    path: &str,
    item: &Value<'_>,
    t: &DeTable<'_>,
    seen: &mut BTreeMap<String, usize>,
) -> Option<String> {
    match get(t, "name") {
        Some(v) => {
            let p = format!("{path}.name");
            cx.string(&p, v).and_then(|n| {
                if !valid_name(&n) {
                    cx.err(&p, &v.span(), format!("invalid parameter name \"{n}\": use letters, digits and '_', starting with a letter"));
                    return None;
                }
                let line = line_col(cx.text, v.span().start).0;
                if let Some(first) = seen.get(&n) {
                    cx.err(&p, &v.span(), format!("duplicate parameter \"{n}\" (first declared at line {first})"));
                    return None;
                }
                seen.insert(n.clone(), line);
                Some(n)
            })
        }
        None => {
            cx.err(
                &format!("{path}.name"),
                &item.span(),
                "missing `name`".to_string(),
            );
            None
        }
    }
}

/// The parameter's `type`.
fn param_type(
    cx: &mut Ctx<'_>,
    path: &str,
    item: &Value<'_>,
    t: &DeTable<'_>,
) -> Option<ParamType> {
    match get(t, "type") {
        Some(v) => {
            let p = format!("{path}.type");
            cx.string(&p, v).and_then(|s| {
                let ty = [
                    ParamType::String,
                    ParamType::Bool,
                    ParamType::Integer,
                    ParamType::Duration,
                ]
                .into_iter()
                .find(|t| t.as_str() == s);
                if ty.is_none() {
                    cx.err(
                        &p,
                        &v.span(),
                        format!("unknown type \"{s}\": use string, bool, integer or duration"),
                    );
                }
                ty
            })
        }
        None => {
            cx.err(
                &format!("{path}.type"),
                &item.span(),
                "missing `type`".to_string(),
            );
            None
        }
    }
}

/// The parameter's `default` at `p`, which must be a value of type `ty`.
fn param_default(cx: &mut Ctx<'_>, p: &str, v: &Value<'_>, ty: ParamType) -> Option<ParamValue> {
    match (ty, v.get_ref()) {
        (ParamType::String, DeValue::String(s)) => Some(ParamValue::String(s.to_string())),
        (ParamType::Bool, DeValue::Boolean(b)) => Some(ParamValue::Bool(*b)),
        (ParamType::Integer, DeValue::Integer(_)) => cx.integer(p, v).map(ParamValue::Integer),
        (ParamType::Duration, DeValue::String(_)) => cx.duration(p, v).map(ParamValue::Duration),
        _ => {
            cx.err(
                p,
                &v.span(),
                format!(
                    "default does not match the parameter's type ({ty}), found {}",
                    v.get_ref().type_str()
                ),
            );
            None
        }
    }
}

fn valid_name(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphabetic())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && n.len() <= 63
}
