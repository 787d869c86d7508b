//! The PROXY protocol (HAProxy's "PROXY protocol" specification, versions 1 and 2): a load
//! balancer in TCP mode prefixes each connection with a header naming the client's address,
//! so that logs, per-IP limits and bans see the client instead of the balancer.
//!
//! [`parse`] is sans-I/O: it looks at the bytes received so far and answers
//! [`Parse::Incomplete`], [`Parse::Done`] or [`Parse::Invalid`]. [`read_header`] is the thin
//! async shell: it reads *exactly* the header from the socket (never a byte of what the client
//! sends after it, which belongs to the XMPP or HTTP layer) under a deadline, asking
//! [`safe_read_len`] how many bytes it may read next without overshooting.
//!
//! Implemented: v1 (spec §2.1: `PROXY TCP4|TCP6|UNKNOWN ...\r\n`, at most 107 bytes) and v2
//! (§2.2: the 12-byte signature, version 2, commands LOCAL and PROXY, families AF_UNSPEC,
//! AF_INET, AF_INET6 and AF_UNIX, TLVs skipped). A v2 header is refused above
//! [`V2_MAX_LEN`] bytes: the spec lets the length reach 64 KiB, but a balancer sends a few
//! hundred at most, and an unauthenticated peer must not make us buffer more.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest v1 header, CRLF included (spec §2.1).
pub const V1_MAX_LEN: usize = 107;

/// Longest v2 header we accept, the 16-byte prefix included.
pub const V2_MAX_LEN: usize = 16 + 2048;

/// The v2 signature (spec §2.2): chosen so that it cannot start a valid v1 line nor most
/// text protocols.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

const V1_PREFIX: &[u8] = b"PROXY ";

/// The shortest possible header (`PROXY UNKNOWN\r\n`): reading this many bytes first can
/// never consume client data, whatever the version.
const MIN_LEN: usize = 15;

/// What the bytes received so far amount to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parse {
    /// A header may still come: read more (see [`safe_read_len`]).
    Incomplete,
    /// A complete, valid header of `consumed` bytes. `source` is the client's address; `None`
    /// for v1 `UNKNOWN`, v2 `LOCAL` (the balancer's own health check) and v2 families that
    /// carry no IP address: the connection's own peer address then stands.
    Done {
        /// The original client's address.
        source: Option<SocketAddr>,
        /// Length of the header; the client's own bytes start here.
        consumed: usize,
    },
    /// Not a valid PROXY header: the connection must be closed.
    Invalid(Invalid),
}

/// Why a header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// The connection starts with neither `PROXY ` nor the v2 signature.
    #[error("no PROXY protocol header")]
    NotProxy,
    /// No CRLF within 107 bytes.
    #[error("PROXY v1 line longer than 107 bytes")]
    V1TooLong,
    /// The v1 line does not have the required fields.
    #[error("malformed PROXY v1 line")]
    V1Syntax,
    /// A v1 address is not an address of the announced family.
    #[error("bad address in PROXY v1 line")]
    V1Address,
    /// A v1 port is not a decimal number from 0 to 65535.
    #[error("bad port in PROXY v1 line")]
    V1Port,
    /// The v2 version nibble is not 2.
    #[error("unsupported PROXY v2 version")]
    V2Version,
    /// The v2 command is neither LOCAL nor PROXY.
    #[error("unknown PROXY v2 command")]
    V2Command,
    /// The v2 address family or transport is unknown, or not a stream.
    #[error("unsupported PROXY v2 address family or transport")]
    V2Family,
    /// The v2 length is too short for the announced addresses.
    #[error("PROXY v2 address block too short")]
    V2Length,
    /// The v2 header is longer than [`V2_MAX_LEN`].
    #[error("PROXY v2 header longer than we accept")]
    V2TooLong,
}

