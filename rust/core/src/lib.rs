//! turnloom-core: the data structures behind turnloom, free of Python.
//!
//! * [`forest`] stores every conversation as a root-to-leaf path in an arena of
//!   message nodes, with per-view token segments in one contiguous token arena.
//! * [`radix`] models a backend's radix prefix cache (SGLang RadixAttention):
//!   a token radix tree with a token capacity, LRU leaf eviction and pinning.
//! * [`scheduler`] orders ready generation jobs for cache reuse under request
//!   and token budgets, with admission control and a starvation bound.

pub mod error;
pub mod forest;
pub mod idhash;
pub mod radix;
pub mod scheduler;
pub mod seeds;

pub use error::{CoreError, CoreResult};
pub use forest::{Forest, NodeId};
pub use radix::RadixCache;
pub use scheduler::Scheduler;
