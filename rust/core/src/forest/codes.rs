//! Small integer codes for the strings a node holds, and range checks for the
//! integers callers pass in from a wider type.

use crate::error::{CoreError, CoreResult};

/// Canonical message roles, in code order.
pub const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "environment"];

/// Finish reasons, in code order ("" means none).
pub const FINISH_REASONS: [&str; 5] = ["", "stop", "length", "error", "abort"];

fn unknown(table: &[&str], value: &str, what: &str) -> CoreError {
    CoreError::InvalidArgument(format!(
        "unknown {what} {value:?}; expected one of {table:?}"
    ))
}

// Both lookups run for every node added, so they are matches (length tests
// and word compares) rather than a search of the table that calls memcmp.

/// Code of a role name.
pub fn role_code(role: &str) -> CoreResult<u8> {
    match role {
        "system" => Ok(0),
        "user" => Ok(1),
        "assistant" => Ok(2),
        "tool" => Ok(3),
        "environment" => Ok(4),
        _ => Err(unknown(&ROLES, role, "role")),
    }
}

/// Code of a finish reason.
pub fn finish_code(finish: &str) -> CoreResult<u8> {
    match finish {
        "" => Ok(0),
        "stop" => Ok(1),
        "length" => Ok(2),
        "error" => Ok(3),
        "abort" => Ok(4),
        _ => Err(unknown(&FINISH_REASONS, finish, "finish reason")),
    }
}

/// Narrow a caller's integer (a view or a participant) to the u16 the forest stores.
pub fn narrow_u16(value: i64, what: &str) -> CoreResult<u16> {
    u16::try_from(value).map_err(|_| {
        CoreError::InvalidArgument(format!("{what} {value} is out of range 0..={}", u16::MAX))
    })
}
