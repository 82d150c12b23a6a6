//! End-to-end tests: each builds its own [`swarmnet_tests::Cluster`] of
//! real agents in network namespaces and drives it the way users do.
//! They need root and `target/debug/swarmnet` (`cargo build --workspace`).

mod badinput;
mod cli;
mod containers;
mod ebpf;
mod gossip;
mod liveness;
mod managers;
mod node_update;
mod overlay;
mod sdk;
mod services;
mod tokens;
