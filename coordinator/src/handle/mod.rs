//! The coordinator's shared handle, below both the process (`server`) and the runbook
//! executor (`runs`): the [`Coordinator`] (propose, read, the leader, the network), the
//! leader's live figures from heartbeats ([`live`], pure) and the table of run drivers.
//! Both floors above stand on it; it imports neither.
//!
//! - [`coordinator`]: the handle: propose (here or through the leader), read the state.
//! - [`live`]: the leader's live (not replicated) figures from heartbeats (pure).
//! - [`drivers`]: the driver tasks of the runs this node drives while it leads.
//! - [`audit`]: reading the audit chain (tail, store, gap) and what the back-fill needs.

pub mod audit;
pub mod coordinator;
pub mod drivers;
pub mod live;

pub use self::coordinator::{Coordinator, CoordinatorSm};
pub use self::drivers::Drivers;
