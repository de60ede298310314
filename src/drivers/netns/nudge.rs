//! Making guests answer at once on a flow about to be reset. The reset rules of
//! [`super::nft::reset_commands`] answer a flow's next packet with a RST; a guest whose
//! connection is idle (or backing off its retransmissions) may send that packet only seconds
//! later. A TCP segment the guest's stack cannot accept (an ACK far outside the window)
//! makes it reply with an ACK at once (RFC 793, RFC 5961), and that reply meets the RST.
//!
//! The segment goes straight out of the guest's bridge port (an `AF_PACKET` socket on the
//! host's side of it), addressed to each MAC address the bridge learned on that port, so it
//! reaches only guests on this host and never a network.

use std::io;
use std::net::SocketAddrV4;

/// Source MAC of the segments: locally administered, spelling "smig".
pub const SOURCE_MAC: [u8; 6] = [0x02, 0x73, 0x6d, 0x69, 0x67, 0x00];

/// Ethernet + IPv4 + TCP headers, no options, no payload.
pub const FRAME_LEN: usize = 14 + 20 + 20;

/// An Ethernet frame carrying a bare TCP ACK from `from` to `to` with the given sequence and
/// acknowledgement numbers (chosen outside any window the receiver expects).
pub fn ack_frame(
    dst_mac: [u8; 6],
    from: SocketAddrV4,
    to: SocketAddrV4,
    seq: u32,
    ack: u32,
) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&SOURCE_MAC);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let (ip, tcp) = f[14..].split_at_mut(20);
    ip[0] = 0x45; // IPv4, 5-word header
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    ip[8] = 64; // TTL
    ip[9] = 6; // TCP
    ip[12..16].copy_from_slice(&from.ip().octets());
    ip[16..20].copy_from_slice(&to.ip().octets());
    let sum = checksum(&[ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());

    tcp[0..2].copy_from_slice(&from.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&to.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4; // 5-word header
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&1024u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&from.ip().octets());
    pseudo[4..8].copy_from_slice(&to.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let sum = checksum(&[&pseudo, tcp]);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The Internet checksum (RFC 1071) over the concatenated parts (each of even length).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Opens an `AF_PACKET` socket for sending only (protocol 0: it receives nothing) in the
/// calling thread's network namespace.
fn packet_socket() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain socket syscall; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Sends each frame out of the link with index `ifindex`, in the calling thread's network
/// namespace. The kernel makes every close of an `AF_PACKET` socket wait for an RCU grace
/// period (`synchronize_net`, ~10 ms), so the socket is closed on a thread of its own: the
/// namespace's thread goes on with its next job meanwhile.
pub fn send(ifindex: u32, frames: &[[u8; FRAME_LEN]]) -> io::Result<()> {
    let sock = packet_socket()?;
    let sent = send_on(&sock, ifindex, frames);
    // Should no thread start, the closure and the socket are dropped here instead.
    let _ = std::thread::Builder::new()
        .name("smig-close".into())
        .spawn(move || drop(sock));
    sent
}

fn send_on(
    sock: &std::os::fd::OwnedFd,
    ifindex: u32,
    frames: &[[u8; FRAME_LEN]],
) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = 0x0800u16.to_be();
    addr.sll_ifindex = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
    addr.sll_halen = 6;
    for frame in frames {
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the buffer and the address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(sock),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> [u8; FRAME_LEN] {
        ack_frame(
            [0x52, 0x54, 0, 0, 0, 0x11],
            "192.168.10.12:7".parse().unwrap(),
            "192.168.10.11:59900".parse().unwrap(),
            0x1234_5678,
            0x9abc_def0,
        )
    }

    #[test]
    fn headers_carry_the_flow_and_valid_checksums() {
        let f = frame();
        assert_eq!(&f[0..6], &[0x52, 0x54, 0, 0, 0, 0x11]);
        assert_eq!(&f[6..12], &SOURCE_MAC);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        let (ip, tcp) = f[14..].split_at(20);
        assert_eq!(&ip[12..16], &[192, 168, 10, 12]);
        assert_eq!(&ip[16..20], &[192, 168, 10, 11]);
        assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 7);
        assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 59900);
        assert_eq!(tcp[13], 0x10, "a bare ACK");
        // A header with its checksum in place sums to zero.
        assert_eq!(checksum(&[ip]), 0);
        let mut pseudo = [0u8; 12];
        pseudo[0..8].copy_from_slice(&ip[12..20]);
        pseudo[9] = 6;
        pseudo[11] = 20;
        assert_eq!(checksum(&[&pseudo, tcp]), 0);
    }

    #[test]
    fn checksum_matches_rfc_1071s_example() {
        // RFC 1071, section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (one's complement
        // sum), so the checksum is its complement.
        assert_eq!(
            checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]),
            !0xddf2
        );
    }
}
