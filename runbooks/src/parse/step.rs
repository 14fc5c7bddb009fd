//! One `[[steps]]` table: its common fields (id, action, site, timeout, retries, when,
//! on_failure, repeatable, handler), the check that every other key is an argument of its
//! action, and the default site; the action's own arguments are read by `action`.
//!
//! Pure: reads spanned TOML values through [`Ctx`].

use tandem_core::config::HumanDuration;
use toml::de::{DeTable, DeValue};

use super::action::parse_action;
use super::reader::{get, join, Ctx, Value};
use crate::condition::Condition;
use crate::model::{
    ActionKind, OnFailure, Retries, SiteRef, Step, DEFAULT_TIMEOUT, MAX_BACKOFF, MAX_RETRIES,
};
use crate::source::suggest;
use crate::validate::ParsedStep;

/// The step fields every action accepts.
pub const STEP_FIELDS: [&str; 10] = [
    "id",
    "action",
    "site",
    "description",
    "timeout",
    "retries",
    "when",
    "on_failure",
    "repeatable",
    "handler",
];

/// The fields every step has, as read (each `None` when it had a problem, already reported).
struct Common {
    site_given: Option<String>,
    explicit_site: bool,
    description: Option<String>,
    timeout: Option<HumanDuration>,
    retries: Option<Retries>,
    when: Option<Condition>,
    when_ok: bool,
    on_failure: Option<OnFailure>,
    repeatable: Option<Option<bool>>,
    handler: Option<bool>,
    /// False when a field without a value of its own (site, description) had a problem.
    ok: bool,
}

/// Reads step `i` of the file; `None` when it has a problem (reported in `cx`).
pub(super) fn parse_step(cx: &mut Ctx<'_>, i: usize, item: &Value<'_>) -> Option<ParsedStep> {
    let path = format!("steps[{i}]");
    cx.note(&path, &item.span());
    let DeValue::Table(t) = item.get_ref() else {
        cx.wrong_type(&path, item, "a table: write [[steps]]");
        return None;
    };
    for (k, val) in t.iter() {
        cx.note(&join(&path, k.get_ref()), &val.span());
    }

    let id = step_id(cx, &path, item, t);
    let kind = step_kind(cx, &path, item, t);
    let common = common_fields(cx, &path, t);
    let mut ok = common.ok;

    let kind = kind?;
    ok &= arguments_known(cx, &path, kind, t);
    let action = parse_action(cx, &path, kind, t);

    let site = step_site(
        cx,
        &path,
        item,
        t,
        kind,
        common.site_given,
        common.explicit_site,
    )?;
    if kind.coordinator_only() && site != SiteRef::Coordinator {
        let span = t.get("site").map_or(item.span(), |v| v.span());
        cx.err(
            &format!("{path}.site"),
            &span,
            format!(
                "\"{kind}\" runs on the coordinator: remove `site` or write site = \"coordinator\""
            ),
        );
        ok = false;
    }

    let repeatable = common.repeatable?.unwrap_or(kind.default_repeatable());
    if !(ok && common.when_ok) {
        return None;
    }
    Some(ParsedStep {
        index: i,
        step: Step {
            id: id?,
            action: action?,
            site,
            description: common.description,
            timeout: common.timeout?,
            retries: common.retries?,
            when: common.when,
            on_failure: common.on_failure?,
            repeatable,
            handler: common.handler?,
        },
    })
}

fn valid_step_id(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && n.len() <= 63
}

/// The step's `id`.
fn step_id(cx: &mut Ctx<'_>, path: &str, item: &Value<'_>, t: &DeTable<'_>) -> Option<String> {
    match get(t, "id") {
        Some(v) => {
            let p = format!("{path}.id");
            cx.string(&p, v).and_then(|id| {
                if valid_step_id(&id) {
                    Some(id)
                } else {
                    cx.err(&p, &v.span(), format!("invalid step id \"{id}\": use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"));
                    None
                }
            })
        }
        None => {
            cx.err(
                &format!("{path}.id"),
                &item.span(),
                "missing `id`".to_string(),
            );
            None
        }
    }
}

/// The step's `action`, one of the built-in actions.
fn step_kind(
    cx: &mut Ctx<'_>,
    path: &str,
    item: &Value<'_>,
    t: &DeTable<'_>,
) -> Option<ActionKind> {
    let action_path = format!("{path}.action");
    match get(t, "action") {
        Some(v) => cx.string(&action_path, v).and_then(|name| {
            let kind = ActionKind::from_name(&name);
            if kind.is_none() {
                let hint = suggest(&name, ActionKind::ALL.map(ActionKind::as_str));
                cx.err(
                    &action_path,
                    &v.span(),
                    format!("unknown action \"{name}\"{hint}"),
                );
            }
            kind
        }),
        None => {
            cx.err(
                &action_path,
                &item.span(),
                format!(
                    "missing `action`: one of {}",
                    ActionKind::ALL.map(ActionKind::as_str).join(", ")
                ),
            );
            None
        }
    }
}

