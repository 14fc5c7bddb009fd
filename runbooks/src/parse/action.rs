//! The arguments of a step's action, one reader per action kind (`recover` needs exactly one
//! point, `http` a known method, `check` a command or a URL, ...). Unknown keys were
//! reported by the step reader already.
//!
//! Pure: reads spanned TOML values through [`Ctx`].

use std::ops::Range;
use toml::de::DeTable;

use super::reader::{get, Ctx, Value};
use crate::model::{Action, ActionKind, Probe, RecoverPoint, DEFAULT_CHECK_INTERVAL};

/// The HTTP methods an `http` step may use.
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

/// The arguments of one step's action: the step table, its path, and where its `action` key
/// sits (where a missing argument is reported).
struct Args<'a, 'i> {
    path: &'a str,
    kind: ActionKind,
    t: &'a DeTable<'i>,
    action_span: Range<usize>,
}

impl<'i> Args<'_, 'i> {
    /// Where argument `name` sits, or the `action` key when the step has no such argument.
    fn span_of(&self, name: &str) -> Range<usize> {
        get(self.t, name).map_or(self.action_span.clone(), |v| v.span())
    }

    /// Reads the argument `name` with `read`; reports it missing when absent.
    fn required<'c, T>(
        &self,
        cx: &mut Ctx<'c>,
        name: &str,
        read: impl FnOnce(&mut Ctx<'c>, &str, &Value<'i>) -> Option<T>,
    ) -> Option<T> {
        match get(self.t, name) {
            Some(v) => read(cx, &format!("{}.{name}", self.path), v),
            None => {
                cx.err(
                    &format!("{}.{name}", self.path),
                    &self.action_span,
                    format!("missing argument `{name}` for action \"{}\"", self.kind),
                );
                None
            }
        }
    }

    /// Reads the argument `name` with `read` if present: `Some(None)` when absent, `None`
    /// when present and wrong (reported).
    fn optional<'c, T>(
        &self,
        cx: &mut Ctx<'c>,
        name: &str,
        read: impl FnOnce(&mut Ctx<'c>, &str, &Value<'i>) -> Option<T>,
    ) -> Option<Option<T>> {
        match get(self.t, name) {
            Some(v) => read(cx, &format!("{}.{name}", self.path), v).map(Some),
            None => Some(None),
        }
    }
}

/// Reads the action's arguments from the step table at `path` (unknown keys were reported
/// already); `None` when one has a problem (reported in `cx`).
pub(super) fn parse_action(
    cx: &mut Ctx<'_>,
    path: &str,
    kind: ActionKind,
    t: &DeTable<'_>,
) -> Option<Action> {
    let a = Args {
        path,
        kind,
        t,
        action_span: t.get("action").map_or(0..0, |v| v.span()),
    };
    Some(match kind {
        ActionKind::Fence => Action::Fence,
        ActionKind::PauseReplication => Action::PauseReplication,
        ActionKind::ResumeReplication => Action::ResumeReplication,
        ActionKind::Promote => Action::Promote,
        ActionKind::Demote => Action::Demote,
        ActionKind::Reverse => Action::Reverse,
        ActionKind::Verify => Action::Verify,
        ActionKind::WaitReplicated => wait_replicated(cx, &a)?,
        ActionKind::Snapshot => Action::Snapshot {
            name: a.required(cx, "name", Ctx::nonempty)?,
        },
        ActionKind::Recover => recover(cx, &a)?,
        ActionKind::Exec => {
            let command = a.required(cx, "command", Ctx::command);
            let env = a.optional(cx, "env", Ctx::string_map)?;
            Action::Exec {
                command: command?,
                env: env.unwrap_or_default(),
            }
        }
        ActionKind::Http => http(cx, &a)?,
        ActionKind::Approve => Action::Approve {
            prompt: a.required(cx, "prompt", Ctx::nonempty)?,
        },
        ActionKind::Sleep => Action::Sleep {
            duration: a.required(cx, "duration", Ctx::duration)?,
        },
        ActionKind::Notify => {
            let message = a.required(cx, "message", Ctx::nonempty);
            let channel = a.optional(cx, "channel", Ctx::nonempty)?;
            Action::Notify {
                message: message?,
                channel,
            }
        }
        ActionKind::Check => check(cx, &a)?,
    })
}