/// Parses the start of a connection. Bytes after the header (the client's own data) are
/// ignored; `consumed` says where they begin.
pub fn parse(buf: &[u8]) -> Parse {
    if buf.starts_with(&V2_SIGNATURE) {
        parse_v2(buf)
    } else if buf.starts_with(V1_PREFIX) {
        parse_v1(buf)
    } else if V2_SIGNATURE.starts_with(buf) || V1_PREFIX.starts_with(buf) {
        Parse::Incomplete
    } else {
        Parse::Invalid(Invalid::NotProxy)
    }
}

/// How many bytes a reader may read next without going past the end of the header, given
/// that [`parse`] answered [`Parse::Incomplete`] for `buf`. Always at least 1.
pub fn safe_read_len(buf: &[u8]) -> usize {
    if buf.len() < MIN_LEN {
        return MIN_LEN - buf.len();
    }
    if buf.starts_with(&V2_SIGNATURE) {
        let total = match v2_length(buf) {
            Some(len) => 16 + usize::from(len),
            None => 16,
        };
        return total.saturating_sub(buf.len()).max(1);
    }
    // v1: the line ends with CRLF, so after anything but CR at least two bytes are missing.
    if buf.last() == Some(&b'\r') { 1 } else { 2 }
}

/// The v2 length field, once the 16-byte prefix is there.
fn v2_length(buf: &[u8]) -> Option<u16> {
    match buf.get(14..16) {
        Some(&[hi, lo]) => Some(u16::from_be_bytes([hi, lo])),
        _ => None,
    }
}

fn parse_v1(buf: &[u8]) -> Parse {
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX_LEN {
            Parse::Invalid(Invalid::V1TooLong)
        } else if window.contains(&b'\n') {
            // A bare LF can never become the CRLF that ends the line.
            Parse::Invalid(Invalid::V1Syntax)
        } else {
            Parse::Incomplete
        };
    };
    let consumed = end + 2;
    let Some(line) = buf.get(..end).and_then(|l| std::str::from_utf8(l).ok()) else {
        return Parse::Invalid(Invalid::V1Syntax);
    };
    match parse_v1_line(line) {
        Ok(source) => Parse::Done { source, consumed },
        Err(e) => Parse::Invalid(e),
    }
}

fn parse_v1_line(line: &str) -> Result<Option<SocketAddr>, Invalid> {
    let mut fields = line.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(Invalid::V1Syntax);
    }
    let v6 = match fields.next() {
        // The rest of an UNKNOWN line is to be ignored (spec §2.1).
        Some("UNKNOWN") => return Ok(None),
        Some("TCP4") => false,
        Some("TCP6") => true,
        _ => return Err(Invalid::V1Syntax),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(Invalid::V1Syntax);
    };
    let ip = |s: &str| -> Result<IpAddr, Invalid> {
        let ip = if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        };
        ip.map_err(|_| Invalid::V1Address)
    };
    let src = ip(src)?;
    ip(dst)?;
    let sport = port(sport)?;
    port(dport)?;
    Ok(Some(SocketAddr::new(src, sport)))
}

/// A v1 port: 1 to 5 ASCII digits (no sign, which `u16::from_str` would take), at most 65535.
fn port(s: &str) -> Result<u16, Invalid> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid::V1Port);
    }
    s.parse().map_err(|_| Invalid::V1Port)
}

