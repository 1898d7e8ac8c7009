//! One file per command group; each exposes its clap arguments and an async `run`.

pub mod collections;
pub mod generate;
pub mod load;
pub mod points;
pub mod search;
pub mod status;