/// Reads the fields every step has, with their defaults.
fn common_fields(cx: &mut Ctx<'_>, path: &str, t: &DeTable<'_>) -> Common {
    let mut ok = true;
    let site_given = get(t, "site").and_then(|v| cx.nonempty(&format!("{path}.site"), v));
    let explicit_site = get(t, "site").is_some();
    if explicit_site && site_given.is_none() {
        ok = false;
    }
    let description = match get(t, "description") {
        Some(v) => {
            let d = cx.string(&format!("{path}.description"), v);
            ok &= d.is_some();
            d
        }
        None => None,
    };
    let timeout = match get(t, "timeout") {
        Some(v) => {
            let p = format!("{path}.timeout");
            match cx.duration(&p, v) {
                Some(d) if d.is_zero() => {
                    cx.err(&p, &v.span(), "timeout must be above zero".to_string());
                    None
                }
                d => d,
            }
        }
        None => Some(DEFAULT_TIMEOUT),
    };
    let retries = match get(t, "retries") {
        Some(v) => parse_retries(cx, &format!("{path}.retries"), v),
        None => Some(Retries::NONE),
    };
    let when = get(t, "when").and_then(|v| parse_when(cx, &format!("{path}.when"), v));
    let when_ok = get(t, "when").is_none() || when.is_some();
    let on_failure = match get(t, "on_failure") {
        Some(v) => parse_on_failure(cx, &format!("{path}.on_failure"), v),
        None => Some(OnFailure::Abort),
    };
    let repeatable = match get(t, "repeatable") {
        Some(v) => cx.boolean(&format!("{path}.repeatable"), v).map(Some),
        None => Some(None),
    };
    let handler = match get(t, "handler") {
        Some(v) => cx.boolean(&format!("{path}.handler"), v),
        None => Some(false),
    };
    Common {
        site_given,
        explicit_site,
        description,
        timeout,
        retries,
        when,
        when_ok,
        on_failure,
        repeatable,
        handler,
        ok,
    }
}

/// The `when` condition at `p`; a syntax error points inside the string.
fn parse_when(cx: &mut Ctx<'_>, p: &str, v: &Value<'_>) -> Option<Condition> {
    cx.string(p, v)
        .and_then(|text| match Condition::parse(&text) {
            Ok(c) => Some(c),
            Err(e) => {
                let chars = text[..e.offset.min(text.len())].chars().count();
                let d = cx
                    .map
                    .diagnostic_within(p, chars, format!("bad condition: {}", e.message));
                cx.diags.push(d);
                None
            }
        })
}

/// Reports every key that is neither a step field nor an argument of `kind`; false if any.
fn arguments_known(cx: &mut Ctx<'_>, path: &str, kind: ActionKind, t: &DeTable<'_>) -> bool {
    let mut ok = true;
    let allowed: Vec<&str> = STEP_FIELDS
        .iter()
        .copied()
        .chain(kind.arguments().iter().copied())
        .collect();
    for (k, _) in t.iter() {
        let key = k.get_ref().as_ref();
        if !allowed.contains(&key) {
            let args = kind.arguments();
            let takes = if args.is_empty() {
                "it takes no arguments".to_string()
            } else {
                format!("it takes {}", args.join(", "))
            };
            let hint = suggest(key, allowed.iter().copied());
            cx.err(
                &join(path, key),
                &k.span(),
                format!("unknown argument \"{key}\" for action \"{kind}\" ({takes}){hint}"),
            );
            ok = false;
        }
    }
    ok
}

/// Where the step runs: the `site` it names, else its action's default site; `None` when
/// the action has no default and the step names none.
fn step_site(
    cx: &mut Ctx<'_>,
    path: &str,
    item: &Value<'_>,
    t: &DeTable<'_>,
    kind: ActionKind,
    site_given: Option<String>,
    explicit_site: bool,
) -> Option<SiteRef> {
    match site_given {
        Some(s) => Some(SiteRef::from_text(&s)),
        None => match kind.default_site() {
            Some(s) => Some(s),
            None => {
                if !explicit_site {
                    cx.err(&format!("{path}.site"), &t.get("action").map_or(item.span(), |v| v.span()), format!("missing `site`: say where \"{kind}\" runs (primary, replica or a site name)"));
                }
                None
            }
        },
    }
}

