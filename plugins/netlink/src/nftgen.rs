//! The nftables ruleset generation id: one `NFT_MSG_GETGEN` request on a `NETLINK_NETFILTER`
//! socket, no process. The kernel bumps the id (one per network namespace) on every nftables
//! transaction anyone commits, so an id seen twice means nothing in nftables changed in between.

use crate::frame::{encode, frames, invalid, Msg};
use crate::socket::recv_into;
use netlink_packet_core::{NlasIterator, NLMSG_DONE, NLMSG_ERROR};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use std::io;

/// `NFNL_SUBSYS_NFTABLES` (linux/netfilter/nfnetlink.h): the high byte of the message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_NEWGEN` / `NFT_MSG_GETGEN` (linux/netfilter/nf_tables.h).
const NEWGEN: u16 = NFNL_SUBSYS_NFTABLES << 8 | 15;
const GETGEN: u16 = NFNL_SUBSYS_NFTABLES << 8 | 16;
/// `NFTA_GEN_ID`: the id, a big-endian u32.
const NFTA_GEN_ID: u16 = 1;
/// `struct nfgenmsg`: family AF_UNSPEC, version NFNETLINK_V0, resource id 0.
const NFGENMSG: [u8; 4] = [0; 4];
/// The only request on its socket.
const SEQ: u32 = 1;

/// The nftables generation id of the calling thread's network namespace. Fails without
/// CAP_NET_ADMIN or where the kernel has no nf_tables.
pub fn generation() -> io::Result<u32> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    sock.send(&request(SEQ), 0)?;
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut id = None;
    loop {
        let n = recv_into(&sock, &mut buf)?;
        if read_reply(&buf[..n], SEQ, &mut id)? {
            return id.ok_or_else(|| invalid("nftables generation: acked without an id"));
        }
    }
}

/// The GETGEN request (acked) with sequence number `seq`.
fn request(seq: u32) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out, Msg::Raw(GETGEN, NFGENMSG.to_vec()), 0, seq);
    out
}

/// Read one received datagram: a NEWGEN answer to `seq` sets `id`. True once the kernel's ACK
/// to `seq` is in; its error is returned as one.
fn read_reply(datagram: &[u8], seq: u32, id: &mut Option<u32>) -> io::Result<bool> {
    for frame in frames(datagram) {
        let frame = frame?;
        if frame.seq != seq {
            continue;
        }
        match frame.mtype {
            NLMSG_ERROR | NLMSG_DONE => return frame.status()?.map(|()| true),
            NEWGEN => *id = Some(gen_id(frame.body())?),
            _ => {}
        }
    }
    Ok(false)
}

/// `NFTA_GEN_ID` of a NEWGEN message body (after the netlink header).
fn gen_id(body: &[u8]) -> io::Result<u32> {
    let attrs = body.get(NFGENMSG.len()..).ok_or_else(|| invalid("short NEWGEN message"))?;
    for nla in NlasIterator::new(attrs) {
        let nla = nla.map_err(invalid)?;
        if nla.kind() == NFTA_GEN_ID {
            let v: [u8; 4] = nla.value().try_into().map_err(|_| invalid("NFTA_GEN_ID size"))?;
            return Ok(u32::from_be_bytes(v));
        }
    }
    Err(invalid("NEWGEN message without NFTA_GEN_ID"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::HEADER_LEN;

    /// A kernel message: netlink header, then `body`.
    fn msg(mtype: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let len = (HEADER_LEN + body.len()) as u32;
        let mut m = len.to_ne_bytes().to_vec();
        m.extend_from_slice(&mtype.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m
    }

    /// What the kernel answers GETGEN with: nfgenmsg, NFTA_GEN_ID, NFTA_GEN_PROC_PID and
    /// NFTA_GEN_PROC_NAME ("nft\0").
    fn newgen(seq: u32, id: u32) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(&[8, 0, 1, 0]);
        b.extend_from_slice(&id.to_be_bytes());
        b.extend_from_slice(&[8, 0, 2, 0]);
        b.extend_from_slice(&77u32.to_be_bytes());
        b.extend_from_slice(&[8, 0, 3, 0, b'n', b'f', b't', 0]);
        msg(NEWGEN, seq, &b)
    }

    fn ack(seq: u32, code: i32) -> Vec<u8> {
        msg(NLMSG_ERROR, seq, &code.to_ne_bytes())
    }

    #[test]
    fn request_is_getgen_with_an_nfgenmsg() {
        let r = request(9);
        assert_eq!(r.len(), 20);
        assert_eq!(&r[0..4], &20u32.to_ne_bytes());
        assert_eq!(&r[4..6], &0x0a10u16.to_ne_bytes(), "(NFNL_SUBSYS_NFTABLES << 8) | GETGEN");
        assert_eq!(&r[6..8], &5u16.to_ne_bytes(), "NLM_F_REQUEST | NLM_F_ACK");
        assert_eq!(&r[8..12], &9u32.to_ne_bytes());
        assert_eq!(&r[16..], &[0, 0, 0, 0]);
    }

    #[test]
    fn reply_gives_the_big_endian_id_once_acked() {
        let mut id = None;
        assert!(!read_reply(&newgen(1, 0x0102_0304), 1, &mut id).unwrap(), "no ACK yet");
        assert_eq!(id, Some(0x0102_0304));
        assert!(read_reply(&ack(1, 0), 1, &mut id).unwrap());
        // Both in one datagram; a frame of another request is skipped.
        let mut d = newgen(2, 5);
        d.extend(newgen(1, 7));
        d.extend(ack(1, 0));
        let mut id = None;
        assert!(read_reply(&d, 1, &mut id).unwrap());
        assert_eq!(id, Some(7));
    }

    #[test]
    fn errors_and_malformed_replies_are_errors_not_panics() {
        let e = read_reply(&ack(1, -libc::EPERM), 1, &mut None).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        assert!(read_reply(&msg(NEWGEN, 1, &[0, 0]), 1, &mut None).is_err(), "short nfgenmsg");
        assert!(read_reply(&msg(NEWGEN, 1, &[0; 4]), 1, &mut None).is_err(), "no id");
        let short_id = [0, 0, 0, 0, 6, 0, 1, 0, 1, 2, 0, 0];
        assert!(read_reply(&msg(NEWGEN, 1, &short_id), 1, &mut None).is_err());
        let bad_len = [0, 0, 0, 0, 40, 0, 1, 0, 1, 2, 3, 4];
        assert!(read_reply(&msg(NEWGEN, 1, &bad_len), 1, &mut None).is_err());
        let d = newgen(1, 3);
        assert!(read_reply(&d[..d.len() - 5], 1, &mut None).is_err(), "truncated datagram");
    }
}
