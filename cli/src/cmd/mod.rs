//! One module per subcommand, each with `run(args) -> Result<()>`.

pub mod bench;
pub mod chaos;
pub mod config;
pub mod demo;
pub mod evidence;
pub mod local;
pub mod node;
pub mod ops;
pub mod probe;
pub mod runbook;
pub mod runs;
pub mod status;
pub mod verify;
