//! Rollback: planning (pure) and execution (impersonated writes).

pub mod plan;