fn parse_v2(buf: &[u8]) -> Parse {
    let (Some(&ver_cmd), Some(&fam), Some(len)) = (buf.get(12), buf.get(13), v2_length(buf)) else {
        return Parse::Incomplete;
    };
    if ver_cmd >> 4 != 2 {
        return Parse::Invalid(Invalid::V2Version);
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Parse::Invalid(Invalid::V2Command),
    };
    let consumed = 16 + usize::from(len);
    if consumed > V2_MAX_LEN {
        return Parse::Invalid(Invalid::V2TooLong);
    }
    let Some(block) = buf.get(16..consumed) else {
        return Parse::Incomplete;
    };
    // LOCAL: the balancer speaks for itself (health checks); the address block is ignored.
    if local {
        return Parse::Done {
            source: None,
            consumed,
        };
    }
    let (family, transport) = (fam >> 4, fam & 0x0f);
    let source = match (family, transport) {
        // AF_UNSPEC, or AF_UNIX (a balancer on the same machine): no IP to report.
        (0, _) | (3, 1) => None,
        (1, 1) => match block.get(..12) {
            Some(&[a, b, c, d, _, _, _, _, p1, p2, _, _]) => Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
                u16::from_be_bytes([p1, p2]),
            )),
            _ => return Parse::Invalid(Invalid::V2Length),
        },
        (2, 1) => {
            // Source (16), destination (16), source port, destination port.
            let (Some(src), Some(&[p1, p2, _, _])) = (
                block.get(..16).and_then(|s| <[u8; 16]>::try_from(s).ok()),
                block.get(32..36),
            ) else {
                return Parse::Invalid(Invalid::V2Length);
            };
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(src)),
                u16::from_be_bytes([p1, p2]),
            ))
        }
        _ => return Parse::Invalid(Invalid::V2Family),
    };
    Parse::Done { source, consumed }
}

/// Why [`read_header`] failed; the connection should be closed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a valid header.
    #[error("{0}")]
    Invalid(Invalid),
    /// No complete header before the deadline.
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    /// The connection ended or failed before the header was complete.
    #[error("connection failed before the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads exactly one PROXY header (v1 or v2) from `stream` within `deadline`, leaving every
/// byte after it unread. Returns the client's address, or `None` when the header carries
/// none (v1 `UNKNOWN`, v2 `LOCAL`): keep the connection's own peer address then.
pub async fn read_header<S>(
    stream: &mut S,
    deadline: Duration,
) -> Result<Option<SocketAddr>, ReadError>
where
    S: AsyncRead + Unpin,
{
    match tokio::time::timeout(deadline, read_header_inner(stream)).await {
        Ok(r) => r,
        Err(_) => Err(ReadError::Timeout(deadline)),
    }
}