/// `wait_replicated`: `max_lag` (0 when absent).
fn wait_replicated(cx: &mut Ctx<'_>, a: &Args<'_, '_>) -> Option<Action> {
    let max_lag = match get(a.t, "max_lag") {
        Some(v) => cx
            .bounded(&format!("{}.max_lag", a.path), v, 0, i64::MAX)
            .and_then(|n| u64::try_from(n).ok())?,
        None => 0,
    };
    Some(Action::WaitReplicated { max_lag })
}

/// `recover`: a `name` and exactly one of `checkpoint` or `ago`.
fn recover(cx: &mut Ctx<'_>, a: &Args<'_, '_>) -> Option<Action> {
    let name = a.required(cx, "name", Ctx::nonempty);
    let checkpoint = a.optional(cx, "checkpoint", Ctx::nonempty)?;
    let ago = a.optional(cx, "ago", Ctx::duration)?;
    let point = match (checkpoint, ago) {
        (Some(tag), None) => RecoverPoint::Checkpoint(tag),
        (None, Some(d)) => RecoverPoint::Ago(d),
        (c, _) => {
            let span = if c.is_some() {
                a.span_of("ago")
            } else {
                a.action_span.clone()
            };
            cx.err(
                &format!("{}.checkpoint", a.path),
                &span,
                "action \"recover\" needs exactly one of `checkpoint = \"TAG\"` or `ago = \"10m\"`"
                    .to_string(),
            );
            return None;
        }
    };
    Some(Action::Recover { name: name?, point })
}

/// `http`: a `url`, a known `method` (`POST` by default), optional body, headers and status.
fn http(cx: &mut Ctx<'_>, a: &Args<'_, '_>) -> Option<Action> {
    let url = a.required(cx, "url", Ctx::nonempty);
    let method = a.optional(cx, "method", Ctx::string)?;
    let body = a.optional(cx, "body", Ctx::string)?;
    let headers = a.optional(cx, "headers", Ctx::string_map)?;
    let expect_status = a.optional(cx, "expect_status", Ctx::status)?;
    let method = method.unwrap_or_else(|| "POST".to_string());
    if !METHODS.contains(&method.as_str()) {
        cx.err(
            &format!("{}.method", a.path),
            &a.span_of("method"),
            format!("unknown method \"{method}\": use {}", METHODS.join(", ")),
        );
        return None;
    }
    Some(Action::Http {
        url: url?,
        method,
        body,
        headers: headers.unwrap_or_default(),
        expect_status,
    })
}

/// `check`: a probe (a `command` with its `env`, or a `url` with its `expect_status`) and
/// the `interval` between probes.
fn check(cx: &mut Ctx<'_>, a: &Args<'_, '_>) -> Option<Action> {
    let command = a.optional(cx, "command", Ctx::command)?;
    let env = a.optional(cx, "env", Ctx::string_map)?;
    let url = a.optional(cx, "url", Ctx::nonempty)?;
    let expect_status = a.optional(cx, "expect_status", Ctx::status)?;
    let interval = a
        .optional(cx, "interval", Ctx::duration)?
        .unwrap_or(DEFAULT_CHECK_INTERVAL);
    let probe = match (command, url) {
        (Some(command), None) => {
            if expect_status.is_some() {
                cx.err(
                    &format!("{}.expect_status", a.path),
                    &a.span_of("expect_status"),
                    "`expect_status` goes with `url`, not `command`".to_string(),
                );
                return None;
            }
            Probe::Command {
                command,
                env: env.unwrap_or_default(),
            }
        }
        (None, Some(url)) => {
            if env.is_some() {
                cx.err(
                    &format!("{}.env", a.path),
                    &a.span_of("env"),
                    "`env` goes with `command`, not `url`".to_string(),
                );
                return None;
            }
            Probe::Http { url, expect_status }
        }
        (Some(_), Some(_)) => {
            cx.err(
                &format!("{}.url", a.path),
                &a.span_of("url"),
                "a check probes a `command` or a `url`, not both".to_string(),
            );
            return None;
        }
        (None, None) => {
            cx.err(
                &format!("{}.command", a.path),
                &a.action_span,
                "missing argument `command` or `url` for action \"check\"".to_string(),
            );
            return None;
        }
    };
    Some(Action::Check { probe, interval })
}
