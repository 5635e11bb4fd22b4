//! stream_ctl: the request a client sends (over enc_http) to create a session, and the
//! answer. Sans-IO codecs; the layouts are in `docs/PROTOCOL.md` §5.

use std::time::Duration;

use dap_net::enc::cipher::{CipherSuite, KEY_LEN};

use super::{SESSION_ID_LEN, SessionLimits, SessionParams, TransportKind};
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
        if b.len() != 4 + n {
            return Err(DecodeError::Malformed("length"));
        }
        let channels = b[4..].to_vec();
        check_channels(&channels)?;
        Ok(CtlRequest { channels, suite, transport })
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
    out
}

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
    if n == 0 || n > MAX_CHANNELS || b.len() != ANSWER_FIXED + n {
        return Err(DecodeError::Malformed("channel list"));
    }
    let channels = b[ANSWER_FIXED..].to_vec();
    check_channels(&channels)?;
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
        unreliable: Vec::new(),
    })
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
        };
        assert_eq!(CtlRequest::decode(&r.encode()).unwrap(), r);
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
}
