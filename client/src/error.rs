//! What can go wrong on the way to streaming (DAP's client error list).

use crate::Stage;

/// Why a stage failed. Each names the stage it belongs to ([`ClientError::stage`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// enc_init could not make a key (refused, unreachable after connecting, bad answer).
    #[error("enc_init: no key: {0}")]
    NoKey(String),
    /// The node's signature does not verify under the pinned node key.
    #[error("enc_init: wrong node key")]
    WrongKey,
    /// The server asked for a client certificate, or refused ours.
    #[error("{stage}: authentication refused: {reason}")]
    Auth {
        /// Where.
        stage: Stage,
        /// The server's reason.
        reason: String,
    },
    /// stream_ctl was refused.
    #[error("stream_ctl refused: {0}")]
    StreamCtl(String),
    /// stream_ctl answered something that does not decode.
    #[error("stream_ctl: bad response: {0}")]
    StreamCtlBadResponse(String),
    /// The key is unknown or expired at the server: a new handshake is needed.
    #[error("{0}: the server no longer knows our key")]
    KeyExpired(Stage),
    /// The connection was refused (nothing listens there).
    #[error("{stage}: connection refused")]
    ConnectRefused {
        /// Where.
        stage: Stage,
    },
    /// The connection or an answer did not come in time.
    #[error("{stage}: timed out")]
    Timeout {
        /// Where.
        stage: Stage,
    },
    /// The stream's upgrade was answered wrongly (not `101`, or garbage).
    #[error("stream: wrong response: {0}")]
    StreamResponse(String),
    /// The stream broke after it was up.
    #[error("stream lost: {0}")]
    StreamLost(String),
    /// The application asked the client to stop.
    #[error("{0}: aborted")]
    Aborted(Stage),
    /// An operation that needs another stage (a write before streaming without
    /// connect-on-demand).
    #[error("wrong stage: {0}")]
    WrongStage(Stage),
    /// The uplink is not a usable address.
    #[error("wrong address: {0}")]
    WrongAddress(String),
    /// The node said "not now" to enc_init (`429 rate-limited`, `503 busy`): the next try
    /// waits at least `retry_after`, the node's `Retry-After`.
    #[error("enc_init: the node is busy ({reason}); retry after {retry_after:?}")]
    Busy {
        /// The node's reason.
        reason: String,
        /// The least wait before the next try.
        retry_after: std::time::Duration,
    },
    /// Another I/O failure.
    #[error("{stage}: {reason}")]
    Io {
        /// Where.
        stage: Stage,
        /// What.
        reason: String,
    },
}

impl ClientError {
    /// The stage the error belongs to.
    pub fn stage(&self) -> Stage {
        match self {
            ClientError::NoKey(_) | ClientError::WrongKey | ClientError::Busy { .. } => {
                Stage::EncInit
            }
            ClientError::StreamCtl(_) | ClientError::StreamCtlBadResponse(_) => Stage::StreamCtl,
            ClientError::StreamResponse(_) => Stage::StreamSession,
            ClientError::StreamLost(_) => Stage::StreamStreaming,
            ClientError::WrongAddress(_) => Stage::Begin,
            ClientError::Auth { stage, .. }
            | ClientError::ConnectRefused { stage }
            | ClientError::Timeout { stage }
            | ClientError::Io { stage, .. } => *stage,
            ClientError::KeyExpired(s) | ClientError::Aborted(s) | ClientError::WrongStage(s) => *s,
        }
    }

    /// Whether trying again can help. Configuration faults (a wrong node key, refused
    /// authentication, a bad address) will fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            ClientError::WrongKey
                | ClientError::Auth { .. }
                | ClientError::WrongAddress(_)
                | ClientError::Aborted(_)
                | ClientError::WrongStage(_)
        )
    }

    /// The stage a retry starts from: a key the server forgot needs a new handshake; a
    /// stream that failed or was lost needs a new session; the rest retries its own stage.
    pub fn restart_from(&self) -> Stage {
        match self {
            ClientError::KeyExpired(_) => Stage::EncInit,
            // A session id attaches once: whatever broke at or after the stream's start
            // needs a new one.
            e if e.stage() >= Stage::StreamSession => Stage::StreamCtl,
            e => e.stage().max(Stage::EncInit),
        }
    }
}
