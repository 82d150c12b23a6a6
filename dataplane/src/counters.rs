//! Underlay counters: the `swarmnet_counters` XDP program (`ebpf/src/counters.rs`)
//! attached to one interface, counting received frames and bytes per protocol.

use std::fmt;

use aya::{
    Ebpf, EbpfError,
    maps::{MapData, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, xdp::XdpMode},
};
use swarmnet_ebpf_common::{
    COUNTERS_LEN, COUNTERS_MAP, COUNTERS_PROGRAM, Counter, KEY_ARP, KEY_OTHER,
};
use tracing::{debug, info};

/// The BPF object built by `build.rs`, aligned so aya can parse it in place.
static COUNTERS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/swarmnet-counters"));

/// Errors of [`UnderlayCounters`].
#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    #[error("invalid interface name {iface:?}: {reason}")]
    InvalidInterface { iface: String, reason: &'static str },
    #[error("parse the embedded BPF object")]
    Object {
        #[source]
        source: Box<EbpfError>,
    },
    #[error("program {name} missing from the BPF object")]
    ProgramMissing { name: &'static str },
    #[error("load program {name} into the kernel (needs root or CAP_BPF+CAP_NET_ADMIN)")]
    Load {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attach XDP program to {iface}: driver mode failed ({driver}), then skb mode failed")]
    Attach {
        iface: String,
        driver: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("map {name} missing from the BPF object")]
    MapMissing { name: &'static str },
    #[error("open map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("read entry {key} of map {name} on {iface}")]
    Read {
        name: &'static str,
        key: u32,
        iface: String,
        #[source]
        source: Box<MapError>,
    },
}

/// What a counter counts: frames of one IP protocol (IPv4 protocol or IPv6
/// next header), ARP, or any other ethertype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Ip(u8),
    Arp,
    Other,
}

impl Proto {
    /// Short name: "icmp", "tcp", "udp", "icmpv6", "arp", "other", else the
    /// protocol number.
    pub fn label(&self) -> String {
        match self {
            // IANA protocol keywords for the common ones.
            Proto::Ip(0) => "hopopt".to_owned(),
            Proto::Ip(1) => "icmp".to_owned(),
            Proto::Ip(2) => "igmp".to_owned(),
            Proto::Ip(47) => "gre".to_owned(),
            Proto::Ip(50) => "esp".to_owned(),
            Proto::Ip(132) => "sctp".to_owned(),
            Proto::Ip(6) => "tcp".to_owned(),
            Proto::Ip(17) => "udp".to_owned(),
            Proto::Ip(58) => "icmpv6".to_owned(),
            Proto::Ip(n) => n.to_string(),
            Proto::Arp => "arp".to_owned(),
            Proto::Other => "other".to_owned(),
        }
    }

    fn from_key(key: u32) -> Option<Self> {
        match key {
            KEY_ARP => Some(Proto::Arp),
            KEY_OTHER => Some(Proto::Other),
            n => u8::try_from(n).ok().map(Proto::Ip),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// Frames and bytes received for one [`Proto`], summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtoCount {
    pub proto: Proto,
    pub packets: u64,
    pub bytes: u64,
}

/// The counters program loaded and attached to one interface. Dropping it
/// detaches the program and frees the map.
pub struct UnderlayCounters {
    iface: String,
    mode: &'static str,
    counters: PerCpuArray<MapData, Counter>,
    /// Owns the program and its XDP link: dropping it detaches.
    _ebpf: Ebpf,
}

impl fmt::Debug for UnderlayCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnderlayCounters")
            .field("iface", &self.iface)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl UnderlayCounters {
    /// Loads the program and attaches it to `iface` in the calling thread's
    /// network namespace: in native (driver) mode where the driver supports
    /// it (veth does), else in generic (skb) mode. Both count frames that a
    /// veth receives from its peer.
    pub fn attach(iface: &str) -> Result<Self, CountersError> {
        validate_iface(iface)?;
        let mut ebpf = Ebpf::load(COUNTERS_OBJECT).map_err(|e| CountersError::Object {
            source: Box::new(e),
        })?;
        let program: &mut Xdp = ebpf
            .program_mut(COUNTERS_PROGRAM)
            .ok_or(CountersError::ProgramMissing {
                name: COUNTERS_PROGRAM,
            })?
            .try_into()
            .map_err(|e| CountersError::Load {
                name: COUNTERS_PROGRAM,
                source: Box::new(e),
            })?;
        program.load().map_err(|e| CountersError::Load {
            name: COUNTERS_PROGRAM,
            source: Box::new(e),
        })?;

        // `ip link set dev IFACE xdpdrv obj ...`, falling back to `xdpgeneric`.
        let mode = match program.attach(iface, XdpMode::Driver) {
            Ok(_) => "driver",
            Err(driver) => {
                debug!(iface, error = %driver, "native XDP attach failed, trying skb mode");
                program
                    .attach(iface, XdpMode::Skb)
                    .map_err(|e| CountersError::Attach {
                        iface: iface.to_owned(),
                        driver: driver.to_string(),
                        source: Box::new(e),
                    })?;
                "skb"
            }
        };

        let map = ebpf
            .take_map(COUNTERS_MAP)
            .ok_or(CountersError::MapMissing { name: COUNTERS_MAP })?;
        let counters = PerCpuArray::try_from(map).map_err(|e| CountersError::Map {
            name: COUNTERS_MAP,
            source: Box::new(e),
        })?;
        info!(iface, mode, "underlay counters attached");
        Ok(Self {
            iface: iface.to_owned(),
            mode,
            counters,
            _ebpf: ebpf,
        })
    }

    /// The interface the program is attached to.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The XDP mode the program runs in: "driver" or "skb".
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// Current counts, summed over CPUs, ordered by protocol; only entries
    /// that saw at least one frame.
    pub fn read(&self) -> Result<Vec<ProtoCount>, CountersError> {
        let mut out = Vec::new();
        for key in 0..COUNTERS_LEN {
            let per_cpu = self
                .counters
                .get(&key, 0)
                .map_err(|e| CountersError::Read {
                    name: COUNTERS_MAP,
                    key,
                    iface: self.iface.clone(),
                    source: Box::new(e),
                })?;
            let (packets, bytes) = per_cpu.iter().fold((0u64, 0u64), |(p, b), c| {
                (p.wrapping_add(c.packets), b.wrapping_add(c.bytes))
            });
            if packets == 0 {
                continue;
            }
            if let Some(proto) = Proto::from_key(key) {
                out.push(ProtoCount {
                    proto,
                    packets,
                    bytes,
                });
            }
        }
        Ok(out)
    }
}

/// Rejects names the kernel would (aya also panics on an interior NUL).
fn validate_iface(iface: &str) -> Result<(), CountersError> {
    match crate::ifname::invalid(iface) {
        Some(reason) => Err(CountersError::InvalidInterface {
            iface: iface.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(Proto::Ip(1).label(), "icmp");
        assert_eq!(Proto::Ip(6).label(), "tcp");
        assert_eq!(Proto::Ip(17).label(), "udp");
        assert_eq!(Proto::Ip(58).label(), "icmpv6");
        assert_eq!(Proto::Ip(47).label(), "gre");
        assert_eq!(Proto::Ip(0).label(), "hopopt");
        assert_eq!(Proto::Ip(99).label(), "99");
        assert_eq!(Proto::Arp.label(), "arp");
        assert_eq!(Proto::Other.label(), "other");
        assert_eq!(Proto::Ip(0).to_string(), "hopopt");
    }

    #[test]
    fn keys_map_to_protos() {
        assert_eq!(Proto::from_key(0), Some(Proto::Ip(0)));
        assert_eq!(Proto::from_key(255), Some(Proto::Ip(255)));
        assert_eq!(Proto::from_key(KEY_ARP), Some(Proto::Arp));
        assert_eq!(Proto::from_key(KEY_OTHER), Some(Proto::Other));
        assert_eq!(Proto::from_key(COUNTERS_LEN), None);
    }

    #[test]
    fn bad_interface_names_are_rejected_before_loading() {
        for bad in ["", "a-name-longer-than-15", "a/b", "a b", "a\0b", ".."] {
            let err = UnderlayCounters::attach(bad).expect_err(bad);
            assert!(
                matches!(err, CountersError::InvalidInterface { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn embedded_object_is_a_bpf_elf_with_the_program() {
        // ELF magic, 64-bit, little-endian; e_machine 247 is EM_BPF.
        assert_eq!(&COUNTERS_OBJECT[..6], b"\x7fELF\x02\x01");
        assert_eq!(&COUNTERS_OBJECT[18..20], &247u16.to_le_bytes());
        let name = COUNTERS_PROGRAM.as_bytes();
        assert!(COUNTERS_OBJECT.windows(name.len()).any(|w| w == name));
    }
}
