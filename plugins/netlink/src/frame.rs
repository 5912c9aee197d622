//! Netlink message framing, written once: encode a request into a datagram, split a received
//! datagram into frames, read the status of an ACK / error / done frame.

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLM_F_ACK,
    NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage as Rt;
use std::io;

pub(crate) fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {what}"))
}

/// Length of `struct nlmsghdr`.
pub(crate) const HEADER_LEN: usize = 16;

/// A request body: a message `netlink-packet-route` knows, or one it does not (nexthop objects),
/// given as its type and its bytes after the netlink header.
#[derive(Debug, Clone)]
pub(crate) enum Msg {
    Rt(Rt),
    Raw(u16, Vec<u8>),
}

/// Append `msg` as one request (NLM_F_REQUEST | NLM_F_ACK added to `flags`) with sequence `seq`.
pub(crate) fn encode(out: &mut Vec<u8>, msg: Msg, flags: u16, seq: u32) {
    let flags = flags | NLM_F_REQUEST | NLM_F_ACK;
    match msg {
        Msg::Rt(m) => {
            let mut hdr = NetlinkHeader::default();
            hdr.flags = flags;
            hdr.sequence_number = seq;
            let mut nl = NetlinkMessage::new(hdr, NetlinkPayload::from(m));
            nl.finalize();
            let start = out.len();
            out.resize(start + nl.buffer_len(), 0);
            nl.serialize(&mut out[start..]);
        }
        Msg::Raw(mtype, body) => {
            let len = HEADER_LEN + body.len();
            out.extend_from_slice(&(len as u32).to_ne_bytes());
            out.extend_from_slice(&mtype.to_ne_bytes());
            out.extend_from_slice(&flags.to_ne_bytes());
            out.extend_from_slice(&seq.to_ne_bytes());
            out.extend_from_slice(&0u32.to_ne_bytes());
            out.extend_from_slice(&body);
            out.resize(out.len() + (len.next_multiple_of(4) - len), 0);
        }
    }
}

/// One netlink message inside a datagram.
pub(crate) struct Frame<'a> {
    pub mtype: u16,
    pub flags: u16,
    pub seq: u32,
    pub bytes: &'a [u8],
}

impl Frame<'_> {
    /// The whole message, parsed.
    pub fn parse(&self) -> io::Result<NetlinkMessage<Rt>> {
        NetlinkMessage::<Rt>::deserialize(self.bytes).map_err(invalid)
    }

    /// The message after the netlink header.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or_default()
    }

    /// For NLMSG_ERROR / NLMSG_DONE: the status, `Ok(())` for an ACK or a clean end, else the
    /// kernel's errno as an `io::Error`. Both carry the code as the first `int` of the body
    /// (a DONE without one is a clean end); read in place, without parsing the echoed request.
    pub fn status(&self) -> io::Result<io::Result<()>> {
        let code = match self.body().get(..4) {
            Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            None if self.mtype == NLMSG_DONE => 0,
            None => return Err(invalid("error message without a code")),
        };
        Ok(if code < 0 { Err(io::Error::from_raw_os_error(code.saturating_neg())) } else { Ok(()) })
    }
}

/// The frames of one received datagram, in order; a malformed frame ends the walk with an error.
pub(crate) fn frames(buf: &[u8]) -> impl Iterator<Item = io::Result<Frame<'_>>> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off >= buf.len() {
            return None;
        }
        let frame = match NetlinkBuffer::new_checked(&buf[off..]) {
            Ok(f) => f,
            Err(e) => {
                off = buf.len();
                return Some(Err(invalid(e)));
            }
        };
        let len = frame.length() as usize;
        if len < HEADER_LEN || off + len > buf.len() {
            off = buf.len();
            return Some(Err(invalid(format!("netlink message of {len} bytes"))));
        }
        let out = Frame {
            mtype: frame.message_type(),
            flags: frame.flags(),
            seq: frame.sequence_number(),
            bytes: &buf[off..off + len],
        };
        off += (len + 3) & !3;
        Some(Ok(out))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{ErrorMessage, NLMSG_ERROR};
    use netlink_packet_route::link::LinkMessage;
    use std::num::NonZeroI32;

    fn ack(seq: u32, code: i32) -> Vec<u8> {
        let mut e = ErrorMessage::default();
        e.code = NonZeroI32::new(code);
        let mut hdr = NetlinkHeader::default();
        hdr.sequence_number = seq;
        let mut m = NetlinkMessage::<Rt>::new(hdr, NetlinkPayload::Error(e));
        m.finalize();
        let mut out = vec![0u8; m.buffer_len()];
        m.serialize(&mut out);
        out
    }

    #[test]
    fn encode_then_split_round_trips_sequence_and_flags() {
        let mut buf = Vec::new();
        encode(&mut buf, Msg::Rt(Rt::GetLink(LinkMessage::default())), 0, 7);
        encode(&mut buf, Msg::Rt(Rt::GetLink(LinkMessage::default())), 0x300, 8);
        let f: Vec<_> = frames(&buf).collect::<io::Result<_>>().unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].seq, f[1].seq), (7, 8));
        assert_eq!(f[1].flags & 0x300, 0x300);
        assert!(matches!(
            f[0].parse().unwrap().payload,
            NetlinkPayload::InnerMessage(Rt::GetLink(_))
        ));
    }

    #[test]
    fn raw_messages_are_framed_and_padded() {
        let mut buf = Vec::new();
        encode(&mut buf, Msg::Raw(104, vec![1, 2, 3, 4, 5]), 0x400, 9);
        encode(&mut buf, Msg::Raw(106, vec![0; 8]), 0x300, 10);
        assert_eq!(buf.len(), 24 + 24, "21 bytes pad to 24");
        let f: Vec<_> = frames(&buf).collect::<io::Result<_>>().unwrap();
        assert_eq!((f[0].mtype, f[0].seq, f[0].body()), (104, 9, &[1, 2, 3, 4, 5][..]));
        assert_eq!(f[0].flags, 0x400 | NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!((f[1].mtype, f[1].seq, f[1].body().len()), (106, 10, 8));
    }

    #[test]
    fn status_reads_acks_and_errnos() {
        let mut buf = ack(1, 0);
        buf.extend(ack(2, -libc::EEXIST));
        let f: Vec<_> = frames(&buf).collect::<io::Result<_>>().unwrap();
        assert_eq!(f[0].mtype, NLMSG_ERROR);
        assert!(f[0].status().unwrap().is_ok());
        assert_eq!(f[1].status().unwrap().unwrap_err().raw_os_error(), Some(libc::EEXIST));
    }

    #[test]
    fn truncated_datagram_is_an_error_not_a_panic() {
        let buf = ack(1, 0);
        let r: io::Result<Vec<_>> = frames(&buf[..buf.len() - 3]).collect();
        assert!(r.is_err());
        let r: io::Result<Vec<_>> = frames(&[1, 2, 3]).collect();
        assert!(r.is_err());
    }
}
