//! Domain types parsed at the boundary: once a value has one of these types it is
//! known to be valid, so the rest of the code never re-checks it.

mod audit;
mod ids;
mod origin;

pub use audit::{AuditAction, AuditOutcome};
pub use ids::{AppId, IdError, KeyId, ProviderId, UserId};
pub use origin::{Origin, OriginError, is_loopback as origin_is_loopback};
