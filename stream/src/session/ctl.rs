//! stream_ctl: the request a client sends (over enc_http) to create a session, and the
//! answer. Sans-IO codecs; the layouts are in `docs/PROTOCOL.md` §5.

use std::time::Duration;

use dap_net::enc::cipher::{CipherSuite, KEY_LEN};

use super::{SESSION_ID_LEN, SessionLimits, SessionParams, TransportKind, UdpRoute};
use crate::codec::DecodeError;
use crate::codec::frame::valid_channel_id;
use crate::mux::MuxConfig;

/// The stream_ctl version this build speaks.
pub const VERSION: u8 = 1;
/// The most channels one session may ask for.
pub const MAX_CHANNELS: usize = 32;
/// Bytes of an answer without its channel list.
const ANSWER_FIXED: usize = 4 + SESSION_ID_LEN + KEY_LEN + 2 + 4 * 7 + 1;

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtlRequest {
    /// The channels, each a printable ASCII byte, no repeats, at most [`MAX_CHANNELS`].
    pub channels: Vec<u8>,
    /// The cipher wanted, or `None` for the server's choice.
    pub suite: Option<CipherSuite>,
    /// The transport wanted.
    pub transport: TransportKind,
    /// Channels to carry unreliably (UDP only; each one of `channels`).
    pub unreliable: Vec<u8>,
}

impl CtlRequest {
    /// Encodes the request.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![
            VERSION,
            self.suite.map_or(0, CipherSuite::code),
            self.transport as u8,
            self.channels.len() as u8,
        ];
        out.extend_from_slice(&self.channels);
        if self.transport == TransportKind::Udp {
            out.push(self.unreliable.len() as u8);
            out.extend_from_slice(&self.unreliable);
        }
        out
    }

    /// Decodes a request.
    ///
    /// # Errors
    /// A bad version, cipher, transport or channel list.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < 4 {
            return Err(DecodeError::Truncated);
        }
        if b[0] != VERSION {
            return Err(DecodeError::BadVersion(b[0]));
        }
        let suite = match b[1] {
            0 => None,
            c => Some(CipherSuite::from_code(c).ok_or(DecodeError::Malformed("unknown cipher"))?),
        };
        let transport =
            TransportKind::from_code(b[2]).ok_or(DecodeError::Malformed("unknown transport"))?;
        let n = b[3] as usize;
        if n == 0 || n > MAX_CHANNELS {
            return Err(DecodeError::Malformed("channel count"));
        }
        if b.len() < 4 + n {
            return Err(DecodeError::Malformed("length"));
        }
        let channels = b[4..4 + n].to_vec();
        check_channels(&channels)?;
        // UDP may add the unreliable channels: a count, then the ids.
        let rest = &b[4 + n..];
        let unreliable = match rest.split_first() {
            None => Vec::new(),
            Some((&u, ids)) if transport == TransportKind::Udp && ids.len() == u as usize => {
                check_subset(ids, &channels)?;
                ids.to_vec()
            }
            Some(_) => return Err(DecodeError::Malformed("length")),
        };
        Ok(CtlRequest { channels, suite, transport, unreliable })
    }
}

fn check_channels(ids: &[u8]) -> Result<(), DecodeError> {
    for (i, &c) in ids.iter().enumerate() {
        if !valid_channel_id(c) {
            return Err(DecodeError::Malformed("bad channel id"));
        }
        if ids[..i].contains(&c) {
            return Err(DecodeError::Malformed("repeated channel id"));
        }
    }
    Ok(())
}

/// Unreliable channels: each one of the session's, no repeats.
fn check_subset(ids: &[u8], channels: &[u8]) -> Result<(), DecodeError> {
    for (i, c) in ids.iter().enumerate() {
        if !channels.contains(c) || ids[..i].contains(c) {
            return Err(DecodeError::Malformed("unreliable channels"));
        }
    }
    Ok(())
}

fn put_ms(out: &mut Vec<u8>, d: Duration) {
    out.extend_from_slice(&(d.as_millis().min(u32::MAX as u128) as u32).to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&(v.min(u32::MAX as usize) as u32).to_be_bytes());
}

