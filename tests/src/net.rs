//! Packets without external tools: ICMP echo over a raw socket, and UDP
//! capture with an AF_PACKET socket. Call these inside a namespace (through
//! [`crate::netns::in_netns`]); the sockets live where they were made.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::{
        socket::{
            AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recv, sendto,
            setsockopt, socket, sockopt,
        },
        time::TimeVal,
    },
};

/// A UDP datagram seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpDatagram {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: Vec<u8>,
}

/// Sends `count` ICMP echo requests to `dst`, one at a time, and counts the
/// matching replies (each awaited up to `timeout`). Needs root (raw socket).
pub fn ping(dst: Ipv4Addr, count: u16, timeout: Duration) -> Result<u16, String> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
    .map_err(|e| format!("raw ICMP socket: {e}"))?;
    set_timeout(&fd, Duration::from_millis(100))?;
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
    let mut replies = 0;
    for seq in 1..=count {
        let pkt = echo_request(id, seq, b"swarmnet-tests ping");
        sendto(fd.as_raw_fd(), &pkt, &to, MsgFlags::empty())
            .map_err(|e| format!("send echo request to {dst}: {e}"))?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => {
                    if is_echo_reply(&buf[..n], dst, id, seq) {
                        replies += 1;
                        break;
                    }
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => return Err(format!("recv ICMP: {e}")),
            }
        }
    }
    Ok(replies)
}

/// The ICMP echo request message (type 8) with its checksum.
pub fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut pkt = vec![8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(payload);
    let sum = checksum(&pkt);
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    pkt
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether an IPv4 packet (as a raw ICMP socket returns it) is the echo
/// reply from `from` for `id`/`seq`.
fn is_echo_reply(ip: &[u8], from: Ipv4Addr, id: u16, seq: u16) -> bool {
    let Some((src, _dst, proto, l4)) = ipv4(ip) else {
        return false;
    };
    proto == 1
        && src == from
        && l4.len() >= 8
        && l4[0] == 0
        && u16::from_be_bytes([l4[4], l4[5]]) == id
        && u16::from_be_bytes([l4[6], l4[7]]) == seq
}

/// Splits an IPv4 packet into (src, dst, protocol, payload); `None` for
/// anything else, and for fragments.
fn ipv4(p: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u8, &[u8])> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let frag = u16::from_be_bytes([p[6], p[7]]);
    if ihl < 20 || total < ihl || p.len() < total || frag & 0x3fff != 0 {
        return None;
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    Some((src, dst, p[9], &p[ihl..total]))
}

/// Parses an Ethernet frame carrying IPv4/UDP.
pub fn parse_udp_frame(frame: &[u8]) -> Option<UdpDatagram> {
    if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let (src, dst, proto, udp) = ipv4(&frame[14..])?;
    if proto != 17 || udp.len() < 8 {
        return None;
    }
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if len < 8 || len > udp.len() {
        return None;
    }
    Some(UdpDatagram {
        src: SocketAddrV4::new(src, sport),
        dst: SocketAddrV4::new(dst, dport),
        payload: udp[8..len].to_vec(),
    })
}

/// Captures, on every interface of the current namespace (AF_PACKET,
/// ETH_P_ALL), the first IPv4/UDP datagram for which `want` holds, for at
/// most `timeout`.
pub fn capture_udp(
    timeout: Duration,
    want: impl Fn(&UdpDatagram) -> bool,
) -> Result<UdpDatagram, String> {
    let fd = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthAll,
    )
    .map_err(|e| format!("AF_PACKET socket: {e}"))?;
    set_timeout(&fd, Duration::from_millis(200))?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65_536];
    let mut seen = 0usize;
    while Instant::now() < deadline {
        match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => {
                seen += 1;
                if let Some(d) = parse_udp_frame(&buf[..n])
                    && want(&d)
                {
                    return Ok(d);
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => return Err(format!("recv on AF_PACKET: {e}")),
        }
    }
    Err(format!(
        "no matching UDP datagram within {timeout:?} ({seen} frames seen)"
    ))
}

fn set_timeout(fd: &OwnedFd, t: Duration) -> Result<(), String> {
    let tv = TimeVal::new(
        t.as_secs() as nix::libc::time_t,
        nix::libc::suseconds_t::from(t.subsec_micros()),
    );
    setsockopt(fd, sockopt::ReceiveTimeout, &tv).map_err(|e| format!("SO_RCVTIMEO: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_an_echo_request_verifies() {
        let pkt = echo_request(0x1234, 7, b"abc");
        assert_eq!(checksum(&pkt), 0, "a packet with its checksum sums to 0");
        assert_eq!(pkt[0], 8);
    }

    #[test]
    fn parses_a_udp_frame() {
        let payload = b"hello";
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = 20 + 8 + payload.len();
        f.extend_from_slice(&[0x45, 0, 0, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[198, 18, 0, 12, 198, 18, 0, 11]);
        f.extend_from_slice(&7946u16.to_be_bytes());
        f.extend_from_slice(&7946u16.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        let d = parse_udp_frame(&f).expect("a UDP frame");
        assert_eq!(d.src, "198.18.0.12:7946".parse().expect("addr"));
        assert_eq!(d.dst, "198.18.0.11:7946".parse().expect("addr"));
        assert_eq!(d.payload, payload);
        // A fragment (MF set) is not taken as a whole datagram.
        f[14 + 6] = 0x20;
        assert!(parse_udp_frame(&f).is_none());
    }
}
