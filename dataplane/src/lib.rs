//! Kernel side of swarmnet: netlink devices and eBPF programs.
//!
//! `unsafe_code` is denied workspace-wide (root `Cargo.toml`) and again here:
//! this crate relies on aya and needs none of its own.
#![deny(unsafe_code)]

mod counters;
mod ifname;

pub use counters::{CountersError, Proto, ProtoCount, UnderlayCounters};
