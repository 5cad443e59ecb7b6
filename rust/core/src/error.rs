use thiserror::Error;

/// Every way a core call can fail. The bindings map each variant to its own
/// Python exception class, so callers can tell misuse kinds apart.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    /// The id never named a node of this forest.
    #[error("unknown node id {0}")]
    UnknownNode(u64),
    /// The id named a node that has since been freed.
    #[error("stale node id {0}: its node was freed")]
    StaleNode(u64),
    /// A size or budget limit would be exceeded.
    #[error("capacity exceeded: {0}")]
    Capacity(String),
    /// A job id is unknown or already pushed.
    #[error("job error: {0}")]
    Job(String),
    /// An argument is out of range or inconsistent with the others.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

pub type CoreResult<T> = Result<T, CoreError>;
