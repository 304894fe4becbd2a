//! The data plane: `flowplane worker` moves one flow's records through JetStream.

pub mod clock;
pub mod config;
