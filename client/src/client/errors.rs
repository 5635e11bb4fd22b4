//! How the failures of the steps read as [`ClientError`]s: typed errors in, typed errors
//! out, never matched on text.

use std::io;

use dap_net::enc::Refusal;
use dap_net::enc::client::{HandshakeError, RequestError};
use dap_net::enc::handshake::EncInitError;
use dap_net::http::client::ClientError as HttpError;
use dap_stream::client::CtlError;
use dap_stream::transport::StreamError;

use crate::{ClientError, Stage};

/// An HTTP exchange's failure at `stage`.
pub(crate) fn http(stage: Stage, e: &HttpError) -> ClientError {
    match e {
        HttpError::Connect(io::ErrorKind::ConnectionRefused) => {
            ClientError::ConnectRefused { stage }
        }
        HttpError::ConnectTimeout | HttpError::ResponseTimeout => ClientError::Timeout { stage },
        HttpError::BadUrl(why) => ClientError::WrongAddress((*why).to_owned()),
        e => ClientError::Io { stage, reason: e.to_string() },
    }
}

/// An enc_init failure.
pub(crate) fn handshake(e: &HandshakeError) -> ClientError {
    match e {
        HandshakeError::Http(e) => http(Stage::EncInit, e),
        HandshakeError::Refused {
            refusal: Some(r @ (Refusal::AuthRequired | Refusal::NotAllowed)),
            ..
        } => ClientError::Auth { stage: Stage::EncInit, reason: r.reason().to_owned() },
        HandshakeError::NotNow { refusal, retry_after, .. } => {
            ClientError::Busy { reason: refusal.reason().to_owned(), retry_after: *retry_after }
        }
        HandshakeError::Refused { status, refusal } => ClientError::NoKey(match refusal {
            Some(r) => format!("refused with {status} ({})", r.reason()),
            None => format!("refused with {status}"),
        }),
        HandshakeError::Init(EncInitError::NodeKeyMismatch | EncInitError::BadSignature) => {
            ClientError::WrongKey
        }
        HandshakeError::Init(e) => ClientError::NoKey(e.to_string()),
        e => ClientError::NoKey(e.to_string()),
    }
}

/// A stream_ctl failure.
pub(crate) fn ctl(e: &CtlError) -> ClientError {
    match e {
        CtlError::Request(RequestError::Http(e)) => http(Stage::StreamCtl, e),
        CtlError::Request(RequestError::Refused { refusal: Some(r), .. }) if r.needs_new_key() => {
            ClientError::KeyExpired(Stage::StreamCtl)
        }
        CtlError::Request(RequestError::Refused { status: 403, refusal }) => ClientError::Auth {
            stage: Stage::StreamCtl,
            reason: refusal.map_or("forbidden", |r| r.reason()).to_owned(),
        },
        CtlError::Request(RequestError::Open(e)) => {
            ClientError::StreamCtlBadResponse(format!("the sealed answer did not open: {e}"))
        }
        CtlError::BadAnswer(e) => ClientError::StreamCtlBadResponse(e.to_string()),
        CtlError::Refused { status, reason } => {
            ClientError::StreamCtl(format!("{status}: {reason}"))
        }
        e => ClientError::StreamCtl(e.to_string()),
    }
}

/// A stream that ended while it was being set up (`up == false`, at `stage`: StreamSession,
/// or StreamConnected over UDP while the first answer is awaited) or after.
pub(crate) fn stream(e: &StreamError, up: bool, stage: Stage) -> ClientError {
    if up {
        return ClientError::StreamLost(e.to_string());
    }
    match e {
        StreamError::UpgradeRefused(status) => {
            ClientError::StreamResponse(format!("upgrade answered with {status}"))
        }
        StreamError::IdleTimeout => ClientError::Timeout { stage },
        StreamError::Io(reason) => ClientError::Io { stage, reason: reason.clone() },
        e => ClientError::StreamResponse(e.to_string()),
    }
}