/// Encodes the answer that creates `p`.
pub fn encode_answer(p: &SessionParams) -> Vec<u8> {
    let mut out = Vec::with_capacity(ANSWER_FIXED + p.channels.len());
    out.extend_from_slice(&[VERSION, p.suite.code(), p.transport as u8, 0]);
    out.extend_from_slice(&p.id);
    out.extend_from_slice(&p.secret);
    out.extend_from_slice(&p.udp_port.to_be_bytes());
    let l = &p.limits;
    put_u32(&mut out, l.max_payload);
    put_u32(&mut out, l.mux.max_message);
    put_u32(&mut out, l.mux.channel_window as usize);
    put_u32(&mut out, l.mux.conn_window as usize);
    put_ms(&mut out, l.keepalive);
    put_ms(&mut out, l.idle_timeout);
    put_ms(&mut out, l.connect_timeout);
    out.push(p.channels.len() as u8);
    out.extend_from_slice(&p.channels);
    if p.transport == TransportKind::Udp {
        let (cid, host) = p.udp.as_ref().map_or(([0; 8], ""), |r| (r.cid, r.host.as_str()));
        out.extend_from_slice(&cid);
        out.push(p.unreliable.len() as u8);
        out.extend_from_slice(&p.unreliable);
        let host = &host.as_bytes()[..host.len().min(MAX_HOST)];
        out.push(host.len() as u8);
        out.extend_from_slice(host);
    }
    out
}

/// The longest host a UDP answer names.
pub const MAX_HOST: usize = 255;

/// The smallest payload and window a client accepts: below them a session cannot work.
const MIN_PAYLOAD: usize = 1024;
const MIN_WINDOW: u32 = 1024;

/// Decodes an answer into the client's view of the session. `local` supplies the limits
/// the server does not send (send queue and frame size); a `max_payload` larger than the
/// client can buffer is refused by the caller.
///
/// # Errors
/// A malformed answer.
pub fn decode_answer(b: &[u8], local: MuxConfig) -> Result<SessionParams, DecodeError> {
    if b.len() < ANSWER_FIXED {
        return Err(DecodeError::Truncated);
    }
    if b[0] != VERSION {
        return Err(DecodeError::BadVersion(b[0]));
    }
    let suite = CipherSuite::from_code(b[1]).ok_or(DecodeError::Malformed("unknown cipher"))?;
    let transport =
        TransportKind::from_code(b[2]).ok_or(DecodeError::Malformed("unknown transport"))?;
    if b[3] != 0 {
        return Err(DecodeError::Malformed("reserved byte"));
    }
    let mut at = 4;
    let mut take = |n: usize| {
        let s = &b[at..at + n];
        at += n;
        s
    };
    let id: [u8; SESSION_ID_LEN] = take(SESSION_ID_LEN).try_into().expect("16 bytes");
    let secret: [u8; KEY_LEN] = take(KEY_LEN).try_into().expect("32 bytes");
    let udp_port = u16::from_be_bytes(take(2).try_into().expect("2 bytes"));
    let mut u32s = [0u32; 7];
    for v in &mut u32s {
        *v = u32::from_be_bytes(take(4).try_into().expect("4 bytes"));
    }
    let n = take(1)[0] as usize;
    if n == 0 || n > MAX_CHANNELS || b.len() < ANSWER_FIXED + n {
        return Err(DecodeError::Malformed("channel list"));
    }
    let channels = b[ANSWER_FIXED..ANSWER_FIXED + n].to_vec();
    check_channels(&channels)?;
    let rest = &b[ANSWER_FIXED + n..];
    let (unreliable, udp) = if transport == TransportKind::Udp {
        decode_udp_part(rest, &channels)?
    } else if rest.is_empty() {
        (Vec::new(), None)
    } else {
        return Err(DecodeError::Malformed("channel list"));
    };
    let [max_payload, max_message, channel_window, conn_window, keepalive, idle, connect] = u32s;
    if (max_payload as usize) < MIN_PAYLOAD
        || channel_window < MIN_WINDOW
        || conn_window < MIN_WINDOW
    {
        return Err(DecodeError::Malformed("limits too small"));
    }
    let mux = MuxConfig {
        max_message: max_message as usize,
        channel_window,
        conn_window,
        send_queue: local.send_queue,
        max_frame: local.max_frame,
        max_channel_window: local.max_channel_window,
        max_conn_window: local.max_conn_window,
        // Room for two of the largest messages the server may send, whatever local says.
        max_session_reassembly: local
            .max_session_reassembly
            .max((max_message as usize).saturating_mul(2)),
        partial_timeout: local.partial_timeout,
    };
    let ms = |v: u32| Duration::from_millis(v as u64);
    let limits = SessionLimits {
        mux,
        max_payload: max_payload as usize,
        keepalive: ms(keepalive),
        idle_timeout: ms(idle),
        connect_timeout: ms(connect),
        ..SessionLimits::default()
    };
    Ok(SessionParams {
        id,
        suite,
        secret,
        channels,
        transport,
        limits,
        udp_port,
        client: None,
        unreliable,
        udp,
    })
}