/// The `retries` field: a count, or a table with `count`, `backoff` and `max_backoff`.
fn parse_retries(cx: &mut Ctx<'_>, path: &str, v: &Value<'_>) -> Option<Retries> {
    let count_of = |cx: &mut Ctx<'_>, p: &str, v: &Value<'_>| {
        cx.integer(p, v).and_then(|n| {
            if n < 0 || n > i64::from(MAX_RETRIES) {
                cx.err(p, &v.span(), format!("retries must be between 0 and {MAX_RETRIES}, got {n}: a step that needs more is broken, not unlucky"));
                None
            } else {
                u32::try_from(n).ok()
            }
        })
    };
    match v.get_ref() {
        DeValue::Integer(_) => count_of(cx, path, v).map(|count| Retries {
            count,
            ..Retries::NONE
        }),
        DeValue::Table(t) => {
            cx.unknown_keys(path, t, &["count", "backoff", "max_backoff"], "retries");
            let mut r = Retries::NONE;
            let mut ok = true;
            match get(t, "count") {
                Some(c) => match count_of(cx, &format!("{path}.count"), c) {
                    Some(n) => r.count = n,
                    None => ok = false,
                },
                None => {
                    cx.err(
                        &format!("{path}.count"),
                        &v.span(),
                        "missing `count`".to_string(),
                    );
                    ok = false;
                }
            }
            for (key, slot) in [
                ("backoff", &mut r.backoff),
                ("max_backoff", &mut r.max_backoff),
            ] {
                if let Some(d) = get(t, key) {
                    let p = format!("{path}.{key}");
                    match cx.duration(&p, d) {
                        Some(x) if x > MAX_BACKOFF => {
                            cx.err(
                                &p,
                                &d.span(),
                                format!("{key} must be at most {MAX_BACKOFF}"),
                            );
                            ok = false;
                        }
                        Some(x) => *slot = x,
                        None => ok = false,
                    }
                }
            }
            if get(t, "max_backoff").is_none() {
                r.max_backoff = r.max_backoff.max(r.backoff);
            }
            if ok && r.max_backoff < r.backoff {
                let span = get(t, "max_backoff").map_or(v.span(), |x| x.span());
                cx.err(
                    &format!("{path}.max_backoff"),
                    &span,
                    format!(
                        "max_backoff ({}) is below backoff ({})",
                        r.max_backoff, r.backoff
                    ),
                );
                ok = false;
            }
            ok.then_some(r)
        }
        _ => {
            cx.wrong_type(path, v, "a count or { count = N, backoff = \"5s\" }");
            None
        }
    }
}

/// The `on_failure` field: `"abort"`, `"continue"`, a list of step ids or `{ steps = [...] }`.
fn parse_on_failure(cx: &mut Ctx<'_>, path: &str, v: &Value<'_>) -> Option<OnFailure> {
    let list = |cx: &mut Ctx<'_>, p: &str, v: &Value<'_>| -> Option<OnFailure> {
        let DeValue::Array(items) = v.get_ref() else {
            cx.wrong_type(p, v, "a list of step ids");
            return None;
        };
        if items.is_empty() {
            cx.err(
                p,
                &v.span(),
                "name at least one step, or write on_failure = \"abort\"".to_string(),
            );
            return None;
        }
        let mut ids = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            cx.note(&ip, &item.span());
            ids.push(cx.string(&ip, item)?);
        }
        Some(OnFailure::Steps(ids))
    };
    match v.get_ref() {
        DeValue::String(s) => match s.as_ref() {
            "abort" => Some(OnFailure::Abort),
            "continue" => Some(OnFailure::Continue),
            other => {
                cx.err(path, &v.span(), format!("unknown on_failure \"{other}\": use \"abort\", \"continue\" or {{ steps = [\"id\", ...] }}"));
                None
            }
        },
        DeValue::Array(_) => list(cx, path, v),
        DeValue::Table(t) => {
            cx.unknown_keys(path, t, &["steps"], "on_failure");
            match get(t, "steps") {
                Some(s) => list(cx, &format!("{path}.steps"), s),
                None => {
                    cx.err(
                        &format!("{path}.steps"),
                        &v.span(),
                        "missing `steps`".to_string(),
                    );
                    None
                }
            }
        }
        _ => {
            cx.wrong_type(
                path,
                v,
                "\"abort\", \"continue\" or { steps = [\"id\", ...] }",
            );
            None
        }
    }
}
