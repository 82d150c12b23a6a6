//! XDP program `swarmnet_counters`: counts the frames and bytes that arrive on
//! the interface it is attached to, per protocol, and passes every frame on.
//!
//! Keys of the per-CPU `COUNTERS` map (see `swarmnet_ebpf_common`):
//! `0..=255` the IP protocol number of an IPv4 packet or the next-header field
//! of an IPv6 packet's fixed header, `KEY_ARP` for ARP, `KEY_OTHER` for any
//! other ethertype and for frames too short to hold the header we look at.
//!
//! Built for `bpfel-unknown-none` by `dataplane/build.rs` (aya-build). On the
//! host this file compiles to an empty `main`, so that `cargo build` and
//! `cargo clippy --workspace` do not try to build a BPF object for x86_64.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
#[expect(
    unsafe_code,
    reason = "BPF entry points and maps need no_mangle/link_section, and packet reads are raw pointers"
)]
mod program {
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::PerCpuArray,
        programs::XdpContext,
    };
    use swarmnet_ebpf_common::{COUNTERS_LEN, Counter, KEY_ARP, KEY_OTHER};

    /// Ethernet header: destination, source, ethertype.
    const ETH_HDR_LEN: usize = 14;
    const ETH_TYPE_OFFSET: usize = 12;
    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_ARP: u16 = 0x0806;
    const ETH_P_IPV6: u16 = 0x86dd;
    /// Offset of `protocol` in the IPv4 header.
    const IPV4_PROTO_OFFSET: usize = 9;
    /// Offset of `next header` in the fixed IPv6 header.
    const IPV6_NEXT_HDR_OFFSET: usize = 6;

    #[map(name = "COUNTERS")]
    static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

    #[xdp]
    pub fn swarmnet_counters(ctx: XdpContext) -> u32 {
        try_count(&ctx).unwrap_or(xdp_action::XDP_PASS)
    }

    #[inline(always)]
    fn try_count(ctx: &XdpContext) -> Result<u32, ()> {
        let key = classify(ctx);
        let len = (ctx.data_end() - ctx.data()) as u64;
        let counter = COUNTERS.get_ptr_mut(key).ok_or(())?;
        // SAFETY: the map lookup returned a valid pointer to this CPU's slot
        // for `key`. XDP runs with migration disabled and does not nest on a
        // CPU, so nothing else writes this slot while we do.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += len;
        }
        Ok(xdp_action::XDP_PASS)
    }

    #[inline(always)]
    fn classify(ctx: &XdpContext) -> u32 {
        let Some(ethertype) = read_be_u16(ctx, ETH_TYPE_OFFSET) else {
            return KEY_OTHER;
        };
        let proto_offset = match ethertype {
            ETH_P_IP => ETH_HDR_LEN + IPV4_PROTO_OFFSET,
            ETH_P_IPV6 => ETH_HDR_LEN + IPV6_NEXT_HDR_OFFSET,
            ETH_P_ARP => return KEY_ARP,
            _ => return KEY_OTHER,
        };
        read_u8(ctx, proto_offset).map_or(KEY_OTHER, u32::from)
    }

    /// Pointer to a `T` at `offset` bytes into the packet, or `None` if the
    /// packet is too short. The only way this program touches packet bytes.
    #[inline(always)]
    fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
        let start = ctx.data();
        let end = ctx.data_end();
        if start + offset + core::mem::size_of::<T>() > end {
            return None;
        }
        Some((start + offset) as *const T)
    }

    #[inline(always)]
    fn read_u8(ctx: &XdpContext, offset: usize) -> Option<u8> {
        let ptr = ptr_at::<u8>(ctx, offset)?;
        // SAFETY: `ptr_at` checked that the byte lies inside the packet.
        Some(unsafe { *ptr })
    }

    #[inline(always)]
    fn read_be_u16(ctx: &XdpContext, offset: usize) -> Option<u16> {
        let ptr = ptr_at::<[u8; 2]>(ctx, offset)?;
        // SAFETY: `ptr_at` checked that both bytes lie inside the packet;
        // `[u8; 2]` has alignment 1.
        Some(u16::from_be_bytes(unsafe { *ptr }))
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

/// Host builds (`cargo build`, `cargo clippy --workspace`) compile this
/// instead: the real program only exists for `target_arch = "bpf"`.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
