//! # actor-orm
//!
//! A declarative ORM for PostgreSQL in which every session is an actor.
//!
//! This crate is the facade: depend on it alone. The pieces live in `actor-orm-core` (models,
//! queries, identity map, unit of work), `actor-orm-derive` (`#[derive(Model)]`) and
//! `actor-orm-actors` (the pool supervisor and session actors).
//!
//! [`testing`] gives tests and examples a PostgreSQL of their own.

#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod testing;