/// The UDP part of an answer: connection id, unreliable channels, host.
fn decode_udp_part(b: &[u8], channels: &[u8]) -> Result<(Vec<u8>, Option<UdpRoute>), DecodeError> {
    let bad = DecodeError::Malformed("UDP part");
    if b.len() < 8 + 1 {
        return Err(DecodeError::Truncated);
    }
    let cid: [u8; 8] = b[..8].try_into().expect("8 bytes");
    let u = b[8] as usize;
    let ids = b.get(9..9 + u).ok_or(DecodeError::Truncated)?;
    check_subset(ids, channels)?;
    let h = *b.get(9 + u).ok_or(DecodeError::Truncated)? as usize;
    let host = b.get(10 + u..).ok_or(DecodeError::Truncated)?;
    if host.len() != h {
        return Err(if host.len() < h { DecodeError::Truncated } else { bad });
    }
    if !host.iter().all(|c| (0x21..=0x7e).contains(c)) {
        return Err(bad);
    }
    let host = String::from_utf8(host.to_vec()).map_err(|_| bad)?;
    Ok((ids.to_vec(), Some(UdpRoute { cid, host })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_bad_ones_are_refused() {
        let r = CtlRequest {
            channels: b"EP".to_vec(),
            suite: Some(CipherSuite::Aes256Gcm),
            transport: TransportKind::Http,
            unreliable: Vec::new(),
        };
        assert_eq!(CtlRequest::decode(&r.encode()).unwrap(), r);
        let u =
            CtlRequest { transport: TransportKind::Udp, unreliable: b"P".to_vec(), ..r.clone() };
        assert_eq!(CtlRequest::decode(&u.encode()).unwrap(), u);
        // Without the unreliable part, a UDP request has none; HTTP takes no such part.
        assert_eq!(CtlRequest::decode(&[1, 0, 2, 1, b'E']).unwrap().unreliable, b"");
        assert!(CtlRequest::decode(&[1, 0, 1, 1, b'E', 0]).is_err());
        // Unreliable channels must be the session's, once each, and counted right.
        assert!(CtlRequest::decode(&[1, 0, 2, 1, b'E', 1, b'X']).is_err());
        assert!(CtlRequest::decode(&[1, 0, 2, 1, b'E', 2, b'E', b'E']).is_err());
        assert!(CtlRequest::decode(&[1, 0, 2, 1, b'E', 2, b'E']).is_err());
        assert!(CtlRequest::decode(&[1, 0, 1, 2, b'E', b'E']).is_err());
        assert!(CtlRequest::decode(&[1, 0, 1, 1, b' ']).is_err());
        assert!(CtlRequest::decode(&[1, 9, 1, 1, b'E']).is_err());
        assert!(CtlRequest::decode(&[2, 0, 1, 1, b'E']).is_err());
        assert!(CtlRequest::decode(&[1, 0, 1, 0]).is_err());
        assert!(CtlRequest::decode(&[1, 0, 1, 2, b'E']).is_err());
    }

    #[test]
    fn answer_round_trips() {
        let p = SessionParams {
            unreliable: Vec::new(),
            udp: None,
            id: [3; 16],
            suite: CipherSuite::Aes256Gcm,
            secret: [4; 32],
            channels: b"EP".to_vec(),
            transport: TransportKind::Http,
            limits: SessionLimits::default(),
            udp_port: 4000,
            client: None,
        };
        let b = encode_answer(&p);
        let q = decode_answer(&b, MuxConfig::default()).unwrap();
        assert_eq!(
            (q.id, q.secret, q.channels.clone(), q.udp_port),
            (p.id, p.secret, p.channels.clone(), 4000)
        );
        assert_eq!(q.limits, p.limits);
        for cut in 0..b.len() {
            assert!(decode_answer(&b[..cut], MuxConfig::default()).is_err());
        }
    }

    #[test]
    fn a_udp_answer_carries_the_connection_id_the_unreliable_channels_and_the_host() {
        let p = SessionParams {
            unreliable: b"V".to_vec(),
            udp: Some(UdpRoute { cid: [1, 2, 3, 4, 5, 6, 7, 8], host: "udp.example".into() }),
            id: [3; 16],
            suite: CipherSuite::ChaCha20Poly1305,
            secret: [4; 32],
            channels: b"EV".to_vec(),
            transport: TransportKind::Udp,
            limits: SessionLimits::default(),
            udp_port: 4433,
            client: None,
        };
        let b = encode_answer(&p);
        let q = decode_answer(&b, MuxConfig::default()).unwrap();
        assert_eq!(
            (q.udp.clone(), q.unreliable.clone(), q.udp_port),
            (p.udp.clone(), p.unreliable.clone(), 4433)
        );
        for cut in 0..b.len() {
            assert!(decode_answer(&b[..cut], MuxConfig::default()).is_err(), "cut at {cut}");
        }
        let mut long = b.clone();
        long.push(b'x');
        assert!(decode_answer(&long, MuxConfig::default()).is_err());
        // A host with a space or a control byte is refused.
        let mut bad = b.clone();
        let at = bad.len() - 3;
        bad[at] = b' ';
        assert!(decode_answer(&bad, MuxConfig::default()).is_err());
    }
}
