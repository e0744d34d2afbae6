//! actor-orm's command line, as a library: reading a schema's catalog and generating models
//! from it. The `actor-orm` binary (`src/main.rs`) drives it.
#![warn(missing_docs)]
#![deny(clippy::unwrap_used)]

pub mod catalog;
pub mod generate;
pub mod naming;
