//! The subcommands' argument types and drivers (binary-only: the work is in the library).

pub mod fuse;
pub mod inputs;
pub mod rewrite;
pub mod run;
pub mod verify;
