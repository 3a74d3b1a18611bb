//! Rollback: planning (pure), execution (impersonated writes), reports.

pub mod dynamic;
pub mod plan;
pub mod report;
pub mod rollback;
