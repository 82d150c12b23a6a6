//! Map keys and values shared by swarmnet's eBPF programs (`no_std`, built
//! for `bpfel-unknown-none`) and userspace (`dataplane`, feature `user`).
#![no_std]

/// Name of the `PerCpuArray<Counter>` map of the `swarmnet_counters` XDP
/// program. Kernel object names are cut at 15 bytes, so keep it short.
pub const COUNTERS_MAP: &str = "COUNTERS";

/// Name of the XDP program that fills [`COUNTERS_MAP`].
pub const COUNTERS_PROGRAM: &str = "swarmnet_counters";

/// Key for ARP frames. Keys `0..=255` are the IP protocol number of IPv4
/// packets and the next-header field of the fixed IPv6 header.
pub const KEY_ARP: u32 = 256;

/// Key for every other ethertype (and for frames too short to parse).
pub const KEY_OTHER: u32 = 257;

/// Number of entries in [`COUNTERS_MAP`].
pub const COUNTERS_LEN: u32 = 258;

/// Value of [`COUNTERS_MAP`]: what one CPU saw for one key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Frames seen.
    pub packets: u64,
    /// Bytes seen, from the Ethernet header to the end of the frame.
    pub bytes: u64,
}

// SAFETY: `Counter` is `#[repr(C)]`, `Copy`, made of two `u64`s: it has no
// padding and every bit pattern is a valid value.
#[cfg(feature = "user")]
#[expect(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
unsafe impl aya::Pod for Counter {}
