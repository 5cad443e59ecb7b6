//! Small integer codes for the strings a node holds, and range checks for the
//! integers callers pass in from a wider type.

use crate::error::{CoreError, CoreResult};

/// Canonical message roles, in code order.
pub const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "environment"];

/// Finish reasons, in code order ("" means none).
pub const FINISH_REASONS: [&str; 5] = ["", "stop", "length", "error", "abort"];

fn code_of(table: &[&str], value: &str, what: &str) -> CoreResult<u8> {
    table
        .iter()
        .position(|name| *name == value)
        .map(|code| code as u8)
        .ok_or_else(|| {
            CoreError::InvalidArgument(format!(
                "unknown {what} {value:?}; expected one of {table:?}"
            ))
        })
}

/// Code of a role name.
pub fn role_code(role: &str) -> CoreResult<u8> {
    code_of(&ROLES, role, "role")
}

/// Code of a finish reason.
pub fn finish_code(finish: &str) -> CoreResult<u8> {
    code_of(&FINISH_REASONS, finish, "finish reason")
}

/// Narrow a caller's integer (a view or a participant) to the u16 the forest stores.
pub fn narrow_u16(value: i64, what: &str) -> CoreResult<u16> {
    u16::try_from(value).map_err(|_| {
        CoreError::InvalidArgument(format!("{what} {value} is out of range 0..={}", u16::MAX))
    })
}
