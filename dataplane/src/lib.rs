//! Kernel side of swarmnet: netlink devices and eBPF programs.
//!
//! - [`netns`]: network namespaces bind-mounted at a path (`ip netns add`).
//! - link: the node's bridge and containers' veth pairs ([`Netlink`]).
//! - [`overlay`]: an overlay network's bridge and VXLAN device, and the
//!   neighbour and FDB entries of its remote endpoints, converged from an
//!   [`OverlaySpec`].
//! - counters: the underlay's eBPF counters ([`UnderlayCounters`]).
//!
//! `unsafe_code` is denied workspace-wide (root `Cargo.toml`) and again here:
//! this crate relies on aya and nix's safe wrappers and needs none of its own.
#![deny(unsafe_code)]

mod counters;
mod ifname;
mod link;
pub mod netns;
pub mod overlay;

pub use counters::{CountersError, Proto, ProtoCount, UnderlayCounters};
pub use link::{
    Ensured, FdbEntry, LinkChange, LinkError, LinkInfo, Neighbour, Netlink, VNI_MAX, VethSpec,
    VxlanSpec, mac_from_ipv4,
};
pub use netns::NetnsError;
pub use overlay::{ConvergeReport, OverlayError, OverlaySpec, Plan, RemoteEndpoint};