async fn read_header_inner<S>(stream: &mut S) -> Result<Option<SocketAddr>, ReadError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(64);
    loop {
        match parse(&buf) {
            Parse::Done { source, .. } => return Ok(source),
            Parse::Invalid(e) => return Err(ReadError::Invalid(e)),
            Parse::Incomplete => {
                let start = buf.len();
                buf.resize(start + safe_read_len(&buf), 0);
                if let Some(tail) = buf.get_mut(start..) {
                    stream.read_exact(tail).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(ver_cmd);
        b.push(fam);
        b.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        b.extend_from_slice(block);
        b
    }

    fn v2_inet(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut block = src.to_vec();
        block.extend_from_slice(&[10, 0, 0, 1]);
        block.extend_from_slice(&sport.to_be_bytes());
        block.extend_from_slice(&5222u16.to_be_bytes());
        v2(0x21, 0x11, &block)
    }

    fn done(source: &str, consumed: usize) -> Parse {
        Parse::Done {
            source: Some(source.parse().unwrap()),
            consumed,
        }
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 5222\r\n";
        assert_eq!(parse(line), done("192.0.2.7:56324", line.len()));
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n<stream";
        assert_eq!(parse(line), done("[2001:db8::7]:4000", line.len() - 7));
    }

    #[test]
    fn v1_unknown_has_no_source() {
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parse::Done {
                source: None,
                consumed: 15
            }
        );
        let line = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
        assert_eq!(
            parse(line),
            Parse::Done {
                source: None,
                consumed: line.len()
            }
        );
    }

    #[test]
    fn v1_prefixes_are_incomplete() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 5222\r\n";
        for n in 0..line.len() {
            assert_eq!(parse(&line[..n]), Parse::Incomplete, "prefix of {n} bytes");
        }
    }

    #[test]
    fn v1_malformed() {
        let cases: &[(&[u8], Invalid)] = &[
            (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", Invalid::V1Syntax),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", Invalid::V1Syntax),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", Invalid::V1Syntax),
            (b"PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n", Invalid::V1Syntax),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", Invalid::V1Syntax),
            (b"PROXY TCP4 ::1 ::1 1 2\r\n", Invalid::V1Address),
            (b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n", Invalid::V1Address),
            (b"PROXY TCP4 1.2.3.999 1.2.3.4 1 2\r\n", Invalid::V1Address),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", Invalid::V1Port),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n", Invalid::V1Port),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 \r\n", Invalid::V1Port),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\xff\r\n", Invalid::V1Syntax),
            (b"PROXY\r\n", Invalid::NotProxy),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                parse(bytes),
                Parse::Invalid(*want),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn v1_longer_than_107_bytes_is_refused() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LEN, b'x');
        assert_eq!(parse(&line), Parse::Invalid(Invalid::V1TooLong));
        // Exactly 107 bytes with the CRLF is still fine.
        line.truncate(V1_MAX_LEN - 2);
        line.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&line), Parse::Done { consumed: 107, .. }));
        // A CRLF at 108 is too late even if it is already buffered.
        line.truncate(V1_MAX_LEN - 2);
        line.extend_from_slice(b"x\r\n");
        assert_eq!(parse(&line), Parse::Invalid(Invalid::V1TooLong));
    }

    #[test]
    fn not_proxy_at_all() {
        assert_eq!(
            parse(b"<?xml version='1.0'?>"),
            Parse::Invalid(Invalid::NotProxy)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n"),
            Parse::Invalid(Invalid::NotProxy)
        );
        assert_eq!(parse(b"\x16\x03\x01"), Parse::Invalid(Invalid::NotProxy));
        assert_eq!(
            parse(b"\r\n\r\n\0\r\nQUIX"),
            Parse::Invalid(Invalid::NotProxy)
        );
        assert_eq!(parse(b"proxy "), Parse::Invalid(Invalid::NotProxy));
    }

    #[test]
    fn v2_inet_with_trailing_client_bytes() {
        let mut b = v2_inet([192, 0, 2, 7], 56324);
        let len = b.len();
        b.extend_from_slice(b"<?xml");
        assert_eq!(parse(&b), done("192.0.2.7:56324", len));
        assert_eq!(len, 28);
    }

    #[test]
    fn v2_inet6() {
        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        block.extend_from_slice(&4000u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        let b = v2(0x21, 0x21, &block);
        assert_eq!(parse(&b), done("[2001:db8::7]:4000", 52));
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut block = vec![192, 0, 2, 7, 10, 0, 0, 1, 0, 80, 0, 81];
        // PP2_TYPE_ALPN "h2", then a NOOP of 3 bytes.
        block.extend_from_slice(&[0x01, 0, 2, b'h', b'2', 0x04, 0, 3, 0, 0, 0]);
        let b = v2(0x21, 0x11, &block);
        assert_eq!(parse(&b), done("192.0.2.7:80", b.len()));
    }

    #[test]
    fn v2_local_and_unspec_have_no_source() {
        let local = v2(0x20, 0x00, &[]);
        assert_eq!(
            parse(&local),
            Parse::Done {
                source: None,
                consumed: 16
            }
        );
        // LOCAL ignores whatever address block comes with it.
        let local = v2(0x20, 0x11, &[1, 2, 3]);
        assert!(matches!(
            parse(&local),
            Parse::Done {
                source: None,
                consumed: 19
            }
        ));
        let unspec = v2(0x21, 0x00, &[9, 9]);
        assert!(matches!(
            parse(&unspec),
            Parse::Done {
                source: None,
                consumed: 18
            }
        ));
        let unix = v2(0x21, 0x31, &[0; 216]);
        assert!(matches!(
            parse(&unix),
            Parse::Done {
                source: None,
                consumed: 232
            }
        ));
    }

    #[test]
    fn v2_prefixes_are_incomplete() {
        let b = v2_inet([192, 0, 2, 7], 1);
        for n in 0..b.len() {
            assert_eq!(parse(&b[..n]), Parse::Incomplete, "prefix of {n} bytes");
        }
    }

    #[test]
    fn v2_malformed() {
        let inet = [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2];
        let cases: Vec<(Vec<u8>, Invalid)> = vec![
            (v2(0x11, 0x11, &inet), Invalid::V2Version),
            (v2(0x31, 0x11, &inet), Invalid::V2Version),
            (v2(0x22, 0x11, &inet), Invalid::V2Command),
            (v2(0x21, 0x12, &inet), Invalid::V2Family),
            (v2(0x21, 0x41, &inet), Invalid::V2Family),
            (v2(0x21, 0x11, &inet[..11]), Invalid::V2Length),
            (v2(0x21, 0x21, &[0; 35]), Invalid::V2Length),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse(&bytes), Parse::Invalid(want), "{bytes:02x?}");
        }
    }

    #[test]
    fn v2_oversized_is_refused_before_buffering_it() {
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&b), Parse::Invalid(Invalid::V2TooLong));
        let max_ok = u16::try_from(V2_MAX_LEN - 16).unwrap();
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[0x21, 0x11]);
        b.extend_from_slice(&max_ok.to_be_bytes());
        assert_eq!(parse(&b), Parse::Incomplete);
    }

    #[test]
    fn safe_read_len_never_overshoots() {
        // The shortest header of each version: reading the advised amounts lands exactly on
        // its end.
        for header in [
            b"PROXY UNKNOWN\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
            v2(0x20, 0x00, &[]),
            v2_inet([1, 2, 3, 4], 5),
        ] {
            let mut n = 0;
            while parse(&header[..n]) == Parse::Incomplete {
                n += safe_read_len(&header[..n]);
                assert!(n <= header.len(), "overshoot on {header:02x?}");
            }
            assert!(matches!(parse(&header[..n]), Parse::Done { consumed, .. } if consumed == n));
        }
    }

    #[tokio::test]
    async fn read_header_leaves_client_bytes_unread() {
        for header in [
            b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 5222\r\n".to_vec(),
            v2_inet([192, 0, 2, 7], 56324),
        ] {
            let (mut client, mut server) = tokio::io::duplex(1024);
            let mut sent = header.clone();
            sent.extend_from_slice(b"<?xml version='1.0'?>");
            tokio::io::AsyncWriteExt::write_all(&mut client, &sent)
                .await
                .unwrap();
            let source = read_header(&mut server, Duration::from_secs(1))
                .await
                .unwrap();
            assert_eq!(source, Some("192.0.2.7:56324".parse().unwrap()));
            let mut rest = [0u8; 21];
            server.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"<?xml version='1.0'?>");
        }
    }

    #[tokio::test]
    async fn read_header_failures() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"<?xml version='1.0'?>")
            .await
            .unwrap();
        let r = read_header(&mut server, Duration::from_secs(1)).await;
        assert!(
            matches!(r, Err(ReadError::Invalid(Invalid::NotProxy))),
            "{r:?}"
        );

        // Half a header, then silence: the deadline ends it.
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY TCP4 1.2")
            .await
            .unwrap();
        let r = read_header(&mut server, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(ReadError::Timeout(_))), "{r:?}");

        // Half a header, then EOF.
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &v2_inet([1, 2, 3, 4], 5)[..20])
            .await
            .unwrap();
        drop(client);
        let r = read_header(&mut server, Duration::from_secs(1)).await;
        assert!(matches!(r, Err(ReadError::Io(_))), "{r:?}");

        // A never-ending v1 line stops at 107 bytes.
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(1000, b'a');
        tokio::io::AsyncWriteExt::write_all(&mut client, &long)
            .await
            .unwrap();
        let r = read_header(&mut server, Duration::from_secs(1)).await;
        assert!(
            matches!(r, Err(ReadError::Invalid(Invalid::V1TooLong))),
            "{r:?}"
        );
    }
}
