//! Conversation forest (to be written).
pub type NodeId = u64;
pub struct Forest;
