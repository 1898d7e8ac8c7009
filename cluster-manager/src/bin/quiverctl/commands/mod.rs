//! One file per command group; each exposes its clap arguments and an async `run`.

pub mod collections;
pub mod count;
pub mod generate;
pub mod load;
pub mod payload_index;
pub mod points;
pub mod scroll;
pub mod search;
pub mod status;
