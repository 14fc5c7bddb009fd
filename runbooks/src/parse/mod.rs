//! Parsing runbook TOML into a [`Runbook`](crate::model::Runbook), every problem located as
//! `file:line:column`.
//!
//! The document is walked by hand over `toml`'s spanned tables rather than through serde, so
//! that each problem (an unknown action, a missing argument, a bad duration) points at the
//! exact key or value, and so that all problems are reported at once.
//!
//! | room | reads |
//! | --- | --- |
//! | `document` | the file (the crate's only I/O) and its root fields; runs the whole-runbook checks of [`crate::validate`] |
//! | `params` | the `[[parameters]]` tables |
//! | `step` | one `[[steps]]` table: its common fields, unknown keys, default site |
//! | `action` | the arguments of a step's action, one reader per action kind |
//! | `reader` | typed readers over one spanned value, each reporting a located diagnostic |

mod action;
mod document;
mod params;
mod reader;
mod step;

pub use self::document::runbook_hash;
pub use self::step::STEP_FIELDS;
pub use crate::source::SourceMap;
